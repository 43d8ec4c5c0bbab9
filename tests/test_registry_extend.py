"""Extending compressbench through its registries: executor kinds (EXECUTORS, read by config
validation, build_executor and the CLI's --executor), plots (PLOTS and RESEARCH_PLOTS, read by
plot_report, plot_research and ``plot --only``), and the backend facts that live in the BackendKind
descriptor (built-in model names, own concurrency, scoring that re-reads prefixes).

A kind registered in a test is registered with ``Registry.added`` for one ``with`` block, so no test
leaves a kind behind (each test checks the registry's names after its block)."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compressbench.agent.research.config import load_research_config
from compressbench.agent.research.report import RESEARCH_PLOTS, plot_research
from compressbench.analysis.plots import PLOTS, PlotSkipped, plot_report
from compressbench.analysis.report import build_report
from compressbench.backends import BACKENDS, BackendKind, max_in_flight
from compressbench.cli.main import cli
from compressbench.core.errors import ConfigError, UsageError
from compressbench.core.registry import PlotKind, Registry
from compressbench.engine.config import config_from_dict
from compressbench.engine.executors import EXECUTORS, ExecutorKind
from compressbench.engine.records import read_records
from compressbench.engine.scheduler import LocalExecutor, build_executor
from compressbench.engine.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
HERE = sys.modules[__name__].__name__  # this module's import name, for "module:attr" targets


# --------------------------------------------------------------------------- Registry.added


def test_added_registers_for_the_block_only_even_when_the_block_fails():
    reg = Registry("codec", {"zip": "zlib:compress"})
    with reg.added("json", "json:dumps") as same:
        assert same is reg and reg.names() == ("zip", "json") and reg.load("json") is json.dumps
    assert reg.names() == ("zip",) and "json" not in reg
    with pytest.raises(RuntimeError, match="boom"):
        with reg.added("json", "json:dumps"):
            raise RuntimeError("boom")
    assert reg.names() == ("zip",)
    with pytest.raises(ValueError, match="'zip' is already registered"):
        with reg.added("zip", "json:dumps"):
            pass  # pragma: no cover
    assert reg.target("zip") == "zlib:compress"  # the original entry is untouched
    with pytest.raises(TypeError, match="'module:attr'"):
        with reg.added("bad", "json.dumps"):
            pass  # pragma: no cover
    assert reg.names() == ("zip",)


@pytest.mark.parametrize("label, registry", [("executor kinds", EXECUTORS), ("plots", PLOTS),
                                             ("research plots", RESEARCH_PLOTS)])
def test_the_new_registries_are_documented_and_load(label, registry):
    row = next(line for line in ARCHITECTURE.splitlines() if line.startswith(f"| {label} |"))
    assert set(re.findall(r"`([^`]+)`", row.split("|")[3])) == set(registry.names())
    for name in registry:
        assert callable(registry.load(name)), name


# --------------------------------------------------------------------------- executors

ROWS = [
    {"id": f"r{i}", "context": f"Crate {i} holds {n} {what} and leaves on day {d}.",
     "question": f"What does crate {i} hold?", "options": [f"{n} {what}", f"{n + 1} lamps", "nothing"],
     "answers": ["A"]}
    for i, (n, what, d) in enumerate([(3, "bolts", 2), (7, "cables", 5)])
]


def _raw(name: str, llama: Path, data: Path, **extra) -> dict:
    return {"name": name, "models": {"tl": {"backend": "hf", "model": str(llama), "options": {"threads": 1}}},
            "compressors": ["tl", "identity"], "predictors": ["tl"], "scorer": "tl",
            "datasets": [{"kind": "jsonl", "path": str(data), "name": "crates"}], "prompts": ["query"],
            "samples": 2, "temperatures": [0.7], "max_new_tokens": {"compressor": 6, "predictor": 4, "judge": 4},
            "mi_n_boot": 20, **extra}


class CountingExecutor(LocalExecutor):
    """A local executor that counts the stage work it ran per model (a stand-in for a new executor)."""

    def __init__(self, specs, factory=None):
        super().__init__(specs, factory)
        self.runs: Counter[str] = Counter()

    def run(self, model, fn, *args):
        self.runs[model] += 1
        return super().run(model, fn, *args)


BUILT: list[CountingExecutor] = []  # replaced per test (monkeypatch), so nothing outlives a test


def build_counting(config, factory=None) -> CountingExecutor:
    ex = CountingExecutor(config.models, factory)
    BUILT.append(ex)
    return ex


COUNTING = ExecutorKind(f"{HERE}:build_counting", in_process=True, address=False, help="counting test executor")


def test_an_unknown_executor_kind_is_refused_with_did_you_mean(tmp_path):
    raw = {"models": {"m": {"backend": "hf", "model": "x"}}, "compressors": ["m"], "predictors": ["m"],
           "scorer": "m", "datasets": [{"kind": "synthetic"}]}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**raw, "executor": "rya"})
    assert str(err.value) == "executor.kind must be one of local, ray, got 'rya'; did you mean 'ray'?"
    with pytest.raises(ConfigError, match=r"^unknown executor kind 'rya' \(did you mean 'ray'\?\); known: local, ray$"):
        EXECUTORS["rya"]
    with pytest.raises(ConfigError, match="the local executor runs in this process; remove it or use kind: ray"):
        config_from_dict({**raw, "executor": {"kind": "local", "address": "auto"}})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    res = CliRunner().invoke(cli, ["sweep", str(cfg), "--executor", "rya"])
    assert res.exit_code == 2
    assert "unknown executor kind 'rya' (did you mean 'ray'?); known: local, ray" in res.output
    res = CliRunner().invoke(cli, ["sweep", str(cfg), "--executor", "local", "--ray-address", "auto"])
    assert res.exit_code == 2 and "--ray-address needs --executor ray" in res.output


def test_a_registered_executor_is_used_by_config_scheduler_and_cli(monkeypatch, tiny_llama_dir, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "BUILT", [])
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    raw = _raw("viafake", tiny_llama_dir, data)
    local = run_sweep(config_from_dict(raw), tmp_path / "local", progress=False)
    with EXECUTORS.added("counting", COUNTING):
        cfg = config_from_dict({**raw, "executor": "counting"})
        assert cfg.executor["kind"] == "counting"
        assert isinstance(build_executor(cfg), CountingExecutor)
        with pytest.raises(UsageError, match="cannot be used with the ray executor"):
            build_executor(config_from_dict({**raw, "executor": "ray"}), factory=lambda *a, **k: None)
        cfg_path = tmp_path / "c.yaml"
        cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        res = CliRunner().invoke(cli, ["sweep", str(cfg_path), "--runs-dir", str(tmp_path / "runs"),
                                       "--executor", "counting"])
        assert res.exit_code == 0, res.output
        assert "[local|ray|counting]" in CliRunner().invoke(cli, ["sweep", "--help"]).output
    assert EXECUTORS.names() == ("local", "ray")
    assert CliRunner().invoke(cli, ["sweep", str(cfg_path), "--executor", "counting"]).exit_code == 2
    # the CLI's sweep ran every model call through the registered executor: the compressor, the
    # predictor and the scorer are one model, so all of its work was counted there
    ex = BUILT[-1]
    assert set(ex.runs) == {"tl"} and ex.runs["tl"] >= 3 and ex.loads == Counter({"tl": 1})

    def comparable(run_dir):
        out = [r.to_dict() for r in read_records(run_dir)]
        for d in out:
            d.pop("wall_s", None)
            d.pop("created_at", None)
        return sorted(out, key=lambda d: json.dumps(d, sort_keys=True, default=str))

    # ... and gave the records the local executor gives (seeded sampling, the same model)
    assert comparable(tmp_path / "runs" / "viafake") == comparable(local.run_dir)


# --------------------------------------------------------------------------- plots


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from run_fixtures import write_run

    return write_run(tmp_path_factory.mktemp("runs"))


def fig_n_cells(report):
    """A test plot: one bar, the number of cells in the report."""
    from matplotlib.figure import Figure  # lazy: matplotlib, as the package's plots

    fig = Figure(figsize=(2, 2))
    fig.subplots().bar([0], [len(report.cells)])
    return fig


def fig_never(report):
    raise PlotSkipped("this run has no unicorns")


def test_an_unknown_plot_is_refused_with_did_you_mean(run_dir, tmp_path):
    rep = build_report(run_dir, n_boot=100)
    with pytest.raises(ConfigError) as err:
        plot_report(rep, tmp_path, names=["mi_scalin"])
    assert str(err.value).startswith("unknown plot 'mi_scalin' (did you mean 'mi_scaling'?); known: cost_accuracy,")
    assert not list(tmp_path.iterdir())  # refused before drawing anything
    with pytest.raises(ConfigError, match=r"^unknown research plot 'research_round' \(did you mean 'research_rounds'\?\)"):
        plot_research(tmp_path, names=["research_round"])
    res = CliRunner().invoke(cli, ["plot", str(run_dir), "--only", "rate_distorsion"])
    assert res.exit_code == 2 and "unknown plot 'rate_distorsion' (did you mean 'rate_distortion'?)" in res.output


def test_a_registered_plot_is_drawn_by_plot_report_and_the_cli(run_dir, tmp_path):
    rep = build_report(run_dir, n_boot=100)
    n_cells = len({r.cell_key for r in read_records(run_dir)})  # counted from the records, not the report
    before = PLOTS.names()
    with PLOTS.added("n_cells", PlotKind(f"{HERE}:fig_n_cells", "any cell")), \
            PLOTS.added("unicorns", PlotKind(f"{HERE}:fig_never", "unicorns")):
        res = plot_report(rep, tmp_path / "all", formats=("svg",))
        assert list(res.written)[-1:] == ["n_cells"] and res.skipped["unicorns"] == "this run has no unicorns"
        assert (tmp_path / "all" / "n_cells.svg").is_file()
        res = plot_report(rep, tmp_path / "one", formats=("png",), names=["n_cells"])
        assert list(res.written) == ["n_cells"] and res.skipped == {}
        assert PLOTS.load("n_cells")(rep).axes[0].patches[0].get_height() == n_cells
        out = CliRunner().invoke(cli, ["plot", str(run_dir), "--only", "n_cells", "--only", "unicorns",
                                       "--format", "png", "--out", str(tmp_path / "cli")])
        assert out.exit_code == 0, out.output
        assert "unicorns: skipped (this run has no unicorns)" in out.output
        assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["n_cells.png"]
        help_text = " ".join(CliRunner().invoke(cli, ["plot", "--help"]).output.split())  # unwrapped
        for name in PLOTS:  # every plot, the new ones too, with what the run must have for it
            assert f" {name} {PLOTS[name].needs}" in help_text, name
    assert PLOTS.names() == before and "n_cells" not in PLOTS
    assert CliRunner().invoke(cli, ["plot", str(run_dir), "--only", "n_cells"]).exit_code == 2


# --------------------------------------------------------------------------- backend facts


def test_max_in_flight_comes_from_the_descriptor():
    assert max_in_flight("hf", {}) is None and max_in_flight("vllm", {"data_parallel_size": 4}) is None
    assert not BACKENDS["hf"].schedules_own_concurrency and BACKENDS["openai"].schedules_own_concurrency
    # two endpoints (``/v1`` and a trailing slash name the same root): 4 at a, 7 at b (its own limit)
    opts = {"base_url": "http://a:1/v1", "endpoints": ["http://a:1/", "http://b:2/v1"], "max_concurrency": 4,
            "endpoint_concurrency": {"http://b:2": 7}}
    assert max_in_flight("openai", opts) == 4 + 7
    assert max_in_flight("openai", {}) == 16  # no URL yet: one endpoint at the default 16
    fake = BackendKind("fakehttp", "json:dumps", can_score=False, local_weights=False, gpus=lambda o: 0.0,
                       in_flight=lambda o: 3 * int(o.get("n", 1)))
    with BACKENDS.added("fakehttp", fake):
        assert max_in_flight("fakehttp", {"n": 5}) == 15
    assert "fakehttp" not in BACKENDS


def _plan_config(tmp_path: Path, scoring: str | None) -> Path:
    opts = {"base_url": "http://127.0.0.1:9/v1", **({"scoring": scoring} if scoring else {})}
    raw = {"name": f"p-{scoring}", "models": {"small": {"backend": "hf", "model": "smollm2-135m"},
                                              "served": {"backend": "openai", "model": "gpt-4o-mini", "options": opts}},
           "compressors": ["small"], "predictors": ["small"], "scorer": "served", "samples": 1,
           "datasets": [{"kind": "synthetic", "n_patients": 2, "n_questions_per_patient": 1}]}
    p = tmp_path / f"{scoring}.yaml"
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


def test_plan_notes_the_http_scorers_prefix_rereads_from_the_descriptor_only(tmp_path):
    plans = {}
    for scoring in (None, "completions", "sglang"):
        res = CliRunner().invoke(cli, ["plan", str(_plan_config(tmp_path, scoring)), "--estimate-tokens",
                                       "--format", "json"])
        assert res.exit_code == 0, res.output
        plans[scoring] = json.loads(res.output)
    rereads = {s: any("re-reads the prefix" in n for n in p["notes"]) for s, p in plans.items()}
    assert rereads == {None: True, "completions": True, "sglang": False}
    assert {s: BACKENDS["openai"].scoring_rereads_prefix({"scoring": s} if s else {}) for s in plans} == rereads
    assert not BACKENDS["hf"].scoring_rereads_prefix({}) and not BACKENDS["vllm"].scoring_rereads_prefix({})

    def numbers(p):  # everything but the notes and the (scoring-named) config name
        return {k: v for k, v in p.items() if k not in ("notes", "name", "config")}

    # the fact changes the note only, never a count: sglang and auto plan the same work
    assert numbers(plans[None]) == numbers(plans["sglang"]) == numbers(plans["completions"])


def test_only_kinds_with_built_in_names_get_the_model_typo_check():
    raw = {"compressors": ["m"], "predictors": ["m"], "scorer": "m", "datasets": [{"kind": "synthetic"}]}
    assert BACKENDS["hf"].named_models and not BACKENDS["vllm"].named_models
    with pytest.raises(ConfigError, match="did you mean 'smollm2-135m'"):
        config_from_dict({**raw, "models": {"m": {"backend": "hf", "model": "smollm2-135"}}})
    # vLLM does not resolve built-in names: the same reference is its to resolve (a hub id, a folder)
    cfg = config_from_dict({**raw, "models": {"m": {"backend": "vllm", "model": "smollm2-135"}}})
    assert cfg.models["m"].model == "smollm2-135"


def test_the_research_config_names_the_registered_backend_kinds(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"models": {"m": {"model": "x"}}, "predictor": "m"}), encoding="utf-8")
    fake = BackendKind("fakehttp", "json:dumps", can_score=False, local_weights=False, gpus=lambda o: 0.0)
    with pytest.raises(ConfigError) as err:
        load_research_config(p)
    assert "models.m needs 'backend' (hf, openai, vllm) and 'model'" in str(err.value)
    with BACKENDS.added("fakehttp", fake), pytest.raises(ConfigError) as err:
        load_research_config(p)
    assert "models.m needs 'backend' (hf, openai, vllm, fakehttp) and 'model'" in str(err.value)
