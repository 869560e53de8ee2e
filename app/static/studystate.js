/* The study page's state (ES module): the study's name and API path, what has been loaded,
 * the scales, and hooks through which a view asks the page to reload or redraw. */
import { scaleKey, scaleLabel } from "./landscape.js";

// How many runs the loss-vs-LR plot loads at most (pages of 1000). A study with more
// runs shows the first PLOT_RUN_CAP and says so; the optimum plots use the fit's
// per-scale optima, which summarise all runs.
export const PLOT_PAGE = 1000;
export const PLOT_RUN_CAP = 10000;
export const AXES = [
  ["learning_rate", "learning rate (peak)", "lr*"],
  ["batch_size", "batch size [sequences]", "bs*"],
  ["weight_decay", "weight decay (coefficient)", "wd*"],
];

/** AXES with the weight-decay label naming the study's optimizer ("AdamW coefficient" only on
 * Adam-type studies: a Muon or Lion study's coefficient is its own optimizer's). */
export function axesOf(study) {
  const opt = ((study && study.optimizer) || "").trim();
  const adam = /^(n?adam|adamw|nadamw|adafactor|lamb)/i.test(opt);
  const wd = adam || !opt ? "weight decay (AdamW coefficient)" : "weight decay (" + opt + " coefficient)";
  return AXES.map(a => (a[0] === "weight_decay" ? [a[0], wd, a[2]] : a));
}
export const VAR_LABEL = {
  n_params: "parameters N [count]",
  tokens: "training tokens D [tokens]",
  width: "width [d_model]",
  depth: "depth [layers]",
  aspect: "aspect ratio width/depth",
  compute: "compute 6·N·D [FLOPs]",
};

export const name = decodeURIComponent(location.pathname.replace(/^\/studies\//, "").replace(/\/+$/, ""));
export const base = "/v1/studies/" + encodeURIComponent(name);
export const state = {
  study: null,
  fit: null,
  runs: [],
  runsTruncated: false,
  rec: null,
  target: null,
  xVar: "n_params",
  heatScale: "",
  curves: {},
  common: null,
  states: {},
};

/** Set by study.js: loadCurves(), loadFit(id), renderCharts(), refreshStudy() (summary and fit status). */
export const hooks = {};

export const scaleVars = sc => ({
  n_params: sc.n_params,
  tokens: sc.tokens,
  width: sc.width,
  depth: sc.depth,
  aspect: sc.width > 0 && sc.depth > 0 ? sc.width / sc.depth : undefined,
  compute: 6 * sc.n_params * sc.tokens,
});

/** Every scale seen in the runs and the fit, sorted by size, with one colour each. */
export function scaleTable() {
  const map = new Map();
  const add = sc => {
    const k = scaleKey(sc);
    if (!map.has(k)) map.set(k, { key: k, scale: sc });
  };
  for (const r of state.runs) add({ n_params: r.n_params, tokens: r.tokens, width: r.width, depth: r.depth });
  for (const o of (state.fit && state.fit.optima) || []) add(o.scale);
  const list = [...map.values()].sort(
    (a, b) =>
      a.scale.n_params - b.scale.n_params ||
      a.scale.tokens - b.scale.tokens ||
      (a.scale.width || 0) - (b.scale.width || 0) ||
      (a.scale.depth || 0) - (b.scale.depth || 0),
  );
  const colors = Charts.palette(list.length);
  list.forEach((s, i) => {
    s.color = colors[i];
    s.label = scaleLabel(s.scale);
  });
  return { list, byKey: new Map(list.map(s => [s.key, s])) };
}
