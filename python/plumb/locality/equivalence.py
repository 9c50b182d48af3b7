"""Which ranks can trade their whole contents without changing traffic or balance.

A pass that relabels ranks after the locality pass (movement: keep experts where they already
are) must not undo what the locality pass bought. Moving rank a's slots to rank b and b's to a
leaves every traffic metric and the max rank load unchanged when

- under per-source traffic or nearest dispatch: the transposition (a b) is a symmetry of the
  problem: both ranks have the same speed, sources a and b send the same counts, and every
  other rank sees a and b at the same link cost and level (``cost[s, a] == cost[s, b]``). The
  image of a placement under a symmetry routes and costs the same, so nothing changes;
- under even dispatch with sources uniform over ranks (no per-source counts): a replica's
  traffic depends only on its rank's column of the cost matrix, so ranks of the same speed
  whose columns hold the same costs and levels (in any order) are interchangeable, across
  nodes too.

Symmetries compose, so "interchangeable" is an equivalence relation: any permutation of ranks
inside one class keeps traffic cost, cross-node and cross-NUMA fractions and rank loads / speed.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..errors import InputError
from ..topology import Topology, TopologyLike, as_topology
from .traffic import EVEN, as_traffic, dispatch_code


def _symmetric_pairs(topo: Topology) -> np.ndarray:
    """bool [G, G]: whether the transposition (a b) maps link costs and levels onto themselves."""
    cost, level = topo.link_cost, topo.level
    same = ((cost[:, :, None] == cost[:, None, :]) & (level[:, :, None] == level[:, None, :]))
    g = topo.num_ranks
    # Rows a and b of the pair (a, b) compare cost[a, a] with cost[a, b]: they are checked apart.
    ranks = np.arange(g)
    same[ranks[:, None], ranks[:, None], ranks[None, :]] = True
    same[ranks[None, :], ranks[:, None], ranks[None, :]] = True
    pairs = same.all(axis=0)
    diagonal = np.diagonal(cost)
    pairs &= diagonal[:, None] == diagonal[None, :]
    pairs &= cost == cost.T  # Topology accepts asymmetry in the last ulps; a swap must not.
    pairs &= topo.rank_speed[:, None] == topo.rank_speed[None, :]
    return pairs


def _labels(pairs: np.ndarray) -> np.ndarray:
    """int64 [G]: each rank's class, named by its smallest rank (``pairs`` is an equivalence)."""
    return np.argmax(pairs, axis=0).astype(np.int64)


def interchangeable_ranks(topo: TopologyLike, traffic: Any = None,
                          dispatch: str = "even") -> np.ndarray:
    """Classes of ranks whose contents can be permuted without changing traffic or balance.

    Args:
        topo: Topology or int G.
        traffic: per-source counts [L, G, E] or [T, L, G, E] (or [G, E] for one layer), or
            None (sources uniform over ranks).
        dispatch: "even" or "nearest", the dispatch model the placement is scored under.

    Returns:
        int64 [L, G] (L = 1 when ``traffic`` is None; it then holds for every layer): label of
        each rank's class, the smallest rank in it. Permuting whole ranks (all their slots)
        within a class of a layer leaves that layer's traffic cost, cross-node / cross-NUMA
        fractions and rank loads / speed as they were (rank loads move with the contents).
    """
    topo = as_topology(topo)
    code = dispatch_code(dispatch)
    if traffic is None and code == EVEN:
        columns = np.concatenate([np.sort(topo.link_cost, axis=0),
                                  np.sort(topo.level, axis=0).astype(np.float64),
                                  topo.rank_speed[None, :]])
        pairs = (columns[:, :, None] == columns[:, None, :]).all(axis=0)
        return _labels(pairs)[None, :]
    symmetric = _symmetric_pairs(topo)
    if traffic is None:
        return _labels(symmetric)[None, :]
    shape = np.shape(traffic)
    if len(shape) < 2:
        raise InputError(f"traffic must be [L, G, E] or [T, L, G, E], got {list(shape)}")
    num_layers = shape[-3] if len(shape) >= 3 else 1
    counts = as_traffic(traffic, num_layers, topo.num_ranks, shape[-1])
    labels = np.empty((num_layers, topo.num_ranks), dtype=np.int64)
    for layer in range(num_layers):
        rows = counts[layer]
        same_sources = (rows[:, None, :] == rows[None, :, :]).all(axis=2)
        labels[layer] = _labels(symmetric & same_sources)
    return labels


# Topologies are immutable: whether uniform sources make every placement cost the same is
# derived once per object (each solve under nearest dispatch asks).
_UNIFORM_INVARIANT: "weakref.WeakKeyDictionary[Topology, bool]" = weakref.WeakKeyDictionary()


def placement_invariant(topo: TopologyLike, traffic: Any = None, dispatch: str = "even",
                        single_replicas: bool = False) -> bool:
    """True when no placement can change the traffic metrics, so a locality pass is moot.

    That is the case for sources uniform over ranks (``traffic`` None) under even dispatch
    (or nearest dispatch with one replica per expert, ``single_replicas``, which routes the
    same) when every rank's column of link costs and levels holds the same values, as on any
    topology built from levels.
    """
    if traffic is not None or (dispatch_code(dispatch) != EVEN and not single_replicas):
        return False
    topo = as_topology(topo)
    invariant = _UNIFORM_INVARIANT.get(topo)
    if invariant is None:
        invariant = bool(np.all(interchangeable_ranks(topo) == 0))
        _UNIFORM_INVARIANT[topo] = invariant
    return invariant
