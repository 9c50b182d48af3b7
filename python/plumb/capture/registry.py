"""Which modules are MoE routers, and how to read the experts they chose.

An *adapter* knows one kind of router module::

    class MyAdapter:
        def matches(self, module) -> bool: ...          # is this module a router it handles?
        def num_experts(self, module) -> int: ...       # E of that router
        def install(self, module, sink) -> remove: ...  # make the router call sink(topk_ids)
                                                        # once per forward; return an undo
                                                        # callable that restores the module

``sink`` takes the chosen ids (int32/int64 ``[T, k]``, -1 for padding) exactly as the model
uses them. Adapters are tried newest first, so a registration overrides a built-in one.

Most routers return their choice from ``forward``; for those ``register_router`` is enough::

    plumb.capture.register_router(MyTopKRouter, ids=2)              # class, output index
    plumb.capture.register_router("MyTopKRouter", ids=lambda out: out.indices,
                                  num_experts=lambda m: m.config.n_experts)

Built in: the transformers 5 ``*TopKRouter`` modules of OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE,
DeepSeek-V3 (``DeepseekV3TopkRouter``: grouped, biased routing; its output holds the ids after
group limiting and bias) and GPT-OSS, all returning ``(router_logits, weights, indices)``,
matched by class name so that transformers is never imported here; and vLLM ``FusedMoE``-style
layers (``plumb.capture.vllm_adapter``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Union

from ..errors import InputError

__all__ = ["RouterAdapter", "OutputRouterAdapter", "register_adapter", "register_router",
           "find_adapter", "HF_ROUTER_CLASSES"]

Sink = Callable[[Any], None]

# transformers 5 router classes whose forward returns (router_logits, weights, indices).
HF_ROUTER_CLASSES = (
    "OlmoeTopKRouter",
    "MixtralTopKRouter",
    "Qwen2MoeTopKRouter",
    "Qwen3MoeTopKRouter",
    "DeepseekV3TopkRouter",
    "GptOssTopKRouter",
)


class RouterAdapter(abc.ABC):
    """Base class of adapters (see the module docstring for the protocol)."""

    @abc.abstractmethod
    def matches(self, module: Any) -> bool:
        """True if ``module`` is a router this adapter handles."""

    @abc.abstractmethod
    def num_experts(self, module: Any) -> int:
        """E, the number of logical experts ``module`` routes to."""

    @abc.abstractmethod
    def install(self, module: Any, sink: Sink) -> Callable[[], None]:
        """Make ``module`` call ``sink(topk_ids)`` once per forward; return the undo."""


def _attribute_getter(name: str) -> Callable[[Any], int]:
    def get(module: Any) -> int:
        value = getattr(module, name, None)
        if value is None:
            raise InputError(f"router {type(module).__name__} has no attribute {name!r}; "
                             "pass num_experts= when registering it")
        return int(value)
    return get


@dataclass(frozen=True)
class OutputRouterAdapter(RouterAdapter):
    """A router whose ``forward`` output holds the chosen ids; read by a forward hook.

    ``cls`` is a class (matched with isinstance) or a class name (matched against the names
    in the module's MRO, so subclasses match too and nothing needs importing). ``ids`` is the
    index of the ids in a tuple output or a callable ``output -> ids``; ``num_experts`` is an
    attribute name or a callable ``module -> int``.
    """

    cls: Union[type, str]
    ids: Union[int, Callable[[Any], Any]] = 2
    num_experts_of: Union[str, Callable[[Any], int]] = "num_experts"

    def matches(self, module: Any) -> bool:
        if isinstance(self.cls, str):
            return any(klass.__name__ == self.cls for klass in type(module).__mro__)
        return isinstance(module, self.cls)

    def num_experts(self, module: Any) -> int:
        getter = self.num_experts_of
        if isinstance(getter, str):
            getter = _attribute_getter(getter)
        return int(getter(module))

    def install(self, module: Any, sink: Sink) -> Callable[[], None]:
        ids = self.ids
        if callable(ids):
            def hook(_module, _args, output):
                sink(ids(output))
        else:
            def hook(_module, _args, output):
                sink(output[ids])
        return module.register_forward_hook(hook).remove


_ADAPTERS: List[RouterAdapter] = []


def register_adapter(adapter: RouterAdapter) -> RouterAdapter:
    """Add ``adapter`` ahead of every adapter registered before it; returns it."""
    for method in ("matches", "num_experts", "install"):
        if not callable(getattr(adapter, method, None)):
            raise InputError(f"adapter {adapter!r} lacks a callable {method}()")
    _ADAPTERS.insert(0, adapter)
    return adapter


def register_router(cls: Union[type, str], *, ids: Union[int, Callable[[Any], Any]] = 2,
                    num_experts: Union[str, Callable[[Any], int]] = "num_experts"
                    ) -> RouterAdapter:
    """Teach ``plumb.attach`` another router class whose forward output holds the top-k ids.

    Args:
        cls: the router class, or its class name (no import needed; subclasses match too).
        ids: position of the int ``[T, k]`` ids in the output tuple (default 2, the
            transformers 5 ``(router_logits, weights, indices)`` convention), or a callable
            ``output -> ids``.
        num_experts: attribute holding E (default ``"num_experts"``) or ``module -> E``.
    """
    if not isinstance(cls, (type, str)):
        raise InputError(f"cls must be a class or a class name, got {cls!r}")
    if not (callable(ids) or (isinstance(ids, int) and not isinstance(ids, bool))):
        raise InputError(f"ids must be an output index or a callable, got {ids!r}")
    if not (callable(num_experts) or isinstance(num_experts, str)):
        raise InputError(f"num_experts must be an attribute name or a callable, "
                         f"got {num_experts!r}")
    return register_adapter(OutputRouterAdapter(cls, ids, num_experts))


def find_adapter(module: Any) -> Optional[RouterAdapter]:
    """The newest registered adapter that handles ``module``, or None."""
    for adapter in _ADAPTERS:
        if adapter.matches(module):
            return adapter
    return None


def _register_builtins() -> None:
    from .vllm_adapter import FusedMoEAdapter

    register_adapter(FusedMoEAdapter())
    for name in HF_ROUTER_CLASSES:
        register_router(name)


_register_builtins()
