"""Whole-model solve: every layer, global and/or hierarchical policy, in one jitted call."""

from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np
from numba import njit

from .bounds import hierarchical_bound, layer_bound_with, replicated_bound
from .jit import kernel, largest, total
from .pack import descending_order, time_max
from .mintree import tree_size
from .place import place
from .placement import canonical_slots
from .replicate import water_fill_into
from .threads import run_layers, serial
from .workspace import FILL_KEYS, FILL_TREE, copy_into, node_workspace, workspace

GLOBAL = 0
HIERARCHICAL = 1


@kernel
def _hierarchical_layer(weights, caps, speed, node_ranks, num_groups, allow_dup, beat, counts,
                        slot_e, slot_w, load, has, stack_caps, fscratch, iscratch, nw):
    """Hierarchical policy for one layer (DeepSeek's structure, each step balanced better).

    Whole expert groups go to nodes (equal group count per node, balancing node load / node
    speed), then each node replicates its own experts into its own slots and packs them onto its
    own ranks. Group-limited routing then sends a token's experts to few nodes.

    Args:
        node_ranks: int64 [nodes, gpn], the ranks of each node.
        num_groups: expert groups (contiguous blocks of E / num_groups experts).
        beat: the max rank time to beat; when even the node loads (the groups' placement)
            rule out reaching it, the nodes are not solved.
        fscratch, iscratch, nw: ``workspace`` and ``NodeWorkspace`` of this layer shape.
        other arguments and outputs: as :func:`place` over all G ranks and E experts (``slot_e``
        holds global expert ids).

    Returns:
        False when skipped because of ``beat`` (outputs untouched), else True.
    """
    num_experts = weights.shape[0]
    nodes, gpn = node_ranks.shape
    slots = slot_e.shape[1]
    group_size = num_experts // num_groups
    groups_per_node = num_groups // nodes
    group_w = nw.group_w
    group_w[:] = 0.0
    for e in range(num_experts):
        group_w[e // group_size] += weights[e]
    node_speed = nw.node_speed
    for n in range(nodes):
        node_speed[n] = 0.0
        for i in range(gpn):
            node_speed[n] += speed[node_ranks[n, i]]
    node_load = nw.node_load
    # Scratch blocks of ``has`` as C-contiguous views of its first entries: a slice
    # has[:rows, :cols] is a non-contiguous array type, for which numba compiled every packing
    # and refinement kernel a second time.
    flat_has = has.reshape(has.size)
    # Flags as np.bool_: a bare True / False is a literal type, and numba would compile place
    # (and every kernel under it) once more for each literal value (see plumb.solver.jit).
    place(group_w, nw.group_ones, node_speed, np.bool_(True), nw.group_counts, nw.group_slot,
          nw.group_slot_w, node_load, flat_has[:nodes * num_groups].reshape((nodes, num_groups)),
          nw.group_ones, 0.0, np.bool_(False), fscratch, iscratch)
    # A node's ranks carry exactly its load, so some rank's time is at least load / speed.
    for n in range(nodes):
        if node_load[n] / node_speed[n] > beat:
            return False
    local_n = groups_per_node * group_size
    ids = nw.ids
    local_w = nw.local_w
    local_caps = nw.local_caps
    local_stack_caps = nw.local_stack_caps
    local_counts = nw.local_counts
    local_speed = nw.local_speed
    local_e = nw.local_e
    local_sw = nw.local_w_slots
    local_load = nw.local_load
    local_has = flat_has[:gpn * local_n].reshape((gpn, local_n))
    node_groups = nw.node_groups
    # Heaviest node first: a lighter node's alternatives are skipped once its busiest rank is
    # no busier than one already placed (it cannot lower the layer's maximum).
    for n in range(nodes):
        nw.node_time[n] = node_load[n] / node_speed[n]
    descending_order(nw.node_time, nw.node_order, nw.node_scratch)
    worst = 0.0
    for n in nw.node_order:
        # Ascending group order keeps the node's expert list independent of packing order
        # (insertion sort: a node holds few groups, and ndarray.sort allocates).
        for k in range(groups_per_node):
            g = nw.group_slot[n, k]
            j = k - 1
            while j >= 0 and node_groups[j] > g:
                node_groups[j + 1] = node_groups[j]
                j -= 1
            node_groups[j + 1] = g
        for k in range(groups_per_node):
            for j in range(group_size):
                e = node_groups[k] * group_size + j
                ids[k * group_size + j] = e
                local_w[k * group_size + j] = weights[e]
                local_caps[k * group_size + j] = min(caps[e], gpn)
                local_stack_caps[k * group_size + j] = stack_caps[e]
        for i in range(gpn):
            local_speed[i] = speed[node_ranks[n, i]]
        worst = max(worst, place(local_w, local_caps, local_speed, allow_dup, local_counts,
                                 local_e, local_sw, local_load, local_has, local_stack_caps,
                                 worst, np.bool_(False), fscratch, iscratch))
        for j in range(local_n):
            counts[ids[j]] = local_counts[j]
        for i in range(gpn):
            r = node_ranks[n, i]
            load[r] = local_load[i]
            for k in range(slots):
                slot_e[r, k] = ids[local_e[i, k]]
                slot_w[r, k] = local_sw[i, k]
    return True


@kernel
def _write_layer(slot_e, load, counts, phy2log_row, logcnt_row, load_row):
    """Copies one layer's solution out, each rank's slots sorted by expert id (canonical order)."""
    canonical_slots(slot_e, phy2log_row)
    copy_into(load_row, load)
    copy_into(logcnt_row, counts)


@njit(cache=True, nogil=True)
def solve_layers(weights, caps, speed, node_ranks, num_groups, try_global, try_hier,
                 allow_dup_global, allow_dup_hier, stack_caps, layers, out):
    """Solves and scores the given layers, writing their rows of ``out``.

    Args:
        weights: float64 [L, E], expert loads.
        caps: int64 [E], replica cap per expert (already at most G).
        speed: float64 [G], relative rank speeds.
        node_ranks: int64 [nodes, gpn], ranks of each node (hierarchical policy only).
        num_groups: expert groups (hierarchical policy only).
        try_global, try_hier: which policies to run (at least one).
        allow_dup_global, allow_dup_hier: whether E (per node) is too small to avoid stacking
            replicas of one expert on one rank.
        stack_caps: int64 [E], replica caps where stacking pays (see ``place``).
        layers: int64 [k], the layers to solve.
        out: (phy2log int64 [L, G*S], logcnt int64 [L, E], rank_load float64 [L, G], winner
            int8 [L], candidate_max float64 [L, 2], max_load, lower_bound,
            layer_balancedness, lb_gap float64 [L]); only the given layers' rows are written.
            With the hierarchical policy alone (``try_hier`` and not ``try_global``) the
            lower bound is over hierarchical placements (``hierarchical_bound`` too).
    """
    num_experts = weights.shape[1]
    bins = speed.shape[0]
    slots = out[0].shape[1] // bins
    # Each policy's solution of the current layer: replica counts, expert and load per slot,
    # rank loads.
    g_counts = np.empty(num_experts, dtype=np.int64)
    h_counts = np.empty(num_experts, dtype=np.int64)
    g_e, h_e = np.empty((bins, slots), dtype=np.int64), np.empty((bins, slots), dtype=np.int64)
    g_w, h_w = np.empty((bins, slots), dtype=np.float64), np.empty((bins, slots), dtype=np.float64)
    g_load, h_load = np.empty(bins, dtype=np.float64), np.empty(bins, dtype=np.float64)
    # Replicas per (rank, expert): at most S, and int16 keeps the matrix in cache.
    has = np.empty((bins, num_experts), dtype=np.int16)
    fscratch, iscratch = workspace(num_experts, bins, slots)
    nodes, gpn = node_ranks.shape
    nw = node_workspace(num_experts, num_groups, nodes, gpn, slots)
    # Under caps of G everywhere the bound's water-filling is the global policy's: done once.
    shared_fill = try_global and num_experts < out[0].shape[1] <= num_experts * bins
    for e in range(num_experts):
        shared_fill = shared_fill and caps[e] == bins
    # With one replica per expert the bound sorts the experts by weight, as the packing needs.
    sorted_by_bound = out[0].shape[1] == num_experts and num_experts > bins
    policies = (caps, speed, node_ranks, num_groups, try_global, try_hier, allow_dup_global,
                allow_dup_hier, stack_caps, shared_fill, sorted_by_bound)
    solution = (g_counts, h_counts, g_e, h_e, g_w, h_w, g_load, h_load, has)
    # The layers' work in a kernel: numba's runtime counts a reference on every row and
    # scratch view a layer takes, two atomics each, which on a small model (Mixtral: 8
    # experts on 4 ranks) were a fifth of the whole solve.
    _solve_each(layers, weights, policies, solution, fscratch, iscratch, nw, out)


@kernel
def _solve_each(layers, weights, policies, solution, fscratch, iscratch, nw, out):
    """:func:`solve_layers`' loop over ``layers`` (``policies``: its arguments from ``caps``
    to ``stack_caps``, then whether the bound's water-filling is the global policy's and
    whether the bound leaves the experts sorted; ``solution``: each policy's counts, slots
    and rank loads of the layer; the rest scratch)."""
    (caps, speed, node_ranks, num_groups, try_global, try_hier, allow_dup_global,
     allow_dup_hier, stack_caps, shared_fill, sorted_by_bound) = policies
    g_counts, h_counts, g_e, h_e, g_w, h_w, g_load, h_load, has = solution
    phy2log, logcnt, rank_load, winner, candidate_max, max_load, bound, balancedness, gap = out
    num_slots = phy2log.shape[1]
    size = tree_size(weights.shape[1])
    # The caller asked for expert groups kept within nodes: placements of that kind bound it.
    hier_only = try_hier and not try_global
    for layer in layers:
        w = weights[layer]
        if shared_fill:
            water_fill_into(w, num_slots, caps, g_counts, fscratch[FILL_KEYS, :size],
                            iscratch[FILL_TREE, :size])
            bound[layer] = replicated_bound(w, g_counts, speed)
        else:
            bound[layer] = layer_bound_with(w, num_slots, speed, fscratch, iscratch)
        # Each policy's max rank time: inf if not run, or if the hierarchical one was cut
        # short because it could not win. Ties go to the hierarchical policy (it keeps groups
        # within a node). A global solution meeting the bound is not searched further.
        top_global = top_hier = np.inf
        if try_global:
            top_global = place(w, caps, speed, allow_dup_global, g_counts, g_e, g_w, g_load,
                               has, stack_caps, bound[layer], shared_fill or sorted_by_bound,
                               fscratch, iscratch)
        if try_hier and _hierarchical_layer(w, caps, speed, node_ranks, num_groups,
                                            allow_dup_hier, top_global, h_counts, h_e, h_w,
                                            h_load, has, stack_caps, fscratch, iscratch, nw):
            top_hier = time_max(h_load, speed)
            if hier_only:
                # From the group loads and node speeds the policy has just used.
                bound[layer] = max(bound[layer], hierarchical_bound(
                    w, caps, speed, nw.group_w, nw.node_speed, node_ranks.shape[1], fscratch,
                    iscratch))
        candidate_max[layer, GLOBAL] = top_global
        candidate_max[layer, HIERARCHICAL] = top_hier
        if top_hier <= top_global:
            winner[layer] = HIERARCHICAL
            _write_layer(h_e, h_load, h_counts, phy2log[layer], logcnt[layer], rank_load[layer])
            top = top_hier
        else:
            winner[layer] = GLOBAL
            _write_layer(g_e, g_load, g_counts, phy2log[layer], logcnt[layer], rank_load[layer])
            top = top_global
        max_load[layer] = top
        balancedness[layer] = total(w) / total(speed) / top if top > 0 else 1.0
        # max_load >= bound mathematically; clip the last-ulp differences of summation order.
        gap[layer] = max(top / bound[layer] - 1.0, 0.0) if bound[layer] > 0 else 0.0


@kernel
def summarize(weights, speed, max_load, gap):
    """(model balancedness, mean lb_gap, largest lb_gap) from the per-layer results, summed in
    layer order (the same floats however the layers were split over threads)."""
    total_speed = total(speed)
    ideal_sum = 0.0
    max_sum = 0.0
    for layer in range(weights.shape[0]):
        ideal_sum += total(weights[layer]) / total_speed
        max_sum += max_load[layer]
    return (ideal_sum / max_sum if max_sum > 0 else 1.0, total(gap) / gap.shape[0],
            largest(gap))


def _allocate(num_layers: int, num_experts: int, bins: int, slots: int) -> Tuple[np.ndarray, ...]:
    """The ``out`` tuple of :func:`solve_layers` for a whole model.

    Allocated here rather than inside a compiled call: numba hands each array it allocates
    back to Python through its own boxing, about 0.4 us per array, against 0.1 us for
    ``np.empty``; on a small model's solve of 30 us that was a tenth of it."""
    return (np.empty((num_layers, bins * slots), dtype=np.int64),
            np.empty((num_layers, num_experts), dtype=np.int64),
            np.empty((num_layers, bins), dtype=np.float64),
            np.empty(num_layers, dtype=np.int8),
            np.empty((num_layers, 2), dtype=np.float64),
            np.empty(num_layers, dtype=np.float64), np.empty(num_layers, dtype=np.float64),
            np.empty(num_layers, dtype=np.float64), np.empty(num_layers, dtype=np.float64))


@njit(cache=True, nogil=True)
def _solve_serial(weights, caps, speed, node_ranks, num_groups, try_global, try_hier,
                  allow_dup_global, allow_dup_hier, stack_caps, phy2log, logcnt, rank_load,
                  winner, candidate_max, max_load, bound, balancedness, gap):
    """:func:`solve_layers` over every layer plus :func:`summarize`, in one compiled call on
    this thread (small models: every Python step between the kernels costs more than a
    layer's solve). The arrays after ``stack_caps`` are the ``out`` of ``solve_layers``, as
    separate arguments: numba unboxes a tuple of arrays several times slower."""
    out = (phy2log, logcnt, rank_load, winner, candidate_max, max_load, bound, balancedness,
           gap)
    solve_layers(weights, caps, speed, node_ranks, num_groups, try_global, try_hier,
                 allow_dup_global, allow_dup_hier, stack_caps,
                 np.arange(weights.shape[0]), out)
    return summarize(weights, speed, max_load, gap)


class Solved(NamedTuple):
    """What :func:`solve_model` returns (by name: its callers pick a few of the fields)."""

    phy2log: np.ndarray            # int64 [L, G*S]
    logcnt: np.ndarray             # int64 [L, E]
    rank_load: np.ndarray          # float64 [L, G]
    winner: np.ndarray             # int8 [L], GLOBAL or HIERARCHICAL
    candidate_max: np.ndarray      # float64 [L, 2], each policy's max rank time (inf: not
                                   # run, or cut short)
    max_load: np.ndarray           # float64 [L], as in Metrics
    lower_bound: np.ndarray        # float64 [L]
    layer_balancedness: np.ndarray  # float64 [L]
    lb_gap: np.ndarray             # float64 [L]
    balancedness: float            # the model's
    lb_gap_mean: float
    lb_gap_max: float


def solve_model(weights, caps, speed, node_ranks, num_groups, slots, try_global, try_hier,
                allow_dup_global, allow_dup_hier, stack_caps) -> Solved:
    """Solves and scores every layer; where both policies are tried, keeps the better one.

    Layers are independent: on large models they are split over ``numba.get_num_threads()``
    threads (the kernels release the GIL); the result does not depend on the split.

    Args:
        weights: float64 [L, E], expert loads.
        caps, speed, node_ranks, num_groups, try_global, try_hier, allow_dup_global,
            allow_dup_hier, stack_caps: as :func:`solve_layers`.
        slots: S, slots per rank.

    Returns:
        :class:`Solved`.
    """
    num_layers, num_experts = weights.shape
    bins = speed.shape[0]
    work = num_layers * bins * slots
    out = _allocate(num_layers, num_experts, bins, slots)
    if serial(num_layers, work):
        summary = _solve_serial(weights, caps, speed, node_ranks, num_groups, try_global,
                                try_hier, allow_dup_global, allow_dup_hier, stack_caps, *out)
    else:
        run_layers(lambda layers: solve_layers(weights, caps, speed, node_ranks, num_groups,
                                               try_global, try_hier, allow_dup_global,
                                               allow_dup_hier, stack_caps, layers, out),
                   num_layers, work)
        _, _, _, _, _, max_load, _, _, gap = out
        summary = summarize(weights, speed, max_load, gap)
    return Solved(*out, *summary)
