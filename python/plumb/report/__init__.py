"""Self-contained HTML report of a placement: ``plumb.report(...)`` and ``plumb report``.

Modules: ``data`` scores the placements and packs the arrays the page embeds, ``html`` renders
the page from ``assets/`` (template, CSS, JS), ``png`` draws the key charts with matplotlib.

Note: ``plumb.report`` (the attribute) is the function below; import the modules with
``from plumb.report.data import ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from ..io.atomic import PathLike, atomic_write
from .data import ReportData, build_report_data
from .html import render_html

__all__ = ["report", "ReportData", "build_report_data", "render_html"]


def report(loads: Any, topo: Any, placement: Any = None, previous: Any = None, *,
           traffic: Any = None, output: Optional[PathLike] = None, png: bool = False,
           title: str = "plumb report", bytes_per_expert: Optional[int] = None,
           placement_source: Optional[str] = None, previous_source: Optional[str] = None,
           **solve_kwargs: Any) -> str:
    """Build the HTML report comparing the current placement with a proposed one.

    Args:
        loads: tokens per expert, array-like (numpy, torch, lists): [L, E], [E] for one layer,
            or a window [T, L, E] of per-step counts, oldest first (adds per-step charts).
        topo: ``plumb.Topology`` (adds the traffic-by-level section) or an int G of ranks.
        placement: the proposed placement, a ``Placement`` or phy2log int [L, P]; None solves
            one with ``plumb.solve(loads, topo, previous=previous, traffic=traffic,
            **solve_kwargs)``.
        previous: the current placement (``Placement`` or phy2log [L, P']); None means the
            engines' start-up layout, slot p holding expert p mod E. When solving,
            ``num_redundant`` defaults to its P' - E.
        traffic: per-source-rank counts [L, G, E] (or [T, L, G, E]) for the traffic metrics.
        output: where to write the page (atomically); None writes nothing.
        png: also write the key charts as PNG beside ``output`` (``<output stem>-*.png``;
            needs matplotlib, the ``report`` extra).
        title: page title.
        bytes_per_expert: size of one expert's weights in bytes, to report moved bytes.
        placement_source, previous_source: where each placement came from, shown on the page
            (default: the solver call, "previous placement" or the start-up layout).
        **solve_kwargs: passed to ``plumb.solve`` (num_redundant, num_groups, policy, ...).

    Returns:
        The HTML page (str). Identical inputs give an identical page.

    Raises:
        InputError: malformed loads, placements or options.
        PlumbError: ``png=True`` without ``output``, or without matplotlib.
    """
    for name, text in (("title", title), ("placement_source", placement_source),
                       ("previous_source", previous_source)):
        _check_text(text, name)
    data = build_report_data(loads, topo, placement, previous, traffic=traffic, title=title,
                             bytes_per_expert=bytes_per_expert, solve_kwargs=solve_kwargs,
                             placement_source=placement_source, previous_source=previous_source)
    page = render_html(data)
    if output is not None:
        with atomic_write(output, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(page)
    if png:
        write_report_pngs(data, output)
    return page


def _check_text(text: Optional[str], name: str) -> None:
    """Raises InputError unless ``text`` is None or a str the UTF-8 page can hold (a lone
    surrogate such as '\\ud800' cannot be encoded)."""
    from ..errors import InputError

    if text is None:
        return
    if not isinstance(text, str):
        raise InputError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"{name} is not valid Unicode text ({err.reason} at character "
                         f"{err.start})") from None


def write_report_pngs(data: ReportData, output: Optional[PathLike]) -> List[Path]:
    """PNG charts beside the HTML ``output`` (``report.html`` -> ``report-layers.png``, ...)."""
    from ..errors import InputError
    from .png import write_pngs

    if output is None:
        raise InputError("png=True needs an output path to write the PNG files beside")
    path = Path(output)
    return write_pngs(data, path.with_name(path.stem))
