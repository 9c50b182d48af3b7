"""Write a Recorder as vLLM offline-EPLB load statistics (JSONL, SPEC section 5).

Line 1: ``{"record_type": "eplb_load_meta", "version": 1, "model", "num_ranks", "num_groups",
"num_nodes", "num_layers", "num_redundant_experts"}``; then one line per recorded step:
``{"record_type": "eplb_load_stats", "version": 1, "step", "expert_load": [L][P],
"p2l_map": [L][P]}``. Aggregating ``expert_load`` through ``p2l_map`` gives back the
recorder's logical counts exactly.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..io.atomic import PathLike
from ..io.vllm import write_vllm_stats
from ..solver.validate import as_int, replica_counts

__all__ = ["stats_writer", "physical_loads"]


def _check_phy2log(phy2log: Any, num_layers: int, num_experts: int) -> np.ndarray:
    table = np.asarray(phy2log.cpu() if hasattr(phy2log, "cpu") else phy2log)
    if table.ndim != 2 or table.shape[0] != num_layers or table.dtype.kind not in "iu":
        raise InputError(f"phy2log must be an integer [L={num_layers}, P] table, got "
                         f"{table.dtype} {list(table.shape)}")
    table = table.astype(np.int64)
    if table.size and (table.min() < 0 or table.max() >= num_experts):
        raise InputError(f"phy2log holds expert ids outside [0, {num_experts})")
    for layer, row in enumerate(table):
        missing = np.setdiff1d(np.arange(num_experts), row)
        if missing.size:
            raise InputError(f"phy2log layer {layer} has no slot for experts {missing.tolist()}")
    return table


def physical_loads(logical: np.ndarray, phy2log: np.ndarray) -> np.ndarray:
    """Split logical counts over replicas: int64 ``[T, L, E]`` -> ``[T, L, P]``.

    Each replica of expert e gets ``w // c``; the first ``w % c`` replicas (ascending slot)
    one more, so per-slot counts stay integers and sum back to w exactly.
    """
    num_layers, num_slots = phy2log.shape
    replicas = replica_counts(phy2log, logical.shape[-1])
    rank = np.empty_like(phy2log)
    for layer, row in enumerate(phy2log):
        order = np.argsort(row, kind="stable")
        ordered = row[order]
        rank[layer, order] = np.arange(num_slots) - np.searchsorted(ordered, ordered, "left")
    layers = np.arange(num_layers)[:, None]
    per_slot = logical[:, layers, phy2log]          # [T, L, P] logical load of each slot
    count = replicas[layers, phy2log]               # [L, P] replicas of each slot's expert
    return per_slot // count + (rank < per_slot % count)


def stats_writer(path: PathLike, recorder: Any, *, model: str = "", num_ranks: int = 1,
                 num_groups: int = 1, num_nodes: int = 1,
                 phy2log: Optional[Any] = None) -> int:
    """Atomically write ``recorder``'s window as vLLM offline-EPLB stats JSONL at ``path``.

    Args:
        recorder: a ``plumb.Recorder`` (its completed steps are written, oldest first; step
            numbers count completed steps from 1).
        model: model name for the meta record.
        num_ranks, num_groups, num_nodes: the deployment, copied into the meta record.
        phy2log: int ``[L, P]`` placement whose slots the loads are reported per; default the
            identity (P = E, no redundant experts).

    Returns:
        The number of ``eplb_load_stats`` records written.
    """
    num_ranks = as_int(num_ranks, "num_ranks", 1)
    num_groups = as_int(num_groups, "num_groups", 1)
    num_nodes = as_int(num_nodes, "num_nodes", 1)
    window = recorder.window().cpu().numpy()
    num_steps, num_layers, num_experts = window.shape
    if phy2log is None:
        table = np.tile(np.arange(num_experts, dtype=np.int64), (num_layers, 1))
    else:
        table = _check_phy2log(phy2log, num_layers, num_experts)
    loads = physical_loads(window, table)
    first_step = recorder.steps - num_steps + 1
    return write_vllm_stats(path, loads, table, first_step, model=model, num_ranks=num_ranks,
                            num_groups=num_groups, num_nodes=num_nodes)
