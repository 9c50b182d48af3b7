"""plumb.integrations.sglang.rebalance_experts called as SGLang's init_by_eplb calls it."""

from __future__ import annotations

import pytest
import torch

import plumb
from plumb.errors import InputError
from plumb.integrations.sglang import rebalance_experts


def check_outputs(outputs, num_layers, num_experts, num_physical):
    phy2log, log2phy, logcnt = outputs
    for tensor in outputs:
        assert tensor.dtype == torch.int64 and tensor.device.type == "cpu"
    assert tuple(phy2log.shape) == (num_layers, num_physical)
    assert tuple(logcnt.shape) == (num_layers, num_experts)
    assert log2phy.shape[:2] == (num_layers, num_experts)
    assert log2phy.shape[2] == int(logcnt.max())
    assert torch.equal(logcnt.sum(1), torch.full((num_layers,), num_physical))
    for layer in range(num_layers):
        for expert in range(num_experts):
            slots = log2phy[layer, expert]
            valid = slots[slots != -1]
            # SGLang pads with -1 after the valid slots; valid ones hold the expert.
            assert len(valid) == logcnt[layer, expert]
            assert (slots[len(valid):] == -1).all()
            assert (phy2log[layer, valid] == expert).all()
            assert torch.equal(valid, valid.sort().values)


def test_keyword_call_as_init_by_eplb():
    # init_by_eplb unsqueezes [L, E] to [1, L, E]: logical_count is always [steps, L, E].
    logical_count = torch.randint(0, 300, (6, 3, 16), generator=torch.Generator().manual_seed(0))
    outputs = rebalance_experts(tokens_per_expert=logical_count, num_physical_experts=24,
                                num_local_physical_experts=3, num_groups=None, num_nodes=1)
    check_outputs(outputs, 3, 16, 24)
    ours = plumb.evaluate(outputs[0].numpy(), logical_count.numpy(), 8)
    deepseek = plumb.solve(logical_count.numpy(), 8, num_redundant=8, policy="deepseek")
    assert (ours.layer_balancedness >= deepseek.metrics.layer_balancedness - 1e-12).all()


def test_grouped_model_on_two_nodes_float_counts():
    logical_count = torch.rand(2, 4, 32, generator=torch.Generator().manual_seed(1)) * 100
    outputs = rebalance_experts(logical_count, 40, 5, 8, 2)
    check_outputs(outputs, 4, 32, 40)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    deepseek = plumb.solve(logical_count.numpy(), topo, num_redundant=8, num_groups=8,
                           policy="deepseek")
    ours = plumb.evaluate(outputs[0].numpy(), logical_count.numpy(), topo)
    assert (ours.layer_balancedness >= deepseek.metrics.layer_balancedness - 1e-12).all()
    # Forced hierarchical: each group of 4 experts stays on one node of 20 slots.
    outputs = rebalance_experts(logical_count, 40, 5, 8, 2, hierarchy="hierarchical")
    check_outputs(outputs, 4, 32, 40)
    phy2log = outputs[0]
    for layer in range(4):
        node_of_slot = torch.arange(40) // 20
        for group in range(8):
            nodes = node_of_slot[(phy2log[layer] // 4) == group].unique()
            assert len(nodes) == 1


def test_bad_arguments_raise_input_errors():
    counts = torch.ones(1, 2, 8)
    with pytest.raises(InputError, match="must be a multiple of num_local_physical_experts = 3"):
        rebalance_experts(counts, 8, 3, None, 1)
    with pytest.raises(InputError, match="num_local_physical_experts must be an int >= 1"):
        rebalance_experts(counts, 8, 0, None, 1)
    with pytest.raises(InputError, match="num_physical_experts must be an int >= E = 8 experts"):
        rebalance_experts(counts, 6, 3, None, 1)
    with pytest.raises(InputError, match=r"num_groups must be None, 0 or an int dividing E = 8"):
        rebalance_experts(counts, 8, 2, 3, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_the_gpu():
    logical_count = torch.randint(0, 300, (6, 3, 16), device="cuda")
    outputs = rebalance_experts(logical_count, 24, 3, None, 1)
    check_outputs(outputs, 3, 16, 24)
    cpu = rebalance_experts(logical_count.cpu(), 24, 3, None, 1)
    assert all(torch.equal(a, b) for a, b in zip(outputs, cpu))
