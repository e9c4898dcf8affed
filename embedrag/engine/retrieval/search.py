"""Exact (brute-force) nearest-neighbour search over embedding matrices.

Scores are computed block by block, queries and corpus chunks both, so that the score
block and the temporaries of picking its top k stay within a memory budget however large
the corpus; each chunk's top k is merged into a running top k per query. The result is
deterministic: score descending, ties to the lower corpus index. torch does the matrix
products and ``topk`` when it is installed (faster, multi-threaded); numpy otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedrag.engine.core.errors import ConfigError

SCORES = ("dot", "cosine")
DEFAULT_MEMORY_BUDGET = 256 * 2**20
# Bytes per score in a block: the float32 score itself plus the selection temporaries
# (numpy's argpartition keeps an int64 per score; tie handling adds masks and a cumsum).
BYTES_PER_SCORE = 16
# Wider query blocks make better matrix products; past this the gain is small and the
# corpus chunk (the other side of the budget) would shrink.
MAX_QUERY_BLOCK = 512
_NORM_EPS = 1e-12


@dataclass(frozen=True)
class SearchResult:
    """Top-k corpus rows per query, best first: ``indices`` int64 and ``scores`` float32,
    both of shape (n_queries, min(k, n_corpus))."""

    indices: np.ndarray
    scores: np.ndarray


def exact_search(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    score: str = "dot",
) -> SearchResult:
    """The k highest-scoring corpus rows for each query row. ``score="dot"`` is the inner
    product (the usual choice for L2-normalised embeddings); ``"cosine"`` normalises both
    sides first. ``memory_budget_bytes`` bounds the working score block."""
    queries, corpus = _check_inputs(queries, corpus, k, memory_budget_bytes, score)
    n_q, n_c = queries.shape[0], corpus.shape[0]
    k_out = min(k, n_c)
    if n_q == 0 or n_c == 0:
        return SearchResult(np.zeros((n_q, k_out), np.int64), np.zeros((n_q, k_out), np.float32))

    torch = _load_torch()
    q_block, c_chunk = block_shape(n_q, n_c, memory_budget_bytes)
    cosine = score == "cosine"
    all_idx = np.empty((n_q, k_out), np.int64)
    all_scores = np.empty((n_q, k_out), np.float32)
    for q0 in range(0, n_q, q_block):
        q = _prepare(queries[q0 : q0 + q_block], cosine)
        best_s = np.empty((q.shape[0], 0), np.float32)
        best_i = np.empty((q.shape[0], 0), np.int64)
        for c0 in range(0, n_c, c_chunk):
            c = _prepare(corpus[c0 : c0 + c_chunk], cosine)
            s, i = _chunk_topk(q, c, k_out, torch)
            best_s, best_i = _merge(best_s, best_i, s, i + c0, k_out)
        all_scores[q0 : q0 + q_block] = best_s
        all_idx[q0 : q0 + q_block] = best_i
    return SearchResult(all_idx, all_scores)


def block_shape(n_queries: int, n_corpus: int, memory_budget_bytes: int) -> tuple[int, int]:
    """(query rows, corpus rows) per score block so that a block's scores and selection
    temporaries fit the budget; never below one score."""
    max_scores = max(1, memory_budget_bytes // BYTES_PER_SCORE)
    if max_scores >= n_corpus:
        # The whole corpus fits beside at least one query: take as many queries as fit.
        return max(1, min(n_queries, max_scores // n_corpus)), n_corpus
    q_block = max(1, min(n_queries, MAX_QUERY_BLOCK, max_scores))
    return q_block, max(1, max_scores // q_block)


def _check_inputs(
    queries: Any, corpus: Any, k: Any, memory_budget_bytes: Any, score: str
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if score not in SCORES:
        raise ConfigError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if (
        isinstance(memory_budget_bytes, bool)
        or not isinstance(memory_budget_bytes, (int, np.integer))
        or memory_budget_bytes <= 0
    ):
        raise ConfigError(
            f"memory_budget_bytes must be a positive integer, got {memory_budget_bytes!r}"
        )
    queries, corpus = np.asarray(queries), np.asarray(corpus)
    for name, arr in (("queries", queries), ("corpus", corpus)):
        if arr.ndim != 2:
            raise ConfigError(f"{name} must be a 2-D array (rows x dimension), got {arr.shape}")
    if queries.shape[1] != corpus.shape[1]:
        raise ConfigError(
            f"query dimension {queries.shape[1]} does not match corpus dimension {corpus.shape[1]}"
        )
    return queries, corpus


def _load_torch() -> Any:
    """torch when installed, else None (numpy does the work)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _prepare(block: np.ndarray, cosine: bool) -> np.ndarray:
    """A contiguous, writable float32 copy or view of ``block``, L2-normalised for cosine."""
    block = np.ascontiguousarray(block, dtype=np.float32)
    if not block.flags.writeable:
        # torch.from_numpy warns on read-only arrays (a read-only memmap, say).
        block = block.copy()
    if cosine:
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block = block / np.maximum(norms, _NORM_EPS)
    return block


def _chunk_topk(q: np.ndarray, c: np.ndarray, k: int, torch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores and chunk-local indices of the k best corpus rows of chunk ``c`` per query
    (unsorted; ties at the k-th score resolved to the lowest indices)."""
    kk = min(k, c.shape[0])
    if torch is not None:
        scores_t = torch.from_numpy(q) @ torch.from_numpy(c).T
        top_s, top_i = torch.topk(scores_t, kk, dim=1, sorted=False)
        scores, top_s, top_i = scores_t.numpy(), top_s.numpy(), top_i.numpy().astype(np.int64)
    else:
        scores = q @ c.T
        if kk == c.shape[0]:
            top_i = np.broadcast_to(np.arange(kk, dtype=np.int64), scores.shape).copy()
        else:
            top_i = np.argpartition(scores, c.shape[0] - kk, axis=1)[:, -kk:].astype(np.int64)
        top_s = np.take_along_axis(scores, top_i, axis=1)
    if kk < c.shape[0]:
        _resolve_boundary_ties(scores, top_s, top_i)
    return top_s, top_i


def _resolve_boundary_ties(scores: np.ndarray, top_s: np.ndarray, top_i: np.ndarray) -> None:
    """Where more rows tie at the k-th best score than were selected, top-k picked among
    them arbitrarily: reselect those rows, in place, taking the lowest tied indices."""
    kk = top_s.shape[1]
    kth = top_s.min(axis=1, keepdims=True)
    n_tied = (scores == kth).sum(axis=1)
    n_tied_taken = (top_s == kth).sum(axis=1)
    rows = np.flatnonzero(n_tied > n_tied_taken)
    if rows.size == 0:
        return
    sub, t = scores[rows], kth[rows]
    above, tied = sub > t, sub == t
    need = kk - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(take)[1].reshape(rows.size, kk)
    top_i[rows] = cols
    top_s[rows] = np.take_along_axis(sub, cols, axis=1)


def _merge(
    best_s: np.ndarray, best_i: np.ndarray, new_s: np.ndarray, new_i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of two candidate sets per row, sorted by score descending then index."""
    s = np.concatenate([best_s, new_s], axis=1)
    i = np.concatenate([best_i, new_i], axis=1)
    order = np.lexsort((i, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
