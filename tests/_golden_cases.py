"""Fixed solves whose placements are pinned by tests/test_determinism_golden.py.

Run as a script it prints ``{case: digest}`` as JSON: the test runs it in a second process whose
numba kernels are compiled for a generic x86-64 CPU (another machine, as far as code
generation goes).

Inputs come from integer draws only: numpy's floating-point distributions go through the C
library's ``exp`` / ``log``, whose last bit may differ between library builds, so floats drawn
from them would not be the same input on every machine.
"""

import hashlib
import json
from typing import Callable, Dict

import numpy as np

import plumb


def skewed(rng: np.random.Generator, shape) -> np.ndarray:
    """float64 loads of the given shape: products of two uniform ints in [1, 63], one in 16
    eight times hotter (heavy-tailed, with ties)."""
    first = rng.integers(1, 64, size=shape)
    second = rng.integers(1, 64, size=shape)
    hot = rng.integers(0, 16, size=shape) == 0
    return (first * second * np.where(hot, 8, 1)).astype(np.float64)


def cases() -> Dict[str, Callable[[], "plumb.Placement"]]:
    """Each solver path once: policies, hierarchy modes, slot counts, rank speeds, ties,
    traffic under both dispatch models, the robust objective and a previous placement."""
    rng = np.random.default_rng(2026)
    out: Dict[str, Callable[[], plumb.Placement]] = {}
    four_nodes = plumb.Topology.cluster(4, 8)
    decode = skewed(rng, (6, 256))
    out["global"] = lambda: plumb.solve(decode, plumb.Topology.cluster(8, 8), num_redundant=64,
                                        hierarchy="global")
    prefill = skewed(rng, (6, 256))
    out["auto"] = lambda: plumb.solve(prefill, four_nodes, num_redundant=32, num_groups=8)
    grouped = skewed(rng, (6, 256))
    out["hierarchical"] = lambda: plumb.solve(grouped, four_nodes, num_redundant=32,
                                              num_groups=8, hierarchy="hierarchical")
    few = skewed(rng, (6, 16))
    out["few-slots"] = lambda: plumb.solve(few, 8, num_redundant=8)
    single = skewed(rng, (6, 64))
    out["no-redundancy"] = lambda: plumb.solve(single, 8)
    pairs = skewed(rng, (6, 8))
    out["two-slots"] = lambda: plumb.solve(pairs, 4)
    equal = np.tile(np.repeat([5.0, 3.0, 1.0], 16), (3, 1))
    out["ties"] = lambda: plumb.solve(equal, 8, num_redundant=16)
    mixed = skewed(rng, (4, 64))
    speeds = plumb.Topology.cluster(2, 4, rank_speed=[1, 1, 2, 2, 1, 0.5, 1, 1])
    out["speeds"] = lambda: plumb.solve(mixed, speeds, num_redundant=16)
    # DeepSeek's greedy orders equal loads as numpy's argsort does on the CPU at hand (as vLLM
    # does): its case has no ties.
    distinct = skewed(rng, (6, 256)) + np.arange(256) / 1024.0
    out["deepseek"] = lambda: plumb.solve(distinct, four_nodes, num_redundant=32, num_groups=8,
                                          policy="deepseek")
    traffic = rng.integers(0, 100, size=(4, 32, 256)).astype(np.float64)
    traffic[:, :16, :128] *= 4
    numa = plumb.Topology.cluster(4, 8, 2)
    out["locality-even"] = lambda: plumb.solve(traffic.sum(axis=1), numa, num_redundant=32,
                                               traffic=traffic)
    out["locality-nearest"] = lambda: plumb.solve(traffic.sum(axis=1), numa, num_redundant=32,
                                                  traffic=traffic, dispatch="nearest",
                                                  load_slack=0.01)
    window = skewed(rng, (8, 3, 64))
    out["robust"] = lambda: plumb.solve(window, 8, num_redundant=16, objective="robust",
                                        half_life=4)
    previous = plumb.solve(skewed(rng, (4, 64)), 8, num_redundant=16)
    current = skewed(rng, (4, 64))
    out["movement"] = lambda: plumb.solve(current, 8, num_redundant=16, previous=previous)
    paired = skewed(rng, (6, 8))
    out["two-slots-redundant"] = lambda: plumb.solve(paired, 8, num_redundant=8)
    # Mixtral-sized: 8 experts, 4 ranks of 3 slots (the exact count and packing search).
    mixtral = skewed(rng, (6, 8))
    out["three-slots-exact"] = lambda: plumb.solve(mixtral, 4, num_redundant=4)
    return out


def digest(placement: "plumb.Placement") -> str:
    """The first 16 hex digits of the sha256 of phy2log and logcnt (int64, little-endian)."""
    h = hashlib.sha256()
    for table in (placement.phy2log, placement.logcnt):
        h.update(np.ascontiguousarray(table, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


def digests() -> Dict[str, str]:
    return {name: digest(solve()) for name, solve in cases().items()}


if __name__ == "__main__":
    print(json.dumps(digests(), indent=1, sort_keys=True))
