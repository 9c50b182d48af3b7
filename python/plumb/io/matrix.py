"""Plain matrices: ``.npy`` (any of [L, E], [T, L, E], phy2log [L, P]) and ``.csv`` (one row
per layer, comma-separated numbers; ``#`` starts a comment line)."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .atomic import PathLike, atomic_write


def read_npy(path: PathLike) -> np.ndarray:
    """The array stored in a ``.npy`` file (no pickles)."""
    try:
        return np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{os.fspath(path)}: not a readable .npy array ({err})") from None


def read_csv(path: PathLike) -> np.ndarray:
    """float64 [rows, columns] of a CSV of numbers; every row the same length."""
    name = os.fspath(path)
    rows = []
    width = None
    with open(name, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            cells = text.split(",")
            try:
                row = [float(cell) for cell in cells]
            except ValueError:
                bad = next(c for c in cells if not _is_number(c))
                raise InputError(f"{name} line {number}: {bad.strip()!r} is not a number") from None
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise InputError(f"{name} line {number}: {len(row)} columns, earlier rows have "
                                 f"{width}")
            rows.append(row)
    if not rows:
        raise InputError(f"{name}: no rows of numbers")
    return np.array(rows, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def integral(array: np.ndarray) -> np.ndarray:
    """int64 copy of ``array`` when every value is a whole number within int64's range, else
    ``array`` unchanged (a float past 2**63 would not survive the cast)."""
    if (array.dtype.kind == "f" and (np.abs(array) < 2.0 ** 63).all()
            and np.array_equal(array, np.round(array))):
        return array.astype(np.int64)
    return array


def write_npy(path: PathLike, array: np.ndarray) -> None:
    """Atomically write ``array`` as ``.npy``."""
    with atomic_write(path, "wb") as handle:
        np.save(handle, np.asarray(array))

