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


def _hierarchical_optimum(weights: np.ndarray, num_groups: int, nodes: int, gpn: int,
                          num_slots: int) -> float:
    """Smallest max rank load over every phy2log that keeps each expert group on one node,
    num_groups / nodes groups per node (stacking allowed; even dispatch; ranks node-major)."""
    num_experts = weights.size
    slots = num_slots // (nodes * gpn)
    group_size = num_experts // num_groups
    slot_node = np.arange(num_slots) // (gpn * slots)
    best = np.inf
    for phy2log in itertools.product(range(num_experts), repeat=num_slots):
        phy2log = np.array(phy2log)
        counts = np.bincount(phy2log, minlength=num_experts)
        if (counts == 0).any():
            continue
        group_nodes = [set(slot_node[phy2log // group_size == g]) for g in range(num_groups)]
        if any(len(held) != 1 for held in group_nodes):
            continue
        per_node = np.bincount([held.pop() for held in group_nodes], minlength=nodes)
        if (per_node != num_groups // nodes).any():
            continue
        share = weights[phy2log] / counts[phy2log]
        best = min(best, share.reshape(nodes * gpn, slots).sum(axis=1).max())
    return best


@st.composite
def tiny_hierarchical_layers(draw):
    """(weights [E], groups, gpn, P) on 2 nodes, small enough to enumerate (E ** P <= 4096)."""
    gpn = draw(st.integers(1, 2))
    slots = draw(st.integers(1, 3 if gpn == 1 else 1))
    num_slots = 2 * gpn * slots
    num_groups = draw(st.sampled_from([2, 4]))
    num_experts = draw(st.sampled_from([e for e in (2, 4) if num_groups <= e <= num_slots]
                                       or [num_groups]))
    if num_experts > num_slots:
        num_slots = num_experts
        slots = num_slots // (2 * gpn)
    # Through plumb.solve: totals below its floor (subnormal floats) are input errors
    # (test_solver_validation), so tiny draws become zeros.
    values = st.one_of(st.integers(0, 9), st.floats(0.0, 100.0, allow_nan=False).map(
        lambda v: v if v >= 1e-200 else 0.0))
    weights = np.array(draw(st.lists(values, min_size=num_experts, max_size=num_experts)),
                       dtype=np.float64)
    return weights, num_groups, gpn, num_slots


@settings(max_examples=80, deadline=None)
@given(tiny_hierarchical_layers())
def test_hierarchical_bound_never_exceeds_the_hierarchical_optimum(layer):
    from plumb.solver.bounds import hierarchical_bound

    weights, num_groups, gpn, num_slots = layer
    optimum = _hierarchical_optimum(weights, num_groups, 2, gpn, num_slots)
    caps = np.full(weights.size, 2 * gpn, dtype=np.int64)
    group_w = weights.reshape(num_groups, -1).sum(axis=1)
    bound = hierarchical_bound(weights, caps, np.ones(2 * gpn), group_w, np.full(2, float(gpn)),
                               gpn, *workspace(weights.size, 2 * gpn, num_slots // (2 * gpn)))
    assert bound <= optimum * (1 + 1e-12) + 1e-12
    p = plumb.solve(weights, plumb.Topology.cluster(nodes=2, gpus_per_node=gpn),
                    num_redundant=num_slots - weights.size, num_groups=num_groups,
                    hierarchy="hierarchical")
    assert p.metrics.lower_bound[0] <= optimum * (1 + 1e-12) + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([(2, 4), (2, 8), (4, 8), (4, 16)]), st.integers(0, 8),
       st.integers(0, 2**32 - 1), st.sampled_from([0.5, 1.0, 2.0]))
def test_hierarchical_bound_holds_for_both_policies_hierarchical_placements(
        nodes_groups, redundant_per_node, seed, sigma):
    # DeepSeek's hierarchical packing (which stacks replicas) and plumb's, with rank speeds.
    nodes, num_groups = nodes_groups
    rng = np.random.default_rng(seed)
    gpn = 4
    num_experts = 32
    num_slots = num_experts + nodes * redundant_per_node
    num_slots += -num_slots % (nodes * gpn)
    loads = np.round(rng.lognormal(0.0, sigma, (4, num_experts)) * 100)
    topo = plumb.Topology.cluster(nodes=nodes, gpus_per_node=gpn,
                                  rank_speed=rng.choice([1.0, 1.5], nodes * gpn))
    plain = plumb.Topology.cluster(nodes=nodes, gpus_per_node=gpn)
    kw = dict(num_redundant=num_slots - num_experts, num_groups=num_groups,
              hierarchy="hierarchical")
    for p in (plumb.solve(loads, topo, **kw), plumb.solve(loads, plain, **kw)):
        m = p.metrics
        assert (m.lower_bound <= m.max_load * (1 + 1e-12)).all()
        # At least as sharp as the bound over all placements.
        everywhere = plumb.evaluate(p.phy2log, loads, p.topo).lower_bound
        assert (m.lower_bound >= everywhere).all()
    deepseek = plumb.solve(loads, plain, policy="deepseek", **kw)
    ours = plumb.solve(loads, plain, **kw)
    assert (ours.metrics.lower_bound <= deepseek.metrics.max_load * (1 + 1e-12)).all()


def test_forced_hierarchy_reports_the_bound_over_hierarchical_placements():
    # One hot expert, groups of 2 on 2 nodes of 2 ranks: kept on its node it has at most 2
    # replicas (4 each); the global policy spreads it over all 4 ranks (2 each).
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    loads = [[8.0, 0.0, 0.0, 0.0]]
    forced = plumb.solve(loads, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical")
    np.testing.assert_allclose(forced.metrics.lower_bound, [4.0])
    np.testing.assert_allclose(forced.metrics.max_load, [4.0])
    assert forced.metrics.lb_gap_max == 0.0
    auto = plumb.solve(loads, topo, num_redundant=4, num_groups=2)
    np.testing.assert_allclose(auto.metrics.lower_bound, [2.0])
    np.testing.assert_allclose(auto.metrics.max_load, [2.0])


def test_node_loads_pair_heaviest_with_lightest_groups():
    # Group loads 10, 2, 1, 1 on 2 one-rank nodes, 2 groups each: some node carries at least
    # 10 + 1. Over all placements the two 5s may sit apart: 7 per rank.
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=1)
    loads = [[5.0, 5.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]]
    forced = plumb.solve(loads, topo, num_groups=4, hierarchy="hierarchical")
    np.testing.assert_allclose(forced.metrics.lower_bound, [11.0])
    np.testing.assert_allclose(forced.metrics.max_load, [11.0])
    auto = plumb.solve(loads, topo, num_groups=4)
    np.testing.assert_allclose(auto.metrics.lower_bound, [7.0])
    np.testing.assert_allclose(auto.metrics.max_load, [7.0])


def test_layers_left_outside_the_hierarchy_get_the_bound_over_all_placements():
    # A previous global placement kept on layer 1 (layers=[0]): its bound is evaluate's.
    from plumb.solver.api import groups_within_nodes

    rng = np.random.default_rng(3)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    loads = rng.lognormal(0.0, 1.5, (2, 32)) * 100
    kw = dict(num_redundant=8, num_groups=4)
    previous = plumb.solve(loads, topo, hierarchy="global", **kw)
    assert not groups_within_nodes(previous.phy2log, 32, 4, topo).any()
    p = plumb.solve(loads, topo, hierarchy="hierarchical", previous=previous, layers=[0], **kw)
    np.testing.assert_array_equal(groups_within_nodes(p.phy2log, 32, 4, topo), [True, False])
    forced = plumb.solve(loads, topo, hierarchy="hierarchical", **kw)
    everywhere = plumb.evaluate(p.phy2log, loads, topo).lower_bound
    assert p.metrics.lower_bound[0] == forced.metrics.lower_bound[0] > everywhere[0]
    assert p.metrics.lower_bound[1] == everywhere[1]


def test_groups_within_nodes_reads_any_node_labels():
    from plumb.solver.api import groups_within_nodes

    topo = plumb.Topology.from_levels(node_of_rank=[7, 7, 2, 2])
    # Groups of 2 experts; slots 0-3 on node 7, 4-7 on node 2 (2 slots per rank).
    together = np.array([[0, 1, 0, 1, 2, 3, 2, 3]])
    split = np.array([[0, 2, 0, 1, 1, 3, 2, 3]])
    crowded = np.array([[0, 1, 2, 3, 0, 1, 2, 3]])
    assert groups_within_nodes(together, 4, 2, topo).tolist() == [True]
    assert groups_within_nodes(split, 4, 2, topo).tolist() == [False]
    assert groups_within_nodes(crowded, 4, 2, topo).tolist() == [False]
