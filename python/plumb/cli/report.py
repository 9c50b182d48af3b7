"""``plumb report INPUT [--placement P] [--previous OLD] -o report.html``: the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a placement",
        description="Score the current and a proposed placement on the loads in INPUT and write "
                    "one self-contained HTML page: summary cards, per-layer charts, heat maps, a "
                    "layer view; per-step charts when INPUT is a window; traffic by link level "
                    "with --nodes/--numa/--topology. Without --placement plumb solves one; "
                    "without --previous the current placement is the engines' start-up layout "
                    "(slot p holds expert p mod E).",
        epilog="example: plumb report stats.npz --ranks 32 --nodes 4 --redundant 32 -o report.html")
    parser.add_argument("input", type=Path, help="load statistics: plumb .npz or a .npy matrix "
                        "[L, E] / window [T, L, E]")
    parser.add_argument("--placement", type=Path, metavar="P",
                        help="proposed placement, phy2log [L, P] .npy (default: plumb solves)")
    parser.add_argument("--previous", type=Path, metavar="OLD",
                        help="current placement, phy2log [L, P] .npy")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="HTML file to write")
    parser.add_argument("--ranks", type=int, metavar="G",
                        help="ranks (GPUs); default: the input's metadata or --topology")
    parser.add_argument("--nodes", type=int, metavar="N",
                        help="nodes, ranks split evenly (adds the traffic section)")
    parser.add_argument("--numa", type=int, default=1, metavar="M",
                        help="NUMA domains per node (default: %(default)s)")
    parser.add_argument("--topology", type=Path, metavar="JSON", help="topology JSON file")
    parser.add_argument("--redundant", type=int, metavar="R",
                        help="redundant slots when solving (default: from --previous, else 0)")
    parser.add_argument("--groups", type=int, default=1, metavar="K",
                        help="expert groups when solving (default: %(default)s)")
    parser.add_argument("--policy", choices=("plumb", "deepseek"), default="plumb",
                        help="solver policy (default: %(default)s)")
    parser.add_argument("--bytes-per-expert", type=int, metavar="B",
                        help="bytes of one expert's weights, to report moved bytes")
    parser.add_argument("--title", help="page title (default: the input's file name)")
    parser.add_argument("--png", action="store_true",
                        help="also write the key charts as OUT-*.png (needs matplotlib)")
    parser.set_defaults(func=run)


def _topology(args: argparse.Namespace, meta: Mapping[str, Any]) -> Any:
    """A Topology from --topology or --nodes/--numa, else the int G (no traffic section)."""
    from ..topology import Topology

    if args.topology is not None:
        if args.nodes is not None:
            raise InputError("give --topology or --nodes, not both")
        topo = Topology.from_json(args.topology)
        if args.ranks is not None and args.ranks != topo.num_ranks:
            raise InputError(f"--ranks {args.ranks} disagrees with {args.topology} "
                             f"({topo.num_ranks} ranks)")
        return topo
    ranks = args.ranks if args.ranks is not None else meta.get("num_ranks")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise InputError("--ranks G is required (the input's metadata names no num_ranks)")
    if args.nodes is None:
        return ranks
    if args.nodes < 1 or ranks % args.nodes:
        raise InputError(f"--nodes {args.nodes} must divide the {ranks} ranks")
    return Topology.cluster(nodes=args.nodes, gpus_per_node=ranks // args.nodes,
                            numa_per_node=args.numa)


def _load_array(path: Path, what: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read {what} as .npy ({err})") from None


def run(args: argparse.Namespace) -> int:
    from ..io.npz import load_plumb_npz
    from ..report import report

    traffic, meta = None, {}
    if args.input.suffix == ".npz":
        stats = load_plumb_npz(args.input)
        loads = stats.window if stats.window is not None else stats.loads
        traffic, meta = stats.traffic, stats.meta
    else:
        loads = _load_array(args.input, "loads")
    topo = _topology(args, meta)
    placement: Optional[Any] = None
    previous: Optional[Any] = None
    if args.placement is not None:
        placement = _load_array(args.placement, "the placement")
    if args.previous is not None:
        previous = _load_array(args.previous, "the previous placement")
    solve_kwargs = {"num_groups": args.groups, "policy": args.policy}
    if args.redundant is not None:
        solve_kwargs["num_redundant"] = args.redundant
    report(loads, topo, placement, previous, traffic=traffic, output=args.output, png=args.png,
           title=args.title or args.input.name, bytes_per_expert=args.bytes_per_expert,
           placement_source=None if args.placement is None else str(args.placement),
           previous_source=None if args.previous is None else str(args.previous),
           **solve_kwargs)
    print(f"plumb report: wrote {args.output}")
    return 0
