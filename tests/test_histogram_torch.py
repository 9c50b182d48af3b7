"""torch.ops.plumb histogram operators: opcheck, correctness, torch.compile, device path."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import plumb  # noqa: E402
import plumb.ops  # noqa: E402,F401


def reference(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    layers = ids.flatten(1) if ids.ndim == 3 else ids.reshape(1, -1)
    rows = [torch.bincount(row[row >= 0], minlength=num_experts) for row in layers]
    counts = torch.stack(rows) if rows else torch.zeros(0, num_experts, dtype=torch.int64)
    return counts if ids.ndim == 3 else counts[0]


SAMPLES = [
    (torch.randint(-1, 16, (4, 33, 8), dtype=torch.int64, generator=torch.Generator().manual_seed(0)), 16),
    (torch.randint(0, 5, (17, 2), dtype=torch.int32, generator=torch.Generator().manual_seed(1)), 5),
    (torch.zeros((0, 4), dtype=torch.int64), 3),
]


@pytest.mark.parametrize("ids, num_experts", SAMPLES)
def test_opcheck_functional(ids, num_experts):
    torch.library.opcheck(torch.ops.plumb.expert_histogram.default, (ids, num_experts))


@pytest.mark.parametrize("ids, num_experts", SAMPLES)
def test_opcheck_inplace(ids, num_experts):
    out_shape = (ids.shape[0], num_experts) if ids.ndim == 3 else (num_experts,)
    out = torch.zeros(out_shape, dtype=torch.int64)
    torch.library.opcheck(torch.ops.plumb.expert_histogram_.default, (out, ids))


def test_opcheck_deferred():
    ids, num_experts = SAMPLES[0]
    out = torch.zeros((ids.shape[0], num_experts), dtype=torch.int64)
    num_invalid = torch.zeros(1, dtype=torch.int64)
    torch.library.opcheck(torch.ops.plumb.expert_histogram_deferred_.default,
                          (out, num_invalid, ids))


@pytest.mark.parametrize("seed", range(5))
def test_matches_bincount(seed):
    gen = torch.Generator().manual_seed(seed)
    num_experts = int(torch.randint(1, 300, (1,), generator=gen))
    shape = (int(torch.randint(1, 6, (1,), generator=gen)), 257, 8)
    ids = torch.randint(-1, num_experts, shape, generator=gen)
    assert torch.equal(torch.ops.plumb.expert_histogram(ids, num_experts), reference(ids, num_experts))
    assert torch.equal(plumb.expert_histogram(ids[0], num_experts), reference(ids[0], num_experts))


def test_non_contiguous_and_inplace_accumulates():
    ids = torch.randint(0, 7, (3, 40, 6)).transpose(1, 2)
    out = torch.ones(3, 7, dtype=torch.int64)
    plumb.expert_histogram(ids, 7, out=out)
    assert torch.equal(out - 1, reference(ids, 7))


def test_inplace_error_leaves_out_unchanged():
    ids = torch.zeros(2, 4, 2, dtype=torch.int64)
    ids[1, 3, 0] = 9
    out = torch.full((2, 8), 5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"expert id 9 at position \(1, 3, 0\)"):
        torch.ops.plumb.expert_histogram_(out, ids)
    assert torch.all(out == 5)


@pytest.mark.parametrize(
    "out, ids, match",
    [
        (torch.zeros(4, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int64), "int64"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(2, 2, 2, dtype=torch.int64), r"shape \[2, 4\]"),
        (torch.zeros(4, dtype=torch.int64), torch.zeros(2, 2), "int32 or int64"),
    ],
)
def test_inplace_validation(out, ids, match):
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.plumb.expert_histogram_(out, ids)


def test_device_path_matches_native_and_skips_invalid_without_raising():
    # The torch-native path serves CUDA and other devices; it is device-agnostic torch
    # code, so it is checked here on CPU tensors against the native kernel.
    ids = torch.randint(-1, 12, (5, 64, 4))
    out = torch.zeros(5, 12, dtype=torch.int64)
    plumb.ops._accumulate_device(out, ids)
    assert torch.equal(out, torch.ops.plumb.expert_histogram(ids, 12))
    ids[2, 10, 1] = 40
    with pytest.raises(ValueError, match=r"expert id 40 at position \(2, 10, 1\)"):
        plumb.ops._accumulate_device(out, ids)
    num_invalid = torch.zeros(1, dtype=torch.int64)
    deferred = torch.zeros(5, 12, dtype=torch.int64)
    torch.ops.plumb.expert_histogram_deferred_(deferred, num_invalid, ids)
    assert int(num_invalid) == 1
    valid = ids.clone()
    valid[2, 10, 1] = -1
    assert torch.equal(deferred, reference(valid, 12))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_device_path_bins_every_id_like_the_native_kernel(data):
    # Extremes included: id + 1 overflows for the largest int32 / int64 ids, and those must
    # still land in the invalid bin.
    dtype = data.draw(st.sampled_from([torch.int32, torch.int64]))
    info = torch.iinfo(dtype)
    num_experts = data.draw(st.integers(1, 40))
    shape = data.draw(st.sampled_from([(7,), (5, 3), (1, 4, 2), (3, 6, 2), (0, 2), (0, 2, 3), (2, 0, 3)]))
    values = st.one_of(st.integers(-3, num_experts + 2), st.sampled_from([info.min, info.max]))
    flat = data.draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    ids = torch.tensor(flat, dtype=dtype).reshape(shape)
    out_shape = (shape[0], num_experts) if len(shape) == 3 else (num_experts,)
    out = torch.full(out_shape, 3, dtype=torch.int64)
    num_invalid = torch.full((1,), 2, dtype=torch.int64)
    plumb.ops._deferred_device(out, num_invalid, ids)
    bad = (ids.long() < -1) | (ids.long() >= num_experts)
    assert int(num_invalid) == 2 + int(bad.sum())
    assert torch.equal(out - 3, reference(ids.long().masked_fill(bad, -1), num_experts))
    checked = torch.zeros(out_shape, dtype=torch.int64)
    if bool(bad.any()):
        with pytest.raises(ValueError, match="is outside"):
            plumb.ops._accumulate_device(checked, ids)
        assert torch.all(checked == 0)
    else:
        plumb.ops._accumulate_device(checked, ids)
        assert torch.equal(checked, torch.ops.plumb.expert_histogram(ids, num_experts))


@pytest.mark.parametrize("shape", [(0, 2, 3), (2, 0, 3), (0, 2), (0,)])
def test_device_path_with_no_ids(shape):
    ids = torch.zeros(shape, dtype=torch.int64)
    out_shape = (shape[0], 5) if len(shape) == 3 else (5,)
    out = torch.full(out_shape, 3, dtype=torch.int64)
    num_invalid = torch.zeros(1, dtype=torch.int64)
    plumb.ops._deferred_device(out, num_invalid, ids)
    plumb.ops._accumulate_device(out, ids)
    assert torch.all(out == 3) and int(num_invalid) == 0


def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="aot_eager")
    def count_twice(ids):
        return torch.ops.plumb.expert_histogram(ids, 32) * 2

    ids = torch.randint(0, 32, (3, 16, 8))
    assert torch.equal(count_twice(ids), reference(ids, 32) * 2)


def test_torch_compile_inductor_inplace():
    @torch.compile(fullgraph=True)
    def record(out, ids):
        torch.ops.plumb.expert_histogram_(out, ids)
        return out.sum()

    ids = torch.randint(0, 32, (3, 16, 8))
    out = torch.zeros(3, 32, dtype=torch.int64)
    assert int(record(out, ids)) == 3 * 16 * 8
    assert torch.equal(out, reference(ids, 32))


def test_torch_thread_count_beyond_the_native_limit_is_clamped():
    import plumb_native

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(plumb_native.MAX_THREADS + 500)
        counts = plumb.expert_histogram(torch.tensor([[0, 1], [1, 3]]), 4)
    finally:
        torch.set_num_threads(threads)
    assert counts.tolist() == [1, 2, 0, 1]
    with pytest.raises(TypeError, match="num_experts must be an int"):
        plumb.expert_histogram(torch.tensor([[0, 1]]), 3.9)
