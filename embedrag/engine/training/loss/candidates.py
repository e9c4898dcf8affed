"""Which passages of a contrastive batch count as which query's candidates."""

from __future__ import annotations

import torch


def candidate_mask(positive_index, passage_owner, passage_keys, positive_keys, positive_keys_mask,
                   *, in_batch_negatives: bool = True) -> torch.Tensor:
    """(B, M) bool: query i's sampled positive, its own hard negatives and, with
    ``in_batch_negatives``, every other passage of the batch. A passage whose text equals
    one of query i's own positives is never its negative (queries sharing a positive are
    common), so it is masked out unless it is the sampled positive itself."""
    queries = positive_index.shape[0]
    rows = torch.arange(queries, device=positive_index.device)
    if in_batch_negatives:
        allowed = torch.ones(queries, passage_keys.shape[0], dtype=torch.bool, device=positive_index.device)
    else:
        allowed = passage_owner.unsqueeze(0) == rows.unsqueeze(1)
    same_text_as_a_positive = (
        (passage_keys.view(1, -1, 1) == positive_keys.unsqueeze(1)) & positive_keys_mask.unsqueeze(1)
    ).any(dim=-1)
    allowed = allowed & ~same_text_as_a_positive
    allowed[rows, positive_index] = True
    return allowed
