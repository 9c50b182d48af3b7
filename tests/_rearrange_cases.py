"""Shared by the tests/test_rearrange_*.py files: placement strategies and expert-tagged weights."""

import numpy as np
from hypothesis import strategies as st

from plumb.topology import Topology


@st.composite
def layer_placements(draw, num_slots: int, num_experts: int):
    """int64 [P]: every expert at least once, the other slots random replicas, shuffled."""
    extras = draw(st.lists(st.integers(0, num_experts - 1), min_size=num_slots - num_experts,
                           max_size=num_slots - num_experts))
    return draw(st.permutations(list(range(num_experts)) + extras))


@st.composite
def rearrangements(draw, max_nodes=2, max_gpus=4, max_slots=4, max_layers=3):
    """(topology, old_phy2log, new_phy2log) with G = nodes * gpus_per_node, P = G * S."""
    nodes = draw(st.integers(1, max_nodes))
    numa = draw(st.sampled_from([1, 2]))
    gpus = numa * draw(st.integers(1, max(1, max_gpus // numa)))
    topo = Topology.cluster(nodes=nodes, gpus_per_node=gpus, numa_per_node=numa)
    num_slots = topo.num_ranks * draw(st.integers(1, max_slots))
    num_experts = draw(st.integers(1, num_slots))
    num_layers = draw(st.integers(1, max_layers))
    old, new = ([draw(layer_placements(num_slots, num_experts)) for _ in range(num_layers)]
                for _ in range(2))
    return topo, np.array(old, dtype=np.int64), np.array(new, dtype=np.int64)


def expert_weights(phy2log, torch, inner=(3, 5)):
    """Two weight tensors per slot, [L, N, *inner] float32 and [L, N, 2] int64, whose values
    encode (layer, expert) and the element index, so a wrong slot or a torn copy shows."""
    phy2log = torch.as_tensor(np.array(phy2log, dtype=np.int64))
    layer = torch.arange(phy2log.shape[0]).view(-1, 1)
    tag = (layer * 1000 + phy2log).view(*phy2log.shape, *([1] * len(inner)))
    first = tag.float() + torch.arange(int(np.prod(inner)), dtype=torch.float32).view(inner) / 64
    second = tag.view(*phy2log.shape, 1) * 10 + torch.arange(2).view(1, 1, 2)
    return [first.contiguous(), second.contiguous()]
