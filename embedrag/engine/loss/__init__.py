"""Contrastive losses, one per module."""

from embedrag.engine.loss.infonce import InfoNCELoss
from embedrag.engine.loss.margin_ranking import MarginRankingLoss

__all__ = ["InfoNCELoss", "MarginRankingLoss"]
