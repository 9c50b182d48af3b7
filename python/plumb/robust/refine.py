"""Local search on the per-step objective: swaps of replicas between ranks.

Objective of one layer: ``J = sum_t a_t max_g R[t, g]``, with ``R[t, g]`` the time of rank g at
step t (the per-step loads of its replicas, ``x[t, e] / c_e`` each, over the rank's speed). A
swap of a replica on rank g with one on rank h changes only columns g and h, so its effect on
step t follows from the step's maximum over the other ranks: the first of the step's three
largest ranks that is neither g nor h. Only swaps between a rank that is the maximum of some
step and another rank are tried: for the ranks in order of blame (the weight of the steps they
are the maximum of), and their partners lightest on average first, the best strictly improving
swap with the first partner that offers one is applied, until none improves or ``max_swaps``
is reached.
Every applied swap lowers ``J``, so the search ends and never makes the objective worse.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# A swap must lower J by more than this fraction of it: avoids trading float noise.
_MIN_GAIN = 1e-9


@njit(cache=True, nogil=True)
def _top_three(times, t, top_g, top_v):
    """The three largest rank times of step ``t`` and their ranks (-1 / 0.0 where G < 3)."""
    for k in range(3):
        top_g[t, k] = -1
        top_v[t, k] = 0.0
    for g in range(times.shape[1]):
        v = times[t, g]
        if top_g[t, 0] < 0 or v > top_v[t, 0]:
            top_g[t, 2], top_v[t, 2] = top_g[t, 1], top_v[t, 1]
            top_g[t, 1], top_v[t, 1] = top_g[t, 0], top_v[t, 0]
            top_g[t, 0], top_v[t, 0] = g, v
        elif top_g[t, 1] < 0 or v > top_v[t, 1]:
            top_g[t, 2], top_v[t, 2] = top_g[t, 1], top_v[t, 1]
            top_g[t, 1], top_v[t, 1] = g, v
        elif top_g[t, 2] < 0 or v > top_v[t, 2]:
            top_g[t, 2], top_v[t, 2] = g, v


@njit(cache=True, nogil=True)
def step_times(share, slot_e, speed, times):
    """times[t, g] = sum of share[t, e] over rank g's slots / speed[g]."""
    steps = share.shape[0]
    bins, slots = slot_e.shape
    for t in range(steps):
        for g in range(bins):
            total = 0.0
            for k in range(slots):
                total += share[t, slot_e[g, k]]
            times[t, g] = total / speed[g]


@njit(cache=True, nogil=True)
def step_objective(times, step_w):
    """sum_t step_w[t] * max_g times[t, g]."""
    total = 0.0
    for t in range(times.shape[0]):
        top = 0.0
        for g in range(times.shape[1]):
            top = max(top, times[t, g])
        total += step_w[t] * top
    return total


@njit(cache=True, nogil=True)
def _pair_bound(top_g, top_v, step_w, g, h, floor, rest):
    """Per-step max over ranks other than g and h into ``floor``; suffix sums into ``rest``.

    ``rest[t]`` is the most steps t.. could gain from any swap between g and h: only steps
    whose maximum is g or h can get cheaper, and not below ``floor``.
    """
    steps = top_g.shape[0]
    rest[steps] = 0.0
    for t in range(steps - 1, -1, -1):
        other = 0.0
        for k in range(3):
            if top_g[t, k] >= 0 and top_g[t, k] != g and top_g[t, k] != h:
                other = top_v[t, k]
                break
        floor[t] = other
        gain = 0.0
        if top_g[t, 0] == g or top_g[t, 0] == h:
            gain = step_w[t] * (top_v[t, 0] - other)
        rest[t] = rest[t + 1] + gain


@njit(cache=True, nogil=True)
def refine_steps(share, step_w, speed, forbid_dup, slot_e, has, max_swaps):
    """Improves a packing in place for the per-step objective.

    Args:
        share: float64 [T, n], per-step load of one replica of each expert (``x / c``).
        step_w: float64 [T], step weights.
        speed: float64 [G], rank speeds.
        forbid_dup: only accept swaps that put no expert twice on one rank.
        slot_e: int64 [G, S], expert in each slot; updated.
        has: int16 [G, n], replicas of each expert per rank; updated.
        max_swaps: bound on applied swaps.

    Returns:
        The objective ``J`` after the search.
    """
    steps = share.shape[0]
    bins, slots = slot_e.shape
    times = np.empty((steps, bins), dtype=np.float64)
    step_times(share, slot_e, speed, times)
    top_g = np.empty((steps, 3), dtype=np.int64)
    top_v = np.empty((steps, 3), dtype=np.float64)
    blame = np.empty(bins, dtype=np.float64)
    mean_time = np.empty(bins, dtype=np.float64)
    floor = np.empty(steps, dtype=np.float64)
    rest = np.empty(steps + 1, dtype=np.float64)
    for _ in range(max_swaps):
        objective = step_objective(times, step_w)
        for t in range(steps):
            _top_three(times, t, top_g, top_v)
        blame[:] = 0.0
        mean_time[:] = 0.0
        for t in range(steps):
            blame[top_g[t, 0]] += step_w[t]
            for g in range(bins):
                mean_time[g] += step_w[t] * times[t, g]
        order = np.argsort(-blame)
        partners = np.argsort(mean_time)
        applied = False
        for gi in range(bins):
            g = order[gi]
            if blame[g] <= 0.0:
                break
            best = -_MIN_GAIN * objective
            best_h = -1
            best_k = -1
            best_k2 = -1
            for hi in range(bins):
                h = partners[hi]
                # First improvement over partners, lightest on average first: the lightest
                # rank usually has a good swap, and scanning all G partners per swap is what
                # made the search slow.
                if h == g or best_h >= 0:
                    continue
                _pair_bound(top_g, top_v, step_w, g, h, floor, rest)
                if -rest[0] >= best:
                    continue
                for k in range(slots):
                    e = slot_e[g, k]
                    if forbid_dup and has[h, e] > 0:
                        continue
                    for k2 in range(slots):
                        f = slot_e[h, k2]
                        if f == e or (forbid_dup and has[g, f] > 0):
                            continue
                        change = 0.0
                        complete = True
                        for t in range(steps):
                            d = share[t, e] - share[t, f]
                            new_g = times[t, g] - d / speed[g]
                            new_h = times[t, h] + d / speed[h]
                            change += step_w[t] * (max(floor[t], new_g, new_h) - top_v[t, 0])
                            # The remaining steps cannot bring the change below rest[t + 1].
                            if change - rest[t + 1] >= best:
                                complete = False
                                break
                        if complete and change < best:
                            best, best_h, best_k, best_k2 = change, h, k, k2
            if best_h >= 0:
                h = best_h
                e = slot_e[g, best_k]
                f = slot_e[h, best_k2]
                slot_e[g, best_k] = f
                slot_e[h, best_k2] = e
                has[g, e] -= 1
                has[g, f] += 1
                has[h, f] -= 1
                has[h, e] += 1
                for t in range(steps):
                    d = share[t, e] - share[t, f]
                    times[t, g] -= d / speed[g]
                    times[t, h] += d / speed[h]
                applied = True
                break
        if not applied:
            break
    return step_objective(times, step_w)
