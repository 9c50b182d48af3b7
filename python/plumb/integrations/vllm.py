"""vLLM drop-in: ``PlumbEplbPolicy``, with the signature of vLLM's ``AbstractEplbPolicy``.

vLLM looks policies up by name in the dict ``EPLB_POLICIES`` of
``vllm.distributed.eplb.policy`` and checks the configured name against a fixed list, so the
simplest registration replaces the default entry before the engine starts::

    from vllm.distributed.eplb import policy
    from plumb.integrations.vllm import PlumbEplbPolicy

    policy.EPLB_POLICIES["default"] = PlumbEplbPolicy   # vllm serve ... --enable-eplb

vLLM then calls ``PlumbEplbPolicy.rebalance_experts(load_window_sum, num_replicas,
num_groups, num_nodes, num_ranks, current_phy2log)`` at each rearrangement.

``stats_writer(path, recorder, ...)`` writes a ``plumb.Recorder``'s window as the offline-EPLB
load statistics JSONL that vLLM's offline tooling (and ``plumb solve``) reads.
"""

from __future__ import annotations

from typing import Any, Optional

from ..capture.vllm_stats import stats_writer
from ._common import engine_groups, engine_redundant, engine_topology, optional_previous

__all__ = ["PlumbEplbPolicy", "stats_writer"]


class PlumbEplbPolicy:
    """plumb's solver behind vLLM's EPLB policy interface (a class with a classmethod).

    Subclass to change ``policy`` ("plumb" or "deepseek") or ``hierarchy``: "auto" tries the
    hierarchical placement when vLLM's rule picks it and the global one too, keeping the
    better balanced per layer; "hierarchical" keeps each expert group on one node.
    """

    policy = "plumb"
    hierarchy = "auto"

    @classmethod
    def rebalance_experts(cls, weight: Any, num_replicas: int, num_groups: int, num_nodes: int,
                          num_ranks: int, old_global_expert_indices: Optional[Any] = None) -> Any:
        """New physical-to-logical map for every MoE layer.

        Args:
            weight: [L, E] load per logical expert (int or float tensor, any device); a
                window [T, L, E] is summed over T.
            num_replicas: P physical slots per layer, a multiple of ``num_ranks``.
            num_groups: expert groups (0 for none); hierarchical placement iff it is a
                multiple of ``num_nodes``, as vLLM's default policy decides.
            num_nodes: nodes; ``num_ranks`` split evenly over them.
            num_ranks: G EP ranks.
            old_global_expert_indices: the current phy2log [L, P'] (any device), used to keep
                experts where they are when that costs no balance; ignored when it is not a
                complete placement on these ranks.

        Returns:
            torch.int64 tensor [L, P] on the CPU: the logical expert of each physical slot.
        """
        import torch

        from .. import solve
        from ..solver.validate import as_loads

        weights, window = as_loads(weight)
        num_layers, num_experts = weights.shape
        topo = engine_topology(num_ranks, num_nodes)
        previous = optional_previous(old_global_expert_indices, num_layers, num_experts,
                                     num_ranks)
        placement = solve(weights if window is None else window, topo,
                          num_redundant=engine_redundant(num_replicas, num_experts,
                                                         "num_replicas"),
                          num_groups=engine_groups(num_groups, num_experts),
                          policy=cls.policy, previous=previous, hierarchy=cls.hierarchy)
        return torch.from_numpy(placement.phy2log.copy())
