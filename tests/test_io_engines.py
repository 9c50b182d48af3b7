"""SGLang, TensorRT-LLM, plumb and plain-matrix files: round trips, detection, malformed files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import plumb
from plumb.errors import InputError
from plumb.io import (PlumbStats, detect_format, read_placement, read_stats, save_plumb_npz,
                      write_placement)
from plumb.io.trtllm import write_trtllm_stats


def window_of(steps=4, layers=3, experts=8, seed=0):
    return np.random.default_rng(seed).integers(0, 500, size=(steps, layers, experts))


def placement_of(window, ranks=4, redundant=4):
    return plumb.solve(window, ranks, num_redundant=redundant)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.sampled_from([".jsonl", ".json", ".pt", ".yaml", ".npz", ".npy"]), st.integers(1, 4),
       st.integers(1, 9), st.integers(0, 6), st.integers(0, 2**31 - 1))
def test_every_placement_format_round_trips(tmp_path_factory, suffix, layers, experts, extra,
                                            seed):
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.r_[np.arange(experts), rng.integers(0, experts, extra)])
            for _ in range(layers)]
    phy2log = np.array(rows, dtype=np.int64)
    path = tmp_path_factory.mktemp("placement") / f"placement{suffix}"
    write_placement(path, phy2log, num_experts=experts)
    back = read_placement(path)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, phy2log)


# ---------------------------------------------------------------- SGLang

def test_sglang_stat_dump_pt_as_sglang_writes_it(tmp_path):
    window = window_of()
    torch.save({"rank": 0, "logical_count": torch.from_numpy(window),
                "average_utilization_rate_over_window": 0.5}, tmp_path / "dump.pt")
    stats = read_stats(tmp_path / "dump.pt")
    np.testing.assert_array_equal(stats.window, window)
    assert stats.meta["source_format"] == "sglang" and stats.meta["steps"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(read_stats(tmp_path / "dump.pt", steps=(2, None)).window,
                                  window[2:])


def test_sglang_init_expert_location_json(tmp_path):
    window = window_of()
    (tmp_path / "loads.json").write_text(json.dumps({"logical_count": window[0].tolist()}))
    stats = read_stats(tmp_path / "loads.json")
    np.testing.assert_array_equal(stats.loads, window[0])
    assert stats.window is None
    with pytest.raises(InputError, match=r"loads\.json: field 'logical_count' is \[L, E\] \(no "
                                         r"steps\); drop the step range"):
        read_stats(tmp_path / "loads.json", steps=(0, 1))


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_placement_round_trip(tmp_path, suffix):
    placement = placement_of(window_of())
    path = tmp_path / f"location{suffix}"
    assert write_placement(path, placement) == "sglang"
    np.testing.assert_array_equal(read_placement(path), placement.phy2log)
    data = (torch.load(path, weights_only=True) if suffix == ".pt"
            else json.loads(path.read_text()))
    assert list(data) == ["physical_to_logical_map"]
    if suffix == ".pt":
        assert data["physical_to_logical_map"].dtype == torch.int64


def test_sglang_malformed(tmp_path):
    path = tmp_path / "x.json"
    for content, message in (
            ("{", r"x\.json: not valid JSON"),
            ("[1, 2]", r"x\.json: expected a dict with 'physical_to_logical_map' or "
                       r"'logical_count', got list"),
            ('{"rank": 0}', r"x\.json: missing field 'logical_count' \(loads\); found 'rank'"),
            ('{"logical_count": [[1, -2]]}', r"x\.json: field 'logical_count' holds negative"),
            ('{"logical_count": [[1, "a"]]}', r"x\.json: field 'logical_count' must hold numbers"),
            ('{"logical_count": [1, 2]}', r"x\.json: field 'logical_count' must be \[L, E\] or "
                                          r"\[steps, L, E\]"),
            ('{"logical_count": [[1, 2]], "physical_to_logical_map": [[0, 1], [1, 0]]}',
             r"x\.json: field 'physical_to_logical_map' has 2 layers, 'logical_count' has 1")):
        path.write_text(content)
        with pytest.raises(InputError, match=message):
            read_stats(path)
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad\.pt: not a readable torch \.pt file"):
        read_stats(tmp_path / "bad.pt")


# ---------------------------------------------------------------- TensorRT-LLM

def test_trtllm_directory_sums_ranks_and_keeps_layer_ids(tmp_path):
    window = window_of(steps=5, layers=2, experts=6)
    layer_ids = [3, 7]
    # Two ranks, each routing part of the tokens; other dump files in the directory are ignored.
    part = window // 3
    for rank, counts in enumerate((part, window - part)):
        save_file({f"{100 + t}_{layer_ids[l]}": counts[t, l].astype(np.int32)
                   for t in range(5) for l in range(2)}, str(tmp_path / f"rank{rank}.safetensors"))
    save_file({"100_3": np.zeros((6, 6), np.int32)}, str(tmp_path / "cooccurrence_rank0.safetensors"))
    (tmp_path / "meta_info.json").write_text(json.dumps({"num_experts": 6,
                                                         "num_experts_per_token": 2}))
    assert detect_format(tmp_path) == "trtllm"
    stats = read_stats(tmp_path)
    np.testing.assert_array_equal(stats.window, window)
    assert stats.meta["layer_ids"] == layer_ids and stats.meta["num_ranks"] == 2
    assert stats.meta["steps"] == list(range(100, 105))
    assert read_stats(tmp_path, steps=(101, 103)).meta["steps"] == [101, 102]
    calls = []
    read_stats(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]


def test_trtllm_malformed_directories(tmp_path):
    write_trtllm_stats(tmp_path, window_of(steps=2, layers=2, experts=4), 2)
    meta = json.loads((tmp_path / "meta_info.json").read_text())
    (tmp_path / "meta_info.json").write_text(json.dumps({**meta, "num_experts": 5}))
    with pytest.raises(InputError, match=r"rank0\.safetensors key '0_0': field 'counts' has 4 "
                                         r"experts, meta_info\.json says num_experts = 5"):
        read_stats(tmp_path)
    (tmp_path / "meta_info.json").write_text(json.dumps({"num_experts": 4}))
    with pytest.raises(InputError, match=r"meta_info\.json: field 'num_experts_per_token' must be"):
        read_stats(tmp_path)
    (tmp_path / "meta_info.json").write_text(json.dumps(meta))
    save_file({"0_0": np.ones(4, np.int32), "1_1": np.ones(4, np.int32)},
              str(tmp_path / "rank0.safetensors"))
    with pytest.raises(InputError, match=r"iteration 0 has no counts for layers \[1\]"):
        read_stats(tmp_path)
    save_file({"layer0": np.ones(4, np.int32)}, str(tmp_path / "rank0.safetensors"))
    with pytest.raises(InputError, match=r"key 'layer0': expected keys \"\{iter\}_\{layer\}\""):
        read_stats(tmp_path)
    (tmp_path / "meta_info.json").unlink()
    with pytest.raises(InputError, match="missing meta_info.json"):
        read_stats(tmp_path)


def test_trtllm_yaml_round_trip_with_model_layer_ids(tmp_path):
    placement = placement_of(window_of())
    path = tmp_path / "moe_load_balancer.yaml"
    assert write_placement(path, placement, layer_ids=[1, 2, 5]) == "trtllm"
    config = yaml.safe_load(path.read_text())
    assert config["num_slots"] == 12 and config["layer_updates_per_iter"] == 0
    assert list(config["initial_global_assignments"]) == [1, 2, 5]
    # Lists in flow style, one line per layer, as TensorRT-LLM's generator writes them.
    assert "  5: [" in path.read_text()
    np.testing.assert_array_equal(read_placement(path), placement.phy2log)
    path.write_text("num_slots: 3\ninitial_global_assignments:\n  0: [0, 1]\n")
    with pytest.raises(InputError, match=r"field 'num_slots' is 3, the assignments have 2"):
        read_placement(path)
    path.write_text("num_slots: [\n")
    with pytest.raises(InputError, match=r"moe_load_balancer\.yaml: not valid YAML"):
        read_placement(path)


# ---------------------------------------------------------------- plumb, npy, csv

def test_plumb_npz_placement_and_recorded_placement(tmp_path):
    window = window_of()
    placement = placement_of(window)
    assert write_placement(tmp_path / "p.npz", placement, meta={"policy": "plumb"}) == "plumb"
    np.testing.assert_array_equal(read_placement(tmp_path / "p.npz"), placement.phy2log)
    save_plumb_npz(tmp_path / "s.npz", PlumbStats(window=window, placement=placement.phy2log,
                                                  meta={"steps": [5, 6, 7, 8]}))
    stats = read_stats(tmp_path / "s.npz", steps=(6, 8))
    np.testing.assert_array_equal(stats.window, window[1:3])
    assert stats.meta["steps"] == [6, 7]
    np.testing.assert_array_equal(stats.placement, placement.phy2log)
    np.testing.assert_array_equal(read_placement(tmp_path / "s.npz"), placement.phy2log)


def test_plain_matrices(tmp_path):
    window = window_of()
    np.save(tmp_path / "w.npy", window)
    np.testing.assert_array_equal(read_stats(tmp_path / "w.npy").window, window)
    (tmp_path / "l.csv").write_text("# loads\n1,2,3\n4,5,6\n")
    stats = read_stats(tmp_path / "l.csv")
    np.testing.assert_array_equal(stats.loads, [[1, 2, 3], [4, 5, 6]])
    assert stats.loads.dtype == np.int64
    (tmp_path / "l.csv").write_text("1,2,3\n4,x,6\n")
    with pytest.raises(InputError, match=r"l\.csv line 2: 'x' is not a number"):
        read_stats(tmp_path / "l.csv")
    (tmp_path / "l.csv").write_text("1,2,3\n4,6\n")
    with pytest.raises(InputError, match=r"l\.csv line 2: 2 columns, earlier rows have 3"):
        read_stats(tmp_path / "l.csv")
    np.save(tmp_path / "neg.npy", -window)
    with pytest.raises(InputError, match=r"neg\.npy: field 'loads' holds negative counts"):
        read_stats(tmp_path / "neg.npy")
    placement = placement_of(window)
    assert write_placement(tmp_path / "p.npy", placement) == "npy"
    np.testing.assert_array_equal(read_placement(tmp_path / "p.npy"), placement.phy2log)


def test_whole_floats_past_int64_stay_floats(tmp_path):
    # Whole-number floats become int64 counts, but 1e308 cast to int64 is garbage (it read
    # as a negative count): such loads stay float64 and solve() reports their size.
    huge = np.full((2, 8), 1e308)
    np.save(tmp_path / "huge.npy", huge)
    stats = read_stats(tmp_path / "huge.npy")
    assert stats.loads.dtype == np.float64
    np.testing.assert_array_equal(stats.loads, huge)
    with pytest.raises(InputError, match="loads are too large"):
        plumb.solve(stats.loads, 4)
    np.save(tmp_path / "big.npy", np.full((2, 8), 2.0 ** 62))
    assert read_stats(tmp_path / "big.npy").loads.dtype == np.int64


def test_detection_and_forced_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"record_type": "eplb_load_meta"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps({"logical_count": [[1, 2]]}))
    assert detect_format(tmp_path / "a.json") == "vllm"
    assert detect_format(tmp_path / "b.json") == "sglang"
    (tmp_path / "loads.txt").write_text("1,2\n3,4\n")
    with pytest.raises(InputError, match=r"loads\.txt: cannot tell the format from the name"):
        read_stats(tmp_path / "loads.txt")
    np.testing.assert_array_equal(read_stats(tmp_path / "loads.txt", format="csv").loads,
                                  [[1, 2], [3, 4]])
    with pytest.raises(InputError, match="format must be one of"):
        read_stats(tmp_path / "loads.txt", format="excel")
    with pytest.raises(InputError, match=r"nothing\.jsonl: no such file or directory"):
        read_stats(tmp_path / "nothing.jsonl")
    with pytest.raises(InputError, match=r"out\.bin: cannot tell the output format"):
        write_placement(tmp_path / "out.bin", np.array([[0, 1]]))
    assert not (tmp_path / "out.bin").exists()
