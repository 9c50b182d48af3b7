"""Recorder semantics: exact counts, ring wraparound, no saturation, errors, per-source counts."""

import sys
import subprocess

import numpy as np
import pytest

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
    with pytest.raises(InputError, match="source must be an int"):
        rec.record(0, torch.tensor([[0]]), source=4)
    with pytest.raises(InputError, match="per-source accounting is off"):
        Recorder(1, 3).traffic()


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
