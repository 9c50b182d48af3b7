"""Local search after packing: swaps (and pair exchanges) between the busiest rank and the others.

Each step takes the busiest rank ``h`` (largest ``load / speed``, lowest index on ties) and
swaps one of its replicas with one of another rank ``r`` so that the larger of the two
resulting times is below the current maximum, and as low as possible over all ranks (ties:
lowest ``r``, then the heavier replica of ``h``, then the heavier partner). Every accepted
swap lowers ``h`` and keeps ``r`` below the old maximum, so the sorted vector of rank times
decreases strictly: the search ends, and it never makes the maximum worse.

Finding the partner: replica weights never change, only their ranks. All replicas are kept in
one list sorted by weight (heaviest first), so the partners of a replica of weight ``a`` that
could help lie in one window of that list (``a - d`` for ``lo < d < hi``, ``hi`` bounded by
how much the lightest rank can take). The window narrows as the packing evens out and as
better swaps are found within a step: a step scores a few dozen candidates instead of every
slot of every rank.

When single swaps are stuck and ``partners > 0``, two replicas of ``h`` are exchanged with two
of one of its ``partners`` lightest ranks (same acceptance rule) and the swap search resumes.
Up to ``EXHAUSTIVE_PAIR_SLOTS`` slots per rank every pair of pairs is scored (``S**4 / 4``
candidates per partner); beyond, for each pair of ``h`` only the partner's pairs whose sum is
nearest the exchange that evens the two ranks out (binary search in its sorted pair sums:
``S**2 log S``).

Before the search, :func:`pair_sweep` evens out the k-th busiest rank against the k-th least
busy one (one swap per pair): it lifts the ranks LPT left lowest, which bound the window.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel, largest
from .mintree import tree_build, tree_min, tree_size, tree_update
from .pack import descending_order
from .workspace import (BUSY, BUSY_TREE, FLAT_ORDER, FLAT_W, INV_SPEED, LIGHT, LIGHT_TREE,
                        LIGHTEST, OWN_W1, OWN_W2, OWN_X1, OWN_X2, OWNER, OWNER_LOAD,
                        PAIR_ORDER, PAIR_SLOTS_MAX, PAIR_SUM, PAIR_W1, PAIR_W2, PAIR_Y1, PAIR_Y2,
                        POSITION, SLOTS_ITEM_E, SLOTS_ITEM_W, SLOTS_SLOT_ITEM, SORT_SCRATCH,
                        TIME)

# A swap must lower the maximum by more than this fraction of it: avoids trading float noise.
_MIN_GAIN = 1e-12
# Slots per rank up to which pair exchanges score every pair of pairs (28 x 28 per partner
# at 8 slots; 120 x 120 at 16).
EXHAUSTIVE_PAIR_SLOTS = 8
# Up to this many slots per rank the swap search scores the lightest rank's S**2 swaps before
# its window (see _best_swap); with more, they cost more than the window they narrow (20
# slots, Qwen3-30B on 8 ranks: 8% slower solves).
SEED_SLOTS = 8


@kernel
def sort_row(slot_e, slot_w, r):
    """Sorts rank ``r``'s slots by ascending load (ties by expert id), insertion sort: S is small."""
    slots = slot_e.shape[1]
    for k in range(1, slots):
        w = slot_w[r, k]
        e = slot_e[r, k]
        j = k - 1
        while j >= 0 and (slot_w[r, j] > w or (slot_w[r, j] == w and slot_e[r, j] > e)):
            slot_w[r, j + 1] = slot_w[r, j]
            slot_e[r, j + 1] = slot_e[r, j]
            j -= 1
        slot_w[r, j + 1] = w
        slot_e[r, j + 1] = e


@kernel
def items_of_slots(slot_e, slot_w, item_w, item_e, slot_item, fscratch, iscratch):
    """Lists the ``m = bins * S`` replicas of a packing heaviest first (ties by rank, then slot).

    Args:
        slot_e, slot_w: int64 / float64 [bins, S], the packing.
        item_w, item_e: float64 / int64 [m], output: weight and expert of each replica.
        slot_item: int64 [bins, S], output: the replica in each slot (index into the list).
        fscratch, iscratch: the scratch of a ``workspace`` for >= m replicas.
    """
    bins, slots = slot_e.shape
    m = bins * slots
    flat_w = fscratch[FLAT_W, :m]
    for r in range(bins):
        for k in range(slots):
            flat_w[r * slots + k] = slot_w[r, k]
    order = iscratch[FLAT_ORDER, :m]
    descending_order(flat_w, order, iscratch[SORT_SCRATCH])
    for i in range(m):
        r = order[i] // slots
        k = order[i] % slots
        item_w[i] = slot_w[r, k]
        item_e[i] = slot_e[r, k]
        slot_item[r, k] = i


@kernel
def slots_of_items(item_w, item_e, slot_item, slot_e, slot_w):
    """Writes a packing back into ``slot_e`` / ``slot_w``, each rank's slots sorted by
    ascending load (ties by expert id)."""
    bins, slots = slot_item.shape
    for r in range(bins):
        for k in range(slots):
            slot_e[r, k] = item_e[slot_item[r, k]]
            slot_w[r, k] = item_w[slot_item[r, k]]
        sort_row(slot_e, slot_w, r)


@kernel
def _best_swap(item_w, item_e, owner, owner_load, slot_item, load, speed, inv_speed, has,
               forbid_dup, h, best, max_speed, lightest, unit_speed):
    """The best single swap for the busiest rank ``h``: ``(x, y)``, the replica of ``h`` and
    its partner (indices into the sorted list), or ``(-1, -1)`` when none lands below ``best``.

    The window of useful weight differences ``d`` shrinks with the best swap found so far
    (``cur``); it is widened by a relative 1e-9 so that rounding never drops a candidate that
    ties with or beats ``cur`` (every candidate in the window is scored exactly).
    ``unit_speed``: every rank's speed is 1.0, so times are loads (the same floats: x * 1.0
    is x): a candidate is scored from ``owner_load`` (float64 [m], the load of each
    replica's rank), read in list order, and its rank is looked up only when it can win.

    With at most ``SEED_SLOTS`` slots per rank, the swaps with ``lightest`` (the rank of
    smallest load) are scored first. The answer is the same (the least time, then the lowest
    rank, replica and partner, whatever the order of scoring), but the window starts from
    their best rather than from ``best`` alone, which with hundreds of ranks and a few light
    ones spans replicas of most ranks near the top (512 experts on 512 ranks of 3 slots:
    whole solves 2x faster; where the lightest rank has no useful swap, as on skewed layers
    of tiny pieces, it saves little).
    """
    m = item_w.shape[0]
    slots = slot_item.shape[1]
    sh = speed[h]
    load_h = load[h]
    tol = 1e-9 * load_h
    cur = best
    bx = by = br = -1
    if lightest != h and slots <= SEED_SLOTS:
        r = lightest
        for k in range(slots):
            x = slot_item[h, k]
            for j in range(slots):
                y = slot_item[r, j]
                d = item_w[x] - item_w[y]
                if unit_speed:
                    worse = max(load_h - d, owner_load[y] + d)
                else:
                    worse = max((load_h - d) * inv_speed[h], (load[r] + d) * inv_speed[r])
                if _takes(worse, cur, r, x, y, br, bx, by, forbid_dup, has, h, item_e):
                    cur, bx, by, br = worse, x, y, r
    min_load = load[lightest]
    lo = load_h - cur * sh - tol           # h ends above cur unless d exceeds this
    hi = cur * max_speed - min_load + tol  # no rank can take d this large and end below cur
    for k in range(slots):
        x = slot_item[h, k]
        a = item_w[x]
        y = x + 1
        while y < m and a - item_w[y] <= lo:
            y += 1
        while y < m and a - item_w[y] < hi:
            d = a - item_w[y]
            if unit_speed:
                worse = max(load_h - d, owner_load[y] + d)
                r = owner[y] if worse <= cur else h
            else:
                r = owner[y]
                worse = max((load_h - d) * inv_speed[h], (load[r] + d) * inv_speed[r])
            if r != h and _takes(worse, cur, r, x, y, br, bx, by, forbid_dup, has, h, item_e):
                cur, bx, by, br = worse, x, y, r
                lo = load_h - cur * sh - tol
                hi = cur * max_speed - min_load + tol
            y += 1
    return bx, by


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _takes(worse, cur, r, x, y, br, bx, by, forbid_dup, has, h, item_e):
    """Whether swapping replica ``x`` of ``h`` with ``y`` of ``r`` (time ``worse``) replaces
    the best swap so far (``cur``, rank ``br``, replicas ``bx`` / ``by``; ``br`` -1 when
    none): a lower time, or on equal times a lower rank, replica, then partner; never one that
    puts an expert twice on a rank when ``forbid_dup``."""
    better = worse < cur or (br >= 0 and worse == cur and (
        r < br or (r == br and (x < bx or (x == bx and y < by)))))
    return better and not (forbid_dup and (has[r, item_e[x]] > 0 or has[h, item_e[y]] > 0))


@kernel
def _trade(item_e, item_w, load, has, h, r, x, y):
    """Books replica ``x`` moving from rank ``h`` to ``r`` and ``y`` from ``r`` to ``h`` in the
    rank loads and replica counts (the caller moves them between slots)."""
    d = item_w[x] - item_w[y]
    load[h] -= d
    load[r] += d
    has[h, item_e[x]] -= 1
    has[h, item_e[y]] += 1
    has[r, item_e[y]] -= 1
    has[r, item_e[x]] += 1


@kernel
def _apply_swap(item_e, item_w, owner, position, slot_item, load, has, x, y):
    """Exchanges replicas ``x`` and ``y`` between their ranks, keeping loads and counts."""
    h = owner[x]
    r = owner[y]
    _trade(item_e, item_w, load, has, h, r, x, y)
    kx = position[x]
    ky = position[y]
    slot_item[h, kx] = y
    slot_item[r, ky] = x
    owner[x], owner[y] = r, h
    position[x], position[y] = ky, kx


@kernel
def _movable_pairs(item_w, item_e, slot_item, has, forbid_dup, source, target, pair_w1,
                   pair_w2, pair_1, pair_2):
    """Lists the pairs of ``source``'s replicas (slot order) that may move to ``target``
    (with ``forbid_dup``: neither expert already there): weights into ``pair_w1`` /
    ``pair_w2``, replicas into ``pair_1`` / ``pair_2``; returns how many."""
    slots = slot_item.shape[1]
    count = 0
    for k in range(slots):
        for m in range(k + 1, slots):
            first = slot_item[source, k]
            second = slot_item[source, m]
            if forbid_dup and (has[target, item_e[first]] > 0 or
                               has[target, item_e[second]] > 0):
                continue
            pair_w1[count] = item_w[first]
            pair_w2[count] = item_w[second]
            pair_1[count] = first
            pair_2[count] = second
            count += 1
    return count


@kernel
def _first_below(sums, order, count, value):
    """The first position k < count with ``sums[order[k]] < value`` (``count`` if none);
    ``order`` lists the sums by descending value."""
    lo = 0
    hi = count
    while lo < hi:
        mid = (lo + hi) // 2
        if sums[order[mid]] >= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@kernel
def _best_pair(item_w, item_e, slot_item, load, inv_speed, has, forbid_dup, h, best, partners,
               lightest, time, fscratch, iscratch):
    """The best two-for-two exchange of ``h`` with one of its ``partners`` lightest ranks:
    returns (x1, x2, y1, y2) replica indices, x1 = -1 when none lands below ``best``.
    Beyond ``EXHAUSTIVE_PAIR_SLOTS`` slots per rank, for each pair of ``h`` only the
    partner's two pairs whose sums lie nearest either side of the sum that evens the two ranks
    out are scored. ``time`` float64 [bins] and the ``workspace`` rows: scratch."""
    bins, slots = slot_item.shape
    for r in range(bins):
        time[r] = load[r] * inv_speed[r]
    found = _lightest(time, h, partners, lightest)
    own_w1, own_w2 = fscratch[OWN_W1], fscratch[OWN_W2]
    own_x1, own_x2 = iscratch[OWN_X1], iscratch[OWN_X2]
    pair_w1, pair_w2 = fscratch[PAIR_W1], fscratch[PAIR_W2]
    pair_y1, pair_y2 = iscratch[PAIR_Y1], iscratch[PAIR_Y2]
    # The partner's pair sums, and the pairs by descending sum (sorted only beyond the
    # exhaustive limit; the sort scratch is free once the search runs).
    sums, order = fscratch[PAIR_SUM], iscratch[PAIR_ORDER]
    exhaustive = slots <= EXHAUSTIVE_PAIR_SLOTS
    best_x1 = best_x2 = best_y1 = best_y2 = -1
    inv_h = inv_speed[h]
    for t in range(found):
        r = lightest[t]
        inv_r = inv_speed[r]
        # Each side's movable pairs listed once: the loops below are arithmetic only.
        own = _movable_pairs(item_w, item_e, slot_item, has, forbid_dup, h, r, own_w1, own_w2,
                             own_x1, own_x2)
        theirs = _movable_pairs(item_w, item_e, slot_item, has, forbid_dup, r, h, pair_w1,
                                pair_w2, pair_y1, pair_y2)
        if not exhaustive:
            for q in range(theirs):
                sums[q] = pair_w1[q] + pair_w2[q]
            descending_order(sums[:theirs], order[:theirs], iscratch[SORT_SCRATCH])
        # Moving d from h to r leaves both at the same time when d is this.
        target = (load[h] * inv_h - load[r] * inv_r) / (inv_h + inv_r)
        for p in range(own):
            a = own_w1[p] + own_w2[p]
            if exhaustive:
                lo, hi = 0, theirs
            else:
                below = _first_below(sums, order, theirs, a - target)
                lo, hi = max(below - 1, 0), min(below + 1, theirs)
            for k in range(lo, hi):
                q = k if exhaustive else order[k]
                d = a - pair_w1[q] - pair_w2[q]
                worse = max((load[h] - d) * inv_h, (load[r] + d) * inv_r)
                if d > 0 and worse < best:
                    best = worse
                    best_x1, best_x2 = own_x1[p], own_x2[p]
                    best_y1, best_y2 = pair_y1[q], pair_y2[q]
    return best_x1, best_x2, best_y1, best_y2


@kernel
def pair_sweep(item_w, item_e, slot_item, load, speed, has, forbid_dup, fscratch, iscratch):
    """One pass that pairs the k-th busiest rank with the k-th least busy one (k < bins / 2)
    and applies the single swap between the two that lowers the larger of their times most,
    if it lowers the busier one's. Arrays as in :func:`refine_items`, updated in place;
    returns the swaps applied.

    Why before the swap search: the search's window of useful weight differences reaches up
    to what the least busy rank can take, so right after LPT, with some ranks far below the
    rest, every step scores many partners it cannot use. Lifting the bottom half at the cost
    of ``S**2`` candidates per pair narrows every later window (DeepSeek-V3 decode shapes,
    64 ranks: a third fewer swaps, each cheaper). A swap leaves both ranks below the busier
    one's old time, so the maximum never grows.
    """
    bins, slots = slot_item.shape
    time = fscratch[TIME, :bins]
    for r in range(bins):
        time[r] = load[r] * (1.0 / speed[r])
    order = iscratch[LIGHTEST, :bins]
    descending_order(time, order, iscratch[SORT_SCRATCH])
    applied = 0
    for k in range(bins // 2):
        h = order[k]
        low = order[bins - 1 - k]
        inv_h = 1.0 / speed[h]
        inv_low = 1.0 / speed[low]
        best = time[h] * (1.0 - _MIN_GAIN)
        best_x = best_y = -1
        for i in range(slots):
            x = slot_item[h, i]
            if forbid_dup and has[low, item_e[x]] > 0:
                continue
            for j in range(slots):
                y = slot_item[low, j]
                d = item_w[x] - item_w[y]
                worse = max((load[h] - d) * inv_h, (load[low] + d) * inv_low)
                if d > 0.0 and worse < best and not (forbid_dup and has[h, item_e[y]] > 0):
                    best, best_x, best_y = worse, i, j
        if best_x < 0:
            continue
        x = slot_item[h, best_x]
        y = slot_item[low, best_y]
        _trade(item_e, item_w, load, has, h, low, x, y)
        slot_item[h, best_x] = y
        slot_item[low, best_y] = x
        applied += 1
    return applied


@kernel
def _lightest(time, skip, count, out):
    """Writes the (up to) ``count`` ranks of smallest time other than ``skip`` into ``out``,
    ascending; returns how many."""
    found = 0
    for r in range(time.shape[0]):
        if r == skip or (found == count and time[r] >= time[out[count - 1]]):
            continue
        j = found if found < count else count - 1
        found = min(found + 1, count)
        while j > 0 and time[out[j - 1]] > time[r]:
            out[j] = out[j - 1]
            j -= 1
        out[j] = r
    return found


@kernel
def refine_items(item_w, item_e, slot_item, load, speed, has, forbid_dup, max_swaps, max_pairs,
                 partners, floor, fscratch, iscratch):
    """Improves a packing given as a weight-sorted replica list, in place.

    Args:
        item_w: float64 [m], replica weights, descending.
        item_e: int64 [m], their experts.
        slot_item: int64 [bins, S], in/out: the replica in each slot.
        load: float64 [bins], in/out: rank loads (consistent with ``slot_item``).
        speed: float64 [bins], relative rank speeds.
        has: int [bins, >= n], in/out: replicas of each expert per rank.
        forbid_dup: only accept moves that put no expert twice on one rank.
        max_swaps, max_pairs: bounds on accepted swaps and pair exchanges (a safety net; the
            search normally stops earlier).
        partners: lightest ranks tried for pair exchanges when swaps are stuck (0: none;
            none either beyond ``PAIR_SLOTS_MAX`` slots per rank, the workspace's limit).
        floor: stop once the busiest rank's time is at most this (a lower bound, or a time
            the caller cannot use anything below).
        fscratch, iscratch: the scratch of a ``workspace`` for >= m replicas on >= bins
            ranks.

    Returns:
        (swaps, pair exchanges) applied.
    """
    bins, slots = slot_item.shape
    m = item_w.shape[0]
    owner = iscratch[OWNER, :m]
    position = iscratch[POSITION, :m]
    owner_load = fscratch[OWNER_LOAD, :m]
    for r in range(bins):
        for k in range(slots):
            owner[slot_item[r, k]] = r
            position[slot_item[r, k]] = k
            owner_load[slot_item[r, k]] = load[r]
    size = tree_size(bins)
    # busy: min-tree of -time, so its root is the busiest rank (lowest index on ties).
    busy = fscratch[BUSY, :size]
    busy_tree = iscratch[BUSY_TREE, :size]
    light = fscratch[LIGHT, :size]
    light_tree = iscratch[LIGHT_TREE, :size]
    busy[bins:] = np.inf
    light[bins:] = np.inf
    # Times are load * (1 / speed) throughout the search: a multiply instead of a divide per
    # candidate, and the same rounding everywhere.
    inv_speed = fscratch[INV_SPEED, :bins]
    unit_speed = np.bool_(True)
    for r in range(bins):
        unit_speed = unit_speed and speed[r] == 1.0
        inv_speed[r] = 1.0 / speed[r]
        busy[r] = -load[r] * inv_speed[r]
        light[r] = load[r]
    tree_build(busy, busy_tree)
    tree_build(light, light_tree)
    max_speed = largest(speed)
    lightest = iscratch[LIGHTEST, :bins]
    time = fscratch[TIME, :bins]
    swaps = 0
    pairs = 0
    while swaps < max_swaps:
        h = tree_min(busy_tree)
        if -busy[h] <= floor:
            break
        best = -busy[h] * (1.0 - _MIN_GAIN)
        x, y = _best_swap(item_w, item_e, owner, owner_load, slot_item, load, speed,
                          inv_speed, has, forbid_dup, h, best, max_speed,
                          tree_min(light_tree), unit_speed)
        if x >= 0:
            partner = owner[y]
            _apply_swap(item_e, item_w, owner, position, slot_item, load, has, x, y)
            swaps += 1
        elif partners > 0 and bins > 1 and slots <= PAIR_SLOTS_MAX and pairs < max_pairs:
            x1, x2, y1, y2 = _best_pair(item_w, item_e, slot_item, load, inv_speed, has,
                                        forbid_dup, h, best, partners, lightest, time,
                                        fscratch, iscratch)
            if x1 < 0:
                break
            partner = owner[y1]
            _apply_swap(item_e, item_w, owner, position, slot_item, load, has, x1, y1)
            _apply_swap(item_e, item_w, owner, position, slot_item, load, has, x2, y2)
            pairs += 1
        else:
            break
        for r in (h, partner):
            busy[r] = -load[r] * inv_speed[r]
            light[r] = load[r]
            tree_update(busy, busy_tree, r)
            tree_update(light, light_tree, r)
            for k in range(slots):
                owner_load[slot_item[r, k]] = load[r]
    return swaps, pairs


@kernel
def refine_slots(slot_e, slot_w, load, speed, has, forbid_dup, max_swaps, max_pairs, partners,
                 floor, fscratch, iscratch):
    """:func:`refine_items` on a packing given as slot arrays (updated in place; each rank's
    slots sorted by load on return); ``fscratch`` / ``iscratch``: the scratch of a
    ``workspace`` for >= bins * S replicas on >= bins ranks."""
    bins, slots = slot_e.shape
    m = slot_e.size
    item_w = fscratch[SLOTS_ITEM_W, :m]
    item_e = iscratch[SLOTS_ITEM_E, :m]
    slot_item = iscratch[SLOTS_SLOT_ITEM, :m].reshape((bins, slots))
    items_of_slots(slot_e, slot_w, item_w, item_e, slot_item, fscratch, iscratch)
    done = refine_items(item_w, item_e, slot_item, load, speed, has, forbid_dup, max_swaps,
                        max_pairs, partners, floor, fscratch, iscratch)
    slots_of_items(item_w, item_e, slot_item, slot_e, slot_w)
    return done


@kernel
def refine_swaps(slot_e, slot_w, load, speed, has, forbid_dup, max_steps, fscratch, iscratch):
    """Improves a packing in place by single swaps.

    Args:
        slot_e, slot_w: int64 / float64 [bins, S], expert and load in each slot.
        load: float64 [bins], rank loads; speed: float64 [bins], relative rank speeds.
        has: int [bins, >= n], replicas of each expert per rank (kept up to date).
        forbid_dup: only accept swaps that put no expert twice on one rank.
        max_steps: bound on accepted swaps (a safety net; the search normally stops earlier).
        fscratch, iscratch: the scratch of a ``workspace`` for >= bins * S replicas on
            >= bins ranks.

    Returns:
        Number of swaps applied. On return each rank's slots are sorted by load.
    """
    return refine_slots(slot_e, slot_w, load, speed, has, forbid_dup, max_steps, np.int64(0),
                        np.int64(0), 0.0, fscratch, iscratch)[0]
