"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol.

Chromium runs with ``--remote-debugging-pipe`` (CDP messages over fds 3/4, NUL-terminated JSON),
so the test needs no port, no network and no Python package beyond the standard library. CI
installs Debian's ``chromium``; without it these tests fail (they never skip).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import plumb
from plumb.topology import Topology

# Where the large report's screenshot goes besides the test's own directory: README's image is
# refreshed with PLUMB_SCREENSHOT=docs/report.png (a plain run leaves the checkout untouched).
SCREENSHOT = os.environ.get("PLUMB_SCREENSHOT")
VIEW_WIDTH, VIEW_HEIGHT = 1400, 900


def find_chromium() -> str:
    for name in (os.environ.get("PLUMB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium not found: apt-get install chromium (or set PLUMB_CHROMIUM)")


class Browser:
    """A headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="plumb-chromium-")
        cmd_read, self._cmd_write = os.pipe()
        self._reply_read, reply_write = os.pipe()

        def child_fds() -> None:
            # Chromium reads commands on fd 3 and writes replies on fd 4; move both pipe ends
            # clear of 3 and 4 first, as either may sit there already.
            read_end, write_end = os.dup(cmd_read), os.dup(reply_write)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-dev-shm-usage", "--mute-audio",
             "--hide-scrollbars", "--force-color-profile=srgb", f"--user-data-dir={self._profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(cmd_read)
        os.close(reply_write)
        self._next_id = 0
        self._replies: dict = {}
        self.events: list = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read_loop, daemon=True).start()
        target = self._call("Target.createTarget", None, url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", None, targetId=target,
                                   flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.resize(VIEW_WIDTH, VIEW_HEIGHT)

    def _read_loop(self) -> None:
        pending = b""
        with os.fdopen(self._reply_read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *messages, pending = (pending + chunk).split(b"\0")
                with self._cond:
                    for raw in messages:
                        message = json.loads(raw)
                        if "id" in message:
                            self._replies[message["id"]] = message
                        else:
                            self.events.append(message)
                    self._cond.notify_all()

    def _call(self, method: str, session, timeout: float = 60, **params) -> dict:
        self._next_id += 1
        ident = self._next_id
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def send(self, method: str, **params) -> dict:
        """A DevTools command to the page."""
        return self._call(method, self._session, **params)

    def resize(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def open(self, path: Path) -> None:
        """Load ``path`` and wait until the report has rendered; clears recorded events."""
        with self._cond:
            self.events.clear()
        self.send("Page.navigate", url=path.as_uri())
        deadline = time.monotonic() + 60
        while self.js("document.readyState") != "complete" or self.js("document.body.dataset.ready") != "1":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not finish rendering; errors: {self.errors()}")
            if self.errors():
                break
            time.sleep(0.05)

    def js(self, expression: str):
        """Value of a JavaScript expression (JSON-serialisable)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list:
        """Console errors/warnings, uncaught exceptions, browser log errors since the last open."""
        found = []
        with self._cond:
            events = list(self.events)
        for event in events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"])
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                found.append(params)
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(params["entry"])
        return found

    def requests(self) -> list:
        """URLs the page requested since the last open."""
        with self._cond:
            return [e["params"]["request"]["url"] for e in self.events
                    if e["method"] == "Network.requestWillBeSent"]

    def centre_of(self, selector: str):
        box = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                      ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
        return box[0] + box[2] / 2, box[1] + box[3] / 2

    def scroll_into_view(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                  clickCount=1 if kind != "mouseMoved" else 0)

    def click(self, selector: str) -> None:
        self.scroll_into_view(selector)
        x, y = self.centre_of(selector)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def screenshot(self) -> bytes:
        """PNG of the whole page at VIEW_WIDTH."""
        height = self.js("document.documentElement.scrollHeight")
        self.resize(VIEW_WIDTH, height)
        try:
            return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        finally:
            self.resize(VIEW_WIDTH, VIEW_HEIGHT)

    def close(self) -> None:
        try:
            self._call("Browser.close", None, timeout=10)
            self._proc.wait(timeout=10)
        except (TimeoutError, RuntimeError, OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        os.close(self._cmd_write)
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    instance = Browser(find_chromium())
    yield instance
    instance.close()


def lognormal_window(rng, steps, layers, experts, tokens, sigma=1.0, top_k=8):
    """int64 [T, L, E]: multinomial per-step counts around lognormal expert popularity."""
    popularity = rng.lognormal(0.0, sigma, size=(layers, experts))
    popularity /= popularity.sum(axis=1, keepdims=True)
    return np.stack([rng.multinomial(tokens * top_k, popularity) for _ in range(steps)])


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    """6 layers x 16 experts, 20 slots on 4 ranks (2 nodes x 2), window of 12 steps."""
    rng = np.random.default_rng(7)
    window = lognormal_window(rng, steps=12, layers=6, experts=16, tokens=256, top_k=2)
    topo = Topology.cluster(nodes=2, gpus_per_node=2)
    path = tmp_path_factory.mktemp("report") / "small.html"
    plumb.report(window, topo, output=path, num_redundant=4, title="small case")
    return path, window.sum(axis=0), topo


def test_small_report_renders_every_chart(browser, small_case):
    path, loads, topo = small_case
    layers, experts = loads.shape
    ranks, slots = topo.num_ranks, 20
    browser.open(path)
    assert browser.errors() == []
    assert browser.requests() == [path.as_uri()], "the page must fetch nothing but itself"
    count = lambda selector: browser.js(f"document.querySelectorAll({json.dumps(selector)}).length")  # noqa: E731
    assert count("#chart-balancedness circle.pt.current") == layers
    assert count("#chart-balancedness circle.pt.proposed") == layers
    assert count("#chart-skew rect.bar") == layers
    shapes = browser.js("[...document.querySelectorAll('.heat canvas')].map(c => "
                        "[c.closest('.heat').id, +c.dataset.rows, +c.dataset.cols, c.width, c.height])")
    assert shapes == [["heat-rank-current", layers, ranks, ranks, layers],
                      ["heat-rank-proposed", layers, ranks, ranks, layers],
                      ["heat-popularity", layers, experts, experts, layers],
                      ["heat-replicas", layers, experts, experts, layers]]
    for side in ("current", "proposed"):
        assert count(f"#layer-{side} g.rank") == ranks
        assert count(f"#layer-{side} rect.slot") == slots
    assert count("#layer-select option") == layers
    assert browser.js("document.getElementById('window').hidden") is False
    points = browser.js("[...document.querySelectorAll('#chart-steps polyline')].map("
                        "p => p.getAttribute('points').split(' ').length)")
    assert points == [12, 12]
    assert browser.js("document.getElementById('traffic').hidden") is False
    assert count("#chart-traffic rect.segment") == 2 * 3


def test_layer_picker_changes_the_view(browser, small_case):
    path, loads, _ = small_case
    browser.open(path)
    state = ("[document.getElementById('layer-select').value,"
             " document.getElementById('layer-info').textContent,"
             " [...document.querySelectorAll('#layer-proposed rect.slot')].map("
             "   r => r.dataset.expert + ':' + r.getAttribute('height')).join(' ')]")
    first = browser.js(state)
    start = int(first[0])
    browser.click("#layer-prev" if start == loads.shape[0] - 1 else "#layer-next")
    second = browser.js(state)
    assert int(second[0]) == start + (-1 if start == loads.shape[0] - 1 else 1)
    assert second[1] != first[1] and second[2] != first[2]
    # The <select> drives the same view.
    browser.js("(() => { const s = document.getElementById('layer-select'); s.value = '0';"
               " s.dispatchEvent(new Event('change')); })()")
    third = browser.js(state)
    assert third[0] == "0"
    heights = [float(item.split(":")[1]) for item in third[2].split(" ")]
    experts = [int(item.split(":")[0]) for item in third[2].split(" ")]
    # Each block's height is proportional to its replica's load: the expert's load / replicas.
    replicas = np.bincount(experts, minlength=loads.shape[1])
    share = loads[0, experts] / replicas[experts]
    np.testing.assert_allclose(np.array(heights) / max(heights), share / share.max(), atol=0.02)
    assert browser.errors() == []


def test_hover_shows_exact_numbers(browser, small_case):
    path, loads, topo = small_case
    browser.open(path)
    browser.scroll_into_view("#heat-popularity canvas")
    box = browser.js("(() => { const r = document.querySelector('#heat-popularity canvas')"
                     ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
    layer, expert = 3, 5
    layers, experts = loads.shape
    x = box[0] + (expert + 0.5) * box[2] / experts
    y = box[1] + (layer + 0.5) * box[3] / layers
    browser.mouse("mouseMoved", x, y)
    lines = browser.js("[...document.querySelectorAll('#tooltip div')].map(d => d.textContent)")
    assert browser.js("document.getElementById('tooltip').hidden") is False
    assert lines[0] == f"layer {layer}, expert {expert}"
    assert lines[1] == f"load: {int(loads[layer, expert]):,} tokens"
    # The current rank heat map: the start-up layout puts experts 5..9 (one replica each) on
    # rank 1 of the 20 slots, so that rank's load is their exact sum.
    browser.scroll_into_view("#heat-rank-current canvas")
    box = browser.js("(() => { const r = document.querySelector('#heat-rank-current canvas')"
                     ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
    layer, rank = 2, 1
    browser.mouse("mouseMoved", box[0] + (rank + 0.5) * box[2] / topo.num_ranks,
                  box[1] + (layer + 0.5) * box[3] / layers)
    lines = browser.js("[...document.querySelectorAll('#tooltip div')].map(d => d.textContent)")
    assert lines[0] == f"current: layer {layer}, rank {rank}"
    assert lines[1] == f"load: {int(loads[layer, 5:10].sum()):,} tokens"
    assert lines[3] == "experts: 5, 6, 7, 8, 9"
    # A block of the layer view names its expert and the replica's exact load.
    browser.scroll_into_view("#layer-proposed svg")
    browser.mouse("mouseMoved", *browser.centre_of("#layer-proposed rect.slot"))
    lines = browser.js("[...document.querySelectorAll('#tooltip div')].map(d => d.textContent)")
    expert = browser.js("+document.querySelector('#layer-proposed rect.slot').dataset.expert")
    assert lines[0] == "proposed: rank 0, slot 0" and lines[1].startswith(f"expert {expert} (")
    assert browser.errors() == []


@pytest.mark.parametrize("loads", [np.zeros((1, 4)), np.ones((1, 2, 4))],
                         ids=["one-idle-layer", "one-step-window"])
def test_degenerate_inputs_render_without_errors(browser, tmp_path, loads):
    path = tmp_path / "tiny.html"
    plumb.report(loads, 2, output=path)
    browser.open(path)
    assert browser.errors() == []
    assert browser.js("document.querySelectorAll('#layer-proposed rect.slot').length") == 4


@pytest.fixture(scope="module")
def large_case(tmp_path_factory):
    """61 layers x 256 experts, 320 slots on 64 ranks (8 nodes x 8 GPUs x 2 NUMA), 16 steps."""
    rng = np.random.default_rng(1)
    window = lognormal_window(rng, steps=16, layers=61, experts=256, tokens=1024)
    topo = Topology.cluster(nodes=8, gpus_per_node=8, numa_per_node=2)
    path = tmp_path_factory.mktemp("report") / "large.html"
    plumb.report(window, topo, output=path, num_redundant=64, num_groups=8,
                 title="61 layers x 256 experts on 64 ranks")
    return path


def test_large_report_is_responsive_and_screenshot(browser, large_case, tmp_path):
    browser.open(large_case)
    assert browser.errors() == []
    assert browser.js("document.querySelectorAll('#layer-proposed rect.slot').length") == 320
    # Responsive by construction, checked without timing: heat maps are canvases (one pixel
    # per cell, not 61 x 256 elements), so the page holds few elements, and a layer switch
    # replaces the layer view instead of growing the page.
    nodes = "document.getElementsByTagName('*').length"
    before = browser.js(nodes)
    assert before < 2500, before
    assert browser.js("document.querySelectorAll('.heat canvas').length") == 4
    browser.js("[30, 31, 32, 33, 34].forEach(l => {"
               " const s = document.getElementById('layer-select');"
               " s.value = String(l); s.dispatchEvent(new Event('change')); })")
    assert browser.js("document.getElementById('layer-select').value") == "34"
    assert browser.js(nodes) == before
    print(f"61x256x64 page: {large_case.stat().st_size / 1e6:.2f} MB, {before} elements, "
          f"rendered in {browser.js('document.body.dataset.renderMs')} ms")
    png = browser.screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.png").write_bytes(png)
    if SCREENSHOT:
        Path(SCREENSHOT).write_bytes(png)
    assert browser.errors() == []
