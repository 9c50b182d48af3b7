"""The perf symbol map of numba's JIT code (plumb.bench.perf_map, benchmarks/profile_kernels.py)."""

import os

import numpy as np
import pytest
from numba import njit

from plumb.bench.perf_map import compiled_symbols, readable_name, write_perf_map


def test_readable_name_unmangles_numba_symbols():
    mangled = ("_ZN5plumb6solver4pack9_lpt_scanB3v47B38c8tJTIeFIjxB2IKSgI4CrvQClUZKEGARTQA_3dE5"
               "ArrayIdLi1E1C7mutable7alignedE")
    assert readable_name(mangled) == "plumb.solver.pack._lpt_scan"
    assert readable_name("NRT_decref") == "NRT_decref"


def test_map_names_each_compiled_function_and_its_callees():
    @njit
    def squares(values):
        return values * values

    @njit
    def sum_of_squares(values):
        return squares(values).sum()

    with pytest.raises(RuntimeError, match="call it first"):
        compiled_symbols([sum_of_squares])
    assert sum_of_squares(np.arange(4.0)) == 14.0
    symbols = compiled_symbols([sum_of_squares])
    names = [name for _, name in symbols]
    assert any(name.endswith("sum_of_squares") for name in names)
    # The callee is linked into the caller's module, so it is named too.
    assert any(name.endswith(".squares") for name in names)
    addresses = [address for address, _ in symbols]
    assert addresses == sorted(set(addresses))
    path = write_perf_map([sum_of_squares])
    try:
        assert path.name == f"perf-{os.getpid()}.map"
        lines = path.read_text().splitlines()
        assert len(lines) == len(symbols)
        for line, (address, name) in zip(lines, symbols):
            start, size, text = line.split(" ", 2)
            assert int(start, 16) == address and int(size, 16) > 0 and text == name
    finally:
        path.unlink()
