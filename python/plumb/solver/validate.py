"""Input coercion and validation for ``solve`` and ``evaluate``.

Every failure raises :class:`plumb.errors.InputError` naming the argument and what was expected.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Tuple

import numpy as np
from numba import njit

from ..errors import InputError

POLICIES = ("plumb", "deepseek")
HIERARCHIES = ("auto", "global", "hierarchical")


# The torch float dtypes numpy has; others (bfloat16, float8) are read as float32.
_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def host_values(value: Any, name: str) -> Any:
    """``value`` unchanged, or a torch tensor's values as a numpy array: from any device
    and layout (sparse tensors densified), float dtypes numpy lacks widened to float32.
    A tensor without readable values (meta device, quantized) raises InputError."""
    if not (hasattr(value, "detach") and hasattr(value, "cpu")):
        return value
    if getattr(value, "is_meta", False):
        raise InputError(f"{name} is a meta tensor: it holds no values to read")
    tensor = value.detach()
    try:
        if str(tensor.layout) != "torch.strided":
            tensor = tensor.to_dense()
        if tensor.dtype.is_floating_point and str(tensor.dtype) not in _NUMPY_FLOATS:
            tensor = tensor.float()
        return tensor.cpu().numpy()
    except (TypeError, RuntimeError) as exc:
        raise InputError(f"{name}: cannot read the tensor's values ({exc})") from None


def as_int64(values: np.ndarray, what: str) -> np.ndarray:
    """An integer array as int64; InputError naming ``what`` when unsigned values lie past
    int64, which the cast would wrap to negative ones (uint64 ids and counts)."""
    if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
        raise InputError(f"{what} holds {values.max()}, above 2**63 - 1 (past int64)")
    return values.astype(np.int64)


def to_numpy(value: Any, name: str) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (see :func:`host_values`) or nested list."""
    value = host_values(value, name)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be array-like (numpy, torch or nested lists): {exc}") from None
    if arr.dtype == object:
        raise InputError(f"{name} must be a rectangular numeric array, got ragged/object data")
    return arr


# The largest total load of a layer (and of a layer's load over the slowest rank's speed)
# the solver accepts. Rank loads, times and their sums must stay finite: an overflow to inf
# would make an open rank look full to the packing. Only the ratios of the loads matter, so
# scaling them down loses nothing.
LOAD_LIMIT = 1e300
# The smallest positive total a layer (over the fastest rank's speed) may have: below it the
# ideal rank time and the per-rank shares underflow (to subnormals, or to 0.0, which the
# kernels then divide by).
LOAD_FLOOR = 1e-290


def as_loads(loads: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Expert loads as float64 [L, E], plus the window [T, L, E] when one was given.

    ``loads``: [E] (one layer), [L, E], or [T, L, E] (per-step counts, oldest first; summed
    over T). Integer or float; every value finite and >= 0, each layer's total (over
    experts, and steps) at most ``LOAD_LIMIT`` and either 0 or at least ``LOAD_FLOOR``.
    """
    arr = to_numpy(loads, "loads")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"loads must hold integer or float counts, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2, 3):
        raise InputError(f"loads must be [E], [L, E] or [T, L, E], got {arr.ndim} dims "
                         f"{list(arr.shape)}")
    if arr.size == 0:
        raise InputError(f"loads must not be empty, got shape {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    window = None
    if arr.ndim == 3:
        window = arr
        _check_values(_scan_loads(arr.reshape(-1, arr.shape[-1]))[0], arr)
        # An overflow to inf is reported below as too large a total.
        with np.errstate(over="ignore"):
            arr = arr.sum(axis=0)
    elif arr.ndim == 1:
        arr = arr[None, :]
    invalid, largest_total, smallest_total = _scan_loads(arr)
    if window is None:
        _check_values(invalid, arr)
    if not largest_total <= LOAD_LIMIT:
        raise InputError(f"loads are too large: a layer sums to {largest_total:.3g}; each "
                         f"layer's total load must be at most {LOAD_LIMIT:.0e} (only the "
                         f"loads' ratios matter: scale them down)")
    if smallest_total < LOAD_FLOOR:
        raise InputError(f"loads are too small: a layer sums to {smallest_total:.3g}; each "
                         f"layer's total load must be 0 or at least {LOAD_FLOOR:.0e} (only the "
                         f"loads' ratios matter: scale them up)")
    return arr, window


def check_load_scale(weights: np.ndarray, slowest: float, fastest: float) -> None:
    """Raises InputError unless every layer's total of ``weights`` (float64 [L, E], from
    :func:`as_loads`) over ``slowest`` (the smallest rank speed) is at most ``LOAD_LIMIT``
    and, where positive, over ``fastest`` (the largest) at least ``LOAD_FLOOR``;
    :func:`as_loads` has checked the totals themselves, so only speeds below or above 1 can
    fail."""
    if slowest >= 1.0 and fastest <= 1.0:
        return
    totals = weights.sum(axis=1)
    if fastest > 1.0:
        with np.errstate(under="ignore"):
            scaled = totals / fastest
        small = np.flatnonzero((totals > 0.0) & (scaled < LOAD_FLOOR))
        if small.size:
            layer = int(small[0])
            raise InputError(f"loads are too small for the topology's rank speeds: layer "
                             f"{layer} sums to {totals[layer]:.3g}, over the fastest rank's "
                             f"speed {fastest:.3g} that is {scaled[layer]:.3g}; it must be 0 "
                             f"or at least {LOAD_FLOOR:.0e} (only the loads' ratios matter: "
                             "scale them up)")
    if slowest >= 1.0:
        return
    layer = first_over_limit(totals, 1.0 / slowest)
    if layer >= 0:
        scaled = totals[layer] / slowest
        raise InputError(f"loads are too large for the topology's rank speeds: layer {layer} "
                         f"sums to {totals[layer]:.3g}, over the slowest rank's speed "
                         f"{slowest:.3g} that is {scaled:.3g}; it must be at most "
                         f"{LOAD_LIMIT:.0e} (only the loads' ratios matter: scale them down)")


def first_over_limit(totals: np.ndarray, factor: float) -> int:
    """The first index of ``totals`` (float64 [L]) whose product with ``factor`` exceeds
    ``LOAD_LIMIT`` (or overflows), -1 if none."""
    with np.errstate(over="ignore"):
        within = totals * factor <= LOAD_LIMIT
    return -1 if within.all() else int(np.argmin(within))


@njit(cache=True, nogil=True)
def _scan_loads(rows):
    """(how many of ``rows`` (float64 [R, E]) are NaN, infinite or negative, the largest row
    sum, the smallest positive row sum or inf): one pass over the loads, cheaper than the
    numpy reductions it replaces at model sizes."""
    invalid = 0
    largest = 0.0
    smallest = np.inf
    for r in range(rows.shape[0]):
        total = 0.0
        for e in range(rows.shape[1]):
            value = rows[r, e]
            # Comparisons with NaN are False, so NaN counts as invalid.
            invalid += not (0.0 <= value < np.inf)
            total += value
        largest = max(largest, total)
        if total > 0.0:
            smallest = min(smallest, total)
    return invalid, largest, smallest


def _check_values(invalid: int, arr: np.ndarray) -> None:
    """Raises the error of :func:`as_loads` for the ``invalid`` values of the loads ``arr``
    as given (NaN, infinite or negative), if any."""
    if invalid:
        if not np.isfinite(arr).all():
            raise InputError("loads must be finite (no NaN or inf)")
        raise InputError("loads must be >= 0")


def as_int(value: Any, name: str, minimum: int) -> int:
    """A Python int >= ``minimum`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def as_choice(value: Any, name: str, choices: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


# The most physical slots per layer plumb solves for (about a thousand times today's
# largest deployments): the solver's per-layer arrays scale with P, and a mistyped
# num_redundant such as 10**12 must fail at once, not exhaust memory.
MAX_SLOTS = 1 << 20


def check_slots(num_experts: int, num_slots: int, num_ranks: int,
                name: str = "P = E + num_redundant") -> int:
    """Slots per rank S for P = num_slots over G = num_ranks, after the shape rules of SPEC 1;
    ``name`` says where P comes from in the messages (a placement's columns, or E plus
    num_redundant)."""
    if num_slots > MAX_SLOTS:
        raise InputError(f"{name} = {num_slots} slots per layer; plumb solves at most "
                         f"{MAX_SLOTS}")
    if num_slots < num_experts:
        raise InputError(f"{name} = {num_slots} physical slots must be >= E = {num_experts} "
                         "experts")
    if num_ranks > num_slots:
        raise InputError(f"G = {num_ranks} ranks must be <= {name} = {num_slots} physical "
                         "slots")
    if num_slots % num_ranks:
        raise InputError(f"{name} = {num_slots} must be divisible by G = {num_ranks} ranks")
    return num_slots // num_ranks


def as_phy2log(phy2log: Any, name: str, num_layers: int, num_experts: int,
               num_ranks: int) -> np.ndarray:
    """A placement as int64 [L, P]: P a multiple of G, >= E, every expert held at least once.

    [P] is accepted for one layer.
    """
    arr = to_numpy(phy2log, name)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != num_layers:
        raise InputError(f"{name} must be [L, P] with L = {num_layers}, got "
                         f"{list(np.shape(arr))}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{name} must hold integer expert ids, got dtype {arr.dtype}")
    elif arr.dtype.kind == "u":
        arr = as_int64(arr, name)
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    check_slots(num_experts, arr.shape[1], num_ranks, f"{name}'s P")
    if arr.min() < 0 or arr.max() >= num_experts:
        raise InputError(f"{name} entries must be expert ids in [0, {num_experts}), got range "
                         f"[{arr.min()}, {arr.max()}]")
    counts = replica_counts(arr, num_experts)
    missing = np.argwhere(counts == 0)
    if missing.size:
        layer, expert = missing[0]
        raise InputError(f"{name} layer {layer} holds no replica of expert {expert}; every "
                         f"expert needs >= 1 slot")
    return arr


def replica_counts(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """logcnt int64 [L, E] of a valid phy2log int64 [L, P]."""
    num_layers = phy2log.shape[0]
    offsets = (np.arange(num_layers, dtype=np.int64) * num_experts)[:, None]
    flat = np.bincount((phy2log + offsets).ravel(), minlength=num_layers * num_experts)
    return flat.reshape(num_layers, num_experts)


@lru_cache(maxsize=64)
def shared_full(length: int, value: int) -> np.ndarray:
    """int64 [length] filled with ``value``, one array per (length, value) for the process:
    the solver's default caps (two fills were about 2 us of a small model's solve). Shared,
    so never to be written; writable all the same, because a read-only array is a numba type
    of its own and every kernel taking it would be compiled again (plumb.solver.jit)."""
    return np.full(length, value, dtype=np.int64)


def as_caps(value: Any, num_experts: int, num_slots: int, num_ranks: int) -> np.ndarray:
    """Per-expert replica caps int64 [E] from ``max_replicas_per_expert`` (None, int or [E]).

    None means G (more replicas than ranks never lowers the busiest rank). Caps above G are
    lowered to G unless E * G < P forces some expert past G.
    """
    if value is None:
        # E * G < P: some expert must exceed one replica per rank.
        cap = num_ranks if num_experts * num_ranks >= num_slots else num_slots
        return shared_full(num_experts, cap)
    # A cap above P allows as much as P: clipped first, so that any int fits int64.
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = min(as_int(value, "max_replicas_per_expert", 1), num_slots)
    arr = to_numpy(value, "max_replicas_per_expert")
    if arr.ndim == 0:
        arr = np.full(num_experts, arr)
    if arr.shape != (num_experts,) or arr.dtype.kind not in "iu" or (arr < 1).any():
        raise InputError(f"max_replicas_per_expert must be an int >= 1 or ints >= 1 of "
                         f"shape [E] = [{num_experts}], got {value!r}")
    caps = np.minimum(arr, num_slots).astype(np.int64)
    if num_experts * num_ranks >= num_slots:
        caps = np.minimum(caps, num_ranks)
    if caps.sum() < num_slots:
        raise InputError(f"max_replicas_per_expert allows only {int(caps.sum())} replicas in "
                         f"total; P = {num_slots} slots must be filled")
    return caps
