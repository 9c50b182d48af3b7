"""``plumb bench moves`` smoke run on the smallest SPEC shape, and its vLLM-style baseline."""

import subprocess
import sys

import numpy as np
import pytest

from plumb.bench.moves import vllm_slot_preserving
from plumb.cli import main


def test_vllm_baseline_keeps_slots_of_experts_that_stay_on_their_gpu():
    old = np.array([[0, 1, 2, 3, 4, 5]])
    new = np.array([[2, 5, 0, 1, 3, 4]])   # GPU 0 keeps 0 and 2, GPU 1 keeps 3 and 4
    out = vllm_slot_preserving(new, old, num_ranks=2)
    assert out.tolist() == [[0, 5, 2, 3, 4, 1]]


def test_bench_moves_writes_its_section(tmp_path, capsys):
    pytest.importorskip("torch")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## other\n\nkept\n")
    code = main(["bench", "moves", "--quick", "--shapes", "mixtral", "--rounds", "1",
                 "--steps", "4", "--results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| mixtral | small drift | DeepSeek + vLLM slot reuse (baseline) |" in out
    assert "| mixtral | reshuffle | plumb previous= |" in out
    assert "- mixtral: " in out
    text = results.read_text()
    assert "## other\n\nkept" in text
    assert ("## moves\n\nCommand: `python benchmarks/bench_moves.py --quick --shapes mixtral "
            "--rounds 1 --steps 4 --seed 0 --expert-mib 0.25`") in text


def test_unknown_shape_is_a_user_error():
    done = subprocess.run([sys.executable, "-m", "plumb", "bench", "moves", "--shapes", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown shape 'nope'" in done.stderr and "Traceback" not in done.stderr
    # 'tiny' is a shape of plumb.bench.workloads that this benchmark has no expert size for.
    done = subprocess.run([sys.executable, "-m", "plumb", "bench", "moves", "--shapes", "tiny"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown ['tiny']" in done.stderr and "Traceback" not in done.stderr
