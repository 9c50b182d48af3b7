"""TensorRT-LLM expert statistics (a directory) and its EPLB placement YAML.

Statistics directory (``EXPERT_STATISTIC_PATH``): ``meta_info.json`` ``{"num_experts",
"num_experts_per_token"}`` and one ``rank{r}.safetensors`` per rank whose keys
``"{iter}_{layer}"`` map to int counts [E] of the tokens that rank routed; the ranks' counts
add up. Other files there (``cooccurrence_rank*``, ``token_selected_experts_rank*``) are
ignored. Layer ids are the model's (they need not start at 0).
Placement YAML: ``num_slots: P``, ``initial_global_assignments: {layer: [P expert ids]}``,
``layer_updates_per_iter: 0``. safetensors and pyyaml are imported on use only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .atomic import PathLike, atomic_write
from .checks import count_array, layer_number, step_selection
from .npz import PlumbStats
from .vllm import Progress, layer_rows

META_FILE = "meta_info.json"
RANK_FILE = re.compile(r"rank(\d+)\.safetensors")
KEY = re.compile(r"(\d+)_(\d+)")


def _import(module: str, name: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise InputError(f"{name}: needs the {package} package (pip install {package})") from None


def _meta(directory: Path) -> Dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise InputError(f"{directory}: missing {META_FILE} (not a TensorRT-LLM expert "
                         "statistic directory)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object")
    for key in ("num_experts", "num_experts_per_token"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{path}: field {key!r} must be an int >= 1, got {value!r}")
    return meta


def rank_files(directory: Path) -> List[Tuple[int, Path]]:
    """(rank, path) of each ``rank{r}.safetensors``, by rank."""
    found = []
    for path in directory.iterdir():
        match = RANK_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        raise InputError(f"{directory}: no rank*.safetensors files")
    return sorted(found)


def read_trtllm_stats(path: PathLike, steps: Any = None, progress: Progress = None) -> PlumbStats:
    """Per-iteration loads summed over ranks from a TensorRT-LLM statistic directory.

    Args:
        steps: None, a ``range`` or (start, stop) of iteration ids, half-open.
        progress: called with (rank files read, rank files).

    Returns:
        PlumbStats: ``window`` int64 [T, L, E] (T iterations ascending, L layers by id); meta
        ``num_experts_per_token``, ``num_ranks`` (rank files), ``steps`` (iteration ids),
        ``layer_ids``, ``source_format`` "trtllm".
    """
    directory = Path(path)
    meta = _meta(directory)
    num_experts = meta["num_experts"]
    files = rank_files(directory)
    safetensors_numpy = _import("safetensors.numpy", str(directory), "safetensors")
    totals: Dict[Tuple[int, int], np.ndarray] = {}
    for done, (_, file) in enumerate(files, start=1):
        try:
            tensors = safetensors_numpy.load_file(str(file))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise InputError(f"{file}: not a readable safetensors file ({err})") from None
        for key, counts in tensors.items():
            match = KEY.fullmatch(key)
            where = f"{file} key {key!r}"
            if match is None:
                raise InputError(f"{where}: expected keys \"{{iter}}_{{layer}}\"")
            counts = count_array(counts, where, "counts", ndim=1)
            if counts.shape[0] != num_experts:
                raise InputError(f"{where}: field 'counts' has {counts.shape[0]} experts, "
                                 f"{META_FILE} says num_experts = {num_experts}")
            index = (int(match.group(1)), int(match.group(2)))
            totals[index] = totals[index] + counts if index in totals else counts
        if progress is not None:
            progress(done, len(files))
    if not totals:
        raise InputError(f"{directory}: the rank files hold no \"{{iter}}_{{layer}}\" counts")
    iterations = sorted({it for it, _ in totals})
    layers = sorted({layer for _, layer in totals})
    for it in iterations:
        missing = [layer for layer in layers if (it, layer) not in totals]
        if missing:
            raise InputError(f"{directory}: iteration {it} has no counts for layers {missing}")
    keep = [iterations[i] for i in step_selection(iterations, steps, str(directory))]
    window = np.stack([np.stack([totals[(it, layer)] for layer in layers]) for it in keep])
    meta.update(num_ranks=len(files), steps=keep, layer_ids=layers, source_format="trtllm")
    return PlumbStats(window=window.astype(np.int64, copy=False), meta=meta)


def write_trtllm_stats(path: PathLike, window: np.ndarray, num_experts_per_token: int,
                       first_iter: int = 0, layer_ids: Optional[Sequence[int]] = None) -> None:
    """Write ``window`` int [T, L, E] as a statistic directory with one rank file (rank0).

    For tests and conversions; each file is written atomically.
    """
    safetensors_numpy = _import("safetensors.numpy", os.fspath(path), "safetensors")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    num_steps, num_layers, num_experts = window.shape
    ids = list(range(num_layers)) if layer_ids is None else list(layer_ids)
    tensors = {f"{first_iter + t}_{ids[layer]}": np.ascontiguousarray(window[t, layer],
                                                                      dtype=np.int32)
               for t in range(num_steps) for layer in range(num_layers)}
    with atomic_write(directory / "rank0.safetensors", "wb") as handle:
        handle.write(safetensors_numpy.save(tensors))
    with atomic_write(directory / META_FILE, "w") as handle:
        json.dump({"num_experts": int(num_experts),
                   "num_experts_per_token": int(num_experts_per_token)}, handle)


def read_trtllm_placement(path: PathLike) -> Tuple[np.ndarray, List[int]]:
    """(phy2log int64 [L, P] in ascending layer id order, the layer ids) of a placement YAML."""
    name = os.fspath(path)
    yaml = _import("yaml", name, "pyyaml")
    try:
        with open(name, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{name}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise InputError(f"{name}: expected a mapping with 'num_slots' and "
                         "'initial_global_assignments'")
    assignments = config.get("initial_global_assignments")
    if not isinstance(assignments, dict) or not assignments:
        raise InputError(f"{name}: field 'initial_global_assignments' must be a non-empty mapping "
                         "{layer: [slot expert ids]}")
    table = layer_rows(assignments, name, "initial_global_assignments")
    num_slots = config.get("num_slots")
    if num_slots is not None and num_slots != table.shape[1]:
        raise InputError(f"{name}: field 'num_slots' is {num_slots!r}, the assignments have "
                         f"{table.shape[1]} slots")
    return table, sorted(int(key) for key in assignments)


def write_trtllm_placement(path: PathLike, phy2log: np.ndarray,
                           layer_ids: Optional[Sequence[int]] = None,
                           layer_updates_per_iter: int = 0) -> None:
    """Atomically write TensorRT-LLM's ``moe_load_balancer`` YAML for ``phy2log`` [L, P].

    ``layer_ids``: the model layer id of each row (default 0..L-1).
    """
    yaml = _import("yaml", os.fspath(path), "pyyaml")
    table = np.asarray(phy2log, dtype=np.int64)
    given = list(range(table.shape[0])) if layer_ids is None else list(layer_ids)
    if len(given) != table.shape[0]:
        raise InputError(f"layer_ids has {len(given)} entries for {table.shape[0]} layers")
    ids = [layer_number(i) for i in given]
    if None in ids:
        raise InputError(f"layer_ids must be ints >= 0, got {given}")
    if len(set(ids)) != len(ids):
        raise InputError(f"layer_ids must be distinct (one YAML key per layer), got {ids}")
    config = {"num_slots": int(table.shape[1]),
              "initial_global_assignments": dict(zip(ids, table.tolist())),
              "layer_updates_per_iter": int(layer_updates_per_iter)}

    class _FlowLists(yaml.SafeDumper):
        """Lists in flow style ([1, 2, 3]) as TensorRT-LLM's own generator writes them."""

    _FlowLists.add_representer(list, lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=True))
    with atomic_write(path, "w") as handle:
        yaml.dump(config, handle, Dumper=_FlowLists, sort_keys=False, width=1 << 30)
