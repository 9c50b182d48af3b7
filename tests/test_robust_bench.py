"""Smoke tests of ``plumb bench robust`` and of the SGLang time-series baseline it compares to."""

from __future__ import annotations

import argparse

import numpy as np

from plumb.bench import robust as bench
from plumb.bench.sglang_timeseries import _serpentine_ranks, sglang_timeseries_rebalance
from plumb.bench.workloads import shape
from plumb.solver.validate import replica_counts


def test_serpentine_deals_forward_then_backward():
    assert _serpentine_ranks(9, 3).tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2]


def test_sglang_timeseries_on_a_hand_case():
    # Expert 0 peaks at 9 on step 0, expert 1 at 8 on step 1: the step sums fall most by
    # giving expert 0 its second replica first, then expert 1 ((9 -> 4.5) + (8 -> 4)).
    window = np.array([[[9.0, 1.0, 1.0, 1.0]], [[1.0, 8.0, 1.0, 1.0]]])
    phy2log = sglang_timeseries_rebalance(window, 6, 2)
    assert replica_counts(phy2log, 4).tolist() == [[2, 2, 1, 1]]
    # Replicas by mean share: 0 and 1 (2.5, 2.25 each, twice), then 2 and 3 (1.0 each);
    # dealt 0, 1, 1, 0, 0, 1 -> rank 0: {0, 1, 2}, rank 1: {0, 1, 3}.
    assert phy2log.tolist() == [[0, 1, 2, 0, 1, 3]]


def test_sglang_timeseries_is_a_valid_placement():
    rng = np.random.default_rng(0)
    window = rng.poisson(rng.lognormal(1.0, 1.0, 12), (6, 3, 12)).astype(float)
    phy2log = sglang_timeseries_rebalance(window, 16, 4)
    counts = replica_counts(phy2log, 12)
    assert (counts >= 1).all() and (counts.sum(axis=1) == 16).all() and (counts <= 4).all()


def test_bench_robust_smoke(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## solve\n\nkeep me\n")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--shapes", "tiny", "--sigmas", "1.0", "--seeds", "1",
                              "--steps", "16", "--no-gate", "--results", str(results)])
    assert bench.run(args) == 0
    text = results.read_text()
    assert "keep me" in text and "## robust" in text
    assert "--shapes tiny" in text and "| tiny | decode | 1 |" in text
    assert "robust > DeepSeek" in text and "gate" not in text.split("Targets:")[1]
    assert "| tiny |" in capsys.readouterr().out


def test_gate_rates_on_a_small_shape():
    rates = bench.gate_rates(shape("olmoe"), steps=32, seeds=2, noise_seeds=20)
    assert rates["balanced"] == 0.0 and rates["skewed"] == 1.0
    assert rates["noise"] <= bench.TARGET_FALSE_POSITIVE
    lines = bench.targets([], rates)
    assert len(lines) == 3 and all(line.endswith("— met") for line in lines)
    assert "NOT met" in bench.targets([], dict(rates, noise=0.06))[2]


def test_exact_shape_table_and_heldout_oracle(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--shapes", "mixtral", "--sigmas", "1.0", "--seeds", "1",
                                        "--exact-seeds", "2", "--steps", "16",
                                        "--no-gate"])) == 0
    out = capsys.readouterr().out
    assert "held-out oracle" in out and "| mixtral | 1 | 2 | " in out and "/64 |" in out


def test_heldout_oracle_is_best_on_the_held_out_steps_and_leaves_start_alone():
    rng = np.random.default_rng(3)
    held = rng.poisson(rng.lognormal(3.0, 0.7, (2, 8)), (10, 2, 8)).astype(float)
    start = np.tile(np.arange(8), (2, 1))
    oracle = bench.heldout_oracle(start, held, 4)
    assert start.tolist() == [list(range(8))] * 2
    ideal = held.sum(axis=(1, 2)) / 4

    def cost(phy2log):
        ranks = held[:, np.arange(2)[:, None], phy2log].reshape(10, 2, 4, 2).sum(axis=3)
        return (ranks.max(axis=2).sum(axis=1) / ideal).mean()

    assert cost(oracle) <= cost(start)
    assert sorted(oracle[0].tolist()) == list(range(8))
