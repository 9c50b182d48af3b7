"""Which slot feeds each destination slot of a rearrangement.

Every (layer, slot) of the new placement is one of: a no-op (the slot already holds its expert),
a local copy (another slot of the same rank holds it), or a transfer from another rank. A
transfer's sender is picked among the ranks holding the expert in the old placement: the
closest link level first (same NUMA domain, then same node, then another node), then the rank
that has sent the fewest experts so far in this layer, then in the whole rearrangement, then
the lowest rank. Within a layer the transfers with the fewest candidate senders are routed first
so that flexible ones fill in around the forced ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ._inputs import Placements

# Columns of the int64 [N, 6] transfer and local-copy tables; slots are physical (global) ids.
LAYER, EXPERT, SRC_RANK, SRC_SLOT, DST_RANK, DST_SLOT = range(6)
COPY_COLUMNS = ("layer", "expert", "src_rank", "src_slot", "dst_rank", "dst_slot")
# Columns of the int64 [N, 3] no-op table.
NOOP_COLUMNS = ("layer", "expert", "slot")


@dataclass(frozen=True)
class Routes:
    """Copies that turn the old placement into the new one, each table sorted by (layer, slot).

    Attributes:
        transfers: int64 [M, 6] (COPY_COLUMNS), src_rank != dst_rank.
        local_copies: int64 [C, 6] (COPY_COLUMNS), src_rank == dst_rank, src_slot != dst_slot.
        noops: int64 [N, 3] (NOOP_COLUMNS), slots that already hold their new expert.
    """

    transfers: np.ndarray
    local_copies: np.ndarray
    noops: np.ndarray


@njit(cache=True, nogil=True)
def _choose_senders(layer, dst_rank, cand_start, cand_count, cand_rank, cand_slot, level,
                    num_ranks, src_rank, src_slot):
    """Greedy sender choice for moves given in routing order (grouped by layer).

    Move i may be sent by candidates cand_start[i] .. cand_start[i] + cand_count[i] - 1 (rank
    ascending). Writes the chosen rank and its slot into src_rank[i], src_slot[i].
    """
    sent_layer = np.zeros(num_ranks, np.int64)
    sent_total = np.zeros(num_ranks, np.int64)
    current = -1
    for i in range(layer.shape[0]):
        if layer[i] != current:
            current = layer[i]
            sent_layer[:] = 0
        dst = dst_rank[i]
        best = -1
        for c in range(cand_start[i], cand_start[i] + cand_count[i]):
            r = cand_rank[c]
            if best < 0:
                best = c
                continue
            b = cand_rank[best]
            if level[r, dst] != level[b, dst]:
                better = level[r, dst] < level[b, dst]
            elif sent_layer[r] != sent_layer[b]:
                better = sent_layer[r] < sent_layer[b]
            else:
                better = sent_total[r] < sent_total[b]
            if better:
                best = c
        r = cand_rank[best]
        src_rank[i] = r
        src_slot[i] = cand_slot[best]
        sent_layer[r] += 1
        sent_total[r] += 1


def _table(columns) -> np.ndarray:
    return np.ascontiguousarray(np.stack(columns, axis=1).astype(np.int64, copy=False))


def route(placements: Placements) -> Routes:
    """Classify every (layer, slot) of the new placement and pick the slot that feeds it."""
    old, new = placements.old, placements.new
    num_layers, num_slots = old.shape
    num_ranks = placements.topo.num_ranks
    num_experts = placements.num_experts
    slots = placements.slots_per_rank
    layer = np.repeat(np.arange(num_layers, dtype=np.int64), num_slots)
    slot = np.tile(np.arange(num_slots, dtype=np.int64), num_layers)
    rank = slot // slots
    old_flat, new_flat = old.ravel(), new.ravel()

    # Each (layer, rank, expert) held in the old placement, with its lowest slot: a stable
    # sort keeps slots ascending within a key, so the first of each run is the lowest.
    old_key = (layer * num_ranks + rank) * num_experts + old_flat
    order = np.argsort(old_key, kind="stable")
    held_key, first = np.unique(old_key[order], return_index=True)
    held_slot = slot[order[first]]

    new_key = (layer * num_ranks + rank) * num_experts + new_flat
    pos = np.minimum(np.searchsorted(held_key, new_key), held_key.size - 1)
    resident = held_key[pos] == new_key
    noop = old_flat == new_flat
    local = resident & ~noop
    move = ~resident

    noops = _table([layer[noop], new_flat[noop], slot[noop]])
    local_copies = _table([layer[local], new_flat[local], rank[local], held_slot[pos[local]],
                           rank[local], slot[local]])

    # Candidate senders of each (layer, expert): the held keys re-sorted by (layer, expert, rank).
    held_layer = held_key // (num_ranks * num_experts)
    held_rank = held_key // num_experts % num_ranks
    held_expert = held_key % num_experts
    by_expert = np.lexsort((held_rank, held_expert, held_layer))
    cand_key = (held_layer * num_experts + held_expert)[by_expert]
    cand_rank = held_rank[by_expert]
    cand_slot = held_slot[by_expert]

    m_layer, m_expert, m_rank, m_slot = layer[move], new_flat[move], rank[move], slot[move]
    m_key = m_layer * num_experts + m_expert
    cand_start = np.searchsorted(cand_key, m_key, side="left")
    cand_count = np.searchsorted(cand_key, m_key, side="right") - cand_start
    # Routing order: by layer, most constrained first, then by destination slot.
    routing = np.lexsort((m_slot, cand_count, m_layer))
    src_rank = np.empty(routing.size, np.int64)
    src_slot = np.empty(routing.size, np.int64)
    _choose_senders(m_layer[routing], m_rank[routing], cand_start[routing], cand_count[routing],
                    cand_rank, cand_slot, np.ascontiguousarray(placements.topo.level),
                    num_ranks, src_rank, src_slot)
    # Back to (layer, slot) order: routing is a permutation of the moves, which are in that order.
    back = np.empty_like(routing)
    back[routing] = np.arange(routing.size)
    transfers = _table([m_layer, m_expert, src_rank[back], src_slot[back], m_rank, m_slot])
    return Routes(transfers=transfers, local_copies=local_copies, noops=noops)
