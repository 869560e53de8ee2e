/* hpscale dashboard: a small SVG plotting module (log/linear axes, points with interval
 * bars, lines, shaded bands, markers, legend). No dependencies; every element is a DOM
 * node, so a test can count what is drawn, and the chart is re-drawn at its container's
 * width when the window is resized.
 *
 * Charts.plot(container, spec):
 *   spec.x / spec.y: {label, log, min?, max?, format?(v), clipMax?}  (clipMax: values above
 *                    are drawn as ▲ at the top edge, still counted)
 *   spec.series: [{name, color, role: "data"|"law"|"band"|"target"|"guide",
 *                  points?: [{x, y, lo?, hi?, title?, marker?: "circle"|"cross"|"ring"|"star"|"diamond"}],
 *                  line?: [[x, y], ...], band?: [[x, lo, hi], ...], dash?, legend?: bool, width?,
 *                  looseIntervals?: bool (interval bars do not widen the axes)}]
 *   spec.empty: text to show when there is nothing to plot.
 *   spec.colorKey: {title, items: [{color, label}]}: what per-point colours mean (a second legend).
 * The container gets data-series-count (data series), data-point-count (their points),
 * data-law-count, data-band-count, data-target-count and data-rendered="1".
 * Charts.axisLabels(width, height, margins, xLabel, yLabel): a plot's two axis labels (SVG text),
 * for the hand-drawn heatmap (landscape.js).
 */
"use strict";

const Charts = (() => {
  const SVG = "http://www.w3.org/2000/svg";

  function s(tag, attrs, ...children) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) n.setAttribute(k, String(v));
    for (const c of children)
      if (c !== null && c !== undefined) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return n;
  }
  function titled(node, text) {
    if (text) node.append(s("title", null, text));
    return node;
  }

  /** viridis-like ramp, light enough at the top to be seen on white. */
  const RAMP = [
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#e0c21a",
  ];
  function rampColor(t) {
    t = Math.min(1, Math.max(0, t));
    const f = t * (RAMP.length - 1),
      i = Math.min(RAMP.length - 2, Math.floor(f)),
      u = f - i;
    const a = hex(RAMP[i]),
      b = hex(RAMP[i + 1]);
    return "rgb(" + a.map((c, k) => Math.round(c + (b[k] - c) * u)).join(",") + ")";
  }
  function hex(h) {
    return [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16));
  }
  /** n distinct colours along the ramp (ordered: small scales dark, large scales light). */
  function palette(n) {
    return Array.from({ length: n }, (_, i) => rampColor(n === 1 ? 0.35 : (i / (n - 1)) * 0.95));
  }

  // --- scales and ticks -------------------------------------------------------------
  function extent(values) {
    let lo = Infinity,
      hi = -Infinity;
    for (const v of values)
      if (isFinite(v)) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    return lo <= hi ? [lo, hi] : null;
  }

  function makeScale(axis, values, range) {
    const log = !!axis.log;
    let vals = log ? values.filter(v => v > 0) : values;
    let [lo, hi] = extent(vals) || (log ? [1, 10] : [0, 1]);
    if (axis.min !== undefined && axis.min !== null) lo = axis.min;
    if (axis.max !== undefined && axis.max !== null) hi = axis.max;
    if (log) {
      let a = Math.log10(lo),
        b = Math.log10(hi);
      if (b - a < 1e-9) {
        a -= 0.5;
        b += 0.5;
      }
      const pad = (b - a) * (axis.pad === undefined ? 0.06 : axis.pad);
      a -= pad;
      b += pad;
      const f = v => range[0] + ((Math.log10(v) - a) / (b - a)) * (range[1] - range[0]);
      return { log, f, lo: Math.pow(10, a), hi: Math.pow(10, b), ticks: logTicks(a, b) };
    }
    if (hi - lo < 1e-12) {
      lo -= 0.5;
      hi += 0.5;
    }
    const pad = (hi - lo) * (axis.pad === undefined ? 0.06 : axis.pad);
    lo -= pad;
    hi += pad;
    const f = v => range[0] + ((v - lo) / (hi - lo)) * (range[1] - range[0]);
    return { log, f, lo, hi, ticks: linTicks(lo, hi) };
  }

  function logTicks(a, b) {
    const major = [],
      minor = [];
    const span = b - a;
    for (let e = Math.floor(a); e <= Math.ceil(b); e++) {
      for (let m = 1; m < 10; m++) {
        const v = m * Math.pow(10, e),
          lv = Math.log10(v);
        if (lv < a - 1e-9 || lv > b + 1e-9) continue;
        const labelled = m === 1 || (span < 2.6 && (m === 2 || m === 5)) || (span < 1.2 && m === 3) || span < 0.5;
        (labelled ? major : minor).push(v);
      }
    }
    if (major.length < 2) {
      // less than one decade and no decade inside: label ends
      major.push(...minor.splice(0, minor.length));
    }
    return { major, minor };
  }

  function linTicks(lo, hi) {
    const raw = (hi - lo) / 6,
      p = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * p).find(v => v >= raw) || 10 * p;
    const major = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) major.push(Number(v.toPrecision(12)));
    return { major, minor: [] };
  }

  function defaultFormat(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4 || a < 1e-2) {
      const e = Math.floor(Math.log10(a) + 1e-9),
        m = Number((v / Math.pow(10, e)).toPrecision(2));
      return m + "e" + e;
    }
    return String(Number(v.toPrecision(3)));
  }

  // --- markers ----------------------------------------------------------------------
  function marker(kind, x, y, r, color) {
    switch (kind) {
      case "cross": {
        const d = r * 1.1;
        return s("path", {
          d: `M${x - d},${y - d}L${x + d},${y + d}M${x - d},${y + d}L${x + d},${y - d}`,
          stroke: color,
          "stroke-width": 2,
          fill: "none",
        });
      }
      case "triangle":
        return s("path", {
          d: `M${x},${y - r * 1.3}L${x + r * 1.2},${y + r * 0.8}L${x - r * 1.2},${y + r * 0.8}Z`,
          fill: color,
          "fill-opacity": 0.75,
          stroke: color,
        });
      case "ring":
        return s("circle", { cx: x, cy: y, r: r, fill: "#fff", stroke: color, "stroke-width": 1.5 });
      case "diamond":
        return s("path", {
          d: `M${x},${y - r * 1.4}L${x + r * 1.4},${y}L${x},${y + r * 1.4}L${x - r * 1.4},${y}Z`,
          fill: color,
          stroke: "#fff",
          "stroke-width": 1,
        });
      case "star": {
        let d = "";
        for (let i = 0; i < 10; i++) {
          const rr = i % 2 ? r * 0.95 : r * 2.2,
            t = -Math.PI / 2 + (i * Math.PI) / 5;
          d += (i ? "L" : "M") + (x + rr * Math.cos(t)).toFixed(2) + "," + (y + rr * Math.sin(t)).toFixed(2);
        }
        return s("path", { d: d + "Z", fill: color, stroke: "#1b1b1b", "stroke-width": 1 });
      }
      default:
        return s("circle", {
          cx: x,
          cy: y,
          r: r,
          fill: color,
          "fill-opacity": 0.7,
          stroke: color,
          "stroke-width": 0.8,
        });
    }
  }

  // --- the plot ---------------------------------------------------------------------
  let uid = 0;

  function plot(container, spec) {
    container._chartSpec = spec;
    observe(container);
    render(container);
  }

  function render(container) {
    const spec = container._chartSpec;
    if (!spec) return;
    while (container.firstChild) container.removeChild(container.firstChild);
    const series = spec.series || [];
    const dataSeries = series.filter(se => se.role === "data");
    const count = role => series.filter(se => se.role === role).length;
    container.dataset.seriesCount = String(dataSeries.length);
    container.dataset.pointCount = String(dataSeries.reduce((n, se) => n + (se.points || []).length, 0));
    container.dataset.lawCount = String(count("law"));
    container.dataset.bandCount = String(count("band"));
    container.dataset.targetCount = String(count("target"));

    const width = Math.max(260, container.clientWidth || 600);
    const height = Math.round(Math.min(440, Math.max(250, width * 0.6)));
    const narrow = width < 420;
    const m = { l: narrow ? 54 : 66, r: 14, t: 14, b: narrow ? 46 : 50 };

    const xs = [],
      ys = [];
    for (const se of series) {
      // looseIntervals: interval bars do not stretch the axes (a near-unidentified optimum's
      // bar would otherwise flatten everything else); bars are clipped at the frame.
      for (const p of se.points || []) {
        xs.push(p.x);
        ys.push(p.y);
        if (p.lo !== undefined && !se.looseIntervals) ys.push(p.lo, p.hi);
      }
      for (const [x, y] of se.line || []) {
        xs.push(x);
        ys.push(y);
      }
      if (se.role !== "band")
        for (const [x, lo, hi] of se.band || []) {
          xs.push(x);
          ys.push(lo, hi);
        }
    }
    if (!xs.length) {
      container.append(
        Object.assign(document.createElement("p"), {
          className: "chart-empty",
          textContent: spec.empty || "Nothing to plot.",
        }),
      );
      container.dataset.rendered = "1";
      return;
    }
    const yAxis = Object.assign({}, spec.y);
    const clipMax = yAxis.clipMax;
    const yVals = clipMax !== undefined ? ys.filter(v => v <= clipMax) : ys;
    if (clipMax !== undefined && ys.some(v => v > clipMax)) yAxis.max = clipMax;
    const X = makeScale(spec.x, xs, [m.l, width - m.r]);
    const Y = makeScale(yAxis, yVals.length ? yVals : ys, [height - m.b, m.t]);
    const fx = spec.x.format || defaultFormat,
      fy = spec.y.format || defaultFormat;

    const svg = s("svg", {
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      class: "plot",
      "font-size": narrow ? 10 : 11,
    });
    const clipId = "clip" + ++uid;
    svg.append(
      s(
        "defs",
        null,
        s(
          "clipPath",
          { id: clipId },
          s("rect", { x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b }),
        ),
      ),
    );

    // grid and ticks
    const grid = s("g", { class: "grid" });
    const axes = s("g", { class: "axes" });
    const minX = Math.floor((width - m.l) / 70);
    const xMajor = thin(X.ticks.major, Math.max(2, minX));
    for (const v of X.ticks.minor)
      grid.append(s("line", { x1: X.f(v), x2: X.f(v), y1: m.t, y2: height - m.b, class: "minor" }));
    for (const v of X.ticks.major)
      grid.append(s("line", { x1: X.f(v), x2: X.f(v), y1: m.t, y2: height - m.b, class: "major" }));
    for (const v of xMajor) axes.append(s("text", { x: X.f(v), y: height - m.b + 16, "text-anchor": "middle" }, fx(v)));
    for (const v of Y.ticks.minor)
      grid.append(s("line", { x1: m.l, x2: width - m.r, y1: Y.f(v), y2: Y.f(v), class: "minor" }));
    const yMajor = thin(Y.ticks.major, Math.max(3, Math.floor((height - m.t - m.b) / 28)));
    for (const v of Y.ticks.major)
      grid.append(s("line", { x1: m.l, x2: width - m.r, y1: Y.f(v), y2: Y.f(v), class: "major" }));
    for (const v of yMajor) axes.append(s("text", { x: m.l - 6, y: Y.f(v) + 4, "text-anchor": "end" }, fy(v)));
    axes.append(s("rect", { x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b, class: "frame" }));
    axes.append(
      ...axisLabels(width, height, m, spec.x.label + (X.log ? " (log)" : ""), spec.y.label + (Y.log ? " (log)" : "")),
    );
    svg.append(grid);

    const plotArea = s("g", { "clip-path": `url(#${clipId})` });
    const top = m.t + 7;
    const yPix = v => (clipMax !== undefined && v > clipMax ? top : Y.f(v));
    // Past a few thousand points, per-point tooltips cost more than they help (and slow redraws).
    const light = series.reduce((n, se) => n + (se.points || []).length, 0) > 4000;
    const order = { band: 0, guide: 1, law: 2, data: 3, target: 4 };
    const sorted = series.map((se, i) => [se, i]).sort((a, b) => (order[a[0].role] ?? 3) - (order[b[0].role] ?? 3));
    const overlay = s("g", { class: "overlay" });
    for (const [se, i] of sorted) {
      const g = s("g", { class: "series role-" + se.role, "data-series": i, "data-name": se.name || "" });
      if (se.band && se.band.length) {
        const pts = se.band.filter(([x]) => x > 0 || !X.log);
        const upper = pts.map(([x, , hi]) => `${X.f(x).toFixed(1)},${Y.f(hi).toFixed(1)}`);
        const lower = pts
          .slice()
          .reverse()
          .map(([x, lo]) => `${X.f(x).toFixed(1)},${Y.f(lo).toFixed(1)}`);
        g.append(
          titled(
            s("path", {
              d: "M" + upper.join("L") + "L" + lower.join("L") + "Z",
              fill: se.color,
              "fill-opacity": se.opacity || 0.16,
              stroke: "none",
              class: "band",
              // the band in data units ([x, low, high] per point), so a test can compare it with the API
              "data-band": se.band.length <= 500 ? JSON.stringify(se.band) : null,
            }),
            se.name,
          ),
        );
      }
      if (se.line && se.line.length > 1) {
        const d = se.line.map(([x, y], k) => (k ? "L" : "M") + X.f(x).toFixed(1) + "," + yPix(y).toFixed(1)).join("");
        g.append(
          titled(
            s("path", {
              d,
              fill: "none",
              stroke: se.color,
              "stroke-width": se.width || 1.6,
              "stroke-dasharray": se.dash || null,
              "stroke-opacity": se.lineOpacity || 0.9,
              class: se.role === "law" ? "law" : "line",
            }),
            se.name,
          ),
        );
      }
      for (const p of se.points || []) {
        const px = X.f(p.x),
          off = clipMax !== undefined && p.y > clipMax;
        const py = yPix(p.y);
        const role = se.role === "data" ? "point" : se.role;
        if (light && p.lo === undefined) {
          // many points: one bare element each, no tooltip
          const kind = p.marker || se.marker || "circle";
          const mk = marker(
            off && kind !== "cross" ? "triangle" : kind,
            px,
            py,
            p.r || se.r || 3.2,
            p.color || se.color,
          );
          mk.setAttribute("class", "pt");
          mk.setAttribute("data-role", role);
          g.append(mk);
          continue;
        }
        const pg = s("g", { class: "pt", "data-role": role });
        if (p.lo !== undefined && p.hi !== undefined && isFinite(p.lo) && isFinite(p.hi)) {
          pg.append(
            s("line", {
              x1: px,
              x2: px,
              y1: Y.f(Math.min(p.hi, Y.hi)),
              y2: Y.f(Math.max(p.lo, Y.lo)),
              stroke: p.color || se.color,
              "stroke-width": 1.4,
              class: "errbar",
            }),
          );
          for (const v of [p.lo, p.hi])
            if (v >= Y.lo && v <= Y.hi)
              pg.append(
                s("line", {
                  x1: px - 3,
                  x2: px + 3,
                  y1: Y.f(v),
                  y2: Y.f(v),
                  stroke: p.color || se.color,
                  "stroke-width": 1.4,
                }),
              );
        }
        const kind = p.marker || se.marker || "circle";
        pg.append(marker(off && kind !== "cross" ? "triangle" : kind, px, py, p.r || se.r || 3.2, p.color || se.color));
        titled(pg, p.title);
        (se.role === "target" ? overlay : g).append(pg);
      }
      plotArea.append(g);
    }
    svg.append(plotArea, overlay, axes);
    container.append(svg);

    // legend (HTML, wraps in narrow windows)
    const items = series.filter(se => se.legend !== false && se.name);
    if (items.length) {
      const lg = document.createElement("ul");
      lg.className = "legend";
      for (const se of items) {
        const li = document.createElement("li");
        const sw = s("svg", { width: 22, height: 12, class: "swatch" });
        if (se.role === "band")
          sw.append(s("rect", { x: 1, y: 2, width: 20, height: 8, fill: se.color, "fill-opacity": 0.25 }));
        else if (se.role === "law" || (se.line && !se.points))
          sw.append(
            s("line", {
              x1: 1,
              x2: 21,
              y1: 6,
              y2: 6,
              stroke: se.color,
              "stroke-width": 2,
              "stroke-dasharray": se.dash || null,
            }),
          );
        else sw.append(marker(se.marker || "circle", 11, 6, se.role === "target" ? 2.4 : 3.6, se.color));
        li.append(sw, document.createTextNode(se.name));
        lg.append(li);
      }
      container.append(lg);
    }
    if (spec.colorKey && spec.colorKey.items && spec.colorKey.items.length) {
      const key = document.createElement("ul");
      key.className = "legend color-key";
      const head = document.createElement("li");
      head.className = "key-title";
      head.textContent = spec.colorKey.title || "colour";
      key.append(head);
      for (const item of spec.colorKey.items) {
        const li = document.createElement("li");
        const sw = s("svg", { width: 12, height: 12, class: "swatch" });
        sw.append(marker("circle", 6, 6, 4, item.color));
        li.append(sw, document.createTextNode(item.label));
        key.append(li);
      }
      container.append(key);
    }
    if (spec.note)
      container.append(Object.assign(document.createElement("p"), { className: "chart-note", textContent: spec.note }));
    container.dataset.rendered = "1";
  }

  /** The x label under a plot of `width` × `height` with margins `m` ({l, r, t, b}) and the y
   * label turned along its left edge: two SVG text nodes. */
  function axisLabels(width, height, m, xLabel, yLabel) {
    return [
      s("text", { x: (m.l + width - m.r) / 2, y: height - 8, "text-anchor": "middle", class: "axis-label" }, xLabel),
      s(
        "text",
        {
          x: 0,
          y: 0,
          transform: `translate(13,${(m.t + height - m.b) / 2}) rotate(-90)`,
          "text-anchor": "middle",
          class: "axis-label",
        },
        yLabel,
      ),
    ];
  }

  function thin(ticks, maxCount) {
    if (ticks.length <= maxCount) return ticks;
    const step = Math.ceil(ticks.length / maxCount);
    return ticks.filter((_, i) => i % step === 0);
  }

  // re-render at the new width when a container is resized
  const observed = new WeakSet();
  const ro =
    typeof ResizeObserver !== "undefined"
      ? new ResizeObserver(entries => {
          for (const e of entries) {
            const c = e.target,
              w = Math.round(e.contentRect.width);
            if (c._chartWidth !== w) {
              c._chartWidth = w;
              clearTimeout(c._chartTimer);
              c._chartTimer = setTimeout(() => render(c), 60);
            }
          }
        })
      : null;
  function observe(c) {
    if (ro && !observed.has(c)) {
      observed.add(c);
      c._chartWidth = Math.round(c.clientWidth);
      ro.observe(c);
    }
  }

  return { plot, palette, rampColor, axisLabels };
})();
