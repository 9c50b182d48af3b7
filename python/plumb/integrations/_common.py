"""What the engine adapters share: their (num_nodes, num_ranks) as a plumb Topology."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..errors import InputError
from ..solver.validate import as_int
from ..topology import Topology


def engine_topology(num_ranks: Any, num_nodes: Any) -> Topology:
    """``num_ranks`` ranks on ``num_nodes`` equal nodes; one node when they do not divide
    (vLLM and SGLang fall back to the global policy then, too)."""
    return _engine_topology(as_int(num_ranks, "num_ranks", 1), as_int(num_nodes, "num_nodes", 1))


@lru_cache(maxsize=64)
def _engine_topology(num_ranks: int, num_nodes: int) -> Topology:
    # Built once per shape: engines call the policy on every rebalance, and the solver keeps
    # per-topology kernel inputs (topologies are immutable).
    if num_nodes > 1 and num_ranks % num_nodes == 0:
        return Topology.cluster(nodes=num_nodes, gpus_per_node=num_ranks // num_nodes)
    return Topology.flat(num_ranks)


def engine_groups(num_groups: Any, num_experts: int) -> int:
    """Expert groups for ``plumb.solve``: 1 for the "no groups" of the engines (vLLM may pass
    0, SGLang None); otherwise an int dividing E."""
    if num_groups is None or (isinstance(num_groups, int) and not isinstance(num_groups, bool)
                              and num_groups == 0):
        return 1
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 0 \
            or num_experts % num_groups:
        raise InputError(f"num_groups must be None, 0 or an int dividing E = {num_experts}, got "
                         f"{num_groups!r}")
    return num_groups


def engine_redundant(num_slots: Any, num_experts: int, name: str) -> int:
    """R = P - E for ``plumb.solve``, checking the engine's slot count P first."""
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < num_experts:
        raise InputError(f"{name} must be an int >= E = {num_experts} experts, got {num_slots!r}")
    return num_slots - num_experts


def optional_previous(old: Any, num_layers: int, num_experts: int, num_ranks: int) -> Any:
    """The engine's current phy2log as int64 [L, P'] when it is a complete placement on these
    ranks, else None: it only steers movement, and an engine's map can legitimately not be one
    (empty slots marked -1, or a rank count that just changed)."""
    from ..solver.validate import as_phy2log

    if old is None:
        return None
    try:
        return as_phy2log(old, "old placement", num_layers, num_experts, num_ranks)
    except InputError:
        return None
