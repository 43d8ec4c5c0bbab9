"""Library API for use inside a running agent.

- :class:`CompressionLog`, :func:`estimate_online` (:mod:`.log`): record (context, query,
  compression) triples cheaply and estimate I(X; Z) later or at once;
- :class:`CompressionStep`, :func:`report_log` (:mod:`.step`): a compression step to drop into any
  agent, logging usage and cost;
- :mod:`.integrations` (LangChain/LangGraph, smolagents) and :mod:`.research` (the reference
  deep-research agent and ``compressbench research``).

Nothing heavy is imported here.
"""

from compressbench.agent.log import LOG_VERSION, CompressionLog, Selection, context_id, estimate_online
from compressbench.agent.step import (
    DEFAULT_COMPRESS_PROMPT,
    CompressionStep,
    CompressorReport,
    StepResult,
    format_log_report,
    predictor_confidence,
    report_log,
)

__all__ = ["DEFAULT_COMPRESS_PROMPT", "LOG_VERSION", "CompressionLog", "CompressionStep", "CompressorReport",
           "Selection", "StepResult", "context_id", "estimate_online", "format_log_report", "predictor_confidence",
           "report_log"]
