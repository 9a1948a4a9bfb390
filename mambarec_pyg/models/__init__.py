"""Recommendation models: :class:`MambaRec` (reference and paper variants)."""
from __future__ import annotations

from .mambarec import LossParts, MambaRec, MambaRecOutput

__all__ = ['MambaRec', 'LossParts', 'MambaRecOutput']
