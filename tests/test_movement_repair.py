"""movement.repair: the previous placement repaired down to a load cap, and its use in solve."""

import numpy as np
from hypothesis import given, settings, strategies as st

import plumb
from plumb.locality import interchangeable_ranks
from plumb.movement import MovementOptions, minimise_movement
from plumb.movement.pipeline import _max_times
from plumb.movement.repair import repair_to_cap
from plumb.solver.metrics import moves_between
from plumb.solver.validate import replica_counts

REL = 1e-9


def duplicate_replicas(phy2log, num_ranks, num_experts):
    """int [L]: replicas beyond the first of an expert on one rank, per layer."""
    slots = phy2log.shape[1] // num_ranks
    held = np.zeros((phy2log.shape[0], num_ranks, num_experts), dtype=np.int64)
    for layer, slot in np.ndindex(phy2log.shape):
        held[layer, slot // slots, phy2log[layer, slot]] += 1
    return np.maximum(held - 1, 0).sum(axis=(1, 2))


def repair(previous, weights, topo, cap, limit=None, caps=None):
    out = np.empty_like(previous)
    limit = np.full(previous.shape[0], 2**40) if limit is None else limit
    caps = np.full(weights.shape[1], previous.shape[1]) if caps is None else caps
    done = repair_to_cap(previous, weights, topo.rank_speed, topo.num_ranks, cap,
                         np.asarray(limit, dtype=np.int64), np.ones(previous.shape[0], bool),
                         np.asarray(caps, dtype=np.int64), out)
    return out, done


@st.composite
def drifted_placements(draw):
    """(topo, previous phy2log, drifted weights, cap): a balanced placement, loads after drift
    and the balanced max of a fresh solve times 1 + slack."""
    ranks = draw(st.sampled_from([2, 4, 8]))
    mixed = draw(st.booleans())
    topo = plumb.Topology.cluster(nodes=1, gpus_per_node=ranks, rank_speed=[
        1.0 + 0.5 * (r % 2) if mixed else 1.0 for r in range(ranks)])
    experts = ranks * draw(st.integers(2, 5))
    extra = ranks * draw(st.integers(0, 2))
    layers = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    loads = rng.lognormal(0, draw(st.sampled_from([0.5, 1.0, 1.5])), (layers, experts)) * 100
    drift = draw(st.sampled_from([0.1, 0.3, 1.0]))
    drifted = loads * np.exp(rng.normal(0, drift, loads.shape))
    previous = plumb.solve(loads, topo, num_redundant=extra).phy2log
    fresh = plumb.solve(drifted, topo, num_redundant=extra)
    slack = draw(st.sampled_from([0.0, 0.01, 0.03]))
    return topo, previous, fresh.loads, fresh.metrics.max_load * (1 + slack)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(drifted_placements(), st.integers(0, 40))
def test_repair_invariants(case, limit):
    topo, previous, weights, cap = case
    num_experts = weights.shape[1]
    layers = previous.shape[0]
    out, done = repair(previous, weights, topo, cap, np.full(layers, limit))
    # A valid placement: every expert keeps a replica, P slots per layer.
    counts = replica_counts(out, num_experts)
    assert (counts >= 1).all() and (counts.sum(axis=1) == previous.shape[1]).all()
    # Never more duplicate replicas on a rank than before.
    assert (duplicate_replicas(out, topo.num_ranks, num_experts)
            <= duplicate_replicas(previous, topo.num_ranks, num_experts)).all()
    moves = moves_between(out, previous, num_experts, topo.num_ranks).layer_moves
    max_after = _max_times(out, weights, topo)
    # Repaired layers: within the cap, moves within the limit.
    assert (max_after[done] <= cap[done] * (1 + REL)).all()
    assert (moves[done] <= limit).all()
    # A layer already within the cap is left alone.
    within = _max_times(previous, weights, topo) <= cap
    np.testing.assert_array_equal(out[within], previous[within])
    # Whether it reaches the cap or gives up, no layer ends busier than before.
    assert (max_after <= _max_times(previous, weights, topo) * (1 + REL)).all()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(drifted_placements())
def test_solve_never_moves_more_than_relabelling_at_the_balanced_max(case):
    topo, previous, weights, _ = case
    extra = previous.shape[1] - weights.shape[1]
    fresh = plumb.solve(weights, topo, num_redundant=extra)
    new = plumb.solve(weights, topo, num_redundant=extra, previous=previous)
    assert (new.metrics.max_load <= fresh.metrics.max_load * (1 + REL)).all()
    relabelled = minimise_movement(fresh.phy2log, previous, fresh.loads, topo,
                                   interchangeable_ranks(topo),
                                   np.zeros(weights.shape[0], bool), MovementOptions(),
                                   refine=False)
    num_experts = weights.shape[1]
    assert (new.metrics.moves.layer_moves
            <= moves_between(relabelled, previous, num_experts, topo.num_ranks).layer_moves).all()


def test_small_drift_keeps_most_experts_in_place():
    rng = np.random.default_rng(21)
    topo = plumb.Topology.flat(8)
    loads = rng.lognormal(0, 1, (6, 64)) * 1000
    old = plumb.solve(loads, topo, num_redundant=16)
    drifted = loads * np.exp(rng.normal(0, 0.075, loads.shape))
    fresh = plumb.solve(drifted, topo, num_redundant=16)
    new = plumb.solve(drifted, topo, num_redundant=16, previous=old)
    classes = np.zeros((1, 8), dtype=np.int64)
    relabelled = minimise_movement(fresh.phy2log, old.phy2log, fresh.loads, topo, classes,
                                   np.zeros(6, bool), MovementOptions(), refine=False)
    relabelled_moves = moves_between(relabelled, old.phy2log, 64, 8).moves
    assert (new.metrics.max_load <= fresh.metrics.max_load * (1 + REL)).all()
    # The repair of the previous placement wins: well under half the relabelled moves.
    assert new.metrics.moves.moves < 0.5 * relabelled_moves


def test_an_expert_that_outgrows_its_replicas_gains_one():
    topo = plumb.Topology.flat(4)
    # Three slots per rank; experts 4-7 have two replicas, expert 0 one and it becomes hot:
    # above every rank's share of the load, so no swap can help.
    previous = np.array([[0, 1, 4, 2, 3, 5, 6, 7, 4, 5, 6, 7]], dtype=np.int64)
    weights = np.array([[60.0, 10, 10, 10, 10, 10, 10, 10]])
    cap = np.array([40.0])
    out, done = repair(previous, weights, topo, cap)
    assert done[0]
    assert replica_counts(out, 8)[0, 0] >= 2
    assert _max_times(out, weights, topo)[0] <= cap[0] * (1 + REL)
    # An unreachable cap: the repair gives up and says so, without making things worse.
    out, done = repair(previous, weights, topo, np.array([1.0]))
    assert not done[0]
    assert _max_times(out, weights, topo)[0] <= _max_times(previous, weights, topo)[0]
    # With expert 0 held to one replica (max_replicas_per_expert) it may not gain one.
    out, done = repair(previous, weights, topo, cap, caps=[1, 2, 2, 2, 2, 2, 2, 2])
    assert not done[0] and replica_counts(out, 8)[0, 0] == 1


def test_hierarchical_and_traffic_layers_are_not_repaired():
    rng = np.random.default_rng(7)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    loads = rng.lognormal(0, 1, (3, 16))
    old = plumb.solve(loads, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical")
    drifted = loads * np.exp(rng.normal(0, 0.05, loads.shape))
    fresh = plumb.solve(drifted, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical")
    new = plumb.solve(drifted, topo, num_redundant=4, num_groups=2, hierarchy="hierarchical",
                      previous=old)
    half = new.phy2log.shape[1] // 2
    for layer in range(3):
        assert ({frozenset(new.phy2log[layer, :half]), frozenset(new.phy2log[layer, half:])}
                == {frozenset(fresh.phy2log[layer, :half]),
                    frozenset(fresh.phy2log[layer, half:])})
