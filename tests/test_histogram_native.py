"""plumb_native.histogram on numpy arrays: correctness, validation, fuzzing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import plumb
import plumb_native


def reference_counts(ids: np.ndarray, num_experts: int) -> np.ndarray:
    if ids.ndim != 3:
        return reference_counts(ids.reshape(1, 1, -1), num_experts)[0]
    counts = np.zeros((ids.shape[0], num_experts), dtype=np.int64)
    for layer in range(ids.shape[0]):
        row = ids[layer].ravel()
        counts[layer] = np.bincount(row[row >= 0], minlength=num_experts)
    return counts


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape", [(7, 2), (3, 50, 8), (1, 1, 1), (40,)])
def test_matches_bincount(dtype, shape):
    rng = np.random.default_rng(0)
    ids = rng.integers(-1, 13, size=shape).astype(dtype)
    np.testing.assert_array_equal(plumb_native.histogram(ids, 13), reference_counts(ids, 13))


@pytest.mark.parametrize("num_threads", [1, 2, 3, 8])
def test_threads_and_chunks_agree(num_threads):
    rng = np.random.default_rng(1)
    # Two layers with many ids each forces chunking inside layers.
    ids = rng.integers(0, 256, size=(2, 40000, 8), dtype=np.int64)
    got = plumb_native.histogram(ids, 256, num_threads=num_threads)
    np.testing.assert_array_equal(got, reference_counts(ids, 256))


def test_accumulates_into_out():
    ids = np.array([[[0, 1], [1, -1]], [[2, 2], [-1, -1]]], dtype=np.int32)
    out = np.ones((2, 3), dtype=np.int64)
    result = plumb_native.histogram(ids, 3, out=out)
    assert result is out
    np.testing.assert_array_equal(out, [[2, 3, 1], [1, 1, 3]])


def test_non_contiguous_input():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 9, size=(4, 30, 16), dtype=np.int64)
    view = base[:, ::3, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(plumb_native.histogram(view, 9), reference_counts(view, 9))


def test_empty_inputs():
    np.testing.assert_array_equal(plumb_native.histogram(np.zeros((0, 8), np.int64), 4), [0] * 4)
    np.testing.assert_array_equal(plumb_native.histogram(np.zeros((3, 0, 8), np.int32), 2),
                                  np.zeros((3, 2)))


def test_bad_id_names_value_and_position_and_leaves_out_unchanged():
    ids = np.zeros((2, 3, 4), dtype=np.int64)
    ids[1, 2, 3] = 17
    ids[1, 2, 1] = -5
    out = np.full((2, 8), 7, dtype=np.int64)
    with pytest.raises(ValueError, match=r"expert id -5 at position \(1, 2, 1\).*\[0, 8\)"):
        plumb_native.histogram(ids, 8, out=out)
    assert np.all(out == 7)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(ids=np.zeros((2, 2), np.float32), num_experts=4), TypeError, "int32 or int64"),
        (dict(ids=np.zeros((2, 2), np.int16), num_experts=4), TypeError, "int32 or int64"),
        (dict(ids=np.zeros((1, 2, 2, 2), np.int64), num_experts=4), ValueError, "ndim 4"),
        (dict(ids=np.zeros((2, 2), np.int64), num_experts=0), ValueError, "num_experts"),
        (dict(ids=np.zeros((2, 2), np.int64), num_experts=4, out=np.zeros(5, np.int64)),
         ValueError, r"shape \[4\]"),
        (dict(ids=np.zeros((2, 2), np.int64), num_experts=4, out=np.zeros(4, np.int32)),
         TypeError, "int64"),
        (dict(ids=np.zeros((3, 2, 2), np.int64), num_experts=4, out=np.zeros((4, 3), np.int64).T),
         ValueError, "C-contiguous"),
        (dict(ids=np.zeros((2, 2), np.int64), num_experts=4, num_threads=0), ValueError,
         "num_threads"),
        (dict(ids="abc", num_experts=4), TypeError, "ids"),
    ],
)
def test_validation_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        plumb_native.histogram(**kwargs)


def test_read_only_out_rejected():
    out = np.zeros(4, dtype=np.int64)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        plumb_native.histogram(np.zeros((2, 2), np.int64), 4, out=out)


def test_huge_num_experts_sparse():
    ids = np.array([[0, 5_000_000]], dtype=np.int64)
    counts = plumb_native.histogram(ids, 5_000_001)
    assert counts[0] == 1 and counts[5_000_000] == 1 and counts.sum() == 2


def test_lists_via_plumb_entry_point():
    np.testing.assert_array_equal(plumb.expert_histogram([[0, 2], [2, -1]], 3), [1, 0, 2])
    # Empty lists are no ids (numpy would make them float).
    for empty in ([], [[]]):
        np.testing.assert_array_equal(plumb.expert_histogram(empty, 3), [0, 0, 0])


def test_num_experts_and_dtype_spellings():
    # np.longlong is int64 under another dtype object; numpy ints are ints.
    ids = np.array([[0, 2]], dtype=np.longlong)
    out = np.zeros(3, dtype=np.longlong)
    plumb_native.histogram(ids, 3, out)
    np.testing.assert_array_equal(out, [1, 0, 1])
    np.testing.assert_array_equal(plumb.expert_histogram(ids, np.int64(3)), [1, 0, 1])
    with pytest.raises(ValueError, match=r"num_experts must be < 2\*\*63"):
        plumb_native.histogram(ids, 2 ** 63)
    for bad in (3.9, True, "3"):
        with pytest.raises(TypeError, match="num_experts must be an int"):
            plumb.expert_histogram(ids, bad)


@st.composite
def id_arrays(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    num_experts = draw(st.one_of(st.integers(1, 12), st.integers(1, 2**40)))
    low = draw(st.sampled_from([-3, -1, 0]))
    high = draw(st.integers(0, 14))
    ids = draw(hnp.arrays(dtype, shape, elements=st.integers(low, high)))
    if draw(st.booleans()) and ids.ndim >= 1 and ids.shape[-1] > 1:
        ids = ids[..., ::2]
    return ids, num_experts


@settings(max_examples=150, deadline=None)
@given(id_arrays(), st.integers(1, 4))
def test_fuzz_never_crashes_and_matches_reference(case, num_threads):
    ids, num_experts = case
    if num_experts > 2**20:
        # Huge E: only check the kernel refuses or counts without crashing.
        num_experts = 2**20
    out_shape = (ids.shape[0], num_experts) if ids.ndim == 3 else (num_experts,)
    out = np.full(out_shape, 3, dtype=np.int64)
    bad = (ids != -1) & ((ids < 0) | (ids >= num_experts))
    if bad.any():
        with pytest.raises(ValueError, match="outside"):
            plumb_native.histogram(ids, num_experts, out=out, num_threads=num_threads)
        assert np.all(out == 3)
    else:
        plumb_native.histogram(ids, num_experts, out=out, num_threads=num_threads)
        np.testing.assert_array_equal(out - 3, reference_counts(ids, num_experts))
