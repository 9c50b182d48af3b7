"""Running independent per-layer work on several threads.

The whole-model kernels release the GIL (``nogil=True``) and every layer is solved on its own,
so plain Python threads run them in parallel without numba's parallel backends (whose OpenMP
layer is not fork-safe and whose workqueue layer aborts on concurrent calls; plumb runs inside
forking servers and multi-threaded engines). The thread count defaults to numba's
``NUMBA_NUM_THREADS`` (environment variable; all cores unless set), read without starting
numba's threading layer; :func:`thread_limit` lowers it for a block of code.

Results never depend on the split: each layer writes only its own rows.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Optional

import numba
import numpy as np

# Below this much work (layers x slots) a whole solve takes a fraction of a millisecond and
# handing layers to threads costs more than it saves.
PARALLEL_MIN_WORK = 4096
# Tasks per thread: layers differ in cost, several smaller tasks even that out.
_TASKS_PER_THREAD = 4

_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_key = (0, 0)  # (pid, workers) the pool was made for
_limit = threading.local()


def max_threads() -> int:
    """Threads a solve may use: ``NUMBA_NUM_THREADS``, or this thread's :func:`thread_limit`."""
    return getattr(_limit, "value", None) or numba.config.NUMBA_NUM_THREADS


class thread_limit:
    """Solves started by this thread inside the block use at most ``threads`` threads (>= 1).

    A plain class rather than ``contextlib.contextmanager``: entering and leaving cost under
    a microsecond, against about three for the generator form, around solves of tens of
    microseconds.
    """

    def __init__(self, threads: int) -> None:
        self._threads = max(1, int(threads))
        self._previous: Optional[int] = None

    def __enter__(self) -> None:
        self._previous = getattr(_limit, "value", None)
        _limit.value = self._threads

    def __exit__(self, *exc_info: object) -> None:
        _limit.value = self._previous


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool with ``workers`` threads, made anew in a forked child (a fork copies
    the pool object but not its threads)."""
    global _pool, _pool_key
    key = (os.getpid(), workers)
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plumb-solve")
            _pool_key = key
        return _pool


def serial(num_layers: int, work: int) -> bool:
    """Whether :func:`run_layers` would solve these layers in one call on this thread."""
    return min(max_threads(), num_layers) <= 1 or work < PARALLEL_MIN_WORK


def run_layers(solve_some: Callable[[np.ndarray], object], num_layers: int, work: int) -> None:
    """Calls ``solve_some(layers)`` (layers: int64 [k], ascending) so that every layer in
    ``range(num_layers)`` is covered exactly once, on several threads when ``work`` (about
    layers x slots) is large enough and :func:`max_threads` allows more than one.

    Fork-join: the calling thread takes tasks too, beside ``threads - 1`` pool threads, each
    taking the next task off one shared queue until it is empty. A pool thread's wake-up costs
    tens of microseconds; the caller is awake already.
    """
    if serial(num_layers, work):
        solve_some(np.arange(num_layers, dtype=np.int64))
        return
    threads = min(max_threads(), num_layers)
    per_task = -(-num_layers // (threads * _TASKS_PER_THREAD))
    tasks = deque(range(0, num_layers, per_task))

    def drain() -> None:
        while True:
            try:
                start = tasks.popleft()
            except IndexError:
                return
            solve_some(np.arange(start, min(start + per_task, num_layers), dtype=np.int64))

    helpers = [_executor(threads - 1).submit(drain) for _ in range(threads - 1)]
    try:
        drain()
    except BaseException:
        # No helper may start another task on the caller's arrays once this fails.
        tasks.clear()
        wait(helpers)
        raise
    for helper in helpers:
        helper.result()
