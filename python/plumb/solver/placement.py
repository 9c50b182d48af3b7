"""The result of ``plumb.solve``: a placement, its inverse map and its metrics."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

import numpy as np
from numba import njit

from ..topology import Topology
from .jit import kernel
from .metrics import Metrics


@njit(cache=True, nogil=True)
def log2phy_array(phy2log, logcnt):
    """int64 [L, E, max(logcnt)]: each expert's slots, ascending, padded with -1
    (phy2log int64 [L, P], logcnt int64 [L, E])."""
    num_layers, num_slots = phy2log.shape
    num_experts = logcnt.shape[1]
    log2phy = np.full((num_layers, num_experts, logcnt.max()), -1, dtype=np.int64)
    fill = np.zeros(num_experts, dtype=np.int64)
    for layer in range(num_layers):
        fill[:] = 0
        for p in range(num_slots):
            e = phy2log[layer, p]
            log2phy[layer, e, fill[e]] = p
            fill[e] += 1
    return log2phy


@kernel
def canonical_slots(slot_e, row):
    """Writes ``slot_e`` (int64 [G, S], each rank's experts in any order) into ``row`` (int64
    [G * S], a phy2log row) with each rank's slots by ascending expert id: the canonical order
    of a placement.

    Each slot's place is the count of slots before it in (expert, slot) order: S**2
    branch-free comparisons, cheaper than a sort's unpredictable branches at small S.
    """
    bins, slots = slot_e.shape
    for r in range(bins):
        for k in range(slots):
            e = slot_e[r, k]
            before = 0
            for j in range(slots):
                other = slot_e[r, j]
                before += np.int64(other < e) | (np.int64(other == e) & np.int64(j < k))
            row[r * slots + before] = e


def log2phy_of(phy2log: np.ndarray, logcnt: np.ndarray) -> np.ndarray:
    """int64 [L, E, max(logcnt)]: each expert's slots, ascending, padded with -1."""
    return log2phy_array(np.ascontiguousarray(phy2log, dtype=np.int64),
                         np.ascontiguousarray(logcnt, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Placement:
    """Experts (and replicas) on slots for every layer, with the inputs it was solved for.

    Attributes:
        phy2log: int64 [L, P], logical expert held by each physical slot; slot p is on rank
            p // S, and each rank's slots are sorted by expert id.
        log2phy: int64 [L, E, max(logcnt)], each expert's slots ascending, -1 padded (made
            from phy2log on first access).
        logcnt: int64 [L, E], replicas per expert (>= 1, sums to P per layer).
        metrics: :class:`Metrics` of this placement on ``loads`` (rank loads, balancedness,
            lower bounds, lb_gap, moves vs ``previous``, which hierarchy won per layer).
        loads: float64 [L, E], the loads it was balanced for (the window summed over steps).
        window: float64 [T, L, E] when ``loads`` was a window of steps, else None.
        topo: the Topology; num_redundant, num_groups, policy, hierarchy: the solve arguments.
        previous: int64 [L, P'] previous placement, or None; traffic: float64 [L, G, E] or None.
    """

    phy2log: np.ndarray
    logcnt: np.ndarray
    metrics: Metrics
    loads: np.ndarray
    window: Optional[np.ndarray]
    topo: Topology
    num_redundant: int
    num_groups: int
    policy: str
    hierarchy: str
    previous: Optional[np.ndarray] = None
    traffic: Optional[Any] = None

    @cached_property
    def log2phy(self) -> np.ndarray:
        """int64 [L, E, max(logcnt)], each expert's slots ascending, -1 padded.

        Derived on first access and kept: it is a few megabytes of fresh memory on the large
        shapes (5% of a DeepSeek-V3 decode solve), and the engines' file exports, the metrics
        and the locality pass only need phy2log."""
        return log2phy_of(self.phy2log, self.logcnt)

    @property
    def rank_loads(self) -> np.ndarray:
        """float64 [L, G], load on each rank (each replica of e carries w_e / c_e)."""
        return self.metrics.rank_loads

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.logcnt.shape[1])

    @property
    def num_slots(self) -> int:
        """P, physical slots per layer."""
        return int(self.phy2log.shape[1])

    @property
    def slots_per_rank(self) -> int:
        """S = P / G."""
        return self.num_slots // self.topo.num_ranks

    def __repr__(self) -> str:
        return (f"Placement(L={self.num_layers}, E={self.num_experts}, P={self.num_slots}, "
                f"G={self.topo.num_ranks}, policy={self.policy!r}, "
                f"balancedness={self.metrics.balancedness:.4f}, "
                f"lb_gap_mean={self.metrics.lb_gap_mean:.4%})")
