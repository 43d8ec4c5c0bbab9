"""Summarise one mutmut run (called by scripts/mutation.sh from .mutation/<module>/).

Writes summary.txt (killed / total) and survivors.txt (the diff of every surviving mutant) and
prints the summary line. Arguments: the module's file (compressbench/measure/mi.py), wall seconds, CPU seconds, mutmut path, workers, then optional
mutant-name patterns (fnmatch) that restrict the count to some functions of the module.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

# mutmut's exit codes: 1 or 3 = a test failed (killed); 24, -24, 36, 152, 255 = over the time
# limit (killed: the mutant made the tests hang); 0 = every test passed (survived); 5 or 33 = no
# selected test runs the mutated function (counted as survived); None = not run.
KILLED = {1, 3, 24, -24, 36, 152, 255}
SURVIVED = {0, 5, 33}
STATUS = {0: "survived", 5: "no tests", 33: "no tests"}


def _diff(name: str, mutmut: str) -> str:
    """The mutant's diff, from mutmut's own functions (one process), else `mutmut show`."""
    try:
        from mutmut.__main__ import find_mutant, get_diff_for_mutant

        return get_diff_for_mutant(name, path=find_mutant(name).path).rstrip()
    except (ImportError, AttributeError, TypeError):
        out = subprocess.run([mutmut, "show", name], capture_output=True, text=True, check=False).stdout
        return out.split("\n", 1)[-1].rstrip()


def main(argv: list[str]) -> int:
    if not argv[2].isdigit():  # called without the CPU seconds
        argv = [argv[0], argv[1], "?", *argv[2:]]
    path, seconds, cpu, mutmut, jobs, patterns = argv[0], int(argv[1]), argv[2], argv[3], argv[4], argv[5:]
    meta = Path(f"mutants/{path}.meta")  # path: the module's file, e.g. compressbench/measure/mi.py
    module = Path(path).stem
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    if patterns:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    killed = sorted(k for k, v in codes.items() if v in KILLED)
    survived = sorted(k for k, v in codes.items() if v in SURVIVED)
    other = sorted(k for k, v in codes.items() if v not in KILLED | SURVIVED)
    diffs = [f"# {k}: {STATUS.get(codes[k], codes[k])}\n{_diff(k, mutmut)}" for k in survived]
    Path("survivors.txt").write_text("\n\n".join(diffs) + "\n", encoding="utf-8")
    total = len(killed) + len(survived)
    summary = (f"{module}: {len(killed)}/{total} mutants killed ({100 * len(killed) / max(total, 1):.1f}%), "
               f"{len(survived)} survived, {len(other)} not run or suspicious {other[:5]}; "
               f"{seconds} s wall, {cpu} s CPU, {jobs} workers")
    Path("summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
