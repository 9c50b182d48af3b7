"""``plumb.solve``: validate, run the whole-model kernel, apply post-passes, score."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..topology import Topology, TopologyLike, as_topology
from .metrics import as_previous, rank_loads_of, score, with_extras
from .model import GLOBAL, HIERARCHICAL, solve_model
from .placement import Placement, log2phy_of
from .validate import (HIERARCHIES, POLICIES, as_caps, as_choice, as_int, as_loads,
                       check_slots, replica_counts)

_MODE_NAMES = np.array(["global", "hierarchical"])


@dataclass(frozen=True, eq=False)
class SolveContext:
    """What a post-pass may use: the validated inputs of one ``solve`` call.

    weights: float64 [L, E]; window: float64 [T, L, E] or None; previous: int64 [L, P'] or
    None; traffic: float64 [L, G, E] or None.
    """

    weights: np.ndarray
    window: Optional[np.ndarray]
    topo: Topology
    num_groups: int
    previous: Optional[np.ndarray]
    traffic: Optional[np.ndarray]


# Passes run in order on the balanced phy2log [L, P] and return a new one; the movement and
# locality objectives (their issues) register here. Each must keep every layer's max rank load.
PostPass = Callable[[np.ndarray, SolveContext], np.ndarray]
POST_PASSES: Tuple[PostPass, ...] = ()


def node_ranks_of(topo: Topology) -> Optional[np.ndarray]:
    """int64 [nodes, gpn]: the ranks of each node, or None if nodes differ in size."""
    nodes = np.unique(topo.node_of_rank)
    ranks = [np.flatnonzero(topo.node_of_rank == n) for n in nodes]
    if len({len(r) for r in ranks}) != 1:
        return None
    return np.ascontiguousarray(np.stack(ranks), dtype=np.int64)


def _modes(hierarchy: str, num_groups: int, node_ranks: Optional[np.ndarray]) -> Tuple[bool, bool]:
    """(try_global, try_hierarchical) for the plumb policy."""
    num_nodes = 1 if node_ranks is None else node_ranks.shape[0]
    feasible = node_ranks is not None and num_groups % num_nodes == 0
    if hierarchy == "hierarchical":
        if not feasible:
            raise InputError(
                f"hierarchy='hierarchical' needs num_groups ({num_groups}) divisible by the "
                f"topology's nodes ({num_nodes}) and the same number of ranks on every node")
        return False, True
    if hierarchy == "global":
        return True, False
    # DeepSeek's rule picks hierarchical iff num_groups % nodes == 0; one node is the global
    # problem. When it does, the global solution is tried too and the better kept per layer.
    return True, feasible and num_nodes > 1


def solve(loads: Any, topo: TopologyLike, num_redundant: int = 0, num_groups: int = 1,
          policy: str = "plumb", previous: Any = None, traffic: Any = None,
          hierarchy: str = "auto", max_replicas_per_expert: Any = None,
          bytes_per_expert: Optional[int] = None) -> Placement:
    """Places E experts plus ``num_redundant`` replicas on the ranks of ``topo``, every layer.

    Args:
        loads: expert loads (token counts or any non-negative weights), numpy / torch / lists:
            [E] (one layer), [L, E], or [T, L, E] (a window of steps, oldest first; summed).
        topo: plumb.Topology, or an int G (one node).
        num_redundant: extra replicas per layer; P = E + num_redundant slots, P % G == 0.
        num_groups: expert groups (contiguous, E % num_groups == 0) for group-limited routing.
        policy: "plumb" (water-filling replication, LPT packing with local search; never two
            replicas of one expert on a rank unless E < P / G forces it) or "deepseek" (the
            exact DeepSeek / vLLM greedy, its own hierarchy rule, ignores rank_speed).
        previous: the current placement (int [L, P'] or Placement); the moves metric is
            reported against it.
        traffic: per-source counts [L, G, E] (or [T, L, G, E]) for the traffic metrics.
        hierarchy: "auto" (DeepSeek's rule: hierarchical iff num_groups % nodes == 0; the
            global solution is then tried as well and the better one kept per layer),
            "global" or "hierarchical" (forced).
        max_replicas_per_expert: int or int [E] replica cap per expert (default G); plumb only.
        bytes_per_expert: bytes of one expert's weights, to report moved bytes.

    Returns:
        :class:`Placement`; ``metrics.hierarchy`` / ``layer_hierarchy`` say which policy won.
    """
    topo = as_topology(topo)
    weights, window = as_loads(loads)
    num_layers, num_experts = weights.shape
    num_redundant = as_int(num_redundant, "num_redundant", 0)
    num_groups = as_int(num_groups, "num_groups", 1)
    policy = as_choice(policy, "policy", POLICIES)
    hierarchy = as_choice("auto" if hierarchy is None else hierarchy, "hierarchy", HIERARCHIES)
    num_ranks = topo.num_ranks
    num_slots = num_experts + num_redundant
    slots = check_slots(num_experts, num_slots, num_ranks)
    if num_experts % num_groups:
        raise InputError(f"E = {num_experts} experts must be divisible by num_groups = "
                         f"{num_groups}")
    if previous is not None:
        previous = as_previous(previous, num_layers, num_experts, num_ranks)
    if traffic is not None:
        from ..locality import as_traffic

        traffic = as_traffic(traffic, num_layers, num_ranks, num_experts)
    node_ranks = node_ranks_of(topo)

    if policy == "plumb":
        caps = as_caps(max_replicas_per_expert, num_experts, num_slots, num_ranks)
        try_global, try_hier = _modes(hierarchy, num_groups, node_ranks)
        if node_ranks is None:
            node_ranks = np.arange(num_ranks, dtype=np.int64)[None, :]
        per_node = node_ranks.shape[1]
        phy2log = np.empty((num_layers, num_slots), dtype=np.int64)
        logcnt = np.empty((num_layers, num_experts), dtype=np.int64)
        rank_loads = np.empty((num_layers, num_ranks), dtype=np.float64)
        winner = np.empty(num_layers, dtype=np.int8)
        candidates = np.empty((num_layers, 2), dtype=np.float64)
        speed = np.ascontiguousarray(topo.rank_speed)
        solve_model(weights, caps, speed, node_ranks, num_groups, slots, try_global, try_hier,
                    num_experts * num_ranks < num_slots, num_experts * per_node < num_slots,
                    phy2log, logcnt, rank_loads, winner, candidates)
        if max_replicas_per_expert is None:
            _keep_deepseek_where_better(weights, topo, num_groups, try_hier, slots, phy2log,
                                        logcnt, rank_loads, winner)
    else:
        if max_replicas_per_expert is not None:
            raise InputError("max_replicas_per_expert applies to policy='plumb' only")
        phy2log, logcnt, winner = _deepseek(weights, num_slots, num_groups, topo, hierarchy)
        rank_loads = candidates = None

    context = SolveContext(weights, window, topo, num_groups, previous, traffic)
    for post_pass in POST_PASSES:
        phy2log = post_pass(phy2log, context)
        logcnt = replica_counts(phy2log, num_experts)
        rank_loads = None

    layer_modes = _MODE_NAMES[winner]
    used = np.unique(layer_modes)
    metrics = replace(score(phy2log, logcnt, weights, topo, rank_loads),
                      hierarchy=str(used[0]) if used.size == 1 else "mixed",
                      layer_hierarchy=layer_modes, candidate_max_load=candidates)
    metrics = with_extras(metrics, phy2log, weights, topo, previous, None, bytes_per_expert)
    if traffic is not None:
        metrics = with_extras(metrics, phy2log, weights, topo, None, traffic, None)
    return Placement(phy2log=phy2log, log2phy=log2phy_of(phy2log, logcnt), logcnt=logcnt,
                     metrics=metrics, loads=weights, window=window, topo=topo,
                     num_redundant=num_redundant, num_groups=num_groups, policy=policy,
                     hierarchy=hierarchy, previous=previous, traffic=traffic)


def _keep_deepseek_where_better(weights: np.ndarray, topo: Topology, num_groups: int,
                                hierarchical: bool, slots: int, phy2log: np.ndarray,
                                logcnt: np.ndarray, rank_loads: np.ndarray,
                                winner: np.ndarray) -> None:
    """Replaces, in place, the layers where the DeepSeek greedy (same hierarchy mode) balances
    strictly better and puts no expert twice on a rank: a guarantee, rarely used (skewed
    layers where a capped hot expert leaves the local search in a local optimum).
    """
    mode = "hierarchical" if hierarchical else "global"
    theirs, counts, their_mode = _deepseek(weights, phy2log.shape[1], num_groups, topo, mode)
    loads = rank_loads_of(theirs, counts, weights, topo.num_ranks)
    speed = topo.rank_speed
    per_rank = np.sort(theirs.reshape(theirs.shape[0], topo.num_ranks, slots), axis=2)
    stacked = (per_rank[:, :, 1:] == per_rank[:, :, :-1]).any(axis=(1, 2))
    better = ((loads / speed).max(axis=1) < (rank_loads / speed).max(axis=1)) & ~stacked
    phy2log[better] = theirs[better]
    logcnt[better] = counts[better]
    rank_loads[better] = loads[better]
    winner[better] = their_mode[better]


def _deepseek(weights: np.ndarray, num_slots: int, num_groups: int, topo: Topology,
              hierarchy: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phy2log, logcnt, winner) of the DeepSeek greedy in the requested hierarchy mode."""
    from .deepseek import deepseek_rebalance

    num_nodes = topo.num_nodes
    hierarchical = num_groups % num_nodes == 0
    if hierarchy == "hierarchical" and not hierarchical:
        raise InputError(f"hierarchy='hierarchical' needs num_groups ({num_groups}) divisible "
                         f"by the topology's nodes ({num_nodes})")
    if hierarchy == "global":
        hierarchical = False
    groups, nodes = (num_groups, num_nodes) if hierarchical else (1, 1)
    phy2log, logcnt = deepseek_rebalance(weights, num_slots, groups, nodes, topo.num_ranks)
    mode = HIERARCHICAL if hierarchical and num_nodes > 1 else GLOBAL
    winner = np.full(weights.shape[0], mode, dtype=np.int8)
    return (np.ascontiguousarray(phy2log, dtype=np.int64),
            np.ascontiguousarray(logcnt, dtype=np.int64), winner)
