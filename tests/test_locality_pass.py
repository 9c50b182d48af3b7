"""The locality pass: balance within slack, invariants kept, traffic never up, deterministic."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.errors import InputError
from plumb.locality import improve_locality, traffic_metrics
from plumb.topology import Topology


def _per_rank_counts(phy2log, num_ranks, num_experts):
    """int [L, G, E] replicas of each expert on each rank."""
    num_layers, num_slots = phy2log.shape
    ranks = np.arange(num_slots) // (num_slots // num_ranks)
    out = np.zeros((num_layers, num_ranks, num_experts), dtype=np.int64)
    for layer in range(num_layers):
        np.add.at(out[layer], (ranks, phy2log[layer]), 1)
    return out


def _max_time(rank_loads, speed):
    return (rank_loads / speed).max(axis=1)


@st.composite
def _cases(draw):
    nodes = draw(st.integers(1, 3))
    gpn = draw(st.sampled_from([2, 4]))
    numa = draw(st.sampled_from([1, 2]))
    seed = draw(st.integers(0, 2 ** 31))
    rng = np.random.default_rng(seed)
    speed = rng.choice([1.0, 1.5], nodes * gpn) if draw(st.booleans()) else None
    topo = Topology.cluster(nodes, gpn, numa, rank_speed=speed)
    if draw(st.booleans()):
        # Costs not constant on each level: the pass multiplies tokens by the matrix instead
        # of summing them per level.
        matrix = rng.random((topo.num_ranks, topo.num_ranks))
        topo = Topology.from_matrix(matrix + matrix.T, node_of_rank=topo.node_of_rank,
                                    numa_of_rank=topo.numa_of_rank, rank_speed=speed)
    g = topo.num_ranks
    slots = draw(st.integers(1, 4))
    redundant = draw(st.integers(0, g * slots - 1))
    num_experts = g * slots - redundant
    num_layers = draw(st.integers(1, 2))
    phy2log = np.stack([rng.permutation(np.r_[np.arange(num_experts),
                                              rng.integers(0, num_experts, redundant)])
                        for _ in range(num_layers)])
    loads = rng.lognormal(0, 1, (num_layers, num_experts)) * rng.integers(0, 2, num_experts)
    traffic = None
    if draw(st.booleans()):
        traffic = rng.integers(0, 6, (num_layers, g, num_experts)).astype(float)
    return dict(topo=topo, phy2log=phy2log, loads=loads, traffic=traffic,
                dispatch=draw(st.sampled_from(["even", "nearest"])),
                load_slack=draw(st.sampled_from([0.0, 0.01, 0.05])),
                keep_node=draw(st.booleans()))


@settings(max_examples=50, deadline=None)
@given(_cases())
def test_pass_properties(case):
    topo, phy2log, loads = case["topo"], case["phy2log"], case["loads"]
    kwargs = dict(traffic=case["traffic"], dispatch=case["dispatch"])
    out, info = improve_locality(phy2log, loads, topo, load_slack=case["load_slack"],
                                 keep_node=case["keep_node"], **kwargs)
    g, e = topo.num_ranks, loads.shape[1]
    slots = phy2log.shape[1] // g
    # Placement invariants: same replicas per expert, each rank's slots sorted by expert id.
    assert out.shape == phy2log.shape and out.dtype == np.int64
    for layer in range(out.shape[0]):
        assert np.array_equal(np.bincount(out[layer], minlength=e),
                              np.bincount(phy2log[layer], minlength=e))
        assert np.all(np.diff(out[layer].reshape(g, slots), axis=1) >= 0)
    before_counts = _per_rank_counts(phy2log, g, e)
    after_counts = _per_rank_counts(out, g, e)
    # Replicas sharing a rank with their expert's other replicas never increase.
    assert np.maximum(after_counts - 1, 0).sum() <= np.maximum(before_counts - 1, 0).sum()
    if case["keep_node"]:
        for node in range(topo.num_nodes):
            ranks = topo.node_of_rank == node
            assert np.array_equal(after_counts[:, ranks].sum(1), before_counts[:, ranks].sum(1))
    # Balance under the same dispatch model never worse than the slack allows.
    before = traffic_metrics(phy2log, loads, topo, **kwargs)
    after = traffic_metrics(out, loads, topo, **kwargs)
    cap = (1 + case["load_slack"]) * _max_time(before["rank_loads"], topo.rank_speed)
    assert np.all(_max_time(after["rank_loads"], topo.rank_speed) <= cap * (1 + 1e-9) + 1e-12)
    # Traffic never increases, per layer, and the pass reports it correctly.
    assert np.all(after["traffic_per_layer"] <= before["traffic_per_layer"] * (1 + 1e-9) + 1e-9)
    assert np.allclose(info["traffic_before"], before["traffic_per_layer"])
    assert np.allclose(info["traffic_after"], after["traffic_per_layer"])
    # Deterministic.
    again, _ = improve_locality(phy2log, loads, topo, load_slack=case["load_slack"],
                                keep_node=case["keep_node"], **kwargs)
    assert np.array_equal(again, out)


def _skewed(nodes, gpn, numa, num_experts, redundant, seed=0, by="node"):
    """Loads [1, E], per-source traffic [1, G, E] where each node (or NUMA domain, ``by``)
    prefers its own experts, and a random placement (hot experts replicated) to improve."""
    rng = np.random.default_rng(seed)
    topo = Topology.cluster(nodes, gpn, numa)
    g = topo.num_ranks
    loads = np.round(rng.lognormal(0, 0.5, (1, num_experts)) * 100)
    group_of_rank = topo.node_of_rank if by == "node" else topo.numa_of_rank
    preferred = np.arange(num_experts) % (group_of_rank.max() + 1)
    traffic = np.empty((1, g, num_experts))
    for s in range(g):
        traffic[0, s] = loads[0] / g * np.where(preferred == group_of_rank[s], 3.0, 1.0)
    traffic *= loads / traffic.sum(axis=1)
    slots = (num_experts + redundant) // g
    hot = np.argsort(-loads[0], kind="stable")[:redundant]
    phy2log = rng.permutation(np.r_[np.arange(num_experts), hot])[None]
    return topo, loads, traffic, phy2log, slots


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
@pytest.mark.parametrize("redundant", [0, 16])
def test_skewed_sources_cut_cross_node_traffic(dispatch, redundant):
    topo, loads, traffic, phy2log, _ = _skewed(2, 8, 2, 64, redundant)
    before = traffic_metrics(phy2log, loads, topo, traffic, dispatch)
    out, info = improve_locality(phy2log, loads, topo, traffic, dispatch, load_slack=0.0)
    after = traffic_metrics(out, loads, topo, traffic, dispatch)
    # The pass moved replicas: by re-packing the layer or by swaps.
    assert info["repacked"][0] or info["swaps"][0] > 0
    assert after["cross_node_fraction"] < 0.75 * before["cross_node_fraction"]
    assert after["rank_loads"].max() <= before["rank_loads"].max() * (1 + 1e-12)


def test_more_slack_never_hurts_much_and_hierarchy_keeps_nodes():
    topo, loads, traffic, phy2log, _ = _skewed(2, 4, 2, 32, 8, seed=3)
    costs = [traffic_metrics(improve_locality(phy2log, loads, topo, traffic,
                                              load_slack=slack)[0], loads, topo, traffic)["traffic"]
             for slack in (0.0, 0.05, 0.5)]
    assert costs[2] <= costs[0]
    topo, loads, traffic, phy2log, _ = _skewed(2, 4, 2, 32, 8, seed=3, by="numa")
    kept, _ = improve_locality(phy2log, loads, topo, traffic, keep_node=True)
    after = traffic_metrics(kept, loads, topo, traffic)
    before = traffic_metrics(phy2log, loads, topo, traffic)
    # Within-node swaps cannot change cross-node traffic; they cut cross-NUMA traffic.
    assert after["cross_node_fraction"] == pytest.approx(before["cross_node_fraction"])
    assert after["cross_numa_fraction"] < before["cross_numa_fraction"]


def test_uniform_sources_even_dispatch_leaves_placement_alone():
    topo = Topology.cluster(2, 4, 2)
    rng = np.random.default_rng(5)
    loads = rng.lognormal(size=(2, 24))
    phy2log = np.stack([np.sort(rng.permutation(np.r_[np.arange(24), np.arange(8)]).reshape(8, 4),
                                axis=1).ravel() for _ in range(2)])
    out, info = improve_locality(phy2log, loads, topo)
    assert np.array_equal(out, phy2log) and info["swaps"].sum() == 0


def test_argument_errors():
    topo, loads, traffic, phy2log, _ = _skewed(2, 2, 1, 8, 0)
    with pytest.raises(InputError, match="load_slack must be a finite number >= 0"):
        improve_locality(phy2log, loads, topo, traffic, load_slack=-0.1)
    with pytest.raises(InputError, match="max_sweeps"):
        improve_locality(phy2log, loads, topo, traffic, max_sweeps=0)
    with pytest.raises(InputError, match=r"keep_node must be one bool or \[L\] = \[1\]"):
        improve_locality(phy2log, loads, topo, traffic, keep_node=[True, False])
    with pytest.raises(InputError, match="dispatch"):
        improve_locality(phy2log, loads, topo, traffic, dispatch="closest")


def test_canonical_slots_sorts_each_rank():
    from plumb.solver.placement import canonical_slots

    rng = np.random.default_rng(3)
    row = rng.integers(0, 50, 24).astype(np.int64)
    expected = np.sort(row.reshape(4, 6), axis=1).ravel()
    canonical_slots(row.reshape(4, 6).copy(), row)
    assert np.array_equal(row, expected)


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
def test_pass_in_solve_matches_improve_locality(dispatch):
    # The solve post-pass skips validation and, without replicated experts, source shares.
    import plumb
    from plumb.locality.traffic import as_traffic

    rng = np.random.default_rng(4)
    topo = Topology.cluster(2, 4, 2)
    traffic = rng.integers(0, 100, (2, topo.num_ranks, 16)).astype(float)
    traffic[:, :4, :8] *= 4
    loads = traffic.sum(axis=1)
    for redundant in (0, 8):
        balanced = plumb.solve(loads, topo, num_redundant=redundant)
        local = plumb.solve(loads, topo, num_redundant=redundant, traffic=traffic,
                            dispatch=dispatch)
        out, _ = improve_locality(balanced.phy2log, loads, topo,
                                  as_traffic(traffic, 2, topo.num_ranks, 16), dispatch)
        assert np.array_equal(out, local.phy2log)


def test_node_means_and_stacked_count_match_numpy():
    from plumb.locality.refine import _stacked
    from plumb.locality.repack import node_means

    rng = np.random.default_rng(5)
    token_cost = rng.random((12, 8))
    node_ranks = np.array([[0, 1, 4, 5], [2, 3, 6, 7]], dtype=np.int64)
    expected = np.stack([token_cost[:, ranks].mean(axis=1) for ranks in node_ranks], axis=1)
    out = np.empty((12, 2))
    node_means(token_cost, node_ranks, out)
    assert np.allclose(out, expected)
    row = rng.integers(0, 6, 24).astype(np.int64)
    per_rank = row.reshape(8, 3)
    assert _stacked(row, 3, 6) == sum(3 - len(set(r)) for r in per_rank.tolist())



def test_expert_rows_match_numpy():
    from plumb.locality.refine import _expert_rows, _node_shares

    rng = np.random.default_rng(11)
    layer_tokens = rng.integers(0, 50, (8, 6)).astype(np.float64)
    layer_tokens[:, 4] = 0.0  # an expert nobody sent tokens to
    cnt = np.array([1, 2, 1, 3, 2, 1], dtype=np.int64)
    node_ranks = np.array([[0, 1, 4, 5], [2, 3, 6, 7]], dtype=np.int64)
    tok = np.full((6, 8), -1.0)
    shr = np.full((6, 8), -1.0)
    totals = np.empty(6)
    node_share = np.empty((6, 2))
    _expert_rows(layer_tokens, cnt, tok, shr, totals)
    _node_shares(layer_tokens, totals, node_ranks, node_share)
    column_sums = layer_tokens.sum(axis=0)
    assert np.array_equal(totals, column_sums)
    replicated = cnt > 1
    assert np.array_equal(tok[replicated], layer_tokens.T[replicated])
    expected = np.where(column_sums > 0, layer_tokens / np.where(column_sums > 0, column_sums, 1),
                        1.0 / 8).T
    assert np.allclose(shr[replicated], expected[replicated])
    # Lone replicas' rows are never read, so they are not written.
    assert np.all(tok[~replicated] == -1.0) and np.all(shr[~replicated] == -1.0)
    per_node = np.stack([layer_tokens[ranks].sum(axis=0) for ranks in node_ranks], axis=1)
    assert np.allclose(node_share[column_sums > 0],
                       (per_node / np.where(column_sums > 0, column_sums, 1)[:, None])[column_sums > 0])
    assert np.allclose(node_share[4], [0.5, 0.5])
    assert np.allclose(node_share.sum(axis=1), 1.0)


def _layer_levels(topo, tokens):
    """The ``levels`` tuple of one layer's tokens (float64 [G, E] or [1, E]), sums filled."""
    from plumb.locality.levels import group_sums, level_layout

    layout = level_layout(topo)
    num_experts = tokens.shape[1]
    sums = (np.empty((layout.node_of_domain.max() + 1, num_experts)),
            np.empty((layout.domain_size.shape[0], num_experts)), np.empty(num_experts))
    group_sums(tokens, layout.domain_id, layout.node_of_domain, *sums)
    return (tokens, layout.node_id, layout.domain_id, layout.level_cost) + sums


@pytest.mark.parametrize("sources", [8, 1])
def test_level_token_cost_matches_the_cost_matrix_product(sources):
    from plumb.locality.levels import level_token_cost

    topo = Topology.cluster(2, 4, 2)
    tokens = np.random.default_rng(4).random((sources, 6))
    out = np.empty((6, 8))
    level_token_cost(_layer_levels(topo, tokens), np.empty((8, 6)), out)
    assert np.allclose(out, np.broadcast_to(tokens, (8, 6)).T @ topo.link_cost)


def test_layer_cost_from_level_sums_is_the_tables_to_the_bit():
    # The pass scores zero-slack re-packings from the per-level sums without the [E, G]
    # table; both must give the same floats, or taking a packing could depend on which.
    from plumb.locality.levels import level_token_cost
    from plumb.locality.refine import _spread_state

    # Costs and tokens that round: with whole numbers every order of the sums is exact.
    topo = Topology.cluster(4, 4, 2, level_costs={
        "same_rank": 0.3, "same_numa": 1.7, "cross_numa": 2.9, "cross_node": 8.3})
    rng = np.random.default_rng(11)
    num_experts, slots = 40, 3
    row = np.concatenate([np.arange(num_experts), rng.integers(0, num_experts, 8)])
    row = rng.permutation(row).astype(np.int64)
    cnt = np.bincount(row, minlength=num_experts).astype(np.int64)
    weights = rng.lognormal(0, 1, num_experts)
    for sources in (topo.num_ranks, 1):
        levels = _layer_levels(topo, rng.random((sources, num_experts)) * 500)
        table = np.empty((num_experts, topo.num_ranks))
        level_token_cost(levels, np.empty((topo.num_ranks, num_experts)), table)
        load_table, load_sums = np.empty(topo.num_ranks), np.empty(topo.num_ranks)
        cost_table, cost_sums = np.empty(num_experts), np.empty(num_experts)
        from_table = _spread_state(row, slots, weights, cnt, table, levels, load_table,
                                   cost_table)
        from_sums = _spread_state(row, slots, weights, cnt, np.empty((0, 0)), levels, load_sums,
                                  cost_sums)
        # Per expert: the layer's total can round two different sets of costs alike.
        assert np.array_equal(cost_table, cost_sums)
        assert from_table == from_sums
        assert np.array_equal(load_table, load_sums)


_COSTS = {"same_rank": 0.5, "same_numa": 1.5, "cross_numa": 4.0, "cross_node": 11.0}


@pytest.mark.parametrize("topo", [
    Topology.cluster(2, 4, 2, level_costs=_COSTS), Topology.cluster(4, 8, 2, level_costs=_COSTS),
    Topology.cluster(3, 2, 1, level_costs=_COSTS), Topology.cluster(1, 8, 2, level_costs=_COSTS),
    Topology.cluster(1, 8, 4, level_costs=_COSTS),
    # Nodes of equal size split into NUMA domains of 1 + 3 and 2 + 2 ranks, labels in no
    # particular order.
    Topology.from_levels([5, 5, 5, 5, 2, 2, 2, 2], [7, 3, 7, 7, 1, 0, 1, 0],
                         level_costs=_COSTS),
], ids=["2x4x2", "4x8x2", "3x2x1", "1x8x2", "1x8x4", "uneven-domains"])
def test_group_means_from_level_sums_match_the_means_over_the_table(topo):
    # pref for the re-packing straight from the per-level sums: the same means (up to
    # rounding) as node_means over the full [E, G] cost table, for groups that are nodes or,
    # on one node, NUMA domains; custom level costs included.
    from plumb.locality.levels import level_group_means, level_layout
    from plumb.locality.refine import _group_ranks
    from plumb.locality.repack import node_means

    groups, group_of_domain = _group_ranks(topo)
    assert groups.shape[0] > 1
    layout_levels = _layer_levels(topo, np.random.default_rng(topo.num_ranks).random(
        (topo.num_ranks, 7)) * 100)
    layout = level_layout(topo)
    expected = np.empty((7, groups.shape[0]))
    node_means(layout_levels[0].T @ topo.link_cost, groups, expected)
    out = np.empty_like(expected)
    level_group_means(layout_levels, group_of_domain, layout.domain_size,
                      layout.node_of_domain, groups.shape[1], np.empty((3,) + out.T.shape), out)
    assert np.allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("cap", [np.inf, 0.0])
def test_repacking_leaves_each_rank_by_replica_load(cap):
    # With the swap search (cap 0: every rank is above it) or without (cap inf: the LPT
    # fits at once), each rank's slots come out by ascending replica load, ties by expert:
    # the order the swaps that may follow visit them in.
    from plumb.locality.repack import node_means, repack_layer

    rng = np.random.default_rng(3)
    topo = Topology.cluster(2, 4)
    num_experts, slots = 20, 3
    row = rng.permutation(np.r_[np.arange(num_experts), rng.integers(0, num_experts, 4)])
    weights = rng.lognormal(0, 1, num_experts)
    weights[5] = weights[6]
    cnt = np.bincount(row, minlength=num_experts).astype(np.int64)
    node_ranks = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.int64)
    pref = np.empty((num_experts, 2))
    node_means(rng.random((num_experts, 8)), node_ranks, pref)
    out = np.empty_like(row)
    repack_layer(row.astype(np.int64), slots, weights, cnt, pref, pref, np.ones(8), node_ranks,
                 False, True, 0.99, cap, out)
    assert np.array_equal(np.sort(out), np.sort(row))
    for rank in out.reshape(8, slots):
        keys = [(weights[e] / cnt[e], e) for e in rank]
        assert keys == sorted(keys)


@pytest.mark.parametrize("within_node_gain", [True, False])
def test_node_bound_swaps_gain_only_within_the_node(within_node_gain):
    # 2 nodes x 2 ranks, one slot each, equal loads (any swap keeps the balance). Moving any
    # expert to the other node would pay most, but with keep_node only the swap within node
    # 0 may happen, and only when it gains there.
    from plumb.locality.swaps import fixed_load_swaps

    token_cost = np.full((4, 4), 10.0)
    token_cost[:, 2:] = 0.0  # the other node: forbidden under keep_node
    if within_node_gain:
        token_cost[0, 1] = token_cost[1, 0] = 5.0
    slot_e = np.arange(4, dtype=np.int64)
    load = np.ones(4)
    swaps, change = fixed_load_swaps(slot_e, 1, np.ones(4, dtype=np.int64), np.ones(4),
                                     np.ones(4, dtype=np.bool_), load, np.ones(4), token_cost,
                                     np.array([0, 0, 1, 1]), True, 1e-6, 2)
    if within_node_gain:
        assert (swaps, change) == (1, -10.0) and slot_e.tolist() == [1, 0, 2, 3]
    else:
        assert (swaps, change) == (0, 0.0) and slot_e.tolist() == [0, 1, 2, 3]
    assert load.tolist() == [1.0] * 4


@pytest.mark.parametrize("dispatch", ["even", "nearest"])
def test_compact_uniform_tokens_give_the_same_pass(dispatch):
    # solve hands the pass uniform sources' tokens as one row per layer ([L, 1, E]); the
    # kernels must read it as every source's row, exactly as the repeated [L, G, E].
    from plumb.locality.refine import refine_validated
    from plumb.locality.traffic import source_traffic

    rng = np.random.default_rng(8)
    topo = Topology.cluster(2, 4, 2)
    loads = rng.lognormal(0, 1, (3, 16))
    balanced = plumb.solve(loads, topo, num_redundant=8)
    keep = np.zeros(3, dtype=np.bool_)
    runs = []
    for compact in (False, True):
        tokens, _ = source_traffic(None, loads, topo.num_ranks, False, compact=compact)
        assert tokens.shape[1] == (1 if compact else topo.num_ranks)
        runs.append(refine_validated(balanced.phy2log, loads, topo, tokens,
                                     dispatch == "nearest", 0.0, keep, 2))
    (full, full_info), (compact, compact_info) = runs
    assert np.array_equal(full, compact)
    for key in full_info:
        assert np.array_equal(full_info[key], compact_info[key]), key
    if dispatch == "nearest":
        assert full_info["repacked"].any()
