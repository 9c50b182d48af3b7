"""Whole-model solve time and balance: plumb vs the DeepSeek greedy (numba and numpy).

Every SPEC section 6 shape at lognormal sigma 0.5 / 1.0 / 1.5 (16 sampled steps summed), all
in one process and warm (after JIT): median time of ``plumb.solve(policy="plumb")``, of
``plumb.solve(policy="deepseek")`` (the exact greedy, numba) and of the numpy implementation of
the greedy written the way vLLM's numpy policy is (``plumb.bench.baselines``), as ratios; the
per-layer balancedness of plumb minus deepseek's in the same hierarchy mode (min over layers),
and plumb's lb_gap (mean and worst layer). A second table runs the uniform and adversarial
loads once each; a third (default run) two deployments with 3 slots per GPU outside the
SPEC table. Cold start: a fresh ``python -c "import plumb; plumb.solve(...)"`` process
with an empty numba cache (first-ever compile) and again with that cache warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from numba import njit

from .baselines import numpy_deepseek_rebalance
from .options import nonnegative_int, positive_int, shape_names, sigma_list
from .results import bench_command, interleaved_medians, markdown_table, write_section
from .workloads import (ADVERSARIAL_KINDS, FEW_SLOTS, SHAPES, SIGMAS, Shape, adversarial,
                        make_loads, shape)

TARGET_SPEEDUP = 40.0
TARGET_PREFILL_MS = 1.5
TARGET_MEAN_GAP = 0.002
TARGET_COLD_S = 2.0

HEADERS = ["shape", "mode", "σ", "plumb ms", "deepseek ms", "numpy ms", "× numpy", "× deepseek",
           "bal plumb", "bal deepseek", "min Δbal", "mean gap", "worst gap", "deepseek = numpy"]
CASE_HEADERS = ["shape", "mode", "loads", "plumb ms", "bal plumb", "bal deepseek", "min Δbal",
                "mean gap", "worst gap"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="few repeats, sigma 1.0 only, no cold-start subprocesses")
    parser.add_argument("--shapes", type=shape_names, default=None,
                        help="comma-separated shape names (default: all SPEC shapes; 'tiny' "
                             "is a small extra one)")
    parser.add_argument("--sigmas", type=sigma_list, default=None,
                        help="comma-separated lognormal sigmas (default 0.5,1.0,1.5)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed repeats of the numba solves (numpy: a quarter, >= 3)")
    parser.add_argument("--steps", type=positive_int, default=16, help="sampled steps summed per load")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="threads while timing (default 1: the one-core target)")
    parser.add_argument("--parallel-threads", type=positive_int, default=None,
                        help="also time plumb with this many threads (default: "
                             "NUMBA_NUM_THREADS, all cores; 1 turns the column off)")
    parser.add_argument("--no-cases", action="store_true",
                        help="skip the uniform/adversarial table")
    parser.add_argument("--no-cold-start", action="store_true",
                        help="skip the cold-start subprocesses")
    parser.add_argument("--results", type=Path, default=None,
                        help="rewrite the '## solve' section of this markdown file")


# --- metrics computed here from phy2log (even dispatch), independent of the solver -------------

def rank_loads(phy2log: np.ndarray, loads: np.ndarray, num_gpus: int) -> np.ndarray:
    """float64 [L, G]: each rank's load when every replica of e carries w_e / c_e."""
    layers, slots = phy2log.shape
    counts = np.zeros(loads.shape, dtype=np.int64)
    rows = np.repeat(np.arange(layers), slots)
    np.add.at(counts, (rows, phy2log.ravel()), 1)
    share = np.take_along_axis(loads / np.maximum(counts, 1), phy2log, axis=1)
    return share.reshape(layers, num_gpus, -1).sum(axis=-1)


def layer_balancedness(phy2log: np.ndarray, loads: np.ndarray, num_gpus: int) -> np.ndarray:
    """float64 [L]: mean rank load / max rank load (1.0 for an all-zero layer)."""
    ranks = rank_loads(phy2log, loads, num_gpus)
    top = ranks.max(axis=1)
    return np.divide(ranks.mean(axis=1), top, out=np.ones_like(top), where=top > 0)


# --- measurement --------------------------------------------------------------------------------

def _solver(shp: Shape):
    import plumb

    topo = shp.topology()

    def solve(loads, policy):
        return plumb.solve(loads, topo, num_redundant=shp.num_redundant,
                           num_groups=shp.num_groups, policy=policy, hierarchy=shp.hierarchy)

    return solve


def _compare(shp: Shape, loads: np.ndarray, plumb_p, deepseek_p) -> Dict[str, float]:
    bal_plumb = layer_balancedness(np.asarray(plumb_p.phy2log), loads, shp.num_gpus)
    bal_ds = layer_balancedness(np.asarray(deepseek_p.phy2log), loads, shp.num_gpus)
    gaps = np.asarray(plumb_p.metrics.lb_gap, dtype=np.float64)  # plumb's per-layer lb_gap
    return {"bal_plumb": float(bal_plumb.mean()), "bal_deepseek": float(bal_ds.mean()),
            "min_dbal": float((bal_plumb - bal_ds).min()), "mean_gap": float(gaps.mean()),
            "worst_gap": float(gaps.max())}


def measure_case(shp: Shape, sigma: float, repeats: int, steps: int, seed: int,
                 parallel_threads: int = 1) -> Dict:
    """One (shape, sigma) row: timings, balance and whether deepseek == the numpy baseline.

    With ``parallel_threads > 1`` plumb is also timed with that many threads
    (``plumb_par_s``); everything else runs with the caller's thread limit.
    """
    from ..solver.threads import thread_limit

    loads = make_loads(shp, sigma, steps=steps, seed=seed)
    solve = _solver(shp)
    plumb_p = solve(loads, "plumb")
    deepseek_p = solve(loads, "deepseek")
    baseline_p2l, baseline_cnt = numpy_deepseek_rebalance(loads, *shp.deepseek_args())
    row = {"shape": shp.name, "mode": shp.hierarchy, "sigma": sigma,
           "match": bool(np.array_equal(np.asarray(deepseek_p.phy2log), baseline_p2l)
                         and np.array_equal(np.asarray(deepseek_p.logcnt), baseline_cnt))}
    def parallel():
        with thread_limit(parallel_threads):
            return solve(loads, "plumb")

    contenders = {"plumb_s": lambda: solve(loads, "plumb"),
                  "deepseek_s": lambda: solve(loads, "deepseek"),
                  "numpy_s": lambda: numpy_deepseek_rebalance(loads, *shp.deepseek_args())}
    if parallel_threads > 1:
        contenders["plumb_par_s"] = parallel
    times = interleaved_medians(contenders, repeats, every={"numpy_s": 4})
    row.update(times)
    row.update(_compare(shp, loads, plumb_p, deepseek_p))
    return row


def measure_loads_case(shp: Shape, kind: str, steps: int, seed: int) -> Dict:
    """One row of the uniform/adversarial table (a single timed solve, no repeats)."""
    if kind == "uniform":
        loads = make_loads(shp, None, steps=steps, seed=seed)
    else:
        loads = adversarial(kind, shp.num_layers, shp.num_experts, shp.num_gpus, seed=seed,
                            num_groups=shp.num_groups)
    solve = _solver(shp)
    solve(loads, "plumb")
    start = time.perf_counter()
    plumb_p = solve(loads, "plumb")
    elapsed = time.perf_counter() - start
    row = {"shape": shp.name, "mode": shp.hierarchy, "loads": kind, "plumb_s": elapsed}
    row.update(_compare(shp, loads, plumb_p, solve(loads, "deepseek")))
    return row


_COLD_SCRIPT = """
import json, time
t0 = time.perf_counter()
import numpy as np
import plumb
t1 = time.perf_counter()
loads = np.random.default_rng(0).lognormal(0.0, 1.0, ({L}, {E}))
topo = plumb.Topology.cluster(nodes={nodes}, gpus_per_node={gpn})
plumb.solve(loads, topo, num_redundant={R}, num_groups={groups})
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "solve_s": t2 - t1}}))
"""


@njit(cache=True, nogil=True)
def _spin(n):
    """An arithmetic loop for :func:`thread_scaling` (no memory traffic, no GIL)."""
    total = 0.0
    for i in range(n):
        total += np.sqrt(i * 1.0)
    return total


def _concurrency(task: Callable[[], object], threads: int, repeats: int) -> float:
    """How much faster ``threads`` copies of ``task`` finish on ``threads`` threads than one
    after the other (ideal: ``threads``); the best of ``repeats``."""
    import threading

    task()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(threads):
            task()
        serial = time.perf_counter() - start
        workers = [threading.Thread(target=task) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, serial / (time.perf_counter() - start))
    return best


def thread_scaling(threads: int, repeats: int = 5) -> float:
    """:func:`_concurrency` of a numba arithmetic loop: what the vCPUs give compute-bound code
    (shared or throttled vCPUs scale less)."""
    return _concurrency(lambda: _spin(10_000_000), threads, repeats)


def solver_scaling(shp: Shape, threads: int, steps: int, seed: int, repeats: int = 5) -> float:
    """:func:`_concurrency` of whole single-threaded plumb solves of ``shp`` (sigma 1): the
    most that splitting layers over ``threads`` threads can gain on this machine. Where the
    vCPUs share a core's caches (hyper-threads of one core, or a noisy neighbour) the
    solver's table-reading kernels scale far less than the arithmetic loop."""
    from ..solver.threads import thread_limit

    loads = make_loads(shp, 1.0, steps=steps, seed=seed)
    solve = _solver(shp)

    def one_solve() -> None:
        with thread_limit(1):
            solve(loads, "plumb")

    return _concurrency(one_solve, threads, repeats)


def cold_start(shp: Shape, warm_runs: int = 3) -> Dict[str, float]:
    """Fresh processes running ``import plumb; plumb.solve(...)`` on ``shp``.

    The first uses an empty NUMBA_CACHE_DIR (first-ever compile), the next ones the cache it
    left (a user's every later start). Wall times include interpreter start-up.
    """
    script = _COLD_SCRIPT.format(L=shp.num_layers, E=shp.num_experts, nodes=shp.num_nodes,
                                 gpn=shp.gpus_per_node, R=shp.num_redundant,
                                 groups=shp.num_groups)
    runs = []
    with tempfile.TemporaryDirectory(prefix="plumb-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(1 + warm_runs):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                  text=True, check=False)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"cold-start subprocess failed:\n{done.stderr[-2000:]}")
            inner = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append((wall, inner["import_s"], inner["solve_s"]))
    warm = sorted(runs[1:])[len(runs[1:]) // 2]
    return {"first_wall_s": runs[0][0], "first_solve_s": runs[0][2], "warm_wall_s": warm[0],
            "warm_import_s": warm[1], "warm_solve_s": warm[2]}


# --- output -------------------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.3f}%"


def _speedup(baseline_s: float, plumb_s: float) -> str:
    """Baseline time / plumb time: whole numbers from 10x on, two decimals below (a slower
    plumb reads 0.20x, not 0x)."""
    ratio = baseline_s / plumb_s
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.2f}×"


def main_table(rows: Sequence[Dict], parallel_threads: int = 1) -> str:
    headers = list(HEADERS)
    if parallel_threads > 1:
        headers[7:7] = [f"plumb ms, {parallel_threads} threads",
                        f"× numpy, {parallel_threads} threads"]
    body = []
    for r in rows:
        cells = [r["shape"], r["mode"], f"{r['sigma']:g}", _ms(r["plumb_s"]),
                 _ms(r["deepseek_s"]), _ms(r["numpy_s"]), _speedup(r["numpy_s"], r["plumb_s"]),
                 f"{r['deepseek_s'] / r['plumb_s']:.2f}×", f"{r['bal_plumb']:.4f}",
                 f"{r['bal_deepseek']:.4f}", f"{r['min_dbal']:+.4f}", _pct(r["mean_gap"]),
                 _pct(r["worst_gap"]), "yes" if r["match"] else "**NO**"]
        if parallel_threads > 1:
            cells[7:7] = [_ms(r["plumb_par_s"]), _speedup(r["numpy_s"], r["plumb_par_s"])]
        body.append(cells)
    return markdown_table(headers, body)


def cases_table(rows: Sequence[Dict]) -> str:
    body = [[r["shape"], r["mode"], r["loads"], _ms(r["plumb_s"]), f"{r['bal_plumb']:.4f}",
             f"{r['bal_deepseek']:.4f}", f"{r['min_dbal']:+.4f}", _pct(r["mean_gap"]),
             _pct(r["worst_gap"])] for r in rows]
    return markdown_table(CASE_HEADERS, body)


def targets(rows: Sequence[Dict], case_rows: Sequence[Dict], cold: Optional[Dict]) -> List[str]:
    """Lines 'target: measured -> met/NOT met' for the issue's targets."""
    out = []

    def line(what, value, ok):
        out.append(f"- {what}: {value} — {'met' if ok else '**NOT met**'}")

    if rows:
        for key, label in (("plumb_s", "1 thread"), ("plumb_par_s", "{} threads")):
            if key not in rows[0]:
                continue
            worst = min(rows, key=lambda r: r["numpy_s"] / r[key])
            ratio = worst["numpy_s"] / worst[key]
            line(f"plumb ≥ {TARGET_SPEEDUP:g}× faster than the numpy greedy (worst case, "
                 f"{label.format(rows[0].get('parallel_threads'))})",
                 f"{ratio:.0f}× ({worst['shape']}, σ {worst['sigma']:g})",
                 ratio >= TARGET_SPEEDUP)
        prefill = [r for r in rows if r["shape"] == "dsv3-prefill"]
        if prefill:
            slowest = max(r["plumb_s"] for r in prefill)
            line(f"dsv3-prefill whole model ≤ {TARGET_PREFILL_MS:g} ms (slowest σ)",
                 f"{slowest * 1e3:.3f} ms", slowest * 1e3 <= TARGET_PREFILL_MS)
        all_rows = list(rows) + list(case_rows)
        low = min(all_rows, key=lambda r: r["min_dbal"])
        line("balancedness plumb ≥ deepseek on every layer (min Δ over all cases)",
             f"{low['min_dbal']:+.2e} ({low['shape']}, "
             f"{low.get('loads', 'σ %g' % low.get('sigma', 0))})", low["min_dbal"] >= -1e-12)
        flat = [r for r in rows if r["mode"] == "global" and r["sigma"] == 1.0]
        if flat:
            gap = max(flat, key=lambda r: r["mean_gap"])
            line(f"mean lb_gap ≤ {100 * TARGET_MEAN_GAP:g}% at σ 1.0, global policy (worst shape)",
                 f"{_pct(gap['mean_gap'])} ({gap['shape']}); worst layer overall "
                 f"{_pct(max(r['worst_gap'] for r in rows))}", gap["mean_gap"] <= TARGET_MEAN_GAP)
        line("policy='deepseek' phy2log and logcnt == numpy baseline on every case",
             f"{sum(r['match'] for r in rows)}/{len(rows)}", all(r["match"] for r in rows))
    if cold:
        line(f"cold start with warm numba cache ≤ {TARGET_COLD_S:g} s",
             f"{cold['warm_wall_s']:.2f} s wall (import {cold['warm_import_s']:.2f} s, solve "
             f"{cold['warm_solve_s']:.2f} s); first-ever compile {cold['first_wall_s']:.1f} s "
             f"wall ({cold['first_solve_s']:.1f} s in solve)", cold["warm_wall_s"] <= TARGET_COLD_S)
    return out


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (non-default options only)."""
    parts = []
    for flag, value, default in (("--shapes", args.shapes, None), ("--sigmas", args.sigmas, None),
                                 ("--repeats", args.repeats, None), ("--steps", args.steps, 16),
                                 ("--seed", args.seed, 0), ("--threads", args.threads, 1),
                                 ("--parallel-threads", args.parallel_threads, None)):
        if value != default:
            parts.append(f"{flag} {value}")
    parts += [flag for flag, on in (("--no-cases", args.no_cases),
                                    ("--no-cold-start", args.no_cold_start)) if on]
    return bench_command("solve", args.quick, *parts)


def run(args: argparse.Namespace) -> int:
    import numba

    from ..solver.threads import thread_limit

    shapes = ([shape(n.strip()) for n in args.shapes.split(",") if n.strip()]
              if args.shapes else list(SHAPES))
    if args.sigmas:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    else:
        sigmas = [1.0] if args.quick else list(SIGMAS)
    repeats = args.repeats or (3 if args.quick else 21)
    threads = max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS))
    parallel = max(1, args.parallel_threads or numba.config.NUMBA_NUM_THREADS)
    with thread_limit(threads):
        rows = [measure_case(shp, sigma, repeats, args.steps, args.seed, parallel)
                for shp in shapes for sigma in sigmas]
        # Not SPEC shapes, so outside the targets: what the replica-count search costs and
        # gains where it runs (default run only).
        few_rows = [] if args.shapes else [
            measure_case(shp, sigma, repeats, args.steps, args.seed, parallel)
            for shp in FEW_SLOTS for sigma in sigmas]
        case_rows = [] if args.no_cases else [
            measure_loads_case(shp, kind, args.steps, args.seed)
            for shp in shapes for kind in ("uniform",) + ADVERSARIAL_KINDS]
    for row in rows:
        row["parallel_threads"] = parallel
    cold = None
    if not (args.quick or args.no_cold_start):
        cold = cold_start(shapes[0] if args.shapes else shape("dsv3-prefill"))

    parts = [f"Whole-model solve, warm, median of {repeats} runs interleaved (numpy: every 4th "
             f"round, >= 3), "
             f"{threads} numba thread(s); loads = {args.steps} sampled steps summed, seed {args.seed}. "
             "× = baseline time / plumb time. Δbal = per-layer balancedness of plumb minus "
             "deepseek's (same hierarchy mode); gap = plumb's lb_gap per layer (hierarchical "
             "rows: against the bound over placements that keep each group on one node, "
             "plumb.solver.bounds.hierarchical_bound)."
             + (f" The {parallel}-thread columns split the layers over {parallel} threads "
                f"(plumb.solver.threads; same placements); on this machine {parallel} threads "
                f"ran a numba arithmetic loop {thread_scaling(parallel):.2f}x as fast as one, "
                f"but {parallel} single-threaded {shapes[0].name} solves side by side only "
                f"{solver_scaling(shapes[0], parallel, args.steps, args.seed):.2f}x as fast as "
                f"one after the other (ideal {parallel}x): the ceiling of the parallel columns "
                "here." if parallel > 1 else ""),
             main_table(rows, parallel)]
    if few_rows:
        parts += ["Few slots per GPU (not SPEC shapes; outside the targets): 2 or 3 slots per "
                  "GPU, where plumb searches replica counts (plumb.solver.place: replica moves "
                  "between every pair of experts up to 32 experts per problem, target piece "
                  "sizes for any number; with 2 slots, moves scored by how the pieces pair, "
                  "beyond 32 experts to the two of the worst pair) instead of keeping "
                  "water-filling's, and on Mixtral's "
                  "8 experts searches every count vector and packing by branch and bound "
                  "(plumb.solver.exact, at most 8192 nodes per layer): where that search "
                  "finishes, the gap left is the lower bound's looseness, not plumb's (the "
                  "bound with spare slots, max(W / G, the largest water-filled piece), ignores "
                  "how the pieces pair up: loose at 2 slots per GPU):",
                  main_table(few_rows, parallel)]
    if case_rows:
        parts += ["Uniform routing and adversarial loads (one timed solve each):",
                  cases_table(case_rows)]
    parts += ["Targets:", "\n".join(targets(rows, case_rows, cold))]
    text = "\n\n".join(parts)
    print(text)
    if args.results is not None:
        write_section(args.results, "solve", _command(args), text)
    return 0 if all(r["match"] for r in rows + few_rows) else 1
