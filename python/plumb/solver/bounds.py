"""Lower bounds on the busiest rank's load (SPEC section 2), per layer.

Without spare slots (P == E: every expert has exactly one replica and every rank exactly S
items) two cardinality arguments sharpen ``max(W / G, T*)``; with w sorted descending
(1-indexed) and ``small(m)`` the sum of the m lightest experts:

* k-bound: k * G + 1 items cannot sit on G ranks with at most k on each, so some rank holds
  k + 1 of the kG + 1 heaviest: at least the k + 1 lightest of them, plus S - k - 1 more
  experts (each at least as heavy as the lightest ones).
* pairing bound, for i <= G: either two of the i heaviest share a rank (at least
  ``w_{i-1} + w_i + small(S-2)``), or they sit on i distinct ranks whose other i(S - 1) items
  come from the rest; the heaviest of those is at least ``w_{E - i(S-1) + 1}`` and shares a
  rank with one of the i heaviest (at least ``w_i``), and the i ranks together carry at least
  ``w_1 + ... + w_i + small(i(S-1))``. For S = 2 this is ``max_i w_i + w_{2G+1-i}``, the
  optimum.

A rank whose load is at least X has time at least X / max(speed).

The hierarchical policy (SPEC section 2's "sharper bounds": per group, and here per node)
keeps every expert group whole on one node, ``num_groups / nodes`` groups on each, and an
expert's replicas on its node; :func:`hierarchical_bound` bounds the placements of that kind.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel, largest, total
from .pack import descending_order
from .replicate import max_replica_load, min_max_replica_load
from .workspace import ORDER, PREFIX, SHARE, SORT_SCRATCH, SUFFIX, workspace


@kernel
def cardinality_bound(heaviest, bins, prefix, suffix):
    """Largest cardinality bound on the busiest rank's load when each of ``bins`` ranks holds
    exactly ``len(heaviest) / bins`` experts, one replica each.

    Args:
        heaviest: float64 [E], the expert loads sorted descending; E a multiple of ``bins``.
        bins: G, the number of ranks.
        prefix, suffix: float64 [>= E + 1], scratch.
    """
    n = heaviest.shape[0]
    slots = n // bins
    # suffix[m] = small(m), the sum of the m lightest; prefix[m] = the m heaviest.
    suffix[0] = 0.0
    prefix[0] = 0.0
    for m in range(1, n + 1):
        suffix[m] = suffix[m - 1] + heaviest[n - m]
        prefix[m] = prefix[m - 1] + heaviest[m - 1]
    best = 0.0
    for k in range(1, slots):
        top = k * bins + 1
        together = prefix[top] - prefix[top - k - 1]
        best = max(best, together + suffix[slots - k - 1])
    rest = suffix[max(slots - 2, 0)]
    for i in range(1, bins + 1):
        if slots == 1:
            break
        apart = max(heaviest[i - 1] + heaviest[n - i * (slots - 1)] + rest,
                    (prefix[i] + suffix[i * (slots - 1)]) / i)
        if i > 1:
            apart = min(apart, heaviest[i - 2] + heaviest[i - 1] + rest)
        best = max(best, apart)
    return best


@njit(cache=True, nogil=True)
def layer_bound(weights, num_slots, speed):
    """Lower bound on ``max_r load_r / speed_r`` of one layer, over all placements.

    ``max(W / sum(speed), T* / max(speed))`` with ``T*`` the optimal per-replica load for
    replica counts ``1 <= c_e <= G``; when P == E also the cardinality bounds above.

    Args:
        weights: float64 [E]; num_slots: P; speed: float64 [G].
    """
    fscratch, iscratch = workspace(weights.shape[0], np.int64(1), np.int64(1))
    return layer_bound_with(weights, num_slots, speed, fscratch, iscratch)


@kernel
def layer_bound_with(weights, num_slots, speed, fscratch, iscratch):
    """:func:`layer_bound` with the scratch of a ``workspace`` for >= E experts. When
    P == E > G it leaves ``iscratch[ORDER, :E]`` listing the experts by descending weight
    (ties by index): the packing of that layer starts from the same order."""
    num_experts = weights.shape[0]
    bins = speed.shape[0]
    top_speed = largest(speed)
    if num_slots == num_experts:  # one replica each: T* is the heaviest expert
        bound = max(total(weights) / total(speed), largest(weights) / top_speed)
    else:
        bound = max(total(weights) / total(speed),
                    min_max_replica_load(weights, num_slots, bins, fscratch, iscratch) / top_speed)
    if num_slots == num_experts and num_experts > bins:
        order = iscratch[ORDER, :num_experts]
        descending_order(weights, order, iscratch[SORT_SCRATCH])
        heaviest = fscratch[SHARE, :num_experts]
        for i in range(num_experts):
            heaviest[i] = weights[order[i]]
        bound = max(bound, cardinality_bound(heaviest, bins, fscratch[PREFIX], fscratch[SUFFIX])
                    / top_speed)
    return bound


@kernel
def hierarchical_bound(weights, caps, speed, group_w, node_speed, gpn, fscratch, iscratch):
    """Lower bound on ``max_r load_r / speed_r`` of one layer over the placements that keep
    each contiguous expert group whole on one node (the same number of groups on every
    node) and each expert's replicas on its node (at most ``min(caps[e], gpn)`` of them),
    as the hierarchical policy places them.

    * Node loads: a node's ranks carry the whole load of its groups, so its busiest rank's
      time is at least that load over the node's speed; the node loads are sums of equally
      many groups each, so :func:`cardinality_bound` over the group loads (and the heaviest
      group) bounds the busiest node's load.
    * Replicas: expert e has at most ``min(caps[e], gpn)`` replicas, one of them at least
      ``w_e`` over that.
    Not a bound on placements of other kinds: the global policy may go below it.

    Args:
        weights: float64 [E]; caps: int64 [E], replica caps; speed: float64 [G].
        group_w: float64 [groups], the load of each group (a multiple of the node count).
        node_speed: float64 [nodes], each node's ranks' speeds summed; gpn: ranks per node.
        fscratch, iscratch: the scratch of a ``workspace`` for >= E experts.
    """
    num_groups = group_w.shape[0]
    order = iscratch[ORDER, :num_groups]
    descending_order(group_w, order, iscratch[SORT_SCRATCH])
    heaviest = fscratch[SHARE, :num_groups]
    for i in range(num_groups):
        heaviest[i] = group_w[order[i]]
    node_load = max(heaviest[0], cardinality_bound(heaviest, node_speed.shape[0],
                                                   fscratch[PREFIX], fscratch[SUFFIX]))
    piece = 0.0
    for e in range(weights.shape[0]):
        piece = max(piece, weights[e] / min(caps[e], gpn))
    return max(node_load / largest(node_speed), piece / largest(speed))


@kernel
def replicated_bound(weights, counts, speed):
    """:func:`layer_bound` for P != E from ``counts`` (int64 [E]) that are already the
    water-filled counts of P replicas under a cap of G per expert (P <= E * G): their
    largest replica is ``T*``, so the solver's own water-filling gives the bound for free."""
    return max(total(weights) / total(speed),
               max_replica_load(weights, counts) / largest(speed))


@njit(cache=True, nogil=True)
def layer_lower_bounds(weights, num_slots, speed, out):
    """:func:`layer_bound` of every layer of ``weights`` float64 [L, E] into ``out`` float64 [L]."""
    fscratch, iscratch = workspace(weights.shape[1], np.int64(1), np.int64(1))
    for layer in range(weights.shape[0]):
        out[layer] = layer_bound_with(weights[layer], num_slots, speed, fscratch, iscratch)
