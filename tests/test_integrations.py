"""Agent-framework adapters: LangChain/LangGraph (real libraries, langchain-core's fake chat models),
smolagents (the README's snippets run in tests/test_readme.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import pytest

from compressbench.agent import CompressionLog

pytest.importorskip("langchain_core", reason="the langchain extra is part of the dev install")

TAGS = ("zqa", "zqb", "zqc")


class ChannelScorer:
    """p(z | x) = 0.6 when z's first word is the tag x holds, else 0.2 (as in tests/test_agent.py)."""

    name = "channel"

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        def tag(p: str) -> str:
            (t,) = [t for t in TAGS if t in p]
            return t

        return np.array([[math.log(0.6) if tag(p) == c.split()[0] else math.log(0.2) for c in continuations]
                         for p in prefixes])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


DOCS = {"zqa": "zqa filing: revenue 412 million", "zqb": "zqb news: new chief executive",
        "zqc": "zqc history: founded 1956"}
QUESTION = "What do the documents say?"


def _ai(text: str, n_in: int, n_out: int):
    from langchain_core.messages import AIMessage

    return AIMessage(content=text, usage_metadata={"input_tokens": n_in, "output_tokens": n_out,
                                                   "total_tokens": n_in + n_out})


class ResearchState(TypedDict):
    question: str
    docs: list[str]
    notes: list[str]
    answer: str


def _graph(compress_fn, predictor):
    """A three-node LangGraph research graph: search -> compress -> answer."""
    from langgraph.graph import END, START, StateGraph

    def search(state: ResearchState) -> dict:
        return {"docs": list(DOCS.values())}

    def compress(state: ResearchState) -> dict:
        return {"notes": [compress_fn(d, state["question"]) for d in state["docs"]]}

    def answer(state: ResearchState) -> dict:
        msg = predictor.invoke([("human", "Notes:\n" + "\n".join(state["notes"]) + "\nQ: " + state["question"])])
        return {"answer": msg.content}

    g = StateGraph(ResearchState)
    g.add_node("search", search)
    g.add_node("compress", compress)
    g.add_node("answer", answer)
    g.add_edge(START, "search")
    g.add_edge("search", "compress")
    g.add_edge("compress", "answer")
    g.add_edge("answer", END)
    return g.compile()


def test_langgraph_agent_logs_compressions_through_the_runnable_and_estimate_gives_mi(tmp_path):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel

    from compressbench.agent.integrations.langchain import compression_runnable

    summaries = ["zqa revenue 412 million", "zqb chief executive", "zqc founded 1956"]
    compressor_model = GenericFakeChatModel(messages=iter([_ai(s, 40 + k, 4) for k, s in enumerate(summaries)]))
    log = CompressionLog(tmp_path / "log.jsonl")
    runnable = compression_runnable(compressor_model, log, name="fake-compressor", paid_api=True, price="gpt-4o-mini")
    predictor = FakeListChatModel(responses=["ANSWER: founded 1956"])
    app = _graph(lambda d, q: runnable.invoke({"context": d, "query": q}), predictor)
    out = app.invoke({"question": QUESTION, "docs": [], "notes": [], "answer": ""})
    assert out["notes"] == summaries and out["answer"] == "ANSWER: founded 1956"
    rows = log.entries()
    assert [(r["context"], r["query"], r["compression"], r["compressor"]) for r in rows] == [
        (DOCS[t], QUESTION, s, "fake-compressor") for t, s in zip(TAGS, summaries)]
    assert [r["metadata"]["usage"] for r in rows] == [
        {"n_prompt_tokens": 40 + k, "n_completion_tokens": 4, "n_calls": 1} for k in range(3)]
    # GPT-4o-mini list prices: $0.15 in / $0.60 out per 1M tokens
    assert rows[1]["metadata"]["api_usd"] == pytest.approx((41 * 0.15 + 4 * 0.60) / 1e6)
    est = log.estimate(ChannelScorer(), n_boot=0)["fake-compressor"]
    # each summary names its own document's tag: every term is log(0.6 / ((0.6 + 0.2 + 0.2) / 3))
    assert est.bits == pytest.approx(math.log2(1.8), abs=1e-12) and est.n_contexts == 3
    rep = runnable.step.report(ChannelScorer(), n_boot=0)["fake-compressor"]
    assert rep.compressor_prompt_tokens == 40 + 41 + 42 and rep.compressor_api_usd == pytest.approx(
        ((40 + 41 + 42) * 0.15 + 12 * 0.60) / 1e6)


def test_callback_handler_logs_only_tagged_runs_inside_a_langgraph_graph(tmp_path):
    import asyncio

    from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel

    from compressbench.agent.integrations.langchain import CompressionCallbackHandler

    summaries = ["zqa revenue", "zqb executive", "zqc 1956"]
    model = GenericFakeChatModel(messages=iter([_ai(s, 30, 2) for s in summaries]))

    def compress_fn(doc: str, q: str) -> str:  # the agent's own call, tagged, with context and query in metadata
        return model.invoke([("human", f"Summarise for {q}:\n{doc}")],
                            config={"tags": ["compress"], "metadata": {"context": doc, "query": q}}).content

    log = CompressionLog(tmp_path / "log.jsonl")
    handler = CompressionCallbackHandler(log, compressor="summariser")
    predictor = FakeListChatModel(responses=["ANSWER: 1956"])  # untagged: not logged
    app = _graph(compress_fn, predictor)
    out = asyncio.run(app.ainvoke({"question": QUESTION, "docs": [], "notes": [], "answer": ""},
                                  config={"callbacks": [handler]}))
    assert out["answer"] == "ANSWER: 1956"
    rows = log.entries()
    assert [(r["context"], r["compression"], r["compressor"]) for r in rows] == [
        (DOCS[t], s, "summariser") for t, s in zip(TAGS, summaries)]
    assert rows[0]["metadata"]["usage"] == {"n_prompt_tokens": 30, "n_completion_tokens": 2, "n_calls": 1}
    assert handler.n_logged == 3 and handler.n_log_failures == 0
    est = log.estimate(ChannelScorer(), n_boot=0)["summariser"]
    assert est.bits == pytest.approx(math.log2(1.8), abs=1e-12)


def test_callback_handler_survives_a_broken_log(tmp_path):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from compressbench.agent.integrations.langchain import CompressionCallbackHandler

    blocker = tmp_path / "file"
    blocker.write_text("x")
    handler = CompressionCallbackHandler(CompressionLog(blocker / "log.jsonl"))
    model = GenericFakeChatModel(messages=iter([_ai("zqa ok", 3, 2)]))
    msg = model.invoke([("human", "hi")], config={"tags": ["compress"], "callbacks": [handler],
                                                  "metadata": {"context": "zqa doc", "query": "q"}})
    assert msg.content == "zqa ok" and handler.n_log_failures == 1 and handler.n_logged == 0


def test_smolagents_tool_logs_compressions(tmp_path):
    pytest.importorskip("smolagents")
    from compressbench.agent import CompressionStep
    from compressbench.agent.integrations.smolagents import compression_tool

    log = CompressionLog(tmp_path / "log.jsonl")
    step = CompressionStep(lambda context, query: context.split(":")[0] + " summary", log=log, name="head")
    tool = compression_tool(step)
    assert tool.name == "compress_document" and set(tool.inputs) == {"document", "question"}
    for t in TAGS:
        assert tool(document=DOCS[t], question=QUESTION) == DOCS[t].split(":")[0] + " summary"
    assert log.estimate(ChannelScorer(), n_boot=0)["head"].bits == pytest.approx(math.log2(1.8), abs=1e-12)


def test_smolagents_agent_calls_the_tool(tmp_path):
    """A real smolagents ToolCallingAgent whose model (a scripted smolagents Model) calls the tool."""
    smolagents = pytest.importorskip("smolagents")
    from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, Model

    from compressbench.agent import CompressionStep
    from compressbench.agent.integrations.smolagents import compression_tool

    class Scripted(Model):
        def __init__(self):
            super().__init__(model_id="scripted")
            self.turn = 0

        def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kw):
            self.turn += 1
            if self.turn == 1:
                call = ChatMessageToolCall(id="c1", type="function", function=ChatMessageToolCallFunction(
                    name="compress_document", arguments={"document": DOCS["zqb"], "question": QUESTION}))
            else:
                call = ChatMessageToolCall(id="c2", type="function", function=ChatMessageToolCallFunction(
                    name="final_answer", arguments={"answer": "done"}))
            return ChatMessage(role="assistant", content="", tool_calls=[call])

    log = CompressionLog(tmp_path / "log.jsonl")
    step = CompressionStep(lambda context, query: "zqb " + context.split(": ")[1], log=log, name="tail")
    agent = smolagents.ToolCallingAgent(tools=[compression_tool(step)], model=Scripted(), max_steps=3,
                                        verbosity_level=0)
    assert agent.run(QUESTION) == "done"
    (row,) = log.entries()
    assert (row["context"], row["query"], row["compression"]) == (DOCS["zqb"], QUESTION, "zqb new chief executive")


def test_import_compressbench_imports_no_framework():
    code = ("import sys, compressbench, compressbench.agent.log, compressbench.agent.research, compressbench.cli.main\n"
            "print(','.join(m for m in ('langchain_core', 'langgraph', 'smolagents', 'bm25s', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_compression_runnable_batch_and_async(tmp_path):
    import asyncio

    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from compressbench.agent.integrations.langchain import compression_runnable

    log = CompressionLog(tmp_path / "log.jsonl")
    runnable = compression_runnable(FakeListChatModel(responses=["a short note"]), log, name="fake")
    outs = runnable.batch([{"context": DOCS[t], "query": QUESTION} for t in TAGS])
    assert outs == ["a short note"] * 3
    assert asyncio.run(runnable.ainvoke({"context": DOCS["zqa"], "query": "another q"})) == "a short note"
    rows = log.entries()
    assert sorted(r["context"] for r in rows[:3]) == sorted(DOCS.values()) and rows[3]["query"] == "another q"
    assert rows[0]["metadata"]["usage"]["n_prompt_tokens"] is None  # the fake model reports no usage: unknown
    with pytest.raises(Exception, match="takes \\{'context'"):
        runnable.invoke("just a string")
