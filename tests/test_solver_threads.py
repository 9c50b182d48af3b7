"""Splitting layers over threads (plumb.solver.threads) changes nothing but the wall time."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import plumb
from plumb.bench.workloads import make_loads, shape
from plumb.solver import threads
from plumb.solver.threads import max_threads, run_layers, thread_limit


def _solve(loads, topo, shp):
    return plumb.solve(loads, topo, num_redundant=shp.num_redundant, num_groups=shp.num_groups,
                       hierarchy="auto")


@pytest.mark.parametrize("name", ["qwen3-30b", "dsv3-prefill"])
def test_threaded_solve_equals_the_serial_one(name):
    shp = shape(name)
    loads = make_loads(shp, 1.0, steps=4, seed=3)
    topo = shp.topology()
    assert shp.num_layers * shp.num_slots >= threads.PARALLEL_MIN_WORK
    with thread_limit(1):
        serial = _solve(loads, topo, shp)
    with thread_limit(3):
        split = _solve(loads, topo, shp)
    for field in ("phy2log", "logcnt", "log2phy"):
        np.testing.assert_array_equal(getattr(split, field), getattr(serial, field))
    assert split.metrics.balancedness == serial.metrics.balancedness
    np.testing.assert_array_equal(split.metrics.lb_gap, serial.metrics.lb_gap)


def test_every_layer_is_solved_once_and_errors_propagate():
    seen = []
    lock = threading.Lock()

    def record(layers):
        with lock:
            seen.extend(layers.tolist())

    with thread_limit(4):
        run_layers(record, 37, 10**6)
    assert sorted(seen) == list(range(37))

    def fail(layers):
        raise ValueError("layer kernel failed")

    with thread_limit(2), pytest.raises(ValueError, match="layer kernel failed"):
        run_layers(fail, 8, 10**6)


def test_the_calling_thread_works_beside_the_pool():
    # Fork-join: with two threads the caller and one pool thread each take a task; the first
    # task of each waits for the other's, which only returns when both run at once.
    both = threading.Barrier(2, timeout=30)
    callers = set()
    lock = threading.Lock()

    def meet(layers):
        with lock:
            first = threading.get_ident() not in callers
            callers.add(threading.get_ident())
        if first:
            both.wait()

    with thread_limit(2):
        run_layers(meet, 16, 10**6)
    assert threading.get_ident() in callers and len(callers) == 2


def test_small_work_and_a_limit_of_one_stay_on_the_calling_thread():
    callers = set()

    def record(layers):
        callers.add(threading.get_ident())

    run_layers(record, 8, threads.PARALLEL_MIN_WORK - 1)
    with thread_limit(1):
        run_layers(record, 64, 10**6)
    assert callers == {threading.get_ident()}


def test_thread_limit_is_per_thread_and_restored():
    default = max_threads()
    with thread_limit(1):
        assert max_threads() == 1
        other = []
        worker = threading.Thread(target=lambda: other.append(max_threads()))
        worker.start()
        worker.join()
        assert other == [default]
    assert max_threads() == default


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_working_pool():
    shp = shape("qwen3-30b")
    loads = make_loads(shp, 1.0, steps=2, seed=1)
    topo = shp.topology()
    with thread_limit(2):
        expected = _solve(loads, topo, shp).phy2log
        pid = os.fork()
        if pid == 0:  # the child: the parent's pool threads do not exist here
            ok = np.array_equal(_solve(loads, topo, shp).phy2log, expected)
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
