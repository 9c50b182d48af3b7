"""``plumb.recommend``: is a new placement worth its rearrangement? (the benefit gate)

Model (documented in the README). Step time is ``step_time_s``, of which ``moe_fraction`` is
MoE time, and MoE time is proportional to the sum over layers of the busiest rank's load:
under the current placement a step costs ``moe_fraction * step_time_s``; under the proposed
one that times ``sum_t new_max_t / sum_t cur_max_t`` over the held-out steps
(``max_t`` = sum over layers of the max rank time of step t). The saving per step is
``step_time_s * moe_fraction * (1 - ratio)``. Rearranging stalls serving for
``movement_stats(current, proposed).estimated_seconds`` (bytes over the topology's link
bandwidths). The proposal is fitted on the first ``fit_fraction`` of the window and scored
on the remaining (held-out) steps; the saving's uncertainty comes from a bootstrap over those
steps. ``apply`` is True only when the gain is statistically clear -- the one-sided lower
bootstrap bound of the saving is > 0 AND a sign-flip test of the paired per-step differences
``cur_max_t - new_max_t`` gives p <= 1 - confidence (exact for few steps, where the bootstrap
alone is too narrow) -- AND the rearrangement pays back (cost / lower-bound saving per step)
within ``horizon_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..topology import TopologyLike, as_topology
from .bootstrap import interval, lower_bound, resample_steps, sign_flip_pvalue
from .checks import as_number, as_window, split_window
from ..solver.validate import replica_counts
from .steps import balancedness_of, step_worst_and_ideal


@dataclass(frozen=True, eq=False)
class Recommendation:
    """The gate's answer, with everything it was decided on.

    Attributes:
        apply: rearrange now (True) or keep the current placement (False).
        reasons: one line per criterion, with its numbers.
        current_balancedness, proposed_balancedness: mean per-step model balancedness of each
            placement on the held-out steps.
        current_ci, proposed_ci: their two-sided bootstrap intervals at ``confidence``.
        saving_fraction: 1 - proposed / current MoE time over the held-out steps (point).
        saving_ci: its two-sided bootstrap interval; saving_low: its one-sided lower bound.
        p_value: one-sided sign-flip p-value of "no gain" on the held-out steps.
        saving_per_step_s: predicted MoE time saved per step in seconds (point estimate).
        saving_per_step_low_s: the same at ``saving_low`` (what the decision uses).
        rearrangement_bytes: bytes crossing rank boundaries; rearrangement_s: estimated
            stall in seconds (``plumb.rearrange.movement_stats``).
        break_even_steps: rearrangement_s / saving_per_step_low_s (inf when that is <= 0).
        horizon_steps: the horizon the payback had to fit in.
        proposed: the proposed :class:`plumb.Placement` (fitted on the fit steps).
        movement: the full ``MovementStats``.
    """

    apply: bool
    reasons: List[str]
    current_balancedness: float
    current_ci: Tuple[float, float]
    proposed_balancedness: float
    proposed_ci: Tuple[float, float]
    saving_fraction: float
    saving_ci: Tuple[float, float]
    saving_low: float
    p_value: float
    saving_per_step_s: float
    saving_per_step_low_s: float
    rearrangement_bytes: int
    rearrangement_s: float
    break_even_steps: float
    horizon_steps: int
    proposed: Any
    movement: Any

    def summary(self) -> str:
        """The decision and its reasons, one per line."""
        head = "apply the proposed placement" if self.apply else "keep the current placement"
        return "\n".join([head] + [f"- {reason}" for reason in self.reasons])


def _per_step(phy2log: np.ndarray, window: np.ndarray, speed: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray]:
    """(sum over layers of the max rank time [T], of the ideal rank time [T])."""
    counts = replica_counts(phy2log, window.shape[2])
    return step_worst_and_ideal(phy2log, counts, window, speed)


def _mean_balancedness(ideal: np.ndarray, worst: np.ndarray) -> np.ndarray:
    """Mean per-step balancedness over the last axis (the steps of each resample)."""
    return balancedness_of(worst, ideal).mean(axis=-1)


def recommend(current_phy2log: Any, window: Any, topo: TopologyLike, *, bytes_per_expert: int,
              step_time_s: float, moe_fraction: float = 0.5, horizon_steps: int = 10_000,
              confidence: float = 0.95, fit_fraction: float = 0.5, num_groups: int = 1,
              objective: str = "robust", half_life: Optional[float] = None,
              num_resamples: int = 2000, seed: int = 0) -> Recommendation:
    """Should the current placement be replaced? Apply only for a clear gain that pays back.

    Args:
        current_phy2log: the placement in use, int [L, P] (or a Placement).
        window: recent per-step loads [T, L, E] (T >= 2), oldest first.
        topo: plumb.Topology (bandwidths give the rearrangement time) or int G.
        bytes_per_expert: bytes of one expert's weights (int >= 0).
        step_time_s: measured time of one serving step in seconds (> 0).
        moe_fraction: share of the step time spent in MoE layers, in (0, 1].
        horizon_steps: the rearrangement must pay back within this many steps (int >= 1).
        confidence: confidence level of the intervals and of the one-sided test, in (0.5, 1).
        fit_fraction: share of the steps (the oldest) the proposal is fitted on, in (0, 1).
        num_groups: expert groups, as for ``plumb.solve``.
        objective: "robust" (default) or "mean", the proposal's ``solve`` objective.
        half_life: recency half-life in steps for the robust objective, or None.
        num_resamples: bootstrap resamples of the held-out steps (int >= 100).
        seed: bootstrap seed (the result is deterministic for a given seed).

    Returns:
        :class:`Recommendation`. See the module docstring for the time model.
    """
    from ..solver import solve
    from ..solver.metrics import as_previous
    from ..solver.validate import as_int

    topo = as_topology(topo)
    window = as_window(window)
    num_layers, num_experts = window.shape[1:]
    current = as_previous(current_phy2log, num_layers, num_experts, topo.num_ranks,
                          "current_phy2log")
    bytes_per_expert = as_int(bytes_per_expert, "bytes_per_expert", 0)
    step_time_s = as_number(step_time_s, "step_time_s", 0.0, low_open=True)
    moe_fraction = as_number(moe_fraction, "moe_fraction", 0.0, 1.0, low_open=True)
    horizon_steps = as_int(horizon_steps, "horizon_steps", 1)
    confidence = as_number(confidence, "confidence", 0.5, 1.0, low_open=True, high_open=True)
    num_resamples = as_int(num_resamples, "num_resamples", 100)
    seed = as_int(seed, "seed", 0)
    fit, held = split_window(window, fit_fraction)

    proposed = solve(fit, topo, num_redundant=current.shape[1] - num_experts,
                     num_groups=num_groups, objective=objective, half_life=half_life,
                     previous=current, bytes_per_expert=bytes_per_expert)
    speed = topo.rank_speed
    cur_max, ideal = _per_step(current, held, speed)
    new_max, _ = _per_step(proposed.phy2log, held, speed)
    if cur_max.sum() <= 0:
        raise InputError("window's held-out steps carry no load; nothing to decide on")

    picks = resample_steps(held.shape[0], num_resamples, seed)
    resampled_cur = cur_max[picks].sum(axis=1)
    # A resample of idle steps only has no saving to measure (0 / 0): it is left out, where
    # a floor on the divisor had scored it a saving of 100%.
    loaded = resampled_cur > 0
    saving_samples = 1.0 - new_max[picks][loaded].sum(axis=1) / resampled_cur[loaded]
    saving = float(1.0 - new_max.sum() / cur_max.sum())
    saving_low = lower_bound(saving_samples, confidence)
    moe_time = step_time_s * moe_fraction
    # solve scored the move from ``previous`` with bytes_per_expert: movement_stats, same P.
    movement = proposed.metrics.moves.cost
    cost_s = float(movement.estimated_seconds)
    saving_low_s = moe_time * saving_low
    break_even = cost_s / saving_low_s if saving_low_s > 0 else float("inf")

    p_value = sign_flip_pvalue(cur_max - new_max, num_resamples, seed)
    clear = saving_low > 0 and p_value <= 1.0 - confidence
    pays = break_even <= horizon_steps
    cur_bal = float(_mean_balancedness(ideal, cur_max))
    new_bal = float(_mean_balancedness(ideal, new_max))
    reasons = [
        f"held-out per-step balancedness {cur_bal:.4f} (current) -> {new_bal:.4f} (proposed) "
        f"over {held.shape[0]} steps; the proposal was fitted on the {fit.shape[0]} steps "
        f"before",
        f"predicted MoE time saving {saving:+.2%} per step ({confidence:.0%} lower bound "
        f"{saving_low:+.2%}, sign-flip p = {p_value:.3f}) = {moe_time * saving * 1e3:.3f} ms of "
        f"a {step_time_s * 1e3:.3f} ms "
        f"step with MoE share {moe_fraction:.0%}: "
        + ("statistically clear" if clear else "NOT statistically clear"),
        f"rearrangement moves {movement.moves} experts, {movement.bytes} bytes, about "
        f"{cost_s * 1e3:.3f} ms; break-even after "
        + (f"{break_even:.0f} steps" if np.isfinite(break_even) else "never")
        + f" ({'within' if pays else 'NOT within'} the horizon of {horizon_steps} steps)",
    ]
    return Recommendation(
        apply=bool(clear and pays), reasons=reasons,
        current_balancedness=cur_bal,
        current_ci=interval(_mean_balancedness(ideal[picks], cur_max[picks]), confidence),
        proposed_balancedness=new_bal,
        proposed_ci=interval(_mean_balancedness(ideal[picks], new_max[picks]), confidence),
        saving_fraction=saving, saving_ci=interval(saving_samples, confidence),
        saving_low=saving_low, p_value=p_value, saving_per_step_s=moe_time * saving,
        saving_per_step_low_s=saving_low_s, rearrangement_bytes=int(movement.bytes),
        rearrangement_s=cost_s, break_even_steps=float(break_even),
        horizon_steps=horizon_steps, proposed=proposed, movement=movement)
