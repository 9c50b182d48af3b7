"""``plumb.expert_histogram``: one entry point for numpy arrays and torch tensors."""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def expert_histogram(topk_ids: Any, num_experts: int, out: Optional[Any] = None) -> Any:
    """Per-layer expert counts of router top-k ids.

    Args:
        topk_ids: int32/int64 ``[T, k]`` or ``[L, T, k]`` ids (numpy array, torch tensor of any
            device, or nested lists). ``-1`` is padding and is skipped.
        num_experts: E (an int); every other id must lie in ``[0, E)``.
        out: optional int64 ``[E]`` / ``[L, E]`` accumulator of the same kind (numpy or torch,
            same device) that the counts are added to in place.

    Returns:
        int64 counts ``[E]`` or ``[L, E]`` of the input's kind (``out`` itself when given).

    Raises:
        ValueError: an id outside ``[0, E)`` other than -1 (``out`` is left unchanged), or
            shapes that do not match.
        TypeError: non-integer ids, or ``out`` of the wrong kind/dtype.
    """
    num_experts = _num_experts(num_experts)
    if _is_torch_tensor(topk_ids):
        import torch

        from . import ops  # noqa: F401  (registers torch.ops.plumb)

        if out is None:
            return torch.ops.plumb.expert_histogram(topk_ids, num_experts)
        if not isinstance(out, torch.Tensor):
            raise TypeError("out must be a torch.Tensor when topk_ids is a torch.Tensor")
        if out.ndim == 0 or out.shape[-1] != num_experts:
            raise ValueError(
                f"out must end in num_experts={num_experts}, got shape {list(out.shape)}"
            )
        torch.ops.plumb.expert_histogram_(out, topk_ids)
        return out
    import plumb_native

    if out is not None and _is_torch_tensor(out):
        raise TypeError("out is a torch.Tensor but topk_ids is not; pass both as torch or numpy")
    return plumb_native.histogram(topk_ids, num_experts, out)


def _num_experts(value: Any) -> int:
    """``num_experts`` as a Python int (numpy ints accepted; floats and bools refused, as by
    ``plumb_native.histogram``, rather than truncated)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"num_experts must be an int, got {value!r}")
    return int(value)
