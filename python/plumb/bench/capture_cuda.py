"""Capture on a CUDA device: record() and step() cost, host syncs, and CUDA-graph replay.

record(): one ``Recorder.record(layer, ids)`` call on CUDA ids (E = 256, top-8; decode 64 and
256 tokens, prefill 8192), against the per-layer ``row.add_(torch.bincount(ids, minlength=E))``
a hand-written hook would do. Two times per case: "host us" is the median wall time of one
call as the model's Python thread sees it (kernels are queued, not awaited), "per call us" is
the wall time of ``CALLS`` back-to-back calls ended by a device synchronisation, divided by
``CALLS`` (the device work included). torch.bincount on CUDA reads the largest id back to size
its output, so the baseline waits for the device on every call; record() never does.
Forward: record() for each of L = 58 layers plus one step() (a DeepSeek-V3 decode step of 64
tokens), without and with per-source counts, eager and replayed from a captured CUDA graph
(record() is graph-safe; step() runs outside the graph).
Host sync: the forward's record() and step() calls (per-source counts on) under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from ..errors import PlumbError
from .results import bench_command, markdown_table, median_seconds, write_section

NUM_EXPERTS = 256
NUM_LAYERS = 58
TOP_K = 8
CALLS = 2000
RECORD_CASES = (("decode", 64), ("decode", 256), ("prefill", 8192))
SOURCES = (None, 8)  # per-source counts of the decode-step rows: off (plumb.attach), 8 ranks
ROUNDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--results", type=Path, default=None,
                        help="rewrite the '## capture_cuda' section of this markdown file")


def _per_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``calls`` back-to-back calls ended by a device synchronisation;
    the fastest of ``ROUNDS`` rounds (interference only ever adds time)."""
    import torch

    best = float("inf")
    for _ in range(ROUNDS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _record_rows(calls: int) -> List[list]:
    import torch

    from ..capture import Recorder

    rows = []
    for name, tokens in RECORD_CASES:
        for dtype in (torch.int32, torch.int64):
            ids = torch.randint(0, NUM_EXPERTS, (tokens, TOP_K),
                                generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
            recorder = Recorder(1, NUM_EXPERTS, window=16, device="cuda")
            row = torch.zeros(NUM_EXPERTS, dtype=torch.int64, device="cuda")

            def record() -> None:
                recorder.record(0, ids)

            def bincount() -> None:
                row.add_(torch.bincount(ids.reshape(-1), minlength=NUM_EXPERTS))

            host = median_seconds(record, calls)
            base_host = median_seconds(bincount, calls)
            torch.cuda.synchronize()
            per_call, base_per_call = _per_call(record, calls), _per_call(bincount, calls)
            rows.append([f"{name} [{tokens}, {TOP_K}]", str(dtype).replace("torch.", ""),
                         f"{host * 1e6:.1f}", f"{per_call * 1e6:.1f}",
                         f"{base_host * 1e6:.1f}", f"{base_per_call * 1e6:.1f}",
                         f"{base_per_call / per_call:.2f}x"])
    return rows


def _decode_step(num_sources: Optional[int]) -> Tuple[Any, Callable[[], None]]:
    """(recorder, one forward's record() calls on CUDA ids [64, 8] per layer) for a
    DeepSeek-V3 decode step; ``num_sources`` None is what ``plumb.attach`` records."""
    import torch

    from ..capture import Recorder

    recorder = Recorder(NUM_LAYERS, NUM_EXPERTS, window=1000, device="cuda",
                        num_sources=num_sources)
    ids = torch.randint(0, NUM_EXPERTS, (NUM_LAYERS, 64, TOP_K),
                        generator=torch.Generator().manual_seed(2)).to("cuda")
    layers = [ids[layer] for layer in range(NUM_LAYERS)]

    def record_layers() -> None:
        for layer, layer_ids in enumerate(layers):
            recorder.record(layer, layer_ids,
                            source=None if num_sources is None else layer % num_sources)

    return recorder, record_layers


def _syncs_with_host() -> bool:
    """Whether one forward's record() calls and step() synchronise with the device, with
    and without per-source counts."""
    import torch

    for num_sources in SOURCES:
        recorder, record_layers = _decode_step(num_sources)
        record_layers()
        recorder.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            record_layers()
            recorder.step()
        except RuntimeError as error:
            if "synchroniz" not in str(error).lower():
                raise
            return True
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return False


def _forward_rows(calls: int) -> Tuple[List[list], float]:
    """Eager and graph-replayed record() of 58 layers plus step(), with and without
    per-source counts: rows, and step() seconds (no sources)."""
    import torch

    rows, step_time = [], 0.0
    forward_calls = max(20, calls // NUM_LAYERS)
    for num_sources in SOURCES:
        recorder, record_layers = _decode_step(num_sources)
        if num_sources is None:
            step_time = _per_call(recorder.step, calls)

        def eager() -> None:
            record_layers()
            recorder.step()

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            record_layers()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            record_layers()

        def replayed() -> None:
            graph.replay()
            recorder.step()

        counts = "none" if num_sources is None else f"{num_sources} sources"
        for name, fn in (("eager", eager), ("CUDA graph replay", replayed)):
            host = median_seconds(fn, forward_calls)
            per_call = _per_call(fn, forward_calls)
            rows.append([name, counts, f"{host * 1e6:.1f}", f"{per_call * 1e6:.1f}",
                         f"{per_call / NUM_LAYERS * 1e6:.2f}"])
    return rows, step_time


def run(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise PlumbError("plumb bench capture_cuda needs torch (pip install 'plumb[torch]')") \
            from None
    if not torch.cuda.is_available():
        raise PlumbError("plumb bench capture_cuda needs a CUDA device "
                         "(torch.cuda.is_available() is False)")
    calls = 200 if args.quick else CALLS
    record_rows = _record_rows(calls)
    forward_rows, step_time = _forward_rows(calls)
    syncs = _syncs_with_host()
    record = markdown_table(
        ["record() ids", "dtype", "plumb host us", "plumb per call us", "bincount host us",
         "bincount per call us", "bincount / plumb per call"], record_rows)
    forward = markdown_table(
        [f"{NUM_LAYERS} x record() + step()", "per-source counts", "host us",
         "per forward us", "per layer us"], forward_rows)
    text = "\n".join([
        f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}.", "",
        f"One `Recorder.record(layer, ids)` call on CUDA ids, E = {NUM_EXPERTS}, against "
        "`row.add_(torch.bincount(ids, minlength=E))`. Host us = median wall time of one call "
        "without waiting for the device; per call us = wall time of back-to-back calls ended "
        "by a device synchronisation, per call (fastest of "
        f"{ROUNDS} rounds of {calls}).", "", record, "",
        f"One DeepSeek-V3 decode step on CUDA: record() of {NUM_LAYERS} layers (64 tokens, "
        "top-8) plus `step()` (W = 1000), without per-source counts (what `plumb.attach` "
        "records) and with them for 8 sources; eager (record() stages its ids, step() counts "
        "every layer at once) and with the record() calls replayed from a captured CUDA graph "
        "(one histogram per call):", "", forward, "",
        f"`Recorder.step()` alone (no sources, nothing staged): {step_time * 1e6:.1f} us.", "",
        "- no host sync on CUDA tensors: a forward's record() calls and step() under "
        "`torch.cuda.set_sync_debug_mode(\"error\")` — "
        + ("**NOT met** (a synchronising call happened)" if syncs else
           "met (no synchronising call)")])
    print(text)
    if args.results is not None:
        write_section(args.results, "capture_cuda", bench_command("capture_cuda", args.quick),
                      text)
    return 0
