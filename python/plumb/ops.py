"""torch.library operators of plumb, registered once on import.

``torch.ops.plumb.expert_histogram(Tensor topk_ids, int num_experts) -> Tensor``
    int64 counts [E] for ids [T, k] (or flat [N]), [L, E] for ids [L, T, k].
``torch.ops.plumb.expert_histogram_(Tensor(a!) out, Tensor topk_ids) -> ()``
    adds the counts to ``out`` in place (E = out.shape[-1]).
``torch.ops.plumb.expert_histogram_deferred_(Tensor(a!) out, Tensor(b!) num_invalid, Tensor topk_ids) -> ()``
    like ``expert_histogram_`` but never synchronises with the host: invalid ids are skipped
    and counted into ``num_invalid`` (int64 [1]) for the caller to check later.

Ids are int32 or int64; -1 is padding. The checked ops raise ValueError naming the first id
outside [0, E) and leave ``out`` unchanged. CPU tensors go to the C++ kernel without a copy
(threads = ``torch.get_num_threads()``, at most ``plumb_native.MAX_THREADS``); every other
device uses one fused ``scatter_add_`` over all layers (``_binned_counts``); there the checked
ops cost one host sync for validation and the deferred op none.
"""

from __future__ import annotations

import math
from typing import List

import torch

import plumb_native

__all__ = ["expert_histogram", "expert_histogram_", "expert_histogram_deferred_"]


def _check_ids(topk_ids: torch.Tensor) -> None:
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must have dtype int32 or int64, got {topk_ids.dtype}")
    if topk_ids.ndim not in (1, 2, 3):
        raise ValueError(
            f"topk_ids must be [T, k] or [L, T, k] (or flat [N]), got shape {list(topk_ids.shape)}"
        )


def _out_shape(topk_ids: torch.Tensor, num_experts: int) -> List[int]:
    return [topk_ids.shape[0], num_experts] if topk_ids.ndim == 3 else [num_experts]


def check_out(out: torch.Tensor, topk_ids: torch.Tensor) -> None:
    """The checks of the in-place ops: int32/int64 ids of 1-3 dims, int64 ``out`` of shape
    [E] (or [L, E] for [L, T, k] ids) on the ids' device; TypeError / ValueError otherwise."""
    _check_ids(topk_ids)
    if out.dtype != torch.int64:
        raise TypeError(f"out must have dtype int64, got {out.dtype}")
    if out.ndim == 0 or out.shape[-1] < 1:
        raise ValueError(f"out must be [E] or [L, E] with E >= 1, got shape {list(out.shape)}")
    expected = _out_shape(topk_ids, out.shape[-1])
    if list(out.shape) != expected:
        raise ValueError(
            f"out must have shape {expected} for topk_ids of shape {list(topk_ids.shape)}, "
            f"got {list(out.shape)}"
        )
    if out.device != topk_ids.device:
        raise ValueError(f"out is on {out.device} but topk_ids is on {topk_ids.device}")


def _binned_counts(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """int64 [L, E + 2] per-layer counts of ``topk_ids`` ([T, k] / [N]: L = 1; [L, T, k]):
    bin 0 counts padding (-1), bin 1 + e expert e, bin E + 1 every id outside [-1, E).

    One scatter over every layer and no data-dependent shape, so nothing waits for the
    device. Each launch costs several microseconds of host time on CUDA, hence the short
    chain: id + 1 maps padding to 0 and experts to 1..E; clamping to [-1, E + 1] sends every
    invalid id to -1 or E + 1, and the remainder modulo E + 2 folds -1 onto E + 1.
    """
    num_layers = topk_ids.shape[0] if topk_ids.ndim == 3 else 1
    per_layer = math.prod(topk_ids.shape[1:]) if topk_ids.ndim == 3 else topk_ids.numel()
    width = num_experts + 2
    ids = topk_ids.reshape(num_layers, per_layer)
    bins = torch.empty(ids.shape, dtype=torch.int64, device=ids.device)
    torch.add(ids, 1, out=bins)
    bins.clamp_(-1, num_experts + 1).remainder_(width)
    if num_layers > 1:
        bins += torch.arange(0, num_layers * width, width, device=ids.device).unsqueeze(1)
    counts = torch.zeros(num_layers * width, dtype=torch.int64, device=ids.device)
    ones = torch.ones((), dtype=torch.int64, device=ids.device).expand(bins.numel())
    counts.scatter_add_(0, bins.view(-1), ones)
    return counts.view(num_layers, width)


def _raise_first_invalid(topk_ids: torch.Tensor, num_experts: int) -> None:
    flat = topk_ids.reshape(-1).to(torch.int64)
    first = int(torch.nonzero((flat < -1) | (flat >= num_experts))[0, 0])
    value = int(flat[first])
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), topk_ids.shape))
    raise ValueError(
        f"expert id {value} at position {position} of ids with shape {list(topk_ids.shape)} "
        f"is outside [0, {num_experts}); only -1 is allowed as padding"
    )


def _accumulate_device(out: torch.Tensor, topk_ids: torch.Tensor) -> None:
    num_experts = out.shape[-1]
    counts = _binned_counts(topk_ids, num_experts)
    if bool(counts[:, -1].any()):
        _raise_first_invalid(topk_ids, num_experts)
    out.add_(counts[:, 1:-1].reshape(out.shape))


def _native_threads() -> int:
    """torch's intra-op thread count, within what the native kernel accepts."""
    return min(torch.get_num_threads(), plumb_native.MAX_THREADS)


def _accumulate_cpu(out: torch.Tensor, topk_ids: torch.Tensor) -> None:
    if out.is_contiguous():
        plumb_native.histogram(topk_ids.numpy(), out.shape[-1], out.numpy(), _native_threads())
        return
    out.add_(torch.from_numpy(
        plumb_native.histogram(topk_ids.numpy(), out.shape[-1], None, _native_threads())))


def _histogram_device(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    _check_num_experts(topk_ids, num_experts)
    out = torch.zeros(_out_shape(topk_ids, num_experts), dtype=torch.int64,
                      device=topk_ids.device)
    _accumulate_device(out, topk_ids)
    return out


def _histogram_cpu(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    _check_num_experts(topk_ids, num_experts)
    return torch.from_numpy(
        plumb_native.histogram(topk_ids.numpy(), num_experts, None, _native_threads()))


def _histogram_fake(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    _check_ids(topk_ids)
    return topk_ids.new_empty(_out_shape(topk_ids, num_experts), dtype=torch.int64)


def _histogram_inplace_device(out: torch.Tensor, topk_ids: torch.Tensor) -> None:
    check_out(out, topk_ids)
    _accumulate_device(out, topk_ids)


def _histogram_inplace_cpu(out: torch.Tensor, topk_ids: torch.Tensor) -> None:
    check_out(out, topk_ids)
    _accumulate_cpu(out, topk_ids)


def _histogram_inplace_fake(out: torch.Tensor, topk_ids: torch.Tensor) -> None:
    check_out(out, topk_ids)


def _deferred_device(out: torch.Tensor, num_invalid: torch.Tensor, topk_ids: torch.Tensor) -> None:
    check_out(out, topk_ids)
    _check_num_invalid(num_invalid, out)
    counts = _binned_counts(topk_ids, out.shape[-1])
    out.add_(counts[:, 1:-1].reshape(out.shape))
    invalid = counts[:, -1]
    num_invalid.add_(invalid if invalid.shape[0] == 1 else invalid.sum())


def _deferred_cpu(out: torch.Tensor, num_invalid: torch.Tensor, topk_ids: torch.Tensor) -> None:
    check_out(out, topk_ids)
    _check_num_invalid(num_invalid, out)
    try:
        _accumulate_cpu(out, topk_ids)
    except ValueError:
        # Rare error path: the native kernel refuses invalid ids outright, so the device
        # path, which skips and tallies them, does the counting instead.
        _deferred_device(out, num_invalid, topk_ids)


def _deferred_fake(out: torch.Tensor, num_invalid: torch.Tensor, topk_ids: torch.Tensor) -> None:
    check_out(out, topk_ids)
    _check_num_invalid(num_invalid, out)


def _check_num_invalid(num_invalid: torch.Tensor, out: torch.Tensor) -> None:
    if num_invalid.dtype != torch.int64 or list(num_invalid.shape) != [1]:
        raise ValueError(
            f"num_invalid must be int64 [1], got {num_invalid.dtype} {list(num_invalid.shape)}")
    if num_invalid.device != out.device:
        raise ValueError(f"num_invalid is on {num_invalid.device} but out is on {out.device}")


def _check_num_experts(topk_ids: torch.Tensor, num_experts: int) -> None:
    _check_ids(topk_ids)
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")


# The low-level Library API is used instead of torch.library.custom_op because its Python
# dispatch costs about 8 us per call against about 30 us, and capture calls the in-place op
# once per layer per decode step. Keeping _LIBRARY referenced keeps the registrations alive.
_LIBRARY = torch.library.Library("plumb", "DEF")
_SCHEMAS = {
    "expert_histogram": "expert_histogram(Tensor topk_ids, int num_experts) -> Tensor",
    "expert_histogram_": "expert_histogram_(Tensor(a!) out, Tensor topk_ids) -> ()",
    "expert_histogram_deferred_": ("expert_histogram_deferred_(Tensor(a!) out, "
                                   "Tensor(b!) num_invalid, Tensor topk_ids) -> ()"),
}
_KERNELS = {
    "expert_histogram": (_histogram_cpu, _histogram_device, _histogram_fake),
    "expert_histogram_": (_histogram_inplace_cpu, _histogram_inplace_device,
                          _histogram_inplace_fake),
    "expert_histogram_deferred_": (_deferred_cpu, _deferred_device, _deferred_fake),
}
for _name, _schema in _SCHEMAS.items():
    _cpu, _device, _fake = _KERNELS[_name]
    _LIBRARY.define(_schema)
    _LIBRARY.impl(_name, _cpu, "CPU")
    # CompositeExplicitAutograd is the fallback for every other backend (CUDA, XPU, MPS...).
    _LIBRARY.impl(_name, _device, "CompositeExplicitAutograd")
    torch.library.register_fake(f"plumb::{_name}", _fake, lib=_LIBRARY)

expert_histogram = torch.ops.plumb.expert_histogram
expert_histogram_ = torch.ops.plumb.expert_histogram_
expert_histogram_deferred_ = torch.ops.plumb.expert_histogram_deferred_
