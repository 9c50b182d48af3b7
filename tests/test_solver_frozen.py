"""The fast builder of the solver's frozen results and the shared default caps."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest

import plumb
from plumb.solver.frozen import frozen_instance
from plumb.solver.metrics import Metrics
from plumb.solver.placement import Placement
from plumb.solver.validate import as_caps, shared_full


def _metric_values():
    layers = np.arange(3.0)
    return dict(rank_loads=np.ones((3, 2)), balancedness=0.9, layer_balancedness=layers,
                max_load=layers, lower_bound=layers, lb_gap=layers, lb_gap_mean=0.1,
                lb_gap_max=0.2, hierarchy="global")


def test_same_instance_as_the_constructor():
    built = frozen_instance(Metrics, **_metric_values())
    made = Metrics(**_metric_values())
    for name in (f.name for f in dataclasses.fields(Metrics)):
        ours, theirs = getattr(built, name), getattr(made, name)
        same = np.array_equal(ours, theirs) if isinstance(theirs, np.ndarray) else ours == theirs
        assert same, name
    assert built.moves is None and built.step_balancedness is None  # defaults filled in
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.balancedness = 1.0
    assert dataclasses.replace(built, lb_gap_mean=0.5).lb_gap_mean == 0.5
    assert pickle.loads(pickle.dumps(built)).lb_gap_max == 0.2


def test_missing_and_unknown_fields_raise():
    values = _metric_values()
    del values["lb_gap_max"]
    with pytest.raises(TypeError, match=r"missing fields \['lb_gap_max'\]"):
        frozen_instance(Metrics, **values)
    with pytest.raises(TypeError, match=r"unknown fields \['nonsense'\]"):
        frozen_instance(Metrics, nonsense=1, **_metric_values())


def test_default_factories_are_refused():
    @dataclass(frozen=True)
    class WithFactory:
        items: list = field(default_factory=list)

    with pytest.raises(TypeError, match="default factory"):
        frozen_instance(WithFactory)


def test_solve_returns_complete_frozen_results():
    placement = plumb.solve(np.arange(1.0, 17.0).reshape(2, 8), 4, num_redundant=4)
    assert isinstance(placement, Placement) and isinstance(placement.metrics, Metrics)
    assert placement.previous is None and placement.metrics.moves is None
    assert placement.log2phy.shape[:2] == (2, 8)  # the cached property still works
    with pytest.raises(dataclasses.FrozenInstanceError):
        placement.policy = "deepseek"


def test_default_caps_are_shared_and_unchanged_by_solves():
    caps = as_caps(None, 8, 12, 4)
    assert caps is as_caps(None, 8, 12, 4) and caps is shared_full(8, 4)
    assert caps.dtype == np.int64 and caps.flags.writeable
    rng = np.random.default_rng(0)
    plumb.solve(rng.lognormal(0.0, 1.5, (3, 8)), 4, num_redundant=4)
    plumb.solve(rng.lognormal(0.0, 1.5, (3, 8)), 4, num_redundant=4, hierarchy="global")
    assert np.array_equal(caps, np.full(8, 4)) and np.array_equal(shared_full(8, 12),
                                                                  np.full(8, 12))
