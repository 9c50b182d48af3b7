"""The locality pass through the public ``plumb.solve`` / ``plumb.evaluate`` API."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.errors import InputError
from plumb.locality import traffic_metrics


def _skewed(nodes=2, gpn=4, numa=2, num_experts=32, num_layers=2, seed=0):
    """(topo, loads [L, E], traffic [L, G, E]): each node's sources prefer their own quarter
    of the experts 4x (sampled routed picks, so loads are the traffic summed over sources)."""
    rng = np.random.default_rng(seed)
    topo = plumb.Topology.cluster(nodes, gpn, numa)
    popularity = rng.lognormal(0.0, 1.0, (num_layers, num_experts))
    preferred_by = rng.permutation(np.arange(num_experts) % nodes)
    traffic = np.empty((num_layers, topo.num_ranks, num_experts))
    for s in range(topo.num_ranks):
        weights = popularity * np.where(preferred_by == topo.node_of_rank[s], 4.0, 1.0)
        traffic[:, s] = rng.multinomial(2048, weights / weights.sum(axis=1, keepdims=True))
    return topo, traffic.sum(axis=1), traffic


def _per_node_experts(phy2log, topo):
    """Sorted expert ids held by each node, per layer (what group-limited routing relies on)."""
    slots = phy2log.shape[1] // topo.num_ranks
    node_of_slot = topo.node_of_rank[np.arange(phy2log.shape[1]) // slots]
    return [[sorted(row[node_of_slot == n]) for n in range(topo.num_nodes)] for row in phy2log]


@st.composite
def _random_problems(draw):
    """Any layout (nodes of unequal size, mixed speeds), loads, traffic and solve options."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    sizes = draw(st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=3))
    node = np.repeat(np.arange(len(sizes)), sizes)
    numa = np.concatenate([2 * n + (np.arange(size) >= size // 2) * (size > 1)
                           for n, size in enumerate(sizes)])
    speed = rng.choice([1.0, 1.5], node.size) if draw(st.booleans()) else None
    topo = plumb.Topology.from_levels(node, numa, rank_speed=speed)
    g = topo.num_ranks
    slots = draw(st.integers(1, 4))
    num_experts = draw(st.integers(max(1, g * slots // 2), g * slots))
    num_layers = draw(st.integers(1, 2))
    traffic = rng.integers(0, 8, (num_layers, g, num_experts)).astype(float)
    traffic *= rng.lognormal(0.0, 1.0, num_experts)
    loads = traffic.sum(axis=1) if draw(st.booleans()) else None
    return topo, traffic, loads, g * slots - num_experts, dict(
        dispatch=draw(st.sampled_from(["even", "nearest"])),
        load_slack=draw(st.sampled_from([0.0, 0.01, 0.05])))


@settings(max_examples=40, deadline=None)
@given(_random_problems())
def test_solve_with_traffic_properties(problem):
    topo, traffic, loads, redundant, options = problem
    if loads is None:  # loads need not be the traffic summed over sources
        loads = np.round(np.random.default_rng(0).lognormal(0.0, 1.0, traffic[:, 0].shape) * 50)
    balanced = plumb.solve(loads, topo, num_redundant=redundant)
    before = plumb.evaluate(balanced.phy2log, loads, topo, traffic=traffic,
                            dispatch=options["dispatch"])
    local = plumb.solve(loads, topo, num_redundant=redundant, traffic=traffic, **options)
    assert np.all(local.metrics.max_load
                  <= (1 + options["load_slack"]) * before.max_load * (1 + 1e-9) + 1e-12)
    assert np.all(local.metrics.traffic["traffic_per_layer"]
                  <= before.traffic["traffic_per_layer"] * (1 + 1e-9) + 1e-9)
    assert np.array_equal(local.logcnt, balanced.logcnt)
    again = plumb.solve(loads, topo, num_redundant=redundant, traffic=traffic, **options)
    assert np.array_equal(again.phy2log, local.phy2log)


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
@pytest.mark.parametrize("redundant", [0, 8])
def test_slack_zero_keeps_balance_and_cuts_traffic(dispatch, redundant):
    topo, loads, traffic = _skewed()
    balanced = plumb.solve(loads, topo, num_redundant=redundant)
    before = plumb.evaluate(balanced.phy2log, loads, topo, traffic=traffic, dispatch=dispatch)
    local = plumb.solve(loads, topo, num_redundant=redundant, traffic=traffic,
                        dispatch=dispatch)
    after = local.metrics
    # Balance under the same dispatch model is not worse in any layer.
    assert np.all(after.max_load <= before.max_load * (1 + 1e-12))
    assert after.traffic["dispatch"] == dispatch and after.traffic["sources"] == "per-source"
    assert np.all(after.traffic["traffic_per_layer"]
                  <= before.traffic["traffic_per_layer"] * (1 + 1e-12))
    assert after.traffic["cross_node_fraction"] < before.traffic["cross_node_fraction"]
    # The pass moves replicas; it never changes how many each expert has.
    assert np.array_equal(local.logcnt, balanced.logcnt)
    # Placement invariants: every rank's slots sorted, log2phy consistent with phy2log.
    slots = local.slots_per_rank
    assert np.all(np.diff(local.phy2log.reshape(-1, topo.num_ranks, slots), axis=2) >= 0)
    for layer in range(local.num_layers):
        for e in range(local.num_experts):
            held = local.log2phy[layer, e][local.log2phy[layer, e] >= 0]
            assert np.array_equal(held, np.flatnonzero(local.phy2log[layer] == e))


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
def test_metrics_follow_the_dispatch_model(dispatch):
    topo, loads, traffic = _skewed(seed=1)
    local = plumb.solve(loads, topo, num_redundant=8, traffic=traffic, dispatch=dispatch)
    direct = traffic_metrics(local.phy2log, loads, topo, traffic, dispatch)
    assert np.allclose(local.rank_loads, direct["rank_loads"])
    assert local.metrics.traffic["traffic"] == pytest.approx(direct["traffic"])
    ideal = loads.sum(axis=1) / topo.num_ranks
    assert local.metrics.balancedness == pytest.approx(
        ideal.sum() / direct["rank_loads"].max(axis=1).sum())
    again = plumb.evaluate(local.phy2log, loads, topo, traffic=traffic, dispatch=dispatch)
    assert np.allclose(again.rank_loads, local.rank_loads)
    if dispatch == "nearest":
        table = local.metrics.traffic["routing_table"]
        assert table.shape == (local.num_layers, topo.num_ranks, local.num_experts)
        assert np.array_equal(np.take_along_axis(local.phy2log[:, None, :], table, axis=2),
                              np.broadcast_to(np.arange(local.num_experts), table.shape))
    else:
        assert local.metrics.traffic["routing_table"] is None


def test_slack_bounds_the_max_load():
    topo, loads, traffic = _skewed(seed=2)
    balanced = plumb.solve(loads, topo, num_redundant=8)
    before = traffic_metrics(balanced.phy2log, loads, topo, traffic)["traffic"]
    for slack in (0.0, 0.01, 0.05):
        local = plumb.solve(loads, topo, num_redundant=8, traffic=traffic, load_slack=slack)
        assert np.all(local.metrics.max_load
                      <= (1 + slack) * balanced.metrics.max_load * (1 + 1e-12))
        assert local.metrics.traffic["traffic"] < before


def test_hierarchical_layers_keep_each_nodes_experts():
    topo, loads, traffic = _skewed(num_experts=32, seed=3)
    common = dict(num_redundant=8, num_groups=4, hierarchy="hierarchical")
    balanced = plumb.solve(loads, topo, **common)
    local = plumb.solve(loads, topo, traffic=traffic, **common)
    assert set(local.metrics.layer_hierarchy) == {"hierarchical"}
    assert _per_node_experts(local.phy2log, topo) == _per_node_experts(balanced.phy2log, topo)
    before = traffic_metrics(balanced.phy2log, loads, topo, traffic)
    after = local.metrics.traffic
    assert after["cross_node_fraction"] == pytest.approx(before["cross_node_fraction"])
    assert after["traffic"] <= before["traffic"] * (1 + 1e-12)
    assert np.all(local.metrics.max_load <= balanced.metrics.max_load * (1 + 1e-12))


def test_deterministic():
    topo, loads, traffic = _skewed(seed=4)
    runs = [plumb.solve(loads, topo, num_redundant=8, traffic=traffic, dispatch="nearest",
                        load_slack=0.01) for _ in range(2)]
    assert np.array_equal(runs[0].phy2log, runs[1].phy2log)


def test_uniform_sources():
    topo, loads, _ = _skewed(seed=5)
    balanced = plumb.solve(loads, topo, num_redundant=8)
    # Even dispatch, uniform sources: nothing placement-dependent, so no pass, no metrics.
    same = plumb.solve(loads, topo, num_redundant=8, load_slack=0.05)
    assert np.array_equal(same.phy2log, balanced.phy2log) and same.metrics.traffic is None
    uniform = traffic_metrics(balanced.phy2log, loads, topo)
    assert uniform["sources"] == "uniform" and uniform["placement_invariant"]
    # Nearest dispatch: a rank keeps its own tokens, so the pass runs and the metrics say so.
    near = plumb.solve(loads, topo, num_redundant=8, dispatch="nearest")
    before = plumb.evaluate(balanced.phy2log, loads, topo, dispatch="nearest")
    assert near.metrics.traffic["sources"] == "uniform"
    assert not near.metrics.traffic["placement_invariant"]
    assert near.metrics.traffic["traffic"] <= before.traffic["traffic"] * (1 + 1e-12)
    assert np.all(near.metrics.max_load <= before.max_load * (1 + 1e-12))
    # One replica per expert: nearest routes like even, so placement is moot again.
    single = plumb.solve(loads, topo, dispatch="nearest")
    assert single.metrics.traffic["placement_invariant"]
    assert np.array_equal(single.phy2log, plumb.solve(loads, topo).phy2log)


def test_uniform_counts_on_a_matrix_with_a_central_rank():
    # Rank 0 is one hop from everyone, the others two hops apart: where experts sit matters
    # even with uniform sources; given as explicit counts, the pass optimises it.
    cost = np.full((4, 4), 2.0)
    cost[0, :] = cost[:, 0] = 1.0
    np.fill_diagonal(cost, 0.0)
    topo = plumb.Topology.from_matrix(cost)
    # Any balanced placement pairs the hot expert with a 10 (max 40); it belongs on rank 0.
    loads = np.array([[10.0, 10.0, 10.0, 30.0, 10.0, 10.0, 10.0, 10.0]])
    uniform = np.repeat(loads[:, None, :] / 4, 4, axis=1)
    balanced = plumb.solve(loads, topo)
    assert balanced.metrics.traffic is None
    assert not traffic_metrics(balanced.phy2log, loads, topo)["placement_invariant"]
    before = plumb.evaluate(balanced.phy2log, loads, topo, traffic=uniform)
    local = plumb.solve(loads, topo, traffic=uniform)
    assert 3 in local.phy2log[0, :2]
    assert local.metrics.traffic["traffic"] <= before.traffic["traffic"]
    assert local.metrics.max_load[0] == pytest.approx(40.0) == before.max_load[0]


def test_deepseek_policy_stays_exact():
    topo, loads, traffic = _skewed(seed=6)
    exact = plumb.solve(loads, topo, num_redundant=8, policy="deepseek")
    with_traffic = plumb.solve(loads, topo, num_redundant=8, policy="deepseek",
                               traffic=traffic, dispatch="nearest")
    assert np.array_equal(exact.phy2log, with_traffic.phy2log)
    assert with_traffic.metrics.traffic["dispatch"] == "nearest"


@pytest.mark.parametrize("kwargs, message", [
    (dict(load_slack=-0.01), "load_slack must be a finite number >= 0"),
    (dict(load_slack=float("nan")), "load_slack must be a finite number >= 0"),
    (dict(load_slack="1%"), "load_slack must be a number >= 0"),
    (dict(load_slack=True), "load_slack must be a finite number >= 0"),
    (dict(dispatch="closest"), r"dispatch must be one of \['even', 'nearest'\]"),
    (dict(dispatch=None), "dispatch must be one of"),
    (dict(traffic=np.ones((2, 4, 32))), r"traffic must be \[L, G, E\] = \[2, 8, 32\]"),
    (dict(traffic=-np.ones((2, 8, 32))), "traffic must hold finite counts >= 0"),
])
def test_invalid_arguments(kwargs, message):
    topo, loads, _ = _skewed()
    with pytest.raises(InputError, match=message):
        plumb.solve(loads, topo, num_redundant=8, **kwargs)


def test_evaluate_rejects_unknown_dispatch():
    topo, loads, traffic = _skewed()
    placement = plumb.solve(loads, topo)
    with pytest.raises(InputError, match="dispatch must be one of"):
        plumb.evaluate(placement.phy2log, loads, topo, traffic=traffic, dispatch="random")


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
@pytest.mark.parametrize("redundant", [0, 8])
def test_solve_scores_traffic_exactly_as_traffic_metrics(dispatch, redundant):
    # solve skips re-validating its inputs; the numbers must be the public ones, bit for bit.
    topo, loads, traffic = _skewed(seed=6)
    local = plumb.solve(loads, topo, num_redundant=redundant, traffic=traffic,
                        dispatch=dispatch)
    direct = traffic_metrics(local.phy2log, loads, topo, traffic, dispatch)
    for key, value in direct.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, local.metrics.traffic[key]), key
        else:
            assert value == local.metrics.traffic[key], key
