"""``plumb solve`` as a subprocess on files the tests write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

import plumb
from plumb.capture.vllm_stats import physical_loads
from plumb.data import example_stats_path
from plumb.io import read_placement, read_stats
from plumb.io.trtllm import write_trtllm_stats
from plumb.io.vllm import write_vllm_stats

PLUMB = str(Path(sys.executable).with_name("plumb"))


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PLUMB, "solve", *map(str, args)], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


def lognormal_window(steps=8, layers=4, experts=16, seed=0):
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 1.0, size=(layers, experts))
    popularity /= popularity.sum(axis=1, keepdims=True)
    return np.stack([[rng.multinomial(256, p) for p in popularity] for _ in range(steps)])


def test_bundled_example_prints_the_summary_and_writes_vllm_mapping(tmp_path):
    result = run("example", "--ranks", 8, "--redundant", 8, "-o", tmp_path / "mapping.jsonl",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "16 layers x 64 experts, 32 steps" in lines[0]
    assert "72 slots per layer (8 redundant)" in lines[1]
    table = [line.split() for line in lines if line[:5].strip().isdigit()]
    assert [int(row[0]) for row in table] == list(range(16))
    before, after = np.array([[float(row[2]), float(row[3])] for row in table]).T
    assert (after > before).all() and (after > 0.99).all()
    assert any(line.startswith("balancedness ") for line in lines)
    (record,) = [json.loads(line) for line in (tmp_path / "mapping.jsonl").read_text().splitlines()]
    assert record["record_type"] == "eplb_initial_mapping" and record["num_slots"] == 72
    phy2log = read_placement(tmp_path / "mapping.jsonl")
    stats = read_stats(example_stats_path())
    metrics = plumb.evaluate(phy2log, stats.window, 8)
    assert f"-> {metrics.balancedness:.4f}" in result.stdout


def test_vllm_stats_with_meta_defaults_steps_and_moves(tmp_path):
    window = lognormal_window()
    current = np.tile(np.arange(16), (4, 1))
    write_vllm_stats(tmp_path / "stats.jsonl", physical_loads(window, current), current, 1,
                     num_ranks=4, num_nodes=2, num_groups=4)
    result = run(tmp_path / "stats.jsonl", "--steps", "3:7", "--redundant", 4, "--format",
                 "sglang", "-o", tmp_path / "out.bin")
    assert result.returncode == 0, result.stderr
    # num_ranks / num_nodes / num_groups come from the meta record; 4 of 8 steps are kept.
    assert "4 steps" in result.stdout and "4 ranks, 2 node(s), 20 slots" in result.stdout
    assert "moves " in result.stdout and "traffic (uniform sources)" in result.stdout
    phy2log = np.array(json.loads((tmp_path / "out.bin").read_text())["physical_to_logical_map"])
    expected = plumb.solve(window[2:6], plumb.Topology.cluster(2, 2), num_redundant=4,
                           num_groups=4, previous=current)
    np.testing.assert_array_equal(phy2log, expected.phy2log)


def test_trtllm_directory_to_yaml_keeps_layer_ids_and_previous(tmp_path):
    window = lognormal_window(seed=1)
    write_trtllm_stats(tmp_path / "stats", window, 2, first_iter=50, layer_ids=[1, 3, 5, 7])
    previous = plumb.solve(window[:2], 4, num_redundant=4)
    np.save(tmp_path / "old.npy", previous.phy2log)
    result = run(tmp_path / "stats", "--ranks", 4, "--previous", tmp_path / "old.npy",
                 "--policy", "deepseek", "--bytes-per-expert", 2**30, "-o",
                 tmp_path / "eplb.yaml")
    assert result.returncode == 0, result.stderr
    assert "20 slots per layer (4 redundant)" in result.stdout  # R from --previous
    assert "GiB" in result.stdout
    config = yaml.safe_load((tmp_path / "eplb.yaml").read_text())
    assert list(config["initial_global_assignments"]) == [1, 3, 5, 7]
    expected = plumb.solve(window, 4, num_redundant=4, policy="deepseek",
                           previous=previous.phy2log)
    np.testing.assert_array_equal(read_placement(tmp_path / "eplb.yaml"), expected.phy2log)


def test_user_errors_exit_2_with_one_line(tmp_path):
    np.save(tmp_path / "loads.npy", lognormal_window()[0])
    (tmp_path / "bad.jsonl").write_text('{"record_type": "eplb_load_meta", "version": 1,\n')
    cases = [
        ((tmp_path / "missing.jsonl", "--ranks", 4), "missing.jsonl: no such file or directory"),
        ((tmp_path / "bad.jsonl", "--ranks", 4), "bad.jsonl line 1: not valid JSON"),
        ((tmp_path / "loads.npy",), "--ranks G is required"),
        ((tmp_path / "loads.npy", "--ranks", 3), "must be divisible by G = 3"),
        ((tmp_path / "loads.npy", "--ranks", 4, "--format", "vllm"), "--format needs -o OUT"),
        ((tmp_path / "loads.npy", "--ranks", 4, "-o", tmp_path / "x.txt"),
         "cannot tell the output format"),
        ((tmp_path / "loads.npy", "--ranks", 4, "--steps", "1:2"), "no steps"),
        # --numa beside --topology was silently dropped.
        ((tmp_path / "loads.npy", "--topology", tmp_path / "t.json", "--numa", 2),
         "give --topology or --nodes / --numa, not both"),
    ]
    plumb.Topology.cluster(2, 2).to_json(tmp_path / "t.json")
    for args, message in cases:
        result = run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "loads.npy", "t.json"]
    # An upper-case .PT is a torch file like .pt.
    result = run(tmp_path / "loads.npy", "--ranks", 4, "-o", tmp_path / "p.PT")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p.PT").read_bytes()[:2] == b"PK"  # torch.save's zip, not JSON


def test_help_documents_inputs_and_the_example():
    result = run("--help")
    assert result.returncode == 0
    for text in ("vLLM offline-EPLB stats .jsonl", "TensorRT-LLM expert_statistic directory",
                 "'example': the bundled example (16 layers x 64 experts, 32 steps",
                 "plumb solve example --ranks 8 --redundant 8"):
        assert text in result.stdout
