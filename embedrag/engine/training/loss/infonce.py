"""InfoNCE over cosine similarity with hard and in-batch negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedrag.engine.training.loss.candidates import candidate_mask


class InfoNCELoss(nn.Module):
    """InfoNCE (contrastive cross-entropy) over cosine similarity / temperature.

    For each query the candidates are its sampled positive, its own hard negatives and,
    with ``in_batch_negatives``, every other passage of the batch. A passage whose text
    equals one of the query's own positives is never counted as its negative (queries
    sharing a positive are common), so it is masked out of that query's candidates.

    Args:
        temperature: softmax temperature; 0.02 as in the original train.py.
        in_batch_negatives: also contrast against the other queries' passages.

    Inputs:
        query_embeddings: (B, d).
        passage_embeddings: (M, d) — every positive and hard negative of the batch.
        positive_index: (B,) long — column of each query's positive.
        passage_owner: (M,) long — the query each passage was sampled for.
        passage_keys: (M,) int64 — a hash of each passage text.
        positive_keys: (B, K) int64 — hashes of all of each query's ``pos`` texts,
            padded; ``positive_keys_mask`` (B, K) bool marks the real ones.

    Returns:
        the mean loss over queries (a scalar tensor).
    """

    def __init__(self, temperature: float = 0.02, in_batch_negatives: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives

    def candidate_mask(self, positive_index, passage_owner, passage_keys, positive_keys,
                       positive_keys_mask) -> torch.Tensor:
        """(B, M) bool: which passages are candidates for which query."""
        return candidate_mask(positive_index, passage_owner, passage_keys, positive_keys,
                              positive_keys_mask, in_batch_negatives=self.in_batch_negatives)

    def forward(self, query_embeddings, passage_embeddings, positive_index, passage_owner,
                passage_keys, positive_keys, positive_keys_mask) -> torch.Tensor:
        queries = F.normalize(query_embeddings.float(), dim=-1)
        passages = F.normalize(passage_embeddings.float(), dim=-1)
        logits = queries @ passages.T / self.temperature
        mask = self.candidate_mask(positive_index, passage_owner, passage_keys, positive_keys,
                                   positive_keys_mask)
        logits = logits.masked_fill(~mask, float("-inf"))
        return F.cross_entropy(logits, positive_index)
