"""The numpy DeepSeek greedy the way vLLM's current numpy policy runs it: the baseline users know.

Same algorithm as ``plumb.solver.deepseek.deepseek_rebalance`` (and the same ``phy2log`` and
``logcnt``, which tests check), written in the style of vLLM's ``DefaultEplbPolicy``: numpy
vectorised over layers where the algorithm allows it (group sums, replication, the index maps)
and a Python loop over layers and items for the balanced packing. Benchmarks time it as the
"numpy" baseline; it is deliberately not optimised beyond what that policy does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["numpy_deepseek_rebalance", "numpy_balanced_packing", "numpy_replicate_experts"]


def numpy_balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack the n items of each row of ``weight`` [X, n] into ``num_packs`` packs of n / num_packs.

    Items are visited heaviest first (numpy's default argsort of ``-weight``); each goes to the
    lightest pack that still has room, the lowest-numbered on ties. Returns
    ``(pack_index, rank_in_pack)``, int64 [X, n] each.
    """
    rows, items = weight.shape
    per_pack = items // num_packs
    if per_pack == 1:
        return (np.tile(np.arange(items, dtype=np.int64), (rows, 1)),
                np.zeros((rows, items), dtype=np.int64))
    order = np.argsort(-weight, axis=-1)
    pack_index = np.full((rows, items), -1, dtype=np.int64)
    rank_in_pack = np.full((rows, items), -1, dtype=np.int64)
    pack_load = np.zeros((rows, num_packs), dtype=np.float64)
    pack_size = np.zeros((rows, num_packs), dtype=np.int64)
    for row in range(rows):
        load_row = pack_load[row]
        size_row = pack_size[row]
        for item in order[row]:
            pack = int(np.argmin(load_row))  # full packs hold +inf and are never picked
            pack_index[row, item] = pack
            rank_in_pack[row, item] = size_row[pack]
            load_row[pack] += weight[row, item]
            size_row[pack] += 1
            if size_row[pack] == per_pack:
                load_row[pack] = np.inf
    return pack_index, rank_in_pack


def numpy_replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray]:
    """Replicate the experts of each row of ``weight`` [X, n] to ``num_phy`` physical experts.

    Each extra replica goes to the first expert with the largest ``weight / count`` (all rows at
    once). Returns ``(phy2log int64 [X, num_phy], logcnt int64 [X, n])``.
    """
    rows, num_log = weight.shape
    phy2log = np.tile(np.arange(num_phy, dtype=np.int64), (rows, 1))
    logcnt = np.ones((rows, num_log), dtype=np.int64)
    every_row = np.arange(rows)
    for slot in range(num_log, num_phy):
        pick = np.argmax(weight / logcnt, axis=-1)
        phy2log[:, slot] = pick
        logcnt[every_row, pick] += 1
    return phy2log, logcnt


def _invert(perm: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(perm)
    np.put_along_axis(inverse, perm, np.arange(perm.shape[1], dtype=np.int64)[None, :], axis=1)
    return inverse


def numpy_deepseek_rebalance(weight: np.ndarray, num_replicas: int, num_groups: int,
                             num_nodes: int, num_gpus: int,
                             dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek's placement for ``weight`` [L, E]: ``(phy2log int64 [L, P], logcnt int64 [L, E])``.

    Hierarchical iff ``num_groups % num_nodes == 0``, else global (one group, one node).
    ``dtype=np.float32`` reproduces vLLM's ``weight.float()`` cast (group sums and the first
    sort in float32; per-replica loads are float64 either way, as numpy promotes them).
    """
    weight = np.asarray(weight, dtype=dtype)
    if num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    layers, experts = weight.shape
    group_size = experts // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = experts // num_nodes
    slots_per_gpu = num_replicas // num_gpus

    # 1. groups -> nodes; renumber experts node by node ("mlog").
    group_loads = weight.reshape(layers, num_groups, group_size).sum(axis=-1)
    group_node, group_rank = numpy_balanced_packing(group_loads, num_nodes)
    first_mlog = (group_node * groups_per_node + group_rank) * group_size
    log2mlog = (first_mlog[:, :, None] + np.arange(group_size)).reshape(layers, experts)
    mlog2log = _invert(log2mlog)

    # 2. replicate within each node.
    node_loads = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, experts_per_node)
    phy2mlog, mlogcnt = numpy_replicate_experts(node_loads, num_replicas // num_nodes)

    # 3. physical experts -> the node's GPUs, then back to slots and logical ids.
    phy_loads = np.take_along_axis(node_loads / mlogcnt, phy2mlog, axis=1)
    gpu, rank = numpy_balanced_packing(phy_loads, num_gpus // num_nodes)
    slot2phy = _invert(gpu * slots_per_gpu + rank)
    slot2mlog = np.take_along_axis(phy2mlog, slot2phy, axis=1).reshape(layers, num_nodes, -1)
    slot2mlog = (slot2mlog + (np.arange(num_nodes) * experts_per_node)[None, :, None])
    phy2log = np.take_along_axis(mlog2log, slot2mlog.reshape(layers, -1), axis=1)
    logcnt = np.take_along_axis(mlogcnt.reshape(layers, -1), log2mlog, axis=1)
    return phy2log, logcnt
