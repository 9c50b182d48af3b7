"""Replica counts scored on the steps of a window.

Greedy: every extra replica goes to the expert whose extra replica lowers
``F(c) = sum_t a_t max_e x[t, e] / c_e`` (the recency-weighted sum over steps of the per-step
max per-replica load) the most. Only the expert that is the maximum of a step can lower that
step's term, down to the step's second-largest per-replica load, so the gains follow from the
top two of every step, kept up to date as counts change.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _top_two(x, counts, t, top_e, top_v):
    """Writes the largest and second-largest per-replica loads of step ``t`` and their experts."""
    best_e = -1
    best_v = -1.0
    second_e = -1
    second_v = -1.0
    for e in range(x.shape[1]):
        v = x[t, e] / counts[e]
        if v > best_v:
            second_e, second_v = best_e, best_v
            best_e, best_v = e, v
        elif v > second_v:
            second_e, second_v = e, v
    top_e[t, 0] = best_e
    top_e[t, 1] = second_e
    top_v[t, 0] = best_v
    top_v[t, 1] = max(second_v, 0.0)


@njit(cache=True, nogil=True)
def step_water_fill(x, step_w, num_slots, caps, counts):
    """Replica counts greedily minimising the weighted sum of per-step max per-replica loads.

    Args:
        x: float64 [T, n], per-step loads of each expert.
        step_w: float64 [T], weight of each step (>= 0).
        num_slots: replicas to hand out in all (>= n).
        caps: int64 [n], most replicas per expert (>= 1; they sum to >= num_slots).
        counts: int64 [n], output: replicas per expert, each in [1, cap], summing to num_slots.

    Ties (including a zero gain, e.g. when every step's maximum is capped) go to the largest
    mean per-replica load ``sum_t a_t x[t, e] / c_e``, then the lower index: the replicas no
    step asks for are spread by mean water-filling.
    """
    steps, n = x.shape
    mean = np.zeros(n, dtype=np.float64)
    for t in range(steps):
        for e in range(n):
            mean[e] += step_w[t] * x[t, e]
    for e in range(n):
        counts[e] = 1
    top_e = np.empty((steps, 2), dtype=np.int64)
    top_v = np.empty((steps, 2), dtype=np.float64)
    for t in range(steps):
        _top_two(x, counts, t, top_e, top_v)
    gain = np.empty(n, dtype=np.float64)
    for _ in range(num_slots - n):
        gain[:] = 0.0
        for t in range(steps):
            e = top_e[t, 0]
            after = max(x[t, e] / (counts[e] + 1), top_v[t, 1])
            gain[e] += step_w[t] * (top_v[t, 0] - after)
        pick = -1
        for e in range(n):
            if counts[e] >= caps[e]:
                continue
            if pick < 0 or gain[e] > gain[pick] or (
                    gain[e] == gain[pick] and mean[e] / counts[e] > mean[pick] / counts[pick]):
                pick = e
        counts[pick] += 1
        for t in range(steps):
            if top_e[t, 0] == pick or top_e[t, 1] == pick:
                _top_two(x, counts, t, top_e, top_v)
