"""Same input, same placement, on every machine: pinned digests of fixed solves.

The digests (tests/_golden_cases.py: sha256 of phy2log and logcnt) were computed on an AMD
EPYC host with AVX-512 (the last two moved or added on an Intel Xeon with AVX-512) and came out
the same there with numba compiling for a generic CPU and numpy's SIMD dispatch limited to its
baseline (the second test does that on every run). A
deliberate change to what the solver returns changes them: recompute with
``python tests/_golden_cases.py`` and say in the commit which cases moved and why.

Why it matters beyond tidiness: serving engines run the balancer on every rank from the same
all-reduced loads and expect the same answer everywhere; ranks on different CPU generations
must not disagree.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _golden_cases import digests

PINNED = {
    "auto": "e63d3ab7f38b2def",
    "deepseek": "131f1fc420829f1e",
    "few-slots": "7c760278fcb20f3b",
    "global": "781271e27704ecba",
    "hierarchical": "d94c501a6ec6ef05",
    "locality-even": "21f3889da3b6c6a4",
    "locality-nearest": "f1e511161540b2a9",
    "movement": "e672d223656879f0",
    "no-redundancy": "d5972d789edbf336",
    "robust": "d4ce32ffd96c215c",
    "speeds": "bd2e3bd91b9a048c",
    "three-slots-exact": "caf187c52c9bf978",
    "ties": "a1e6f4c914bb06ae",
    "two-slots": "e596f2ba9884a959",
    "two-slots-redundant": "d73c20089b2ec40d",
}


def test_placements_match_the_pinned_digests():
    assert digests() == PINNED


def _simd_beyond_baseline() -> str:
    """numpy's dispatchable SIMD targets this CPU has, space-separated (for
    NPY_DISABLE_CPU_FEATURES)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return " ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f))


def test_generic_cpu_code_gives_the_same_placements(tmp_path: Path):
    # A fresh cache: numba keys cached code by CPU, but an empty directory leaves no doubt
    # that everything was compiled for the generic target.
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path),
               NPY_DISABLE_CPU_FEATURES=_simd_beyond_baseline())
    script = Path(__file__).with_name("_golden_cases.py")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=900)
    if run.returncode != 0:
        pytest.fail(f"generic-CPU run failed:\n{run.stderr[-4000:]}")
    assert json.loads(run.stdout) == PINNED
