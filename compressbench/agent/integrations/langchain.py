r"""LangChain / LangGraph adapter: log every compression a LangChain agent makes into a CompressionLog.

Needs ``pip install "compressbench[langchain]"`` (langchain-core; langgraph for graphs). Nothing
here is imported by ``import compressbench``.

Two ways in, pick one:

1. Wrap the chat model that compresses (recommended)::

       from compressbench.agent.log import CompressionLog
       from compressbench.agent.integrations.langchain import compression_runnable

       compress = compression_runnable(ChatOpenAI(model="gpt-4o-mini"), CompressionLog("log.jsonl"),
                                       name="gpt-4o-mini")
       summary = compress.invoke({"context": page_text, "query": question})   # also ainvoke / batch

   A Runnable (usable as a LangGraph node's helper or in a chain) built on
   :class:`~compressbench.agent.step.CompressionStep`: the prompt
   (``prompts/compress_query.yaml`` by default) is rendered into chat messages, the model is
   called (``batch`` runs calls in parallel), and each triple is logged with the model's token
   usage (``usage_metadata``), latency and, with ``paid_api=True`` and a ``price``, dollars.

2. Keep your own compression call and add a callback handler::

       handler = CompressionCallbackHandler(CompressionLog("log.jsonl"), compressor="summariser")
       model.invoke(messages, config={"tags": ["compress"],
                                      "metadata": {"context": page_text, "query": question}})
       graph.invoke(state, config={"callbacks": [handler]})   # or pass it on the model call

   Every chat-model (or LLM) run tagged ``compress`` whose metadata holds the context and the
   query is logged when it ends (its output text is the compression; usage from the response).
   Untagged runs (the planner, the writer) are ignored. A run that fails is not logged.

Either way, logging never breaks the agent: a line that cannot be written is counted in
``n_log_failures`` and logged as a warning. Then ``log.estimate(scorer)`` gives I(X; Z) in bits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from compressbench.core.errors import BackendUnavailable, UsageError
from compressbench.core.types import Generation, GenerationParams, ModelInfo, Sample, Usage
from compressbench.agent.step import CompressionStep

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables import RunnableLambda
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise BackendUnavailable(f"compressbench.agent.integrations.langchain needs langchain-core ({exc}); install it "
                             'with: pip install "compressbench[langchain]"') from exc

log = logging.getLogger(__name__)

_ROLE_TO_TYPE = {"system": "system", "user": "human", "assistant": "ai"}


def _usage(msg: Any) -> Usage:
    """Token usage of one AIMessage (``usage_metadata``); unknown stays None."""
    um = getattr(msg, "usage_metadata", None) or {}
    cached = (um.get("input_token_details") or {}).get("cache_read")
    return Usage(um.get("input_tokens"), um.get("output_tokens"), cached)


class LangChainChatBackend:
    """A LangChain chat model behind compressbench's ``generate`` seam (generation only; it cannot score).

    ``generate`` sends each chat through ``model.batch`` (LangChain runs the calls concurrently,
    up to ``max_concurrency``); ``params.n`` samples are ``n`` calls. Sampling settings are the
    model's own (LangChain models take them at construction). ``info`` is the given ModelInfo,
    or one with only the name.
    """

    def __init__(self, model: Any, *, name: str | None = None, info: ModelInfo | None = None,
                 max_concurrency: int | None = None):
        if not hasattr(model, "batch") or not hasattr(model, "invoke"):
            raise UsageError(f"model must be a LangChain chat model (a Runnable), got {type(model).__name__}")
        self.model = model
        self.name = name or str(getattr(model, "model_name", None) or getattr(model, "model", None)
                                or type(model).__name__)
        self._info = info
        self.max_concurrency = max_concurrency

    def generate(self, chats: Sequence[Sequence[dict[str, str]]], params: GenerationParams) -> list[Generation]:
        msgs = [[(_ROLE_TO_TYPE.get(m["role"], m["role"]), m["content"]) for m in chat] for chat in chats]
        flat = [m for m in msgs for _ in range(params.n)]
        config = {"max_concurrency": self.max_concurrency} if self.max_concurrency else None
        outs = self.model.batch(flat, config=config)
        gens = []
        for i in range(len(chats)):
            group = outs[i * params.n:(i + 1) * params.n]
            usages = [_usage(o) for o in group]
            p = None if any(u.n_prompt_tokens is None for u in usages) else sum(u.n_prompt_tokens for u in usages)
            c = (None if any(u.n_completion_tokens is None for u in usages)
                 else sum(u.n_completion_tokens for u in usages))
            gens.append(Generation(tuple(Sample(_text(o), "stop", _usage(o).n_completion_tokens) for o in group),
                                   Usage(p, c)))
        return gens

    def info(self) -> ModelInfo:
        return self._info or ModelInfo(reference=self.name)


def _text(msg: Any) -> str:
    content = getattr(msg, "content", msg)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


def compression_runnable(model: Any, log_: Any, *, prompt: Any = "compress_query", name: str | None = None,
                         paid_api: bool = False, price: Any = None, info: ModelInfo | None = None,
                         max_concurrency: int | None = None) -> Any:
    """A Runnable ``{"context": str, "query": str} -> str`` that compresses with ``model`` and logs.

    The returned Runnable carries the step as ``.step`` (``.step.report(scorer)``,
    ``.step.n_log_failures``). See the module doc.
    """
    backend = LangChainChatBackend(model, name=name, info=info, max_concurrency=max_concurrency)
    step = CompressionStep(backend, prompt, log=log_, name=backend.name, paid_api=paid_api, price=price, info=info)

    def _pair(d: Any) -> tuple[str, str]:
        if not isinstance(d, dict) or "context" not in d:
            raise UsageError("the compression runnable takes {'context': str, 'query': str}")
        return str(d["context"]), str(d.get("query", ""))

    def run(d: Any) -> str:
        return step.step(*_pair(d))

    async def arun(d: Any) -> str:
        return await step.astep(*_pair(d))

    runnable = RunnableLambda(run, afunc=arun, name=f"compress[{backend.name}]")
    runnable.step = step  # type: ignore[attr-defined]
    return runnable


class CompressionCallbackHandler(BaseCallbackHandler):
    """Logs the output of every chat-model/LLM run tagged ``tag`` as a compression (see the module doc).

    ``context_key`` / ``query_key``: the run metadata keys holding the context and the query.
    A tagged run without a context in its metadata is skipped with a warning (it cannot be
    scored without its context).
    """

    raise_error = False  # a failing handler must never break the agent

    def __init__(self, log_: Any, *, compressor: str = "langchain", tag: str = "compress",
                 context_key: str = "context", query_key: str = "query"):
        super().__init__()
        self.log = log_
        self.compressor = compressor
        self.tag = tag
        self.context_key, self.query_key = context_key, query_key
        self.n_logged = 0
        self.n_log_failures = 0
        self._pending: dict[UUID, tuple[str, str, str | None]] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: UUID, tags: list[str] | None, metadata: dict[str, Any] | None,
               serialized: dict[str, Any] | None) -> None:
        if self.tag not in (tags or []):
            return
        md = metadata or {}
        context = md.get(self.context_key)
        if not isinstance(context, str):
            log.warning("run %s is tagged %r but its metadata has no %r string; not logged", run_id, self.tag,
                        self.context_key)
            return
        model = None
        if serialized:
            model = (serialized.get("kwargs") or {}).get("model_name") or (serialized.get("id") or [None])[-1]
        with self._lock:
            self._pending[run_id] = (context, str(md.get(self.query_key, "")), model)

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID,
                            tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        self._start(run_id, tags, metadata, serialized)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._start(run_id, tags, metadata, serialized)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._pending.pop(run_id, None)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            pending = self._pending.pop(run_id, None)
        if pending is None:
            return
        context, query, model = pending
        for gen_list in response.generations:
            for j, gen in enumerate(gen_list):
                msg = getattr(gen, "message", None)
                usage = _usage(msg) if msg is not None else Usage(None, None)
                meta = {"sample": j, "n_samples": len(gen_list), "model": model, "source": "langchain-callback"}
                if j == 0:
                    meta["usage"] = {"n_prompt_tokens": usage.n_prompt_tokens,
                                     "n_completion_tokens": usage.n_completion_tokens, "n_calls": 1}
                try:
                    self.log.record(context, query, gen.text, compressor=self.compressor, metadata=meta)
                    self.n_logged += 1
                except Exception as exc:  # noqa: BLE001 - logging must never break the agent
                    self.n_log_failures += 1
                    log.warning("could not log a LangChain compression (%s: %s); the agent goes on",
                                type(exc).__name__, exc)


__all__ = ["CompressionCallbackHandler", "LangChainChatBackend", "compression_runnable"]
