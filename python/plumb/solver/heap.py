"""Array-backed binary min-heaps for numba kernels.

An entry is a pair (key float64, tie int64). Entries order by key, then by tie, so the order is
total and every kernel that pops from a heap is deterministic. Callers encode what they need to
get back (an expert or rank index) in ``tie``.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _before(key_a, tie_a, key_b, tie_b):
    return key_a < key_b or (key_a == key_b and tie_a < tie_b)


@njit(cache=True, nogil=True)
def heap_push(keys, ties, size, key, tie):
    """Adds (key, tie) to the heap of ``size`` entries in ``keys``/``ties``; returns the new size."""
    # Move parents down into the hole rather than swapping: half the stores.
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(key, tie, keys[parent], ties[parent]):
            break
        keys[i] = keys[parent]
        ties[i] = ties[parent]
        i = parent
    keys[i] = key
    ties[i] = tie
    return size + 1


@njit(cache=True, nogil=True)
def heap_pop(keys, ties, size):
    """Removes the smallest entry (``keys[0]``, ``ties[0]``, read them first); returns the new size."""
    size -= 1
    heap_replace_top(keys, ties, size, keys[size], ties[size])
    return size


@njit(cache=True, nogil=True)
def heap_replace_top(keys, ties, size, key, tie):
    """Replaces the smallest entry by (key, tie) in one sift-down (a pop and a push in one)."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(keys[child + 1], ties[child + 1], keys[child], ties[child]):
            child += 1
        if not _before(keys[child], ties[child], key, tie):
            break
        keys[i] = keys[child]
        ties[i] = ties[child]
        i = child
    keys[i] = key
    ties[i] = tie
