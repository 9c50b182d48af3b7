"""vLLM offline-EPLB files: stats JSONL round trips, step ranges, malformed files, mappings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plumb
from plumb.capture.vllm_stats import physical_loads
from plumb.errors import InputError
from plumb.io import read_placement, read_stats, write_placement
from plumb.io.vllm import read_vllm_mapping, write_vllm_stats


def write_stats(path, window, p2l_map, first_step=1, **meta):
    write_vllm_stats(path, physical_loads(window, p2l_map), p2l_map, first_step, **meta)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(2, 6), st.integers(0, 4),
       st.integers(0, 2**31 - 1))
def test_stats_round_trip_through_any_replication(tmp_path_factory, steps, layers, experts,
                                                 redundant, seed):
    rng = np.random.default_rng(seed)
    window = rng.integers(0, 1000, size=(steps, layers, experts))
    extra = rng.integers(0, experts, size=(layers, redundant))
    p2l_map = np.concatenate([np.tile(np.arange(experts), (layers, 1)), extra], axis=1)
    p2l_map = np.take_along_axis(p2l_map, rng.permuted(np.tile(
        np.arange(experts + redundant), (layers, 1)), axis=1), axis=1)
    path = tmp_path_factory.mktemp("round_trip") / "stats.jsonl"
    write_stats(path, window, p2l_map, first_step=7, num_ranks=1)
    stats = read_stats(path)
    np.testing.assert_array_equal(stats.window, window)
    assert stats.window.dtype == np.int64
    np.testing.assert_array_equal(stats.placement, p2l_map)
    assert stats.meta["steps"] == list(range(7, 7 + steps))
    assert stats.meta["num_redundant_experts"] == redundant


def test_each_record_aggregates_through_its_own_p2l_map(tmp_path):
    # Two steps recorded under different placements (a rebalance in between).
    first = {"record_type": "eplb_load_stats", "version": 1, "step": 1,
             "expert_load": [[5, 1, 2, 3]], "p2l_map": [[0, 1, 2, 0]]}
    second = {"record_type": "eplb_load_stats", "version": 1, "step": 2,
              "expert_load": [[4, 4, 1, 0.5]], "p2l_map": [[2, 2, 1, 0]]}
    meta = {"record_type": "eplb_load_meta", "version": 1, "model": "m", "num_ranks": 2,
            "num_groups": 1, "num_nodes": 1, "num_layers": 1, "num_redundant_experts": 1}
    rewrite(tmp_path / "s.jsonl", [meta, first, second])
    stats = read_stats(tmp_path / "s.jsonl")
    np.testing.assert_array_equal(stats.window, [[[8, 1, 2]], [[0.5, 1, 8]]])
    assert stats.window.dtype == np.float64
    np.testing.assert_array_equal(stats.placement, [[2, 2, 1, 0]])
    assert stats.meta["model"] == "m" and stats.meta["num_ranks"] == 2


def test_step_ranges_are_half_open_over_step_ids(tmp_path):
    window = np.arange(5 * 2 * 3).reshape(5, 2, 3)
    write_stats(tmp_path / "s.jsonl", window, np.tile(np.arange(3), (2, 1)), first_step=100)
    stats = read_stats(tmp_path / "s.jsonl", steps=(101, 103))
    np.testing.assert_array_equal(stats.window, window[1:3])
    assert stats.meta["steps"] == [101, 102]
    assert read_stats(tmp_path / "s.jsonl", steps=range(103, 999)).meta["steps"] == [103, 104]
    assert read_stats(tmp_path / "s.jsonl", steps=(None, 101)).meta["steps"] == [100]
    with pytest.raises(InputError, match=r"no step in the selected range.*100\.\.104"):
        read_stats(tmp_path / "s.jsonl", steps=(200, 300))
    with pytest.raises(InputError, match="steps must be"):
        read_stats(tmp_path / "s.jsonl", steps="100:200")


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "stats.jsonl"
    write_stats(path, np.ones((3, 2, 4), dtype=np.int64), np.tile(np.arange(4), (2, 1)))
    return path


def test_truncated_last_line_is_named(good_file):
    text = good_file.read_text()
    good_file.write_text(text[: len(text) - 40])
    with pytest.raises(InputError, match=r"stats\.jsonl line 4: not valid JSON \(file truncated\?\)"):
        read_stats(good_file)


def test_missing_meta_record(good_file):
    rewrite(good_file, records(good_file)[1:])
    with pytest.raises(InputError, match=r"stats\.jsonl line 1: missing the 'eplb_load_meta'"):
        read_stats(good_file)


def test_empty_file_and_meta_only(good_file):
    good_file.write_text("")
    with pytest.raises(InputError, match="empty file"):
        read_stats(good_file)
    good_file.write_text(json.dumps({**records_meta(), "num_layers": 2}) + "\n")
    with pytest.raises(InputError, match="no 'eplb_load_stats' records"):
        read_stats(good_file)


def records_meta():
    return {"record_type": "eplb_load_meta", "version": 1, "model": "", "num_ranks": 1,
            "num_groups": 1, "num_nodes": 1, "num_layers": 2, "num_redundant_experts": 0}


@pytest.mark.parametrize("line, field, value, message", [
    (2, "record_type", "eplb_initial_mapping", r"line 2: field 'record_type' is "
                                               r"'eplb_initial_mapping', expected 'eplb_load_stats'"),
    (1, "record_type", "bogus", r"line 1: field 'record_type' is 'bogus', expected "
                                r"'eplb_load_meta' or 'eplb_load_stats'"),
    (3, "record_type", "eplb_load_meta", r"line 3: field 'record_type' is 'eplb_load_meta', "
                                         r"expected 'eplb_load_stats'"),
    (3, "expert_load", [[1, 1, "x", 1], [1, 1, 1, 1]], r"line 3: field 'expert_load' must hold "
                                                        r"numbers"),
    (3, "expert_load", [[1, 1, -1, 1], [1, 1, 1, 1]], r"line 3: field 'expert_load' holds "
                                                       r"negative counts"),
    (4, "expert_load", [[1, 1, 1], [1, 1, 1]], r"line 4: field 'expert_load' has shape \[2, 3\], "
                                               r"earlier records have \[2, 4\]"),
    (2, "expert_load", [[1, 1, 1, 1]], r"line 2: field 'expert_load' has 1 layers, the meta "
                                       r"record says num_layers = 2"),
    (3, "expert_load", [[1, 1, 1, 1], [1, 1]], r"line 3: field 'expert_load' is ragged"),
    (3, "p2l_map", [[0, 1, 2, 4], [0, 1, 2, 3]], r"line 3: field 'p2l_map' holds expert id 4, "
                                                 r"expected ids in \[0, 4\)"),
    (3, "p2l_map", [[0, 1, 2, 3]], r"line 3: field 'p2l_map' has shape \[1, 4\]"),
    (3, "step", "3", r"line 3: field 'step' must be an int >= 0"),
    (1, "num_layers", 0, r"line 1: field 'num_layers' must be an int >= 1"),
    (1, "version", 2, r"line 1: field 'version' is 2"),
])
def test_malformed_records_name_file_line_and_field(good_file, line, field, value, message):
    lines = records(good_file)
    lines[line - 1][field] = value
    rewrite(good_file, lines)
    with pytest.raises(InputError, match=r"stats\.jsonl " + message):
        read_stats(good_file)


def test_missing_fields_are_named(good_file):
    lines = records(good_file)
    del lines[1]["p2l_map"]
    rewrite(good_file, lines)
    with pytest.raises(InputError, match=r"line 2: missing field 'p2l_map'"):
        read_stats(good_file)
    lines[1]["p2l_map"] = lines[2]["p2l_map"]
    del lines[0]["num_redundant_experts"]
    rewrite(good_file, lines)
    with pytest.raises(InputError, match=r"line 1: missing field 'num_redundant_experts'"):
        read_stats(good_file)


def test_mapping_round_trip_matches_vllm_record(tmp_path):
    placement = plumb.solve(np.random.default_rng(3).integers(0, 99, (3, 12)), 4,
                            num_redundant=4)
    assert write_placement(tmp_path / "m.jsonl", placement) == "vllm"
    (record,) = records(tmp_path / "m.jsonl")
    assert record["record_type"] == "eplb_initial_mapping" and record["version"] == 1
    assert record["num_slots"] == 16 and record["num_redundant_experts"] == 4
    assert list(record["initial_global_assignments"]) == ["0", "1", "2"]
    np.testing.assert_array_equal(read_placement(tmp_path / "m.jsonl"), placement.phy2log)
    # The last p2l_map of a stats file is a placement too (the one in use).
    write_stats(tmp_path / "s.jsonl", np.ones((2, 3, 12), dtype=np.int64), placement.phy2log)
    np.testing.assert_array_equal(read_placement(tmp_path / "s.jsonl"), placement.phy2log)


def test_malformed_mapping(tmp_path):
    path = tmp_path / "m.jsonl"
    good = {"record_type": "eplb_initial_mapping", "version": 1, "num_redundant_experts": 1,
            "num_slots": 4, "initial_global_assignments": {"0": [0, 1, 2, 0], "1": [1, 2, 0, 1]}}
    for change, message in (({"num_slots": 5}, "rows have 4 slots, num_slots = 5"),
                            ({"initial_global_assignments": {"0": [0, 1, 2, 0], "x": [0, 1, 2, 0]}},
                             "key 'x' is not a layer number"),
                            ({"initial_global_assignments": {"0": [0, 1, 2, 0], "1": [0, 1]}},
                             "rows must be lists of the same length"),
                            ({"initial_global_assignments": {"0": [0, 1, 3, 0]}},
                             r"holds expert id 3, expected ids in \[0, 3\)")):
        rewrite(path, [{**good, **change}])
        with pytest.raises(InputError, match=r"m\.jsonl line 1: .*" + message):
            read_vllm_mapping(path)
    rewrite(path, [good])
    np.testing.assert_array_equal(read_vllm_mapping(path), [[0, 1, 2, 0], [1, 2, 0, 1]])


def test_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "m.jsonl"
    write_placement(path, np.array([[0, 1, 2, 0]]))
    before = path.read_bytes()
    with pytest.raises(InputError, match="negative expert id"):
        write_placement(path, np.array([[0, -1, 2, 0]]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
