"""Detect this host's GPU topology: ``nvidia-smi topo -m`` plus sysfs NUMA nodes.

``nvidia-smi topo -m`` prints a matrix of link types between devices (GPUs, then NICs), then
columns ``CPU Affinity``, ``NUMA Affinity`` and (newer drivers) ``GPU NUMA ID``. Link types,
fastest first: ``X`` (self), ``NV#`` (a bonded set of # NVLinks), ``PIX`` (at most one PCIe
bridge), ``PXB`` (several PCIe bridges, no host bridge), ``PHB`` (through a PCIe host bridge),
``NODE`` (between host bridges of one NUMA node), ``SYS`` (across the inter-socket link; older
drivers print ``SOC``).

The NUMA domain of GPU i comes from ``/sys/bus/pci/devices/<bus id>/numa_node`` when the kernel
knows it, else from the ``NUMA Affinity`` column, else from the matrix (GPUs joined by any
link other than ``SYS`` share a domain). Local rank i is GPU i in nvidia-smi's order.

Costs: a pair's bandwidth comes from its link type (``NVLINK_GBPS_PER_LINK`` per NVLink,
``PCIE_LINK_BANDWIDTH_GBPS`` for PCIe paths; nominal per-direction figures) and its cost is
``DEFAULT_REFERENCE_GBPS / bandwidth``, the same scale as the default level costs. Over
NVSwitch every pair is NV18, so cross-socket GPU pairs cost the same as same-socket ones: the
traffic never touches the socket link, although the cross-NUMA metric still counts them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, PlumbError
from .topology import (DEFAULT_LEVEL_BANDWIDTHS_GBPS, DEFAULT_REFERENCE_GBPS, Topology,
                       levels_from_labels)

# Per-direction bandwidth of one NVLink (NVLink 3 and 4: 25 GB/s), so NV18 (H100 SXM) is
# 450 GB/s and NV12 (A100 SXM) 300 GB/s.
NVLINK_GBPS_PER_LINK = 25.0
# Nominal peer-to-peer bandwidth of PCIe paths (Gen4 x16 peaks near 25 GB/s; each extra hop
# and the inter-socket link cost some of it).
PCIE_LINK_BANDWIDTH_GBPS = {"PIX": 24.0, "PXB": 22.0, "PHB": 20.0, "NODE": 18.0, "SYS": 12.0}
_LINK_ALIASES = {"SOC": "SYS"}  # pre-2017 drivers

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NVLINK = re.compile(r"^NV(\d+)$")
_TRAILING_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")


class DetectionError(PlumbError, RuntimeError):
    """This host's topology cannot be detected (no nvidia-smi, no driver, no GPU)."""


@dataclass(frozen=True)
class TopoMatrix:
    """The GPU part of ``nvidia-smi topo -m``.

    Attributes:
        gpus: the row labels ("GPU0", ...), n of them, in nvidia-smi order.
        links: n x n link tokens ("X" on the diagonal, "NV18", "PIX", ..., "SYS").
        cpu_affinity: n cpulists as printed ("0-55,112-167"), None where absent or N/A.
        numa_affinity: n NUMA node ids, None where absent, N/A or a range.
    """

    gpus: Tuple[str, ...]
    links: Tuple[Tuple[str, ...], ...]
    cpu_affinity: Tuple[Optional[str], ...]
    numa_affinity: Tuple[Optional[int], ...]


def link_bandwidth_gbps(token: str) -> float:
    """Nominal per-direction bandwidth in GB/s of one ``nvidia-smi topo -m`` link token."""
    match = _NVLINK.match(token)
    if match and int(match.group(1)) > 0:
        return NVLINK_GBPS_PER_LINK * int(match.group(1))
    token = _LINK_ALIASES.get(token, token)
    if token in PCIE_LINK_BANDWIDTH_GBPS:
        return PCIE_LINK_BANDWIDTH_GBPS[token]
    raise InputError(f"nvidia-smi topo -m: unknown link type {token!r}; expected X, NV#, PIX, "
                     "PXB, PHB, NODE or SYS")


def _is_index(text: str) -> bool:
    """Whether ``text`` is a decimal index (ASCII digits only: str.isdigit also takes
    superscripts such as '²', which int() rejects)."""
    return text.isascii() and text.isdigit()


def _header_split(tokens: List[str]) -> Tuple[List[str], List[str]]:
    """Split header tokens into device names and the trailing column names, in order."""
    text = " ".join(tokens)
    starts = [text.find(name) for name in _TRAILING_COLUMNS if name in text]
    cut = min(starts) if starts else len(text)
    devices = text[:cut].split()
    trailing = [name for name in _TRAILING_COLUMNS if name in text[cut:]]
    trailing.sort(key=text.find)
    return devices, trailing


def parse_topo_matrix(text: str) -> TopoMatrix:
    """Parse the text of ``nvidia-smi topo -m`` (tabs or spaces, ANSI codes allowed)."""
    if not isinstance(text, str):
        raise InputError(f"nvidia-smi topo -m output must be str, got {type(text).__name__}")
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    header_index = None
    for index, line in enumerate(lines):
        tokens = line.split()
        # The header names GPU0 but, unlike GPU0's own row, is not followed by the "X" cell.
        if "GPU0" in tokens and not (tokens[0] == "GPU0" and len(tokens) > 1 and tokens[1] == "X"):
            header_index = index
            break
    if header_index is None:
        raise InputError("nvidia-smi topo -m output: no header row naming GPU0 (no GPU listed)")
    devices, trailing = _header_split(lines[header_index].split())
    n_dev = len(devices)
    rows: Dict[str, List[str]] = {}
    for line in lines[header_index + 1:]:
        tokens = line.split()
        if not tokens or tokens[0].startswith("Legend"):
            break
        if tokens[0] in devices:
            rows[tokens[0]] = tokens[1:]
        elif re.fullmatch(r"GPU\d+", tokens[0]):
            raise InputError(f"nvidia-smi topo -m output: row {tokens[0]} is not a column of the "
                             f"header ({' '.join(devices)})")
    gpu_columns = [i for i, name in enumerate(devices) if re.fullmatch(r"GPU\d+", name)]
    gpus = tuple(devices[i] for i in gpu_columns)
    links, cpu_affinity, numa_affinity = [], [], []
    for gpu in gpus:
        if gpu not in rows:
            raise InputError(f"nvidia-smi topo -m output: header lists {gpu} but it has no row")
        cells = rows[gpu]
        if not n_dev <= len(cells) <= n_dev + len(trailing):
            raise InputError(f"nvidia-smi topo -m output: row {gpu} has {len(cells)} cells, "
                             f"expected {n_dev} (one per device column) plus up to "
                             f"{len(trailing)} ({', '.join(trailing) or 'no trailing columns'})")
        links.append(tuple(cells[i] for i in gpu_columns))
        extra = dict(zip(trailing, cells[n_dev:]))
        cpus = extra.get("CPU Affinity")
        cpu_affinity.append(None if cpus in (None, "N/A") else cpus)
        numa = extra.get("NUMA Affinity")
        numa_affinity.append(int(numa) if numa is not None and _is_index(numa) else None)
    for i, row in enumerate(links):
        if row[i] != "X":
            raise InputError(f"nvidia-smi topo -m output: {gpus[i]} should link to itself "
                             f"as 'X', got {row[i]!r}")
        for j, token in enumerate(row):
            if j != i:
                link_bandwidth_gbps(token)  # validates the token
                if links[j][i] != token:
                    raise InputError(f"nvidia-smi topo -m output: {gpus[i]}->{gpus[j]} is "
                                     f"{token} but {gpus[j]}->{gpus[i]} is {links[j][i]}")
    return TopoMatrix(gpus, tuple(links), tuple(cpu_affinity), tuple(numa_affinity))


def _sysfs_bus_id(bus_id: str) -> str:
    """nvidia-smi's "00000000:18:00.0" (32-bit domain) -> sysfs's "0000:18:00.0"."""
    match = re.fullmatch(r"([0-9A-Fa-f]+):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])",
                         bus_id.strip())
    if not match:
        raise InputError(f"PCI bus id {bus_id!r} is not of the form DOMAIN:BB:DD.F")
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):04x}:{bus.lower()}:{device.lower()}.{function}"


def sysfs_numa_nodes(bus_ids: Sequence[str], sysfs_root: str = "/sys") -> List[Optional[int]]:
    """NUMA node of each PCI device from ``<root>/bus/pci/devices/<id>/numa_node``.

    None where the file is missing or holds -1 (the kernel does not know).
    """
    out: List[Optional[int]] = []
    for bus_id in bus_ids:
        path = Path(sysfs_root) / "bus" / "pci" / "devices" / _sysfs_bus_id(bus_id) / "numa_node"
        try:
            value = int(path.read_text().strip())
        except (OSError, ValueError):
            value = -1
        out.append(value if value >= 0 else None)
    return out


def _numa_domains(matrix: TopoMatrix, numa_nodes: Optional[Sequence[Optional[int]]]) -> np.ndarray:
    """Local NUMA domain of each GPU, relabelled 0.. in order of first appearance."""
    n = len(matrix.gpus)
    if numa_nodes is not None and len(numa_nodes) != n:
        raise InputError(f"numa_nodes must have one entry per GPU ({n}), got {len(numa_nodes)}")
    labels: List[Optional[int]] = [None] * n
    for source in (numa_nodes, matrix.numa_affinity):
        if source is not None and all(value is not None for value in source):
            labels = list(source)
            break
    if any(value is None for value in labels):
        # No trustworthy ids: GPUs joined by anything but the inter-socket link share a socket.
        labels = list(range(n))
        for i in range(n):
            for j in range(n):
                if i != j and _LINK_ALIASES.get(matrix.links[i][j], matrix.links[i][j]) != "SYS":
                    old, new = labels[j], labels[i]
                    labels = [new if value == old else value for value in labels]
    first_seen: Dict[int, int] = {}
    return np.array([first_seen.setdefault(value, len(first_seen)) for value in labels],
                    dtype=np.int64)


def topology_from_nvidia_smi(
    text: str,
    numa_nodes: Optional[Sequence[Optional[int]]] = None,
    nodes: int = 1,
    cross_node_bandwidth_gbps: float = DEFAULT_LEVEL_BANDWIDTHS_GBPS["cross_node"],
    rank_speed: Optional[Sequence[float]] = None,
) -> Topology:
    """A Topology from ``nvidia-smi topo -m`` text, repeated over ``nodes`` identical hosts.

    ``numa_nodes``: NUMA node of each GPU (e.g. from ``sysfs_numa_nodes``; None entries are
    unknown). A cross-node pair costs ``max(reference / cross_node_bandwidth_gbps, costliest
    in-node pair)``: a token that leaves the host also crosses PCIe to the NIC, so it is never
    cheaper than staying.
    """
    if not isinstance(nodes, (int, np.integer)) or isinstance(nodes, bool) or nodes < 1:
        raise InputError(f"nodes must be an int >= 1, got {nodes!r}")
    try:
        cross_bw = float(cross_node_bandwidth_gbps)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"cross_node_bandwidth_gbps must be a finite number > 0, got "
                         f"{cross_node_bandwidth_gbps!r}") from None
    if not np.isfinite(cross_bw) or cross_bw <= 0:
        raise InputError(f"cross_node_bandwidth_gbps must be a finite number > 0, got {cross_bw}")
    matrix = parse_topo_matrix(text)
    n = len(matrix.gpus)
    local_bw = np.full((n, n), DEFAULT_LEVEL_BANDWIDTHS_GBPS["same_rank"])
    for i in range(n):
        for j in range(n):
            if i != j:
                local_bw[i, j] = link_bandwidth_gbps(matrix.links[i][j])
    local_cost = DEFAULT_REFERENCE_GBPS / local_bw
    np.fill_diagonal(local_cost, 0.0)
    local_numa = _numa_domains(matrix, numa_nodes)
    g = n * nodes
    node_of_rank = np.arange(g, dtype=np.int64) // n
    numa_of_rank = node_of_rank * (int(local_numa.max()) + 1) + np.tile(local_numa, nodes)
    same_node = node_of_rank[:, None] == node_of_rank[None, :]
    cross_cost = max(DEFAULT_REFERENCE_GBPS / cross_bw, float(local_cost.max()))
    link_cost = np.where(same_node, np.tile(local_cost, (nodes, nodes)), cross_cost)
    bandwidth = np.where(same_node, np.tile(local_bw, (nodes, nodes)), cross_bw)
    return Topology(node_of_rank=node_of_rank, numa_of_rank=numa_of_rank,
                    level=levels_from_labels(node_of_rank, numa_of_rank), link_cost=link_cost,
                    bandwidth_gbps=bandwidth, rank_speed=rank_speed)


def _run(command: List[str], timeout_s: float) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise DetectionError(
            f"cannot detect the GPU topology: {command[0]!r} not found (no NVIDIA driver or no "
            "GPU on this host); describe the cluster with Topology.cluster(...) or "
            "Topology.from_json(path)") from None
    except subprocess.TimeoutExpired:
        raise DetectionError(f"{' '.join(command)} did not answer in {timeout_s} s") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise DetectionError(f"cannot detect the GPU topology: {' '.join(command)} failed "
                             f"(exit {result.returncode}): {message}")
    return result.stdout


def detect(
    nodes: int = 1,
    nvidia_smi: str = "nvidia-smi",
    sysfs_root: str = "/sys",
    cross_node_bandwidth_gbps: float = DEFAULT_LEVEL_BANDWIDTHS_GBPS["cross_node"],
    rank_speed: Optional[Sequence[float]] = None,
    timeout_s: float = 30.0,
) -> Topology:
    """This host's topology (``Topology.detect``): runs ``nvidia-smi`` twice and reads sysfs.

    Raises DetectionError when nvidia-smi is missing or fails or lists no GPU.
    """
    text = _run([nvidia_smi, "topo", "-m"], timeout_s)
    try:
        matrix = parse_topo_matrix(text)
    except InputError as err:
        raise DetectionError(f"cannot detect the GPU topology: {err}") from None
    if not matrix.gpus:
        raise DetectionError("cannot detect the GPU topology: nvidia-smi lists no GPU")
    query = _run([nvidia_smi, "--query-gpu=index,pci.bus_id", "--format=csv,noheader"], timeout_s)
    bus_of_index: Dict[int, str] = {}
    for line in query.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and _is_index(parts[0]):
            bus_of_index[int(parts[0])] = parts[1]
    numa_nodes: Optional[List[Optional[int]]] = None
    indices = [int(name[3:]) for name in matrix.gpus]
    if all(index in bus_of_index for index in indices):
        numa_nodes = sysfs_numa_nodes([bus_of_index[index] for index in indices], sysfs_root)
    return topology_from_nvidia_smi(text, numa_nodes, nodes, cross_node_bandwidth_gbps,
                                    rank_speed)
