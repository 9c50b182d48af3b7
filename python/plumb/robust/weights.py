"""Recency weights of the steps of a window (``half_life``)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import InputError


def as_half_life(half_life: Any) -> Optional[float]:
    """``half_life`` validated: None (all steps weigh the same) or a finite number of steps > 0."""
    if half_life is None:
        return None
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float, np.integer,
                                                                  np.floating)):
        raise InputError(f"half_life must be None or a number of steps > 0, got {half_life!r}")
    value = float(half_life)
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"half_life must be None or a number of steps > 0, got {half_life!r}")
    return value


def step_weights(num_steps: int, half_life: Optional[float]) -> np.ndarray:
    """float64 [T] weights of the steps of a window (oldest first), summing to 1.

    Step t weighs ``0.5 ** ((T - 1 - t) / half_life)`` before normalisation: the newest step
    weighs 1, a step ``half_life`` steps older weighs 1/2. ``half_life=None``: all equal.
    """
    if half_life is None:
        weights = np.ones(num_steps)
    else:
        age = np.arange(num_steps - 1, -1, -1, dtype=np.float64)
        weights = np.exp2(-age / half_life)
    return weights / weights.sum()
