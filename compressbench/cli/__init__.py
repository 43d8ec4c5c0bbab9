"""The command line: the only layer that prints. ``compressbench`` is :func:`main`."""

from compressbench.cli.main import main

__all__ = ["main"]
