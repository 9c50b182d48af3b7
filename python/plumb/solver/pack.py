"""Packing: replicas onto ranks with exactly ``S`` slots each (capacity-constrained LPT).

Items go heaviest first to the rank with the smallest ``load / speed`` that still has a free slot
and does not hold that expert yet (ties: lower rank index, as DeepSeek's ``balanced_packing``).
When the only ranks with room already hold the expert, the item is stacked there and
:func:`repair_duplicates` swaps it away afterwards.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel
from .mintree import tree_build, tree_min, tree_size, tree_update
from .workspace import (ASIDE, FILL, INV_SPEED, ORDER, RADIX_COUNTS, RANK_KEYS, RANK_TREE, SHARE,
                        SORT_SCRATCH, copy_into, workspace)


# Below this many values each value's rank is counted directly (n**2 comparisons that the
# compiler vectorises, no data-dependent branch); from here on the radix sort is faster
# (measured at 96 / 128 values: 1.7 / 2.7 us counting, 2.0 / 2.4 us radix). At most
# RADIX_COUNTS: the counting takes 2 * m of the scratch.
_RADIX_MIN = 128
# Up to this many ranks LPT finds the lightest by scanning their times (vectorised, about half
# the time per item at 4-8 ranks); from 16 on the tournament tree is as fast or faster.
SCAN_BINS = 8
# The radix sort runs on the top four bytes of the keys first: sign, exponent and 20 mantissa
# bits, which already order loads that are not within a relative 1e-6 of each other. A key's
# half and its index share one word (index in the low half), sorted on bytes _TOP_BYTE..7.
_TOP_BYTE = 4
_INDEX_MASK = np.uint64(0xFFFFFFFF)
_MAX_PACKED = int(_INDEX_MASK)


@kernel
def descending_order(values, order, scratch):
    """Writes into ``order`` the indices of ``values`` by descending value, ties by index.

    ``values`` float64 [m], non-negative (no NaN); ``order`` int64 [m]; ``scratch`` int64
    [m + RADIX_COUNTS]. A stable sort, several times faster than ``np.argsort`` at these
    sizes: rank counting for short inputs, else an LSD radix sort on the float bits (the high
    half first; the low half too only when two values share the high half).
    """
    n = values.shape[0]
    if scratch.shape[0] < n + RADIX_COUNTS:
        raise ValueError("descending_order: scratch must hold len(values) + 256 int64")
    if n < _RADIX_MIN:
        _rank_descending(values, order, scratch)
        return
    if n > _MAX_PACKED:
        raise ValueError("descending_order: at most 2**32 - 1 values")
    bits = values.view(np.uint64)
    words = order.view(np.uint64)
    spare = scratch[:n].view(np.uint64)
    count = scratch[n:n + RADIX_COUNTS]
    for i in range(n):
        words[i] = (_radix_key(bits[i]) & ~_INDEX_MASK) | np.uint64(i)
    _sort_words(words, spare, count)
    shared = False
    for i in range(1, n):
        shared = shared or (words[i] ^ words[i - 1]) <= _INDEX_MASK
    _unpack(words, order)
    if not shared:
        return
    # Keys sharing the high half are in index order: right unless their low halves differ.
    for i in range(1, n):
        if values[order[i - 1]] < values[order[i]]:
            _sort_fully(bits, words, spare, count)
            _unpack(words, order)
            return


@kernel
def _sort_fully(bits, words, spare, count):
    """All 64 bits of the keys: the low halves first, then the high halves in that order
    (stable passes keep it on ties). ``words`` (uint64 [n]) ends holding each key's high
    half above its index, sorted; ``spare`` uint64 [n] and ``count`` int64 [RADIX_COUNTS]:
    scratch; ``bits``: the values' bits (uint64 [n])."""
    n = bits.shape[0]
    for i in range(n):
        words[i] = (_radix_key(bits[i]) << np.uint64(32)) | np.uint64(i)
    _sort_words(words, spare, count)
    for k in range(n):
        i = words[k] & _INDEX_MASK
        words[k] = (_radix_key(bits[i]) & ~_INDEX_MASK) | i
    _sort_words(words, spare, count)


@kernel
def _unpack(words, order):
    """order[i] (int64 [n]) = the index in words[i]'s low half (uint64 [n]; may share
    ``order``'s memory: each word is read before its slot is written)."""
    for i in range(words.shape[0]):
        order[i] = np.int64(words[i] & _INDEX_MASK)


@kernel
def _rank_descending(values, order, scratch):
    """:func:`descending_order` by counting, for each value, the larger values; ``scratch``
    int64 [>= 2m].

    Equal values share that count: they fill the positions from it on in index order (a
    second count per value of the equal ones before it would double the comparisons)."""
    n = values.shape[0]
    larger = scratch[:n]
    placed = scratch[n:2 * n]
    for i in range(n):
        v = values[i]
        count = 0
        for j in range(n):
            count += np.int64(values[j] > v)
        larger[i] = count
        placed[i] = 0
    for i in range(n):
        first = larger[i]
        order[first + placed[first]] = i
        placed[first] += 1


@kernel
def _radix_key(bits):
    """The sort key of a non-negative double given as its bits: the bits complemented
    (ascending keys are descending values); -0.0 is mapped to 0.0 first (it compares equal)."""
    return ~bits if (bits << np.uint64(1)) != 0 else ~np.uint64(0)


@kernel
def _sort_words(words, spare, count):
    """Stable LSD radix sort of ``words`` (uint64 [n], in place) on their high half, one
    byte per pass; ``spare`` uint64 [n] and ``count`` int64 [RADIX_COUNTS]: scratch. Each
    pass reads one array in order (a key's half and its index travel in one word); a pass
    where every word has the same byte is skipped."""
    n = words.shape[0]
    src, dst = words, spare
    in_words = True
    for byte in range(_TOP_BYTE, 8):
        shift = np.uint64(8 * byte)
        count[:] = 0
        for i in range(n):
            count[(src[i] >> shift) & np.uint64(255)] += 1
        if count[(src[0] >> shift) & np.uint64(255)] == n:
            continue
        total = 0
        for digit in range(RADIX_COUNTS):
            here = count[digit]
            count[digit] = total
            total += here
        for i in range(n):
            digit = (src[i] >> shift) & np.uint64(255)
            dst[count[digit]] = src[i]
            count[digit] += 1
        src, dst = dst, src
        in_words = not in_words
    if not in_words:
        copy_into(words, spare)


@njit(cache=True, nogil=True)
def heaviest_first(values):
    """int64 [m]: :func:`descending_order` of ``values`` (float64 [m], >= 0) in a new array."""
    order = np.empty(values.shape[0], dtype=np.int64)
    descending_order(values, order, np.empty(values.shape[0] + RADIX_COUNTS, dtype=np.int64))
    return order


@kernel
def sorted_items(weights, counts, item_w, item_e, fscratch, iscratch):
    """Expands ``counts[e]`` replicas of each expert (each ``w_e / c_e``) into ``item_w`` /
    ``item_e`` (float64 / int64 [sum(counts)]), heaviest first; ``fscratch`` /
    ``iscratch``: the scratch of a ``workspace`` for >= n experts.

    An expert's replicas weigh the same: sorting the n experts orders all the items (ties by
    expert, as a stable sort of the expanded items would).
    """
    n = weights.shape[0]
    share = fscratch[SHARE, :n]
    for e in range(n):
        share[e] = weights[e] / counts[e]
    order = iscratch[ORDER, :n]
    descending_order(share, order, iscratch[SORT_SCRATCH])
    expand_items(weights, counts, order, item_w, item_e)


@kernel
def expand_items(weights, counts, order, item_w, item_e):
    """:func:`sorted_items` with the experts' order given: ``order`` int64 [n] lists them by
    descending ``w_e / c_e`` (ties by index)."""
    i = 0
    for e in order:
        share = weights[e] / counts[e]
        for _ in range(counts[e]):
            item_w[i] = share
            item_e[i] = e
            i += 1


@njit(cache=True, nogil=True)
def lpt_pack_counted(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has):
    """Greedy LPT packing of ``m = bins * S`` items.

    Args:
        item_w: float64 [m], load of each item (one replica).
        item_e: int64 [m], expert of each item, in [0, n).
        speed: float64 [bins], relative speed of each bin (rank).
        forbid_dup: whether a bin may hold two replicas of one expert only as a last resort.
        slot_e: int64 [bins, S], output: expert in each slot.
        slot_w: float64 [bins, S], output: load in each slot.
        load: float64 [bins], output: load of each bin.
        has: int [bins, n] (int16 or wider), zeroed by the caller; output: replicas of each
            expert per bin.

    Returns:
        (stacked, set_aside): how many items had to be stacked on a bin already holding their
        expert, and how many times ``forbid_dup`` passed over the lightest open bin (0 means
        the packing is the one without ``forbid_dup``).
    """
    order = heaviest_first(item_w)
    bins, slots = slot_e.shape
    fscratch, iscratch = workspace(1, bins, slots)
    return lpt_place(item_w[order], item_e[order], speed, forbid_dup, slot_e, slot_w, load, has,
                     np.empty(slot_e.shape, dtype=np.int64), fscratch, iscratch)


@kernel
def lpt_place(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has, slot_item, fscratch,
              iscratch):
    """:func:`lpt_pack_counted` of items already in placement order (heaviest first, ties by
    the caller's order); ``slot_item`` int64 [bins, S], output: the item in each slot;
    ``fscratch`` / ``iscratch``: the scratch of a ``workspace`` for >= bins ranks.

    Each rank's slots come out sorted by ascending load: a rank receives its items heaviest
    first and fills its slots from the last one. Times are ``load * (1 / speed)``, as in the
    swap search.
    """
    bins, slots = slot_e.shape
    if bins <= SCAN_BINS:
        return _lpt_scan(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has,
                         slot_item, fscratch[RANK_KEYS, :bins], iscratch[FILL, :bins],
                         fscratch[INV_SPEED, :bins])
    size = tree_size(bins)
    keys = fscratch[RANK_KEYS, :size]
    tree = iscratch[RANK_TREE, :size]
    aside = iscratch[ASIDE, :bins]
    fill = iscratch[FILL, :bins]
    inv_speed = fscratch[INV_SPEED, :bins]
    keys[bins:] = np.inf
    _reset_ranks(speed, load, keys, fill, inv_speed)
    # First round without the tree (the first smallest time is rank i's zero).
    first = _first_round(item_w, inv_speed)
    for i in range(first):
        e = item_e[i]
        fill[i] = 1
        slot_e[i, slots - 1] = e
        slot_w[i, slots - 1] = item_w[i]
        slot_item[i, slots - 1] = i
        load[i] = item_w[i]
        has[i, e] += 1
        keys[i] = load[i] * inv_speed[i] if slots > 1 else np.inf
    tree_build(keys, tree)
    stacked = 0
    set_aside = 0
    for i in range(first, item_w.shape[0]):
        e = item_e[i]
        r = tree_min(tree)
        # Mask the lightest open ranks that already hold e until one does not.
        num_aside = 0
        while forbid_dup and keys[r] < np.inf and has[r, e] > 0:
            aside[num_aside] = r
            num_aside += 1
            keys[r] = np.inf
            tree_update(keys, tree, r)
            r = tree_min(tree)
        set_aside += num_aside
        if keys[r] == np.inf:
            r = aside[0]
            stacked += 1
        fill[r] += 1
        slot_e[r, slots - fill[r]] = e
        slot_w[r, slots - fill[r]] = item_w[i]
        slot_item[r, slots - fill[r]] = i
        load[r] += item_w[i]
        has[r, e] += 1
        for k in range(num_aside):
            other = aside[k]
            if other != r:
                keys[other] = load[other] * inv_speed[other]
                tree_update(keys, tree, other)
        keys[r] = load[r] * inv_speed[r] if fill[r] < slots else np.inf
        tree_update(keys, tree, r)
    return stacked, set_aside


@kernel
def _lpt_scan(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has, slot_item, keys,
              fill, inv_speed):
    """:func:`lpt_place` by scanning the ranks' times for the lightest, with ``keys`` float64
    / ``fill`` int64 / ``inv_speed`` float64 [bins] as scratch. The same packing and counts as
    the tree: the first smallest time wins, and when that rank holds the expert, the lightest
    open rank without it (lowest index on ties), with every open rank before it in that order
    counted as set aside."""
    bins, slots = slot_e.shape
    _reset_ranks(speed, load, keys, fill, inv_speed)
    # Loads start at +0.0 and only grow: the times are never -0.0 (see first_lightest).
    bits = keys.view(np.int64)
    stacked = 0
    set_aside = 0
    first = _first_round(item_w, inv_speed)
    for i in range(item_w.shape[0]):
        e = item_e[i]
        r = i if i < first else first_lightest(bits)
        if forbid_dup and has[r, e] > 0:
            free = _lightest_without(keys, has, e)
            stacked += free < 0
            # Every open rank holds e: stack on the lightest.
            r = free if free >= 0 else r
            set_aside += _passed_over(keys, has, e, r)
        fill[r] += 1
        k = slots - fill[r]
        slot_e[r, k] = e
        slot_w[r, k] = item_w[i]
        slot_item[r, k] = i
        load[r] += item_w[i]
        has[r, e] += 1
        keys[r] = load[r] * inv_speed[r] if fill[r] < slots else np.inf
    return stacked, set_aside


@kernel
def _first_round(item_w, inv_speed):
    """How many leading items (float64 [m], placement order) LPT gives to the empty ranks
    0, 1, ... in turn, without looking for the lightest: while the items weigh something,
    every rank before rank i already has a positive time (``inv_speed`` float64 [bins])."""
    first = 0
    while (first < min(inv_speed.shape[0], item_w.shape[0])
           and item_w[first] * inv_speed[first] > 0.0):
        first += 1
    return first


@kernel
def lpt_loads(item_w, speed, slots, load, fscratch, iscratch):
    """The rank loads (``load``, float64 [bins]) of the LPT packing that may stack replicas
    (:func:`lpt_place` with ``forbid_dup`` False: the same ranks, ties and sums) of items
    already in placement order, without listing the slots; returns its largest
    ``load / speed``.

    Why: the stacked alternative of ``plumb.solver.place`` is kept only when its LPT alone
    beats the refined packing, which on most layers it does not; its value decides that
    without the copy of the items, the reset of the replica counts and the slot bookkeeping
    (0.76-0.87x the time of :func:`lpt_place` on Qwen3-30B and DeepSeek-V3 decode layers).
    """
    bins = speed.shape[0]
    size = tree_size(bins)
    keys = fscratch[RANK_KEYS, :size]
    fill = iscratch[FILL, :bins]
    inv_speed = fscratch[INV_SPEED, :bins]
    keys[bins:] = np.inf
    _reset_ranks(speed, load, keys, fill, inv_speed)
    if bins <= SCAN_BINS:
        bits = keys[:bins].view(np.int64)
        for i in range(item_w.shape[0]):
            _lpt_add(item_w[i], first_lightest(bits), slots, load, keys, fill, inv_speed)
    else:
        tree = iscratch[RANK_TREE, :size]
        tree_build(keys, tree)
        for i in range(item_w.shape[0]):
            r = tree_min(tree)
            _lpt_add(item_w[i], r, slots, load, keys, fill, inv_speed)
            tree_update(keys, tree, r)
    return time_max(load, speed)


@kernel
def time_max(load, speed):
    """The busiest rank's ``load / speed`` (float64 [bins] each)."""
    top = 0.0
    for r in range(load.shape[0]):
        top = max(top, load[r] / speed[r])
    return top


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def first_lightest(bits):
    """The first rank of smallest time, from the times' bit patterns (int64 [bins]; the
    times are non-negative or +inf, never -0.0, so they order as their bits: integer
    compares). One pass keeping the minimum and its first index by selects, no branch: a
    vectorised minimum then a scan for it ended on an unpredictable branch for most items
    (LPT on 8 ranks, dsv3-prefill's nodes and qwen3: whole solves 1.07-1.15x faster)."""
    low = bits[0]
    first = 0
    for r in range(1, bits.shape[0]):
        smaller = bits[r] < low
        first = r if smaller else first
        low = bits[r] if smaller else low
    return first


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _lpt_add(weight, r, slots, load, keys, fill, inv_speed):
    """Books one item of ``weight`` on rank ``r`` (:func:`lpt_loads`): its load, slots used
    and key (+inf once full)."""
    fill[r] += 1
    load[r] += weight
    keys[r] = load[r] * inv_speed[r] if fill[r] < slots else np.inf


@kernel
def _lightest_without(keys, has, e):
    """The open rank (``keys`` < inf) of smallest key that holds no replica of ``e``, lowest
    index on ties; -1 if every open rank holds one."""
    best = -1
    for r in range(keys.shape[0]):
        if keys[r] < np.inf and has[r, e] == 0 and (best < 0 or keys[r] < keys[best]):
            best = r
    return best


@kernel
def _passed_over(keys, has, e, chosen):
    """Open ranks holding ``e`` that come before ``chosen`` in (key, index) order: the ranks
    the tree version sets aside (all open ranks when ``chosen`` holds ``e`` itself)."""
    stacking = has[chosen, e] > 0
    count = 0
    for r in range(keys.shape[0]):
        if keys[r] < np.inf and has[r, e] > 0 and (stacking or keys[r] < keys[chosen] or (
                keys[r] == keys[chosen] and r < chosen)):
            count += 1
    return count


@kernel
def _reset_ranks(speed, load, keys, fill, inv_speed):
    """Empty ranks before a packing: zero ``load`` / ``keys`` / ``fill`` and ``inv_speed`` =
    1 / ``speed`` (float64 / float64 / int64 / float64 [>= bins], speed float64 [bins])."""
    for r in range(speed.shape[0]):
        load[r] = 0.0
        keys[r] = 0.0
        fill[r] = 0
        inv_speed[r] = 1.0 / speed[r]


@kernel
def repair_duplicates(slot_e, slot_w, load, speed, has):
    """Swaps stacked replicas away so that no bin holds an expert twice.

    Each duplicate is swapped with the item of another bin that raises the larger of the two
    bins' ``load / speed`` least, among swaps that create no new duplicate. Arrays as in
    :func:`lpt_pack_counted`, updated in place.

    Returns:
        Duplicates left (0 unless no valid swap existed).
    """
    bins, slots = slot_e.shape
    left = 0
    for r in range(bins):
        for k in range(slots):
            e = slot_e[r, k]
            if has[r, e] < 2:
                continue
            best = np.inf
            # Typed: while numba infers this loop it would also compile swap_items for a
            # literal -1 (plumb.solver.jit).
            best_r = np.int64(-1)
            best_k = np.int64(-1)
            for r2 in range(bins):
                if r2 == r or has[r2, e] > 0:
                    continue
                for k2 in range(slots):
                    if has[r, slot_e[r2, k2]] > 0:
                        continue
                    d = slot_w[r, k] - slot_w[r2, k2]
                    worse = max((load[r] - d) / speed[r], (load[r2] + d) / speed[r2])
                    if worse < best:
                        best = worse
                        best_r = r2
                        best_k = k2
            if best_r < 0:
                left += 1
                continue
            swap_items(slot_e, slot_w, load, has, r, k, best_r, best_k)
    return left


@kernel
def swap_items(slot_e, slot_w, load, has, r, k, r2, k2):
    """Exchanges slot ``k`` of bin ``r`` with slot ``k2`` of bin ``r2``, keeping loads and counts."""
    e = slot_e[r, k]
    f = slot_e[r2, k2]
    d = slot_w[r, k] - slot_w[r2, k2]
    load[r] -= d
    load[r2] += d
    has[r, e] -= 1
    has[r, f] += 1
    has[r2, f] -= 1
    has[r2, e] += 1
    slot_e[r, k], slot_e[r2, k2] = f, e
    slot_w[r, k], slot_w[r2, k2] = slot_w[r2, k2], slot_w[r, k]
