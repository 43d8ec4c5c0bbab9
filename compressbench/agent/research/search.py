"""Search functions for the research agent: any callable ``search(query, k) -> list[Document]``.

The agent calls ``search(query, k)`` and expects at most ``k`` :class:`Document` objects, best
first (an empty list when nothing matches). Anything with that shape plugs in: a web search
client, a vector store, a function over your own database. An exception raised by the search
function is recorded as that question's failure (with the query and the error); the run goes on.

Built in: :class:`BM25Search`, BM25 over a local corpus with the ``bm25s`` library (sparse-matrix
BM25, ``pip install "compressbench[research]"``), lower-cased word tokens, English stop words
removed; documents with score 0 (no query word in common) are not returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from compressbench.core.errors import BackendUnavailable, UsageError
from compressbench.agent.research.corpus import Document, check_corpus


@runtime_checkable
class SearchFn(Protocol):
    """``search(query, k)``: at most k documents, best first."""

    def __call__(self, query: str, k: int) -> Sequence[Document]: ...


class BM25Search:
    """BM25 (Robertson/Lucene variant as in ``bm25s``) over ``docs``; each document is indexed
    with its title and text."""

    def __init__(self, docs: Iterable[Document], *, k1: float = 1.5, b: float = 0.75):
        try:
            # lazy: bm25s (the [research] extra) loads only for BM25 search
            import bm25s
        except ImportError as exc:
            raise BackendUnavailable(f"BM25 search needs the bm25s package ({exc}); install it with: "
                                     'pip install "compressbench[research]"') from exc
        self._bm25s = bm25s
        self.docs = check_corpus(docs)
        tokens = bm25s.tokenize([d.content for d in self.docs], stopwords="en", return_ids=False,
                                show_progress=False)
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index(tokens, show_progress=False)

    def __call__(self, query: str, k: int) -> list[Document]:
        if not isinstance(query, str):
            raise UsageError(f"query must be a string, got {type(query).__name__}")
        if not isinstance(k, int) or k < 1:
            raise UsageError(f"k must be an integer >= 1, got {k!r}")
        q = self._bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not q[0]:
            return []
        k = min(k, len(self.docs))
        idx, scores = self._retriever.retrieve(q, k=k, show_progress=False, n_threads=1)
        return [self.docs[int(i)] for i, s in zip(idx[0], scores[0]) if s > 0]


__all__ = ["BM25Search", "SearchFn"]
