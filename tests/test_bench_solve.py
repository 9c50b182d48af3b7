"""Smoke tests of ``plumb bench solve`` and of the workload generators it uses (no timing checks)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from plumb.bench import solve as bench
from plumb.bench import workloads as W


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--shapes", "tiny", "--quick", "--repeats", "1",
                              "--results", str(tmp_path / "RESULTS.md"),
                              *(extra or ("--parallel-threads", "1"))])


def _table_rows(text, first_header):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_bench_solve_smoke(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## histogram\n\nkeep me\n")
    assert bench.run(_args(tmp_path)) == 0
    out = capsys.readouterr().out

    header, rows = _table_rows(out, "shape")
    assert header == bench.HEADERS
    assert [(r[0], r[1], r[2]) for r in rows] == [("tiny", "hierarchical", "1")]
    row = dict(zip(header, rows[0]))
    assert row["deepseek = numpy"] == "yes"
    assert float(row["plumb ms"]) > 0 and row["× numpy"].endswith("×")
    assert 0 < float(row["bal plumb"]) <= 1 and 0 < float(row["bal deepseek"]) <= 1

    case_header, case_rows = _table_rows(out.split("adversarial loads")[1], "shape")
    assert case_header == bench.CASE_HEADERS
    assert [r[2] for r in case_rows] == ["uniform", *W.ADVERSARIAL_KINDS]
    assert "Targets:" in out and "policy='deepseek' phy2log and logcnt == numpy baseline" in out

    text = results.read_text()
    assert "## histogram\n\nkeep me" in text
    assert "## solve" in text and "python benchmarks/bench_solve.py --quick --shapes tiny" in text
    # rewriting replaces the section instead of appending a second one
    assert bench.run(_args(tmp_path, "--no-cases")) == 0
    assert results.read_text().count("## solve") == 1


def test_parallel_columns_time_the_same_placements_on_threads(tmp_path, capsys):
    assert bench.run(_args(tmp_path, "--no-cases", "--parallel-threads", "2")) == 0
    header, rows = _table_rows(capsys.readouterr().out, "shape")
    assert header[7:9] == ["plumb ms, 2 threads", "× numpy, 2 threads"]
    row = dict(zip(header, rows[0]))
    assert float(row["plumb ms, 2 threads"]) > 0 and row["× numpy, 2 threads"].endswith("×")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "2 single-threaded tiny solves side by side only" in text


def test_concurrency_probe_counts_serial_work_against_threads():
    calls = []
    assert bench._concurrency(lambda: calls.append(1), 3, repeats=2) > 0
    assert len(calls) == 1 + 2 * (3 + 3)  # warm-up, then each repeat: 3 in a row, 3 on threads
    assert bench.solver_scaling(W.TINY, 2, steps=2, seed=0, repeats=1) > 0


def _followers(calls, name):
    """Who ran right after each call of ``name``."""
    return [after for before, after in zip(calls, calls[1:]) if before == name]


def test_interleaved_rounds_shuffle_the_order():
    # Warm-up in dict order, then every round in its own (seeded) order; "every" thins c out
    # to every 4th round, topped up to 3 timed calls (rounds 0-2).
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = bench.interleaved_medians(fns, 4, every={"c": 4})
    assert calls[:3] == list("abc")
    rounds = [calls[3:6], calls[6:9], calls[9:12], calls[12:]]
    assert [sorted(r) for r in rounds] == [list("abc")] * 3 + [list("ab")]
    assert set(times) == set("abc")
    calls_again = list(calls)
    calls.clear()
    bench.interleaved_medians(fns, 4, every={"c": 4})
    assert calls == calls_again


def test_the_thinned_baseline_is_not_always_followed_by_the_same_contender():
    # The bench's case: 4 contenders, the numpy baseline timed every 4th round. A rotation
    # put the same contender right after it in every one of its rounds.
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("plumb", "deepseek",
                                                                     "numpy", "parallel")}
    bench.interleaved_medians(fns, 21, every={"numpy": 4})
    followers = _followers(calls[4:], "numpy")
    assert len(followers) >= 5 and len(set(followers)) >= 2
    assert len(set(_followers(calls[4:], "plumb"))) >= 2


def test_cli_lists_solve():
    from plumb.cli.bench import _BENCHMARKS

    assert "solve" in _BENCHMARKS
    assert bench.__doc__.strip().splitlines()[0]


def test_metric_helpers():
    loads = np.array([[4.0, 2.0, 2.0, 0.0]])
    phy2log = np.array([[0, 1, 0, 2, 3, 1]])  # two ranks of 3 slots; expert 0 and 1 twice
    ranks = bench.rank_loads(phy2log, loads, 2)
    assert np.allclose(ranks, [[2 + 1 + 2, 2 + 0 + 1]])
    assert np.allclose(bench.layer_balancedness(phy2log, loads, 2), [4 / 5])
    assert np.allclose(bench.layer_balancedness(phy2log, np.zeros((1, 4)), 2), [1.0])


def test_shapes_table_matches_spec():
    table = {s.name: (s.num_layers, s.num_experts, s.num_slots, s.num_gpus, s.num_nodes,
                      s.num_groups) for s in W.SHAPES}
    assert table == {
        "dsv3-prefill": (58, 256, 288, 32, 4, 8),
        "dsv3-decode": (58, 256, 320, 64, 8, 8),
        "qwen3-30b": (48, 128, 160, 8, 1, 1),
        "olmoe": (16, 64, 64, 8, 1, 1),
        "mixtral": (32, 8, 8, 4, 1, 1),
    }
    assert W.shape("dsv3-decode").hierarchy == "global"
    assert W.shape("dsv3-decode").deepseek_args() == (320, 1, 1, 64)
    assert W.shape("dsv3-prefill").deepseek_args() == (288, 8, 4, 32)
    with pytest.raises(ValueError, match="unknown shape"):
        W.shape("nope")


def test_few_slot_shapes_outside_the_spec_table():
    assert {s.name for s in W.FEW_SLOTS}.isdisjoint(s.name for s in W.SHAPES)
    for few in W.FEW_SLOTS:
        assert W.shape(few.name) is few and few.slots_per_gpu in (2, 3)
        row = bench.measure_case(few, 1.0, repeats=1, steps=2, seed=0)
        assert row["match"] and row["min_dbal"] >= -1e-12


def test_workloads_deterministic_and_well_formed():
    a = W.make_loads("qwen3-30b", 1.0, steps=4, seed=3, window=True)
    b = W.make_loads("qwen3-30b", 1.0, steps=4, seed=3, window=True)
    c = W.make_loads("qwen3-30b", 1.0, steps=4, seed=4, window=True)
    assert a.shape == (4, 48, 128) and a.dtype == np.int64
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    tokens = W.tokens_per_step("decode", 4, np.random.default_rng(3))
    assert np.all((tokens >= 64) & (tokens <= 256))
    # every count is at most the step's tokens, and each step routes ~ tokens * top_k picks
    assert np.all(a <= 256)
    totals = a.sum(axis=2)
    assert np.all(totals <= 8 * 256) and np.all(totals >= 8 * 64 * 0.9)
    prefill = W.make_loads("dsv3-prefill", 0.5, steps=2, seed=0, window=True)
    assert np.all(prefill.sum(axis=2) <= 8192 * 8) and prefill.sum(axis=2).min() > 8192 * 7
    summed = W.make_loads("mixtral", 1.5, steps=3, seed=1)
    assert summed.shape == (32, 8) and summed.dtype == np.float64


def test_skew_grows_with_sigma_and_uniform_is_flat():
    ratio = {}
    for sigma in W.SIGMAS:
        pop = W.lognormal_popularity(58, 256, sigma, seed=0)
        assert np.allclose(pop.sum(axis=1), 1.0)
        ratio[sigma] = float((pop.max(axis=1) / pop.mean(axis=1)).mean())
    assert ratio[0.5] < ratio[1.0] < ratio[1.5]
    uniform = W.uniform_window(2, 64, steps=8, tokens=8192, top_k=8, seed=0).sum(axis=0)
    assert uniform.max() / uniform.mean() < 1.2


def test_drift_changes_popularity_over_time():
    pop = W.lognormal_popularity(1, 64, 1.0, seed=0)
    still = W.sample_window(pop, 40, 8192, 8, seed=1)
    moving = W.sample_window(pop, 40, 8192, 8, seed=1, drift=0.2)
    corr = lambda w: np.corrcoef(w[:5].sum(0)[0], w[-5:].sum(0)[0])[0, 1]
    assert corr(still) > 0.95 and corr(moving) < corr(still)


def test_inclusion_probabilities():
    pop = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    pi = W.inclusion_probabilities(pop, 2)
    assert np.all(pi <= 1.0 + 1e-12)
    assert np.allclose(pi[:2].sum(axis=1), 2.0)
    assert np.allclose(pi[0], [1.0, 1 / 3, 1 / 3, 1 / 3])
    assert np.allclose(pi[1], 0.5)


@pytest.mark.parametrize("kind", W.ADVERSARIAL_KINDS)
def test_adversarial(kind):
    w = W.adversarial(kind, 3, 32, 8, seed=2, num_groups=4)
    assert w.shape == (3, 32) and np.all(w >= 0) and np.all(np.isfinite(w))
    assert np.array_equal(w, W.adversarial(kind, 3, 32, 8, seed=2, num_groups=4))
    if kind == "hot":
        assert np.all(w.max(axis=1) > w.sum(axis=1) / 8)
    if kind == "zeros":
        assert not w.any()
    if kind == "equal":
        assert np.all(w == w[0, 0])
    if kind == "ties":
        assert set(np.unique(w)) <= {1.0, 2.0, 3.0}
    if kind == "hot-group":
        assert np.all((w > 0).sum(axis=1) == 8)


@pytest.mark.parametrize("argv, message", [
    (["solve", "--shapes", ","], "expected comma-separated shape names"),
    (["solve", "--shapes", "dsv3,olmoe"], "unknown shape 'dsv3'"),
    (["solve", "--repeats", "-1"], "--repeats: expected an int >= 1, got -1"),
    (["solve", "--repeats", "0"], "--repeats: expected an int >= 1, got 0"),
    (["solve", "--sigmas", "1,nan"], "--sigmas: expected a finite number"),
    (["solve", "--sigmas", "1,,2"], "--sigmas: expected comma-separated numbers"),
    (["solve", "--seed", "-3"], "--seed: expected an int >= 0"),
    (["robust", "--drift", "-0.1"], "--drift: expected a number >= 0"),
    (["moves", "--expert-mib", "0"], "--expert-mib: expected a number > 0"),
    (["rearrange", "--layers", "4", "0"], "--layers: expected an int >= 1"),
    (["topology", "--layers", "x"], "--layers: expected an int >= 1, got 'x'"),
    (["histogram", "--threads", "0"], "--threads: expected an int >= 1"),
])
def test_bench_options_are_usage_errors(capsys, argv, message):
    from plumb.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
