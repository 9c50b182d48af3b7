"""Cluster topology: which node and NUMA domain each rank sits in, and what links cost.

Ranks are ``0..G-1``; rank ``r`` holds physical slots ``[r*S, (r+1)*S)``. Each rank sits in a
NUMA domain and each domain in a node. Link levels, cheapest first: the same rank, the same
NUMA domain, another domain of the same node, another node. The link-cost matrix [G, G] is
derived from the levels (per-level costs and bandwidths overridable) or given explicitly
(``Topology.from_matrix``, ``Topology.detect``); ``level`` always follows from the node and NUMA
labels, so cross-node and cross-NUMA fractions mean the same under any cost matrix.

JSON form (``to_json`` / ``from_json``): see ``TOPOLOGY_JSON_SCHEMA`` and the README section
"Topology JSON".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import InputError

SAME_RANK = 0
SAME_NUMA = 1
CROSS_NUMA = 2
CROSS_NODE = 3
LEVEL_NAMES = ("same_rank", "same_numa", "cross_numa", "cross_node")

# Relative cost of moving one routed token over each level (dimensionless). Between ranks these
# equal DEFAULT_REFERENCE_GBPS / bandwidth (a token's cost is proportional to its transfer
# time); a token served on its own rank is free.
DEFAULT_LEVEL_COSTS = {"same_rank": 0.0, "same_numa": 1.0, "cross_numa": 2.0, "cross_node": 8.0}
# Sustained copy bandwidth of each level in GB/s (HBM copy, NVLink/NVSwitch, inter-socket
# path, one 400 Gb/s NIC per GPU).
DEFAULT_LEVEL_BANDWIDTHS_GBPS = {
    "same_rank": 1500.0,
    "same_numa": 400.0,
    "cross_numa": 200.0,
    "cross_node": 50.0,
}
# The bandwidth (GB/s) whose links cost 1.0 per token; used to turn measured or nominal
# bandwidths into costs (``Topology.detect``).
DEFAULT_REFERENCE_GBPS = 400.0

# The most ranks a topology may have: it holds three [G, G] matrices (3 x 1.5 GB here), and
# a typo such as gpus_per_node=1000000 should fail at once, not exhaust memory.
MAX_RANKS = 8192

JSON_FORMAT = "plumb-topology"
JSON_VERSION = 1
# Keys of the JSON object, with what each holds. Documented in README.md "Topology JSON".
TOPOLOGY_JSON_SCHEMA = {
    "format": f'"{JSON_FORMAT}" (optional on read)',
    "version": f"{JSON_VERSION} (optional on read)",
    "cluster": '{"nodes", "gpus_per_node", "numa_per_node"}: shorthand instead of the two lists',
    "node_of_rank": "[G] ints: node of each rank",
    "numa_of_rank": "[G] ints: NUMA domain of each rank (default: one domain per node)",
    "level_costs": "{level: cost}: per-level cost overrides",
    "level_bandwidths_gbps": "{level: GB/s}: per-level bandwidth overrides",
    "link_cost": "[G][G] explicit cost matrix (replaces level_costs)",
    "bandwidth_gbps": "[G][G] explicit bandwidth matrix (replaces level_bandwidths_gbps)",
    "rank_speed": "[G] relative speed of each rank (default 1.0)",
}


def _level_vector(values: Optional[Mapping[str, float]], defaults: Mapping[str, float],
                  name: str) -> np.ndarray:
    if values is not None and not isinstance(values, Mapping):
        raise InputError(f"{name} must be a mapping level name -> number, got {type(values).__name__}")
    merged = dict(defaults)
    for key, value in (values or {}).items():
        if key not in defaults:
            raise InputError(f"{name}: unknown level {key!r}; expected one of {list(defaults)}")
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name}[{key!r}] must be a finite number >= 0, got "
                             f"{_short(value)}") from None
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{name}[{key!r}] must be a finite number >= 0, got {value}")
        merged[key] = value
    return np.array([merged[level] for level in LEVEL_NAMES], dtype=np.float64)


def _label_vector(values: Any, name: str, length: Optional[int] = None) -> np.ndarray:
    """A [G] int64 vector of labels >= 0 (node or NUMA ids), G <= ``MAX_RANKS``."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a non-empty 1-D list of ints") from None
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D list of ints, got shape {list(arr.shape)}")
    if arr.size > MAX_RANKS:
        raise InputError(f"{name} has {arr.size} ranks; a topology holds at most {MAX_RANKS}")
    if length is not None and arr.size != length:
        raise InputError(f"{name} must have {length} entries (one per rank), got {arr.size}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" or np.any(arr < 0):
        raise InputError(f"{name} must hold ints >= 0, got {arr.tolist()}")
    return arr.astype(np.int64)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about user input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def levels_from_labels(node_of_rank: np.ndarray, numa_of_rank: np.ndarray) -> np.ndarray:
    """int64 [G, G] link level of every rank pair from the node and NUMA labels ([G] each)."""
    g = node_of_rank.shape[0]
    level = np.full((g, g), CROSS_NODE, dtype=np.int64)
    level[node_of_rank[:, None] == node_of_rank[None, :]] = CROSS_NUMA
    level[(numa_of_rank[:, None] == numa_of_rank[None, :])
          & (node_of_rank[:, None] == node_of_rank[None, :])] = SAME_NUMA
    level[np.arange(g), np.arange(g)] = SAME_RANK
    return level


def _square_matrix(values: Any, name: str, g: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a [{g}, {g}] matrix of finite numbers >= 0") from None
    if arr.shape != (g, g):
        raise InputError(f"{name} must be square [{g}, {g}] (one row and column per rank), "
                         f"got {list(arr.shape)}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError(f"{name} must hold finite values >= 0")
    if not np.allclose(arr, arr.T, rtol=1e-9, atol=1e-12):
        bad = np.argwhere(~np.isclose(arr, arr.T, rtol=1e-9, atol=1e-12))[0]
        raise InputError(f"{name} must be symmetric: [{bad[0]}, {bad[1]}] = {arr[bad[0], bad[1]]} "
                         f"but [{bad[1]}, {bad[0]}] = {arr[bad[1], bad[0]]}")
    return arr


def _per_level_values(matrix: np.ndarray, level: np.ndarray) -> Optional[Dict[str, float]]:
    """{level name: value} if ``matrix`` is constant on every level present, else None."""
    out: Dict[str, float] = {}
    for index, name in enumerate(LEVEL_NAMES):
        values = matrix[level == index]
        if values.size:
            if not np.all(values == values[0]):
                return None
            out[name] = float(values[0])
    return out


@dataclass(frozen=True, eq=False)
class Topology:
    """Placement of G ranks in NUMA domains and nodes, with per-pair link cost and bandwidth.

    Attributes:
        node_of_rank: int64 [G], node index of each rank.
        numa_of_rank: int64 [G], global NUMA-domain index of each rank (a domain lies in one node).
        level: int64 [G, G], link level between two ranks (SAME_RANK..CROSS_NODE); must agree
            with the labels (see ``levels_from_labels``).
        link_cost: float64 [G, G], relative cost per routed token from rank s to rank d;
            symmetric, finite, >= 0.
        bandwidth_gbps: float64 [G, G], copy bandwidth in GB/s from rank s to rank d; > 0.
        rank_speed: float64 [G], relative compute speed (load is balanced as load / speed).

    Construct with ``flat``, ``cluster``, ``from_matrix``, ``from_json`` or ``detect``.
    The counts (``num_ranks``, ``num_nodes``, ...) are computed once: the arrays are read-only.
    """

    node_of_rank: np.ndarray
    numa_of_rank: np.ndarray
    level: np.ndarray
    link_cost: np.ndarray
    bandwidth_gbps: np.ndarray
    rank_speed: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        node = _label_vector(self.node_of_rank, "node_of_rank")
        g = node.shape[0]
        numa = _label_vector(self.numa_of_rank, "numa_of_rank", g)
        try:
            speed = (np.ones(g) if self.rank_speed is None
                     else np.asarray(self.rank_speed, dtype=np.float64))
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"rank_speed must be [{g}] finite numbers > 0, got "
                             f"{_short(self.rank_speed)}") from None
        if speed.shape != (g,) or not np.all(np.isfinite(speed)) or np.any(speed <= 0):
            raise InputError(f"rank_speed must be [{g}] finite values > 0, got "
                             f"{_short(speed.tolist())}")
        for domain in np.unique(numa):
            nodes = np.unique(node[numa == domain])
            if nodes.size > 1:
                raise InputError(f"numa_of_rank: NUMA domain {domain} spans nodes {nodes.tolist()}; "
                                 "a domain must lie inside one node")
        level = np.asarray(self.level)
        expected = levels_from_labels(node, numa)
        if level.shape != (g, g) or not np.array_equal(level, expected):
            raise InputError("level must be the [G, G] levels implied by node_of_rank and "
                             "numa_of_rank (use levels_from_labels)")
        cost = _square_matrix(self.link_cost, "link_cost", g)
        bandwidth = _square_matrix(self.bandwidth_gbps, "bandwidth_gbps", g)
        if np.any(bandwidth <= 0):
            raise InputError("bandwidth_gbps must be > 0 for every rank pair")
        for name, arr in (("node_of_rank", node), ("numa_of_rank", numa), ("level", expected),
                          ("link_cost", cost), ("bandwidth_gbps", bandwidth),
                          ("rank_speed", speed)):
            arr = np.array(arr, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @cached_property
    def num_ranks(self) -> int:
        """G, the number of ranks (GPUs)."""
        return int(self.node_of_rank.shape[0])

    @cached_property
    def slowest_speed(self) -> float:
        """The smallest rank speed (the load limits divide by it; read on every solve)."""
        return float(self.rank_speed.min())

    @cached_property
    def fastest_speed(self) -> float:
        """The largest rank speed (the load floor divides by it; read on every solve)."""
        return float(self.rank_speed.max())

    @cached_property
    def num_nodes(self) -> int:
        """Number of distinct nodes."""
        return int(np.unique(self.node_of_rank).size)

    @cached_property
    def num_numa_domains(self) -> int:
        """Number of distinct NUMA domains across all nodes."""
        return int(np.unique(self.numa_of_rank).size)

    @classmethod
    def flat(cls, num_ranks: int, **kwargs) -> "Topology":
        """G ranks in one node and one NUMA domain (``kwargs`` as in ``cluster``)."""
        return cls.cluster(nodes=1, gpus_per_node=num_ranks, numa_per_node=1, **kwargs)

    @classmethod
    def cluster(
        cls,
        nodes: int,
        gpus_per_node: int,
        numa_per_node: int = 1,
        level_costs: Optional[Mapping[str, float]] = None,
        level_bandwidths_gbps: Optional[Mapping[str, float]] = None,
        rank_speed: Optional[Sequence[float]] = None,
    ) -> "Topology":
        """``nodes * gpus_per_node`` ranks, each node split evenly into ``numa_per_node`` domains.

        Ranks are numbered node-major and domain-major (rank r is on node r // gpus_per_node),
        as launchers number GPUs. ``level_costs`` / ``level_bandwidths_gbps`` override the
        defaults per level name (``same_rank``, ``same_numa``, ``cross_numa``, ``cross_node``);
        ``rank_speed`` is [G] relative speeds (default all 1).
        """
        for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node),
                            ("numa_per_node", numa_per_node)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if gpus_per_node % numa_per_node:
            raise InputError(
                f"gpus_per_node={gpus_per_node} must be divisible by numa_per_node={numa_per_node}"
            )
        if nodes * gpus_per_node > MAX_RANKS:
            raise InputError(f"nodes x gpus_per_node = {nodes * gpus_per_node} ranks; a topology "
                             f"holds at most {MAX_RANKS}")
        ranks = np.arange(nodes * gpus_per_node, dtype=np.int64)
        return cls.from_levels(ranks // gpus_per_node, ranks // (gpus_per_node // numa_per_node),
                               level_costs, level_bandwidths_gbps, rank_speed)

    @classmethod
    def from_levels(
        cls,
        node_of_rank: Sequence[int],
        numa_of_rank: Optional[Sequence[int]] = None,
        level_costs: Optional[Mapping[str, float]] = None,
        level_bandwidths_gbps: Optional[Mapping[str, float]] = None,
        rank_speed: Optional[Sequence[float]] = None,
    ) -> "Topology":
        """Any layout given by labels: costs and bandwidths come from the per-level values.

        ``node_of_rank`` / ``numa_of_rank``: [G] ints (NUMA default: one domain per node).
        """
        node = _label_vector(node_of_rank, "node_of_rank")
        numa = node if numa_of_rank is None else _label_vector(numa_of_rank, "numa_of_rank",
                                                               node.size)
        level = levels_from_labels(node, numa)
        costs = _level_vector(level_costs, DEFAULT_LEVEL_COSTS, "level_costs")
        bandwidths = _level_vector(level_bandwidths_gbps, DEFAULT_LEVEL_BANDWIDTHS_GBPS,
                                   "level_bandwidths_gbps")
        if np.any(bandwidths <= 0):
            raise InputError("level_bandwidths_gbps must all be > 0")
        return cls(node_of_rank=node, numa_of_rank=numa, level=level, link_cost=costs[level],
                   bandwidth_gbps=bandwidths[level], rank_speed=rank_speed)

    @classmethod
    def from_matrix(
        cls,
        link_cost: Any,
        node_of_rank: Optional[Sequence[int]] = None,
        numa_of_rank: Optional[Sequence[int]] = None,
        bandwidth_gbps: Any = None,
        level_bandwidths_gbps: Optional[Mapping[str, float]] = None,
        rank_speed: Optional[Sequence[float]] = None,
    ) -> "Topology":
        """An explicit [G, G] cost matrix (symmetric, finite, >= 0).

        ``node_of_rank`` / ``numa_of_rank`` label the ranks for the cross-node / cross-NUMA
        metrics (default: one node, one domain per node). ``bandwidth_gbps`` [G, G] is explicit
        or follows the levels (``level_bandwidths_gbps`` overrides).
        """
        try:
            cost = np.asarray(link_cost, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("link_cost must be a square [G, G] matrix of numbers") from None
        if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] == 0:
            raise InputError(f"link_cost must be a square [G, G] matrix, got shape {list(cost.shape)}")
        g = cost.shape[0]
        node = (np.zeros(g, dtype=np.int64) if node_of_rank is None
                else _label_vector(node_of_rank, "node_of_rank", g))
        base = cls.from_levels(node, numa_of_rank, None, level_bandwidths_gbps, rank_speed)
        return cls(node_of_rank=base.node_of_rank, numa_of_rank=base.numa_of_rank,
                   level=base.level, link_cost=cost,
                   bandwidth_gbps=base.bandwidth_gbps if bandwidth_gbps is None else bandwidth_gbps,
                   rank_speed=base.rank_speed)

    @classmethod
    def detect(cls, nodes: int = 1, **kwargs) -> "Topology":
        """This host's GPUs, from ``nvidia-smi topo -m`` and sysfs (see plumb.topology_detect).

        ``nodes`` > 1 repeats the host's layout over that many identical nodes. Raises
        ``plumb.topology_detect.DetectionError`` when nothing can be detected (no driver,
        no GPU). ``kwargs`` go to ``plumb.topology_detect.detect``.
        """
        from .topology_detect import detect

        return detect(nodes=nodes, **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready dict of ``to_json``: compact per-level values where they suffice."""
        out: Dict[str, Any] = {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "node_of_rank": self.node_of_rank.tolist(),
            "numa_of_rank": self.numa_of_rank.tolist(),
        }
        for matrix, level_key, matrix_key in ((self.link_cost, "level_costs", "link_cost"),
                                              (self.bandwidth_gbps, "level_bandwidths_gbps",
                                               "bandwidth_gbps")):
            per_level = _per_level_values(matrix, self.level)
            if per_level is None:
                out[matrix_key] = matrix.tolist()
            else:
                out[level_key] = per_level
        out["rank_speed"] = self.rank_speed.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Topology":
        """Inverse of ``to_dict``; accepts every key of ``TOPOLOGY_JSON_SCHEMA``."""
        if not isinstance(data, Mapping):
            raise InputError(f"topology JSON must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(TOPOLOGY_JSON_SCHEMA))
        if unknown:
            raise InputError(f"topology JSON: unknown keys {unknown}; expected a subset of "
                             f"{sorted(TOPOLOGY_JSON_SCHEMA)}")
        if data.get("format", JSON_FORMAT) != JSON_FORMAT:
            raise InputError(f"topology JSON: format must be {JSON_FORMAT!r}, got {data['format']!r}")
        if data.get("version", JSON_VERSION) != JSON_VERSION:
            raise InputError(f"topology JSON: unsupported version {data['version']!r} "
                             f"(this plumb reads version {JSON_VERSION})")
        if "cluster" in data:
            if "node_of_rank" in data or "numa_of_rank" in data:
                raise InputError("topology JSON: give either 'cluster' or 'node_of_rank'/"
                                 "'numa_of_rank', not both")
            shape = data["cluster"]
            if not isinstance(shape, Mapping) or not set(shape) <= {"nodes", "gpus_per_node",
                                                                    "numa_per_node"}:
                raise InputError("topology JSON: 'cluster' must be an object with keys nodes, "
                                 "gpus_per_node and optionally numa_per_node")
            try:
                layout = cls.cluster(shape["nodes"], shape["gpus_per_node"],
                                     shape.get("numa_per_node", 1))
            except KeyError as missing:
                raise InputError(f"topology JSON: 'cluster' needs {missing}") from None
            node, numa = layout.node_of_rank, layout.numa_of_rank
        elif "node_of_rank" in data:
            node, numa = data["node_of_rank"], data.get("numa_of_rank")
        else:
            raise InputError("topology JSON needs 'cluster' or 'node_of_rank'")
        if "link_cost" in data and "level_costs" in data:
            raise InputError("topology JSON: give either 'link_cost' or 'level_costs', not both")
        if "bandwidth_gbps" in data and "level_bandwidths_gbps" in data:
            raise InputError("topology JSON: give either 'bandwidth_gbps' or "
                             "'level_bandwidths_gbps', not both")
        base = cls.from_levels(node, numa, data.get("level_costs"),
                               data.get("level_bandwidths_gbps"), data.get("rank_speed"))
        return cls(node_of_rank=base.node_of_rank, numa_of_rank=base.numa_of_rank,
                   level=base.level, link_cost=data.get("link_cost", base.link_cost),
                   bandwidth_gbps=data.get("bandwidth_gbps", base.bandwidth_gbps),
                   rank_speed=base.rank_speed)

    def to_json(self, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
        """The JSON text of this topology; also written (atomically) to ``path`` if given."""
        # One key per line, one matrix row per line: readable and diff-friendly.
        items = []
        for key, value in self.to_dict().items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                rows = ",\n    ".join(json.dumps(row) for row in value)
                items.append(f"  {json.dumps(key)}: [\n    {rows}\n  ]")
            else:
                items.append(f"  {json.dumps(key)}: {json.dumps(value)}")
        text = "{\n" + ",\n".join(items) + "\n}\n"
        if path is not None:
            from .io.atomic import atomic_write

            with atomic_write(path, "w") as handle:
                handle.write(text)
        return text

    @classmethod
    def from_json(cls, path: Union[str, "os.PathLike[str]"]) -> "Topology":
        """Read a topology JSON file (schema: ``TOPOLOGY_JSON_SCHEMA``, README "Topology JSON")."""
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except OSError as err:
            raise InputError(f"topology JSON {str(path)!r} cannot be read: {err}") from None
        except UnicodeDecodeError as err:
            raise InputError(f"topology JSON {str(path)!r} is not UTF-8 text ({err.reason} at "
                             f"byte {err.start})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"topology JSON {str(path)!r} is not valid JSON: {err}") from None
        except RecursionError:
            raise InputError(f"topology JSON {str(path)!r} is nested too deeply to read") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        return (f"Topology(ranks={self.num_ranks}, nodes={self.num_nodes}, "
                f"numa_domains={self.num_numa_domains})")


TopologyLike = Union[Topology, int]


@lru_cache(maxsize=64)
def _flat_topology(num_ranks: int) -> Topology:
    """``Topology.flat(num_ranks)``, built once per G: topologies are immutable, and building
    one (validation included) costs more than a small solve."""
    return Topology.flat(num_ranks)


def as_topology(topo: TopologyLike, num_ranks: Optional[int] = None) -> Topology:
    """Accepts a Topology or an int G (a flat topology of G ranks).

    ``num_ranks``, when given, is the G a placement needs; a mismatch raises InputError.
    """
    if isinstance(topo, Topology):
        out = topo
    elif isinstance(topo, (int, np.integer)) and not isinstance(topo, bool):
        if topo < 1:
            raise InputError(f"topo: number of ranks must be >= 1, got {topo}")
        out = _flat_topology(int(topo))
    else:
        raise InputError(f"topo must be a plumb.Topology or an int number of ranks, "
                         f"got {type(topo).__name__}")
    if num_ranks is not None and out.num_ranks != num_ranks:
        raise InputError(f"topo has {out.num_ranks} ranks but the placement needs {num_ranks}")
    return out
