"""Capture overhead: model forward with and without plumb hooks, and the cost of record().

Forward: a Qwen3-MoE-shaped transformers model with random weights on CPU (8 layers,
hidden 256, 64 experts, top-8), timed bare, with ``plumb.attach`` (router hooks + one step
per forward), and with the ``plumb run`` global forward pre-hook added on top.
record(): one ``Recorder.record(layer, ids)`` call for E = 256, top-8 ids at decode (64 and
256 tokens) and prefill (8192 tokens) sizes, against the per-layer ``torch.bincount`` +
``add_`` a hand-written hook would do, plus ``step()`` for a DeepSeek-V3-sized recorder
(L = 58, E = 256, W = 1000).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from .results import markdown_table, median_seconds, write_section

RECORD_TARGET_US = 20.0
NUM_EXPERTS = 256
MODEL = dict(num_layers=8, hidden_size=256, intermediate_size=256, num_experts=64,
             num_experts_per_tok=8, moe_intermediate_size=128, head_dim=64,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)
FORWARD_CASES = (("decode", 16, 1, 10), ("prefill", 1, 256, 3))  # name, batch, seq, calls
ROUNDS = 9
RECORD_CASES = (("decode", 64, 3000), ("decode", 256, 3000), ("prefill", 8192, 200))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default %(default)s: steadier on a shared machine)")
    parser.add_argument("--results", type=Path, default=None,
                        help="rewrite the '## capture' section of this markdown file")


def _forward_rows(quick: bool) -> List[list]:
    import torch

    from ..capture import attach
    from ..capture.launcher import Session, Settings
    from ..capture.tiny_models import tiny_model

    model = tiny_model("qwen3_moe", **MODEL)
    num_layers = MODEL["num_layers"]
    rows = []
    for name, batch, seq, calls in FORWARD_CASES:
        rounds = 2 if quick else ROUNDS
        ids = torch.randint(0, MODEL["vocab_size"], (batch, seq),
                            generator=torch.Generator().manual_seed(0))

        def forward():
            with torch.no_grad():
                model(ids, use_cache=False)

        # Rounds alternate the three set-ups so that drift on a shared machine hits all of
        # them alike; the median of the per-round medians is reported.
        samples = {"bare": [], "attached": [], "launched": []}
        for _ in range(rounds):
            samples["bare"].append(median_seconds(forward, calls))
            with attach(model, window=64):
                samples["attached"].append(median_seconds(forward, calls))
            # What plumb run installs: the global pre-hook attaches on the first forward
            # (a warm-up call) and afterwards only probes every module call.
            session = Session(Settings(Path("unused.npz"), 0.0, 64))
            probe = torch.nn.modules.module.register_module_forward_pre_hook(
                session.on_forward)
            samples["launched"].append(median_seconds(forward, calls))
            probe.remove()
            for _, handle in session.models:
                handle.detach()
        bare, hooked, launched = (sorted(v)[len(v) // 2] for v in samples.values())
        overhead = hooked - bare
        rows.append([f"{name} [{batch}, {seq}]", f"{bare * 1e3:.2f}", f"{hooked * 1e3:.2f}",
                     f"{overhead / bare * 100:+.1f}%", f"{overhead / num_layers * 1e6:.1f}",
                     f"{launched * 1e3:.2f}", f"{(launched - bare) / bare * 100:+.1f}%"])
    return rows


def _record_rows(quick: bool) -> List[list]:
    import torch

    from ..capture import Recorder

    rows = []
    for name, tokens, repeats in RECORD_CASES:
        repeats = max(50, repeats // 10) if quick else repeats
        for dtype in (torch.int32, torch.int64):
            ids = torch.randint(0, NUM_EXPERTS, (tokens, 8),
                                generator=torch.Generator().manual_seed(1)).to(dtype)
            recorder = Recorder(1, NUM_EXPERTS, window=16)
            row = torch.zeros(NUM_EXPERTS, dtype=torch.int64)
            plumb_time = median_seconds(lambda: recorder.record(0, ids), repeats)
            baseline = median_seconds(
                lambda: row.add_(torch.bincount(ids.reshape(-1), minlength=NUM_EXPERTS)),
                repeats)
            verdict = ""
            if name == "decode":
                verdict = "yes" if plumb_time * 1e6 <= RECORD_TARGET_US else "NO"
            rows.append([f"{name} [{tokens}, 8]", str(dtype).replace("torch.", ""),
                         f"{plumb_time * 1e6:.1f}", f"{baseline * 1e6:.1f}",
                         f"{baseline / plumb_time:.2f}x", verdict])
    return rows


def _step_time(quick: bool) -> float:
    from ..capture import Recorder

    recorder = Recorder(58, NUM_EXPERTS, window=1000, device="cpu")
    return median_seconds(recorder.step, 100 if quick else 1000)


def run(args: argparse.Namespace) -> int:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise RuntimeError("plumb bench capture needs torch and transformers>=5 "
                           "(pip install 'plumb[torch,test]')") from None
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        forward_rows, record_rows = _forward_rows(args.quick), _record_rows(args.quick)
        step_us = _step_time(args.quick) * 1e6
    finally:
        torch.set_num_threads(saved_threads)
    forward = markdown_table(
        ["forward [batch, seq]", "bare ms", "attached ms", "overhead", "us per layer",
         "+ plumb run probe ms", "overhead"], forward_rows)
    record = markdown_table(
        ["record() ids", "dtype", "plumb us", "bincount + add_ us", "plumb vs bincount",
         f"<= {RECORD_TARGET_US:.0f} us"], record_rows)
    text = "\n".join([
        f"CPU, torch threads = {args.threads}; median wall time.", "",
        "Forward of a Qwen3-MoE-shaped model (8 MoE layers, hidden 256, E = 64, top-8, random "
        "weights, use_cache=False): bare, with `plumb.attach` (router hooks, one step per "
        "forward), and with the `plumb run` global forward pre-hook as well.", "", forward, "",
        f"One `Recorder.record(layer, ids)` call, E = {NUM_EXPERTS} (dispatch and validation "
        "included), against a hand-written `row.add_(torch.bincount(ids, minlength=E))`:", "",
        record, "",
        f"`Recorder.step()` at L = 58, E = {NUM_EXPERTS}, W = 1000: {step_us:.1f} us per step "
        "(once per forward, not per layer)."])
    print(text)
    if args.results is not None:
        write_section(args.results, "capture",
                      "python benchmarks/bench_capture.py" + (" --quick" if args.quick else ""),
                      text)
    return 0
