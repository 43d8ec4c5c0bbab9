"""The engine: sweep config, stages over typed records, scheduling and executors (local, Ray), model
lifecycle, the response cache, the run store, records and summary.

Imports core, backends, data and measure; never analysis, agent or cli.
"""
