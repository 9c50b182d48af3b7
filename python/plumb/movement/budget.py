"""Incremental rebalancing: repair the previous placement step by step, spending a move budget
on the steps that lower max load most per moved expert.

Each step relieves the busiest rank r of a layer with one of:
- a swap of one of r's replicas with a lighter one on another rank (replica counts unchanged);
- one more replica of an expert of r, in the slot of an expert that keeps another replica;
- one of r's replicas, of an expert that keeps another one, replaced by any other expert;
no step gives an expert more replicas than its cap (``max_replicas_per_expert``).
No step puts two replicas of one expert on a rank or takes an expert's last replica; in
layers solved hierarchically every step stays inside the busiest rank's node (groups keep their
node). A step's cost is the change in moves against the previous placement (a slot costs a
move when its rank did not hold its expert before the rebalance; returning an expert to a rank
that held it is free or saves one). A step helps when it lowers the layer's max rank time
(level 2), or, with several ranks tied at the max, lowers the busiest one below the tie
without lifting another to it (level 1). Across layers the next step is the one of the highest
level, then free steps first (largest gain), then the largest drop per move (the model
objective is the sum over layers of the max). A layer stops when its max reaches its target,
the budget runs out, or no step helps; so no layer gets worse.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Relative margin under which two rank times count as equal.
_TIE = 1e-12
# Step records: slot p, kind (0 swap, 1 replace), partner slot q or expert x, level, gain,
# cost (moves added; may be negative).
_SLOT, _KIND, _ARG, _LEVEL, _GAIN, _COST = range(6)
_SWAP, _REPLACE = 0, 1


@njit(cache=True, nogil=True)
def _times(row, counts, weights, speed, slots, out):
    out[:] = 0.0
    for q in range(row.shape[0]):
        e = row[q]
        out[q // slots] += weights[e] / counts[e]
    for r in range(out.shape[0]):
        out[r] /= speed[r]


@njit(cache=True, nogil=True)
def _better(level, cost, gain, than):
    """Whether a step (level, cost, gain) beats the record ``than`` (or it is empty)."""
    if than[_SLOT] < 0:
        return True
    if level != than[_LEVEL]:
        return level > than[_LEVEL]
    free, than_free = cost <= 0, than[_COST] <= 0
    if free != than_free:
        return free
    if free:
        return gain > than[_GAIN]
    return gain / cost > than[_GAIN] / than[_COST]


@njit(cache=True, nogil=True)
def _judge(top, aff_max, unaff_max, busiest_new):
    """(level, gain) of a step: 2 when the max drops, 1 when only the busiest rank drops below
    a tie, 0 when it does not help."""
    new_max = max(aff_max, unaff_max)
    if new_max < top * (1.0 - _TIE):
        return 2, top - new_max
    if busiest_new < top * (1.0 - _TIE) and aff_max < top * (1.0 - _TIE) and new_max <= top:
        return 1, top - busiest_new
    return 0, 0.0


@njit(cache=True, nogil=True)
def _replace_effect(q, x, row, counts, weights, speed, slots, times, order, stamp, mark, delta,
                    members, starts, touched):
    """(max over the ranks whose time changes, max over the others, the busiest rank's new
    time) when slot q's expert is replaced by x. members/starts: slots of each expert;
    touched: int64 scratch of at least 2 G + 1."""
    y = row[q]
    busiest = order[0]
    wx, wy = weights[x], weights[y]
    cx, cy = counts[x], counts[y]
    num = 0
    for k in range(starts[x], starts[x + 1]):
        r = members[k] // slots
        if mark[r] != stamp:
            mark[r] = stamp
            delta[r] = 0.0
            touched[num] = r
            num += 1
        delta[r] += wx / (cx + 1) - wx / cx
    for k in range(starts[y], starts[y + 1]):
        s = members[k]
        r = s // slots
        if mark[r] != stamp:
            mark[r] = stamp
            delta[r] = 0.0
            touched[num] = r
            num += 1
        if s == q:
            delta[r] += wx / (cx + 1) - wy / cy
        else:
            delta[r] += wy / (cy - 1) - wy / cy
    aff_max = 0.0
    busiest_new = times[busiest]
    for k in range(num):
        r = touched[k]
        new = times[r] + delta[r] / speed[r]
        aff_max = max(aff_max, new)
        if r == busiest:
            busiest_new = new
    unaff_max = 0.0
    for k in range(order.shape[0]):
        if mark[order[k]] != stamp:
            unaff_max = times[order[k]]
            break
    return aff_max, unaff_max, busiest_new


@njit(cache=True, nogil=True)
def _cannot_beat(best, cost, gain_bound):
    """Whether a step of this cost, whose level-2 gain is at most gain_bound, surely loses
    to the level-2 step in ``best`` (a level-1 step loses to it whatever its gain)."""
    return best[_SLOT] >= 0 and best[_LEVEL] == 2 and not _better(2, cost, gain_bound, best)


@njit(cache=True, nogil=True)
def _offer(best, slot, kind, arg, level, gain, cost):
    """Keeps the step in ``best`` if it helps (level > 0) and beats the one there."""
    if level > 0 and _better(level, cost, gain, best):
        best[_SLOT], best[_KIND], best[_ARG] = slot, kind, arg
        best[_LEVEL], best[_GAIN], best[_COST] = level, gain, cost


@njit(cache=True, nogil=True)
def _offer_replace(q, x, cost, row, counts, weights, speed, slots, times, order, stamp, mark,
                   delta, members, starts, touched, best):
    """Offers the step that puts expert x into slot q (``stamp`` unused in ``mark`` so far)."""
    aff, unaff, busiest_new = _replace_effect(q, x, row, counts, weights, speed, slots, times,
                                              order, stamp, mark, delta, members, starts,
                                              touched)
    level, gain = _judge(times[order[0]], aff, unaff, busiest_new)
    _offer(best, q, _REPLACE, x, level, gain, cost)


@njit(cache=True, nogil=True)
def _best_step(row, counts, held, resident, weights, speed, slots, afford, times, order, mark,
               delta, members, starts, node_of_rank, same_node, caps, best):
    """Writes the best step of one layer into ``best`` (best[_SLOT] = -1: none); no step
    gives an expert more replicas than ``caps`` (int64 [E])."""
    num_slots = row.shape[0]
    num_ranks = times.shape[0]
    num_experts = counts.shape[0]
    best[:] = 0.0
    best[_SLOT] = -1.0
    busiest = order[0]
    top = times[busiest]
    if top <= 0.0:
        return
    # Slots of each expert, for the replica-count changes.
    starts[:] = 0
    for q in range(num_slots):
        starts[row[q] + 1] += 1
    for e in range(num_experts):
        starts[e + 1] += starts[e]
    fill = starts[:num_experts].copy()
    for q in range(num_slots):
        members[fill[row[q]]] = q
        fill[row[q]] += 1
    first = busiest * slots
    node = node_of_rank[busiest]
    below = top * (1.0 - _TIE)
    touched = np.empty(2 * num_ranks + 1, np.int64)
    stamp = mark.max()
    # Experts whose other replicas would reach the max if one of theirs left: the rank losing
    # it is exempt, so record how many holders block and the first one.
    blockers = np.zeros(num_experts, np.int64)
    blocker = np.empty(num_experts, np.int64)
    for e in range(num_experts):
        if counts[e] < 2:
            continue
        rise = weights[e] / (counts[e] - 1) - weights[e] / counts[e]
        for k in range(starts[e], starts[e + 1]):
            r = members[k] // slots
            # The busiest rank also loses x's share: only the exact effect can judge it.
            if r != busiest and times[r] + held[r, e] * rise / speed[r] >= below:
                if blockers[e] == 0:
                    blocker[e] = r
                if blockers[e] == 0 or blocker[e] != r:
                    blockers[e] += 1
    share = np.empty(num_experts)
    for e in range(num_experts):
        share[e] = weights[e] / counts[e] if counts[e] > 0 else 0.0
    for p in range(first, first + slots):
        x = row[p]
        sx = share[x]
        stay_x = 0 if resident[busiest, x] else 1
        # Swaps with lighter replicas elsewhere, on ranks that stay below the max.
        for r2 in range(num_ranks):
            if (r2 == busiest or held[r2, x] > 0 or times[r2] >= below
                    or (same_node and node_of_rank[r2] != node)):
                continue
            for q in range(r2 * slots, (r2 + 1) * slots):
                y = row[q]
                sy = share[y]
                if sy >= sx or held[busiest, y] > 0:
                    continue
                cost = ((0 if resident[busiest, y] else 1) + (0 if resident[r2, x] else 1)
                        - stay_x - (0 if resident[r2, y] else 1))
                if cost > afford:
                    continue
                new_busiest = times[busiest] + (sy - sx) / speed[busiest]
                new_other = times[r2] + (sx - sy) / speed[r2]
                if new_other >= below:
                    continue
                # order[0] is the busiest rank: the busiest other one is order[1] or order[2].
                unaff = 0.0
                if num_ranks > 2:
                    unaff = times[order[2]] if order[1] == r2 else times[order[1]]
                elif num_ranks == 2 and order[1] != r2:
                    unaff = times[order[1]]
                level, gain = _judge(top, max(new_busiest, new_other), unaff, new_busiest)
                _offer(best, p, _SWAP, q, level, gain, cost)
        # One more replica of x (within its cap), in a slot whose expert keeps another
        # replica.
        if counts[x] < caps[x]:
            busiest_gain_x = top + held[busiest, x] * (weights[x] / (counts[x] + 1) - sx) / \
                speed[busiest]
            for q in range(num_slots):
                r2 = q // slots
                y = row[q]
                if r2 == busiest or counts[y] < 2 or held[r2, x] > 0:
                    continue
                if blockers[y] > 1 or (blockers[y] == 1 and blocker[y] != r2):
                    continue
                if same_node and node_of_rank[r2] != node:
                    continue
                cost = (0 if resident[r2, x] else 1) - (0 if resident[r2, y] else 1)
                if cost > afford:
                    continue
                # Cheap necessary condition: rank r2 itself must stay below the max.
                rise = weights[x] / (counts[x] + 1) - share[y]
                if times[r2] + rise / speed[r2] >= below:
                    continue
                if _cannot_beat(best, cost,
                                top - max(busiest_gain_x, times[r2] + rise / speed[r2])):
                    continue
                stamp += 1
                _offer_replace(q, x, cost, row, counts, weights, speed, slots, times, order,
                               stamp, mark, delta, members, starts, touched, best)
        # x keeps another replica: give its slot here to another expert. Its other holders
        # carry more whatever the expert: none may reach the max.
        if counts[x] < 2:
            continue
        rise = weights[x] / (counts[x] - 1) - sx
        holders_x = 0.0
        for k in range(starts[x], starts[x + 1]):
            r = members[k] // slots
            if r != busiest:
                holders_x = max(holders_x, times[r] + held[r, x] * rise / speed[r])
        if holders_x >= below:
            continue
        for z in range(num_experts):
            if held[busiest, z] > 0 or counts[z] >= caps[z] or (
                    same_node and not _on_node(held, z, node_of_rank, node)):
                continue
            cost = (0 if resident[busiest, z] else 1) - stay_x
            if cost > afford:
                continue
            # Cheap necessary condition: the busiest rank itself must drop below the max.
            busiest_new = top + (weights[z] / (counts[z] + 1) - sx) / speed[busiest]
            if busiest_new >= below:
                continue
            if _cannot_beat(best, cost, top - max(busiest_new, holders_x)):
                continue
            stamp += 1
            _offer_replace(p, z, cost, row, counts, weights, speed, slots, times, order, stamp,
                           mark, delta, members, starts, touched, best)


@njit(cache=True, nogil=True)
def _on_node(held, expert, node_of_rank, node):
    """Whether some rank of ``node`` holds ``expert``."""
    for r in range(node_of_rank.shape[0]):
        if node_of_rank[r] == node and held[r, expert] > 0:
            return True
    return False


@njit(cache=True, nogil=True)
def _put(row, counts, held, slots, q, e):
    old = row[q]
    counts[old] -= 1
    held[q // slots, old] -= 1
    row[q] = e
    counts[e] += 1
    held[q // slots, e] += 1


@njit(cache=True, nogil=True)
def spend_budget(previous, weights, speed, num_ranks, layer_budget, total_budget, stop_at,
                 node_of_rank, keep_node, caps, out):
    """Writes ``out`` int64 [L, P]: ``previous`` int64 [L, P] repaired with at most the
    budgeted moves (see the module doc). weights: float64 [L, E]; speed: float64 [G];
    layer_budget: int64 [L], moves allowed per layer; total_budget: moves allowed in all;
    stop_at: float64 [L], a layer stops once its max rank time is at most this;
    node_of_rank: int64 [G]; keep_node: bool [L], layers whose steps stay inside a node;
    caps: int64 [E], the most replicas a step may give an expert.
    Returns the moves of ``out`` against ``previous``."""
    num_layers, num_slots = previous.shape
    num_experts = weights.shape[1]
    slots = num_slots // num_ranks
    out[:] = previous
    counts = np.zeros((num_layers, num_experts), np.int64)
    held = np.zeros((num_layers, num_ranks, num_experts), np.int64)
    resident = np.zeros((num_layers, num_ranks, num_experts), np.bool_)
    for layer in range(num_layers):
        for q in range(num_slots):
            e = previous[layer, q]
            counts[layer, e] += 1
            held[layer, q // slots, e] += 1
            resident[layer, q // slots, e] = True
    times = np.empty((num_layers, num_ranks))
    order = np.empty((num_layers, num_ranks), np.int64)
    mark = np.zeros(num_ranks, np.int64)
    delta = np.zeros(num_ranks)
    members = np.empty(num_slots, np.int64)
    starts = np.empty(num_experts + 1, np.int64)
    steps = np.empty((num_layers, 6))
    remaining = layer_budget.copy()
    spent = 0
    for layer in range(num_layers):
        steps[layer, _SLOT] = -1.0
    stale = np.ones(num_layers, np.bool_)
    while True:
        for layer in range(num_layers):
            if not stale[layer]:
                continue
            stale[layer] = False
            _times(out[layer], counts[layer], weights[layer], speed, slots, times[layer])
            order[layer] = np.argsort(-times[layer], kind="mergesort")
            if times[layer, order[layer, 0]] <= stop_at[layer]:
                steps[layer, _SLOT] = -1.0
                continue
            _best_step(out[layer], counts[layer], held[layer], resident[layer],
                       weights[layer], speed, slots, min(remaining[layer], total_budget),
                       times[layer], order[layer], mark, delta, members, starts, node_of_rank,
                       keep_node[layer], caps, steps[layer])
        pick = -1
        for layer in range(num_layers):
            s = steps[layer]
            if s[_SLOT] >= 0 and (pick < 0 or _better(int(s[_LEVEL]), s[_COST], s[_GAIN],
                                                      steps[pick])):
                pick = layer
        if pick < 0:
            break
        s = steps[pick]
        p = int(s[_SLOT])
        if int(s[_KIND]) == _SWAP:
            q = int(s[_ARG])
            x, y = out[pick, p], out[pick, q]
            _put(out[pick], counts[pick], held[pick], slots, p, y)
            _put(out[pick], counts[pick], held[pick], slots, q, x)
        else:
            _put(out[pick], counts[pick], held[pick], slots, p, int(s[_ARG]))
        cost = int(s[_COST])
        remaining[pick] -= cost
        total_budget -= cost
        spent += cost
        stale[pick] = True
        # A shrinking total budget may make other layers' chosen steps unaffordable.
        for layer in range(num_layers):
            if steps[layer, _SLOT] >= 0 and steps[layer, _COST] > min(remaining[layer],
                                                                      total_budget):
                stale[layer] = True
    return spent
