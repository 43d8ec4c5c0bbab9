"""Quiet by default: the CLI's logging drops other libraries' records below warning (bm25s sets its
own logger to DEBUG when imported) unless -vv / --log-level debug, and the hf backend hides
transformers' weight-loading bars unless compressbench logs at info (-v)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A throw-away command on the real CLI group: it logs as a third-party library and as compressbench.
_CLI = """
import logging, sys
from compressbench.cli.main import cli

@cli.command("noise")
def noise():
    logging.getLogger("bm25s").setLevel(logging.DEBUG)  # what bm25s does at import
    logging.getLogger("bm25s").debug("third-party debug")
    logging.getLogger("httpx").info("third-party info")
    logging.getLogger("httpx").warning("third-party warning")
    logging.getLogger("compressbench.engine").info("our info")
    logging.getLogger("compressbench.engine").debug("our debug")
    logging.getLogger("compressbench.engine").warning("our warning")

cli(sys.argv[1:], prog_name="compressbench")
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _stderr(*args: str) -> str:
    res = subprocess.run([sys.executable, "-c", _CLI, *args, "noise"], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_default_shows_warnings_only():
    err = _stderr()
    assert "third-party warning" in err and "our warning" in err
    assert "third-party debug" not in err and "third-party info" not in err and "our info" not in err


def test_verbose_adds_our_info_but_not_other_libraries_chatter():
    for flag in (["-v"], ["--log-level", "info"]):
        err = _stderr(*flag)
        assert "our info" in err and "our debug" not in err
        assert "third-party debug" not in err and "third-party info" not in err and "third-party warning" in err


def test_debug_shows_everything():
    for flag in (["-vv"], ["--log-level", "debug"]):
        err = _stderr(*flag)
        assert all(s in err for s in ("third-party debug", "third-party info", "our info", "our debug"))


@pytest.mark.slow
def test_weight_loading_bars_only_when_compressbench_logs_info(tiny_llama_dir):
    code = ("import logging, sys\n"
            "logging.basicConfig(level=getattr(logging, sys.argv[1]))\n"
            "from compressbench.backends.hf import HFBackend\n"
            "import transformers\n"
            "HFBackend(sys.argv[2])\n"
            "print(transformers.utils.logging.is_progress_bar_enabled())\n")

    def run(level: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in _env().items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")}
        return subprocess.run([sys.executable, "-c", code, level, str(tiny_llama_dir)], capture_output=True,
                              text=True, env=env, timeout=300, check=True)

    quiet, loud = run("WARNING"), run("INFO")
    assert "Loading weights" not in quiet.stderr and "Loading weights" in loud.stderr
    assert quiet.stdout.strip() == loud.stdout.strip() == "True"  # the bars are switched back on afterwards


@pytest.mark.slow
def test_plan_says_it_is_counting_before_the_tokenizers_load():
    from click.testing import CliRunner

    from compressbench.cli.main import cli
    from compressbench.core.paths import PACKAGE_DIR

    cfg = str(PACKAGE_DIR / "configs" / "demo.yaml")
    res = CliRunner().invoke(cli, ["plan", cfg, "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("plan: counting the tokens of every prompt with the tokenizers of 2 model(s)")
    assert res.stdout.startswith("Plan for sweep 'demo'")
    quick = CliRunner().invoke(cli, ["plan", cfg, "--limit", "1", "--estimate-tokens", "--format", "json"])
    assert quick.exit_code == 0 and quick.stderr == ""  # nothing to wait for: no line
