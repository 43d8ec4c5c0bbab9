"""Summaries, tables and plots of a research run, computed from its records only.

One summary row per arm (each compressor, and ``uncompressed``):

- ``accuracy`` with its 95% CI (:func:`compressbench.core.stats.accuracy_interval`, the sweep's own interval: Wilson for 0/1
  scores, a seeded bootstrap otherwise) over the questions that ran without error; a question the
  predictor never answered within R rounds (``no_answer``) counts as wrong (0) and is counted in
  ``n_no_answer``; questions stopped by an error are left out and counted in ``n_errors``;
- ``accuracy_by_round``: the share of those questions answered correctly at or before round r;
- ``mi_by_round``: MI (bits, log base 2) of the documents compressed in round r and their
  compressions, with CI, ``log2 N`` ceiling and N;
- ``gold_doc_recall``: the mean share of the gold documents the agent retrieved;
- usable bits about the answer (``predictor_mode: loglik``; the sweep's
  :func:`compressbench.measure.predict_loglik.pvi_bits`, log base 2): per question, the PVI of the
  arm's final-round notes against the same question's option scores in the ``empty`` arm (no notes),
  ``log2 q(a* | notes) - log2 q(a* | no notes)`` with q the softmax over the options' total log-probs;
  ``usable_bits`` is its mean over the questions both arms answered without error, with
  :func:`compressbench.core.stats.bootstrap_mean_ci` (``usable_bits_ci_low/high``);
  ``usable_ceiling_bits`` the mean ``-log2 q(a* | no notes)`` over the same questions (the most the
  mean can reach) and ``usable_bound_bits`` their mean log2 #options (the ceiling of a predictor
  that is uniform without notes). Without an ``empty`` arm (or without scored options) these are
  None and ``usable_note`` says why ("not measured: ...");
- tokens, FLOPs and API dollars per role, in total and per question; predictor dollars are the
  predictor's tokens billed at the manifest's ``predictor_price`` entry (e.g. GPT-4o list prices),
  whatever model actually ran.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compressbench.agent.research.config import EMPTY
from compressbench.engine.records import (
    RESEARCH_ROLES,
    RESEARCH_RUN_KIND,
    UNCOMPRESSED,
    ResearchAnswerRecord,
    ResearchRoundMIRecord,
    ResearchRoundRecord,
    ResearchUsage,
    read_research_records,
)
from compressbench.core.errors import DataError, UsageError
from compressbench.core.registry import PlotKind, Registry
from compressbench.core.stats import (
    accuracy_interval,
    bootstrap_mean_ci,
    correlate,
    finite,
    pareto_front,
    spans_zero,
)
from compressbench.core.tables import fmt as num, fmt_ci, text_table
from compressbench.engine.store import RunStore, summary_csv as _csv
from compressbench.measure.predict_loglik import gold_surprisal_bits, pvi_bits
import numpy as np
import yaml


def _sum(vals: Sequence[Any]) -> float | None:
    if not vals or any(v is None for v in vals):
        return None
    return float(sum(vals))


def _by_round(answers: Sequence[ResearchAnswerRecord], rounds: Sequence[ResearchRoundRecord],
              n_rounds: int) -> list[float | None]:
    """Accuracy after round r: each scored question's score after its round r (a question that
    stopped earlier keeps its last round's score; one with no answer yet scores 0)."""
    per_q: dict[str, dict[int, float | None]] = {}
    for r in rounds:
        per_q.setdefault(r.question_id, {})[r.round] = r.score
    out: list[float | None] = []
    for k in range(1, n_rounds + 1):
        vals = []
        for a in answers:
            seen = per_q.get(a.question_id, {})
            last = max((rr for rr in seen if rr <= k), default=None)
            v = seen.get(last) if last is not None else None
            vals.append(0.0 if v is None else float(v))
        out.append(sum(vals) / len(vals) if vals else None)
    return out


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The usable-bits columns of a summary row (None when not measured; ``usable_note`` says why).
USABLE_COLUMNS = ("usable_bits", "usable_bits_ci_low", "usable_bits_ci_high", "usable_ceiling_bits",
                  "usable_bound_bits", "n_usable", "usable_note")


def gold_letters(a: ResearchAnswerRecord) -> tuple[str, ...]:
    """The gold option letter(s) of a loglik answer record: ``gold_letters`` as recorded, or, for a
    record written before that field, the letters :meth:`Question.choice_example` gives (the
    option equal to the first gold answer; or gold answers that are already letters)."""
    if a.gold_letters:
        return tuple(a.gold_letters)
    if not a.options or not a.gold:
        return ()
    if a.gold[0] in a.options:
        return (_LETTERS[a.options.index(a.gold[0])],)
    return tuple(g for g in a.gold if g in _LETTERS[: len(a.options)])


def final_logliks(records: Sequence[Any]) -> dict[tuple[str, str], tuple[ResearchAnswerRecord, Mapping[str, Any]]]:
    """(arm, question id) -> (answer record, the scored options of its final round), for the
    questions answered without error whose final round has scored options."""
    rounds = {(r.arm, r.question_id, r.round): r for r in records if isinstance(r, ResearchRoundRecord)}
    out = {}
    for a in records:
        if isinstance(a, ResearchAnswerRecord) and a.error is None:
            last = rounds.get((a.arm, a.question_id, a.n_rounds))
            if last is not None and last.loglik and last.loglik.get("options"):
                out[(a.arm, a.question_id)] = (a, last.loglik)
    return out


def usable_columns(arm: str, answers: Sequence[ResearchAnswerRecord],
                   finals: Mapping[tuple[str, str], tuple[ResearchAnswerRecord, Mapping[str, Any]]],
                   has_empty_arm: bool) -> dict[str, Any]:
    """The usable-bits columns of one arm (see the module doc)."""

    none: dict[str, Any] = dict.fromkeys(USABLE_COLUMNS)
    none["n_usable"] = 0
    if not any((arm, a.question_id) in finals for a in answers):
        none["usable_note"] = "not measured: no question of this arm has scored options (predictor_mode loglik)"
        return none
    if not has_empty_arm:
        none["usable_note"] = ("not measured: the run has no empty arm (the option scores without notes); "
                               "add empty to compressors")
        return none
    pvis, ceilings, n_opts = [], [], []
    for a in answers:
        mine, empty = finals.get((arm, a.question_id)), finals.get((EMPTY, a.question_id))
        if mine is None or empty is None:
            continue
        gold = gold_letters(mine[0])
        v = pvi_bits(mine[1], empty[1], gold)
        if v is None:
            continue
        pvis.append(v)
        ceilings.append(gold_surprisal_bits(empty[1], gold))
        n_opts.append(len(mine[1]["options"]))
    if not pvis:
        none["usable_note"] = "not measured: no question was answered without error in both this arm and empty"
        return none
    mean, lo, hi = bootstrap_mean_ci(pvis)
    ceil = finite(ceilings)
    return {"usable_bits": mean,
            "usable_bits_ci_low": lo if math.isfinite(lo) else None,
            "usable_bits_ci_high": hi if math.isfinite(hi) else None,
            "usable_ceiling_bits": float(ceil.mean()) if ceil.size else None,
            "usable_bound_bits": float(np.mean(np.log2(n_opts))), "n_usable": len(pvis),
            "usable_note": "empty notes: 0 by construction" if arm == EMPTY else None}


def summarise(records: Sequence[Any], arms: Sequence[str], rounds: int) -> list[dict[str, Any]]:
    """One row per arm (see the module doc)."""
    finals = final_logliks(records)
    has_empty = EMPTY in arms
    rows = []
    for arm in arms:
        answers = [r for r in records if isinstance(r, ResearchAnswerRecord) and r.arm == arm]
        if not answers:
            continue
        ok = [a for a in answers if a.error is None]
        scored = [a for a in ok if a.score is not None]
        scores = [float(a.score) for a in scored if a.score is not None]
        lo, hi = accuracy_interval(scores)
        round_recs = [r for r in records if isinstance(r, ResearchRoundRecord) and r.arm == arm]
        mis = {}
        for r in records:
            if isinstance(r, ResearchRoundMIRecord) and r.arm == arm:
                mis[r.round] = r  # the last one written for a round wins (it covers the most questions)
        usage = {role: ResearchUsage() for role in RESEARCH_ROLES}
        for a in answers:
            for role in RESEARCH_ROLES:
                usage[role] = usage[role] + a.usage.get(role, ResearchUsage())
        n = len(answers)
        recalls = [a.gold_recall for a in ok if a.gold_recall is not None]
        n_opts = [len(a.options) for a in scored if a.options]
        row: dict[str, Any] = {
            "arm": arm, "compressed": arm != UNCOMPRESSED, "n": n, "n_errors": n - len(ok),
            "n_no_answer": sum(1 for a in ok if a.failure == "no_answer"),
            "n_unscored": len(ok) - len(scored),
            "accuracy": float(sum(scores) / len(scores)) if scores else None,
            "accuracy_ci_low": lo, "accuracy_ci_high": hi,
            # multiple choice: the accuracy of a uniform guess over each question's options
            "chance_accuracy": (sum(1.0 / k for k in n_opts) / len(n_opts)) if n_opts and len(n_opts) == len(scored)
            else None,
            "accuracy_by_round": _by_round(scored, round_recs, rounds),
            "mean_rounds": sum(a.n_rounds for a in ok) / len(ok) if ok else None,
            "gold_doc_recall": sum(recalls) / len(recalls) if recalls else None,
            "mi_by_round": [{"round": k, "mi_bits": m.mi_bits, "mi_ci_low_bits": m.mi_ci_low_bits,
                             "mi_ci_high_bits": m.mi_ci_high_bits, "ceiling_bits": m.ceiling_bits,
                             "n_contexts": m.n_contexts, "bits_per_token": m.bits_per_token,
                             "mean_compression_tokens": m.mean_compression_tokens, "note": m.note}
                            for k, m in sorted(mis.items())],
            **usable_columns(arm, answers, finals, has_empty),
            "n_queries": sum(len(r.queries) for r in round_recs),
            "wall_s": float(sum(a.wall_s for a in answers)),
        }
        for role in RESEARCH_ROLES:
            u = usage[role]
            row[f"{role}_prompt_tokens"] = u.n_prompt_tokens
            row[f"{role}_completion_tokens"] = u.n_completion_tokens
            row[f"{role}_calls"] = u.n_calls
            row[f"{role}_flops"] = u.flops
            row[f"{role}_api_usd"] = u.api_usd
            row[f"{role}_gflops_per_question"] = None if u.flops is None else u.flops / n / 1e9
        row["predictor_tokens_per_question"] = (
            None if _unknown(usage["predictor"]) else
            (usage["predictor"].n_prompt_tokens + usage["predictor"].n_completion_tokens) / n)  # type: ignore[operator]
        row["predictor_usd_per_question"] = None if usage["predictor"].api_usd is None else usage["predictor"].api_usd / n
        fl = _sum([usage[r].flops for r in RESEARCH_ROLES])
        row["gflops_per_question"] = None if fl is None else fl / n / 1e9
        rows.append(row)
    base = next((r for r in rows if r["arm"] == UNCOMPRESSED), None)
    for r in rows:
        r["usd_ratio_to_uncompressed"] = (
            r["predictor_usd_per_question"] / base["predictor_usd_per_question"]
            if base and r["predictor_usd_per_question"] is not None and base["predictor_usd_per_question"] else None)
        r["accuracy_ratio_to_uncompressed"] = (
            r["accuracy"] / base["accuracy"] if base and r["accuracy"] is not None and base["accuracy"] else None)
    # the cost-accuracy front: arms no other arm beats on both predictor $ per question and accuracy
    front = pareto_front([math.nan if r["predictor_usd_per_question"] is None else r["predictor_usd_per_question"]
                          for r in rows], [math.nan if r["accuracy"] is None else r["accuracy"] for r in rows])
    for r, on in zip(rows, front):
        r["on_cost_accuracy_front"] = bool(on)
    return rows


def _unknown(u: ResearchUsage) -> bool:
    return u.n_prompt_tokens is None or u.n_completion_tokens is None


def is_research_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir``'s manifest says it is a research run."""
    p = Path(run_dir) / "manifest.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("kind") == RESEARCH_RUN_KIND
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _load(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:

    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{run_dir} is not a readable research run (manifest.json, config.yaml): {exc}") from None
    return manifest, config, read_research_records(run_dir)


def build_rows(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(manifest, summary rows) of a research run, from its records."""
    manifest, config, records = _load(Path(run_dir))
    return manifest, summarise(records, manifest.get("arms") or [], int(config.get("rounds", 1)))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def write_summary(run_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``summary.json`` and ``summary.csv`` (the run store's one summary writer) and return the rows."""
    manifest, rows = build_rows(run_dir)
    RunStore(run_dir).write_summary(rows, _columns(rows), {"kind": RESEARCH_RUN_KIND,
                                                          "price_note": price_note(manifest),
                                                          "findings": findings(manifest, rows)})
    return rows


def summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV, exactly as in ``summary.csv`` (:func:`compressbench.engine.store.summary_csv`)."""
    return _csv(rows, _columns(rows)) if rows else ""


def _ci_text(r: Mapping[str, Any]) -> str:
    return fmt_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"])


def findings(manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the run shows, in sentences (the Findings of a research run): accuracy against chance,
    the cost-accuracy front, which compressed arms cost less than the uncompressed one, MI per
    round against its ceiling, and where the intervals overlap (no ranking)."""
    out: list[str] = []
    if not rows:
        return ["no answered questions yet"]
    by = {r["arm"]: r for r in rows}
    base = by.get(UNCOMPRESSED)
    for r in rows:
        ch = r.get("chance_accuracy")
        if r["accuracy"] is None or ch is None:
            continue
        lo = r["accuracy_ci_low"]
        verdict = ("above chance (the CI's lower bound is above it)" if lo is not None and lo > ch
                   else "not distinguishable from chance (the CI includes it)" if lo is not None and lo <= ch
                   <= (r["accuracy_ci_high"] or 1) else "below chance")
        out.append(f"{r['arm']}: accuracy {_ci_text(r)} over {r['n']} questions, chance {num(ch)}: {verdict}.")
    front = [r["arm"] for r in rows if r.get("on_cost_accuracy_front")]
    if front:
        at_chance = [r["arm"] for r in rows if r.get("on_cost_accuracy_front") and r.get("chance_accuracy") is not None
                     and r["accuracy_ci_low"] is not None and r["accuracy_ci_low"] <= r["chance_accuracy"]]
        useful = [a for a in front if a not in at_chance]
        out.append("On the cost-accuracy front (no other arm has both lower predictor $ per question and "
                   f"higher accuracy): {', '.join(front)}"
                   + (f"; of these {', '.join(at_chance)} cannot be told from chance (cheap because the predictor "
                      f"reads little, not useful), which leaves {', '.join(useful) or 'none'}" if at_chance else "")
                   + ".")
    else:
        out.append("No cost-accuracy front: no arm has both an accuracy and a predictor price.")
    if base is not None and base["predictor_usd_per_question"]:
        cheaper = [r for r in rows if r["compressed"] and r["usd_ratio_to_uncompressed"] is not None
                   and r["usd_ratio_to_uncompressed"] < 1]
        for r in cheaper:
            hi, blo = r["accuracy_ci_high"], base["accuracy_ci_low"]
            if r["accuracy"] is None or base["accuracy"] is None:
                cmp = ""
            elif hi is not None and blo is not None and hi < blo:
                cmp = f"; accuracy below uncompressed (CIs do not overlap: {_ci_text(r)} vs {_ci_text(base)})"
            elif r["accuracy_ci_low"] is not None and base["accuracy_ci_high"] is not None \
                    and r["accuracy_ci_low"] > base["accuracy_ci_high"]:
                cmp = f"; accuracy above uncompressed (CIs do not overlap: {_ci_text(r)} vs {_ci_text(base)})"
            else:
                cmp = f"; accuracy not distinguishable from uncompressed (CIs overlap: {_ci_text(r)} vs {_ci_text(base)})"
            out.append(f"{r['arm']}: predictor $ per question {num(r['usd_ratio_to_uncompressed'])} x uncompressed{cmp}.")
    out += usable_findings(rows)
    for r in rows:
        mi = [m for m in r["mi_by_round"] if m["mi_bits"] is not None and m["ceiling_bits"]]
        if mi:
            parts = [f"r{m['round']} {num(m['mi_bits'])} of {num(m['ceiling_bits'])}" for m in mi]
            at = [m for m in mi if m["mi_bits"] >= m["ceiling_bits"] - 0.05]
            tail = (" (at its ceiling in " + ", ".join(f"r{m['round']}" for m in at)
                    + ": the documents are told apart fully; more documents are needed to compare)") if at else ""
            out.append(f"{r['arm']}: MI per round (bits, log2) {', '.join(parts)}{tail}.")
    return out


def _usable_text(r: Mapping[str, Any]) -> str:
    return fmt_ci(r.get("usable_bits"), r.get("usable_bits_ci_low"), r.get("usable_bits_ci_high"))


def usable_findings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Usable bits per arm against its ceiling, and whether they track accuracy across arms
    (Spearman's rho with its bootstrap CI, :func:`compressbench.core.stats.correlate`; a CI that
    holds 0 is said to support no relation)."""
    measured = [r for r in rows if r.get("usable_bits") is not None]
    if not measured:
        notes = sorted({str(r.get("usable_note")) for r in rows if r.get("usable_note")})
        return [f"Usable bits about the answer {'; '.join(notes) or 'not measured'}."]
    out = []
    for r in measured:
        if r["arm"] == EMPTY:
            continue
        lo, hi = r.get("usable_bits_ci_low"), r.get("usable_bits_ci_high")
        verdict = ("" if lo is None or hi is None
                   else ": the notes make the gold option more likely than no notes (CI above 0)" if lo > 0
                   else ": the notes make the gold option less likely than no notes (CI below 0)" if hi < 0
                   else ": not distinguishable from 0 (the CI includes it)")
        out.append(f"{r['arm']}: usable bits about the answer {_usable_text(r)} over {r['n_usable']} questions, "
                   f"of a ceiling of {num(r['usable_ceiling_bits'])} (log2 #options "
                   f"{num(r['usable_bound_bits'])}; bits, log base 2){verdict}.")
    pairs = [r for r in measured if r.get("accuracy") is not None]
    c = correlate([r["usable_bits"] for r in pairs], [r["accuracy"] for r in pairs],
                  x_name="usable_bits", y_name="accuracy")
    if c.note:
        out.append(f"Usable bits against accuracy across arms: not correlated ({c.note}).")
        return out
    rho = (f"Spearman rho {num(c.spearman_rho)} [{num(c.spearman_ci_low)}, {num(c.spearman_ci_high)}] "
           f"over {c.n} arms")
    if not (math.isfinite(c.spearman_ci_low) and math.isfinite(c.spearman_ci_high)):
        out.append(f"Usable bits against accuracy across arms: Spearman rho {num(c.spearman_rho)} over {c.n} arms, "
                   "no bootstrap CI (every resample was constant); no relation is claimed.")
    elif spans_zero(c.spearman_ci_low, c.spearman_ci_high):
        out.append(f"Usable bits do not track accuracy distinguishably across arms: {rho}; the 95% bootstrap CI "
                   "includes 0, so the data do not support a relation.")
    elif c.spearman_ci_low > 0:
        out.append(f"Usable bits track accuracy across arms: {rho} (95% bootstrap CI above 0).")
    else:
        out.append(f"Usable bits run against accuracy across arms: {rho} (95% bootstrap CI below 0).")
    return out


def price_note(manifest: Mapping[str, Any]) -> str:
    p = manifest.get("predictor_price")
    pred = manifest.get("predictor")
    ref = ((manifest.get("models") or {}).get(pred) or {}).get("model", pred)
    if not p:
        return f"predictor {ref}: not priced (no predictor_price in the config); dollars are not shown"
    return (f"predictor tokens ({ref} ran) billed as {p['entry']}: ${p['input_usd_per_mtok']:.2f} in / "
            f"${p['output_usd_per_mtok']:.2f} out per 1M tokens ({p.get('source') or 'as of ' + str(p.get('as_of'))})")


def format_table(manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], fmt: str = "table") -> str:
    """The rows as a terminal table (or GitHub markdown with ``fmt="markdown"``), with notes.
    Numbers go through the one table formatter, :mod:`compressbench.core.tables`."""
    head = ["arm", "n", "accuracy [95% CI]", "chance", "no answer", "errors", "gold docs", "MI by round (bits)",
            "usable bits [95% CI]", "ceiling / log2 #opt.", "pred tok/q", "pred $/q", "$ vs uncompr.", "GFLOPs/q compr. + pred.", "front"]
    body = []
    for r in rows:
        mi = "; ".join(f"r{m['round']}: {num(m['mi_bits'])} of {num(m['ceiling_bits'])} (N={m['n_contexts']})"
                       if m["mi_bits"] is not None else f"r{m['round']}: –" for m in r["mi_by_round"]) or "–"
        body.append([r["arm"], num(r["n"]), fmt_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"]),
                     num(r.get("chance_accuracy")), num(r["n_no_answer"]), num(r["n_errors"]),
                     num(r["gold_doc_recall"]), mi,
                     "not measured" if r.get("usable_bits") is None else _usable_text(r),
                     "–" if r.get("usable_bits") is None
                     else f"{num(r.get('usable_ceiling_bits'))} / {num(r.get('usable_bound_bits'))}",
                     num(r["predictor_tokens_per_question"]),
                     num(r["predictor_usd_per_question"], 6), num(r["usd_ratio_to_uncompressed"]),
                     f"{num(r.get('compressor_gflops_per_question'))} + {num(r.get('predictor_gflops_per_question'))}",
                     "yes" if r.get("on_cost_accuracy_front") else ""])
    mode = manifest.get("predictor_mode", "generate")
    notes = [price_note(manifest),
             (f"predictor_mode {mode}, planner {manifest.get('planner', 'model')}; "
              + ("accuracy: the most likely of each question's options after the notes (chance: a uniform guess). "
                 if mode == "loglik" else "")
              + "MI in bits (log base 2) between the documents compressed in a round and their compressions, "
              "ceiling log2 N; accuracy 95% CI; 'no answer' counts as wrong; errors are left out."),
             "gold docs: mean share of the gold documents retrieved; front: on the cost-accuracy front "
             "(predictor $ per question vs accuracy).",
             "usable bits: mean over questions of log2 q(a*|final notes) - log2 q(a*|no notes) (the empty arm's "
             "option scores; q = softmax over the options' log-probs), bootstrap 95% CI; ceiling: mean "
             "-log2 q(a*|no notes); log2 #opt.: the ceiling of a predictor uniform without notes. Bits, log base 2."
             + ("" if any(r.get("usable_bits") is not None for r in rows) else
                " Not measured here: " + "; ".join(sorted({str(r.get("usable_note")) for r in rows
                                                          if r.get("usable_note")})).replace("not measured: ", ""))]
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + "\n".join(f"*{n}*" for n in notes) + "\n"
    return text_table(head, body) + "\n\n" + "\n".join(notes) + "\n"


def render(run_dir: str | Path, fmt: str = "table") -> str:
    """The report of a research run as ``table``, ``markdown``, ``json`` or ``csv``."""
    manifest, rows = build_rows(run_dir)
    if fmt == "json":
        return json.dumps({"kind": "research", "price_note": price_note(manifest),
                           "findings": findings(manifest, rows), "rows": rows}, indent=2, default=str) + "\n"
    if fmt == "csv":
        return summary_csv(rows)
    if fmt in ("table", "markdown"):
        return format_table(manifest, rows, fmt)
    raise UsageError(f"a research run reports as table, markdown, json or csv, not {fmt!r}")


# --------------------------------------------------------------------------- plots

#: research plot name -> its descriptor (``fn(manifest, rows) -> Figure``); :func:`plot_research`
#: draws them in this order. A new research plot is one entry here and its function.
RESEARCH_PLOTS: Registry[PlotKind] = Registry("research plot", {
    "research_rounds": PlotKind("compressbench.agent.research.report:fig_rounds",
                                "answered questions (accuracy and MI per round)"),
    "research_cost_accuracy": PlotKind("compressbench.agent.research.report:fig_cost_accuracy",
                                       "an arm with accuracy and a predictor price (predictor_price)"),
})
#: The research plot names, in drawing order (read from :data:`RESEARCH_PLOTS`).
PLOT_NAMES = RESEARCH_PLOTS.names()


def fig_rounds(manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Any:
    """Accuracy by round (left) and MI by round (right, with the log2 N ceiling dotted), a line per arm."""
    # lazy: matplotlib (the [plot] extra) loads only when drawing
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.4, 4.2), layout="constrained")
    ax_acc, ax_mi = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["tab10"]
    for k, r in enumerate(rows):
        c = cmap(k % 10)
        xs = list(range(1, len(r["accuracy_by_round"]) + 1))
        ys = [math.nan if v is None else v for v in r["accuracy_by_round"]]
        ax_acc.plot(xs, ys, marker="o", color=c, label=r["arm"], linestyle="--" if not r["compressed"] else "-")
        mi = [m for m in r["mi_by_round"] if m["mi_bits"] is not None]
        if mi:
            x = [m["round"] for m in mi]
            y = [m["mi_bits"] for m in mi]
            err = [[max(0.0, m["mi_bits"] - (m["mi_ci_low_bits"] if m["mi_ci_low_bits"] is not None else m["mi_bits"]))
                    for m in mi],
                   [max(0.0, (m["mi_ci_high_bits"] if m["mi_ci_high_bits"] is not None else m["mi_bits"]) - m["mi_bits"])
                    for m in mi]]
            ax_mi.errorbar(x, y, yerr=err, marker="o", color=c, label=r["arm"], capsize=3)
            ax_mi.plot(x, [m["ceiling_bits"] for m in mi], linestyle=":", color=c, alpha=0.7)
    ax_acc.set(xlabel="round", ylabel="accuracy (answered correctly by round r)", ylim=(-0.02, 1.02),
               title="Accuracy per round")
    ax_mi.set(xlabel="round", ylabel="MI (bits, log2)", title="MI per round (dotted: log2 N ceiling)")
    for ax in (ax_acc, ax_mi):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    return fig


def fig_cost_accuracy(manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Any:
    """Accuracy (95% CI) vs predictor API dollars per question, compressed arms vs uncompressed."""
    # lazy: matplotlib (the [plot] extra) loads only when drawing
    import matplotlib
    from matplotlib.figure import Figure


    priced = [r for r in rows if r["predictor_usd_per_question"] is not None and r["accuracy"] is not None]
    if not priced:
        raise UsageError("no arm has both an accuracy and a predictor price; set predictor_price in the config")
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    for k, r in enumerate(priced):
        lo = r["accuracy"] - (r["accuracy_ci_low"] if r["accuracy_ci_low"] is not None else r["accuracy"])
        hi = (r["accuracy_ci_high"] if r["accuracy_ci_high"] is not None else r["accuracy"]) - r["accuracy"]
        ax.errorbar([r["predictor_usd_per_question"]], [r["accuracy"]], yerr=[[lo], [hi]],
                    marker="o" if r["compressed"] else "*", markersize=8 if r["compressed"] else 14,
                    color=cmap(k % 10), capsize=3, linestyle="none", label=r["arm"])
    p = manifest.get("predictor_price") or {}
    ax.set(xlabel=f"predictor API $ per question (billed as {p.get('entry', '?')})", ylabel="accuracy",
           ylim=(-0.02, 1.02), title="Accuracy vs paid-API cost (★ uncompressed)")
    ax.legend(fontsize=8)
    return fig


def plot_research(run_dir: str | Path, out_dir: str | Path | None = None, *,
                  formats: Sequence[str] = ("png", "svg"), names: Sequence[str] | None = None,
                  dpi: int = 120) -> dict[str, list[Path]]:
    """Draw the research plots into ``out_dir`` (default ``RUN_DIR/plots``); returns the files per plot."""
    for n in names or ():
        if n not in RESEARCH_PLOTS:
            raise RESEARCH_PLOTS.unknown(n)  # a ConfigError (UsageError) with a "did you mean"
    manifest, rows = build_rows(run_dir)
    if not rows:
        raise UsageError(f"{run_dir} has no answered questions yet; nothing to plot")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for name in names or RESEARCH_PLOTS.names():
        fig = RESEARCH_PLOTS.load(name)(manifest, rows)
        written[name] = []
        for f in formats:
            p = out / f"{name}.{f}"
            fig.savefig(p, format=f, dpi=dpi)
            written[name].append(p)
    return written


__all__ = ["PLOT_NAMES", "RESEARCH_PLOTS", "USABLE_COLUMNS", "build_rows", "fig_cost_accuracy", "fig_rounds",
           "final_logliks", "findings", "format_table", "gold_letters", "is_research_run", "plot_research",
           "price_note", "render", "summarise", "summary_csv", "usable_columns", "usable_findings", "write_summary"]
