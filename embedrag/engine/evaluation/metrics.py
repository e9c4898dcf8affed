"""Top-K retrieval metrics, defined exactly as trec_eval (and so pytrec_eval) defines them,
so the numbers agree with MTEB and BEIR tables.

A ranking is scored from ``qrels`` (query id -> doc id -> graded relevance, ``<= 0`` not
relevant) and a ``run`` (query id -> doc id -> score, higher is better). Conventions, each
checked against pytrec_eval in ``tests/test_metrics.py``:

- Ranking: score descending, ties broken by doc id descending (plain string comparison),
  which is how trec_eval sorts a run: the order of a run's dict never matters.
- Queries: every query of ``qrels`` with at least one relevant doc is evaluated. One that
  has no relevant doc at all is skipped (no ranking can score on it) and listed in
  ``RetrievalScores.without_relevant``.
- A query missing from the run (or with no results) scores 0 on every metric and counts in
  the mean; it is listed in ``RetrievalScores.missing_from_run``. pytrec_eval instead leaves
  such a query out of its output (trec_eval without ``-c``), so a mean taken over its
  output would reward a model for returning nothing; with exact search every query has
  results and both agree.
- ``ndcg@k`` is trec_eval's ``ndcg_cut``: gain = relevance value, discount log2(rank + 1),
  ideal DCG from the qrels' relevances. ``recall@k`` is ``recall_k``, ``precision@k`` is
  ``P_k`` (divided by k, not by the number retrieved), ``map@k`` is ``map_cut_k``.
  ``mrr@k`` is the BEIR/MTEB cut version of ``recip_rank`` (trec_eval's has no cut), and
  ``hit@k`` is 1 when any relevant doc is in the top k (what some reports call "Recall@K").
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from embedrag.engine.core.errors import ConfigError, DataError

METRICS = ("ndcg", "recall", "precision", "map", "mrr", "hit")
DEFAULT_KS = (1, 3, 5, 10, 100)

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class RetrievalScores:
    """Per-query and mean metrics, keyed ``"<metric>@<k>"`` (``"ndcg@10"``, ``"hit@5"``)."""

    ks: tuple[int, ...]
    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]
    missing_from_run: tuple[str, ...] = field(default=())
    without_relevant: tuple[str, ...] = field(default=())

    @property
    def n_queries(self) -> int:
        """Number of queries the means are taken over."""
        return len(self.per_query)

    def to_dict(self) -> dict:
        """A JSON-ready copy, for reports."""
        return {
            "ks": list(self.ks),
            "n_queries": self.n_queries,
            "mean": dict(self.mean),
            "per_query": {q: dict(m) for q, m in self.per_query.items()},
            "missing_from_run": list(self.missing_from_run),
            "without_relevant": list(self.without_relevant),
        }


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Return the cutoffs sorted and deduplicated; ConfigError unless all are positive ints."""
    try:
        values = list(ks)
    except TypeError:
        raise ConfigError(f"--k values must be a list of positive integers, got {ks!r}") from None
    if not values:
        raise ConfigError("--k: at least one k value is needed")
    for k in values:
        # bool is an int subclass; True as a cutoff is surely a mistake.
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ConfigError(f"--k values must be positive integers, got {k!r}")
    return tuple(sorted({int(k) for k in values}))


def metric_keys(ks: Iterable[int]) -> list[str]:
    """The result keys for ``ks``, metric by metric: ``ndcg@1, ndcg@3, ..., hit@100``."""
    ks = check_ks(ks)
    return [f"{m}@{k}" for m in METRICS for k in ks]


def rank_docs(scores: Mapping[str, float], depth: int | None = None) -> list[str]:
    """Doc ids in trec_eval order (score descending, then doc id descending), the first
    ``depth`` of them (all when None)."""
    items = scores.items()
    key = _trec_key
    if depth is None or depth >= len(scores):
        return [d for d, _ in sorted(items, key=key, reverse=True)]
    return [d for d, _ in heapq.nlargest(depth, items, key=key)]


def _trec_key(item: tuple[str, float]) -> tuple[float, str]:
    doc_id, score = item
    return (score, doc_id)


def query_scores(
    ranked: Sequence[str], relevant: Mapping[str, float], ks: Sequence[int]
) -> dict[str, float]:
    """Every metric at every k for one query: ``ranked`` doc ids best first, ``relevant``
    doc id -> relevance (> 0 only, non-empty)."""
    gains = [relevant.get(d, 0) for d in ranked[: max(ks)]]
    ideal = sorted(relevant.values(), reverse=True)
    n_rel = len(relevant)
    first_hit = next((i + 1 for i, g in enumerate(gains) if g > 0), None)

    dcg = _cumulative([g / math.log2(i + 2) for i, g in enumerate(gains)])
    idcg = _cumulative([g / math.log2(i + 2) for i, g in enumerate(ideal[: max(ks)])])
    hits = _cumulative([1 if g > 0 else 0 for g in gains])
    # Precision at each relevant rank, zero elsewhere: summed, it gives average precision.
    prec_at_rel = _cumulative([hits[i] / (i + 1) if g > 0 else 0.0 for i, g in enumerate(gains)])

    out: dict[str, float] = {}
    for k in ks:
        n_hit = _upto(hits, k)
        out[f"ndcg@{k}"] = _upto(dcg, k) / _upto(idcg, k)
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"precision@{k}"] = n_hit / k
        out[f"map@{k}"] = _upto(prec_at_rel, k) / n_rel
        out[f"mrr@{k}"] = 1.0 / first_hit if first_hit is not None and first_hit <= k else 0.0
        out[f"hit@{k}"] = 1.0 if n_hit > 0 else 0.0
    return {f"{m}@{k}": out[f"{m}@{k}"] for m in METRICS for k in ks}


def _cumulative(values: list[float]) -> list[float]:
    total, sums = 0.0, []
    for v in values:
        total += v
        sums.append(total)
    return sums


def _upto(prefix_sums: list[float], k: int) -> float:
    """Sum of the first k values; a ranking shorter than k contributes all it has."""
    if not prefix_sums:
        return 0.0
    return prefix_sums[min(k, len(prefix_sums)) - 1]


def evaluate_run(qrels: Qrels, run: Run, ks: Iterable[int] = DEFAULT_KS) -> RetrievalScores:
    """Score ``run`` against ``qrels`` at every cutoff in ``ks``; see the module docstring
    for which queries count and how ties are broken."""
    ks = check_ks(ks)
    depth = max(ks)
    per_query: dict[str, dict[str, float]] = {}
    missing: list[str] = []
    without_relevant: list[str] = []
    for qid, rels in qrels.items():
        relevant = {d: r for d, r in rels.items() if r > 0}
        if not relevant:
            without_relevant.append(qid)
            continue
        docs = run.get(qid) or {}
        if not docs:
            missing.append(qid)
        per_query[qid] = query_scores(rank_docs(docs, depth), relevant, ks)
    if not per_query:
        raise DataError(["qrels: no query has a relevant document (relevance > 0)"])
    n = len(per_query)
    mean = {key: sum(m[key] for m in per_query.values()) / n for key in metric_keys(ks)}
    return RetrievalScores(ks, per_query, mean, tuple(missing), tuple(without_relevant))


def run_from_topk(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    indices: np.ndarray,
    scores: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Turn search results (``indices`` into ``doc_ids`` and their ``scores``, both of shape
    (n_queries, k)) into a run. Negative indices are padding and skipped; when a doc id
    repeats in a row its first (best-ranked) score is kept."""
    indices = np.asarray(indices)
    scores = np.asarray(scores)
    if indices.ndim != 2 or indices.shape != scores.shape:
        raise ConfigError(
            f"indices and scores must be 2-D arrays of one shape, "
            f"got {indices.shape} and {scores.shape}"
        )
    if indices.shape[0] != len(query_ids):
        raise ConfigError(
            f"{len(query_ids)} query ids for {indices.shape[0]} rows of search results"
        )
    if indices.size and indices.max() >= len(doc_ids):
        raise ConfigError(
            f"search result index {int(indices.max())} out of range for {len(doc_ids)} doc ids"
        )
    run: dict[str, dict[str, float]] = {}
    for qid, row_idx, row_scores in zip(query_ids, indices.tolist(), scores.tolist()):
        row = run.setdefault(qid, {})
        for i, s in zip(row_idx, row_scores):
            if i >= 0 and doc_ids[i] not in row:
                row[doc_ids[i]] = float(s)
    return run
