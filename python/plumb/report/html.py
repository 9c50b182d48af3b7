"""Render :class:`ReportData` as one self-contained HTML file (inline CSS, JS, data; no network).

The summary cards are rendered here, as plain HTML, so they read without JavaScript; the charts
are drawn in the browser by ``assets/report.js`` from the JSON payload embedded in the page.
The output depends only on the data: same input, byte-identical file.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import List, Tuple

import numpy as np

from .data import ReportData

_ASSETS = resources.files(__package__) / "assets"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def _count(value: float) -> str:
    """Token counts: integers with separators, fractional counts (scaled loads) to 4 digits."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def _bytes(value: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def _delta_class(before: float, after: float, higher_is_better: bool) -> str:
    """CSS class colouring a change: "better", "worse", or "" when equal up to float noise."""
    if abs(after - before) <= 1e-9 * max(abs(before), abs(after), 1e-300):
        return ""
    return "better" if (after > before) == higher_is_better else "worse"


def _cards(data: ReportData) -> List[Tuple[str, str, str, str]]:
    """(name, value HTML, detail HTML, css class of the value) per summary card."""
    cur, pro = data.current.metrics, data.proposed.metrics
    layers, experts, ranks = data.num_layers, data.num_experts, data.num_ranks
    slots = data.proposed.phy2log.shape[1]
    cards = [
        ("model", f"{layers} &times; {experts}",
         f"layers &times; experts; {slots} slots on {ranks} ranks ({slots // ranks} per rank), "
         f"{slots - experts} redundant", ""),
    ]
    steps = f"over {data.num_steps:,} steps" if data.num_steps else "aggregated counts"
    cards.append(("tokens", _count(data.tokens),
                  f"routed tokens (top-k picks), all layers, {steps}", ""))
    cards.append(("balancedness", f"{cur.balancedness:.4f} &rarr; {pro.balancedness:.4f}",
                  "current &rarr; proposed; sum of mean / sum of max rank load",
                  _delta_class(cur.balancedness, pro.balancedness, True)))
    worst = int(np.argmin(pro.layer_balancedness))
    cards.append(("worst layer", f"{pro.layer_balancedness[worst]:.4f}",
                  f"layer {worst}, proposed (current {cur.layer_balancedness[worst]:.4f})", ""))
    cards.append(("lb_gap", f"{100 * cur.lb_gap_max:.2f}% &rarr; {100 * pro.lb_gap_max:.2f}%",
                  f"max rank load above the lower bound, worst layer (proposed mean "
                  f"{100 * pro.lb_gap_mean:.3f}%)", _delta_class(cur.lb_gap_max, pro.lb_gap_max, False)))
    moves = data.moves
    total = layers * slots
    detail = f"of {total:,} (layer, slot) pairs; {moves.local_copies:,} local copies"
    if moves.bytes_moved is not None:
        detail += (f"; {_bytes(moves.bytes_moved)} in all, {_bytes(moves.max_bytes_received or 0)}"
                   " max into one rank")
    cards.append(("moves", f"{moves.moves:,} ({100 * moves.moves / total:.1f}%)", detail, ""))
    before, after = data.current.traffic, data.proposed.traffic
    if before is not None and after is not None:
        node_before, node_after = before["cross_node_fraction"], after["cross_node_fraction"]
        sources = "per-source counts" if data.traffic_counts_given else "sources uniform over ranks"
        cards.append(("cross-node traffic", f"{100 * node_before:.1f}% &rarr; {100 * node_after:.1f}%",
                      f"of routed tokens ({sources}); link cost {_count(before['traffic'])} "
                      f"&rarr; {_count(after['traffic'])}", _delta_class(node_before, node_after, False)))
    else:
        cards.append(("traffic", "&ndash;", "no topology given (nodes / NUMA / topology file)", ""))
    return cards


def _traffic_note(data: ReportData) -> str:
    """One sentence under the traffic chart: where the numbers come from."""
    before, after = data.current.traffic_shares(), data.proposed.traffic_shares()
    if before is None or after is None:
        return ""
    if data.traffic_counts_given:
        return "From the per-source traffic counts, even dispatch (each replica gets 1/c of every source)."
    note = "Sources taken as uniform over ranks (no per-source traffic counts given), even dispatch."
    if np.allclose(before, after):
        note += (" Both placements split the same way: with uniform sources, where an expert sits "
                 "does not change it. Give per-source counts to see what locality saves.")
    return note


def _cards_html(data: ReportData) -> str:
    parts = []
    for name, value, detail, css in _cards(data):
        value_class = f"value {css}".strip()
        parts.append(f'    <div class="card"><div class="name">{name}</div>'
                     f'<div class="{value_class}">{value}</div><div class="detail">{detail}</div></div>')
    return "\n".join(parts)


def _json_for_script(payload: object) -> str:
    """JSON safe inside <script>: with no "<", ">" or "&" left, no text (a title, a file name)
    can close the element or start markup; JSON.parse reads the escapes back."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: ReportData) -> str:
    """The complete HTML page for ``data`` (str, UTF-8 when written)."""
    from .. import __version__

    shape = (f"{data.num_layers} layers, {data.num_experts} experts, "
             f"{data.proposed.phy2log.shape[1]} slots, {data.num_ranks} ranks")
    replacements = {
        "VERSION": html.escape(__version__),
        "TITLE": html.escape(str(data.title)),
        "SUBTITLE": html.escape(shape),
        "CARDS": _cards_html(data),
        "CURRENT_SOURCE": html.escape(data.current.source),
        "TRAFFIC_NOTE": html.escape(_traffic_note(data)),
        "PROPOSED_SOURCE": html.escape(data.proposed.source),
        "CSS": _asset("report.css"),
        "JS": _asset("report.js"),
        "DATA": _json_for_script(data.payload()),
    }
    # One pass over the template: text inserted for a placeholder is never rescanned.
    return _PLACEHOLDER.sub(lambda match: replacements[match.group(1)], _asset("template.html"))
