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
    level, or None when the cost matrix is not constant on every level; node_of_domain,
    domain_size: int64 [domains], each domain's node id and number of ranks."""

    node_id: np.ndarray
    domain_id: np.ndarray
    level_cost: Optional[np.ndarray]
    node_of_domain: np.ndarray
    domain_size: np.ndarray


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
    node_id = np.unique(topo.node_of_rank, return_inverse=True)[1].astype(np.int64)
    domain_id = np.unique(topo.numa_of_rank, return_inverse=True)[1].astype(np.int64)
    node_of_domain = np.empty(domain_id.max() + 1, dtype=np.int64)
    node_of_domain[domain_id] = node_id
    cached = LevelLayout(node_id, domain_id, per_level if constant else None, node_of_domain,
                         np.bincount(domain_id).astype(np.int64))
    _LAYOUTS[topo] = cached
    return cached


@njit(cache=True, nogil=True, inline="always")
def source_row(tokens, s):
    """The row of one layer's tokens (float64 [G, E], or [1, E] for sources that all send
    the same) that source rank s sends."""
    return s if tokens.shape[0] > 1 else 0


@njit(cache=True, nogil=True)
def group_sums(tokens, domain_id, node_of_domain, node_sum, domain_sum, total):
    """Each expert's tokens (tokens float64 [G, E], one layer, or [1, E]: every source sends
    that row, see ``plumb.locality.traffic.source_traffic``) summed over the sources of each
    node (node_sum [nodes, E]), of each NUMA domain (domain_sum [domains, E]) and over all
    sources (total [E]); outputs overwritten. domain_id int64 [G] and node_of_domain int64
    [domains]: the ``LevelLayout``'s.

    Ranks into domains, domains into their nodes, nodes into the total: each level adds up
    the rows of the one below (a domain lies in one node), over contiguous rows.
    """
    num_experts = tokens.shape[1]
    node_sum[:] = 0.0
    domain_sum[:] = 0.0
    total[:] = 0.0
    for s in range(domain_id.shape[0]):
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


@njit(cache=True, nogil=True, inline="always")
def token_cost_at(own, domain, node, total, level_cost):
    """What an expert's tokens cost on one rank of a topology whose costs are constant on
    each level (``level_cost`` float64 [4]): ``own`` of them come from the rank itself,
    ``domain`` / ``node`` from its NUMA domain / node (own included), ``total`` from all
    sources. Linear in the four sums, so means of sums give mean costs."""
    return (level_cost[0] * own + level_cost[1] * (domain - own)
            + level_cost[2] * (node - domain) + level_cost[3] * (total - node))


@njit(cache=True, nogil=True, inline="always")
def level_cost_at(levels, e, g):
    """``token_cost_at`` of expert e on rank g from one layer's ``levels``: the tuple
    (tokens float64 [G, E] or [1, E] (:func:`source_row`), node_id, domain_id int64 [G],
    level_cost float64 [4], and the ``group_sums`` of the tokens: node_sum [nodes, E],
    domain_sum [domains, E], total [E])."""
    tokens, node_id, domain_id, level_cost, node_sum, domain_sum, total = levels
    return token_cost_at(tokens[source_row(tokens, g), e], domain_sum[domain_id[g], e],
                         node_sum[node_id[g], e], total[e], level_cost)


@njit(cache=True, nogil=True)
def level_token_cost(levels, rows, out):
    """out[e, g] (float64 [E, G]): ``level_cost_at`` for every expert and rank of one layer's
    ``levels`` (whose sums ``group_sums`` has filled): O(G E) instead of the O(G^2 E)
    product tokens.T @ cost; rows: float64 [G, E] scratch."""
    tokens, node_id, domain_id, level_cost, node_sum, domain_sum, total = levels
    # Rank-major first (contiguous, vectorised), then one transpose: writing [E, G] directly
    # scatters every store and took about twice as long.
    num_ranks = node_id.shape[0]
    for g in range(num_ranks):
        own = tokens[source_row(tokens, g)]
        domain = domain_sum[domain_id[g]]
        node = node_sum[node_id[g]]
        row = rows[g]
        for e in range(tokens.shape[1]):
            row[e] = token_cost_at(own[e], domain[e], node[e], total[e], level_cost)
    for e in range(tokens.shape[1]):
        for g in range(num_ranks):
            out[e, g] = rows[g, e]


@njit(cache=True, nogil=True)
def level_group_means(levels, group_of_domain, domain_size, node_of_domain, group_size, sums,
                      out):
    """out[e, k] (float64 [E, groups]): the mean of ``level_cost_at(levels, e, g)`` over the
    ranks g of group k, for groups that are unions of whole NUMA domains (nodes, or the
    domains themselves): from the sums alone, O(E domains) instead of O(E G).

    group_of_domain: int64 [domains], each domain's group (-1: none); domain_size: int64
    [domains], its ranks; node_of_domain: int64 [domains]; group_size: ranks per group;
    sums: float64 [3, groups, E] scratch.
    """
    _, _, _, level_cost, node_sum, domain_sum, total = levels
    num_experts, groups = out.shape
    # Over a group's ranks: own tokens add up to its domains' sums; each rank sees its
    # domain's and its node's sums.
    sums[:] = 0.0
    own, domain, node = sums[0], sums[1], sums[2]
    for d in range(domain_sum.shape[0]):
        k = group_of_domain[d]
        if k < 0:
            continue
        size = domain_size[d]
        for e in range(num_experts):
            own[k, e] += domain_sum[d, e]
            domain[k, e] += size * domain_sum[d, e]
            node[k, e] += size * node_sum[node_of_domain[d], e]
    for k in range(groups):
        for e in range(num_experts):
            out[e, k] = token_cost_at(own[k, e] / group_size, domain[k, e] / group_size,
                                      node[k, e] / group_size, total[e], level_cost)
