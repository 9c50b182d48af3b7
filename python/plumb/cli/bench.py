"""``plumb bench NAME``: the benchmarks shipped in plumb.bench, one module each."""

from __future__ import annotations

import argparse
import importlib

# plumb.bench.<name> modules expose add_arguments(parser) and run(args) -> int.
_BENCHMARKS = ("histogram", "solve", "rearrange", "capture", "capture_cuda", "topology",
               "robust", "moves")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its table")
    names = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in _BENCHMARKS:
        module = importlib.import_module(f"plumb.bench.{name}")
        sub = names.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
