"""The locality pass as a ``plumb.solve`` post-pass (registered in ``plumb.solver.api``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .equivalence import placement_invariant
from .refine import improve_locality
from .traffic import EVEN, dispatch_code


def locality_pass(phy2log: np.ndarray, context: Any) -> np.ndarray:
    """The balanced phy2log int64 [L, P] with its traffic cut by ``improve_locality``.

    ``context`` is the ``plumb.solver.api.SolveContext`` of the call. Runs for policy "plumb"
    when per-source traffic is given or dispatch is "nearest", unless no placement can change
    traffic (``placement_invariant``); policy "deepseek" stays the exact greedy. Without
    traffic under even dispatch it does not run (pass uniform counts to optimise an explicit
    cost matrix for uniform sources). Layers solved hierarchically keep every replica on its
    node (group-limited routing's node packing).
    """
    if context.policy != "plumb" or (context.traffic is None
                                     and dispatch_code(context.dispatch) == EVEN):
        return phy2log
    if placement_invariant(context.topo, context.traffic, context.dispatch,
                           phy2log.shape[1] == context.weights.shape[1]):
        return phy2log
    out, _ = improve_locality(phy2log, context.weights, context.topo, context.traffic,
                              context.dispatch, context.load_slack, keep_node=context.keep_node)
    # The same object when nothing moved, so that solve keeps the balancer's own scores.
    return phy2log if np.array_equal(out, phy2log) else out
