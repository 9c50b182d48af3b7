"""SGLang drop-in: ``rebalance_experts`` with the signature and outputs of SGLang's
``sglang.srt.eplb.eplb_algorithms.rebalance_experts`` (less its ``algorithm`` argument).

SGLang computes its initial and periodic expert locations with
``ExpertLocationMetadata.init_by_eplb``, which calls ``eplb_algorithms.rebalance_experts``;
point that name at this function (e.g. assign it on the module before the server starts)::

    import sglang.srt.eplb.eplb_algorithms as algorithms
    from plumb.integrations import sglang as plumb_sglang

    algorithms.rebalance_experts = lambda *args, algorithm=None, **kwargs: (
        plumb_sglang.rebalance_experts(*args, **kwargs))
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from ._common import engine_groups, engine_redundant, engine_topology


def rebalance_experts(tokens_per_expert: Any, num_physical_experts: int,
                      num_local_physical_experts: int, num_groups: Optional[int],
                      num_nodes: int, *, hierarchy: str = "auto") -> Tuple[Any, Any, Any]:
    """Balanced placement of every layer, in SGLang's conventions.

    Args:
        tokens_per_expert: ``logical_count`` [steps, L, E] as SGLang passes it (or [L, E]);
            int or float tensor on any device. Summed over steps.
        num_physical_experts: P slots per layer.
        num_local_physical_experts: slots per GPU; G = P / this.
        num_groups: expert groups, or None; hierarchical placement iff a multiple of
            ``num_nodes`` (SGLang's "auto" rule).
        num_nodes: nodes; the G GPUs split evenly over them.
        hierarchy: plumb's choice (not SGLang's): "auto" also tries the global placement and
            keeps the better balanced per layer; "hierarchical" keeps each group on one node.

    Returns:
        (physical_to_logical_map int64 [L, P], logical_to_all_physical_map int64
        [L, E, max replicas] (slots ascending, -1 padded), expert_count int64 [L, E]), torch
        tensors on the CPU (SGLang moves them to its device).
    """
    import torch

    from .. import solve
    from ..errors import InputError
    from ..solver.validate import as_int, as_loads

    num_local_physical_experts = as_int(num_local_physical_experts,
                                        "num_local_physical_experts", 1)
    weights, window = as_loads(tokens_per_expert)
    num_experts = weights.shape[1]
    redundant = engine_redundant(num_physical_experts, num_experts, "num_physical_experts")
    if num_physical_experts % num_local_physical_experts:
        raise InputError(f"num_physical_experts = {num_physical_experts} must be a multiple of "
                         f"num_local_physical_experts = {num_local_physical_experts}")
    topo = engine_topology(num_physical_experts // num_local_physical_experts, num_nodes)
    placement = solve(weights if window is None else window, topo,
                      num_redundant=redundant, num_groups=engine_groups(num_groups, num_experts),
                      hierarchy=hierarchy)
    return (torch.from_numpy(placement.phy2log.copy()),
            torch.from_numpy(placement.log2phy.copy()),
            torch.from_numpy(placement.logcnt.copy()))
