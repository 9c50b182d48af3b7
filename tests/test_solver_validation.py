"""Every bad input to plumb.solve / plumb.evaluate raises InputError naming the argument."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import plumb
from plumb.errors import InputError

GOOD = np.arange(1.0, 17.0).reshape(2, 8)


@pytest.mark.parametrize("loads, match", [
    (np.array([[1.0, -1.0, 2.0, 3.0]]), ">= 0"),
    (np.array([[1.0, np.nan, 2.0, 3.0]]), "finite"),
    (np.array([[1.0, np.inf, 2.0, 3.0]]), "finite"),
    (np.ones((1, 1, 2, 4)), "dims"),
    (np.ones(()), "dims"),
    (np.zeros((2, 0)), "empty"),
    (np.array([["a", "b"]]), "dtype"),
    ([[1, 2], [3]], "array"),
])
def test_bad_loads(loads, match):
    with pytest.raises(InputError, match=match):
        plumb.solve(loads, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_redundant=1), "divisible by G"),
    (dict(num_redundant=-1), "num_redundant"),
    (dict(num_redundant=True), "num_redundant"),
    (dict(num_groups=3), "num_groups"),
    (dict(num_groups=0), "num_groups"),
    (dict(policy="greedy"), "policy"),
    (dict(hierarchy="nodes"), "hierarchy"),
    (dict(hierarchy="hierarchical", num_groups=1), "hierarchical"),
    (dict(max_replicas_per_expert=0), "max_replicas_per_expert"),
    (dict(max_replicas_per_expert=[1, 2]), "max_replicas_per_expert"),
    (dict(num_redundant=8, max_replicas_per_expert=1), "max_replicas_per_expert"),
    (dict(policy="deepseek", max_replicas_per_expert=2), "max_replicas_per_expert"),
    (dict(previous=np.zeros((2, 8), dtype=np.int64)), "previous"),
    (dict(previous=np.tile(np.arange(8), (3, 1))), "previous"),
    (dict(traffic=np.ones((2, 3, 8))), "traffic"),
    (dict(traffic=np.ones((2, 4, 8)) + 5j), "traffic must hold integer or float counts"),
    (dict(traffic=np.ones((2, 4, 8), dtype=bool)), "traffic must hold integer or float"),
    (dict(num_redundant=10 ** 30), "plumb solves at most 1048576"),
    (dict(num_redundant=2 ** 40), "plumb solves at most 1048576"),
    (dict(previous=np.tile(np.r_[np.arange(8), 0, 1], (2, 1))),
     "previous's P = 10 must be divisible by G = 4"),
    (dict(previous=np.tile(np.arange(4), (2, 1))), "previous's P = 4 physical slots must be"),
])
def test_bad_arguments(kwargs, match):
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    with pytest.raises(InputError, match=match):
        plumb.solve(GOOD, topo, **kwargs)


def test_more_ranks_than_slots():
    with pytest.raises(InputError, match="G = 16 ranks must be <= P"):
        plumb.solve(GOOD, 16)


def test_bad_topology():
    with pytest.raises(InputError, match="topo"):
        plumb.solve(GOOD, "4")


def test_huge_caps_mean_no_cap():
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    expected = plumb.solve(GOOD, topo, num_redundant=4, hierarchy="global").logcnt
    for caps in (10 ** 30, np.full(8, 2 ** 64 - 1, dtype=np.uint64)):
        placed = plumb.solve(GOOD, topo, num_redundant=4, hierarchy="global",
                             max_replicas_per_expert=caps)
        np.testing.assert_array_equal(placed.logcnt, expected)


@pytest.mark.parametrize("phy2log, match", [
    (np.tile(np.r_[np.arange(8), 0], (2, 1)), "phy2log's P = 9 must be divisible by G = 2"),
    (np.tile(np.arange(7), (2, 1)), "divisible by G|>= E"),
    (np.tile(np.r_[np.arange(7), 7.5], (2, 1)), "integer"),
    (np.tile(np.r_[np.arange(7), 8], (2, 1)), r"\[0, 8\)"),
    (np.tile(np.r_[np.arange(7), 0], (2, 1)), "no replica of expert 7"),
    (np.tile(np.arange(8), (3, 1)), "L = 2"),
])
def test_bad_phy2log(phy2log, match):
    with pytest.raises(InputError, match=match):
        plumb.evaluate(phy2log, GOOD, 2)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        plumb.solve(GOOD, 2, policy="nope")


# Every value finite, the sums not: a layer's total (or its time on a slow rank) overflowed to
# inf, which made open ranks look full to the packing (out-of-bounds slot writes, garbage
# placements, a heap corruption abort). Subnormal totals: the ideal rank time underflowed to
# 0.0, balancedness came out 0.0, and the locality pass's node capacities (total / speeds)
# were 0.0 and divided by (ZeroDivisionError on 5e-324 loads, rank speeds [3, 1, 1, 1],
# nearest dispatch).
@pytest.mark.parametrize("loads, message", [
    (np.full((2, 12), 1e308), "too large"),
    # each step's layer sums to 1.2e300, the window to 3.6e300
    (np.full((3, 2, 12), 1e299), "too large"),
    (np.full((2, 12), 5e-324), "too small"),
    (np.full((3, 2, 12), 1e-300) * np.array([1.0, 0.0, 0.0])[:, None, None], "too small"),
])
def test_loads_whose_totals_overflow_or_underflow(loads, message):
    with pytest.raises(InputError, match=f"loads are {message}"):
        plumb.solve(loads, 6, num_redundant=6)
    with pytest.raises(InputError, match=f"loads are {message}"):
        plumb.evaluate(np.tile(np.arange(12), (2, 1)), loads, 6)


def test_loads_just_under_the_limit_solve_like_small_ones():
    rng = np.random.default_rng(0)
    small = rng.lognormal(0.0, 1.0, (3, 16))
    scale = 2.0 ** 990  # exact: the same floats, shifted exponents (sums stay below 1e300)
    big = plumb.solve(small * scale, 4, num_redundant=8)
    assert np.array_equal(big.phy2log, plumb.solve(small, 4, num_redundant=8).phy2log)
    assert np.isfinite(big.metrics.max_load).all()


def test_loads_too_large_for_a_slow_rank():
    topo = plumb.Topology.flat(4, rank_speed=[1.0, 1.0, 1.0, 1e-5])
    loads = np.full((1, 8), 1e297)
    with pytest.raises(InputError, match="rank speeds"):
        plumb.solve(loads, topo)
    with pytest.raises(InputError, match="rank speeds"):
        plumb.evaluate(np.arange(8)[None, :], loads, topo)


def test_loads_just_over_the_floor_solve_like_large_ones():
    rng = np.random.default_rng(0)
    large = rng.lognormal(0.0, 1.0, (3, 16))
    scale = 2.0 ** -960  # exact: the same floats, shifted exponents (sums stay above 1e-290)
    tiny = plumb.solve(large * scale, 4, num_redundant=8)
    assert np.array_equal(tiny.phy2log, plumb.solve(large, 4, num_redundant=8).phy2log)
    assert np.allclose(tiny.metrics.balancedness, plumb.solve(large, 4, num_redundant=8)
                       .metrics.balancedness)
    # A layer with no load at all is fine at any scale.
    assert plumb.solve(np.zeros((1, 16)), 4, num_redundant=8).metrics.balancedness == 1.0


def test_loads_too_small_for_a_fast_rank():
    topo = plumb.Topology.flat(4, rank_speed=[1.0, 1.0, 3.0, 1e20])
    loads = np.full((1, 8), 1e-275)
    with pytest.raises(InputError, match="rank speeds"):
        plumb.solve(loads, topo)
    with pytest.raises(InputError, match="rank speeds"):
        plumb.evaluate(np.arange(8)[None, :], loads, topo)
    traffic = np.ones((1, 4, 8), dtype=np.int64)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2, rank_speed=[3.0, 1.0, 1.0, 1.0])
    placed = plumb.solve(np.full((1, 8), 1e-280), topo, num_redundant=4, traffic=traffic,
                         dispatch="nearest")
    assert placed.metrics.balancedness > 0.5


@pytest.mark.parametrize("kwargs", [
    dict(traffic=np.full((1, 4, 8), 1e60)),
    dict(dispatch="nearest", num_redundant=4),
])
def test_traffic_cost_that_would_overflow(kwargs):
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2, level_costs={"cross_node": 1e250})
    loads = np.full((1, 8), 1e60)
    with pytest.raises(InputError, match="traffic is too large"):
        plumb.solve(loads, topo, **kwargs)
    with pytest.raises(InputError, match="traffic is too large"):
        plumb.evaluate(np.arange(8)[None, :], loads, topo, traffic=kwargs.get("traffic"),
                       dispatch=kwargs.get("dispatch", "even"))


def test_torch_loads_of_any_float_dtype_and_layout():
    torch = pytest.importorskip("torch")
    loads = torch.tensor([[3.0, 1.0, 2.0, 5.0, 4.0, 1.0, 2.0, 3.0]])
    want = plumb.solve(loads.numpy(), 4).phy2log
    # numpy has no bfloat16 / float8, and a sparse tensor has no .numpy(): they raised
    # TypeError from the conversion. These values are exact in every one of the dtypes.
    for variant in (loads.bfloat16(), loads.to(torch.float8_e4m3fn), loads.half(),
                    loads.to_sparse(), loads.clone().requires_grad_()):
        np.testing.assert_array_equal(plumb.solve(variant, 4).phy2log, want)
    traffic = torch.ones(1, 4, 8, dtype=torch.bfloat16)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    assert plumb.solve(loads.numpy(), topo, traffic=traffic).metrics.traffic is not None


def test_torch_loads_without_readable_values():
    torch = pytest.importorskip("torch")
    with pytest.raises(InputError, match="loads is a meta tensor"):
        plumb.solve(torch.empty(2, 8, device="meta"), 4)
    with warnings.catch_warnings():
        # Quantized tensor creation is deprecated in torch; such tensors still reach users.
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_tensor(torch.ones(2, 8), 0.1, 0, torch.quint8)
    with pytest.raises(InputError, match="loads: cannot read the tensor's values"):
        plumb.solve(quantized, 4)


def test_caps_a_node_cannot_fill_rule_out_the_hierarchical_policy():
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=2)
    # Group 1 (experts 2, 3) may hold 1 + 2 replicas on a node of 4 slots: hierarchical
    # layers would have to break expert 2's cap.
    caps = [2, 2, 1, 3]
    auto = plumb.solve([1, 1, 10, 5], topo, num_redundant=4, num_groups=2,
                       max_replicas_per_expert=caps)
    assert auto.metrics.hierarchy == "global"
    assert (auto.logcnt <= caps).all()
    with pytest.raises(InputError, match="cannot keep to max_replicas_per_expert"):
        plumb.solve([1, 1, 10, 5], topo, num_redundant=4, num_groups=2,
                    max_replicas_per_expert=caps, hierarchy="hierarchical")
    # Caps every node can fill leave the hierarchical policy in play.
    roomy = plumb.solve([1, 1, 10, 5], topo, num_redundant=4, num_groups=2,
                        max_replicas_per_expert=2, hierarchy="hierarchical")
    assert roomy.metrics.hierarchy == "hierarchical" and (roomy.logcnt <= 2).all()
