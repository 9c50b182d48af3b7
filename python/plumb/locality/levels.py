"""Link levels as sums over sources.

A topology's link level between two ranks always follows from their node and NUMA-domain
labels (same rank, same domain, same node, other node), so the tokens an expert's sources
send over each level to a rank follow from the expert's tokens summed per domain, per node
and in all: O(G E) per layer instead of a sum over every (source, rank) pair. When the cost
matrix is constant on each level (every topology built from levels), costs follow too.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Optional

import numpy as np
from numba import njit

from ..topology import Topology


class LevelLayout(NamedTuple):
    """node_id, domain_id: int64 [G], dense ids (0..nodes-1, 0..domains-1) of each rank's
    node and NUMA domain; level_cost: float64 [4] (SAME_RANK..CROSS_NODE), the cost on each
    level, or None when the cost matrix is not constant on every level."""

    node_id: np.ndarray
    domain_id: np.ndarray
    level_cost: Optional[np.ndarray]


# Topologies are immutable: their layout is derived once per object.
_LAYOUTS: "weakref.WeakKeyDictionary[Topology, LevelLayout]" = weakref.WeakKeyDictionary()


def level_layout(topo: Topology) -> LevelLayout:
    """The :class:`LevelLayout` of ``topo``."""
    cached = _LAYOUTS.get(topo)
    if cached is not None:
        return cached
    per_level = np.zeros(4, dtype=np.float64)
    constant = True
    for index in range(4):
        values = topo.link_cost[topo.level == index]
        if values.size:
            constant = constant and bool(np.all(values == values[0]))
            per_level[index] = values[0]
    cached = LevelLayout(np.unique(topo.node_of_rank, return_inverse=True)[1].astype(np.int64),
                         np.unique(topo.numa_of_rank, return_inverse=True)[1].astype(np.int64),
                         per_level if constant else None)
    _LAYOUTS[topo] = cached
    return cached


@njit(cache=True, nogil=True, inline="always")
def source_row(tokens, s):
    """The row of one layer's tokens (float64 [G, E], or [1, E] for sources that all send
    the same) that source rank s sends."""
    return s if tokens.shape[0] > 1 else 0


@njit(cache=True, nogil=True)
def group_sums(tokens, node_id, domain_id, node_sum, domain_sum, total):
    """Each expert's tokens (tokens float64 [G, E], one layer, or [1, E]: every source sends
    that row, see ``plumb.locality.traffic.source_traffic``) summed over the sources of each
    node (node_sum [nodes, E]), of each NUMA domain (domain_sum [domains, E]) and over all
    sources (total [E]); outputs overwritten.

    Ranks into domains, domains into their nodes, nodes into the total: each level adds up
    the rows of the one below (a domain lies in one node), over contiguous rows.
    """
    num_experts = tokens.shape[1]
    node_sum[:] = 0.0
    domain_sum[:] = 0.0
    total[:] = 0.0
    node_of_domain = np.empty(domain_sum.shape[0], dtype=np.int64)
    for s in range(node_id.shape[0]):
        node_of_domain[domain_id[s]] = node_id[s]
        row = tokens[source_row(tokens, s)]
        out = domain_sum[domain_id[s]]
        for e in range(num_experts):
            out[e] += row[e]
    for d in range(domain_sum.shape[0]):
        row = domain_sum[d]
        out = node_sum[node_of_domain[d]]
        for e in range(num_experts):
            out[e] += row[e]
    for n in range(node_sum.shape[0]):
        row = node_sum[n]
        for e in range(num_experts):
            total[e] += row[e]


@njit(cache=True, nogil=True)
def level_token_cost(tokens, node_id, domain_id, level_cost, node_sum, domain_sum, total, rows,
                     out):
    """out[e, g] (float64 [E, G]): what all of expert e's tokens cost when served on rank g,
    for one layer's tokens (float64 [G, E], or [1, E]: see :func:`source_row`) on a
    topology whose costs are constant on each
    level (``level_cost`` float64 [4]): its own rank's tokens at the same-rank cost, the rest
    of its domain, of its node and of the cluster at theirs. O(G E) instead of the O(G^2 E)
    product tokens.T @ cost; node_sum / domain_sum / total: scratch as in ``group_sums``;
    rows: float64 [G, E] scratch."""
    group_sums(tokens, node_id, domain_id, node_sum, domain_sum, total)
    same_rank = level_cost[0]
    same_domain = level_cost[1]
    same_node = level_cost[2]
    cross_node = level_cost[3]
    # Rank-major first (contiguous, vectorised), then one transpose: writing [E, G] directly
    # scatters every store and took about twice as long.
    num_ranks = node_id.shape[0]
    for g in range(num_ranks):
        own = tokens[source_row(tokens, g)]
        domain = domain_sum[domain_id[g]]
        node = node_sum[node_id[g]]
        row = rows[g]
        for e in range(tokens.shape[1]):
            row[e] = (same_rank * own[e] + same_domain * (domain[e] - own[e])
                      + same_node * (node[e] - domain[e]) + cross_node * (total[e] - node[e]))
    for e in range(tokens.shape[1]):
        for g in range(num_ranks):
            out[e, g] = rows[g, e]
