"""``plumb inspect`` as a subprocess on files the tests write."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from plumb.cli.inspect import ProgressBar
from plumb.io.trtllm import write_trtllm_stats

PLUMB = str(Path(sys.executable).with_name("plumb"))


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PLUMB, "inspect", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_trtllm_directory_summary_with_progress_bar(tmp_path):
    window = np.zeros((3, 2, 4), dtype=np.int64)
    window[:, 0] = [10, 0, 0, 2]      # layer 0: max/mean = 10 / 3, expert 0 hottest, 2 idle
    window[:, 1] = [1, 1, 1, 1]       # layer 1: even
    write_trtllm_stats(tmp_path / "stats", window, 2, first_iter=7, layer_ids=[4, 9])
    result = run(tmp_path / "stats", "--progress", "always")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(trtllm)" in out and "layers    2" in out and "experts   4" in out
    assert "steps     3 (ids 7..9)" in out
    assert "tokens    48 routed (per layer 24)" in out
    assert "num_experts_per_token 2" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line[:5].strip().isdigit()}
    assert rows["4"] == ["4", "36", "3.33", "0", "2"]
    assert rows["9"] == ["9", "12", "1.00", "0", "0"]
    assert "worst layer 4 (3.33)" in out
    assert "reading stats [" in result.stderr and "100%" in result.stderr
    # A small input gets no bar in "auto" mode.
    assert run(tmp_path / "stats", "--steps", "8:").stderr == ""


def test_progress_bar_redraws_per_percent_and_ends_the_line():
    stream = io.StringIO()
    bar = ProgressBar("reading x", True, stream)
    for done in range(0, 1001):
        bar(done, 1000)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 101 and text.endswith("] 100%\n")
    silent = io.StringIO()
    ProgressBar("reading x", False, silent)(5, 10)
    assert silent.getvalue() == ""


def test_errors_exit_2_with_one_line(tmp_path):
    (tmp_path / "loads.csv").write_text("1,2\n-3,4\n")
    result = run(tmp_path / "loads.csv")
    assert result.returncode == 2
    assert result.stderr == (f"plumb inspect: error: {tmp_path / 'loads.csv'}: field 'loads' "
                             "holds negative counts\n")
    result = run(tmp_path / "loads.csv", "--steps", "x")
    assert result.returncode == 2 and "--steps must be START:STOP" in result.stderr


def test_example_names_the_bundled_statistics_unless_a_file_is_called_that(tmp_path):
    bundled = subprocess.run([PLUMB, "inspect", "example"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert bundled.returncode == 0, bundled.stderr
    assert "example_stats.jsonl (vllm)" in bundled.stdout
    assert "layers    16" in bundled.stdout and "steps     32 (ids 1..32)" in bundled.stdout
    # A file of that name in the working directory is what the user means.
    np.save(tmp_path / "loads.npy", np.ones((3, 5)))
    (tmp_path / "loads.npy").rename(tmp_path / "example")
    local = subprocess.run([PLUMB, "inspect", "example", "--input-format", "npy"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert "layers    3" in local.stdout and "experts   5" in local.stdout
