"""PlumbEplbPolicy called exactly as vLLM's EplbState.rearrange calls its policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import plumb
from plumb.errors import InputError
from plumb.integrations.vllm import PlumbEplbPolicy

# vLLM's test_basic_rebalance case: 2 layers, 12 experts, 16 slots, 4 groups, 2 nodes, 8 ranks.
WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]


def check_phy2log(phy2log, num_layers, num_experts, num_replicas):
    assert isinstance(phy2log, torch.Tensor)
    assert phy2log.dtype == torch.int64 and phy2log.device.type == "cpu"
    assert tuple(phy2log.shape) == (num_layers, num_replicas)
    for row in phy2log.numpy():
        assert set(row.tolist()) == set(range(num_experts))


def test_positional_call_as_vllm_rearrange():
    # rearrange(): policy.rebalance_experts(window.cpu(), num_replicas, num_groups, num_nodes,
    #                                      num_gpus, physical_to_logical_map.cpu())
    weight = torch.tensor(WEIGHT, dtype=torch.int64)
    old = torch.arange(16).remainder(12).expand(2, -1).contiguous()
    phy2log = PlumbEplbPolicy.rebalance_experts(weight, 16, 4, 2, 8, old)
    check_phy2log(phy2log, 2, 12, 16)
    ours = plumb.evaluate(phy2log.numpy(), WEIGHT, plumb.Topology.cluster(2, 4))
    deepseek = plumb.solve(WEIGHT, plumb.Topology.cluster(2, 4), num_redundant=4, num_groups=4,
                           policy="deepseek")
    assert (ours.layer_balancedness >= deepseek.metrics.layer_balancedness - 1e-12).all()


def test_keyword_call_float_weights_without_old_map():
    weight = torch.rand(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    phy2log = PlumbEplbPolicy.rebalance_experts(weight=weight, num_replicas=20, num_groups=1,
                                                num_nodes=1, num_ranks=4)
    check_phy2log(phy2log, 3, 16, 20)


def test_models_without_groups_and_uneven_nodes():
    # vLLM passes num_groups=0 for models without expert groups; 6 ranks on 4 nodes do not
    # split, and vLLM's own fallback is then a single node.
    weight = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    check_phy2log(PlumbEplbPolicy.rebalance_experts(weight, 12, 0, 4, 6), 2, 12, 12)
    with pytest.raises(InputError, match="num_groups must be None, 0 or an int dividing E = 12"):
        PlumbEplbPolicy.rebalance_experts(weight, 12, 5, 1, 6)


def test_old_map_steers_only_when_it_is_a_placement():
    weight = torch.randint(1, 1000, (4, 16), generator=torch.Generator().manual_seed(2))
    first = PlumbEplbPolicy.rebalance_experts(weight, 24, 1, 1, 8)
    again = PlumbEplbPolicy.rebalance_experts(weight, 24, 1, 1, 8, first)
    stats = plumb.evaluate(again.numpy(), weight.numpy(), 8, previous=first.numpy())
    assert stats.balancedness == pytest.approx(
        plumb.evaluate(first.numpy(), weight.numpy(), 8).balancedness, abs=1e-12)
    # An old map with empty slots (-1) or for another rank count is not a placement here.
    holes = first.clone()
    holes[:, 0] = -1
    assert torch.equal(PlumbEplbPolicy.rebalance_experts(weight, 24, 1, 1, 8, holes),
                       PlumbEplbPolicy.rebalance_experts(weight, 24, 1, 1, 8))
    assert torch.equal(PlumbEplbPolicy.rebalance_experts(weight, 24, 1, 1, 8, first[:, :20]),
                       PlumbEplbPolicy.rebalance_experts(weight, 24, 1, 1, 8))


def test_load_window_input_is_summed():
    window = torch.randint(0, 50, (5, 2, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(PlumbEplbPolicy.rebalance_experts(window, 8, 1, 1, 4),
                       PlumbEplbPolicy.rebalance_experts(window.sum(0), 8, 1, 1, 4))


def test_bad_arguments_raise_input_errors():
    weight = torch.ones(2, 8)
    with pytest.raises(InputError, match="must be divisible by G = 3"):
        PlumbEplbPolicy.rebalance_experts(weight, 8, 1, 1, 3)
    with pytest.raises(InputError, match=r"num_replicas must be an int >= E = 8 experts, got 6"):
        PlumbEplbPolicy.rebalance_experts(weight, 6, 1, 1, 2)
    with pytest.raises(InputError, match="num_ranks must be an int >= 1"):
        PlumbEplbPolicy.rebalance_experts(weight, 8, 1, 1, 0)
    with pytest.raises(InputError, match="loads must be >= 0"):
        PlumbEplbPolicy.rebalance_experts(-weight, 8, 1, 1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_weights_on_the_gpu_give_a_cpu_map():
    weight = torch.tensor(WEIGHT, device="cuda")
    old = torch.arange(16, device="cuda").remainder(12).expand(2, -1).contiguous()
    phy2log = PlumbEplbPolicy.rebalance_experts(weight, 16, 4, 2, 8, old)
    check_phy2log(phy2log, 2, 12, 16)
    np.testing.assert_array_equal(
        phy2log.numpy(), PlumbEplbPolicy.rebalance_experts(weight.cpu(), 16, 4, 2, 8,
                                                           old.cpu()).numpy())


def test_stats_writer_output_reads_back_through_plumb(tmp_path):
    from plumb.integrations.vllm import stats_writer

    rec = plumb.Recorder(num_layers=2, num_experts=6, window=4)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        for layer in range(2):
            rec.record(layer, torch.randint(0, 6, (7, 2), generator=gen))
        rec.step()
    path = tmp_path / "eplb.jsonl"
    assert stats_writer(path, rec, model="tiny", num_ranks=2) == 4
    stats = plumb.read_stats(path)
    np.testing.assert_array_equal(stats.window, rec.window().numpy())
