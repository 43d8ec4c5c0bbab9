"""`compressbench plan`: token counts against finished runs' recorded usage, the GPU schedule and
dollars against hand computations."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compressbench.cli.main import cli
from compressbench.engine.config import config_from_dict, load_config
from compressbench.measure.cost import PriceTable
from compressbench.core.errors import UsageError
from compressbench.analysis.plan import (
    GPUType,
    Lengths,
    count_work,
    gpu_type,
    load_gpu_types,
    make_counter,
    make_plan,
    schedule_stage,
)
from compressbench.core.prompts import chat_text, load_prompt
from compressbench.engine.records import read_records
from compressbench.engine.sweep import run_sweep
from compressbench.measure.scoring import AUTO_ALL_FACTOR
from compressbench.core.types import Example

ROLE_OF = {"compress": "compressor", "score": "scorer", "predict": "predictor", "judge": "judge"}
H100 = GPUType("H100-80GB", 80, 9.89e14)


def recorded_usage(run_dir: Path) -> dict[str, list[float]]:
    """[calls, prompt tokens, completion tokens] per role, each call counted once (compressor and
    scorer usage repeat in the records of every predictor)."""
    tot: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0])
    seen = set()
    for r in (rec.to_dict() for rec in read_records(run_dir)):
        c = r["cell"]
        for role in ("compressor", "scorer", "predictor", "judge"):
            u = (r["usage"] or {}).get(role)
            if not u or not u.get("n_calls"):
                continue
            key = (role, c["dataset"], c["compressor"], c["prompt"], c["temperature"], c["seed"], r["example_id"],
                   c["predictor"] if role in ("predictor", "judge") else None)
            if key not in seen:
                seen.add(key)
                t = tot[role]
                t[0] += u["n_calls"]
                t[1] += u["n_prompt_tokens"]
                t[2] += u["n_completion_tokens"]
    return tot


def auto_extra_scorer_calls(run_dir: Path) -> int:
    """Scorer calls a run made beyond one round per group: ``mi_negatives: auto`` starts at K = 15
    and grows K (or jumps to N - 1) round by round, each further round scoring the group's N
    prefixes again; the K of each round a group scored is in its records' ``mi_estimate.k_path``.
    The plan counts the first round only ("auto is planned at its start")."""
    rounds = {}
    for r in read_records(run_dir):
        est, c = r.mi_estimate or {}, r.cell
        if est.get("negatives") == "auto":
            rounds[(c.dataset, c.compressor, c.prompt, c.temperature, c.seed, c.scorer)] = (
                len(est["k_path"]), int(est["n_contexts"]))
    return sum(n * (n_rounds - 1) for n_rounds, n in rounds.values())


ROWS = [
    {"id": f"q{i}", "context": f"Item {i}: the {c} box weighs {w} kg and sits on shelf {s}.",
     "question": f"Which shelf holds the {c} box?", "options": [f"shelf {s}", f"shelf {s + 1}", f"shelf {s + 2}"],
     "answers": ["A"]}
    for i, (c, w, s) in enumerate([("red", 3, 2), ("blue", 5, 7), ("green", 1, 4), ("grey", 8, 1)])
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama_dir):
    """A real sweep on the tiny Llama (2 compressor models' worth of grid, baselines included)."""
    tmp = tmp_path_factory.mktemp("plan")
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    raw = {
        "name": "plantest",
        "models": {"tiny": {"backend": "hf", "model": str(tiny_llama_dir), "options": {"dtype": "float32"}}},
        "compressors": ["tiny", "identity", "truncate:6"], "predictors": ["tiny"], "scorer": "tiny",
        "datasets": [{"kind": "jsonl", "path": str(data), "name": "shelves"}],
        "prompts": ["query", "agnostic"], "samples": 2, "temperatures": [0.7, 1.0],
        "max_new_tokens": {"compressor": 12, "predictor": 10, "judge": 8}, "mi_n_boot": 0,
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = config_from_dict(raw)
    res = run_sweep(cfg, tmp / "runs", progress=False)
    return tmp / "c.yaml", res.run_dir


def test_plan_counts_prompt_tokens_of_a_real_run_and_bounds_its_completions(tiny_run):
    cfg_path, run_dir = tiny_run
    rec = recorded_usage(run_dir)
    plan = make_plan(load_config(cfg_path))
    assert plan.token_counting["tiny"].startswith("its tokenizer")
    by_role = {ROLE_OF[w.stage]: w for w in plan.works}
    # The compressor prompt is fully known before the run: the same tokens, exactly.
    assert by_role["compressor"].n_calls == rec["compressor"][0]
    assert by_role["compressor"].n_prompt_tokens == rec["compressor"][1]
    assert by_role["predictor"].n_calls == rec["predictor"][0]
    for role in ("compressor", "predictor"):  # generation stops early: max_new_tokens bounds it
        assert by_role[role].n_completion_tokens >= rec[role][2]
    # Calibrated from the run's own lengths, every count is within 10% (scorer and predictor prompts
    # hold the compressions, re-tokenised by the plan).
    cal = make_plan(load_config(cfg_path), calibrate=run_dir)
    planned: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # the identity's scoring has its own line
    for w in cal.works:
        t = planned[ROLE_OF[w.stage]]
        t[0] += w.n_calls
        t[1] += w.n_prompt_tokens
        t[2] += w.n_completion_tokens
    assert any(w.part == "identity" for w in cal.works)
    for role, (p_calls, p_prompt, p_completion) in planned.items():
        calls, prompt, completion = rec[role]
        assert p_calls == calls, role
        assert prompt == pytest.approx(p_prompt, rel=0.10), role
        assert completion == pytest.approx(p_completion, rel=0.10, abs=1), role


FREE_ROWS = [
    {"id": f"f{i}", "context": f"Visit {i}: patient {n} got {d} mg of drug {x}.",
     "question": f"How much of drug {x} did patient {n} get?", "answers": [f"{d} mg"], "reference": f"{d} mg"}
    for i, (n, d, x) in enumerate([("Ann", 5, "A"), ("Bob", 10, "B"), ("Cy", 15, "C"), ("Di", 20, "D")])
]


@pytest.fixture(scope="module")
def tiny_judged_run(tmp_path_factory, tiny_llama_dir):
    """A real sweep on the tiny Llama with what the plain one lacks: two scorers, a design of K = 2
    negatives, a generate and a loglik predictor (its prompts through the chat template), and a
    judge on free-form questions."""
    tmp = tmp_path_factory.mktemp("plan_judged")
    data = tmp / "free.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FREE_ROWS), encoding="utf-8")
    tiny = {"backend": "hf", "model": str(tiny_llama_dir), "options": {"dtype": "float32"}}
    raw = {
        "name": "planjudged",
        "models": {"tiny": tiny, "tiny2": {**tiny, "options": {"dtype": "auto"}}},
        "compressors": ["tiny", "empty", "identity"], "predictors": ["tiny", "tiny2"],
        "predictor_mode": {"tiny": "generate", "tiny2": "loglik"}, "scorers": ["tiny", "tiny2"],
        "judge": "tiny", "datasets": [{"kind": "jsonl", "path": str(data), "name": "visits"}],
        "prompts": ["query"], "samples": 2, "temperatures": [0.7], "mi_negatives": 2,
        "mi_identity_negatives": "all", "loglik_prompt_format": "chat",
        "max_new_tokens": {"compressor": 12, "predictor": 10, "judge": 8}, "mi_n_boot": 0,
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    res = run_sweep(config_from_dict(raw), tmp / "runs", progress=False)
    return tmp / "c.yaml", res.run_dir


def test_plan_counts_every_scorer_and_judges_only_voted_answers(tiny_judged_run):
    """Calls per (stage, model) against the run's records: both scorers (each its own prefills
    and design of K negatives), both predictor modes, and the judge, which grades a free-form
    example's voted answer: the generate predictor's (when its answer parses), never the loglik
    predictor's (an open question gets the reference's NLL, no answer)."""
    cfg_path, run_dir = tiny_judged_run
    recs = [r.to_dict() for r in read_records(run_dir)]
    rec: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0])
    seen = set()
    unvoted = 0  # (group, example) of the generate predictor without a voted answer: the judge skips it
    for r in recs:
        c = r["cell"]
        models = {"compressor": c["compressor"], "scorer": c["scorer"], "predictor": c["predictor"], "judge": "tiny"}
        for role, model in models.items():
            u = (r["usage"] or {}).get(role)
            key = (role, model, c["compressor"], r["example_id"],
                   c["predictor"] if role in ("predictor", "judge") else None)
            if not u or not u.get("n_calls") or key in seen:
                continue
            seen.add(key)
            t = rec[(role, model)]
            t[0] += u["n_calls"]
            t[1] += u["n_prompt_tokens"]
            t[2] += u["n_completion_tokens"]
        if c["predictor"] == "tiny" and c["scorer"] == "tiny" and r["voted_answer"] is None:
            unvoted += 1
    plan = make_plan(load_config(cfg_path))
    planned: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for w in plan.works:
        t = planned[(ROLE_OF[w.stage], w.model)]
        t[0] += w.n_calls
        t[1] += w.n_prompt_tokens
        t[2] += w.n_completion_tokens
    assert set(planned) == set(rec) == {("compressor", "tiny"), ("scorer", "tiny"), ("scorer", "tiny2"),
                                        ("predictor", "tiny"), ("predictor", "tiny2"), ("judge", "tiny")}
    # 3 groups x 4 examples: the scoring rows of both scorers, and 4 examples x 2 samples per predictor
    assert planned[("scorer", "tiny")][0] == planned[("scorer", "tiny2")][0] == 12
    assert planned[("predictor", "tiny2")][0] == 24
    assert planned[("judge", "tiny")][0] == 12  # the generate predictor's 3 groups x 4 examples only
    for key, (calls, prompt, completion) in rec.items():
        p_calls, p_prompt, p_completion = planned[key]
        assert p_calls == calls + (unvoted if key == ("judge", "tiny") else 0), key
        if key == ("compressor", "tiny"):  # its prompts are known before the run: the same tokens, exactly
            assert prompt == p_prompt, key
        assert completion <= p_completion, key  # bounded by max_new_tokens (loglik and scoring: 0)
    # calibrated from the run, prompts within 5% (the loglik predictor's prefix through its chat template)
    cal: dict[tuple[str, str], float] = defaultdict(float)
    for w in make_plan(load_config(cfg_path), calibrate=run_dir).works:
        cal[(ROLE_OF[w.stage], w.model)] += w.n_prompt_tokens
    for key, (_, prompt, _) in rec.items():
        if key == ("judge", "tiny") and unvoted:
            continue  # the plan grades the unvoted ones too
        assert prompt == pytest.approx(cal[key], rel=0.05), key
    # the empty and identity baselines' scoring is fully known: prefixes + their own texts, for each scorer
    by_line = {(w.stage, w.model, w.part): w for w in plan.works}
    for sc in ("tiny", "tiny2"):
        ident = [r for r in recs if r["cell"]["compressor"] == "identity" and r["cell"]["scorer"] == sc
                 and r["cell"]["predictor"] == "tiny"]
        assert by_line[("score", sc, "identity")].n_prompt_tokens == sum(
            r["usage"]["scorer"]["n_prompt_tokens"] for r in ident)


def test_plan_cli_prints_table_and_json(tiny_run):
    cfg_path, _ = tiny_run
    res = CliRunner().invoke(cli, ["plan", str(cfg_path), "--gpus", "2", "--gpu-type", "a100"])
    assert res.exit_code == 0, res.output
    assert "compress" in res.output and "A100-80GB" in res.output and "Schedule on 2 x A100-80GB" in res.output
    js = CliRunner().invoke(cli, ["plan", str(cfg_path), "--format", "json", "--estimate-tokens"])
    assert js.exit_code == 0, js.output
    d = json.loads(js.output)
    assert d["token_counting"]["tiny"].startswith("estimate, 4 chars/token")
    assert {w["stage"] for w in d["works"]} == {"compress", "score", "predict"}
    bad = CliRunner().invoke(cli, ["plan", str(cfg_path), "--gpu-type", "h1OO"])
    assert bad.exit_code == 2 and "unknown GPU type" in bad.output and "H100-80GB" in bad.output


def test_estimated_tokens_and_api_dollars_by_hand(tmp_path):
    exs = [Example(id=f"e{i}", dataset="d", context=c * 400, question="What is x?", answers=("x",))
           for i, c in enumerate("xy")]
    ex = exs[0]
    raw = {
        "name": "api",
        "models": {"served": {"backend": "openai", "model": "qwen7b", "options": {"base_url": "http://h:1/v1"},
                              "info": {"n_params": 7.6e9, "n_layers": 28, "n_heads": 28, "head_dim": 128}},
                   "gpt": {"backend": "openai", "model": "gpt-4o", "paid_api": True,
                           "options": {"base_url": "https://api.example/v1", "scoring": "none"}}},
        "compressors": ["served"], "predictors": ["gpt"], "scorer": "served",
        "datasets": [{"kind": "synthetic", "name": "d"}], "samples": 3, "temperatures": [0.7],
        "max_new_tokens": {"compressor": 50, "predictor": 20, "judge": 8}, "mi_negatives": "all",
    }
    cfg = config_from_dict(raw)
    plan = make_plan(cfg, examples={"d": exs}, n_gpus=1, utilisation=0.5)
    work = {w.stage: w for w in plan.works}
    comp = load_prompt("compress_query").render_chat(context=ex.context, question=ex.question)
    assert work["compress"].n_prompt_tokens == 2 * (math.ceil(len(chat_text(comp)) / 4) + 24)
    assert work["compress"].n_completion_tokens == 2 * 3 * 50
    pred = load_prompt("predict").render_chat(compression="", question=ex.question, options_block="")
    n_pred_prompt = 6 * (math.ceil(len(chat_text(pred)) / 4) + 24 + 50)  # + one 50-token compression each
    assert work["predict"].n_prompt_tokens == n_pred_prompt and work["predict"].n_calls == 6
    price = PriceTable.load().lookup("gpt-4o")
    assert work["predict"].api_usd == pytest.approx((n_pred_prompt * 2.50 + 6 * 20 * 10.00) / 1e6)
    assert price.input_usd_per_mtok == 2.50  # the dated table the hand figure used
    assert work["predict"].gpu_hours is None and work["predict"].paid_api
    # GPU-hours = FLOPs / (peak x utilisation) / 3600 on the default H100
    assert work["compress"].gpu_hours == pytest.approx(work["compress"].flops / (9.89e14 * 0.5) / 3600)
    assert plan.total_api_usd == pytest.approx(work["predict"].api_usd)
    assert [s.stage for s in plan.schedule] == ["compress", "score"]  # the paid API needs no GPU
    # The scorer: per example one prefill of its prefix, then each of the N*M = 6 compressions
    # (50 tokens) after it, charged by cost.py's two functions (not as one prefill of prefix + all
    # compressions).
    from compressbench.measure.cost import generation_flops, prefill_flops
    from compressbench.analysis.plan import _info_for

    info = _info_for(cfg, "served", None)
    p_tok = math.ceil(len(load_prompt("mi_score").render_text(context=ex.context, question=ex.question)) / 4)
    assert work["score"].n_calls == 2
    assert work["score"].n_prompt_tokens == 2 * (p_tok + 6 * 50)
    assert work["score"].flops == pytest.approx(2 * (prefill_flops(info, p_tok) + 6 * generation_flops(info, p_tok, 50)))
    # One example: MI is undefined (N < 2), so the run scores nothing and the plan counts no scoring.
    one = make_plan(cfg, examples={"d": exs[:1]}, n_gpus=1)
    assert [w.stage for w in one.works] == ["compress", "predict"]


def test_examples_per_dataset_scales_linearly_and_scoring_quadratically(tiny_llama_dir):
    exs = [Example(id=f"e{i}", dataset="d", context=f"context number {i} " * 5, question="q?", answers=("a",))
           for i in range(4)]
    cfg = config_from_dict({
        "name": "s", "models": {"t": {"backend": "hf", "model": str(tiny_llama_dir)}},
        "compressors": ["t"], "predictors": ["t"], "scorer": "t", "datasets": [{"kind": "synthetic", "name": "d"}],
        "samples": 2, "mi_negatives": "all"})
    counters = {"t": make_counter("t", "hf", str(tiny_llama_dir))[0]}
    one = count_work(cfg, {"d": exs}, counters, lengths=Lengths({}, {"t": 10.0}))
    ten = count_work(cfg, {"d": exs}, counters, scale={"d": 10.0}, lengths=Lengths({}, {"t": 10.0}))
    for key in one:
        assert ten[key].n_calls == 10 * one[key].n_calls
    assert ten[("compress", "t")].n_prompt_tokens == pytest.approx(10 * one[("compress", "t")].n_prompt_tokens)
    prefixes = one[("score", "t")].n_prompt_tokens - 4 * (4 * 2 * 10)  # 4 rows x (4 examples x 2 samples x 10)
    assert ten[("score", "t")].n_prompt_tokens == pytest.approx(10 * prefixes + 40 * (40 * 2 * 10))


def test_schedule_by_hand():
    usable = 80 * 0.9  # 72 GB
    models = {"q72": (10.0, 187.2), "q7": (4.0, 18.2), "q3": (2.0, 7.8), "q1": (1.0, 3.9)}
    # 8 GPUs: 72B over tp 4 (144 < 187.2 <= 288), the small ones a GPU each, the spare GPU a second q7.
    s8 = schedule_stage("compress", models, H100, 8)
    units = {u.models: u for u in s8.units}
    assert units[("q72",)].gpus_per_replica == 4 and units[("q72",)].hours == pytest.approx(2.5)
    assert units[("q7",)].replicas == 2 and units[("q7",)].hours == pytest.approx(2.0)
    assert sum(u.n_gpus for u in s8.units) == 8 and s8.hours == pytest.approx(2.5)
    # 5 GPUs: the three small ones share one (18.2 + 7.8 + 3.9 <= 72) and time-share it.
    s5 = schedule_stage("compress", models, H100, 5)
    shared = next(u for u in s5.units if len(u.models) == 3)
    assert shared.memory_gb == pytest.approx(29.9) and shared.memory_gb <= usable
    assert s5.hours == pytest.approx(7.0)
    # 2 GPUs: the 72B model cannot fit; the plan says how many it needs.
    s2 = schedule_stage("compress", models, H100, 2)
    assert any("--gpus 4" in n for n in s2.notes)
    # waves: two 1-GPU models of 3 h and 1 h on one GPU run one after the other
    w = schedule_stage("predict", {"a": (3.0, 40.0), "b": (1.0, 40.0)}, H100, 1)
    assert w.hours == pytest.approx(4.0) and any("waves" in n for n in w.notes)


def test_gpu_table():
    table = load_gpu_types()
    assert gpu_type("h200", table).memory_gb == 141
    assert gpu_type("H100-80GB", table).peak_flops == 9.89e14
    with pytest.raises(UsageError, match="did you mean 'L40S-48GB'"):
        gpu_type("L40", table)


@pytest.mark.slow
def test_plan_matches_the_finished_demo_run_within_10_percent(demo_run):
    """The issue's check: the plan of the demo's config against the demo run's recorded usage."""
    _, run_dir = demo_run
    rec = recorded_usage(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    plan = make_plan(cfg)
    assert plan.token_counting["smol"].startswith("its tokenizer")  # the real SmolLM2 tokenizer
    # the demo has two model compressors and two (loglik) predictors: compare per role, summed over models
    planned = {role: [0.0, 0.0, 0.0] for role in rec}
    for w in plan.works:
        t = planned[ROLE_OF[w.stage]]
        t[0] += w.n_calls
        t[1] += w.n_prompt_tokens
        t[2] += w.n_completion_tokens
    assert set(planned) == {"compressor", "scorer", "predictor"}
    # auto's further rounds (the plan counts its first): none where a group's full matrix was as cheap
    # as its start design (the demo's 32 contexts are 16 distinct ones), N per round where K grew
    extra = auto_extra_scorer_calls(run_dir)
    for role, (calls, prompt, completion) in rec.items():
        p_calls, p_prompt, p_completion = planned[role]
        assert p_calls + (extra if role == "scorer" else 0) == calls, role
        if role == "compressor":  # its prompts are known before the run: the same tokens, exactly
            assert prompt == p_prompt, role
        elif role == "predictor":  # it holds compressions, whose lengths are bounded by max_new_tokens
            assert prompt <= p_prompt, role
        # the scorer under auto: no bound from its start design (K grows, or every context is scored
        # at once where that is as cheap, as on the demo's repeated contexts); checked calibrated below
        assert completion <= p_completion, role  # generations: bounded by max_new_tokens (loglik: 0)
    calibrated = {role: [0.0, 0.0] for role in rec}
    for w in make_plan(cfg, calibrate=run_dir).works:  # with the run's lengths, every count
        calibrated[ROLE_OF[w.stage]][0] += w.n_prompt_tokens
        calibrated[ROLE_OF[w.stage]][1] += w.n_completion_tokens
    for role, (prompt, completion) in calibrated.items():
        rec_calls, rec_prompt, rec_completion = rec[role]
        if role == "scorer":
            # auto is planned at its start design (K = 15). On the demo (32 contexts, 16 distinct) it
            # scores every context at once, the shortcut it takes only where that costs at most
            # AUTO_ALL_FACTOR x the start design's (prefix, compression) pairs: so between 1x and that
            # factor of the plan (the prefixes are the same in both), and no further round
            assert extra == 0
            assert prompt <= rec_prompt <= AUTO_ALL_FACTOR * prompt, role
            continue
        # compressor prompts are known exactly; predictor prompts hold the compressions, re-tokenised
        # by the plan (2.9% over on the demo)
        rel = {"compressor": 0.0, "predictor": 0.05}[role]
        assert rec_prompt == pytest.approx(prompt, rel=rel), role
        assert rec_completion == pytest.approx(completion, rel=0.10, abs=1e-9), role
