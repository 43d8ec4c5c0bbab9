"""Outputs read from a run directory: the report (:mod:`.report`), Findings (:mod:`.findings`),
plots (:mod:`.plots`) and the cost planner (:mod:`.plan`).

Imports the engine and below; matplotlib is imported only inside :mod:`.plots`.
"""
