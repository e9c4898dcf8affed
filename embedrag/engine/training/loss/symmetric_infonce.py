"""InfoNCE in both directions: queries pick their passage, and passages pick their query."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedrag.engine.training.loss.infonce import InfoNCELoss


class SymmetricInfoNCELoss(InfoNCELoss):
    """The mean of :class:`InfoNCELoss` (query -> passages) and its reverse (each query's
    sampled positive -> the batch's queries), as sentence-transformers'
    MultipleNegativesSymmetricRankingLoss and GTE's bidirectional contrastive loss.

    The reverse direction asks each positive passage to rank its own query above the other
    queries of the batch; a query that has the passage among its own positives is never
    counted as its negative. Without ``in_batch_negatives`` the reverse direction has one
    candidate and adds nothing.

    Args:
        temperature: softmax temperature of both directions.
        in_batch_negatives: also contrast against the other queries' passages.

    Inputs:
        the same as :class:`InfoNCELoss`.

    Returns:
        the mean of the two directions' mean losses over queries (a scalar tensor).
    """

    def forward(self, query_embeddings, passage_embeddings, positive_index, passage_owner,
                passage_keys, positive_keys, positive_keys_mask) -> torch.Tensor:
        forward_loss = super().forward(query_embeddings, passage_embeddings, positive_index,
                                       passage_owner, passage_keys, positive_keys, positive_keys_mask)
        queries = F.normalize(query_embeddings.float(), dim=-1)
        positives = F.normalize(passage_embeddings.float()[positive_index], dim=-1)
        logits = positives @ queries.T / self.temperature
        mask = self.query_mask(positive_index, passage_owner, passage_keys, positive_keys, positive_keys_mask)
        logits = logits.masked_fill(~mask, float("-inf"))
        targets = torch.arange(queries.shape[0], device=logits.device)
        return (forward_loss + F.cross_entropy(logits, targets)) / 2

    def query_mask(self, positive_index, passage_owner, passage_keys, positive_keys,
                   positive_keys_mask) -> torch.Tensor:
        """(B, B) bool: which queries are candidates for query i's sampled positive: the
        forward candidates' columns of the sampled positives, read the other way."""
        mask = self.candidate_mask(positive_index, passage_owner, passage_keys, positive_keys,
                                   positive_keys_mask)
        return mask[:, positive_index].T
