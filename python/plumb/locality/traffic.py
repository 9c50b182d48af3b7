"""Per-source traffic: how many routed picks each source rank sends to each expert."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from numba import njit

from ..errors import InputError
from ..solver.validate import LOAD_LIMIT, first_over_limit, host_values

DISPATCH_MODES = ("even", "nearest")
EVEN = 0
NEAREST = 1


def dispatch_code(dispatch: str) -> int:
    """EVEN or NEAREST for ``dispatch`` = "even" | "nearest"."""
    if dispatch not in DISPATCH_MODES:
        raise InputError(f"dispatch must be one of {list(DISPATCH_MODES)}, got {dispatch!r}")
    return DISPATCH_MODES.index(dispatch)


def as_load_slack(load_slack: Any) -> float:
    """``load_slack`` as a float >= 0: max rank load may grow to (1 + slack) x the balanced one."""
    try:
        slack = float(load_slack)
    except (TypeError, ValueError):
        raise InputError(f"load_slack must be a number >= 0, got {load_slack!r}") from None
    if isinstance(load_slack, bool) or not math.isfinite(slack) or slack < 0:
        raise InputError(f"load_slack must be a finite number >= 0 (0.01 = 1%), "
                         f"got {load_slack!r}")
    return slack


def _as_float_array(value: Any, name: str) -> np.ndarray:
    value = host_values(value, name)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an array of numbers") from None
    # As for loads: complex values would lose their imaginary part, booleans are no counts.
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{name} must hold integer or float counts, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    # Two reductions instead of boolean temporaries: a NaN fails the first comparison.
    if arr.size and not (arr.min() >= 0 and arr.max() < np.inf):
        raise InputError(f"{name} must hold finite counts >= 0")
    return arr


def check_traffic_scale(weights: np.ndarray, traffic: Optional[np.ndarray],
                        link_cost: np.ndarray) -> None:
    """Raises InputError unless every layer's traffic cost stays finite with room to spare:
    a layer's routed picks (``traffic`` float64 [L, G, E] summed, or the loads ``weights``
    float64 [L, E] when it is None: tokens then originate uniformly) times the largest link
    cost (``link_cost`` float64 [G, G]) at most ``LOAD_LIMIT``."""
    totals = weights.sum(axis=1) if traffic is None else traffic.sum(axis=(1, 2))
    largest_cost = float(link_cost.max()) if link_cost.size else 0.0
    layer = first_over_limit(totals, max(largest_cost, 1.0))
    if layer >= 0:
        raise InputError(f"traffic is too large for the topology's link costs: layer {layer} "
                         f"routes {totals[layer]:.3g} picks and the largest link cost is "
                         f"{largest_cost:.3g}; picks times cost must stay at most "
                         f"{LOAD_LIMIT:.0e} (scale the traffic, or the costs, down)")


def as_traffic(traffic: Any, num_layers: int, num_ranks: int, num_experts: int) -> Optional[np.ndarray]:
    """Validated per-source counts as float64 [L, G, E] (None stays None).

    ``traffic``: array-like [L, G, E] (routed picks from source rank s to expert e in each
    layer), [T, L, G, E] (a window of steps, summed), or [G, E] when L == 1.
    """
    if traffic is None:
        return None
    arr = _as_float_array(traffic, "traffic")
    expected = (num_layers, num_ranks, num_experts)
    if arr.ndim == 2 and num_layers == 1:
        arr = arr[None]
    elif arr.ndim == 4:
        # An overflow to inf is reported by check_traffic_scale.
        with np.errstate(over="ignore"):
            arr = arr.sum(axis=0)
    if arr.shape != expected:
        raise InputError(f"traffic must be [L, G, E] = {list(expected)} or [T, L, G, E], "
                         f"got {list(np.shape(traffic))}")
    return np.ascontiguousarray(arr)


def source_traffic(traffic: Optional[np.ndarray], weights: np.ndarray, num_ranks: int,
                   need_share: bool = True, compact: bool = False):
    """Token counts per (layer, source, expert) and each expert's source shares.

    Args:
        traffic: float64 [L, G, E] from ``as_traffic``, or None (tokens originate uniformly
            over ranks: each source sends weights[l, e] / G).
        weights: float64 [L, E], the expert loads the placement was balanced on.
        num_ranks: G.
        need_share: False when only the tokens are used (even dispatch): share is then an
            empty float64 [0, 0, 0].
        compact: uniform sources' tokens as [L, 1, E], the one row every source sends,
            for the kernels that read rows through ``plumb.locality.levels.source_row``
            (the traffic metrics); ``full_tokens`` expands them. Saves building G copies.

    Returns:
        (tokens float64 [L, G, E] (or [L, 1, E], ``compact``), share float64 [L, G, E]):
        ``share[l, :, e]`` sums to 1 over
        sources (uniform where expert e received no traffic). Rank loads under nearest dispatch
        are ``weights * share`` routed, so they add up to the same loads as even dispatch.
    """
    num_layers, num_experts = weights.shape
    share = np.empty((0, 0, 0), dtype=np.float64)
    if traffic is None:
        tokens = (weights / num_ranks)[:, None, :]
        if not compact:
            tokens = full_tokens(tokens, num_ranks)
        if need_share:
            share = np.full((num_layers, num_ranks, num_experts), 1.0 / num_ranks)
        return tokens, share
    if need_share:
        share = np.empty_like(traffic)
        _source_shares(traffic, share)
    return traffic, share


def full_tokens(tokens: np.ndarray, num_ranks: int) -> np.ndarray:
    """``tokens`` float64 [L, G, E] as they are, or compact uniform ones [L, 1, E]
    (``source_traffic(compact=True)``) repeated for each of the G sources."""
    if tokens.shape[1] == num_ranks:
        return tokens
    return np.repeat(tokens, num_ranks, axis=1)


@njit(cache=True, nogil=True)
def _source_shares(traffic, share):
    """share[l, s, e] = traffic[l, s, e] / sum over s (1 / G where the sum is 0); float64
    [L, G, E] each. One pass over contiguous rows instead of several numpy temporaries."""
    num_layers, num_ranks, num_experts = traffic.shape
    totals = np.empty(num_experts, dtype=np.float64)
    for layer in range(num_layers):
        totals[:] = 0.0
        for s in range(num_ranks):
            totals += traffic[layer, s]
        for s in range(num_ranks):
            for e in range(num_experts):
                total = totals[e]
                share[layer, s, e] = traffic[layer, s, e] / total if total > 0 else 1.0 / num_ranks
