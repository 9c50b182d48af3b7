"""Fused expert histogram vs torch.bincount baselines (prefill and decode shapes).

Baselines, measured in the same process: a per-layer ``torch.bincount`` loop (what a hook
that counts layer by layer does) and one ``torch.bincount`` over ids offset by layer * E.
plumb is timed as a whole ``torch.ops.plumb.expert_histogram`` call (dispatch included) and
as ``plumb_native.histogram`` on numpy arrays, at one thread and at all threads.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

from .options import positive_int
from .results import bench_command, markdown_table, median_seconds, write_section

NUM_EXPERTS = 256


@dataclass(frozen=True)
class Case:
    name: str
    num_layers: int
    tokens: int
    top_k: int
    repeats: int


CASES = (
    Case("prefill", 58, 8192, 8, 30),
    Case("decode", 58, 64, 8, 300),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="the 'all threads' count (default: every logical CPU)")
    parser.add_argument("--results", type=Path, default=None,
                        help="rewrite the '## histogram' section of this markdown file")


def _measure(case: Case, dtype, threads: int, repeats: int) -> dict:
    import torch

    import plumb.ops  # noqa: F401
    import plumb_native

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, NUM_EXPERTS, (case.num_layers, case.tokens, case.top_k),
                        generator=gen).to(dtype)
    ids_np = ids.numpy()
    offsets = (torch.arange(case.num_layers) * NUM_EXPERTS).view(-1, 1, 1).to(dtype)

    def per_layer_loop():
        return torch.stack([torch.bincount(ids[layer].reshape(-1), minlength=NUM_EXPERTS)
                            for layer in range(case.num_layers)])

    def fused_bincount():
        return torch.bincount((ids + offsets).reshape(-1),
                              minlength=case.num_layers * NUM_EXPERTS).view(case.num_layers, -1)

    def plumb_op():
        return torch.ops.plumb.expert_histogram(ids, NUM_EXPERTS)

    def plumb_numpy():
        return plumb_native.histogram(ids_np, NUM_EXPERTS, num_threads=threads)

    expected = per_layer_loop()
    assert torch.equal(plumb_op(), expected) and np.array_equal(plumb_numpy(), expected.numpy())
    times = {name: median_seconds(fn, repeats) for name, fn in
             (("loop", per_layer_loop), ("fused", fused_bincount), ("op", plumb_op),
              ("numpy", plumb_numpy))}
    times["ids"] = ids.numel()
    return times


def run(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise RuntimeError("plumb bench histogram compares against torch.bincount: "
                           "install the torch extra (pip install 'plumb[torch]')") from None
    import os

    all_threads = args.threads or os.cpu_count() or 1
    saved_threads = torch.get_num_threads()
    rows: List[list] = []
    prefill_op_time = {}
    try:
        for case in CASES:
            repeats = max(3, case.repeats // 10) if args.quick else case.repeats
            for dtype in (torch.int32, torch.int64):
                for threads in sorted({1, all_threads}):
                    t = _measure(case, dtype, threads, repeats)
                    if case.name == "prefill" and dtype == torch.int32:
                        prefill_op_time[threads] = t["op"]
                    rows.append([
                        f"{case.name} [{case.num_layers}, {case.tokens}, {case.top_k}]",
                        str(dtype).replace("torch.", ""), threads,
                        f"{t['loop'] * 1e6:.1f}", f"{t['fused'] * 1e6:.1f}",
                        f"{t['op'] * 1e6:.1f}", f"{t['numpy'] * 1e6:.1f}",
                        f"{t['ids'] / t['op'] / 1e9:.2f}",
                        f"{t['loop'] / t['op']:.2f}x", f"{t['fused'] / t['op']:.2f}x",
                    ])
    finally:
        torch.set_num_threads(saved_threads)
    headers = ["case", "dtype", "threads", "per-layer loop us", "fused bincount us",
               "plumb op us", "plumb numpy us", "op Gids/s", "op vs loop", "op vs fused"]
    table = markdown_table(headers, rows)
    lines = [f"E = {NUM_EXPERTS}; median wall time per call; op = torch.ops.plumb.expert_histogram "
             "(whole call incl. dispatch), numpy = plumb_native.histogram.", "", table]
    if len(prefill_op_time) == 2:
        scaling = prefill_op_time[1] / prefill_op_time[all_threads]
        lines += ["", f"Prefill int32 scaling, {all_threads} threads vs 1: {scaling:.2f}x"]
    text = "\n".join(lines)
    print(text)
    if args.results is not None:
        write_section(args.results, "histogram", bench_command("histogram", args.quick), text)
    return 0
