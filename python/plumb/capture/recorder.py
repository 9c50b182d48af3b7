"""``plumb.Recorder``: exact per-step expert counts kept on the device of the router ids.

Layout (all int64, on one device, allocated at the first ``record`` unless ``device`` is given):

``current``  [L, E]     counts of the step in progress; ``record`` adds to it in place.
``ring``     [W, L, E]  the last W completed steps; step s lives in slot ``s % W``.
``totals``   [L, E]     every count since construction or ``reset``, never capped.
``traffic``  [L, G, E]  optional per-source counts (G = ``num_sources``), since construction.

``staged``   [L, S]     accelerators only: ids of the step in progress not counted yet (-1 pad).

On the CPU ``record`` adds to a fixed view of ``current`` with the native kernel. On
accelerators every kernel launch costs host time (about 20 us each on the H200 host of
RESULTS.md's capture_cuda section, and a histogram takes about 8), so ``record`` only copies
its ids into the layer's row of ``staged`` (one launch; with per-source accounting a second
one writes their source beside them) and ``step()`` counts every layer's staged ids at once
with one fused histogram (readers add them to what they return without consuming them).
Calls with more than S ids, CUDA-graph capture and torch.compile tracing take the direct
path instead: one in-place histogram op per call into ``current`` (and one into
``traffic``). Neither path allocates per call or waits for the device; the direct one is
what makes ``record`` safe inside a captured CUDA graph: replays keep accumulating into the
same address, and ``step()`` (outside the graph) rolls it into the ring.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import ops  # also registers torch.ops.plumb.*
from ..errors import InputError
from ..solver.validate import as_int

__all__ = ["Recorder"]

_histogram_ = torch.ops.plumb.expert_histogram_
_histogram_deferred_ = torch.ops.plumb.expert_histogram_deferred_

# Ids one layer may stage per step on an accelerator (S above): decode steps of up to 256
# tokens x top-8 fit; larger calls amortise their launches over many ids anyway.
STAGED_IDS = 2048


def _direct_only(topk_ids: torch.Tensor) -> bool:
    """Whether ``record`` must count ``topk_ids`` at once: inside torch.compile tracing
    (host-side fill counters would be baked into the graph) or CUDA-graph capture (a replay
    must add its counts, not copy ids into a row that ``step()`` never sees between replays)."""
    return torch.compiler.is_compiling() or (topk_ids.is_cuda
                                             and torch.cuda.is_current_stream_capturing())


def _source_index(source: Any, num_sources: int) -> int:
    """``source`` as a Python int in [0, num_sources) (numpy ints accepted), else
    InputError."""
    if isinstance(source, (int, np.integer)) and not isinstance(source, (bool, np.bool_)) \
            and 0 <= source < num_sources:
        return int(source)
    raise InputError(f"source must be an int in [0, {num_sources}), got {source!r}")


class Recorder:
    """Ring buffer of per-step expert counts ``[W, L, E]`` plus never-capped totals.

    Args:
        num_layers: L, number of MoE layers (recorder layer ids are ``0 .. L-1``).
        num_experts: E, logical experts per layer.
        window: W, completed steps kept (oldest dropped first). Default 1000.
        device: where the buffers live; default: the device of the first ids recorded.
        num_sources: G to enable per-source accounting (``traffic`` [L, G, E]); None disables it.
        source: the source (rank) that ``record`` attributes counts to by default, in [0, G).
        layer_names: optional L names (module paths) kept for metadata.

    Thread safety: ``record`` is meant for one thread (the model's); ``step``, ``window`` and
    the other readers take a lock so that a background writer never sees a half-rolled step.
    """

    def __init__(self, num_layers: int, num_experts: int, window: int = 1000,
                 device: Optional[Any] = None, *, num_sources: Optional[int] = None,
                 source: int = 0, layer_names: Optional[Sequence[str]] = None) -> None:
        self.num_layers = as_int(num_layers, "num_layers", 1)
        self.num_experts = as_int(num_experts, "num_experts", 1)
        self.window_size = as_int(window, "window", 1)
        self.num_sources = None if num_sources is None else as_int(num_sources, "num_sources", 1)
        if self.num_sources is None and source != 0:
            raise InputError("source needs num_sources (per-source accounting is off)")
        if self.num_sources is not None:
            source = _source_index(source, self.num_sources)
        self.source = source
        if layer_names is not None and len(layer_names) != self.num_layers:
            raise InputError(f"layer_names has {len(layer_names)} names for "
                             f"{self.num_layers} layers")
        self.layer_names: Optional[List[str]] = (None if layer_names is None
                                                 else [str(n) for n in layer_names])
        self.steps = 0  # completed steps since construction or reset()
        self._lock = threading.Lock()
        self._device: Optional[torch.device] = None
        self._current: Optional[torch.Tensor] = None
        self._staged: Optional[torch.Tensor] = None
        if device is not None:
            self._allocate(torch.device(device))

    # -- buffers -----------------------------------------------------------------------------

    def _allocate(self, device: torch.device) -> None:
        # Normal tensors even when the first record() runs under torch.inference_mode()
        # (as servers run forwards): inference tensors could not be updated outside it, and
        # step() / reset() / a later no_grad forward would fail. In-place updates of normal
        # tensors are allowed inside inference mode.
        try:
            with torch.inference_mode(False):
                self._allocate_buffers(device)
        except (RuntimeError, OverflowError, TypeError) as err:
            # Not half-built: the next record() tries again, and fails the same way.
            self._device = None
            self._current = None
            per_step = self.num_layers * self.num_experts * 8
            raise InputError(
                f"Recorder buffers do not fit on {device}: window = {self.window_size} steps "
                f"of [L={self.num_layers}, E={self.num_experts}] int64 counts is "
                f"{self.window_size * per_step / 2 ** 30:.3g} GiB ({err})") from None

    def _allocate_buffers(self, device: torch.device) -> None:
        shape = (self.num_layers, self.num_experts)
        self._device = device
        self._current = torch.zeros(shape, dtype=torch.int64, device=device)
        self._ring = torch.zeros((self.window_size,) + shape, dtype=torch.int64, device=device)
        self._totals = torch.zeros(shape, dtype=torch.int64, device=device)
        # Fixed per-layer views: record() never indexes or allocates on the hot path.
        self._rows = self._current.unbind(0)
        self._traffic = None
        if self.num_sources is not None:
            self._traffic = torch.zeros((self.num_layers, self.num_sources, self.num_experts),
                                        dtype=torch.int64, device=device)
        # The checked op validates ids with a host sync on accelerators; there the deferred
        # op skips bad ids and counts them on the device instead, checked when read back.
        self._deferred = self._accelerated(device)
        self._num_invalid = torch.zeros(1, dtype=torch.int64, device=device)
        self._staged = None
        self._staged_source = None
        self._staged_fill = [0] * self.num_layers
        if self._deferred:
            self._staged = torch.full((self.num_layers, STAGED_IDS), -1, dtype=torch.int64,
                                      device=device)
            if self._traffic is not None:
                # The source of each staged id (read only where the id is an expert).
                self._staged_source = torch.zeros_like(self._staged)

    @staticmethod
    def _accelerated(device: torch.device) -> bool:
        """Whether buffers on ``device`` take the accelerator path (staged ids, deferred
        validation) rather than the CPU's native kernel."""
        return device.type != "cpu"

    @property
    def device(self) -> Optional[torch.device]:
        """The buffers' device, or None before the first ``record`` when none was given."""
        return self._device

    # -- hot path ----------------------------------------------------------------------------

    def record(self, layer: int, topk_ids: torch.Tensor, source: Optional[int] = None) -> None:
        """Add the expert ids one router chose to the current step.

        Args:
            layer: recorder layer id in ``[0, L)``.
            topk_ids: int32/int64 ids ``[T, k]`` (any other shape is flattened); -1 is padding.
            source: source rank of these tokens for per-source accounting (default
                ``self.source``); only with ``num_sources``.

        Raises:
            InputError: layer out of range, ids outside ``[0, E)`` (CPU: immediately, nothing
                added; other devices: the bad ids are skipped and the error is raised by the
                next read, so that recording never waits for the device), or ids on another
                device than the buffers.
            TypeError: ids that are not an int32/int64 tensor.
        """
        if not isinstance(topk_ids, torch.Tensor):
            raise TypeError(f"topk_ids must be a torch.Tensor, got {type(topk_ids).__name__}")
        if type(layer) is not int or not 0 <= layer < self.num_layers:
            raise InputError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        if self._current is None:
            self._allocate(topk_ids.device)
        # Checked before anything is counted: a bad source adds nothing anywhere.
        source = self._source_of(source)
        staged = (self._staged is not None and topk_ids.numel() <= STAGED_IDS
                  and not _direct_only(topk_ids))
        if topk_ids.ndim != 2:
            topk_ids = topk_ids.reshape(-1)
        try:
            if staged:
                # The op's own checks, so both paths refuse the same ids the same way.
                ops.check_out(self._rows[layer], topk_ids)
                self._stage(layer, topk_ids, source)
                return
            if self._deferred:
                _histogram_deferred_(self._rows[layer], self._num_invalid, topk_ids)
            else:
                _histogram_(self._rows[layer], topk_ids)
            if self._traffic is not None:
                self._record_source(layer, topk_ids, source)
        except ValueError as err:
            raise InputError(f"layer {layer}: {err}") from None

    def _source_of(self, source: Optional[int]) -> int:
        """The checked source rank of a record() call (``self.source`` when None); 0 when
        per-source accounting is off."""
        if self._traffic is None:
            return 0
        if source is None:
            return self.source
        return source if type(source) is int and 0 <= source < self.num_sources else \
            _source_index(source, self.num_sources)

    def _record_source(self, layer: int, topk_ids: torch.Tensor, source: int) -> None:
        """Adds ``topk_ids`` to the traffic row of the checked ``source``."""
        target = self._traffic[layer, source]
        if self._deferred:
            _histogram_deferred_(target, self._num_invalid, topk_ids)
        else:
            _histogram_(target, topk_ids)

    def _stage(self, layer: int, topk_ids: torch.Tensor, source: int) -> None:
        """Copy checked ``topk_ids`` (and, with per-source accounting, their ``source``) into
        ``layer``'s staged row, counting every staged row first when it is full."""
        count = topk_ids.numel()
        start = self._staged_fill[layer]
        if start + count > STAGED_IDS:
            self._count_staged()
            start = 0
        self._staged[layer, start:start + count].copy_(topk_ids.reshape(-1))
        if self._staged_source is not None:
            self._staged_source[layer, start:start + count].fill_(source)
        self._staged_fill[layer] = start + count

    def _add_staged(self, current: torch.Tensor, traffic: Optional[torch.Tensor],
                    num_invalid: torch.Tensor, used: int) -> None:
        """Add the first ``used`` staged ids of every layer to ``current`` [L, E] and, with
        per-source accounting, ``traffic`` [L, G, E] (one fused histogram each; invalid ids
        are skipped and counted into ``num_invalid`` once, as on the direct path)."""
        ids = self._staged[:, :used]
        _histogram_deferred_(current, num_invalid, ids.unsqueeze(-1))
        if traffic is None:
            return
        # Expert e from source s is bin s * E + e of the layer's [G * E] row; padding and
        # invalid ids (already counted above) become padding.
        is_expert = (ids >= 0) & (ids < self.num_experts)
        codes = torch.where(is_expert, self._staged_source[:, :used] * self.num_experts + ids, -1)
        _histogram_deferred_(traffic.view(self.num_layers, -1), num_invalid,
                             codes.unsqueeze(-1))

    def _count_staged(self) -> None:
        """Add every staged id to the buffers and empty the staged rows."""
        used = max(self._staged_fill)
        if used == 0:
            return
        self._add_staged(self._current, self._traffic, self._num_invalid, used)
        self._staged[:, :used].fill_(-1)
        self._staged_fill = [0] * self.num_layers

    def step(self) -> None:
        """Close the current step: move it into the ring (dropping the oldest) and the totals.

        Device-side copies only; never waits for the device.
        """
        with self._lock:
            if self._current is None:
                self.steps += 1
                return
            if self._staged is not None:
                self._count_staged()
            self._ring[self.steps % self.window_size].copy_(self._current)
            self._totals.add_(self._current)
            self._current.zero_()
            self.steps += 1

    # -- readers (device tensors; on accelerators they check the deferred invalid-id count) --

    def _check_invalid(self, num_invalid: Optional[torch.Tensor] = None) -> None:
        """Raise if ``num_invalid`` (default: the recorded count) says some id was invalid."""
        if self._deferred:
            bad = int((self._num_invalid if num_invalid is None else num_invalid).item())
            if bad:
                raise InputError(f"{bad} recorded expert ids were outside [0, {self.num_experts}) "
                                 "and were skipped; the counts are incomplete")

    def _in_progress(self, with_traffic: bool = False
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(``current`` int64 [L, E], ``traffic`` int64 [L, G, E] when ``with_traffic`` and
        per-source accounting is on, else None) with the ids still staged added; raises if
        any recorded id was invalid. With nothing staged these are the recorder's own
        buffers (a reader copies them before handing them out, and need not when it builds
        a new tensor from them anyway); else new tensors. Readers leave the staged rows
        alone, so a reader thread never races the recording thread over them; ``step()`` is
        what consumes them."""
        traffic = self._traffic if with_traffic else None
        used = max(self._staged_fill) if self._staged is not None else 0
        if used == 0:
            self._check_invalid()
            return self._current, traffic
        current = self._current.clone()
        traffic = None if traffic is None else traffic.clone()
        num_invalid = self._num_invalid.clone()
        self._add_staged(current, traffic, num_invalid, used)
        self._check_invalid(num_invalid)
        return current, traffic

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.int64, device=self._device or "cpu")

    def window(self) -> torch.Tensor:
        """int64 ``[T, L, E]`` counts of the last ``T = min(steps, W)`` completed steps,
        oldest first (a copy)."""
        with self._lock:
            if self._current is None:
                return self._zeros(min(self.steps, self.window_size), self.num_layers,
                                   self.num_experts)
            self._check_invalid()
            if self.steps <= self.window_size:
                return self._ring[: self.steps].clone()
            return torch.roll(self._ring, -(self.steps % self.window_size), dims=0)

    def loads(self) -> torch.Tensor:
        """int64 ``[L, E]`` counts summed over the window (``window().sum(0)``)."""
        with self._lock:
            if self._current is None:
                return self._zeros(self.num_layers, self.num_experts)
            self._check_invalid()
            # Slots not yet written are zero, so the whole ring sums to the window.
            return self._ring.sum(0)

    def current(self) -> torch.Tensor:
        """int64 ``[L, E]`` counts recorded since the last ``step()`` (a copy)."""
        with self._lock:
            if self._current is None:
                return self._zeros(self.num_layers, self.num_experts)
            current = self._in_progress()[0]
            return current.clone() if current is self._current else current

    def totals(self) -> torch.Tensor:
        """int64 ``[L, E]`` all counts since construction or ``reset()``, current step included;
        never capped by the window."""
        with self._lock:
            if self._current is None:
                return self._zeros(self.num_layers, self.num_experts)
            return self._totals + self._in_progress()[0]

    def traffic(self) -> torch.Tensor:
        """int64 ``[L, G, E]`` tokens each source sent to each expert, since construction or
        ``reset()``, current step included."""
        if self.num_sources is None:
            raise InputError("per-source accounting is off: construct with num_sources=G")
        with self._lock:
            if self._current is None:
                return self._zeros(self.num_layers, self.num_sources, self.num_experts)
            traffic = self._in_progress(with_traffic=True)[1]
            return traffic.clone() if traffic is self._traffic else traffic

    def reset(self) -> None:
        """Forget every count and step (buffers stay allocated, views stay valid)."""
        with self._lock:
            self.steps = 0
            if self._current is None:
                return
            for buffer in (self._current, self._ring, self._totals, self._num_invalid):
                buffer.zero_()
            if self._staged is not None:
                self._staged.fill_(-1)
                self._staged_fill = [0] * self.num_layers
            if self._traffic is not None:
                self._traffic.zero_()

    def meta(self) -> Dict[str, Any]:
        """JSON-able description for stats files: shapes, steps, layer names."""
        meta: Dict[str, Any] = {"num_layers": self.num_layers, "num_experts": self.num_experts,
                                "window": self.window_size, "steps": self.steps}
        if self.layer_names is not None:
            meta["layer_names"] = list(self.layer_names)
        if self.num_sources is not None:
            meta["num_sources"] = self.num_sources
        return meta

    # -- multi-rank --------------------------------------------------------------------------

    def all_reduce(self, group: Optional[Any] = None) -> "Recorder":
        """Sum the counts of every rank of ``group`` (default: the world) into a new Recorder.

        Collective: every rank must call it, with the same L, E, W, sources and step count
        (ranks step in lockstep in expert-parallel serving; a mismatch would add unrelated
        steps together and raises InputError on every rank). ``self`` is left untouched, so
        recording can go on. One all_reduce moves ring, current, totals and traffic together.
        Uses the buffers' device, so NCCL groups need CUDA buffers and gloo CPU ones.
        """
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise InputError("all_reduce needs an initialised torch.distributed process group")
        device = self._device or torch.device("cpu")
        with self._lock:
            if self._current is None:
                self._allocate(device)
            # Raises on invalid ids before any collective, so no rank is left waiting.
            current, traffic = self._in_progress(with_traffic=True)
            shape_key = [self.num_layers, self.num_experts, self.window_size,
                         self.num_sources or 0, self.steps]
            # MAX of (x, -x) gives max and -min in one collective.
            probe = torch.tensor(shape_key + [-v for v in shape_key], dtype=torch.int64,
                                 device=device)
            dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=group)
            highs, lows = probe[:5].tolist(), [-v for v in probe[5:].tolist()]
            if highs != lows:
                names = ["num_layers", "num_experts", "window", "num_sources", "steps"]
                diffs = ", ".join(f"{n} in [{lo}, {hi}]" for n, lo, hi in zip(names, lows, highs)
                                  if lo != hi)
                raise InputError(f"all_reduce: ranks disagree on {diffs}")
            parts = [self._ring, current, self._totals]
            if traffic is not None:
                parts.append(traffic)
            flat = torch.cat([part.reshape(-1) for part in parts])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        result = Recorder(self.num_layers, self.num_experts, self.window_size, device,
                          num_sources=self.num_sources, source=self.source,
                          layer_names=self.layer_names)
        result.steps = self.steps
        targets = [result._ring, result._current, result._totals]
        if result._traffic is not None:
            targets.append(result._traffic)
        offset = 0
        for target in targets:
            target.view(-1).copy_(flat[offset: offset + target.numel()])
            offset += target.numel()
        return result

    def __repr__(self) -> str:
        return (f"Recorder(num_layers={self.num_layers}, num_experts={self.num_experts}, "
                f"window={self.window_size}, steps={self.steps}, device={self._device})")
