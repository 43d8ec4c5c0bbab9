"""The hf backend's choice of torch CPU threads (compressbench.backends.hf.choose_cpu_threads)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compressbench.backends.hf import THREADS_ENV, choose_cpu_threads
from compressbench.core.errors import UsageError


def choose(requested=None, *, current=8, usable=8, **env):
    return choose_cpu_threads(requested, current=current, usable_cpus=usable, environ=env)[0]


def test_default_is_half_the_usable_cpus_at_least_one():
    assert [choose(current=n, usable=n) for n in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]


def test_the_option_wins_over_everything():
    assert choose(3, OMP_NUM_THREADS="1", **{THREADS_ENV: "2"}) == 3


def test_the_env_var_sets_threads_or_keeps_torch_default():
    assert choose(**{THREADS_ENV: "5"}) == 5
    assert choose(OMP_NUM_THREADS="1", **{THREADS_ENV: " 2 "}) == 2  # compressbench's own variable first
    assert choose(**{THREADS_ENV: "torch"}) is None
    assert choose(**{THREADS_ENV: "TORCH"}) is None
    assert choose(**{THREADS_ENV: ""}) == 4  # empty = unset


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_env_value_is_a_usage_error_naming_the_variable(bad):
    with pytest.raises(UsageError, match=THREADS_ENV):
        choose(**{THREADS_ENV: bad})


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_a_bad_option_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="threads must be an integer >= 1"):
        choose(bad)


def test_omp_or_mkl_threads_set_by_the_user_are_respected():
    assert choose(OMP_NUM_THREADS="3") is None
    assert choose(MKL_NUM_THREADS="2") is None


def test_a_thread_count_the_program_set_is_respected():
    # torch.set_num_threads(3) before the backend loads: torch no longer has its default of 8
    assert choose(current=3, usable=8) is None
    assert choose(current=12, usable=8) is None


@pytest.mark.slow
def test_a_backend_applies_the_choice_and_leaves_a_user_setting(tiny_llama_dir):
    """In fresh processes (torch's thread count is process-wide): unset -> half the CPUs; the
    user's torch.set_num_threads(k) before loading -> k; COMPRESSBENCH_TORCH_THREADS=torch -> torch's."""
    code = ("import os, sys, torch\n"
            "from compressbench.backends.hf import HFBackend, _usable_cpus\n"
            "if sys.argv[1] != '-': torch.set_num_threads(int(sys.argv[1]))\n"
            "start = torch.get_num_threads()\n"
            "HFBackend(sys.argv[2])\n"
            "print(start, torch.get_num_threads(), _usable_cpus())")
    env_base = {k: v for k, v in __import__("os").environ.items()
                if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV)}

    def run(arg: str, **env: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", code, arg, str(tiny_llama_dir)], env={**env_base, **env},
                             capture_output=True, text=True, check=True)
        return [int(x) for x in out.stdout.split()]

    start, after, usable = run("-")
    assert start == usable and after == max(1, usable // 2)
    assert run("3")[1] == 3
    assert run("-", **{THREADS_ENV: "torch"})[1] == usable
    assert run("-", OMP_NUM_THREADS="1")[1] == 1
