"""Packing: replicas onto ranks with exactly ``S`` slots each (capacity-constrained LPT).

Items go heaviest first to the rank with the smallest ``load / speed`` that still has a free slot
and does not hold that expert yet (ties: lower rank index, as DeepSeek's ``balanced_packing``).
When the only ranks with room already hold the expert, the item is stacked there and
:func:`repair_duplicates` swaps it away afterwards.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .heap import heap_pop, heap_push, heap_replace_top


# Runs this short are insertion-sorted before merging.
_RUN = 8


@njit(cache=True, nogil=True)
def descending_order(values, order, scratch):
    """Writes into ``order`` the indices of ``values`` by descending value, ties by index.

    A stable bottom-up merge sort (insertion-sorted runs first); several times faster than
    ``np.argsort`` at the few hundred items of one packing. ``values`` float64 [m];
    ``order`` and ``scratch`` int64 [m].
    """
    n = values.shape[0]
    for start in range(0, n, _RUN):
        end = min(start + _RUN, n)
        for k in range(start, end):
            v = values[k]
            j = k - 1
            while j >= start and values[order[j]] < v:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = k
    width = _RUN
    in_order = True
    while width < n:
        src, dst = (order, scratch) if in_order else (scratch, order)
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            a = lo
            b = mid
            for k in range(lo, hi):
                if b >= hi or (a < mid and values[src[a]] >= values[src[b]]):
                    dst[k] = src[a]
                    a += 1
                else:
                    dst[k] = src[b]
                    b += 1
        in_order = not in_order
        width *= 2
    if not in_order:
        order[:] = scratch


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
        has: int64 [bins, n], zeroed by the caller; output: replicas of each expert per bin.

    Returns:
        (stacked, set_aside): how many items had to be stacked on a bin already holding their
        expert, and how many times ``forbid_dup`` passed over the lightest open bin (0 means
        the packing is the one without ``forbid_dup``).
    """
    bins, slots = slot_e.shape
    order = np.empty(item_w.shape[0], dtype=np.int64)
    descending_order(item_w, order, np.empty(item_w.shape[0], dtype=np.int64))
    keys = np.empty(bins, dtype=np.float64)
    ties = np.empty(bins, dtype=np.int64)
    aside = np.empty(bins, dtype=np.int64)
    fill = np.zeros(bins, dtype=np.int64)
    size = 0
    for r in range(bins):
        load[r] = 0.0
        size = heap_push(keys, ties, size, 0.0, r)
    stacked = 0
    set_aside = 0
    for i in order:
        e = item_e[i]
        # Set aside the lightest ranks that already hold e; the next one keeps its heap slot.
        num_aside = 0
        while size > 0 and forbid_dup and has[ties[0], e] > 0:
            aside[num_aside] = ties[0]
            num_aside += 1
            size = heap_pop(keys, ties, size)
        set_aside += num_aside
        on_top = size > 0
        if on_top:
            r = ties[0]
        else:
            r = aside[0]
            stacked += 1
        slot_e[r, fill[r]] = e
        slot_w[r, fill[r]] = item_w[i]
        fill[r] += 1
        load[r] += item_w[i]
        has[r, e] += 1
        if on_top:
            if fill[r] < slots:
                heap_replace_top(keys, ties, size, load[r] / speed[r], r)
            else:
                size = heap_pop(keys, ties, size)
        elif fill[r] < slots:
            size = heap_push(keys, ties, size, load[r] / speed[r], r)
        for k in range(0 if on_top else 1, num_aside):
            size = heap_push(keys, ties, size, load[aside[k]] / speed[aside[k]], aside[k])
    return stacked, set_aside


@njit(cache=True, nogil=True)
def lpt_pack(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has):
    """Greedy LPT packing (arguments as :func:`lpt_pack_counted`); returns how many items had to
    be stacked on a bin already holding their expert."""
    return lpt_pack_counted(item_w, item_e, speed, forbid_dup, slot_e, slot_w, load, has)[0]


@njit(cache=True, nogil=True)
def repair_duplicates(slot_e, slot_w, load, speed, has):
    """Swaps stacked replicas away so that no bin holds an expert twice.

    Each duplicate is swapped with the item of another bin that raises the larger of the two
    bins' ``load / speed`` least, among swaps that create no new duplicate. Arrays as in
    :func:`lpt_pack`, updated in place.

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
            best_r = -1
            best_k = -1
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


@njit(cache=True, nogil=True)
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
