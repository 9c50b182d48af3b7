"""Balance quality on the SPEC section 6 shapes, against the DeepSeek greedy in the same mode."""

from __future__ import annotations

import numpy as np
import pytest

import plumb
from plumb.bench.workloads import SHAPES, adversarial, make_loads


def _pair(shape, loads):
    topo = shape.topology()
    kwargs = dict(num_redundant=shape.num_redundant, num_groups=shape.num_groups,
                  hierarchy=shape.hierarchy)
    return (plumb.solve(loads, topo, **kwargs),
            plumb.solve(loads, topo, policy="deepseek", **kwargs))


def _stacked(p):
    """bool [L]: layers where some rank holds two replicas of one expert."""
    rows = np.sort(p.phy2log.reshape(p.num_layers, p.topo.num_ranks, -1), axis=2)
    return (rows[:, :, 1:] == rows[:, :, :-1]).any(axis=(1, 2))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_not_worse_than_deepseek(shape, sigma):
    ours, theirs = _pair(shape, make_loads(shape, sigma=sigma, steps=4, seed=1))
    assert ours.metrics.hierarchy == theirs.metrics.hierarchy == shape.hierarchy
    assert ours.metrics.balancedness >= theirs.metrics.balancedness
    # Per layer, against every DeepSeek layer that also keeps replicas of an expert on
    # distinct ranks (plumb's constraint; DeepSeek stacks them freely).
    worse = ours.metrics.max_load > theirs.metrics.max_load * (1 + 1e-12)
    worse &= ~_stacked(theirs)
    assert not worse.any(), f"layers {np.flatnonzero(worse)} worse than deepseek"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", ["hot", "zeros", "equal", "ties", "hot-group"])
def test_adversarial_not_worse_than_deepseek(shape, kind):
    loads = adversarial(kind, 4, shape.num_experts, shape.num_gpus, seed=2,
                        num_groups=shape.num_groups)
    ours, theirs = _pair(shape, loads)
    assert (ours.metrics.max_load <= theirs.metrics.max_load * (1 + 1e-12) + 1e-12).all()


@pytest.mark.parametrize("shape", [s for s in SHAPES if s.num_redundant > 0], ids=lambda s: s.name)
def test_global_lb_gap_at_sigma_one(shape):
    loads = make_loads(shape, sigma=1.0, steps=64, seed=3)
    p = plumb.solve(loads, shape.topology(), num_redundant=shape.num_redundant,
                    num_groups=shape.num_groups, hierarchy="global")
    assert p.metrics.lb_gap_mean <= 0.002
