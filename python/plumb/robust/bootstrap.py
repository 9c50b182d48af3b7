"""Resampling over steps (deterministic): bootstrap indices, percentile intervals, sign flips."""

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


def sign_flip_pvalue(differences: np.ndarray, num_resamples: int, seed: int) -> float:
    """One-sided p-value that the mean of the paired per-step ``differences`` [T] is > 0.

    Under "no real gain" the current and proposed placements are exchangeable on held-out
    steps, so each step's difference is as likely negative as positive: the p-value is the
    share of random sign flips whose sum reaches the observed one (the observed assignment
    counted once, so it is never 0). Exact at any T, where the percentile bootstrap is too
    narrow for the few steps a gate often sees.
    """
    differences = np.asarray(differences, dtype=np.float64)
    observed = differences.sum()
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(num_resamples, differences.size)) * 2 - 1
    flipped = signs @ differences
    # A relative tolerance keeps rounding from splitting exact ties (e.g. all-zero steps).
    tolerance = 1e-12 * max(float(np.abs(differences).sum()), 1e-300)
    return float((1 + np.count_nonzero(flipped >= observed - tolerance)) / (1 + num_resamples))
