"""plumb.rearrange.execute_inplace: stacked [L, P, ...] weights rearranged in one process."""

import numpy as np
import pytest
from _rearrange_cases import expert_weights, rearrangements
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.errors import InputError
from plumb.rearrange import execute_inplace
from plumb.rearrange.inplace import Scratch

torch = pytest.importorskip("torch")


def check(old, new, topo, **kwargs):
    """Execute the plan on tagged weights; assert every slot ends up right; return the report."""
    plan = plumb.plan_rearrangement(old, new, topo, bytes_per_expert=0)
    weights = expert_weights(old, torch)
    report = execute_inplace(plan, weights, **kwargs)
    for got, want in zip(weights, expert_weights(new, torch)):
        assert torch.equal(got, want)
    slot_bytes = 15 * 4 + 2 * 8
    assert report.slots_written == plan.stats.moves + plan.stats.local_copies
    assert report.bytes_written == report.slots_written * slot_bytes
    return report


@settings(max_examples=60, deadline=None)
@given(rearrangements(), st.sampled_from([8, 12, 60, 1 << 20]))
def test_random_rearrangements_with_any_scratch(case, scratch_bytes):
    topo, old, new = case
    check(old, new, topo, max_scratch_bytes=scratch_bytes)


@pytest.mark.parametrize("scratch_bytes", [8, 1 << 20])
def test_one_long_cycle_and_swaps(scratch_bytes):
    old = np.arange(12).reshape(1, 12)
    report = check(old, np.roll(old, 1, axis=1), 4, max_scratch_bytes=scratch_bytes)
    assert report.cycles == 1 and report.slots_written == 12
    swapped = old.reshape(6, 2)[:, ::-1].reshape(1, 12)
    assert check(old, swapped, 4, max_scratch_bytes=scratch_bytes).cycles == 6


def test_duplicates_fed_by_a_slot_that_is_overwritten():
    # Slot 0's expert 0 feeds slots 1, 2 and 5 while slot 0 itself takes expert 1 from slot 1:
    # a 2-cycle with a tree hanging off it.
    old = np.array([[0, 1, 2, 3, 4, 5]])
    new = np.array([[1, 0, 0, 3, 4, 0]])
    report = check(old, new, 3, max_scratch_bytes=8)
    # Slots 2 and 5 are written first; slots 0 and 1 then swap through the scratch.
    assert report.cycles == 1 and report.slots_written == 4


def test_no_change_writes_nothing():
    old = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    report = check(old, old, 2)
    assert report.slots_written == report.cycles == report.staged_bytes == 0


def test_single_tensor_and_inner_shapes():
    old = np.array([[0, 1, 2, 3]])
    plan = plumb.plan_rearrangement(old, [[3, 2, 1, 0]], 2, 4)
    flat = torch.arange(4, dtype=torch.float64).view(1, 4)  # [L, P]: one element per slot
    execute_inplace(plan, flat, max_scratch_bytes=8)
    assert flat.tolist() == [[3.0, 2.0, 1.0, 0.0]]


def test_parameters_that_require_grad():
    plan = plumb.plan_rearrangement([[0, 1, 2, 3]], [[1, 0, 3, 3]], 2, 4)
    weight = torch.nn.Parameter(torch.arange(4.0).view(1, 4, 1).repeat(1, 1, 3))
    execute_inplace(plan, weight)
    assert weight[0, :, 0].tolist() == [1.0, 0.0, 3.0, 3.0]


def test_scratch_is_bounded():
    views = [torch.zeros(1, 4, 100), torch.zeros(1, 4, 10, dtype=torch.float64)]
    scratch = Scratch(views, max_bytes=44)
    assert scratch.elements(torch.float32).numel() == 11
    assert scratch.elements(torch.float64).numel() == 5
    assert Scratch(views, max_bytes=1 << 30).elements(torch.float32).numel() == 100


def test_invalid_weights_raise_input_error():
    plan = plumb.plan_rearrangement([[0, 1, 2, 3]], [[1, 0, 2, 3]], 2, 4)
    good = torch.zeros(1, 4, 3)
    with pytest.raises(InputError, match=r"\[L, N, \.\.\.\] = \[1, 4, \.\.\.\]"):
        execute_inplace(plan, torch.zeros(1, 3, 3))
    with pytest.raises(InputError, match="one device"):
        execute_inplace(plan, [good, torch.zeros(1, 4, 3, device="meta")])
    with pytest.raises(InputError, match="viewable as one flat block"):
        execute_inplace(plan, torch.zeros(1, 4, 3, 5).transpose(2, 3))
    with pytest.raises(InputError, match="below one element"):
        execute_inplace(plan, good, max_scratch_bytes=2)
    with pytest.raises(InputError, match="max_scratch_bytes must be an int"):
        execute_inplace(plan, good, max_scratch_bytes=True)
    with pytest.raises(InputError, match="torch.Tensor or a non-empty sequence"):
        execute_inplace(plan, [])
    with pytest.raises(InputError, match="torch.Tensor or a non-empty sequence"):
        execute_inplace(plan, [np.zeros((1, 4, 3))])
