"""Swap search over replicas whose load does not depend on where they sit.

Under even dispatch every replica carries ``w_e / c_e`` wherever it is placed; under nearest
dispatch so does the only replica of an expert (all sources use it). For such replicas a swap
of slots p and q (on ranks g1 and g2) changes only the loads of g1 and g2, by
``+-(w_q - w_p)``, and the layer's traffic cost by exactly

    (token_cost[e1, g2] - token_cost[e1, g1]) / c1 + (token_cost[e2, g1] - token_cost[e2, g2]) / c2

At zero slack almost every rank sits within a few tokens of the cap, so only partners of
nearly the same load fit: the slots are kept sorted by load once (a swap exchanges the slots'
contents, not the multiset of loads), and each slot scans only the window of loads that can
fit, found by binary search. For each slot in order the best feasible swap is applied; sweeps
repeat until none gains more than ``min_gain``. When many loads fit (slack, or ranks well
below the cap) only the ``MAX_PARTNERS`` nearest in load are scanned. Deterministic (fixed order, ties to the lowest
slot).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Partners scanned per slot at most (those nearest in load): bounds a sweep to O(P) work
# when the load window is wide, as with slack or after a re-packing left ranks below the cap.
MAX_PARTNERS = 8


@njit(cache=True, nogil=True)
def exchange_slots(slot_e, has, slots, p, q):
    """Swaps the experts of flat slots ``p`` and ``q`` (slot_e int64 [G * slots]) and their
    counts in ``has`` int [G, E] (replicas of each expert per rank)."""
    g1 = p // slots
    g2 = q // slots
    e1 = slot_e[p]
    e2 = slot_e[q]
    slot_e[p] = e2
    slot_e[q] = e1
    has[g1, e1] -= 1
    has[g2, e1] += 1
    has[g2, e2] -= 1
    has[g1, e2] += 1


@njit(cache=True, nogil=True)
def _headroom(load, limit):
    """The most load any rank can still take (>= 0); float64 [G] each."""
    room = 0.0
    for g in range(load.shape[0]):
        room = max(room, limit[g] - load[g])
    return room


@njit(cache=True, nogil=True)
def _reach(token_cost, e, g, c, node_of_rank, keep_node):
    """(token_cost[e, g] - min over the ranks it may move to of token_cost[e]) / c: what a
    replica on rank g of expert e with c replicas gains at most by moving (token_cost
    float64 [E, G]); the ranks of g's node only under ``keep_node`` (node_of_rank int64 [G])."""
    low = token_cost[e, g]
    for r in range(token_cost.shape[1]):
        if not keep_node or node_of_rank[r] == node_of_rank[g]:
            low = min(low, token_cost[e, r])
    return (token_cost[e, g] - low) / c


@njit(cache=True, nogil=True)
def _first_above(values, x, strict):
    """The first index k of ascending ``values`` (float64 [n]) with values[k] > x (strict) or
    >= x (not strict), n if none: ``np.searchsorted`` without its per-call overhead."""
    low = 0
    high = values.shape[0]
    while low < high:
        mid = (low + high) >> 1
        if values[mid] > x or (not strict and values[mid] == x):
            high = mid
        else:
            low = mid + 1
    return low


@njit(cache=True, nogil=True)
def fixed_load_swaps(slot_e, slots, cnt, slot_load, movable, load, limit, token_cost,
                     node_of_rank, keep_node, min_gain, max_sweeps):
    """Swaps replicas of fixed load to cut traffic; edits ``slot_e`` and ``load`` in place.

    Args:
        slot_e: int64 [P], expert of each slot (one layer).
        slots: S, slots per rank.
        cnt: int64 [E], replicas per expert.
        slot_load: float64 [P], load of each slot's replica on entry (it moves with the
            replica; read once).
        movable: bool [P], whether slot p's replica has a fixed load (the others stay put).
        load: float64 [G], rank loads; limit: float64 [G], the most load a rank may carry
            after a swap that raises it.
        token_cost: float64 [E, G], cost of all of e's tokens served on rank g.
        node_of_rank: int64 [G]; keep_node: only swap within a node.
        min_gain: swaps must cut the traffic cost by more than this.
        max_sweeps: passes over all slots.

    Returns:
        (swaps applied, traffic cost change: <= 0).
    """
    num_slots = slot_e.shape[0]
    num_ranks = load.shape[0]
    num_experts = cnt.shape[0]
    # Rank of each slot, looked up instead of divided out in the partner scan.
    rank_of = np.empty(num_slots, dtype=np.int64)
    for p in range(num_slots):
        rank_of[p] = p // slots
    # The most a slot's replica could gain by moving anywhere it may go: a swap gains at most
    # the sum of its two slots' (exact bound, as the cost is a sum over replicas). When no
    # two slots together can gain min_gain there is nothing to search: at zero slack on
    # hierarchical layers (moves within a node, whose ranks' costs differ only by NUMA and
    # rank locality) that is the common case.
    reach = np.empty(num_slots, dtype=np.float64)
    first = second = 0.0
    for p in range(num_slots):
        reach[p] = _reach(token_cost, slot_e[p], rank_of[p], cnt[slot_e[p]], node_of_rank,
                          keep_node)
        if movable[p] and reach[p] > second:
            first, second = max(first, reach[p]), min(first, reach[p])
    if first + second <= min_gain:
        return 0, 0.0
    has = np.zeros((num_ranks, num_experts), dtype=np.int64)
    for p in range(num_slots):
        has[rank_of[p], slot_e[p]] += 1
    # Slots by ascending load; a swap exchanges two entries of by_slot (the loads stay).
    by_slot = np.argsort(slot_load, kind="mergesort")
    sorted_load = np.empty(num_slots, dtype=np.float64)
    where = np.empty(num_slots, dtype=np.int64)
    for k in range(num_slots):
        sorted_load[k] = slot_load[by_slot[k]]
        where[by_slot[k]] = k
    swaps = 0
    change = 0.0
    for _ in range(max_sweeps):
        top_reach = reach.max()
        improved = 0
        room = _headroom(load, limit)
        for p in range(num_slots):
            if not movable[p] or reach[p] + top_reach <= min_gain:
                continue
            e1 = slot_e[p]
            g1 = rank_of[p]
            w1 = sorted_load[where[p]]
            c1 = cnt[e1]
            tol = 1e-9 * (load[g1] + w1)
            high = w1 + max(0.0, limit[g1] - load[g1]) + tol
            k = _first_above(sorted_load, w1 - room - tol, False)
            end = _first_above(sorted_load, high, True)
            if end - k > MAX_PARTNERS:
                # A wide window (slack, or ranks well below the cap): the partners nearest
                # in load only.
                k = min(max(k, where[p] - MAX_PARTNERS // 2), end - MAX_PARTNERS)
                end = k + MAX_PARTNERS
            best_gain = min_gain
            best_q = -1
            while k < end:
                q = by_slot[k]
                k += 1
                g2 = rank_of[q]
                e2 = slot_e[q]
                if g2 == g1 or e2 == e1 or not movable[q]:
                    continue
                if keep_node and node_of_rank[g2] != node_of_rank[g1]:
                    continue
                if reach[p] + reach[q] <= best_gain or has[g2, e1] > 0 or has[g1, e2] > 0:
                    continue
                w2 = sorted_load[k - 1]
                gain = ((token_cost[e1, g1] - token_cost[e1, g2]) / c1
                        + (token_cost[e2, g2] - token_cost[e2, g1]) / cnt[e2])
                # Equal gains go to the lowest slot, whatever order the loads come in.
                if gain < best_gain or (gain == best_gain and (best_q < 0 or q > best_q)):
                    continue
                new1 = load[g1] - w1 + w2
                new2 = load[g2] - w2 + w1
                if (new1 > load[g1] and new1 > limit[g1]) or (
                        new2 > load[g2] and new2 > limit[g2]):
                    continue
                best_gain = gain
                best_q = q
            if best_q < 0:
                continue
            q = best_q
            g2 = rank_of[q]
            e2 = slot_e[q]
            w2 = sorted_load[where[q]]
            exchange_slots(slot_e, has, slots, p, q)
            load[g1] += w2 - w1
            load[g2] += w1 - w2
            kp = where[p]
            kq = where[q]
            by_slot[kp] = q
            by_slot[kq] = p
            where[p] = kq
            where[q] = kp
            reach[p] = _reach(token_cost, e2, g1, cnt[e2], node_of_rank, keep_node)
            reach[q] = _reach(token_cost, e1, g2, c1, node_of_rank, keep_node)
            change -= best_gain
            swaps += 1
            improved += 1
            room = _headroom(load, limit)
        if improved == 0:
            break
    return swaps, change
