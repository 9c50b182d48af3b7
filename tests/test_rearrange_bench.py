"""``plumb bench rearrange`` smoke run at a tiny size: both tables and its RESULTS.md section."""

import pytest

from plumb.cli import main

pytest.importorskip("torch")


def test_bench_rearrange_writes_its_section(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## other\n\nkept\n")
    code = main(["bench", "rearrange", "--quick", "--layers", "2", "--expert-mib", "0.01",
                 "--slots", "16", "--ranks", "4", "--results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| dsv3-decode | reshuffle |" in out and "| [2, 16] x 0.01 MiB | drift 10% |" in out
    text = results.read_text()
    assert "## other\n\nkept" in text
    assert ("## rearrange\n\nCommand: `python benchmarks/bench_rearrange.py --quick --layers 2 "
            "--expert-mib 0.01 --slots 16 --ranks 4 --repeats 5`") in text
