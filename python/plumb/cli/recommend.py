"""``plumb recommend INPUT --current OLD --ranks G --bytes-per-expert B --step-time-ms T``:
should the current placement be replaced? (``plumb.recommend``, the benefit gate)"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .inspect import EXAMPLE_HELP, add_input_arguments, input_path, layer_ids_of, read_input
from .topology_args import add_topology_arguments, topology_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend", help="decide whether rebalancing pays off (benefit gate)",
        description="Fit a new placement on the first part of INPUT's steps, compare it with "
                    "the current one on the remaining steps (per-step rank imbalance, bootstrap "
                    "confidence interval), weigh the predicted MoE time saving against the "
                    "rearrangement time and print the decision with its reasons. INPUT needs "
                    "per-step counts (a window): vLLM stats .jsonl, SGLang .pt/.json, "
                    "TensorRT-LLM directory, plumb .npz or .npy [T, L, E].",
        epilog="example: plumb recommend stats.jsonl --current mapping.jsonl --ranks 8 "
               "--bytes-per-expert 9437184 --step-time-ms 30 -o new.jsonl")
    parser.add_argument("input", type=input_path,
                        help=f"statistics file or directory with steps, {EXAMPLE_HELP}")
    add_input_arguments(parser)
    parser.add_argument("--current", type=Path, metavar="OLD",
                        help="current placement (any placement format; default: the one "
                             "recorded in INPUT)")
    add_topology_arguments(parser)
    parser.add_argument("--groups", type=int, default=1, metavar="K",
                        help="expert groups (default: %(default)s)")
    parser.add_argument("--bytes-per-expert", type=int, required=True, metavar="B",
                        help="bytes of one expert's weights")
    parser.add_argument("--step-time-ms", type=float, required=True, metavar="MS",
                        help="measured time of one serving step, milliseconds")
    parser.add_argument("--moe-fraction", type=float, default=0.5, metavar="F",
                        help="share of the step time spent in MoE layers (default: %(default)s)")
    parser.add_argument("--horizon-steps", type=int, default=10_000, metavar="N",
                        help="the move must pay back within N steps (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, metavar="C",
                        help="confidence level (default: %(default)s)")
    parser.add_argument("--fit-fraction", type=float, default=0.5, metavar="F",
                        help="share of the (oldest) steps to fit on (default: %(default)s)")
    parser.add_argument("--objective", choices=("robust", "mean"), default="robust",
                        help="objective of the proposal (default: %(default)s)")
    parser.add_argument("--half-life", type=float, metavar="STEPS",
                        help="recency half-life in steps for the robust objective")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="write the proposed placement here, only if the answer is apply")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import plumb
    from ..io import read_placement, write_placement
    from ..topology import as_topology

    stats = read_input(args)
    if stats.window is None:
        raise InputError(f"{args.input}: holds aggregated loads; the gate needs per-step counts "
                         "[T, L, E]")
    if args.current is not None:
        current = read_placement(args.current)
    elif stats.placement is not None:
        current = stats.placement
    else:
        raise InputError(f"{args.input} records no placement; pass --current OLD")
    topo = as_topology(topology_from_args(args, stats.meta))
    rec = plumb.recommend(current, stats.window, topo, bytes_per_expert=args.bytes_per_expert,
                          step_time_s=args.step_time_ms / 1e3, moe_fraction=args.moe_fraction,
                          horizon_steps=args.horizon_steps, confidence=args.confidence,
                          fit_fraction=args.fit_fraction, num_groups=args.groups,
                          objective=args.objective, half_life=args.half_life, seed=args.seed)
    print(rec.summary())
    print(f"current  {rec.current_balancedness:.4f} [{rec.current_ci[0]:.4f}, "
          f"{rec.current_ci[1]:.4f}]   proposed {rec.proposed_balancedness:.4f} "
          f"[{rec.proposed_ci[0]:.4f}, {rec.proposed_ci[1]:.4f}]   "
          f"({args.confidence:.0%} intervals, held-out per-step balancedness)")
    if args.output is not None:
        if rec.apply:
            written = write_placement(args.output, rec.proposed,
                                      layer_ids=layer_ids_of(stats.meta,
                                                             stats.window.shape[1]),
                                      meta={"num_ranks": topo.num_ranks})
            print(f"wrote {args.output} ({written} format)")
        else:
            print(f"not writing {args.output}: keep the current placement")
    return 0
