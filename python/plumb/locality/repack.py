"""Traffic-driven re-packing of one layer: the big step of the locality pass.

A balanced placement leaves little room for swaps at zero slack: every rank sits near the
maximum, so exchanging two experts of different loads overflows one of the two ranks. Instead
the layer is packed again with the same replicas (same logcnt):

1. each expert's tokens would cost ``pref[e, n]`` if served on node n (mean over the node's
   ranks). Replicas with the largest benefit (mean over nodes minus the best node) are
   pinned to their best node (under nearest dispatch, the replicas of one expert go to its
   best, second best, ... nodes) while the node's pinned load stays below ``pin_fill`` of its
   capacity, so that free replicas remain to even out the loads (the caller tries the levels
   of ``PIN_FILLS``: more pinning cuts more traffic, less balances tighter). Under nearest
   dispatch the free replicas then get nodes too (node-level LPT, spreading each expert's
   replicas), since a replica's load depends on which node's sources it serves
   (``_routed_weights``);
2. one LPT over all ranks, heaviest replica first, each to the least loaded rank with a free
   slot (of its node, when it has one) that does not hold its expert yet;
3. only while a rank is above ``cap``: the solver's swap search over all ranks
   (``plumb.solver.refine.refine_slots`` with ``cap`` as its floor), which may move free and
   pinned replicas alike; it stops as soon as the layer fits, so few pinned replicas leave
   their node. Where swaps are stuck above ``cap``, exchanges of two replicas for two
   (``pair_polish``).

The caller keeps the result only if every rank stays within its limit (checked exactly, under
the dispatch model) and the traffic cost drops; otherwise the layer is left as it was.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..solver.pack import heaviest_first, repair_duplicates, swap_items
from ..solver.placement import canonical_slots
from ..solver.refine import refine_slots
from ..solver.workspace import workspace

# Pair exchanges when the swap search is stuck above the cap: against this many of the
# lightest ranks, at most this many exchanges (each followed by the swap search again).
PAIR_PARTNERS = 4
PAIR_STEPS = 8
# Shares of a node's load capacity and slots that pinned replicas may fill, tried in order.
PIN_FILLS = (0.99, 0.95, 0.9, 0.85, 0.75, 0.5)


@njit(cache=True, nogil=True)
def node_preferences(token_cost, node_ranks):
    """float64 [E, nodes]: mean over node n's ranks of token_cost [E, G] (all of e's tokens
    served on that rank)."""
    num_experts = token_cost.shape[0]
    nodes, gpn = node_ranks.shape
    # Rank by rank over all experts: E independent sums instead of one serial chain each
    # (the same order of additions per entry).
    total = np.zeros((nodes, num_experts), dtype=np.float64)
    for n in range(nodes):
        for i in range(gpn):
            r = node_ranks[n, i]
            for e in range(num_experts):
                total[n, e] += token_cost[e, r]
    pref = np.empty((num_experts, nodes), dtype=np.float64)
    for e in range(num_experts):
        for n in range(nodes):
            pref[e, n] = total[n, e] / gpn
    return pref


@njit(cache=True, nogil=True)
def _by_preference(pref, e, order):
    """order[:nodes] (int64): nodes by ascending pref[e] (pref float64 [E, nodes]), ties by
    index; insertion sort, as there are few nodes (no allocation or view per expert)."""
    for n in range(pref.shape[1]):
        j = n
        while j > 0 and pref[e, order[j - 1]] > pref[e, n]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = n


@njit(cache=True, nogil=True)
def _assign_nodes(cnt, first, item_e, item_w, pref, node_cap, node_slots, gpn, nearest,
                  pin_fill, item_node):
    """Node of each replica (item k = k-th replica in expert order, of expert item_e[k];
    first[e] = e's first item), -1 for free ones: pinned, then (nearest dispatch only) the
    free replicas by node LPT."""
    num_experts, nodes = pref.shape
    benefit = np.empty(num_experts, dtype=np.float64)
    for e in range(num_experts):
        total = 0.0
        low = np.inf
        for n in range(nodes):
            total += pref[e, n]
            low = min(low, pref[e, n])
        # Clipped at 0: rounding may leave a tiny negative where every node costs the same.
        benefit[e] = max(0.0, total / nodes - low)
    node_load = np.zeros(nodes, dtype=np.float64)
    node_fill = np.zeros(nodes, dtype=np.int64)
    copies = np.zeros((nodes, num_experts), dtype=np.int64)
    order = np.empty(nodes, dtype=np.int64)
    item_node[:] = -1
    by_benefit = heaviest_first(benefit)
    for e in by_benefit:
        if benefit[e] <= 0.0:
            break
        # A second copy on a node serves no new sources under nearest dispatch.
        _by_preference(pref, e, order)
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
    if not nearest:
        return
    for i in heaviest_first(item_w):
        if item_node[i] >= 0:
            continue
        e = item_e[i]
        best = -1
        for allow_copy in range(2):
            for n in range(nodes):
                if node_fill[n] >= node_slots or (allow_copy == 0 and copies[n, e] > 0):
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
def _routed_weights(cnt, first, weights, node_share, item_node, item_w):
    """Under nearest dispatch, each replica's load once its node is known (item_w, float64
    [P], output).

    A node's sources use the replicas on their own node (split evenly between them); sources
    on nodes without a replica tie over all of them (every cross-node link costs the same on
    a level topology; elsewhere this is an estimate, the caller checks the packing exactly).
    node_share: float64 [E, nodes], each node's share of the expert's sources.
    """
    nodes = node_share.shape[1]
    held = np.zeros(nodes, dtype=np.int64)
    for e in range(cnt.shape[0]):
        c = cnt[e]
        held[:] = 0
        for k in range(c):
            held[item_node[first[e] + k]] += 1
        orphan = 0.0
        for n in range(nodes):
            if held[n] == 0:
                orphan += node_share[e, n]
        for k in range(c):
            n = item_node[first[e] + k]
            item_w[first[e] + k] = weights[e] * (node_share[e, n] / held[n] + orphan / c)


@njit(cache=True, nogil=True)
def repack_layer(slot_e, slots, weights, cnt, pref, node_share, speed, node_ranks, nearest,
                 forbid_dup, pin_fill, cap, out):
    """Packs the replicas of ``slot_e`` (int64 [P]) again, nodes first; writes ``out`` [P].

    Args:
        weights: float64 [E] expert loads; cnt: int64 [E] replicas per expert.
        pref: float64 [E, nodes] (node_preferences).
        node_share: float64 [E, nodes], each node's share of e's sources (nearest only).
        speed: float64 [G]; node_ranks: int64 [nodes, gpn].
        forbid_dup: whether two replicas of one expert may not share a rank.
        pin_fill: share (0, 1] of each node's load capacity and slots pinned replicas may fill.
        cap: the swap search runs only when some rank's load / speed exceeds this.

    Rank loads in ``out`` are balanced on the replica loads the dispatch model predicts
    (even: w_e / c_e; nearest: ``_routed_weights``); the caller checks them exactly.
    """
    num_ranks = speed.shape[0]
    num_experts = cnt.shape[0]
    nodes, gpn = node_ranks.shape
    num_items = slot_e.shape[0]
    item_e = np.empty(num_items, dtype=np.int64)
    item_w = np.empty(num_items, dtype=np.float64)
    first = np.empty(num_experts, dtype=np.int64)
    k = 0
    for e in range(num_experts):
        first[e] = k
        for _ in range(cnt[e]):
            item_e[k] = e
            item_w[k] = weights[e] / cnt[e]
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
    _assign_nodes(cnt, first, item_e, item_w, pref, node_cap, gpn * slots, gpn, nearest,
                  pin_fill, item_node)
    if nearest:
        _routed_weights(cnt, first, weights, node_share, item_node, item_w)
    slot_e2 = np.empty((num_ranks, slots), dtype=np.int64)
    slot_w2 = np.empty((num_ranks, slots), dtype=np.float64)
    load = np.zeros(num_ranks, dtype=np.float64)
    has = np.zeros((num_ranks, num_experts), dtype=np.int64)
    stacked = _lpt(item_e, item_w, item_node, speed, node_ranks, forbid_dup, slot_e2, slot_w2,
                   load, has)
    if stacked > 0 and forbid_dup:
        repair_duplicates(slot_e2, slot_w2, load, speed, has)
    # Only down to the cap: a packing within it is all the caller needs, and every swap
    # more may move a pinned replica off its node.
    fscratch, iscratch = workspace(num_experts, num_ranks, slots)
    refine_slots(slot_e2, slot_w2, load, speed, has, forbid_dup, 4 * num_items + 16, 0, 0, cap,
                 fscratch, iscratch)
    pair_polish(slot_e2, slot_w2, load, speed, has, forbid_dup, cap, PAIR_PARTNERS, PAIR_STEPS)
    canonical_slots(slot_e2, out)


@njit(cache=True, nogil=True)
def _lpt(item_e, item_w, item_node, speed, node_ranks, forbid_dup, slot_e, slot_w, load, has):
    """LPT of the items (heaviest first) onto the ranks, each to the least loaded rank (by
    load / speed, ties to the lower index) with a free slot among its node's ranks (any rank
    when item_node is -1) that does not hold its expert; stacked there only when every rank
    with room does. Fills slot_e / slot_w [G, S], load [G] (zero on entry) and has [G, E];
    returns how many items were stacked."""
    num_ranks, slots = slot_e.shape
    nodes, gpn = node_ranks.shape
    fill = np.zeros(num_ranks, dtype=np.int64)
    # Free slots of each node not promised to its pinned items yet: free items may only
    # take the rest, so that every pinned item finds a slot on its node.
    spare = np.full(nodes, gpn * slots, dtype=np.int64)
    node_of = np.empty(num_ranks, dtype=np.int64)
    for n in range(nodes):
        for k in range(gpn):
            node_of[node_ranks[n, k]] = n
    for i in range(item_node.shape[0]):
        if item_node[i] >= 0:
            spare[item_node[i]] -= 1
    # load / speed of each rank, kept up to date (no divisions in the scans).
    time = np.zeros(num_ranks, dtype=np.float64)
    stacked = 0
    for i in heaviest_first(item_w):
        e = item_e[i]
        n = item_node[i]
        best = -1
        best_dup = -1
        for k in range(num_ranks if n < 0 else gpn):
            r = k if n < 0 else node_ranks[n, k]
            if fill[r] >= slots or (n < 0 and spare[node_of[r]] <= 0):
                continue
            if forbid_dup and has[r, e] > 0:
                if best_dup < 0 or time[r] < time[best_dup]:
                    best_dup = r
                continue
            if best < 0 or time[r] < time[best]:
                best = r
        if best < 0:
            best = best_dup
            stacked += 1
        if n < 0:
            spare[node_of[best]] -= 1
        slot_e[best, fill[best]] = e
        slot_w[best, fill[best]] = item_w[i]
        fill[best] += 1
        load[best] += item_w[i]
        time[best] = load[best] / speed[best]
        has[best, e] += 1
    return stacked


@njit(cache=True, nogil=True)
def _pair_sums(slot_e, slot_w, r, sums, first, second):
    """All sums of two of rank r's slot loads, ascending, with the two slots of each; returns
    how many (S (S - 1) / 2). sums float64, first/second int64 [>= that many]."""
    slots = slot_e.shape[1]
    count = 0
    for i in range(slots):
        for j in range(i + 1, slots):
            v = slot_w[r, i] + slot_w[r, j]
            k = count
            while k > 0 and sums[k - 1] > v:
                sums[k] = sums[k - 1]
                first[k] = first[k - 1]
                second[k] = second[k - 1]
                k -= 1
            sums[k] = v
            first[k] = i
            second[k] = j
            count += 1
    return count


@njit(cache=True, nogil=True)
def pair_polish(slot_e, slot_w, load, speed, has, forbid_dup, cap, partners, max_steps):
    """While the busiest rank's load / speed exceeds ``cap``: the exchange of two of its
    replicas with two of one of the ``partners`` lightest ranks that lowers the larger of the
    two ranks' times most (below the busiest one's), then the solver's swap search again
    (down to ``cap``).

    For each pair on the busiest rank the best partner pair is found by binary search over
    the partner's sorted pair sums (outwards while creating a duplicate), so a step costs
    O(partners S^2 log S) rather than the S^4 of the solver's own pair exchanges (a rank
    holds 16 slots and more on 16 ranks). Arrays as in plumb.solver.refine.refine_swaps,
    edited in place; returns the exchanges applied. The maximum never gets worse.
    """
    bins, slots = slot_e.shape
    num_pairs = slots * (slots - 1) // 2
    sums = np.empty(num_pairs, dtype=np.float64)
    first = np.empty(num_pairs, dtype=np.int64)
    second = np.empty(num_pairs, dtype=np.int64)
    order = np.empty(bins, dtype=np.int64)
    time = np.empty(bins, dtype=np.float64)
    fscratch, iscratch = workspace(1, bins, slots)
    for step in range(max_steps):
        for r in range(bins):
            time[r] = load[r] / speed[r]
        order[:] = np.argsort(time, kind="mergesort")
        h = order[bins - 1]
        if time[h] <= cap:
            return step
        best = time[h]
        best_r = best_i = best_j = best_k = best_m = -1
        for t in range(min(partners, bins - 1)):
            r = order[t]
            sh = speed[h]
            sr = speed[r]
            # Moving d from h to r evens the two out at d = target.
            target = (load[h] * sr - load[r] * sh) / (sh + sr)
            count = _pair_sums(slot_e, slot_w, r, sums, first, second)
            for i in range(slots):
                ei = slot_e[h, i]
                if forbid_dup and has[r, ei] > 0:
                    continue
                for j in range(i + 1, slots):
                    ej = slot_e[h, j]
                    if forbid_dup and has[r, ej] > 0:
                        continue
                    a = slot_w[h, i] + slot_w[h, j]
                    start = np.searchsorted(sums[:count], a - target)
                    for direction in (1, -1):
                        k = start if direction == 1 else start - 1
                        while 0 <= k < count:
                            fk = slot_e[r, first[k]]
                            fm = slot_e[r, second[k]]
                            if forbid_dup and (has[h, fk] > 0 or has[h, fm] > 0):
                                k += direction
                                continue
                            d = a - sums[k]
                            worse = max((load[h] - d) / sh, (load[r] + d) / sr)
                            if d > 0 and worse < best:
                                best = worse
                                best_r, best_i, best_j = r, i, j
                                best_k, best_m = first[k], second[k]
                            break
        if best_r < 0:
            return step
        swap_items(slot_e, slot_w, load, has, h, best_i, best_r, best_k)
        swap_items(slot_e, slot_w, load, has, h, best_j, best_r, best_m)
        refine_slots(slot_e, slot_w, load, speed, has, forbid_dup, 4 * slot_e.size + 16, 0, 0,
                     cap, fscratch, iscratch)
    return max_steps
