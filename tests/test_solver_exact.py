"""The exact search for small problems (plumb.solver.exact) against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.solver.exact import EXACT_NODES, exact_search
from plumb.solver.workspace import workspace


def _best_packing(pieces, speed, slots):
    """Smallest max load / speed over every packing of ``pieces`` [(weight, expert)] onto the
    ranks (``slots`` each, no expert twice on a rank): plain depth-first search, no pruning."""
    bins = len(speed)
    load = [0.0] * bins
    fill = [0] * bins
    held = [set() for _ in range(bins)]
    best = [np.inf]

    def place(i):
        if i == len(pieces):
            best[0] = min(best[0], max(load[r] / speed[r] for r in range(bins)))
            return
        weight, expert = pieces[i]
        for r in range(bins):
            if fill[r] < slots and expert not in held[r]:
                load[r] += weight
                fill[r] += 1
                held[r].add(expert)
                place(i + 1)
                load[r] -= weight
                fill[r] -= 1
                held[r].discard(expert)

    place(0)
    return best[0]


def _brute_force(weights, caps, speed, slots):
    """The optimum over every replica count vector and every packing."""
    bins = len(speed)
    best = np.inf
    ranges = [range(1, min(int(c), bins) + 1) for c in caps]
    for counts in itertools.product(*ranges):
        if sum(counts) != bins * slots:
            continue
        pieces = [(weights[e] / c, e) for e, c in enumerate(counts) for _ in range(c)]
        best = min(best, _best_packing(pieces, speed, slots))
    return best


def _case(seed):
    """Random small problem with spare slots: (weights, caps, speed, slots)."""
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(2, 4))
    slots = int(rng.integers(2, 4)) if bins < 3 else 2
    # At least S experts (a rank holds S different ones), fewer than the slots.
    num_experts = int(rng.integers(slots, bins * slots))
    weights = np.round(rng.lognormal(0.0, 1.0, num_experts) * 100.0)
    if seed % 3 == 0:
        weights[rng.integers(num_experts)] = 0.0
    caps = rng.integers(1, bins + 1, num_experts)
    # Enough replicas in all to fill every slot.
    while np.minimum(caps, bins).sum() < bins * slots:
        caps[rng.integers(num_experts)] += 1
    speed = rng.choice([1.0, 2.0], bins) if seed % 2 else np.ones(bins)
    return weights, caps.astype(np.int64), speed, slots


def _search(weights, caps, speed, slots, top):
    bins = len(speed)
    n = len(weights)
    fscratch, iscratch = workspace(n, bins, slots)
    counts = np.zeros(n, dtype=np.int64)
    slot_e = np.full((bins, slots), -1, dtype=np.int64)
    slot_w = np.zeros((bins, slots))
    load = np.zeros(bins)
    found, nodes = exact_search(
        weights, caps, speed, counts, slot_e, slot_w, load,
        np.zeros((bins, n), dtype=np.int16), top, 0.0, np.zeros(n, dtype=np.int64),
        np.zeros(bins * slots), np.zeros(bins * slots, dtype=np.int64),
        np.zeros((bins, slots), dtype=np.int64), np.zeros((bins, slots)), np.zeros(bins),
        fscratch, iscratch)
    return found, nodes, counts, slot_e, slot_w, load


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_exact_search_finds_the_brute_force_optimum(seed):
    weights, caps, speed, slots = _case(seed)
    want = _brute_force(weights, caps, speed, slots)
    # From an incumbent every packing beats: the search alone finds the optimum.
    found, nodes, counts, slot_e, slot_w, load = _search(weights, caps, speed, slots,
                                                         weights.sum() + 1.0)
    assert nodes < EXACT_NODES
    assert found == want or abs(found - want) <= 1e-9 * want
    # What it left is that solution: counts, no expert twice on a rank, loads summed.
    assert counts.sum() == slot_e.size and (counts >= 1).all()
    assert (counts <= np.minimum(caps, len(speed))).all()
    np.testing.assert_array_equal(np.bincount(slot_e.ravel(), minlength=len(weights)), counts)
    for r in range(len(speed)):
        assert len(set(slot_e[r])) == slots
        np.testing.assert_allclose(slot_w[r], weights[slot_e[r]] / counts[slot_e[r]])
        assert load[r] == slot_w[r].sum()
    assert found == max(load / speed)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_exact_search_keeps_an_optimal_incumbent(seed):
    # Nothing is below the optimum: the incumbent's arrays stay as they were.
    weights, caps, speed, slots = _case(seed)
    want = _brute_force(weights, caps, speed, slots)
    found, _, counts, slot_e, _, load = _search(weights, caps, speed, slots, want)
    assert found == want
    assert (counts == 0).all() and (slot_e == -1).all() and (load == 0).all()


@pytest.mark.parametrize("weights, optimum, counts", [
    # Water-filling's counts and every replica move stop at 1359.25 ([1, 3, 1, 1, 1, 1, 3, 1]);
    # the optimum keeps the second expert whole and splits two light ones as fillers.
    ([654, 911, 131, 248, 281, 147, 2527, 269], 7823 / 6, [2, 1, 1, 1, 1, 1, 3, 2]),
    # Within 1% of the ideal (1301.5), where the count steps do not run: 1314.5 before.
    ([671, 510, 781, 936, 294, 828, 504, 682], 1313.0, [1, 3, 1, 2, 1, 1, 1, 2]),
])
def test_mixtral_sized_layers_reach_their_optimum(weights, optimum, counts):
    # 8 experts on 4 ranks of 3 slots (Mixtral with 4 redundant slots). The optima were found
    # by exhaustive search over all 322 count vectors and every packing of each; the random
    # small problems above check exact_search itself against brute force.
    placement = plumb.solve(np.array(weights, dtype=np.float64), plumb.Topology.flat(4),
                            num_redundant=4)
    # (up to the last bits of the rank sums' order)
    assert abs(placement.metrics.max_load[0] - optimum) <= 1e-12 * optimum
    np.testing.assert_array_equal(placement.logcnt[0], counts)


def test_small_layer_on_unequal_speeds_reaches_its_optimum():
    # Three slow ranks and one fast: the count steps stopped at 41.5 (ideal 25.7); the
    # optimum (26.0) keeps the heaviest expert whole on the fast rank and cuts two lighter
    # ones into three pieces each for the slow ranks.
    weights = np.array([23.0, 51.0, 16.0, 0.0])
    speed = np.array([0.5, 0.5, 0.5, 2.0])
    placement = plumb.solve(weights, plumb.Topology.flat(4, rank_speed=speed), num_redundant=4)
    want = _brute_force(weights, np.full(4, 4), speed, 2)
    assert abs(placement.metrics.max_load[0] - want) <= 1e-12 * want
    assert want < 41.5 * 0.7


def test_one_replica_per_expert_reaches_the_best_split():
    # 8 experts on 2 ranks of 4 slots, no spare slots: LPT and the swap and pair searches stop
    # at 291 (ideal 280); the best split of the 70 is 281.
    weights = np.array([35.0, 15.0, 30.0, 49.0, 81.0, 93.0, 92.0, 165.0])
    placement = plumb.solve(weights, plumb.Topology.flat(2))
    want = _best_packing([(w, e) for e, w in enumerate(weights)], np.ones(2), 4)
    assert placement.metrics.max_load[0] == want == 281.0
