"""A plain, slow reference of the DeepSeek EPLB greedy for the compat tests.

Written from the published description (DeepSeek's eplb README; vLLM's default policy), one
layer at a time with ordinary loops, for readability. The only numpy call that matters for the
result is ``np.argsort(-loads)`` (numpy's default sort kind), whose order of ties is part of the
algorithm; group sums use numpy's ``sum`` so that float rounding matches too.
"""

from __future__ import annotations

import numpy as np


def pack(loads, num_packs):
    """Greedy balanced packing of one row. Returns (pack_of_item, rank_of_item) lists."""
    n = len(loads)
    per_pack = n // num_packs
    if per_pack == 1:
        return list(range(n)), [0] * n
    pack_of = [-1] * n
    rank_of = [-1] * n
    pack_load = [0.0] * num_packs
    pack_count = [0] * num_packs
    for item in np.argsort(-np.asarray(loads, dtype=np.float64)):
        item = int(item)
        best = None
        for p in range(num_packs):
            if pack_count[p] == per_pack:
                continue
            if best is None or pack_load[p] < pack_load[best]:
                best = p
        pack_of[item] = best
        rank_of[item] = pack_count[best]
        pack_load[best] += float(loads[item])
        pack_count[best] += 1
    return pack_of, rank_of


def replicate(loads, num_phy):
    """Replication of one row. Returns (phy2log, count) lists."""
    n = len(loads)
    phy2log = list(range(n))
    count = [1] * n
    for _ in range(n, num_phy):
        best = 0
        for e in range(1, n):
            if loads[e] / count[e] > loads[best] / count[best]:
                best = e
        phy2log.append(best)
        count[best] += 1
    return phy2log, count


def rebalance_layer(w, num_phy, num_groups, num_nodes, num_gpus):
    """One layer: (phy2log list [P], logcnt list [E])."""
    w = np.asarray(w, dtype=np.float64)
    if num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    num_log = len(w)
    group_size = num_log // num_groups
    groups_per_node = num_groups // num_nodes
    log_per_node = num_log // num_nodes
    phy_per_node = num_phy // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots_per_gpu = num_phy // num_gpus

    group_loads = w.reshape(num_groups, group_size).sum(axis=-1)
    group_node, group_rank = pack(group_loads, num_nodes)
    # node-major renumbering: the experts of node 0 first, group by group.
    node_experts = [[None] * log_per_node for _ in range(num_nodes)]
    for g in range(num_groups):
        start = group_rank[g] * group_size
        for j in range(group_size):
            node_experts[group_node[g]][start + j] = g * group_size + j

    phy2log = [None] * num_phy
    logcnt = [0] * num_log
    for node in range(num_nodes):
        experts = node_experts[node]
        loads = [float(w[e]) for e in experts]
        local_phy, local_count = replicate(loads, phy_per_node)
        phy_loads = [loads[m] / local_count[m] for m in local_phy]
        gpu, rank = pack(phy_loads, gpus_per_node)
        for k, m in enumerate(local_phy):
            slot = node * phy_per_node + gpu[k] * slots_per_gpu + rank[k]
            phy2log[slot] = experts[m]
            logcnt[experts[m]] += 1
    return phy2log, logcnt


def rebalance(weight, num_phy, num_groups, num_nodes, num_gpus):
    """All layers: (phy2log int64 [L, P], logcnt int64 [L, E])."""
    weight = np.asarray(weight, dtype=np.float64)
    rows = [rebalance_layer(w, num_phy, num_groups, num_nodes, num_gpus) for w in weight]
    phy2log = np.array([r[0] for r in rows], dtype=np.int64).reshape(len(rows), num_phy)
    logcnt = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), weight.shape[1])
    return phy2log, logcnt
