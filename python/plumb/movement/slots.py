"""Slot preservation: inside a rank, an expert that stays keeps its old slot.

The rank's incoming experts fill the slots freed by the experts that left, lowest slot first,
in the order they appear in the new placement. Only the order inside each rank changes, so the
balance and the moves of the placement are untouched; only copies become no-ops.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def place_in_slots(phy2log, previous, perm, out):
    """Writes ``out`` int64 [L, P]: rank perm[l, r] receives the experts of new rank r, each
    in the slot that held it in ``previous`` (int64 [L, P], same shape) when there is one.

    phy2log: int64 [L, P]; perm: int64 [L, G], a permutation per layer (identity: no
    relabelling, only the order inside ranks changes).
    """
    num_layers, num_slots = phy2log.shape
    num_ranks = perm.shape[1]
    slots = num_slots // num_ranks
    taken = np.empty(slots, np.bool_)
    filled = np.empty(slots, np.bool_)
    for layer in range(num_layers):
        for r in range(num_ranks):
            src = r * slots
            dst = perm[layer, r] * slots
            taken[:] = False
            filled[:] = False
            for k in range(slots):
                old = previous[layer, dst + k]
                for j in range(slots):
                    if not taken[j] and phy2log[layer, src + j] == old:
                        taken[j] = True
                        filled[k] = True
                        out[layer, dst + k] = old
                        break
            k = 0
            for j in range(slots):
                if taken[j]:
                    continue
                while filled[k]:
                    k += 1
                out[layer, dst + k] = phy2log[layer, src + j]
                filled[k] = True


def relabelled(phy2log: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """int64 [L, P]: new rank r's slots moved, in order, to rank perm[l, r] (used when the
    previous placement has another slot count, so slots cannot be matched)."""
    num_layers, num_slots = phy2log.shape
    num_ranks = perm.shape[1]
    blocks = phy2log.reshape(num_layers, num_ranks, num_slots // num_ranks)
    out = np.empty_like(blocks)
    out[np.arange(num_layers)[:, None], perm] = blocks
    return out.reshape(num_layers, num_slots)
