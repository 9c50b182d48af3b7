"""Movement-aware refinement: swap replicas back to the ranks that already hold them.

After relabelling, a slot whose expert has to arrive from another rank may be fixable: if an
expert the rank held before now sits on another rank, exchanging the two replicas lets this
rank keep it. A swap is taken when it lowers the number of moves, both ranks stay within the
load cap (the layer's max rank time times 1 + load_slack), neither rank ends up with two
replicas of one expert, and (with traffic) the traffic cost under even dispatch does not grow.
In layers solved hierarchically, swaps stay inside a node so every group keeps its node.
Replica counts never change, so every replica's load is fixed and the cap is exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Relative slack on traffic costs: a swap may not raise its two replicas' cost beyond it.
TRAFFIC_TOLERANCE = 1e-12
# Incremental rank times may differ from exact sums in the last bits: screen with a margin.
_SCREEN = 1.0 + 1e-9


@njit(cache=True, nogil=True)
def _rank_time(row, start, slots, share, speed, swap_slot, swap_expert):
    """Time of the rank whose slots start at ``start`` when slot swap_slot holds swap_expert."""
    total = 0.0
    for q in range(start, start + slots):
        total += share[swap_expert if q == swap_slot else row[q]]
    return total / speed


@njit(cache=True, nogil=True)
def _relocate(members, starts, expert, old_slot, new_slot):
    """Records that one replica of ``expert`` moved from old_slot to new_slot."""
    for k in range(starts[expert], starts[expert + 1]):
        if members[k] == old_slot:
            members[k] = new_slot
            return


@njit(cache=True, nogil=True)
def refine_moves(phy2log, previous, num_ranks, weights, speed, load_slack, replica_cost,
                 has_traffic, node_of_rank, keep_node):
    """Swaps replicas in ``phy2log`` int64 [L, P] (in place) to cut moves from ``previous``
    int64 [L, P'] without raising any layer's max rank time above (1 + load_slack) times its
    value on entry. weights: float64 [L, E]; speed: float64 [G]; replica_cost: float64
    [L, E, G], the traffic cost of one replica of e on rank r (used when has_traffic);
    node_of_rank: int64 [G]; keep_node: bool [L], layers whose swaps stay inside a node.
    Returns the number of swaps made."""
    num_layers, num_slots = phy2log.shape
    num_experts = weights.shape[1]
    slots = num_slots // num_ranks
    prev_slots = previous.shape[1] // num_ranks
    resident = np.zeros((num_ranks, num_experts), np.bool_)
    held = np.zeros((num_ranks, num_experts), np.int64)
    counts = np.zeros(num_experts, np.int64)
    share = np.zeros(num_experts)
    times = np.zeros(num_ranks)
    starts = np.zeros(num_experts + 1, np.int64)
    fill = np.zeros(num_experts, np.int64)
    members = np.zeros(num_slots, np.int64)
    swaps = 0
    for layer in range(num_layers):
        row = phy2log[layer]
        resident[:] = False
        held[:] = 0
        counts[:] = 0
        for q in range(previous.shape[1]):
            resident[q // prev_slots, previous[layer, q]] = True
        for q in range(num_slots):
            held[q // slots, row[q]] += 1
            counts[row[q]] += 1
        for e in range(num_experts):
            share[e] = weights[layer, e] / counts[e] if counts[e] > 0 else 0.0
        # The slots of each expert (counts never change, only which slots).
        starts[0] = 0
        for e in range(num_experts):
            starts[e + 1] = starts[e] + counts[e]
        fill[:] = starts[:num_experts]
        for q in range(num_slots):
            members[fill[row[q]]] = q
            fill[row[q]] += 1
        cap = 0.0
        for r in range(num_ranks):
            times[r] = _rank_time(row, r * slots, slots, share, speed[r], -1, 0)
            cap = max(cap, times[r])
        cap *= 1.0 + load_slack
        improved = True
        while improved:
            improved = False
            for p in range(num_slots):
                r1 = p // slots
                x = row[p]
                if resident[r1, x]:
                    continue
                best_q = -1
                best_delta = 0
                for o in range(r1 * prev_slots, (r1 + 1) * prev_slots):
                    y = previous[layer, o]
                    if held[r1, y] > 0:
                        continue
                    for k in range(starts[y], starts[y + 1]):
                        q = members[k]
                        r2 = q // slots
                        if r2 == r1 or held[r2, x] > 0:
                            continue
                        if keep_node[layer] and node_of_rank[r2] != node_of_rank[r1]:
                            continue
                        # p stops being a move; q's move status follows its new expert x.
                        delta = (0 if resident[r2, x] else 1) - 1 - (0 if resident[r2, y] else 1)
                        if delta >= best_delta:
                            continue
                        if has_traffic:
                            before = replica_cost[layer, x, r1] + replica_cost[layer, y, r2]
                            after = replica_cost[layer, x, r2] + replica_cost[layer, y, r1]
                            if after > before * (1.0 + TRAFFIC_TOLERANCE):
                                continue
                        # The incremental times screen out most swaps; the exact sums decide.
                        if (times[r1] + (share[y] - share[x]) / speed[r1] > cap * _SCREEN
                                or times[r2] + (share[x] - share[y]) / speed[r2] > cap * _SCREEN):
                            continue
                        if (_rank_time(row, r1 * slots, slots, share, speed[r1], p, y) > cap
                                or _rank_time(row, r2 * slots, slots, share, speed[r2], q, x)
                                > cap):
                            continue
                        best_q = q
                        best_delta = delta
                if best_q >= 0:
                    q = best_q
                    r2 = q // slots
                    y = row[q]
                    row[p] = y
                    row[q] = x
                    _relocate(members, starts, x, p, q)
                    _relocate(members, starts, y, q, p)
                    times[r1] = _rank_time(row, r1 * slots, slots, share, speed[r1], -1, 0)
                    times[r2] = _rank_time(row, r2 * slots, slots, share, speed[r2], -1, 0)
                    held[r1, x] -= 1
                    held[r1, y] += 1
                    held[r2, y] -= 1
                    held[r2, x] += 1
                    swaps += 1
                    improved = True
    return swaps
