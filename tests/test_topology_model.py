"""Topology model: levels, per-level and explicit costs, rank speeds, JSON, validation."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from plumb.errors import InputError
from plumb.topology import (CROSS_NODE, CROSS_NUMA, SAME_NUMA, SAME_RANK, TOPOLOGY_JSON_SCHEMA,
                            Topology, as_topology, levels_from_labels)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_cluster_levels_costs_and_bandwidths():
    topo = Topology.cluster(nodes=2, gpus_per_node=4, numa_per_node=2)
    assert topo.num_ranks == 8 and topo.num_nodes == 2 and topo.num_numa_domains == 4
    assert topo.node_of_rank.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert topo.numa_of_rank.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert topo.level[0].tolist() == [SAME_RANK, SAME_NUMA, CROSS_NUMA, CROSS_NUMA] + [CROSS_NODE] * 4
    assert topo.link_cost[0].tolist() == [0.0, 1.0, 2.0, 2.0, 8.0, 8.0, 8.0, 8.0]
    assert topo.bandwidth_gbps[0, 4] == 50.0
    assert np.all(topo.rank_speed == 1.0)
    with pytest.raises(ValueError):
        topo.link_cost[0, 1] = 5.0  # frozen arrays


def test_level_overrides_and_rank_speed():
    topo = Topology.cluster(2, 2, level_costs={"cross_node": 20.0},
                            level_bandwidths_gbps={"same_numa": 900.0}, rank_speed=[1, 1, 2, 2])
    assert topo.link_cost[0, 2] == 20.0 and topo.link_cost[0, 1] == 1.0
    assert topo.bandwidth_gbps[0, 1] == 900.0
    assert topo.rank_speed.tolist() == [1.0, 1.0, 2.0, 2.0]
    with pytest.raises(InputError, match="unknown level 'cross_rack'"):
        Topology.cluster(2, 2, level_costs={"cross_rack": 1.0})
    with pytest.raises(InputError, match="rank_speed"):
        Topology.cluster(1, 2, rank_speed=[1.0, 0.0])
    with pytest.raises(InputError, match="level_bandwidths_gbps"):
        Topology.cluster(1, 2, level_bandwidths_gbps={"same_numa": 0.0})


def test_flat_and_as_topology():
    topo = as_topology(4)
    assert topo.num_ranks == 4 and topo.num_nodes == 1
    assert as_topology(topo, num_ranks=4) is topo
    with pytest.raises(InputError, match="placement needs 8"):
        as_topology(topo, num_ranks=8)
    with pytest.raises(InputError, match="topo must be"):
        as_topology("4")


def test_from_levels_with_uneven_layout():
    topo = Topology.from_levels(node_of_rank=[0, 0, 0, 1], numa_of_rank=[0, 1, 1, 2])
    assert topo.level[1, 2] == SAME_NUMA and topo.level[0, 1] == CROSS_NUMA
    assert topo.level[0, 3] == CROSS_NODE
    with pytest.raises(InputError, match="spans nodes"):
        Topology.from_levels(node_of_rank=[0, 1], numa_of_rank=[0, 0])


def test_explicit_matrix_and_validation():
    cost = np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]], dtype=float)
    topo = Topology.from_matrix(cost, node_of_rank=[0, 0, 1])
    assert np.array_equal(topo.link_cost, cost)
    assert topo.level[0, 2] == CROSS_NODE and topo.bandwidth_gbps[0, 2] == 50.0
    with pytest.raises(InputError, match="square"):
        Topology.from_matrix(np.zeros((2, 3)))
    with pytest.raises(InputError, match="symmetric"):
        Topology.from_matrix([[0, 1], [2, 0]])
    with pytest.raises(InputError, match=">= 0"):
        Topology.from_matrix([[0, -1], [-1, 0]])
    with pytest.raises(InputError, match="finite"):
        Topology.from_matrix([[0, np.inf], [np.inf, 0]])
    with pytest.raises(InputError, match="one per rank"):
        Topology.from_matrix(cost, node_of_rank=[0, 1])
    with pytest.raises(InputError, match="bandwidth_gbps must be > 0"):
        Topology.from_matrix(cost, bandwidth_gbps=np.zeros((3, 3)))
    base = Topology.cluster(1, 2)
    with pytest.raises(InputError, match="level must be"):
        Topology(node_of_rank=base.node_of_rank, numa_of_rank=base.numa_of_rank,
                 level=np.zeros((2, 2), dtype=np.int64), link_cost=base.link_cost,
                 bandwidth_gbps=base.bandwidth_gbps)
    assert np.array_equal(levels_from_labels(base.node_of_rank, base.numa_of_rank), base.level)


@pytest.mark.parametrize("make", [
    lambda: Topology.cluster(2, 8, 2, level_costs={"cross_node": 12.5}, rank_speed=[1.0] * 8 + [1.5] * 8),
    lambda: Topology.from_matrix([[0, 1, 4], [1, 0, 4], [4, 4, 0]], node_of_rank=[0, 0, 1],
                                 bandwidth_gbps=[[1e3, 300, 25], [300, 1e3, 25], [25, 25, 1e3]]),
])
def test_json_round_trip(tmp_path, make):
    topo = make()
    path = tmp_path / "topo.json"
    text = topo.to_json(path)
    assert path.read_text() == text
    again = Topology.from_json(path)
    for name in ("node_of_rank", "numa_of_rank", "level", "link_cost", "bandwidth_gbps",
                 "rank_speed"):
        assert np.array_equal(getattr(again, name), getattr(topo, name)), name
    assert set(json.loads(text)) <= set(TOPOLOGY_JSON_SCHEMA)


def test_json_compact_when_costs_follow_levels():
    data = Topology.cluster(1, 4, 2).to_dict()
    assert "level_costs" in data and "link_cost" not in data
    assert data["level_costs"] == {"same_rank": 0.0, "same_numa": 1.0, "cross_numa": 2.0}


def test_json_cluster_shorthand_and_errors(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"cluster": {"nodes": 2, "gpus_per_node": 4, "numa_per_node": 2},
                                "level_costs": {"cross_node": 10}}))
    topo = Topology.from_json(path)
    assert topo.num_ranks == 8 and topo.link_cost[0, 7] == 10.0
    bad = [
        ({"node_of_rank": [0, 0], "colour": 1}, "unknown keys"),
        ({"node_of_rank": [0, 0], "version": 2}, "unsupported version"),
        ({"node_of_rank": [0, 0], "format": "other"}, "format"),
        ({"level_costs": {}}, "needs 'cluster' or 'node_of_rank'"),
        ({"node_of_rank": [0, 0], "link_cost": [[0, 1], [1, 0]], "level_costs": {}}, "either"),
        ({"node_of_rank": [0, 0], "link_cost": [[0, 1], [2, 0]]}, "symmetric"),
        ({"node_of_rank": [0, -1]}, "ints >= 0"),
        ({"cluster": {"nodes": 2}}, "needs 'gpus_per_node'"),
        ({"cluster": {"nodes": 2, "gpus_per_node": 3, "numa_per_node": 2}}, "divisible"),
        # Values JSON can hold but numpy cannot convert: typed errors naming the field.
        ({"cluster": {"nodes": 1, "gpus_per_node": 1_000_000}}, "at most 8192"),
        ({"node_of_rank": [0] * 8193}, "at most 8192"),
        ({"node_of_rank": [0, 0], "rank_speed": ["a", "b"]}, "rank_speed must be"),
        ({"node_of_rank": [0, 0], "rank_speed": {}}, "rank_speed must be"),
        ({"node_of_rank": [0, 0], "rank_speed": [[1], [1, 2]]}, "rank_speed must be"),
        ({"node_of_rank": [0, 0], "rank_speed": [10 ** 400, 1]}, "rank_speed must be"),
        ({"node_of_rank": [[0], [0, 1]]}, "node_of_rank must be"),
        ({"node_of_rank": [0, 0], "numa_of_rank": [[0], [0, 1]]}, "numa_of_rank must be"),
        ({"node_of_rank": [0, 0], "level_costs": {"cross_node": 10 ** 400}},
         r"level_costs\['cross_node'\] must be a finite number"),
        ({"node_of_rank": [0, 0], "link_cost": [[0, 10 ** 400], [1, 0]]}, "link_cost must be"),
    ]
    for data, message in bad:
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=message):
            Topology.from_json(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Topology.from_json(path)
    with pytest.raises(InputError, match="cannot be read"):
        Topology.from_json(tmp_path / "missing.json")
    path.write_bytes(b'{"node_of_rank": [0, 0]}\xff')
    with pytest.raises(InputError, match="not UTF-8"):
        Topology.from_json(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="nested too deeply"):
        Topology.from_json(path)


def test_readme_documents_every_json_key():
    text = README.read_text()
    match = re.search(r"^## Topology JSON\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md needs a '## Topology JSON' section"
    for key in TOPOLOGY_JSON_SCHEMA:
        assert f"`{key}`" in match.group(1), key
