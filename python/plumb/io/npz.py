"""plumb's own statistics format: one ``.npz`` archive.

Keys (all optional but at least one of ``loads`` / ``window``):
    ``window``   int64 or float64 [T, L, E], per-step expert counts, oldest step first.
    ``loads``    int64 or float64 [L, E], aggregated counts (written when no window is kept).
    ``traffic``  [L, G, E] or [T, L, G, E], counts sent by each source rank to each expert.
    ``placement`` int64 [L, P], the phy2log the counts were recorded under (the current one).
    ``meta``     0-d unicode array holding a JSON object: ``{"format": "plumb", "version": 1,
                 ...free-form fields such as model, num_ranks, steps...}``.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ..errors import InputError
from .atomic import PathLike, atomic_write
from .checks import count_array, expert_table

FORMAT_NAME = "plumb"
FORMAT_VERSION = 1
PLACEMENT_FORMAT_NAME = "plumb-placement"


@dataclass
class PlumbStats:
    """Contents of a plumb ``.npz`` file; arrays as documented in the module docstring."""

    window: Optional[np.ndarray] = None
    loads: Optional[np.ndarray] = None
    traffic: Optional[np.ndarray] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    placement: Optional[np.ndarray] = None

    def aggregated_loads(self) -> np.ndarray:
        """[L, E] loads: ``loads`` if present, else the window summed over steps."""
        if self.loads is not None:
            return self.loads
        if self.window is None:
            raise InputError("statistics hold neither 'loads' nor 'window'")
        return self.window.sum(axis=0)


def save_plumb_npz(path: PathLike, stats: PlumbStats) -> None:
    """Atomically write ``stats`` to ``path`` (validated first; nothing is written on error)."""
    arrays: Dict[str, np.ndarray] = {}
    if stats.window is None and stats.loads is None:
        raise InputError(f"{path}: need 'window' or 'loads' to write")
    if stats.window is not None:
        arrays["window"] = count_array(stats.window, str(path), "window", 3)
        _check_steps(stats.meta.get("steps"), arrays["window"].shape[0], path)
    if stats.loads is not None:
        arrays["loads"] = count_array(stats.loads, str(path), "loads", 2)
    if stats.traffic is not None:
        traffic = np.asarray(stats.traffic)
        if traffic.ndim not in (3, 4):
            raise InputError(f"{path}: traffic must be [L, G, E] or [T, L, G, E], got {list(traffic.shape)}")
        arrays["traffic"] = count_array(traffic, str(path), "traffic", traffic.ndim)
    if stats.placement is not None:
        arrays["placement"] = expert_table(stats.placement, str(path), "placement")
    meta = {**stats.meta, "format": FORMAT_NAME, "version": FORMAT_VERSION}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_plumb_npz(path: PathLike) -> PlumbStats:
    """Read a plumb ``.npz``; malformed content raises InputError naming the file and field."""
    archive = _open_archive(path)
    with archive:
        keys = set(archive.files)
        meta: Dict[str, Any] = {}
        if "meta" in keys:
            try:
                meta = json.loads(str(_member(archive, "meta", path)[()]))
            except (ValueError, TypeError, IndexError) as err:
                raise InputError(f"{path}: field 'meta' is not JSON ({err})") from None
            if not isinstance(meta, dict):
                raise InputError(f"{path}: field 'meta' must be a JSON object")
        if "window" not in keys and "loads" not in keys:
            raise InputError(f"{path}: missing field 'window' or 'loads'")
        where = str(path)
        window = _counts(archive, "window", path, 3) if "window" in keys else None
        loads = _counts(archive, "loads", path, 2) if "loads" in keys else None
        traffic = None
        if "traffic" in keys:
            traffic = _member(archive, "traffic", path)
            if traffic.ndim not in (3, 4):
                raise InputError(f"{path}: field 'traffic' must be [L, G, E] or [T, L, G, E], "
                                 f"got shape {list(traffic.shape)}")
            traffic = count_array(traffic, where, "traffic", traffic.ndim)
        placement = (expert_table(_member(archive, "placement", path), where, "placement")
                     if "placement" in keys else None)
    if window is not None and loads is not None and window.shape[1:] != loads.shape:
        raise InputError(f"{path}: 'window' {list(window.shape)} and 'loads' {list(loads.shape)} "
                         "disagree on [L, E]")
    if window is not None:
        _check_steps(meta.get("steps"), window.shape[0], path)
    return PlumbStats(window=window, loads=loads, traffic=traffic, meta=meta, placement=placement)


def save_placement_npz(path: PathLike, phy2log: np.ndarray, meta: Optional[Dict[str, Any]] = None
                       ) -> None:
    """Atomically write a placement: ``phy2log`` int64 [L, P] and a ``meta`` JSON object
    (``{"format": "plumb-placement", "version": 1, ...}``)."""
    table = expert_table(phy2log, str(path), "phy2log")
    header = {**(meta or {}), "format": PLACEMENT_FORMAT_NAME, "version": FORMAT_VERSION}
    with atomic_write(path, "wb") as handle:
        np.savez(handle, phy2log=table, meta=np.array(json.dumps(header, sort_keys=True)))


def load_placement_npz(path: PathLike) -> np.ndarray:
    """phy2log int64 [L, P] of a plumb .npz: a placement file, or a stats file's
    ``placement`` (the one its counts were recorded under)."""
    archive = _open_archive(path)
    with archive:
        for key in ("phy2log", "placement"):
            if key in archive.files:
                return expert_table(_member(archive, key, path), str(path), key)
    raise InputError(f"{path}: missing field 'phy2log' (a plumb placement) or 'placement'")


def _open_archive(path: PathLike) -> Any:
    """The ``np.load`` archive of ``path``; InputError naming it when it is not a readable
    .npz (a truncated or corrupt zip, an empty file, a lone .npy array under a .npz name)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz archive ({err or type(err).__name__})"
                         ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: holds a single array (a .npy), not a .npz archive of named "
                         "fields")
    return archive


def _member(archive: Any, key: str, path: PathLike) -> np.ndarray:
    """Field ``key`` of an open archive; InputError naming it when its bytes are damaged (the
    archive reads a member only when asked) or it holds Python objects."""
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{path}: field {key!r} cannot be read ({err or type(err).__name__})"
                         ) from None


def _counts(archive: Any, key: str, path: PathLike, ndim: int) -> np.ndarray:
    """Non-empty token counts of field ``key`` with ``ndim`` dims (``count_array``)."""
    counts = count_array(_member(archive, key, path), str(path), key, ndim)
    if counts.size == 0:
        raise InputError(f"{path}: field {key!r} is empty, shape {list(counts.shape)}")
    return counts


def _check_steps(steps: Any, num_steps: int, path: PathLike) -> None:
    """Raises InputError when the meta field ``steps`` is a list (the window's step ids) that
    does not hold ``num_steps`` int64 ids. Other values are left alone: ``plumb run`` writes
    the number of steps recorded there, and readers number the steps 0..T-1 then."""
    if not isinstance(steps, list):
        return
    if len(steps) != num_steps or not all(
            isinstance(step, int) and not isinstance(step, bool) and -2 ** 63 <= step < 2 ** 63
            for step in steps):
        raise InputError(f"{path}: field 'meta' key 'steps' must list one int64 step id per "
                         f"step of 'window' ({num_steps})")
