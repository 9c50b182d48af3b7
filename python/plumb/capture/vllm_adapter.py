"""Duck-typed adapter for vLLM ``FusedMoE``-style layers (vLLM is never imported).

A module is treated as a vLLM fused MoE layer when it has the attributes ``top_k`` and
``global_num_experts`` and one of the two expert-selection entry points vLLM has shipped:

1. ``module.router.set_capture_fn(fn)`` (vLLM routers deriving from ``BaseRouter``): vLLM
   calls ``fn(topk_ids)`` with the *logical* ids after routing and before the EPLB
   logical-to-physical mapping. plumb chains onto any callback already set
   (``module.router.capture_fn``) and puts it back on detach.
2. ``module.select_experts(...) -> (topk_weights, topk_ids, ...)`` (older releases): plumb
   shadows it with an instance attribute that records ``result[1]`` and removes it on detach.
   Those releases map ids to physical slots inside ``select_experts`` when EPLB is on, so
   layers with ``enable_eplb`` true are refused there.

E is ``logical_num_experts`` when present (vLLM's count without redundant slots), else
``global_num_experts``. Python callbacks only run when the layer runs eagerly: use
``enforce_eager=True`` (or compilation level 0) so that every step is recorded, not just the
one traced or captured into a CUDA graph.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import InputError
from .registry import RouterAdapter, Sink

__all__ = ["FusedMoEAdapter"]


class FusedMoEAdapter(RouterAdapter):
    """Records the expert selection of vLLM ``FusedMoE``-style layers (see module docstring)."""

    def matches(self, module: Any) -> bool:
        if not (hasattr(module, "top_k") and hasattr(module, "global_num_experts")):
            return False
        router = getattr(module, "router", None)
        return (callable(getattr(router, "set_capture_fn", None))
                or callable(getattr(module, "select_experts", None)))

    def num_experts(self, module: Any) -> int:
        logical = getattr(module, "logical_num_experts", None)
        return int(logical if logical is not None else module.global_num_experts)

    def install(self, module: Any, sink: Sink) -> Callable[[], None]:
        router = getattr(module, "router", None)
        if callable(getattr(router, "set_capture_fn", None)):
            return self._install_capture_fn(router, sink)
        return self._install_select_experts(module, sink)

    @staticmethod
    def _install_capture_fn(router: Any, sink: Sink) -> Callable[[], None]:
        previous = getattr(router, "capture_fn", None)
        if previous is None:
            router.set_capture_fn(sink)
        else:
            def chained(topk_ids):
                previous(topk_ids)
                sink(topk_ids)
            router.set_capture_fn(chained)
        return lambda: router.set_capture_fn(previous)

    @staticmethod
    def _install_select_experts(module: Any, sink: Sink) -> Callable[[], None]:
        if getattr(module, "enable_eplb", False):
            raise InputError(
                f"{type(module).__name__}.select_experts returns physical slot ids when EPLB "
                "is enabled; capture needs a vLLM whose router has set_capture_fn, or EPLB off")
        original = module.select_experts
        had_own = "select_experts" in vars(module)

        def select_experts(*args, **kwargs):
            result = original(*args, **kwargs)
            sink(result[1])
            return result

        # An instance attribute shadows the class's method without touching other layers.
        object.__setattr__(module, "select_experts", select_experts)

        def remove() -> None:
            if had_own:
                object.__setattr__(module, "select_experts", original)
            else:
                del module.__dict__["select_experts"]
        return remove
