"""Scratch arrays for the packing kernels, allocated once per whole-model solve.

One layer calls the replication, sort, packing and search kernels several times (for each
node and for the groups in the hierarchical policy, again for the alternatives of
:func:`plumb.solver.place.place`), and each call needs a dozen small arrays. Allocating them
per call took more than a hundred allocations per layer, about a fifth of a layer's solve
on the DeepSeek-V3 shapes.

The scratch is two matrices, ``fscratch`` float64 and ``iscratch`` int64, one row per buffer
(the row constants below), each row long enough for the largest sub-problem; kernels take
prefix views (``iscratch[OWNER, :m]``); the kernels (:mod:`plumb.solver.jit`) cannot
allocate, so everything they need is here. No two kernels that are live at the same time
use one row.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from .jit import kernel
from .mintree import tree_size

# Counters of one radix-sort pass (a byte's values), kept at the end of the sort scratch.
RADIX_COUNTS = 256
# Pair exchanges (plumb.solver.refine) run up to this many slots per rank: their rows hold
# S**2 entries, which at thousands of slots per rank (a single GPU holding every replica)
# would be gigabytes of scratch.
PAIR_SLOTS_MAX = 64

# fscratch rows. m: replicas (ranks x slots); n: experts; b: ranks; t(x): tree leaves.
ITEM_W = 0        # [m] the replica list of ``place``, heaviest first
TRIAL_ITEM_W = 1  # [m] the replica list of an alternative
TRIAL_W = 2       # [m] an alternative's packing, viewed as [b, S]
SHARE = 3         # [n] per-replica load of each expert
FILL_KEYS = 4     # [t(n)] water-filling tree keys
RANK_KEYS = 5     # [t(b)] LPT's open-rank tree keys
BUSY = 6          # [t(b)] swap search: -time of each rank
LIGHT = 7         # [t(b)] swap search: load of each rank
INV_SPEED = 8     # [b] 1 / speed
TIME = 9          # [b] load / speed (pair exchanges, pair_sweep)
TRIAL_LOAD = 10   # [b] an alternative's rank loads
PAIR_W1 = 11      # [S**2] pair exchange: the partner rank's movable pairs' weights
PAIR_W2 = 12      # [S**2]
OWN_W1 = 13       # [S**2] pair exchange: the busiest rank's movable pairs' weights
OWN_W2 = 14       # [S**2]
PREFIX = 15       # [n + 1] cardinality bound: sums of the heaviest experts
SUFFIX = 16       # [n + 1] cardinality bound: sums of the lightest experts
FLAT_W = 17       # [m] a packing's replica weights in slot order (refine_slots)
SLOTS_ITEM_W = 18  # [m] refine_slots' replica list
OWNER_LOAD = 19   # [m] swap search: load of each replica's rank
PAIR_SUM = 20     # [S**2] pair exchange, many slots: the partner's movable pairs' sums
EXACT_REST = 21   # [m + 1 + b] exact search: weight of the items from each on; rank loads
FLOAT_ROWS = 22

# iscratch rows.
ITEM_E = 0        # [m] experts of the replica list
TRIAL_ITEM_E = 1  # [m]
TRIAL_E = 2       # [m] an alternative's packing, viewed as [b, S]
SLOT_ITEM = 3     # [m] the replica in each slot, viewed as [b, S]
OWNER = 4         # [m] rank of each replica (swap search)
POSITION = 5      # [m] slot of each replica (swap search)
ORDER = 6         # [n] experts by descending share
SORT_SCRATCH = 7  # [max(n, m) + RADIX_COUNTS] scratch of descending_order
BASE_COUNTS = 8   # [n] replica counts an alternative starts from
TRIAL_COUNTS = 9  # [n] an alternative's replica counts
FILL_TREE = 10    # [t(n)]
RANK_TREE = 11    # [t(b)]
BUSY_TREE = 12    # [t(b)]
LIGHT_TREE = 13   # [t(b)]
ASIDE = 14        # [b] ranks LPT passed over for an item
FILL = 15         # [b] slots used per rank
LIGHTEST = 16     # [b] partner ranks of a pair exchange; pair_sweep's rank order
PAIR_Y1 = 17      # [S**2] pair exchange: the partner rank's movable pairs' replicas
PAIR_Y2 = 18      # [S**2]
OWN_X1 = 19       # [S**2] pair exchange: the busiest rank's movable pairs' replicas
OWN_X2 = 20       # [S**2]
FLAT_ORDER = 21   # [m] refine_slots: slots by descending weight
SLOTS_ITEM_E = 22  # [m] refine_slots' replica list
SLOTS_SLOT_ITEM = 23  # [m] refine_slots: the replica in each slot, viewed as [b, S]
PAIR_ORDER = 24   # [S**2] pair exchange, many slots: its pairs by descending sum
EXACT_ORDER = 25  # [n] exact search: experts by descending load
EXACT_ROOM = 26   # [n + 1] exact search: replicas the experts from each position on can take
EXACT_CHOICE = 27  # [m] exact search: the rank of each item
EXACT_FILL = 28   # [b] exact search: slots used per rank
LIGHT_FIRST = 29  # [n] target counts: experts by ascending load (ties by index)
INT_ROWS = 30


@njit(cache=True, nogil=True)
def workspace(num_experts, bins, slots):
    """``(fscratch, iscratch)``: float64 / int64 scratch matrices for sub-problems of at most
    ``num_experts`` experts on ``bins`` ranks of ``slots`` slots each."""
    pair_slots = min(slots, PAIR_SLOTS_MAX)
    width = max(bins * slots, tree_size(max(num_experts, bins)), pair_slots * pair_slots,
                num_experts + 1) + RADIX_COUNTS
    return (np.empty((FLOAT_ROWS, width), dtype=np.float64),
            np.empty((INT_ROWS, width), dtype=np.int64))


# Scratch of the hierarchical policy: the groups' placement onto nodes, then one node at a time.
NodeWorkspace = namedtuple("NodeWorkspace", [
    "group_w",           # float64 [groups]: load of each expert group
    "group_ones",        # int64 [groups]: one "replica" per group (and its cap)
    "group_counts",      # int64 [groups]
    "group_slot",        # int64 [nodes, groups per node]: the groups of each node
    "group_slot_w",      # float64 [nodes, groups per node]
    "node_speed",        # float64 [nodes]: summed speed of each node's ranks
    "node_load",         # float64 [nodes]
    "node_time",         # float64 [nodes]: node load / node speed
    "node_order",        # int64 [nodes]: nodes by descending time
    "node_scratch",      # int64 [nodes + RADIX_COUNTS]: sort scratch
    "node_groups",       # int64 [groups per node]: one node's groups, ascending
    "ids",               # int64 [experts per node]: global id of each local expert
    "local_w",           # float64 [experts per node]
    "local_caps",        # int64 [experts per node]
    "local_stack_caps",  # int64 [experts per node]
    "local_counts",      # int64 [experts per node]
    "local_speed",       # float64 [gpn]
    "local_e",           # int64 [gpn, S]
    "local_w_slots",     # float64 [gpn, S]
    "local_load",        # float64 [gpn]
])


@njit(cache=True, nogil=True)
def node_workspace(num_experts, num_groups, nodes, gpn, slots):
    """A :data:`NodeWorkspace` for ``num_experts`` experts in ``num_groups`` groups on
    ``nodes`` nodes of ``gpn`` ranks with ``slots`` slots each."""
    per_node = num_groups // nodes
    local_n = per_node * (num_experts // num_groups)
    return NodeWorkspace(
        np.empty(num_groups, dtype=np.float64), np.ones(num_groups, dtype=np.int64),
        np.empty(num_groups, dtype=np.int64),
        np.empty((nodes, per_node), dtype=np.int64), np.empty((nodes, per_node), dtype=np.float64),
        np.empty(nodes, dtype=np.float64), np.empty(nodes, dtype=np.float64),
        np.empty(nodes, dtype=np.float64), np.empty(nodes, dtype=np.int64),
        np.empty(nodes + RADIX_COUNTS, dtype=np.int64), np.empty(per_node, dtype=np.int64),
        np.empty(local_n, dtype=np.int64), np.empty(local_n, dtype=np.float64),
        np.empty(local_n, dtype=np.int64), np.empty(local_n, dtype=np.int64),
        np.empty(local_n, dtype=np.int64), np.empty(gpn, dtype=np.float64),
        np.empty((gpn, slots), dtype=np.int64), np.empty((gpn, slots), dtype=np.float64),
        np.empty(gpn, dtype=np.float64))


@kernel
def copy_into(dst, src):
    """Copies ``src`` into ``dst`` (same shape, 1-D or 2-D, not overlapping): what
    ``dst[:] = src`` does, without its overlap test and temporary copy (an allocation)."""
    if dst.ndim == 1:
        for i in range(dst.shape[0]):
            dst[i] = src[i]
    else:
        for r in range(dst.shape[0]):
            for k in range(dst.shape[1]):
                dst[r, k] = src[r, k]
