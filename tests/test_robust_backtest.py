"""plumb.backtest: fit on the first part of a window, score per step on the rest."""

from __future__ import annotations

import numpy as np
import pytest

import plumb
from plumb.bench.workloads import make_loads, shape
from plumb.errors import InputError

SHAPE = shape("tiny")


def window(seed: int = 0, steps: int = 20) -> np.ndarray:
    return make_loads(SHAPE, 1.0, steps=steps, seed=seed, drift=0.05, window=True)


def run(data, **kwargs):
    return plumb.backtest(data, SHAPE.topology(), num_redundant=SHAPE.num_redundant,
                          num_groups=SHAPE.num_groups, **kwargs)


def test_shape_of_the_result_and_agreement_with_evaluate():
    data = window()
    result = run(data, fit_fraction=0.75)
    assert (result.fit_steps, result.heldout_steps) == (15, 5)
    assert [s.policy for s in result.scores] == ["plumb", "deepseek", "robust"]
    for entry in result.scores:
        assert entry.phy2log.shape == (SHAPE.num_layers, SHAPE.num_slots)
        assert entry.step_balancedness.shape == (5,)
        assert 0 < entry.heldout_balancedness <= 1 and 0 < entry.fit_balancedness <= 1
        expected = plumb.evaluate(entry.phy2log, data[15:], SHAPE.topology())
        assert entry.heldout_balancedness == pytest.approx(expected.heldout_balancedness)
    assert result.best in ("plumb", "deepseek", "robust")
    assert result[result.best].heldout_balancedness == max(
        s.heldout_balancedness for s in result.scores)
    table = result.table()
    assert table.count("\n") == 4 and "| robust |" in table


def test_robust_fits_its_own_steps_at_least_as_well_as_the_mean_objective():
    result = run(window(seed=1, steps=32), policies=("plumb", "robust"))
    assert result["robust"].fit_balancedness >= result["plumb"].fit_balancedness - 0.01


def test_current_placement_is_scored_and_results_are_deterministic():
    data = window(seed=2)
    current = plumb.solve(data[:4], SHAPE.topology(), num_redundant=SHAPE.num_redundant)
    first = run(data, policies=("robust",), current=current, half_life=3)
    second = run(data, policies=("robust",), current=current.phy2log, half_life=3)
    assert [s.policy for s in first.scores] == ["robust", "current"]
    assert np.array_equal(first["current"].phy2log, current.phy2log)
    for a, b in zip(first.scores, second.scores):
        assert np.array_equal(a.phy2log, b.phy2log)
        assert np.array_equal(a.step_balancedness, b.step_balancedness)
    with pytest.raises(KeyError):
        first["deepseek"]


@pytest.mark.parametrize("kwargs, data, match", [
    (dict(fit_fraction=1.0), None, "fit_fraction"),
    (dict(fit_fraction=0), None, "fit_fraction"),
    (dict(policies=("plumb", "magic")), None, "policies"),
    (dict(policies="robust"), None, "policies"),
    (dict(policies=()), None, "policies"),
    (dict(policies=None), None, "policies"),
    (dict(policies=5), None, "policies"),
    (dict(current="abc"), None, "current must be"),
    ({}, np.ones((4, 16)), r"\[T, L, E\]"),
    ({}, np.ones((1, 4, 16)), ">= 2 steps"),
    ({}, -np.ones((4, 4, 16)), ">= 0"),
])
def test_errors(kwargs, data, match):
    with pytest.raises(InputError, match=match):
        run(window() if data is None else data, **kwargs)


def test_policies_may_be_any_iterable():
    # An iterator checked with all() was used up before any policy was solved.
    result = run(window(), policies=iter(["plumb", "deepseek"]))
    assert [score.policy for score in result.scores] == ["plumb", "deepseek"]
