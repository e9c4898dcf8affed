"""Turning examples into contrastive batches, deterministically.

Every epoch's order and every batch's positive/negative choice is a pure function of
(seed, epoch, step), so a resumed run sees exactly the batches an uninterrupted run
would have seen, and every process of a multi-process run agrees on them without
talking to the others.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from embedrag.engine.core.errors import ConfigError
from embedrag.engine.data.examples import Example


def text_key(text: str) -> int:
    """A stable 63-bit hash of a text (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(),
                          "little") >> 1


@dataclass
class ContrastiveBatch:
    """Queries, the passages sampled for them, and where each query's positive is."""

    queries: list[str]
    passages: list[str]
    positive_index: list[int]
    passage_owner: list[int]
    positive_texts: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.queries)

    def loss_inputs(self, device=None) -> dict:
        """Index and key tensors for :class:`~embedrag.engine.training.loss.InfoNCELoss`."""
        import torch

        width = max(len(p) for p in self.positive_texts)
        keys = torch.zeros(len(self.queries), width, dtype=torch.long)
        mask = torch.zeros(len(self.queries), width, dtype=torch.bool)
        for row, texts in enumerate(self.positive_texts):
            keys[row, :len(texts)] = torch.tensor([text_key(t) for t in texts], dtype=torch.long)
            mask[row, :len(texts)] = True
        tensors = {
            "positive_index": torch.tensor(self.positive_index, dtype=torch.long),
            "passage_owner": torch.tensor(self.passage_owner, dtype=torch.long),
            "passage_keys": torch.tensor([text_key(p) for p in self.passages], dtype=torch.long),
            "positive_keys": keys,
            "positive_keys_mask": mask,
        }
        return {k: v.to(device) for k, v in tensors.items()} if device is not None else tensors


def build_batch(examples: Sequence[Example], neg_nums: int, rng: random.Random) -> ContrastiveBatch:
    """One positive per query and up to ``neg_nums`` of its negatives, without
    replacement; passages laid out as [all positives, then each query's negatives]."""
    positives = [rng.choice(e.pos) for e in examples]
    passages = list(positives)
    owner = list(range(len(examples)))
    for row, example in enumerate(examples):
        # Distinct texts only: a duplicated negative would silently count twice.
        pool = list(dict.fromkeys(example.neg))
        chosen = rng.sample(pool, min(neg_nums, len(pool))) if neg_nums > 0 else []
        passages.extend(chosen)
        owner.extend([row] * len(chosen))
    return ContrastiveBatch(
        queries=[e.query for e in examples],
        passages=passages,
        positive_index=list(range(len(examples))),
        passage_owner=owner,
        positive_texts=[tuple(e.pos) for e in examples],
    )


class EpochSampler:
    """Batches of examples for each epoch, mixing weighted datasets.

    A dataset of weight ``w`` contributes ``round(w * len)`` examples per epoch: all of
    them once for w = 1, a fresh random half for 0.5, each twice for 2. With several
    processes, each global batch of ``batch_size * world_size`` is split by rank and an
    incomplete last batch is dropped so every process steps together; a single
    process keeps it."""

    def __init__(self, datasets: Sequence[tuple[Sequence[Example], float]], *, batch_size: int,
                 neg_nums: int, seed: int = 42, world_size: int = 1, rank: int = 0):
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if neg_nums < 0:
            raise ConfigError(f"--neg-nums must be >= 0, got {neg_nums}")
        for _, weight in datasets:
            if weight <= 0:
                raise ConfigError(f"dataset weight must be positive, got {weight}")
        self.datasets = [(list(examples), float(weight)) for examples, weight in datasets]
        self.batch_size = batch_size
        self.neg_nums = neg_nums
        self.seed = seed
        self.world_size = world_size
        self.rank = rank

    def _epoch_examples(self, epoch: int) -> list[Example]:
        rng = random.Random(f"{self.seed}:order:{epoch}")
        chosen: list[Example] = []
        for examples, weight in self.datasets:
            whole, fraction = divmod(weight * len(examples), len(examples) or 1)
            chosen.extend(examples * int(whole))
            chosen.extend(rng.sample(examples, round(fraction)))
        rng.shuffle(chosen)
        return chosen

    def steps_per_epoch(self, epoch: int = 0) -> int:
        total = len(self._epoch_examples(epoch))
        per_step = self.batch_size * self.world_size
        return total // per_step if self.world_size > 1 else -(-total // per_step)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[ContrastiveBatch]:
        """This process's batches of ``epoch``, from ``start_step`` on."""
        examples = self._epoch_examples(epoch)
        per_step = self.batch_size * self.world_size
        for step in range(start_step, self.steps_per_epoch(epoch)):
            global_batch = examples[step * per_step:(step + 1) * per_step]
            rng = random.Random(f"{self.seed}:batch:{epoch}:{step}")
            whole = build_batch(global_batch, self.neg_nums, rng)
            yield whole if self.world_size == 1 else _shard(whole, global_batch, self)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{len(e)}x{w:g}" for e, w in self.datasets)
        return f"EpochSampler([{sizes}], batch_size={self.batch_size}, neg_nums={self.neg_nums})"


def _shard(whole: ContrastiveBatch, global_batch: Sequence[Example], sampler: EpochSampler
           ) -> ContrastiveBatch:
    """This rank's part of a global batch, re-indexed locally. Sampling happened on the
    whole batch first so every rank draws the same positives and negatives."""
    lo, hi = sampler.rank * sampler.batch_size, (sampler.rank + 1) * sampler.batch_size
    passages = [whole.passages[i] for i in range(lo, hi)]
    owner = [i - lo for i in range(lo, hi)]
    for text, query in zip(whole.passages[len(global_batch):], whole.passage_owner[len(global_batch):]):
        if lo <= query < hi:
            passages.append(text)
            owner.append(query - lo)
    return ContrastiveBatch(
        queries=whole.queries[lo:hi], passages=passages,
        positive_index=list(range(hi - lo)), passage_owner=owner,
        positive_texts=whole.positive_texts[lo:hi])
