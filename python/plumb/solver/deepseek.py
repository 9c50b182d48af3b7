"""``policy="deepseek"``: an exact reimplementation of the DeepSeek / vLLM default EPLB greedy.

This is the baseline every benchmark compares against, so it must give the *same* ``phy2log`` and
``logcnt`` as the published algorithm (DeepSeek's ``eplb.py``; vLLM's numpy
``DefaultEplbPolicy``), ties included. The algorithm, per layer:

1. Hierarchical mode (used iff ``num_groups % num_nodes == 0``; otherwise the whole thing runs
   with one group on one node, the "global" mode):
   a. sum each of the ``num_groups`` contiguous expert groups and pack the groups onto the nodes
      with the balanced packing below (``num_groups / num_nodes`` groups per node);
   b. renumber the experts node by node ("mlog" order: node, then rank of the group within the
      node, then position in the group);
   c. on each node, replicate its ``E / num_nodes`` experts to ``P / num_nodes`` physical
      experts: every extra replica goes to the *first* expert with the largest ``w / count``;
   d. on each node, pack its physical experts (load ``w / count`` each) onto the node's GPUs
      with the balanced packing (``P / G`` per GPU), then map back to slots and logical ids.
2. Balanced packing of n items into m packs of n/m items: if n/m == 1, item i goes to pack i.
   Otherwise visit the items in the order of ``np.argsort(-load)`` (numpy's default, unstable
   sort) and give each to the lightest pack that is not yet full (the first such pack on ties).

Tie order. numpy's default argsort is not stable (introsort, or x86-simd-sort where the CPU
allows), so the order of equal loads is numpy's own, may depend on the CPU, and differs from
numba's ``np.argsort`` (checked: they disagree on most inputs with ties, even at 4 items). The two sorts therefore run
in numpy, with exactly the calls vLLM makes (``np.argsort(-x, axis=-1)`` on the same 2-D
shapes), and everything else runs in two numba kernels. Group sums also come from numpy's own
``reshape(...).sum(-1)`` so that their rounding is bit-identical. The greedy choices (lightest
pack, heaviest ``w / count``) are first-index linear scans, like numpy's ``argmin`` /
``argmax``; per-replica loads are single float64 divisions, as in numpy.

What "the same" means precisely: identical to vLLM's numpy ``DefaultEplbPolicy`` run on the
same float64 array on the same machine. vLLM's ``rebalance_experts`` first casts the loads to
float32; for integer token counts whose group sums stay below 2**24 (exact in float32) the
cast changes nothing (tested against the baseline run in float32); for fractional loads,
float32 rounding can merge or split near-ties. DeepSeek's torch original sorts with
``torch.sort``, so it agrees wherever the sorted loads have no ties.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import InputError

__all__ = ["deepseek_rebalance", "deepseek_mode"]


# --- the two greedy steps ----------------------------------------------------------------------
# Both are plain linear scans, exactly like numpy's first-index argmin / argmax in vLLM. (Binary
# heaps were measured 2-6x slower here: at 8-64 packs the scans are branch-light and cached.)

@njit(cache=True, nogil=True)
def _balanced_packing(loads, order, num_packs, pack_index, rank_in_pack, pack_load, pack_size):
    """Greedy packing of one row: ``len(loads)`` items into ``num_packs`` equal-size packs.

    ``order`` is the visiting order (numpy's argsort of ``-loads``). Writes ``pack_index`` and
    ``rank_in_pack`` (int64, one per item). ``pack_load`` (float64) and ``pack_size`` (int64)
    are scratch of >= num_packs. A full pack's load is set to +inf so that it is never the
    lightest, as in vLLM.
    """
    n = loads.shape[0]
    per_pack = n // num_packs
    if per_pack == 1:
        for i in range(n):
            pack_index[i] = i
            rank_in_pack[i] = 0
        return
    for p in range(num_packs):
        pack_load[p] = 0.0
        pack_size[p] = 0
    for k in range(n):
        item = order[k]
        pack = 0
        lightest = pack_load[0]
        for p in range(1, num_packs):
            if pack_load[p] < lightest:  # strict: the first index wins ties
                pack = p
                lightest = pack_load[p]
        pack_index[item] = pack
        rank_in_pack[item] = pack_size[pack]
        pack_load[pack] += loads[item]
        pack_size[pack] += 1
        if pack_size[pack] == per_pack:
            pack_load[pack] = np.inf


@njit(cache=True, nogil=True)
def _replicate(loads, num_phy, phy2log, logcnt, per_replica):
    """Replicates the ``len(loads)`` experts of one row to ``num_phy`` physical experts.

    Slot i < n holds expert i; each further slot holds the first expert with the largest
    ``loads[e] / logcnt[e]`` at that moment. Writes ``phy2log`` [num_phy] and ``logcnt`` [n];
    ``per_replica`` is float64 scratch of >= n.
    """
    n = loads.shape[0]
    for e in range(n):
        phy2log[e] = e
        logcnt[e] = 1
        per_replica[e] = loads[e]  # loads[e] / 1, bit-identical
    for slot in range(n, num_phy):
        best = 0
        heaviest = per_replica[0]
        for e in range(1, n):
            if per_replica[e] > heaviest:  # strict: the first index wins ties
                best = e
                heaviest = per_replica[e]
        phy2log[slot] = best
        logcnt[best] += 1
        per_replica[best] = loads[best] / logcnt[best]


# --- the two kernels around numpy's sorts --------------------------------------------------------

@njit(cache=True, nogil=True)
def _nodes_and_replicas(weight, group_loads, group_order, num_nodes, num_phy):
    """Steps 1a-1c for the whole model.

    Returns ``mlog2log`` [L, E], ``phy2mlog`` [L*nodes, P/nodes], ``mlogcnt``
    [L*nodes, E/nodes] and ``phy_loads`` [L*nodes, P/nodes] (the load of each physical expert,
    ``w / count``, computed as numpy does: one float64 division).
    """
    num_layers, num_experts = weight.shape
    num_groups = group_loads.shape[1]
    group_size = num_experts // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_experts // num_nodes
    phy_per_node = num_phy // num_nodes
    rows = num_layers * num_nodes

    mlog2log = np.empty((num_layers, num_experts), dtype=np.int64)
    phy2mlog = np.empty((rows, phy_per_node), dtype=np.int64)
    mlogcnt = np.empty((rows, experts_per_node), dtype=np.int64)
    phy_loads = np.empty((rows, phy_per_node), dtype=np.float64)

    group_pack = np.empty(num_groups, dtype=np.int64)
    group_rank = np.empty(num_groups, dtype=np.int64)
    pack_load = np.empty(num_nodes, dtype=np.float64)
    pack_size = np.empty(num_nodes, dtype=np.int64)
    per_replica = np.empty(experts_per_node, dtype=np.float64)
    node_loads = np.empty(experts_per_node, dtype=np.float64)

    for layer in range(num_layers):
        _balanced_packing(group_loads[layer], group_order[layer], num_nodes,
                          group_pack, group_rank, pack_load, pack_size)
        for g in range(num_groups):
            base = (group_pack[g] * groups_per_node + group_rank[g]) * group_size
            for j in range(group_size):
                mlog2log[layer, base + j] = g * group_size + j
        for node in range(num_nodes):
            row = layer * num_nodes + node
            for k in range(experts_per_node):
                node_loads[k] = weight[layer, mlog2log[layer, node * experts_per_node + k]]
            _replicate(node_loads, phy_per_node, phy2mlog[row], mlogcnt[row], per_replica)
            for k in range(phy_per_node):
                m = phy2mlog[row, k]
                phy_loads[row, k] = node_loads[m] / mlogcnt[row, m]
    return mlog2log, phy2mlog, mlogcnt, phy_loads


@njit(cache=True, nogil=True)
def _gpus_and_mapping(phy_loads, phy_order, phy2mlog, mlog2log, num_nodes, num_gpus):
    """Step 1d for the whole model: pack physical experts onto each node's GPUs, map back.

    Returns ``phy2log`` [L, P] and ``logcnt`` [L, E].
    """
    num_layers, num_experts = mlog2log.shape
    phy_per_node = phy_loads.shape[1]
    num_phy = phy_per_node * num_nodes
    experts_per_node = num_experts // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots_per_gpu = num_phy // num_gpus

    phy2log = np.empty((num_layers, num_phy), dtype=np.int64)
    logcnt = np.zeros((num_layers, num_experts), dtype=np.int64)
    pack_index = np.empty(phy_per_node, dtype=np.int64)
    rank_in_pack = np.empty(phy_per_node, dtype=np.int64)
    pack_load = np.empty(gpus_per_node, dtype=np.float64)
    pack_size = np.empty(gpus_per_node, dtype=np.int64)

    for layer in range(num_layers):
        for node in range(num_nodes):
            row = layer * num_nodes + node
            _balanced_packing(phy_loads[row], phy_order[row], gpus_per_node,
                              pack_index, rank_in_pack, pack_load, pack_size)
            base = node * phy_per_node
            for k in range(phy_per_node):
                slot = base + pack_index[k] * slots_per_gpu + rank_in_pack[k]
                expert = mlog2log[layer, node * experts_per_node + phy2mlog[row, k]]
                phy2log[layer, slot] = expert
                logcnt[layer, expert] += 1
    return phy2log, logcnt


# --- entry point ---------------------------------------------------------------------------------

def deepseek_mode(num_groups: int, num_nodes: int) -> str:
    """``"hierarchical"`` iff ``num_groups % num_nodes == 0`` (DeepSeek's rule), else ``"global"``."""
    return "hierarchical" if num_groups % num_nodes == 0 else "global"


def _positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    return int(value)


def deepseek_rebalance(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                       num_gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """The DeepSeek / vLLM default EPLB placement, bit-for-bit.

    Args:
        weight: float64 [L, E], load of each logical expert (finite, >= 0).
        num_replicas: P, physical slots per layer; a multiple of ``num_gpus``, >= E.
        num_groups: expert groups (E must be a multiple). Hierarchical mode iff
            ``num_groups % num_nodes == 0``; pass ``num_groups=1, num_nodes=1`` for global mode.
        num_nodes: nodes; ``num_gpus`` must be a multiple (hierarchical mode only).
        num_gpus: G, ranks; slot p lives on rank ``p // (P / G)``.

    Returns:
        ``(phy2log int64 [L, P], logcnt int64 [L, E])``.

    Raises:
        InputError: malformed weight or counts that DeepSeek's algorithm does not accept.
    """
    w = np.asarray(weight)
    if w.ndim != 2:
        raise InputError(f"weight must be 2-D [layers, experts], got shape {list(w.shape)}")
    if w.dtype.kind not in "biuf":
        raise InputError(f"weight must hold numbers, got dtype {w.dtype}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    num_layers, num_experts = w.shape
    if num_experts < 1:
        raise InputError("weight must have at least one expert (E >= 1)")
    if not np.all(np.isfinite(w)):
        raise InputError("weight must be finite (no NaN or inf)")
    if np.any(w < 0):
        raise InputError("weight must be >= 0")
    num_replicas = _positive_int(num_replicas, "num_replicas")
    num_groups = _positive_int(num_groups, "num_groups")
    num_nodes = _positive_int(num_nodes, "num_nodes")
    num_gpus = _positive_int(num_gpus, "num_gpus")
    if num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    if num_experts % num_groups != 0:
        raise InputError(f"num_groups ({num_groups}) must divide the number of experts "
                         f"({num_experts})")
    if num_gpus % num_nodes != 0:
        raise InputError(f"num_gpus ({num_gpus}) must be a multiple of num_nodes ({num_nodes})")
    if num_replicas % num_gpus != 0:
        raise InputError(f"num_replicas ({num_replicas}) must be a multiple of num_gpus "
                         f"({num_gpus})")
    if num_replicas < num_experts:
        raise InputError(f"num_replicas ({num_replicas}) must be >= the number of experts "
                         f"({num_experts})")
    if num_layers == 0:
        return (np.empty((0, num_replicas), dtype=np.int64),
                np.empty((0, num_experts), dtype=np.int64))

    # numpy's own sum and sorts (same calls, same shapes as vLLM); see the module docstring.
    group_loads = w.reshape(num_layers, num_groups, num_experts // num_groups).sum(axis=-1)
    if num_groups // num_nodes > 1:
        group_order = np.argsort(-group_loads, axis=-1)
    else:  # one group per node: the packing is the identity and never reads the order
        group_order = np.zeros((num_layers, num_groups), dtype=np.int64)
    mlog2log, phy2mlog, _, phy_loads = _nodes_and_replicas(
        w, group_loads, group_order.astype(np.int64, copy=False), num_nodes, num_replicas)
    if num_replicas // num_gpus > 1:
        phy_order = np.argsort(-phy_loads, axis=-1)
    else:
        phy_order = np.zeros(phy_loads.shape, dtype=np.int64)
    return _gpus_and_mapping(phy_loads, phy_order.astype(np.int64, copy=False), phy2mlog,
                             mlog2log, num_nodes, num_gpus)
