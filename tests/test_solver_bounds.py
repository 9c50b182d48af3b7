"""Lower bounds (plumb.solver.bounds): valid for every placement, exact where they should be."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.solver.bounds import cardinality_bound, layer_bound, layer_bound_with
from plumb.solver.workspace import ORDER, workspace


def _brute_force_optimum(weights: np.ndarray, num_ranks: int, num_slots: int) -> float:
    """Smallest achievable max rank load over every phy2log of one layer (even dispatch)."""
    num_experts = weights.size
    slots = num_slots // num_ranks
    best = np.inf
    for phy2log in itertools.product(range(num_experts), repeat=num_slots):
        counts = np.bincount(phy2log, minlength=num_experts)
        if (counts == 0).any():
            continue
        share = weights[list(phy2log)] / counts[list(phy2log)]
        best = min(best, share.reshape(num_ranks, slots).sum(axis=1).max())
    return best


@st.composite
def tiny_layers(draw):
    """(weights [E], G, P) small enough to enumerate every placement (E ** P <= 4096)."""
    num_ranks = draw(st.integers(1, 3))
    slots = draw(st.integers(1, 3))
    num_slots = num_ranks * slots
    num_experts = draw(st.integers(max(1, num_slots - 2), num_slots))
    if num_experts ** num_slots > 4096:
        num_experts = num_slots = num_ranks * min(slots, 2)
    values = st.one_of(st.integers(0, 9), st.floats(0.0, 100.0, allow_nan=False))
    weights = np.array(draw(st.lists(values, min_size=num_experts, max_size=num_experts)),
                       dtype=np.float64)
    return weights, num_ranks, num_slots


@settings(max_examples=80, deadline=None)
@given(tiny_layers())
def test_bound_never_exceeds_brute_force_optimum(layer):
    weights, num_ranks, num_slots = layer
    optimum = _brute_force_optimum(weights, num_ranks, num_slots)
    bound = layer_bound(weights, num_slots, np.ones(num_ranks))
    assert bound <= optimum * (1 + 1e-12) + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 6), st.integers(0, 2**32 - 1),
       st.sampled_from([0.5, 1.0, 2.0]))
def test_bound_never_exceeds_any_placement(num_ranks, slots, seed, sigma):
    # No redundancy (where the cardinality bounds apply): plumb's placement and random ones.
    rng = np.random.default_rng(seed)
    num_experts = num_ranks * slots
    loads = np.round(rng.lognormal(0.0, sigma, (3, num_experts)), 1)
    p = plumb.solve(loads, num_ranks)
    assert (p.metrics.lower_bound <= p.metrics.max_load * (1 + 1e-12) + 1e-12).all()
    for _ in range(5):
        shuffled = np.stack([rng.permutation(num_experts) for _ in range(3)])
        m = plumb.evaluate(shuffled, loads, num_ranks)
        assert (m.lower_bound <= m.max_load * (1 + 1e-12) + 1e-12).all()


def test_two_slots_per_rank_pairing_bound_is_the_optimum():
    # S = 2: the heaviest pairs with the lightest, and so on: max(9 + 1, 8 + 7) = 15 > W / G.
    m = plumb.evaluate([[0, 3, 1, 2]], [9.0, 8.0, 7.0, 1.0], 2)
    np.testing.assert_allclose(m.lower_bound, [15.0])
    np.testing.assert_allclose(m.max_load, [15.0])
    assert m.lb_gap_max == 0.0


def test_each_rank_carries_its_lightest_companions():
    # G = 2, S = 3: the rank of the 50 also holds two others, at least 1 + 1.
    weights = np.array([50.0, 10.0, 10.0, 10.0, 1.0, 1.0])
    scratch = np.empty((2, weights.size + 1))
    assert cardinality_bound(np.sort(weights)[::-1], 2, scratch[0], scratch[1]) == 52.0
    assert layer_bound(weights, 6, np.ones(2)) == 52.0


def test_k_bound():
    # G = 2, S = 3, equal loads: 2 * 2 + 1 = 5 items need 3 on one rank.
    weights = np.full(6, 4.0)
    scratch = np.empty((2, weights.size + 1))
    assert cardinality_bound(weights, 2, scratch[0], scratch[1]) == 12.0


def test_bounds_scale_with_the_fastest_rank():
    topo = plumb.Topology.cluster(nodes=1, gpus_per_node=2, rank_speed=[1.0, 2.0])
    m = plumb.evaluate([[0, 3, 1, 2]], [9.0, 8.0, 7.0, 1.0], topo)
    assert m.lower_bound[0] <= m.max_load[0]
    np.testing.assert_allclose(m.lower_bound, [max(25.0 / 3.0, 15.0 / 2.0)])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(2, 6), st.integers(0, 2**32 - 1), st.booleans())
def test_bound_leaves_the_experts_by_descending_weight_for_the_packing(num_ranks, slots, seed,
                                                                       integral):
    # With one replica per expert the solver packs from the order the bound sorted (no
    # second sort): it must be the stable descending order, ties by expert index.
    rng = np.random.default_rng(seed)
    num_experts = num_ranks * slots
    weights = rng.integers(0, 4, num_experts).astype(np.float64) if integral else \
        rng.lognormal(0.0, 1.0, num_experts)
    fscratch, iscratch = workspace(num_experts, num_ranks, slots)
    iscratch[ORDER] = -1
    layer_bound_with(weights, num_experts, np.ones(num_ranks), fscratch, iscratch)
    np.testing.assert_array_equal(iscratch[ORDER, :num_experts],
                                  np.argsort(-weights, kind="stable"))
