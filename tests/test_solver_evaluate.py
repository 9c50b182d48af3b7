"""plumb.evaluate on hand-computed examples, and the input forms solve accepts."""

from __future__ import annotations

import numpy as np
import pytest

import plumb


def test_hand_computed_two_ranks():
    # Expert 0 (load 6) has two replicas carrying 3 each; ranks: [0, 1] and [0, 2].
    loads = [6.0, 2.0, 4.0]
    m = plumb.evaluate([[0, 1, 0, 2]], loads, 2)
    np.testing.assert_allclose(m.rank_loads, [[5.0, 7.0]])
    np.testing.assert_allclose(m.max_load, [7.0])
    np.testing.assert_allclose(m.layer_balancedness, [6.0 / 7.0])
    # W / G = 6; T* = max(6/2, 2, 4) = 4, so LB = 6 and lb_gap = 7/6 - 1.
    np.testing.assert_allclose(m.lower_bound, [6.0])
    np.testing.assert_allclose(m.lb_gap, [1.0 / 6.0])
    assert m.moves is None and m.traffic is None


def test_model_balancedness_is_ratio_of_sums():
    loads = [[6.0, 2.0, 4.0], [1.0, 1.0, 10.0]]
    m = plumb.evaluate([[0, 1, 0, 2], [0, 1, 2, 2]], loads, 2)
    np.testing.assert_allclose(m.rank_loads, [[5.0, 7.0], [2.0, 10.0]])
    assert m.balancedness == pytest.approx((6.0 + 6.0) / (7.0 + 10.0))
    # Layer 1: T* = 10 / 2 (expert 2 split over both ranks) but W / G = 6 dominates.
    np.testing.assert_allclose(m.lower_bound, [6.0, 6.0])


def test_pigeonhole_bound_without_redundancy():
    # P == E, G = 2: two of the three heaviest experts share a rank, so LB >= 4 + 4 > W / G.
    m = plumb.evaluate([[0, 3, 1, 2]], [5.0, 4.0, 4.0, 0.0], 2)
    np.testing.assert_allclose(m.lower_bound, [8.0])
    np.testing.assert_allclose(m.max_load, [8.0])
    assert m.lb_gap_max == 0.0


def test_rank_speed():
    topo = plumb.Topology.cluster(nodes=1, gpus_per_node=2, rank_speed=[1.0, 3.0])
    m = plumb.evaluate([[0, 1]], [1.0, 3.0], topo)
    np.testing.assert_allclose(m.max_load, [1.0])
    assert m.balancedness == pytest.approx(1.0)
    p = plumb.solve([1.0, 3.0], topo)
    assert p.phy2log.tolist() == [[0, 1]]


def test_all_zero_loads():
    m = plumb.evaluate([[0, 1, 2, 3]], np.zeros(4), 2)
    assert m.balancedness == 1.0 and m.lb_gap_max == 0.0


def test_moves_and_local_copies():
    previous = [[0, 1, 2, 3, 3, 2]]     # rank 0 holds {0, 1, 2}, rank 1 holds {3, 2}
    current = [[1, 0, 2, 3, 2, 0]]
    m = plumb.evaluate(current, [1.0, 1.0, 1.0, 1.0], 2, previous=previous, bytes_per_expert=10)
    # Rank 0: 1 and 0 were resident in other slots (local copies), 2 stays in its slot.
    # Rank 1: 3 stays, 2 was resident in another slot (local copy), 0 must arrive (a move).
    assert (m.moves.moves, m.moves.local_copies) == (1, 3)
    assert m.moves.received.tolist() == [0, 1]
    assert m.moves.bytes_moved == 10 and m.moves.max_bytes_received == 10


def test_input_forms_agree():
    rng = np.random.default_rng(0)
    window = rng.integers(0, 50, (4, 2, 8))
    base = plumb.solve(window.sum(axis=0), 4, num_redundant=4)
    as_window = plumb.solve(window, 4, num_redundant=4)
    as_list = plumb.solve(window.sum(axis=0).tolist(), 4, num_redundant=4)
    assert np.array_equal(base.phy2log, as_window.phy2log)
    assert np.array_equal(base.phy2log, as_list.phy2log)
    assert as_window.window.shape == (4, 2, 8) and base.window is None
    one = plumb.solve(window.sum(axis=0)[0], 4, num_redundant=4)
    assert np.array_equal(one.phy2log[0], base.phy2log[0])


def test_torch_loads():
    torch = pytest.importorskip("torch")
    loads = torch.arange(16, dtype=torch.int64).reshape(2, 8)
    p = plumb.solve(loads, 4, num_redundant=4)
    q = plumb.solve(loads.numpy(), 4, num_redundant=4)
    assert np.array_equal(p.phy2log, q.phy2log)
    m = plumb.evaluate(torch.from_numpy(p.phy2log), loads, 4)
    np.testing.assert_allclose(m.rank_loads, p.rank_loads)


def test_placement_records_inputs_and_previous_moves():
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    loads = np.arange(1.0, 17.0).reshape(2, 8)
    first = plumb.solve(loads, topo, num_redundant=4, num_groups=2)
    again = plumb.solve(loads, topo, num_redundant=4, num_groups=2, previous=first)
    assert again.metrics.moves.moves == 0
    assert again.num_groups == 2 and again.num_redundant == 4 and again.policy == "plumb"
    assert again.topo is topo and again.previous.shape == (2, 12)
    assert np.array_equal(plumb.evaluate(first, loads, topo).rank_loads, first.rank_loads)
