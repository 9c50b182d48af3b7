"""policy="deepseek": exact compatibility with the DeepSeek / vLLM default EPLB greedy.

Three implementations must agree bit for bit, ties included: the numba kernels
(``plumb.solver.deepseek``), the vLLM-style numpy baseline (``plumb.bench.baselines``) and the
plain reference in ``tests/deepseek_reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepseek_reference as reference
from plumb.bench.baselines import numpy_deepseek_rebalance
from plumb.bench.workloads import adversarial, make_loads
from plumb.errors import InputError
from plumb.solver.deepseek import deepseek_mode, deepseek_rebalance

# vLLM's tests/distributed/test_eplb_algo.py::test_basic_rebalance
KNOWN_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
KNOWN_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                 [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
KNOWN_LOGCNT = [[1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
                [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]]


def _all_three(weight, num_phy, num_groups, num_nodes, num_gpus):
    weight = np.asarray(weight, dtype=np.float64)
    return (deepseek_rebalance(weight, num_phy, num_groups, num_nodes, num_gpus),
            numpy_deepseek_rebalance(weight, num_phy, num_groups, num_nodes, num_gpus),
            reference.rebalance(weight, num_phy, num_groups, num_nodes, num_gpus))


def _assert_same(results, context=""):
    (p0, c0) = results[0]
    for name, (p, c) in zip(("numpy baseline", "reference"), results[1:]):
        assert np.array_equal(p0, p), f"phy2log differs from the {name} {context}"
        assert np.array_equal(c0, c), f"logcnt differs from the {name} {context}"


@pytest.mark.parametrize("impl", ["numba", "numpy", "reference"])
def test_known_answer_vllm_basic_rebalance(impl):
    fn = {"numba": deepseek_rebalance, "numpy": numpy_deepseek_rebalance,
          "reference": reference.rebalance}[impl]
    phy2log, logcnt = fn(np.array(KNOWN_WEIGHT, dtype=np.float64), 16, 4, 2, 8)
    assert phy2log.tolist() == KNOWN_PHY2LOG
    assert logcnt.tolist() == KNOWN_LOGCNT
    if impl == "numba":
        assert phy2log.dtype == np.int64 and logcnt.dtype == np.int64


def test_mode_rule():
    assert deepseek_mode(8, 4) == "hierarchical"
    assert deepseek_mode(8, 8) == "hierarchical"
    assert deepseek_mode(8, 3) == "global"
    # groups % nodes != 0 behaves exactly like (1 group, 1 node)
    w = make_loads("olmoe", 1.0, steps=2, seed=3)
    assert np.array_equal(deepseek_rebalance(w, 72, 4, 3, 8)[0],
                          deepseek_rebalance(w, 72, 1, 1, 8)[0])


# (E, P, groups, nodes, G): hierarchical and global, 1 or several slots per GPU, one group or
# one GPU per node, no redundancy, P == G.
CONFIGS = [
    (12, 16, 4, 2, 8), (12, 12, 4, 2, 4), (16, 32, 4, 2, 8), (16, 16, 1, 1, 4),
    (8, 16, 2, 2, 4), (64, 72, 8, 4, 8), (64, 80, 8, 8, 16), (32, 48, 4, 2, 8),
    (9, 18, 3, 3, 6), (8, 8, 1, 1, 4), (6, 12, 3, 2, 4), (20, 40, 5, 5, 10),
    (24, 24, 4, 2, 8), (16, 64, 4, 2, 8), (10, 15, 5, 5, 5), (8, 8, 1, 1, 8),
]
KINDS = ["int0-2", "int0-9", "equal", "zeros", "lognormal", "halves", "one-hot", "binary"]


def _weights(kind, rng, layers, experts):
    if kind == "int0-2":
        return rng.integers(0, 3, (layers, experts)).astype(np.float64)
    if kind == "int0-9":
        return rng.integers(0, 10, (layers, experts)).astype(np.float64)
    if kind == "equal":
        return np.full((layers, experts), 7.0)
    if kind == "zeros":
        return np.zeros((layers, experts))
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.5, (layers, experts))
    if kind == "halves":  # ties between non-integers and exact w / count collisions
        return rng.integers(0, 2, (layers, experts)) * rng.choice([1.0, 0.5, 1 / 3, 2.0],
                                                                   (layers, experts))
    if kind == "one-hot":
        w = np.zeros((layers, experts))
        w[np.arange(layers), rng.integers(0, experts, layers)] = 100.0
        return w
    if kind == "binary":
        return rng.integers(0, 2, (layers, experts)).astype(np.float64)
    raise AssertionError(kind)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "E%d-P%d-g%d-n%d-G%d" % c)
def test_random_compat_small(config):
    """16 configs x 8 kinds x 6 seeds x both modes = 1536 cases, 3 layers each."""
    experts, num_phy, groups, nodes, gpus = config
    rng = np.random.default_rng(experts * 1000 + num_phy)
    for kind in KINDS:
        for _ in range(6):
            w = _weights(kind, rng, 3, experts)
            for g, n in ((groups, nodes), (1, 1)):
                _assert_same(_all_three(w, num_phy, g, n, gpus),
                             f"(config {config} as g={g} n={n}, kind {kind}, w={w.tolist()})")


@pytest.mark.parametrize("config", [(256, 288, 8, 4, 32), (256, 320, 1, 1, 64),
                                    (128, 160, 1, 1, 8), (64, 64, 1, 1, 8)],
                         ids=["dsv3-prefill", "dsv3-decode", "qwen3", "olmoe"])
def test_random_compat_benchmark_shapes(config):
    """The real shapes (long sorts take numpy's SIMD paths), with heavy ties."""
    experts, num_phy, groups, nodes, gpus = config
    rng = np.random.default_rng(experts + num_phy)
    for kind in ("int0-2", "int0-9", "equal", "lognormal"):
        w = _weights(kind, rng, 2, experts)
        _assert_same(_all_three(w, num_phy, groups, nodes, gpus), f"({config}, {kind})")


def test_compat_on_benchmark_workloads():
    """Whole-model agreement numba vs numpy baseline on generated benchmark loads."""
    for name, args in (("dsv3-prefill", (288, 8, 4, 32)), ("dsv3-decode", (320, 1, 1, 64)),
                       ("qwen3-30b", (160, 1, 1, 8)), ("mixtral", (8, 1, 1, 4))):
        for sigma in (0.5, 1.5):
            w = make_loads(name, sigma, steps=2, seed=7)
            a = deepseek_rebalance(w, *args)
            b = numpy_deepseek_rebalance(w, *args)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), (name, sigma)
    for kind in ("hot", "zeros", "equal", "ties", "hot-group"):
        w = adversarial(kind, 4, 256, 32, seed=1, num_groups=8)
        _assert_same(_all_three(w, 288, 8, 4, 32), kind)


def test_tie_order_is_load_bearing(monkeypatch):
    """With a stable sort the reference gives other answers on tied inputs, so the compat tests
    above do check numpy's unstable tie order, not just the sorted values."""
    rng = np.random.default_rng(0)
    weights = [rng.integers(0, 3, (1, 64)).astype(np.float64) for _ in range(10)]
    ours = [deepseek_rebalance(w, 80, 8, 4, 16)[0] for w in weights]
    argsort = np.argsort
    monkeypatch.setattr(np, "argsort", lambda a, axis=-1, kind=None: argsort(a, axis, "stable"))
    stable = [reference.rebalance(w, 80, 8, 4, 16)[0] for w in weights]
    assert sum(not np.array_equal(a, b) for a, b in zip(ours, stable)) > 0


def test_deterministic_and_input_untouched():
    w = make_loads("dsv3-prefill", 1.0, steps=2, seed=1)
    before = w.copy()
    a = deepseek_rebalance(w, 288, 8, 4, 32)
    b = deepseek_rebalance(w, 288, 8, 4, 32)
    assert np.array_equal(w, before)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # ints, float32 and non-contiguous input are accepted
    c = deepseek_rebalance(np.asfortranarray(w.astype(np.int64)), 288, 8, 4, 32)
    assert np.array_equal(a[0], c[0])


def test_empty_layers():
    p, c = deepseek_rebalance(np.zeros((0, 8)), 8, 1, 1, 4)
    assert p.shape == (0, 8) and c.shape == (0, 8)


@pytest.mark.parametrize("weight,args,match", [
    (np.ones(8), (8, 1, 1, 4), "2-D"),
    (np.ones((2, 8)), (6, 1, 1, 2), "num_replicas .* >= the number of experts"),
    (np.ones((2, 8)), (10, 1, 1, 4), "multiple of num_gpus"),
    (np.ones((2, 8)), (8, 3, 1, 4), "num_groups .* must divide"),
    (np.ones((2, 8)), (8, 4, 4, 2), "num_gpus .* multiple of num_nodes"),
    (np.full((2, 8), np.nan), (8, 1, 1, 4), "finite"),
    (np.full((2, 8), np.inf), (8, 1, 1, 4), "finite"),
    (-np.ones((2, 8)), (8, 1, 1, 4), ">= 0"),
    (np.ones((2, 8)), (0, 1, 1, 4), "num_replicas must be >= 1"),
    (np.ones((2, 8)), (8, 1, 1, 2.0), "num_gpus must be an int"),
    (np.array([["a"] * 8]), (8, 1, 1, 4), "numbers"),
])
def test_errors(weight, args, match):
    with pytest.raises(InputError, match=match):
        deepseek_rebalance(weight, *args)


@st.composite
def _problems(draw):
    nodes = draw(st.sampled_from([1, 2, 4]))
    groups_per_node = draw(st.sampled_from([1, 2, 3]))
    group_size = draw(st.sampled_from([1, 2, 4]))
    gpus_per_node = draw(st.sampled_from([1, 2, 4]))
    experts = nodes * groups_per_node * group_size
    gpus = nodes * gpus_per_node
    slots = -(-experts // gpus) + draw(st.integers(0, 2))
    groups = nodes * groups_per_node
    if draw(st.booleans()):  # global mode, sometimes through groups % nodes != 0
        groups, nodes = draw(st.sampled_from([(1, 1), (groups, groups + 1)]))
    layers = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["small-int", "float", "zeros-mixed"]))
    if kind == "small-int":
        values = st.integers(0, 4).map(float)
    elif kind == "float":
        values = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
    else:
        values = st.sampled_from([0.0, 0.0, 1.0, 2.5])
    w = draw(st.lists(st.lists(values, min_size=experts, max_size=experts),
                      min_size=layers, max_size=layers))
    return np.array(w, dtype=np.float64), gpus * slots, groups, nodes, gpus


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_properties(problem):
    w, num_phy, groups, nodes, gpus = problem
    layers, experts = w.shape
    phy2log, logcnt = deepseek_rebalance(w, num_phy, groups, nodes, gpus)
    assert phy2log.shape == (layers, num_phy) and logcnt.shape == (layers, experts)
    assert phy2log.min() >= 0 and phy2log.max() < experts
    assert np.all(logcnt >= 1)
    assert np.all(logcnt.sum(axis=1) == num_phy)
    for layer in range(layers):
        assert np.array_equal(np.bincount(phy2log[layer], minlength=experts), logcnt[layer])
    hierarchical = deepseek_mode(groups, nodes) == "hierarchical"
    if hierarchical and nodes > 1:
        # every expert's replicas stay in one node, and each node holds whole groups
        node_of_slot = np.arange(num_phy) // (num_phy // nodes)
        group_size = experts // groups
        for layer in range(layers):
            node_of_expert = np.full(experts, -1)
            for slot, e in enumerate(phy2log[layer]):
                assert node_of_expert[e] in (-1, node_of_slot[slot])
                node_of_expert[e] = node_of_slot[slot]
            per_group = node_of_expert.reshape(groups, group_size)
            assert np.all(per_group == per_group[:, :1])
            assert np.all(np.bincount(per_group[:, 0], minlength=nodes) == groups // nodes)
    else:
        # greedy replication is optimal: no replica can move to lower the max per-replica load
        for layer in range(layers):
            per_replica = w[layer] / logcnt[layer]
            multi = logcnt[layer] > 1
            if multi.any():
                assert per_replica.max() <= (w[layer][multi] / (logcnt[layer][multi] - 1)).min()
    _assert_same([(phy2log, logcnt),
                  numpy_deepseek_rebalance(w, num_phy, groups, nodes, gpus),
                  reference.rebalance(w, num_phy, groups, nodes, gpus)])


def test_through_plumb_solve():
    import plumb

    w = np.array(KNOWN_WEIGHT, dtype=np.float64)
    topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4)
    p = plumb.solve(w, topo, num_redundant=4, num_groups=4, policy="deepseek")
    assert np.asarray(p.phy2log).tolist() == KNOWN_PHY2LOG
    assert np.asarray(p.logcnt).tolist() == KNOWN_LOGCNT
    # a benchmark shape, both modes, against the numpy baseline
    w = make_loads("dsv3-prefill", 1.0, steps=2, seed=5)
    topo = plumb.Topology.cluster(nodes=4, gpus_per_node=8)
    p = plumb.solve(w, topo, num_redundant=32, num_groups=8, policy="deepseek")
    assert np.array_equal(p.phy2log, numpy_deepseek_rebalance(w, 288, 8, 4, 32)[0])
    p = plumb.solve(w, topo, num_redundant=32, num_groups=8, policy="deepseek",
                    hierarchy="global")
    assert np.array_equal(p.phy2log, numpy_deepseek_rebalance(w, 288, 1, 1, 32)[0])


def test_vllm_float32_cast_changes_nothing_for_token_counts():
    """vLLM casts loads to float32 first; for integer counts (exact in float32, group sums
    too) the placement is the same as deepseek_rebalance's float64 one, ties included."""
    rng = np.random.default_rng(11)
    for weight in (rng.integers(0, 3, (4, 64)), rng.integers(0, 100_000, (4, 64)),
                   make_loads("dsv3-prefill", 1.0, steps=2, seed=2)[:4, :64]):
        w = np.asarray(weight, dtype=np.float64)
        for args in ((80, 8, 4, 16), (80, 1, 1, 16)):
            ours = deepseek_rebalance(w, *args)
            vllm = numpy_deepseek_rebalance(w, *args, dtype=np.float32)
            assert np.array_equal(ours[0], vllm[0]) and np.array_equal(ours[1], vllm[1])


def test_hierarchical_needs_equal_nodes_and_follows_their_ranks():
    import plumb

    w = np.arange(1, 9, dtype=np.float64)
    uneven = plumb.Topology.from_levels([0, 0, 0, 1])
    with pytest.raises(InputError, match=r"nodes \(2\) and the same number of ranks"):
        plumb.solve(w, uneven, num_redundant=4, num_groups=2, policy="deepseek",
                    hierarchy="hierarchical")
    # "auto" falls back to the global greedy, as for groups not divisible by the nodes.
    auto = plumb.solve(w, uneven, num_redundant=4, num_groups=2, policy="deepseek")
    assert auto.metrics.hierarchy == "global"
    assert np.array_equal(auto.phy2log, numpy_deepseek_rebalance(w[None], 12, 1, 1, 4)[0])
    # Nodes whose ranks interleave get DeepSeek's node-major placement moved onto them: each
    # group stays on one node.
    interleaved = plumb.Topology.from_levels([0, 1, 0, 1])
    blocked = plumb.Topology.from_levels([0, 0, 1, 1])
    moved = plumb.solve(w, interleaved, num_redundant=4, num_groups=2, policy="deepseek")
    plain = plumb.solve(w, blocked, num_redundant=4, num_groups=2, policy="deepseek")
    assert moved.metrics.hierarchy == plain.metrics.hierarchy == "hierarchical"
    blocks = plain.phy2log.reshape(4, 3)
    np.testing.assert_array_equal(moved.phy2log.reshape(4, 3)[[0, 2, 1, 3]], blocks)
    for placement, topo in ((moved, interleaved), (plain, blocked)):
        node_of_slot = np.repeat(topo.node_of_rank, 3)
        for group in range(2):
            assert np.unique(node_of_slot[placement.phy2log[0] // 4 == group]).size == 1
