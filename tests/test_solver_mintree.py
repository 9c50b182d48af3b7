"""The tournament tree behind water-filling, LPT and the swap search."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from plumb.solver.mintree import tree_build, tree_min, tree_size, tree_update


@njit(cache=True)
def _replay(keys, tree, leaves, values, winners):
    """Sets keys[leaves[k]] = values[k] one by one, recording the tree's winner after each."""
    for k in range(leaves.shape[0]):
        keys[leaves[k]] = values[k]
        tree_update(keys, tree, leaves[k])
        winners[k] = tree_min(tree)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 70), st.integers(0, 2**32 - 1), st.integers(1, 200))
def test_winner_is_the_lowest_index_of_the_smallest_key_after_every_update(n, seed, updates):
    # Few distinct values (and inf, the "full" marker) make ties the common case.
    rng = np.random.default_rng(seed)
    palette = np.array([0.0, 1.0, 2.5, 3.0, np.inf])
    size = tree_size(n)
    keys = np.full(size, np.inf)
    keys[:n] = rng.choice(palette, n)
    tree = np.empty(size, dtype=np.int64)
    tree_build(keys, tree)
    assert tree_min(tree) == int(np.argmin(keys))
    leaves = rng.integers(0, n, updates)
    values = rng.choice(palette, updates)
    winners = np.empty(updates, dtype=np.int64)
    _replay(keys.copy(), tree, leaves, values, winners)
    expected = keys.copy()
    for k in range(updates):
        expected[leaves[k]] = values[k]
        assert winners[k] == int(np.argmin(expected)), k
