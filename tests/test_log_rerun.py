"""CompressionLog warns when a new log object records what its file already held (a script run
twice on one log), and only then."""

from __future__ import annotations

import logging

from compressbench.agent import CompressionLog

DOCS = {"The meeting moved to Thursday.": ["Thursday.", "Moved to Thu."],
        "The invoice is 420 euros.": ["420 EUR.", "Pay 420."]}


def _record_all(path, **kw):
    with CompressionLog(path) as log:
        for context, summaries in DOCS.items():
            for s in summaries:
                log.record(context, "q", s, **kw)
    return log


def _repeats(caplog):
    return [r for r in caplog.records if "already held" in r.getMessage()]


def test_a_second_run_on_the_same_log_warns_once_and_still_records(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    with caplog.at_level(logging.WARNING, logger="compressbench"):
        _record_all(path)
        assert _repeats(caplog) == []
        log = _record_all(path)
    (warning,) = _repeats(caplog)  # once per log object, though all four lines repeat
    assert str(path) in warning.getMessage() and "'default'" in warning.getMessage()
    assert len(log.entries()) == 8  # recorded all the same: the log never drops a line
    (sel,) = log.select().values()
    assert sel.n_samples == 4  # what the warning is about: M doubled


def test_no_warning_for_new_compressions_another_compressor_or_repeats_within_one_object(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    with caplog.at_level(logging.WARNING, logger="compressbench"):
        _record_all(path)
        _record_all(path, compressor="other")  # same texts, another compressor
        with CompressionLog(path) as log:
            log.record("The meeting moved to Thursday.", "q", "A third summary.")
            log.record("A new context.", "q", "Same.")
            log.record("A new context.", "q", "Same.")  # M samples that agree, in one object
            log.close()
            log.record("A new context.", "q", "Same.")  # reopened by the same object: still its own
        log2 = CompressionLog(path)
        log2.record("The meeting moved to Thursday.", "another query", "Thursday.")  # another context id
    assert _repeats(caplog) == []
