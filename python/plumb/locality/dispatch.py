"""Dispatch models, rank loads, traffic metrics and the nearest-replica routing table.

Even dispatch (vLLM, DeepSeek, TensorRT-LLM): each replica of expert e receives 1/c_e of every
source's tokens for e. Nearest dispatch (SGLang static): a source sends its tokens for e to the
replica with the lowest link cost from it; replicas tied at that cost split them evenly. Rank
loads follow from the routing, so balance is checked under the same model.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from numba import njit

from ..errors import InputError
from ..solver.jit import kernel
from ..solver.threads import run_layers
from ..solver.validate import as_int, as_loads, as_phy2log, to_numpy
from ..topology import CROSS_NODE, CROSS_NUMA, Topology, TopologyLike, as_topology
from .equivalence import placement_invariant
from .levels import group_sums, level_layout, source_row
from .traffic import (DISPATCH_MODES, NEAREST, as_traffic, check_traffic_scale, dispatch_code,
                      source_traffic)


# Under even dispatch a slot is scored in O(1) from its layer's per-level sums: about a third
# of what solving it costs (12 against 34 us per layer of 256 slots on 32 ranks), so those
# layers go to threads only at three times the solver's size. Below that, 16 such layers
# scored in 0.19 ms on one thread and 0.33 ms on two (thread hand-offs).
EVEN_SCORING_SHARE = 3


@njit(cache=True, nogil=True)
def replica_lists(slot_e, num_experts):
    """Replica slots of each expert, ascending.

    Args:
        slot_e: int64 [P], expert held by each slot (one layer's phy2log).
        num_experts: E.

    Returns:
        (rep int64 [E, max count] padded with -1, cnt int64 [E]).
    """
    cnt = np.zeros(num_experts, dtype=np.int64)
    for p in range(slot_e.shape[0]):
        cnt[slot_e[p]] += 1
    rep = np.full((num_experts, max(1, cnt.max())), -1, dtype=np.int64)
    fill = np.zeros(num_experts, dtype=np.int64)
    for p in range(slot_e.shape[0]):
        e = slot_e[p]
        rep[e, fill[e]] = p
        fill[e] += 1
    return rep, cnt


@kernel
def replica_ranks(rep, e, c, slots, ranks):
    """Writes the ranks of expert ``e``'s ``c`` replicas (``rep`` int64 [E, >= c]: their
    slots, from :func:`replica_lists`; ``slots`` per rank) into ``ranks[:c]``."""
    for i in range(c):
        ranks[i] = rep[e, i] // slots


@kernel
def _nearest(cost, s, ranks, c):
    """(lowest link cost from source rank s to the first c of ``ranks``, how many tie at it)."""
    best = np.inf
    ties = 0
    for i in range(c):
        v = cost[s, ranks[i]]
        if v < best:
            best = v
            ties = 1
        elif v == best:
            ties += 1
    return best, ties


@kernel
def expert_routing(ranks, c, weight, tokens, share, cost, level, nearest, rep_load, level_tokens):
    """Routes one expert's tokens to its replicas; returns its traffic cost.

    Args:
        ranks: int64 [>= c], rank of each replica (first c entries used).
        c: replica count.
        weight: the expert's load (float64), split over replicas as rank load.
        tokens: float64 [G], routed picks from each source rank.
        share: float64 [G], each source's share of the expert's load (sums to 1).
        cost: float64 [G, G], link cost per token.
        level: int64 [G, G], link level (only read when level_tokens has 4 entries).
        nearest: NEAREST dispatch if True, else EVEN.
        rep_load: float64 [>= c], output: load carried by each replica.
        level_tokens: float64 [4] accumulated tokens per link level, or [0] to skip.

    Returns:
        float64 traffic cost: sum over sources of tokens * cost to the serving replica.
    """
    num_ranks = tokens.shape[0]
    total = 0.0
    track = level_tokens.shape[0] == 4
    for i in range(c):
        rep_load[i] = 0.0 if nearest else weight / c
    best, ties = np.inf, 0
    for s in range(num_ranks):
        if nearest:
            best, ties = _nearest(cost, s, ranks, c)
        part = weight * share[s] / ties if nearest else 0.0
        per_token = tokens[s] / (ties if nearest else c)
        for i in range(c):
            r = ranks[i]
            if nearest and cost[s, r] != best:
                continue
            rep_load[i] += part
            total += per_token * cost[s, r]
            if track:
                level_tokens[level[s, r]] += per_token
    return total


@njit(cache=True, nogil=True)
def _route_model(phy2log, slots, weights, tokens, cost, level, node_id, domain_id,
                 node_of_domain, level_cost, nearest, layers, rank_loads, traffic_cost,
                 level_tokens):
    """For the ``layers`` (int64 [k]): their rows of rank loads [L, G], traffic cost [L] and
    tokens per level [L, 4] (outputs).

    A replica that serves 1/c of every source (any replica under even dispatch, a lone one
    under nearest) receives, per level, its expert's tokens from its own rank, its NUMA
    domain, its node and all sources (``group_sums``) less the nearer ones: O(1) per slot
    after O(G E) sums. Its cost follows from the levels when the cost matrix is constant on
    each (``level_cost`` float64 [4]; an empty array otherwise: then ``flow[s, r]``, the
    tokens source s sends to rank r, gathers each source's row over rank r's slots, and
    each rank pair's cost is read once). Replicated experts under nearest dispatch go through
    ``expert_routing`` with their source shares computed here for just those experts.
    tokens: float64 [L, G, E], or [L, 1, E] when every source sends the same
    (``source_traffic(compact=True)``); node_id, domain_id: int64 [G], dense node and
    NUMA-domain ids, node_of_domain: int64 [domains] (``level_layout``).
    """
    num_slots = phy2log.shape[1]
    num_experts = weights.shape[1]
    num_ranks = cost.shape[0]
    by_level = level_cost.shape[0] == 4
    ranks = np.empty(num_slots, dtype=np.int64)
    rep_load = np.empty(num_slots, dtype=np.float64)
    column = np.empty(num_ranks, dtype=np.float64)
    share = np.empty(num_ranks, dtype=np.float64)
    spread = np.empty(num_slots, dtype=np.float64)
    flow = np.empty((num_ranks, num_ranks), dtype=np.float64)
    node_sum = np.empty((node_id.max() + 1, num_experts), dtype=np.float64)
    domain_sum = np.empty((domain_id.max() + 1, num_experts), dtype=np.float64)
    total = np.empty(num_experts, dtype=np.float64)
    for layer in layers:
        slot_e = phy2log[layer]
        tok = tokens[layer]
        rep, cnt = replica_lists(slot_e, num_experts)
        loads = rank_loads[layer]
        per_level = level_tokens[layer]
        loads[:] = 0.0
        for p in range(num_slots):
            c = cnt[slot_e[p]]
            # Replicated experts under nearest dispatch are routed below instead.
            spread[p] = 0.0 if nearest and c > 1 else 1.0 / c
            loads[p // slots] += weights[layer, slot_e[p]] * spread[p]
        group_sums(tok, domain_id, node_of_domain, node_sum, domain_sum, total)
        own = 0.0
        in_domain = 0.0
        in_node = 0.0
        anywhere = 0.0
        for p in range(num_slots):
            e = slot_e[p]
            g = p // slots
            f = spread[p]
            own += f * tok[source_row(tok, g), e]
            in_domain += f * domain_sum[domain_id[g], e]
            in_node += f * node_sum[node_id[g], e]
            anywhere += f * total[e]
        per_level[0] = own
        per_level[1] = in_domain - own
        per_level[2] = in_node - in_domain
        per_level[3] = anywhere - in_node
        cost_sum = 0.0
        if by_level:
            for k in range(4):
                cost_sum += per_level[k] * level_cost[k]
        else:
            flow[:] = 0.0
            for s in range(num_ranks):
                row = tok[source_row(tok, s)]
                out = flow[s]
                # Slot j of every rank in turn: G independent sums, not one serial chain.
                for j in range(slots):
                    for r in range(num_ranks):
                        p = r * slots + j
                        out[r] += row[slot_e[p]] * spread[p]
            for s in range(num_ranks):
                for r in range(num_ranks):
                    cost_sum += flow[s, r] * cost[s, r]
        if nearest:
            for e in range(num_experts):
                c = cnt[e]
                if c == 1:
                    continue
                replica_ranks(rep, e, c, slots, ranks)
                total_e = 0.0
                for s in range(num_ranks):
                    column[s] = tok[source_row(tok, s), e]
                    total_e += column[s]
                for s in range(num_ranks):
                    share[s] = column[s] / total_e if total_e > 0 else 1.0 / num_ranks
                cost_sum += expert_routing(ranks, c, weights[layer, e], column, share, cost,
                                           level, nearest, rep_load, per_level)
                for i in range(c):
                    loads[ranks[i]] += rep_load[i]
        traffic_cost[layer] = cost_sum


@njit(cache=True, nogil=True)
def _routing_table_model(phy2log, slots, num_experts, cost, layers, table):
    """table int64 [L, G, E] (output, rows of ``layers`` int64 [k]): slot that source rank s
    uses for expert e (nearest).

    Ties go round-robin by source rank (the (s mod k)-th of the k tied slots, ascending), so
    that sources spread over tied replicas as the even split of the load model assumes.
    Written source-major (contiguous rows) for the lone replicas, then the replicated experts.
    """
    num_ranks = cost.shape[0]
    lowest = np.empty(num_experts, dtype=np.int64)
    for layer in layers:
        slot_e = phy2log[layer]
        rep, cnt = replica_lists(slot_e, num_experts)
        ranks = np.empty(rep.shape[1], dtype=np.int64)
        # Each expert's lowest slot, as one contiguous row copied to every source.
        for p in range(slot_e.shape[0] - 1, -1, -1):
            lowest[slot_e[p]] = p
        for s in range(num_ranks):
            table[layer, s] = lowest
        for e in range(num_experts):
            c = cnt[e]
            if c == 1:
                continue
            replica_ranks(rep, e, c, slots, ranks)
            for s in range(num_ranks):
                best, ties = _nearest(cost, s, ranks, c)
                pick = s % ties
                for i in range(c):
                    if cost[s, ranks[i]] == best:
                        if pick == 0:
                            table[layer, s, e] = rep[e, i]
                            break
                        pick -= 1


def check_phy2log(phy2log: Any, num_experts: int, topo: Topology) -> np.ndarray:
    """phy2log ([L, P] or [P]) as int64 [L, P] with P a multiple of G and every expert of
    [0, E) present (``plumb.solver.validate.as_phy2log`` with L taken from the array)."""
    arr = to_numpy(phy2log, "phy2log")
    num_layers = arr.shape[0] if arr.ndim == 2 else 1
    return as_phy2log(arr, "phy2log", num_layers, num_experts, topo.num_ranks)


def prepare(phy2log: Any, loads: Any, topo: TopologyLike, traffic: Any, dispatch: str,
            compact: bool = False):
    """Validated (phy2log [L, P], weights [L, E], topo, tokens [L, G, E], code, S); tokens
    of uniform sources as [L, 1, E] if ``compact`` (``source_traffic``)."""
    code = dispatch_code(dispatch)
    topo = as_topology(topo)
    weights, _ = as_loads(loads)
    placement = check_phy2log(phy2log, weights.shape[1], topo)
    if weights.shape[0] != placement.shape[0]:
        raise InputError(f"loads must be [L, E] (or [T, L, E]) with L = {placement.shape[0]} "
                         f"layers of phy2log, got {list(np.shape(loads))}")
    counts = as_traffic(traffic, placement.shape[0], topo.num_ranks, weights.shape[1])
    check_traffic_scale(weights, counts, topo.link_cost)
    tokens, _ = source_traffic(counts, weights, topo.num_ranks, False, compact)
    return placement, weights, topo, tokens, code, placement.shape[1] // topo.num_ranks


def routing_table(phy2log: Any, topo: TopologyLike, num_experts: Optional[int] = None) -> np.ndarray:
    """Nearest-replica routing table int64 [L, G, E]: the slot source rank s uses for expert e.

    This is the per-rank static dispatch map SGLang's ``ep_dispatch_algorithm="static"`` needs
    (its ``logical_to_rank_dispatch_physical_map`` indexed [rank, layer, expert]). ``phy2log``
    is [L, P]; ``num_experts`` defaults to max id + 1.
    """
    topo = as_topology(topo)
    arr = to_numpy(phy2log, "phy2log")
    if num_experts is None:
        if arr.dtype.kind not in "iuf":
            raise InputError(f"phy2log must hold integer expert ids, got dtype {arr.dtype}")
        num_experts = int(arr.max()) + 1 if arr.size else 0
    num_experts = as_int(num_experts, "num_experts", 1)
    placement = check_phy2log(arr, num_experts, topo)
    table = np.empty((placement.shape[0], topo.num_ranks, num_experts), dtype=np.int64)
    _routing_table_model(placement, placement.shape[1] // topo.num_ranks, num_experts,
                         topo.link_cost, np.arange(placement.shape[0]), table)
    return table


def traffic_metrics(phy2log: Any, loads: Any, topo: TopologyLike, traffic: Any = None,
                    dispatch: str = "even") -> Dict[str, Any]:
    """Traffic and rank-load metrics of a placement under a dispatch model.

    Args:
        phy2log: int [L, P] (or [P]) expert of each slot.
        loads: float [L, E] (or [E]) expert loads, e.g. routed picks per expert.
        topo: Topology or int G.
        traffic: per-source counts [L, G, E] or [T, L, G, E]; None = uniform sources.
        dispatch: "even" or "nearest".

    Returns a dict:
        dispatch: the model used.
        sources: "per-source" (``traffic`` given) or "uniform" (each rank sends loads / G).
        placement_invariant: True when no placement can change the traffic numbers (uniform
            sources, even dispatch or one replica per expert, every rank's column of the cost
            matrix alike, as on any level-cost topology): the locality pass has nothing to gain.
        traffic: float, total cost (sum of tokens x link cost, in topology cost units).
        traffic_per_layer: float64 [L].
        cross_node_fraction / cross_numa_fraction: float, share of routed tokens served on
            another node / on another NUMA domain of the same node (sum over layers).
        cross_node_fraction_per_layer / cross_numa_fraction_per_layer: float64 [L].
        rank_loads: float64 [L, G], load per rank under this dispatch (equals the even
            loads for "even").
        routing_table: int64 [L, G, E] for "nearest" (see ``routing_table``), else None.
    """
    placement, weights, topo, tokens, code, _ = prepare(phy2log, loads, topo, traffic,
                                                        dispatch, compact=True)
    return _metrics_of(placement, weights, topo, tokens, code, traffic is None)


def validated_traffic_metrics(placement: np.ndarray, weights: np.ndarray, topo: Topology,
                              tokens: np.ndarray, uniform: bool, dispatch: str) -> Dict[str, Any]:
    """``traffic_metrics`` of inputs ``plumb.solve`` has validated: placement int64 [L, P],
    weights float64 [L, E], tokens float64 [L, G, E] (or compact [L, 1, E]) from
    ``source_traffic`` (``uniform``: of no per-source traffic), dispatch "even" | "nearest".
    The same numbers, without checking them again."""
    return _metrics_of(placement, weights, topo, tokens, dispatch_code(dispatch), uniform)


def _metrics_of(placement: np.ndarray, weights: np.ndarray, topo: Topology, tokens: np.ndarray,
                code: int, uniform: bool) -> Dict[str, Any]:
    """The ``traffic_metrics`` dict of validated inputs (tokens float64 [L, G, E], or
    [L, 1, E] for uniform sources)."""
    dispatch = DISPATCH_MODES[code]
    slots = placement.shape[1] // topo.num_ranks
    num_layers = placement.shape[0]
    rank_loads = np.empty((num_layers, topo.num_ranks))
    cost = np.empty(num_layers)
    level_tokens = np.empty((num_layers, 4))
    table = None
    if code == NEAREST:
        table = np.empty((num_layers, topo.num_ranks, weights.shape[1]), dtype=np.int64)

    layout = level_layout(topo)
    level_cost = np.empty(0) if layout.level_cost is None else layout.level_cost

    def route(layers: np.ndarray) -> None:
        _route_model(placement, slots, weights, tokens, topo.link_cost, topo.level,
                     layout.node_id, layout.domain_id, layout.node_of_domain, level_cost,
                     code == NEAREST, layers,
                     rank_loads, cost, level_tokens)
        if table is not None:
            _routing_table_model(placement, slots, weights.shape[1], topo.link_cost, layers,
                                 table)

    # Layers are independent (each writes its own rows): split over the solver's threads,
    # by the work of solving as many slots (run_layers' unit).
    work = placement.size if code == NEAREST else placement.size // EVEN_SCORING_SHARE
    run_layers(route, num_layers, work)
    per_layer_total = level_tokens.sum(axis=1)
    safe = np.where(per_layer_total > 0, per_layer_total, 1.0)
    grand = max(float(per_layer_total.sum()), np.finfo(np.float64).tiny)
    return {
        "dispatch": dispatch,
        "sources": "uniform" if uniform else "per-source",
        "placement_invariant": placement_invariant(topo, None if uniform else tokens, dispatch,
                                                   placement.shape[1] == weights.shape[1]),
        "traffic": float(cost.sum()),
        "traffic_per_layer": cost,
        "cross_node_fraction": float(level_tokens[:, CROSS_NODE].sum() / grand),
        "cross_numa_fraction": float(level_tokens[:, CROSS_NUMA].sum() / grand),
        "cross_node_fraction_per_layer": level_tokens[:, CROSS_NODE] / safe,
        "cross_numa_fraction_per_layer": level_tokens[:, CROSS_NUMA] / safe,
        "rank_loads": rank_loads,
        "routing_table": table,
    }
