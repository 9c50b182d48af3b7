"""The locality pass as a ``plumb.solve`` post-pass (registered in ``plumb.solver.api``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .equivalence import placement_invariant
from .refine import refine_validated


def locality_pass(phy2log: np.ndarray, context: Any) -> np.ndarray:
    """The balanced phy2log int64 [L, P] with its traffic cut by ``improve_locality``.

    ``context`` is the ``plumb.solver.api.SolveContext`` of the call. Runs for policy "plumb"
    when per-source traffic is given or dispatch is "nearest", unless no placement can change
    traffic (``placement_invariant``); policy "deepseek" stays the exact greedy. Without
    traffic under even dispatch it does not run (pass uniform counts to optimise an explicit
    cost matrix for uniform sources). Layers solved hierarchically keep every replica on its
    node (group-limited routing's node packing). ``solve`` has validated the inputs, so they
    are used as they are.
    """
    # Every plain solve comes here: the common case returns at once.
    if context.traffic is None and context.dispatch == "even" or context.policy != "plumb":
        return phy2log
    topo = context.topo
    if placement_invariant(topo, context.traffic, context.dispatch,
                           phy2log.shape[1] == context.weights.shape[1]):
        return phy2log
    nearest = context.dispatch == "nearest"
    keep = context.keep_node
    if keep is None:
        keep = np.zeros(phy2log.shape[0], dtype=np.bool_)
    out, _ = refine_validated(phy2log, context.weights, topo, context.tokens,
                              nearest, context.load_slack,
                              np.ascontiguousarray(keep, dtype=np.bool_), 2)
    # The same object when nothing moved, so that solve keeps the balancer's own scores.
    return phy2log if np.array_equal(out, phy2log) else out
