"""Replication: how many replicas each expert gets.

Greedy water-filling: start from one replica each and give every further replica to the expert
with the largest per-replica load ``w_e / c_e`` (a tournament tree finds it). Under even dispatch this minimises
``max_e w_e / c_e`` exactly (exchange argument), which is the ``T*`` term of the lower bound.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel
from .mintree import tree_build, tree_min, tree_size, tree_update
from .workspace import BASE_COUNTS, FILL_KEYS, FILL_TREE, TRIAL_COUNTS


@njit(cache=True, nogil=True)
def water_fill(weights, num_slots, caps, counts):
    """Replica counts minimising the largest per-replica load.

    Args:
        weights: float64 [n], load of each expert (>= 0).
        num_slots: total replicas to hand out (>= n).
        caps: int64 [n], the most replicas each expert may get (>= 1).
        counts: int64 [n], output: replicas per expert, each in [1, cap], summing to num_slots.

    Ties go to the lower index, as in DeepSeek's replication (so that on ties both start from
    the same counts), except when the largest per-replica load is 0: the replicas left then
    go one per zero-load expert in index order, round after round, instead of all to the
    first (see ``_spread_zeros``). Should the caps sum to less than ``num_slots`` (only
    possible for a node's share in the hierarchical policy), the caps are dropped for the
    remaining replicas instead of failing.

    Returns:
        True when the caps were respected, False when they had to be dropped.
    """
    size = tree_size(weights.shape[0])
    return water_fill_into(weights, num_slots, caps, counts, np.empty(size, dtype=np.float64),
                           np.empty(size, dtype=np.int64))


@kernel
def water_fill_into(weights, num_slots, caps, counts, keys, tree):
    """:func:`water_fill` with its tree in ``keys`` float64 / ``tree`` int64
    [``tree_size(n)``] (scratch)."""
    n = weights.shape[0]
    # A min-tree over -w_e / c_e: its root is the expert with the largest per-replica load,
    # lowest index on ties; experts at their cap sit at +inf.
    keys[:] = np.inf
    for e in range(n):
        counts[e] = 1
        if caps[e] > 1:
            keys[e] = -weights[e]
    tree_build(keys, tree)
    capped = True
    left = num_slots - n
    while left > 0:
        e = tree_min(tree)
        if keys[e] == np.inf:
            capped = False
            for f in range(n):
                keys[f] = -weights[f] / counts[f]
            tree_build(keys, tree)
            e = tree_min(tree)
        if keys[e] == 0.0:
            left = _spread_zeros(caps, counts, keys, capped, left)
            tree_build(keys, tree)
            continue
        counts[e] += 1
        left -= 1
        keys[e] = -weights[e] / counts[e] if counts[e] < caps[e] or not capped else np.inf
        tree_update(keys, tree, e)
    return capped


@kernel
def _spread_zeros(caps, counts, keys, capped, left):
    """Once the largest per-replica load is 0, every expert that may take a replica has no
    load: one more replica each, in index order, while ``left`` lasts (int; returns what is
    left). Any counts are optimal then; the lowest-index rule would pile them all onto one
    expert (up to its cap), whose replicas LPT then sets aside rank after rank, each time on
    every rank already holding one: quadratic in the pile."""
    for f in range(counts.shape[0]):
        if left == 0:
            break
        if keys[f] != 0.0:
            continue
        counts[f] += 1
        left -= 1
        if capped and counts[f] >= caps[f]:
            keys[f] = np.inf
    return left


@kernel
def min_max_replica_load(weights, num_slots, cap, fscratch, iscratch):
    """``T*``: the smallest achievable ``max_e w_e / c_e`` over counts with ``1 <= c_e <= cap``.

    Args:
        weights: float64 [n]; num_slots: total replicas (>= n); cap: int >= 1.
        fscratch, iscratch: the scratch of a ``workspace`` for >= n experts.

    Replicas beyond ``n * cap`` cannot lower any rank's load below ``w_e / cap`` (one rank then
    holds several replicas of an expert), so they are not handed out.
    """
    n = weights.shape[0]
    caps = iscratch[BASE_COUNTS, :n]
    caps[:] = cap
    counts = iscratch[TRIAL_COUNTS, :n]
    size = tree_size(n)
    water_fill_into(weights, min(num_slots, n * cap), caps, counts, fscratch[FILL_KEYS, :size],
                    iscratch[FILL_TREE, :size])
    return max_replica_load(weights, counts)


@kernel
def max_replica_load(weights, counts):
    """The largest per-replica load ``max_e w_e / c_e`` (float64 / int64 [n])."""
    best = 0.0
    for e in range(weights.shape[0]):
        best = max(best, weights[e] / counts[e])
    return best
