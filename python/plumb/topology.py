"""Cluster topology: which node and NUMA domain each rank sits in, and what links cost.

Ranks are ``0..G-1``; rank ``r`` holds physical slots ``[r*S, (r+1)*S)``. Ranks are grouped
into NUMA domains and domains into nodes, contiguously (rank-major), as launchers number GPUs.
Link levels, cheapest first: the same rank, the same NUMA domain, another domain of the same
node, another node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import numpy as np

from .errors import InputError

SAME_RANK = 0
SAME_NUMA = 1
CROSS_NUMA = 2
CROSS_NODE = 3
LEVEL_NAMES = ("same_rank", "same_numa", "cross_numa", "cross_node")

# Relative cost of moving one routed token over each level (dimensionless).
DEFAULT_LEVEL_COSTS = {"same_rank": 0.0, "same_numa": 1.0, "cross_numa": 2.0, "cross_node": 8.0}
# Sustained copy bandwidth of each level in GB/s (HBM copy, NVLink/NVSwitch, inter-socket
# path, one 400 Gb/s NIC per GPU).
DEFAULT_LEVEL_BANDWIDTHS_GBPS = {
    "same_rank": 1500.0,
    "same_numa": 400.0,
    "cross_numa": 200.0,
    "cross_node": 50.0,
}


def _level_vector(values: Optional[Mapping[str, float]], defaults: Mapping[str, float],
                  name: str) -> np.ndarray:
    merged = dict(defaults)
    for key, value in (values or {}).items():
        if key not in defaults:
            raise InputError(f"{name}: unknown level {key!r}; expected one of {list(defaults)}")
        value = float(value)
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{name}[{key!r}] must be a finite number >= 0, got {value}")
        merged[key] = value
    return np.array([merged[level] for level in LEVEL_NAMES], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Topology:
    """Placement of G ranks in NUMA domains and nodes, with per-pair link cost and bandwidth.

    Attributes:
        node_of_rank: int64 [G], node index of each rank (0..num_nodes-1).
        numa_of_rank: int64 [G], global NUMA-domain index of each rank.
        level: int64 [G, G], link level between two ranks (SAME_RANK..CROSS_NODE).
        link_cost: float64 [G, G], relative cost per routed token from rank s to rank d.
        bandwidth_gbps: float64 [G, G], copy bandwidth in GB/s from rank s to rank d.
        rank_speed: float64 [G], relative compute speed (load is balanced as load / speed).
    """

    node_of_rank: np.ndarray
    numa_of_rank: np.ndarray
    level: np.ndarray
    link_cost: np.ndarray
    bandwidth_gbps: np.ndarray
    rank_speed: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        g = len(self.node_of_rank)
        if self.rank_speed is None:
            object.__setattr__(self, "rank_speed", np.ones(g, dtype=np.float64))
        for name in ("node_of_rank", "numa_of_rank", "level", "link_cost", "bandwidth_gbps",
                     "rank_speed"):
            arr = np.array(getattr(self, name), copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if g < 1:
            raise InputError("topology needs at least one rank")
        for name in ("level", "link_cost", "bandwidth_gbps"):
            if getattr(self, name).shape != (g, g):
                raise InputError(f"{name} must be [{g}, {g}], got {list(getattr(self, name).shape)}")
        cost = self.link_cost
        if not np.all(np.isfinite(cost)) or np.any(cost < 0):
            raise InputError("link_cost must be finite and >= 0")
        if not np.allclose(cost, cost.T):
            raise InputError("link_cost must be symmetric")
        speed = self.rank_speed
        if speed.shape != (g,) or not np.all(np.isfinite(speed)) or np.any(speed <= 0):
            raise InputError(f"rank_speed must be [{g}] finite values > 0")

    @property
    def num_ranks(self) -> int:
        """G, the number of ranks (GPUs)."""
        return int(self.node_of_rank.shape[0])

    @property
    def num_nodes(self) -> int:
        """Number of distinct nodes."""
        return int(np.unique(self.node_of_rank).size)

    @property
    def num_numa_domains(self) -> int:
        """Number of distinct NUMA domains across all nodes."""
        return int(np.unique(self.numa_of_rank).size)

    @classmethod
    def flat(cls, num_ranks: int, **kwargs) -> "Topology":
        """G ranks in one node and one NUMA domain."""
        return cls.cluster(nodes=1, gpus_per_node=num_ranks, numa_per_node=1, **kwargs)

    @classmethod
    def cluster(
        cls,
        nodes: int,
        gpus_per_node: int,
        numa_per_node: int = 1,
        level_costs: Optional[Mapping[str, float]] = None,
        level_bandwidths_gbps: Optional[Mapping[str, float]] = None,
        rank_speed: Optional[np.ndarray] = None,
    ) -> "Topology":
        """``nodes * gpus_per_node`` ranks, each node split evenly into ``numa_per_node`` domains.

        ``level_costs`` / ``level_bandwidths_gbps`` override the defaults per level name
        (``same_rank``, ``same_numa``, ``cross_numa``, ``cross_node``).
        """
        for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node),
                            ("numa_per_node", numa_per_node)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if gpus_per_node % numa_per_node:
            raise InputError(
                f"gpus_per_node={gpus_per_node} must be divisible by numa_per_node={numa_per_node}"
            )
        g = nodes * gpus_per_node
        ranks = np.arange(g, dtype=np.int64)
        node_of_rank = ranks // gpus_per_node
        numa_of_rank = ranks // (gpus_per_node // numa_per_node)
        level = np.full((g, g), CROSS_NODE, dtype=np.int64)
        same_node = node_of_rank[:, None] == node_of_rank[None, :]
        level[same_node] = CROSS_NUMA
        level[numa_of_rank[:, None] == numa_of_rank[None, :]] = SAME_NUMA
        level[ranks, ranks] = SAME_RANK
        costs = _level_vector(level_costs, DEFAULT_LEVEL_COSTS, "level_costs")
        bandwidths = _level_vector(level_bandwidths_gbps, DEFAULT_LEVEL_BANDWIDTHS_GBPS,
                                   "level_bandwidths_gbps")
        if np.any(bandwidths <= 0):
            raise InputError("level_bandwidths_gbps must all be > 0")
        return cls(
            node_of_rank=node_of_rank,
            numa_of_rank=numa_of_rank,
            level=level,
            link_cost=costs[level],
            bandwidth_gbps=bandwidths[level],
            rank_speed=None if rank_speed is None else np.asarray(rank_speed, dtype=np.float64),
        )

    def __repr__(self) -> str:
        return (f"Topology(ranks={self.num_ranks}, nodes={self.num_nodes}, "
                f"numa_domains={self.num_numa_domains})")


TopologyLike = Union[Topology, int]


def as_topology(topo: TopologyLike) -> Topology:
    """Accepts a Topology or an int G (a flat topology of G ranks)."""
    if isinstance(topo, Topology):
        return topo
    if isinstance(topo, (int, np.integer)) and not isinstance(topo, bool):
        if topo < 1:
            raise InputError(f"topo: number of ranks must be >= 1, got {topo}")
        return Topology.flat(int(topo))
    raise InputError(f"topo must be a plumb.Topology or an int number of ranks, got {type(topo).__name__}")
