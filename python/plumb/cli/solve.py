"""``plumb solve INPUT --ranks G [...] -o OUT``: solve a placement from any engine's statistics,
print a before/after summary, write the placement in an engine's format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InputError
from .inspect import (EXAMPLE, add_input_arguments, expert_skew, input_path, layer_ids_of,
                      read_input)
from .topology_args import (add_topology_arguments, positive_meta, recorded_placement,
                            topology_from_args)


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data import make_example as example
    from ..io import OUTPUT_FORMATS

    parser = subparsers.add_parser(
        "solve", help="solve an expert placement from load statistics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Balance the experts (plus --redundant replicas) of every layer over the "
                    "ranks, print per layer the\nbalancedness before (the current placement: "
                    "--previous, the one recorded in INPUT, else the\nengines' start-up layout, "
                    "slot p holding expert p mod E) and after, lb_gap, replicas, moves\nand "
                    "traffic, and write the placement with -o.\n\n"
                    "INPUT (format detected from the name and content, or --input-format):\n"
                    "  vLLM offline-EPLB stats .jsonl          SGLang logical_count .pt / .json\n"
                    "  TensorRT-LLM expert_statistic directory plumb .npz, .npy [L,E] or "
                    "[T,L,E], .csv [L,E]\n"
                    f"  '{EXAMPLE}': the bundled example ({example.NUM_LAYERS} layers x "
                    f"{example.NUM_EXPERTS} experts, {example.NUM_STEPS} steps, vLLM format, "
                    f"{example.NUM_RANKS} ranks)\n\n"
                    "OUT (format from --format or the extension):\n"
                    "  vllm .jsonl (eplb_initial_mapping)  sglang .json/.pt "
                    "(physical_to_logical_map)\n"
                    "  trtllm .yaml (moe_load_balancer)     plumb .npz    npy .npy (phy2log)",
        epilog=f"example: plumb solve {EXAMPLE} --ranks 8 --redundant 8 -o mapping.jsonl")
    parser.add_argument("input", type=input_path,
                        help=f"statistics file or directory, or '{EXAMPLE}'")
    add_input_arguments(parser)
    add_topology_arguments(parser)
    parser.add_argument("--redundant", type=int, metavar="R",
                        help="redundant slots per layer, P = E + R (default: from --previous or "
                             "the input, else 0)")
    parser.add_argument("--groups", type=int, metavar="K",
                        help="expert groups for group-limited routing (default: the input's "
                             "num_groups, else 1)")
    parser.add_argument("--previous", type=Path, metavar="OLD",
                        help="current placement (any placement format): moves are counted "
                             "against it and kept few")
    parser.add_argument("--policy", choices=("plumb", "deepseek"), default="plumb",
                        help="solver policy (default: %(default)s)")
    parser.add_argument("--bytes-per-expert", type=int, metavar="B",
                        help="bytes of one expert's weights, to report moved bytes")
    parser.add_argument("--format", choices=tuple(OUTPUT_FORMATS), metavar="FMT",
                        help=f"output format, one of {', '.join(OUTPUT_FORMATS)} (default: from "
                             "the extension of OUT)")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="write the placement here (atomically)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import plumb
    from ..io import read_placement, write_placement
    from ..report.data import default_layout
    from ..topology import as_topology

    if args.format is not None and args.output is None:
        raise InputError("--format needs -o OUT (where to write the placement)")
    stats = read_input(args)
    meta = stats.meta
    weights = stats.aggregated_loads()
    num_layers, num_experts = weights.shape
    topo = as_topology(topology_from_args(args, meta))

    if args.previous is not None:
        current, current_name = read_placement(args.previous), str(args.previous)
    else:
        current = recorded_placement(stats, topo.num_ranks)
        current_name = None if current is None else f"recorded in {args.input.name}"
    redundant = args.redundant
    if redundant is None:
        redundant = (current.shape[1] - num_experts if current is not None
                     else meta.get("num_redundant_experts", 0))
    groups = args.groups if args.groups is not None else (positive_meta(meta, "num_groups") or 1)
    traffic = stats.traffic
    if traffic is not None and np.shape(traffic)[-2] != topo.num_ranks:
        traffic = None

    placement = plumb.solve(stats.window if stats.window is not None else weights, topo,
                            num_redundant=redundant, num_groups=groups, policy=args.policy,
                            previous=current, traffic=traffic,
                            bytes_per_expert=args.bytes_per_expert)
    if current is None:
        current = default_layout(num_layers, num_experts, placement.num_slots)
        current_name = f"start-up layout (slot p holds expert p mod {num_experts})"
    before = plumb.evaluate(current, weights, topo)
    routed = None
    if traffic is not None or topo.num_nodes > 1 or topo.num_numa_domains > 1:
        from ..locality import traffic_metrics

        routed = [traffic_metrics(table, weights, topo, traffic)
                  for table in (current, placement.phy2log)]
    layer_ids = layer_ids_of(meta, num_layers)
    print("\n".join(_summary(args, stats, topo, placement, before, current_name, routed,
                             layer_ids)))
    if args.output is not None:
        written = write_placement(args.output, placement, format=args.format,
                                  layer_ids=layer_ids,
                                  meta={"num_ranks": topo.num_ranks, "policy": args.policy,
                                        "num_groups": groups, "source": str(args.input)})
        print(f"wrote {args.output} ({written} format)")
    return 0


def _summary(args: argparse.Namespace, stats: Any, topo: Any, placement: Any, before: Any,
              current_name: str, routed: Optional[List[Dict[str, Any]]],
              layer_ids: List[int]) -> List[str]:
    """The lines ``plumb solve`` prints: header, one row per layer, model totals."""
    after = placement.metrics
    weights = placement.loads
    num_layers, num_experts = weights.shape
    steps = "" if stats.window is None else f", {stats.window.shape[0]} steps"
    lines = [
        f"input      {args.input} ({stats.meta.get('source_format')}): {num_layers} layers x "
        f"{num_experts} experts{steps}, {weights.sum():.0f} tokens",
        f"placement  {topo.num_ranks} ranks, {topo.num_nodes} node(s), {placement.num_slots} "
        f"slots per layer ({placement.num_redundant} redundant), policy {args.policy}, "
        f"hierarchy {placement.metrics.hierarchy}",
        f"before     {current_name}",
        "",
    ]
    moves = after.moves
    header = f"{'layer':>5}  {'max/mean':>8}  {'balanced before':>15}  {'after':>6}  " \
             f"{'lb_gap':>7}  {'replicated':>10}  {'max copies':>10}"
    if moves is not None:
        header += f"  {'moves':>5}"
    lines.append(header)
    skew = expert_skew(weights)
    logcnt = placement.logcnt
    for layer in range(num_layers):
        row = (f"{layer_ids[layer]:>5}  {skew[layer]:>8.2f}  "
               f"{before.layer_balancedness[layer]:>15.4f}  "
               f"{after.layer_balancedness[layer]:>6.4f}  {after.lb_gap[layer]:>7.2%}  "
               f"{int((logcnt[layer] > 1).sum()):>10}  {int(logcnt[layer].max()):>10}")
        if moves is not None:
            row += f"  {int(moves.layer_moves[layer]):>5}"
        lines.append(row)
    lines += [
        "",
        f"balancedness {before.balancedness:.4f} -> {after.balancedness:.4f} (1.0 = perfect); "
        f"lb_gap mean {after.lb_gap_mean:.2%}, worst {after.lb_gap_max:.2%}",
    ]
    if moves is not None:
        moved = f"moves {moves.moves} expert copies across ranks (+{moves.local_copies} local)"
        if moves.bytes_moved is not None:
            moved += f", {moves.bytes_moved / 2**30:.2f} GiB"
        lines.append(moved)
    if routed is not None:
        source = "per-source counts" if placement.traffic is not None else "uniform sources"
        old, new = routed
        lines.append(f"traffic ({source}): cross-node {old['cross_node_fraction']:.1%} -> "
                     f"{new['cross_node_fraction']:.1%}, cross-NUMA "
                     f"{old['cross_numa_fraction']:.1%} -> {new['cross_numa_fraction']:.1%} of "
                     "routed tokens")
    return lines
