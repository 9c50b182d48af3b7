"""Damaged, unreadable and out-of-range files: each one InputError naming the file, never a
raw exception; what the writers produce is readable by other users and by the readers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plumb.errors import InputError
from plumb.io import read_placement, read_stats, write_placement
from plumb.io.atomic import atomic_write
from plumb.io.vllm import write_vllm_stats

PLUMB = str(Path(sys.executable).with_name("plumb"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_umask_mode_or_keep_the_replaced_one(tmp_path):
    old_mask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.txt"
        with atomic_write(fresh) as handle:
            handle.write("x")
        assert _mode(fresh) == 0o644  # mkstemp alone gives 0o600: unreadable to a server
        fresh.chmod(0o640)
        with atomic_write(fresh) as handle:
            handle.write("y")
        assert _mode(fresh) == 0o640 and fresh.read_text() == "y"
        os.umask(0o077)
        write_placement(tmp_path / "p.jsonl", [[0, 1, 2, 3]])
        assert _mode(tmp_path / "p.jsonl") == 0o600
    finally:
        os.umask(old_mask)


def test_a_missing_directory_is_named_not_the_temp_file(tmp_path):
    target = tmp_path / "no-dir" / "p.jsonl"
    with pytest.raises(FileNotFoundError) as caught:
        write_placement(target, [[0, 1]])
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def _window_npz(path: Path) -> None:
    np.savez(path, window=np.ones((3, 4, 5), dtype=np.int64))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable .npz archive"),
    ("empty", "not a readable .npz archive"),
    ("flip", "field 'window' cannot be read"),
    ("npy", "holds a single array"),
])
def test_damaged_npz(tmp_path, damage, message):
    good = tmp_path / "good.npz"
    _window_npz(good)
    data = good.read_bytes()
    path = tmp_path / "bad.npz"
    if damage == "truncate":
        path.write_bytes(data[:300])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip":
        # Inside the window member's data: the archive opens, the member's CRC fails.
        damaged = bytearray(data)
        damaged[100] ^= 0xFF
        path.write_bytes(bytes(damaged))
    else:
        with open(path, "wb") as handle:
            np.save(handle, np.ones((2, 3)))
    with pytest.raises(InputError, match=message) as caught:
        read_stats(path)
    assert str(path) in str(caught.value)
    if damage != "flip":
        with pytest.raises(InputError, match=message):
            read_placement(path)


def test_npz_fields_checked(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, loads=np.zeros((0, 3)))
    with pytest.raises(InputError, match="field 'loads' is empty"):
        read_stats(path)
    np.savez(path, window=np.ones((2, 3, 4), dtype=np.int64), loads=np.ones((3, 0)))
    with pytest.raises(InputError, match="field 'loads' is empty"):
        read_stats(path)
    np.savez(path, loads=np.array([[1, 2]], dtype=object))
    with pytest.raises(InputError, match="field 'loads' cannot be read"):
        read_stats(path)
    for steps in (["a", "b"], [None, None], [2 ** 70, 1], [1, 2, 3], [True, False]):
        np.savez(path, window=np.ones((2, 3, 4), dtype=np.int64),
                 meta=np.array(json.dumps({"steps": steps})))
        with pytest.raises(InputError, match="'steps' must list one int64 step id per step"):
            read_stats(path)
    # plumb run writes the number of steps recorded there: steps are numbered then.
    np.savez(path, window=np.ones((2, 3, 4), dtype=np.int64),
             meta=np.array(json.dumps({"steps": 7})))
    assert read_stats(path).meta["steps"] == [0, 1]
    np.savez(path, window=np.ones((2, 3, 4), dtype=np.int64),
             meta=np.array(json.dumps({"steps": [10, 11]})))
    assert read_stats(path, steps=(11, None)).meta["steps"] == [11]


def test_unreadable_text_files(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"logical_count": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match="deep.json: nested too deeply"):
        read_stats(deep)
    deep_jsonl = tmp_path / "deep.jsonl"
    deep_jsonl.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        read_placement(deep_jsonl)
    latin = tmp_path / "loads.csv"
    latin.write_bytes(b"1,2\n\xff\xfe,3\n")
    with pytest.raises(InputError, match="loads.csv: not UTF-8 text"):
        read_stats(latin)
    for format in ("vllm", "sglang", "csv", "npy", "plumb"):
        with pytest.raises(InputError, match="Is a directory|TensorRT|a directory"):
            read_stats(tmp_path, format=format)


def test_counts_past_int64_are_refused_not_wrapped(tmp_path):
    npy = tmp_path / "u.npy"
    np.save(npy, np.array([[10, 2 ** 64 - 1]], dtype=np.uint64))
    with pytest.raises(InputError, match=r"above 2\*\*63 - 1"):
        read_stats(npy)
    sglang = tmp_path / "s.json"
    sglang.write_text(json.dumps({"logical_count": [[[2 ** 63, 2 ** 63 + 1]]]}))
    with pytest.raises(InputError, match=r"above 2\*\*63 - 1"):
        read_stats(sglang)
    sglang.write_text(json.dumps({"logical_count": [[[2 ** 70, 1]]]}))
    with pytest.raises(InputError, match="beyond 64 bits"):
        read_stats(sglang)


def test_vllm_integer_sums_exact_and_bounded(tmp_path):
    path = tmp_path / "stats.jsonl"
    p2l = np.array([[0, 1, 0]])
    # Two replicas of expert 0 whose float64 sum would round: 2**53 + 1.
    write_vllm_stats(path, np.array([[[2 ** 52, 5, 2 ** 52 + 1]]]), p2l, first_step=0)
    window = read_stats(path).window
    assert window.dtype == np.int64 and window[0, 0, 0] == 2 ** 53 + 1
    write_vllm_stats(path, np.array([[[2 ** 62, 5, 2 ** 62]]]), p2l, first_step=0)
    with pytest.raises(InputError, match="past int64"):
        read_stats(path)


def test_placement_writers_refuse_what_readers_reject(tmp_path):
    with pytest.raises(InputError, match=r"num_experts = 6 is more than the 4 slots"):
        write_placement(tmp_path / "m.jsonl", [[0, 1, 2, 3]], num_experts=6)
    with pytest.raises(InputError, match="num_experts must be an int"):
        write_placement(tmp_path / "m.jsonl", [[0, 1]], num_experts="2")
    with pytest.raises(InputError, match="layer_ids must be distinct"):
        write_placement(tmp_path / "p.yaml", [[0, 1], [1, 0]], layer_ids=[5, 5])
    with pytest.raises(InputError, match="layer_ids must be ints"):
        write_placement(tmp_path / "p.yaml", [[0, 1], [1, 0]], layer_ids=[0, True])
    assert list(tmp_path.iterdir()) == []
    write_placement(tmp_path / "p.yaml", [[0, 1], [1, 0]], layer_ids=[7, 3])
    assert read_placement(tmp_path / "p.yaml").tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("keys, message", [
    ("  0: [0, 1]\n  '0': [1, 0]\n", "names layer 0 twice"),
    ("  true: [0, 1]\n", "key True is not a layer number"),
    ("  0.5: [0, 1]\n", "key 0.5 is not a layer number"),
    ("  '-1': [0, 1]\n", "key '-1' is not a layer number"),
])
def test_layer_keys_are_whole_distinct_numbers(tmp_path, keys, message):
    path = tmp_path / "p.yaml"
    path.write_text("num_slots: 2\ninitial_global_assignments:\n" + keys)
    with pytest.raises(InputError, match=message):
        read_placement(path)


def test_cli_reports_damaged_files_in_one_line(tmp_path):
    path = tmp_path / "t.npz"
    _window_npz(tmp_path / "good.npz")
    path.write_bytes((tmp_path / "good.npz").read_bytes()[:300])
    for command in ("inspect", "solve"):
        result = subprocess.run([PLUMB, command, str(path), *(["--ranks", "1"]
                                                              if command == "solve" else [])],
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "not a readable .npz" in result.stderr
