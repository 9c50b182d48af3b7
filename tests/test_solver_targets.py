"""Count searches of plumb.solver.place against plain references: the target counts (hot
experts cut into pieces of at most a target, spare slots handed out) against handing out one
replica at a time, and the paired count search's moved pairing optimum against sorting the
moved counts."""

import numpy as np
import pytest

from plumb.solver.mintree import tree_size
from plumb.solver.place import _counts_for_target, _light_first
from plumb.solver.workspace import RADIX_COUNTS


def _reference(weights, caps, target, num_slots, fillers):
    """Each spare slot picked by scanning every expert (the rule as stated)."""
    n = len(weights)
    counts = [min(max(int(np.ceil(w / target * (1.0 - 1e-12))), 1), int(c))
              for w, c in zip(weights, caps)]
    if sum(counts) > num_slots:
        return False, counts
    whole = [counts[e] == 1 for e in range(n)]
    for _ in range(num_slots - sum(counts)):
        pick = -1
        for e in range(n):
            if counts[e] >= caps[e]:
                continue
            if fillers:
                better = pick < 0 or (counts[e], weights[e]) < (counts[pick], weights[pick])
            else:
                better = whole[e] and (pick < 0 or
                                       weights[e] * counts[pick] > weights[pick] * counts[e])
            if better:
                pick = e
        if pick < 0:
            return False, counts
        counts[pick] += 1
    return True, counts


def _light_order(weights):
    order = np.empty(weights.shape[0], dtype=np.int64)
    _light_first(weights, order, np.empty(weights.shape[0] + RADIX_COUNTS, dtype=np.int64))
    return order


@pytest.mark.parametrize("seed", range(40))
def test_counts_for_target_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    bins = int(rng.integers(1, 64))
    weights = np.round(rng.lognormal(0.0, 1.5, n) * 20.0)
    weights[rng.random(n) < 0.1] = 0.0
    if seed % 4 == 0:
        weights = np.repeat(weights[: max(n // 3, 1)], 3)[:n]  # runs of equal loads
        n = weights.shape[0]
    caps = np.full(n, bins, dtype=np.int64)
    if seed % 3 == 0:
        caps = rng.integers(1, bins + 1, n).astype(np.int64)
    num_slots = n + int(rng.integers(0, 2 * n + 1))
    light_first = _light_order(weights)
    assert [tuple(p) for p in zip(weights[light_first], light_first)] == \
        sorted(zip(weights, range(n)))
    size = tree_size(n)
    positive = weights[weights > 0]
    targets = [positive.max() / k for k in (1, 2, 3, 5)] if positive.size else [1.0]
    targets += list(rng.choice(positive, 3)) if positive.size else []
    for target in targets:
        for fillers in (True, False):
            counts = np.empty(n, dtype=np.int64)
            done = _counts_for_target(weights, caps, float(target), num_slots, fillers,
                                      light_first, counts, np.empty(size),
                                      np.empty(size, dtype=np.int64))
            expected_done, expected = _reference(weights, caps, target, num_slots, fillers)
            assert done == expected_done
            if done:
                assert counts.tolist() == expected
                assert counts.sum() == num_slots


@pytest.mark.parametrize("seed", range(30))
def test_moved_pairing_optimum_equals_sorting_the_moved_counts(seed):
    from plumb.solver.pack import sorted_items
    from plumb.solver.place import _moved_paired_max, _paired_max
    from plumb.solver.workspace import ORDER, SHARE, workspace

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    bins = int(rng.integers(max(1, (n + 1) // 2), n + 1))
    weights = np.round(rng.lognormal(0.0, 1.0, n) * 10.0)
    if seed % 3 == 0:
        weights = np.repeat(weights[: max(n // 4, 1)], 4)[:n]  # equal pieces, ties by index
        n = weights.shape[0]
        bins = max(bins, (n + 1) // 2)
    counts = np.ones(n, dtype=np.int64)
    for e in rng.integers(0, n, 2 * bins - n):
        counts[e] += 1
    fscratch, iscratch = workspace(n, bins, 2)
    item_w = np.empty(2 * bins)
    item_e = np.empty(2 * bins, dtype=np.int64)
    sorted_items(weights, counts, item_w, item_e, fscratch, iscratch)
    order = iscratch[ORDER, :n].copy()
    share = fscratch[SHARE, :n].copy()
    for _ in range(40):
        gainer, donor = (int(x) for x in rng.integers(0, n, 2))
        if gainer == donor or counts[donor] < 2:
            continue
        fast = _moved_paired_max(weights, counts, order, share, gainer, donor, bins, np.inf)
        after = counts.copy()
        after[gainer] += 1
        after[donor] -= 1
        sorted_items(weights, after, item_w, item_e, fscratch, iscratch)
        exact = _paired_max(item_w, bins)[0]
        assert fast == exact
        # With a limit: the exact value below it, some value at or above it otherwise.
        for limit in (exact, exact * 1.01, exact * 0.99, item_w[0]):
            cut = _moved_paired_max(weights, counts, order, share, gainer, donor, bins, limit)
            assert cut == exact if exact < limit else cut >= limit


def _sorted_pieces(weights, counts):
    """(pieces, their experts) of ``weights / counts``, by descending piece, ties by expert."""
    pieces = np.repeat(weights / counts, counts)
    experts = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((experts, -pieces))
    return pieces[order], experts[order]


def _pairing(weights, counts, bins):
    """(pairing optimum, expert of its heavy piece, expert of its light piece) of the pieces
    ``weights / counts`` sorted by descending piece, ties by expert."""
    pieces, experts = _sorted_pieces(weights, counts)
    sums = pieces[:bins] + pieces[::-1][:bins]
    worst = int(np.argmax(sums))
    return sums[worst], experts[worst], experts[len(pieces) - 1 - worst]


def _reference_paired_search(weights, counts, bins, rounds=16):
    """The paired count search beyond 32 experts, plainly: each round, every move of one
    replica to an expert of the worst pair (heavy piece first) from any donor (index order),
    scored by sorting the pieces; the first strictly lowest taken. Returns the counts."""
    counts = counts.copy()
    current, heavy, light = _pairing(weights, counts, bins)
    for _ in range(rounds):
        best, move = current, None
        for gainer in dict.fromkeys((heavy, light)):
            if counts[gainer] >= bins:
                continue
            for donor in range(len(counts)):
                if donor == gainer or counts[donor] <= 1:
                    continue
                counts[gainer] += 1
                counts[donor] -= 1
                value = _pairing(weights, counts, bins)[0]
                counts[gainer] -= 1
                counts[donor] += 1
                if value < best * (1.0 - 1e-12):
                    best, move = value, (gainer, donor)
        if move is None:
            break
        counts[move[0]] += 1
        counts[move[1]] -= 1
        current, heavy, light = _pairing(weights, counts, bins)
    return counts


@pytest.mark.parametrize("bins, num_experts, seed", [(48, 64, 0), (64, 64, 2), (128, 128, 3)])
def test_paired_count_search_beyond_32_experts_matches_the_reference(bins, num_experts, seed):
    from plumb.solver.place import _paired_count_search
    from plumb.solver.replicate import water_fill
    from plumb.solver.workspace import workspace

    rng = np.random.default_rng(seed)
    weights = np.round(rng.lognormal(0.0, 1.5, num_experts) * 100)
    caps = np.full(num_experts, bins, dtype=np.int64)
    counts = np.empty(num_experts, dtype=np.int64)
    water_fill(weights, 2 * bins, caps, counts)
    expected = _reference_paired_search(weights, counts, bins)
    assert _pairing(weights, expected, bins)[0] < _pairing(weights, counts, bins)[0] * 0.97
    speed = np.ones(bins)
    slot_e = np.zeros((bins, 2), dtype=np.int64)
    slot_w = np.zeros((bins, 2))
    load = np.zeros(bins)
    has = np.zeros((bins, num_experts), dtype=np.int16)
    trial = (np.empty(num_experts, dtype=np.int64), np.empty((bins, 2), dtype=np.int64),
             np.empty((bins, 2)), np.empty(bins), np.empty(2 * bins),
             np.empty(2 * bins, dtype=np.int64))
    top = _paired_count_search(weights, caps, speed, counts, slot_e, slot_w, load, has, np.inf,
                               *trial, 0.0, *workspace(num_experts, bins, 2))
    assert counts.tolist() == expected.tolist()
    assert top == load.max()
    # Packed by the pairing itself unless it puts an expert twice on a rank.
    experts = _sorted_pieces(weights, expected)[1]
    if not (experts[:bins] == experts[::-1][:bins]).any():
        assert top == _pairing(weights, expected, bins)[0]
    assert sorted(slot_e.ravel().tolist()) == sorted(np.repeat(np.arange(num_experts),
                                                               expected).tolist())
