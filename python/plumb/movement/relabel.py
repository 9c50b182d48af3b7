"""GPU relabelling: permute interchangeable ranks so that most experts stay where they were.

A balanced placement does not care which of two equal ranks gets which set of experts, but a
rearrangement does: moving rank r's new set onto the rank that already holds most of it turns
transfers into no-ops and local copies. Ranks may trade contents only inside their class of
``plumb.locality.interchangeable_ranks`` (same speed, same view of the links, and under
per-source traffic or nearest dispatch a symmetry of the traffic), so balance and traffic are
unchanged. In layers solved hierarchically (each node holds whole expert groups), whole nodes
map onto whole nodes, so every group stays on one node. The permutation is a maximum-weight
assignment (exact over the allowed permutations): over all ranks at once, or, per node pair,
the best rank assignment and then the best node assignment.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .assignment import max_weight_assignment


@njit(cache=True, nogil=True)
def _sub_assignment(weight, allowed, rows, cols, out):
    """Max-weight assignment of rows -> cols (int64 index lists of equal length) on the
    sub-matrix; writes out[k] = the col matched to rows[k]. Returns (feasible, total)."""
    n = rows.shape[0]
    sub_w = np.empty((n, n))
    sub_a = np.empty((n, n), np.bool_)
    for i in range(n):
        for j in range(n):
            sub_w[i, j] = weight[rows[i], cols[j]]
            sub_a[i, j] = allowed[rows[i], cols[j]]
    match = np.empty(n, np.int64)
    feasible, total = max_weight_assignment(sub_w, sub_a, match)
    for k in range(n):
        out[k] = cols[match[k]]
    return feasible, total


@njit(cache=True, nogil=True)
def _relabel_nodes(rank_w, allowed, node_ranks, node_sizes, perm):
    """perm[r] for whole-node mappings: value of node x -> node y is the best assignment of
    their ranks; then the best node assignment (ties kept at the identity)."""
    num_nodes = node_sizes.shape[0]
    node_w = np.zeros((num_nodes, num_nodes))
    node_ok = np.zeros((num_nodes, num_nodes), np.bool_)
    rank_of = np.empty(node_ranks.shape[1], np.int64)
    for x in range(num_nodes):
        for y in range(num_nodes):
            n = node_sizes[x]
            if node_sizes[y] != n:
                continue
            feasible, total = _sub_assignment(rank_w, allowed, node_ranks[x, :n],
                                              node_ranks[y, :n], rank_of[:n])
            if feasible:
                node_ok[x, y] = True
                node_w[x, y] = total * (num_nodes + 1) + (1.0 if x == y else 0.0)
    node_of = np.empty(num_nodes, np.int64)
    max_weight_assignment(node_w, node_ok, node_of)
    for x in range(num_nodes):
        n = node_sizes[x]
        _sub_assignment(rank_w, allowed, node_ranks[x, :n], node_ranks[node_of[x], :n],
                        rank_of[:n])
        for k in range(n):
            perm[node_ranks[x, k]] = rank_of[k]


@njit(cache=True, nogil=True)
def relabel_ranks(phy2log, previous, num_ranks, num_experts, classes, keep_node, node_ranks,
                  node_sizes, perm):
    """Chooses, per layer, the rank permutation that keeps the most experts in place.

    Args:
        phy2log: int64 [L, P], the new placement; previous: int64 [L, P'] (P' % G == 0).
        classes: int64 [L, G] (or [1, G] for every layer): ranks with equal labels may trade
            contents.
        keep_node: bool [L], layers whose nodes must map onto nodes whole.
        node_ranks: int64 [N, M] ranks of each node, padded with -1; node_sizes: int64 [N].
        perm: int64 [L, G], written: new rank r's experts go to rank perm[l, r].
    An expert stays when the receiving rank held it before (a no-op or a local copy); the
    weight of r -> t is the number of r's slots that stay, ties broken towards the identity.
    """
    num_layers, num_slots = phy2log.shape
    slots = num_slots // num_ranks
    prev_slots = previous.shape[1] // num_ranks
    resident = np.zeros((num_ranks, num_experts), np.bool_)
    rank_w = np.empty((num_ranks, num_ranks))
    allowed = np.empty((num_ranks, num_ranks), np.bool_)
    for layer in range(num_layers):
        label = classes[min(layer, classes.shape[0] - 1)]
        resident[:] = False
        for q in range(previous.shape[1]):
            resident[q // prev_slots, previous[layer, q]] = True
        for r in range(num_ranks):
            for t in range(num_ranks):
                kept = 0
                for q in range(r * slots, (r + 1) * slots):
                    if resident[t, phy2log[layer, q]]:
                        kept += 1
                rank_w[r, t] = kept * (num_ranks + 1) + (1 if r == t else 0)
                allowed[r, t] = label[r] == label[t]
        if keep_node[layer]:
            _relabel_nodes(rank_w, allowed, node_ranks, node_sizes, perm[layer])
        else:
            max_weight_assignment(rank_w, allowed, perm[layer])


def padded_groups(labels: np.ndarray) -> tuple:
    """(members int64 [K, M] padded with -1, sizes int64 [K]) of the groups of equal labels,
    groups ordered by label, members ascending."""
    values = np.unique(labels)
    groups = [np.flatnonzero(labels == value) for value in values]
    width = max(len(g) for g in groups)
    members = np.full((len(groups), width), -1, dtype=np.int64)
    for k, group in enumerate(groups):
        members[k, :len(group)] = group
    return members, np.array([len(g) for g in groups], dtype=np.int64)
