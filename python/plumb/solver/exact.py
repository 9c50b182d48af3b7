"""Exact search for small problems: replica counts and packings by branch and bound.

With a handful of experts on a handful of ranks (Mixtral-class: 8 experts on 4 ranks of 3
slots) the counts decide the packing, and the best counts can be ones no local move reaches:
w = [654, 911, 131, 248, 281, 147, 2527, 269] packs to 1359.25 with counts
[1, 3, 1, 1, 1, 1, 3, 1] (water-filling's, after every move of
:func:`plumb.solver.place._recounts`), and to 1303.83 with [2, 1, 1, 1, 1, 1, 3, 2]: the second
expert whole, the light ones split into fillers.

:func:`exact_search` enumerates the counts (1 <= c_e <= min(cap_e, ranks), summing to the
slots) depth-first, heaviest expert first, each expert's count from the smallest that keeps its
pieces below the incumbent (on the fastest rank). A full count vector whose pieces no packing
fits below the incumbent (cardinality bound) is skipped, the others :func:`_pack_search` packs
depth-first. Both steps count against one budget of ``EXACT_NODES`` nodes per call, so the
time is bounded (about 20 ns a node); within it the search proves the optimum on most
Mixtral-sized layers, and what it returns is never worse than the incumbent it starts from.
"""

from __future__ import annotations

import numpy as np

from .bounds import cardinality_bound
from .jit import kernel, largest, total
from .pack import descending_order, sorted_items
from .refine import sort_row
from .workspace import (EXACT_CHOICE, EXACT_FILL, EXACT_ORDER, EXACT_REST, EXACT_ROOM, PREFIX,
                        SORT_SCRATCH, SUFFIX, copy_into)

# Nodes (count steps and packing steps together) one call may visit.
EXACT_NODES = 8192
# Problems up to this many experts and slots in all are searched. Above, the count vectors
# outnumber the budget many times over and a cut-off search gains little for its time (16
# experts on 8 ranks of 3 slots, lognormal sigma 1.0: mean lb_gap 1.245% -> 1.230%, solve
# 2.1 -> 13.9 ms for 32 layers).
EXACT_EXPERTS = 8
EXACT_SLOTS = 32
# A trial must lower the maximum by more than this fraction (as plumb.solver.place._kept).
_GAIN = 1e-9


@kernel
def exact_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top, enough, cur,
                 item_w, item_e, trial_e, trial_w, trial_load, fscratch, iscratch):
    """Searches replica counts and packings for a maximum time below ``top``.

    Args:
        weights: float64 [n], expert loads; caps: int64 [n], replica caps.
        speed: float64 [bins], relative rank speeds.
        counts, slot_e, slot_w, load: the incumbent (int64 [n], int64 / float64 [bins, S],
            float64 [bins]), replaced in place by each better solution found.
        has: int [bins, >= n] (int16 or wider), scratch.
        top: the incumbent's maximum time; enough: the search stops at or below this (the
            ideal time or a time the caller cannot use anything below).
        cur: int64 [n]; item_w, item_e: float64 / int64 [bins * S]; trial_e, trial_w,
            trial_load: the packing's shapes: scratch.
        fscratch, iscratch: the scratch of a ``workspace`` for >= n experts and >= bins * S
            replicas on >= bins ranks.

    Returns:
        (the maximum, nodes visited).
    """
    n = weights.shape[0]
    bins, slots = slot_e.shape
    m = bins * slots
    top_speed = largest(speed)
    order = iscratch[EXACT_ORDER, :n]
    descending_order(weights, order, iscratch[SORT_SCRATCH])
    # The most replicas the experts after each position can take: suffix sums of the caps.
    room = iscratch[EXACT_ROOM, :n + 1]
    room[n] = 0
    for d in range(n - 1, -1, -1):
        room[d] = room[d + 1] + min(caps[order[d]], bins)
    # What a trial must get below: just under the incumbent.
    limit = top * (1.0 - _GAIN)
    used = 0
    nodes = 0
    depth = 0
    cur[order[0]] = 0
    while depth >= 0 and nodes < EXACT_NODES and top > enough:
        e = order[depth]
        if cur[e] == 0:
            # A piece on the fastest rank takes piece / top_speed: the smallest count is the
            # one whose pieces fit there.
            count = _fewest(weights[e], limit * top_speed)
        else:
            used -= cur[e]
            count = cur[e] + 1
        # Every later expert needs a replica; together they hold at most room[depth + 1].
        if count > min(caps[e], bins) or used + count + (n - depth - 1) > m:
            cur[e] = 0
            depth -= 1
            continue
        cur[e] = count
        used += count
        nodes += 1
        if used + room[depth + 1] < m:
            # Too few replicas so far: the next count of this expert.
            continue
        if depth + 1 < n:
            depth += 1
            cur[order[depth]] = 0
            continue
        if used == m:
            sorted_items(weights, cur, item_w, item_e, fscratch, iscratch)
            bound = max(item_w[0], cardinality_bound(item_w, bins, fscratch[PREFIX],
                                                     fscratch[SUFFIX])) / top_speed
            if bound < limit:
                found, spent = _pack_search(item_w, item_e, speed, limit, EXACT_NODES - nodes,
                                            has, trial_e, trial_w, trial_load, fscratch,
                                            iscratch)
                nodes += spent
                if found < limit:
                    top = found
                    limit = top * (1.0 - _GAIN)
                    copy_into(counts, cur)
                    copy_into(slot_e, trial_e)
                    copy_into(slot_w, trial_w)
                    copy_into(load, trial_load)
    return top, nodes


@kernel
def _fewest(weight, limit):
    """The fewest replicas (>= 1) that cut ``weight`` into pieces below ``limit`` (> 0)."""
    count = max(np.int64(1), np.int64(np.ceil(weight / limit)))
    if weight / count >= limit:
        count += 1
    while count > 1 and weight / (count - 1) < limit:
        count -= 1
    return count


@kernel
def _pack_search(item_w, item_e, speed, limit, budget, has, slot_e, slot_w, load, fscratch,
                 iscratch):
    """Depth-first search for a packing of the items with every rank's time below ``limit``;
    each one found lowers ``limit`` to just below its maximum, until the search space or
    ``budget`` nodes are spent.

    Items (float64 / int64 [bins * S], heaviest first, an expert's replicas adjacent) go to
    ranks with a free slot, no replica of their expert, and room below ``limit``; an expert's
    replicas on ascending ranks, and of the empty ranks of one speed only the first (the rest
    would repeat its subtree); a node is cut when the open ranks' room below ``limit`` cannot
    hold the remaining items, or one of them cannot take the lightest items that would fill
    it. ``has`` int [bins, >= n] and the workspace rows: scratch.

    Returns:
        (the best maximum found, inf if none; nodes visited). The best packing is left in
        ``slot_e`` / ``slot_w`` (each rank's slots by ascending load) and its rank loads in
        ``load``, summed afresh.
    """
    bins, slots = slot_e.shape
    m = item_w.shape[0]
    choice = iscratch[EXACT_CHOICE, :m]
    fill = iscratch[EXACT_FILL, :bins]
    rest = fscratch[EXACT_REST, :m + 1]
    running = fscratch[EXACT_REST, m + 1:m + 1 + bins]
    has[:, :] = 0
    rest[m] = 0.0
    for i in range(m - 1, -1, -1):
        rest[i] = rest[i + 1] + item_w[i]
    for r in range(bins):
        fill[r] = 0
        running[r] = 0.0
    best = np.inf
    nodes = 0
    i = 0
    choice[0] = -1
    while i >= 0 and nodes < budget:
        if i == m:
            # Every item went where it kept its rank below the limit: each leaf beats the
            # best so far (the sums added afresh differ from the running ones by rounding,
            # far below the _GAIN margin).
            best = _write_packing(item_w, item_e, choice, slot_e, slot_w, load, speed, fill)
            limit = best * (1.0 - _GAIN)
            i = _retreat(item_w, item_e, choice, i, running, fill, has)
            continue
        if choice[i] < 0 and _hopeless(running, fill, speed, slots, limit, rest, i):
            i = _retreat(item_w, item_e, choice, i, running, fill, has)
            continue
        start = choice[i] + 1
        if choice[i] < 0 and i > 0 and item_e[i - 1] == item_e[i]:
            start = choice[i - 1] + 1
        r = _next_rank(item_w[i], item_e[i], start, running, fill, has, speed, slots, limit)
        if r < 0:
            choice[i] = -1
            i = _retreat(item_w, item_e, choice, i, running, fill, has)
            continue
        nodes += 1
        choice[i] = r
        running[r] += item_w[i]
        fill[r] += 1
        has[r, item_e[i]] += 1
        i += 1
        if i < m:
            choice[i] = -1
    return best, nodes


@kernel
def _next_rank(weight, e, start, running, fill, has, speed, slots, limit):
    """The first rank from ``start`` that can take an item of ``weight`` of expert ``e`` below
    ``limit`` (of the empty ranks of one speed, only the first); -1 if none."""
    for r in range(start, running.shape[0]):
        if fill[r] >= slots or has[r, e] > 0 or (running[r] + weight) / speed[r] >= limit:
            continue
        if fill[r] == 0 and _empty_before(fill, speed, r):
            continue
        return r
    return -1


@kernel
def _empty_before(fill, speed, r):
    """Whether an empty rank of ``r``'s speed comes before ``r``."""
    for q in range(r):
        if fill[q] == 0 and speed[q] == speed[r]:
            return True
    return False


@kernel
def _hopeless(running, fill, speed, slots, limit, rest, i):
    """Whether no packing of items ``i`` on (``rest`` float64 [m + 1]: the weight of the items
    from each on) keeps every rank below ``limit``: the open ranks' room below it cannot hold
    them, or an open rank cannot take even the lightest items that would fill its free slots
    (no-stacking ignored: a relaxation)."""
    m = rest.shape[0] - 1
    room = 0.0
    for r in range(running.shape[0]):
        free = slots - fill[r]
        if free > 0:
            cap = limit * speed[r] - running[r]
            if rest[m - free] >= cap:
                return True
            room += cap
    return room < rest[i]


@kernel
def _retreat(item_w, item_e, choice, i, running, fill, has):
    """Steps back from item ``i`` to item ``i - 1`` and takes that item off its rank
    ``choice[i - 1]`` (the choice stays: the search resumes after it); returns ``i - 1``."""
    i -= 1
    if i >= 0:
        r = choice[i]
        running[r] -= item_w[i]
        fill[r] -= 1
        has[r, item_e[i]] -= 1
    return i


@kernel
def _write_packing(item_w, item_e, choice, slot_e, slot_w, load, speed, fill):
    """Writes the packing ``choice`` (rank of each item) into ``slot_e`` / ``slot_w`` (each
    rank's slots by ascending load) and ``load`` (summed afresh, in slot order); returns its
    largest ``load / speed``. ``fill`` int64 [bins] is used and left as it was."""
    bins, slots = slot_e.shape
    for r in range(bins):
        fill[r] = 0
    for i in range(item_w.shape[0]):
        r = choice[i]
        slot_e[r, fill[r]] = item_e[i]
        slot_w[r, fill[r]] = item_w[i]
        fill[r] += 1
    top = 0.0
    for r in range(bins):
        sort_row(slot_e, slot_w, r)
        load[r] = total(slot_w[r])
        top = max(top, load[r] / speed[r])
    return top
