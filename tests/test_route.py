"""The offline router: routing and its cost by hand, the split discipline (τ is never chosen on
the half it is evaluated on), arms and costs from a run's records through the report's cost rule,
the Findings lines and the ``compressbench route`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from compressbench.core.tables import TERMINAL_WIDTH

from compressbench.analysis.report import build_report, load_run, record_costs
from compressbench.analysis.route import Arms, build_arms, choose_tau, held_out, route, split_halves
from compressbench.cli.main import cli
from compressbench.core.stats import accuracy_interval
from compressbench.measure.cost import PriceTable


def _arms(n: int = 8, seed: int = 0) -> Arms:
    """Three arms (cheap, mid, identity) with random signals and outcomes."""
    rng = np.random.default_rng(seed)
    conf = rng.random((3, n))
    correct = (rng.random((3, n)) < [[0.5], [0.7], [0.9]]).astype(float)
    comp = np.array([[1.0] * n, [3.0] * n, [0.0] * n])
    pred = np.array([[1.0] * n, [1.0] * n, [10.0] * n])
    return Arms(("cheap", "mid", "identity"), tuple(f"e{i}" for i in range(n)), correct, comp, pred,
                np.full((3, n), 5.0), {"confidence": conf, "pointwise_mi_bits": conf * 2})


def test_route_and_its_cost_by_hand():
    sig = np.array([[0.9, 0.2, 0.2, np.nan], [0.1, 0.8, 0.1, 0.9], [0.0, 0.0, 0.0, 0.0]])
    arms = Arms(("a", "b", "identity"), ("1", "2", "3", "4"), np.ones((3, 4)),
                np.array([[1.0] * 4, [2.0] * 4, [0.0] * 4]), np.array([[10.0] * 4, [20.0] * 4, [40.0] * 4]),
                np.array([[100.0] * 4, [200.0] * 4, [400.0] * 4]), {"confidence": sig, "pointwise_mi_bits": sig})
    chosen, cost, scorer = route(arms, "confidence", 0.5)
    assert chosen.tolist() == [0, 1, 2, 1]  # example 4: a's signal unknown (never clears), b clears
    # confidence: compressor and predictor of every arm tried
    assert cost.tolist() == [1 + 10, 1 + 10 + 2 + 20, 1 + 10 + 2 + 20 + 0 + 40, 1 + 10 + 2 + 20]
    assert scorer.tolist() == [0, 0, 0, 0]
    chosen, cost, scorer = route(arms, "pointwise_mi_bits", 0.5)
    # MI: compressor of every arm tried, predictor of the serving arm; scorer of every arm tried apart
    assert cost.tolist() == [1 + 10, 1 + 2 + 20, 1 + 2 + 0 + 40, 1 + 2 + 20]
    assert scorer.tolist() == [100, 300, 700, 300]
    assert route(arms, "confidence", np.inf)[0].tolist() == [2, 2, 2, 2]  # always the fallback


def test_split_halves_are_disjoint_and_seeded():
    a, b = split_halves(9, seed=3)
    assert sorted([*a, *b]) == list(range(9)) and len(a) == 4 and not set(a) & set(b)
    perm = np.random.default_rng(3).permutation(9)
    assert a.tolist() == sorted(perm[:4]) and (split_halves(9, seed=3)[0] == a).all()


def _perturb(arms: Arms, cols: np.ndarray, seed: int) -> Arms:
    """The same arms with garbage in the columns ``cols`` (signals, outcomes and costs)."""
    rng = np.random.default_rng(seed)
    def mess(x):
        x = x.copy()
        x[:, cols] = rng.random((x.shape[0], len(cols))) * 50
        return x
    correct = arms.correct.copy()
    correct[:, cols] = rng.random((3, len(cols))) < 0.5
    return Arms(arms.names, arms.example_ids, correct, mess(arms.compressor_cost), mess(arms.predictor_cost),
                mess(arms.scorer_cost), {k: mess(v) for k, v in arms.signals.items()})


@pytest.mark.parametrize("seed", range(5))
def test_tau_is_never_chosen_on_its_evaluation_half(seed):
    arms = _arms(n=24, seed=seed)
    a, b = split_halves(24, seed)
    h = held_out(arms, "confidence", "mid", seed)
    assert h.tau_a == choose_tau(arms, "confidence", a, float(arms.system_cost[1, a].mean()))
    assert h.tau_b == choose_tau(arms, "confidence", b, float(arms.system_cost[1, b].mean()))
    # garbage in half B changes nothing about the τ chosen on A, and the reverse
    hb = held_out(_perturb(arms, b, seed + 10), "confidence", "mid", seed)
    ha = held_out(_perturb(arms, a, seed + 20), "confidence", "mid", seed)
    assert hb.tau_a == h.tau_a and ha.tau_b == h.tau_b
    # every example is evaluated once, with the τ of the other half
    chosen_b, cost_b, _ = route(arms, "confidence", h.tau_a, b)
    chosen_a, cost_a, _ = route(arms, "confidence", h.tau_b, a)
    correct = np.concatenate([arms.correct[chosen_b, b], arms.correct[chosen_a, a]])
    assert h.n == 24 and h.accuracy == pytest.approx(correct.mean())
    assert h.cost == pytest.approx(np.concatenate([cost_b, cost_a]).mean())
    assert h.accuracy_ci == pytest.approx(accuracy_interval(correct))
    assert h.fixed_accuracy == pytest.approx(arms.correct[1].mean())
    assert h.diff == pytest.approx(correct.mean() - arms.correct[1].mean())
    assert sum(h.served.values()) == 24


def test_choose_tau_maximises_training_accuracy_within_the_budget():
    # cheap arm right exactly when its confidence >= 0.6; mid right always; identity right always
    conf = np.array([[0.9, 0.8, 0.3, 0.2, 0.7, 0.1], [0.5] * 6, [0.0] * 6])
    correct = np.array([[1, 1, 0, 0, 1, 0], [1] * 6, [1] * 6], dtype=float)
    arms = Arms(("cheap", "mid", "identity"), tuple("abcdef"), correct, np.array([[1.0] * 6, [3.0] * 6, [0.0] * 6]),
                np.array([[1.0] * 6, [1.0] * 6, [10.0] * 6]), np.zeros((3, 6)),
                {"confidence": conf, "pointwise_mi_bits": conf})
    train = np.arange(6)
    # unlimited budget: τ in (0.3, 0.7] keeps a, b, e at cheap and sends c, d, f on to mid (all
    # right, cost (3 * 2 + 3 * 6) / 6 = 4); τ above 0.7 costs more for the same accuracy, τ <= 0.3
    # keeps a wrong one at cheap. On the grid (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, inf) the tie
    # between 0.5 and 0.7 goes to the lower τ.
    assert choose_tau(arms, "confidence", train, 1e9) == 0.5
    assert choose_tau(arms, "confidence", train, 4.0) == 0.5
    # budget just under 4: c, d, f cannot all move on; τ = 0.3 keeps c (conf 0.3) at cheap and sends
    # d, f on (accuracy 5/6 at cost 20/6); τ = 0.2 would send only f (4/6)
    assert choose_tau(arms, "confidence", train, 3.99) == 0.3
    chosen, cost, _ = route(arms, "confidence", 0.3, train)
    assert chosen.tolist() == [0, 0, 0, 1, 0, 1] and cost.mean() == pytest.approx(20 / 6)
    # budget of the cheap arm alone (2.0 per query): only "always cheap" fits (τ <= 0.1)
    assert choose_tau(arms, "confidence", train, 2.0) == 0.1


def test_arms_and_costs_come_from_the_records_through_the_report_rule(tmp_path):
    from decide_fixtures import write_loglik_run

    run_dir = write_loglik_run(tmp_path)
    run = load_run(run_dir)
    costs = record_costs(run, PriceTable.load(None), None, [])
    groups = build_arms(run.records, costs)
    assert len(groups) == 2  # one per predictor
    for key, arms in groups.items():
        assert isinstance(arms, Arms)
        assert arms.names[-1] == "identity" and "keep:1" not in arms.names  # the oracle is not an arm
        assert list(arms.names[:-1]) == sorted(arms.names[:-1], key=lambda c: arms.system_cost[arms.names.index(c)].mean())
        # the identity's deployed cost is the report's gflops_per_query of that cell
        rep = build_report(run_dir, n_boot=200)
        cell = rep.cells[(rep.cells["compressor"] == "identity") & (rep.cells["predictor"] == key[1])].iloc[0]
        assert arms.system_cost[-1].mean() == pytest.approx(cell["gflops_per_query"])


def test_findings_print_usable_bits_aurocs_and_the_router_line(tmp_path):
    from compressbench.analysis.findings import format_findings, run_findings

    from decide_fixtures import write_loglik_run

    run_dir = write_loglik_run(tmp_path)
    found = run_findings(run_dir, n_boot=200)
    text = format_findings(found)
    f = {x.predictor: x for x in found}["llama-8b"]
    by = f.by_name()
    assert by["empty"].usable_bits == 0.0 and by["identity"].usable_bits == pytest.approx((18 * 0.9) / 20)
    assert "usable bits (answer)" in text and "0 for empty by construction" in text
    assert f.usable_rho_n == 4 and f.usable_rho == pytest.approx(1.0)  # usable bits rank the 4 cells as accuracy
    assert "Spearman rho(usable bits, accuracy) over the 4 non-empty cells of this predictor (each compressor once)" in text
    assert "Per-example signals: AUROC" in text and "usable bits, PVI (oracle)" in text
    assert by["qwen-0.5b"].aurocs["confidence"][0] == 1.0
    assert len(f.router) == 2 and {h["budget_compressor"] for h in f.router} == {"qwen-3b"}  # best fixed but identity
    assert "Router on predictor confidence" in text and "split seed 0" in text and "the router" in text


def test_route_command_prints_tables_and_json(tmp_path):
    from decide_fixtures import write_loglik_run

    run_dir = write_loglik_run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["route", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "Fixed compressors" in res.output and "Held out" in res.output and "split seed 0" in res.output
    # every line fits the terminal width the report's tables keep (wide tables go in column groups)
    assert max(len(line) for line in res.output.splitlines()) <= TERMINAL_WIDTH
    assert "served by" in res.output and "router accuracy [95% CI]" in res.output  # no column lost in the split
    res = runner.invoke(cli, ["route", str(run_dir), "--format", "json", "--seed", "3", "--signal", "confidence"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["split_seed"] == 3 and {h["signal"] for h in data["held_out"]} == {"confidence"}
    assert {f["compressor"] for f in data["fixed"]} == {"empty", "qwen-0.5b", "qwen-3b", "identity"}
    res = runner.invoke(cli, ["route", str(run_dir), "--format", "json", "--arm", "qwen-3b"])
    assert res.exit_code == 0, res.output
    assert {f["compressor"] for f in json.loads(res.output)["fixed"]} == {"qwen-3b", "identity"}
    res = runner.invoke(cli, ["route", str(run_dir), "--arm", "nonsense"])
    assert res.exit_code == 2 and "not a compressor of this run" in res.output
    res = runner.invoke(cli, ["route", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_usable_bits_plot_and_router_points_on_cost_accuracy(tmp_path):
    from compressbench.analysis.plots import fig_cost_accuracy, fig_usable_bits
    from compressbench.analysis.route import best_fixed, curve_front

    from decide_fixtures import write_loglik_run

    rep = build_report(write_loglik_run(tmp_path), n_boot=200)
    fig = fig_usable_bits(rep)
    left, right = fig.axes[:2]
    assert right.get_xlabel().startswith("usable bits about the answer") and left.get_xlabel().startswith("MI about")
    cells = rep.cells
    for ax, col in ((left, "mi_bits"), (right, "usable_bits")):
        for k, pred in enumerate(sorted(cells["predictor"].unique())):
            (bar,) = [c for c in ax.containers if c.get_label() == f"predictor {pred}"]
            x, y = (np.asarray(v, dtype=float) for v in bar.lines[0].get_data())
            mine = cells[cells["predictor"] == pred]
            # each cell drawn at (its MI or usable bits, its accuracy), dodged sideways per predictor
            span = float(np.ptp(cells[col]))
            np.testing.assert_allclose(x, mine[col] + (k - 0.5) * 0.012 * span, rtol=1e-12)
            np.testing.assert_allclose(y, mine["accuracy"], rtol=1e-12)
    assert any("log2 #options = 1 bits" in ln.get_label() for ln in right.get_lines())
    ax = fig_cost_accuracy(rep).axes[0]
    front = curve_front(rep.router.curve)
    for pred in ("llama-8b", "qwen-7b"):
        for sig in ("confidence", "pointwise_mi_bits"):
            (line,) = [ln for ln in ax.get_lines() if ln.get_label() == f"router τ frontier · {pred} · {sig}"]
            mine = front[(front["predictor"] == pred) & (front["signal"] == sig)]
            np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), mine["cost"], rtol=1e-12)
            np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), mine["accuracy"], rtol=1e-12)
        best = best_fixed(rep.router.fixed[rep.router.fixed["predictor"] == pred])["compressor"]
        held = [c for c in ax.containers if str(c.get_label()).startswith(f"router held out · {pred}")]
        assert len(held) == 2 and all(f"(budget {best})" in c.get_label() for c in held)


def test_usable_bits_plot_is_skipped_without_a_likelihood_predictor(tmp_path):
    from run_fixtures import write_run

    from compressbench.analysis.plots import PlotSkipped, fig_usable_bits

    with pytest.raises(PlotSkipped, match="predictor_mode: loglik"):
        fig_usable_bits(build_report(write_run(tmp_path), n_boot=100))
