"""Margin ranking over cosine similarity: each positive must beat each negative by a margin."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedrag.engine.training.loss.candidates import candidate_mask


class MarginRankingLoss(nn.Module):
    """Hinge loss on (positive, negative) pairs: max(0, margin - (sim(q, pos) - sim(q, neg))),
    averaged over every pair of the batch, with cosine similarity.

    The second stage of the ScienceQA report (margin 0.1 over a query's hard negatives):
    once a positive clears every negative by the margin, that query stops pulling. The
    negatives of query i are the same as :class:`InfoNCELoss`'s candidates: its own hard
    negatives and, with ``in_batch_negatives``, the batch's other passages, never a text
    equal to one of its positives.

    Args:
        margin: how far a positive must score above a negative (cosine units).
        in_batch_negatives: also rank against the other queries' passages.

    Inputs:
        the same as :class:`InfoNCELoss` (embeddings, positive index, passage owner, text keys).

    Returns:
        the mean hinge over all (query, negative) pairs (a scalar tensor; 0 when the
        batch has no negative at all).
    """

    def __init__(self, margin: float = 0.1, in_batch_negatives: bool = True):
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.in_batch_negatives = in_batch_negatives

    def forward(self, query_embeddings, passage_embeddings, positive_index, passage_owner,
                passage_keys, positive_keys, positive_keys_mask) -> torch.Tensor:
        queries = F.normalize(query_embeddings.float(), dim=-1)
        passages = F.normalize(passage_embeddings.float(), dim=-1)
        similarity = queries @ passages.T
        negatives = candidate_mask(positive_index, passage_owner, passage_keys, positive_keys,
                                   positive_keys_mask, in_batch_negatives=self.in_batch_negatives)
        rows = torch.arange(queries.shape[0], device=queries.device)
        negatives[rows, positive_index] = False
        positive = similarity[rows, positive_index].unsqueeze(1)
        hinge = torch.relu(self.margin - (positive - similarity))
        if not negatives.any():
            return similarity.sum() * 0.0  # keeps the graph, so a step without negatives is a no-op
        return hinge[negatives].mean()
