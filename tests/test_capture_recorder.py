"""Recorder semantics: exact counts, ring wraparound, no saturation, errors, per-source counts."""

import sys
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import plumb  # noqa: E402
from plumb.capture import Recorder  # noqa: E402
from plumb.errors import InputError  # noqa: E402


def random_ids(gen, tokens, top_k, num_experts, dtype=torch.int64):
    return torch.randint(0, num_experts, (tokens, top_k), generator=gen).to(dtype)


def test_window_is_exact_and_oldest_first_through_wraparound():
    num_layers, num_experts, window = 3, 8, 4
    rec = Recorder(num_layers, num_experts, window=window)
    gen = torch.Generator().manual_seed(0)
    expected = []
    for step in range(11):
        counts = np.zeros((num_layers, num_experts), dtype=np.int64)
        for layer in range(num_layers):
            ids = random_ids(gen, 5 + step, 2, num_experts,
                             torch.int32 if layer % 2 else torch.int64)
            ids[0, 0] = -1  # padding is skipped
            rec.record(layer, ids)
            valid = ids[ids >= 0].numpy()
            counts[layer] += np.bincount(valid, minlength=num_experts)
        np.testing.assert_array_equal(rec.current().numpy(), counts)
        rec.step()
        expected.append(counts)
        got = rec.window().numpy()
        want = np.stack(expected[-window:])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(rec.loads().numpy(), want.sum(0))
        np.testing.assert_array_equal(rec.totals().numpy(), np.sum(expected, axis=0))
    assert rec.steps == 11
    assert rec.window().shape == (window, num_layers, num_experts)


@st.composite
def recording_sessions(draw):
    """(L, E, W, G, steps): each step a list of (layer, source, ids) records; ids may be -1."""
    layers, experts = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    window, sources = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    record = st.tuples(st.integers(0, layers - 1), st.integers(0, sources - 1),
                       st.lists(st.integers(-1, experts - 1), max_size=12))
    steps = draw(st.lists(st.lists(record, max_size=4), max_size=9))
    return layers, experts, window, sources, steps


@settings(max_examples=60, deadline=None, derandomize=True)
@given(recording_sessions(), st.booleans())
def test_recorder_matches_a_numpy_model(session, close_last):
    """Any sequence of record/step calls: window, loads, totals, current and traffic equal
    plain numpy bookkeeping of the same ids (the last step left open unless close_last)."""
    layers, experts, window, sources, steps = session
    rec = Recorder(layers, experts, window=window, num_sources=sources)
    closed, traffic = [], np.zeros((layers, sources, experts), dtype=np.int64)
    current = np.zeros((layers, experts), dtype=np.int64)
    for index, records in enumerate(steps):
        for layer, source, ids in records:
            rec.record(layer, torch.tensor(ids, dtype=torch.int64), source=source)
            valid = [i for i in ids if i >= 0]
            current[layer] += np.bincount(valid, minlength=experts).astype(np.int64)
            traffic[layer, source] += np.bincount(valid, minlength=experts).astype(np.int64)
        if index < len(steps) - 1 or close_last:
            rec.step()
            closed.append(current.copy())
            current[:] = 0
    kept = np.array(closed[-window:], dtype=np.int64).reshape(-1, layers, experts)
    assert rec.steps == len(closed)
    np.testing.assert_array_equal(rec.window().numpy(), kept)
    np.testing.assert_array_equal(rec.loads().numpy(), kept.sum(0))
    np.testing.assert_array_equal(rec.current().numpy(), current)
    total = sum(closed, current.copy())
    np.testing.assert_array_equal(rec.totals().numpy(), total)
    np.testing.assert_array_equal(rec.traffic().numpy(), traffic)


def test_counts_grow_past_the_window_size():
    rec = Recorder(1, 4, window=2)
    hot = torch.zeros(1000, 8, dtype=torch.int64)  # every pick goes to expert 0
    for _ in range(5):
        rec.record(0, hot)
        rec.step()
    # One step alone holds 8000 picks, far above W = 2: nothing is capped.
    assert rec.window()[:, 0, 0].tolist() == [8000, 8000]
    assert rec.loads()[0].tolist() == [16000, 0, 0, 0]
    assert rec.totals()[0].tolist() == [40000, 0, 0, 0]


def test_shapes_other_than_two_d_are_flattened():
    rec = Recorder(1, 5)
    rec.record(0, torch.tensor([[[0, 1], [1, 4]]]))  # [B, S, k]
    rec.record(0, torch.tensor([2, -1]))             # flat
    assert rec.current()[0].tolist() == [1, 2, 1, 0, 1]


def test_bad_inputs_raise_clear_errors_and_change_nothing():
    rec = Recorder(2, 4)
    rec.record(0, torch.tensor([[0, 1]]))
    before = rec.current().clone()
    with pytest.raises(InputError, match=r"layer 1: expert id 4 .* outside \[0, 4\)"):
        rec.record(1, torch.tensor([[0, 4]]))
    with pytest.raises(InputError, match=r"expert id -2"):
        rec.record(0, torch.tensor([[-2, 1]], dtype=torch.int32))
    for layer in (2, -1, 1.0, "0", None, True):
        with pytest.raises(InputError, match=r"layer must be an int in \[0, 2\)"):
            rec.record(layer, torch.tensor([[0]]))
    with pytest.raises(TypeError, match="int32 or int64"):
        rec.record(0, torch.tensor([[0.0]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        rec.record(0, np.array([[0]]))
    assert torch.equal(rec.current(), before)
    for kwargs in (dict(num_layers=0, num_experts=4), dict(num_layers=1, num_experts=-1),
                   dict(num_layers=1, num_experts=4, window=0),
                   dict(num_layers=1, num_experts=4, window=2.5),
                   dict(num_layers=1, num_experts=4, source=1),
                   dict(num_layers=1, num_experts=4, num_sources=2, source=2),
                   dict(num_layers=2, num_experts=4, layer_names=["a"])):
        with pytest.raises(InputError):
            Recorder(**kwargs)


def test_ids_on_another_device_are_refused():
    rec = Recorder(1, 4, device="cpu")
    with pytest.raises(InputError, match="meta"):
        rec.record(0, torch.zeros(2, 2, dtype=torch.int64, device="meta"))


def test_deferred_path_skips_bad_ids_and_reports_them_on_read():
    # The accelerator path (no host sync in record) exercised on CPU.
    rec = Recorder(1, 4, device="cpu")
    rec._deferred = True
    rec.record(0, torch.tensor([[0, 1], [1, 3]]))
    rec.step()
    assert rec.loads()[0].tolist() == [1, 2, 0, 1]
    rec.record(0, torch.tensor([[0, 7]]))
    with pytest.raises(InputError, match="1 recorded expert ids were outside"):
        rec.loads()


def test_record_and_step_never_read_device_data():
    # Meta tensors have no data: any host sync (.item(), bool(), .tolist()) raises on them,
    # so record() and step() running here is the accelerator path's no-sync guarantee.
    rec = Recorder(2, 8, device="meta", num_sources=2)
    ids = torch.empty(5, 2, dtype=torch.int64, device="meta")
    for _ in range(3):
        rec.record(0, ids)
        rec.record(1, ids.to(torch.int32), source=1)
        rec.step()
    assert rec.steps == 3 and rec._deferred
    with pytest.raises(RuntimeError, match="meta"):
        rec.loads()  # readers do sync: they check the deferred invalid-id count


def test_per_source_traffic():
    rec = Recorder(2, 3, num_sources=4, source=1)
    rec.record(0, torch.tensor([[0, 1]]))
    rec.record(0, torch.tensor([[2, 2]]), source=3)
    rec.record(1, torch.tensor([[1]]))
    rec.step()
    traffic = rec.traffic()
    assert traffic.shape == (2, 4, 3)
    assert traffic[0, 1].tolist() == [1, 1, 0] and traffic[0, 3].tolist() == [0, 0, 2]
    assert traffic[1, 1].tolist() == [0, 1, 0]
    assert torch.equal(traffic.sum(1), rec.totals())
    before = (rec.current().clone(), rec.totals().clone(), rec.traffic().clone())
    for source in (4, -1, 1.0, True):
        with pytest.raises(InputError, match="source must be an int"):
            rec.record(0, torch.tensor([[0]]), source=source)
    # A refused source counted nothing anywhere (counts and traffic stay consistent).
    for read, old in zip((rec.current(), rec.totals(), rec.traffic()), before):
        assert torch.equal(read, old)
    rec.record(0, torch.tensor([[0]]), source=np.int64(2))
    assert rec.traffic()[0, 2].tolist() == [1, 0, 0]
    with pytest.raises(InputError, match="per-source accounting is off"):
        Recorder(1, 3).traffic()
    with pytest.raises(InputError, match="source must be an int"):
        Recorder(1, 3, num_sources=2, source=1.0)


def test_first_record_under_inference_mode_keeps_recording_outside_it():
    from plumb.capture.tiny_models import tiny_model

    model = tiny_model("qwen3_moe", num_layers=2)
    with plumb.profile(model) as rec:
        with torch.inference_mode():
            model(torch.randint(0, 64, (1, 4)))
        # Buffers made in inference mode could not be stepped or updated outside it.
        with torch.no_grad():
            model(torch.randint(0, 64, (1, 4)))
        assert rec.steps == 2
        assert int(rec.window().sum()) == 2 * 2 * 4 * model.config.num_experts_per_tok
        rec.reset()
        assert rec.steps == 0


def test_reset_and_empty_reads():
    rec = Recorder(2, 3, window=5)
    assert rec.window().shape == (0, 2, 3) and rec.device is None
    assert rec.loads().tolist() == [[0, 0, 0]] * 2
    rec.record(1, torch.tensor([[2]]))
    rec.step()
    rec.reset()
    assert rec.steps == 0 and rec.totals().sum() == 0 and rec.window().shape == (0, 2, 3)
    assert rec.meta() == {"num_layers": 2, "num_experts": 3, "window": 5, "steps": 0}


def test_import_plumb_does_not_import_torch_but_exports_capture():
    code = ("import sys, plumb; assert 'torch' not in sys.modules; "
            "assert plumb.Recorder is plumb.capture.Recorder; print(plumb.attach.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "attach"
    assert {"Recorder", "attach", "profile"} <= set(plumb.__all__)


@pytest.fixture
def accelerator_path(monkeypatch):
    """CPU Recorders take the accelerator path (staged ids, deferred validation)."""
    monkeypatch.setattr(Recorder, "_accelerated", staticmethod(lambda device: True))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_staged_ids_count_exactly_like_the_direct_path(data):
    # Calls of every size around the staged row (2048 ids), several per layer and step so
    # that rows fill up mid-step, int32 and int64, and reads mid-step.
    import plumb.capture.recorder as recorder_module

    num_layers, num_experts = 3, 7
    sources = data.draw(st.sampled_from([None, 3]))
    # Hypothesis runs the body many times per test: a patch per example, not the fixture.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Recorder, "_accelerated", staticmethod(lambda device: True))
        staged = Recorder(num_layers, num_experts, window=3, device="cpu", num_sources=sources)
    direct = Recorder(num_layers, num_experts, window=3, num_sources=sources)
    assert staged._staged is not None and direct._staged is None
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    sizes = st.sampled_from([1, 5, 64, 1000, recorder_module.STAGED_IDS // 8, 300, 257 * 8])
    for _ in range(data.draw(st.integers(1, 5))):
        for _ in range(data.draw(st.integers(0, 6))):
            layer = data.draw(st.integers(0, num_layers - 1))
            ids = torch.randint(-1, num_experts, (data.draw(sizes), 1), generator=gen)
            ids = ids.to(data.draw(st.sampled_from([torch.int32, torch.int64])))
            source = None if sources is None else data.draw(st.integers(0, sources - 1))
            staged.record(layer, ids, source=source)
            direct.record(layer, ids, source=source)
        if data.draw(st.booleans()):
            assert torch.equal(staged.current(), direct.current())
            assert torch.equal(staged.totals(), direct.totals())
            if sources is not None:
                assert torch.equal(staged.traffic(), direct.traffic())
        staged.step()
        direct.step()
    assert torch.equal(staged.window(), direct.window())
    assert torch.equal(staged.totals(), direct.totals())
    if sources is not None:
        assert torch.equal(staged.traffic(), direct.traffic())


def test_staged_path_checks_ids_and_raises_bad_ones_on_read(accelerator_path):
    rec = Recorder(2, 4)
    rec.record(0, torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="int32 or int64"):
        rec.record(0, torch.tensor([[0.0]]))
    with pytest.raises(InputError, match="layer 1: out is on cpu but topk_ids is on meta"):
        rec.record(1, torch.zeros(2, 2, dtype=torch.int64, device="meta"))
    assert rec.current()[0].tolist() == [1, 1, 0, 0]
    rec.record(1, torch.tensor([[3, 9], [-5, -1]]))
    with pytest.raises(InputError, match="2 recorded expert ids were outside"):
        rec.current()
    rec.reset()
    rec.record(1, torch.tensor([[3, 2]]))
    rec.reset()
    assert rec.current().sum() == 0 and rec.steps == 0


def test_staged_per_source_counts_skip_bad_ids_once(accelerator_path):
    rec = Recorder(1, 4, num_sources=2)
    rec.record(0, torch.tensor([[3, 9], [-5, 1]]), source=1)
    rec.record(0, torch.tensor([[0, -1]]), source=0)
    with pytest.raises(InputError, match="^2 recorded expert ids were outside"):
        rec.traffic()
    with pytest.raises(InputError, match="source must be an int in"):
        rec.record(0, torch.tensor([[0]]), source=2)
    rec._num_invalid.zero_()
    rec.step()
    rec._num_invalid.zero_()
    assert rec.traffic()[0].tolist() == [[1, 0, 0, 0], [0, 1, 0, 1]]
    assert rec.window()[0, 0].tolist() == [1, 1, 0, 1]


def test_staged_record_launches_one_copy(accelerator_path):
    # On the meta device every op is what a GPU would launch: record() is one copy into the
    # staged row; step() counts every layer at once.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    rec = Recorder(58, 256, device="meta")
    ids = torch.empty(64, 8, dtype=torch.int64, device="meta")
    with Ops() as ops:
        rec.record(3, ids)
    assert [n for n in ops.names if n not in ("aten.select", "aten.slice", "aten.view")] \
        == ["aten.copy_"]
    with Ops() as ops:
        rec.step()
    assert ops.names.count("plumb.expert_histogram_deferred_") == 1


def test_record_under_torch_compile_counts_at_once(accelerator_path):
    rec = Recorder(2, 8, device="cpu")

    @torch.compile(backend="aot_eager")
    def forward(ids):
        rec.record(0, ids)
        return ids.sum()

    ids = torch.randint(0, 8, (16, 2), generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        forward(ids)
    # Traced code must not bake the host-side fill counters in: the direct path ran.
    assert rec._staged_fill == [0, 0]
    assert torch.equal(rec.current()[0], 3 * torch.bincount(ids.reshape(-1), minlength=8))


def test_readers_hand_out_copies():
    # Without staged ids the readers work from the recorder's own buffers: what they return
    # must still be the caller's to write.
    recorder = Recorder(2, 4, window=3, device="cpu", num_sources=2)
    recorder.record(0, torch.tensor([[0, 1], [1, 3]]), source=1)
    before = (recorder.current(), recorder.totals(), recorder.traffic())
    for tensor in (recorder.current(), recorder.totals(), recorder.traffic()):
        tensor.add_(100)
    after = (recorder.current(), recorder.totals(), recorder.traffic())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
