"""The data the HTML report embeds: packing, agreement with plumb.evaluate, size, determinism."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import plumb
from plumb.errors import InputError, PlumbError
from plumb.locality import traffic_metrics
from plumb.report.data import build_report_data, default_layout, pack_array, unpack_array
from plumb.report.html import render_html
from plumb.report.png import write_pngs
from plumb.topology import Topology


def embedded_payload(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="plumb-data">(.*?)</script>', page, re.S)
    assert match, "payload script missing"
    return json.loads(match.group(1))


def lognormal_loads(rng, layers, experts, sigma=1.0, scale=1000.0):
    return np.round(rng.lognormal(0.0, sigma, size=(layers, experts)) * scale)


@pytest.mark.parametrize("values, code", [
    (np.array([0, 3, 255]), "u1"),
    (np.array([[0, 256]], dtype=np.int32), "u2"),
    (np.array([70000.0, 1.0]), "u4"),
    (np.array([0.5, 2.0]), "f8"),
    (np.array([-1, 2]), "f8"),
    (np.array([2.0**40]), "f8"),
    (np.zeros((0, 3)), "u1"),
])
def test_pack_array_picks_the_smallest_exact_dtype(values, code):
    packed = pack_array(values)
    assert packed["dtype"] == code
    assert packed["shape"] == list(values.shape)
    np.testing.assert_array_equal(unpack_array(packed), values)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.one_of(
    hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
               elements=st.integers(-3, 2**33)),
    hnp.arrays(st.sampled_from([np.int32, np.uint16, np.uint8]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
               elements=st.floats(-1e6, 1e12, allow_nan=False))))
def test_pack_array_round_trips_exactly(values):
    packed = pack_array(values)
    json.dumps(packed)  # the page embeds it as JSON
    unpacked = unpack_array(packed)
    assert unpacked.shape == values.shape
    np.testing.assert_array_equal(unpacked, values)


def test_pack_array_rejects_non_numeric():
    with pytest.raises(InputError):
        pack_array(np.array(["a"]))


def test_default_layout_is_slot_mod_experts():
    layout = default_layout(2, 4, 6)
    assert layout.dtype == np.int64
    assert layout.tolist() == [[0, 1, 2, 3, 0, 1]] * 2


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    window = rng.multinomial(4096, np.full(24, 1 / 24), size=(10, 5)).astype(np.int64)
    window[:, :, :3] *= 4  # three hot experts per layer
    topo = Topology.cluster(nodes=2, gpus_per_node=2, numa_per_node=2)
    previous = plumb.solve(window[:5].sum(axis=0), topo, num_redundant=8)
    data = build_report_data(window, topo, previous=previous, title="case",
                             solve_kwargs={"num_redundant": 8})
    return window, topo, previous, data


def test_payload_matches_evaluate(case):
    window, topo, previous, data = case
    payload = data.payload()
    loads = window.sum(axis=0)
    np.testing.assert_array_equal(unpack_array(payload["loads"]), loads)
    assert payload["shape"] == {"layers": 5, "experts": 24, "ranks": 4, "steps": 10}
    current, proposed = payload["placements"]
    np.testing.assert_array_equal(unpack_array(current["phy2log"]), previous.phy2log)
    expected_proposed = plumb.solve(window, topo, num_redundant=8, previous=previous)
    np.testing.assert_array_equal(unpack_array(proposed["phy2log"]), expected_proposed.phy2log)
    for entry, phy2log in ((current, previous.phy2log), (proposed, expected_proposed.phy2log)):
        assert entry["slots"] == 32
        metrics = plumb.evaluate(phy2log, window, topo, previous=previous)
        np.testing.assert_allclose(unpack_array(entry["rank_loads"]), metrics.rank_loads)
        assert entry["balancedness"] == pytest.approx(metrics.balancedness)
        np.testing.assert_array_equal(unpack_array(entry["logcnt"]),
                                      np.stack([np.bincount(r, minlength=24) for r in phy2log]))
        steps = unpack_array(entry["step_balancedness"])
        assert steps.shape == (10,)
        per_step = [plumb.evaluate(phy2log, window[t], topo).balancedness for t in range(10)]
        np.testing.assert_allclose(steps, per_step)
        shares = unpack_array(entry["traffic_shares"])
        flows = traffic_metrics(phy2log, loads, topo)
        np.testing.assert_allclose(shares, [1 - flows["cross_node_fraction"] - flows["cross_numa_fraction"],
                                            flows["cross_numa_fraction"], flows["cross_node_fraction"]])
        assert entry["traffic_cost"] == pytest.approx(flows["traffic"])
    assert payload["traffic_levels"] == ["within_numa", "cross_numa", "cross_node"]
    np.testing.assert_array_equal(unpack_array(payload["step_tokens"]), window.sum(axis=(1, 2)))


def test_skew_and_moves(case):
    window, _, previous, data = case
    loads = window.sum(axis=0)
    np.testing.assert_allclose(data.layer_skew(), loads.max(axis=1) / loads.mean(axis=1))
    assert data.moves.moves >= 0 and data.moves.local_copies >= 0
    same = build_report_data(window, Topology.cluster(nodes=2, gpus_per_node=2, numa_per_node=2),
                             previous, previous)
    assert (same.moves.moves, same.moves.local_copies) == (0, 0)
    assert same.current.metrics.balancedness == same.proposed.metrics.balancedness


def test_int_topology_has_no_traffic_section():
    loads = lognormal_loads(np.random.default_rng(0), 3, 8)
    data = build_report_data(loads, 4, solve_kwargs={"num_redundant": 4})
    assert data.topology is None and data.proposed.traffic is None
    payload = data.payload()
    assert "traffic_levels" not in payload and "traffic_shares" not in payload["placements"][1]
    assert data.current.source.startswith("engine start-up layout")
    assert unpack_array(payload["placements"][0]["phy2log"]).tolist() == default_layout(3, 8, 12).tolist()


def test_page_is_deterministic_and_inputs_agree_across_types():
    loads = lognormal_loads(np.random.default_rng(1), 4, 16)
    first = plumb.report(loads, 4, num_redundant=4)
    assert plumb.report(loads.tolist(), 4, num_redundant=4) == first
    assert plumb.report(loads.astype(np.int64), 4, num_redundant=4) == first


def test_page_is_self_contained_and_escapes_text():
    loads = lognormal_loads(np.random.default_rng(2), 2, 8)
    title = "</script><script>alert(1)</script> & <b>"
    page = plumb.report(loads, 2, title=title)
    assert "<script>alert(1)" not in page
    assert embedded_payload(page)["title"] == title
    assert "&lt;/script&gt;" in page.split("<body>")[1].split("</header>")[0]
    # Nothing is fetched: no external URLs, and a policy that forbids fetching anyway.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "default-src 'none'" in page


def test_large_model_page_stays_small():
    """61 layers x 256 experts on 64 ranks (320 slots), 32-step window, 8 nodes."""
    rng = np.random.default_rng(4)
    popularity = rng.lognormal(0.0, 1.0, size=(61, 256))
    popularity /= popularity.sum(axis=1, keepdims=True)
    window = np.stack([rng.multinomial(8192 * 8, popularity) for _ in range(32)])
    topo = Topology.cluster(nodes=8, gpus_per_node=8, numa_per_node=2)
    page = plumb.report(window, topo, num_redundant=64, num_groups=8)
    size = len(page.encode("utf-8"))
    print(f"61x256x64 report: {size / 1e6:.2f} MB")
    assert size < 1_000_000


def test_cards_show_the_metrics(case):
    _, _, _, data = case
    page = render_html(data)
    cards = page.split('<div id="cards" class="cards">')[1].split("</div>\n  <p")[0]
    before, after = data.current.metrics.balancedness, data.proposed.metrics.balancedness
    assert f"{before:.4f} &rarr; {after:.4f}" in cards
    assert f"{data.moves.moves:,}" in cards
    assert "cross-node traffic" in cards
    assert ">5 &times; 24<" in cards


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 32), dtype=np.int64), "L = 5"),
    (np.full((5, 30), 0, dtype=np.int64), "divisible"),
    (np.full((5, 32), 24, dtype=np.int64), r"in \[0, 24\)"),
    (np.zeros((5, 32), dtype=np.int64), "no replica"),
    (np.full((5, 32), 0.5), "integer expert ids"),
])
def test_bad_placements_raise_input_error(case, bad, message):
    window, topo, _, _ = case
    with pytest.raises(InputError, match=message):
        build_report_data(window, topo, bad)
    with pytest.raises(InputError, match=message):
        build_report_data(window, topo, default_layout(5, 24, 32), previous=bad)


def test_bad_loads_raise_input_error():
    with pytest.raises(InputError, match="title is not valid Unicode"):
        plumb.report(np.ones((2, 8)), 2, title="\ud800")
    with pytest.raises(InputError, match="previous_source must be a str"):
        plumb.report(np.ones((2, 8)), 2, previous_source=3)
    with pytest.raises(InputError):
        plumb.report(np.full((2, 8), -1.0), 2)
    with pytest.raises(InputError):
        plumb.report(np.zeros((2, 2, 2, 8)), 2)


def test_pngs_are_written_and_deterministic(case, tmp_path):
    _, _, _, data = case
    paths = write_pngs(data, tmp_path / "r")
    assert [p.name for p in paths] == ["r-layers.png", "r-heatmaps.png", "r-steps.png"]
    first = [p.read_bytes() for p in paths]
    assert all(blob[:8] == b"\x89PNG\r\n\x1a\n" for blob in first)
    write_pngs(data, tmp_path / "r")
    assert [p.read_bytes() for p in paths] == first


def test_report_png_option(tmp_path):
    loads = lognormal_loads(np.random.default_rng(5), 3, 8)
    out = tmp_path / "page.html"
    plumb.report(loads, 2, output=out, png=True, num_redundant=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "page-heatmaps.png", "page-layers.png", "page.html"]
    with pytest.raises(PlumbError, match="output"):
        plumb.report(loads, 2, png=True)


def test_import_plumb_loads_neither_torch_nor_matplotlib():
    code = "import sys, plumb; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_moved_bytes_card():
    loads = lognormal_loads(np.random.default_rng(6), 3, 8)
    page = plumb.report(loads, 2, num_redundant=2, bytes_per_expert=3 * 2**20)
    data = build_report_data(loads, 2, solve_kwargs={"num_redundant": 2}, bytes_per_expert=3 * 2**20)
    assert data.moves.bytes_moved == 3 * 2**20 * data.moves.moves
    assert f"{3 * data.moves.moves:.2f} MiB in all" in page
