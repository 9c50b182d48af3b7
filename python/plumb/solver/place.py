"""One balancing problem: replicate a set of experts over a set of ranks and pack them.

Used for the whole model's ranks (global policy), for each node's ranks (hierarchical policy),
and for expert groups onto nodes (one "replica" per group).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .pack import lpt_pack, repair_duplicates
from .refine import refine_swaps
from .replicate import water_fill


@njit(cache=True, nogil=True)
def place(weights, caps, speed, allow_dup, counts, slot_e, slot_w, load, has):
    """Replicates ``n`` experts into ``bins * S`` slots and packs them onto ``bins`` ranks.

    Args:
        weights: float64 [n], expert loads.
        caps: int64 [n], replica cap per expert (at most ``bins`` unless ``allow_dup``).
        speed: float64 [bins], relative speed of each rank.
        allow_dup: whether two replicas of one expert may share a rank (only when forced).
        counts: int64 [n], output: replicas per expert.
        slot_e: int64 [bins, S], output: local expert index in each slot.
        slot_w: float64 [bins, S], output: per-replica load in each slot.
        load: float64 [bins], output: load of each rank.
        has: int64 [bins, n], scratch: replicas of each expert per rank.
    """
    n = weights.shape[0]
    bins, slots = slot_e.shape
    num_items = bins * slots
    water_fill(weights, num_items, caps, counts)
    item_w = np.empty(num_items, dtype=np.float64)
    item_e = np.empty(num_items, dtype=np.int64)
    i = 0
    for e in range(n):
        share = weights[e] / counts[e]
        for _ in range(counts[e]):
            item_w[i] = share
            item_e[i] = e
            i += 1
    has[:, :] = 0
    stacked = lpt_pack(item_w, item_e, speed, not allow_dup, slot_e, slot_w, load, has)
    if stacked > 0 and not allow_dup:
        repair_duplicates(slot_e, slot_w, load, speed, has)
    refine_swaps(slot_e, slot_w, load, speed, has, not allow_dup, 4 * num_items + 16)
