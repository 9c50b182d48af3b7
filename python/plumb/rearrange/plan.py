"""The rearrangement plan: every copy that turns an old placement into a new one, with its cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..topology import Topology, TopologyLike
from ._inputs import check_placements
from .movement import MovementStats, summarise
from .routing import COPY_COLUMNS, DST_SLOT, LAYER, NOOP_COLUMNS, SRC_SLOT, route


@dataclass(frozen=True, eq=False)
class RearrangementPlan:
    """What each slot receives, from where. Build with ``plumb.plan_rearrangement``.

    Attributes:
        old_phy2log, new_phy2log: int64 [L, P], read-only.
        topo: the topology the senders were routed on (G ranks, S = P / G slots each).
        transfers: int64 [M, 6], columns ``plan.columns`` = (layer, expert, src_rank, src_slot,
            dst_rank, dst_slot), slots as physical (global) ids; sorted by (layer, dst_slot);
            src_rank != dst_rank.
        local_copies: int64 [C, 6], same columns, src_rank == dst_rank.
        noops: int64 [N, 3], columns ``plan.noop_columns`` = (layer, expert, slot).
        stats: MovementStats (moves, bytes, per-rank bottlenecks, estimated time).

    Every destination slot appears once across transfers, local copies and no-ops; every
    source slot holds the expert in ``old_phy2log``. Executors:
    ``plumb.rearrange.execute_inplace`` (a stacked [L, P, ...] tensor in one process) and
    ``plumb.rearrange.execute_distributed`` (one [L, S, ...] shard per rank).
    """

    old_phy2log: np.ndarray
    new_phy2log: np.ndarray
    topo: Topology
    transfers: np.ndarray
    local_copies: np.ndarray
    noops: np.ndarray
    stats: MovementStats

    columns = COPY_COLUMNS
    noop_columns = NOOP_COLUMNS

    @property
    def num_layers(self) -> int:
        """L."""
        return int(self.old_phy2log.shape[0])

    @property
    def num_slots(self) -> int:
        """P = G * S."""
        return int(self.old_phy2log.shape[1])

    @property
    def num_ranks(self) -> int:
        """G."""
        return self.topo.num_ranks

    @property
    def slots_per_rank(self) -> int:
        """S."""
        return self.num_slots // self.num_ranks

    def copies(self) -> np.ndarray:
        """int64 [M + C, 6]: transfers and local copies together, sorted by (layer, dst_slot)."""
        both = np.concatenate([self.transfers, self.local_copies])
        return both[np.lexsort((both[:, DST_SLOT], both[:, LAYER]))]

    def apply(self, values) -> np.ndarray:
        """Reference semantics of the executors on a numpy array [L, P, ...] indexed like
        ``old_phy2log`` (e.g. the placement itself): a new array in which every copied slot
        holds what its source slot held before. ``plan.apply(plan.old_phy2log)`` equals
        ``plan.new_phy2log``."""
        values = np.asarray(values)
        if values.shape[:2] != self.old_phy2log.shape:
            raise InputError(f"values must be [L, P, ...] = {list(self.old_phy2log.shape)}"
                             f" + [...], got {list(values.shape)}")
        out = values.copy()
        copies = self.copies()
        out[copies[:, LAYER], copies[:, DST_SLOT]] = values[copies[:, LAYER], copies[:, SRC_SLOT]]
        return out

    def __repr__(self) -> str:
        s = self.stats
        return (f"RearrangementPlan(L={self.num_layers}, P={self.num_slots}, G={self.num_ranks}, "
                f"moves={s.moves}, local_copies={s.local_copies}, noops={s.noops}, "
                f"bytes={s.bytes}, estimated_seconds={s.estimated_seconds:.3g})")


def plan_rearrangement(old_phy2log, new_phy2log, topo: TopologyLike, bytes_per_expert: int,
                       num_experts: Optional[int] = None) -> RearrangementPlan:
    """Plan the copies that turn ``old_phy2log`` into ``new_phy2log``; deterministic.

    Args:
        old_phy2log, new_phy2log: int [L, P] (or [P]; numpy, torch or lists, or objects with a
            ``phy2log`` attribute), expert held by each physical slot before / after.
        topo: Topology (or int G); slot p lives on rank p // (P / G).
        bytes_per_expert: int >= 0, bytes of one expert's weights summed over its tensors
            (e.g. w13 and w2); used for the cost summary only.
        num_experts: E, to check ids against; default: the largest id + 1.

    Senders: among the ranks holding the expert in the old layer, the closest link level to the
    receiver first, then the least loaded (see ``plumb.rearrange.routing``). Raises InputError on
    mismatched shapes, P not divisible by G, ids out of range, or a needed expert held nowhere.
    """
    placements = check_placements(old_phy2log, new_phy2log, topo, bytes_per_expert, num_experts)
    routes = route(placements)
    for table in (routes.transfers, routes.local_copies, routes.noops):
        table.setflags(write=False)
    return RearrangementPlan(old_phy2log=placements.old, new_phy2log=placements.new,
                             topo=placements.topo, transfers=routes.transfers,
                             local_copies=routes.local_copies, noops=routes.noops,
                             stats=summarise(routes, placements))
