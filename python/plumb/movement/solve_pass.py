"""``plumb.solve``'s post-pass for ``previous=``: ``minimise_movement`` on a SolveContext."""

from __future__ import annotations

from typing import Any

import numpy as np

from .options import NO_OPTIONS
from .pipeline import minimise_movement


def movement_pass(phy2log: np.ndarray, context: Any) -> np.ndarray:
    """The balanced (and locality-refined) phy2log int64 [L, P] rearranged to move fewer
    experts from ``context.previous``; unchanged without a previous placement.

    ``context`` is the ``plumb.solver.api.SolveContext`` of the call. Rank relabelling and slot
    preservation run for both policies (they change neither balance nor traffic); the swap
    refinement and the repair of the previous placement run for policy "plumb" under even
    dispatch (the repair only without per-source traffic), within ``load_slack`` unless the
    locality pass has already used the slack.
    """
    if context.previous is None:
        return phy2log
    from ..locality import interchangeable_ranks

    num_layers = phy2log.shape[0]
    keep_node = context.keep_node
    if keep_node is None:
        keep_node = np.zeros(num_layers, dtype=bool)
    locality_ran = context.policy == "plumb" and (context.traffic is not None
                                                  or context.dispatch != "even")
    options = context.movement if context.movement is not None else NO_OPTIONS
    return minimise_movement(
        phy2log, context.previous, context.weights, context.topo,
        interchangeable_ranks(context.topo, context.traffic, context.dispatch), keep_node,
        options, refine=context.policy == "plumb" and context.dispatch == "even",
        load_slack=0.0 if locality_ran else context.load_slack, traffic=context.traffic,
        caps=context.caps)
