"""Maximum-weight perfect assignment on a square matrix (Hungarian method, potentials form).

O(n^3) shortest augmenting paths with row and column potentials (the Jonker-Volgenant
refinement of Kuhn-Munkres). Used to relabel ranks: rows are the ranks of the new placement,
columns the ranks of the previous one, weights the experts kept in place.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def max_weight_assignment(weight, allowed, col_of_row):
    """Maximises sum_i weight[i, col_of_row[i]] over permutations using only allowed pairs.

    Args:
        weight: float64 [n, n]; finite.
        allowed: bool [n, n]; pairs that may be matched.
        col_of_row: int64 [n], written: the column matched to each row.

    Returns:
        (feasible, total): whether some permutation uses allowed pairs only (when it does not,
        col_of_row still holds a permutation) and the total weight of the one written.
    Ties are broken deterministically (lowest column first in each augmenting search).
    """
    n = weight.shape[0]
    if n == 0:
        return True, 0.0
    spread = 1.0
    for i in range(n):
        for j in range(n):
            if allowed[i, j]:
                spread += abs(weight[i, j])
    # A forbidden pair costs more than any allowed permutation could gain.
    forbidden = 2.0 * spread
    cost = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            cost[i, j] = -weight[i, j] if allowed[i, j] else forbidden
    inf = np.inf
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    row_of_col = np.zeros(n + 1, np.int64)  # 1-based row matched to each column; 0 = free
    way = np.zeros(n + 1, np.int64)
    min_to = np.empty(n + 1)
    used = np.empty(n + 1, np.bool_)
    for i in range(1, n + 1):
        row_of_col[0] = i
        col = 0
        min_to[:] = inf
        used[:] = False
        while True:
            used[col] = True
            row = row_of_col[col]
            delta = inf
            nxt = 0
            for j in range(1, n + 1):
                if not used[j]:
                    reduced = cost[row - 1, j - 1] - u[row] - v[j]
                    if reduced < min_to[j]:
                        min_to[j] = reduced
                        way[j] = col
                    if min_to[j] < delta:
                        delta = min_to[j]
                        nxt = j
            for j in range(n + 1):
                if used[j]:
                    u[row_of_col[j]] += delta
                    v[j] -= delta
                else:
                    min_to[j] -= delta
            col = nxt
            if row_of_col[col] == 0:
                break
        while col != 0:
            prev = way[col]
            row_of_col[col] = row_of_col[prev]
            col = prev
    feasible = True
    total = 0.0
    for j in range(1, n + 1):
        i = row_of_col[j] - 1
        col_of_row[i] = j - 1
        if not allowed[i, j - 1]:
            feasible = False
        total += weight[i, j - 1]
    return feasible, total
