"""``plumb bench capture`` smoke run: every table, the targets and its RESULTS.md section."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from plumb.cli import main  # noqa: E402


def test_bench_capture_writes_its_section(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## other\n\nkept\n")
    assert main(["bench", "capture", "--quick", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for row in ("| decode [16, 1] |", "| prefill [1, 256] |", "| decode [16, 256] |",
                "| decode [64, 8] | int32 |", "| prefill [8192, 8] | int64 |"):
        assert row in out, row
    assert "- record() <= 20 us per layer per decode step on CPU" in out
    assert "- no host sync on CUDA tensors:" in out and "met (no host read)" in out
    text = results.read_text()
    assert "## other\n\nkept" in text
    assert "## capture\n\nCommand: `python benchmarks/bench_capture.py --quick`" in text
    assert text.count("## capture") == 1


def test_bench_capture_cuda_refuses_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/test_cuda.py runs this benchmark")
    results = tmp_path / "RESULTS.md"
    assert main(["bench", "capture_cuda", "--quick", "--results", str(results)]) == 2
    assert "needs a CUDA device (torch.cuda.is_available() is False)" in capsys.readouterr().err
    assert not results.exists()
