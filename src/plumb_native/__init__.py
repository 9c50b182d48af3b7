"""Native kernels of plumb (C++17, pybind11), usable with numpy alone.

The only public entry point is :func:`histogram`; ``plumb.expert_histogram`` wraps it
for numpy inputs and the ``torch.ops.plumb`` operators call it for CPU tensors.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import _C

__all__ = ["histogram", "default_num_threads", "MAX_THREADS"]

# The most worker threads ``histogram`` accepts.
MAX_THREADS: int = _C.MAX_THREADS
_INT64 = np.dtype(np.int64)


def default_num_threads() -> int:
    """Threads the kernel uses when ``num_threads`` is None (hardware threads, at most 16)."""
    return _C.default_num_threads()


def histogram(
    ids: np.ndarray,
    num_experts: int,
    out: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Count router top-k expert ids per layer.

    Args:
        ids: int32 or int64 array, ``[T, k]`` (one layer) or ``[L, T, k]`` (fused over
            layers); a flat ``[N]`` is treated as one layer. ``-1`` entries are padding
            and are skipped. Any layout: non-contiguous views are copied once.
        num_experts: E >= 1; every other id must lie in ``[0, E)``.
        out: optional int64 C-contiguous array, ``[E]`` (for 1-D/2-D ids) or ``[L, E]``,
            that the counts are *added* to (the current window slot).
        num_threads: worker threads in [1, ``MAX_THREADS``]; None uses
            :func:`default_num_threads`. Small inputs use fewer threads than asked. The GIL
            is released.

    Returns:
        int64 counts ``[E]`` or ``[L, E]``: ``out`` itself when given.

    Raises:
        TypeError: ids/out of the wrong type or dtype.
        ValueError: bad shapes, ``num_experts < 1``, or an id outside ``[0, E)`` other than
            -1 (the message names the first such value and its position); ``out`` is then
            left unchanged.
    """
    if not isinstance(ids, np.ndarray):
        ids = np.asarray(ids)
        # Nested lists: any integers (and an empty list, which numpy makes float) as int64.
        if (ids.dtype.kind in "iu" and ids.dtype != np.int32) or ids.size == 0:
            ids = ids.astype(np.int64)
    # np.longlong is int64 under another dtype object, which the binding would refuse.
    if ids.dtype is not _INT64 and ids.dtype == _INT64:
        ids = ids.view(_INT64)
    if isinstance(out, np.ndarray) and out.dtype is not _INT64 and out.dtype == _INT64:
        out = out.view(_INT64)
    if isinstance(num_experts, np.integer) and not isinstance(num_experts, np.bool_):
        num_experts = int(num_experts)
    if isinstance(num_experts, int) and num_experts >= 2 ** 63:
        raise ValueError(f"num_experts must be < 2**63, got {num_experts}")
    return _C.histogram(ids, num_experts, out, num_threads)
