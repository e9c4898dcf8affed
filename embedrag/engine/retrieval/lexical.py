"""BM25 over a corpus: the lexical baseline row of ``embedrag eval`` (``--model bm25``) and
the word-based candidates of ``embedrag mine --strategy bm25|hybrid``.

Scoring is bm25s's Lucene variant (k1 1.2, b 0.75: what Anserini/Pyserini, Elasticsearch
and BEIR's BM25 baselines use). Text analysis follows Lucene's English analyser: case
folding, its 33 English stopwords, Snowball (Porter) stemming; a CJK character is a term
of its own, since Chinese text has no spaces to split on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

import numpy as np

BM25_MODEL = "bm25"
K1, B = 1.2, 0.75
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; each CJK character is its own token."""
    return _TOKEN.findall(text.casefold())


@cache
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def analyze(text: str) -> list[str]:
    """The terms BM25 matches on: case-folded words without English stopwords, stemmed."""
    stop = _stopwords()
    return _stemmer().stemWords([t for t in tokenize(text) if t not in stop])


class BM25Ranker:
    """An inverted index over ``passages`` that scores queries with BM25."""

    def __init__(self, passages: Sequence[str], *, k1: float = K1, b: float = B):
        import bm25s

        self.size = len(passages)
        self._index = bm25s.BM25(method="lucene", k1=k1, b=b)
        self._index.index([analyze(p) for p in passages], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every passage for ``query`` (0: no term in common)."""
        terms = analyze(query)
        if not terms:
            return np.zeros(self.size, np.float32)
        return np.asarray(self._index.get_scores(terms), np.float32)

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k passage rows and scores per query, best first, ties to the lower row.
        Passages sharing no term with the query are not returned (row -1, score 0)."""
        k = min(k, self.size)
        indices = np.full((len(queries), k), -1, np.int64)
        values = np.zeros((len(queries), k), np.float32)
        for i, query in enumerate(queries):
            scores = self.scores(query)
            order = np.lexsort((np.arange(self.size), -scores))[:k]
            order = order[scores[order] > 0]
            indices[i, : len(order)] = order
            values[i, : len(order)] = scores[order]
        return indices, values
