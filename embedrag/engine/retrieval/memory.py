"""A table's chunks held in memory for exact vector search, for a long-running server.

LanceDB's flat scan of a table without an ANN index reads and scores every row per query
(about 30-80 ms of CPU at 25k rows here). A server that answers many queries loads the
vectors once, normalised, and scores a query with one matrix product
(:func:`embedrag.engine.retrieval.search.exact_search`); the rows of the k best come from
memory too. Scores are cosines, as LanceDB's ``1 - cosine distance``. Filters are the same
``{column: value or [values]}`` as the table's (:func:`hits.filter_values`). The copy is
the table as it was when loaded: a server reads its table once at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedrag.engine.retrieval.hits import COLUMNS, Hit, filter_values, hit_from_row
from embedrag.engine.retrieval.search import exact_search

# Past this many rows a table is left to LanceDB (an ANN index is built from 50k rows on).
MAX_MEMORY_ROWS = 200_000


@dataclass
class MemoryTable:
    """The normalised vectors and hit columns of every row of one table."""

    vectors: np.ndarray  # float32 (rows, dimension), unit length
    columns: dict[str, list[Any]]  # COLUMNS, one list per column, in row order

    @classmethod
    def load(cls, handle) -> MemoryTable:
        """Read ``handle`` (a LanceDB table): its ``vector`` column and the hit columns."""
        data = handle.to_arrow().select(["vector", *COLUMNS])
        vectors = np.asarray(data.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                             dtype=np.float32).reshape(data.num_rows, -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
        return cls(vectors=np.ascontiguousarray(vectors),
                   columns={name: data.column(name).to_pylist() for name in COLUMNS})

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, vector, k: int, filters: dict[str, Any] | None = None) -> list[Hit]:
        """The k rows most similar to ``vector`` (cosine), among those ``filters`` keep."""
        checked = filter_values(filters)
        rows = self._matching(checked) if checked else None
        corpus = self.vectors if rows is None else self.vectors[rows]
        if corpus.shape[0] == 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        found = exact_search(query, corpus, k)
        hits = []
        for rank, (index, score) in enumerate(zip(found.indices[0], found.scores[0]), start=1):
            row_index = int(index) if rows is None else int(rows[index])
            hits.append(hit_from_row(rank, {name: values[row_index] for name, values in self.columns.items()},
                                     float(score)))
        return hits

    def _matching(self, checked: dict[str, list[str]]) -> np.ndarray:
        keep = np.ones(len(self), dtype=bool)
        for column, values in checked.items():
            wanted = set(values)
            keep &= np.fromiter((value in wanted for value in self.columns[column]), dtype=bool, count=len(self))
        return np.flatnonzero(keep)

