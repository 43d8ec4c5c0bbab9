"""A reference deep-research agent with a compression step, an offline research benchmark, and runs.

- :mod:`.agent`: :class:`ResearchAgent`, the loop of rounds (plan, search, compress, answer or ask again);
- :mod:`.search`: pluggable search, :class:`BM25Search` built in (``bm25s``);
- :mod:`.bench`: the seeded generated benchmark (companies' filings and news, multi-hop questions);
- :mod:`.corpus`: :class:`Document`, :class:`Question`, bring-your-own folders and question files;
- :mod:`.records`: the typed run records; :mod:`.run`: ``compressbench research``; :mod:`.report`:
  tables and plots.

Nothing heavy is imported here (bm25s, torch and matplotlib load inside the functions that use them).
"""

from compressbench.agent.research.agent import AgentSettings, ResearchAgent, parse_reply
from compressbench.agent.research.bench import generate_benchmark
from compressbench.agent.research.corpus import Document, Question, load_documents, load_questions
from compressbench.agent.research.search import BM25Search, SearchFn

__all__ = ["AgentSettings", "BM25Search", "Document", "Question", "ResearchAgent", "SearchFn",
           "generate_benchmark", "load_documents", "load_questions", "parse_reply"]
