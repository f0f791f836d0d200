"""Sweeps: one cell run for every point of a parameter grid, with retries and a results table."""

from ..exceptions import SweepError, SweepFailedError
from .grid import MAX_ITEMS, from_rows, grid, parse_map
from .sweep import Item, Sweep

__all__ = ["MAX_ITEMS", "Item", "Sweep", "SweepError", "SweepFailedError", "from_rows", "grid",
           "parse_map"]
