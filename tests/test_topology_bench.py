"""Smoke test of ``plumb bench topology`` and its traffic generator (no timing checks)."""

from __future__ import annotations

import argparse

import numpy as np

from plumb.bench import topology as bench
from plumb.cli.bench import _BENCHMARKS
from plumb.topology import Topology


def test_skewed_sources_prefer_their_nodes_experts():
    topo = Topology.cluster(2, 4, 2)
    loads, traffic = bench.make_traffic(topo, 3, "skewed", seed=1)
    assert traffic.shape == (3, 8, bench.NUM_EXPERTS)
    assert np.array_equal(loads, traffic.sum(axis=1))
    assert np.all(traffic.sum(axis=2) == bench.TOKENS_PER_RANK * bench.TOP_K)
    # Each node's sources send most of their picks to a different half of the experts.
    per_node = np.stack([traffic[:, topo.node_of_rank == n].sum(axis=(0, 1)) for n in range(2)])
    favourite = per_node.argmax(axis=0)
    assert 0.35 < favourite.mean() < 0.65
    assert per_node[0, favourite == 0].sum() > 2 * per_node[0, favourite == 1].sum()


def test_bench_topology_writes_its_section(tmp_path):
    assert "topology" in _BENCHMARKS
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## solve\n\nkeep me\n")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--layers", "1", "--results", str(results)])
    assert bench.run(args) == 0
    text = results.read_text()
    assert "## solve\n\nkeep me" in text
    section = text[text.index("## topology"):]
    assert "python benchmarks/bench_topology.py --quick --layers 1" in section
    for target in ("Cross-node traffic cut >= 25%", "Max rank load not worse",
                   "Solve time within 2x", "placement cannot change traffic"):
        assert target in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "x8x2" in line]
    assert len(rows) == len(bench.scenarios())
