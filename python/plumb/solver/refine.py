"""Local search after packing: swaps between the heaviest rank and the others.

Each step takes the rank ``h`` with the largest ``load / speed`` and swaps one of its replicas
with one of another rank ``r`` so that the larger of the two results is below the current
maximum, and as low as possible. The lightest rank is tried first (usually it has such a swap);
the others only when it has none, lightest first (ranks are kept sorted by time), so that the
scan stops at the first rank too heavy to gain. Every accepted swap lowers ``h`` and keeps
``r`` below the old maximum, so the sorted vector of rank times decreases strictly: the search
ends, and it never makes the maximum worse.

Each rank's slots are kept sorted by load so that, for each replica on ``h``, the best partner
on ``r`` is found by binary search instead of a scan. When single swaps are stuck,
:func:`refine_pairs` exchanges two replicas of ``h`` with two of one of the lightest ranks
(same acceptance rule) and resumes the swap search.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .pack import swap_items

# A swap must lower the maximum by more than this fraction of it: avoids trading float noise.
_MIN_GAIN = 1e-12


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _best_swap(slot_e, slot_w, load, speed, has, forbid_dup, h, r, best):
    """Best swap between ranks ``h`` and ``r`` whose larger resulting time is below ``best``.

    A swap moving ``d = w_h - w_r`` from h to r is acceptable iff ``lo < d < hi`` and is best
    when ``d`` is nearest ``target`` (both times equal); on each side of the target the first
    acceptable partner is the best on that side.

    Returns:
        (larger time after the swap, slot on h, slot on r); the slots are -1 when none is below
        ``best``.
    """
    slots = slot_e.shape[1]
    sh = speed[h]
    sr = speed[r]
    lo = load[h] - best * sh
    hi = best * sr - load[r]
    target = (load[h] * sr - load[r] * sh) / (sh + sr)
    best_i = -1
    best_j = -1
    row = slot_w[r]
    for i in range(slots):
        a = slot_w[h, i]
        if a <= lo:
            continue
        if forbid_dup and has[r, slot_e[h, i]] > 0:
            continue
        want = a - target
        left = 0
        right = slots
        while left < right:
            mid = (left + right) >> 1
            if row[mid] < want:
                left = mid + 1
            else:
                right = mid
        # From the ideal partner outwards, first heavier partners (smaller d), then lighter
        # ones (larger d), while d stays in the window.
        for step in (1, -1):
            j = left if step == 1 else left - 1
            while 0 <= j < slots and lo < a - row[j] < hi:
                if not (forbid_dup and has[h, slot_e[r, j]] > 0):
                    d = a - row[j]
                    worse = max((load[h] - d) / sh, (load[r] + d) / sr)
                    if worse < best:
                        best, best_i, best_j = worse, i, j
                    break
                j += step
    return best, best_i, best_j


@njit(cache=True, nogil=True)
def refine_swaps(slot_e, slot_w, load, speed, has, forbid_dup, max_steps):
    """Improves a packing in place (arrays as in :func:`plumb.solver.pack.lpt_pack`).

    Args:
        forbid_dup: only accept swaps that put no expert twice on one rank.
        max_steps: bound on accepted swaps (a safety net; the search normally stops earlier).

    Returns:
        Number of swaps applied. On return each rank's slots are sorted by load.
    """
    bins = slot_e.shape[0]
    for r in range(bins):
        sort_row(slot_e, slot_w, r)
    time = np.empty(bins, dtype=np.float64)
    order = np.empty(bins, dtype=np.int64)
    where = np.empty(bins, dtype=np.int64)
    uniform = True
    for r in range(bins):
        time[r] = load[r] / speed[r]
        uniform = uniform and speed[r] == speed[0]
    order[:] = np.argsort(time, kind="mergesort")
    for t in range(bins):
        where[order[t]] = t
    for step in range(max_steps):
        # The busiest rank of lowest index, the lightest rank order[0] tried first, then the
        # others: the best swap wins, ties to the lower rank index (as a scan by index would).
        top = bins - 1
        while top > 0 and time[order[top - 1]] == time[order[bins - 1]]:
            top -= 1
        h = order[top]
        best = time[h] * (1.0 - _MIN_GAIN)
        best_r = -1
        best_i = best_j = -1
        for t in range(bins):
            r = order[t]
            if r == h:
                continue
            limit = best if best_r < 0 or r > best_r else np.nextafter(best, np.inf)
            # (load_h + load_r) / (speed_h + speed_r) is the best any swap could reach; with
            # equal speeds it only grows along ``order``.
            reach = (load[h] + load[r]) / (speed[h] + speed[r])
            if reach >= limit:
                if uniform and reach > best:
                    break
                continue
            value, i, j = _best_swap(slot_e, slot_w, load, speed, has, forbid_dup, h, r, limit)
            if i >= 0:
                best, best_i, best_j, best_r = value, i, j, r
                if t == 0:
                    break
        if best_r < 0:
            return step
        swap_items(slot_e, slot_w, load, has, h, best_i, best_r, best_j)
        sort_row(slot_e, slot_w, h)
        sort_row(slot_e, slot_w, best_r)
        time[h] = load[h] / speed[h]
        time[best_r] = load[best_r] / speed[best_r]
        _reposition(order, where, time, h)
        _reposition(order, where, time, best_r)
    return max_steps


@njit(cache=True, nogil=True)
def _reposition(order, where, time, r):
    """Moves rank ``r`` to its place in ``order`` (ranks by ascending time, ties by index);
    ``where[r]`` is its position, kept up to date. One insertion step: the rest is in order."""
    i = where[r]
    key = time[r]
    while i > 0 and (time[order[i - 1]] > key or (time[order[i - 1]] == key and order[i - 1] > r)):
        order[i] = order[i - 1]
        where[order[i]] = i
        i -= 1
    while i < order.shape[0] - 1 and (time[order[i + 1]] < key or
                                     (time[order[i + 1]] == key and order[i + 1] < r)):
        order[i] = order[i + 1]
        where[order[i]] = i
        i += 1
    order[i] = r
    where[r] = i


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def refine_pairs(slot_e, slot_w, load, speed, has, forbid_dup, partners, max_steps):
    """Exchanges two replicas of the busiest rank with two of one of its ``partners``
    lightest ranks, when single swaps are stuck, then resumes the swap search.

    Same contract as :func:`refine_swaps` (every accepted exchange lowers the busiest rank and
    keeps the partner below the old maximum, so the maximum never gets worse). S**4 / 4
    candidates per partner: meant for few slots per rank.

    Returns:
        Number of pair exchanges applied.
    """
    bins, slots = slot_e.shape
    time = np.empty(bins, dtype=np.float64)
    lightest = np.empty(max(partners, 1), dtype=np.int64)
    for step in range(max_steps):
        for r in range(bins):
            time[r] = load[r] / speed[r]
        h = 0
        for r in range(1, bins):
            if time[r] > time[h]:
                h = r
        best = time[h] * (1.0 - _MIN_GAIN)
        best_r = -1
        best_i = best_j = best_k = best_l = -1
        for t in range(_lightest(time, h, partners, lightest)):
            r = lightest[t]
            for i in range(slots):
                for j in range(i + 1, slots):
                    a = slot_w[h, i] + slot_w[h, j]
                    ei = slot_e[h, i]
                    ej = slot_e[h, j]
                    if forbid_dup and (has[r, ei] > 0 or has[r, ej] > 0):
                        continue
                    for k in range(slots):
                        for m in range(k + 1, slots):
                            if forbid_dup and (has[h, slot_e[r, k]] > 0 or
                                               has[h, slot_e[r, m]] > 0):
                                continue
                            d = a - slot_w[r, k] - slot_w[r, m]
                            worse = max((load[h] - d) / speed[h], (load[r] + d) / speed[r])
                            if d > 0 and worse < best:
                                best, best_r = worse, r
                                best_i, best_j, best_k, best_l = i, j, k, m
        if best_r < 0:
            return step
        swap_items(slot_e, slot_w, load, has, h, best_i, best_r, best_k)
        swap_items(slot_e, slot_w, load, has, h, best_j, best_r, best_l)
        refine_swaps(slot_e, slot_w, load, speed, has, forbid_dup, 4 * slot_e.size + 16)
    return max_steps
