"""The ``--ranks/--nodes/--numa/--topology`` options shared by solve, report and recommend."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import InputError


def add_topology_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --ranks G, --nodes N, --numa M and --topology JSON to ``parser``."""
    parser.add_argument("--ranks", type=int, metavar="G",
                        help="ranks (GPUs); default: the input's num_ranks or --topology")
    parser.add_argument("--nodes", type=int, metavar="N",
                        help="nodes, ranks split evenly (default: the input's num_nodes, else 1)")
    parser.add_argument("--numa", type=int, default=None, metavar="M",
                        help="NUMA domains per node (default: 1)")
    parser.add_argument("--topology", type=Path, metavar="JSON",
                        help="topology JSON file instead of --nodes/--numa")


def positive_meta(meta: Mapping[str, Any], key: str) -> Optional[int]:
    """meta[key] when it is an int >= 1, else None."""
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def recorded_placement(stats: Any, num_ranks: int) -> Optional[Any]:
    """The placement ``stats`` (``plumb.io.PlumbStats``) were recorded under, int64 [L, P],
    when it can be the current one on ``num_ranks`` ranks (its layers match the loads' and
    P is a multiple of G); else None: a placement recorded for another rank count is not
    this cluster's current one."""
    table = stats.placement
    # The loads' L from their shape: summing a window just to count its layers is waste.
    num_layers = (stats.loads if stats.loads is not None else stats.window).shape[-2]
    if table is None or table.shape[0] != num_layers or table.shape[1] % num_ranks:
        return None
    return table


def topology_from_args(args: argparse.Namespace, meta: Mapping[str, Any]) -> Any:
    """A Topology from --topology or --nodes/--numa, else the int G.

    Missing --ranks and --nodes fall back on the input's metadata (``num_ranks``,
    ``num_nodes``); raises InputError when they disagree or cannot make a cluster.
    """
    from ..topology import Topology

    if args.topology is not None:
        if args.nodes is not None or args.numa is not None:
            raise InputError("give --topology or --nodes / --numa, not both")
        topo = Topology.from_json(args.topology)
        if args.ranks is not None and args.ranks != topo.num_ranks:
            raise InputError(f"--ranks {args.ranks} disagrees with {args.topology} "
                             f"({topo.num_ranks} ranks)")
        return topo
    ranks = args.ranks if args.ranks is not None else positive_meta(meta, "num_ranks")
    if ranks is None:
        raise InputError("--ranks G is required (the input's metadata names no num_ranks)")
    if ranks < 1:
        raise InputError(f"--ranks must be >= 1, got {ranks}")
    nodes = args.nodes
    if nodes is None:
        meta_nodes = positive_meta(meta, "num_nodes")
        nodes = meta_nodes if meta_nodes and ranks % meta_nodes == 0 else 1
    if nodes < 1 or ranks % nodes:
        raise InputError(f"--nodes {nodes} must be >= 1 and divide the {ranks} ranks")
    numa = 1 if args.numa is None else args.numa
    if numa < 1:
        raise InputError(f"--numa must be >= 1, got {numa}")
    if nodes == 1 and numa == 1:
        return ranks
    return Topology.cluster(nodes=nodes, gpus_per_node=ranks // nodes, numa_per_node=numa)
