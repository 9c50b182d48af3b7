"""Validation of ``solve``'s movement options: ``move_budget=`` and ``layers=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..solver.validate import as_int, to_numpy

# Stands for "no limit" in int64 budgets (far above any count of slots).
UNLIMITED = 2**62


@dataclass(frozen=True)
class MovementOptions:
    """Validated incremental-rebalancing options.

    Attributes:
        layer_budget: int64 [L], moves allowed per layer (UNLIMITED when only a total is set),
            or None: no budget, every selected layer reaches its movement-minimised target.
        total_budget: moves allowed over all layers (UNLIMITED for a per-layer budget).
        layers: bool [L], the layers that may change, or None (see ``auto_layers``).
        auto_layers: k of ``layers="auto:k"`` (the k layers whose max load drops most), or None.
    """

    layer_budget: Optional[np.ndarray] = None
    total_budget: int = UNLIMITED
    layers: Optional[np.ndarray] = None
    auto_layers: Optional[int] = None

    @property
    def incremental(self) -> bool:
        """Whether some layers or moves are held back (then ``previous`` must have P slots)."""
        return (self.layer_budget is not None or self.layers is not None
                or self.auto_layers is not None)


# No budget and every layer: what ``solve`` uses unless told otherwise (shared; immutable).
NO_OPTIONS = MovementOptions()


def _as_budget(move_budget: Any, num_layers: int):
    if move_budget is None:
        return None, UNLIMITED
    # Budgets past UNLIMITED allow as much (no layer has that many slots): they are clipped
    # to it, so that the kernels' int64 budgets hold them.
    if isinstance(move_budget, (int, np.integer)) and not isinstance(move_budget, bool):
        total = min(as_int(move_budget, "move_budget", 0), UNLIMITED)
        return np.full(num_layers, UNLIMITED, dtype=np.int64), total
    arr = to_numpy(move_budget, "move_budget")
    if arr.shape != (num_layers,) or arr.dtype.kind not in "iu" or (arr < 0).any():
        raise InputError(f"move_budget must be an int >= 0 (moves in total) or ints >= 0 of "
                         f"shape [L] = [{num_layers}] (moves per layer), got {move_budget!r}")
    return np.minimum(arr, UNLIMITED).astype(np.int64), UNLIMITED


def _as_layers(layers: Any, num_layers: int):
    if layers is None:
        return None, None
    if isinstance(layers, str):
        prefix, _, count = layers.partition(":")
        if (prefix != "auto" or not (count.isascii() and count.isdigit())
                or not 1 <= int(count) <= num_layers):
            raise InputError(f"layers must be 'auto:k' with 1 <= k <= L = {num_layers}, or "
                             f"layer indices, got {layers!r}")
        return None, int(count)
    arr = to_numpy(layers, "layers")
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"layers must be a list of layer indices in [0, {num_layers}) or "
                         f"'auto:k', got {layers!r}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_layers):
        raise InputError(f"layers must be layer indices in [0, {num_layers}), got "
                         f"{arr.tolist()}")
    mask = np.zeros(num_layers, dtype=bool)
    mask[arr] = True
    return mask, None


def as_movement_options(move_budget: Any, layers: Any, previous: Optional[np.ndarray],
                        num_layers: int, num_slots: int, dispatch: str) -> MovementOptions:
    """Checks ``move_budget`` (None, int >= 0 in total, or int [L] per layer) and ``layers``
    (None, layer indices, or "auto:k") against the validated ``previous`` int64 [L, P']."""
    if move_budget is None and layers is None:
        return NO_OPTIONS
    layer_budget, total = _as_budget(move_budget, num_layers)
    mask, auto = _as_layers(layers, num_layers)
    options = MovementOptions(layer_budget, total, mask, auto)
    if options.incremental:
        name = "move_budget" if move_budget is not None else "layers"
        if previous is None:
            raise InputError(f"{name} needs previous= (the placement to rebalance from)")
        if previous.shape[1] != num_slots:
            raise InputError(f"{name} needs previous with the same P = {num_slots} slots, got "
                             f"P' = {previous.shape[1]}")
        if dispatch != "even":
            raise InputError(f"{name} supports dispatch='even' only, got {dispatch!r}")
    return options
