"""The package version (``compressbench.__version__``), here so every layer can read it without
importing the top-level package, which re-exports the layers above core."""

__version__ = "0.1.0"
