"""In-process executor: apply a RearrangementPlan to stacked expert weights, in place.

Within one layer the copies form a functional graph read backwards: every destination slot has
one source, a source may feed several destinations (replicas), and slots may swap in cycles.
Copies run in waves: a destination is ready once no pending copy still needs to read its old
contents; each wave is independent (no slot of it is read by another copy of it) and runs as
one fused ``torch._foreach_copy_``. When no destination is ready, the pending copies are pure
cycles (every slot read exactly once); each is rotated through a scratch buffer of bounded
size, chunk by chunk, so experts larger than the scratch still rotate correctly.

torch is imported lazily: ``import plumb`` stays numpy-only.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import List, Sequence

import numpy as np

from ..errors import InputError
from .plan import RearrangementPlan
from .routing import DST_SLOT, LAYER, SRC_SLOT

DEFAULT_MAX_SCRATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class ExecutionReport:
    """What an executor did (this process only).

    Attributes:
        slots_written: destination slots written (local copies and received transfers).
        bytes_written: bytes written into destination slots, all weight tensors together.
        bytes_sent, bytes_received: bytes exchanged with other ranks (0 in process).
        cycles: copy cycles rotated through the scratch buffer.
        staged_bytes: bytes that went through an intermediate buffer on the way (cycle
            rotation, and receives into slots whose old contents were still needed).
    """

    slots_written: int = 0
    bytes_written: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    cycles: int = 0
    staged_bytes: int = 0

    def __add__(self, other: "ExecutionReport") -> "ExecutionReport":
        return ExecutionReport(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                                  for f in fields(self)})


def as_weight_list(weights, num_layers: int, num_slots: int, name: str) -> list:
    """Flat [L, N, K] views of a tensor or a sequence of tensors, each [L, N, ...].

    All tensors must be on one device and each slot's elements must form one strided block
    that views flat (true for contiguous tensors), so cycles can rotate in chunks.
    """
    import torch

    tensors = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise InputError(f"{name} must be a torch.Tensor or a non-empty sequence of tensors")
    views = []
    for i, tensor in enumerate(tensors):
        if tuple(tensor.shape[:2]) != (num_layers, num_slots):
            raise InputError(f"{name}[{i}] must be [L, N, ...] = [{num_layers}, {num_slots}, ...],"
                             f" got {list(tensor.shape)}")
        if tensor.device != tensors[0].device:
            raise InputError(f"{name}: all tensors must be on one device, got "
                             f"{tensors[0].device} and {tensor.device}")
        try:
            views.append(tensor.view(num_layers, num_slots, -1))
        except RuntimeError:
            raise InputError(f"{name}[{i}]: each slot's elements must be viewable as one flat "
                             "block (make the tensor contiguous)") from None
    return views


def layer_bounds(table: np.ndarray, num_layers: int) -> np.ndarray:
    """int64 [L + 1]: rows of layer l of a layer-sorted plan table are bounds[l]:bounds[l + 1]."""
    return table[:, LAYER].searchsorted(np.arange(num_layers + 1))


def slot_bytes(views: Sequence) -> int:
    """Bytes of one slot across flat views whose last dimension K is a slot's elements."""
    return sum(v.shape[-1] * v.element_size() for v in views)


class Scratch:
    """A byte buffer of at most ``max_bytes`` on one device, allocated on first use, sized to
    the largest slot of one tensor when that is smaller."""

    def __init__(self, views: Sequence, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
            raise InputError(f"max_scratch_bytes must be an int, got {max_bytes!r}")
        largest_element = max(v.element_size() for v in views)
        if max_bytes < largest_element:
            raise InputError(f"max_scratch_bytes = {max_bytes} is below one element "
                             f"({largest_element} bytes)")
        self._device = views[0].device
        self._bytes = int(min(max_bytes, max(slot_bytes([v]) for v in views)))
        self._buffer = None

    def elements(self, dtype):
        """The buffer viewed as a 1-D tensor of ``dtype`` (as many whole elements as fit)."""
        import torch

        if self._buffer is None:
            self._buffer = torch.empty(self._bytes, dtype=torch.uint8, device=self._device)
        count = self._bytes // dtype.itemsize
        return self._buffer[: count * dtype.itemsize].view(dtype)


def _rotate(rows: List[Sequence], cycle: List[int], scratch: Scratch) -> None:
    """cycle[i] <- old cycle[i + 1], last <- old cycle[0], for each tensor's slot rows."""
    for tensor_rows in rows:
        first = tensor_rows[cycle[0]]
        if first.numel() == 0:
            continue
        buffer = scratch.elements(first.dtype)
        for start in range(0, first.shape[0], buffer.shape[0]):
            stop = min(first.shape[0], start + buffer.shape[0])
            staged = buffer[: stop - start]
            staged.copy_(first[start:stop])
            for dst, src in zip(cycle, cycle[1:]):
                tensor_rows[dst][start:stop].copy_(tensor_rows[src][start:stop])
            tensor_rows[cycle[-1]][start:stop].copy_(staged)


def copy_slots(layer_views: Sequence, dsts: Sequence[int], srcs: Sequence[int],
               scratch: Scratch) -> ExecutionReport:
    """Set slot ``dsts[i]`` of every [N, K] view to the old contents of slot ``srcs[i]``.

    ``dsts`` must be distinct; sources may repeat (one expert feeding several replicas) and
    may be destinations themselves (chains, cycles): each is read before it is overwritten.
    """
    import torch

    source = dict(zip(dsts, srcs))
    readers = {}
    for src in srcs:
        readers[src] = readers.get(src, 0) + 1
    rows = [view.unbind(0) for view in layer_views]
    per_slot = slot_bytes(layer_views)
    ready = [dst for dst in dsts if readers.get(dst, 0) == 0]
    written = 0
    while ready:
        for tensor_rows in rows:
            torch._foreach_copy_([tensor_rows[d] for d in ready],
                                 [tensor_rows[source[d]] for d in ready])
        freed = []
        for dst in ready:
            src = source.pop(dst)
            readers[src] -= 1
            if readers[src] == 0 and src in source:
                freed.append(src)
        written += len(ready)
        ready = freed
    # What is left reads every pending slot exactly once: disjoint pure cycles.
    cycles = staged = 0
    for start in sorted(source):
        if start not in source:
            continue
        cycle = [start]
        while source[cycle[-1]] != start:
            cycle.append(source[cycle[-1]])
        for slot in cycle:
            del source[slot]
        _rotate(rows, cycle, scratch)
        cycles += 1
        written += len(cycle)
        staged += per_slot
    return ExecutionReport(slots_written=written, bytes_written=written * per_slot,
                           cycles=cycles, staged_bytes=staged)


def execute_inplace(plan: RearrangementPlan, weights, *,
                    max_scratch_bytes: int = DEFAULT_MAX_SCRATCH_BYTES) -> ExecutionReport:
    """Rearrange stacked expert weights in place so that slot p of layer l holds expert
    ``plan.new_phy2log[l, p]``.

    Args:
        plan: from ``plumb.plan_rearrangement``.
        weights: a torch.Tensor [L, P, ...] or a sequence of them (e.g. w13 and w2), any
            dtype, all on one device (CPU or GPU); slot p of layer l holds expert
            ``plan.old_phy2log[l, p]`` on entry. Each slot must view flat (contiguous).
        max_scratch_bytes: bound on the extra memory, in bytes (at least one element); only
            allocated when slots swap in cycles, and never larger than one slot of one tensor.

    Returns an ExecutionReport; ``bytes_written`` equals (moves + local copies) times the
    bytes of one slot across ``weights``. Raises InputError on mismatched weights.
    """
    import torch

    views = as_weight_list(weights, plan.num_layers, plan.num_slots, "weights")
    scratch = Scratch(views, max_scratch_bytes)
    copies = plan.copies()
    report = ExecutionReport()
    bounds = layer_bounds(copies, plan.num_layers)
    with torch.no_grad():  # weights are often Parameters; the copies are not part of a graph
        for layer in range(plan.num_layers):
            rows = copies[bounds[layer]:bounds[layer + 1]]
            if len(rows):
                report += copy_slots([view[layer] for view in views],
                                     rows[:, DST_SLOT].tolist(), rows[:, SRC_SLOT].tolist(),
                                     scratch)
    return report
