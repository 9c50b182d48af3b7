"""SGLang files: ``--init-expert-location`` (JSON or .pt) and expert-distribution dumps (.pt).

Both are one dict. ``physical_to_logical_map`` [L, P] is a placement; ``logical_count`` is
loads, [L, E] or [steps, L, E] (a stat dump also holds ``rank`` and
``average_utilization_rate_over_window``, ignored here). torch is imported only for .pt files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np

from ..errors import InputError
from .atomic import PathLike, atomic_write
from .checks import count_array, expert_table, step_selection
from .npz import PlumbStats

PLACEMENT_KEY = "physical_to_logical_map"
COUNT_KEY = "logical_count"


def _is_torch_file(path: PathLike) -> bool:
    return os.fspath(path).lower().endswith(".pt")


def _import_torch(name: str):
    try:
        import torch
    except ImportError:
        raise InputError(f"{name}: reading or writing .pt files needs torch "
                         "(pip install torch)") from None
    return torch


def _load_dict(path: PathLike) -> Dict[str, Any]:
    name = os.fspath(path)
    if _is_torch_file(path):
        torch = _import_torch(name)
        try:
            data = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types (pickle, zip, runtime) for bad files
            raise InputError(f"{name}: not a readable torch .pt file ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
    else:
        try:
            with open(name, encoding="utf-8") as handle:
                data = json.load(handle)
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"{name}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{name}: expected a dict with {PLACEMENT_KEY!r} or {COUNT_KEY!r}, got "
                         f"{type(data).__name__}")
    return data


def read_sglang_stats(path: PathLike, steps: Any = None) -> PlumbStats:
    """Loads from an SGLang dict file holding ``logical_count`` [L, E] or [steps, L, E].

    Args:
        steps: None, a ``range`` or (start, stop) of step indices (0 = first), half-open;
            only for [steps, L, E] counts.

    Returns:
        PlumbStats with ``window`` [T, L, E] (or ``loads`` [L, E]); ``placement`` when the
        file also holds ``physical_to_logical_map``; ``meta`` with ``source_format`` "sglang".
    """
    name = os.fspath(path)
    data = _load_dict(path)
    if COUNT_KEY not in data:
        found = ", ".join(map(repr, data)) or "nothing"
        raise InputError(f"{name}: missing field {COUNT_KEY!r} (loads); found {found}")
    counts = count_array(data[COUNT_KEY], name, COUNT_KEY)
    if counts.ndim not in (2, 3) or counts.size == 0:
        raise InputError(f"{name}: field {COUNT_KEY!r} must be [L, E] or [steps, L, E], got "
                         f"shape {list(counts.shape)}")
    meta: Dict[str, Any] = {"source_format": "sglang"}
    placement = None
    if PLACEMENT_KEY in data:
        placement = expert_table(data[PLACEMENT_KEY], name, PLACEMENT_KEY, counts.shape[-1])
        if placement.shape[0] != counts.shape[-2]:
            raise InputError(f"{name}: field {PLACEMENT_KEY!r} has {placement.shape[0]} layers, "
                             f"{COUNT_KEY!r} has {counts.shape[-2]}")
    if counts.ndim == 2:
        if steps is not None:
            raise InputError(f"{name}: field {COUNT_KEY!r} is [L, E] (no steps); drop the step "
                             "range")
        return PlumbStats(loads=counts, meta=meta, placement=placement)
    keep = step_selection(range(counts.shape[0]), steps, name)
    meta["steps"] = keep.tolist()
    return PlumbStats(window=counts[keep], meta=meta, placement=placement)


def read_sglang_placement(path: PathLike) -> np.ndarray:
    """phy2log int64 [L, P] from the ``physical_to_logical_map`` of an SGLang dict file."""
    name = os.fspath(path)
    data = _load_dict(path)
    if PLACEMENT_KEY not in data:
        raise InputError(f"{name}: missing field {PLACEMENT_KEY!r}")
    return expert_table(data[PLACEMENT_KEY], name, PLACEMENT_KEY)


def write_sglang_placement(path: PathLike, phy2log: np.ndarray) -> None:
    """Atomically write ``{"physical_to_logical_map": [L][P]}``: .pt (an int64 tensor, needs
    torch) when ``path`` ends in .pt, else JSON."""
    table = np.ascontiguousarray(phy2log, dtype=np.int64)
    if _is_torch_file(path):
        torch = _import_torch(os.fspath(path))
        with atomic_write(path, "wb") as handle:
            torch.save({PLACEMENT_KEY: torch.from_numpy(table)}, handle)
        return
    with atomic_write(path, "w") as handle:
        json.dump({PLACEMENT_KEY: table.tolist()}, handle)
        handle.write("\n")
