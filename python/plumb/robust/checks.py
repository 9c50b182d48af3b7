"""Argument checks shared by ``backtest`` and ``recommend``."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ..errors import InputError
from ..solver.validate import as_loads, to_numpy


def as_number(value: Any, name: str, low: float, high: float = np.inf,
              low_open: bool = False, high_open: bool = False) -> float:
    """A finite float within [low, high] (ends excluded where ``*_open``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and np.isfinite(float(value)))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InputError(f"{name} must be a finite number in {span}, got {value!r}")
    return float(value)


def as_window(window: Any) -> np.ndarray:
    """float64 [T, L, E] per-step loads with T >= 2 (it is split into fit and held-out steps)."""
    arr = to_numpy(window, "window")
    if arr.ndim != 3:
        raise InputError(f"window must be per-step loads [T, L, E], got shape "
                         f"{list(arr.shape)}")
    _, loads = as_loads(arr)
    if loads.shape[0] < 2:
        raise InputError(f"window must hold >= 2 steps to split into fit and held-out parts, "
                         f"got T = {loads.shape[0]}")
    return loads


def split_window(window: np.ndarray, fit_fraction: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(fit steps, held-out steps): the first ``round(T * fit_fraction)`` steps and the rest,
    each at least one step."""
    fraction = as_number(fit_fraction, "fit_fraction", 0.0, 1.0, low_open=True, high_open=True)
    steps = window.shape[0]
    cut = min(max(int(round(steps * fraction)), 1), steps - 1)
    return window[:cut], window[cut:]
