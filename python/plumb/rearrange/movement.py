"""Movement metrics of a rearrangement: what moves, how many bytes, over which links, how long.

Units: bytes for sizes, seconds for times, topology bandwidths in GB/s (1e9 bytes/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..topology import CROSS_NODE, TopologyLike
from ._inputs import Placements, check_placements
from .routing import DST_RANK, LAYER, SRC_RANK, Routes, route


@dataclass(frozen=True, eq=False)
class MovementStats:
    """Cost of turning one placement into another (SPEC section 2, "moves").

    Attributes:
        moves: (layer, slot)s whose new expert must arrive from another rank.
        local_copies: (layer, slot)s whose new expert is in another slot of the same rank.
        noops: (layer, slot)s that already hold their new expert.
        moves_per_layer, local_copies_per_layer: int64 [L].
        bytes_per_expert: bytes of one expert's weights, as given.
        bytes: moves * bytes_per_expert, the bytes crossing rank boundaries.
        local_copy_bytes: local_copies * bytes_per_expert.
        bytes_received, bytes_sent: int64 [G], per-rank bytes over links (senders as routed).
        max_bytes_received, max_bytes_sent: the bottleneck ranks' bytes.
        intra_node_bytes, inter_node_bytes: bytes of transfers inside a node / between nodes.
        rank_seconds: float64 [G], each rank's estimated time: max(send, receive) link time,
            each side the sum of bytes_per_expert / bandwidth over its transfers (links are
            full duplex; a rank's transfers share its link), plus its local copies at the
            rank's own copy bandwidth.
        estimated_seconds: max of rank_seconds (ranks work in parallel; the slowest one gates).
    """

    moves: int
    local_copies: int
    noops: int
    moves_per_layer: np.ndarray
    local_copies_per_layer: np.ndarray
    bytes_per_expert: int
    bytes: int
    local_copy_bytes: int
    bytes_received: np.ndarray
    bytes_sent: np.ndarray
    max_bytes_received: int
    max_bytes_sent: int
    intra_node_bytes: int
    inter_node_bytes: int
    rank_seconds: np.ndarray
    estimated_seconds: float

    def as_dict(self) -> dict:
        """Plain Python values (lists for the arrays), e.g. for JSON or a metrics table."""
        return {name: (value.tolist() if isinstance(value, np.ndarray) else value)
                for name, value in self.__dict__.items()}


def summarise(routes: Routes, placements: Placements) -> MovementStats:
    """MovementStats of routed copies (see ``routing.route``)."""
    topo = placements.topo
    num_layers = placements.old.shape[0]
    num_ranks = topo.num_ranks
    size = placements.bytes_per_expert
    transfers, local = routes.transfers, routes.local_copies
    src, dst = transfers[:, SRC_RANK], transfers[:, DST_RANK]
    received = np.bincount(dst, minlength=num_ranks).astype(np.int64) * size
    sent = np.bincount(src, minlength=num_ranks).astype(np.int64) * size
    inter = int(np.count_nonzero(topo.level[src, dst] == CROSS_NODE)) * size

    seconds = size / (topo.bandwidth_gbps[src, dst] * 1e9)
    send_seconds = np.bincount(src, weights=seconds, minlength=num_ranks)
    recv_seconds = np.bincount(dst, weights=seconds, minlength=num_ranks)
    own = np.arange(num_ranks)
    copy_seconds = (np.bincount(local[:, DST_RANK], minlength=num_ranks) * size
                    / (topo.bandwidth_gbps[own, own] * 1e9))
    rank_seconds = np.maximum(send_seconds, recv_seconds) + copy_seconds

    moves, copies = len(transfers), len(local)
    return MovementStats(
        moves=moves,
        local_copies=copies,
        noops=len(routes.noops),
        moves_per_layer=np.bincount(transfers[:, LAYER], minlength=num_layers).astype(np.int64),
        local_copies_per_layer=np.bincount(local[:, LAYER], minlength=num_layers).astype(np.int64),
        bytes_per_expert=size,
        bytes=moves * size,
        local_copy_bytes=copies * size,
        bytes_received=received,
        bytes_sent=sent,
        max_bytes_received=int(received.max()),
        max_bytes_sent=int(sent.max()),
        intra_node_bytes=moves * size - inter,
        inter_node_bytes=inter,
        rank_seconds=rank_seconds,
        estimated_seconds=float(rank_seconds.max()),
    )


def movement_stats(old_phy2log, new_phy2log, topo: TopologyLike, bytes_per_expert: int,
                   num_experts: Optional[int] = None) -> MovementStats:
    """Movement metrics of rearranging ``old_phy2log`` [L, P] into ``new_phy2log`` [L, P].

    Arguments and errors as for ``plumb.plan_rearrangement`` (``bytes_per_expert = 0`` counts
    slots only); the result equals ``plan_rearrangement(...).stats``, senders routed alike.
    """
    placements = check_placements(old_phy2log, new_phy2log, topo, bytes_per_expert, num_experts)
    return summarise(route(placements), placements)
