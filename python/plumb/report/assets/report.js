// plumb report: renders the embedded payload (see plumb/report/data.py) into SVG and canvas.
// Every metric comes precomputed from Python; this script only draws and looks values up.
(function () {
  "use strict";
  var t0 = performance.now();
  var D = JSON.parse(document.getElementById("plumb-data").textContent);
  var SVGNS = "http://www.w3.org/2000/svg";
  var TYPED = { u1: Uint8Array, u2: Uint16Array, u4: Uint32Array, f8: Float64Array };

  // Arrays travel as base64 little-endian bytes; a fresh buffer is always 8-byte aligned.
  function unpack(p) {
    var bin = atob(p.data), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TYPED[p.dtype](bytes.buffer);
  }

  var L = D.shape.layers, E = D.shape.experts, G = D.shape.ranks;
  var loads = unpack(D.loads);
  var skew = unpack(D.layer_skew);
  var lowerBound = unpack(D.lower_bound);
  var places = D.placements.map(function (p) {
    return {
      label: p.label,
      P: p.slots,
      S: p.slots / G,
      phy2log: unpack(p.phy2log),
      logcnt: unpack(p.logcnt),
      rankLoads: unpack(p.rank_loads),
      layerBal: unpack(p.layer_balancedness),
      layerGap: unpack(p.lb_gap),
      steps: p.step_balancedness ? unpack(p.step_balancedness) : null,
      traffic: p.traffic_shares ? unpack(p.traffic_shares) : null,
      trafficCost: p.traffic_cost
    };
  });
  var CUR = places[0], PRO = places[1];

  // Per-layer rank statistics, used by hover text and the layer view.
  function layerStats(place, l) {
    var max = 0, sum = 0;
    for (var r = 0; r < G; r++) {
      var v = place.rankLoads[l * G + r];
      sum += v;
      if (v > max) max = v;
    }
    return { max: max, mean: sum / G };
  }

  // ---- formatting -------------------------------------------------------------------------
  function num(v) {
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    return Number(v.toPrecision(8)).toLocaleString("en-US", { maximumFractionDigits: 8 });
  }
  function fixed(v, digits) { return v.toFixed(digits); }
  function pct(v) { return (100 * v).toFixed(2) + "%"; }

  // ---- tooltip ----------------------------------------------------------------------------
  var tip = document.getElementById("tooltip");
  function showTip(ev, lines) {
    tip.textContent = "";
    lines.forEach(function (line) {
      var div = document.createElement("div");
      div.textContent = line;
      tip.appendChild(div);
    });
    tip.hidden = false;
    var x = ev.pageX + 14, y = ev.pageY + 14;
    var w = tip.offsetWidth;
    if (x + w > window.scrollX + document.documentElement.clientWidth) x = ev.pageX - w - 14;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.hidden = true; }

  // ---- SVG helpers ------------------------------------------------------------------------
  function el(tag, attrs, parent) {
    var node = document.createElementNS(SVGNS, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, s, anchor) {
    var t = el("text", { x: x, y: y, "text-anchor": anchor || "start" }, parent);
    t.textContent = s;
    return t;
  }
  // Charts are drawn at their container's width (read once), so text stays at 1:1 scale.
  function widthOf(container) { return Math.max(480, Math.round(container.clientWidth || 900)); }
  function newSvg(container, width, height) {
    container.textContent = "";
    return el("svg", { viewBox: "0 0 " + width + " " + height }, container);
  }
  // Axis ticks: at most `count` evenly spaced integer indices, always including the last.
  function indexTicks(n, count) {
    var step = Math.max(1, Math.ceil(n / count)), out = [];
    for (var i = 0; i < n; i += step) out.push(i);
    if (out[out.length - 1] !== n - 1) out.push(n - 1);
    return out;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var mag = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * mag >= v) return steps[i] * mag;
    return 10 * mag;
  }

  // Axis [lo, 1] for ratios: lo rounded down to a step that gives 3-6 round ticks.
  function unitAxis(min) {
    var steps = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005], step = steps[steps.length - 1];
    for (var i = 0; i < steps.length; i++) {
      if ((1 - min) / steps[i] >= 2) { step = steps[i]; break; }
    }
    var lo = Math.max(0, Math.floor(min / step - 1e-9) * step);
    if (lo >= 1) lo = 1 - step;
    return { lo: lo, ticks: Math.round((1 - lo) / step) + 1, digits: step < 0.01 ? 3 : 2 };
  }

  // Line chart over an index axis. series: [{cls, values, points}] (points: draw circles).
  // hover(i) -> tooltip lines; click(i) optional.
  function lineChart(container, opts) {
    var W = widthOf(container), H = 240, m = { l: 48, r: 12, t: 10, b: 30 };
    var svg = newSvg(container, W, H), n = opts.n;
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    var lo = opts.yMin, hi = opts.yMax;
    function x(i) { return m.l + (n > 1 ? (i / (n - 1)) * pw : pw / 2); }
    function y(v) { return m.t + (1 - (v - lo) / (hi - lo)) * ph; }
    for (var k = 0; k < opts.ticks; k++) {
      var v = lo + (k / (opts.ticks - 1)) * (hi - lo);
      el("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), "class": "grid" }, svg);
      text(svg, m.l - 6, y(v) + 4, fixed(v, opts.yDigits), "end");
    }
    indexTicks(n, 12).forEach(function (i) { text(svg, x(i), H - 12, String(i), "middle"); });
    text(svg, W - m.r, H - 1, opts.xLabel, "end");
    opts.series.forEach(function (s) {
      var pts = [];
      for (var i = 0; i < n; i++) pts.push(x(i).toFixed(1) + "," + y(s.values[i]).toFixed(1));
      el("polyline", { points: pts.join(" "), "class": "series " + s.cls }, svg);
      if (s.points) {
        for (var j = 0; j < n; j++) {
          el("circle", { cx: x(j).toFixed(1), cy: y(s.values[j]).toFixed(1), r: 2.6,
            "class": "pt " + s.cls, "data-index": j }, svg);
        }
      }
    });
    var guide = el("line", { y1: m.t, y2: m.t + ph, "class": "guide", visibility: "hidden" }, svg);
    var hit = el("rect", { x: m.l, y: m.t, width: pw, height: ph, "class": "hit" }, svg);
    function indexAt(ev) {
      var box = svg.getBoundingClientRect();
      var px = (ev.clientX - box.left) / box.width * W;
      return Math.max(0, Math.min(n - 1, Math.round((px - m.l) / pw * (n - 1))));
    }
    hit.addEventListener("mousemove", function (ev) {
      var i = indexAt(ev);
      guide.setAttribute("x1", x(i)); guide.setAttribute("x2", x(i));
      guide.setAttribute("visibility", "visible");
      showTip(ev, opts.hover(i));
    });
    hit.addEventListener("mouseleave", function () {
      guide.setAttribute("visibility", "hidden"); hideTip();
    });
    if (opts.click) {
      hit.style.cursor = "pointer";
      hit.addEventListener("click", function (ev) { opts.click(indexAt(ev)); });
    }
    return svg;
  }

  // ---- colour scales ----------------------------------------------------------------------
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  function viridis(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    var i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i;
    var a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
  }
  // Distinct, stable colours per expert id (golden-angle hues).
  function expertColour(e) {
    return "hsl(" + ((e * 137.508) % 360).toFixed(1) + ",58%," + (52 + (e % 3) * 8) + "%)";
  }
  // Colour bar for a heat map; with gamma != 1 the middle label shows the value at mid-colour.
  function colourBar(container, lo, hi, label, digits, gamma) {
    var canvas = document.createElement("canvas");
    canvas.width = 220; canvas.height = 1;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(220, 1);
    for (var i = 0; i < 220; i++) {
      var c = viridis(i / 219);
      img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2];
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    var left = document.createElement("span"), right = document.createElement("span");
    var name = document.createElement("span");
    left.textContent = fixed(lo, digits); right.textContent = fixed(hi, digits);
    name.textContent = label;
    container.append(name, left, canvas, right);
    if (gamma && gamma !== 1) {
      var mid = document.createElement("span");
      mid.textContent = "(mid-colour = " + fixed(lo + (hi - lo) * Math.pow(0.5, 1 / gamma), digits) +
        ", square-root scale)";
      container.append(mid);
    }
  }

  // ---- heat maps (canvas: one pixel per cell, scaled by CSS) ---------------------------------
  var markers = [];
  function heatmap(container, opts) {
    var rows = opts.rows, cols = opts.cols;
    var canvas = document.createElement("canvas");
    canvas.width = cols; canvas.height = rows;
    canvas.dataset.rows = rows; canvas.dataset.cols = cols;
    canvas.style.height = Math.max(90, Math.min(340, rows * 6)) + "px";
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(cols, rows);
    for (var r = 0; r < rows; r++) {
      for (var c = 0; c < cols; c++) {
        var rgb = viridis(Math.pow(Math.max(0, opts.value(r, c) - opts.lo) / (opts.hi - opts.lo || 1),
          opts.gamma || 1));
        var o = 4 * (r * cols + c);
        img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2];
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    // The marker is placed in percent of a box that holds only the canvas: no layout reads.
    var box = document.createElement("div");
    box.className = "heat-box";
    var marker = document.createElement("div");
    marker.className = "marker";
    marker.style.height = (100 / rows) + "%";
    box.append(canvas, marker);
    container.appendChild(box);
    markers.push({ marker: marker, rows: rows });
    var axes = document.createElement("div");
    axes.className = "axes";
    axes.innerHTML = "<span></span><span></span>";
    axes.firstChild.textContent = "rows: layer 0 (top) .. " + (rows - 1);
    axes.lastChild.textContent = opts.colName + " 0 .. " + (cols - 1) + " \u2192";
    container.appendChild(axes);
    function cellAt(ev) {
      var box = canvas.getBoundingClientRect();
      var c = Math.floor((ev.clientX - box.left) / box.width * cols);
      var r = Math.floor((ev.clientY - box.top) / box.height * rows);
      return [Math.max(0, Math.min(rows - 1, r)), Math.max(0, Math.min(cols - 1, c))];
    }
    canvas.addEventListener("mousemove", function (ev) {
      var rc = cellAt(ev);
      showTip(ev, opts.hover(rc[0], rc[1]));
    });
    canvas.addEventListener("mouseleave", hideTip);
    canvas.addEventListener("click", function (ev) { selectLayer(cellAt(ev)[0]); });
  }
  function placeMarkers(l) {
    markers.forEach(function (m) { m.marker.style.top = (100 * l / m.rows) + "%"; });
  }

  // ---- sections ---------------------------------------------------------------------------
  function layerLines(l) {
    var c = layerStats(CUR, l), p = layerStats(PRO, l);
    return [
      "layer " + l,
      "balancedness: current " + fixed(CUR.layerBal[l], 4) + ", proposed " + fixed(PRO.layerBal[l], 4),
      "max rank load: current " + num(c.max) + ", proposed " + num(p.max),
      "mean rank load: " + num(p.mean) + ", lower bound " + num(lowerBound[l]),
      "lb_gap: current " + pct(CUR.layerGap[l]) + ", proposed " + pct(PRO.layerGap[l]),
      "expert max/mean: " + fixed(skew[l], 3)
    ];
  }

  function drawLayerCharts() {
    var lo = 1;
    var bound = new Float64Array(L);
    for (var l = 0; l < L; l++) {
      var st = layerStats(PRO, l);
      bound[l] = lowerBound[l] > 0 ? st.mean / lowerBound[l] : 1;
      lo = Math.min(lo, CUR.layerBal[l], PRO.layerBal[l], bound[l]);
    }
    var axis = unitAxis(lo);
    lineChart(document.getElementById("chart-balancedness"), {
      n: L, yMin: axis.lo, ticks: axis.ticks, yMax: 1, yDigits: axis.digits, xLabel: "layer",
      series: [{ cls: "bound", values: bound, points: false },
        { cls: "current", values: CUR.layerBal, points: true },
        { cls: "proposed", values: PRO.layerBal, points: true }],
      hover: layerLines, click: selectLayer
    });
    var legend = document.createElement("p");
    legend.className = "legend-line";
    legend.innerHTML = '<span class="swatch current"></span>current<span class="swatch proposed">' +
      '</span>proposed<span class="swatch bound"></span>best possible (mean / lower bound)';
    document.getElementById("chart-balancedness").appendChild(legend);

    var skewBox = document.getElementById("chart-skew");
    var W = widthOf(skewBox), H = 180, m = { l: 48, r: 12, t: 10, b: 30 };
    var svg = newSvg(skewBox, W, H);
    var pw = W - m.l - m.r, ph = H - m.t - m.b, hi = 0;
    for (var i = 0; i < L; i++) hi = Math.max(hi, skew[i]);
    hi = niceMax(hi);
    for (var k = 0; k <= 4; k++) {
      var yv = m.t + ph - (k / 4) * ph;
      el("line", { x1: m.l, x2: W - m.r, y1: yv, y2: yv, "class": "grid" }, svg);
      text(svg, m.l - 6, yv + 4, fixed(hi * k / 4, 1), "end");
    }
    var bw = pw / L;
    for (var j = 0; j < L; j++) {
      var h = skew[j] / hi * ph;
      var bar = el("rect", { x: (m.l + j * bw + bw * 0.1).toFixed(2), y: (m.t + ph - h).toFixed(2),
        width: (bw * 0.8).toFixed(2), height: h.toFixed(2), "class": "bar", "data-index": j }, svg);
      bar.addEventListener("mousemove", (function (l) {
        return function (ev) { showTip(ev, layerLines(l)); };
      })(j));
      bar.addEventListener("mouseleave", hideTip);
      bar.addEventListener("click", (function (l) { return function () { selectLayer(l); }; })(j));
    }
    indexTicks(L, 12).forEach(function (l) {
      text(svg, m.l + (l + 0.5) * bw, H - 12, String(l), "middle");
    });
    text(svg, W - m.r, H - 1, "layer", "end");
  }

  function drawHeatmaps() {
    // Rank loads are coloured relative to their layer's mean, on one scale for both placements,
    // so the same colour means the same imbalance in either map.
    var ratio = [CUR, PRO].map(function (place) {
      var out = new Float64Array(L * G);
      for (var l = 0; l < L; l++) {
        var mean = layerStats(place, l).mean;
        for (var r = 0; r < G; r++) out[l * G + r] = mean > 0 ? place.rankLoads[l * G + r] / mean : 0;
      }
      return out;
    });
    var hi = 1;
    ratio.forEach(function (a) { for (var i = 0; i < a.length; i++) hi = Math.max(hi, a[i]); });
    [["heat-rank-current", 0], ["heat-rank-proposed", 1]].forEach(function (spec) {
      var place = places[spec[1]], rel = ratio[spec[1]];
      heatmap(document.getElementById(spec[0]), {
        rows: L, cols: G, lo: 0, hi: hi, colName: "rank",
        value: function (l, r) { return rel[l * G + r]; },
        hover: function (l, r) {
          var experts = [];
          for (var s = 0; s < place.S; s++) experts.push(place.phy2log[l * place.P + r * place.S + s]);
          return [place.label + ": layer " + l + ", rank " + r,
            "load: " + num(place.rankLoads[l * G + r]) + " tokens",
            "x layer mean: " + fixed(rel[l * G + r], 4),
            "experts: " + experts.join(", ")];
        }
      });
    });
    colourBar(document.getElementById("scale-rank"), 0, hi, "rank load / layer mean (both maps)", 2);

    var popHi = 1, meanE = new Float64Array(L);
    for (var l = 0; l < L; l++) {
      var s = 0;
      for (var e = 0; e < E; e++) s += loads[l * E + e];
      meanE[l] = s / E;
      for (var f = 0; f < E; f++) if (meanE[l] > 0) popHi = Math.max(popHi, loads[l * E + f] / meanE[l]);
    }
    heatmap(document.getElementById("heat-popularity"), {
      rows: L, cols: E, lo: 0, hi: popHi, gamma: 0.5, colName: "expert",
      value: function (l, e) { return meanE[l] > 0 ? loads[l * E + e] / meanE[l] : 0; },
      hover: function (l, e) {
        return ["layer " + l + ", expert " + e, "load: " + num(loads[l * E + e]) + " tokens",
          "x layer mean: " + fixed(meanE[l] > 0 ? loads[l * E + e] / meanE[l] : 0, 4),
          "replicas: current " + CUR.logcnt[l * E + e] + ", proposed " + PRO.logcnt[l * E + e]];
      }
    });
    colourBar(document.getElementById("scale-popularity"), 0, popHi, "expert load / layer mean", 2, 0.5);

    var cntHi = 1;
    for (var i = 0; i < L * E; i++) cntHi = Math.max(cntHi, PRO.logcnt[i]);
    heatmap(document.getElementById("heat-replicas"), {
      rows: L, cols: E, lo: 1, hi: Math.max(2, cntHi), colName: "expert",
      value: function (l, e) { return PRO.logcnt[l * E + e]; },
      hover: function (l, e) {
        var c = PRO.logcnt[l * E + e];
        return ["layer " + l + ", expert " + e, "replicas: proposed " + c + ", current " +
          CUR.logcnt[l * E + e], "load per replica: " + num(loads[l * E + e] / c) + " tokens"];
      }
    });
    colourBar(document.getElementById("scale-replicas"), 1, Math.max(2, cntHi), "replicas", 0);
  }

  // One layer: a bar per rank, a block per slot, height = expert load / replica count.
  // One delegated hover handler per chart keeps a layer switch cheap (hundreds of blocks).
  function drawLayerView(container, place, l, yMax) {
    var W = widthOf(container), H = 260, m = { l: 52, r: 8, t: 8, b: 28 };
    var svg = newSvg(container, W, H);
    var pw = W - m.l - m.r, ph = H - m.t - m.b, bw = pw / G;
    function y(v) { return m.t + ph - v / yMax * ph; }
    for (var k = 0; k <= 4; k++) {
      var v = yMax * k / 4;
      el("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), "class": "grid" }, svg);
      text(svg, m.l - 6, y(v) + 4, num(Math.round(v)), "end");
    }
    for (var r = 0; r < G; r++) {
      var g = el("g", { "class": "rank", "data-rank": r }, svg), base = 0;
      for (var s = 0; s < place.S; s++) {
        var p = r * place.S + s, e = place.phy2log[l * place.P + p], c = place.logcnt[l * E + e];
        var share = loads[l * E + e] / c;
        el("rect", { x: (m.l + r * bw + bw * 0.08).toFixed(2), y: y(base + share).toFixed(2),
          width: (bw * 0.84).toFixed(2), height: Math.max(0, y(base) - y(base + share)).toFixed(2),
          fill: expertColour(e), "class": "slot", "data-expert": e, "data-slot": p }, g);
        base += share;
      }
    }
    svg.addEventListener("mousemove", function (ev) {
      var rect = ev.target;
      if (!rect.classList.contains("slot")) { hideTip(); return; }
      var p = Number(rect.dataset.slot), e = Number(rect.dataset.expert);
      var c = place.logcnt[l * E + e], r = Math.floor(p / place.S);
      showTip(ev, [place.label + ": rank " + r + ", slot " + p,
        "expert " + e + " (" + c + (c > 1 ? " replicas" : " replica") + ")",
        "this replica: " + num(loads[l * E + e] / c) + " tokens",
        "expert total: " + num(loads[l * E + e]) + " tokens",
        "rank total: " + num(place.rankLoads[l * G + r]) + " tokens"]);
    });
    svg.addEventListener("mouseleave", hideTip);
    var stats = layerStats(place, l);
    el("line", { x1: m.l, x2: W - m.r, y1: y(stats.mean), y2: y(stats.mean), "class": "mean" }, svg);
    el("line", { x1: m.l, x2: W - m.r, y1: y(lowerBound[l]), y2: y(lowerBound[l]), "class": "lb" }, svg);
    indexTicks(G, 16).forEach(function (rk) { text(svg, m.l + (rk + 0.5) * bw, H - 12, String(rk), "middle"); });
    text(svg, W - m.r, H - 1, "rank  (dashed: mean; red dotted: lower bound on max)", "end");
  }

  var select = document.getElementById("layer-select");
  var current = -1;
  function selectLayer(l) {
    l = Math.max(0, Math.min(L - 1, l | 0));
    current = l;
    select.value = String(l);
    var yMax = 0;
    for (var r = 0; r < G; r++) {
      yMax = Math.max(yMax, CUR.rankLoads[l * G + r], PRO.rankLoads[l * G + r]);
    }
    yMax = niceMax(Math.max(yMax, lowerBound[l]));
    drawLayerView(document.getElementById("layer-current"), CUR, l, yMax);
    drawLayerView(document.getElementById("layer-proposed"), PRO, l, yMax);
    var c = layerStats(CUR, l), p = layerStats(PRO, l);
    document.getElementById("layer-info").textContent = "balancedness " + fixed(CUR.layerBal[l], 4) +
      " \u2192 " + fixed(PRO.layerBal[l], 4) + " \u00b7 max rank load " + num(c.max) + " \u2192 " +
      num(p.max) + " \u00b7 lower bound " + num(lowerBound[l]);
    document.querySelectorAll("svg .selected").forEach(function (n) { n.classList.remove("selected"); });
    document.querySelectorAll('svg [data-index="' + l + '"]').forEach(function (n) {
      if (n.closest("#chart-balancedness, #chart-skew")) n.classList.add("selected");
    });
    placeMarkers(l);
  }

  function drawLayerPicker() {
    for (var l = 0; l < L; l++) {
      var opt = document.createElement("option");
      opt.value = String(l);
      opt.textContent = l + "  (" + fixed(CUR.layerBal[l], 3) + " \u2192 " + fixed(PRO.layerBal[l], 3) + ")";
      select.appendChild(opt);
    }
    select.addEventListener("change", function () { selectLayer(Number(select.value)); });
    document.getElementById("layer-prev").addEventListener("click", function () { selectLayer(current - 1); });
    document.getElementById("layer-next").addEventListener("click", function () { selectLayer(current + 1); });
    // Start on the layer the proposal improves least: the one a reader should look at.
    var worst = 0;
    for (var i = 1; i < L; i++) if (PRO.layerBal[i] < PRO.layerBal[worst]) worst = i;
    selectLayer(worst);
  }

  function drawSteps() {
    if (!CUR.steps) return;
    document.getElementById("window").hidden = false;
    var T = CUR.steps.length, lo = 1;
    var tokens = D.step_tokens ? unpack(D.step_tokens) : null;
    for (var t = 0; t < T; t++) lo = Math.min(lo, CUR.steps[t], PRO.steps[t]);
    var axis = unitAxis(lo);
    lineChart(document.getElementById("chart-steps"), {
      n: T, yMin: axis.lo, ticks: axis.ticks, yMax: 1, yDigits: axis.digits, xLabel: "step",
      series: [{ cls: "current", values: CUR.steps, points: false },
        { cls: "proposed", values: PRO.steps, points: false }],
      hover: function (t) {
        var lines = ["step " + t, "balancedness: current " + fixed(CUR.steps[t], 4) + ", proposed " +
          fixed(PRO.steps[t], 4)];
        if (tokens) lines.push("tokens: " + num(tokens[t]));
        return lines;
      }
    });
  }

  // Shares of routed tokens by the link level they cross, one stacked bar per placement.
  function drawTraffic() {
    if (!CUR.traffic || !D.traffic_levels) return;
    document.getElementById("traffic").hidden = false;
    var levels = D.traffic_levels;
    var names = { within_numa: "same NUMA domain (incl. same rank)", cross_numa: "cross-NUMA",
      cross_node: "cross-node" };
    var colours = { within_numa: "#38a169", cross_numa: "#d69e2e", cross_node: "#e53e3e" };
    var box = document.getElementById("chart-traffic");
    var W = widthOf(box), H = 130, m = { l: 80, r: 12, t: 8, b: 34 };
    var svg = newSvg(box, W, H);
    var pw = W - m.l - m.r, rowH = (H - m.t - m.b) / 2;
    [CUR, PRO].forEach(function (place, row) {
      var x = m.l, y = m.t + row * rowH;
      text(svg, m.l - 6, y + rowH / 2 + 4, place.label, "end");
      levels.forEach(function (level, j) {
        var share = place.traffic[j], w = share * pw;
        var seg = el("rect", { x: x.toFixed(2), y: (y + 3).toFixed(2), width: w.toFixed(2),
          height: (rowH - 6).toFixed(2), fill: colours[level], "class": "segment",
          "data-level": level }, svg);
        seg.addEventListener("mousemove", function (ev) {
          showTip(ev, [place.label + ": " + names[level], pct(share) + " of routed tokens",
            "link cost of all routed tokens: " + num(place.trafficCost)]);
        });
        seg.addEventListener("mouseleave", hideTip);
        if (w > 40) {
          var label = text(svg, x + w / 2, y + rowH / 2 + 4, pct(share), "middle");
          label.setAttribute("class", "on-bar");
        }
        x += w;
      });
    });
    var lx = m.l;
    levels.forEach(function (level) {
      el("rect", { x: lx, y: H - 22, width: 10, height: 10, fill: colours[level] }, svg);
      text(svg, lx + 14, H - 13, names[level]);
      lx += (W - m.l) / levels.length;
    });
  }

  drawLayerCharts();
  drawHeatmaps();
  drawLayerPicker();
  drawSteps();
  drawTraffic();
  document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
  document.body.dataset.ready = "1";
})();
