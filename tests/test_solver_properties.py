"""Property tests of plumb.solve: placement invariants over random shapes and loads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb


@st.composite
def problems(draw):
    """(loads [L, E], topo, num_redundant, num_groups) with valid shapes, often skewed loads."""
    nodes = draw(st.integers(1, 3))
    per_node = draw(st.integers(1, 4))
    num_ranks = nodes * per_node
    num_groups = draw(st.sampled_from([1, nodes, 2 * nodes]))
    experts = num_groups * draw(st.integers(1, 6))
    slots_per_rank = draw(st.integers(max(1, -(-experts // num_ranks)), -(-experts // num_ranks) + 3))
    num_redundant = num_ranks * slots_per_rank - experts
    layers = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["lognormal", "integers", "zeros", "hot"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "lognormal":
        loads = rng.lognormal(0.0, draw(st.sampled_from([0.5, 1.0, 2.0])), (layers, experts))
    elif kind == "integers":
        loads = rng.integers(0, 4, (layers, experts))
    elif kind == "zeros":
        loads = np.zeros((layers, experts))
    else:
        loads = rng.random((layers, experts))
        loads[:, 0] = 50.0 * loads.sum(axis=1)
    speed = None
    if draw(st.booleans()):
        speed = rng.choice([0.5, 1.0, 2.0], num_ranks)
    topo = plumb.Topology.cluster(nodes=nodes, gpus_per_node=per_node, rank_speed=speed)
    return loads, topo, num_redundant, num_groups


def check_invariants(p: plumb.Placement, loads: np.ndarray) -> None:
    """Everything a placement must satisfy, whatever the policy."""
    loads = np.asarray(loads, dtype=np.float64).reshape(-1, loads.shape[-1])
    num_layers, num_experts = loads.shape
    num_ranks = p.topo.num_ranks
    num_slots = p.phy2log.shape[1]
    slots = num_slots // num_ranks
    assert p.phy2log.dtype == p.logcnt.dtype == p.log2phy.dtype == np.int64
    assert p.phy2log.shape == (num_layers, num_experts + p.num_redundant)
    assert ((p.phy2log >= 0) & (p.phy2log < num_experts)).all()
    for layer in range(num_layers):
        counts = np.bincount(p.phy2log[layer], minlength=num_experts)
        assert np.array_equal(counts, p.logcnt[layer])
        per_rank = p.phy2log[layer].reshape(num_ranks, slots)
        # Two replicas of an expert share a rank only when forced (the ranks available to
        # it have more slots than there are experts) or to lower the layer's maximum
        # (test_stacks_two_pieces_...); equal loads never need it.
        usable = num_ranks
        if p.metrics.layer_hierarchy is not None and \
                p.metrics.layer_hierarchy[layer] == "hierarchical":
            usable = num_ranks // p.topo.num_nodes
        if num_experts * usable >= num_slots and np.ptp(loads[layer]) == 0 \
                and p.policy == "plumb":
            for row in per_rank:
                assert np.unique(row).size == slots, "needless stacking"
        for e in range(num_experts):
            where = p.log2phy[layer, e]
            held = where[where >= 0]
            assert np.array_equal(held, np.flatnonzero(p.phy2log[layer] == e))
            assert (where[held.size:] == -1).all()
    assert (p.logcnt >= 1).all() and (p.logcnt.sum(axis=1) == num_slots).all()
    assert p.log2phy.shape == (num_layers, num_experts, p.logcnt.max())
    again = plumb.evaluate(p.phy2log, loads, p.topo)
    np.testing.assert_allclose(p.rank_loads, again.rank_loads, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(p.rank_loads.sum(axis=1), loads.sum(axis=1), rtol=1e-9, atol=1e-9)
    m = p.metrics
    assert 0.0 <= m.balancedness <= 1.0 + 1e-12
    assert (m.layer_balancedness <= 1.0 + 1e-12).all()
    assert (m.lower_bound <= m.max_load * (1 + 1e-12) + 1e-12).all()
    assert (m.lb_gap >= 0).all()


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(["auto", "global"]))
def test_plumb_policy_invariants(problem, hierarchy):
    loads, topo, num_redundant, num_groups = problem
    p = plumb.solve(loads, topo, num_redundant=num_redundant, num_groups=num_groups,
                    hierarchy=hierarchy)
    check_invariants(p, loads)
    assert set(p.metrics.layer_hierarchy) <= {"global", "hierarchical"}
    if hierarchy == "global":
        assert p.metrics.hierarchy == "global"
    winners = np.nanmin(p.metrics.candidate_max_load, axis=1)
    np.testing.assert_allclose(p.metrics.max_load, winners, rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_deepseek_policy_invariants(problem):
    loads, topo, num_redundant, num_groups = problem
    p = plumb.solve(loads, topo, num_redundant=num_redundant, num_groups=num_groups,
                    policy="deepseek")
    assert p.policy == "deepseek"
    assert p.logcnt.sum(axis=1).tolist() == [p.phy2log.shape[1]] * p.phy2log.shape[0]
    assert (p.metrics.lower_bound <= p.metrics.max_load * (1 + 1e-12) + 1e-12).all()


@settings(max_examples=30, deadline=None)
@given(problems())
def test_deterministic(problem):
    loads, topo, num_redundant, num_groups = problem
    a = plumb.solve(loads, topo, num_redundant=num_redundant, num_groups=num_groups)
    b = plumb.solve(loads.copy(), topo, num_redundant=num_redundant, num_groups=num_groups)
    assert np.array_equal(a.phy2log, b.phy2log)
    assert np.array_equal(a.rank_loads, b.rank_loads)


@pytest.mark.parametrize("hierarchy", ["global", "hierarchical"])
def test_kept_replica_move_then_stacked_alternative_keeps_counts_consistent(hierarchy):
    # Found by hypothesis: the replica move was kept, then the stacked alternative packed the
    # replicas of the counts from before the move; logcnt no longer matched phy2log.
    loads = np.array([[0.44846196, 0.26597339, 0.7800778, 1.52263934, 3.11443119,
                       1.11595038]])
    p = plumb.solve(loads, 4, num_redundant=2, hierarchy=hierarchy)
    check_invariants(p, loads)


@settings(max_examples=40, deadline=None)
@given(problems())
def test_hierarchical_keeps_groups_on_one_node(problem):
    loads, topo, num_redundant, num_groups = problem
    if num_groups % topo.num_nodes:
        return
    p = plumb.solve(loads, topo, num_redundant=num_redundant, num_groups=num_groups,
                    hierarchy="hierarchical")
    check_invariants(p, loads)
    num_experts = loads.shape[1]
    slots = p.slots_per_rank
    node_of_slot = topo.node_of_rank[np.arange(p.num_slots) // slots]
    group_of = p.phy2log // (num_experts // num_groups)
    for layer in range(p.num_layers):
        for g in range(num_groups):
            assert np.unique(node_of_slot[group_of[layer] == g]).size == 1


def test_never_worse_than_either_candidate_alone():
    rng = np.random.default_rng(7)
    loads = rng.lognormal(0, 1.5, (6, 64))
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    auto = plumb.solve(loads, topo, num_redundant=16, num_groups=4)
    for forced in ("global", "hierarchical"):
        alone = plumb.solve(loads, topo, num_redundant=16, num_groups=4, hierarchy=forced)
        assert (auto.metrics.max_load <= alone.metrics.max_load * (1 + 1e-12)).all()


def test_forced_stacking_when_ranks_have_more_slots_than_experts():
    # E = 2 < S = 3: some rank must hold an expert twice.
    p = plumb.solve([5.0, 1.0], 2, num_redundant=4)
    check_invariants(p, np.array([[5.0, 1.0]]))
    assert p.logcnt.tolist() == [[3, 3]] or p.logcnt[0, 0] > p.logcnt[0, 1]


def test_tens_of_thousands_of_slots_per_rank():
    # The pair-exchange scratch grows as S**2: at S = 35,001 it asked numba for hundreds of
    # gigabytes (MemoryError); pair exchanges now stop at PAIR_SLOTS_MAX slots per rank.
    # 35,001 replicas of one expert on a rank also pass int16's range in the replica counts.
    loads = np.array([[1.0, 2.0]])
    p = plumb.solve(loads, 2, num_redundant=70_000)
    check_invariants(p, loads)
    assert p.logcnt.tolist() == [[23_334, 46_668]]
    assert p.metrics.lb_gap_max < 1e-9


def test_locality_pass_beyond_the_pair_exchange_limit():
    # S = 100 > PAIR_SLOTS_MAX: the locality re-packing runs without pair exchanges.
    rng = np.random.default_rng(0)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=1)
    loads = rng.lognormal(0.0, 1.0, (2, 8))
    traffic = rng.lognormal(0.0, 1.0, (2, 2, 8))
    balanced = plumb.solve(loads, topo, num_redundant=192)
    local = plumb.solve(loads, topo, num_redundant=192, traffic=traffic)
    check_invariants(local, loads)
    assert (local.metrics.max_load <= balanced.metrics.max_load * (1 + 1e-12)).all()


def test_stacks_two_pieces_of_a_hot_expert_when_that_beats_any_unstacked_packing():
    # Expert 0 gets the spare slot (5 + 5): unstacked, a rank holds 5 + 9 = 14 at best;
    # stacked, the ranks carry 5 + 5 and 9 + 1 (DeepSeek's packing too).
    p = plumb.solve([10.0, 9.0, 1.0], 2, num_redundant=1)
    check_invariants(p, np.array([[10.0, 9.0, 1.0]]))
    assert p.metrics.max_load.tolist() == [10.0]
    assert sorted(p.phy2log[0].reshape(2, 2).tolist()) == [[0, 0], [1, 2]]


def test_replica_search_gives_a_light_expert_the_spare_slot_when_that_packs_best():
    # Water-filling gives the hot expert 3 replicas (pieces 59.07 each); on 3 ranks of 2
    # slots the best packing of those counts peaks at 118.1. Two replicas each of the hot
    # expert and of the lightest one pack as (88.6, 6.05) x 2 and (67.3, 14.3): 94.65.
    loads = np.array([[67.3, 14.3, 12.1, 177.2]])
    p = plumb.solve(loads, 3, num_redundant=2)
    check_invariants(p, loads)
    assert p.logcnt.tolist() == [[1, 1, 2, 2]]
    assert p.metrics.max_load[0] == pytest.approx(94.65)


def _optimal_max_load(weights, num_ranks, slots):
    """The smallest busiest-rank load over all replica counts (1..G each) and all packings
    with S slots per rank and no expert twice on a rank: exhaustive, for a handful of
    experts."""
    num_slots = num_ranks * slots
    best = np.inf

    def counts_of(left, experts):
        if experts == 1:
            if 1 <= left <= num_ranks:
                yield (left,)
            return
        for c in range(1, min(num_ranks, left - experts + 1) + 1):
            for rest in counts_of(left - c, experts - 1):
                yield (c,) + rest

    def pack(items, index, load, fill, held, peak):
        nonlocal best
        if peak >= best:
            return
        if index == len(items):
            best = peak
            return
        expert, piece = items[index]
        tried = set()
        for r in range(num_ranks):
            if fill[r] == slots or expert in held[r] or (load[r], fill[r]) in tried:
                continue
            tried.add((load[r], fill[r]))
            load[r] += piece
            fill[r] += 1
            held[r].add(expert)
            pack(items, index + 1, load, fill, held, max(peak, load[r]))
            load[r] -= piece
            fill[r] -= 1
            held[r].discard(expert)

    for counts in counts_of(num_slots, len(weights)):
        items = sorted(((e, weights[e] / c) for e, c in enumerate(counts) for _ in range(c)),
                       key=lambda item: -item[1])
        pack(items, 0, [0.0] * num_ranks, [0] * num_ranks, [set() for _ in range(num_ranks)],
             0.0)
    return best


def test_close_to_the_optimum_on_small_problems():
    # With few slots per rank the replica counts decide the packing.
    rng = np.random.default_rng(11)
    ratios = []
    for _ in range(120):
        num_ranks = int(rng.integers(2, 4))
        slots = int(rng.integers(2, 4))
        experts = int(rng.integers(max(2, slots), min(6, num_ranks * slots) + 1))
        weights = np.round(rng.lognormal(0.0, 1.0, experts) * 10, 1)
        p = plumb.solve(weights[None, :], num_ranks,
                        num_redundant=num_ranks * slots - experts)
        check_invariants(p, weights[None, :])
        ratios.append(p.metrics.max_load[0] / _optimal_max_load(weights, num_ranks, slots))
    # Measured: worst 1.042, 91% optimal, mean excess -0.18% (stacking beats the unstacked
    # optimum at times); without the search 1.189, 80% and +0.28%.
    ratios = np.array(ratios)
    assert ratios.max() < 1.06
    assert np.mean(ratios <= 1 + 1e-9) >= 0.88
    assert np.mean(ratios - 1) < 1e-3


def test_replica_caps():
    loads = np.array([[100.0, 1, 1, 1, 1, 1, 1, 1]])
    p = plumb.solve(loads, 4, num_redundant=8, max_replicas_per_expert=2)
    assert p.logcnt.max() <= 2
    p = plumb.solve(loads, 4, num_redundant=8)
    assert p.logcnt[0, 0] == 4  # default cap G: the hot expert gets one replica per rank


def test_pair_exchange_with_many_slots_unsticks_the_swap_search():
    # 9 slots per rank (sorted pair sums): no single swap moves 1-3 from the busier rank, a
    # two-for-two exchange evens the two out at 172.
    from plumb.solver.refine import refine_slots, refine_swaps
    from plumb.solver.workspace import workspace

    slot_w = np.array([[3.0, 3, 6, 17, 17, 30, 31, 31, 32], [1, 13, 15, 15, 16, 24, 26, 27, 37]])
    slot_e = np.arange(18).reshape(2, 9)
    load = slot_w.sum(axis=1)
    has = np.zeros((2, 18), dtype=np.int64)
    has[0, :9] = has[1, 9:] = 1
    speed = np.ones(2)
    scratch = workspace(1, 2, 9)
    assert refine_swaps(slot_e, slot_w, load, speed, has, True, 100, *scratch) == 0
    assert refine_slots(slot_e, slot_w, load, speed, has, True, 100, 100, 4, 0.0,
                        *scratch)[1] >= 1
    assert load.tolist() == [172.0, 172.0]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.sampled_from([2, 3, 5, 8, 9, 12]), st.integers(0, 2**32 - 1),
       st.booleans())
def test_pair_exchanges_keep_items_and_never_raise_the_maximum(num_ranks, slots, seed, mixed):
    # After the single-swap search is stuck, two-for-two exchanges only lower the busiest rank
    # (every pair of pairs scored up to 8 slots per rank, the sorted pair sums beyond).
    from plumb.solver.refine import refine_slots, refine_swaps
    from plumb.solver.workspace import workspace

    rng = np.random.default_rng(seed)
    slot_e = rng.permutation(num_ranks * slots).reshape(num_ranks, slots)
    slot_w = np.round(rng.lognormal(0.0, 1.0, slot_e.shape), 2)
    items = sorted(zip(slot_e.ravel().tolist(), slot_w.ravel().tolist()))
    load = slot_w.sum(axis=1)
    speed = rng.choice([1.0, 1.5], num_ranks) if mixed else np.ones(num_ranks)
    has = np.zeros((num_ranks, slot_e.size), dtype=np.int64)
    for r in range(num_ranks):
        has[r, slot_e[r]] = 1
    scratch = workspace(1, num_ranks, slots)
    refine_swaps(slot_e, slot_w, load, speed, has, True, 1000, *scratch)
    stuck = (load / speed).max()
    refine_slots(slot_e, slot_w, load, speed, has, True, 1000, 1000, 4, 0.0, *scratch)
    assert (load / speed).max() <= stuck * (1 + 1e-12)
    assert sorted(zip(slot_e.ravel().tolist(), slot_w.ravel().tolist())) == items
    np.testing.assert_allclose(load, slot_w.sum(axis=1))
    assert (has.sum(axis=0) == 1).all() and has.max() == 1
    assert all((has[r, slot_e[r]] == 1).all() for r in range(num_ranks))


def test_log2phy_is_made_on_first_access_and_kept():
    loads = np.random.default_rng(5).lognormal(0.0, 1.0, (3, 16))
    p = plumb.solve(loads, plumb.Topology.flat(4), num_redundant=8)
    assert "log2phy" not in vars(p)  # a solve that only needs phy2log never builds it
    first = p.log2phy
    assert p.log2phy is first
    for layer in range(3):
        for e in range(16):
            held = first[layer, e][first[layer, e] >= 0]
            np.testing.assert_array_equal(held, np.flatnonzero(p.phy2log[layer] == e))
