"""The report's key charts as PNG files, for pasting into issues (needs matplotlib: ``plumb[report]``).

Figures are drawn on bare ``matplotlib.figure.Figure`` objects (Agg), never through pyplot, so
nothing global changes in the caller's process; PNG metadata carries no version or date, so the
same data gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from ..errors import PlumbError
from ..io.atomic import PathLike, atomic_write
from .data import ReportData

_CURRENT, _PROPOSED, _BOUND = "#d9822b", "#2b6cb0", "#4a5568"


def _relative(rank_loads: np.ndarray) -> np.ndarray:
    """[L, G] rank loads divided by their layer's mean (0 for an idle layer)."""
    mean = rank_loads.mean(axis=1, keepdims=True)
    return np.divide(rank_loads, mean, out=np.zeros_like(rank_loads), where=mean > 0)


def _save(figure, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, metadata={"Software": None})


def write_pngs(data: ReportData, stem: PathLike) -> List[Path]:
    """Write ``<stem>-layers.png``, ``<stem>-heatmaps.png`` and, with a window,
    ``<stem>-steps.png``; returns the paths written.

    Raises:
        PlumbError: matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlumbError("PNG export needs matplotlib: pip install 'plumb[report]'") from None
    stem = Path(stem)
    layers = np.arange(data.num_layers)
    cur, pro = data.current.metrics, data.proposed.metrics
    written: List[Path] = []

    figure = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    pro_mean = pro.rank_loads.mean(axis=1)
    bound = np.divide(pro_mean, pro.lower_bound, out=np.ones_like(pro_mean),
                      where=pro.lower_bound > 0)
    top.plot(layers, bound, color=_BOUND, linestyle="--", linewidth=1, label="best possible")
    top.plot(layers, cur.layer_balancedness, color=_CURRENT, marker="o", markersize=3,
             label=f"current ({cur.balancedness:.4f})")
    top.plot(layers, pro.layer_balancedness, color=_PROPOSED, marker="o", markersize=3,
             label=f"proposed ({pro.balancedness:.4f})")
    top.set_ylabel("balancedness (mean / max)")
    top.set_ylim(top=1.0)
    top.grid(alpha=0.3)
    top.legend(loc="lower left")
    top.set_title(f"{data.title}: per-layer balancedness")
    bottom.bar(layers, data.layer_skew(), color="#805ad5")
    bottom.set_ylabel("expert max / mean")
    bottom.set_xlabel("layer")
    bottom.grid(alpha=0.3, axis="y")
    written.append(stem.with_name(stem.name + "-layers.png"))
    _save(figure, written[-1])

    figure = Figure(figsize=(11, 5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    relative = [_relative(cur.rank_loads), _relative(pro.rank_loads)]
    vmax = max(1.0, max(float(r.max()) for r in relative))
    for ax, rel, name in zip(axes, relative, ("current", "proposed")):
        image = ax.imshow(rel, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0,
                          vmax=vmax)
        ax.set_title(f"rank load / layer mean, {name}")
        ax.set_xlabel("rank")
    axes[0].set_ylabel("layer")
    figure.colorbar(image, ax=axes, shrink=0.9)
    written.append(stem.with_name(stem.name + "-heatmaps.png"))
    _save(figure, written[-1])

    cur_steps, pro_steps = data.current.step_balancedness, data.proposed.step_balancedness
    if cur_steps is not None and pro_steps is not None:
        figure = Figure(figsize=(10, 3.5), layout="constrained")
        ax = figure.subplots()
        steps = np.arange(len(cur_steps))
        ax.plot(steps, cur_steps, color=_CURRENT, label="current")
        ax.plot(steps, pro_steps, color=_PROPOSED, label="proposed")
        ax.set_xlabel("step")
        ax.set_ylabel("balancedness")
        ax.set_ylim(top=1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        ax.set_title(f"{data.title}: per-step balancedness")
        written.append(stem.with_name(stem.name + "-steps.png"))
        _save(figure, written[-1])
    return written
