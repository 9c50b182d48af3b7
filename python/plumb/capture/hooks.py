"""``plumb.attach`` / ``plumb.profile``: hook the routers of a model into a Recorder.

Routers are found with the adapters of ``plumb.capture.registry`` and numbered in module
order (for transformers and vLLM models that is layer order); recorder layer ``l`` is the
``l``-th router, ``handle.layer_names[l]`` its module path and ``handle.model_layers[l]`` the
decoder layer number read from that path (DeepSeek-V3's dense first layers and Qwen2-MoE's
``mlp_only_layers`` have no router, so these differ from ``l``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any, Callable, Iterator, List, Optional, Tuple

from ..errors import InputError
from .recorder import Recorder
from .registry import RouterAdapter, find_adapter

__all__ = ["CaptureHandle", "attach", "find_routers", "profile"]

_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")


def find_routers(model: Any) -> List[Tuple[str, Any, RouterAdapter]]:
    """``(module path, module, adapter)`` of every router in ``model``, in module order."""
    if not callable(getattr(model, "named_modules", None)):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    found = []
    for name, module in model.named_modules():
        adapter = find_adapter(module)
        if adapter is not None:
            found.append((name, module, adapter))
    return found


def _model_layer(path: str) -> Optional[int]:
    """The decoder layer number in a module path: its last integer component, if any."""
    numbers = _INDEX.findall(path)
    return int(numbers[-1]) if numbers else None


class CaptureHandle:
    """What ``attach`` installed; ``detach()`` (or leaving a ``with`` block) removes all of it.

    Attributes:
        recorder: the Recorder receiving the counts.
        layer_names: L module paths of the routers, recorder layer order.
        model_layers: L decoder layer numbers from those paths (None where a path has none).
    """

    def __init__(self, recorder: Recorder, layer_names: List[str],
                 model_layers: List[Optional[int]], removers: List[Callable[[], None]]) -> None:
        self.recorder = recorder
        self.layer_names = layer_names
        self.model_layers = model_layers
        self._removers = removers

    @property
    def attached(self) -> bool:
        return bool(self._removers)

    def detach(self) -> None:
        """Remove every hook, newest first; the model is exactly as before. Idempotent."""
        while self._removers:
            self._removers.pop()()

    def __enter__(self) -> "CaptureHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (f"CaptureHandle({len(self.layer_names)} routers, attached={self.attached}, "
                f"{self.recorder!r})")


def attach(model: Any, recorder: Optional[Recorder] = None, *, window: int = 1000,
           step_on_forward: bool = True, device: Optional[Any] = None) -> CaptureHandle:
    """Record the experts every MoE router of ``model`` chooses, on the routers' device.

    Args:
        model: a ``torch.nn.Module`` holding routers known to ``plumb.capture.registry``
            (transformers 5 OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3, GPT-OSS; vLLM
            FusedMoE-style layers; anything added with ``register_router``).
        recorder: where counts go; by default a new ``Recorder(L, E, window)``. A given one
            must have L = number of routers and E = their expert count.
        window: W of the default recorder, in steps.
        step_on_forward: close a step (``recorder.step()``) after every forward of ``model``,
            so one step = one forward = one decode step or prefill chunk. Set False to call
            ``step()`` yourself.
        device: allocate the default recorder's buffers on this device now, so that a
            window too large to fit fails here (InputError) rather than in the first
            forward; None allocates them at the first ``record``, on the ids' device.

    Returns:
        A CaptureHandle; ``handle.recorder`` holds the counts and ``handle.detach()`` undoes it.

    Raises:
        InputError: no router found, routers with different E, a recorder of the wrong shape,
            or (with ``device``) buffers that do not fit.
    """
    routers = find_routers(model)
    if not routers:
        raise InputError(
            f"no MoE router found in {type(model).__name__}; register its router class with "
            "plumb.capture.register_router (see plumb.capture.registry)")
    experts = {adapter.num_experts(module) for _, module, adapter in routers}
    if len(experts) != 1:
        raise InputError(f"routers of {type(model).__name__} disagree on the number of "
                         f"experts ({sorted(experts)}); attach one Recorder per expert count")
    num_experts = experts.pop()
    names = [name for name, _, _ in routers]
    if recorder is None:
        recorder = Recorder(len(routers), num_experts, window, device, layer_names=names)
    elif not isinstance(recorder, Recorder):
        raise InputError(f"recorder must be a plumb.Recorder, got {type(recorder).__name__}")
    elif (recorder.num_layers, recorder.num_experts) != (len(routers), num_experts):
        raise InputError(
            f"recorder is [L={recorder.num_layers}, E={recorder.num_experts}] but "
            f"{type(model).__name__} has {len(routers)} routers with {num_experts} experts")
    elif recorder.layer_names is None:
        recorder.layer_names = names
    removers: List[Callable[[], None]] = []
    try:
        for layer, (_, module, adapter) in enumerate(routers):
            removers.append(adapter.install(module, functools.partial(recorder.record, layer)))
        if step_on_forward:
            removers.append(model.register_forward_hook(
                lambda _module, _args, _output: recorder.step()).remove)
    except BaseException:
        for remove in reversed(removers):
            remove()
        raise
    return CaptureHandle(recorder, names, [_model_layer(name) for name in names], removers)


@contextlib.contextmanager
def profile(model: Any, recorder: Optional[Recorder] = None, **kwargs: Any
            ) -> Iterator[Recorder]:
    """``with plumb.profile(model) as rec: ...``: ``attach`` for the block, yielding the
    Recorder; the hooks are removed on exit, the counts stay in ``rec``. ``kwargs`` go to
    ``attach`` (``window``, ``step_on_forward``)."""
    handle = attach(model, recorder, **kwargs)
    try:
        yield handle.recorder
    finally:
        handle.detach()
