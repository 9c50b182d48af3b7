"""Validation shared by the readers: every failure is one InputError line naming the place.

``where`` is the location prefix of the message: ``"stats.jsonl line 3"``, ``"rank0.safetensors
key '5_2'"``, ``"mapping.json"``; ``field`` names the field inside it.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..solver.validate import as_int64, host_values


@contextlib.contextmanager
def file_errors(where: str) -> Iterator[None]:
    """Turns the errors of reading an unreadable or damaged file into one InputError naming
    ``where``: a directory or a file without permission (OSError), bytes that are not UTF-8,
    JSON nested too deeply for the parser (RecursionError), a truncated or corrupt archive
    (zipfile, zlib, EOFError), a number too large for its type (OverflowError)."""
    try:
        yield
    except InputError:
        raise
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to read") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, OverflowError) as err:
        raise InputError(f"{where}: cannot read it ({type(err).__name__}: {err})") from None


def _as_array(values: Any, where: str, field: str) -> np.ndarray:
    """numpy view of nested lists, a numpy array or a torch tensor (any device)."""
    values = host_values(values, f"{where}: field {field!r}")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field {field!r} is ragged (rows of different lengths)") from None
    if array.dtype == object:
        raise InputError(f"{where}: field {field!r} is ragged (rows of different lengths) or "
                         "holds integers beyond 64 bits")
    return array


def count_array(values: Any, where: str, field: str, ndim: Optional[int] = None) -> np.ndarray:
    """Token counts as int64 (integral input) or float64, checked finite and >= 0.

    Args:
        values: nested lists, numpy array or torch tensor (any device).
        ndim: the required number of dimensions, or None for any.
    """
    array = _as_array(values, where, field)
    if array.dtype.kind == "b" or array.dtype.kind not in "iuf":
        raise InputError(f"{where}: field {field!r} must hold numbers, got {array.dtype} values")
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{where}: field {field!r} must have {ndim} dims, got shape "
                         f"{list(array.shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{where}: field {field!r} holds NaN or inf")
    if (array < 0).any():
        raise InputError(f"{where}: field {field!r} holds negative counts")
    if array.dtype.kind in "iu":
        return as_int64(array, f"{where}: field {field!r}")
    return array.astype(np.float64)


def expert_table(values: Any, where: str, field: str, num_experts: Optional[int] = None,
                 ndim: int = 2) -> np.ndarray:
    """Expert ids as int64 (a phy2log [L, P] or one layer's [P]), each in [0, num_experts)."""
    array = _as_array(values, where, field)
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and np.isfinite(array).all() and np.array_equal(array, np.round(array)))
    if not integral or array.dtype.kind == "b":
        raise InputError(f"{where}: field {field!r} must hold integer expert ids, got "
                         f"{array.dtype} values")
    if array.ndim != ndim or array.size == 0:
        raise InputError(f"{where}: field {field!r} must be a non-empty {ndim}-d table, got "
                         f"shape {list(array.shape)}")
    array = as_int64(array, f"{where}: field {field!r}")
    if array.min() < 0:
        raise InputError(f"{where}: field {field!r} holds negative expert id {array.min()}")
    if num_experts is not None and array.max() >= num_experts:
        raise InputError(f"{where}: field {field!r} holds expert id {array.max()}, expected ids "
                         f"in [0, {num_experts})")
    return array


def layer_number(key: Any) -> Optional[int]:
    """A layer id as an int: an int >= 0 (numpy ints too) or a string of ASCII digits (a JSON
    object key); None for anything else (True, 0.5, ' 1', -1), which int() would take or
    fold onto another layer."""
    if isinstance(key, str):
        return int(key) if key.isascii() and key.isdigit() else None
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) and key >= 0:
        return int(key)
    return None


def step_selection(step_ids: Sequence[int], steps: Any, where: str) -> np.ndarray:
    """Indices of the steps kept by ``steps``: None (all), a ``range`` or a (start, stop) pair.

    Ranges are half-open over step ids, like Python slices: (100, 200) keeps ids 100..199;
    either bound may be None. Keeping no step is an error.
    """
    ids = np.asarray(step_ids, dtype=np.int64)
    if steps is None:
        keep = np.ones(ids.shape, dtype=bool)
    else:
        if isinstance(steps, range):
            if steps.step != 1:
                raise InputError(f"steps must be a range with step 1, got {steps!r}")
            start, stop = steps.start, steps.stop
        elif isinstance(steps, (tuple, list)) and len(steps) == 2:
            start, stop = steps
        else:
            raise InputError(f"steps must be None, a range or a (start, stop) pair, got {steps!r}")
        for bound in (start, stop):
            if bound is not None and (isinstance(bound, bool)
                                      or not isinstance(bound, (int, np.integer))):
                raise InputError(f"steps bounds must be ints or None, got {steps!r}")
        keep = np.ones(ids.shape, dtype=bool)
        if start is not None:
            keep &= ids >= start
        if stop is not None:
            keep &= ids < stop
    if not keep.any():
        span = f"{ids.min()}..{ids.max()}" if ids.size else "none"
        raise InputError(f"{where}: no step in the selected range {steps!r} (steps held: {span})")
    return np.flatnonzero(keep)


def parse_steps(text: str) -> tuple:
    """``"START:STOP"`` (either side may be empty) as a (start, stop) pair for ``steps``."""
    start, sep, stop = text.partition(":")
    if not sep:
        raise InputError(f"--steps must be START:STOP (half-open, either side optional), got {text!r}")
    try:
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise InputError(f"--steps must be START:STOP with integer bounds, got {text!r}") from None
