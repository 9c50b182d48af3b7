"""Tournament (min) trees for numba kernels: the smallest of ``n`` keys, updated in O(log n).

The packing step asks "which open rank is lightest?" once per replica. A binary heap answers
with data-dependent branches at every level; a tournament tree re-plays one leaf-to-root path
per update with a single comparison per level (compiled to a conditional move), which is
several times faster at a few dozen ranks.

Layout: ``keys`` float64 [2**k] (leaves; entries past ``n`` stay +inf), ``tree`` int64 [2**k]
with ``tree[i]`` the winning leaf of node ``i`` (node 1 is the root; node i's children are
2i and 2i+1; the leaves' own level is implicit). Ties go to the lower leaf index, so the
winner is the first smallest key, as a left-to-right scan would find it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .jit import kernel


@njit(cache=True, nogil=True)
def tree_size(n):
    """Leaves of a tree over ``n`` keys: the smallest power of two >= max(n, 2)."""
    size = 2
    while size < n:
        size *= 2
    return size


@njit(cache=True, nogil=True, inline="always")
def _winner(keys, a, b):
    return a if keys[a] <= keys[b] else b


@kernel
def tree_build(keys, tree):
    """Computes every node of ``tree`` from ``keys`` (both of length ``size``); O(size)."""
    size = keys.shape[0]
    half = size >> 1
    for i in range(half, size):
        tree[i] = _winner(keys, 2 * i - size, 2 * i + 1 - size)
    for i in range(half - 1, 0, -1):
        tree[i] = _winner(keys, tree[2 * i], tree[2 * i + 1])


@kernel
def tree_update(keys, tree, leaf):
    """Re-plays the path of ``leaf`` after ``keys[leaf]`` changed.

    The path's winner and its key stay in registers: each level only reads the sibling's
    winner, which this update does not change, so the reads do not wait on the writes below
    them (re-reading both children made every level wait for the store of the one before).
    On equal keys the left child, the lower index, wins, as in ``tree_build``.
    """
    size = keys.shape[0]
    i = (leaf + size) >> 1
    base = (leaf >> 1) << 1
    best = _winner(keys, base, base + 1)
    best_key = keys[best]
    tree[i] = best
    while i > 1:
        other = tree[i ^ 1]
        other_key = keys[other]
        # Branch-free: which side wins is data-dependent and would mispredict.
        take = np.int64(other_key < best_key) | (np.int64(other_key == best_key) & (i & 1))
        best += (other - best) * take
        best_key = min(best_key, other_key)
        i >>= 1
        tree[i] = best


@njit(cache=True, nogil=True, inline="always")
def tree_min(tree):
    """The leaf with the smallest key (lowest index among equals)."""
    return tree[1]

