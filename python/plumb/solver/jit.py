"""``kernel``: the decorator of the solver's inner kernels.

numba reference-counts every array an njit function receives or slices, with an atomic
increment and decrement per array per call. The packing kernels are small and called many
times per layer with a dozen arrays each, so on small layers (Mixtral: 8 experts on 4 ranks)
those atomics were more than half of the solve. The inner kernels are therefore compiled
without numba's runtime (``_nrt=False``, as numba's own allocation-free helpers are): no
reference counts, and no way to allocate.

Rules for a ``kernel``:
  - it allocates nothing (not even implicitly: ``a[:] = b`` may copy, use ``copy_into``);
    scratch comes from the caller (:mod:`plumb.solver.workspace`). An allocation is a
    compile error here, never a silent leak.
  - it returns no array: the caller would hold a reference it never took.
  - it calls only other kernels or allocation-free helpers: a function compiled from a
    kernel inherits ``_nrt=False``. Some of numba's own array methods need the runtime
    (``ndarray.max``): kernels use :func:`total` and :func:`largest` below.
  - its callers pass flags and counts as typed scalars (``np.bool_(True)``, ``np.int64(0)``)
    where other call sites pass runtime values, and arrays C-contiguous (a view of the first
    entries, not a ``[:rows, :cols]`` slice): numba compiles a kernel, and every kernel under
    it, once per distinct argument type, and a bare literal or a strided slice is a type of
    its own. Both had doubled the first-ever compile.
The arrays it receives are kept alive by the caller (an ordinary njit entry point such as
``solve_layers``, which owns every allocation), so the missing counts are never needed.
"""

from __future__ import annotations

from numba import njit

kernel = njit(cache=True, nogil=True, _nrt=False)


@kernel
def total(values):
    """Sum of ``values`` (float64 [n]), added in index order as ``ndarray.sum`` does in numba."""
    acc = 0.0
    for i in range(values.shape[0]):
        acc += values[i]
    return acc


@kernel
def largest(values):
    """Largest of ``values`` (float64 [n], n >= 1)."""
    top = values[0]
    for i in range(1, values.shape[0]):
        top = max(top, values[i])
    return top
