"""Kernel-level properties behind the solver's shortcuts (plumb.solver.pack / refine)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plumb.solver.pack import lpt_loads, lpt_pack_counted
from plumb.solver.refine import _MIN_GAIN, items_of_slots, pair_sweep, refine_swaps
from plumb.solver.workspace import RADIX_COUNTS, workspace


def _items(rng, num_ranks, slots, num_experts, equal_shares):
    """(item_w, item_e) of ``num_ranks * slots`` replicas of ``num_experts`` experts."""
    counts = np.ones(num_experts, dtype=np.int64)
    for e in rng.integers(0, num_experts, num_ranks * slots - num_experts):
        counts[e] += 1
    weights = rng.integers(1, 6, num_experts).astype(np.float64) if equal_shares else \
        rng.lognormal(0.0, 1.0, num_experts)
    item_e = np.repeat(np.arange(num_experts), counts)
    return np.ascontiguousarray(weights[item_e] / counts[item_e]), item_e


def _sorted_case(seed, num_ranks, slots, fewest_experts, equal_shares):
    """(item_w, item_e, speed, num_experts): ``_items`` heaviest first (ties by index) for
    ``fewest_experts`` to ``num_ranks * slots`` experts; rank speeds 1 and 2 for odd seeds."""
    rng = np.random.default_rng(seed)
    num_experts = int(rng.integers(max(1, fewest_experts), num_ranks * slots + 1))
    item_w, item_e = _items(rng, num_ranks, slots, num_experts, equal_shares)
    order = np.argsort(-item_w, kind="stable")
    speed = rng.choice([1.0, 2.0], num_ranks) if seed % 2 else np.ones(num_ranks)
    return (np.ascontiguousarray(item_w[order]), np.ascontiguousarray(item_e[order]), speed,
            num_experts)


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


def _reference_lpt(item_w, item_e, speed, slots, forbid_dup, num_experts):
    """The packing rule of plumb.solver.pack, one item at a time: the open rank of smallest
    (load / speed, index); with ``forbid_dup`` the first in that order not holding the expert
    (the ones before it are set aside), or, if all hold it, the first (stacked)."""
    bins = speed.shape[0]
    slot_e = np.empty((bins, slots), dtype=np.int64)
    load = np.zeros(bins)
    fill = np.zeros(bins, dtype=np.int64)
    has = np.zeros((bins, num_experts), dtype=np.int64)
    stacked = set_aside = 0
    for w, e in zip(item_w, item_e):
        order = sorted((r for r in range(bins) if fill[r] < slots),
                       key=lambda r: (load[r] * (1.0 / speed[r]), r))
        chosen = order[0]
        if forbid_dup:
            free = [r for r in order if has[r, e] == 0]
            chosen = free[0] if free else order[0]
            stacked += not free
            set_aside += order.index(free[0]) if free else len(order)
        fill[chosen] += 1
        slot_e[chosen, slots - fill[chosen]] = e
        load[chosen] += w
        has[chosen, e] += 1
    return (stacked, set_aside), slot_e, load


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32 - 1), st.booleans(),
       st.booleans())
def test_lpt_follows_the_rule_with_the_scan_and_with_the_tree(num_ranks, slots, seed,
                                                              equal_shares, forbid_dup):
    # Up to SCAN_BINS ranks the lightest is found by a scan, beyond by a tournament tree:
    # both must give the rule's packing and its stacked / set-aside counts, ties included.
    item_w, item_e, speed, num_experts = _sorted_case(seed, num_ranks, slots,
                                                      num_ranks * slots // 3, equal_shares)
    counted, slot_e, _, load, _ = _pack(item_w, item_e, speed, slots, forbid_dup, num_experts)
    want_counted, want_e, want_load = _reference_lpt(item_w, item_e, speed, slots, forbid_dup,
                                                     num_experts)
    assert tuple(counted) == want_counted
    np.testing.assert_array_equal(slot_e, want_e)
    np.testing.assert_allclose(load, want_load, rtol=1e-12)


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32 - 1), st.booleans())
def test_lpt_loads_are_the_stacking_lpts_loads(num_ranks, slots, seed, equal_shares):
    # place() keeps or drops the stacked alternative on lpt_loads' value alone: it must be
    # exactly the stacking LPT's (same ranks, ties and float sums), scan and tree alike.
    item_w, item_e, speed, num_experts = _sorted_case(seed, num_ranks, slots,
                                                      num_ranks * slots // 3, equal_shares)
    _, _, _, want_load, _ = _pack(item_w, item_e, speed, slots, False, num_experts)
    fscratch, iscratch = workspace(num_experts, num_ranks, slots)
    load = np.full(num_ranks, np.nan)
    top = lpt_loads(item_w, speed, slots, load, fscratch, iscratch)
    np.testing.assert_array_equal(load, want_load)
    assert top == max(want_load[r] / speed[r] for r in range(num_ranks))


def _reference_trade(item_w, item_e, load, has, h, r, x, y):
    """Replica x moves from rank h to r and y from r to h: loads and counts."""
    d = item_w[x] - item_w[y]
    load[h] -= d
    load[r] += d
    for rank, gone, came in ((h, x, y), (r, y, x)):
        has[rank, item_e[gone]] -= 1
        has[rank, item_e[came]] += 1


def _reference_refine(slot_e, slot_w, load, speed, has, forbid_dup):
    """The swap search by brute force over every pair of replicas: busiest rank h (lowest index
    on ties); among swaps leaving both ranks below its time, the smallest larger time, ties to
    the lowest partner rank, then the replica of h and the partner earliest in the weight-sorted
    replica list (``items_of_slots``: the heavier one)."""
    bins, slots = slot_e.shape
    item_w = np.empty(slot_e.size)
    item_e = np.empty(slot_e.size, dtype=np.int64)
    slot_item = np.empty(slot_e.shape, dtype=np.int64)
    items_of_slots(slot_e, slot_w, item_w, item_e, slot_item, *workspace(1, bins, slots))
    owner = np.repeat(np.arange(bins), slots)[np.argsort(slot_item.ravel())]
    steps = 0
    while True:
        time = load / speed
        h = int(np.argmax(time))
        best = time[h] * (1.0 - _MIN_GAIN)
        choice = None
        for x in np.flatnonzero(owner == h):
            for y in np.flatnonzero(owner != h):
                r = owner[y]
                if forbid_dup and (has[r, item_e[x]] > 0 or has[h, item_e[y]] > 0):
                    continue
                d = item_w[x] - item_w[y]
                worse = max((load[h] - d) / speed[h], (load[r] + d) / speed[r])
                if worse < best and (choice is None or (worse, r, x, y) < choice):
                    choice = (worse, r, x, y)
        if choice is None:
            return steps, item_w, item_e, owner
        _, r, x, y = choice
        _reference_trade(item_w, item_e, load, has, h, r, x, y)
        owner[x], owner[y] = r, h
        steps += 1


def _rows(item_w, item_e, owner, bins):
    """Each rank's (load, expert) pairs, sorted."""
    return [sorted(zip(item_w[owner == r].tolist(), item_e[owner == r].tolist()))
            for r in range(bins)]


# Slots up to 10: with at most refine.SEED_SLOTS the search scores the lightest rank first.
@settings(max_examples=80, deadline=None)
@given(st.integers(2, 10), st.integers(1, 10), st.integers(0, 2**32 - 1), st.booleans())
def test_windowed_partner_search_takes_the_swaps_of_a_brute_force_search(
        num_ranks, slots, seed, equal_shares):
    rng = np.random.default_rng(seed)
    num_experts = int(rng.integers(max(1, num_ranks * slots // 2), num_ranks * slots + 1))
    item_w, item_e = _items(rng, num_ranks, slots, num_experts, equal_shares)
    speed = rng.choice([1.0, 2.0], num_ranks) if seed % 2 else np.ones(num_ranks)
    _, slot_e, slot_w, load, has = _pack(item_w, item_e, speed, slots, True, num_experts)
    ref = [a.copy() for a in (slot_e, slot_w, load, has)]
    steps = refine_swaps(slot_e, slot_w, load, speed, has, True, 10_000,
                         *workspace(1, num_ranks, slots))
    ref_steps, ref_w, ref_e, ref_owner = _reference_refine(*ref[:3], speed, ref[3], True)
    assert steps == ref_steps
    got = [sorted(zip(slot_w[r].tolist(), slot_e[r].tolist())) for r in range(num_ranks)]
    assert got == _rows(ref_w, ref_e, ref_owner, num_ranks)
    np.testing.assert_array_equal(load, ref[2])
    np.testing.assert_array_equal(has, ref[3])
    for r in range(num_ranks):  # rows come back sorted by load, ties by expert
        assert list(zip(slot_w[r].tolist(), slot_e[r].tolist())) == got[r]


def _reference_sweep(item_w, item_e, slot_item, load, speed, has, forbid_dup):
    """pair_sweep by brute force: ranks by descending time (stable), the k-th busiest paired
    with the k-th least busy; per pair the swap with the smallest larger time below the busier
    one's, ties to the first in (slot of the busier, slot of the other) order."""
    bins, slots = slot_item.shape
    inv = 1.0 / speed
    time = load * inv
    order = sorted(range(bins), key=lambda r: (-time[r], r))
    applied = 0
    for k in range(bins // 2):
        h, low = order[k], order[bins - 1 - k]
        best, choice = time[h] * (1.0 - _MIN_GAIN), None
        for i in range(slots):
            for j in range(slots):
                x, y = slot_item[h, i], slot_item[low, j]
                if forbid_dup and (has[low, item_e[x]] > 0 or has[h, item_e[y]] > 0):
                    continue
                d = item_w[x] - item_w[y]
                worse = max((load[h] - d) * inv[h], (load[low] + d) * inv[low])
                if d > 0 and worse < best:
                    best, choice = worse, (i, j)
        if choice is None:
            continue
        i, j = choice
        x, y = slot_item[h, i], slot_item[low, j]
        _reference_trade(item_w, item_e, load, has, h, low, x, y)
        slot_item[h, i], slot_item[low, j] = y, x
        applied += 1
    return applied


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32 - 1), st.booleans(),
       st.booleans())
def test_pair_sweep_takes_the_brute_force_swaps_and_never_raises_the_maximum(
        num_ranks, slots, seed, equal_shares, forbid_dup):
    item_w, item_e, speed, num_experts = _sorted_case(seed, num_ranks, slots,
                                                      num_ranks * slots // 2, equal_shares)
    rng = np.random.default_rng(seed + 1)
    # A random packing (not LPT's): far from even, so that most pairs swap.
    slot_item = rng.permutation(num_ranks * slots).reshape(num_ranks, slots)
    load = item_w[slot_item].sum(axis=1)
    has = np.zeros((num_ranks, num_experts), dtype=np.int16)
    for r in range(num_ranks):
        np.add.at(has[r], item_e[slot_item[r]], 1)
    before_max = float((load / speed).max())
    has_before = has.copy()
    ref = [a.copy() for a in (slot_item, load, has)]
    applied = pair_sweep(item_w, item_e, slot_item, load, speed, has, forbid_dup,
                         *workspace(num_experts, num_ranks, slots))
    assert applied == _reference_sweep(item_w, item_e, ref[0], ref[1], speed, ref[2], forbid_dup)
    np.testing.assert_array_equal(slot_item, ref[0])
    np.testing.assert_array_equal(load, ref[1])
    np.testing.assert_array_equal(has, ref[2])
    assert sorted(slot_item.ravel().tolist()) == list(range(num_ranks * slots))
    np.testing.assert_allclose(load, item_w[slot_item].sum(axis=1), rtol=1e-12)
    assert (load / speed).max() <= before_max
    if forbid_dup:  # no expert newly stacked on a rank
        assert (has <= np.maximum(has_before, 1)).all()


def test_pair_sweep_evens_out_the_busiest_and_least_busy_ranks():
    # Rank 0 (6 + 5) pairs with rank 3 (3 + 2): swapping 6 for 3 leaves both at 8 (as does 5
    # for 2; the first in slot order is taken). Ranks 1 and 2 (8 each) gain nothing.
    item_w = np.array([6.0, 5.0, 4.0, 4.0, 3.0, 3.0, 5.0, 2.0])
    item_e = np.arange(8)
    slot_item = np.array([[0, 1], [2, 3], [6, 5], [4, 7]])
    load = item_w[slot_item].sum(axis=1)
    has = np.zeros((4, 8), dtype=np.int16)
    for r in range(4):
        has[r, item_e[slot_item[r]]] = 1
    applied = pair_sweep(item_w, item_e, slot_item, load, np.ones(4), has, True,
                         *workspace(8, 4, 2))
    assert applied == 1
    np.testing.assert_array_equal(slot_item, [[4, 1], [2, 3], [6, 5], [0, 7]])
    np.testing.assert_array_equal(load, [8.0, 8.0, 8.0, 8.0])


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 600), st.integers(0, 2**32 - 1),
       st.sampled_from(["lognormal", "ties", "zeros", "close"]))
def test_descending_order_is_a_stable_descending_sort(n, seed, kind):
    # Every path against numpy: rank counting below _RADIX_MIN values, the radix sort on the
    # high half from there, and all eight bytes when values share the high half ("close").
    from plumb.solver.pack import descending_order

    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        values = rng.lognormal(0.0, 2.0, n)
    elif kind == "ties":
        values = rng.integers(0, 4, n).astype(np.float64) / 3.0
    elif kind == "zeros":
        values = np.where(rng.random(n) < 0.5, 0.0, -0.0) * rng.integers(0, 2, n)
    else:
        values = 1.0 + rng.integers(0, 8, n) * 2.0**-50
    order = np.empty(n, dtype=np.int64)
    descending_order(values, order, np.empty(n + RADIX_COUNTS, dtype=np.int64))
    np.testing.assert_array_equal(order, np.argsort(-values, kind="stable"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0 + 2 ** -52, 3.0, np.inf]),
                min_size=1, max_size=40))
def test_first_lightest_is_the_first_smallest_time(times):
    """The rank LPT picks: the smallest time, the lowest index among equal ones (ties and
    +inf ranks included), as numpy's argmin."""
    from plumb.solver.pack import first_lightest

    keys = np.array(times, dtype=np.float64)
    assert first_lightest(keys.view(np.int64)) == int(np.argmin(keys))
