"""Expert-load generators shared by the benchmarks (and usable in tests).

Everything takes a seeded ``numpy.random.Generator`` (or a seed) and is deterministic.

* ``SHAPES``: the SPEC section 6 table (L, E, P, G, nodes, groups; plus top-k, phase and the
  hierarchy mode each shape is benchmarked in). ``shape(name)`` looks one up; ``TINY`` is a
  small extra shape for smoke tests; ``FEW_SLOTS``: deployments with 2 or 3 slots per GPU
  (not SPEC shapes), where the replica counts decide the packing.
* ``lognormal_popularity``: per-layer expert popularity, log-normal with the given sigma
  (0.5 / 1.0 / 1.5 span published per-layer max/mean ratios of about 1.5 to 8).
* ``inclusion_probabilities``: how often a token picks each expert under top-k routing (each
  <= 1, summing to k).
* ``sample_window``: per-step counts [T, L, E] from multinomial sampling of top-k picks
  (decode: 64-256 tokens per step; prefill: 8192), with optional log-popularity drift.
* ``uniform_window``: uniform-random routing (only sampling noise).
* ``adversarial``: one expert above W/G, all zeros, all equal, ties, one hot group.
* ``make_loads``: the [L, E] (or [T, L, E]) loads a benchmark case uses, in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

__all__ = [
    "Shape", "SHAPES", "TINY", "FEW_SLOTS", "SIGMAS", "ADVERSARIAL_KINDS", "shape", "rng_of",
    "lognormal_popularity", "uniform_popularity", "inclusion_probabilities", "tokens_per_step",
    "sample_window", "uniform_window", "adversarial", "make_loads",
]

SeedLike = Union[int, np.random.Generator, None]

PREFILL_TOKENS = 8192
DECODE_TOKENS = (64, 256)  # inclusive range of tokens per decode step
SIGMAS = (0.5, 1.0, 1.5)


@dataclass(frozen=True)
class Shape:
    """One benchmark model/deployment shape.

    ``hierarchy`` is the mode the shape is benchmarked in ("hierarchical" or "global"); the
    DeepSeek call for it uses (groups, nodes) in hierarchical mode and (1, 1) in global mode.
    """

    name: str
    num_layers: int
    num_experts: int
    num_slots: int      # P
    num_gpus: int       # G
    num_nodes: int
    num_groups: int
    top_k: int
    phase: str          # "prefill" (8192 tokens/step) or "decode" (64-256 tokens/step)
    hierarchy: str      # "hierarchical" | "global"

    @property
    def num_redundant(self) -> int:
        return self.num_slots - self.num_experts

    @property
    def gpus_per_node(self) -> int:
        return self.num_gpus // self.num_nodes

    @property
    def slots_per_gpu(self) -> int:
        return self.num_slots // self.num_gpus

    def deepseek_args(self) -> tuple[int, int, int, int]:
        """``(num_replicas, num_groups, num_nodes, num_gpus)`` for ``deepseek_rebalance``."""
        if self.hierarchy == "hierarchical":
            return self.num_slots, self.num_groups, self.num_nodes, self.num_gpus
        return self.num_slots, 1, 1, self.num_gpus

    def topology(self):
        """``plumb.Topology.cluster(nodes, gpus_per_node)`` for this shape."""
        from ..topology import Topology

        return Topology.cluster(nodes=self.num_nodes, gpus_per_node=self.gpus_per_node)


SHAPES = (
    Shape("dsv3-prefill", 58, 256, 288, 32, 4, 8, 8, "prefill", "hierarchical"),
    Shape("dsv3-decode", 58, 256, 320, 64, 8, 8, 8, "decode", "global"),
    Shape("qwen3-30b", 48, 128, 160, 8, 1, 1, 8, "decode", "global"),
    Shape("olmoe", 16, 64, 64, 8, 1, 1, 8, "decode", "global"),
    Shape("mixtral", 32, 8, 8, 4, 1, 1, 2, "decode", "global"),
)
TINY = Shape("tiny", 4, 16, 24, 4, 2, 4, 2, "decode", "hierarchical")
# Mixtral-8x7B on 4 GPUs and Phi-3.5-MoE (16 experts, top-2) on 8, one redundant slot per GPU;
# DeepSeek-V3 on 256 GPUs (32 nodes of 8) with one redundant slot each: 2 slots per GPU.
FEW_SLOTS = (
    Shape("mixtral-r4", 32, 8, 12, 4, 1, 1, 2, "decode", "global"),
    Shape("phi3.5-moe-r8", 32, 16, 24, 8, 1, 1, 2, "decode", "global"),
    Shape("dsv3-ep256", 58, 256, 512, 256, 32, 8, 8, "decode", "global"),
)
_BY_NAME = {s.name: s for s in SHAPES + (TINY,) + FEW_SLOTS}


def shape(name: str) -> Shape:
    """The shape called ``name`` (one of ``SHAPES``, ``"tiny"`` or ``FEW_SLOTS``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; expected one of {sorted(_BY_NAME)}") from None


def rng_of(seed: SeedLike) -> np.random.Generator:
    """A Generator from a seed (or the Generator itself)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# --- popularity -----------------------------------------------------------------------------------

def lognormal_popularity(num_layers: int, num_experts: int, sigma: float,
                         seed: SeedLike = 0) -> np.ndarray:
    """float64 [L, E]: each layer's routing probabilities, log-normal(0, sigma), rows sum to 1."""
    rng = rng_of(seed)
    weights = rng.lognormal(0.0, sigma, size=(num_layers, num_experts))
    return weights / weights.sum(axis=1, keepdims=True)


def uniform_popularity(num_layers: int, num_experts: int) -> np.ndarray:
    """float64 [L, E] of 1/E."""
    return np.full((num_layers, num_experts), 1.0 / num_experts)


def inclusion_probabilities(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """Per-token probability that each expert is among the token's top-k picks.

    ``top_k * popularity`` capped at 1 (a token picks an expert at most once), with the mass
    removed by the cap handed to the uncapped experts in proportion, until nothing exceeds 1.
    Rows sum to ``min(top_k, E)``.
    """
    p = np.asarray(popularity, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    k = min(top_k, p.shape[-1])
    capped = np.zeros(p.shape, dtype=bool)
    pi = k * p
    for _ in range(p.shape[-1]):
        free = np.where(capped, 0.0, p)
        room = k - capped.sum(axis=-1, keepdims=True)
        total = free.sum(axis=-1, keepdims=True)
        share = np.divide(room, total, out=np.zeros_like(total), where=total > 0)
        pi = np.where(capped, 1.0, free * share)
        newly = pi > 1.0
        if not newly.any():
            break
        capped |= newly
    return np.minimum(pi, 1.0)


# --- sampling -------------------------------------------------------------------------------------

def tokens_per_step(phase: str, steps: int, seed: SeedLike = 0) -> np.ndarray:
    """int64 [T]: 8192 per prefill step, uniform in [64, 256] per decode step."""
    if phase == "prefill":
        return np.full(steps, PREFILL_TOKENS, dtype=np.int64)
    if phase == "decode":
        return rng_of(seed).integers(DECODE_TOKENS[0], DECODE_TOKENS[1] + 1, size=steps)
    raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")


def sample_window(popularity: np.ndarray, steps: int, tokens: Union[int, np.ndarray], top_k: int,
                  seed: SeedLike = 0, drift: float = 0.0) -> np.ndarray:
    """int64 [T, L, E]: per-step expert counts, oldest step first.

    Each step routes ``tokens`` tokens (an int, or [T] per step) to ``top_k`` experts each:
    ``tokens * top_k`` picks drawn from a multinomial over the top-k inclusion probabilities,
    each count capped at the number of tokens (no token picks an expert twice). With
    ``drift > 0`` the log-popularity takes a Gaussian random-walk step of that standard
    deviation per expert between steps, so that later steps differ from earlier ones.
    """
    rng = rng_of(seed)
    pop = np.asarray(popularity, dtype=np.float64)
    num_layers, num_experts = pop.shape
    per_step = np.broadcast_to(np.asarray(tokens, dtype=np.int64), (steps,))
    log_pop = np.log(np.maximum(pop, 1e-300))
    out = np.empty((steps, num_layers, num_experts), dtype=np.int64)
    k = min(top_k, num_experts)
    for t in range(steps):
        if drift > 0 and t > 0:
            log_pop = log_pop + rng.normal(0.0, drift, size=log_pop.shape)
        current = np.exp(log_pop - log_pop.max(axis=1, keepdims=True))
        probs = inclusion_probabilities(current, k) / k
        probs = probs / probs.sum(axis=1, keepdims=True)
        n = int(per_step[t])
        counts = rng.multinomial(n * k, probs)
        out[t] = np.minimum(counts, n)
    return out


def uniform_window(num_layers: int, num_experts: int, steps: int, tokens: Union[int, np.ndarray],
                   top_k: int, seed: SeedLike = 0) -> np.ndarray:
    """int64 [T, L, E] under uniform-random routing."""
    return sample_window(uniform_popularity(num_layers, num_experts), steps, tokens, top_k, seed)


# --- adversarial ----------------------------------------------------------------------------------

ADVERSARIAL_KINDS = ("hot", "zeros", "equal", "ties", "hot-group")


def adversarial(kind: str, num_layers: int, num_experts: int, num_gpus: int,
                seed: SeedLike = 0, num_groups: int = 1) -> np.ndarray:
    """float64 [L, E] loads built to stress a balancer.

    * ``hot``: one expert per layer carries 3 W / G (1.5 W / G for G <= 4: more than a rank's
      fair share); the rest are log-normal.
    * ``zeros``: every load 0.
    * ``equal``: every load 1000.
    * ``ties``: integer loads from {1, 2, 3} (many exact ties in every sort).
    * ``hot-group``: all load in one expert group (of ``num_groups``), uniform inside it.
    """
    rng = rng_of(seed)
    shape_ = (num_layers, num_experts)
    if kind == "zeros":
        return np.zeros(shape_)
    if kind == "equal":
        return np.full(shape_, 1000.0)
    if kind == "ties":
        return rng.integers(1, 4, size=shape_).astype(np.float64)
    if kind == "hot":
        loads = np.round(1000.0 * rng.lognormal(0.0, 0.5, size=shape_))
        hot = rng.integers(0, num_experts, size=num_layers)
        rows = np.arange(num_layers)
        loads[rows, hot] = 0.0
        rest = loads.sum(axis=1)
        # w_hot = c (rest + w_hot) / G  =>  w_hot = c rest / (G - c); c = 3 (1.5 for G <= 4)
        c = 3.0 if num_gpus > 4 else 1.5
        factor = c / (num_gpus - c) if num_gpus > 1 else 1.0
        loads[rows, hot] = np.round(np.maximum(rest * factor, loads.max(axis=1) * 2 + 1))
        return loads
    if kind == "hot-group":
        if num_experts % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_experts={num_experts}")
        size = num_experts // num_groups
        loads = np.zeros(shape_)
        for layer, group in enumerate(rng.integers(0, num_groups, size=num_layers)):
            loads[layer, group * size:(group + 1) * size] = 1000.0
        return loads
    raise ValueError(f"unknown adversarial kind {kind!r}; expected one of {ADVERSARIAL_KINDS}")


# --- one call for a benchmark case ---------------------------------------------------------------

def make_loads(shp: Union[Shape, str], sigma: Optional[float] = 1.0, steps: int = 16,
               seed: SeedLike = 0, drift: float = 0.0, window: bool = False) -> np.ndarray:
    """The loads of one benchmark case: lognormal(sigma) popularity (``sigma=None``: uniform),
    ``steps`` sampled steps of the shape's phase. Returns the window [T, L, E] int64 if
    ``window``, else its sum over steps as float64 [L, E].
    """
    shp = shape(shp) if isinstance(shp, str) else shp
    rng = rng_of(seed)
    if sigma is None:
        pop = uniform_popularity(shp.num_layers, shp.num_experts)
    else:
        pop = lognormal_popularity(shp.num_layers, shp.num_experts, sigma, rng)
    tokens = tokens_per_step(shp.phase, steps, rng)
    counts = sample_window(pop, steps, tokens, shp.top_k, rng, drift=drift)
    return counts if window else counts.sum(axis=0).astype(np.float64)
