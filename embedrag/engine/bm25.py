"""Okapi BM25 over an in-memory corpus, for mining candidates by words instead of vectors.

Lucene's formulation (idf = ln(1 + (N - df + 0.5) / (df + 0.5)), k1 = 1.2, b = 0.75), so
scores are never negative and agree with what Elasticsearch, Pyserini and LanceDB's
full-text search rank by. Tokens are lower-cased word runs; CJK characters are one token
each, since Chinese text has no spaces to split on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; each CJK character is its own token."""
    return _TOKEN.findall(text.casefold())


class BM25Index:
    """An inverted index over ``texts`` that scores queries with Okapi BM25."""

    def __init__(self, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.size = len(texts)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        lengths = np.zeros(self.size, np.float64)
        for row, text in enumerate(texts):
            counts = Counter(tokenize(text))
            lengths[row] = sum(counts.values())
            for term, tf in counts.items():
                docs, freqs = postings.setdefault(term, ([], []))
                docs.append(row)
                freqs.append(tf)
        average = float(lengths.mean()) if self.size and lengths.mean() > 0 else 1.0
        # The length normalisation of each document, computed once: k1 * (1 - b + b * dl / avgdl).
        self._norm = k1 * (1.0 - b + b * lengths / average)
        self._postings = {term: (np.asarray(d, np.int64), np.asarray(f, np.float64))
                          for term, (d, f) in postings.items()}

    def idf(self, term: str) -> float:
        df = len(self._postings[term][0]) if term in self._postings else 0
        return float(np.log(1.0 + (self.size - df + 0.5) / (df + 0.5)))

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for ``query`` (repeated query terms count again)."""
        total = np.zeros(self.size, np.float64)
        for term in tokenize(query):
            posting = self._postings.get(term)
            if posting is None:
                continue
            docs, tf = posting
            total[docs] += self.idf(term) * tf * (self.k1 + 1.0) / (tf + self._norm[docs])
        return total

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k document rows and scores per query, best first, ties to the lower row.
        Documents sharing no word with the query are not returned (row -1, score 0)."""
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
