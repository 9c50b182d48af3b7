"""Data shipped with plumb: a small example statistics file for ``plumb solve example``."""

from pathlib import Path

EXAMPLE_STATS = "example_stats.jsonl"


def example_stats_path() -> Path:
    """The bundled vLLM offline-EPLB stats JSONL: 16 layers x 64 experts (top-8, OLMoE-like
    shape), 32 decode steps of 128 tokens, recorded on 8 ranks under the start-up layout.
    Regenerate it with ``python -m plumb.data.make_example``."""
    return Path(__file__).with_name(EXAMPLE_STATS)
