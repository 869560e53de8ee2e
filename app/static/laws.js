/* Optimal hyperparameters against scale with the fitted laws, and the loss law (ES module).
 * Curves and bands are the API's (state.curves, state.common); this module only draws. */
import { state, hooks, AXES, VAR_LABEL, scaleVars } from "./studystate.js";
import { scaleKey, scaleLabel, lrFormat } from "./landscape.js";

const { el, clear, fmt, human, fmtInterval } = HP;
const countFormat = v => human(v);

function xVarOptions() {
  const vars = new Set();
  for (const [axis] of AXES)
    for (const v of ((state.fit && state.fit.laws && state.fit.laws[axis]) || {}).variables || []) vars.add(v);
  return ["n_params", "tokens", "width", "depth", "compute"].filter(v => vars.has(v) || v === "n_params");
}

function ensureXSelect() {
  let sel = document.getElementById("x-var");
  const opts = xVarOptions();
  if (!opts.includes(state.xVar)) state.xVar = opts[0];
  if (!sel) {
    sel = el("select", { id: "x-var", "aria-label": "x axis of the optimum plots" });
    sel.addEventListener("change", async () => {
      state.xVar = sel.value;
      await hooks.loadCurves();
      hooks.renderCharts();
    });
    const charts = document.querySelector(".charts");
    charts.prepend(
      el(
        "div",
        { class: "chart-controls" },
        el("label", { class: "inline-control" }, "Optima plotted against ", sel),
        el("span", {
          class: "muted small",
          text:
            "With a law in several variables, each optimum is rescaled by the fitted exponents to the target's " +
            "(else the proxies' typical) value of the others, so all share one line; " +
            "hover a point for its raw value.",
        }),
      ),
    );
  }
  clear(sel);
  for (const v of opts) sel.append(el("option", { value: v, text: VAR_LABEL[v], selected: v === state.xVar }));
}

/** The x variable a law is drawn against: the picked one if the law uses it, else its first. */
export function lawXVar(law) {
  return law && law.variables.length && !law.variables.includes(state.xVar) ? law.variables[0] : state.xVar;
}

/** No chart for this hyperparameter: a one-line reason and what runs would fix it, no empty box. */
function noChart(box, note, text) {
  clear(box)._chartSpec = null; // (a resize must not redraw an old chart)
  for (const k of ["seriesCount", "pointCount", "lawCount", "bandCount", "targetCount"]) box.dataset[k] = "0";
  box.dataset.rendered = "1";
  box.hidden = true;
  note.textContent = text;
  note.className = "why-missing";
}

const FIX = {
  learning_rate: "sweep the learning rate over ≥ 3 values at ≥ 2 scales",
  batch_size: "sweep batch size over ≥ 3 values at ≥ 2 scales",
  weight_decay: "sweep weight decay over ≥ 3 values at ≥ 2 scales",
};

export function renderOptimum(axis, label, sym, scales) {
  ensureXSelect();
  const box = document.getElementById("chart-opt-" + axis);
  const note = document.getElementById("opt-" + axis + "-note");
  box.hidden = false;
  note.className = "muted";
  const fit = state.fit;
  if (!fit) {
    noChart(box, note, "No fit yet — use “Fit now” or ask for a recommendation.");
    return;
  }
  const law = (fit.laws || {})[axis] || null;
  const optima = (fit.optima || []).filter(o => o[axis] && o[axis].value > 0);
  const why = (fit.missing_laws || {})[axis];
  if (!law && !optima.length) {
    noChart(
      box,
      note,
      "No " +
        label.split(" [")[0] +
        " optimum at any scale" +
        (why ? ": " + why : "") +
        ". To get one: " +
        FIX[axis] +
        ".",
    );
    return;
  }
  const xVar = lawXVar(law);
  const cv = state.curves[axis];
  const others = law ? law.variables.filter(v => v !== xVar) : [];
  // The other variables: the API's reference values (the target's, else the proxies' geometric centre).
  const ref = cv ? cv.fixed : {};
  const refFromTarget = {};
  for (const v of others) if (state.target && state.target[v] > 0) refFromTarget[v] = true;
  // Where the drawn curve passes at a point's x: the fixed variables, with compute = 6·N·D moving
  // with N or D (and, along compute, D = C / 6N), as the API evaluates the curve.
  const onCurve = vars => {
    const t = Object.assign({}, ref, { [xVar]: vars[xVar] });
    if (xVar === "compute") t.tokens = vars.compute / (6 * ref.n_params);
    t.compute = 6 * t.n_params * t.tokens;
    if (t.width > 0 && t.depth > 0) t.aspect = t.width / t.depth;
    return t;
  };
  const adjust = vars => {
    const t = onCurve(vars);
    return others.reduce((f, v) => f * (t[v] > 0 ? Math.pow(t[v] / vars[v], law.exponents[v].value) : 1), 1);
  };
  const points = [];
  for (const o of optima) {
    const vars = scaleVars(o.scale),
      s = scales.byKey.get(scaleKey(o.scale));
    const f = law ? adjust(vars) : 1;
    const iv = o[axis];
    points.push({
      x: vars[xVar],
      y: iv.value * f,
      lo: iv.low * f,
      hi: iv.high * f,
      color: s ? s.color : "#444",
      marker: iv.status && iv.status !== "bracketed" ? "ring" : "circle",
      r: 4,
      title:
        (s ? s.label : scaleLabel(o.scale)) +
        "\n" +
        sym +
        " = " +
        fmtInterval(iv) +
        (iv.status ? " (" + iv.status + ")" : "") +
        (f !== 1
          ? "\nplotted ×" +
            fmt(f) +
            " (rescaled to the reference " +
            others
              .filter(v => v in ref)
              .map(v => v + "=" + human(ref[v]))
              .join(", ") +
            ")"
          : "") +
        "\n" +
        o.n_runs +
        " runs",
    });
  }
  const series = [
    {
      name: "per-scale optimum (90% interval; ring = not bracketed)",
      color: "#2b4c7e",
      role: "data",
      points,
      looseIntervals: true,
    },
  ];
  const tx = state.target ? state.target[xVar] : undefined;
  if (law && cv && cv.x_variable === xVar) {
    series.push({
      name: "90% band (the recommendation's interval at each point)",
      color: "#e07b39",
      role: "band",
      band: cv.x.map((x, i) => [x, cv.low[i], cv.high[i]]),
    });
    series.push({
      name:
        "fitted law: " +
        sym +
        " = " +
        fmt(law.coefficient) +
        law.variables.map(v => "·" + v + "^" + fmt(law.exponents[v].value, 3)).join(""),
      color: "#e07b39",
      role: "law",
      line: cv.x.map((x, i) => [x, cv.value[i]]),
      width: 2,
    });
    if (cv.prior) {
      series.push({
        name:
          "prior: published exponents (" +
          Object.entries(cv.prior.exponents)
            .map(([v, p]) => v + "^" + fmt(p.mean, 3) + "±" + fmt(p.sd, 2))
            .join(", ") +
          "), anchored at the data's centre",
        color: "#6b7280",
        role: "guide",
        dash: "5 4",
        width: 1.4,
        line: cv.x.map((x, i) => [x, cv.prior.value[i]]),
      });
    }
  }
  if (state.rec && state.target && tx > 0) {
    const iv = state.rec[axis];
    if (iv && iv.value > 0)
      series.push({
        name: "target (recommendation, 90% interval)",
        color: "#d62728",
        role: "target",
        marker: "star",
        points: [
          {
            x: tx,
            y: iv.value,
            lo: iv.low,
            hi: iv.high,
            r: 4,
            title: "target " + scaleLabel(state.target) + "\n" + sym + " = " + fmtInterval(iv),
          },
        ],
      });
  }
  const yFormat = axis === "batch_size" ? v => fmt(v, 2) : lrFormat;
  // What the points' colours mean: one per scale (the same colours as the loss landscape's panels).
  const keyed = new Map();
  for (const o of optima) {
    const sc = scales.byKey.get(scaleKey(o.scale));
    if (sc) keyed.set(sc.key, { color: sc.color, label: sc.label });
  }
  Charts.plot(box, {
    x: { label: VAR_LABEL[xVar], log: true, format: countFormat },
    y: { label: label, log: true, format: yFormat },
    series,
    colorKey: { title: "point colour = scale:", items: [...keyed.values()] },
    empty: "No optimum of " + label.split(" [")[0] + " at any scale.",
  });
  box.dataset.xVariable = xVar;
  const moved = law
    ? law.variables
        .filter(v => law.exponents[v].prior)
        .map(v => {
          const e = law.exponents[v];
          return (
            v +
            " exponent " +
            fmt(e.value, 3) +
            " vs prior " +
            fmt(e.prior.mean, 3) +
            " (moved " +
            fmt(e.shift, 2) +
            " prior sd; " +
            Math.round(100 * e.data_share) +
            "% from the data)"
          );
        })
    : [];
  note.textContent = law
    ? law.form +
      " · R² " +
      fmt(law.r2, 3) +
      " · leave-one-scale-out error " +
      (law.cv_error == null
        ? "—"
        : fmt(law.cv_error, 3) + " (natural-log units: ×" + fmt(Math.exp(law.cv_error), 3) + " typical factor)") +
      (others.length
        ? " · other variables at " +
          others
            .filter(v => v in ref)
            .map(v => v + " = " + human(ref[v]) + (refFromTarget[v] ? " (target)" : " (proxies' geometric mean)"))
            .join(", ") +
          (others.includes("compute") && xVar !== "compute" ? "; compute = 6·N·D moves along the curve" : "")
        : "") +
      (moved.length ? " · Prior vs data: " + moved.join("; ") : "")
    : "No law for " + label.split(" [")[0] + (why ? ": " + why : "") + ". To get one: " + FIX[axis] + ".";
}

export function renderLossLaw() {
  const box = document.getElementById("chart-loss-law");
  const note = document.getElementById("loss-law-note");
  const fit = state.fit;
  if (!fit) {
    Charts.plot(box, { x: { label: "" }, y: { label: "" }, series: [], empty: "No fit yet." });
    note.textContent = "";
    return;
  }
  const law = fit.loss_law;
  const optima = (fit.optima || []).filter(o => o.loss != null && isFinite(o.loss));
  const ns = [...new Set(optima.map(o => o.scale.n_params))].sort((a, b) => a - b);
  const colors = Charts.palette(ns.length);
  const colorOfN = n => colors[ns.indexOf(n)];
  const series = [
    {
      name: "best loss per scale",
      color: "#2b4c7e",
      role: "data",
      points: optima.map(o => ({
        x: o.scale.tokens,
        y: o.loss,
        color: colorOfN(o.scale.n_params),
        r: 4,
        title: scaleLabel(o.scale) + "\nbest loss " + fmt(o.loss, 4),
      })),
    },
  ];
  const curves = (state.common && state.common.loss_law) || [];
  if (law && curves.length) {
    // One curve per model size N, from the API (with the law's 90% bootstrap band).
    curves.forEach(c => {
      const color = colorOfN(c.n_params) || "#d62728";
      series.push({
        name: "law at N=" + human(c.n_params),
        color,
        role: "law",
        line: c.tokens.map((d, k) => [d, c.value[k]]),
        width: 1.6,
      });
      series.push({
        name: null,
        legend: false,
        color,
        role: "band",
        opacity: 0.1,
        band: c.tokens.map((d, k) => [d, c.low[k], c.high[k]]),
      });
    });
    if (state.target && state.target.n_params && state.target.tokens) {
      const pl = state.rec && state.rec.predicted_loss;
      if (pl)
        series.push({
          name: "target (predicted loss)",
          color: "#d62728",
          role: "target",
          marker: "star",
          points: [
            {
              x: state.target.tokens,
              y: pl.value,
              lo: pl.low,
              hi: pl.high,
              title: "target " + scaleLabel(state.target) + "\npredicted loss " + fmtInterval(pl),
            },
          ],
        });
    }
  }
  Charts.plot(box, {
    x: { label: "training tokens D [tokens]", log: true, format: countFormat },
    y: { label: "best final loss [nats/token]", log: false },
    series,
    colorKey: {
      title: "point colour = model size:",
      items: ns.map(n => ({ color: colorOfN(n), label: "N=" + human(n) })),
    },
    empty: "No per-scale optimum to plot.",
  });
  note.textContent = law
    ? law.form +
      " with " +
      Object.entries(law.params)
        .map(([k, v]) => k + " = " + fmt(typeof v === "object" ? v.value : v, 3))
        .join(", ") +
      ". One line per model size N; points coloured by N."
    : "No loss law in this fit.";
}
