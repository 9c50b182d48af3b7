"""Repair the previous placement down to a load cap with few moves.

Under small drift the previous placement is already close to balanced: moving only the replicas
that overload a rank keeps most experts in place, where a fresh solve (even relabelled) reshuffles
most of them. Each step relieves the busiest rank r while its time (load / speed) is above the
cap; every rank a step touches ends strictly below r's time, so each step lowers the sorted
vector of rank times (descending, lexicographically) and the repair ends. In order of trial:

1. a swap of one of r's replicas x with a lighter replica y on another rank r2 (replica counts
   unchanged, so only r and r2 change);
2. when no single swap lowers the max, two of r's replicas against two of r2's;
3. otherwise a replica change: x (when it keeps another replica) gives r's slot to an expert z,
   or x gains a replica in another rank's slot whose expert keeps another one; the expert
   that gains stays within its replica cap (``max_replicas_per_expert``).

Among the steps of a kind: those keeping every rank they touch within the cap first, then the
fewest added moves, then the most headroom (or, short of the cap, the lowest new max). Never
two replicas of an expert on one rank, never an expert's last replica; a layer gives up when no
step fits, its moves reach ``limit``, or after 2 P steps. A single-swap scan is O(S * P).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Relative margin under which a rank time counts as within the cap.
_TIE = 1e-12


@njit(cache=True, nogil=True)
def _moved(resident, rank, expert):
    """1 when ``expert`` in a slot of ``rank`` costs a move (the rank did not hold it), else 0."""
    return 0 if resident[rank, expert] else 1


@njit(cache=True, nogil=True)
def _beats(fix, cost, score, best_fix, best_cost, best_score):
    """Whether a step is preferred to the best so far: keeping the ranks it touches within the
    cap first, then fewer added moves, then the higher score."""
    if fix != best_fix:
        return fix
    if cost != best_cost:
        return cost < best_cost
    return score > best_score


@njit(cache=True, nogil=True)
def _best_swap(row, share, times, speed, held, resident, busiest, slots, cap):
    """(slot on the busiest rank, partner slot) of the best swap, or (-1, -1)."""
    num_ranks = times.shape[0]
    top = times[busiest]
    below = top * (1.0 - _TIE)
    best_p, best_q = -1, -1
    best_fix, best_cost, best_score = False, 0, 0.0
    for p in range(busiest * slots, (busiest + 1) * slots):
        x = row[p]
        sx = share[x]
        stay_x = _moved(resident, busiest, x)
        for r2 in range(num_ranks):
            if r2 == busiest or held[r2, x] > 0 or times[r2] >= below:
                continue
            for q in range(r2 * slots, (r2 + 1) * slots):
                y = row[q]
                move = sx - share[y]
                if move <= 0.0 or held[busiest, y] > 0:
                    continue
                new2 = times[r2] + move / speed[r2]
                if new2 >= below:
                    continue
                new1 = top - move / speed[busiest]
                fix = new1 <= cap and new2 <= cap
                cost = (_moved(resident, busiest, y) + _moved(resident, r2, x) - stay_x
                        - _moved(resident, r2, y))
                # Fixing swaps: most headroom left; others: lowest new max of the two.
                score = min(cap - new1, cap - new2) if fix else top - max(new1, new2)
                if best_p >= 0 and not _beats(fix, cost, score, best_fix, best_cost, best_score):
                    continue
                best_p, best_q = p, q
                best_fix, best_cost, best_score = fix, cost, score
    return best_p, best_q


@njit(cache=True, nogil=True)
def _best_pair_swap(row, share, times, speed, held, resident, busiest, slots, cap, picks):
    """Two of the busiest rank's replicas against two of another rank's: writes the four
    slots into ``picks`` (int64 [4]) and returns whether one lowers the pair's max time. Same
    preference as ``_best_swap``; O(S^2 * P * S), tried when no single swap helps."""
    num_ranks = times.shape[0]
    top = times[busiest]
    below = top * (1.0 - _TIE)
    first = busiest * slots
    found = False
    best_fix, best_cost, best_score = False, 0, 0.0
    for a in range(first, first + slots):
        for b in range(a + 1, first + slots):
            x1, x2 = row[a], row[b]
            if x1 == x2:
                continue
            out_load = share[x1] + share[x2]
            stay = _moved(resident, busiest, x1) + _moved(resident, busiest, x2)
            for r2 in range(num_ranks):
                if r2 == busiest or held[r2, x1] > 0 or held[r2, x2] > 0 or times[r2] >= below:
                    continue
                for c in range(r2 * slots, (r2 + 1) * slots):
                    y1 = row[c]
                    if held[busiest, y1] > 0:
                        continue
                    for d in range(c + 1, (r2 + 1) * slots):
                        y2 = row[d]
                        if y2 == y1 or held[busiest, y2] > 0:
                            continue
                        move = out_load - share[y1] - share[y2]
                        if move <= 0.0:
                            continue
                        new2 = times[r2] + move / speed[r2]
                        if new2 >= below:
                            continue
                        new1 = top - move / speed[busiest]
                        fix = new1 <= cap and new2 <= cap
                        cost = (_moved(resident, busiest, y1) + _moved(resident, busiest, y2)
                                + _moved(resident, r2, x1) + _moved(resident, r2, x2) - stay
                                - _moved(resident, r2, y1) - _moved(resident, r2, y2))
                        score = min(cap - new1, cap - new2) if fix else top - max(new1, new2)
                        if found and not _beats(fix, cost, score, best_fix, best_cost,
                                                best_score):
                            continue
                        found = True
                        picks[0], picks[1], picks[2], picks[3] = a, b, c, d
                        best_fix, best_cost, best_score = fix, cost, score
    return found


@njit(cache=True, nogil=True)
def _swap(row, counts, held, resident, share, speed, times, slots, p, q):
    """Exchanges the experts of slots p and q (replica counts unchanged); returns the change
    in moves."""
    x, y = row[p], row[q]
    r1, r2 = p // slots, q // slots
    times[r1] += (share[y] - share[x]) / speed[r1]
    times[r2] += (share[x] - share[y]) / speed[r2]
    return (_put(row, counts, held, resident, slots, p, y)
            + _put(row, counts, held, resident, slots, q, x))


@njit(cache=True, nogil=True)
def _holders_fit(times, speed, held, expert, skip, rise, cap):
    """Whether every rank but ``skip`` holding ``expert`` stays within the cap when each of its
    replicas carries ``rise`` more load."""
    for r in range(times.shape[0]):
        if (r != skip and held[r, expert] > 0
                and times[r] + held[r, expert] * rise / speed[r] > cap):
            return False
    return True


@njit(cache=True, nogil=True)
def _best_change(row, weights, counts, share, times, speed, held, resident, busiest, slots,
                 cap, caps):
    """(slot, expert) of the best replica change relieving the busiest rank, or (-1, -1);
    no expert gains a replica past its replica cap (``caps`` int64 [E])."""
    num_experts = counts.shape[0]
    num_slots = row.shape[0]
    top = times[busiest]
    # Other ranks may rise, but stay below the current max (as in swaps).
    below = top * (1.0 - _TIE)
    best_slot, best_expert = -1, -1
    best_fix, best_cost, best_new = False, 0, 0.0
    for p in range(busiest * slots, (busiest + 1) * slots):
        x = row[p]
        sx = share[x]
        stay_x = _moved(resident, busiest, x)
        # x gives this slot to z: x's other replicas carry more.
        rise_x = weights[x] / (counts[x] - 1) - sx if counts[x] >= 2 else 0.0
        fits = _holders_fit(times, speed, held, x, busiest, rise_x, below)
        if counts[x] >= 2 and fits:
            fits_cap = _holders_fit(times, speed, held, x, busiest, rise_x, cap)
            for z in range(num_experts):
                if held[busiest, z] > 0 or counts[z] >= caps[z]:
                    continue
                new1 = top + (weights[z] / (counts[z] + 1) - sx
                              + (held[busiest, x] - 1) * rise_x) / speed[busiest]
                if new1 >= below:
                    continue
                fix = new1 <= cap and fits_cap
                cost = _moved(resident, busiest, z) - stay_x
                if best_slot >= 0 and not _beats(fix, cost, -new1, best_fix, best_cost,
                                                 -best_new):
                    continue
                best_slot, best_expert = p, z
                best_fix, best_cost, best_new = fix, cost, new1
        # x gains a replica in slot q of another rank, whose expert y keeps another one.
        if counts[x] >= caps[x]:
            continue
        gained = weights[x] / (counts[x] + 1)
        new1 = top + held[busiest, x] * (gained - sx) / speed[busiest]
        for q in range(num_slots):
            r2 = q // slots
            y = row[q]
            if r2 == busiest or held[r2, x] > 0 or counts[y] < 2:
                continue
            rise_y = weights[y] / (counts[y] - 1) - share[y]
            new2 = times[r2] + (gained - share[y] + (held[r2, y] - 1) * rise_y) / speed[r2]
            if new2 >= below or not _holders_fit(times, speed, held, y, r2, rise_y, below):
                continue
            fix = (new1 <= cap and new2 <= cap
                   and _holders_fit(times, speed, held, y, r2, rise_y, cap))
            cost = _moved(resident, r2, x) - _moved(resident, r2, y)
            if best_slot >= 0 and not _beats(fix, cost, -new1, best_fix, best_cost, -best_new):
                continue
            best_slot, best_expert = q, x
            best_fix, best_cost, best_new = fix, cost, new1
    return best_slot, best_expert


@njit(cache=True, nogil=True)
def _put(row, counts, held, resident, slots, q, expert):
    """Puts ``expert`` into slot q; returns the change in moves."""
    rank = q // slots
    old = row[q]
    counts[old] -= 1
    held[rank, old] -= 1
    row[q] = expert
    counts[expert] += 1
    held[rank, expert] += 1
    return _moved(resident, rank, expert) - _moved(resident, rank, old)


@njit(cache=True, nogil=True)
def _retime(row, weights, counts, share, speed, slots, times):
    for e in range(counts.shape[0]):
        share[e] = weights[e] / counts[e] if counts[e] > 0 else 0.0
    times[:] = 0.0
    for q in range(row.shape[0]):
        times[q // slots] += share[row[q]]
    for r in range(times.shape[0]):
        times[r] /= speed[r]


@njit(cache=True, nogil=True)
def repair_to_cap(previous, weights, speed, num_ranks, cap, limit, active, caps, out):
    """Writes ``out`` int64 [L, P]: ``previous`` int64 [L, P] repaired (see the module doc)
    until each layer's max rank time (load / speed) is at most cap[l].

    weights: float64 [L, E]; speed: float64 [G]; cap: float64 [L]; limit: int64 [L], a layer
    gives up once its moves reach this; active: bool [L], the layers to repair (the others
    are copied); caps: int64 [E], the most replicas a step may give an expert (replica counts
    of ``previous`` above them are left as they are). Returns bool [L]: the layers repaired
    within the cap and under the limit.
    """
    num_layers, num_slots = previous.shape
    num_experts = weights.shape[1]
    slots = num_slots // num_ranks
    counts = np.zeros(num_experts, np.int64)
    held = np.zeros((num_ranks, num_experts), np.int64)
    resident = np.zeros((num_ranks, num_experts), np.bool_)
    share = np.zeros(num_experts)
    times = np.zeros(num_ranks)
    done = np.zeros(num_layers, np.bool_)
    picks = np.empty(4, np.int64)
    out[:] = previous
    for layer in range(num_layers):
        if not active[layer]:
            continue
        row = out[layer]
        counts[:] = 0
        held[:] = 0
        resident[:] = False
        for q in range(num_slots):
            counts[row[q]] += 1
            held[q // slots, row[q]] += 1
            resident[q // slots, row[q]] = True
        _retime(row, weights[layer], counts, share, speed, slots, times)
        bound = cap[layer] * (1.0 + _TIE)
        moves = 0
        # Swaps of cost <= 0 do not count against the limit: bound the steps too.
        for _ in range(2 * num_slots):
            busiest = int(np.argmax(times))
            if times[busiest] <= bound:
                done[layer] = True
                break
            if moves >= limit[layer]:
                break
            p, q = _best_swap(row, share, times, speed, held, resident, busiest, slots, bound)
            if p >= 0:
                moves += _swap(row, counts, held, resident, share, speed, times, slots, p, q)
                continue
            if _best_pair_swap(row, share, times, speed, held, resident, busiest, slots, bound,
                               picks):
                moves += _swap(row, counts, held, resident, share, speed, times, slots,
                               picks[0], picks[2])
                moves += _swap(row, counts, held, resident, share, speed, times, slots,
                               picks[1], picks[3])
                continue
            q, z = _best_change(row, weights[layer], counts, share, times, speed, held,
                                resident, busiest, slots, bound, caps)
            if q < 0:
                break
            moves += _put(row, counts, held, resident, slots, q, z)
            # Replica counts changed: recompute every rank time exactly.
            _retime(row, weights[layer], counts, share, speed, slots, times)
        if done[layer] and moves > limit[layer]:
            done[layer] = False
    return done
