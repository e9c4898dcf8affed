"""Contrastive losses, one per module."""

from embedrag.engine.training.loss.infonce import InfoNCELoss
from embedrag.engine.training.loss.margin_ranking import MarginRankingLoss

__all__ = ["InfoNCELoss", "MarginRankingLoss"]
