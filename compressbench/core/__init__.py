"""The bottom layer: types, the error tree, JSONL, tables, statistics, prompts, progress.

Imports nothing else from compressbench; every other layer may import it.
"""
