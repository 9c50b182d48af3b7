"""plumb.robust.exact: every packing scored; checked against brute force over all partitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import plumb
from plumb.robust.exact import MAX_PACKINGS, TIE, exact_applies, exact_packing, num_packings
from plumb.robust.objective import SHRINK
from plumb.solver.validate import replica_counts


def partitions(items, slots):
    """Every partition of ``items`` into unlabelled blocks of ``slots`` each."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for mates in itertools.combinations(rest, slots - 1):
        left = [e for e in rest if e not in mates]
        for tail in partitions(left, slots):
            yield [(first,) + mates] + tail


def objective(x, step_w, blocks):
    times = np.stack([x[:, list(block)].sum(axis=1) for block in blocks], axis=1)
    return float(step_w @ times.max(axis=1))


def canonical(slot_e):
    return sorted(tuple(sorted(row)) for row in np.asarray(slot_e).tolist())


@pytest.mark.parametrize("num_experts, num_ranks", [(8, 4), (8, 2), (6, 3), (9, 3), (4, 4)])
def test_num_packings_counts_the_partitions(num_experts, num_ranks):
    slots = num_experts // num_ranks
    assert num_packings(num_experts, num_ranks) == \
        sum(1 for _ in partitions(list(range(num_experts)), slots))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("num_experts, num_ranks", [(8, 4), (6, 2), (9, 3)])
def test_exact_packing_is_the_brute_force_optimum(seed, num_experts, num_ranks):
    rng = np.random.default_rng(seed)
    steps = 9
    x = rng.poisson(rng.lognormal(2.0, 1.0, num_experts), (steps, num_experts)).astype(float)
    step_w = rng.random(steps)
    slots = num_experts // num_ranks
    start = rng.permutation(num_experts).reshape(num_ranks, slots)
    slot_e = start.copy()
    value = exact_packing(x, step_w, slot_e)
    values = [objective(x, step_w, blocks)
              for blocks in partitions(list(range(num_experts)), slots)]
    assert sorted(slot_e.ravel().tolist()) == list(range(num_experts))
    assert value == pytest.approx(min(values), rel=1e-12)
    assert objective(x, step_w, slot_e) == pytest.approx(min(values), rel=1e-12)


def test_ties_keep_the_start_then_the_flattest_mean():
    # Expert 0 dominates every step: J = mean of (x0 + its partner), whatever the other pairs.
    # Mean loads of experts 2..7: 1.5, 3, 4.5, 4.5, 6.5, 7.
    x = np.array([[100.0, 1, 2, 3, 4, 5, 6, 8], [100.0, 1, 1, 3, 5, 4, 7, 6]])
    step_w = np.array([0.5, 0.5])
    optimum = [[0, 1], [2, 3], [4, 5], [6, 7]]  # 0 with its lightest partner: J = 101
    slot_e = np.array(optimum)
    assert exact_packing(x, step_w, slot_e) == pytest.approx(101.0)
    assert canonical(slot_e) == canonical(optimum)
    # From a start that is not optimal: 0 with 1, then the lowest max mean rank load
    # (2+7, 3+6, 4+5: 8.5, 9.5, 9; every other pairing of 2..7 has a rank above 9.5).
    slot_e = np.array([[0, 7], [1, 6], [2, 5], [3, 4]])
    exact_packing(x, step_w, slot_e)
    assert canonical(slot_e) == [(0, 1), (2, 7), (3, 6), (4, 5)]


def test_all_zero_loads_keep_the_start():
    slot_e = np.array([[3, 5], [0, 7], [1, 2], [4, 6]])
    assert exact_packing(np.zeros((4, 8)), np.full(4, 0.25), slot_e) == 0.0
    assert slot_e.tolist() == [[3, 5], [0, 7], [1, 2], [4, 6]]


def test_exact_applies_only_to_one_replica_per_expert_equal_speeds_and_few_packings():
    equal = np.ones(4)
    assert exact_applies(8, 8, equal)
    assert not exact_applies(8, 12, equal)
    assert not exact_applies(8, 8, np.array([1.0, 1.0, 2.0, 1.0]))
    assert num_packings(16, 8) > MAX_PACKINGS and not exact_applies(16, 16, np.ones(8))


@pytest.mark.parametrize("seed", range(4))
def test_robust_solve_reaches_the_exact_optimum_on_a_mixtral_like_window(seed):
    rng = np.random.default_rng(seed)
    pop = rng.lognormal(0.0, 0.5, (3, 8))
    window = rng.poisson(40.0 * pop / pop.mean(axis=1, keepdims=True), (16, 3, 8)).astype(float)
    placement = plumb.solve(window, 4, objective="robust")
    assert (replica_counts(placement.phy2log, 8) == 1).all()
    step_w = np.full(16, 1 / 16)
    steps = (1 - SHRINK) * window + SHRINK * window.mean(axis=0)
    for layer in range(3):
        x = steps[:, layer]
        best = min(objective(x, step_w, blocks) for blocks in partitions(list(range(8)), 2))
        got = objective(x, step_w, placement.phy2log[layer].reshape(4, 2))
        assert got <= best * (1 + TIE) + 1e-12
