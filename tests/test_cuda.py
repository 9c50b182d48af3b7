"""The CUDA path: histogram ops, Recorder, hooks and the in-place executor on a real GPU.

Skipped without a CUDA device (CI has none); run on a GPU machine. Every check compares the
CUDA result with the CPU path on the same ids or weights, and the no-host-sync claims are
checked with ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising
call (``.item()``, ``.cpu()``, ``nonzero``, a blocking copy).
"""

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

import plumb  # noqa: E402
import plumb.ops  # noqa: E402,F401
from plumb.errors import InputError  # noqa: E402

CUDA = torch.device("cuda")


@contextlib.contextmanager
def no_host_sync():
    """Any host-device synchronisation inside the block raises RuntimeError."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def random_ids(shape, num_experts, dtype, seed, low=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, num_experts, shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", [(4, 33, 8), (257, 8), (0, 4), (3, 1, 1)])
def test_functional_op_matches_cpu(dtype, shape):
    ids = random_ids(shape, 19, dtype, seed=len(shape), low=-1)
    cuda = torch.ops.plumb.expert_histogram(ids.to(CUDA), 19)
    assert cuda.device.type == "cuda" and cuda.dtype == torch.int64
    assert torch.equal(cuda.cpu(), torch.ops.plumb.expert_histogram(ids, 19))


def test_inplace_op_accumulates_like_cpu_on_non_contiguous_ids():
    ids = random_ids((3, 40, 6), 7, torch.int64, seed=2).transpose(1, 2)
    out = torch.ones(3, 7, dtype=torch.int64, device=CUDA)
    plumb.expert_histogram(ids.to(CUDA), 7, out=out)
    expected = torch.ones(3, 7, dtype=torch.int64)
    plumb.expert_histogram(ids, 7, out=expected)
    assert torch.equal(out.cpu(), expected)


def test_checked_op_raises_and_leaves_out_unchanged():
    ids = torch.zeros(2, 4, 2, dtype=torch.int64)
    ids[1, 3, 0] = 9
    out = torch.full((2, 8), 5, dtype=torch.int64, device=CUDA)
    with pytest.raises(ValueError, match=r"expert id 9 at position \(1, 3, 0\)"):
        torch.ops.plumb.expert_histogram_(out, ids.to(CUDA))
    assert torch.all(out == 5)


def test_deferred_op_skips_and_counts_bad_ids_without_a_host_sync():
    ids = random_ids((5, 64, 4), 12, torch.int64, seed=3, low=-1)
    ids[2, 10, 1] = 40
    ids[4, 0, 0] = 12
    cuda_ids = ids.to(CUDA)
    out = torch.zeros(5, 12, dtype=torch.int64, device=CUDA)
    num_invalid = torch.zeros(1, dtype=torch.int64, device=CUDA)
    with no_host_sync():
        torch.ops.plumb.expert_histogram_deferred_(out, num_invalid, cuda_ids)
    assert int(num_invalid) == 2
    valid = ids.masked_fill(ids >= 12, -1)
    assert torch.equal(out.cpu(), torch.ops.plumb.expert_histogram(valid, 12))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_opcheck_on_cuda(dtype):
    ids = random_ids((4, 33, 8), 16, dtype, seed=4, low=-1).to(CUDA)
    torch.library.opcheck(torch.ops.plumb.expert_histogram.default, (ids, 16))
    out = torch.zeros(4, 16, dtype=torch.int64, device=CUDA)
    torch.library.opcheck(torch.ops.plumb.expert_histogram_.default, (out, ids))
    num_invalid = torch.zeros(1, dtype=torch.int64, device=CUDA)
    torch.library.opcheck(torch.ops.plumb.expert_histogram_deferred_.default,
                          (out, num_invalid, ids))


def test_torch_compile_inductor_on_cuda():
    @torch.compile(fullgraph=True)
    def record(out, num_invalid, ids):
        torch.ops.plumb.expert_histogram_deferred_(out, num_invalid, ids)
        return out.sum()

    ids = random_ids((3, 16, 8), 32, torch.int32, seed=5).to(CUDA)
    out = torch.zeros(3, 32, dtype=torch.int64, device=CUDA)
    num_invalid = torch.zeros(1, dtype=torch.int64, device=CUDA)
    assert int(record(out, num_invalid, ids)) == 3 * 16 * 8
    assert torch.equal(out.cpu(), torch.ops.plumb.expert_histogram(ids.cpu(), 32))


def test_recorder_on_cuda_matches_cpu_and_never_syncs():
    num_layers, num_experts = 6, 40
    cuda = plumb.Recorder(num_layers, num_experts, window=4, device=CUDA, num_sources=3)
    cpu = plumb.Recorder(num_layers, num_experts, window=4, device="cpu", num_sources=3)
    gen = torch.Generator().manual_seed(6)
    steps = [[torch.randint(0, num_experts, (17, 8), generator=gen) for _ in range(num_layers)]
             for _ in range(7)]
    on_device = [[ids.to(CUDA, torch.int32) for ids in layers] for layers in steps]
    torch.cuda.synchronize()
    with no_host_sync():
        for layers in on_device:
            for layer, ids in enumerate(layers):
                cuda.record(layer, ids, source=layer % 3)
            cuda.step()
    for layers in steps:
        for layer, ids in enumerate(layers):
            cpu.record(layer, ids, source=layer % 3)
        cpu.step()
    assert cuda._deferred and cuda.steps == cpu.steps == 7
    for read in ("window", "loads", "totals", "traffic", "current"):
        assert torch.equal(getattr(cuda, read)().cpu(), getattr(cpu, read)()), read


def test_staged_recorder_on_cuda_matches_cpu_and_never_syncs():
    # No per-source counts (what plumb.attach records): ids are staged and counted at step().
    num_layers, num_experts = 5, 24
    cuda = plumb.Recorder(num_layers, num_experts, window=3, device=CUDA)
    cpu = plumb.Recorder(num_layers, num_experts, window=3, device="cpu")
    assert cuda._staged is not None
    gen = torch.Generator().manual_seed(10)
    sizes = (1, 64, 300, 2048, 2049, 5000)
    steps = [[torch.randint(-1, num_experts, (sizes[(s + layer) % len(sizes)],), generator=gen)
              for layer in range(num_layers)] for s in range(6)]
    on_device = [[ids.to(CUDA, torch.int32) for ids in layers] for layers in steps]
    torch.cuda.synchronize()
    with no_host_sync():
        for layers in on_device:
            for layer, ids in enumerate(layers):
                cuda.record(layer, ids)
                cuda.record(layer, ids[: len(ids) // 2])
            cuda.step()
    for layers in steps:
        for layer, ids in enumerate(layers):
            cpu.record(layer, ids)
            cpu.record(layer, ids[: len(ids) // 2])
        cpu.step()
    for read in ("window", "loads", "totals", "current"):
        assert torch.equal(getattr(cuda, read)().cpu(), getattr(cpu, read)()), read


def test_recorder_reports_bad_cuda_ids_on_read():
    rec = plumb.Recorder(1, 4, device=CUDA)
    ids = torch.tensor([[0, 7], [1, 3]]).to(CUDA)
    with no_host_sync():
        rec.record(0, ids)
        rec.step()
    with pytest.raises(InputError, match="1 recorded expert ids were outside"):
        rec.loads()


def test_recorder_inside_a_cuda_graph():
    # The module docstring's claim: record() captured in a CUDA graph keeps accumulating into
    # the same buffers on every replay; step() runs outside the graph.
    num_layers, num_experts = 3, 24
    rec = plumb.Recorder(num_layers, num_experts, window=8, device=CUDA)
    cpu = plumb.Recorder(num_layers, num_experts, window=8, device="cpu")
    static_ids = torch.zeros(num_layers, 32, 8, dtype=torch.int64, device=CUDA)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for layer in range(num_layers):  # warm-up outside the graph, as CUDA graphs require
            rec.record(layer, static_ids[layer])
    torch.cuda.current_stream().wait_stream(stream)
    rec.reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(num_layers):
            rec.record(layer, static_ids[layer])
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        ids = torch.randint(0, num_experts, (num_layers, 32, 8), generator=gen)
        static_ids.copy_(ids)
        graph.replay()
        rec.step()
        for layer in range(num_layers):
            cpu.record(layer, ids[layer])
        cpu.step()
    assert torch.equal(rec.window().cpu(), cpu.window())
    assert torch.equal(rec.totals().cpu(), cpu.totals())


def test_attach_on_a_cuda_model_counts_what_the_router_returned():
    pytest.importorskip("transformers")
    from plumb.capture import find_routers
    from plumb.capture.tiny_models import tiny_model

    model = tiny_model("qwen3_moe").to(CUDA)
    routers = find_routers(model)
    returned = []
    spies = [module.register_forward_hook(lambda _m, _a, out: returned.append(out[2].cpu()))
             for _, module, _ in routers]
    handle = plumb.attach(model, window=4)
    gen = torch.Generator().manual_seed(8)
    try:
        with torch.no_grad():
            for shape in ((2, 7), (1, 1), (3, 5)):
                model(torch.randint(0, 64, shape, generator=gen).to(CUDA))
    finally:
        handle.detach()
        for spy in spies:
            spy.remove()
    rec = handle.recorder
    assert rec.device.type == "cuda" and rec.steps == 3
    num_layers = len(routers)
    expected = torch.zeros(num_layers, rec.num_experts, dtype=torch.int64)
    for index, ids in enumerate(returned):
        expected[index % num_layers] += torch.bincount(ids.reshape(-1),
                                                       minlength=rec.num_experts)
    assert torch.equal(rec.totals().cpu(), expected)


def test_execute_inplace_on_cuda_weights_matches_cpu():
    from _rearrange_cases import expert_weights

    from plumb.rearrange import execute_inplace

    rng = np.random.default_rng(9)
    old = np.stack([rng.permutation(np.arange(24) % 20) for _ in range(3)])
    new = np.stack([rng.permutation(np.arange(24) % 20) for _ in range(3)])
    plan = plumb.plan_rearrangement(old, new, 4, bytes_per_expert=0)
    weights = [w.to(CUDA) for w in expert_weights(old, torch)]
    report = execute_inplace(plan, weights, max_scratch_bytes=64)
    for got, want in zip(weights, expert_weights(new, torch)):
        assert got.device.type == "cuda"
        assert torch.equal(got.cpu(), want)
    assert report.slots_written == plan.stats.moves + plan.stats.local_copies


def test_bench_capture_cuda_writes_its_section(tmp_path, capsys):
    from plumb.cli import main

    results = tmp_path / "RESULTS.md"
    assert main(["bench", "capture_cuda", "--quick", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for row in ("| decode [64, 8] | int32 |", "| prefill [8192, 8] | int64 |",
                "| eager | none |", "| CUDA graph replay | 8 sources |"):
        assert row in out, row
    assert "met (no synchronising call)" in out
    assert "## capture_cuda\n\nCommand: `python benchmarks/bench_capture_cuda.py --quick`" \
        in results.read_text()
