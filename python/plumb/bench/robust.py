"""Robust placement and the benefit gate: held-out per-step balancedness and gate decisions.

Windows of ``--steps`` sampled steps (multinomial top-k picks from lognormal popularities,
each shape's phase: decode 64-256 tokens per step, prefill 8192; log-popularity drift per
step) are split in half: placements are fitted on the first half and scored on the second by
the mean per-step model balancedness (``plumb.evaluate(...).heldout_balancedness``). Compared
in the same run: ``solve(objective="robust")`` (with and without a recency half-life),
``solve(objective="mean")``, the DeepSeek greedy on the summed fit steps, and a
reimplementation of SGLang's time-series variant (``plumb.bench.sglang_timeseries``).

Shapes whose layers the robust objective solves exactly (one replica per expert, few packings:
mixtral's 105 pairings; :func:`plumb.robust.exact.exact_applies`) get a second table over
``--exact-seeds`` windows (the first ``--seeds`` of them are the main table's): how many layers
robust packs like DeepSeek, how each window compares (with a sign-flip p-value of "robust is no
better" over the windows), and a held-out oracle (per layer the best packing for the held-out
steps themselves), which bounds what any fit could reach.

Gate (``plumb.recommend``, qwen3-30b decode shape, 30 ms steps, half MoE, 9.4 MB experts,
horizon 10000 steps): already-balanced windows (current placement fitted on 512 earlier steps
of the same popularity) must get "no", 6x skewed windows (hottest expert 6x the mean, current
placement balanced for uniform routing) "yes", and pure-noise windows (uniform routing, current
placement balanced for it) "yes" at most 5% of the time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..robust.bootstrap import sign_flip_pvalue
from ..robust.exact import exact_applies, exact_packing
from .options import nonnegative_float, positive_int, shape_names, sigma_list
from .results import markdown_table, write_section
from .sglang_timeseries import sglang_timeseries_rebalance
from .workloads import (SHAPES, Shape, inclusion_probabilities, lognormal_popularity, make_loads,
                        rng_of, sample_window, shape, tokens_per_step, uniform_popularity)

TARGET_FALSE_POSITIVE = 0.05
GATE_SHAPE = "qwen3-30b"
GATE_ARGS = dict(bytes_per_expert=3 * 2048 * 768 * 2, step_time_s=0.030, moe_fraction=0.5,
                 horizon_steps=10_000)
POLICIES = ("deepseek", "sglang-ts", "mean", "robust", "robust-hl")
HEADERS = ["shape", "phase", "σ", "deepseek", "sglang-ts", "mean", "robust", "robust h½",
           "robust / deepseek", "robust / sglang-ts", "robust s"]
EXACT_HEADERS = ["shape", "σ", "windows", "deepseek", "robust", "held-out oracle",
                 "robust / deepseek", "oracle / deepseek", "windows robust >/=/< deepseek",
                 "p (robust no better)", "layers robust = deepseek", "layers oracle = deepseek"]
# Sign flips for the p-value over windows (seeded: the table is deterministic).
SIGN_FLIPS = 20_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="two small shapes, one seed, sigma 1.0, 20 noise windows")
    parser.add_argument("--shapes", type=shape_names, default=None,
                        help="comma-separated shape names (default: all SPEC shapes)")
    parser.add_argument("--sigmas", type=sigma_list, default=None,
                        help="comma-separated lognormal sigmas (default 0.5,1.0,1.5)")
    parser.add_argument("--seeds", type=positive_int, default=None, help="windows per case (default 3)")
    parser.add_argument("--steps", type=positive_int, default=64, help="steps per window (half fitted)")
    parser.add_argument("--drift", type=nonnegative_float, default=0.05,
                        help="per-step std of the log-popularity random walk")
    parser.add_argument("--exact-seeds", type=positive_int, default=None,
                        help="windows per case of the exactly-solved shapes' table (def. 30)")
    parser.add_argument("--noise-seeds", type=positive_int, default=None,
                        help="pure-noise windows for the gate's false-positive rate (def. 100)")
    parser.add_argument("--no-gate", action="store_true", help="skip the gate table")
    parser.add_argument("--results", type=Path, default=None,
                        help="rewrite the '## robust' section of this markdown file")


# --- held-out balancedness ------------------------------------------------------------------

def _placements(shp: Shape, fit: np.ndarray) -> Dict[str, np.ndarray]:
    """phy2log [L, P] of every compared policy, fitted on ``fit`` [T, L, E]."""
    import plumb

    topo = shp.topology()
    common = dict(num_redundant=shp.num_redundant, num_groups=shp.num_groups)
    start = time.perf_counter()
    robust = plumb.solve(fit, topo, objective="robust", **common).phy2log
    seconds = time.perf_counter() - start
    out = {
        "deepseek": plumb.solve(fit, topo, policy="deepseek", hierarchy=shp.hierarchy,
                                **common).phy2log,
        "sglang-ts": sglang_timeseries_rebalance(fit, shp.num_slots, shp.num_gpus),
        "mean": plumb.solve(fit, topo, hierarchy=shp.hierarchy, **common).phy2log,
        "robust": robust,
        "robust-hl": plumb.solve(fit, topo, objective="robust", half_life=fit.shape[0] / 4,
                                 **common).phy2log,
    }
    out["seconds"] = seconds
    return out


def _packings(phy2log: np.ndarray, num_ranks: int) -> np.ndarray:
    """int64 [L, G, S]: each layer's ranks as sorted expert rows, the rows sorted (no labels)."""
    ranks = np.sort(phy2log.reshape(phy2log.shape[0], num_ranks, -1), axis=2)
    return np.stack([layer[np.lexsort(layer.T[::-1])] for layer in ranks])


def _same_layers(a: np.ndarray, b: np.ndarray, num_ranks: int) -> int:
    """Layers that phy2log ``a`` and ``b`` pack alike (up to rank labels and slot order)."""
    return int((_packings(a, num_ranks) == _packings(b, num_ranks)).all(axis=(1, 2)).sum())


def heldout_oracle(start: np.ndarray, held: np.ndarray, num_ranks: int) -> np.ndarray:
    """int64 [L, P]: per layer, the packing with the lowest mean over the held-out steps of
    max rank load / ideal rank load (ideal = the step's load over all layers / G), found by
    scoring every packing; needs :func:`exact_applies`. ``start``: int64 [L, P] (kept on ties),
    ``held``: float64 [T, L, E], equal rank speeds."""
    ideal = held.sum(axis=(1, 2)) / num_ranks
    step_w = np.divide(1.0, ideal, out=np.zeros_like(ideal), where=ideal > 0)
    out = np.empty_like(start)
    for layer in range(start.shape[0]):
        slot_e = start[layer].reshape(num_ranks, -1).astype(np.int64)  # a copy: filled in place
        exact_packing(np.ascontiguousarray(held[:, layer], dtype=np.float64), step_w, slot_e)
        out[layer] = slot_e.ravel()
    return out


def heldout_case(shp: Shape, sigma: float, seeds: int, steps: int, drift: float) -> Dict:
    """Mean held-out per-step balancedness of each policy over ``seeds`` windows; for shapes
    solved exactly also the held-out oracle's and the packing comparison with DeepSeek."""
    import plumb

    topo = shp.topology()
    exact = exact_applies(shp.num_experts, shp.num_slots, np.asarray(topo.rank_speed))
    scores: Dict[str, List[float]] = {name: [] for name in POLICIES + ("oracle",)}
    seconds = []
    same_robust = same_oracle = 0
    for seed in range(seeds):
        window = make_loads(shp, sigma, steps=steps, seed=seed, drift=drift,
                            window=True).astype(np.float64)
        fit, held = window[:steps // 2], window[steps // 2:]
        placements = _placements(shp, fit)
        seconds.append(placements.pop("seconds"))
        if exact:
            placements["oracle"] = heldout_oracle(placements["deepseek"], held, shp.num_gpus)
            same_robust += _same_layers(placements["robust"], placements["deepseek"],
                                        shp.num_gpus)
            same_oracle += _same_layers(placements["oracle"], placements["deepseek"],
                                        shp.num_gpus)
        for name, phy2log in placements.items():
            scores[name].append(plumb.evaluate(phy2log, held, topo).heldout_balancedness)
    row = {name: float(np.mean(values)) for name, values in scores.items() if values}
    row.update(shape=shp.name, phase=shp.phase, sigma=sigma, seconds=float(np.mean(seconds)),
               exact=exact)
    if exact:
        gain = np.subtract(scores["robust"], scores["deepseek"])
        diff = np.sign(gain)
        row.update(windows=[int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())],
                   p_value=sign_flip_pvalue(gain, SIGN_FLIPS, 0), seeds=seeds,
                   layers=seeds * shp.num_layers, same_robust=same_robust,
                   same_oracle=same_oracle)
    return row


def heldout_table(rows: Sequence[Dict]) -> str:
    body = [[r["shape"], r["phase"], f"{r['sigma']:g}"]
            + [f"{r[name]:.4f}" for name in POLICIES]
            + [f"{r['robust'] / r['deepseek']:.5f}", f"{r['robust'] / r['sglang-ts']:.5f}",
               f"{r['seconds']:.2f}"] for r in rows]
    return markdown_table(HEADERS, body)


def exact_table(rows: Sequence[Dict]) -> str:
    """The comparison for the shapes solved exactly (rows with ``exact``)."""
    body = [[r["shape"], f"{r['sigma']:g}", r["seeds"], f"{r['deepseek']:.5f}",
             f"{r['robust']:.5f}", f"{r['oracle']:.5f}", f"{r['robust'] / r['deepseek']:.5f}",
             f"{r['oracle'] / r['deepseek']:.5f}", "/".join(map(str, r["windows"])),
             f"{r['p_value']:.2f}", f"{r['same_robust']}/{r['layers']}",
             f"{r['same_oracle']}/{r['layers']}"]
            for r in rows if r["exact"]]
    return markdown_table(EXACT_HEADERS, body)


# --- gate -----------------------------------------------------------------------------------

def _skewed_popularity(shp: Shape, ratio: float, seed: int) -> np.ndarray:
    """[L, E]: lognormal(0.5) popularity whose hottest expert per layer is ``ratio`` x the mean."""
    pop = lognormal_popularity(shp.num_layers, shp.num_experts, 0.5, seed)
    hot = pop.argmax(axis=1)
    rows = np.arange(shp.num_layers)
    rest = pop.sum(axis=1) - pop[rows, hot]
    # hot / (rest + hot) = ratio / E  =>  hot = ratio * rest / (E - ratio)
    pop[rows, hot] = ratio * rest / (shp.num_experts - ratio)
    return pop / pop.sum(axis=1, keepdims=True)


def _window(shp: Shape, popularity: np.ndarray, steps: int, seed: int) -> np.ndarray:
    rng = rng_of(seed)
    tokens = tokens_per_step(shp.phase, steps, rng)
    return sample_window(popularity, steps, tokens, shp.top_k, rng).astype(np.float64)


def _balanced_for(shp: Shape, popularity: np.ndarray) -> np.ndarray:
    """phy2log balanced for the expected loads of ``popularity`` (what a good current is)."""
    import plumb

    expected = inclusion_probabilities(popularity, shp.top_k)
    return plumb.solve(expected, shp.topology(), num_redundant=shp.num_redundant,
                       num_groups=shp.num_groups).phy2log


def gate_rates(shp: Shape, steps: int, seeds: int, noise_seeds: int) -> Dict[str, float]:
    """Share of "apply" answers on balanced, 6x-skewed and pure-noise windows."""
    import plumb

    topo = shp.topology()
    uniform_current = _balanced_for(shp, uniform_popularity(shp.num_layers, shp.num_experts))
    balanced_yes = skewed_yes = noise_yes = 0
    for seed in range(seeds):
        pop = lognormal_popularity(shp.num_layers, shp.num_experts, 1.0, 1000 + seed)
        history = _window(shp, pop, 512, 2000 + seed)
        current = plumb.solve(history, topo, num_redundant=shp.num_redundant).phy2log
        balanced_yes += plumb.recommend(current, _window(shp, pop, steps, 3000 + seed), topo,
                                        **GATE_ARGS).apply
        skewed = _window(shp, _skewed_popularity(shp, 6.0, 4000 + seed), steps, 5000 + seed)
        skewed_yes += plumb.recommend(uniform_current, skewed, topo, **GATE_ARGS).apply
    uniform = uniform_popularity(shp.num_layers, shp.num_experts)
    for seed in range(noise_seeds):
        noise_yes += plumb.recommend(uniform_current, _window(shp, uniform, steps, 6000 + seed),
                                     topo, **GATE_ARGS).apply
    return {"seeds": seeds, "noise_seeds": noise_seeds, "balanced": balanced_yes / seeds,
            "skewed": skewed_yes / seeds, "noise": noise_yes / noise_seeds}


def gate_table(shp: Shape, rates: Dict[str, float]) -> str:
    rows = [["already balanced", rates["seeds"], f"{rates['balanced']:.0%}", "no"],
            ["6x skewed", rates["seeds"], f"{rates['skewed']:.0%}", "yes"],
            ["pure noise", rates["noise_seeds"], f"{rates['noise']:.0%}",
             f"no (yes ≤ {TARGET_FALSE_POSITIVE:.0%})"]]
    return (f"Gate on {shp.name} ({shp.phase}), {GATE_ARGS}:\n\n"
            + markdown_table(["windows", "count", "apply = yes", "wanted"], rows))


# --- output ---------------------------------------------------------------------------------

def targets(rows: Sequence[Dict], rates) -> List[str]:
    out = []

    def line(what, value, ok):
        out.append(f"- {what}: {value} — {'met' if ok else '**NOT met**'}")

    if rows:
        worst_ds = min(rows, key=lambda r: r["robust"] / r["deepseek"])
        ratio = worst_ds["robust"] / worst_ds["deepseek"]
        line("robust > DeepSeek greedy on the mean, every case (worst ratio)",
             f"{ratio:.5f} ({worst_ds['shape']}, σ {worst_ds['sigma']:g})", ratio > 1.0)
        worst_sg = min(rows, key=lambda r: r["robust"] / r["sglang-ts"])
        ratio = worst_sg["robust"] / worst_sg["sglang-ts"]
        line("robust ≥ SGLang time-series variant, every case (worst ratio)",
             f"{ratio:.5f} ({worst_sg['shape']}, σ {worst_sg['sigma']:g})", ratio >= 1.0)
        wins = sum(r["robust"] > r["deepseek"] and r["robust"] >= r["sglang-ts"] for r in rows)
        mean_ratio = float(np.mean([r["robust"] / r["deepseek"] for r in rows]))
        out.append(f"- cases where robust beats both baselines: {wins}/{len(rows)}; mean "
                   f"robust / deepseek {mean_ratio:.4f}")
    if rates:
        line("gate says no on already-balanced windows", f"yes on {rates['balanced']:.0%}",
             rates["balanced"] == 0)
        line("gate says yes on 6x skewed windows", f"yes on {rates['skewed']:.0%}",
             rates["skewed"] == 1)
        line(f"false-positive rate on pure noise ≤ {TARGET_FALSE_POSITIVE:.0%}",
             f"{rates['noise']:.1%} of {rates['noise_seeds']}",
             rates["noise"] <= TARGET_FALSE_POSITIVE)
    return out


def _command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/bench_robust.py"]
    if args.quick:
        parts.append("--quick")
    for flag, value, default in (("--shapes", args.shapes, None), ("--sigmas", args.sigmas, None),
                                 ("--seeds", args.seeds, None), ("--steps", args.steps, 64),
                                 ("--drift", args.drift, 0.05),
                                 ("--exact-seeds", args.exact_seeds, None),
                                 ("--noise-seeds", args.noise_seeds, None)):
        if value != default:
            parts.append(f"{flag} {value}")
    if args.no_gate:
        parts.append("--no-gate")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.shapes:
        shapes = [shape(n.strip()) for n in args.shapes.split(",") if n.strip()]
    else:
        shapes = [shape("qwen3-30b"), shape("olmoe")] if args.quick else list(SHAPES)
    if args.sigmas:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    else:
        sigmas = [1.0] if args.quick else [0.5, 1.0, 1.5]
    seeds = args.seeds or (1 if args.quick else 3)
    noise_seeds = args.noise_seeds or (20 if args.quick else 100)
    exact_seeds = max(seeds, args.exact_seeds or (3 if args.quick else 30))
    rows = [heldout_case(shp, sigma, seeds, args.steps, args.drift)
            for shp in shapes for sigma in sigmas]
    rates = None
    parts = [f"Held-out per-step model balancedness (mean over {seeds} window(s) of "
             f"{args.steps} steps, drift {args.drift:g}): fitted on the first half, scored on "
             "the second. robust h½ = robust with half_life = fit steps / 4; robust s = its "
             "solve time.", heldout_table(rows)]
    exact_rows = [heldout_case(shape(r["shape"]), r["sigma"], exact_seeds, args.steps,
                               args.drift) if exact_seeds > seeds else r
                  for r in rows if r["exact"]]
    if exact_rows:
        parts += ["Shapes solved exactly (every packing of one replica per expert scored on the "
                  "robust objective, e.g. mixtral's 105 pairings; ties keep the mean-objective "
                  f"packing), over {exact_seeds} windows (the first {seeds} are the table's "
                  "above). held-out oracle: per layer the packing that is best on the held-out "
                  "steps themselves (lowest mean max / ideal rank load), out of reach of any "
                  "fit; windows robust >/=/<: per-window held-out comparison, and the one-sided "
                  "sign-flip p-value over windows that robust is no better than DeepSeek; "
                  "layers: packings equal up to rank labels.",
                  exact_table(exact_rows)]
    if not args.no_gate:
        gate_shape = shape(GATE_SHAPE)
        rates = gate_rates(gate_shape, args.steps, max(seeds, 3 if args.quick else 10),
                           noise_seeds)
        parts.append(gate_table(gate_shape, rates))
    lines = targets(rows, rates)
    parts += ["Targets:", "\n".join(lines)]
    text = "\n\n".join(parts)
    print(text)
    if args.results is not None:
        write_section(args.results, "robust", _command(args), text)
    return 0
