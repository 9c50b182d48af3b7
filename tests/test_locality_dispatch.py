"""Traffic metrics, dispatch models and the nearest-replica routing table."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plumb.errors import InputError
from plumb.locality import as_traffic, routing_table, source_traffic, traffic_metrics
from plumb.topology import Topology


def _example():
    # 2 nodes x 2 ranks; expert 0 on ranks 0 and 3, expert 1 on rank 1, expert 2 on rank 2.
    topo = Topology.cluster(2, 2)
    phy2log = np.array([[0, 1, 2, 0]])
    loads = np.array([[8.0, 4.0, 4.0]])
    traffic = np.zeros((1, 4, 3))
    traffic[0, [0, 3], 0] = 4.0
    traffic[0, [0, 1], 1] = 2.0
    traffic[0, [2, 3], 2] = 2.0
    return topo, phy2log, loads, traffic


def test_even_dispatch_by_hand():
    topo, phy2log, loads, traffic = _example()
    m = traffic_metrics(phy2log, loads, topo, traffic, "even")
    # Expert 0: each source sends half of its 4 tokens across nodes (cost 8): 2 * 2 * 8 = 32;
    # experts 1 and 2: 2 tokens each from a same-node rank (cost 1).
    assert m["traffic"] == pytest.approx(36.0)
    assert m["cross_node_fraction"] == pytest.approx(4 / 16)
    assert m["cross_numa_fraction"] == 0.0
    assert m["rank_loads"].tolist() == [[4.0, 4.0, 4.0, 4.0]]
    assert m["routing_table"] is None


def test_nearest_dispatch_by_hand():
    topo, phy2log, loads, traffic = _example()
    m = traffic_metrics(phy2log, loads, topo, traffic, "nearest")
    assert m["traffic"] == pytest.approx(4.0)
    assert m["cross_node_fraction"] == 0.0
    assert m["rank_loads"].tolist() == [[4.0, 4.0, 4.0, 4.0]]
    # Sources 1 and 2 never send to expert 0, but the table still names their nearest replica.
    assert m["routing_table"][0, :, 0].tolist() == [0, 0, 3, 3]
    assert m["routing_table"][0, :, 1].tolist() == [1, 1, 1, 1]


def test_nearest_ties_split_evenly_and_table_round_robins():
    topo = Topology.flat(4)
    phy2log = np.array([[0, 0, 1, 2]])  # expert 0 on ranks 0 and 1
    loads = np.array([[8.0, 1.0, 1.0]])
    m = traffic_metrics(phy2log, loads, topo, None, "nearest")
    # Uniform sources: ranks 0 and 1 keep their own quarter, ranks 2 and 3 tie and split.
    assert m["rank_loads"][0, :2].tolist() == [4.0, 4.0]
    assert routing_table(phy2log, topo)[0, :, 0].tolist() == [0, 1, 0, 1]


def test_uniform_sources_even_dispatch_traffic_is_placement_invariant():
    topo = Topology.cluster(2, 4, 2)
    rng = np.random.default_rng(1)
    loads = rng.lognormal(size=(2, 12))
    values = set()
    for _ in range(5):
        phy2log = np.stack([rng.permutation(np.r_[np.arange(12), rng.choice(12, 4)])
                            for _ in range(2)])
        m = traffic_metrics(phy2log, loads, topo)
        values.add(round(m["traffic"], 9))
        assert m["cross_node_fraction"] == pytest.approx(0.5)
    assert len(values) == 1


def _reference_nearest(phy2log, loads, topo, traffic):
    """Straightforward numpy model: rank loads and cost of nearest dispatch."""
    num_layers, num_slots = phy2log.shape
    slots = num_slots // topo.num_ranks
    rank_loads = np.zeros((num_layers, topo.num_ranks))
    cost = 0.0
    for layer in range(num_layers):
        for e in range(loads.shape[1]):
            where = np.flatnonzero(phy2log[layer] == e) // slots
            total = traffic[layer, :, e].sum()
            for s in range(topo.num_ranks):
                share = traffic[layer, s, e] / total if total > 0 else 1 / topo.num_ranks
                c = topo.link_cost[s, where]
                tied = where[c == c.min()]
                for r in tied:
                    rank_loads[layer, r] += loads[layer, e] * share / len(tied)
                cost += traffic[layer, s, e] * c.min()
    return rank_loads, cost


@st.composite
def _cases(draw):
    nodes = draw(st.integers(1, 3))
    gpn = draw(st.sampled_from([1, 2, 4]))
    numa = draw(st.sampled_from([d for d in (1, 2) if gpn % d == 0]))
    topo = Topology.cluster(nodes, gpn, numa)
    g = topo.num_ranks
    slots = draw(st.integers(1, 3))
    num_experts = draw(st.integers(1, g * slots))
    num_layers = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 31))
    rng = np.random.default_rng(seed)
    phy2log = np.stack([rng.permutation(np.r_[np.arange(num_experts),
                                              rng.integers(0, num_experts, g * slots - num_experts)])
                        for _ in range(num_layers)])
    loads = rng.integers(0, 20, (num_layers, num_experts)).astype(float)
    traffic = rng.integers(0, 5, (num_layers, g, num_experts)).astype(float)
    return topo, phy2log, loads, traffic


@settings(max_examples=40, deadline=None)
@given(_cases())
def test_nearest_routing_table_and_loads_are_consistent(case):
    topo, phy2log, loads, traffic = case
    m = traffic_metrics(phy2log, loads, topo, traffic, "nearest")
    table = m["routing_table"]
    slots = phy2log.shape[1] // topo.num_ranks
    for layer in range(phy2log.shape[0]):
        for e in range(loads.shape[1]):
            where = np.flatnonzero(phy2log[layer] == e) // slots
            for s in range(topo.num_ranks):
                slot = table[layer, s, e]
                assert phy2log[layer, slot] == e
                assert topo.link_cost[s, slot // slots] == topo.link_cost[s, where].min()
    rank_loads, cost = _reference_nearest(phy2log, loads, topo, traffic)
    assert np.allclose(m["rank_loads"], rank_loads)
    assert m["traffic"] == pytest.approx(cost)
    # Every routed token is counted once: fractions stay in [0, 1].
    assert 0 <= m["cross_node_fraction"] + m["cross_numa_fraction"] <= 1 + 1e-12
    even = traffic_metrics(phy2log, loads, topo, traffic, "even")
    assert np.allclose(even["rank_loads"].sum(axis=1), loads.sum(axis=1))
    assert np.allclose(m["rank_loads"].sum(axis=1), loads.sum(axis=1))
    assert m["traffic"] <= even["traffic"] + 1e-9


@pytest.mark.parametrize("value, valid", [
    (0.0, True), (-0.0, True), (5e-324, True), (1e308, True), (-5e-324, False), (-1.0, False),
    (np.inf, False), (-np.inf, False), (np.nan, False), (-np.nan, False)])
def test_traffic_values_checked_one_by_one(value, valid):
    counts = np.ones((2, 4, 5))
    counts[1, 3, 2] = value
    if valid:
        assert as_traffic(counts, 2, 4, 5)[1, 3, 2] == value
    else:
        with pytest.raises(InputError, match="finite counts >= 0"):
            as_traffic(counts, 2, 4, 5)


@pytest.mark.parametrize("count, fits", [(1.5e298, True), (1.6e298, False)])
def test_traffic_scale_at_the_limit(count, fits):
    # Layer 1 routes 8 * count picks over links of cost at most 8: the limit is 1e300.
    from plumb.locality import check_traffic_scale

    counts = np.zeros((2, 2, 4))
    counts[1] = count
    cost = np.full((2, 2), 8.0)
    if fits:
        check_traffic_scale(np.ones((2, 4)), counts, cost)
    else:
        with pytest.raises(InputError, match="layer 1 routes 1.28e[+]299 picks"):
            check_traffic_scale(np.ones((2, 4)), counts, cost)


def test_traffic_shapes_and_errors():
    window = np.ones((3, 2, 4, 5))
    assert as_traffic(window, 2, 4, 5).tolist() == np.full((2, 4, 5), 3.0).tolist()
    assert as_traffic(np.ones((4, 5)), 1, 4, 5).shape == (1, 4, 5)
    assert as_traffic(None, 2, 4, 5) is None
    with pytest.raises(InputError, match=r"traffic must be \[L, G, E\] = \[2, 4, 5\]"):
        as_traffic(np.ones((2, 3, 5)), 2, 4, 5)
    with pytest.raises(InputError, match="finite counts >= 0"):
        as_traffic(-np.ones((2, 4, 5)), 2, 4, 5)
    topo, phy2log, loads, traffic = _example()
    for bad, message in ((dict(num_experts=3.0), "num_experts must be an int"),
                         (dict(num_experts=True), "num_experts must be an int")):
        with pytest.raises(InputError, match=message):
            routing_table(phy2log, topo, **bad)
    with pytest.raises(InputError, match="phy2log must hold integer expert ids"):
        routing_table("abc", topo)
    with pytest.raises(InputError, match="dispatch must be one of"):
        traffic_metrics(phy2log, loads, topo, traffic, "random")
    with pytest.raises(InputError, match="must be divisible by G = 3 ranks"):
        traffic_metrics(phy2log, loads, 3)
    with pytest.raises(InputError, match="holds no replica of expert 2"):
        traffic_metrics(np.array([[0, 0, 1, 1]]), loads, topo)
    with pytest.raises(InputError, match=r"expert ids in \[0, 3\)"):
        traffic_metrics(np.array([[0, 1, 2, 3]]), loads, topo)
    with pytest.raises(InputError, match=r"loads must be \[L, E\] \(or \[T, L, E\]\) with L = 1"):
        traffic_metrics(phy2log, np.ones((2, 3)), topo)


def _random_case(seed, redundant, explicit=False):
    rng = np.random.default_rng(seed)
    topo = Topology.cluster(2, 4, 2)
    if explicit:
        # A cost matrix that is not constant on each level: costs are summed pair by pair.
        matrix = rng.random((topo.num_ranks, topo.num_ranks))
        topo = Topology.from_matrix(matrix + matrix.T, node_of_rank=topo.node_of_rank,
                                    numa_of_rank=topo.numa_of_rank)
    num_experts = 16
    extra = topo.num_ranks if redundant else 0
    phy2log = np.stack([rng.permutation(np.concatenate(
        [np.arange(num_experts), rng.integers(0, num_experts, extra)])) for _ in range(3)])
    traffic = rng.integers(0, 50, (3, topo.num_ranks, num_experts)).astype(float)
    return topo, phy2log, traffic.sum(axis=1), traffic


@pytest.mark.parametrize("redundant", [False, True])
@pytest.mark.parametrize("dispatch", ["even", "nearest"])
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("explicit", [False, True])
def test_validated_path_gives_identical_metrics(redundant, dispatch, uniform, explicit):
    from plumb.locality.dispatch import validated_traffic_metrics

    topo, phy2log, loads, traffic = _random_case(7, redundant, explicit)
    counts = None if uniform else as_traffic(traffic, 3, topo.num_ranks, loads.shape[1])
    public = traffic_metrics(phy2log, loads, topo, counts, dispatch)
    # Full tokens here; solve and traffic_metrics keep uniform sources' compact ([L, 1, E]).
    tokens, _ = source_traffic(counts, loads, topo.num_ranks, False)
    fast = validated_traffic_metrics(phy2log.astype(np.int64), loads, topo, tokens, uniform,
                                     dispatch)
    assert public.keys() == fast.keys()
    for key, value in public.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, fast[key]), key
        else:
            assert value == fast[key], key


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("redundant", [False, True])
def test_even_dispatch_matches_a_direct_sum(redundant, explicit):
    # Every replica serves 1/c of every source: cost and levels summed token by token.
    topo, phy2log, loads, traffic = _random_case(8, redundant, explicit)
    m = traffic_metrics(phy2log, loads, topo, traffic, "even")
    slots = phy2log.shape[1] // topo.num_ranks
    for layer in range(phy2log.shape[0]):
        counts = np.bincount(phy2log[layer], minlength=loads.shape[1])
        cost = 0.0
        levels = np.zeros(4)
        for p, e in enumerate(phy2log[layer]):
            share = traffic[layer, :, e] / counts[e]
            cost += share @ topo.link_cost[:, p // slots]
            np.add.at(levels, topo.level[:, p // slots], share)
        assert m["traffic_per_layer"][layer] == pytest.approx(cost)
        assert m["cross_node_fraction_per_layer"][layer] == pytest.approx(
            levels[3] / levels.sum())
        assert m["cross_numa_fraction_per_layer"][layer] == pytest.approx(
            levels[2] / levels.sum())


def test_group_sums_add_up_sources_per_domain_node_and_all():
    from plumb.locality.levels import group_sums, level_layout

    topo = Topology.from_levels([0, 0, 0, 0, 1, 1, 1, 1], [3, 3, 5, 5, 9, 9, 7, 7])
    layout = level_layout(topo)
    tokens = np.random.default_rng(2).random((8, 5))
    node_sum, domain_sum, total = np.empty((2, 5)), np.empty((4, 5)), np.empty(5)
    group_sums(tokens, layout.domain_id, layout.node_of_domain, node_sum, domain_sum, total)
    assert np.allclose(node_sum, [tokens[:4].sum(axis=0), tokens[4:].sum(axis=0)])
    for d in range(4):
        assert np.allclose(domain_sum[d], tokens[layout.domain_id == d].sum(axis=0))
    assert np.allclose(total, tokens.sum(axis=0))
    assert layout.level_cost is not None


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
def test_threaded_traffic_metrics_equal_the_serial_ones(dispatch):
    """Layers scored on several threads give the same numbers and routing table as on one,
    at a size where both dispatch models split their layers (even dispatch counts a third of
    the work per slot)."""
    import plumb
    from plumb.locality.dispatch import EVEN_SCORING_SHARE
    from plumb.solver.threads import PARALLEL_MIN_WORK, thread_limit

    topo = Topology.cluster(nodes=2, gpus_per_node=4, numa_per_node=2)
    num_layers, num_experts = 128, 64
    rng = np.random.default_rng(7)
    traffic = rng.poisson(rng.lognormal(1.0, 1.0, (num_layers, 8, num_experts)))
    loads = traffic.sum(axis=1)
    placement = plumb.solve(loads, topo, num_redundant=32).phy2log
    assert placement.size // EVEN_SCORING_SHARE >= PARALLEL_MIN_WORK
    with thread_limit(1):
        serial = traffic_metrics(placement, loads, topo, traffic, dispatch)
    with thread_limit(3):
        split = traffic_metrics(placement, loads, topo, traffic, dispatch)
    for key, value in serial.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(split[key], value)
        else:
            assert split[key] == value
