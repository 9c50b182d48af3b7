"""Lower bounds on the busiest rank's load (SPEC section 2), per layer."""

from __future__ import annotations

import numpy as np
from numba import njit

from .replicate import min_max_replica_load


@njit(cache=True, nogil=True)
def layer_lower_bounds(weights, num_slots, speed, out):
    """Lower bound on ``max_r load_r / speed_r`` for every layer, over all placements.

    ``max(W / sum(speed), T* / max(speed))`` with ``T*`` the optimal per-replica load for
    replica counts ``1 <= c_e <= G``; when there are no spare slots (P == E, so every expert
    has exactly one replica) also the pigeonhole bound: two of the G + 1 heaviest experts share
    a rank.

    Args:
        weights: float64 [L, E]; num_slots: P; speed: float64 [G]; out: float64 [L], output.
    """
    num_layers, num_experts = weights.shape
    bins = speed.shape[0]
    total_speed = speed.sum()
    top_speed = speed.max()
    for layer in range(num_layers):
        w = weights[layer]
        bound = max(w.sum() / total_speed, min_max_replica_load(w, num_slots, bins) / top_speed)
        if num_slots == num_experts and num_experts > bins:
            heaviest = np.sort(w)[::-1]
            bound = max(bound, (heaviest[bins - 1] + heaviest[bins]) / top_speed)
        out[layer] = bound
