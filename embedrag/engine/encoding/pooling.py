"""Pooling token states into one vector per text.

Works for right- and left-padded batches alike: positions come from the attention mask,
never from the padding side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

POOLING_MODES = ("cls", "mean", "last")


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token of each row (0 for right padding)."""
    return attention_mask.int().argmax(dim=1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (the row's end for left padding)."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.int().flip(dims=[1]).argmax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, tokens, dim) to (batch, dim) with ``mode`` cls|mean|last."""
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":
        return hidden[rows, first_token_index(attention_mask)]
    if mode == "last":
        return hidden[rows, last_token_index(attention_mask)]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / counts
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
