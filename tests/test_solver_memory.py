"""Memory safety of the solver's kernels compiled without numba's reference counting.

The inner kernels (``plumb.solver.jit.kernel``) take arrays without counting references; only
the njit entry points allocate. A kernel that returned or kept a view would free memory
twice or never: numba's runtime statistics then show allocations and frees that do not
match. The statistics are switched on before numba starts, so the solves run in a child
process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import gc, json
import numpy as np
import plumb
from numba.core.runtime import rtsys

rng = np.random.default_rng(0)
loads = rng.lognormal(0.0, 1.0, (4, 32))
window = rng.integers(0, 100, (6, 4, 32)).astype(np.float64)
topo = plumb.Topology.cluster(2, 4, 2)
traffic = rng.integers(0, 50, (4, 8, 32)).astype(np.float64)

def solves():
    yield plumb.solve(loads, topo, num_redundant=8, num_groups=4)
    yield plumb.solve(loads, topo, num_redundant=8, hierarchy="global")
    yield plumb.solve(loads, 8)
    yield plumb.solve(loads, 8, num_redundant=72)
    yield plumb.solve(loads, topo, num_redundant=8, policy="deepseek", num_groups=4)
    yield plumb.solve(traffic.sum(axis=1), topo, num_redundant=8, traffic=traffic,
                      dispatch="nearest")
    first = plumb.solve(loads, topo, num_redundant=8, hierarchy="global")
    yield plumb.solve(loads * rng.uniform(0.5, 1.5, loads.shape), topo, num_redundant=8,
                      hierarchy="global", previous=first, move_budget=6)
    yield plumb.solve(window, 8, num_redundant=8, objective="robust")

def run_all():
    for placement in solves():
        del placement

def counts():
    gc.collect()
    stats = rtsys.get_allocation_stats()
    return [stats.alloc, stats.free, stats.mi_alloc, stats.mi_free]

run_all()  # compiles and warms up first
before = counts()
run_all()
after = counts()
print(json.dumps({"before": before, "after": after}))
"""


def test_solves_free_exactly_what_they_allocate():
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    alloc, free, mi_alloc, mi_free = (a - b for a, b in zip(stats["after"], stats["before"]))
    assert alloc > 0  # the solves did allocate through numba's runtime
    assert alloc == free
    assert mi_alloc == mi_free
