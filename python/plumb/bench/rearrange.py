"""Rearrangement plan time, movement cost, and in-process executor throughput.

Placements are synthetic: a random layout in which every expert has at least one replica, then
either a drift (a random 10% of each layer's slots permute their experts) or a reshuffle (the
whole layer permutes). Both keep every expert's replica count, as a rebalance that keeps logcnt
would. Part 1 plans these for the SPEC benchmark shapes (bytes per expert of the real models).
Part 2 times ``execute_inplace`` on CPU tensors [L, P, K] for the given layer counts and expert
sizes (the reverse plan, untimed, restores the weights between runs), against the naive
baseline that gathers each whole layer into a preallocated one-layer buffer and copies it back,
in the same process.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

from ..topology import Topology
from .options import positive_float, positive_int
from .results import markdown_table, median_seconds, write_section


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    experts: int
    slots: int
    ranks: int
    nodes: int
    bytes_per_expert: int  # 3 projections (gate, up, down) x hidden x intermediate x dtype bytes


SHAPES = (
    Shape("dsv3-prefill", 58, 256, 288, 32, 4, 3 * 7168 * 2048),       # fp8
    Shape("dsv3-decode", 58, 256, 320, 64, 8, 3 * 7168 * 2048),        # fp8
    Shape("qwen3-30b", 48, 128, 160, 8, 1, 3 * 2048 * 768 * 2),        # bf16
    Shape("olmoe", 16, 64, 64, 8, 1, 3 * 2048 * 1024 * 2),             # bf16
    Shape("mixtral", 32, 8, 8, 4, 1, 3 * 4096 * 14336 * 2),            # bf16
)
SCENARIOS = (("drift 10%", 0.1), ("reshuffle", 1.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=positive_int, nargs="+", default=[4],
                        help="layer counts for the executor runs (default: 4)")
    parser.add_argument("--expert-mib", type=positive_float, nargs="+", default=[0.25, 1.0, 4.0],
                        help="bytes of one expert in MiB for the executor runs")
    parser.add_argument("--slots", type=positive_int, default=64, help="P for the executor runs")
    parser.add_argument("--ranks", type=positive_int, default=8, help="G for the executor runs")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per case (median)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads for the executor runs (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="one layer count and 2 repeats")
    parser.add_argument("--results", type=Path, default=None,
                        help="rewrite the '## rearrange' section of this markdown file")


def placements(layers: int, experts: int, slots: int, fraction: float, seed: int = 0):
    """(old, new) int64 [L, P]: a random layout and the same after ``fraction`` of each layer's
    slots permute their experts."""
    rng = np.random.default_rng(seed)
    old = np.empty((layers, slots), dtype=np.int64)
    new = np.empty_like(old)
    for layer in range(layers):
        old[layer] = rng.permutation(np.concatenate(
            [np.arange(experts), rng.integers(0, experts, slots - experts)]))
        moved = rng.choice(slots, size=max(2, round(fraction * slots)), replace=False)
        new[layer] = old[layer]
        new[layer, moved] = old[layer, rng.permutation(moved)]
    return old, new


def _plan_rows(repeats: int) -> List[list]:
    from ..rearrange import plan_rearrangement

    rows = []
    for shape in SHAPES:
        topo = Topology.cluster(nodes=shape.nodes, gpus_per_node=shape.ranks // shape.nodes)
        for scenario, fraction in SCENARIOS:
            old, new = placements(shape.layers, shape.experts, shape.slots, fraction)
            seconds = median_seconds(
                lambda: plan_rearrangement(old, new, topo, shape.bytes_per_expert), repeats)
            stats = plan_rearrangement(old, new, topo, shape.bytes_per_expert).stats
            rows.append([shape.name, scenario, f"{seconds * 1e3:.2f}", stats.moves,
                         stats.local_copies, f"{stats.bytes / 2**30:.2f}",
                         f"{stats.max_bytes_received / 2**30:.3f}",
                         f"{stats.max_bytes_sent / 2**30:.3f}",
                         f"{stats.inter_node_bytes / max(stats.bytes, 1):.2f}",
                         f"{stats.estimated_seconds * 1e3:.1f}"])
    return rows


def _gather_seconds(weights, src, repeats: int) -> float:
    """Median seconds of the naive rearrangement: every slot of each layer gathered into a
    preallocated one-layer buffer and copied back (src int64 [L, P], the slot each slot reads)."""
    import torch

    buffer = torch.empty_like(weights[0])

    def gather():
        for layer in range(weights.shape[0]):
            torch.index_select(weights[layer], 0, src[layer], out=buffer)
            weights[layer].copy_(buffer)

    return median_seconds(gather, repeats, warmup=1)


def _executor_rows(layer_counts, expert_mib, num_slots, num_ranks, repeats) -> List[list]:
    import torch

    from ..rearrange import execute_inplace, plan_rearrangement

    rows = []
    experts = num_slots - num_slots // 8
    for layers in layer_counts:
        for mib in expert_mib:
            elements = max(1, int(mib * 2**20) // 2)
            size = elements * 2
            for scenario, fraction in SCENARIOS:
                old, new = placements(layers, experts, num_slots, fraction)
                forward = plan_rearrangement(old, new, num_ranks, size)
                backward = plan_rearrangement(new, old, num_ranks, size)
                # Each slot is filled with its expert id: cheap to build and to check.
                weights = torch.from_numpy(old).to(torch.bfloat16)[:, :, None].repeat(
                    1, 1, elements)
                # Time the forward plan only; the untimed reverse plan restores ``old``. The
                # first forward run is a warm-up.
                samples = []
                for run_index in range(repeats + 1):
                    start = time.perf_counter()
                    report = execute_inplace(forward, weights)
                    samples.append(time.perf_counter() - start)
                    if run_index < repeats:
                        execute_inplace(backward, weights)
                seconds = float(np.median(samples[1:]))
                assert torch.equal(weights[:, :, 0], torch.from_numpy(new).to(torch.bfloat16))
                measured = report.bytes_written
                predicted = (forward.stats.moves + forward.stats.local_copies) * size
                # The slot each slot reads: the plan applied to the slot ids themselves.
                src = torch.from_numpy(forward.apply(np.tile(np.arange(num_slots), (layers, 1))))
                baseline = _gather_seconds(weights, src, repeats)
                rows.append([f"[{layers}, {num_slots}] x {mib:g} MiB", scenario,
                             f"{forward.stats.moves}+{forward.stats.local_copies}",
                             f"{predicted / 2**20:.1f}", f"{measured / 2**20:.1f}",
                             f"{report.staged_bytes / 2**20:.1f}",
                             f"{seconds * 1e3:.2f}", f"{measured / seconds / 1e9:.2f}",
                             f"{baseline * 1e3:.2f}", f"{baseline / seconds:.2f}x"])
                del weights
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise RuntimeError("plumb bench rearrange times the torch executor: install the torch "
                           "extra (pip install 'plumb[torch]')") from None
    repeats = 2 if args.quick else args.repeats
    layer_counts = args.layers[:1] if args.quick else args.layers
    start = time.perf_counter()
    plan_table = markdown_table(
        ["shape", "scenario", "plan ms", "moves", "local copies", "GiB moved",
         "max GiB received", "max GiB sent", "inter-node share", "estimated ms"],
        _plan_rows(max(3, repeats)))
    saved_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        exec_table = markdown_table(
            ["weights", "scenario", "moves+local", "predicted MiB", "measured MiB",
             "staged MiB", "executor ms", "GB/s written", "gather baseline ms",
             "baseline / executor"],
            _executor_rows(layer_counts, args.expert_mib, args.slots, args.ranks, repeats))
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(saved_threads)
    text = "\n".join([
        "Plan: median wall time of plumb.plan_rearrangement on the SPEC shapes (topology "
        "cluster(nodes, G/nodes), default bandwidths; bytes per expert of the real models: "
        "DeepSeek-V3 fp8, the others bf16). Estimated ms = the slowest rank's link time.",
        "", plan_table, "",
        f"Executor: plumb.rearrange.execute_inplace on CPU bf16 tensors, G = {args.ranks}, "
        f"{threads} torch threads, default 64 MiB scratch bound; median over runs of the "
        "forward plan (an untimed reverse plan restores the weights in between). Predicted "
        "bytes = (moves + local copies) x slot bytes from the plan; measured = bytes the "
        "executor wrote into destination slots (each also read once: memory traffic is twice "
        "that); staged = bytes rotated through the scratch to break cycles. Baseline: "
        "each layer gathered whole into a preallocated one-layer buffer (index_select) and "
        "copied back, same process.",
        "", exec_table, "", f"Total benchmark time {time.perf_counter() - start:.1f} s."])
    print(text)
    if args.results is not None:
        command = ("python benchmarks/bench_rearrange.py" + (" --quick" if args.quick else "")
                   + f" --layers {' '.join(map(str, args.layers))}"
                   + f" --expert-mib {' '.join(f'{mib:g}' for mib in args.expert_mib)}"
                   + f" --slots {args.slots} --ranks {args.ranks} --repeats {args.repeats}"
                   + (f" --threads {args.threads}" if args.threads is not None else ""))
        write_section(args.results, "rearrange", command, text)
    return 0
