"""The bundled example statistics: reproducible from its script, realistic, small."""

from __future__ import annotations

from plumb.data import example_stats_path
from plumb.data.make_example import (NUM_EXPERTS, NUM_LAYERS, NUM_STEPS, TOKENS_PER_STEP, TOP_K,
                                     write_example)
from plumb.io import read_stats


def test_script_regenerates_the_shipped_file_byte_for_byte(tmp_path):
    write_example(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == example_stats_path().read_bytes()
    assert example_stats_path().stat().st_size < 300 * 1024


def test_example_is_a_skewed_top_k_window():
    stats = read_stats(example_stats_path())
    assert stats.window.shape == (NUM_STEPS, NUM_LAYERS, NUM_EXPERTS)
    assert stats.meta["num_ranks"] == 8 and stats.meta["num_redundant_experts"] == 0
    # Every token picks TOP_K distinct experts.
    assert (stats.window.sum(axis=2) == TOKENS_PER_STEP * TOP_K).all()
    assert (stats.window <= TOKENS_PER_STEP).all()
    loads = stats.window.sum(axis=0)
    skew = loads.max(axis=1) / loads.mean(axis=1)
    assert skew[:4].mean() > skew[-4:].mean() > 2.0
