"""``plumb report INPUT [--placement P] [--previous OLD] -o report.html``: the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from ..topology import as_topology
from .inspect import EXAMPLE_HELP, input_path
from .topology_args import add_topology_arguments, recorded_placement, topology_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a placement",
        description="Score the current and a proposed placement on the loads in INPUT and write "
                    "one self-contained HTML page: summary cards, per-layer charts, heat maps, a "
                    "layer view; per-step charts when INPUT is a window; traffic by link level "
                    "with --nodes/--numa/--topology. Without --placement plumb solves one; "
                    "without --previous the current placement is the one INPUT was recorded "
                    "under (vLLM p2l_map, plumb .npz placement), else the engines' start-up "
                    "layout (slot p holds expert p mod E).",
        epilog="example: plumb report stats.npz --ranks 32 --nodes 4 --redundant 32 -o report.html")
    parser.add_argument("input", type=input_path,
                        help="load statistics in any format plumb reads (plumb .npz, vLLM "
                             "JSONL, SGLang .pt/.json, TensorRT-LLM directory, .npy/.csv), "
                             f"{EXAMPLE_HELP}")
    parser.add_argument("--placement", type=Path, metavar="P",
                        help="proposed placement, any placement format plumb reads "
                             "(default: plumb solves)")
    parser.add_argument("--previous", type=Path, metavar="OLD",
                        help="current placement, any placement format plumb reads")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="HTML file to write")
    add_topology_arguments(parser)
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


def run(args: argparse.Namespace) -> int:
    from ..io import read_placement, read_stats
    from ..report import report

    stats = read_stats(args.input)
    loads = stats.window if stats.window is not None else stats.loads
    topo = topology_from_args(args, stats.meta)
    placement: Optional[Any] = None
    if args.placement is not None:
        placement = read_placement(args.placement)
    previous = recorded_placement(stats, as_topology(topo).num_ranks)
    previous_source = f"placement recorded in {args.input.name}"
    if args.previous is not None:
        previous, previous_source = read_placement(args.previous), str(args.previous)
    elif previous is None:
        previous_source = None
    solve_kwargs = {"num_groups": args.groups, "policy": args.policy}
    if args.redundant is not None:
        solve_kwargs["num_redundant"] = args.redundant
    report(loads, topo, placement, previous, traffic=stats.traffic, output=args.output,
           png=args.png, title=args.title or args.input.name,
           bytes_per_expert=args.bytes_per_expert,
           placement_source=None if args.placement is None else str(args.placement),
           previous_source=previous_source, **solve_kwargs)
    print(f"plumb report: wrote {args.output}")
    return 0
