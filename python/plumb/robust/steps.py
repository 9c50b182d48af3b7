"""Per-step rank loads and balancedness of a placement on a window of steps."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def step_rank_times(phy2log: np.ndarray, logcnt: np.ndarray, window: np.ndarray,
                    speed: np.ndarray) -> np.ndarray:
    """float64 [T, L, G]: each rank's time (load / speed) at every step, even dispatch.

    Args:
        phy2log: int64 [L, P], a valid placement; logcnt: int64 [L, E], its replica counts.
        window: float64 [T, L, E], per-step loads; speed: float64 [G], rank speeds.
    """
    num_layers, num_slots = phy2log.shape
    num_ranks = speed.shape[0]
    share = window / logcnt[None, :, :]
    per_slot = np.take_along_axis(share, np.broadcast_to(phy2log, (window.shape[0],) +
                                                         phy2log.shape), axis=2)
    loads = per_slot.reshape(window.shape[0], num_layers, num_ranks, -1).sum(axis=3)
    return loads / speed


def step_worst_and_ideal(phy2log: np.ndarray, logcnt: np.ndarray, window: np.ndarray,
                         speed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float64 [T] each: per step, the sum over layers of the max rank time (the step's MoE
    time when time is proportional to max rank load) and of the ideal rank time (the layer's
    load over the total speed: perfect balance)."""
    times = step_rank_times(phy2log, logcnt, window, speed)
    return times.max(axis=2).sum(axis=1), window.sum(axis=2).sum(axis=1) / speed.sum()


def balancedness_of(worst: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """Per-step balancedness ideal / worst (1.0 where a step has no load), same shape."""
    return np.divide(ideal, worst, out=np.ones_like(ideal), where=worst > 0)


def step_balancedness(phy2log: np.ndarray, logcnt: np.ndarray, window: np.ndarray,
                      speed: np.ndarray) -> np.ndarray:
    """float64 [T]: the model balancedness of every step (1.0 for a step without load):
    the step's MoE time with perfect balance over its actual MoE time."""
    return balancedness_of(*step_worst_and_ideal(phy2log, logcnt, window, speed))
