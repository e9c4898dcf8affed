"""The automatic validation split of ``embedrag train`` and its regression guard.

Without ``--eval-dataset`` a run holds out a share of its own training queries, never
trains on them, and ranks each against a pool of candidate passages: the training
files' passages (or ``--eval-corpus``). The run evaluates there at step 0 (the base
model) and after every epoch, keeps the best model, and ends with a :class:`Verdict`:
base vs best on that split, with the gain and its paired significance.

The split is a pure function of the query texts and the seed: the same file and seed
hold out the same queries whatever the line order, and a query text that occurs on
several lines is held out on all of them, so no held-out query is ever trained on.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from embedrag.engine.data.examples import Example

if TYPE_CHECKING:
    from embedrag.engine.data.testsets import TestSet
    from embedrag.engine.evaluation.significance import PairedComparison

logger = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.05
MIN_HOLDOUT_QUERIES = 20
# Below this many distinct queries a split would leave too little to train on (or too
# few held-out queries to tell anything): no automatic validation.
MIN_QUERIES_FOR_HOLDOUT = 5 * MIN_HOLDOUT_QUERIES
# Candidate pool for ranking the held-out queries: their own passages plus a seeded
# sample of the others, so a validation costs about as much as embedding this many passages.
DEFAULT_POOL_SIZE = 1000


@dataclass
class HoldoutInfo:
    """What was held out, from how many queries, over which pool; or why nothing was."""

    queries: int
    of_queries: int
    fraction: float
    seed: int
    pool: int = 0
    pool_source: str = ""
    skipped_reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _query_key(query: str) -> str:
    return " ".join(query.split()).casefold()


def _order(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def split_holdout(datasets: Sequence[tuple[list[Example], float]], *, seed: int,
                  fraction: float = HOLDOUT_FRACTION,
                  min_queries: int = MIN_HOLDOUT_QUERIES) -> tuple[list[tuple[list[Example], float]],
                                                                   list[Example], HoldoutInfo]:
    """Hold out ``fraction`` of the distinct queries (at least ``min_queries``) of all
    training files; returns the training datasets without them, the held-out examples and
    what was done. Files with fewer than ``5 * min_queries`` distinct queries are left whole."""
    keys = sorted({_query_key(e.query) for examples, _ in datasets for e in examples})
    if len(keys) < 5 * min_queries:
        reason = (f"only {len(keys)} distinct training queries (fewer than {5 * min_queries}): no automatic "
                  "validation split; pass --eval-dataset to validate")
        return list(datasets), [], HoldoutInfo(0, len(keys), fraction, seed, skipped_reason=reason)
    size = max(min_queries, round(fraction * len(keys)))
    held = set(sorted(keys, key=lambda k: _order(k, seed))[:size])
    kept, validation = [], []
    for examples, weight in datasets:
        train_part = [e for e in examples if _query_key(e.query) not in held]
        validation += [e for e in examples if _query_key(e.query) in held]
        if train_part:
            kept.append((train_part, weight))
    return kept, validation, HoldoutInfo(size, len(keys), fraction, seed)


def holdout_testset(validation: Sequence[Example], pool_examples: Sequence[Example], *, seed: int,
                    pool_size: int = DEFAULT_POOL_SIZE, corpus_path: str | None = None) -> tuple[TestSet, str]:
    """The held-out queries over a candidate pool: their own passages (pos and neg) and,
    up to ``pool_size`` passages in all, a seeded sample of the other passages of
    ``pool_examples`` (or of the corpus at ``corpus_path``). Returns the test set and a
    description of the pool."""
    from embedrag.engine.data.corpus import (
        Corpus,
        corpus_from_examples,
        load_corpus,
        normalize_text,
        testset_over_corpus,
    )

    own = corpus_from_examples(validation, "held-out passages")
    if corpus_path:
        others, source = load_corpus(corpus_path), f"{corpus_path}"
    else:
        others, source = corpus_from_examples(pool_examples, "training passages"), "training passages"
    seen = {normalize_text(t) for t in own.texts}
    rest = [(i, t) for i, t in zip(others.ids, others.texts) if normalize_text(t) not in seen]
    room = max(pool_size - len(own.texts), 0)
    if len(rest) > room:
        rest = random.Random(seed).sample(rest, room)
        source += f" (a seeded sample of {room:,} of them)"
    pairs = [(f"h{n}", t) for n, t in enumerate(own.texts)] + [(f"c{i}", t) for i, t in rest]
    test_set = testset_over_corpus(validation, Corpus.from_texts(pairs, "validation split"))
    test_set.name = "validation split"
    return test_set, source


@dataclass
class Verdict:
    """Did fine-tuning beat the base model on the validation split? The base-vs-best
    comparison (:class:`significance.PairedComparison`) and what it means."""

    comparison: PairedComparison
    best_step: int
    outcome: str  # "better", "not significant", "not better"

    @classmethod
    def of(cls, metric: str, base_scores: dict[str, float], best_scores: dict[str, float],
           best_step: int) -> Verdict:
        from embedrag.engine.evaluation.significance import compare

        c = compare(metric, {q: {metric: v} for q, v in base_scores.items()},
                    {q: {metric: v} for q, v in best_scores.items()})
        outcome = "not better" if c.gain <= 0 else "better" if c.significant else "not significant"
        return cls(c, best_step, outcome)

    @property
    def metric(self) -> str:
        return self.comparison.metric

    @property
    def gain(self) -> float:
        return self.comparison.gain

    @property
    def p_permutation(self) -> float:
        return self.comparison.p_permutation

    @property
    def message(self) -> str:
        from embedrag.engine.evaluation.significance import format_pvalue

        c = self.comparison
        figures = (f"{c.metric} {c.baseline:.4f} -> {c.model:.4f} ({c.gain:+.4f}, "
                   f"{format_pvalue(c.p_permutation)}, {c.wins} better / {c.losses} worse "
                   f"of {c.queries} held-out queries; best at step {self.best_step})")
        if self.outcome == "better":
            return f"fine-tuning improved retrieval on the validation split: {figures}"
        if self.outcome == "not significant":
            return (f"fine-tuning gained on the validation split, but not more than chance could: {figures}; "
                    "more training data or a larger validation split would tell")
        return (f"fine-tuning is not better than the base model on the validation split: {figures}. "
                "Keep using the base model, or try: a lower --lr, fewer --epochs, more (or cleaner) "
                "training pairs, mined hard negatives (embedrag mine), or another --finetune-type")

    def to_dict(self) -> dict:
        c = self.comparison
        return {"metric": c.metric, "base": c.baseline, "best": c.model, "best_step": self.best_step,
                "gain": c.gain, "p_permutation": c.p_permutation, "p_ttest": c.p_ttest, "wins": c.wins,
                "ties": c.ties, "losses": c.losses, "queries": c.queries, "outcome": self.outcome,
                "message": self.message}
