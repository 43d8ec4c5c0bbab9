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


#: Terminal tables wider than this are split into column groups (see :func:`split_columns`).
TERMINAL_WIDTH = 120


def _width(cell: str) -> int:
    return max((len(line) for line in cell.split("\n")), default=0)


def split_columns(head: Sequence[str], body: Sequence[Sequence[str]], *, n_keys: int,
                  width: int = TERMINAL_WIDTH, sep: int = 2,
                  header_pad: int = 0) -> list[tuple[list[str], list[list[str]]]]:
    """A table as column groups that each fit in ``width`` characters (columns ``sep`` apart):
    the first ``n_keys`` columns (what names a row) start every group, the others follow in
    order, as many per group as fit; a column too wide for any group gets one of its own.
    One group (the whole table) when it fits. ``header_pad``: extra width a renderer gives each
    header (tabulate's "simple" format: 2)."""
    widths = [max([_width(h) + header_pad, *(_width(b[i]) for b in body)]) for i, h in enumerate(head)]
    keys = list(range(min(n_keys, len(head))))
    key_width = sum(widths[k] + sep for k in keys)
    groups: list[list[int]] = []
    cur: list[int] = []
    used = key_width
    for i in range(len(keys), len(head)):
        if cur and used + widths[i] > width:
            groups.append(cur)
            cur, used = [], key_width
        cur.append(i)
        used += widths[i] + sep
    if cur or not groups:
        groups.append(cur)
    return [([head[i] for i in keys + g], [[row[i] for i in keys + g] for row in body]) for g in groups]


def text_table(head: Sequence[str], body: Sequence[Sequence[str]], *, n_keys: int | None = None,
               width: int = TERMINAL_WIDTH) -> str:
    """Left-aligned plain-text columns with a dashed rule under the header. With ``n_keys``, a
    table wider than ``width`` is printed as column groups (:func:`split_columns`), one after another."""
    if n_keys is not None:
        groups = split_columns(head, body, n_keys=n_keys, width=width)
        if len(groups) > 1:
            return "\n\n".join(text_table(h, b) for h, b in groups)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(line.rstrip() for line in lines)


def format_summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sweep's summary rows as a terminal table: the grid axes (dataset and prompt in a line
    above the table when every row has the same one; temperature, seed, scorer and predictor mode
    only when they vary), n, errors, n_unscored (unparseable answers, counted wrong), accuracy
    [95% CI], MI bits [95% CI], log2 N ceiling, bits per compression token, mean compression
    tokens. Split into column groups to fit :data:`TERMINAL_WIDTH` columns."""
    same = [a for a in ("dataset", "prompt") if rows and len({str(r.get(a)) for r in rows}) == 1]
    axes = [a for a in ("dataset", "compressor", "predictor", "prompt") if a not in same]
    axes += [a for a in ("temperature", "seed", "scorer", "predictor_mode")
             if len({str(r.get(a)) for r in rows}) > 1]
    head = [*axes, "n", "err", "unscored", "accuracy [95% CI]", "MI bits [95% CI]", "ceil", "bits/tok", "tokens"]
    body = [[
        *(str(r.get(a)) for a in axes), fmt(r.get("n")), fmt(r.get("n_errors")), fmt(r.get("n_unscored")),
        fmt_ci(r.get("accuracy"), r.get("accuracy_ci_low"), r.get("accuracy_ci_high")),
        fmt_ci(r.get("mi_bits"), r.get("mi_ci_low_bits"), r.get("mi_ci_high_bits")),
        fmt(r.get("ceiling_bits")), fmt(r.get("bits_per_token")), fmt(r.get("mean_compression_tokens")),
    ] for r in rows]
    caption = ", ".join(f"{a} {rows[0].get(a)}" for a in same)
    table = text_table(head, body, n_keys=len(axes))
    return f"{caption} (every row)\n{table}" if caption else table
