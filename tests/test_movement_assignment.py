"""The Hungarian solver and the rank relabelling against brute force on small cases."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plumb.movement import max_weight_assignment
from plumb.movement.relabel import padded_groups, relabel_ranks


def brute_force(weight, allowed):
    """(best total, feasible) over all permutations using allowed pairs only."""
    n = weight.shape[0]
    best = None
    for perm in itertools.permutations(range(n)):
        if all(allowed[i, perm[i]] for i in range(n)):
            total = sum(weight[i, perm[i]] for i in range(n))
            best = total if best is None else max(best, total)
    return best


@st.composite
def matrices(draw):
    n = draw(st.integers(1, 6))
    values = draw(st.lists(st.integers(-20, 20), min_size=n * n, max_size=n * n))
    mask = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    allowed = np.array(mask).reshape(n, n) | np.eye(n, dtype=bool)  # identity stays feasible
    return np.array(values, dtype=np.float64).reshape(n, n), allowed


@settings(max_examples=200, deadline=None, derandomize=True)
@given(matrices())
def test_matches_brute_force(case):
    weight, allowed = case
    out = np.empty(weight.shape[0], dtype=np.int64)
    feasible, total = max_weight_assignment(weight, allowed, out)
    assert feasible
    assert sorted(out.tolist()) == list(range(weight.shape[0]))
    assert all(allowed[i, out[i]] for i in range(weight.shape[0]))
    assert total == pytest.approx(brute_force(weight, allowed))
    assert total == pytest.approx(weight[np.arange(weight.shape[0]), out].sum())


def test_reports_infeasible_masks():
    out = np.empty(2, dtype=np.int64)
    allowed = np.array([[True, False], [True, False]])
    feasible, _ = max_weight_assignment(np.ones((2, 2)), allowed, out)
    assert not feasible and sorted(out.tolist()) == [0, 1]


def test_empty_and_deterministic():
    assert max_weight_assignment(np.zeros((0, 0)), np.zeros((0, 0), bool),
                                 np.empty(0, np.int64)) == (True, 0.0)
    weight = np.zeros((4, 4))  # all ties
    first, second = np.empty(4, np.int64), np.empty(4, np.int64)
    max_weight_assignment(weight, np.ones((4, 4), bool), first)
    max_weight_assignment(weight, np.ones((4, 4), bool), second)
    assert first.tolist() == second.tolist()


def kept(new, old, perm, num_ranks, num_experts):
    """Slots whose expert the receiving rank held before, new rank r's set moved to perm[r]."""
    slots = new.size // num_ranks
    resident = np.zeros((num_ranks, num_experts), bool)
    resident[np.arange(old.size) // slots, old] = True
    return sum(resident[perm[q // slots], new[q]] for q in range(new.size))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(2, 5), st.integers(1, 3), st.data())
def test_relabelling_is_optimal_over_allowed_permutations(num_ranks, slots, data):
    num_slots = num_ranks * slots
    num_experts = data.draw(st.integers(1, num_slots))
    labels = np.array(data.draw(st.lists(st.integers(0, 1), min_size=num_ranks,
                                         max_size=num_ranks)), dtype=np.int64)
    # Class labels as interchangeable_ranks gives them: the smallest rank of the class.
    classes = np.array([np.flatnonzero(labels == labels[r])[0] for r in range(num_ranks)])
    rows = [data.draw(st.permutations(list(range(num_experts)) + data.draw(st.lists(
        st.integers(0, num_experts - 1), min_size=num_slots - num_experts,
        max_size=num_slots - num_experts)))) for _ in range(2)]
    new, old = (np.array(row, dtype=np.int64)[None, :] for row in rows)
    node_ranks, node_sizes = padded_groups(np.zeros(num_ranks, dtype=np.int64))
    perm = np.empty((1, num_ranks), dtype=np.int64)
    relabel_ranks(new, old, num_ranks, num_experts, classes[None, :], np.zeros(1, bool),
                  node_ranks, node_sizes, perm)
    assert sorted(perm[0].tolist()) == list(range(num_ranks))
    assert all(classes[r] == classes[perm[0, r]] for r in range(num_ranks))
    best = max(kept(new[0], old[0], p, num_ranks, num_experts)
               for p in itertools.permutations(range(num_ranks))
               if all(classes[r] == classes[p[r]] for r in range(num_ranks)))
    assert kept(new[0], old[0], perm[0], num_ranks, num_experts) == best


def test_hierarchical_layers_map_whole_nodes():
    # Two nodes of two ranks; new node 0's sets sit on old node 1 and vice versa.
    old = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    new = np.array([[4, 5, 7, 6, 0, 1, 2, 3]])
    node_ranks, node_sizes = padded_groups(np.array([0, 0, 1, 1]))
    perm = np.empty((1, 4), dtype=np.int64)
    relabel_ranks(new, old, 4, 8, np.zeros((1, 4), np.int64), np.ones(1, bool), node_ranks,
                  node_sizes, perm)
    assert perm[0].tolist() == [2, 3, 0, 1]
