"""smolagents: a compression step as a smolagents tool (``pip install "compressbench[smolagents]"``).

::

    from smolagents import CodeAgent, ToolCallingAgent
    from compressbench.agent.log import CompressionLog, CompressionStep
    from compressbench.agent.integrations.smolagents import compression_tool

    step = CompressionStep(load_backend("hf", "smollm2-135m"), log=CompressionLog("log.jsonl"))
    agent = ToolCallingAgent(tools=[compression_tool(step), my_search_tool], model=model)

The agent calls ``compress_document(document, question)``; every call is logged by the step
(usage, latency, cost), and ``step.report(scorer)`` / ``log.estimate(scorer)`` give the MI later.
"""

from __future__ import annotations

from typing import Any

from compressbench.core.errors import BackendUnavailable

try:
    from smolagents import Tool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise BackendUnavailable(f"compressbench.agent.integrations.smolagents needs smolagents ({exc}); install it with: "
                             'pip install "compressbench[smolagents]"') from exc


class CompressionTool(Tool):
    """``compress_document(document, question) -> str`` backed by a CompressionStep."""

    name = "compress_document"
    description = ("Condense a long document into short notes that keep the facts needed to answer the "
                   "question. Use it on every search result before reading it.")
    inputs = {"document": {"type": "string", "description": "the full text of the document"},
              "question": {"type": "string", "description": "the question the notes must help answer"}}
    output_type = "string"

    def __init__(self, step: Any, **kwargs: Any):
        self.step = step
        super().__init__(**kwargs)

    def forward(self, document: str, question: str) -> str:
        return self.step.step(document, question)


def compression_tool(step: Any, *, name: str | None = None, description: str | None = None) -> CompressionTool:
    """A smolagents Tool that runs ``step`` (a :class:`~compressbench.agent.step.CompressionStep`)."""
    tool = CompressionTool(step)
    if name:
        tool.name = name
    if description:
        tool.description = description
    return tool


__all__ = ["CompressionTool", "compression_tool"]
