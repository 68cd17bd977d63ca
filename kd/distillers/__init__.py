"""Distillers: one file per method, each an :class:`engine.objective.Objective`."""
from kd.distillers.kd import KD

__all__ = ["KD"]
