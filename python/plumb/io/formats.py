"""One entry point per job: ``read_stats``, ``read_placement``, ``write_placement``.

Formats (``format=`` names):
    ``vllm``    offline-EPLB stats JSONL (loads) / ``eplb_initial_mapping`` JSONL (placement)
    ``sglang``  dict in .json or .pt: ``logical_count`` (loads) / ``physical_to_logical_map``
    ``trtllm``  expert_statistic directory (loads) / ``moe_load_balancer`` YAML (placement)
    ``plumb``   .npz (``plumb.io.npz``)
    ``npy``, ``csv``  plain matrices
Without ``format=`` the format follows from the path: a directory is ``trtllm``; .jsonl is
``vllm``; .json is ``vllm`` when its first line is a JSON record with a ``record_type``, else
``sglang``; .pt ``sglang``; .yaml/.yml ``trtllm``; .npz ``plumb``; .npy; .csv.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..solver.validate import as_int
from . import matrix, npz, sglang, trtllm, vllm
from .atomic import PathLike
from .checks import count_array, expert_table, file_errors, step_selection
from .npz import PlumbStats

FORMATS = ("vllm", "sglang", "trtllm", "plumb", "npy", "csv")
# Placement writers; the extension each one defaults to.
OUTPUT_FORMATS = {"vllm": ".jsonl", "sglang": ".json", "trtllm": ".yaml", "plumb": ".npz",
                  "npy": ".npy"}
_BY_SUFFIX = {".jsonl": "vllm", ".pt": "sglang", ".yaml": "trtllm", ".yml": "trtllm",
              ".npz": "plumb", ".npy": "npy", ".csv": "csv"}


def detect_format(path: PathLike) -> str:
    """The format name of an existing file or directory (module docstring rules)."""
    target = Path(path)
    if target.is_dir():
        return "trtllm"
    if not target.exists():
        raise InputError(f"{target}: no such file or directory")
    suffix = target.suffix.lower()
    if suffix == ".json":
        return "vllm" if vllm.first_record_type(target) is not None else "sglang"
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    raise InputError(f"{target}: cannot tell the format from the name; name it .jsonl, .json, "
                     f".pt, .yaml, .npz, .npy or .csv, or pass format= one of {list(FORMATS)}")


def _format(path: PathLike, format: Optional[str], choices: Sequence[str]) -> str:
    if format is None:
        return detect_format(path)
    if format not in choices:
        raise InputError(f"format must be one of {list(choices)}, got {format!r}")
    if not os.path.exists(path):
        raise InputError(f"{os.fspath(path)}: no such file or directory")
    return format


def read_stats(path: PathLike, format: Optional[str] = None, steps: Any = None,
               progress: Optional[Any] = None) -> PlumbStats:
    """Expert loads from any supported statistics file, as :class:`plumb.io.npz.PlumbStats`.

    Args:
        path: file, or a TensorRT-LLM statistic directory.
        format: one of ``FORMATS``; None detects it from the path.
        steps: keep only steps with ids in a half-open ``range`` or (start, stop) pair (vLLM
            ``step``, TensorRT-LLM iteration, SGLang / plumb / npy step index).
        progress: ``progress(done, total)`` callback while reading (vLLM bytes, TensorRT-LLM
            rank files), for a progress bar.

    Returns:
        PlumbStats with ``window`` [T, L, E] when the file keeps steps, else ``loads`` [L, E];
        counts int64 when integral, else float64. ``meta["source_format"]`` names the format;
        ``meta["steps"]`` the kept step ids; ``placement`` the phy2log [L, P] the counts were
        recorded under, when the file says.
        A file that cannot be read (a directory where a file is expected, no permission,
        damaged or non-UTF-8 content) raises InputError naming it, as malformed content does.
    """
    with file_errors(os.fspath(path)):
        return _read_stats(path, format, steps, progress)


def _read_stats(path: PathLike, format: Optional[str], steps: Any,
                progress: Optional[Any]) -> PlumbStats:
    name = _format(path, format, FORMATS)
    if name == "vllm":
        return vllm.read_vllm_stats(path, steps, progress)
    if name == "sglang":
        return sglang.read_sglang_stats(path, steps)
    if name == "trtllm":
        if not Path(path).is_dir():
            raise InputError(f"{os.fspath(path)}: TensorRT-LLM statistics are a directory "
                             "(meta_info.json + rank*.safetensors); a .yaml is a placement")
        return trtllm.read_trtllm_stats(path, steps, progress)
    if name == "plumb":
        stats = npz.load_plumb_npz(path)
    else:
        array = matrix.read_npy(path) if name == "npy" else matrix.read_csv(path)
        array = matrix.integral(count_array(array, os.fspath(path), "loads"))
        if array.ndim not in (2, 3) or array.size == 0:
            raise InputError(f"{os.fspath(path)}: expected loads [L, E] or a window [T, L, E], "
                             f"got shape {list(array.shape)}")
        stats = PlumbStats(window=array if array.ndim == 3 else None,
                           loads=array if array.ndim == 2 else None)
    stats.meta.setdefault("source_format", name)
    if stats.window is not None:
        ids = stats.meta.get("steps")
        if not isinstance(ids, list) or len(ids) != stats.window.shape[0]:
            ids = list(range(stats.window.shape[0]))
        keep = step_selection(ids, steps, os.fspath(path))
        stats.window = stats.window[keep]
        stats.meta["steps"] = [ids[i] for i in keep]
        if stats.loads is not None and steps is not None:
            stats.loads = None
    elif steps is not None:
        raise InputError(f"{os.fspath(path)}: holds aggregated loads [L, E] (no steps); drop the "
                         "step range")
    return stats


def read_placement(path: PathLike, format: Optional[str] = None) -> np.ndarray:
    """A phy2log int64 [L, P] from any supported placement file.

    vLLM: an ``eplb_initial_mapping`` JSONL, or a stats JSONL (its last ``p2l_map``); SGLang:
    ``physical_to_logical_map``; TensorRT-LLM: placement YAML; plumb: placement .npz (or a
    stats .npz's ``placement``); npy / csv: an integer table. Layers come in ascending layer
    id order. Unreadable files raise InputError as in :func:`read_stats`.
    """
    with file_errors(os.fspath(path)):
        return _read_placement(path, format)


def _read_placement(path: PathLike, format: Optional[str]) -> np.ndarray:
    name = _format(path, format, FORMATS)
    where = os.fspath(path)
    if name == "vllm":
        if vllm.first_record_type(path) == vllm.MAPPING_TYPE:
            return vllm.read_vllm_mapping(path)
        stats = vllm.read_vllm_stats(path)
        return stats.placement
    if name == "sglang":
        return sglang.read_sglang_placement(path)
    if name == "trtllm":
        if Path(path).is_dir():
            raise InputError(f"{where}: a TensorRT-LLM statistic directory holds loads, not a "
                             "placement; pass the placement .yaml")
        return trtllm.read_trtllm_placement(path)[0]
    if name == "plumb":
        return npz.load_placement_npz(path)
    array = matrix.read_npy(path) if name == "npy" else matrix.read_csv(path)
    if array.ndim == 1:
        array = array[None, :]
    return expert_table(array, where, "phy2log")


def output_format(path: PathLike, format: Optional[str] = None) -> str:
    """The writer for ``path``: ``format`` if given, else the one its extension names."""
    if format is not None:
        if format not in OUTPUT_FORMATS:
            raise InputError(f"format must be one of {list(OUTPUT_FORMATS)}, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    by_suffix = {**{ext: name for name, ext in OUTPUT_FORMATS.items()}, ".pt": "sglang",
                 ".yml": "trtllm"}
    if suffix not in by_suffix:
        raise InputError(f"{os.fspath(path)}: cannot tell the output format from the name; use "
                         f"one of .jsonl .json .pt .yaml .npz .npy, or a format of "
                         f"{list(OUTPUT_FORMATS)}")
    return by_suffix[suffix]


def write_placement(path: PathLike, phy2log: Any, format: Optional[str] = None,
                    num_experts: Optional[int] = None, layer_ids: Optional[Sequence[int]] = None,
                    meta: Optional[dict] = None) -> str:
    """Atomically write a placement in an engine's format; returns the format name used.

    Args:
        phy2log: int [L, P] or a ``plumb.Placement``.
        format: one of ``OUTPUT_FORMATS`` keys; None follows the extension (.jsonl vllm,
            .json / .pt sglang, .yaml / .yml trtllm, .npz plumb, .npy).
        num_experts: E (vLLM writes num_redundant_experts = P - E); default max id + 1.
        layer_ids: model layer id of each row (TensorRT-LLM keys); default 0..L-1.
        meta: extra fields for the plumb .npz header.
    """
    if hasattr(phy2log, "phy2log"):
        num_experts = phy2log.num_experts if num_experts is None else num_experts
        phy2log = phy2log.phy2log
    if num_experts is not None:
        num_experts = as_int(num_experts, "num_experts", 1)
    table = expert_table(phy2log, os.fspath(path), "phy2log", num_experts)
    num_experts = int(table.max()) + 1 if num_experts is None else num_experts
    if num_experts > table.shape[1]:
        raise InputError(f"num_experts = {num_experts} is more than the {table.shape[1]} slots "
                         "per layer of phy2log: every expert needs a slot (P >= E)")
    name = output_format(path, format)
    if name == "vllm":
        vllm.write_vllm_mapping(path, table, num_experts)
    elif name == "sglang":
        sglang.write_sglang_placement(path, table)
    elif name == "trtllm":
        trtllm.write_trtllm_placement(path, table, layer_ids)
    elif name == "plumb":
        npz.save_placement_npz(path, table, meta)
    else:
        matrix.write_npy(path, table)
    return name
