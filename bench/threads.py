"""Torch CPU threads: `compressbench demo --limit 4` with compressbench's choice against torch's default.

Each run is a fresh `compressbench demo --limit 4` subprocess in its own temporary runs directory
(so nothing comes from a run cache; the dequantised models in the compressbench cache are reused,
as after `scripts/setup.sh`). The two settings alternate (choice, default, default, choice, ...)
so a change in the machine's load hits both. Wall seconds and CPU seconds (user + system of the
subprocess and its children) are printed, with ratios against the choice in the same run, and
the load average before and after.

    .venv/bin/python bench/threads.py                 # one run of each
    .venv/bin/python bench/threads.py --repeats 2     # ABBA order
    .venv/bin/python bench/threads.py --write         # and put the table in BENCHMARKS.md

"choice": no OMP_NUM_THREADS / MKL_NUM_THREADS / COMPRESSBENCH_TORCH_THREADS, so the hf backend
applies its rule (`compressbench.backends.hf.choose_cpu_threads`: half the usable CPUs).
"torch default": COMPRESSBENCH_TORCH_THREADS=torch (torch's one thread per core).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTION = "## Torch CPU threads"
ROOT = Path(__file__).resolve().parent.parent


def _env(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COMPRESSBENCH_TORCH_THREADS")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if setting == "torch default":
        env["COMPRESSBENCH_TORCH_THREADS"] = "torch"
    return env


def _threads_seen(setting: str) -> int:
    """The torch thread count the hf backend would use under this setting (asked in a subprocess)."""
    code = ("import os, torch; from compressbench.backends.hf import choose_cpu_threads, _usable_cpus\n"
            "n, _ = choose_cpu_threads(None, current=torch.get_num_threads(), usable_cpus=_usable_cpus())\n"
            "print(n if n is not None else torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=_env(setting), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def run_demo(setting: str, limit: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh `compressbench demo --limit LIMIT`."""
    runs = Path(tempfile.mkdtemp(prefix="cb-threads-"))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "compressbench", "demo", "--limit", str(limit),
                               "--runs-dir", str(runs)], env=_env(setting), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"demo failed ({setting}, exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each setting (ABBA order)")
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args()
    settings = ("choice", "torch default")
    threads = {s: _threads_seen(s) for s in settings}
    order: list[str] = []
    for r in range(args.repeats):
        order += list(settings) if r % 2 == 0 else list(reversed(settings))
    load_before = os.getloadavg()
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in settings}
    for s in order:
        wall, cpu = run_demo(s, args.limit)
        results[s].append((wall, cpu))
        print(f"  {s} ({threads[s]} threads): {wall:.1f} s wall, {cpu:.1f} CPU-s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    med = {s: (statistics.median(w for w, _ in results[s]), statistics.median(c for _, c in results[s]))
           for s in settings}
    base_wall, base_cpu = med["choice"]
    lines = [
        SECTION,
        "",
        f"`bench/threads.py` (issue 22): `compressbench demo --limit {args.limit}` (real SmolLM2-135M and "
        "Gemma-3-270M, fresh runs directory each time), compressbench's thread choice against torch's default, "
        f"{args.repeats} run(s) of each in one sitting, alternating; median of the runs. "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch CPU build; load average "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after "
        "(1, 5, 15 min; the machine is shared, so absolute figures are pessimistic: compare the ratios).",
        "",
        f"    .venv/bin/python bench/threads.py --repeats {args.repeats} --write",
        "",
        "| setting | torch threads | wall s | CPU s | wall vs choice | CPU vs choice |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in settings:
        wall, cpu = med[s]
        lines.append(f"| {s} | {threads[s]} | {wall:.1f} | {cpu:.1f} | {wall / base_wall:.2f}x | {cpu / base_cpu:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", text)


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's table (the section's head up to its first blank line after the
    table) in BENCHMARKS.md, or append the section; hand-written notes after the table stay."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8")
        return
    table = old.find("\n| setting |", start)
    end = old.find("\n\n", table) if table >= 0 else -1
    nxt = old.find("\n## ", start + len(SECTION))
    if table < 0 or end < 0 or (0 <= nxt < table):
        end = nxt if nxt >= 0 else len(old)
    else:
        end += 1
    path.write_text(old[:start] + text + old[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
