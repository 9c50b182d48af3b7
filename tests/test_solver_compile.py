"""Each packing and refinement kernel compiles once per process, whichever path calls it.

numba compiles a function (and every njit function under it) once per distinct argument
type. A strided slice of a scratch array, a bare literal (``True``, ``0``) where other call
sites pass runtime values, an int64 matrix where the solver uses int16, or a read-only array
where the solver passes a writable one is a type of its own, and each had the whole packing
tree compiled again (the first-ever solve took 141 s instead of 43 s). The check runs in a
fresh process with an empty numba cache, so that every kernel is compiled (and its types
recorded) there; ``NUMBA_OPT=0`` because the types do not depend on LLVM's optimisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import json
import numpy as np
import plumb
from numba.core.registry import CPUDispatcher
from plumb.solver import pack, place, refine

rng = np.random.default_rng(0)
topo = plumb.Topology.cluster(nodes=2, gpus_per_node=4, numa_per_node=2)
loads = rng.lognormal(0.0, 1.0, (3, 32))
# Global and hierarchical policies (auto with groups), then the locality pass's re-packing
# (per-source traffic, both dispatch models), then the robust objective's packing.
plumb.solve(loads, topo, num_redundant=8, num_groups=4)
traffic = rng.integers(0, 50, (3, 8, 32)).astype(np.float64)
for dispatch in ("even", "nearest"):
    plumb.solve(loads, topo, num_redundant=8, traffic=traffic, dispatch=dispatch)
plumb.solve(rng.lognormal(0.0, 1.0, (4, 3, 32)), 8, num_redundant=8, objective="robust")
found = {}
for module in (pack, place, refine):
    for name, obj in vars(module).items():
        if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
            found[module.__name__ + "." + name] = [str(sig) for sig in obj.signatures]
print(json.dumps(found))
"""

# The packing tree: LPT, its repair, the swap search and the pair exchanges.
_KERNELS = ("pack.lpt_place", "pack.repair_duplicates", "place.place", "place.pack_items",
            "refine.refine_items", "refine.refine_slots", "refine.pair_sweep",
            "refine._best_swap", "refine._best_pair", "refine._movable_pairs")


def test_the_packing_kernels_compile_once_for_every_caller(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_OPT="0")
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name in _KERNELS:
        signatures = found["plumb.solver." + name]
        assert len(signatures) == 1, f"{name} compiled {len(signatures)} times: {signatures}"
