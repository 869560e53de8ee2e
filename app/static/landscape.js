/* Loss landscape views (ES module): one small panel per scale (final loss against learning
 * rate, runs marked by how the fit used them, the fitted bowl, the optimum and its 90%
 * interval) and an LR × batch map of one scale with the fitted bowl's labelled contours and a
 * colour bar: a heatmap where the runs form a grid, a scatter where they do not (one-at-a-time
 * ablations, whose few points a heatmap would smear over the whole area).
 * Every curve and interval comes from the API (GET .../fits/{id}/curves); this module only
 * draws. Uses the globals HP (common.js) and Charts (charts.js). */

const { el, clear, fmt, human } = HP;

// The y-range of a panel: from just under the scale's best loss to this much above it
// (the fit's near-optimal runs sit within 0.25%, its bowl within ~5%); higher losses are
// drawn as ▲ on the top edge, still counted.
const Y_ABOVE_BEST = 0.08;
const STATE_STYLE = {
  near_optimal: { color: "#1e7b4a", marker: "circle", label: "near-optimal" },
  used: { color: "#3e6fb0", marker: "circle", label: "used" },
  outlier: { color: "#b3261e", marker: "ring", label: "outlier (left out)" },
  excluded: { color: "#8a8f98", marker: "ring", label: "excluded" },
  diverged: { color: "#b3261e", marker: "cross", label: "treated as diverged" },
  failed: { color: "#8a8f98", marker: "cross", label: "failed / no loss" },
};

export const scaleKey = sc => [sc.n_params, sc.tokens, sc.width, sc.depth].map(v => (v == null ? "" : v)).join("|");

export function scaleLabel(sc) {
  let s = "N=" + human(sc.n_params) + " D=" + human(sc.tokens);
  if (sc.width != null || sc.depth != null) {
    s += " (" + (sc.width != null ? "w" + sc.width : "") + (sc.depth != null ? "×" + sc.depth + "L" : "") + ")";
  }
  return s;
}

export const lrFormat = v => {
  const e = Math.floor(Math.log10(v) + 1e-9);
  return Number((v / Math.pow(10, e)).toPrecision(2)) + "e" + e;
};

/** Runs grouped by scale, in the fit's order of optima (small to large). */
function groups(runs, fit) {
  const map = new Map();
  for (const o of (fit && fit.optima) || []) map.set(scaleKey(o.scale), { scale: o.scale, optimum: o, runs: [] });
  for (const r of runs) {
    const k = scaleKey(r);
    if (!map.has(k))
      map.set(k, {
        scale: { n_params: r.n_params, tokens: r.tokens, width: r.width, depth: r.depth },
        optimum: null,
        runs: [],
      });
    map.get(k).runs.push(r);
  }
  return [...map.values()].sort((a, b) => a.scale.n_params - b.scale.n_params || a.scale.tokens - b.scale.tokens);
}

/** A legend swatch (SVG attributes only: the CSP allows no inline style). */
function swatch(kind, color) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  const add = (tag, attrs) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    svg.append(n);
  };
  svg.setAttribute("width", "22");
  svg.setAttribute("height", "12");
  svg.setAttribute("class", "swatch");
  if (kind === "band") add("rect", { x: 1, y: 2, width: 20, height: 8, fill: color, "fill-opacity": 0.25 });
  else if (kind === "law") add("line", { x1: 1, x2: 21, y1: 6, y2: 6, stroke: color, "stroke-width": 2 });
  else if (kind === "cross") add("path", { d: "M7,2L15,10M7,10L15,2", stroke: color, "stroke-width": 2 });
  else if (kind === "ring") add("circle", { cx: 11, cy: 6, r: 3.5, fill: "#fff", stroke: color, "stroke-width": 1.5 });
  else if (kind === "star") {
    add("path", {
      d: "M11,0.5L12.6,4.6L17,4.8L13.6,7.5L14.8,11.6L11,9.2L7.2,11.6L8.4,7.5L5,4.8L9.4,4.6Z",
      fill: color,
    });
  } else add("circle", { cx: 11, cy: 6, r: 3.5, fill: color });
  return svg;
}

/** Small multiples. `states` maps run id → fit state; `bowls` is the curves' `bowls`. */
export function renderLandscape(box, runs, fit, states, bowls) {
  clear(box);
  const bowlOf = new Map((bowls || []).map(b => [scaleKey(b.scale), b]));
  const gs = groups(runs, fit);
  box.dataset.panelCount = String(gs.length);
  if (!gs.length) {
    box.append(el("p", { class: "chart-empty", text: "No runs yet: submit runs to see the loss landscape." }));
    return;
  }
  const legend = el("ul", { class: "legend landscape-legend" });
  for (const [name, color, marker] of [
    ["optimum 90% interval", "#e07b39", "band"],
    ["fitted bowl", "#e07b39", "law"],
    ...Object.values(STATE_STYLE).map(st => [st.label, st.color, st.marker]),
    ["optimum", "#d62728", "star"],
  ]) {
    legend.append(el("li", { "data-marker": marker }, swatch(marker, color), name));
  }
  box.append(legend);
  for (const g of gs) {
    const panel = el("div", {
      class: "chart small",
      "data-scale": scaleKey(g.scale),
      role: "img",
      "aria-label": "final loss against learning rate at " + scaleLabel(g.scale),
    });
    box.append(el("figure", { class: "panel" }, el("figcaption", { text: scaleLabel(g.scale) }), panel));
    const finite = g.runs.filter(r => r.final_loss != null && isFinite(r.final_loss));
    const best =
      g.optimum && isFinite(g.optimum.loss)
        ? g.optimum.loss
        : finite.length
          ? Math.min(...finite.map(r => r.final_loss))
          : NaN;
    const top = best * (1 + Y_ABOVE_BEST);
    const byState = new Map();
    for (const r of g.runs) {
      const st = states[String(r.id)] || (r.status === "diverged" ? "diverged" : "used");
      if (!byState.has(st)) byState.set(st, []);
      byState.get(st).push(r);
    }
    const series = [];
    const bowl = bowlOf.get(scaleKey(g.scale));
    const lrOpt = g.optimum && g.optimum.learning_rate;
    if (lrOpt && isFinite(best)) {
      series.push({
        name: "optimum 90% interval",
        color: "#e07b39",
        role: "band",
        opacity: 0.14,
        band: [
          [lrOpt.low, best * 0.995, top],
          [lrOpt.high, best * 0.995, top],
        ],
      });
    }
    if (bowl) {
      series.push({
        name: "fitted bowl",
        color: "#e07b39",
        role: "law",
        width: 2,
        line: bowl.learning_rate.map((x, i) => [x, bowl.loss[i]]).filter(([, y]) => y <= top),
      });
    }
    for (const [st, style] of Object.entries(STATE_STYLE)) {
      const rs = byState.get(st) || [];
      if (!rs.length) continue;
      const noLoss = st === "diverged" || st === "failed";
      series.push({
        name: style.label + " (" + rs.length + ")",
        color: style.color,
        marker: style.marker,
        role: "data",
        r: 2.8,
        state: st,
        points: rs.map(r => ({
          x: r.learning_rate,
          y: noLoss || r.final_loss == null ? top * 2 : r.final_loss,
          title:
            "run " +
            r.id +
            (r.run_key ? " " + r.run_key : "") +
            "\nlr " +
            fmt(r.learning_rate) +
            ", batch " +
            r.batch_size +
            "\nloss " +
            fmt(r.final_loss, 4) +
            "\n" +
            style.label,
        })),
      });
    }
    if (lrOpt && isFinite(best)) {
      series.push({
        name: "optimum",
        color: "#d62728",
        role: "target",
        marker: "star",
        points: [
          {
            x: lrOpt.value,
            y: best,
            r: 3,
            title: "optimum lr " + fmt(lrOpt.value) + " [" + fmt(lrOpt.low) + ", " + fmt(lrOpt.high) + "]",
          },
        ],
      });
    }
    Charts.plot(panel, {
      x: { label: "peak learning rate", log: true, format: lrFormat },
      y: {
        label: "final loss [nats/token]",
        log: false,
        min: isFinite(best) ? best * 0.995 : undefined,
        clipMax: isFinite(top) ? top : undefined,
      },
      series: series.map(se => Object.assign(se, { legend: false })),
      empty: "No runs at this scale.",
    });
    panel.dataset.runCount = String(g.runs.length);
  }
}

/** Distinct values of a (positive) field, merged when within 1% (the fit's own tolerance). */
function distinct(values) {
  const out = [];
  for (const v of [...values].filter(v => v > 0).sort((a, b) => a - b)) {
    if (!out.length || v / out[out.length - 1] > 1.01) out.push(v);
  }
  return out;
}
const indexOf = (grid, v) => grid.findIndex(g => Math.abs(Math.log(v / g)) < 0.01);

// Redraw a heatmap at its container's new width (its text is sized in pixels, not scaled).
const heatObserver =
  typeof ResizeObserver !== "undefined"
    ? new ResizeObserver(entries => {
        for (const e of entries) {
          const box = e.target,
            w = Math.round(e.contentRect.width);
          if (box._heatArgs && box._heatWidth !== w) {
            box._heatWidth = w;
            clearTimeout(box._heatTimer);
            box._heatTimer = setTimeout(() => renderHeatmap(box, ...box._heatArgs), 60);
          }
        }
      })
    : null;

/** Heatmap of final loss over the stored (lr, batch) grid points of one scale, with the bowl's contours. */
export function renderHeatmap(box, runs, fit, states, bowls, key) {
  if (heatObserver && !box._heatArgs) heatObserver.observe(box);
  box._heatArgs = [runs, fit, states, bowls, key];
  box._heatWidth = Math.round(box.clientWidth);
  clear(box);
  const g = groups(runs, fit).find(x => scaleKey(x.scale) === key);
  if (!g || !g.runs.length) {
    box.append(el("p", { class: "chart-empty", text: "No runs at this scale." }));
    return;
  }
  const lrs = distinct(g.runs.map(r => r.learning_rate)),
    bss = distinct(g.runs.map(r => r.batch_size));
  const cells = new Map(); // one cell per stored grid point: its runs
  for (const r of g.runs) {
    const k = indexOf(lrs, r.learning_rate) + ":" + indexOf(bss, r.batch_size);
    if (!cells.has(k)) cells.set(k, []);
    cells.get(k).push(r);
  }
  const finite = g.runs.filter(r => r.final_loss != null && isFinite(r.final_loss) && r.status === "completed");
  const best = finite.length ? Math.min(...finite.map(r => r.final_loss)) : NaN;
  const width = Math.max(280, box.clientWidth || 600),
    height = Math.round(Math.min(420, Math.max(260, width * 0.55)));
  // room on the right for the colour bar and its labels
  const m = { l: 64, r: 84, t: 12, b: 48 };
  // Runs on a grid fill most (lr, batch) cells; one-at-a-time ablations fill a cross of them:
  // cells would then paint the whole area from a few points, so each point is drawn alone.
  const scatter = lrs.length > 1 && bss.length > 1 && cells.size < 0.6 * lrs.length * bss.length;
  const lx = v => Math.log(v);
  const edges = vs => {
    // cell edges at geometric midpoints, the outer ones mirrored
    const l = vs.map(lx),
      e = [];
    for (let i = 0; i <= l.length; i++) {
      if (i === 0) e.push(l[0] - (l.length > 1 ? (l[1] - l[0]) / 2 : 0.35));
      else if (i === l.length) e.push(l[i - 1] + (l.length > 1 ? (l[i - 1] - l[i - 2]) / 2 : 0.35));
      else e.push((l[i - 1] + l[i]) / 2);
    }
    return e;
  };
  const ex = edges(lrs),
    ey = edges(bss);
  const X = v => m.l + ((v - ex[0]) / (ex[ex.length - 1] - ex[0])) * (width - m.l - m.r);
  const Y = v => height - m.b - ((v - ey[0]) / (ey[ey.length - 1] - ey[0])) * (height - m.t - m.b);
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text != null) n.append(document.createTextNode(String(text)));
    return n;
  };
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "plot heatmap" });
  const clipId = "heat-clip-" + Math.random().toString(36).slice(2);
  const defs = s("defs", {}),
    clip = s("clipPath", { id: clipId });
  clip.append(s("rect", { x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b }));
  defs.append(clip);
  svg.append(defs);
  let nCells = 0;
  if (scatter) {
    // faint guides at the swept values, so the cross of an ablation reads as such
    for (const v of lrs)
      svg.append(s("line", { x1: X(lx(v)), x2: X(lx(v)), y1: m.t, y2: height - m.b, class: "guide" }));
    for (const v of bss)
      svg.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(lx(v)), y2: Y(lx(v)), class: "guide" }));
  }
  for (const [k, rs] of cells) {
    const [i, j] = k.split(":").map(Number);
    const ok = rs.filter(r => r.status === "completed" && r.final_loss != null && isFinite(r.final_loss));
    const loss = ok.length ? Math.min(...ok.map(r => r.final_loss)) : NaN;
    const t = isFinite(loss) ? Math.min(1, (loss / best - 1) / Y_ABOVE_BEST) : 1;
    const st = rs.map(r => states[String(r.id)]).filter(Boolean);
    // Dark red as in the key: no finite loss, or every run here treated as diverged by the fit.
    const treatedDiverged = st.length === rs.length && st.every(x => x === "diverged");
    const fill = isFinite(loss) && !treatedDiverged ? Charts.rampColor(t) : "#5a1a14";
    const rect = scatter
      ? s("circle", {
          cx: X(lx(lrs[i])),
          cy: Y(lx(bss[j])),
          r: 7,
          class: "cell point",
          "data-lr": lrs[i],
          "data-batch": bss[j],
          fill,
          stroke: "#1b2330",
          "stroke-width": 0.8,
        })
      : s("rect", {
          x: X(ex[i]),
          y: Y(ey[j + 1]),
          width: X(ex[i + 1]) - X(ex[i]),
          height: Y(ey[j]) - Y(ey[j + 1]),
          class: "cell",
          "data-lr": lrs[i],
          "data-batch": bss[j],
          fill,
          stroke: "#fff",
          "stroke-width": 1,
        });
    rect.append(
      s(
        "title",
        {},
        "lr " +
          fmt(lrs[i]) +
          ", batch " +
          bss[j] +
          "\n" +
          (isFinite(loss) ? "best loss " + fmt(loss, 4) + " of " + rs.length + " run(s)" : "diverged / no loss") +
          (st.length ? "\n" + [...new Set(st)].join(", ") : ""),
      ),
    );
    svg.append(rect);
    nCells++;
  }
  const bowl = (bowls || []).find(b => scaleKey(b.scale) === key);
  let nContours = 0;
  for (const c of (bowl && bowl.contours) || []) {
    // An open contour (rays where the fitted cubic never reaches the level are null) is drawn in
    // pieces, starting after a gap so that no piece joins across one.
    const n = c.learning_rate.length;
    const ok = i => c.learning_rate[i] != null && c.batch_size[i] != null;
    const gap = c.closed ? -1 : [...Array(n).keys()].find(i => !ok(i));
    let d = "",
      pen = false,
      drawn = 0;
    for (let k = 0; k < n; k++) {
      const i = (Math.max(gap, 0) + k) % n;
      if (!ok(i)) {
        pen = false;
        continue;
      }
      d += (pen ? "L" : "M") + X(lx(c.learning_rate[i])).toFixed(1) + "," + Y(lx(c.batch_size[i])).toFixed(1);
      pen = true;
      drawn++;
    }
    if (drawn < 3) continue;
    if (c.closed) d += "Z";
    const label = levelText(c.level);
    const p = s("path", {
      d,
      class: "contour",
      fill: "none",
      stroke: "#111",
      "stroke-width": 1.2,
      "stroke-dasharray": nContours ? "4 3" : "none",
      "clip-path": "url(#" + clipId + ")",
      "data-level": c.level,
    });
    p.append(s("title", {}, "fitted bowl: loss " + label + " above the optimum"));
    svg.append(p);
    // The contour's label at its point furthest right inside the plot (where contours spread apart).
    let at = null;
    for (let i = 0; i < n; i++) {
      if (!ok(i)) continue;
      const px = X(lx(c.learning_rate[i])),
        py = Y(lx(c.batch_size[i]));
      if (px < m.l + 4 || px > width - m.r - 30 || py < m.t + 10 || py > height - m.b - 4) continue;
      if (!at || px > at[0]) at = [px, py];
    }
    if (at) {
      svg.append(s("text", { x: at[0] + 3, y: at[1] - 3, class: "contour-label", "data-level": c.level }, label));
    }
    nContours++;
  }
  if (bowl && bowl.optimum.batch_size) {
    svg.append(
      s("circle", {
        cx: X(lx(bowl.optimum.learning_rate.value)),
        cy: Y(lx(bowl.optimum.batch_size.value)),
        r: 4,
        fill: "#d62728",
        stroke: "#fff",
        class: "optimum",
      }),
    );
  }
  const thinned = (vs, room) => vs.filter((_, i) => i % Math.max(1, Math.ceil(vs.length / room)) === 0);
  for (const [i, v] of lrs.entries()) {
    if (!thinned(lrs, Math.floor(width / 60)).includes(v)) continue;
    svg.append(
      s("text", { x: X((ex[i] + ex[i + 1]) / 2), y: height - m.b + 15, "text-anchor": "middle" }, lrFormat(v)),
    );
  }
  for (const [j, v] of bss.entries()) {
    if (!thinned(bss, Math.floor(height / 22)).includes(v)) continue;
    svg.append(s("text", { x: m.l - 5, y: Y((ey[j] + ey[j + 1]) / 2) + 4, "text-anchor": "end" }, fmt(v)));
  }
  svg.append(...Charts.axisLabels(width, height, m, "peak learning rate (log)", "batch size [sequences] (log)"));
  if (isFinite(best)) svg.append(colourBar(s, width, height, m, best));
  box.append(
    svg,
    el("p", {
      class: "chart-note",
      text:
        (scatter
          ? "A scatter, not a heatmap: these runs vary one hyperparameter at a time, so only the points shown were " +
            "run. "
          : "") +
        "Colour: best final loss at each (lr, batch) point, from " +
        fmt(best, 4) +
        " (dark) to " +
        100 * Y_ABOVE_BEST +
        "% above or more (light), as the bar shows; dark red: diverged, or more than 20% above the scale's best " +
        "(the fit treats such runs as diverged). Lines: the fitted bowl at " +
        "0.25%, 1% and 3% above the optimum (●), each labelled.",
    }),
  );
  box.dataset.cellCount = String(nCells);
  box.dataset.contourCount = String(nContours);
  box.dataset.mode = scatter ? "scatter" : "heatmap";
  box.dataset.rendered = "1";
}

/** 0.0025 → "0.25%", 0.01 → "1%". */
function levelText(level) {
  return Number((100 * level).toPrecision(2)) + "%";
}

/** The colour bar right of the plot: the loss ramp from the scale's best (bottom) to Y_ABOVE_BEST above it. */
function colourBar(s, width, height, m, best) {
  const g = s("g", { class: "colour-bar" });
  const id = "ramp-" + Math.random().toString(36).slice(2);
  const grad = s("linearGradient", { id, x1: 0, y1: 1, x2: 0, y2: 0 });
  for (let k = 0; k <= 10; k++) grad.append(s("stop", { offset: k / 10, "stop-color": Charts.rampColor(k / 10) }));
  const defs = s("defs", {});
  defs.append(grad);
  g.append(defs);
  const x = width - m.r + 14,
    top = m.t + 14,
    bottom = height - m.b - 22,
    w = 12;
  g.append(s("rect", { x, y: top, width: w, height: bottom - top, fill: "url(#" + id + ")", class: "bar" }));
  for (const frac of [0, 0.25, 0.5, 0.75, 1]) {
    const y = bottom - frac * (bottom - top);
    g.append(s("line", { x1: x + w, x2: x + w + 3, y1: y, y2: y, stroke: "#3b4656" }));
    const text = frac === 0 ? fmt(best, 4) : "+" + Number((100 * Y_ABOVE_BEST * frac).toPrecision(2)) + "%";
    g.append(s("text", { x: x + w + 5, y: y + 4, class: "bar-tick" }, text));
  }
  g.append(s("rect", { x, y: bottom + 8, width: w, height: 10, fill: "#5a1a14" }));
  g.append(s("text", { x: x + w + 5, y: bottom + 17, class: "bar-tick" }, "diverged"));
  g.append(s("text", { x: x - 2, y: top - 5, class: "bar-tick" }, "loss"));
  return g;
}

/** The scale picker of the heatmap (default: the largest scale). */
export function scaleOptions(runs, fit) {
  return groups(runs, fit).map(g => ({
    key: scaleKey(g.scale),
    label: scaleLabel(g.scale),
    n: g.runs.length,
    cells: new Set(g.runs.map(r => r.learning_rate.toPrecision(4) + "|" + r.batch_size)).size,
  }));
}

/** The heatmap's default scale: the largest whose sweep covers ≥ 2 lr × 2 batch points (else the largest). */
export function defaultHeatScale(options) {
  const swept = options.filter(o => o.cells >= 4);
  const pick = swept.length ? swept[swept.length - 1] : options[options.length - 1];
  return pick ? pick.key : "";
}
