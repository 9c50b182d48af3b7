"""Where a solve spends its time, kernel by kernel: Linux ``perf`` over numba's JIT code.

    python benchmarks/profile_kernels.py solve dsv3-prefill
    python benchmarks/profile_kernels.py locality 4 nearest --seconds 20
    python benchmarks/profile_kernels.py locality 4 even --no-redundancy

Compiles everything afresh (an empty NUMBA_CACHE_DIR: cached kernels carry no names), writes
the perf symbol map (plumb.bench.perf_map), samples this process with ``perf record`` while it
repeats the workload on one thread, and prints each function's share of the samples. Needs
``perf`` and permission to sample (kernel.perf_event_paranoid <= 1, or root).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

# Before numba is imported: it reads the cache location once.
_CACHE = tempfile.mkdtemp(prefix="plumb-profile-")
os.environ["NUMBA_CACHE_DIR"] = _CACHE

import numpy as np  # noqa: E402

import plumb  # noqa: E402
from plumb.bench.perf_map import write_perf_map  # noqa: E402
from plumb.solver.threads import thread_limit  # noqa: E402


def _solve_case(shape_name: str):
    from plumb.bench.workloads import make_loads, shape

    shp = shape(shape_name)
    topo = shp.topology()
    loads = make_loads(shp, 1.0)
    return lambda: plumb.solve(loads, topo, num_redundant=shp.num_redundant,
                               num_groups=shp.num_groups, hierarchy=shp.hierarchy)


def _locality_case(nodes: int, dispatch: str, redundant: bool):
    from plumb.bench.topology import Scenario, make_traffic

    scenario = Scenario(nodes, "skewed", redundant, dispatch)
    topo = scenario.topology
    loads, traffic = make_traffic(topo, 16, "skewed", seed=nodes)
    return lambda: plumb.solve(loads, topo, num_redundant=topo.num_ranks if redundant else 0,
                               traffic=traffic, dispatch=dispatch)


def _entry_points():
    """The numba functions plumb.solve calls from Python (each links in its kernels)."""
    from plumb.locality import dispatch, refine
    from plumb.solver import model

    return [model.solve_layers, model._solve_serial, model.summarize, refine._refine_model,
            dispatch._route_model, dispatch._routing_table_model]


def _report(data: str, top: int) -> None:
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol",
                          "--stdio"], capture_output=True, text=True, check=True).stdout
    rows = [line.strip() for line in out.splitlines() if line.strip() and line[0] != "#"]
    print("\n".join(rows[:top]))


def main() -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seconds", type=float, default=15.0, help="sampling time")
    common.add_argument("--top", type=int, default=30, help="functions listed")
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="case", required=True)
    solve = sub.add_parser("solve", parents=[common],
                           help="plumb.solve on a SPEC shape's benchmark loads")
    solve.add_argument("shape", help="a SPEC shape name, e.g. dsv3-prefill")
    local = sub.add_parser("locality", parents=[common],
                           help="the topology bench's skewed scenario with traffic")
    local.add_argument("nodes", type=int, choices=(2, 4))
    local.add_argument("dispatch", choices=("even", "nearest"))
    local.add_argument("--no-redundancy", action="store_true",
                       help="one replica per expert (default: G redundant replicas)")
    try:
        args = parser.parse_args()
        if shutil.which("perf") is None:
            parser.error("perf is not installed")
        run = _solve_case(args.shape) if args.case == "solve" else \
            _locality_case(args.nodes, args.dispatch, not args.no_redundancy)
        return _profile(run, args.seconds, args.top)
    finally:
        shutil.rmtree(_CACHE, ignore_errors=True)


def _profile(run, seconds: float, top: int) -> int:
    """Samples ``run()`` repeated on one thread for ``seconds`` and prints the ``top``
    functions; the symbol map is removed afterwards."""
    with thread_limit(1):
        run()
        path = write_perf_map([fn for fn in _entry_points() if fn.overloads])
        try:
            return _sample(run, seconds, top, str(path))
        finally:
            path.unlink()


def _sample(run, seconds: float, top: int, map_path: str) -> int:
    print(f"symbol map: {map_path}", file=sys.stderr)
    data = os.path.join(_CACHE, "perf.data")
    stop = threading.Event()
    recorder = subprocess.Popen(["perf", "record", "-F", "2000", "-o", data, "-p",
                                 str(os.getpid()), "--", "sleep", str(seconds)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=lambda: (recorder.wait(), stop.set()), daemon=True).start()
    solves = 0
    started = time.perf_counter()
    while not stop.is_set():
        run()
        solves += 1
    elapsed = time.perf_counter() - started
    if recorder.returncode != 0:
        print(f"perf record failed (exit {recorder.returncode}): check "
              "/proc/sys/kernel/perf_event_paranoid", file=sys.stderr)
        return 1
    print(f"{solves} solves, {1e3 * elapsed / max(solves, 1):.3f} ms each (one thread)")
    _report(data, top)
    return 0

if __name__ == "__main__":
    sys.exit(main())
