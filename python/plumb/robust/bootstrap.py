"""Bootstrap over steps: resampled step indices and percentile intervals (deterministic)."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def resample_steps(num_steps: int, num_resamples: int, seed: int) -> np.ndarray:
    """int64 [num_resamples, num_steps]: step indices drawn with replacement, seeded."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_steps, size=(num_resamples, num_steps))


def interval(samples: np.ndarray, confidence: float) -> Tuple[float, float]:
    """Two-sided percentile interval of ``samples`` [B] at ``confidence`` (e.g. 0.95)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def lower_bound(samples: np.ndarray, confidence: float) -> float:
    """One-sided lower percentile bound: ``samples`` exceed it with probability ``confidence``."""
    return float(np.quantile(samples, 1.0 - confidence))
