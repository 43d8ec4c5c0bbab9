"""The one number formatter for tables people read (the sweep's terminal table and the report)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

UNKNOWN = "–"


def fmt(v: Any, digits: int = 3) -> str:
    """A value for a table cell: unknown (None/NaN) -> '–'; tiny or huge floats in e-notation;
    >= 100 without decimals; >= 1 with 2 decimals; else ``digits`` decimals."""
    if v is None:
        return UNKNOWN
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return UNKNOWN
        av = abs(f)
        if av != 0 and (av < 1e-3 or av >= 1e5):
            return f"{f:.{digits - 1}e}"
        if av >= 100:
            return f"{f:.0f}"
        return f"{f:.2f}" if av >= 1 else f"{f:.{digits}f}"
    return str(v)


def fmt_ci(v: Any, lo: Any, hi: Any) -> str:
    """``value [low, high]``; just the value when the interval is unknown."""
    s = fmt(v)
    if s == UNKNOWN or lo is None or hi is None:
        return s
    try:
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            return s
    except (TypeError, ValueError):
        return s
    return f"{s} [{fmt(lo)}, {fmt(hi)}]"


def text_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Left-aligned plain-text columns with a dashed rule under the header."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def format_summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sweep's summary rows as a terminal table: the grid axes that vary, n, errors, n_unscored
    (unparseable answers, counted wrong), accuracy [95% CI], MI bits [95% CI], log2 N ceiling,
    bits per compression token, mean compression tokens."""
    axes = ["dataset", "compressor", "predictor", "prompt"]
    axes += [a for a in ("temperature", "seed", "scorer", "predictor_mode")
             if len({str(r.get(a)) for r in rows}) > 1]
    head = [*axes, "n", "err", "unscored", "accuracy [95% CI]", "MI bits [95% CI]", "ceil", "bits/tok", "tokens"]
    body = [[
        *(str(r.get(a)) for a in axes), fmt(r.get("n")), fmt(r.get("n_errors")), fmt(r.get("n_unscored")),
        fmt_ci(r.get("accuracy"), r.get("accuracy_ci_low"), r.get("accuracy_ci_high")),
        fmt_ci(r.get("mi_bits"), r.get("mi_ci_low_bits"), r.get("mi_ci_high_bits")),
        fmt(r.get("ceiling_bits")), fmt(r.get("bits_per_token")), fmt(r.get("mean_compression_tokens")),
    ] for r in rows]
    return text_table(head, body)
