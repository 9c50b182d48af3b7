"""plumb.solve(previous=...): the movement pass keeps balance, moves less, honours its options."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import plumb
from plumb.errors import InputError
from plumb.movement import MovementOptions, minimise_movement
from plumb.solver.validate import replica_counts

REL = 1e-9


@st.composite
def drift_cases(draw):
    """(topo, loads, drifted loads, num_redundant, num_groups): a small model whose loads drift."""
    nodes = draw(st.sampled_from([1, 2]))
    gpus = draw(st.sampled_from([2, 4]))
    topo = plumb.Topology.cluster(nodes=nodes, gpus_per_node=gpus)
    groups = draw(st.sampled_from([1, nodes]))
    experts = groups * draw(st.integers(2, 6)) * (gpus * nodes // groups)
    slots_extra = topo.num_ranks * draw(st.integers(0, 2))
    layers = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    loads = np.round(rng.lognormal(0, draw(st.sampled_from([0.5, 1.5])), (layers, experts)) * 100)
    drift = draw(st.sampled_from([0.05, 0.3, 3.0]))
    drifted = np.round(loads * np.exp(rng.normal(0, drift, loads.shape)))
    return topo, loads, drifted, slots_extra, groups


def max_times(placement):
    return placement.metrics.max_load


@settings(max_examples=20, deadline=None, derandomize=True)
@given(drift_cases())
def test_invariants(case):
    topo, loads, drifted, extra, groups = case
    old = plumb.solve(loads, topo, num_redundant=extra, num_groups=groups)
    fresh = plumb.solve(drifted, topo, num_redundant=extra, num_groups=groups)
    new = plumb.solve(drifted, topo, num_redundant=extra, num_groups=groups, previous=old)
    # A valid placement (evaluate validates it) with the same balance.
    metrics = plumb.evaluate(new.phy2log, drifted, topo, previous=old)
    assert np.all(max_times(new) <= max_times(fresh) * (1 + REL) + 1e-12)
    # Never more moves than the fresh solve without relabelling.
    assert metrics.moves.moves <= plumb.evaluate(fresh, drifted, topo, previous=old).moves.moves
    # An expert that stays on its rank keeps its slot (as many of its slots as copies stay).
    slots = new.phy2log.shape[1] // topo.num_ranks
    before = old.phy2log.reshape(-1, topo.num_ranks, slots)
    after = new.phy2log.reshape(-1, topo.num_ranks, slots)
    for layer, rank in np.ndindex(before.shape[:2]):
        for expert in np.unique(before[layer, rank]):
            staying = min((before[layer, rank] == expert).sum(),
                          (after[layer, rank] == expert).sum())
            kept = ((before[layer, rank] == expert) & (after[layer, rank] == expert)).sum()
            assert kept == staying
    # Unchanged loads: nothing moves.
    again = plumb.solve(loads, topo, num_redundant=extra, num_groups=groups, previous=old)
    assert again.metrics.moves.moves == 0
    np.testing.assert_array_equal(again.phy2log, old.phy2log)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(drift_cases(), st.integers(0, 12), st.data())
def test_budget_and_layers_respected(case, budget, data):
    topo, loads, drifted, extra, groups = case
    old = plumb.solve(loads, topo, num_redundant=extra, num_groups=groups)
    before = plumb.evaluate(old, drifted, topo).max_load
    new = plumb.solve(drifted, topo, num_redundant=extra, num_groups=groups, previous=old,
                      move_budget=budget)
    assert new.metrics.moves.moves <= budget
    assert np.all(new.metrics.max_load <= before * (1 + REL) + 1e-12)
    per_layer = np.full(loads.shape[0], budget // 2)
    split = plumb.solve(drifted, topo, num_redundant=extra, num_groups=groups, previous=old,
                        move_budget=per_layer)
    assert np.all(split.metrics.moves.layer_moves <= per_layer)
    chosen = data.draw(st.lists(st.integers(0, loads.shape[0] - 1), unique=True))
    partial = plumb.solve(drifted, topo, num_redundant=extra, num_groups=groups, previous=old,
                          layers=chosen)
    others = np.setdiff1d(np.arange(loads.shape[0]), chosen)
    np.testing.assert_array_equal(partial.phy2log[others], old.phy2log[others])
    auto = plumb.solve(drifted, topo, num_redundant=extra, num_groups=groups, previous=old,
                       layers="auto:1")
    assert int((auto.phy2log != old.phy2log).any(axis=1).sum()) <= 1


def test_relabelling_alone_keeps_every_rank_load():
    rng = np.random.default_rng(3)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    loads = rng.lognormal(0, 1, (4, 32))
    old = plumb.solve(loads, topo, num_redundant=8).phy2log
    new = plumb.solve(loads * rng.uniform(0.5, 1.5, loads.shape), topo, num_redundant=8)
    classes = np.zeros((1, 8), dtype=np.int64)
    out = minimise_movement(new.phy2log, old, new.loads, topo, classes, np.zeros(4, bool),
                            MovementOptions(), refine=False)
    loads_after = plumb.evaluate(out, new.loads, topo).rank_loads
    np.testing.assert_allclose(np.sort(loads_after, axis=1), np.sort(new.rank_loads, axis=1))
    np.testing.assert_array_equal(replica_counts(out, 32), new.logcnt)


def test_load_slack_trades_balance_for_moves():
    rng = np.random.default_rng(5)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    loads = rng.lognormal(0, 1, (6, 64))
    old = plumb.solve(loads, topo, num_redundant=16)
    drifted = loads * rng.uniform(0.93, 1.07, loads.shape)
    tight = plumb.solve(drifted, topo, num_redundant=16, previous=old)
    loose = plumb.solve(drifted, topo, num_redundant=16, previous=old, load_slack=0.02)
    fresh = plumb.solve(drifted, topo, num_redundant=16)
    assert loose.metrics.moves.moves < tight.metrics.moves.moves
    assert np.all(loose.metrics.max_load <= fresh.metrics.max_load * 1.02 * (1 + REL))


def test_hierarchical_layers_keep_groups_on_nodes():
    rng = np.random.default_rng(7)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    loads = rng.lognormal(0, 1, (3, 16))
    old = plumb.solve(loads, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical")
    drifted = loads * rng.uniform(0.5, 1.5, loads.shape)
    fresh = plumb.solve(drifted, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical")
    new = plumb.solve(drifted, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical",
                      previous=old)
    half = new.phy2log.shape[1] // 2
    for layer in range(3):
        node_sets = {frozenset(fresh.phy2log[layer, :half]), frozenset(fresh.phy2log[layer, half:])}
        assert {frozenset(new.phy2log[layer, :half]),
                frozenset(new.phy2log[layer, half:])} == node_sets


def test_traffic_cost_never_grows():
    rng = np.random.default_rng(11)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    loads = rng.lognormal(0, 1, (2, 8))
    traffic = rng.integers(0, 50, (2, 4, 8)).astype(float)
    old = plumb.solve(loads, topo, num_redundant=4)
    fresh = plumb.solve(loads * 1.3, topo, num_redundant=4, traffic=traffic)
    new = plumb.solve(loads * 1.3, topo, num_redundant=4, traffic=traffic, previous=old)
    assert new.metrics.traffic["traffic"] <= fresh.metrics.traffic["traffic"] * (1 + REL)
    assert np.all(new.metrics.max_load <= fresh.metrics.max_load * (1 + REL))


def test_deterministic_and_cost_metrics():
    rng = np.random.default_rng(13)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    loads = rng.lognormal(0, 1, (3, 32))
    old = plumb.solve(loads, topo, num_redundant=8)
    drifted = loads[::-1].copy()
    first, second = (plumb.solve(drifted, topo, num_redundant=8, previous=old,
                                 bytes_per_expert=1000, move_budget=9) for _ in range(2))
    np.testing.assert_array_equal(first.phy2log, second.phy2log)
    moves = first.metrics.moves
    assert moves.cost.moves == moves.moves and moves.cost.bytes == moves.moves * 1000
    assert moves.cost.intra_node_bytes + moves.cost.inter_node_bytes == moves.cost.bytes
    assert moves.cost.max_bytes_sent >= 0 and moves.cost.estimated_seconds >= 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(move_budget=-1), "move_budget"),
    (dict(move_budget=True), "move_budget"),
    (dict(move_budget=[1, 2, 3]), "move_budget"),
    (dict(move_budget=[1.5, 2.0]), "move_budget"),
    (dict(layers=[2]), "layers"),
    (dict(layers="auto:0"), "auto:k"),
    (dict(layers="auto:x"), "auto:k"),
    (dict(layers="best"), "auto:k"),
    (dict(layers=[[0]]), "layers"),
    # str.isdigit() takes a superscript two, int() does not.
    (dict(layers="auto:\u00b2"), "auto:k"),
])
def test_invalid_options(kwargs, message):
    loads = np.ones((2, 8))
    old = plumb.solve(loads, 4)
    with pytest.raises(InputError, match=message):
        plumb.solve(loads, 4, previous=old, **kwargs)


def test_options_need_a_matching_previous():
    loads = np.ones((2, 8))
    with pytest.raises(InputError, match="needs previous"):
        plumb.solve(loads, 4, move_budget=3)
    with pytest.raises(InputError, match="same P"):
        plumb.solve(loads, 4, previous=plumb.solve(loads, 4, num_redundant=4), layers=[0])
    with pytest.raises(InputError, match="dispatch"):
        plumb.solve(loads, 4, previous=plumb.solve(loads, 4), move_budget=3,
                    dispatch="nearest")
    # A previous placement with another P still gets relabelled (no slot matching).
    other = plumb.solve(loads, 4, num_redundant=4)
    assert plumb.solve(loads, 4, previous=other).metrics.moves.moves >= 0


def test_a_budget_past_int64_means_no_limit():
    loads = np.ones((2, 8))
    previous = np.tile(np.arange(12) % 8, (2, 1))
    unlimited = plumb.solve(loads, 4, num_redundant=4, previous=previous,
                            move_budget=2 ** 62).phy2log
    huge = plumb.solve(loads, 4, num_redundant=4, previous=previous, move_budget=10 ** 30)
    np.testing.assert_array_equal(huge.phy2log, unlimited)
    per_layer = plumb.solve(loads, 4, num_redundant=4, previous=previous,
                            move_budget=np.full(2, 2 ** 64 - 1, dtype=np.uint64))
    np.testing.assert_array_equal(per_layer.phy2log, unlimited)


def test_repairs_keep_to_the_replica_caps():
    caps = np.array([1, 3, 3, 3])
    previous = np.array([[0, 1, 0, 2, 0, 3, 1, 2]])  # expert 0 three times: over its cap
    solved = plumb.solve([[3.0, 1, 1, 1]], 4, num_redundant=4, max_replicas_per_expert=caps,
                         previous=previous)
    assert (solved.logcnt <= caps).all()
    # Within the caps the previous placement is repaired rather than replaced.
    rng = np.random.default_rng(3)
    loads = rng.lognormal(0.0, 1.0, size=(6, 16))
    caps = np.full(16, 2)
    old = plumb.solve(loads, 8, num_redundant=16, max_replicas_per_expert=caps)
    drifted = loads * rng.lognormal(0.0, 0.3, size=loads.shape)
    for kwargs in ({}, {"move_budget": 6}, {"move_budget": [1, 2, 3, 0, 5, 8]}):
        new = plumb.solve(drifted, 8, num_redundant=16, max_replicas_per_expert=caps,
                          previous=old, **kwargs)
        assert (new.logcnt <= caps).all(), kwargs
