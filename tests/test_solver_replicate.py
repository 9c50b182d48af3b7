"""Water-filling replication (plumb.solver.replicate): the counts and their tie rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.solver.replicate import water_fill


def _reference_counts(weights, num_slots, caps):
    """The documented rule in plain Python: each replica to the largest w / c below its cap
    (lowest index on ties); once that largest is 0, one per zero-load expert below its cap
    in index order, round after round; every cap dropped once all experts are at theirs."""
    n = len(weights)
    counts = [1] * n
    capped = True
    left = num_slots - n
    while left > 0:
        open_ = [e for e in range(n) if not capped or counts[e] < caps[e]]
        if not open_:
            capped = False
            continue
        share = max(weights[e] / counts[e] for e in open_)
        if share > 0.0:
            e = next(e for e in open_ if weights[e] / counts[e] == share)
            counts[e] += 1
            left -= 1
            continue
        for e in open_:
            if left == 0:
                break
            counts[e] += 1
            left -= 1
    return counts, capped


@st.composite
def replication_cases(draw):
    num_experts = draw(st.integers(1, 12))
    values = st.one_of(st.just(0.0), st.integers(0, 5).map(float),
                       st.floats(0.0, 100.0, allow_nan=False))
    weights = draw(st.lists(values, min_size=num_experts, max_size=num_experts))
    caps = draw(st.lists(st.integers(1, 6), min_size=num_experts, max_size=num_experts))
    num_slots = draw(st.integers(num_experts, 4 * num_experts))
    return (np.array(weights, dtype=np.float64), num_slots, np.array(caps, dtype=np.int64))


@settings(max_examples=300, deadline=None)
@given(replication_cases())
def test_water_fill_follows_the_documented_rule(case):
    weights, num_slots, caps = case
    counts = np.empty(weights.size, dtype=np.int64)
    capped = water_fill(weights, num_slots, caps, counts)
    expected, expected_capped = _reference_counts(list(weights), num_slots, list(caps))
    assert counts.tolist() == expected
    assert bool(capped) == expected_capped
    assert counts.sum() == num_slots and counts.min() >= 1
    if capped:
        assert (counts <= caps).all()


def test_zero_loads_spread_the_spare_replicas_over_experts():
    # All-zero loads: any counts are optimal, and the spare replicas go one per expert
    # instead of all to expert 0 (whose 64 replicas LPT placed with quadratic work).
    counts = np.empty(256, dtype=np.int64)
    assert water_fill(np.zeros(256), 320, np.full(256, 64, dtype=np.int64), counts)
    assert counts.tolist() == [2] * 64 + [1] * 192
    # Zero-load experts take the replicas the loaded ones cannot (at their caps).
    weights = np.array([5.0, 0.0, 3.0, 0.0, 0.0])
    assert water_fill(weights, 11, np.array([2, 9, 2, 9, 9], dtype=np.int64), counts[:5])
    assert counts[:5].tolist() == [2, 3, 2, 2, 2]


def test_an_all_zero_model_solves_to_spread_replicas_on_distinct_ranks():
    placement = plumb.solve(np.zeros((3, 256)), plumb.Topology.cluster(8, 8), num_redundant=64,
                            hierarchy="global")
    assert placement.logcnt.max() == 2 and (placement.logcnt == 2).sum(axis=1).tolist() == [64] * 3
    per_rank = placement.phy2log.reshape(3, 64, 5)
    for layer in per_rank:
        for rank in layer:
            assert len(set(rank.tolist())) == 5
    assert placement.metrics.balancedness == 1.0
