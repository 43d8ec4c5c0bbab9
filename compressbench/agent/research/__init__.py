"""A reference deep-research agent with a compression step, an offline research benchmark, and runs.

- :mod:`.agent`: :class:`ResearchAgent`, the loop of rounds (plan, search, compress, answer or ask again);
- :mod:`.search`: pluggable search, :class:`BM25Search` built in (``bm25s``);
- :mod:`.bench`: the seeded generated benchmark (companies' filings and news, multi-hop questions);
- :mod:`.corpus`: :class:`Document`, :class:`Question`, bring-your-own folders and question files;
- :mod:`.run`: ``compressbench research`` through the engine (executor, model registry, cached
  models, run store); :mod:`.report`: tables, Findings and plots. The typed records are the
  research family of :mod:`compressbench.engine.records` (re-exported here).

Nothing heavy is imported here (bm25s, torch and matplotlib load inside the functions that use them).
"""

from compressbench.agent.research.agent import (
    AgentSettings,
    DirectModel,
    ResearchAgent,
    find_entities,
    parse_reply,
    plan_from_entities,
)
from compressbench.agent.research.bench import generate_benchmark
from compressbench.agent.research.corpus import Document, Question, load_documents, load_questions
from compressbench.agent.research.search import BM25Search, SearchFn
from compressbench.engine.records import (
    ResearchAnswerRecord,
    ResearchRoundMIRecord,
    ResearchRoundRecord,
    ResearchUsage,
    read_research_records,
)

__all__ = ["AgentSettings", "BM25Search", "DirectModel", "Document", "Question", "ResearchAgent",
           "ResearchAnswerRecord", "ResearchRoundMIRecord", "ResearchRoundRecord", "ResearchUsage", "SearchFn",
           "find_entities", "generate_benchmark", "load_documents", "load_questions", "parse_reply",
           "plan_from_entities", "read_research_records"]
