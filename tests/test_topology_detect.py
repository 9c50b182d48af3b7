"""Topology detection: parsing captured ``nvidia-smi topo -m`` texts, sysfs NUMA, clear errors."""

import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest

from plumb.errors import InputError
from plumb.topology import CROSS_NODE, CROSS_NUMA, SAME_NUMA, Topology
from plumb.topology_detect import (DetectionError, detect, link_bandwidth_gbps, parse_topo_matrix,
                                   sysfs_numa_nodes, topology_from_nvidia_smi)

DATA = Path(__file__).parent / "data"
H100 = (DATA / "nvidia_smi_topo_8xh100_sxm.txt").read_text()
PCIE = (DATA / "nvidia_smi_topo_8x_pcie_dual_socket.txt").read_text()
CONSUMER = (DATA / "nvidia_smi_topo_4x_consumer.txt").read_text()


def test_link_bandwidths():
    assert link_bandwidth_gbps("NV18") == 450.0
    assert link_bandwidth_gbps("NV4") == 100.0
    assert link_bandwidth_gbps("PIX") > link_bandwidth_gbps("PHB") > link_bandwidth_gbps("SYS")
    assert link_bandwidth_gbps("SOC") == link_bandwidth_gbps("SYS")
    with pytest.raises(InputError, match="unknown link type 'NVX'"):
        link_bandwidth_gbps("NVX")


def test_parse_h100_sxm_with_ansi_header_and_nics():
    matrix = parse_topo_matrix(H100)
    assert matrix.gpus == tuple(f"GPU{i}" for i in range(8))
    assert all(matrix.links[i][j] == ("X" if i == j else "NV18") for i in range(8) for j in range(8))
    assert matrix.numa_affinity == (0, 0, 0, 0, 1, 1, 1, 1)
    assert matrix.cpu_affinity[4] == "56-111,168-223"


def test_h100_sxm_topology_nvswitch_makes_sockets_free():
    topo = topology_from_nvidia_smi(H100)
    assert topo.num_ranks == 8 and topo.num_nodes == 1 and topo.num_numa_domains == 2
    assert topo.level[0, 4] == CROSS_NUMA and topo.level[0, 1] == SAME_NUMA
    # Every pair rides NVSwitch at 450 GB/s: crossing sockets costs nothing extra.
    off = ~np.eye(8, dtype=bool)
    assert np.all(topo.bandwidth_gbps[off] == 450.0)
    assert np.allclose(topo.link_cost[off], 400.0 / 450.0)
    assert np.all(np.diag(topo.link_cost) == 0.0)


def test_pcie_dual_socket_costs_follow_the_pcie_tree():
    topo = topology_from_nvidia_smi(PCIE)
    assert topo.numa_of_rank.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    pix, node, sys_ = topo.link_cost[0, 1], topo.link_cost[0, 2], topo.link_cost[0, 4]
    assert 0 < pix < node < sys_
    assert topo.link_cost[5, 4] == pix and topo.link_cost[7, 1] == sys_


def test_consumer_nvlink_pairs_without_numa_info():
    matrix = parse_topo_matrix(CONSUMER)
    assert matrix.numa_affinity == (None, None, None, None)
    topo = topology_from_nvidia_smi(CONSUMER)
    # No SYS link: one socket, one domain.
    assert topo.num_numa_domains == 1
    assert topo.link_cost[0, 1] == topo.link_cost[2, 3] < topo.link_cost[0, 2]


def test_numa_falls_back_to_the_matrix_and_sysfs_wins():
    text = PCIE.replace("\t0\n", "\tN/A\n").replace("\t1\n", "\tN/A\n")
    assert parse_topo_matrix(text).numa_affinity == (None,) * 8
    # SYS separates the sockets even without ids.
    assert topology_from_nvidia_smi(text).numa_of_rank.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # sysfs ids win over the column (here: a BIOS reporting 4 NUMA nodes, 2 per socket).
    topo = topology_from_nvidia_smi(PCIE, numa_nodes=[0, 0, 1, 1, 2, 2, 3, 3])
    assert topo.numa_of_rank.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(InputError, match="one entry per GPU"):
        topology_from_nvidia_smi(PCIE, numa_nodes=[0, 1])


def test_multi_node_replication():
    topo = topology_from_nvidia_smi(H100, nodes=2, cross_node_bandwidth_gbps=50.0)
    assert topo.num_ranks == 16 and topo.num_nodes == 2 and topo.num_numa_domains == 4
    assert topo.level[0, 8] == CROSS_NODE and topo.link_cost[0, 8] == 8.0
    assert np.array_equal(topo.link_cost[:8, :8], topo.link_cost[8:, 8:])
    # On PCIe hosts leaving the node is never cheaper than the costliest in-node path.
    pcie = topology_from_nvidia_smi(PCIE, nodes=2)
    assert pcie.link_cost[0, 8] == pcie.link_cost[:8, :8].max()
    with pytest.raises(InputError, match="nodes"):
        topology_from_nvidia_smi(H100, nodes=0)


def test_whitespace_collapsed_text_parses_the_same():
    spaced = "\n".join(" ".join(line.split()) for line in PCIE.splitlines())
    assert parse_topo_matrix(spaced) == parse_topo_matrix(PCIE)


def test_parse_errors_are_clear():
    with pytest.raises(InputError, match="no header row naming GPU0"):
        parse_topo_matrix("No devices were found\n")
    asym = CONSUMER.replace("GPU1\tNV4", "GPU1\tPHB", 1)
    with pytest.raises(InputError, match="GPU0->GPU1 is NV4 but GPU1->GPU0 is PHB"):
        parse_topo_matrix(asym)
    with pytest.raises(InputError, match="has no row"):
        parse_topo_matrix("\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV1\t0-3\n")
    header = "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\n"
    good = header + "GPU0\t X \tNV1\t0-3\t0\nGPU1\tNV1\t X \t0-3\t0\n"
    assert parse_topo_matrix(good).numa_affinity == (0, 0)
    # A GPU the header does not name would silently shrink the topology.
    with pytest.raises(InputError, match="row GPU2 is not a column of the header"):
        parse_topo_matrix(good + "GPU2\tNV1\tNV1\t X \t0-3\t0\n")
    # An extra link cell would shift the affinity columns.
    with pytest.raises(InputError, match="row GPU1 has 5 cells, expected 2"):
        parse_topo_matrix(header + "GPU0\t X \tNV1\t0-3\t0\nGPU1\tNV1\t X \tNV1\t0-3\t0\n")
    # str.isdigit() accepts '²', int() does not: an unknown domain, not a crash.
    assert parse_topo_matrix(good.replace("\t0\n", "\t\u00b2\n")).numa_affinity == (None, None)
    with pytest.raises(InputError, match="cross_node_bandwidth_gbps must be a finite number"):
        topology_from_nvidia_smi(good, cross_node_bandwidth_gbps="fast")


def test_sysfs_numa_nodes(tmp_path):
    for bus, node in (("0000:18:00.0", "0"), ("0000:9a:00.0", "1"), ("0000:ab:00.0", "-1")):
        directory = tmp_path / "bus" / "pci" / "devices" / bus
        directory.mkdir(parents=True)
        (directory / "numa_node").write_text(node + "\n")
    ids = ["00000000:18:00.0", "00000000:9A:00.0", "00000000:AB:00.0", "00000000:CC:00.0"]
    assert sysfs_numa_nodes(ids, str(tmp_path)) == [0, 1, None, None]
    with pytest.raises(InputError, match="PCI bus id"):
        sysfs_numa_nodes(["garbage"], str(tmp_path))


def _fake_nvidia_smi(tmp_path, topo_text, bus_ids):
    (tmp_path / "topo.txt").write_text(topo_text)
    (tmp_path / "ids.txt").write_text("".join(f"{i}, {b}\n" for i, b in enumerate(bus_ids)))
    script = tmp_path / "nvidia-smi"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "topo" ]; then cat {tmp_path / 'topo.txt'}; else cat {tmp_path / 'ids.txt'}; fi
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_detect_end_to_end_with_fake_driver_and_sysfs(tmp_path):
    bus_ids = [f"00000000:{0x18 + 16 * i:02X}:00.0" for i in range(8)]
    sysfs = tmp_path / "sys"
    for i, bus in enumerate(bus_ids):
        directory = sysfs / "bus" / "pci" / "devices" / f"0000:{0x18 + 16 * i:02x}:00.0"
        directory.mkdir(parents=True)
        (directory / "numa_node").write_text(str(i // 2))  # 4 NUMA nodes per host
    smi = _fake_nvidia_smi(tmp_path, H100, bus_ids)
    topo = detect(nodes=2, nvidia_smi=smi, sysfs_root=str(sysfs))
    assert topo.num_ranks == 16 and topo.num_numa_domains == 8
    assert topo.numa_of_rank[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    same = Topology.detect(nodes=2, nvidia_smi=smi, sysfs_root=str(sysfs))
    assert np.array_equal(same.link_cost, topo.link_cost)


def test_detect_without_gpu_raises_a_clear_error(tmp_path, monkeypatch):
    empty = _fake_nvidia_smi(tmp_path, "No devices were found\n", [])
    with pytest.raises(DetectionError, match="no header row naming GPU0"):
        detect(nvidia_smi=empty)
    failing = tmp_path / "failing-smi"
    failing.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate "
                       "with the NVIDIA driver.' >&2\nexit 9\n")
    failing.chmod(0o755)
    with pytest.raises(DetectionError, match="exit 9.*could not communicate"):
        detect(nvidia_smi=str(failing))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no nvidia-smi anywhere
    with pytest.raises(DetectionError, match="'nvidia-smi' not found"):
        Topology.detect()
