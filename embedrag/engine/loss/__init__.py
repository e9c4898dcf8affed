"""Contrastive losses, one per module."""

from embedrag.engine.loss.infonce import InfoNCELoss

__all__ = ["InfoNCELoss"]
