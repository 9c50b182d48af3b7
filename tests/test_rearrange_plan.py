"""plumb.plan_rearrangement and plumb.rearrange.movement_stats: properties, routing, validation."""

import numpy as np
import pytest
from _rearrange_cases import rearrangements
from hypothesis import given, settings

import plumb
from plumb.errors import InputError
from plumb.rearrange import movement_stats
from plumb.topology import CROSS_NODE, Topology

PLAN_SETTINGS = settings(max_examples=150, deadline=None)


def brute_force_counts(old, new, slots):
    """(moves, local copies, no-ops) straight from the SPEC definitions."""
    moves = local = noops = 0
    for layer in range(old.shape[0]):
        for slot in range(old.shape[1]):
            rank = slot // slots
            if old[layer, slot] == new[layer, slot]:
                noops += 1
            elif new[layer, slot] in old[layer, rank * slots:(rank + 1) * slots]:
                local += 1
            else:
                moves += 1
    return moves, local, noops


@PLAN_SETTINGS
@given(rearrangements())
def test_plan_properties(case):
    topo, old, new = case
    plan = plumb.plan_rearrangement(old, new, topo, bytes_per_expert=1000)
    slots = plan.slots_per_rank
    # Applying the plan to the placement itself yields exactly the new placement.
    assert np.array_equal(plan.apply(old), new)
    # Every destination (layer, slot) is written by exactly one entry.
    dst = np.concatenate([plan.transfers[:, [0, 5]], plan.local_copies[:, [0, 5]],
                          plan.noops[:, [0, 2]]])
    assert len(dst) == old.size and len(np.unique(dst, axis=0)) == old.size
    for table, remote in ((plan.transfers, True), (plan.local_copies, False)):
        layer, expert, src_rank, src_slot, dst_rank, dst_slot = table.T
        assert np.array_equal(old[layer, src_slot], expert)  # the sender holds the expert
        assert np.array_equal(new[layer, dst_slot], expert)
        assert np.array_equal(src_slot // slots, src_rank)
        assert np.array_equal(dst_slot // slots, dst_rank)
        assert np.all((src_rank != dst_rank) == remote)
    assert np.array_equal(old[plan.noops[:, 0], plan.noops[:, 2]], plan.noops[:, 1])
    # Counts follow the SPEC definitions and movement_stats agrees with the plan.
    stats = plan.stats
    assert (stats.moves, stats.local_copies, stats.noops) == brute_force_counts(old, new, slots)
    assert movement_stats(old, new, topo, 1000).as_dict() == stats.as_dict()
    assert stats.bytes == stats.moves * 1000 == stats.bytes_received.sum() == stats.bytes_sent.sum()
    assert stats.intra_node_bytes + stats.inter_node_bytes == stats.bytes
    assert stats.moves_per_layer.sum() == stats.moves
    # Each sender is at the closest link level among the ranks that hold the expert.
    for layer, expert, src_rank, _, dst_rank, _ in plan.transfers:
        holders = np.unique(np.nonzero(old[layer] == expert)[0] // slots)
        assert topo.level[src_rank, dst_rank] == topo.level[holders, dst_rank].min()


@settings(max_examples=30, deadline=None)
@given(rearrangements())
def test_plan_is_deterministic(case):
    topo, old, new = case
    first, second = (plumb.plan_rearrangement(old, new, topo, 7) for _ in range(2))
    for name in ("transfers", "local_copies", "noops"):
        assert np.array_equal(getattr(first, name), getattr(second, name))


def test_senders_spread_over_holders():
    # Ranks 0-3 hold expert 0; ranks 4-7 each need it in both their slots: one flat domain.
    old = np.array([[0, 1, 0, 2, 0, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    new = np.array([[0, 1, 0, 2, 0, 3, 0, 4] + [0] * 8])
    plan = plumb.plan_rearrangement(old, new, 8, bytes_per_expert=10)
    assert plan.stats.moves == 8
    assert plan.stats.bytes_sent.tolist() == [20, 20, 20, 20, 0, 0, 0, 0]
    assert plan.stats.max_bytes_received == 20


def test_sender_prefers_same_numa_then_same_node():
    # Two nodes of four GPUs in two NUMA domains; expert 9 sits on ranks 0 (node 0, NUMA 0),
    # 3 (node 0, NUMA 1) and 4 (node 1). Rank 1 (node 0, NUMA 0) needs it.
    topo = Topology.cluster(nodes=2, gpus_per_node=4, numa_per_node=2)
    old = np.array([[9, 1, 2, 9, 9, 5, 6, 7]])
    new = np.array([[9, 9, 2, 9, 9, 5, 6, 7]])
    assert plumb.plan_rearrangement(old, new, topo, 1).transfers[0, 2] == 0
    old = np.array([[0, 1, 2, 9, 9, 5, 6, 7]])  # now only ranks 3 (same node) and 4
    plan = plumb.plan_rearrangement(old, np.array([[0, 9, 2, 9, 9, 5, 6, 7]]), topo, 1)
    assert plan.transfers.tolist() == [[0, 9, 3, 3, 1, 1]]
    assert plan.stats.inter_node_bytes == 0 and plan.stats.intra_node_bytes == 1


def test_cost_summary_by_hand():
    # Two nodes of one GPU, S = 2. Rank 0 gets expert 2 from rank 1 and copies expert 0 locally;
    # rank 1 gets expert 0 from rank 0; slot 3 keeps expert 3.
    topo = Topology.cluster(nodes=2, gpus_per_node=1,
                            level_bandwidths_gbps={"cross_node": 10.0, "same_rank": 100.0})
    size = 10**9
    plan = plumb.plan_rearrangement([[0, 1, 2, 3]], [[2, 0, 0, 3]], topo, size)
    stats = plan.stats
    assert (stats.moves, stats.local_copies, stats.noops) == (2, 1, 1)
    assert plan.transfers.tolist() == [[0, 2, 1, 2, 0, 0], [0, 0, 0, 0, 1, 2]]
    assert plan.local_copies.tolist() == [[0, 0, 0, 0, 0, 1]]
    assert stats.bytes_received.tolist() == [size, size] and stats.inter_node_bytes == 2 * size
    # Rank 0: 1 GB over 10 GB/s each way (full duplex) plus 1 GB copied at 100 GB/s.
    assert stats.rank_seconds.tolist() == pytest.approx([0.11, 0.1])
    assert stats.estimated_seconds == pytest.approx(0.11)
    assert topo.level[0, 1] == CROSS_NODE


def test_no_change_plan_is_all_noops():
    old = np.arange(12).reshape(2, 6) % 5
    plan = plumb.plan_rearrangement(old, old, Topology.flat(3), 10)
    assert plan.stats.moves == plan.stats.local_copies == 0
    assert plan.stats.noops == 12 and plan.stats.estimated_seconds == 0.0
    assert plan.transfers.shape == (0, 6) and plan.local_copies.shape == (0, 6)


def test_inputs_accepted_in_other_forms():
    torch = pytest.importorskip("torch")
    old, new = [3, 2, 1, 0], [0, 1, 2, 3]
    from_lists = plumb.plan_rearrangement(old, new, 2, 4)
    from_torch = plumb.plan_rearrangement(torch.tensor([old]),
                                          torch.tensor([new], dtype=torch.int32),
                                          Topology.flat(2), 4)
    assert np.array_equal(from_lists.transfers, from_torch.transfers)
    assert from_lists.num_layers == 1 and from_lists.num_slots == 4
    assert not from_lists.transfers.flags.writeable and not from_lists.new_phy2log.flags.writeable


@pytest.mark.parametrize("old, new, topo, size, kwargs, message", [
    ([[0, 1]], [[0, 1, 1]], 1, 1, {}, "same shape"),
    ([[0, 1, 2]], [[0, 1, 2]], 2, 1, {}, "not divisible by G = 2"),
    ([[0, -1]], [[0, 1]], 1, 1, {}, "must be >= 0"),
    ([[0, 4]], [[0, 1]], 1, 1, {"num_experts": 4}, "out of range for num_experts = 4"),
    ([[0, 1], [0, 1]], [[0, 1], [0, 2]], 1, 1, {}, "layer 1: expert 2"),
    ([[0.0, 1.0]], [[0, 1]], 1, 1, {}, "integer expert ids"),
    ([[[0, 1]]], [[[0, 1]]], 1, 1, {}, r"\[L, P\]"),
    ([[0, 1]], [[0, 1]], 1, -1, {}, "bytes_per_expert"),
    ([[0, 1]], [[0, 1]], 1, 1.5, {}, "bytes_per_expert"),
    # 2**62 bytes per copy: the per-rank int64 byte totals of 2 copies would wrap negative.
    ([[0, 1]], [[1, 0]], 1, 2 ** 62, {}, "bytes_per_expert = 4611686018427387904 is too large"),
    ([[0, 1]], [[0, 1]], 1, 1, {"num_experts": 0}, "num_experts"),
    # uint64 ids past int64 used to wrap to negative ones.
    (np.array([[2 ** 63 + 5, 1]], dtype=np.uint64), [[0, 1]], 1, 1, {}, "past int64"),
    ([[0, 1]], [[0, 1]], "two", 1, {}, "topo"),
])
def test_invalid_inputs_raise_input_error(old, new, topo, size, kwargs, message):
    with pytest.raises(InputError, match=message):
        plumb.plan_rearrangement(old, new, topo, size, **kwargs)
    with pytest.raises(InputError, match=message):
        movement_stats(old, new, topo, size, **kwargs)


def test_apply_checks_shape():
    plan = plumb.plan_rearrangement([[0, 1]], [[1, 0]], 1, 1)
    with pytest.raises(InputError, match="values must be"):
        plan.apply(np.zeros((2, 2)))


def test_ragged_placement_is_an_input_error():
    with pytest.raises(InputError, match="rectangular"):
        plumb.plan_rearrangement([[0, 1], [0]], [[0, 1], [1, 0]], 1, 1)
