"""Where the package's data folders are (prompts/ and configs/ beside the package's modules)."""

from __future__ import annotations

from pathlib import Path

#: the compressbench package directory (holds prompts/ and configs/).
PACKAGE_DIR = Path(__file__).resolve().parent.parent
