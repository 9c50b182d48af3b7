"""SPEC section 2 metrics of any placement under even dispatch, and ``plumb.evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional

import numpy as np

from ..topology import Topology, TopologyLike, as_topology
from .bounds import layer_lower_bounds
from .frozen import frozen_instance
from .validate import as_int, as_loads, as_phy2log, check_load_scale, replica_counts


@dataclass(frozen=True, eq=False)
class Moves:
    """What a placement costs to reach from a previous one (SPEC section 2).

    Attributes:
        moves: (layer, slot) pairs whose expert must arrive from another rank.
        local_copies: pairs whose expert was already resident on the same rank, elsewhere.
        layer_moves: int64 [L], moves per layer.
        received: int64 [G], moves arriving at each rank (all layers).
        bytes_moved, max_bytes_received: moves and max(received) times bytes_per_expert, or
            None when bytes_per_expert was not given.
        cost: ``plumb.rearrange.MovementStats`` (senders routed as plumb.plan_rearrangement:
            per-rank bytes sent and received, intra- / inter-node bytes, estimated seconds from
            the topology's bandwidths) when bytes_per_expert was given and the previous
            placement has the same P; else None.
    """

    moves: int
    local_copies: int
    layer_moves: np.ndarray
    received: np.ndarray
    bytes_moved: Optional[int]
    max_bytes_received: Optional[int]
    cost: Any = None


@dataclass(frozen=True, eq=False)
class Metrics:
    """Balance metrics of a placement (rank times are load / rank_speed).

    Attributes:
        rank_loads: float64 [L, G], load per rank; each replica of e carries w_e / c_e.
        balancedness: model balancedness, sum over layers of the ideal rank time (mean load
            when all ranks have speed 1) over sum of the max rank time; 1.0 is perfect.
        layer_balancedness: float64 [L].
        max_load: float64 [L], the busiest rank's load / speed.
        lower_bound: float64 [L], no placement can make max_load lower (see bounds.py);
            from ``solve(hierarchy="hierarchical")``, no placement that keeps each expert
            group on one node (as many per node) can, on the layers placed so.
        lb_gap: float64 [L], max_load / lower_bound - 1 (0 where both are 0).
        lb_gap_mean, lb_gap_max: mean and worst layer of lb_gap.
        moves: :class:`Moves` vs the previous placement, or None.
        traffic: ``plumb.locality.traffic_metrics`` under the dispatch model when
            per-source traffic was given or dispatch is "nearest", else None (even dispatch
            with sources uniform over ranks: on level-cost topologies no placement changes
            traffic). For "nearest" it holds the routing table and ``rank_loads`` (and so
            balancedness) follow the routing.
        hierarchy: for ``solve``: "global", "hierarchical" or "mixed" (per layer, the better
            of the two was kept); None for ``evaluate``.
        layer_hierarchy: str [L] policy used per layer (solve only).
        candidate_max_load: float64 [L, 2], max_load of the global and the hierarchical
            solution of each layer, inf for one not tried (solve, policy "plumb" only).
        heldout_balancedness: ``evaluate`` with a window [T, L, E] (pass held-out steps): the
            mean over steps of each step's model balancedness under even dispatch (what users
            feel; the other metrics score the window summed over steps); else None.
        step_balancedness: float64 [T], each step's model balancedness, or None.
    """

    rank_loads: np.ndarray
    balancedness: float
    layer_balancedness: np.ndarray
    max_load: np.ndarray
    lower_bound: np.ndarray
    lb_gap: np.ndarray
    lb_gap_mean: float
    lb_gap_max: float
    moves: Optional[Moves] = None
    traffic: Optional[Dict[str, Any]] = None
    hierarchy: Optional[str] = None
    layer_hierarchy: Optional[np.ndarray] = None
    candidate_max_load: Optional[np.ndarray] = None
    heldout_balancedness: Optional[float] = None
    step_balancedness: Optional[np.ndarray] = None

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"balancedness {self.balancedness:.4f} (worst layer "
                 f"{self.layer_balancedness.min():.4f}), lb_gap mean {self.lb_gap_mean:.3%} "
                 f"worst {self.lb_gap_max:.3%}"]
        if self.hierarchy is not None:
            lines.append(f"hierarchy {self.hierarchy}")
        if self.moves is not None:
            lines.append(f"moves {self.moves.moves} (+{self.moves.local_copies} local copies)")
        return "\n".join(lines)


def rank_loads_of(phy2log: np.ndarray, logcnt: np.ndarray, weights: np.ndarray,
                  num_ranks: int) -> np.ndarray:
    """float64 [L, G] under even dispatch, for a valid phy2log [L, P] with counts [L, E]."""
    share = np.take_along_axis(weights / logcnt, phy2log, axis=1)
    return share.reshape(phy2log.shape[0], num_ranks, -1).sum(axis=2)


def moves_between(phy2log: np.ndarray, previous: np.ndarray, num_experts: int, num_ranks: int,
                  bytes_per_expert: Optional[int] = None) -> Moves:
    """Moves and local copies needed to go from ``previous`` [L, P'] to ``phy2log`` [L, P]."""
    num_layers, num_slots = phy2log.shape
    layers = np.arange(num_layers)[:, None]
    resident = np.zeros((num_layers, num_ranks, num_experts), dtype=bool)
    resident[layers, np.arange(previous.shape[1]) // (previous.shape[1] // num_ranks),
             previous] = True
    rank = np.arange(num_slots) // (num_slots // num_ranks)
    here = resident[layers, rank[None, :], phy2log]
    unchanged = phy2log == previous if previous.shape == phy2log.shape else np.zeros_like(here)
    moved = ~here
    local = here & ~unchanged
    received = np.bincount(np.broadcast_to(rank, moved.shape)[moved], minlength=num_ranks)
    count = int(moved.sum())
    return Moves(
        moves=count,
        local_copies=int(local.sum()),
        layer_moves=moved.sum(axis=1),
        received=received,
        bytes_moved=None if bytes_per_expert is None else count * bytes_per_expert,
        max_bytes_received=None if bytes_per_expert is None
        else int(received.max()) * bytes_per_expert,
    )


def score(phy2log: np.ndarray, logcnt: np.ndarray, weights: np.ndarray, topo: Topology,
          rank_loads: Optional[np.ndarray] = None, bound: Optional[np.ndarray] = None,
          **labels: Any) -> Metrics:
    """Balance metrics of a validated placement (no moves, no traffic).

    ``bound``: the layers' lower bounds float64 [L] when already known for these ``weights``,
    slot count and topology (the solve kernel's); computed here otherwise. ``labels``: the
    solve-only fields (hierarchy, layer_hierarchy, candidate_max_load).
    """
    if rank_loads is None:
        rank_loads = rank_loads_of(phy2log, logcnt, weights, topo.num_ranks)
    speed = topo.rank_speed
    max_load = (rank_loads / speed).max(axis=1)
    ideal = weights.sum(axis=1) / speed.sum()
    if bound is None:
        bound = np.empty(weights.shape[0])
        layer_lower_bounds(weights, phy2log.shape[1], np.array(speed, dtype=np.float64), bound)
    positive = max_load > 0
    layer_bal = np.where(positive, ideal / np.where(positive, max_load, 1.0), 1.0)
    total_max = float(max_load.sum())
    gap = np.where(bound > 0, max_load / np.where(bound > 0, bound, 1.0) - 1.0, 0.0)
    # max_load >= bound mathematically; clip the last-ulp differences of summation order.
    gap = np.maximum(gap, 0.0)
    return Metrics(
        rank_loads=rank_loads,
        balancedness=float(ideal.sum() / total_max) if total_max > 0 else 1.0,
        layer_balancedness=layer_bal,
        max_load=max_load,
        lower_bound=bound,
        lb_gap=gap,
        lb_gap_mean=float(gap.mean()),
        lb_gap_max=float(gap.max()),
        **labels,
    )


def solution_metrics(solved: Any, **labels: Any) -> Metrics:
    """The :class:`Metrics` that ``plumb.solver.model.solve_model`` computed with its solution
    (``solved``, its ``Solved``); ``labels`` as in :func:`score`."""
    return frozen_instance(Metrics, rank_loads=solved.rank_load,
                           balancedness=solved.balancedness,
                           layer_balancedness=solved.layer_balancedness,
                           max_load=solved.max_load, lower_bound=solved.lower_bound,
                           lb_gap=solved.lb_gap, lb_gap_mean=solved.lb_gap_mean,
                           lb_gap_max=solved.lb_gap_max, **labels)


def evaluate(phy2log: Any, loads: Any, topo: TopologyLike, previous: Any = None,
             traffic: Any = None, bytes_per_expert: Optional[int] = None,
             dispatch: str = "even") -> Metrics:
    """SPEC section 2 metrics of any placement (plumb's or another engine's).

    Args:
        phy2log: int [L, P] (or [P] for one layer) expert of each slot, or a Placement; every
            expert of [0, E) must hold >= 1 slot and P must be a multiple of G.
        loads: expert loads [E], [L, E] or a window [T, L, E] (summed over T; a window also
            gives ``heldout_balancedness``, the mean per-step balancedness over its steps).
        topo: Topology or int G.
        previous: placement int [L, P'] (or Placement) to count moves from, or None.
        traffic: per-source counts [L, G, E] (or [T, L, G, E]) for traffic metrics, or None.
        bytes_per_expert: bytes of one expert's weights, to report moved bytes.
        dispatch: "even" (each replica gets 1/c of every source) or "nearest" (each source
            uses its cheapest replica; rank loads and balance follow that routing, and
            ``metrics.traffic`` holds the routing table, sources uniform without ``traffic``).

    Returns:
        :class:`Metrics`.
    """
    topo = as_topology(topo)
    weights, window = as_loads(loads)
    check_load_scale(weights, topo.slowest_speed, topo.fastest_speed)
    num_layers, num_experts = weights.shape
    if hasattr(phy2log, "phy2log"):
        phy2log = phy2log.phy2log
    phy2log = as_phy2log(phy2log, "phy2log", num_layers, num_experts, topo.num_ranks)
    flows = traffic_flows(phy2log, weights, topo, traffic, dispatch)
    logcnt = replica_counts(phy2log, num_experts)
    metrics = score(phy2log, logcnt, weights, topo, dispatched_rank_loads(flows))
    if window is not None:
        from ..robust.steps import step_balancedness

        per_step = step_balancedness(phy2log, logcnt, window, topo.rank_speed)
        metrics = replace(metrics, heldout_balancedness=float(per_step.mean()),
                          step_balancedness=per_step)
    return with_extras(metrics, phy2log, weights, topo, previous, flows, bytes_per_expert)


def traffic_flows(phy2log: np.ndarray, weights: np.ndarray, topo: Topology, traffic: Any,
                  dispatch: str, tokens: Optional[np.ndarray] = None) -> Optional[Dict[str, Any]]:
    """``plumb.locality.traffic_metrics`` of a validated placement, or None without
    per-source ``traffic`` under even dispatch (on topologies built from levels no placement
    changes traffic then: ``plumb.locality.placement_invariant``).

    ``tokens``: given (float64 [L, G, E], ``plumb.locality.source_traffic`` of ``traffic``),
    ``traffic`` is already float64 [L, G, E] from ``as_traffic`` (or None) and ``dispatch``
    a known mode, as in ``solve``; the same numbers without checking them again or deriving
    the tokens a second time (``evaluate`` passes its inputs as the user gave them).
    """
    if traffic is None and dispatch == "even":
        return None
    if tokens is not None:
        from ..locality.dispatch import validated_traffic_metrics

        return validated_traffic_metrics(phy2log, weights, topo, tokens, traffic is None,
                                         dispatch)
    # Checks ``dispatch`` too (``evaluate`` passes it unchecked).
    from ..locality import traffic_metrics

    return traffic_metrics(phy2log, weights, topo, traffic, dispatch)


def dispatched_rank_loads(flows: Optional[Dict[str, Any]]) -> Optional[np.ndarray]:
    """Rank loads [L, G] under nearest dispatch from ``traffic_flows``; None for even
    dispatch (``score`` computes those from the replica counts)."""
    if flows is None or flows["dispatch"] != "nearest":
        return None
    return flows["rank_loads"]


def with_extras(metrics: Metrics, phy2log: np.ndarray, weights: np.ndarray, topo: Topology,
                previous: Any, flows: Optional[Dict[str, Any]],
                bytes_per_expert: Optional[int]) -> Metrics:
    """``metrics`` plus moves vs ``previous`` and the traffic metrics ``flows`` (from
    ``traffic_flows``), when those are given."""
    if bytes_per_expert is not None:
        bytes_per_expert = as_int(bytes_per_expert, "bytes_per_expert", 0)
    if previous is None and flows is None:
        return metrics
    num_layers, num_experts = weights.shape
    extras: Dict[str, Any] = {}
    if previous is not None:
        previous = as_previous(previous, num_layers, num_experts, topo.num_ranks)
        extras["moves"] = moves_between(phy2log, previous, num_experts, topo.num_ranks,
                                        bytes_per_expert)
        if bytes_per_expert is not None and previous.shape == phy2log.shape:
            from ..rearrange import movement_stats

            extras["moves"] = replace(extras["moves"], cost=movement_stats(
                previous, phy2log, topo, bytes_per_expert, num_experts))
    if flows is not None:
        extras["traffic"] = flows
    return replace(metrics, **extras)


def as_previous(previous: Any, num_layers: int, num_experts: int, num_ranks: int,
                name: str = "previous") -> np.ndarray:
    """A previous placement (array or Placement) validated as int64 [L, P']; errors name
    the argument ``name``."""
    if hasattr(previous, "phy2log"):
        previous = previous.phy2log
    return as_phy2log(previous, name, num_layers, num_experts, num_ranks)
