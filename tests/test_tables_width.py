"""Terminal tables fit 120 columns: split into column groups that repeat the key columns."""

from __future__ import annotations

import pytest

from compressbench.core.tables import TERMINAL_WIDTH, format_summary_table, split_columns, text_table


def _cells_of(table: str) -> set[str]:
    return {c for line in table.splitlines() for c in line.split()}


def test_split_columns_by_hand():
    head = ["key", "a", "b", "c"]
    body = [["k1", "a" * 10, "b" * 10, "c" * 10], ["k2", "x", "y", "z"]]
    # key 2+2 wide (its header is 3): "key" + a + b = 3 + 2 + 10 + 2 + 10 = 27 fits 27, c does not
    groups = split_columns(head, body, n_keys=1, width=27)
    assert [h for h, _ in groups] == [["key", "a", "b"], ["key", "c"]]
    assert groups[1][1] == [["k1", "c" * 10], ["k2", "z"]]
    assert split_columns(head, body, n_keys=1, width=40) == [(head, body)]  # fits: one group
    # a column wider than any group still gets a group of its own
    assert [h for h, _ in split_columns(head, body, n_keys=1, width=8)] == [["key", "a"], ["key", "b"], ["key", "c"]]
    # tabulate pads headers by 2: "key" counts 5, so b no longer fits next to a in 27
    assert [h for h, _ in split_columns(head, body, n_keys=1, width=27, header_pad=2)] == \
        [["key", "a"], ["key", "b"], ["key", "c"]]


def test_text_table_splits_and_keeps_every_cell():
    head = ["name", *(f"column {i}" for i in range(12))]
    body = [[f"row{r}", *(f"{r}.{i}-value" for i in range(12))] for r in range(3)]
    whole = text_table(head, body)
    assert max(len(line) for line in whole.splitlines()) > TERMINAL_WIDTH
    split = text_table(head, body, n_keys=1)
    assert max(len(line) for line in split.splitlines()) <= TERMINAL_WIDTH
    assert _cells_of(split) == _cells_of(whole)
    assert split.count("row1") == len(split.split("\n\n")) >= 2  # the key column in every group


def _rows(n_datasets: int):
    return [{"dataset": f"dataset-{d}", "compressor": c, "predictor": p, "prompt": "query", "n": 32, "n_errors": 0,
             "n_unscored": 0, "accuracy": 0.84375, "accuracy_ci_low": 0.682, "accuracy_ci_high": 0.931,
             "mi_bits": 0.958, "mi_ci_low_bits": 0.654, "mi_ci_high_bits": 1.32, "ceiling_bits": 5.0,
             "bits_per_token": 0.1, "mean_compression_tokens": 9.59, "scorer": s}
            for d in range(n_datasets) for c in ("smollm2-135m-instruct", "identity") for p in ("smol", "gemma")
            for s in ("smol", "gemma-3-270m-scorer")]


@pytest.mark.parametrize("n_datasets", [1, 2])
def test_the_sweep_table_fits_120_columns(n_datasets):
    table = format_summary_table(_rows(n_datasets))
    assert max(len(line) for line in table.splitlines()) <= TERMINAL_WIDTH
    assert "0.844 [0.682, 0.931]" in table and "gemma-3-270m-scorer" in table and "9.59" in table
    if n_datasets == 1:  # the same dataset and prompt in every row: said once, above the table
        assert table.splitlines()[0] == "dataset dataset-0, prompt query (every row)"
    else:
        assert "dataset-1" in table and table.splitlines()[0] == "prompt query (every row)"


def test_the_terminal_report_fits_120_columns_and_keeps_every_cell(tmp_path):
    pytest.importorskip("pandas")
    from run_fixtures import write_run

    from compressbench.analysis.report import build_report, display_cells, render

    report = build_report(write_run(tmp_path), n_boot=200)
    wide = render(report, "markdown")
    assert max(len(line) for line in wide.splitlines()) > TERMINAL_WIDTH  # the cells table would not fit
    table = render(report, "table")
    assert max(len(line) for line in table.splitlines()[1:]) <= TERMINAL_WIDTH  # line 0 names the run folder
    cells = display_cells(report)
    words = {w for line in table.splitlines() for w in line.split()}
    for col in ("compressor", "accuracy [95% CI]", "MI bits [95% CI]", "$/query", "GFLOPs/query"):
        for v in cells[col]:
            assert set(str(v).split()) <= words, (col, v)
