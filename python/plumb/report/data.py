"""The numbers behind the HTML report: two placements scored on the same loads, packed for the page.

The page recomputes no metric: every value it shows (cards, charts, hover text) is computed here,
so the report agrees with ``plumb evaluate`` and the CLI. Only the per-slot load of the layer view
(expert load / replica count) is derived in the browser, from the same embedded arrays.

Units: loads are routed tokens (top-k picks) per expert, summed over the steps of the input.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InputError
from ..locality import traffic_metrics
from ..robust.steps import step_balancedness
from ..solver import Metrics, Moves, evaluate, solve
from ..solver.validate import as_loads, as_phy2log, replica_counts
from ..topology import Topology, TopologyLike, as_topology

# Smallest little-endian dtype first; the page decodes each code with the matching typed array.
_UINT_CODES = (("u1", np.uint8), ("u2", np.uint16), ("u4", np.uint32))


def pack_array(array: np.ndarray) -> Dict[str, Any]:
    """Encode ``array`` for the page as ``{"dtype", "shape", "data"}`` (base64, little-endian).

    Non-negative integral values (counts, ids; float counts too) use the smallest of
    uint8/16/32 that holds them, anything else float64, so the page shows exact values while the
    61 x 256 x 64 case stays a few hundred kB.
    """
    values = np.asarray(array)  # tobytes() below writes C order whatever the layout
    if values.dtype.kind not in "iuf":
        raise InputError(f"cannot pack dtype {values.dtype} for the report")
    code, dtype = "f8", np.dtype("<f8")
    finite = values.dtype.kind in "iu" or bool(np.all(np.isfinite(values)))
    if finite and (values.size == 0 or (values.min() >= 0 and np.all(values == np.floor(values)))):
        peak = values.max() if values.size else 0
        for uint_code, uint_dtype in _UINT_CODES:
            if peak <= np.iinfo(uint_dtype).max:
                code, dtype = uint_code, np.dtype(uint_dtype).newbyteorder("<")
                break
    raw = values.astype(dtype, copy=False).tobytes()
    return {"dtype": code, "shape": list(values.shape), "data": base64.b64encode(raw).decode("ascii")}


def unpack_array(packed: Dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`pack_array` (used by tests and tools that read a report's payload)."""
    dtype = np.dtype("<" + packed["dtype"])
    return np.frombuffer(base64.b64decode(packed["data"]), dtype=dtype).reshape(packed["shape"])


# Traffic is shown as shares of routed tokens over three link levels, from the fractions that
# plumb.locality.traffic_metrics reports (the same-rank and same-NUMA levels come as one).
TRAFFIC_LEVELS = ("within_numa", "cross_numa", "cross_node")


@dataclass(frozen=True)
class ScoredPlacement:
    """One placement scored on the report's loads.

    Attributes:
        label: "current" or "proposed".
        source: where it came from, in words (a file, the solver, the start-up layout).
        phy2log: int64 [L, P], logical expert in each physical slot (slot p on rank p // S).
        logcnt: int64 [L, E], replicas of each expert.
        metrics: ``plumb.evaluate`` of the placement on the aggregated loads (rank loads in
            tokens [L, G], balancedness, lower bounds, lb_gap; moves for the proposed one).
        step_balancedness: float64 [T], model balancedness on each step of the window, or None.
        traffic: ``plumb.locality.traffic_metrics`` (even dispatch) with a topology, else None.
    """

    label: str
    source: str
    phy2log: np.ndarray
    logcnt: np.ndarray
    metrics: Metrics
    step_balancedness: Optional[np.ndarray]
    traffic: Optional[Dict[str, Any]]

    def traffic_shares(self) -> Optional[np.ndarray]:
        """float64 [3]: share of routed tokens per TRAFFIC_LEVELS entry, or None."""
        if self.traffic is None:
            return None
        node, numa = self.traffic["cross_node_fraction"], self.traffic["cross_numa_fraction"]
        return np.array([max(0.0, 1.0 - node - numa), numa, node])


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows.

    Attributes:
        title: page title.
        loads: float64 [L, E], tokens per expert (summed over the window's steps).
        num_ranks: G.
        step_tokens: float64 [T], tokens routed in each step of the window, or None.
        current, proposed: the two placements (their slot counts P may differ).
        topology: the Topology when the caller gave one (traffic section), else None.
        traffic_counts_given: whether per-source traffic counts were given (else sources are
            taken as uniform over ranks).
    """

    title: str
    loads: np.ndarray
    num_ranks: int
    step_tokens: Optional[np.ndarray]
    current: ScoredPlacement
    proposed: ScoredPlacement
    topology: Optional[Topology]
    traffic_counts_given: bool

    @property
    def moves(self) -> Moves:
        """Proposed vs current (``plumb.evaluate``'s Moves)."""
        return self.proposed.metrics.moves

    @property
    def num_layers(self) -> int:
        return int(self.loads.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.loads.shape[1])

    @property
    def num_steps(self) -> Optional[int]:
        """T for a window input, else None."""
        return None if self.step_tokens is None else int(self.step_tokens.shape[0])

    @property
    def tokens(self) -> float:
        """Routed tokens (top-k picks) in the input, all layers together."""
        return float(self.loads.sum())

    def layer_skew(self) -> np.ndarray:
        """float64 [L], max / mean expert load per layer (1 = uniform; 0 for an idle layer)."""
        mean = self.loads.mean(axis=1)
        return np.divide(self.loads.max(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)

    def payload(self) -> Dict[str, Any]:
        """JSON-ready dict the page renders from; arrays packed with :func:`pack_array`."""
        placements: List[Dict[str, Any]] = []
        for scored in (self.current, self.proposed):
            metrics = scored.metrics
            entry: Dict[str, Any] = {
                "label": scored.label,
                "source": scored.source,
                "slots": int(scored.phy2log.shape[1]),
                "balancedness": metrics.balancedness,
                "lb_gap_max": metrics.lb_gap_max,
                "phy2log": pack_array(scored.phy2log),
                "logcnt": pack_array(scored.logcnt),
                "rank_loads": pack_array(metrics.rank_loads),
                "layer_balancedness": pack_array(metrics.layer_balancedness),
                "lb_gap": pack_array(metrics.lb_gap),
            }
            if scored.step_balancedness is not None:
                entry["step_balancedness"] = pack_array(scored.step_balancedness)
            shares = scored.traffic_shares()
            if shares is not None:
                entry["traffic_shares"] = pack_array(shares)
                entry["traffic_cost"] = scored.traffic["traffic"]
            placements.append(entry)
        payload: Dict[str, Any] = {
            "title": self.title,
            "shape": {"layers": self.num_layers, "experts": self.num_experts,
                      "ranks": self.num_ranks, "steps": self.num_steps},
            "loads": pack_array(self.loads),
            "layer_skew": pack_array(self.layer_skew()),
            "lower_bound": pack_array(self.proposed.metrics.lower_bound),
            "placements": placements,
        }
        if self.step_tokens is not None:
            payload["step_tokens"] = pack_array(self.step_tokens)
        if self.topology is not None:
            payload["traffic_levels"] = list(TRAFFIC_LEVELS)
        return payload


def default_layout(num_layers: int, num_experts: int, num_slots: int) -> np.ndarray:
    """int64 [L, P]: the engines' start-up layout, slot p holds expert p mod E.

    With P == E this is the static contiguous layout (E/G experts per rank); it is the
    "current" placement when the caller names none.
    """
    return np.tile(np.arange(num_slots, dtype=np.int64) % num_experts, (num_layers, 1))


def _score(label: str, source: str, phy2log: np.ndarray, weights: np.ndarray,
           window: Optional[np.ndarray], topo: Topology, show_traffic: bool, traffic: Any,
           previous: Optional[np.ndarray] = None,
           bytes_per_expert: Optional[int] = None) -> ScoredPlacement:
    """Evaluate one validated placement on the aggregate loads, on every step, for traffic."""
    metrics = evaluate(phy2log, weights, topo, previous=previous, traffic=traffic,
                       bytes_per_expert=bytes_per_expert)
    logcnt = replica_counts(phy2log, weights.shape[1])
    steps = None
    if window is not None:
        steps = step_balancedness(phy2log, logcnt, window, topo.rank_speed)
    flows = None
    if show_traffic:
        # Without per-source counts evaluate has no traffic; score uniform sources then.
        flows = metrics.traffic or traffic_metrics(phy2log, weights, topo, dispatch="even")
    return ScoredPlacement(label, source, phy2log, logcnt, metrics, steps, flows)


def build_report_data(loads: Any, topo: TopologyLike, placement: Any = None,
                      previous: Any = None, *, traffic: Any = None,
                      title: str = "plumb report", bytes_per_expert: Optional[int] = None,
                      solve_kwargs: Optional[Dict[str, Any]] = None,
                      placement_source: Optional[str] = None,
                      previous_source: Optional[str] = None) -> ReportData:
    """Score the current and the proposed placement; arguments as :func:`plumb.report`.

    ``solve_kwargs`` go to ``plumb.solve`` when ``placement`` is None (``num_redundant``
    defaults to the previous placement's P - E). ``placement_source`` / ``previous_source``
    name where each placement came from on the page.
    """
    show_traffic = isinstance(topo, Topology)
    topo = as_topology(topo)
    weights, window = as_loads(loads)
    num_layers, num_experts = weights.shape
    if previous is not None:
        previous = as_phy2log(getattr(previous, "phy2log", previous), "previous", num_layers,
                              num_experts, topo.num_ranks)
    if placement is None:
        kwargs = dict(solve_kwargs or {})
        if previous is not None:
            kwargs.setdefault("num_redundant", previous.shape[1] - num_experts)
        placement = solve(loads, topo, previous=previous, traffic=traffic, **kwargs)
        placement_source = placement_source or (
            f"plumb.solve(policy={placement.policy!r}, num_redundant={placement.num_redundant}, "
            f"num_groups={placement.num_groups}), {placement.metrics.hierarchy} hierarchy")
    placement = as_phy2log(getattr(placement, "phy2log", placement), "placement", num_layers,
                           num_experts, topo.num_ranks)
    if previous is None:
        previous = default_layout(num_layers, num_experts, placement.shape[1])
        previous_source = previous_source or (
            f"engine start-up layout (slot p holds expert p mod {num_experts})")
    current = _score("current", previous_source or "previous placement", previous, weights,
                     window, topo, show_traffic, traffic)
    proposed = _score("proposed", placement_source or "given placement", placement, weights,
                      window, topo, show_traffic, traffic, previous=current.phy2log,
                      bytes_per_expert=bytes_per_expert)
    return ReportData(
        title=title,
        loads=weights,
        num_ranks=topo.num_ranks,
        step_tokens=None if window is None else window.sum(axis=(1, 2)),
        current=current,
        proposed=proposed,
        topology=topo if show_traffic else None,
        traffic_counts_given=traffic is not None,
    )
