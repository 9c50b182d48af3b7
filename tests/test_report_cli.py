"""``plumb report`` as a subprocess on files the test writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import plumb
from plumb.io.npz import PlumbStats, save_plumb_npz
from plumb.report.data import unpack_array

PLUMB = str(Path(sys.executable).with_name("plumb"))


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PLUMB, "report", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def lognormal_window(steps=6, layers=3, experts=8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 1.0, size=(layers, experts))
    popularity /= popularity.sum(axis=1, keepdims=True)
    return np.stack([rng.multinomial(512, popularity) for _ in range(steps)])


def payload_of(path: Path) -> dict:
    page = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="plumb-data">(.*?)</script>', page, re.S).group(1))


def test_report_from_npz_with_pngs_is_reproducible(tmp_path):
    save_plumb_npz(tmp_path / "stats.npz", PlumbStats(window=lognormal_window()))
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    args = (tmp_path / "stats.npz", "--ranks", 4, "--nodes", 2, "--redundant", 4)
    result = run(*args, "-o", out, "--png")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "report-heatmaps.png", "report-layers.png", "report-steps.png", "report.html"]
    payload = payload_of(out)
    assert payload["title"] == "stats.npz"
    assert payload["shape"] == {"layers": 3, "experts": 8, "ranks": 4, "steps": 6}
    assert payload["traffic_levels"] == ["within_numa", "cross_numa", "cross_node"]
    # A second process writes the same bytes (no dict-order, hash or time dependence).
    result = run(*args, "-o", tmp_path / "again.html")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "again.html").read_bytes() == out.read_bytes()


def test_report_of_given_placements_and_topology_file(tmp_path):
    window = lognormal_window(seed=1)
    np.save(tmp_path / "window.npy", window)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2, numa_per_node=2)
    topo.to_json(tmp_path / "topo.json")
    old = plumb.solve(window[:3], topo, num_redundant=4).phy2log
    new = plumb.solve(window, topo, num_redundant=4, previous=old).phy2log
    np.save(tmp_path / "old.npy", old)
    np.save(tmp_path / "new.npy", new)
    out = tmp_path / "r.html"
    result = run(tmp_path / "window.npy", "--topology", tmp_path / "topo.json", "--previous",
                 tmp_path / "old.npy", "--placement", tmp_path / "new.npy", "-o", out,
                 "--title", "given")
    assert result.returncode == 0, result.stderr
    current, proposed = payload_of(out)["placements"]
    np.testing.assert_array_equal(unpack_array(current["phy2log"]), old)
    np.testing.assert_array_equal(unpack_array(proposed["phy2log"]), new)
    assert current["source"].endswith("old.npy") and proposed["source"].endswith("new.npy")
    assert proposed["balancedness"] == plumb.evaluate(new, window, topo).balancedness


def test_bad_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not an archive")
    np.save(tmp_path / "loads.npy", np.ones((2, 8)))
    np.save(tmp_path / "bad.npy", np.zeros((2, 8), dtype=np.int64))
    for args in ((tmp_path / "broken.npz", "--ranks", 2),
                 (tmp_path / "loads.npy",),  # no --ranks
                 (tmp_path / "loads.npy", "--ranks", 2, "--placement", tmp_path / "bad.npy")):
        result = run(*args, "-o", tmp_path / "r.html")
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_reads_vllm_jsonl_and_the_placement_it_was_recorded_under(tmp_path):
    from plumb.capture.vllm_stats import physical_loads
    from plumb.io.vllm import write_vllm_stats

    window = lognormal_window(seed=2)  # [6, 3, 8]
    rng = np.random.default_rng(2)
    # 12 slots on 4 ranks, shuffled so that it differs from the start-up layout.
    recorded = np.stack([rng.permutation(np.r_[np.arange(8), [0, 1, 2, 3]]) for _ in range(3)])
    path = tmp_path / "eplb.jsonl"
    write_vllm_stats(path, physical_loads(window, recorded), recorded, first_step=10,
                     num_ranks=4)
    out = tmp_path / "r.html"
    result = run(path, "--nodes", 2, "-o", out)  # G from the file's meta record
    assert result.returncode == 0, result.stderr
    payload = payload_of(out)
    assert payload["shape"] == {"layers": 3, "experts": 8, "ranks": 4, "steps": 6}
    np.testing.assert_array_equal(unpack_array(payload["loads"]), window.sum(axis=0))
    current = payload["placements"][0]
    np.testing.assert_array_equal(unpack_array(current["phy2log"]), recorded)
    assert current["source"] == "placement recorded in eplb.jsonl"
    # An explicit --previous (here a vLLM mapping file) wins over the recorded placement.
    from plumb.io import write_placement

    mapping = tmp_path / "old.jsonl"
    write_placement(mapping, np.tile(np.arange(12) % 8, (3, 1)), num_experts=8, format="vllm")
    result = run(path, "--previous", mapping, "-o", out)
    assert result.returncode == 0, result.stderr
    current = payload_of(out)["placements"][0]
    assert unpack_array(current["phy2log"]).tolist() == [list(np.arange(12) % 8)] * 3
    assert current["source"] == str(mapping)
    # On a rank count the recorded 12 slots do not divide, the recorded placement is not the
    # current one (as in plumb solve): the report solves with the caller's --redundant.
    result = run(path, "--ranks", 5, "--redundant", 2, "-o", out)
    assert result.returncode == 0, result.stderr
    placements = payload_of(out)["placements"]
    assert placements[0]["source"] != "placement recorded in eplb.jsonl"
    assert unpack_array(placements[-1]["phy2log"]).shape == (3, 10)


def test_report_on_the_bundled_example(tmp_path):
    out = tmp_path / "report.html"
    result = run("example", "--ranks", 8, "--redundant", 8, "-o", out)
    assert result.returncode == 0, result.stderr
    payload = payload_of(out)
    assert payload["title"] == "example_stats.jsonl"
    assert payload["shape"] == {"layers": 16, "experts": 64, "ranks": 8, "steps": 32}
