"""``plumb inspect INPUT``: what a statistics file holds (shape, steps, tokens, imbalance)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any, List, Mapping, Optional

import numpy as np

# Inputs at least this large (bytes, all files of a directory) get a progress bar in "auto".
LARGE_INPUT_BYTES = 32 << 20
_BAR_WIDTH = 30
# INPUT naming the statistics bundled with plumb (plumb.data), in every command that reads them.
EXAMPLE = "example"
EXAMPLE_HELP = f"or '{EXAMPLE}' for the bundled example"


def input_path(text: str) -> Path:
    """The argparse type of INPUT: the path given, or the bundled example statistics for
    ``example`` (unless the working directory holds a file of that name)."""
    if text == EXAMPLE and not Path(EXAMPLE).exists():
        from ..data import example_stats_path

        return example_stats_path()
    return Path(text)


class ProgressBar:
    """A one-line ``label [####------]  40%`` bar on a stream, redrawn per whole percent.

    Call it with (done, total); ``close`` ends the line. Disabled bars do nothing.
    """

    def __init__(self, label: str, enabled: bool, stream: Optional[IO[str]] = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        percent = min(100, done * 100 // total)
        if percent == self._shown:
            return
        self._shown = percent
        filled = _BAR_WIDTH * percent // 100
        self.stream.write(f"\r{self.label} [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] "
                          f"{percent:3d}%")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


def input_bytes(path: Path) -> int:
    """Size of a file, or of the files directly inside a directory."""
    if path.is_dir():
        return sum(child.stat().st_size for child in path.iterdir() if child.is_file())
    return path.stat().st_size if path.exists() else 0


def progress_bar(path: Path, mode: str) -> ProgressBar:
    """The bar for reading ``path``: ``mode`` "always", "never" or "auto" (large inputs)."""
    enabled = mode == "always" or (mode == "auto" and input_bytes(path) >= LARGE_INPUT_BYTES)
    return ProgressBar(f"reading {path.name}", enabled)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """INPUT-reading options shared with ``plumb solve``."""
    from ..io import FORMATS

    parser.add_argument("--input-format", choices=FORMATS, metavar="FMT",
                        help=f"force the input format, one of {', '.join(FORMATS)} (default: "
                             "from the name and content)")
    parser.add_argument("--steps", metavar="START:STOP",
                        help="keep steps with START <= id < STOP (vLLM step, TensorRT-LLM "
                             "iteration, else step index); either side may be empty")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr while reading (auto: inputs >= 32 MiB)")


def read_input(args: argparse.Namespace):
    """PlumbStats of ``args.input`` per the shared options."""
    from ..io import read_stats
    from ..io.checks import parse_steps

    steps = parse_steps(args.steps) if args.steps is not None else None
    bar = progress_bar(args.input, args.progress)
    try:
        return read_stats(args.input, format=args.input_format, steps=steps, progress=bar)
    finally:
        bar.close()


def layer_ids_of(meta: Mapping[str, Any], num_layers: int) -> List[int]:
    """The model layer id of each row of a statistics file (TensorRT-LLM keeps the model's,
    which need not start at 0), else 0..L-1: what the summaries print and the placement
    writers key TensorRT-LLM YAML by."""
    return meta.get("layer_ids") or list(range(num_layers))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show what a load statistics file holds",
        description="Print the format, layers, experts, steps and tokens of a statistics file, "
                    "and per layer the tokens and the expert imbalance (max / mean tokens per "
                    "expert). Reads vLLM stats JSONL, SGLang .pt/.json, TensorRT-LLM "
                    "expert_statistic directories, plumb .npz, .npy and .csv.",
        epilog=f"examples: plumb inspect stats.jsonl --steps 100:200; plumb inspect {EXAMPLE}")
    parser.add_argument("input", type=input_path,
                        help=f"statistics file or directory, {EXAMPLE_HELP}")
    add_input_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stats = read_input(args)
    loads = stats.aggregated_loads()
    num_layers, num_experts = loads.shape
    meta = stats.meta
    print(f"input     {args.input} ({meta.get('source_format')})")
    print(f"layers    {num_layers}")
    print(f"experts   {num_experts}")
    if stats.window is not None:
        ids = meta.get("steps") or list(range(stats.window.shape[0]))
        print(f"steps     {stats.window.shape[0]} (ids {ids[0]}..{ids[-1]})")
    else:
        print("steps     none (aggregated loads)")
    total = float(loads.sum())
    print(f"tokens    {_number(total)} routed (per layer {_number(total / num_layers)})")
    for key in ("model", "num_ranks", "num_nodes", "num_groups", "num_redundant_experts",
                "num_experts_per_token"):
        if meta.get(key) not in (None, ""):
            print(f"{key:<9} {meta[key]}" if len(key) <= 9 else f"{key} {meta[key]}")
    if stats.placement is not None:
        print(f"placement recorded: {stats.placement.shape[1]} slots per layer")
    ratio = expert_skew(loads)
    layer_ids = layer_ids_of(meta, num_layers)
    print()
    print(f"{'layer':>5}  {'tokens':>12}  {'max/mean':>8}  {'hottest':>7}  {'idle':>4}")
    for layer in range(num_layers):
        print(f"{layer_ids[layer]:>5}  {_number(float(loads[layer].sum())):>12}  "
              f"{ratio[layer]:>8.2f}  {int(loads[layer].argmax()):>7}  "
              f"{int((loads[layer] == 0).sum()):>4}")
    worst = int(ratio.argmax())
    print(f"imbalance max/mean: mean over layers {ratio.mean():.2f}, worst layer "
          f"{layer_ids[worst]} ({ratio[worst]:.2f})")
    return 0


def expert_skew(loads: np.ndarray) -> np.ndarray:
    """float64 [L]: max / mean tokens per expert of each layer of ``loads`` [L, E] (1 if idle)."""
    mean = loads.mean(axis=1)
    return np.where(mean > 0, loads.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0)


def _number(value: float) -> str:
    return f"{int(value):d}" if float(value).is_integer() else f"{value:.1f}"


