"""Batches: one positive per query, negatives without replacement, deterministic, weighted."""

from __future__ import annotations

import random
from collections import Counter

from embedrag.engine.data.examples import Example
from embedrag.engine.training.sampling import EpochSampler, build_batch


def _examples(n, prefix="q", negs=5):
    return [Example(f"{prefix}{i}", pos=(f"{prefix}{i}+a", f"{prefix}{i}+b"),
                    neg=tuple(f"{prefix}{i}-{k}" for k in range(negs))) for i in range(n)]


def test_build_batch_layout_and_no_replacement():
    examples = _examples(3) + [Example("few", pos=("fp",), neg=("only", "only"))]
    batch = build_batch(examples, neg_nums=3, rng=random.Random(0))
    assert batch.positive_index == [0, 1, 2, 3]
    assert [batch.passages[i] in examples[i].pos for i in range(4)] == [True] * 4
    owners = Counter(batch.passage_owner[4:])
    assert owners == {0: 3, 1: 3, 2: 3, 3: 1}  # duplicates collapse, never repeated
    for j, owner in enumerate(batch.passage_owner[4:], start=4):
        assert batch.passages[j] in examples[owner].neg
    for owner in range(3):
        negs = [p for p, o in zip(batch.passages[4:], batch.passage_owner[4:]) if o == owner]
        assert len(set(negs)) == len(negs)


def test_epochs_are_deterministic_and_differ():
    sampler = EpochSampler([(_examples(10), 1.0)], batch_size=4, neg_nums=2, seed=7)
    first = [b.passages for b in sampler.batches(0)]
    again = [b.passages for b in sampler.batches(0)]
    other = [b.passages for b in sampler.batches(1)]
    assert first == again
    assert first != other
    assert sampler.steps_per_epoch() == 3  # 10 examples, last partial batch kept
    resumed = [b.passages for b in sampler.batches(0, start_step=1)]
    assert resumed == first[1:]


def test_weights_scale_each_set():
    a, b = _examples(10, "a"), _examples(4, "b")
    sampler = EpochSampler([(a, 0.5), (b, 2.0)], batch_size=100, neg_nums=0, seed=0)
    queries = [q for batch in sampler.batches(0) for q in batch.queries]
    counts = Counter(q[0] for q in queries)
    assert counts == {"a": 5, "b": 8}
    assert all(v == 2 for k, v in Counter(q for q in queries if q.startswith("b")).items())


def test_ranks_split_a_global_batch_consistently():
    examples = _examples(8)
    whole = EpochSampler([(examples, 1.0)], batch_size=4, neg_nums=2, seed=3)
    ranks = [EpochSampler([(examples, 1.0)], batch_size=2, neg_nums=2, seed=3, world_size=2, rank=r)
             for r in range(2)]
    for full, part0, part1 in zip(whole.batches(0), ranks[0].batches(0), ranks[1].batches(0)):
        assert part0.queries + part1.queries == full.queries
        assert set(part0.passages) | set(part1.passages) == set(full.passages)
        for part in (part0, part1):
            for j, owner in enumerate(part.passage_owner):
                example = next(e for e in examples if e.query == part.queries[owner])
                assert part.passages[j] in example.pos + example.neg
