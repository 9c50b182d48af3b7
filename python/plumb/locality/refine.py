"""The locality pass: after balancing, cut traffic without making balance worse than allowed.

Per layer, with ``cap = (1 + load_slack) * max(load / speed)`` of the input placement and rank
loads always computed under the dispatch model in use (nearest routing moves load between
replicas):

1. re-packing (plumb.locality.repack): the same replicas packed again, each pinned towards the
   node (NUMA domain on a single node) whose sources send it the most. Pinning levels
   (``PIN_FILLS``) are tried from the most pinned down (at most ``_MAX_PACKINGS``); the first
   packing whose every rank stays within the cap and whose traffic drops is taken. This is
   what moves expert groups across nodes when the balanced solution is tight (at zero slack
   every rank sits within a few tokens of the maximum, so swaps alone find almost nothing).
   At zero slack a layer that takes a re-packing is done.
2. otherwise (or with slack), swaps of replicas whose load does not depend on where they sit (every replica
   under even dispatch, lone replicas under nearest): plumb.locality.swaps, each slot against
   the partners whose load fits.
3. where no re-packing applies (one node and NUMA domain, groups of unequal size,
   hierarchical layers) under nearest dispatch with replicated experts: the exact swap search
   below. ``move[p, g]`` is the exact change of the layer's traffic cost if the replica in
   slot p alone moved to rank g, seeing sources re-route, so it spreads the replicas of an
   expert over the domains whose sources use it; a swap of two different experts gains
   exactly ``-(move[p, g2] + move[q, g1])``. A swap is taken only if every rank whose load
   rises stays within the cap; for each slot in order the best feasible swap is applied, and
   sweeps repeat until none gains more than ``_MIN_GAIN`` of the layer's traffic cost or
   ``max_sweeps``. Target ranks are visited best bound first.

Swaps never put a second replica of an expert on a rank, and slots per rank and replica
counts stay fixed. Hierarchical layers (``keep_node``) skip the re-packing and only swap
within a node: the group-to-node packing that group-limited routing relies on stays intact and
the pass improves NUMA and rank locality. Everything is sequential in a fixed order, so the
result is deterministic.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Optional, Tuple

import numpy as np
from numba import njit

from ..errors import InputError
from ..solver.api import kernel_topology
from ..solver.jit import kernel
from ..solver.placement import canonical_slots
from ..solver.threads import run_layers
from ..topology import Topology, TopologyLike
from .dispatch import expert_routing, prepare, replica_lists, replica_ranks
from .levels import (group_sums, level_cost_at, level_group_means, level_layout,
                     level_token_cost, source_row)
from .repack import PIN_FILLS, node_means, repack_layer
from .swaps import exchange_slots, fixed_load_swaps
from .traffic import NEAREST, as_load_slack, full_tokens

# Swaps gaining less than this fraction of the layer's traffic cost are not taken: thousands
# of such swaps per layer (NUMA reshuffles, multinomial noise) cost most of the search time
# and move the cross-node share by well under 1%.
_MIN_GAIN = 1e-4
# Re-packings tried per layer (the first levels of PIN_FILLS); each costs about one balancing.
_MAX_PACKINGS = 2


@kernel
def _route_expert(e, rep, cnt, slots, weights, tok, shr, cost, level, token_cost, nearest,
                  ranks, rep_load, no_levels):
    """Routes expert e as placed now; rep_load[:c] gets each replica's load; returns its cost.

    tok, shr: float64 [E, G] tokens and source shares (expert-major for contiguous rows);
    token_cost: float64 [E, G], tok @ cost; ranks: int64 scratch; no_levels: float64 [0]
    (tokens per level are not tracked here).
    """
    c = cnt[e]
    if not nearest or c == 1:
        return _spread_cost(e, rep, c, slots, weights[e], token_cost, ranks, rep_load)
    replica_ranks(rep, e, c, slots, ranks)
    return expert_routing(ranks, c, weights[e], tok[e], shr[e], cost, level, nearest, rep_load,
                          no_levels)


@kernel
def _spread_cost(e, rep, c, slots, weight, token_cost, ranks, rep_load):
    """``_route_expert`` when each of e's c replicas serves 1/c of every source (even
    dispatch, or a lone replica under nearest): O(c) from token_cost."""
    total = 0.0
    for i in range(c):
        ranks[i] = rep[e, i] // slots
        rep_load[i] = weight / c
        total += token_cost[e, ranks[i]]
    return total / c


@njit(cache=True, nogil=True)
def _expert_moves(e, rep, cnt, slots, weights, tok, shr, cost, nearest, now, token_cost, move,
                  shift, ranks):
    """Fills ``move[p, :]`` (and ``shift[p, :, :c]`` under nearest) for each replica p of e.

    ``now`` is e's current traffic cost; ``token_cost[e, g]`` the cost of all of e's tokens
    served on rank g. ``shift[p, g, k]``: load of e's k-th replica (in ``rep`` order) if
    replica p alone moved to rank g, so that a swap's exact rank loads cost O(replicas) to check.
    """
    c = cnt[e]
    if not nearest or c == 1:
        _spread_moves(e, rep, c, slots, token_cost, move)
        if nearest:
            # All of e's load wherever the replica sits, as _route_expert counts it.
            shift[rep[e, 0], :, 0] = weights[e]
        return
    _nearest_moves(e, rep, c, slots, weights[e], tok[e], shr[e], cost, now, move, shift,
                   ranks)


@kernel
def _spread_moves(e, rep, c, slots, token_cost, move):
    """``_expert_moves`` when a replica carries 1/c of every source's tokens wherever it sits
    (even dispatch, or a lone replica under nearest): O(G) per replica."""
    for i in range(c):
        p = rep[e, i]
        here = token_cost[e, p // slots]
        for g in range(token_cost.shape[1]):
            move[p, g] = (token_cost[e, g] - here) / c


@njit(cache=True, nogil=True)
def _nearest_moves(e, rep, c, slots, weight, tok, shr, cost, now, move, shift, ranks):
    """``_expert_moves`` under nearest dispatch for an expert with c >= 2 replicas.

    For replica i, each source's nearest cost among the other replicas (and which of them
    tie there) is found once; moving i to rank g then only changes the sources for which g is
    at least as close, so each target rank costs O(G) instead of re-routing all replicas.
    Uses the cost matrix's rows (cost[s, g] is what a token from s pays on rank g).
    tok, shr: float64 [G], the expert's tokens and source shares.
    """
    num_ranks = cost.shape[0]
    nearest_other = np.empty(num_ranks, dtype=np.float64)
    num_tied = np.empty(num_ranks, dtype=np.int64)
    tied = np.empty((num_ranks, c), dtype=np.int64)
    without = np.empty(c, dtype=np.float64)
    total = np.empty(num_ranks, dtype=np.float64)
    replica_ranks(rep, e, c, slots, ranks)
    for i in range(c):
        p = rep[e, i]
        # Loads of the other replicas if replica i were gone.
        without[:c] = 0.0
        for s in range(num_ranks):
            best = np.inf
            t = 0
            for j in range(c):
                if j == i:
                    continue
                v = cost[s, ranks[j]]
                if v < best:
                    best = v
                    t = 0
                if v == best:
                    tied[s, t] = j
                    t += 1
            nearest_other[s] = best
            num_tied[s] = t
            part = weight * shr[s] / t
            for k in range(t):
                without[tied[s, k]] += part
        # Source-major over contiguous cost rows: the cost of every target at once
        # (branch-free), loads only where the target is at least as close as the others.
        total[:] = 0.0
        for k in range(c):
            shift[p, :, k] = without[k]
        shift[p, :, i] = 0.0
        for s in range(num_ranks):
            best = nearest_other[s]
            row = cost[s]
            for g in range(num_ranks):
                total[g] += tok[s] * min(row[g], best)
            t = num_tied[s]
            whole = weight * shr[s]
            for g in range(num_ranks):
                x = row[g]
                if x > best:
                    continue
                # Replica i takes all of source s (closer) or an equal part of it (tied).
                kept = 0.0 if x < best else whole / (t + 1)
                shift[p, g, i] += whole - kept * t
                for k in range(t):
                    shift[p, g, tied[s, k]] -= whole / t - kept
        for g in range(num_ranks):
            move[p, g] = total[g] - now
        # Staying put changes nothing (exactly, whatever the float order above).
        move[p, ranks[i]] = 0.0


@njit(cache=True, nogil=True)
def _layer_state(slot_e, slots, weights, cnt, tok, shr, cost, level, token_cost, levels,
                 nearest, routed, load, expert_cost):
    """Rank loads (into ``load`` [G]) and traffic cost of one layer's placement; cnt: int64
    [E], replicas per expert; token_cost is float64 [E, G] (tok @ cost), or shape [0, 0]
    when not routed on a level topology: then costs come from the layer's ``levels``
    (``plumb.locality.levels.level_cost_at``); routed: some expert has replicas under
    nearest dispatch; expert_cost: float64 [E], scratch."""
    if not routed:
        return _spread_state(slot_e, slots, weights, cnt, token_cost, levels, load,
                             expert_cost)
    rep, _ = replica_lists(slot_e, weights.shape[0])
    ranks = np.empty(rep.shape[1], dtype=np.int64)
    rep_load = np.empty(rep.shape[1], dtype=np.float64)
    no_levels = np.zeros(0, dtype=np.float64)
    load[:] = 0.0
    total = 0.0
    for e in range(weights.shape[0]):
        if nearest and cnt[e] > 1:
            total += _route_expert(e, rep, cnt, slots, weights, tok, shr, cost, level,
                                   token_cost, nearest, ranks, rep_load, no_levels)
        else:
            total += _spread_cost(e, rep, cnt[e], slots, weights[e], token_cost, ranks,
                                  rep_load)
        for i in range(cnt[e]):
            load[ranks[i]] += rep_load[i]
    return total


@kernel
def _spread_state(slot_e, slots, weights, cnt, token_cost, levels, load, expert_cost):
    """``_layer_state`` when every replica serves 1/c of every source: one pass over the
    slots; each expert's cost adds its replicas in slot order (as ``_spread_cost`` does).
    The same floats from the table as from the sums (``level_token_cost`` fills the table
    with ``level_cost_at``)."""
    from_table = token_cost.shape[0] > 0
    expert_cost[:] = 0.0
    load[:] = 0.0
    for p in range(slot_e.shape[0]):
        e = slot_e[p]
        g = p // slots
        expert_cost[e] += token_cost[e, g] if from_table else level_cost_at(levels, e, g)
        load[g] += weights[e] / cnt[e]
    total = 0.0
    for e in range(weights.shape[0]):
        total += expert_cost[e] / cnt[e]
    return total


@kernel
def _rank_min_moves(move, r, slots, out):
    """out[r, g] = min over rank r's slots q of move[q, g]: the most a swap of some replica
    on rank r towards rank g can gain, used to skip whole ranks in the swap search."""
    for g in range(move.shape[1]):
        best = move[r * slots, g]
        for q in range(r * slots + 1, (r + 1) * slots):
            best = min(best, move[q, g])
        out[r, g] = best


@njit(cache=True, nogil=True)
def _sort_rank(r, slots, slot_load, order, by_load):
    """order[r] (int64 [S]): rank r's slots by ascending load (stable); by_load[r]: their loads."""
    idx = np.argsort(slot_load[r * slots:(r + 1) * slots], kind="mergesort")
    for j in range(slots):
        order[r, j] = r * slots + idx[j]
        by_load[r, j] = slot_load[r * slots + idx[j]]


@njit(cache=True, nogil=True)
def _swap_pass(slot_e, slots, weights, tok, shr, cost, level, token_cost, node_of_rank, nearest,
               keep_node, limit, max_sweeps):
    """Swap search for one layer; edits ``slot_e`` (int64 [P]) in place.

    Args:
        weights: float64 [E]; tok, shr: float64 [E, G] tokens and source shares;
        cost: float64 [G, G]; level: int64 [G, G]; node_of_rank: int64 [G].
        token_cost: float64 [E, G], tok @ cost: cost of all of e's tokens served on rank g.
        limit: float64 [G], the most load a rank may carry after a swap that raises it.

    Returns:
        (swaps applied, traffic cost after).
    """
    num_slots = slot_e.shape[0]
    num_ranks = cost.shape[0]
    num_experts = weights.shape[0]
    rep, cnt = replica_lists(slot_e, num_experts)
    max_c = rep.shape[1]
    has = np.zeros((num_ranks, num_experts), dtype=np.int64)
    slot_load = np.zeros(num_slots, dtype=np.float64)
    ecost = np.zeros(num_experts, dtype=np.float64)
    ranks = np.empty(max_c, dtype=np.int64)
    rep_load = np.empty(max_c, dtype=np.float64)
    no_levels = np.zeros(0, dtype=np.float64)
    for p in range(num_slots):
        has[p // slots, slot_e[p]] += 1
    load = np.zeros(num_ranks, dtype=np.float64)
    for e in range(num_experts):
        if nearest and cnt[e] > 1:
            ecost[e] = _route_expert(e, rep, cnt, slots, weights, tok, shr, cost, level,
                                     token_cost, nearest, ranks, rep_load, no_levels)
        else:
            ecost[e] = _spread_cost(e, rep, cnt[e], slots, weights[e], token_cost, ranks,
                                    rep_load)
        for i in range(cnt[e]):
            slot_load[rep[e, i]] = rep_load[i]
            load[rep[e, i] // slots] += rep_load[i]
    move = np.zeros((num_slots, num_ranks), dtype=np.float64)
    shift = np.zeros((num_slots if nearest else 1, num_ranks, max_c), dtype=np.float64)
    for e in range(num_experts):
        if nearest and cnt[e] > 1:
            _expert_moves(e, rep, cnt, slots, weights, tok, shr, cost, nearest, ecost[e],
                          token_cost, move, shift, ranks)
        else:
            _spread_moves(e, rep, cnt[e], slots, token_cost, move)
    if nearest:
        for e in range(num_experts):
            if cnt[e] == 1:
                shift[rep[e, 0], :, 0] = weights[e]
    eps = _MIN_GAIN * (ecost.sum() + 1.0)
    min_move = np.empty((num_ranks, num_ranks), dtype=np.float64)
    for r in range(num_ranks):
        _rank_min_moves(move, r, slots, min_move)
    # Even dispatch: each rank's slots by load, so that the search visits only the replicas
    # whose load keeps both ranks within their limits (a narrow window at zero slack).
    order = np.empty((num_ranks, slots), dtype=np.int64)
    by_load = np.empty((num_ranks, slots), dtype=np.float64)
    if not nearest:
        for r in range(num_ranks):
            _sort_rank(r, slots, slot_load, order, by_load)
    # Scratch for the exact load check under nearest dispatch.
    delta = np.zeros(num_ranks, dtype=np.float64)
    touched = np.empty(4 * max_c, dtype=np.int64)
    bound = np.empty(num_ranks, dtype=np.float64)
    open_ranks = np.empty(num_ranks, dtype=np.int64)
    swaps = 0
    for _ in range(max_sweeps):
        improved = 0
        for p in range(num_slots):
            e1 = slot_e[p]
            g1 = p // slots
            best_gain = eps
            best_q = -1
            # Target ranks best bound first: once a feasible swap gains more than the
            # remaining ranks' bounds, none of them can win and the search stops.
            n_open = 0
            for g2 in range(num_ranks):
                if g2 == g1 or move[p, g2] >= 0.0 or has[g2, e1] > 0:
                    continue
                if keep_node and node_of_rank[g2] != node_of_rank[g1]:
                    continue
                bound[n_open] = -(move[p, g2] + min_move[g2, g1])
                if bound[n_open] <= best_gain:
                    continue
                open_ranks[n_open] = g2
                n_open += 1
            for _ in range(n_open):
                pick = 0
                for k_open in range(1, n_open):
                    if bound[k_open] > bound[pick]:
                        pick = k_open
                # Ties at the bound may still win on the lowest-slot rule: stop only below it.
                if bound[pick] < best_gain:
                    break
                bound[pick] = -np.inf
                g2 = open_ranks[pick]
                start = 0
                high = np.inf
                if not nearest:
                    # A superset of the loads that fit: the exact check below decides.
                    tol = 1e-9 * (load[g1] + load[g2] + slot_load[p])
                    low = slot_load[p] - max(0.0, limit[g2] - load[g2]) - tol
                    high = slot_load[p] + max(0.0, limit[g1] - load[g1]) + tol
                    start = np.searchsorted(by_load[g2], low)
                for j in range(start, slots):
                    if nearest:
                        q = g2 * slots + j
                    elif by_load[g2, j] > high:
                        break
                    else:
                        q = order[g2, j]
                    e2 = slot_e[q]
                    if e2 == e1 or has[g1, e2] > 0:
                        continue
                    gain = -(move[p, g2] + move[q, g1])
                    # Equal gains go to the lowest slot, whatever order the slots come in.
                    if gain < best_gain or (gain == best_gain and (best_q < 0 or q > best_q)):
                        continue
                    if not nearest or (cnt[e1] == 1 and cnt[e2] == 1):
                        # Lone replicas route like even dispatch: only g1 and g2 change.
                        new1 = load[g1] - slot_load[p] + slot_load[q]
                        new2 = load[g2] - slot_load[q] + slot_load[p]
                        if (new1 > load[g1] and new1 > limit[g1]) or (
                                new2 > load[g2] and new2 > limit[g2]):
                            continue
                    else:
                        # Routing of e1 and e2 changes on all their replicas' ranks.
                        n_touched = 0
                        for which in range(2):
                            e = e1 if which == 0 else e2
                            src = p if which == 0 else q
                            dst = g2 if which == 0 else g1
                            for i in range(cnt[e]):
                                r_slot = rep[e, i]
                                old_rank = r_slot // slots
                                new_rank = dst if r_slot == src else old_rank
                                delta[old_rank] -= slot_load[r_slot]
                                delta[new_rank] += shift[src, dst, i]
                                touched[n_touched] = old_rank
                                touched[n_touched + 1] = new_rank
                                n_touched += 2
                        ok = True
                        for k in range(n_touched):
                            g = touched[k]
                            if delta[g] > 0.0 and load[g] + delta[g] > limit[g]:
                                ok = False
                        for k in range(n_touched):
                            delta[touched[k]] = 0.0
                        if not ok:
                            continue
                    best_gain = gain
                    best_q = q
            if best_q < 0:
                continue
            q = best_q
            g2 = q // slots
            e2 = slot_e[q]
            exchange_slots(slot_e, has, slots, p, q)
            for i in range(cnt[e1]):
                if rep[e1, i] == p:
                    rep[e1, i] = q
            for i in range(cnt[e2]):
                if rep[e2, i] == q:
                    rep[e2, i] = p
            # Keep replica lists ascending (routing ties and tables read them in slot order).
            rep[e1, :cnt[e1]] = np.sort(rep[e1, :cnt[e1]])
            rep[e2, :cnt[e2]] = np.sort(rep[e2, :cnt[e2]])
            for e in (e1, e2):
                for i in range(cnt[e]):
                    load[rep[e, i] // slots] -= slot_load[rep[e, i]]
                ecost[e] = _route_expert(e, rep, cnt, slots, weights, tok, shr, cost, level,
                                         token_cost, nearest, ranks, rep_load, no_levels)
                for i in range(cnt[e]):
                    slot_load[rep[e, i]] = rep_load[i]
                    load[rep[e, i] // slots] += rep_load[i]
                _expert_moves(e, rep, cnt, slots, weights, tok, shr, cost, nearest, ecost[e],
                              token_cost, move, shift, ranks)
            # Moves changed on the ranks of e1's and e2's replicas (p and q among them).
            for e in (e1, e2):
                for i in range(cnt[e]):
                    _rank_min_moves(move, rep[e, i] // slots, slots, min_move)
            if not nearest:
                # Under even dispatch only slots p and q changed load.
                _sort_rank(g1, slots, slot_load, order, by_load)
                _sort_rank(g2, slots, slot_load, order, by_load)
            swaps += 1
            improved += 1
        if improved == 0:
            break
    return swaps, ecost.sum()


@kernel
def _expert_rows(layer_tokens, cnt, tok, shr, totals):
    """What nearest routing reads of one layer's tokens (layer_tokens float64 [G, E], or
    [1, E]: ``plumb.locality.levels.source_row``).

    Outputs: tok / shr float64 [E, G], the tokens and each source's share of them (1 / G
    where an expert received none), written for the replicated experts only (cnt int64 [E]
    > 1; lone replicas route from token_cost); totals float64 [E], each expert's tokens.
    Totals add the sources in order, as the metrics' routing (``plumb.locality.dispatch``)
    does, so that both see the same replica loads; they run over contiguous source rows (E
    independent sums, not E serial chains).
    """
    num_ranks, num_experts = tok.shape[1], layer_tokens.shape[1]
    for e in range(num_experts):
        totals[e] = 0.0
    for s in range(num_ranks):
        row = layer_tokens[source_row(layer_tokens, s)]
        for e in range(num_experts):
            totals[e] += row[e]
    for e in range(num_experts):
        if cnt[e] == 1:
            continue
        total = totals[e]
        for s in range(num_ranks):
            tok[e, s] = layer_tokens[source_row(layer_tokens, s), e]
            shr[e, s] = tok[e, s] / total if total > 0 else 1.0 / num_ranks


@kernel
def _node_shares(layer_tokens, totals, node_ranks, node_share):
    """node_share float64 [E, nodes]: each node's share of every expert's sources (gpn / G
    where an expert received none), from one layer's tokens (float64 [G, E], or [1, E]:
    ``plumb.locality.levels.source_row``) and their totals per expert (float64 [E],
    :func:`_expert_rows`); node_ranks int64 [nodes, gpn], every rank in one group."""
    num_ranks, num_experts = node_ranks.size, layer_tokens.shape[1]
    nodes, gpn = node_ranks.shape
    for n in range(nodes):
        for e in range(num_experts):
            node_share[e, n] = 0.0
        for i in range(gpn):
            row = layer_tokens[source_row(layer_tokens, node_ranks[n, i])]
            for e in range(num_experts):
                node_share[e, n] += row[e]
        for e in range(num_experts):
            total = totals[e]
            node_share[e, n] = node_share[e, n] / total if total > 0 else gpn / num_ranks


@njit(cache=True, nogil=True)
def _stacked(row, slots, num_experts):
    """Replicas of ``row`` (int64 [P]) that share a rank with another replica of their expert
    (E = num_experts): one pass, marking the last rank each expert was seen on."""
    seen = np.full(num_experts, -1, dtype=np.int64)
    count = 0
    for p in range(row.shape[0]):
        r = p // slots
        if seen[row[p]] == r:
            count += 1
        seen[row[p]] = r
    return count


@njit(cache=True, nogil=True)
def _refine_model(phy2log, slots, weights, tokens, cost, level, token_cost, node_id,
                  domain_id, level_cost, node_of_domain, domain_size, group_of_domain, speed,
                  node_of_rank, group_ranks, nearest, keep_node, cap_factor, max_sweeps, layers,
                  stats):
    """Runs the pass on the ``layers`` (int64 [k]) of phy2log (int64 [L, P], edited in place).

    token_cost: float64 [L, E, G], cost of all of e's tokens served on rank g; or shape
    [0, 0, 0] on a topology with constant costs per level (level_cost float64 [4], node_id /
    domain_id int64 [G], node_of_domain / domain_size int64 [domains] from ``level_layout``):
    then each layer's costs follow from its tokens' sums per level, and its [E, G] table is
    filled only where a search reads it. group_ranks: int64 [groups, size], the ranks of
    each node (or of each NUMA domain on one node) for the re-packing, or shape [0, 0] to
    skip it; group_of_domain: int64 [domains], the group of each domain (-1: none).
    keep_node: bool [L].
    stats: float64 [L, 4] output (swaps, cost before, cost after, 1.0 if re-packed).
    Each rank's slots are sorted by expert id afterwards (the solver's canonical order).
    """
    num_slots = phy2log.shape[1]
    num_ranks = cost.shape[0]
    num_experts = weights.shape[1]
    load = np.empty(num_ranks, dtype=np.float64)
    limit = np.empty(num_ranks, dtype=np.float64)
    candidate = np.empty(num_slots, dtype=np.int64)
    slot_load = np.empty(num_slots, dtype=np.float64)
    movable = np.empty(num_slots, dtype=np.bool_)
    expert_cost = np.empty(num_experts, dtype=np.float64)
    expert_total = np.empty(num_experts, dtype=np.float64)
    no_rows = np.empty((0, 0), dtype=np.float64)
    # Scratch only for the paths that run: token rows under nearest dispatch, per-level sums
    # on level topologies.
    rows = (num_experts, num_ranks) if nearest else (0, 0)
    expert_tokens = np.empty(rows, dtype=np.float64)
    shares = np.empty(rows, dtype=np.float64)
    pref = np.empty((num_experts, group_ranks.shape[0]), dtype=np.float64)
    node_share = np.empty_like(pref)
    by_level = token_cost.shape[0] == 0
    level_experts = num_experts if by_level else 0
    level_costs = np.empty((level_experts, num_ranks), dtype=np.float64)
    rank_costs = np.empty((num_ranks, level_experts), dtype=np.float64)
    node_sum = np.empty((node_id.max() + 1, level_experts), dtype=np.float64)
    domain_sum = np.empty((domain_id.max() + 1, level_experts), dtype=np.float64)
    cluster_sum = np.empty(level_experts, dtype=np.float64)
    group_scratch = np.empty((3, group_ranks.shape[0], level_experts), dtype=np.float64)
    for layer in layers:
        row = phy2log[layer]
        w = weights[layer]
        levels = (tokens[layer], node_id, domain_id, level_cost, node_sum, domain_sum,
                  cluster_sum)
        if by_level:
            group_sums(tokens[layer], domain_id, node_of_domain, node_sum, domain_sum,
                       cluster_sum)
        # Replica counts stay fixed through the pass.
        _, cnt = replica_lists(row, num_experts)
        most = cnt.max()
        routed = nearest and most > 1
        # A zero-slack layer that takes a re-packing reads costs only through _spread_state
        # (O(P) from the sums): the table is filled once a routing or a swap search needs it.
        layer_cost = token_cost[layer] if not by_level else no_rows
        if by_level and routed:
            level_token_cost(levels, rank_costs, level_costs)
            layer_cost = level_costs
        # Per-expert token and share rows are read only to route replicated experts under
        # nearest dispatch; all else works from token_cost.
        tok = expert_tokens if routed else no_rows
        shr = shares if routed else no_rows
        if routed:
            _expert_rows(tokens[layer], cnt, tok, shr, expert_total)
        before = _layer_state(row, slots, w, cnt, tok, shr, cost, level, layer_cost, levels,
                              nearest, routed, load, expert_cost)
        top = 0.0
        for g in range(num_ranks):
            top = max(top, load[g] / speed[g])
        # Relative tolerance so that equal loads at the maximum stay feasible.
        for g in range(num_ranks):
            limit[g] = cap_factor * top * speed[g] * (1.0 + 1e-12)
        after = before
        stats[layer, 3] = 0.0
        repackable = group_ranks.shape[0] > 1 and not keep_node[layer]
        if repackable:
            if by_level:
                level_group_means(levels, group_of_domain, domain_size, node_of_domain,
                                  group_ranks.shape[1], group_scratch, pref)
            else:
                node_means(layer_cost, group_ranks, pref)
            if routed:
                _node_shares(tokens[layer], expert_total, group_ranks, node_share)
            # Without replicated experts nothing can stack.
            stacked = _stacked(row, slots, num_experts) if most > 1 else 0
            # The most pinning whose packing fits the cap; the next level (more free
            # replicas) only when it misses, which the pair exchanges make rare.
            for pin_fill in PIN_FILLS[:_MAX_PACKINGS]:
                # Distinct ranks for every replica are possible iff no expert has more than G.
                # Lone replicas route the same under both models: pack as for even dispatch.
                # Each node's share of an expert's sources: nearest routing of replicas only.
                repack_layer(row, slots, w, cnt, pref, node_share if routed else pref, speed,
                             group_ranks, routed,
                             most <= num_ranks, pin_fill, limit[0] / speed[0], candidate)
                value = _layer_state(candidate, slots, w, cnt, tok, shr, cost, level,
                                     layer_cost, levels, nearest, routed, load, expert_cost)
                fits = most == 1 or _stacked(candidate, slots, num_experts) <= stacked
                for g in range(num_ranks):
                    fits = fits and load[g] <= limit[g]
                if fits and value < after:
                    row[:] = candidate
                    after = value
                    stats[layer, 3] = 1.0
                    break
        swaps = 0
        # At zero slack a re-packing leaves little room: a sweep of swaps after it would add
        # about 1% of traffic cut for about as much time again. With slack it follows.
        done = stats[layer, 3] > 0 and cap_factor == 1.0
        if not done and layer_cost.shape[0] == 0:
            # The searches below read the table.
            level_token_cost(levels, rank_costs, level_costs)
            layer_cost = level_costs
        if done:
            pass
        elif routed and not repackable:
            # Replicated experts re-route when they move: the exact search, which costs up to
            # milliseconds per layer, only where no re-packing applies (one node and NUMA
            # domain, unequal groups, hierarchical layers); elsewhere a failed re-packing is
            # followed by the swaps of lone replicas below.
            swaps, after = _swap_pass(row, slots, w, tok, shr, cost, level, layer_cost,
                                      node_of_rank, nearest, keep_node[layer], limit,
                                      max_sweeps)
        else:
            if repackable:
                # The packings tried left their own loads in ``load``.
                after = _layer_state(row, slots, w, cnt, tok, shr, cost, level,
                                     layer_cost, levels, nearest, routed, load, expert_cost)
            for p in range(num_slots):
                e = row[p]
                slot_load[p] = w[e] / cnt[e]
                movable[p] = not nearest or cnt[e] == 1
            swaps, change = fixed_load_swaps(row, slots, cnt, slot_load, movable, load, limit,
                                             layer_cost, node_of_rank, keep_node[layer],
                                             _MIN_GAIN * (after + 1.0), max_sweeps)
            after += change
        canonical_slots(row.reshape((num_slots // slots, slots)).copy(), row)
        stats[layer, 0] = swaps
        stats[layer, 1] = before
        stats[layer, 2] = after


# Topologies are immutable: their groups are derived once per object.
_GROUPS: "weakref.WeakKeyDictionary[Topology, Tuple[np.ndarray, np.ndarray]]" = \
    weakref.WeakKeyDictionary()


def _group_ranks(topo: Topology) -> Tuple[np.ndarray, np.ndarray]:
    """(int64 [groups, size]: ranks of each node, or of each NUMA domain when there is one
    node; [0, 0] when there is one group or the groups differ in size (no re-packing then),
    int64 [domains]: the group of each NUMA domain (``level_layout``'s ids), -1 for none)."""
    cached = _GROUPS.get(topo)
    if cached is not None:
        return cached
    labels = topo.node_of_rank if topo.num_nodes > 1 else topo.numa_of_rank
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    domain_id = level_layout(topo).domain_id
    group_of_domain = np.full(domain_id.max() + 1, -1, dtype=np.int64)
    if len(groups) < 2 or len({len(g) for g in groups}) != 1:
        ranks = np.zeros((0, 0), dtype=np.int64)
    else:
        ranks = np.ascontiguousarray(np.stack(groups), dtype=np.int64)
        # Groups are nodes or domains: each domain lies in one.
        for k, members in enumerate(ranks):
            group_of_domain[domain_id[members]] = k
    cached = (ranks, group_of_domain)
    _GROUPS[topo] = cached
    return cached


def improve_locality(phy2log: Any, loads: Any, topo: TopologyLike, traffic: Any = None,
                     dispatch: str = "even", load_slack: float = 0.0,
                     keep_node: Optional[Any] = None, max_sweeps: int = 2):
    """Lower the traffic of a balanced placement, keeping max rank load within the slack.

    Args:
        phy2log: int [L, P] balanced placement (not modified).
        loads: float [L, E] expert loads it was balanced on.
        topo: Topology or int G.
        traffic: per-source counts [L, G, E] or [T, L, G, E]; None = uniform sources (then
            only same-rank/same-domain effects exist; under even dispatch with uniform sources
            and level costs every placement has the same traffic, and the pass changes nothing).
        dispatch: "even" or "nearest"; loads and traffic are measured under this model.
        load_slack: float >= 0; max(rank load / speed) may grow to (1 + slack) x the input's.
        keep_node: bool [L] (or one bool): layers whose replicas must stay on their node
            (hierarchical layers). Default: none.
        max_sweeps: int >= 1, passes of the swap search over all slots per layer where it
            runs (most gains come in the first; more sweeps cost time for little).

    Returns:
        (phy2log int64 [L, P], info dict with "swaps" int64 [L], "traffic_before" and
        "traffic_after" float64 [L], "repacked" bool [L]). Replica counts (logcnt) are
        unchanged; each rank's slots are sorted by expert id.
    """
    placement, weights, topo, tokens, code, _ = prepare(phy2log, loads, topo, traffic,
                                                       dispatch)
    slack = as_load_slack(load_slack)
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, (int, np.integer)) or max_sweeps < 1:
        raise InputError(f"max_sweeps must be an int >= 1, got {max_sweeps!r}")
    num_layers = placement.shape[0]
    if keep_node is None:
        keep = np.zeros(num_layers, dtype=np.bool_)
    else:
        keep = np.asarray(keep_node, dtype=np.bool_)
        if keep.ndim == 0:
            keep = np.full(num_layers, bool(keep))
        if keep.shape != (num_layers,):
            raise InputError(f"keep_node must be one bool or [L] = [{num_layers}] bools, "
                             f"got shape {list(keep.shape)}")
    return refine_validated(placement, weights, topo, tokens, code == NEAREST, slack,
                            keep, int(max_sweeps))


def refine_validated(placement: np.ndarray, weights: np.ndarray, topo: Topology,
                     tokens: np.ndarray, nearest: bool, slack: float,
                     keep: np.ndarray, max_sweeps: int):
    """``improve_locality`` on validated inputs (``plumb.solve`` has validated them already).

    placement int64 [L, P]; weights float64 [L, E]; tokens float64 [L, G, E], or [L, 1, E]
    for uniform sources (``source_traffic(compact=True)``); keep bool [L]. Returns what
    ``improve_locality`` returns.
    """
    num_layers = placement.shape[0]
    out = placement.copy()
    stats = np.zeros((num_layers, 4))
    layout = level_layout(topo)
    if layout.level_cost is None:
        # One batched BLAS product instead of an O(E G^2) loop per layer inside the kernel
        # (on every source's row: compact tokens are expanded).
        tokens = full_tokens(tokens, topo.num_ranks)
        token_cost = np.ascontiguousarray(np.matmul(tokens.transpose(0, 2, 1), topo.link_cost))
        level_cost = np.zeros(0)
    else:
        token_cost = np.zeros((0, 0, 0))
        level_cost = layout.level_cost
    groups, group_of_domain = _group_ranks(topo)
    _, speed = kernel_topology(topo)
    # Layers are independent (each writes its own rows): split over the solver's threads.
    run_layers(lambda layers: _refine_model(
        out, placement.shape[1] // topo.num_ranks, weights, tokens, topo.link_cost,
        topo.level, token_cost, layout.node_id, layout.domain_id, level_cost,
        layout.node_of_domain, layout.domain_size, group_of_domain, speed,
        topo.node_of_rank, groups,
        nearest, keep, 1.0 + slack, max_sweeps, layers, stats), num_layers, out.size)
    info: Dict[str, Any] = {"swaps": stats[:, 0].astype(np.int64), "traffic_before": stats[:, 1],
                            "traffic_after": stats[:, 2], "repacked": stats[:, 3] > 0}
    return out, info
