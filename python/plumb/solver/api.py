"""``plumb.solve``: validate, run the whole-model kernel, apply post-passes, score."""

from __future__ import annotations

import weakref
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..topology import Topology, TopologyLike, as_topology
from .metrics import (as_previous, dispatched_rank_loads, score, solution_metrics,
                      traffic_flows, with_extras)
from .bounds import layer_lower_bounds
from .frozen import frozen_instance
from .model import GLOBAL, HIERARCHICAL, solve_model
from .placement import Placement
from .validate import (HIERARCHIES, POLICIES, as_caps, as_choice, as_int, as_loads,
                       check_load_scale, check_slots, replica_counts, shared_full)

if TYPE_CHECKING:
    from ..movement import MovementOptions

_MODE_NAMES = np.array(["global", "hierarchical"])


class SolveContext(NamedTuple):
    """What a post-pass may use: the validated inputs of one ``solve`` call (immutable; a
    named tuple because it is built on every call, at a fraction of a frozen dataclass's cost).

    weights: float64 [L, E]; window: float64 [T, L, E] or None; previous: int64 [L, P'] or
    None; traffic: float64 [L, G, E] or None; tokens: float64 [L, G, E], the routed picks
    per source rank (``traffic``), or [L, 1, E] without it (each expert's load / G, what
    every rank sends: ``plumb.locality.traffic.source_traffic(compact=True)``), or None when
    traffic plays no part (no traffic, even dispatch); derived once per call for the
    locality pass and the traffic metrics. dispatch: "even" | "nearest"; load_slack:
    float >= 0; winner: int8 [L], GLOBAL or HIERARCHICAL per layer (see ``keep_node``), or
    None; policy: "plumb" | "deepseek"; movement: validated move_budget= / layers=; caps:
    int64 [E], the caller's ``max_replicas_per_expert`` (validated), or None.
    """

    weights: np.ndarray
    window: Optional[np.ndarray]
    topo: Topology
    num_groups: int
    previous: Optional[np.ndarray]
    traffic: Optional[np.ndarray]
    tokens: Optional[np.ndarray] = None
    dispatch: str = "even"
    load_slack: float = 0.0
    winner: Optional[np.ndarray] = None
    policy: str = "plumb"
    movement: Optional[MovementOptions] = None
    caps: Optional[np.ndarray] = None

    @property
    def keep_node(self) -> Optional[np.ndarray]:
        """bool [L], layers solved hierarchically (replicas stay on their node), or None."""
        return None if self.winner is None else self.winner == HIERARCHICAL


# Passes run in order on the balanced phy2log [L, P] and return a new one; the movement and
# locality objectives (their issues) register in _post_passes. Each must keep every layer's max
# rank load (the locality pass: within the caller's load_slack, under the dispatch model). A
# pass after the locality pass keeps its traffic by permuting ranks only within
# plumb.locality.interchangeable_ranks classes.
PostPass = Callable[[np.ndarray, SolveContext], np.ndarray]


@lru_cache(maxsize=None)
def _extensions() -> Tuple[ModuleType, ModuleType, ModuleType]:
    """(plumb.locality, plumb.movement, plumb.robust.objective): imported on the first solve,
    not with ``import plumb`` (their import time), and looked up once."""
    from .. import locality, movement
    from ..robust import objective

    return locality, movement, objective


@lru_cache(maxsize=None)
def _post_passes() -> Tuple[PostPass, ...]:
    """The post-passes in order."""
    locality, movement, _ = _extensions()
    return (locality.locality_pass, movement.movement_pass)


def node_ranks_of(topo: Topology) -> Optional[np.ndarray]:
    """int64 [nodes, gpn]: the ranks of each node, or None if nodes differ in size."""
    nodes = np.unique(topo.node_of_rank)
    ranks = [np.flatnonzero(topo.node_of_rank == n) for n in nodes]
    if len({len(r) for r in ranks}) != 1:
        return None
    return np.ascontiguousarray(np.stack(ranks), dtype=np.int64)


# Topologies are immutable: their kernel inputs are derived once per object.
_KERNEL_TOPOLOGY: "weakref.WeakKeyDictionary[Topology, Tuple]" = weakref.WeakKeyDictionary()


def kernel_topology(topo: Topology) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """(node_ranks_of(topo), rank speeds as a writable float64 [G]), cached per topology.

    Writable because the topology's own read-only array is a numba type of its own: every
    kernel handed it would be compiled a second time (plumb.solver.jit). Not to be written."""
    cached = _KERNEL_TOPOLOGY.get(topo)
    if cached is None:
        cached = (node_ranks_of(topo), np.array(topo.rank_speed, dtype=np.float64))
        _KERNEL_TOPOLOGY[topo] = cached
    return cached


def _modes(hierarchy: str, num_groups: int, node_ranks: Optional[np.ndarray], num_nodes: int,
           caps: Optional[np.ndarray], slots: int) -> Tuple[bool, bool]:
    """(try_global, try_hierarchical) for the plumb policy; ``num_nodes``: the topology's;
    ``caps``: the caller's replica caps int64 [E] (None: the defaults), S ``slots``."""
    feasible = node_ranks is not None and num_groups % num_nodes == 0
    fits_caps = not feasible or caps is None or _node_caps_fit(caps, num_groups, node_ranks,
                                                               slots)
    if hierarchy == "hierarchical":
        if not feasible:
            raise InputError(
                f"hierarchy='hierarchical' needs num_groups ({num_groups}) divisible by the "
                f"topology's nodes ({num_nodes}) and the same number of ranks on every node")
        if not fits_caps:
            raise InputError(
                "hierarchy='hierarchical' cannot keep to max_replicas_per_expert: a node's "
                "expert groups may hold fewer replicas than its slots (at most min(cap, "
                "ranks per node) each); raise the caps or use hierarchy='global'")
        return False, True
    if hierarchy == "global":
        return True, False
    # DeepSeek's rule picks hierarchical iff num_groups % nodes == 0; one node is the global
    # problem. When it does, the global solution is tried too and the better kept per layer.
    return True, feasible and fits_caps and num_nodes > 1


def _node_caps_fit(caps: np.ndarray, num_groups: int, node_ranks: np.ndarray,
                   slots: int) -> bool:
    """Whether every node can fill its slots within ``caps`` (int64 [E]) whichever groups
    the hierarchical policy gives it: a node's expert gets at most min(cap, ranks per node)
    replicas there, and the node's ``num_groups / nodes`` groups are any of the groups."""
    nodes, per_node = node_ranks.shape
    group_room = np.minimum(caps, per_node).reshape(num_groups, -1).sum(axis=1)
    smallest = np.sort(group_room)[:num_groups // nodes].sum()
    return bool(smallest >= per_node * slots)


def _hierarchy_label(winner: np.ndarray) -> str:
    """"global", "hierarchical" or "mixed" for the per-layer winners int8 [L]."""
    num_hier = int(np.count_nonzero(winner))
    if num_hier == 0:
        return "global"
    return "hierarchical" if num_hier == winner.shape[0] else "mixed"


def solve(loads: Any, topo: TopologyLike, num_redundant: int = 0, num_groups: int = 1,
          policy: str = "plumb", previous: Any = None, traffic: Any = None,
          hierarchy: str = "auto", max_replicas_per_expert: Any = None,
          bytes_per_expert: Optional[int] = None, objective: Optional[str] = None,
          half_life: Any = None, load_slack: float = 0.0,
          dispatch: str = "even", move_budget: Any = None, layers: Any = None) -> Placement:
    """Places E experts plus ``num_redundant`` replicas on the ranks of ``topo``, every layer.

    Args:
        loads: expert loads (token counts or any non-negative weights), numpy / torch / lists:
            [E] (one layer), [L, E], or [T, L, E] (a window of steps, oldest first; summed).
            Only their ratios matter; each layer's total over the slowest rank's speed must
            be at most 1e300 (``plumb.solver.validate.LOAD_LIMIT``), and with traffic
            metrics so must a layer's routed picks times the largest link cost; a layer's
            total over the fastest rank's speed must be 0 or at least 1e-290
            (``LOAD_FLOOR``).
        topo: plumb.Topology, or an int G (one node).
        num_redundant: extra replicas per layer; P = E + num_redundant slots, P % G == 0.
        num_groups: expert groups (contiguous, E % num_groups == 0) for group-limited routing.
        policy: "plumb" (water-filling replication, LPT packing with local search; two
            replicas of one expert share a rank only when E < P / G forces it or when that
            lowers the layer's busiest rank, as DeepSeek's packing does; on ranks of equal
            speed never less balanced than DeepSeek's, ties aside; DeepSeek ignores
            rank_speed, and where E < P / G forces stacking on ranks of unequal speed its
            packing can come out ahead) or "deepseek" (the exact DeepSeek / vLLM greedy, its
            own hierarchy rule, ignores rank_speed).
        previous: the current placement (int [L, P'] or Placement): the new one moves as
            few experts from it as it can at the same balance (plumb.movement: interchangeable
            ranks relabelled, staying experts keep their slots, swaps within load_slack, or,
            where it moves less, the previous placement repaired down to the same max load),
            and the moves metric is reported against it.
        traffic: per-source counts [L, G, E] (or [T, L, G, E]): how many routed picks each
            source rank sent to each expert. Given (or with dispatch "nearest"), policy
            "plumb" runs the locality pass after balancing (plumb.locality) and
            ``metrics.traffic`` reports traffic cost and cross-node / cross-NUMA fractions.
            Without it tokens originate uniformly over ranks; under even dispatch placement
            then cannot change traffic on a level-cost topology, so no pass runs.
        hierarchy: "auto" (DeepSeek's rule: hierarchical iff num_groups % nodes == 0; the
            global solution is then tried as well and the better one kept per layer),
            "global" or "hierarchical" (forced; ``metrics.lower_bound`` is then over the
            placements that keep each group on one node:
            ``plumb.solver.bounds.hierarchical_bound``).
        max_replicas_per_expert: int or int [E] replica cap per expert (default G, or more
            where stacking pays); plumb only. Hierarchical layers give an expert at most
            min(cap, ranks per node) replicas, so caps that could leave a node's groups
            short of its slots rule the hierarchical policy out ("auto" solves globally,
            "hierarchical" raises). With ``previous``, repairs add no replica past a cap;
            layers kept as ``previous`` (``layers``, a spent ``move_budget``) keep its counts.
        bytes_per_expert: bytes of one expert's weights, to report moved bytes.
        objective: "mean" (default: balance the loads summed over the window) or "robust"
            (needs a window [T, L, E] and the global policy): minimise, per layer,
            ``J = sum_t a_t max_g R[t, g]``, the expected per-step max rank time, where
            ``R[t, g]`` sums ``x'[t, e] / c_e`` over rank g's replicas (divided by its speed),
            ``a_t`` are the step weights (sum 1) and ``x'_t = (x_t + sum_s a_s x_s) / 2`` is
            each step shrunk halfway to the weighted mean step (against fitting sampling
            noise); see :mod:`plumb.robust.model`. Layers with one replica per expert and
            equal rank speeds, at most 20,000 packings, get the exact optimum of J (ties keep
            the mean-objective packing; :mod:`plumb.robust.exact`).
        half_life: objective "robust" only: step t of T weighs ``0.5 ** ((T-1-t) / half_life)``
            (recent steps count more); None weighs all steps equally.
        load_slack: float >= 0: the locality pass may let each layer's max rank load / speed
            grow to (1 + load_slack) x the balanced one (0.0: balance never worse).
        dispatch: "even" (vLLM / DeepSeek: each replica gets 1/c of every source's tokens)
            or "nearest" (SGLang static: each source uses its cheapest replica, ties split
            evenly). Under "nearest", ``rank_loads`` and balancedness follow that routing and
            ``metrics.traffic["routing_table"]`` is the per-source dispatch map.
        move_budget: incremental rebalancing from ``previous`` (same P, even dispatch): an
            int >= 0, the most experts moved over all layers, or ints [L] per layer; spent
            greedily on the moves that lower max load most (plumb.movement.budget).
        layers: only these layers change (indices), or "auto:k" for the k layers whose max
            load drops most; the others keep ``previous`` (same P, even dispatch).

    Returns:
        :class:`Placement`; ``metrics.hierarchy`` / ``layer_hierarchy`` say which policy won.
    """
    locality, movement, robust = _extensions()
    topo = as_topology(topo)
    weights, window = as_loads(loads)
    num_layers, num_experts = weights.shape
    num_redundant = as_int(num_redundant, "num_redundant", 0)
    num_groups = as_int(num_groups, "num_groups", 1)
    policy = as_choice(policy, "policy", POLICIES)
    hierarchy = as_choice("auto" if hierarchy is None else hierarchy, "hierarchy", HIERARCHIES)
    objective = robust.as_objective(objective, window, policy, hierarchy, half_life)
    num_ranks = topo.num_ranks
    num_slots = num_experts + num_redundant
    slots = check_slots(num_experts, num_slots, num_ranks)
    if num_experts % num_groups:
        raise InputError(f"E = {num_experts} experts must be divisible by num_groups = "
                         f"{num_groups}")
    if previous is not None:
        previous = as_previous(previous, num_layers, num_experts, num_ranks)
    if traffic is not None:
        traffic = locality.as_traffic(traffic, num_layers, num_ranks, num_experts)
    dispatch = as_choice(dispatch, "dispatch", locality.DISPATCH_MODES)
    tokens = None
    if traffic is not None or dispatch != "even":
        locality.check_traffic_scale(weights, traffic, topo.link_cost)
        tokens, _ = locality.source_traffic(traffic, weights, num_ranks, False, compact=True)
    load_slack = locality.as_load_slack(load_slack)
    options = movement.as_movement_options(move_budget, layers, previous, num_layers,
                                           num_slots, dispatch)
    node_ranks, speed = kernel_topology(topo)
    check_load_scale(weights, topo.slowest_speed, topo.fastest_speed)
    solved = None

    if policy == "plumb":
        caps = as_caps(max_replicas_per_expert, num_experts, num_slots, num_ranks)
        try_global, try_hier = _modes(hierarchy, num_groups, node_ranks, topo.num_nodes,
                                      None if max_replicas_per_expert is None else caps, slots)
        balanced = weights
        if objective == "robust":
            try_global, try_hier = True, False
            balanced = robust.recency_weighted(window, half_life)
        if node_ranks is None:
            node_ranks = np.arange(num_ranks, dtype=np.int64)[None, :]
        per_node = node_ranks.shape[1]
        # Under the default caps, stacking (where it pays) may give an expert more than G.
        stack_caps = caps if max_replicas_per_expert is not None else \
            shared_full(num_experts, num_slots)
        solved = solve_model(balanced, caps, speed, node_ranks, num_groups, slots, try_global,
                             try_hier, num_experts * num_ranks < num_slots,
                             num_experts * per_node < num_slots, stack_caps)
        phy2log, logcnt, rank_loads = solved.phy2log, solved.logcnt, solved.rank_load
        winner, candidates = solved.winner, solved.candidate_max
        if objective == "robust":
            phy2log = robust.robust_phy2log(phy2log, window, caps, speed,
                                            num_experts * num_ranks < num_slots, half_life)
            logcnt = replica_counts(phy2log, num_experts)
            rank_loads = candidates = None
    else:
        if max_replicas_per_expert is not None:
            raise InputError("max_replicas_per_expert applies to policy='plumb' only")
        phy2log, logcnt, winner = _deepseek(weights, num_slots, num_groups, topo, hierarchy)
        rank_loads = candidates = None

    context = SolveContext(weights, window, topo, num_groups, previous, traffic, tokens,
                           dispatch=dispatch, load_slack=load_slack, winner=winner,
                           policy=policy, movement=options,
                           caps=None if max_replicas_per_expert is None else caps)
    for post_pass in _post_passes():
        passed = post_pass(phy2log, context)
        if passed is not phy2log:
            phy2log = passed
            logcnt = replica_counts(phy2log, num_experts)
            rank_loads = None

    flows = traffic_flows(phy2log, weights, topo, traffic, dispatch, tokens=tokens)
    nearest_loads = dispatched_rank_loads(flows)
    if nearest_loads is not None:
        rank_loads = nearest_loads
    labels = dict(hierarchy=_hierarchy_label(winner), layer_hierarchy=_MODE_NAMES.take(winner),
                  candidate_max_load=candidates)
    # The kernel scored its own solution; anything that changed it is scored here.
    unchanged = solved is not None and phy2log is solved.phy2log and \
        rank_loads is solved.rank_load
    if unchanged and balanced is weights:
        metrics = solution_metrics(solved, **labels)
    else:
        # The kernel's lower bounds hold for any placement of the same loads (under a forced
        # hierarchy: for any that keeps the groups within nodes).
        bound = solved.lower_bound if solved is not None and balanced is weights else None
        if bound is not None and hierarchy == "hierarchical":
            bound = _hierarchical_bounds_kept(phy2log, bound, weights, topo, num_groups)
        metrics = score(phy2log, logcnt, weights, topo, rank_loads, bound=bound, **labels)
    metrics = with_extras(metrics, phy2log, weights, topo, previous, flows, bytes_per_expert)
    return frozen_instance(Placement, phy2log=phy2log, logcnt=logcnt, metrics=metrics,
                           loads=weights, window=window, topo=topo,
                           num_redundant=num_redundant, num_groups=num_groups, policy=policy,
                           hierarchy=hierarchy, previous=previous, traffic=traffic)


def groups_within_nodes(phy2log: np.ndarray, num_experts: int, num_groups: int,
                        topo: Topology) -> np.ndarray:
    """bool [L]: the layers of ``phy2log`` (int64 [L, P]) that place like the hierarchical
    policy: every replica of each of the ``num_groups`` contiguous expert groups on one
    node, and the same number of groups on every node."""
    num_layers, num_slots = phy2log.shape
    # Node labels may be any ints: positions 0..nodes-1 instead.
    labels, rank_node = np.unique(topo.node_of_rank, return_inverse=True)
    slot_node = np.broadcast_to(rank_node[np.arange(num_slots) // (num_slots // topo.num_ranks)],
                                phy2log.shape)
    layer = np.arange(num_layers)[:, None]
    group = phy2log // (num_experts // num_groups)
    # One node per group (a replica's, any: every group has one), then every replica on it.
    group_node = np.empty((num_layers, num_groups), dtype=np.int64)
    group_node[layer, group] = slot_node
    whole = (group_node[layer, group] == slot_node).all(axis=1)
    per_node = (group_node[:, :, None] == np.arange(labels.size)).sum(axis=1)
    return whole & (per_node == num_groups // labels.size).all(axis=1)


def _hierarchical_bounds_kept(phy2log: np.ndarray, bound: np.ndarray, weights: np.ndarray,
                              topo: Topology, num_groups: int) -> np.ndarray:
    """The kernel's bounds float64 [L] of a forced-hierarchical solve (over hierarchical
    placements), kept for the layers a post-pass left hierarchical (``groups_within_nodes``);
    the others (a previous placement kept or repaired) get the bound over all placements."""
    within = groups_within_nodes(phy2log, weights.shape[1], num_groups, topo)
    if within.all():
        return bound
    others = np.flatnonzero(~within)
    global_bound = np.empty(others.shape[0])
    layer_lower_bounds(np.ascontiguousarray(weights[others]), phy2log.shape[1],
                       kernel_topology(topo)[1], global_bound)
    bound = bound.copy()
    bound[others] = global_bound
    return bound


def _deepseek(weights: np.ndarray, num_slots: int, num_groups: int, topo: Topology,
              hierarchy: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phy2log, logcnt, winner) of the DeepSeek greedy in the requested hierarchy mode.

    DeepSeek's hierarchical mapping numbers ranks node-major (node n holds ranks n * gpn to
    (n + 1) * gpn - 1, every node the same size). Topologies labelled otherwise get the same
    placement with each node's rank blocks moved to that node's ranks; with nodes of unequal
    size the hierarchical mapping does not apply ("auto" falls back to global, as for
    num_groups not divisible by the nodes)."""
    from .deepseek import deepseek_rebalance

    num_nodes = topo.num_nodes
    node_ranks, _ = kernel_topology(topo)
    hierarchical = num_groups % num_nodes == 0 and node_ranks is not None
    if hierarchy == "hierarchical" and not hierarchical:
        raise InputError(f"hierarchy='hierarchical' needs num_groups ({num_groups}) divisible "
                         f"by the topology's nodes ({num_nodes}) and the same number of ranks "
                         "on every node")
    if hierarchy == "global":
        hierarchical = False
    groups, nodes = (num_groups, num_nodes) if hierarchical else (1, 1)
    phy2log, logcnt = deepseek_rebalance(weights, num_slots, groups, nodes, topo.num_ranks)
    phy2log = np.ascontiguousarray(phy2log, dtype=np.int64)
    if hierarchical and num_nodes > 1:
        ranks = node_ranks.ravel()
        if (ranks != np.arange(ranks.shape[0])).any():
            slots = num_slots // topo.num_ranks
            blocks = phy2log.reshape(phy2log.shape[0], -1, slots)
            placed = np.empty_like(blocks)
            placed[:, ranks] = blocks
            phy2log = placed.reshape(phy2log.shape)
    mode = HIERARCHICAL if hierarchical and num_nodes > 1 else GLOBAL
    winner = np.full(weights.shape[0], mode, dtype=np.int8)
    return phy2log, np.ascontiguousarray(logcnt, dtype=np.int64), winner
