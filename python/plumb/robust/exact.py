"""Exact packing search for small layers: every packing scored, the best kept.

When every expert has one replica (P == E) and all G ranks run at the same speed, a layer's
packings are the partitions of its E experts into G unlabelled ranks of S = E / G each:
``E! / (S!^G G!)`` of them (105 for E = 8, G = 4). When that is at most ``MAX_PACKINGS``, all
are scored on the per-step objective ``J = sum_t a_t max_g R[t, g]`` (as in
:mod:`plumb.robust.refine`) and the exact optimum is kept. The local search reaches it in
almost every layer too, but where many packings tie on ``J`` (the same rank is the maximum of
every step, so how the other experts pair does not change ``J``) it keeps an arbitrary one;
here ties (within a relative ``TIE``) keep the start packing, then the one with the lower
maximum mean rank time, then the lower sum of squared mean rank times (the flattest mean
loads, as the mean objective would prefer).

Enumeration is depth-first: expert e goes to an opened rank with room or to the next unopened
one, so each partition is visited once; a branch is cut once its partial ``J`` (rank times
only grow as experts are added) exceeds the best by more than the tie tolerance.
"""

from __future__ import annotations

from math import factorial

import numpy as np
from numba import njit

from .refine import step_objective

# At most this many packings are enumerated per layer (E = P = 12, G = 4 has 15400).
MAX_PACKINGS = 20_000
# Relative tolerance under which two values of J count as a tie (float rounding of sums).
TIE = 1e-12


def num_packings(num_experts: int, num_ranks: int) -> int:
    """Partitions of ``num_experts`` experts into ``num_ranks`` unlabelled ranks of equal size."""
    slots = num_experts // num_ranks
    return factorial(num_experts) // (factorial(slots) ** num_ranks * factorial(num_ranks))


def exact_applies(num_experts: int, num_slots: int, speed: np.ndarray) -> bool:
    """Whether :func:`exact_packing` covers a layer: P == E, equal speeds [G], few packings."""
    return (num_slots == num_experts and bool(np.all(speed == speed[0]))
            and num_packings(num_experts, speed.shape[0]) <= MAX_PACKINGS)


@njit(cache=True, nogil=True)
def _mean_key(times, step_w, mean_g):
    """(max, sum of squares) of the weighted mean rank times; ``mean_g`` is scratch [G]."""
    mean_g[:] = 0.0
    for t in range(times.shape[0]):
        for g in range(times.shape[1]):
            mean_g[g] += step_w[t] * times[t, g]
    top = 0.0
    squares = 0.0
    for g in range(mean_g.shape[0]):
        top = max(top, mean_g[g])
        squares += mean_g[g] * mean_g[g]
    return top, squares


@njit(cache=True, nogil=True)
def _add(times, x, e, g, sign):
    for t in range(times.shape[0]):
        times[t, g] += sign * x[t, e]


@njit(cache=True, nogil=True)
def exact_packing(x, step_w, slot_e):
    """Replaces the packing ``slot_e`` by the best one on J (ties as in the module docstring).

    Args:
        x: float64 [T, n], per-step load of each expert (one replica each), in time units
            (already divided by the common rank speed).
        step_w: float64 [T], step weights (>= 0).
        slot_e: int64 [G, S] with G * S = n, each expert once: the start packing; output.

    Returns:
        The objective ``J`` of the packing written to ``slot_e``.
    """
    steps, n = x.shape
    bins, slots = slot_e.shape
    times = np.zeros((steps, bins), dtype=np.float64)
    mean_g = np.empty(bins, dtype=np.float64)
    for g in range(bins):
        for k in range(slots):
            _add(times, x, slot_e[g, k], g, 1.0)
    best = step_objective(times, step_w)
    best_top, best_squares = _mean_key(times, step_w, mean_g)
    best_is_start = True
    best_rank = np.empty(n, dtype=np.int64)
    for g in range(bins):
        for k in range(slots):
            best_rank[slot_e[g, k]] = g
    times[:, :] = 0.0
    rank_of = np.full(n, -1, dtype=np.int64)
    fill = np.zeros(bins, dtype=np.int64)
    next_g = np.zeros(n + 1, dtype=np.int64)
    opened = 0
    depth = 0
    while depth >= 0:
        if depth == n:
            value = step_objective(times, step_w)
            top, squares = _mean_key(times, step_w, mean_g)
            if value < best * (1.0 - TIE) or (
                    value <= best * (1.0 + TIE) and not best_is_start
                    and (top < best_top or (top == best_top and squares < best_squares))):
                best, best_top, best_squares, best_is_start = value, top, squares, False
                best_rank[:] = rank_of
            depth -= 1
        else:
            # Rank for expert `depth`: an opened one with room, or the first unopened one.
            g = next_g[depth]
            while g < opened and fill[g] >= slots:
                g += 1
            if g <= opened and g < bins:
                next_g[depth] = g + 1
                rank_of[depth] = g
                fill[g] += 1
                if fill[g] == 1:
                    opened += 1
                _add(times, x, depth, g, 1.0)
                if step_objective(times, step_w) <= best * (1.0 + TIE):
                    depth += 1
                    next_g[depth] = 0
                    continue
            else:
                depth -= 1
        # Undo the placement of expert `depth` (the cut branch, or the level left behind).
        if depth >= 0 and rank_of[depth] >= 0:
            g = rank_of[depth]
            _add(times, x, depth, g, -1.0)
            fill[g] -= 1
            if fill[g] == 0:
                opened -= 1
            rank_of[depth] = -1
    fill[:] = 0
    for e in range(n):
        g = best_rank[e]
        slot_e[g, fill[g]] = e
        fill[g] += 1
    return best
