"""Contrastive losses, one per module."""

from embedrag.engine.training.loss.infonce import InfoNCELoss
from embedrag.engine.training.loss.margin_ranking import MarginRankingLoss
from embedrag.engine.training.loss.symmetric_infonce import SymmetricInfoNCELoss

__all__ = ["InfoNCELoss", "MarginRankingLoss", "SymmetricInfoNCELoss"]
