"""vLLM offline-EPLB files (JSONL, one JSON object per line; SPEC section 5).

Stats file: line 1 ``{"record_type": "eplb_load_meta", "version": 1, "model", "num_ranks",
"num_groups", "num_nodes", "num_layers", "num_redundant_experts"}``, then one line per step
``{"record_type": "eplb_load_stats", "version": 1, "step", "expert_load": [L][P],
"p2l_map": [L][P]}``: tokens per physical slot, and the logical expert each slot held.
Mapping file: one line ``{"record_type": "eplb_initial_mapping", "version": 1,
"num_redundant_experts", "num_slots", "initial_global_assignments": {"<layer>": [P ints]}}``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from .atomic import PathLike, atomic_write
from .checks import count_array, expert_table, layer_number, step_selection
from .npz import PlumbStats

META_TYPE = "eplb_load_meta"
STATS_TYPE = "eplb_load_stats"
MAPPING_TYPE = "eplb_initial_mapping"
RECORD_VERSION = 1
META_FIELDS = ("num_ranks", "num_groups", "num_nodes", "num_layers", "num_redundant_experts")

Progress = Optional[Callable[[int, int], None]]


def _records(path: PathLike, progress: Progress = None) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line; ``progress(bytes_read, total)``."""
    name = os.fspath(path)
    total = os.path.getsize(name)
    done = 0
    with open(name, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            done += len(raw)
            if progress is not None:
                progress(done, total)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as err:
                hint = " (file truncated?)" if not raw.endswith(b"\n") else ""
                raise InputError(f"{name} line {number}: not valid JSON{hint}: {err}") from None
            if not isinstance(record, dict):
                raise InputError(f"{name} line {number}: expected a JSON object, got "
                                 f"{type(record).__name__}")
            yield number, record


def _int_field(record: Dict[str, Any], key: str, where: str, minimum: int) -> int:
    if key not in record:
        raise InputError(f"{where}: missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{where}: field {key!r} must be an int >= {minimum}, got {value!r}")
    return value


def _check_type(record: Dict[str, Any], expected: Tuple[str, ...], where: str) -> str:
    kind = record.get("record_type")
    if kind not in expected:
        raise InputError(f"{where}: field 'record_type' is {kind!r}, expected "
                         f"{' or '.join(map(repr, expected))}")
    version = record.get("version", RECORD_VERSION)
    if version != RECORD_VERSION:
        raise InputError(f"{where}: field 'version' is {version!r}; this reader knows version "
                         f"{RECORD_VERSION}")
    return kind


def first_record_type(path: PathLike) -> Optional[str]:
    """``record_type`` of the first line of a JSON-lines file, or None if it has none."""
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    return None
                return record.get("record_type") if isinstance(record, dict) else None
    return None


def read_vllm_stats(path: PathLike, steps: Any = None, progress: Progress = None) -> PlumbStats:
    """Per-step logical loads from a vLLM offline-EPLB stats JSONL.

    Each record's per-slot ``expert_load`` is summed into logical experts through its own
    ``p2l_map`` (the placement may change between records). E = P - num_redundant_experts.

    Args:
        steps: None, a ``range`` or (start, stop) of step ids, half-open.
        progress: called with (bytes read, file size).

    Returns:
        PlumbStats: ``window`` [T, L, E] (int64 when all loads are integers), ``placement`` the
        last kept record's p2l_map [L, P], ``meta`` the meta record's fields plus ``steps``
        (the kept step ids) and ``source_format`` "vllm".
    """
    name = os.fspath(path)
    meta: Optional[Dict[str, Any]] = None
    step_ids: List[int] = []
    logical: List[np.ndarray] = []      # [L, E] per record (int64 for integer loads)
    maps: List[np.ndarray] = []         # the distinct p2l maps, in order of appearance
    map_of_record: List[int] = []
    integral = True
    shape: Optional[Tuple[int, int]] = None
    for number, record in _records(path, progress):
        where = f"{name} line {number}"
        kind = _check_type(record, (META_TYPE, STATS_TYPE) if meta is None else (STATS_TYPE,),
                           where)
        if kind == META_TYPE:
            meta = {key: _int_field(record, key, where, 1 if key != "num_redundant_experts" else 0)
                    for key in META_FIELDS}
            meta["model"] = str(record.get("model", ""))
            continue
        if meta is None:
            raise InputError(f"{name} line {number}: missing the {META_TYPE!r} record (it must be "
                             "the first line)")
        step, load, p2l = _stats_record(record, meta, shape, where)
        shape = load.shape
        step_ids.append(step)
        if not maps or not np.array_equal(maps[-1], p2l):
            maps.append(p2l)
        map_of_record.append(len(maps) - 1)
        logical.append(_logical_loads(load, p2l, shape[1] - meta["num_redundant_experts"],
                                      where))
        integral &= load.dtype == np.int64
    if meta is None:
        raise InputError(f"{name}: empty file; expected a {META_TYPE!r} record")
    if not logical:
        raise InputError(f"{name}: no {STATS_TYPE!r} records after the meta record")
    keep = step_selection(step_ids, steps, name)
    window = np.stack([logical[i] for i in keep]).astype(np.int64 if integral else np.float64)
    meta.update(source_format="vllm", steps=[step_ids[i] for i in keep])
    return PlumbStats(window=window, meta=meta, placement=maps[map_of_record[keep[-1]]])


def _stats_record(record: Dict[str, Any], meta: Dict[str, Any],
                  shape: Optional[Tuple[int, int]], where: str
                  ) -> Tuple[int, np.ndarray, np.ndarray]:
    """(step, expert_load [L, P], p2l_map [L, P]) of one stats record, checked against the
    meta record and the ``shape`` of the earlier records (None for the first)."""
    step = _int_field(record, "step", where, 0)
    for key in ("expert_load", "p2l_map"):
        if key not in record:
            raise InputError(f"{where}: missing field {key!r}")
    load = count_array(record["expert_load"], where, "expert_load", ndim=2)
    if shape is None:
        if load.shape[0] != meta["num_layers"]:
            raise InputError(f"{where}: field 'expert_load' has {load.shape[0]} layers, the meta "
                             f"record says num_layers = {meta['num_layers']}")
        if load.shape[1] <= meta["num_redundant_experts"]:
            raise InputError(f"{where}: field 'expert_load' has {load.shape[1]} slots, not more "
                             f"than num_redundant_experts = {meta['num_redundant_experts']}")
    elif load.shape != shape:
        raise InputError(f"{where}: field 'expert_load' has shape {list(load.shape)}, earlier "
                         f"records have {list(shape)}")
    num_experts = load.shape[1] - meta["num_redundant_experts"]
    p2l = expert_table(record["p2l_map"], where, "p2l_map", num_experts)
    if p2l.shape != load.shape:
        raise InputError(f"{where}: field 'p2l_map' has shape {list(p2l.shape)}, "
                         f"'expert_load' has {list(load.shape)}")
    return step, load, p2l


def _logical_loads(load: np.ndarray, p2l: np.ndarray, num_experts: int, where: str
                   ) -> np.ndarray:
    """[L, E]: per-slot ``load`` [L, P] summed into the experts ``p2l`` [L, P] names; int64
    (exact) for int64 loads, else float64. Sums past int64 raise InputError naming ``where``."""
    num_layers = load.shape[0]
    offsets = (np.arange(num_layers, dtype=np.int64) * num_experts)[:, None]
    flat = (p2l + offsets).ravel()
    size = num_layers * num_experts
    sums = np.bincount(flat, weights=load.ravel(), minlength=size).reshape(num_layers, num_experts)
    if load.dtype != np.int64:
        return sums
    # Float sums of integers are exact below 2**53; above, the counts are summed again as
    # integers (np.add.at: slower, rarely needed), once it is clear they fit int64.
    largest = sums.max(initial=0.0)
    if largest >= 2.0 ** 63:
        raise InputError(f"{where}: field 'expert_load' sums to {largest:.4g} tokens for one "
                         "expert, past int64")
    if largest < 2.0 ** 53:
        return sums.astype(np.int64)
    exact = np.zeros(size, dtype=np.int64)
    np.add.at(exact, flat, load.ravel())
    return exact.reshape(num_layers, num_experts)


def write_vllm_stats(path: PathLike, expert_load: np.ndarray, p2l_map: np.ndarray,
                     first_step: int, model: str = "", num_ranks: int = 1, num_groups: int = 1,
                     num_nodes: int = 1) -> int:
    """Atomically write a stats JSONL: a meta record, then one record per step.

    Args:
        expert_load: int [T, L, P], tokens per physical slot per step, oldest first.
        p2l_map: int [L, P], the logical expert of each slot (the same for every step).
        first_step: the step number of ``expert_load[0]``; later steps count up by one.

    Returns:
        The number of stats records written.
    """
    num_steps, num_layers, num_slots = expert_load.shape
    num_experts = int(p2l_map.max()) + 1
    meta = {"record_type": META_TYPE, "version": RECORD_VERSION, "model": str(model),
            "num_ranks": num_ranks, "num_groups": num_groups, "num_nodes": num_nodes,
            "num_layers": num_layers, "num_redundant_experts": num_slots - num_experts}
    mapping = np.asarray(p2l_map).tolist()
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(meta) + "\n")
        for index in range(num_steps):
            record = {"record_type": STATS_TYPE, "version": RECORD_VERSION,
                      "step": first_step + index, "expert_load": expert_load[index].tolist(),
                      "p2l_map": mapping}
            handle.write(json.dumps(record) + "\n")
    return num_steps


def read_vllm_mapping(path: PathLike) -> np.ndarray:
    """phy2log int64 [L, P] of an ``eplb_initial_mapping`` file (layers in key order)."""
    name = os.fspath(path)
    for number, record in _records(path):
        where = f"{name} line {number}"
        _check_type(record, (MAPPING_TYPE,), where)
        num_slots = _int_field(record, "num_slots", where, 1)
        redundant = _int_field(record, "num_redundant_experts", where, 0)
        assignments = record.get("initial_global_assignments")
        if not isinstance(assignments, dict) or not assignments:
            raise InputError(f"{where}: field 'initial_global_assignments' must be a non-empty "
                             "object {layer: [slot expert ids]}")
        table = layer_rows(assignments, where, "initial_global_assignments")
        if table.shape[1] != num_slots:
            raise InputError(f"{where}: field 'initial_global_assignments' rows have "
                             f"{table.shape[1]} slots, num_slots = {num_slots}")
        if num_slots <= redundant:
            raise InputError(f"{where}: field 'num_redundant_experts' = {redundant} must be < "
                             f"num_slots = {num_slots}")
        return expert_table(table, where, "initial_global_assignments", num_slots - redundant)
    raise InputError(f"{name}: empty file; expected a {MAPPING_TYPE!r} record")


def layer_rows(assignments: Dict[Any, Any], where: str, field: str) -> np.ndarray:
    """Rows of ``{layer id: [P ids]}`` stacked in ascending layer id order, as int64 [L, P]."""
    rows = []
    seen = set()
    for key, row in assignments.items():
        layer = layer_number(key)
        if layer is None:
            raise InputError(f"{where}: field {field!r} key {key!r} is not a layer number "
                             "(an int >= 0)")
        if layer in seen:
            raise InputError(f"{where}: field {field!r} names layer {layer} twice")
        seen.add(layer)
        rows.append((layer, row))
    rows.sort(key=lambda item: item[0])
    lengths = {len(row) if isinstance(row, list) else -1 for _, row in rows}
    if len(lengths) != 1 or -1 in lengths:
        raise InputError(f"{where}: field {field!r} rows must be lists of the same length")
    return expert_table([row for _, row in rows], where, field)


def write_vllm_mapping(path: PathLike, phy2log: np.ndarray, num_experts: int) -> None:
    """Atomically write ``phy2log`` int [L, P] as an ``eplb_initial_mapping`` record."""
    table = np.asarray(phy2log, dtype=np.int64)
    record = {"record_type": MAPPING_TYPE, "version": RECORD_VERSION,
              "num_redundant_experts": int(table.shape[1] - num_experts),
              "num_slots": int(table.shape[1]),
              "initial_global_assignments": {str(layer): row
                                             for layer, row in enumerate(table.tolist())}}
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(record) + "\n")
