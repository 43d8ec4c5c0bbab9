"""CLI command ``route`` (added to the main group with :func:`register`).

``compressbench route RUN_DIR`` evaluates the offline router of :mod:`compressbench.analysis.route`
from the run's records (no model calls): the fixed arms, the accuracy-cost frontier over τ and the
held-out router points, as tables or JSON.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from compressbench.cli.base import Command
from compressbench.core.errors import UsageError
from compressbench.core.tables import TERMINAL_WIDTH, fmt_ci, text_table
from compressbench.core.tables import fmt as num

#: The columns that name a row; they start every column group of a table wider than the terminal.
_KEYS = ("dataset", "predictor", "compressor", "signal", "budget (fixed arm)")


def _table(df: Any) -> str:
    """A DataFrame of strings as a plain-text table of at most TERMINAL_WIDTH columns (split into
    column groups that each start with the row's names, as the report's tables do)."""
    if not len(df):
        return "(none)"
    head = [str(c) for c in df.columns]
    n_keys = sum(1 for c in head[:len(_KEYS)] if c in _KEYS)
    return text_table(head, [[str(v) for v in row] for row in df.itertuples(index=False)], n_keys=n_keys)


@click.command("route", cls=Command)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--seed", "split_seed", type=int, default=0, show_default=True,
              help="Seed of the split of the examples into the two halves (tau chosen on one, evaluated on the other).")
@click.option("--signal", "signals", type=click.Choice(["confidence", "pointwise_mi_bits"]), multiple=True,
              help="Only these router signals (repeatable; default: both).")
@click.option("--arm", "arms", multiple=True, metavar="COMPRESSOR",
              help="Route only between these compressors (repeatable), cheapest first, then the identity; "
                   "default: every compressor of the run but the keep:<k> oracles.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--prices", "prices_path", type=click.Path(dir_okay=False), default=None,
              help="Price table YAML (default: the packaged configs/prices.yaml).")
def route_command(run_dir: str, split_seed: int, signals: tuple[str, ...], arms: tuple[str, ...], fmt: str,
                  prices_path: str | None) -> None:
    """Evaluate a per-example router offline from RUN_DIR's records: the cheapest compressor whose
    predictor confidence (or pointwise MI) clears tau, else the next, else the identity; tau chosen
    on one half of the examples and evaluated on the other, beside every fixed compressor."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.analysis.report import build_report, display_router
    from compressbench.analysis.route import curve_front

    rep = build_report(run_dir, prices=prices_path, route_seed=split_seed, route_arms=arms or None)
    r = rep.router
    assert r is not None
    known = set(rep.cells["compressor"])
    unknown = sorted(set(arms) - known)
    if unknown:
        raise UsageError(f"--arm {', '.join(unknown)}: not a compressor of this run (it has {', '.join(sorted(known))})")
    if signals:
        r.curve = r.curve[r.curve["signal"].isin(signals)]
        r.held_out = r.held_out[r.held_out["signal"].isin(signals)]
    if fmt == "json":
        click.echo(json.dumps(rep.to_dict()["router"], indent=1, allow_nan=False))
        return
    click.echo(textwrap.fill(f"Router for {run_dir} (no model calls; cost per query = compressor + predictor, the "
                             f"report's cost rule, in GFLOPs, or API $ where a model is paid; split seed {r.seed})",
                             TERMINAL_WIDTH) + "\n")
    fixed = r.fixed.assign(**{
        "accuracy [95% CI]": [fmt_ci(*t) for t in zip(r.fixed["accuracy"], r.fixed["accuracy_ci_low"],
                                                      r.fixed["accuracy_ci_high"])],
        "cost/query": r.fixed["cost"].map(num)})
    click.echo("Fixed compressors (arms, cheapest first; identity is the fallback)")
    click.echo(_table(fixed[["dataset", "predictor", "compressor", "n", "accuracy [95% CI]", "cost/query",
                             "cost_unit"]].astype(str)))
    front = curve_front(r.curve)
    click.echo("\nAccuracy-cost frontier over tau (all examples; no tau chosen here)")
    click.echo(_table(front.assign(tau=front["tau"].map(num), accuracy=front["accuracy"].map(num),
                                   cost=front["cost"].map(num), scorer_cost=front["scorer_cost"].map(num))[
        ["dataset", "predictor", "signal", "tau", "accuracy", "cost", "scorer_cost", "cost_unit"]].rename(
        columns={"cost": "cost/query", "scorer_cost": "scorer cost/query (measurement)"})))
    click.echo("\nHeld out: tau chosen on one half within the budget arm's cost there, evaluated on the other half")
    held = display_router(rep)
    click.echo(_table(held.astype(str)))
    for note in r.notes:
        click.echo(f"- {note}")


def register(group: click.Group) -> None:
    """Add ``route`` to the CLI group."""
    group.add_command(route_command, "route")
