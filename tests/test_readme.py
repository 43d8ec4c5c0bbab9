"""Every fenced ```python block of README.md runs as written, each in its own scratch directory.

The blocks are found by reading README.md, so a new snippet is tested without touching this file.
Each runs in this process (``exec`` in a fresh namespace, the working directory a new temporary
folder), so torch is imported once. Where a snippet names a paid API, the API is faked:
``langchain_openai.ChatOpenAI`` by langchain-core's fake chat model, smolagents'
``OpenAIServerModel`` by a scripted smolagents ``Model``; the ``vllm serve`` snippet talks to the
toy OpenAI-compatible server of ``tests/servers/toy_openai.py`` (its address substituted for
``127.0.0.1:8000``). A snippet that names SmolLM2 loads the real model (marked slow). After a
snippet runs, the checks below (keyed by the snippet's section heading) compare what it computed
with an independent expectation; the agent snippets also run twice in one folder, to check that
a rerun measures the same M.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippets(text: str) -> list[tuple[str, int, str]]:
    """``(heading, line number, code)`` of each fenced ```python block, heading = the nearest
    ``##``/``###`` heading above it."""
    out: list[tuple[str, int, str]] = []
    heading, block, start = "", None, 0
    for n, line in enumerate(text.splitlines(), 1):
        if block is None:
            if line.startswith("#") and line.lstrip("#").startswith(" "):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```python":
                block, start = [], n + 1
        elif line.strip() == "```":
            out.append((heading, start, "\n".join(block) + "\n"))
            block = None
        else:
            block.append(line)
    assert block is None, f"README.md: the ```python block at line {start} is never closed"
    return out


SNIPPETS = readme_snippets(README.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- fakes


def _fake_langchain_openai() -> types.ModuleType:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    mod = types.ModuleType("langchain_openai")

    def ChatOpenAI(model: str, **_: Any):  # noqa: N802  (the name the snippet imports)
        return FakeListChatModel(responses=[f"note by {model}"])

    mod.ChatOpenAI = ChatOpenAI
    return mod


def _fake_smolagents_model() -> type:
    from smolagents.models import ChatMessage, Model

    class FakeOpenAIServerModel(Model):
        """Stands in for the paid API: answers "done" (the snippet never runs the agent)."""

        def __init__(self, model_id: str, **kwargs: Any):
            super().__init__(model_id=model_id)

        def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kw):
            return ChatMessage(role="assistant", content="done")

    return FakeOpenAIServerModel


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    """The paid APIs the snippets name, faked; yields a function that rewrites a snippet's code
    for the toy server when it needs one (returns the code unchanged otherwise)."""
    pytest.importorskip("langchain_core")
    smolagents = pytest.importorskip("smolagents")
    monkeypatch.setitem(sys.modules, "langchain_openai", _fake_langchain_openai())
    monkeypatch.setattr(smolagents, "OpenAIServerModel", _fake_smolagents_model())
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    servers: list[Any] = []

    def prepare(code: str) -> str:
        if "http://127.0.0.1:8000/v1" not in code:
            return code
        from servers.toy_openai import ToyConfig, ToyServer

        server = ToyServer(ToyConfig(model_name="qwen7b")).start()
        servers.append(server)
        return code.replace("http://127.0.0.1:8000/v1", server.url)

    yield prepare
    for s in servers:
        s.stop()


def run_snippet(code: str, where: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run ``code`` with ``folder`` as the working directory; its namespace afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    ns: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, where, "exec"), ns)  # noqa: S102  (the README's own code)
    return ns


# --------------------------------------------------------------------------- checks per snippet


def _check_scoring(ns: dict[str, Any], out: str) -> None:
    m = ns["m"]
    assert m.shape == (2, 3) and m.dtype == np.float64 and np.all(m < 0)
    assert m[0, 0] > m[0, 1] and m[1, 1] > m[1, 0]  # France -> Paris, Italy -> Rome
    assert m[0, 2] < m[0, 0] and m[1, 2] < m[1, 1]
    paris = ns["paris"]
    assert math.isclose(paris.total_nats, float(np.sum(paris.logprobs_nats)), abs_tol=1e-9)
    assert math.isclose(paris.total_nats, m[0, 0], abs_tol=1e-3)  # per-pair forward == shared-prefix matrix


def _check_mi(ns: dict[str, Any], out: str) -> None:
    est = ns["est"]
    assert (est.n_contexts, est.n_samples) == (4, 2)
    assert math.isclose(est.ceiling_bits, 2.0)
    assert est.ci_low_bits <= est.bits <= est.ci_high_bits <= 2.0 + 1e-9
    assert est.bits > 1.0  # four unrelated facts and summaries that name them: most of the 2 bits
    assert f"{est.bits:.2f} bits" in out


def _check_agent(ns: dict[str, Any], out: str) -> None:
    log = ns["log"]
    assert len(log.entries()) == 6  # 3 contexts x 2 summaries, however often the snippet ran
    (est_log,) = log.estimate(ns["scorer"]).values()
    assert (est_log.n_contexts, est_log.n_samples) == (3, 2)
    assert est_log.bits <= math.log2(3) + 1e-9
    assert math.isclose(ns["est"].bits, est_log.bits, abs_tol=1e-6)  # online == from the log, same triples
    assert "my-summariser:" in out and "(N=3, M=2)" in out


def _check_step(ns: dict[str, Any], out: str) -> None:
    rows = ns["step"].log.entries()
    assert len(rows) == 4  # 3 documents in the batch + 1 single step
    assert rows[-1]["compression"] == "Caldera Robotics employs 2,310 people."
    assert "first-sentence: MI" in out and "at gpt-4o input prices" in out


def _check_langchain(ns: dict[str, Any], out: str) -> None:
    from compressbench.agent import CompressionLog

    notes = ns["compress_research"]({"question": "Who leads it?", "docs": ["Doc one.", "Doc two."]})["notes"]
    assert notes == ["note by gpt-4o-mini"] * 2
    rows = CompressionLog("runs/agent/log.jsonl").entries()
    assert sorted(r["context"] for r in rows) == ["Doc one.", "Doc two."]
    assert {r["compressor"] for r in rows} == {"gpt-4o-mini"}


def _check_smolagents(ns: dict[str, Any], out: str) -> None:
    tool = ns["agent"].tools["compress_document"]
    assert tool(document="Mira Halvorsen leads Vantrix. She joined in 2019.", question="Who leads Vantrix?") \
        == "Mira Halvorsen leads Vantrix."
    (row,) = ns["step"].log.entries()
    assert (row["query"], row["compressor"]) == ("Who leads Vantrix?", "first-sentence")


def _check_vllm(ns: dict[str, Any], out: str) -> None:
    from servers.toy_openai import ToyModel

    toy = ToyModel()
    expected = np.empty((len(ns["prefixes"]), len(ns["compressions"])))
    for p, prefix in enumerate(ns["prefixes"]):
        for c, cont in enumerate(ns["compressions"]):
            ids = toy.tokenize(prefix, True)
            total = 0.0
            for tok in toy.tokenize(cont, False):
                total += toy.logprob(ids, tok)
                ids = ids + [tok]
            expected[p, c] = total
    np.testing.assert_allclose(ns["m"], expected, atol=1e-4)


def _check_openai_predictor(ns: dict[str, Any], out: str) -> None:
    from compressbench.core.errors import ScoringUnsupported

    with pytest.raises(ScoringUnsupported):  # scoring="none": refused as a scorer, before any request
        ns["predictor"].check_scoring()


#: Checks by section heading (and a piece of the code, where a section has several snippets).
CHECKS: dict[tuple[str, str], Callable[[dict[str, Any], str], None]] = {
    ("Scoring log-probabilities from Python", "score_matrix"): _check_scoring,
    ("Reading an MI estimate", "score_mi"): _check_mi,
    ("Inside an agent", "estimate_online"): _check_agent,
    ("The compression step (plain Python)", "CompressionStep"): _check_step,
    ("LangChain / LangGraph", "compression_runnable"): _check_langchain,
    ("smolagents", "compression_tool"): _check_smolagents,
    ("Remote and scaled backends: vllm serve, SGLang, OpenAI-style APIs", "score_matrix"): _check_vllm,
    ("Remote and scaled backends: vllm serve, SGLang, OpenAI-style APIs", "scoring=\"none\""): _check_openai_predictor,
}
#: Snippets that write a log, run twice in one folder: the second run must measure the same M.
RERUN = {"Inside an agent", "The compression step (plain Python)"}


def _check_for(heading: str, code: str):
    found = [f for (h, piece), f in CHECKS.items() if h == heading and piece in code]
    assert len(found) <= 1, f"two checks match the snippet under {heading!r}"
    return found[0] if found else None


def test_the_readme_has_python_snippets_and_every_check_finds_its_snippet():
    text = README.read_text(encoding="utf-8")
    assert len(SNIPPETS) == text.count("```python") >= 8
    for heading, piece in CHECKS:
        assert any(h == heading and piece in code for h, _, code in SNIPPETS), (heading, piece)


def _params():
    for heading, line, code in SNIPPETS:
        marks = [pytest.mark.slow] if "smollm2-135m" in code else []
        yield pytest.param(heading, line, code, id=f"README.md:{line}", marks=marks)


@pytest.mark.parametrize("heading,line,code", list(_params()))
def test_readme_snippet_runs(heading, line, code, fakes, tmp_path, monkeypatch, capsys, caplog):
    code = fakes(code)
    check = _check_for(heading, code)
    runs = 2 if heading in RERUN else 1
    for run in range(runs):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="compressbench"):
            ns = run_snippet(code, f"README.md:{line}", tmp_path / "scratch", monkeypatch)
        out = capsys.readouterr().out
        repeats = [r for r in caplog.records if "already held" in r.getMessage()]
        assert not repeats, f"run {run + 1} of the snippet at README.md:{line} re-recorded its own log"
        if check is not None:
            check(ns, out)
