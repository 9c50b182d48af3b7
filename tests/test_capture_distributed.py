"""``Recorder.all_reduce`` across a real gloo process group of 3 processes (2 spawned)."""

import datetime

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

from plumb.capture import Recorder  # noqa: E402
from plumb.errors import InputError  # noqa: E402

WORLD = 3
LAYERS, EXPERTS, WINDOW, STEPS = 3, 5, 4, 6


def rank_ids(rank, step, layer):
    """Deterministic ids that differ per rank, step and layer: [T, 2] int64."""
    gen = torch.Generator().manual_seed(1000 * rank + 10 * step + layer)
    return torch.randint(0, EXPERTS, (3 + rank + step, 2), generator=gen)


def filled(rank, steps=STEPS):
    rec = Recorder(LAYERS, EXPERTS, window=WINDOW, num_sources=WORLD, source=rank)
    for step in range(steps):
        for layer in range(LAYERS):
            rec.record(layer, rank_ids(rank, step, layer))
        rec.step()
    rec.record(0, torch.tensor([[rank]]))  # an open step travels too
    return rec


def reduce_on_rank(rank, init_file):
    """Join the group, all_reduce, and return the results as plain lists (they cross a
    process boundary; shared-memory tensors would not outlive the child)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        local = filled(rank)
        before = local.window().clone()
        summed = local.all_reduce()
        mismatch = None
        try:
            filled(rank, steps=STEPS + rank).all_reduce()
        except InputError as err:
            mismatch = str(err)
        return (summed.window().tolist(), summed.loads().tolist(), summed.totals().tolist(),
                summed.current().tolist(), summed.traffic().tolist(), summed.steps,
                torch.equal(local.window(), before), mismatch)
    finally:
        dist.destroy_process_group()


def child(rank, init_file, results):
    results.put((rank, *reduce_on_rank(rank, init_file)))


def test_all_reduce_sums_windows_over_gloo_ranks(tmp_path):
    # Rank 0 is this process, the others spawned ones: a real multi-process gloo group.
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init_file = str(tmp_path / "init")
    procs = [ctx.Process(target=child, args=(rank, init_file, results))
             for rank in range(1, WORLD)]
    for proc in procs:
        proc.start()
    try:
        got = {0: reduce_on_rank(0, init_file)}
        for _ in procs:
            reply = results.get(timeout=120)
            got[reply[0]] = reply[1:]
    finally:
        for proc in procs:
            proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * (WORLD - 1)
    locals_ = [filled(rank) for rank in range(WORLD)]
    window = sum(rec.window() for rec in locals_)
    for rank in range(WORLD):
        win, loads, totals, current, traffic, steps, untouched, mismatch = got[rank]
        win, loads, totals, traffic = map(torch.tensor, (win, loads, totals, traffic))
        assert torch.equal(win, window)
        assert torch.equal(loads, window.sum(0))
        assert torch.equal(totals, sum(rec.totals() for rec in locals_))
        assert current[0] == [1] * WORLD + [0] * (EXPERTS - WORLD)
        # Each rank's counts land in its own source row: the full [L, G, E] traffic.
        for source in range(WORLD):
            assert torch.equal(traffic[:, source], locals_[source].totals())
        assert steps == STEPS and untouched
        assert mismatch is not None and f"steps in [{STEPS}, {STEPS + WORLD - 1}]" in mismatch


def test_all_reduce_without_process_group_is_an_input_error():
    with pytest.raises(InputError, match="torch.distributed"):
        Recorder(1, 2).all_reduce()
