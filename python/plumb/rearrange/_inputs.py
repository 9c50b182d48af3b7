"""Validation of the placements handed to the movement metrics and the planner."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..solver.validate import as_int64
from ..topology import Topology, TopologyLike, as_topology

# Packed (layer, rank, expert) keys must stay below this to be exact in int64.
_MAX_KEY = 2**62


@dataclass(frozen=True)
class Placements:
    """An old and a new placement checked against each other and against a topology.

    Attributes:
        old: int64 [L, P], read-only; the expert each slot holds before the rearrangement.
        new: int64 [L, P], read-only; the expert each slot must hold afterwards.
        topo: the topology of the G ranks; slot p lives on rank p // S.
        slots_per_rank: S = P // G.
        num_experts: E; every id is in [0, E).
        bytes_per_expert: bytes of one expert's weights (all tensors of one slot).
    """

    old: np.ndarray
    new: np.ndarray
    topo: Topology
    slots_per_rank: int
    num_experts: int
    bytes_per_expert: int


def as_phy2log(value, name: str) -> np.ndarray:
    """``value`` as an int64 [L, P] array: a Placement-like object (``.phy2log``), a numpy array,
    a torch tensor on any device, or nested lists; [P] is read as one layer."""
    value = getattr(value, "phy2log", value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, maybe on a GPU
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InputError(f"{name} must be a rectangular array of expert ids: {exc}") from None
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must hold integer expert ids, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"{name} must be [L, P] (or [P] for one layer) with L, P >= 1, "
                         f"got shape {list(np.shape(value))}")
    return as_int64(array, name)


def check_placements(old_phy2log, new_phy2log, topo: TopologyLike, bytes_per_expert: int,
                     num_experts: Optional[int] = None) -> Placements:
    """Validate a rearrangement's inputs; raises InputError naming the first problem found.

    Checks: both placements are integer [L, P] of the same shape; P is a multiple of the
    topology's G; ids are in [0, num_experts) (``num_experts`` defaults to the largest id + 1);
    every expert a layer of ``new_phy2log`` needs is held by some slot of that layer in
    ``old_phy2log`` (otherwise no rank could send it); ``bytes_per_expert`` is an int >= 0
    whose product with L * P fits int64 (the byte totals).
    """
    old = as_phy2log(old_phy2log, "old_phy2log")
    new = as_phy2log(new_phy2log, "new_phy2log")
    if old.shape != new.shape:
        raise InputError(f"old_phy2log {list(old.shape)} and new_phy2log {list(new.shape)} "
                         "must have the same shape [L, P]")
    topo = as_topology(topo)
    num_layers, num_slots = old.shape
    num_ranks = topo.num_ranks
    if num_slots % num_ranks:
        raise InputError(f"P = {num_slots} slots is not divisible by G = {num_ranks} ranks")
    if (not isinstance(bytes_per_expert, numbers.Integral) or isinstance(bytes_per_expert, bool)
            or bytes_per_expert < 0):
        raise InputError(f"bytes_per_expert must be an int >= 0, got {bytes_per_expert!r}")
    # Byte totals are int64 sums of at most L * P copies.
    if int(bytes_per_expert) * num_layers * num_slots >= 2 ** 63:
        raise InputError(f"bytes_per_expert = {bytes_per_expert} is too large: times the "
                         f"L * P = {num_layers * num_slots} slots it must stay below 2**63 "
                         f"bytes")
    lowest = int(min(old.min(), new.min()))
    if lowest < 0:
        raise InputError(f"expert ids must be >= 0, found {lowest}")
    highest = int(max(old.max(), new.max()))
    if num_experts is None:
        num_experts = highest + 1
    elif (not isinstance(num_experts, numbers.Integral) or isinstance(num_experts, bool)
          or num_experts < 1):
        raise InputError(f"num_experts must be an int >= 1, got {num_experts!r}")
    elif highest >= num_experts:
        raise InputError(f"expert id {highest} is out of range for num_experts = {num_experts}")
    if num_layers * num_ranks * int(num_experts) >= _MAX_KEY:
        raise InputError(f"expert ids up to {highest} are implausibly large")
    layer = np.arange(num_layers, dtype=np.int64)[:, None]
    held = np.isin(layer * num_experts + new, layer * num_experts + old)
    if not held.all():
        bad_layer, bad_slot = (int(i[0]) for i in np.nonzero(~held))
        raise InputError(f"layer {bad_layer}: expert {int(new[bad_layer, bad_slot])} (new slot "
                         f"{bad_slot}) is held by no slot of old_phy2log, so no rank can send it")
    old.setflags(write=False)
    new.setflags(write=False)
    return Placements(old=old, new=new, topo=topo, slots_per_rank=num_slots // num_ranks,
                      num_experts=int(num_experts), bytes_per_expert=int(bytes_per_expert))
