"""Kernel-level properties behind the solver's shortcuts (plumb.solver.pack / refine)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plumb.solver.pack import lpt_pack_counted, swap_items
from plumb.solver.refine import _MIN_GAIN, _best_swap, refine_swaps, sort_row


def _items(rng, num_ranks, slots, num_experts, equal_shares):
    """(item_w, item_e) of ``num_ranks * slots`` replicas of ``num_experts`` experts."""
    counts = np.ones(num_experts, dtype=np.int64)
    for e in rng.integers(0, num_experts, num_ranks * slots - num_experts):
        counts[e] += 1
    weights = rng.integers(1, 6, num_experts).astype(np.float64) if equal_shares else \
        rng.lognormal(0.0, 1.0, num_experts)
    item_e = np.repeat(np.arange(num_experts), counts)
    return np.ascontiguousarray(weights[item_e] / counts[item_e]), item_e


def _pack(item_w, item_e, speed, slots, forbid_dup, num_experts):
    num_ranks = speed.shape[0]
    slot_e = np.empty((num_ranks, slots), dtype=np.int64)
    slot_w = np.empty((num_ranks, slots), dtype=np.float64)
    load = np.empty(num_ranks, dtype=np.float64)
    has = np.zeros((num_ranks, num_experts), dtype=np.int64)
    counted = lpt_pack_counted(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has)
    return counted, slot_e, slot_w, load, has


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5), st.integers(0, 2**32 - 1), st.booleans())
def test_no_set_aside_means_the_packing_without_the_rule(num_ranks, slots, seed, equal_shares):
    # place() skips the stacked alternative on this: it would repeat the same LPT.
    rng = np.random.default_rng(seed)
    num_experts = int(rng.integers(max(1, num_ranks * slots // 3), num_ranks * slots + 1))
    item_w, item_e = _items(rng, num_ranks, slots, num_experts, equal_shares)
    speed = rng.choice([1.0, 2.0], num_ranks) if seed % 2 else np.ones(num_ranks)
    (stacked, set_aside), slot_e, slot_w, load, _ = _pack(item_w, item_e, speed, slots, True,
                                                          num_experts)
    _, free_e, free_w, free_load, _ = _pack(item_w, item_e, speed, slots, False, num_experts)
    assert stacked <= set_aside
    if set_aside == 0:
        np.testing.assert_array_equal(slot_e, free_e)
        np.testing.assert_array_equal(load, free_load)


def _reference_refine(slot_e, slot_w, load, speed, has, forbid_dup):
    """The swap search by plain scans: busiest rank (lowest index on ties), lightest tried
    first, else the best swap over all ranks by index (first index on ties)."""
    bins = slot_e.shape[0]
    for r in range(bins):
        sort_row(slot_e, slot_w, r)
    steps = 0
    while True:
        time = load / speed
        h = int(np.argmax(time))
        lo = int(np.argmin(time))
        if h == lo:
            return steps
        best, bi, bj = _best_swap(slot_e, slot_w, load, speed, has, forbid_dup, h, lo,
                                  time[h] * (1.0 - _MIN_GAIN))
        br = lo
        if bi < 0:
            br = -1
            for r in range(bins):
                if r in (h, lo):
                    continue
                value, i, j = _best_swap(slot_e, slot_w, load, speed, has, forbid_dup, h, r, best)
                if i >= 0:
                    best, bi, bj, br = value, i, j, r
        if br < 0:
            return steps
        swap_items(slot_e, slot_w, load, has, h, bi, br, bj)
        sort_row(slot_e, slot_w, h)
        sort_row(slot_e, slot_w, br)
        steps += 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 10), st.integers(1, 5), st.integers(0, 2**32 - 1), st.booleans())
def test_sorted_rank_scan_takes_the_same_swaps_as_a_scan_by_index(num_ranks, slots, seed,
                                                                   equal_shares):
    rng = np.random.default_rng(seed)
    num_experts = int(rng.integers(max(1, num_ranks * slots // 2), num_ranks * slots + 1))
    item_w, item_e = _items(rng, num_ranks, slots, num_experts, equal_shares)
    speed = rng.choice([1.0, 2.0], num_ranks) if seed % 2 else np.ones(num_ranks)
    _, slot_e, slot_w, load, has = _pack(item_w, item_e, speed, slots, True, num_experts)
    ref = [a.copy() for a in (slot_e, slot_w, load, has)]
    steps = refine_swaps(slot_e, slot_w, load, speed, has, True, 10_000)
    ref_steps = _reference_refine(*ref[:3], speed, ref[3], True)
    assert steps == ref_steps
    np.testing.assert_array_equal(slot_e, ref[0])
    np.testing.assert_array_equal(load, ref[2])
