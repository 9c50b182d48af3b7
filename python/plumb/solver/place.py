"""One balancing problem: replicate a set of experts over a set of ranks and pack them.

Used for the whole model's ranks (global policy), for each node's ranks (hierarchical policy),
and for expert groups onto nodes (one "replica" per group).

Water-filling gives the replica counts with the smallest largest replica, but not always the
counts that pack best when no rank may hold an expert twice. When the packed maximum is above
the ideal and the caller's ``floor``, :func:`place` tries alternatives and keeps whichever
lowers the maximum: the same counts packed with stacking allowed (only where that can differ:
a cap binds, or the no-stacking rule changed the LPT), and (when well above the ideal,
``RECOUNT_SLACK``) other counts (:func:`_recounts`): replica moves first, for at most
``SEARCH_EXPERTS`` experts a local search over the counts (one replica from a donor to a
gainer, every pair, as long as a move lowers the packed maximum), for more one replica moved
from the expert that misses it least to the heaviest piece on the busiest rank; then target
counts (:func:`_target_counts`: hot experts cut only into pieces of at most a target size,
the spare slots split light experts into fillers); with two slots per rank, counts scored by
how their pieces pair (:func:`_paired_count_search`). On the smallest problems (at most
``EXACT_EXPERTS`` experts and ``EXACT_SLOTS`` slots) every layer above the ideal then gets the
branch and bound of :mod:`plumb.solver.exact` over every count vector and packing, within its
node budget, from the best of the above (:func:`_exact_if_small`; with one replica per expert,
over the packings). Stacking is the "unless forced" of the no-stacking rule: with two hot
experts of one group on one node (5 + 5 replicas over 8 ranks), two ranks must hold two hot
pieces, and two pieces of the lighter expert weigh less than one of each. DeepSeek stacks
freely; this keeps plumb at least as balanced where stacking pays, and unstacked everywhere
else.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .bounds import cardinality_bound
from .exact import EXACT_EXPERTS, EXACT_SLOTS, exact_search
from .jit import kernel, largest, total
from .mintree import tree_build, tree_min, tree_size, tree_update
from .pack import (descending_order, expand_items, lpt_loads, lpt_place, repair_duplicates,
                   sorted_items, time_max)
from .refine import pair_sweep, refine_items, refine_slots, refine_swaps, slots_of_items
from .replicate import max_replica_load, water_fill_into
from .workspace import (BASE_COUNTS, FILL_KEYS, FILL_TREE, ITEM_E, ITEM_W, LIGHT_FIRST, ORDER,
                        PREFIX, SHARE, SLOT_ITEM, SORT_SCRATCH, SUFFIX,
                        TRIAL_COUNTS, TRIAL_E, TRIAL_ITEM_E, TRIAL_ITEM_W, TRIAL_LOAD, TRIAL_W,
                        copy_into, workspace)

# Alternatives are tried only when the busiest rank is this far above the ideal time.
RECOUNT_SLACK = 1e-2
# Up to this many experts the replica move searches every (gainer, donor) pair, with at most
# this many packings per call; above, water-filling's counts pack within a fraction of a
# percent of the ideal and one move is tried.
SEARCH_EXPERTS = 32
SEARCH_PACKINGS = 32
# Rounds of the paired count search (two slots per rank): each scores every replica move.
PAIRED_ROUNDS = 16
# Packings tried by _target_counts (each target twice: spare slots as fillers, or water-filled).
TARGET_TRIALS = 8
# Pair exchanges (S**4 / 4 candidates per partner rank) run up to this many slots per rank,
# against this many of the lightest ranks.
PAIR_SLOTS = 8
PAIR_PARTNERS = 4
# The pair sweep before the swap search (S**2 candidates per pair of ranks) runs up to this
# many slots per rank; with more, the search's windows are narrow enough already.
SWEEP_SLOTS = 8


@kernel
def pack_items(item_w, item_e, speed, allow_dup, slot_e, slot_w, load, has, refine, partners,
               floor, fscratch, iscratch):
    """Packs sorted items (:func:`plumb.solver.pack.sorted_items`), then, if ``refine``, evens
    out the busiest and least busy ranks pairwise (:func:`plumb.solver.refine.pair_sweep`, up to
    ``SWEEP_SLOTS`` slots per rank) and runs the swap search (with pair exchanges against
    ``partners`` lightest ranks, stopping at ``floor``: see
    :func:`plumb.solver.refine.refine_items`).

    ``has`` (int [bins, >= n]) is reset here and left counting the packing's replicas;
    ``fscratch`` / ``iscratch``: the scratch of a ``workspace`` for >= m replicas on >= bins
    ranks.

    Returns:
        (max time, whether the no-stacking rule changed the LPT packing at all).
    """
    has[:, :] = 0
    slot_item = iscratch[SLOT_ITEM, :slot_e.size].reshape(slot_e.shape)
    stacked, set_aside = lpt_place(item_w, item_e, speed, not allow_dup, slot_e, slot_w, load,
                                   has, slot_item, fscratch, iscratch)
    steps = 4 * item_w.shape[0] + 16
    if stacked > 0 and not allow_dup:
        repair_duplicates(slot_e, slot_w, load, speed, has)
        if refine:
            refine_slots(slot_e, slot_w, load, speed, has, np.bool_(True), steps, steps,
                         partners, floor, fscratch, iscratch)
    # At or under the floor the search would stop at once: LPT's slots stand as they are.
    elif refine and time_max(load, speed) > floor:
        # The item list is already sorted by weight: refine on it directly.
        if slot_e.shape[1] <= SWEEP_SLOTS:
            pair_sweep(item_w, item_e, slot_item, load, speed, has, not allow_dup, fscratch,
                       iscratch)
        refine_items(item_w, item_e, slot_item, load, speed, has, not allow_dup, steps, steps,
                     partners, floor, fscratch, iscratch)
        slots_of_items(item_w, item_e, slot_item, slot_e, slot_w)
    return time_max(load, speed), set_aside > 0


@njit(cache=True, nogil=True)
def pack_counts(weights, counts, speed, allow_dup, slot_e, slot_w, load, has, refine):
    """Packs ``counts[e]`` replicas of each expert (each ``w_e / c_e``), then runs the swap
    search if ``refine``.

    Returns:
        (max time, whether the no-stacking rule changed the LPT packing at all).
    """
    bins, slots = slot_e.shape
    fscratch, iscratch = workspace(weights.shape[0], bins, slots)
    item_w = fscratch[ITEM_W, :slot_e.size]
    item_e = iscratch[ITEM_E, :slot_e.size]
    sorted_items(weights, counts, item_w, item_e, fscratch, iscratch)
    return pack_items(item_w, item_e, speed, allow_dup, slot_e, slot_w, load, has, refine,
                      np.int64(0), 0.0, fscratch, iscratch)


@kernel
def _recount(weights, caps, counts, slot_e, slot_w, load, speed, top):
    """Picks one replica move for a repack: returns (gainer, donor), or (-1, -1) if none."""
    bins, slots = slot_e.shape
    busiest = 0
    for r in range(1, bins):
        if load[r] / speed[r] > load[busiest] / speed[busiest]:
            busiest = r
    gainer = -1
    for k in range(slots):
        e = slot_e[busiest, k]
        if counts[e] >= min(caps[e], bins):
            continue
        if gainer < 0 or slot_w[busiest, k] > weights[gainer] / counts[gainer]:
            gainer = e
    if gainer < 0:
        return -1, -1
    donor = -1
    for f in range(weights.shape[0]):
        if f != gainer and counts[f] > 1 and (
                donor < 0 or weights[f] * (counts[donor] - 1) < weights[donor] * (counts[f] - 1)):
            donor = f
    # The donor's pieces grow to w / (c - 1); that must stay below the maximum to be of use.
    if donor < 0 or weights[donor] / (counts[donor] - 1) >= top:
        return -1, -1
    return gainer, donor


@kernel
def place(weights, caps, speed, allow_dup, counts, slot_e, slot_w, load, has, stack_caps,
          floor, prepared, fscratch, iscratch):
    """Replicates ``n`` experts into ``bins * S`` slots and packs them onto ``bins`` ranks.

    Args:
        weights: float64 [n], expert loads.
        caps: int64 [n], replica cap per expert (at most ``bins`` unless ``allow_dup``).
        speed: float64 [bins], relative speed of each rank.
        allow_dup: whether two replicas of one expert may share a rank (only when forced).
        counts: int64 [n], output: replicas per expert (input too if ``prepared``, with spare
            slots).
        slot_e: int64 [bins, S], output: local expert index in each slot.
        slot_w: float64 [bins, S], output: per-replica load in each slot.
        load: float64 [bins], output: load of each rank.
        has: int [bins, >= n] (int16 or wider), scratch: replicas of each expert per rank.
        stack_caps: int64 [n], replica caps of the stacking alternative (the caller's caps,
            or unlimited under the default caps: DeepSeek gives a hot expert more replicas
            than ranks).
        floor: a time the caller cannot use anything below (a lower bound of the layer, or
            the busiest rank elsewhere); at or under it the alternatives and pair exchanges
            are skipped.
        prepared: the caller has done the first step already (for its lower bound): with
            spare slots, ``counts`` holds the water-filled counts for ``caps``; with one
            replica per expert, ``iscratch[ORDER, :n]`` lists the experts by descending
            weight (ties by index), as :func:`plumb.solver.bounds.layer_bound_with` leaves it.
        fscratch, iscratch: the scratch of a ``workspace`` for >= n experts and >= bins * S
            replicas on >= bins ranks.

    Returns:
        The largest ``load / speed``.
    """
    bins, slots = slot_e.shape
    n = weights.shape[0]
    item_w = fscratch[ITEM_W, :bins * slots]
    item_e = iscratch[ITEM_E, :bins * slots]
    ideal = total(weights) / total(speed)
    enough = max(ideal * (1.0 + 1e-9), floor)
    if n == bins * slots:
        counts[:] = 1
        if prepared and slots == 2 and _equal(speed):
            return _pair_extremes(weights, iscratch[ORDER, :n], slot_e, slot_w, load, speed)
        if prepared:
            expand_items(weights, counts, iscratch[ORDER, :n], item_w, item_e)
        else:
            sorted_items(weights, counts, item_w, item_e, fscratch, iscratch)
        top = pack_items(item_w, item_e, speed, allow_dup, slot_e, slot_w, load, has,
                         np.bool_(True), np.int64(0), enough, fscratch, iscratch)[0]
        if allow_dup:
            return top
        return _exact_if_small(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                               enough, fscratch, iscratch)
    if not prepared:
        size = tree_size(n)
        water_fill_into(weights, bins * slots, caps, counts, fscratch[FILL_KEYS, :size],
                        iscratch[FILL_TREE, :size])
    sorted_items(weights, counts, item_w, item_e, fscratch, iscratch)
    partners = PAIR_PARTNERS if slots <= PAIR_SLOTS and not allow_dup else 0
    top, constrained = pack_items(item_w, item_e, speed, allow_dup, slot_e, slot_w, load, has,
                                  np.bool_(True), partners, enough, fscratch, iscratch)
    if allow_dup:
        return top
    if top > enough:
        # Unless a cap binds, the stacked alternative packs the same counts; unless the rule
        # changed the packing, its LPT is this one before refinement: it cannot win.
        recount = top > ideal * (1.0 + RECOUNT_SLACK)
        caps_bind = _caps_bind(counts, caps, stack_caps)
        if recount or constrained or caps_bind:
            top = _alternatives(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                                recount, stack_caps, constrained or caps_bind, caps_bind,
                                item_w, item_e, partners, enough, fscratch, iscratch)
        top = _exact_if_small(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                              enough, fscratch, iscratch)
    return top


@kernel
def _exact_if_small(weights, caps, speed, counts, slot_e, slot_w, load, has, top, enough,
                    fscratch, iscratch):
    """:func:`plumb.solver.exact.exact_search` from the packing so far (kept in place if it
    lowers ``top``) on problems of at most ``EXACT_EXPERTS`` experts and ``EXACT_SLOTS`` slots
    whose maximum is above ``enough``; returns the maximum.

    Why every such layer, not only those ``RECOUNT_SLACK`` above the ideal: on problems this
    small the search is cheap (mixtral-r4 layers 0.9% above the ideal were 0.1-0.8% above
    their optimum; with one replica per expert, 17 of 205 random layers of 2-4 ranks were up to
    3.4% above theirs)."""
    n = weights.shape[0]
    bins, slots = slot_e.shape
    m = slot_e.size
    if n > EXACT_EXPERTS or m > EXACT_SLOTS or top <= enough:
        return top
    return exact_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top, enough,
                        iscratch[TRIAL_COUNTS, :n], fscratch[TRIAL_ITEM_W, :m],
                        iscratch[TRIAL_ITEM_E, :m], iscratch[TRIAL_E, :m].reshape((bins, slots)),
                        fscratch[TRIAL_W, :m].reshape((bins, slots)), fscratch[TRIAL_LOAD, :bins],
                        fscratch, iscratch)[0]


@kernel
def _equal(speed):
    """Whether every rank of ``speed`` (float64 [bins]) has the same speed."""
    for r in range(1, speed.shape[0]):
        if speed[r] != speed[0]:
            return False
    return True


@kernel
def _pair_extremes(weights, order, slot_e, slot_w, load, speed):
    """The optimal packing of ``2 * bins`` experts, one replica each, two per rank on ranks
    of equal speed: rank r gets the r-th heaviest and the r-th lightest (``order`` int64 [n]:
    experts by descending weight). Any packing puts some rank's pair at least
    ``max_r w_(r) + w_(n-1-r)`` (:func:`plumb.solver.bounds.cardinality_bound`'s pairing
    bound for two slots), so neither LPT nor a swap search can do better; this skips both.
    Fills ``slot_e`` / ``slot_w`` [bins, 2] (lighter slot first, as LPT fills them) and
    ``load``; returns the largest ``load / speed``."""
    n = order.shape[0]
    for r in range(slot_e.shape[0]):
        heavy = order[r]
        light = order[n - 1 - r]
        slot_e[r, 0] = light
        slot_w[r, 0] = weights[light]
        slot_e[r, 1] = heavy
        slot_w[r, 1] = weights[heavy]
        load[r] = weights[heavy] + weights[light]
    return time_max(load, speed)


@kernel
def _caps_bind(counts, caps, stack_caps):
    """Whether some expert sits at its cap (int64 [n] each) while the stacking caps allow more."""
    for e in range(counts.shape[0]):
        if counts[e] >= caps[e] and stack_caps[e] > caps[e]:
            return True
    return False


@kernel
def _keep_trial(trial_counts, trial_e, trial_w, trial_load, counts, slot_e, slot_w, load):
    """Copies a trial's counts and packing over the kept ones (same shapes pairwise)."""
    copy_into(counts, trial_counts)
    copy_into(slot_e, trial_e)
    copy_into(slot_w, trial_w)
    copy_into(load, trial_load)


@kernel
def _kept(trial, top, trial_counts, trial_e, trial_w, trial_load, counts, slot_e, slot_w, load):
    """The lower of a trial's maximum and ``top``: a trial that lowers it by more than float
    noise is copied over the kept counts and packing (:func:`_keep_trial`)."""
    if trial < top * (1.0 - 1e-9):
        _keep_trial(trial_counts, trial_e, trial_w, trial_load, counts, slot_e, slot_w, load)
        return trial
    return top


@kernel
def _count_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top, trial_counts,
                  trial_e, trial_w, trial_load, trial_item_w, trial_item_e, enough, fscratch,
                  iscratch):
    """The replica move of :func:`place` for few experts: every move of one replica from a
    donor (index order) to a gainer (index order), each count packed and refined (swap search,
    no pair exchanges), the first that lowers the maximum kept, until a full round of pairs
    keeps none or ``SEARCH_PACKINGS`` packings are spent. Updates ``counts`` and the packing
    (``slot_e``, ``slot_w``, ``load``) in place; ``trial_*``: scratch of their shapes.
    Returns the maximum.

    Why: with few slots per rank the counts decide the packing. Water-filling may give a hot
    expert three replicas where two, plus a second replica of a light expert whose halves
    fill the slots beside them, pack better (w = [67.3, 14.3, 12.1, 177.2] on 3 ranks of 2
    slots: 118.1 against 94.65).
    """
    n = weights.shape[0]
    bins = slot_e.shape[0]
    top_speed = largest(speed)
    copy_into(trial_counts, counts)
    packings = 0
    improved = True
    while improved and packings < SEARCH_PACKINGS:
        improved = False
        for gainer in range(n):
            for donor in range(n):
                if packings >= SEARCH_PACKINGS:
                    return top
                # The donor's pieces grow to w / (c - 1): of use only below the maximum.
                if (donor == gainer or trial_counts[gainer] >= min(caps[gainer], bins)
                        or trial_counts[donor] <= 1
                        or weights[donor] / (trial_counts[donor] - 1) >= top):
                    continue
                trial_counts[gainer] += 1
                trial_counts[donor] -= 1
                sorted_items(weights, trial_counts, trial_item_w, trial_item_e, fscratch,
                             iscratch)
                # Most moves cannot win: a bound on any packing of their pieces says so
                # without packing them.
                bound = max(trial_item_w[0], cardinality_bound(
                    trial_item_w, bins, fscratch[PREFIX], fscratch[SUFFIX])) / top_speed
                trial = np.inf
                if bound < top * (1.0 - 1e-9):
                    # Without pair exchanges: on the problems searched here they rarely
                    # change which counts win, and the search packs up to SEARCH_PACKINGS
                    # times.
                    trial = pack_items(trial_item_w, trial_item_e, speed, np.bool_(False),
                                       trial_e, trial_w, trial_load, has, np.bool_(True),
                                       np.int64(0), enough, fscratch, iscratch)[0]
                    packings += 1
                if trial < top * (1.0 - 1e-9):
                    top = trial
                    improved = True
                    _keep_trial(trial_counts, trial_e, trial_w, trial_load, counts, slot_e,
                                slot_w, load)
                else:
                    trial_counts[gainer] -= 1
                    trial_counts[donor] += 1
    return top


@kernel
def _next_target(weights, base_counts, above):
    """The smallest piece size ``w_e / k`` above ``above`` with 1 <= k < ``base_counts[e]``
    (float64 [n] / int64 [n]): the next target of :func:`_target_counts`; inf if none."""
    target = np.inf
    for e in range(weights.shape[0]):
        for k in range(1, base_counts[e]):
            piece = weights[e] / k
            if above < piece < target:
                target = piece
    return target


@kernel
def _counts_for_target(weights, caps, target, num_slots, fillers, light_first, counts, keys,
                       tree):
    """Writes into ``counts`` (int64 [n]) the fewest replicas that cut every expert into
    pieces of at most ``target`` (within ``caps``), then hands the slots left over out one at
    a time: with ``fillers``, to the expert with the fewest replicas, lightest first (ties:
    lower index; ``light_first`` int64 [n] lists the experts in that order, as
    :func:`_light_first` writes it); else to the largest piece among the experts the target
    left whole (water-filling them; ``keys`` float64 / ``tree`` int64 [``tree_size(n)``]:
    scratch). Returns False when the caps leave slots unfilled or ``target`` needs more than
    ``num_slots`` replicas."""
    n = weights.shape[0]
    used = 0
    for e in range(n):
        counts[e] = _pieces_for(weights[e], target, caps[e])
        used += counts[e]
    if used > num_slots:
        return False
    if fillers:
        return _hand_out_fillers(caps, light_first, counts, num_slots - used)
    return _fill_whole(weights, caps, target, counts, num_slots - used, keys, tree)


@kernel
def _hand_out_fillers(caps, light_first, counts, left):
    """``left`` more replicas (int64 [n] ``counts`` updated), each to the expert below its cap
    with the fewest replicas, lightest first (``light_first``: the experts in that order).
    Level by level: every expert at the current fewest takes one, in ``light_first`` order,
    which is what picking the fewest, then the lightest, one replica at a time does, in one
    pass per level instead of one scan of every expert per replica (a few hundred spare slots
    on as many experts made that scan most of a layer's solve). Returns False when every
    expert reaches its cap first."""
    n = counts.shape[0]
    while left > 0:
        level = -1
        for e in range(n):
            if counts[e] < caps[e] and (level < 0 or counts[e] < level):
                level = counts[e]
        if level < 0:
            return False
        for e in light_first:
            if counts[e] == level and level < caps[e]:
                counts[e] += 1
                left -= 1
                if left == 0:
                    break
    return True


@kernel
def _fill_whole(weights, caps, target, counts, left, keys, tree):
    """``left`` more replicas (int64 [n] ``counts`` updated), each to the largest piece
    ``w_e / c_e`` (lowest index on ties) among the experts below their cap that ``target``
    left whole: water-filling those, on a tournament tree over -w_e / c_e (``keys`` / ``tree``,
    [``tree_size(n)``]), other experts at +inf. Returns False when the caps leave slots
    unfilled."""
    n = weights.shape[0]
    keys[:] = np.inf
    for e in range(n):
        if counts[e] < caps[e] and _pieces_for(weights[e], target, caps[e]) == 1:
            keys[e] = -weights[e] / counts[e]
    tree_build(keys, tree)
    for _ in range(left):
        e = tree_min(tree)
        if keys[e] == np.inf:
            return False
        counts[e] += 1
        keys[e] = -weights[e] / counts[e] if counts[e] < caps[e] else np.inf
        tree_update(keys, tree, e)
    return True


@kernel
def _light_first(weights, out, scratch):
    """Writes into ``out`` (int64 [n]) the experts by ascending ``weights`` (float64 [n]),
    ties by index; ``scratch``: the sort scratch of :func:`plumb.solver.pack.descending_order`.
    The descending order read backwards has ties by descending index: each run of equal
    weights is put back in index order."""
    n = weights.shape[0]
    descending_order(weights, out, scratch)
    for i in range(n // 2):
        out[i], out[n - 1 - i] = out[n - 1 - i], out[i]
    start = 0
    for i in range(1, n + 1):
        if i == n or weights[out[i]] != weights[out[start]]:
            lo, hi = start, i - 1
            while lo < hi:
                out[lo], out[hi] = out[hi], out[lo]
                lo += 1
                hi -= 1
            start = i


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _pieces_for(weight, target, cap):
    """The fewest replicas (1..cap) that cut ``weight`` into pieces of at most ``target``;
    the target is some expert's w / k, and its own ratio may round just above k."""
    return min(max(np.int64(np.ceil(weight / target * (1.0 - 1e-12))), np.int64(1)), cap)


@kernel
def _target_counts(weights, caps, speed, base_counts, counts, slot_e, slot_w, load, has, top,
                   trial_counts, trial_e, trial_w, trial_load, trial_item_w, trial_item_e,
                   enough, fscratch, iscratch):
    """Replica counts chosen for a target piece size, packed and refined; the first
    ``TARGET_TRIALS`` targets above the largest piece of ``base_counts`` (water-filling's),
    ascending, each kept (in place, as in :func:`_count_search`) if it lowers the maximum.
    Returns the maximum.

    Why: water-filling makes the largest piece as small as it can, which with few slots per
    rank can make more heavy pieces than there are ranks; two then share a rank. Cutting the
    hot experts into fewer, larger pieces (at most ``target``) and spending the spare slots on
    the lightest experts, whose pieces fill the gaps, packs within a fraction of a percent of
    the ideal where water-filling's counts missed it by 5-35% (w = [2565, 2279, 83, 73, 67,
    49, 30, 4] on 4 ranks of 3 slots: 3 + 3 replicas of the two hot experts pack to 1618.7;
    2 + 2, with the two lightest split, to 1299.5, ideal 1287.5).
    """
    n = weights.shape[0]
    bins = slot_e.shape[0]
    top_speed = largest(speed)
    target = max_replica_load(weights, base_counts)
    light_first = iscratch[LIGHT_FIRST, :n]
    _light_first(weights, light_first, iscratch[SORT_SCRATCH])
    size = tree_size(n)
    packings = 0
    fillers = False
    while packings < TARGET_TRIALS:
        fillers = not fillers
        if fillers:
            target = _next_target(weights, base_counts, target)
        # A piece this large takes the maximum on its own, even on the fastest rank.
        if target / top_speed >= top:
            break
        if not _counts_for_target(weights, caps, target, slot_e.size, fillers, light_first,
                                  trial_counts, fscratch[FILL_KEYS, :size],
                                  iscratch[FILL_TREE, :size]):
            continue
        sorted_items(weights, trial_counts, trial_item_w, trial_item_e, fscratch, iscratch)
        bound = max(trial_item_w[0], cardinality_bound(
            trial_item_w, bins, fscratch[PREFIX], fscratch[SUFFIX])) / top_speed
        if bound >= top * (1.0 - 1e-9):
            continue
        trial = pack_items(trial_item_w, trial_item_e, speed, np.bool_(False), trial_e,
                           trial_w, trial_load, has, np.bool_(True), np.int64(0), enough,
                           fscratch, iscratch)[0]
        packings += 1
        top = _kept(trial, top, trial_counts, trial_e, trial_w, trial_load, counts, slot_e,
                    slot_w, load)
    return top


@kernel
def _paired_max(item_w, bins):
    """The optimal largest pair sum of ``2 * bins`` pieces (float64, descending) on ``bins``
    ranks of two slots, where any two may pair: the i-th heaviest with the i-th lightest.
    Returns (that sum, the first i whose pair reaches it)."""
    m = item_w.shape[0]
    top = 0.0
    worst = 0
    for i in range(bins):
        pair = item_w[i] + item_w[m - 1 - i]
        if pair > top:
            top = pair
            worst = i
    return top, worst


@kernel
def _moved_paired_max(weights, counts, order, share, gainer, donor, bins, limit):
    """:func:`_paired_max` of the pieces after one replica moves from ``donor`` to ``gainer``,
    without sorting them again, or some value >= ``limit`` once the pairs reach it.

    ``order`` int64 [n] lists the experts by descending piece ``share`` (float64 [n],
    ``weights / counts``; ties by index, as :func:`sorted_items` leaves them). The pairs are
    read from both ends of that list, each expert standing for its replicas, with the two
    moved experts merged in at their new pieces as the ends reach them: the same floats in
    the same order as sorting the moved counts, so the same sum, in O(bins) steps instead of
    a sort of the experts and a pass over the ``2 * bins`` pieces.
    """
    n = order.shape[0]
    gain_piece = weights[gainer] / (counts[gainer] + 1)
    donor_piece = weights[donor] / (counts[donor] - 1)
    first, first_piece = gainer, gain_piece
    second, second_piece = donor, donor_piece
    if _after(first_piece, first, second_piece, second):
        first, first_piece, second, second_piece = second, second_piece, first, first_piece
    front = front_taken = 0
    back = n - 1
    back_taken = 0
    front_e = back_e = 0
    front_left = back_left = 0
    top = 0.0
    for _ in range(bins):
        if front_left == 0:
            while front < n and (order[front] == gainer or order[front] == donor):
                front += 1
            e = order[front] if front < n else -1
            if front_taken == 0 and (front == n or _after(share[e], e, first_piece, first)):
                front_e, front_taken = first, 1
            elif front_taken == 1 and (front == n or _after(share[e], e, second_piece, second)):
                front_e, front_taken = second, 2
            else:
                front_e = e
                front += 1
            front_left = _moved_count(counts, front_e, gainer, donor)
        if back_left == 0:
            while back >= 0 and (order[back] == gainer or order[back] == donor):
                back -= 1
            e = order[back] if back >= 0 else -1
            if back_taken == 0 and (back < 0 or _after(second_piece, second, share[e], e)):
                back_e, back_taken = second, 1
            elif back_taken == 1 and (back < 0 or _after(first_piece, first, share[e], e)):
                back_e, back_taken = first, 2
            else:
                back_e = e
                back -= 1
            back_left = _moved_count(counts, back_e, gainer, donor)
        top = max(top, _moved_piece(share, front_e, gainer, gain_piece, donor, donor_piece)
                  + _moved_piece(share, back_e, gainer, gain_piece, donor, donor_piece))
        if top >= limit:
            break
        front_left -= 1
        back_left -= 1
    return top


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _after(piece, e, other_piece, other):
    """Whether expert ``e``'s piece comes after ``other``'s in :func:`sorted_items`' order
    (descending piece, ties by index)."""
    return piece < other_piece or (piece == other_piece and e > other)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _moved_count(counts, e, gainer, donor):
    """Replicas of ``e`` after one moves from ``donor`` to ``gainer``."""
    return counts[e] + (e == gainer) - (e == donor)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _moved_piece(share, e, gainer, gain_piece, donor, donor_piece):
    """The piece of ``e`` after one replica moves from ``donor`` to ``gainer``."""
    if e == gainer:
        return gain_piece
    if e == donor:
        return donor_piece
    return share[e]


@kernel
def _pair_pieces(item_w, item_e, slot_e, slot_w, load):
    """Rank r gets the r-th heaviest and the r-th lightest of ``2 * bins`` pieces (float64 /
    int64, descending), lighter slot first; returns False, leaving the slots half written,
    when some pair is two replicas of one expert."""
    m = item_w.shape[0]
    for r in range(slot_e.shape[0]):
        heavy = r
        light = m - 1 - r
        if item_e[heavy] == item_e[light]:
            return False
        slot_e[r, 0] = item_e[light]
        slot_w[r, 0] = item_w[light]
        slot_e[r, 1] = item_e[heavy]
        slot_w[r, 1] = item_w[heavy]
        load[r] = item_w[heavy] + item_w[light]
    return True


@kernel
def _paired_count_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                         trial_counts, trial_e, trial_w, trial_load, trial_item_w, trial_item_e,
                         enough, fscratch, iscratch):
    """Replica counts for two slots per rank on ranks of equal speed, chosen by their pairing
    optimum (:func:`_paired_max`, exact for a given count up to the no-stacking rule): from
    ``counts``, the best single replica move per round (every donor and gainer, up to
    ``PAIRED_ROUNDS`` rounds, while the optimum drops); the counts found are packed by that
    pairing (or, where it would stack an expert, by LPT and refinement) and kept in place (as
    in :func:`_count_search`) if that lowers ``top``. Returns the maximum.

    Why: with two slots the pieces pair up, heavy with light, and the best counts are often
    far from water-filling's (w = [7450, 990, 922, 736, 513, 461, 151, 64] on 8 ranks: the
    736 expert cut into four fillers), out of reach of first-improvement moves that pack each
    candidate.

    Up to ``SEARCH_EXPERTS`` experts every expert may gain; beyond, only the two of the pair
    that reaches the optimum (their pieces are what a move can shrink; scoring every gainer
    against every donor would be quadratic in the experts per round). With 256 experts on
    256 ranks of two slots (DeepSeek-V3 layers, sigma 1) the moves lowered the busiest rank
    2.4% on average from the packing of the other count searches."""
    n = weights.shape[0]
    bins = slot_e.shape[0]
    m = slot_e.size
    # sorted_items leaves the experts' order and pieces here, for _moved_paired_max.
    order = iscratch[ORDER, :n]
    share = fscratch[SHARE, :n]
    every = n <= SEARCH_EXPERTS
    copy_into(trial_counts, counts)
    sorted_items(weights, trial_counts, trial_item_w, trial_item_e, fscratch, iscratch)
    current, worst = _paired_max(trial_item_w, bins)
    for _ in range(PAIRED_ROUNDS):
        best = current
        limit = best * (1.0 - 1e-12)
        best_gainer = best_donor = -1
        heavy = trial_item_e[worst]
        light = trial_item_e[m - 1 - worst]
        for k in range(n if every else 2):
            gainer = k if every else (heavy if k == 0 else light)
            if (not every and k == 1 and light == heavy) or \
                    trial_counts[gainer] >= min(caps[gainer], bins):
                continue
            for donor in range(n):
                # The donor's grown piece pairs with something: at least it is the maximum.
                if donor == gainer or trial_counts[donor] <= 1 or \
                        weights[donor] / (trial_counts[donor] - 1) >= best:
                    continue
                value = _moved_paired_max(weights, trial_counts, order, share, gainer, donor,
                                          bins, limit)
                if value < limit:
                    best, best_gainer, best_donor = value, gainer, donor
                    limit = best * (1.0 - 1e-12)
        if best_gainer < 0:
            break
        trial_counts[best_gainer] += 1
        trial_counts[best_donor] -= 1
        sorted_items(weights, trial_counts, trial_item_w, trial_item_e, fscratch, iscratch)
        current, worst = _paired_max(trial_item_w, bins)
    if current / speed[0] >= top * (1.0 - 1e-9):
        return top
    # The items are those of trial_counts already (sorted after the last move). The pairing
    # itself, unless it puts an expert twice on a rank (LPT and the swap search can miss it:
    # 1451 against its 1425.7 on the example above).
    if _pair_pieces(trial_item_w, trial_item_e, trial_e, trial_w, trial_load):
        trial = time_max(trial_load, speed)
    else:
        trial = pack_items(trial_item_w, trial_item_e, speed, np.bool_(False), trial_e,
                           trial_w, trial_load, has, np.bool_(True), np.int64(0), enough,
                           fscratch, iscratch)[0]
    return _kept(trial, top, trial_counts, trial_e, trial_w, trial_load, counts, slot_e, slot_w,
                 load)


@kernel
def _recounts(weights, caps, speed, base_counts, counts, slot_e, slot_w, load, has, top,
              trial_counts, trial_e, trial_w, trial_load, trial_item_w, trial_item_e, partners,
              enough, fscratch, iscratch):
    """The replica moves of the module docstring (:func:`_count_search`, or one
    :func:`_recount` move for more than ``SEARCH_EXPERTS`` experts), then
    :func:`_target_counts` (the moves again from a target that wins), then with two slots per
    rank on equal speeds :func:`_paired_count_search`, each kept in place if it lowers
    ``top``; ``counts`` and ``trial_counts`` hold ``base_counts`` (water-filling's) on entry.
    Each later step starts from what the earlier ones kept and keeps only improvements, so
    the result is never worse than the moves alone. Returns the maximum."""
    if weights.shape[0] <= SEARCH_EXPERTS:
        top = _count_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                            trial_counts, trial_e, trial_w, trial_load, trial_item_w,
                            trial_item_e, enough, fscratch, iscratch)
    else:
        gainer, donor = _recount(weights, caps, counts, slot_e, slot_w, load, speed, top)
        if gainer >= 0:
            trial_counts[gainer] += 1
            trial_counts[donor] -= 1
            sorted_items(weights, trial_counts, trial_item_w, trial_item_e, fscratch, iscratch)
            trial = pack_items(trial_item_w, trial_item_e, speed, np.bool_(False), trial_e,
                               trial_w, trial_load, has, np.bool_(True), partners, enough,
                               fscratch, iscratch)[0]
            top = _kept(trial, top, trial_counts, trial_e, trial_w, trial_load, counts, slot_e,
                        slot_w, load)
    moved = top
    top = _target_counts(weights, caps, speed, base_counts, counts, slot_e, slot_w, load, has,
                         top, trial_counts, trial_e, trial_w, trial_load, trial_item_w,
                         trial_item_e, enough, fscratch, iscratch)
    if top < moved and weights.shape[0] <= SEARCH_EXPERTS:
        top = _count_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                            trial_counts, trial_e, trial_w, trial_load, trial_item_w,
                            trial_item_e, enough, fscratch, iscratch)
    if slot_e.shape[1] == 2 and _equal(speed):
        top = _paired_count_search(weights, caps, speed, counts, slot_e, slot_w, load, has, top,
                                   trial_counts, trial_e, trial_w, trial_load, trial_item_w,
                                   trial_item_e, enough, fscratch, iscratch)
    return top


@kernel
def _alternatives(weights, caps, speed, counts, slot_e, slot_w, load, has, top, recount,
                  stack_caps, try_stack, recap, item_w, item_e, partners, enough, fscratch,
                  iscratch):
    """The alternatives of the module docstring, kept (in place) if they lower ``top``; other
    replica counts (:func:`_recounts`) only if ``recount``, the stacked packing only if
    ``try_stack`` (with the counts water-filled again under ``stack_caps`` if ``recap``, else
    on the current sorted items ``item_w`` / ``item_e``). Returns the maximum."""
    n = weights.shape[0]
    bins, slots = slot_e.shape
    m = slot_e.size
    # ``item_w`` / ``item_e`` hold the replicas of the counts on entry; a kept replica move
    # changes ``counts``, so the stacked alternative restarts from these.
    base_counts = iscratch[BASE_COUNTS, :n]
    copy_into(base_counts, counts)
    trial_counts = iscratch[TRIAL_COUNTS, :n]
    copy_into(trial_counts, counts)
    trial_e = iscratch[TRIAL_E, :m].reshape((bins, slots))
    trial_w = fscratch[TRIAL_W, :m].reshape((bins, slots))
    trial_load = fscratch[TRIAL_LOAD, :bins]
    trial_item_w = fscratch[TRIAL_ITEM_W, :m]
    trial_item_e = iscratch[TRIAL_ITEM_E, :m]
    for stack in (False, True):
        if stack:
            if not try_stack:
                continue
            if recap:
                size = tree_size(n)
                water_fill_into(weights, m, stack_caps, trial_counts, fscratch[FILL_KEYS, :size],
                                iscratch[FILL_TREE, :size])
                sorted_items(weights, trial_counts, trial_item_w, trial_item_e, fscratch,
                             iscratch)
                stacked_w, stacked_e = trial_item_w, trial_item_e
            else:
                copy_into(trial_counts, base_counts)
                stacked_w, stacked_e = item_w, item_e
            # The stacked packing is DeepSeek's LPT (bar ties), refined only if it can win:
            # its loads alone tell whether it does.
            if lpt_loads(stacked_w, speed, slots, trial_load, fscratch, iscratch) >= top:
                copy_into(trial_counts, counts)
                continue
            pack_items(stacked_w, stacked_e, speed, stack, trial_e, trial_w, trial_load, has,
                       np.bool_(False), partners, enough, fscratch, iscratch)
            refine_swaps(trial_e, trial_w, trial_load, speed, has, np.bool_(False),
                         4 * slot_e.size + 16, fscratch, iscratch)
            trial = time_max(trial_load, speed)
        else:
            if recount:
                top = _recounts(weights, caps, speed, base_counts, counts, slot_e, slot_w, load,
                                has, top, trial_counts, trial_e, trial_w, trial_load,
                                trial_item_w, trial_item_e, partners, enough, fscratch,
                                iscratch)
                copy_into(trial_counts, counts)
            continue
        top = _kept(trial, top, trial_counts, trial_e, trial_w, trial_load, counts, slot_e,
                    slot_w, load)
        copy_into(trial_counts, counts)
    return top
