"""Traffic-driven re-packing of one layer: the big step of the locality pass.

A balanced placement leaves little room for swaps at zero slack: every rank sits near the
maximum, so exchanging two experts of different loads overflows one of the two ranks. Instead
the layer is packed again with the same replicas (same logcnt), nodes first:

1. each expert's tokens would cost ``pref[e, n]`` if served on node n (mean over the node's
   ranks). Replicas with the largest benefit (mean over nodes minus the
   best node) are pinned to their best node (under nearest dispatch, the replicas of one
   expert go to its best, second best, ... nodes) while the node's pinned load stays below
   ``pin_fill`` of its capacity, so that free replicas remain to even out the loads (the
   caller tries the levels of ``PIN_FILLS``: more pinning cuts more traffic, less balances
   tighter);
2. the free replicas go heaviest first to the node with the lowest load / capacity that still
   has slots (node-level LPT);
3. each node packs its replicas onto its ranks with the solver's LPT and swap search
   (plumb.solver.pack / refine), then the solver's swap search runs once more over all ranks.

The result replaces the layer only if every rank stays within its limit (checked exactly,
under the dispatch model) and the traffic cost drops; otherwise the layer is left as it was.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..solver.pack import lpt_pack, repair_duplicates
from ..solver.refine import refine_swaps

# Shares of a node's load capacity and slots that pinned replicas may fill, tried in order.
PIN_FILLS = (0.97, 0.93, 0.9, 0.85, 0.75, 0.5)


@njit(cache=True, nogil=True)
def node_preferences(token_cost, node_ranks):
    """float64 [E, nodes]: mean over node n's ranks of token_cost [E, G] (all of e's tokens
    served on that rank)."""
    num_experts = token_cost.shape[0]
    nodes, gpn = node_ranks.shape
    pref = np.zeros((num_experts, nodes), dtype=np.float64)
    for e in range(num_experts):
        for n in range(nodes):
            for i in range(gpn):
                pref[e, n] += token_cost[e, node_ranks[n, i]] / gpn
    return pref


@njit(cache=True, nogil=True)
def _assign_nodes(cnt, item_e, item_w, pref, node_cap, node_slots, gpn, nearest, pin_fill,
                  item_node):
    """Node of each replica (item k = k-th replica in expert order, of expert item_e[k]):
    pinned, then node LPT."""
    num_experts, nodes = pref.shape
    benefit = np.empty(num_experts, dtype=np.float64)
    for e in range(num_experts):
        benefit[e] = pref[e].mean() - pref[e].min()
    node_load = np.zeros(nodes, dtype=np.float64)
    node_fill = np.zeros(nodes, dtype=np.int64)
    copies = np.zeros((nodes, num_experts), dtype=np.int64)
    item_node[:] = -1
    first = np.zeros(num_experts, dtype=np.int64)
    for e in range(1, num_experts):
        first[e] = first[e - 1] + cnt[e - 1]
    for e in np.argsort(-benefit, kind="mergesort"):
        if benefit[e] <= 0.0:
            break
        order = np.argsort(pref[e], kind="mergesort")
        for k in range(cnt[e]):
            # Even dispatch: every replica wants the best node; nearest: spread over the best.
            n = order[k % nodes] if nearest else order[0]
            w = item_w[first[e] + k]
            if (node_load[n] + w <= pin_fill * node_cap[n]
                    and node_fill[n] + 1 <= pin_fill * node_slots and copies[n, e] < gpn):
                item_node[first[e] + k] = n
                node_load[n] += w
                node_fill[n] += 1
                copies[n, e] += 1
    for i in np.argsort(-item_w, kind="mergesort"):
        if item_node[i] >= 0:
            continue
        e = item_e[i]
        best = -1
        for allow_copy in range(2):
            for n in range(nodes):
                if node_fill[n] >= node_slots or (allow_copy == 0 and copies[n, e] >= gpn):
                    continue
                if best < 0 or node_load[n] / node_cap[n] < node_load[best] / node_cap[best]:
                    best = n
            if best >= 0:
                break
        item_node[i] = best
        node_load[best] += item_w[i]
        node_fill[best] += 1
        copies[best, e] += 1


@njit(cache=True, nogil=True)
def repack_layer(slot_e, slots, item_w, cnt, pref, speed, node_ranks, nearest, forbid_dup,
                 pin_fill, out):
    """Packs the replicas of ``slot_e`` (int64 [P]) again, nodes first; writes ``out`` [P].

    Args:
        item_w: float64 [P], load of the k-th replica in expert order (even dispatch: w_e / c_e).
        cnt: int64 [E] replicas per expert.
        pref: float64 [E, nodes] (node_preferences).
        speed: float64 [G]; node_ranks: int64 [nodes, gpn].
        forbid_dup: whether two replicas of one expert may not share a rank.
        pin_fill: share (0, 1] of each node's load capacity and slots pinned replicas may fill.

    Rank loads in ``out`` are balanced on ``item_w``; the caller checks them exactly.
    """
    num_ranks = speed.shape[0]
    num_experts = cnt.shape[0]
    nodes, gpn = node_ranks.shape
    num_items = slot_e.shape[0]
    item_e = np.empty(num_items, dtype=np.int64)
    k = 0
    for e in range(num_experts):
        for _ in range(cnt[e]):
            item_e[k] = e
            k += 1
    # Fair share of the load by node speed (the node's speed when there is no load at all).
    node_cap = np.zeros(nodes, dtype=np.float64)
    total = item_w.sum()
    for n in range(nodes):
        for i in range(gpn):
            node_cap[n] += speed[node_ranks[n, i]]
    if total > 0.0:
        node_cap *= total / speed.sum()
    item_node = np.empty(num_items, dtype=np.int64)
    _assign_nodes(cnt, item_e, item_w, pref, node_cap, gpn * slots, gpn, nearest, pin_fill,
                  item_node)
    slot_e2 = np.empty((num_ranks, slots), dtype=np.int64)
    slot_w2 = np.empty((num_ranks, slots), dtype=np.float64)
    load = np.empty(num_ranks, dtype=np.float64)
    has = np.zeros((num_ranks, num_experts), dtype=np.int64)
    local_e = np.empty((gpn, slots), dtype=np.int64)
    local_w = np.empty((gpn, slots), dtype=np.float64)
    local_load = np.empty(gpn, dtype=np.float64)
    local_speed = np.empty(gpn, dtype=np.float64)
    local_has = np.zeros((gpn, num_experts), dtype=np.int64)
    for n in range(nodes):
        members = np.flatnonzero(item_node == n)
        for i in range(gpn):
            local_speed[i] = speed[node_ranks[n, i]]
        local_has[:, :] = 0
        stacked = lpt_pack(item_w[members], item_e[members], local_speed, forbid_dup, local_e,
                           local_w, local_load, local_has)
        if stacked > 0 and forbid_dup:
            repair_duplicates(local_e, local_w, local_load, local_speed, local_has)
        refine_swaps(local_e, local_w, local_load, local_speed, local_has, forbid_dup,
                     4 * members.shape[0] + 16)
        for i in range(gpn):
            r = node_ranks[n, i]
            load[r] = local_load[i]
            for j in range(slots):
                slot_e2[r, j] = local_e[i, j]
                slot_w2[r, j] = local_w[i, j]
                has[r, local_e[i, j]] += 1
    refine_swaps(slot_e2, slot_w2, load, speed, has, forbid_dup, 4 * num_items + 16)
    for r in range(num_ranks):
        row = np.sort(slot_e2[r])
        for j in range(slots):
            out[r * slots + j] = row[j]
