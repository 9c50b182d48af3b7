"""The robust objective over all layers: the exact optimum for small layers, else two
candidates per layer, the better one kept.

Per layer, with the window's per-step loads ``x[t, e]`` and step weights ``a_t``, the objective
is ``J = sum_t a_t max_g R[t, g]``: the expected per-step max rank time (rank time = the
per-step loads ``x[t, e] / c_e`` of its replicas over its speed). Candidates:

* A: the mean-objective placement (water-filling + LPT + swaps on the summed loads), then the
  per-step swap search (:func:`plumb.robust.refine.refine_steps`);
* B: replica counts from :func:`plumb.robust.replicate.step_water_fill`, LPT packing and swap
  search on the weighted mean loads, then the per-step swap search.

The candidate with the lower ``J`` is kept (A on ties), so the result is never worse on the
window's steps than the mean-objective placement. Where the caller says the layer is small
enough (one replica per expert, equal rank speeds, few packings), every packing is scored
instead (:func:`plumb.robust.exact.exact_packing`, the mean-objective placement kept on ties).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..solver.place import pack_counts
from .exact import exact_packing
from .refine import refine_steps
from .replicate import step_water_fill


@njit(cache=True, nogil=True)
def _share(x, counts, share):
    for t in range(x.shape[0]):
        for e in range(x.shape[1]):
            share[t, e] = x[t, e] / counts[e]


@njit(cache=True, nogil=True)
def _candidate_b(x, step_w, caps, speed, allow_dup, counts, slot_e, has, max_swaps, share):
    """Candidate B of one layer into counts / slot_e / has; returns its objective."""
    steps, n = x.shape
    bins, slots = slot_e.shape
    num_items = bins * slots
    step_water_fill(x, step_w, num_items, caps, counts)
    mean = np.zeros(n, dtype=np.float64)
    for t in range(steps):
        for e in range(n):
            mean[e] += step_w[t] * x[t, e]
    # LPT packing and swap search on the mean loads, as for the mean objective.
    pack_counts(mean, counts, speed, allow_dup, slot_e,
                np.empty((bins, slots), dtype=np.float64), np.empty(bins, dtype=np.float64),
                has, np.bool_(True))
    _share(x, counts, share)
    return refine_steps(share, step_w, speed, not allow_dup, slot_e, has, max_swaps)


@njit(cache=True, nogil=True)
def _write_layer(slot_e, layer, phy2log):
    """phy2log[layer] from slot_e [G, S], each rank's slots sorted by expert id."""
    bins, slots = slot_e.shape
    for g in range(bins):
        row = np.sort(slot_e[g])
        for k in range(slots):
            phy2log[layer, g * slots + k] = row[k]


@njit(cache=True, nogil=True)
def robust_model(window, step_w, caps, speed, allow_dup, start, max_swaps, exact, phy2log):
    """Robust placement of every layer.

    Args:
        window: float64 [T, L, E], per-step loads.
        step_w: float64 [T], step weights (sum 1).
        caps: int64 [E], replica cap per expert.
        speed: float64 [G], rank speeds.
        allow_dup: whether two replicas of one expert may share a rank (only when E * G < P).
        start: int64 [L, P], the mean-objective placement (candidate A's start).
        max_swaps: bound on the per-step swaps of each candidate.
        exact: score every packing instead (only when P == E and all speeds are equal).
        phy2log: int64 [L, P], output; each rank's slots sorted by expert id.
    """
    steps, num_layers, n = window.shape
    bins = speed.shape[0]
    num_slots = start.shape[1]
    slots = num_slots // bins
    x = np.empty((steps, n), dtype=np.float64)
    share = np.empty((steps, n), dtype=np.float64)
    counts_a = np.empty(n, dtype=np.int64)
    counts_b = np.empty(n, dtype=np.int64)
    slot_a = np.empty((bins, slots), dtype=np.int64)
    slot_b = np.empty((bins, slots), dtype=np.int64)
    # int16 as in the solver: the packing kernels compile once for that type.
    has = np.empty((bins, n), dtype=np.int16)
    for layer in range(num_layers):
        for t in range(steps):
            for e in range(n):
                x[t, e] = window[t, layer, e]
        counts_a[:] = 0
        has[:, :] = 0
        for p in range(num_slots):
            e = start[layer, p]
            counts_a[e] += 1
            slot_a[p // slots, p % slots] = e
            has[p // slots, e] += 1
        _share(x, counts_a, share)
        if exact:
            # One replica per expert and equal speeds: share / speed is each expert's time.
            for t in range(steps):
                for e in range(n):
                    share[t, e] /= speed[0]
            exact_packing(share, step_w, slot_a)
            _write_layer(slot_a, layer, phy2log)
            continue
        value_a = refine_steps(share, step_w, speed, not allow_dup, slot_a, has, max_swaps)
        value_b = _candidate_b(x, step_w, caps, speed, allow_dup, counts_b, slot_b, has,
                               max_swaps, share)
        _write_layer(slot_b if value_b < value_a else slot_a, layer, phy2log)
