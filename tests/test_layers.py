"""The layer contract (pyproject.toml [tool.importlinter], drawn in docs/architecture.md) holds:
no layer imports one above it, no module imports the top-level package, no import cycles between
the layer packages nor between the modules of any package. Run here so CI (scripts/test.sh)
checks it; a second test shows the contract catches an upward import and a cycle."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import compressbench

PACKAGE = Path(compressbench.__file__).resolve().parent
ROOT = PACKAGE.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` with ``root``'s pyproject.toml (no cache)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
           "--no-cache", "--no-logo"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contract_holds():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    # all three contracts ran (a contract dropped from pyproject.toml would not be checked)
    assert res.stdout.count(" KEPT") == 3, res.stdout


def test_the_contract_catches_an_upward_import_and_a_cycle(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "compressbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "compressbench" / "core"
    with open(core / "tables.py", "a", encoding="utf-8") as f:      # core -> cli: upward
        f.write("\n\ndef _upward():\n    from compressbench.cli import main  # noqa: F401\n")
    (core / "cyc_a.py").write_text("from compressbench.core import cyc_b  # noqa: F401\n", encoding="utf-8")
    (core / "cyc_b.py").write_text("from compressbench.core import cyc_a  # noqa: F401\n", encoding="utf-8")
    res = lint_imports(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "compressbench.core.tables -> compressbench.cli" in out
    assert "No cycles are allowed in compressbench.core" in out


def _function_level_imports(source: str, name: str) -> list[str]:
    """``from compressbench... import`` statements inside a function body of ``source``."""
    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if in_function and isinstance(child, ast.ImportFrom) and (child.module or "").startswith("compressbench"):
                found.append(f"{name}:{child.lineno} from {child.module}")
            walk(child, inside)

    walk(ast.parse(source), False)
    return found


def test_the_lower_layers_import_compressbench_at_module_level():
    """Function-level imports are for heavy optional dependencies (torch, transformers, vllm, ray,
    matplotlib, datasets) only; compressbench's own modules are imported at the top of core,
    data and measure (a late import there would only hide a cycle)."""
    late = [hit for layer in ("core", "data", "measure") for p in sorted((PACKAGE / layer).rglob("*.py"))
            for hit in _function_level_imports(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert late == []


def test_the_scan_finds_a_function_level_import():
    source = ("from compressbench.core import types\n\nclass C:\n    def m(self):\n"
              "        if True:\n            from compressbench.data import load_dataset\n        import json\n")
    assert _function_level_imports(source, "x.py") == ["x.py:6 from compressbench.data"]


def _lazy_imports_without_reason(source: str, name: str) -> list[str]:
    """Function-level imports (outside ``if TYPE_CHECKING``) of ``source`` that carry no
    ``# lazy: <reason>``, neither on their line nor on a comment line heading their block of imports."""
    lines = source.splitlines()
    bad = []

    def reason_for(lineno: int) -> bool:
        i = lineno - 1
        if "# lazy:" in lines[i]:
            return True
        i -= 1
        while i >= 0 and lines[i].strip().startswith(("import ", "from ", ")", "    ")) and "# lazy:" not in lines[i] \
                and not lines[i].strip().startswith("#") and lines[i].strip():
            i -= 1
        return i >= 0 and lines[i].strip().startswith("# lazy:")

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)) and not reason_for(child.lineno):
                mod = child.module if isinstance(child, ast.ImportFrom) else child.names[0].name
                bad.append(f"{name}:{child.lineno} {mod}")
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse(source), False)
    return bad


def test_every_function_level_import_says_why_it_is_lazy():
    """Issue 21: function-level imports only for heavy optional dependencies or to keep a light entry
    point light (``compressbench --help``, the agent's recording path), each with a one-line reason."""
    bad = [hit for p in sorted(PACKAGE.rglob("*.py"))
           for hit in _lazy_imports_without_reason(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert bad == []


def test_compressbench_modules_are_imported_late_only_by_the_light_entry_points():
    """A late ``from compressbench...`` import is there for start-up time of the CLI or of the agent's
    recording API only; elsewhere it would only hide a cycle."""
    light = ("cli", "agent/log.py", "agent/step.py")
    late = [hit for p in sorted(PACKAGE.rglob("*.py"))
            if not str(p.relative_to(PACKAGE)).startswith(light)
            for hit in _function_level_imports(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert late == []


def test_the_reason_scan_finds_an_unexplained_import_and_accepts_a_headed_block():
    source = ("def f():\n    import json\n\ndef g():\n    # lazy: heavy\n    import torch\n"
              "    from transformers import (\n        AutoModel,\n    )\n\ndef h():\n"
              "    import pandas  # lazy: only for tables\n")
    assert _lazy_imports_without_reason(source, "x.py") == ["x.py:2 json"]
