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
   their node. Where swaps are stuck above ``cap``, its exchanges of two replicas for two.

The caller keeps the result only if every rank stays within its limit (checked exactly, under
the dispatch model) and the traffic cost drops; otherwise the layer is left as it was.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..solver.jit import kernel
from ..solver.pack import first_lightest, heaviest_first, repair_duplicates
from ..solver.refine import refine_slots, sort_row
from ..solver.workspace import workspace

# Pair exchanges when the swap search is stuck above the cap: against this many of the
# lightest ranks, at most this many exchanges (each followed by the swap search again).
PAIR_PARTNERS = 4
PAIR_STEPS = 8
# Shares of a node's load capacity and slots that pinned replicas may fill, tried in order.
PIN_FILLS = (0.99, 0.95, 0.9, 0.85, 0.75, 0.5)


@kernel
def node_means(values, node_ranks, out):
    """out[e, n] (float64 [E, nodes]) = the mean of values[e, r] (float64 [E, G]) over node
    n's ranks r (node_ranks int64 [nodes, gpn], summed in that order): with values the token
    costs, what all of e's tokens cost on node n."""
    nodes, gpn = node_ranks.shape
    for e in range(values.shape[0]):
        row = values[e]
        for n in range(nodes):
            acc = 0.0
            for i in range(gpn):
                acc += row[node_ranks[n, i]]
            out[e, n] = acc / gpn


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
    # Each expert's cheapest node, the first on ties (what _by_preference puts first).
    cheapest = np.empty(num_experts, dtype=np.int64)
    for e in range(num_experts):
        total = 0.0
        low = np.inf
        cheapest[e] = 0
        for n in range(nodes):
            total += pref[e, n]
            if pref[e, n] < low:
                low = pref[e, n]
                cheapest[e] = n
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
        # A second copy on a node serves no new sources under nearest dispatch. Only then
        # is the whole order needed (sorting every expert's nodes was 5% of a solve).
        spread = nearest and cnt[e] > 1
        if spread:
            _by_preference(pref, e, order)
        for k in range(cnt[e]):
            # Even dispatch: every replica wants the best node; nearest: spread over the best.
            n = order[k % nodes] if spread else cheapest[e]
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
    """Packs the replicas of ``slot_e`` (int64 [P]) again, nodes first; writes ``out`` [P]
    (each rank's slots in no particular order).

    Args:
        weights: float64 [E] expert loads; cnt: int64 [E] replicas per expert.
        pref: float64 [E, nodes], what all of e's tokens cost on node n (mean over its ranks).
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
    # Replicas per (rank, expert): at most S, and int16 keeps the matrix in cache.
    has = np.zeros((num_ranks, num_experts), dtype=np.int16)
    stacked = _lpt(item_e, item_w, item_node, speed, node_ranks, forbid_dup, slot_e2, slot_w2,
                   load, has)
    if stacked > 0 and forbid_dup:
        repair_duplicates(slot_e2, slot_w2, load, speed, has)
    # Only down to the cap: a packing within it is all the caller needs, and every swap
    # more may move a pinned replica off its node. Most packings fit at once; the search's
    # setup (a sort of every replica, 200 KB of scratch) is then skipped, and only its
    # slot order is reproduced (the swaps that may follow visit slots in order). Times as
    # the search computes them (load * (1 / speed)), so that it would stop at once here too.
    over = False
    for r in range(num_ranks):
        over = over or load[r] * (1.0 / speed[r]) > cap
    if over:
        fscratch, iscratch = workspace(num_experts, num_ranks, slots)
        # Typed counts, not the literal constants: one compiled refine_slots for every
        # caller (plumb.solver.jit).
        refine_slots(slot_e2, slot_w2, load, speed, has, forbid_dup, 4 * num_items + 16,
                     np.int64(PAIR_STEPS), np.int64(PAIR_PARTNERS), cap, fscratch, iscratch)
    else:
        for r in range(num_ranks):
            sort_row(slot_e2, slot_w2, r)
    # Slot order within a rank is the caller's to fix (canonical order once, at the end).
    for r in range(num_ranks):
        for k in range(slots):
            out[r * slots + k] = slot_e2[r, k]


@njit(cache=True, nogil=True)
def _lpt(item_e, item_w, item_node, speed, node_ranks, forbid_dup, slot_e, slot_w, load, has):
    """LPT of the items (heaviest first) onto the ranks, each to the least loaded rank (by
    load / speed, ties to the lower index) with a free slot among its node's ranks (any rank
    when item_node is -1) that does not hold its expert; stacked there only when every rank
    with room does. Fills slot_e / slot_w [G, S], load [G] (zero on entry) and has [G, E];
    returns how many items were stacked.

    The lightest rank is the first minimum of a row of times (+inf where an item may not go),
    found branch-free over their bits as in the solver's LPT: ``node_time`` holds each node's
    ranks in node_ranks order (the ties of a pinned item), ``free_time`` every rank in index
    order (those of free items), +inf once the rank is full or its node has no spare slot.
    """
    num_ranks, slots = slot_e.shape
    nodes, gpn = node_ranks.shape
    fill = np.zeros(num_ranks, dtype=np.int64)
    # Free slots of each node not promised to its pinned items yet: free items may only
    # take the rest, so that every pinned item finds a slot on its node.
    spare = np.full(nodes, gpn * slots, dtype=np.int64)
    node_of = np.empty(num_ranks, dtype=np.int64)
    position = np.empty(num_ranks, dtype=np.int64)
    for n in range(nodes):
        for k in range(gpn):
            node_of[node_ranks[n, k]] = n
            position[node_ranks[n, k]] = n * gpn + k
    for i in range(item_node.shape[0]):
        if item_node[i] >= 0:
            spare[item_node[i]] -= 1
    # Times start at +0.0 and only grow, never -0.0: they order as their bits.
    node_time = np.zeros(num_ranks, dtype=np.float64)
    free_time = np.zeros(num_ranks, dtype=np.float64)
    for r in range(num_ranks):
        if spare[node_of[r]] <= 0:
            free_time[r] = np.inf
    node_bits = node_time.view(np.int64)
    free_bits = free_time.view(np.int64)
    stacked = 0
    for i in heaviest_first(item_w):
        e = item_e[i]
        n = item_node[i]
        if n < 0:
            best = first_lightest(free_bits)
        else:
            best = node_ranks[n, first_lightest(node_bits[n * gpn:(n + 1) * gpn])]
        if forbid_dup and has[best, e] > 0:
            best = _lightest_allowed_without(free_time if n < 0 else node_time, has, e, n,
                                             node_ranks, best)
            stacked += has[best, e] > 0
        if n < 0:
            spare[node_of[best]] -= 1
            if spare[node_of[best]] == 0:
                for k in range(gpn):
                    free_time[node_ranks[node_of[best], k]] = np.inf
        slot_e[best, fill[best]] = e
        slot_w[best, fill[best]] = item_w[i]
        fill[best] += 1
        load[best] += item_w[i]
        time = load[best] / speed[best] if fill[best] < slots else np.inf
        node_time[position[best]] = time
        if free_time[best] < np.inf:
            free_time[best] = time
        has[best, e] += 1
    return stacked


@njit(cache=True, nogil=True)
def _lightest_allowed_without(times, has, e, n, node_ranks, lightest):
    """The rank for an item of expert e whose lightest allowed rank ``lightest`` holds e
    already (``_lpt``): the first of smallest time (``times``: ``_lpt``'s free_time when n
    is -1, else its node_time) among those allowed that do not hold e; ``lightest`` itself
    when every allowed rank with room holds e."""
    gpn = node_ranks.shape[1]
    best = -1
    best_time = np.inf
    for k in range(times.shape[0] if n < 0 else gpn):
        r = k if n < 0 else node_ranks[n, k]
        t = times[k if n < 0 else n * gpn + k]
        if t < np.inf and has[r, e] == 0 and (best < 0 or t < best_time):
            best = r
            best_time = t
    return lightest if best < 0 else best
