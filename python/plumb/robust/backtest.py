"""``plumb.backtest``: fit placements on the first part of a window, score them on the rest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..bench.results import markdown_table
from ..errors import InputError
from ..topology import TopologyLike, as_topology
from ..solver.metrics import as_previous
from ..solver.validate import to_numpy
from .checks import as_window, split_window

POLICIES = ("plumb", "deepseek", "robust")


@dataclass(frozen=True, eq=False)
class PolicyScore:
    """One policy's placement fitted on the fit steps and scored per step.

    Attributes:
        policy: "plumb" (mean objective), "deepseek", "robust" or "current".
        phy2log: int64 [L, P], the placement.
        fit_balancedness: mean per-step balancedness on the fit steps (in-sample).
        heldout_balancedness: mean per-step balancedness on the held-out steps.
        step_balancedness: float64 [T_heldout], per held-out step.
    """

    policy: str
    phy2log: np.ndarray
    fit_balancedness: float
    heldout_balancedness: float
    step_balancedness: np.ndarray


@dataclass(frozen=True, eq=False)
class Backtest:
    """Result of :func:`backtest`: one :class:`PolicyScore` per policy, in the order asked."""

    fit_steps: int
    heldout_steps: int
    scores: Tuple[PolicyScore, ...]

    def __getitem__(self, policy: str) -> PolicyScore:
        for entry in self.scores:
            if entry.policy == policy:
                return entry
        raise KeyError(policy)

    @property
    def best(self) -> str:
        """The policy with the highest held-out balancedness (the first one on ties)."""
        return max(self.scores, key=lambda s: s.heldout_balancedness).policy

    def table(self) -> str:
        """Markdown table: policy, fit and held-out per-step balancedness."""
        rows = [[s.policy, f"{s.fit_balancedness:.4f}", f"{s.heldout_balancedness:.4f}"]
                for s in self.scores]
        return markdown_table(["policy", f"fit ({self.fit_steps} steps)",
                               f"held-out ({self.heldout_steps} steps)"], rows)


def backtest(window: Any, topo: TopologyLike, num_redundant: int = 0, num_groups: int = 1,
             fit_fraction: float = 0.5, policies: Sequence[str] = POLICIES,
             half_life: Optional[float] = None, hierarchy: str = "auto",
             current: Any = None) -> Backtest:
    """Fits each policy on the first ``fit_fraction`` of ``window`` and scores the rest.

    Args:
        window: per-step loads [T, L, E] (T >= 2), oldest first.
        topo, num_redundant, num_groups, hierarchy: as for ``plumb.solve``.
        fit_fraction: share of the steps (the oldest) to fit on, in (0, 1).
        policies: any of "plumb" (mean objective), "deepseek", "robust" (objective="robust",
            with ``half_life``).
        half_life: recency half-life in steps for "robust", or None.
        current: an existing placement [L, P] (or Placement) scored as policy "current".

    Returns:
        :class:`Backtest`; scores are per-step model balancedness (``plumb.evaluate``'s
        ``heldout_balancedness``).
    """
    from ..solver import evaluate, solve

    topo = as_topology(topo)
    window = as_window(window)
    fit, held = split_window(window, fit_fraction)
    # Read once into a tuple: an iterator checked with all() would be used up before the
    # loop below, and None or a number is no sequence at all.
    chosen = tuple(policies) if isinstance(policies, Iterable) and not isinstance(
        policies, str) else ()
    if not chosen or not all(p in POLICIES for p in chosen):
        raise InputError(f"policies must be a non-empty sequence of {list(POLICIES)}, got "
                         f"{policies!r}")
    policies = chosen
    placements: Dict[str, np.ndarray] = {}
    for policy in policies:
        kwargs = dict(num_redundant=num_redundant, num_groups=num_groups, hierarchy=hierarchy)
        if policy == "robust":
            kwargs.update(objective="robust", half_life=half_life)
        placements[policy] = solve(fit, topo, policy="deepseek" if policy == "deepseek"
                                   else "plumb", **kwargs).phy2log
    if current is not None:
        placements["current"] = as_previous(current, window.shape[1], window.shape[2],
                                            topo.num_ranks, "current")
    scores = []
    for policy, phy2log in placements.items():
        on_fit = evaluate(phy2log, fit, topo)
        on_held = evaluate(phy2log, held, topo)
        scores.append(PolicyScore(policy, np.asarray(to_numpy(phy2log, policy), dtype=np.int64),
                                  on_fit.heldout_balancedness, on_held.heldout_balancedness,
                                  on_held.step_balancedness))
    return Backtest(fit.shape[0], held.shape[0], tuple(scores))
