"""Regenerates ``example_stats.jsonl`` deterministically: ``python -m plumb.data.make_example``.

The workload: 16 MoE layers x 64 experts, top-8 routing, 32 decode steps of 128 tokens.
Expert popularity is lognormal per layer, most skewed in the first layer (sigma 1.5, as
published for OLMoE's layer 0) down to sigma 0.6, and drifts slowly from step to step. Each
token picks 8 distinct experts (Gumbel top-k, so picks follow the popularity without
replacement). The stats are recorded per physical slot under the engines' start-up layout on
8 ranks (no redundant experts), as vLLM writes them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np

NUM_LAYERS = 16
NUM_EXPERTS = 64
TOP_K = 8
NUM_STEPS = 32
TOKENS_PER_STEP = 128
NUM_RANKS = 8
SEED = 20261129
DRIFT = 0.05  # std of the per-step random walk of log popularity


def example_window(seed: int = SEED) -> np.ndarray:
    """int64 [NUM_STEPS, NUM_LAYERS, NUM_EXPERTS] expert picks per step."""
    rng = np.random.default_rng(seed)
    sigmas = np.linspace(1.5, 0.6, NUM_LAYERS)[:, None]
    log_popularity = rng.normal(0.0, 1.0, size=(NUM_LAYERS, NUM_EXPERTS)) * sigmas
    window = np.zeros((NUM_STEPS, NUM_LAYERS, NUM_EXPERTS), dtype=np.int64)
    for step in range(NUM_STEPS):
        log_popularity += rng.normal(0.0, DRIFT, size=log_popularity.shape)
        gumbel = rng.gumbel(size=(NUM_LAYERS, TOKENS_PER_STEP, NUM_EXPERTS))
        keys = log_popularity[:, None, :] + gumbel
        picks = np.argpartition(-keys, TOP_K - 1, axis=2)[:, :, :TOP_K]
        for layer in range(NUM_LAYERS):
            window[step, layer] = np.bincount(picks[layer].ravel(), minlength=NUM_EXPERTS)
    return window


def write_example(path: Path) -> int:
    """Write the example stats JSONL at ``path``; returns the number of step records."""
    from ..io.vllm import write_vllm_stats

    p2l_map = np.tile(np.arange(NUM_EXPERTS, dtype=np.int64), (NUM_LAYERS, 1))
    # Identity layout: each slot's load is its expert's load.
    return write_vllm_stats(path, example_window(), p2l_map, first_step=1,
                            model="example-moe-16x64-top8", num_ranks=NUM_RANKS)


def main(argv: Optional[list] = None) -> int:
    from . import example_stats_path

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else example_stats_path()
    count = write_example(path)
    print(f"wrote {path} ({count} steps, {path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
