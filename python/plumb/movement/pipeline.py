"""The movement pass of ``plumb.solve(previous=...)``: relabel, keep slots, refine, then hold
back layers and moves as asked.

1. Relabel ranks (``relabel``) so that each rank's new set lands where most of it already is.
2. Keep slots (``slots``): an expert that stays on its rank keeps its slot.
3. Refine (``refine``, policy "plumb" under even dispatch): swap replicas back to ranks that
   held them while every layer's max rank time stays within the cap.
4. Repair (``repair``, same conditions, no traffic): move only what overloads ``previous``
   until each layer's max rank time is within the cap (the balanced max times 1 + load_slack),
   and keep the repair in the layers where it needs fewer moves than steps 1-3 (not in layers
   whose groups stay on their nodes).
5. ``layers=``: other layers keep ``previous``. ``move_budget=`` replaces steps 1-4: repair
   ``previous``, spending the budget where max load drops most, until a layer reaches its cap
   (``budget``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..topology import Topology
from .budget import spend_budget
from .options import MovementOptions
from .refine import refine_moves
from .relabel import padded_groups, relabel_ranks
from .repair import repair_to_cap
from .slots import place_in_slots, relabelled

# Relative margin on the cap for rounding in the exact rank times of a repaired layer.
CAP_TOLERANCE = 1e-12


def _replica_cost(phy2log: np.ndarray, traffic: Optional[np.ndarray], topo: Topology,
                  num_experts: int) -> np.ndarray:
    """float64 [L, E, G]: traffic cost of one replica of e on rank r under even dispatch
    (each of e's c_e replicas serves 1/c_e of every source's tokens); [1, 1, 1] zeros without
    traffic."""
    from ..solver.validate import replica_counts

    if traffic is None:
        return np.zeros((1, 1, 1))
    counts = replica_counts(phy2log, num_experts)
    cost = np.einsum("lse,sr->ler", traffic, topo.link_cost)
    return np.ascontiguousarray(cost / np.maximum(counts, 1)[:, :, None])


def _max_times(phy2log: np.ndarray, weights: np.ndarray, topo: Topology) -> np.ndarray:
    """float64 [L]: each layer's max rank time (load / speed) under even dispatch."""
    from ..solver.metrics import rank_loads_of
    from ..solver.validate import replica_counts

    loads = rank_loads_of(phy2log, replica_counts(phy2log, weights.shape[1]), weights,
                          topo.num_ranks)
    return (loads / topo.rank_speed).max(axis=1)


def _repaired(previous: np.ndarray, weights: np.ndarray, topo: Topology,
              layer_budget: np.ndarray, total_budget: int, stop_at: np.ndarray,
              keep_node: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """``budget.spend_budget`` of ``previous`` int64 [L, P]."""
    out = np.empty_like(previous)
    spend_budget(previous, weights, np.ascontiguousarray(topo.rank_speed), topo.num_ranks,
                 np.ascontiguousarray(layer_budget, dtype=np.int64), int(total_budget),
                 np.ascontiguousarray(stop_at, dtype=np.float64),
                 np.ascontiguousarray(topo.node_of_rank), keep_node, caps, out)
    return out


def _fewer_moves(target: np.ndarray, previous: np.ndarray, weights: np.ndarray,
                 topo: Topology, cap: np.ndarray, keep_node: np.ndarray,
                 caps: np.ndarray) -> np.ndarray:
    """Per layer, the one of {``target``, ``previous`` repaired down to ``cap``} with fewer
    moves (int64 [L, P]); layers that keep their groups on nodes keep ``target``, and so do
    layers whose repair keeps more replicas of an expert than ``caps`` (int64 [E]) allow."""
    from ..solver.metrics import moves_between
    from ..solver.validate import replica_counts

    num_experts = weights.shape[1]
    num_ranks = topo.num_ranks
    target_moves = moves_between(target, previous, num_experts, num_ranks).layer_moves
    repaired = np.empty_like(previous)
    done = repair_to_cap(previous, weights, np.ascontiguousarray(topo.rank_speed), num_ranks,
                         np.ascontiguousarray(cap, dtype=np.float64),
                         np.ascontiguousarray(target_moves, dtype=np.int64), ~keep_node, caps,
                         repaired)
    # The exact rank times decide (the repair tracks them incrementally).
    fewer = moves_between(repaired, previous, num_experts, num_ranks).layer_moves < target_moves
    better = done & fewer & (_max_times(repaired, weights, topo) <= cap * (1.0 + CAP_TOLERANCE))
    # The repair gives no expert a replica past its cap, but keeps what previous had.
    better &= (replica_counts(repaired, num_experts) <= caps).all(axis=1)
    if not better.any():
        return target
    chosen = np.where(better[:, None], repaired, target)
    # Experts that a repair swapped back onto a rank regain their old slots.
    identity = np.tile(np.arange(num_ranks, dtype=np.int64), (chosen.shape[0], 1))
    out = np.empty_like(chosen)
    place_in_slots(chosen, previous, identity, out)
    return out


def _chosen_layers(options: MovementOptions, gains: np.ndarray) -> Optional[np.ndarray]:
    """bool [L] of the layers that may change, or None for all."""
    if options.auto_layers is None:
        return options.layers
    # The k layers whose max drops most; a layer that would not improve keeps its placement.
    order = np.argsort(-gains, kind="stable")[:options.auto_layers]
    mask = np.zeros(gains.shape[0], dtype=bool)
    mask[order[gains[order] > 0]] = True
    return mask


def minimise_movement(phy2log: np.ndarray, previous: np.ndarray, weights: np.ndarray,
                      topo: Topology, classes: np.ndarray, keep_node: np.ndarray,
                      options: MovementOptions, refine: bool = True,
                      load_slack: float = 0.0, traffic: Optional[np.ndarray] = None,
                      caps: Optional[np.ndarray] = None) -> np.ndarray:
    """A placement as balanced as ``phy2log`` that moves fewer experts from ``previous``.

    Args:
        phy2log: int64 [L, P], the balanced placement.
        previous: int64 [L, P'], validated; P' may differ from P unless ``options`` hold back
            layers or moves.
        weights: float64 [L, E], the loads balanced on.
        topo: the topology (G ranks).
        classes: int64 [L, G] or [1, G], interchangeable-rank labels
            (``plumb.locality.interchangeable_ranks``).
        keep_node: bool [L], layers whose expert groups must stay on their node.
        options: validated ``move_budget`` / ``layers``.
        refine: run the swap refinement (needs even dispatch: it scores rank loads that way).
        load_slack: the refinement may let a layer's max rank time grow by this fraction.
        traffic: float64 [L, G, E] per-source counts, or None; refinement swaps never raise
            traffic cost under even dispatch.
        caps: int64 [E], replica caps (``max_replicas_per_expert``) the repairs keep to, or
            None for none beyond one replica per rank. Layers kept as ``previous`` (held
            back by ``layers``, or left by a spent budget) keep its counts.

    Returns:
        int64 [L, P]. Every layer's max rank time is at most (1 + load_slack) times that of
        ``phy2log``; with ``layers`` / ``move_budget``, held-back layers are at most as
        loaded as in ``previous``.
    """
    num_layers, num_slots = phy2log.shape
    num_experts = weights.shape[1]
    num_ranks = topo.num_ranks
    keep_node = np.ascontiguousarray(keep_node, dtype=np.bool_)
    caps = (np.full(num_experts, num_slots, dtype=np.int64) if caps is None
            else np.ascontiguousarray(caps, dtype=np.int64))
    if options.layer_budget is not None:
        # The budgeted repair starts from ``previous`` and only needs each layer's cap.
        cap = _max_times(phy2log, weights, topo) * (1.0 + load_slack)
        chosen = _chosen_layers(options, _max_times(previous, weights, topo) - cap)
        budget = (options.layer_budget if chosen is None
                  else np.where(chosen, options.layer_budget, 0))
        return _repaired(previous, weights, topo, budget, options.total_budget, cap, keep_node,
                         caps)
    node_ranks, node_sizes = padded_groups(topo.node_of_rank)
    perm = np.empty((num_layers, num_ranks), dtype=np.int64)
    relabel_ranks(phy2log, previous, num_ranks, num_experts, np.ascontiguousarray(classes),
                  keep_node, node_ranks, node_sizes, perm)
    same_slots = previous.shape == phy2log.shape
    if same_slots:
        target = np.empty_like(phy2log)
        place_in_slots(phy2log, previous, perm, target)
    else:
        target = relabelled(phy2log, perm)
    if refine:
        swaps = refine_moves(target, previous, num_ranks, weights,
                             np.ascontiguousarray(topo.rank_speed), float(load_slack),
                             _replica_cost(target, traffic, topo, num_experts),
                             traffic is not None, np.ascontiguousarray(topo.node_of_rank),
                             keep_node)
        if swaps and same_slots:
            identity = np.tile(np.arange(num_ranks, dtype=np.int64), (num_layers, 1))
            swapped = target
            target = np.empty_like(swapped)
            place_in_slots(swapped, previous, identity, target)
    if not same_slots:
        return target
    if refine and traffic is None:
        cap = _max_times(phy2log, weights, topo) * (1.0 + load_slack)
        target = _fewer_moves(target, previous, weights, topo, cap, keep_node, caps)
    if not options.incremental:
        return target
    chosen = _chosen_layers(options, _max_times(previous, weights, topo)
                            - _max_times(target, weights, topo))
    return target if chosen is None else np.where(chosen[:, None], target, previous)
