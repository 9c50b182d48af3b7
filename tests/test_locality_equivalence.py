"""``interchangeable_ranks``: permuting ranks within a class keeps traffic and balance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plumb.errors import InputError
from plumb.locality import interchangeable_ranks, traffic_metrics
from plumb.topology import Topology


def _permute_within(labels, rng):
    """int [G]: a random permutation of ranks that maps every class onto itself."""
    perm = np.arange(labels.size)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        perm[members] = rng.permutation(members)
    return perm


def _relabel(row, perm, slots):
    """One layer's phy2log [P] with rank r's slots moved to rank perm[r]."""
    out = np.empty_like(row)
    for r, target in enumerate(perm):
        out[target * slots:(target + 1) * slots] = row[r * slots:(r + 1) * slots]
    return out


@st.composite
def _cases(draw):
    nodes = draw(st.integers(1, 3))
    gpn = draw(st.sampled_from([2, 4]))
    numa = draw(st.sampled_from([1, 2]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    speed = rng.choice([1.0, 2.0], nodes * gpn) if draw(st.booleans()) else None
    topo = Topology.cluster(nodes, gpn, numa, rank_speed=speed)
    g = topo.num_ranks
    slots = draw(st.integers(1, 3))
    num_experts = draw(st.integers(1, g * slots))
    num_layers = draw(st.integers(1, 2))
    phy2log = np.stack([rng.permutation(np.r_[np.arange(num_experts),
                                              rng.integers(0, num_experts, g * slots - num_experts)])
                        for _ in range(num_layers)])
    loads = rng.integers(0, 20, (num_layers, num_experts)).astype(float)
    traffic = None
    if draw(st.booleans()):
        traffic = rng.integers(0, 5, (num_layers, g, num_experts)).astype(float)
        # Ranks of a domain often send the same counts (data-parallel replicas of one stream).
        for domain in np.unique(topo.numa_of_rank):
            members = np.flatnonzero(topo.numa_of_rank == domain)
            if rng.random() < 0.7:
                traffic[:, members] = traffic[:, members[:1]]
    return topo, phy2log, loads, traffic, draw(st.sampled_from(["even", "nearest"])), rng


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_permuting_within_classes_keeps_traffic_and_balance(case):
    topo, phy2log, loads, traffic, dispatch, rng = case
    labels = interchangeable_ranks(topo, traffic, dispatch)
    assert labels.shape == (1 if traffic is None else phy2log.shape[0], topo.num_ranks)
    assert np.all(labels <= np.arange(topo.num_ranks))  # named by the smallest member
    slots = phy2log.shape[1] // topo.num_ranks
    before = traffic_metrics(phy2log, loads, topo, traffic, dispatch)
    moved = phy2log.copy()
    perms = []
    for layer in range(phy2log.shape[0]):
        perm = _permute_within(labels[min(layer, labels.shape[0] - 1)], rng)
        perms.append(perm)
        moved[layer] = _relabel(phy2log[layer], perm, slots)
    after = traffic_metrics(moved, loads, topo, traffic, dispatch)
    assert after["traffic_per_layer"] == pytest.approx(before["traffic_per_layer"])
    assert after["cross_node_fraction"] == pytest.approx(before["cross_node_fraction"])
    assert after["cross_numa_fraction"] == pytest.approx(before["cross_numa_fraction"])
    for layer, perm in enumerate(perms):
        # Rank loads travel with the contents, so every load / speed stays the same.
        assert np.allclose(after["rank_loads"][layer, perm], before["rank_loads"][layer])
        assert np.allclose(topo.rank_speed[perm], topo.rank_speed)


def test_classes_of_a_cluster():
    topo = Topology.cluster(2, 4, 2)
    # Even dispatch, uniform sources: every rank's column of costs is alike, all one class.
    assert interchangeable_ranks(topo).tolist() == [[0] * 8]
    # Nearest dispatch: a source keeps its own tokens, only same-domain ranks are symmetric.
    assert interchangeable_ranks(topo, dispatch="nearest").tolist() == [[0, 0, 2, 2, 4, 4, 6, 6]]
    slow = Topology.cluster(2, 4, 2, rank_speed=[1, 2, 1, 1, 1, 1, 1, 1])
    assert interchangeable_ranks(slow, dispatch="nearest").tolist() == [[0, 1, 2, 2, 4, 4, 6, 6]]
    traffic = np.zeros((2, 8, 3))
    traffic[0, :, 0] = [1, 1, 1, 2, 5, 5, 0, 0]
    assert interchangeable_ranks(topo, traffic).tolist() == [[0, 0, 2, 3, 4, 4, 6, 6],
                                                            [0, 0, 2, 2, 4, 4, 6, 6]]


def test_errors():
    topo = Topology.cluster(2, 2)
    with pytest.raises(InputError, match="dispatch must be one of"):
        interchangeable_ranks(topo, dispatch="random")
    with pytest.raises(InputError, match=r"traffic must be \[L, G, E\] = \[1, 4, 3\]"):
        interchangeable_ranks(topo, np.ones((1, 3, 3)))
    with pytest.raises(InputError, match=r"traffic must be \[L, G, E\] or \[T, L, G, E\]"):
        interchangeable_ranks(topo, np.ones(4))
