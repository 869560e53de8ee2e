/* One study at `/studies/{name}` (ES module): loads the study, its latest fit, the fit's curves
 * and run states, and the runs, and wires the views: summary and fit status (here),
 * recommend.js, laws.js, landscape.js, diagnostics.js, runs.js. Everything comes from the /v1
 * API with the token in session storage; the page computes no statistics. */
import { renderLandscape, renderHeatmap, scaleOptions, defaultHeatScale } from "./landscape.js";
import { name, base, state, hooks, AXES, axesOf, PLOT_PAGE, PLOT_RUN_CAP, scaleTable } from "./studystate.js";
import { lawXVar, renderOptimum, renderLossLaw } from "./laws.js";
import { renderDiagnostics } from "./diagnostics.js";
import { loadRunsPage } from "./runs.js";
import "./recommend.js";
import "./transfer.js";

const { api, ApiError, el, clear, fmtDate, banner, describeError } = HP;

document.title = "hpscale · " + name;
document.getElementById("crumb-study").textContent = name;
document.getElementById("study-name").textContent = name;

// --- loading -------------------------------------------------------------------------
async function loadAll() {
  banner(null);
  try {
    state.study = await api(base);
  } catch (e) {
    if (e.status === 404) {
      notFound();
      return;
    }
    banner(describeError(e));
    document.getElementById("fit-status-text").textContent = "Could not load the study.";
    return;
  }
  renderSummary();
  if (!state.study.run_count) {
    emptyStudy();
    return;
  }
  loadRunsPage(true); // the table does not wait for the plots
  const runsPromise = loadPlotRuns();
  await loadFit(state.study.latest_fit_id);
  if (hooks.transferCheck) hooks.transferCheck();
  renderCharts(); // optima and laws at once; the loss-vs-LR plot fills in as its pages arrive
  await runsPromise;
  renderLossVsLr(scaleTable());
}

/** A study without runs: how to add some, instead of empty cards and buttons that can only fail. */
function emptyStudy() {
  for (const id of ["recommend", "transfer", "diagnostics", "runs"]) {
    const section = document.getElementById(id);
    if (section) section.hidden = true;
  }
  document.querySelector(".charts").hidden = true;
  document.getElementById("fit-now").hidden = true;
  document.getElementById("fit-status-text").textContent = "No runs, so no fit.";
  const card = document.getElementById("empty-study");
  for (const span of card.querySelectorAll(".study-name-here")) span.textContent = name;
  card.hidden = false;
}

/** An unknown study: one explanation instead of a page of empty charts. */
function notFound() {
  document.title = "hpscale · no study " + name;
  for (const sec of document.querySelectorAll("main.page > section")) sec.hidden = true;
  const card = document.getElementById("not-found");
  card.hidden = false;
  document.getElementById("not-found-name").textContent = name;
}

/** Curves of the current fit from the API: one request per law (its own x variable) and the
 * bowls / loss-law curves. The target's variables fix the others when there is a target. */
async function loadCurves() {
  state.curves = {};
  state.common = null;
  const f = state.fit;
  if (!f) return;
  const fixed = {};
  for (const v of ["n_params", "tokens", "width", "depth"])
    if (state.target && state.target[v] > 0) fixed[v] = state.target[v];
  const url = base + "/fits/" + f.id + "/curves";
  try {
    state.common = await api(url, { query: Object.assign({ points: 40, law: "learning_rate" }, fixed) });
    for (const [axis] of AXES) {
      const law = (f.laws || {})[axis];
      if (!law) continue;
      const xVar = lawXVar(law);
      const q = Object.assign({ law: axis, x: xVar, points: 60 }, fixed);
      const tx = state.target && state.target[xVar];
      if (tx > 0) {
        q.x_min = tx;
        q.x_max = tx;
      }
      state.curves[axis] = (await api(url, { query: q })).laws[axis];
    }
  } catch (e) {
    banner(describeError(e));
  }
  try {
    const rs = await api(base + "/fits/" + f.id + "/run-states");
    state.states = rs.states;
    state.stateCounts = rs.counts;
  } catch (e) {
    state.states = {};
    state.stateCounts = null;
  }
}

/** The fit `id` (the study's latest_fit_id: none means no fit, and nothing is asked for). */
async function loadFit(id) {
  state.fit = null;
  if (id != null) {
    try {
      state.fit = await api(base + "/fits/" + encodeURIComponent(id));
    } catch (e) {
      if (!(e instanceof ApiError && (e.status === 404 || e.status === 410))) banner(describeError(e));
    }
  }
  renderFitStatus();
  renderDiagnostics();
  await loadCurves();
  // A newer fit than the one the table was listed with (a recommendation refitted): its states.
  if (state.fitShown !== undefined && state.fitShown !== id) await loadRunsPage(false);
  state.fitShown = id;
}

async function loadPlotRuns() {
  const runs = [];
  let cursor = null;
  try {
    do {
      const page = await api(base + "/runs", { query: { limit: PLOT_PAGE, cursor } });
      runs.push(...page.items);
      cursor = page.next_cursor;
      if (cursor && runs.length === page.items.length) {
        // first page of several: draw it now
        state.runs = runs.slice();
        state.runsTruncated = true;
        state.runsLoading = true;
        renderLossVsLr(scaleTable());
      }
    } while (cursor && runs.length < PLOT_RUN_CAP);
  } catch (e) {
    banner(describeError(e));
  }
  state.runs = runs;
  state.runsTruncated = !!cursor;
  state.runsLoading = false;
}

// --- summary and fit status ----------------------------------------------------------
function renderSummary() {
  const s = state.study;
  document.getElementById("study-description").textContent = s.description || "";
  const facts = clear(document.getElementById("study-facts"));
  const add = (k, v) => facts.append(el("div", null, el("dt", { text: k }), el("dd", { text: v })));
  add("Runs", (s.run_count ?? 0).toLocaleString("en-US"));
  add("Parameterization", s.parameterization || "—");
  add("Optimizer", s.optimizer || "—");
  add("Seq. length", s.seq_len == null ? "—" : s.seq_len + " tokens");
  if (s.base_width != null) add("Base width", String(s.base_width));
  if (s.base_depth != null) add("Base depth", String(s.base_depth));
  add("Data version", String(s.data_version));
  add("Created", fmtDate(s.created_at));
}

function renderFitStatus() {
  const text = document.getElementById("fit-status-text");
  const btn = document.getElementById("fit-now");
  const f = state.fit;
  if (!f) {
    text.textContent =
      "No fit yet: the optimum and law plots appear after a fit " +
      "(needs a write token, or ask for a recommendation, which fits first).";
    btn.hidden = false;
    return;
  }
  const stale = state.study && String(f.data_version) !== String(state.study.data_version);
  text.textContent =
    "Fit #" +
    f.id +
    " of " +
    (f.n_runs ?? "?") +
    " runs, " +
    fmtDate(f.created_at) +
    (stale ? " — out of date: runs changed since (a recommendation refits automatically)." : " — current.");
  text.className = stale ? "warn-text" : "muted";
  btn.hidden = !stale;
}

document.getElementById("fit-now").addEventListener("click", async ev => {
  const btn = ev.currentTarget;
  btn.disabled = true;
  const text = document.getElementById("fit-status-text");
  text.textContent = "Fitting… (a few seconds for a few thousand runs)";
  try {
    state.fit = await api(base + "/fits", { method: "POST", body: {} });
    state.study = await api(base);
    await loadCurves();
    await loadRunsPage(false); // the states of the new fit
    banner(null);
  } catch (e) {
    banner(describeError(e));
  }
  btn.disabled = false;
  renderSummary();
  renderFitStatus();
  renderDiagnostics();
  renderCharts();
});

// --- charts --------------------------------------------------------------------------
function renderCharts() {
  const scales = scaleTable();
  renderLossVsLr(scales);
  for (const [axis, label, sym] of axesOf(state.study)) renderOptimum(axis, label, sym, scales);
  renderLossLaw();
}

function renderLossVsLr() {
  const box = document.getElementById("landscape");
  const bowls = state.common ? state.common.bowls : [];
  renderLandscape(box, state.runs, state.fit, state.states, bowls);
  const note = document.getElementById("landscape-note");
  const total = state.study ? state.study.run_count : state.runs.length;
  note.textContent =
    (state.runsLoading ? "Loading runs… " : "") +
    (state.runsTruncated
      ? "Showing the first " +
        state.runs.length.toLocaleString("en-US") +
        " of " +
        Number(total).toLocaleString("en-US") +
        " runs (plot cap). "
      : "") +
    "One panel per scale; y from the scale's best loss to 8% above it (higher losses ▲ on the top edge, diverged " +
    "runs × there). Runs are marked by how the latest fit used them; the curve is the fitted bowl at the scale's " +
    "optimal batch size, the shaded span the optimum's 90% interval.";
  const sel = document.getElementById("heat-scale");
  const opts = scaleOptions(state.runs, state.fit);
  if (!state.heatPicked || !opts.some(o => o.key === state.heatScale)) {
    // default: the largest swept scale
    state.heatScale = defaultHeatScale(opts);
  }
  clear(sel);
  for (const o of opts) {
    sel.append(
      el("option", { value: o.key, text: o.label + " · " + o.n + " runs", selected: o.key === state.heatScale }),
    );
  }
  renderHeatmap(document.getElementById("heatmap"), state.runs, state.fit, state.states, bowls, state.heatScale);
}

document.getElementById("heat-scale").addEventListener("change", ev => {
  state.heatScale = ev.currentTarget.value;
  state.heatPicked = true;
  renderLossVsLr();
});

function refreshStudy() {
  renderSummary();
  renderFitStatus();
}

Object.assign(hooks, { loadCurves, loadFit, renderCharts, refreshStudy });
HP.initTokenForm(loadAll);
loadAll();
