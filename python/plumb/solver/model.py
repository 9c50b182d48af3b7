"""Whole-model solve: every layer, global and/or hierarchical policy, in one jitted call."""

from __future__ import annotations

import numpy as np
from numba import njit

from .place import place

GLOBAL = 0
HIERARCHICAL = 1


@njit(cache=True, nogil=True)
def _time_max(load, speed):
    top = 0.0
    for r in range(load.shape[0]):
        top = max(top, load[r] / speed[r])
    return top


@njit(cache=True, nogil=True)
def _hierarchical_layer(weights, caps, speed, node_ranks, num_groups, allow_dup, beat, counts,
                        slot_e, slot_w, load, has):
    """Hierarchical policy for one layer (DeepSeek's structure, each step balanced better).

    Whole expert groups go to nodes (equal group count per node, balancing node load / node
    speed), then each node replicates its own experts into its own slots and packs them onto its
    own ranks. Group-limited routing then sends a token's experts to few nodes.

    Args:
        node_ranks: int64 [nodes, gpn], the ranks of each node.
        num_groups: expert groups (contiguous blocks of E / num_groups experts).
        beat: the max rank time to beat; when even the node loads (the groups' placement)
            rule out reaching it, the nodes are not solved.
        other arguments and outputs: as :func:`place` over all G ranks and E experts (``slot_e``
        holds global expert ids).

    Returns:
        False when skipped because of ``beat`` (outputs untouched), else True.
    """
    num_experts = weights.shape[0]
    nodes, gpn = node_ranks.shape
    slots = slot_e.shape[1]
    group_size = num_experts // num_groups
    groups_per_node = num_groups // nodes
    group_w = np.zeros(num_groups, dtype=np.float64)
    for e in range(num_experts):
        group_w[e // group_size] += weights[e]
    node_speed = np.zeros(nodes, dtype=np.float64)
    for n in range(nodes):
        for i in range(gpn):
            node_speed[n] += speed[node_ranks[n, i]]
    group_slot = np.empty((nodes, groups_per_node), dtype=np.int64)
    node_load = np.empty(nodes, dtype=np.float64)
    place(group_w, np.ones(num_groups, dtype=np.int64), node_speed, True,
          np.empty(num_groups, dtype=np.int64), group_slot,
          np.empty((nodes, groups_per_node), dtype=np.float64), node_load,
          np.empty((nodes, num_groups), dtype=np.int64))
    # A node's ranks carry exactly its load, so some rank's time is at least load / speed.
    for n in range(nodes):
        if node_load[n] / node_speed[n] > beat:
            return False
    local_n = groups_per_node * group_size
    ids = np.empty(local_n, dtype=np.int64)
    local_w = np.empty(local_n, dtype=np.float64)
    local_caps = np.empty(local_n, dtype=np.int64)
    local_counts = np.empty(local_n, dtype=np.int64)
    local_speed = np.empty(gpn, dtype=np.float64)
    local_e = np.empty((gpn, slots), dtype=np.int64)
    local_sw = np.empty((gpn, slots), dtype=np.float64)
    local_load = np.empty(gpn, dtype=np.float64)
    local_has = has[:gpn, :local_n]
    for n in range(nodes):
        # Ascending group order keeps the node's expert list independent of packing order.
        node_groups = np.sort(group_slot[n])
        for k in range(groups_per_node):
            for j in range(group_size):
                e = node_groups[k] * group_size + j
                ids[k * group_size + j] = e
                local_w[k * group_size + j] = weights[e]
                local_caps[k * group_size + j] = min(caps[e], gpn)
        for i in range(gpn):
            local_speed[i] = speed[node_ranks[n, i]]
        place(local_w, local_caps, local_speed, allow_dup, local_counts, local_e, local_sw,
              local_load, local_has)
        for j in range(local_n):
            counts[ids[j]] = local_counts[j]
        for i in range(gpn):
            r = node_ranks[n, i]
            load[r] = local_load[i]
            for k in range(slots):
                slot_e[r, k] = ids[local_e[i, k]]
                slot_w[r, k] = local_sw[i, k]
    return True


@njit(cache=True, nogil=True)
def _write_layer(slot_e, load, counts, phy2log_row, logcnt_row, load_row):
    """Copies one layer's solution out, each rank's slots sorted by expert id (canonical order)."""
    bins, slots = slot_e.shape
    for r in range(bins):
        row = np.sort(slot_e[r])
        for k in range(slots):
            phy2log_row[r * slots + k] = row[k]
        load_row[r] = load[r]
    logcnt_row[:] = counts


@njit(cache=True, nogil=True)
def solve_model(weights, caps, speed, node_ranks, num_groups, slots, try_global, try_hier,
                allow_dup_global, allow_dup_hier, phy2log, logcnt, rank_load, winner,
                candidate_max):
    """Solves every layer; where both policies are tried, keeps the better one per layer.

    Args:
        weights: float64 [L, E], expert loads.
        caps: int64 [E], replica cap per expert (already at most G).
        speed: float64 [G], relative rank speeds.
        node_ranks: int64 [nodes, gpn], ranks of each node (hierarchical policy only).
        num_groups: expert groups (hierarchical policy only).
        slots: S, slots per rank.
        try_global, try_hier: which policies to run (at least one).
        allow_dup_global, allow_dup_hier: whether E (per node) is too small to avoid stacking
            replicas of one expert on one rank.
        phy2log: int64 [L, G*S], output.
        logcnt: int64 [L, E], output.
        rank_load: float64 [L, G], output: load per rank.
        winner: int8 [L], output: GLOBAL or HIERARCHICAL.
        candidate_max: float64 [L, 2], output: max rank load / speed of each policy (inf if
            not run, or if the hierarchical one was cut short because it could not win).

    Ties between the policies go to the hierarchical one (it keeps groups within a node).
    """
    num_layers, num_experts = weights.shape
    bins = speed.shape[0]
    g_counts = np.empty(num_experts, dtype=np.int64)
    g_e = np.empty((bins, slots), dtype=np.int64)
    g_w = np.empty((bins, slots), dtype=np.float64)
    g_load = np.empty(bins, dtype=np.float64)
    h_counts = np.empty(num_experts, dtype=np.int64)
    h_e = np.empty((bins, slots), dtype=np.int64)
    h_w = np.empty((bins, slots), dtype=np.float64)
    h_load = np.empty(bins, dtype=np.float64)
    has = np.empty((bins, num_experts), dtype=np.int64)
    for layer in range(num_layers):
        w = weights[layer]
        candidate_max[layer, :] = np.inf
        if try_global:
            # Global policy: all ranks interchangeable.
            place(w, caps, speed, allow_dup_global, g_counts, g_e, g_w, g_load, has)
            candidate_max[layer, GLOBAL] = _time_max(g_load, speed)
        if try_hier and _hierarchical_layer(w, caps, speed, node_ranks, num_groups,
                                            allow_dup_hier, candidate_max[layer, GLOBAL],
                                            h_counts, h_e, h_w, h_load, has):
            candidate_max[layer, HIERARCHICAL] = _time_max(h_load, speed)
        if candidate_max[layer, HIERARCHICAL] <= candidate_max[layer, GLOBAL]:
            winner[layer] = HIERARCHICAL
            _write_layer(h_e, h_load, h_counts, phy2log[layer], logcnt[layer],
                         rank_load[layer])
        else:
            winner[layer] = GLOBAL
            _write_layer(g_e, g_load, g_counts, phy2log[layer], logcnt[layer],
                         rank_load[layer])
