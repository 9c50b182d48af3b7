"""``solve(objective=..., half_life=...)``: argument checks and the robust pass."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import InputError
from .exact import exact_applies
from .model import robust_model
from .weights import as_half_life, step_weights

OBJECTIVES = ("mean", "robust")
# Each step is scored halfway between itself and the window's (recency-weighted) mean step:
# with decode-sized steps (a few tokens per expert) the raw steps' sampling noise would be
# fitted and not recur; shrinking keeps their co-variation and drift but halves the noise.
# 0.5 beat 0, 0.8 and plain mean in the held-out benchmark (bench_robust).
SHRINK = 0.5
# Per-step swaps per candidate and layer: P / 4. Most of the held-out gain comes from the first
# swaps; 2 P swaps took 50x longer in bench_robust for no measurable held-out gain.
MAX_SWAPS_PER_SLOT = 0.25


def as_objective(objective: Any, window: Optional[np.ndarray], policy: str, hierarchy: str,
                 half_life: Any) -> str:
    """The objective to solve for: "mean" or "robust", after checking it fits the inputs.

    ``None`` means "mean". "robust" needs a window [T, L, E], policy "plumb" and the global
    hierarchy ("auto" or "global"); ``half_life`` applies to "robust" only.
    """
    resolved = "mean" if objective is None else objective
    if not isinstance(resolved, str) or resolved not in OBJECTIVES:
        raise InputError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    as_half_life(half_life)
    if resolved == "mean":
        if half_life is not None:
            raise InputError("half_life applies to objective='robust' only")
        return resolved
    if window is None:
        raise InputError("objective='robust' needs loads as a window [T, L, E] of per-step "
                         "counts; [L, E] loads have no steps to score")
    if policy != "plumb":
        raise InputError(f"objective='robust' needs policy='plumb', got {policy!r}")
    if hierarchy == "hierarchical":
        raise InputError("objective='robust' places experts over all ranks (global policy); "
                         "use hierarchy='auto' or 'global'")
    return resolved


def recency_weighted(window: np.ndarray, half_life: Any) -> np.ndarray:
    """float64 [L, E]: the window [T, L, E] summed with recency weights (scaled to T steps)."""
    weights = step_weights(window.shape[0], as_half_life(half_life))
    return np.ascontiguousarray(np.tensordot(weights * window.shape[0], window, axes=1))


def robust_phy2log(start: np.ndarray, window: np.ndarray, caps: np.ndarray, speed: np.ndarray,
                   allow_dup: bool, half_life: Any) -> np.ndarray:
    """int64 [L, P]: the robust placement (see :mod:`plumb.robust.model`) of every layer.

    The steps scored are ``(1 - SHRINK) * x_t + SHRINK * m`` with ``m = sum_t a_t x_t`` the
    recency-weighted mean step (``a`` from :func:`plumb.robust.weights.step_weights`). Layers
    with one replica per expert, equal rank speeds and few packings get the exact optimum
    (:func:`plumb.robust.exact.exact_applies`), the others the two-candidate search.

    Args:
        start: int64 [L, P], the mean-objective placement of the same loads.
        window: float64 [T, L, E], per-step loads, oldest first.
        caps: int64 [E], replica caps; speed: float64 [G], rank speeds.
        allow_dup: whether E * G < P forces two replicas of an expert onto one rank.
        half_life: recency half-life in steps, or None (all steps equal).
    """
    weights = step_weights(window.shape[0], as_half_life(half_life))
    mean = np.tensordot(weights, window, axes=1)
    steps = (1.0 - SHRINK) * window + SHRINK * mean[None, :, :]
    exact = exact_applies(window.shape[2], start.shape[1], speed)
    phy2log = np.empty_like(start)
    robust_model(np.ascontiguousarray(steps, dtype=np.float64), weights, caps,
                 np.ascontiguousarray(speed, dtype=np.float64), allow_dup,
                 np.ascontiguousarray(start, dtype=np.int64),
                 int(np.ceil(MAX_SWAPS_PER_SLOT * start.shape[1])), exact, phy2log)
    return phy2log
