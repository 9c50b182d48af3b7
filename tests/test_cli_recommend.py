"""``plumb recommend`` as a subprocess on files the test writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

import plumb
from plumb.io.npz import PlumbStats, save_plumb_npz

PLUMB = str(Path(sys.executable).with_name("plumb"))
GATE = ["--ranks", "4", "--bytes-per-expert", "1000000", "--step-time-ms", "30"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PLUMB, "recommend", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def window(hot: float, steps: int = 32, seed: int = 0) -> np.ndarray:
    """[T, 2, 8] multinomial counts; expert 0 is ``hot`` times as popular as the others."""
    rng = np.random.default_rng(seed)
    popularity = np.ones(8)
    popularity[0] = hot
    popularity /= popularity.sum()
    return np.stack([rng.multinomial(400, popularity, size=2) for _ in range(steps)])


def uniform_current() -> np.ndarray:
    return plumb.solve(np.ones((2, 8)), 4, num_redundant=4).phy2log


def test_apply_on_a_skewed_window_writes_the_proposal(tmp_path):
    np.save(tmp_path / "stats.npy", window(hot=6.0))
    np.save(tmp_path / "current.npy", uniform_current())
    out = tmp_path / "new.npy"
    done = run(tmp_path / "stats.npy", "--current", tmp_path / "current.npy", *GATE, "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("apply the proposed placement")
    assert "statistically clear" in done.stdout and f"wrote {out}" in done.stdout
    written = np.load(out)
    assert written.shape == (2, 12) and not np.array_equal(written, uniform_current())


def test_keep_on_noise_with_the_placement_recorded_in_the_npz(tmp_path):
    save_plumb_npz(tmp_path / "stats.npz",
                   PlumbStats(window=window(hot=1.0, seed=3), placement=uniform_current()))
    out = tmp_path / "new.npy"
    done = run(tmp_path / "stats.npz", *GATE, "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("keep the current placement")
    assert "NOT statistically clear" in done.stdout and not out.exists()


def test_user_errors_exit_2_with_one_line(tmp_path):
    np.save(tmp_path / "loads.npy", window(hot=6.0).sum(axis=0))
    np.save(tmp_path / "stats.npy", window(hot=6.0))
    np.save(tmp_path / "current.npy", uniform_current())
    cases = [
        ([tmp_path / "loads.npy", "--current", tmp_path / "current.npy", *GATE], "per-step"),
        ([tmp_path / "stats.npy", *GATE], "--current"),
        ([tmp_path / "stats.npy", "--current", tmp_path / "current.npy", *GATE,
          "--moe-fraction", "2"], "moe_fraction"),
    ]
    for args, message in cases:
        done = run(*args)
        assert done.returncode == 2
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_written_yaml_keeps_the_model_layer_ids(tmp_path):
    from plumb.io import read_placement, write_placement
    from plumb.io.trtllm import write_trtllm_stats

    stats = tmp_path / "trt"
    write_trtllm_stats(stats, window(hot=6.0), num_experts_per_token=2, layer_ids=[3, 9])
    current = tmp_path / "current.yaml"
    write_placement(current, uniform_current(), layer_ids=[3, 9])
    out = tmp_path / "new.yaml"
    done = run(stats, "--current", current, *GATE, "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("apply the proposed placement")
    config = yaml.safe_load(out.read_text())
    assert sorted(config["initial_global_assignments"]) == [3, 9]  # were rewritten as 0, 1
    assert read_placement(out).shape == (2, 12)


def test_gate_on_the_bundled_example_against_its_recorded_layout():
    # The example is recorded under the start-up layout on 8 ranks, with skewed experts.
    done = run("example", "--bytes-per-expert", 1000000, "--step-time-ms", 30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("apply the proposed placement")
