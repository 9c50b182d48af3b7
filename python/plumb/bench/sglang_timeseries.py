"""Baseline: a reimplementation of SGLang's time-series EPLB variant (for bench_robust).

Per layer, from a window of per-step counts ``x[t, e]``:

1. replication: every extra replica goes to the expert whose extra replica most reduces
   ``sum_t max_e x[t, e] / c_e`` (the sum over steps of the per-step max per-replica load), at
   most one replica per rank (c_e <= G); the same greedy as plumb's
   :func:`plumb.robust.replicate.step_water_fill` with equal step weights, reused here;
2. packing: the replicas sorted by mean per-replica load (heaviest first, ties by expert id)
   are dealt to the ranks in serpentine order (0, 1, ..., G-1, G-1, ..., 0, 0, 1, ...), S each.
"""

from __future__ import annotations

import numpy as np

from ..robust.replicate import step_water_fill

__all__ = ["sglang_timeseries_rebalance"]


def _serpentine_ranks(num_items: int, num_ranks: int) -> np.ndarray:
    """int64 [num_items]: the rank of the i-th item dealt in serpentine order."""
    index = np.arange(num_items)
    turn, position = np.divmod(index, num_ranks)
    return np.where(turn % 2 == 0, position, num_ranks - 1 - position)


def sglang_timeseries_rebalance(window: np.ndarray, num_slots: int,
                                num_ranks: int) -> np.ndarray:
    """phy2log int64 [L, P] of the time-series variant for ``window`` float [T, L, E].

    ``num_slots`` = P (a multiple of ``num_ranks``, >= E). Each rank's slots are sorted by
    expert id.
    """
    window = np.ascontiguousarray(window, dtype=np.float64)
    steps, num_layers, num_experts = window.shape
    slots = num_slots // num_ranks
    step_w = np.ones(steps, dtype=np.float64)
    caps = np.full(num_experts, max(num_ranks, -(-num_slots // num_experts)), dtype=np.int64)
    # Dealt replicas regrouped rank by rank (dealing order within a rank): one row per rank.
    by_rank = np.argsort(_serpentine_ranks(num_slots, num_ranks), kind="stable")
    phy2log = np.empty((num_layers, num_slots), dtype=np.int64)
    counts = np.empty(num_experts, dtype=np.int64)
    for layer in range(num_layers):
        x = np.ascontiguousarray(window[:, layer, :])
        step_water_fill(x, step_w, num_slots, caps, counts)
        experts = np.repeat(np.arange(num_experts), counts)
        share = (x.sum(axis=0) / counts)[experts]
        dealt = experts[np.lexsort((experts, -share))]
        phy2log[layer] = np.sort(dealt[by_rank].reshape(num_ranks, slots), axis=1).ravel()
    return phy2log
