/* One study at `/studies/{name}`: summary, recommendation form, plots, fit diagnostics, runs.
 * Everything comes from the /v1 API with the token in session storage. */
import { renderLandscape, renderHeatmap, scaleOptions, defaultHeatScale, scaleKey, scaleLabel } from "./landscape.js";
import { fitStateChip } from "./runstates.js";

{
  const { api, ApiError, el, clear, fmt, human, fmtInterval, fmtDate, banner, describeError } = HP;

  // How many runs the loss-vs-LR plot loads at most (pages of 1000). A study with more
  // runs shows the first PLOT_RUN_CAP and says so; the optimum plots use the fit's
  // per-scale optima, which summarise all runs.
  const PLOT_PAGE = 1000;
  const PLOT_RUN_CAP = 10000;
  const AXES = [
    ["learning_rate", "learning rate (peak)", "lr*"],
    ["batch_size", "batch size [sequences]", "bs*"],
    ["weight_decay", "weight decay (AdamW coefficient)", "wd*"],
  ];
  const VAR_LABEL = {
    n_params: "parameters N [count]",
    tokens: "training tokens D [tokens]",
    width: "width [d_model]",
    depth: "depth [layers]",
    compute: "compute 6·N·D [FLOPs]",
  };

  const name = decodeURIComponent(location.pathname.replace(/^\/studies\//, "").replace(/\/+$/, ""));
  const base = "/v1/studies/" + encodeURIComponent(name);
  const state = {
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

  document.title = "hpscale · " + name;
  document.getElementById("crumb-study").textContent = name;
  document.getElementById("study-name").textContent = name;

  // --- scales --------------------------------------------------------------------------
  const scaleVars = sc => ({
    n_params: sc.n_params,
    tokens: sc.tokens,
    width: sc.width,
    depth: sc.depth,
    compute: 6 * sc.n_params * sc.tokens,
  });

  /** Every scale seen in the runs and the fit, sorted by size, with one colour each. */
  function scaleTable() {
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
    loadRunsPage(true); // the table does not wait for the plots
    const runsPromise = loadPlotRuns();
    await loadFit();
    renderCharts(); // optima and laws at once; the loss-vs-LR plot fills in as its pages arrive
    await runsPromise;
    renderLossVsLr(scaleTable());
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
      state.states = (await api(base + "/fits/" + f.id + "/run-states")).states;
    } catch (e) {
      state.states = {};
    }
  }

  async function loadFit(id) {
    try {
      state.fit = await api(base + "/fits/" + (id == null ? "latest" : encodeURIComponent(id)));
    } catch (e) {
      state.fit = null;
      if (!(e instanceof ApiError && e.status === 404)) banner(describeError(e));
    }
    renderFitStatus();
    renderDiagnostics();
    await loadCurves();
    renderRunsBody();
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

  // --- recommendation ------------------------------------------------------------------
  const REC_FIELDS = ["n_params", "tokens", "width", "depth", "batch_size", "batch_multiple", "compute"];
  const INT_FIELDS = new Set(["width", "depth", "batch_size", "batch_multiple"]);

  document.getElementById("rec-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = clear(document.getElementById("rec-result"));
    const query = {},
      problems = [];
    for (const f of REC_FIELDS) {
      const raw = document
        .getElementById("rec-" + f)
        .value.trim()
        .replace(/_/g, "");
      if (!raw) continue;
      const v = Number(raw);
      if (!isFinite(v) || v <= 0 || (INT_FIELDS.has(f) && !Number.isInteger(v))) {
        problems.push(f + " must be a positive " + (INT_FIELDS.has(f) ? "integer" : "number"));
      } else query[f] = raw;
    }
    if (problems.length) {
      out.append(el("p", { class: "error-text", text: problems.join("; ") }));
      return;
    }
    const btn = document.getElementById("rec-submit");
    btn.disabled = true;
    out.append(el("p", { class: "muted", text: "Asking the service (it refits first when the runs changed)…" }));
    try {
      const rec = await api(base + "/recommendation", { query });
      state.rec = rec;
      const t = {};
      for (const f of ["n_params", "tokens", "width", "depth"]) if (query[f]) t[f] = Number(query[f]);
      if (t.n_params && t.tokens) t.compute = 6 * t.n_params * t.tokens;
      if (query.compute) t.compute = Number(query.compute);
      state.target = t;
      renderRecommendation(rec);
      if (!state.fit || state.fit.id !== rec.fit_id) {
        await loadFit(rec.fit_id);
        state.study = await api(base).catch(() => state.study);
        renderSummary();
        renderFitStatus();
      } else {
        await loadCurves();
      }
      renderCharts();
    } catch (e) {
      clear(out).append(el("p", { class: "error-text", role: "alert", text: describeError(e) }));
    } finally {
      btn.disabled = false;
    }
  });

  function renderRecommendation(r) {
    const out = clear(document.getElementById("rec-result"));
    const ext = r.extrapolation || {};
    const main = el("div", { class: "rec-main" });
    const tile = (label, iv, id, f = fmt) =>
      el(
        "div",
        { class: "tile", id, "data-value": iv && typeof iv === "object" ? iv.value : iv },
        el("div", { class: "tile-label", text: label }),
        el("div", { class: "tile-value", text: iv == null ? "—" : f(typeof iv === "object" ? iv.value : iv) }),
        iv && typeof iv === "object"
          ? el("div", { class: "tile-range", text: "90%: " + f(iv.low) + " – " + f(iv.high) })
          : null,
      );
    main.append(
      tile("Learning rate (peak)", r.learning_rate, "rec-lr"),
      tile("Batch size [sequences]", r.batch_size, "rec-bs", v => fmt(Math.round(v))),
      tile("Batch [tokens]", r.batch_tokens, "rec-bt", human),
      tile("Weight decay", r.weight_decay, "rec-wd"),
      tile("Predicted loss", r.predicted_loss, "rec-loss"),
    );
    out.append(main);
    const levelClass = ext.level === "interpolation" ? "ok" : ext.level === "far" ? "bad" : "warn";
    out.append(
      el(
        "p",
        null,
        el("span", { class: "pill " + levelClass, text: ext.level || "?" }),
        " target is " +
          (ext.factor != null ? fmt(ext.factor) + "× " : "") +
          "beyond the proxies' range · fit #" +
          r.fit_id +
          " · data version " +
          r.data_version,
      ),
    );
    if (r.warnings && r.warnings.length)
      out.append(
        el(
          "ul",
          { class: "warnings" },
          r.warnings.map(w => el("li", { text: w })),
        ),
      );

    // baselines: the fitted answer next to published laws
    const bl = r.baselines || {};
    const names = Object.keys(bl);
    if (names.length) {
      const tb = el("tbody");
      tb.append(
        el(
          "tr",
          { class: "ours" },
          el("td", { text: "this study's fit" }),
          el("td", { class: "num", text: fmt(r.learning_rate && r.learning_rate.value) }),
          el("td", { class: "num", text: r.batch_size ? fmt(Math.round(r.batch_size.value)) : "—" }),
          el("td", { class: "num", text: human(r.batch_tokens) }),
          el("td", { text: "" }),
        ),
      );
      for (const k of names) {
        const b = bl[k] || {};
        const ok = b.available !== false && (b.learning_rate != null || b.batch_tokens != null || b.batch_size != null);
        tb.append(
          el(
            "tr",
            { "data-baseline": k },
            el("td", { title: b.source || null, text: k.replace(/_/g, " ") }),
            el("td", { class: "num", text: ok ? fmt(b.learning_rate) : "—" }),
            el("td", { class: "num", text: ok && b.batch_size != null ? fmt(Math.round(b.batch_size)) : "—" }),
            el("td", { class: "num", text: ok ? human(b.batch_tokens) : "—" }),
            el("td", {
              class: "small",
              text: ok
                ? [
                    b.form,
                    b.in_fitted_range === false ? "target outside its fitted range" : "",
                    (b.missing || []).length ? "missing: " + b.missing.join(", ") : "",
                  ]
                    .filter(Boolean)
                    .join(" · ")
                : "unavailable: " +
                  (b.reason || "") +
                  ((b.missing || []).length ? " (missing " + b.missing.join(", ") + ")" : ""),
            }),
          ),
        );
      }
      out.append(
        el("h3", { text: "Baselines" }),
        el(
          "div",
          { class: "table-wrap" },
          el(
            "table",
            { class: "data compact", id: "rec-baselines" },
            el(
              "thead",
              null,
              el(
                "tr",
                null,
                el("th", { text: "Source" }),
                el("th", { class: "num", text: "Learning rate" }),
                el("th", { class: "num", text: "Batch [seq.]" }),
                el("th", { class: "num", text: "Batch [tokens]" }),
                el("th", { text: "Notes" }),
              ),
            ),
            tb,
          ),
        ),
      );
    }
    if (r.per_layer && typeof r.per_layer === "object") {
      const det = el("details", { class: "per-layer" }, el("summary", { text: "Per-layer settings" }));
      det.append(kvTable(r.per_layer));
      out.append(det);
    }
  }

  /** A nested object as a two-column table (values as text). */
  function kvTable(obj) {
    const tb = el("tbody");
    const walk = (o, prefix) => {
      for (const [k, v] of Object.entries(o)) {
        const key = prefix ? prefix + "." + k : k;
        if (v && typeof v === "object" && !Array.isArray(v)) walk(v, key);
        else
          tb.append(
            el(
              "tr",
              null,
              el("td", { text: key }),
              el("td", {
                class: "num",
                text:
                  typeof v === "number"
                    ? fmt(v)
                    : Array.isArray(v)
                      ? v.map(x => (typeof x === "number" ? fmt(x) : String(x))).join(", ")
                      : String(v),
              }),
            ),
          );
      }
    };
    walk(obj, "");
    return el("div", { class: "table-wrap" }, el("table", { class: "data compact" }, tb));
  }

  // --- charts --------------------------------------------------------------------------
  function renderCharts() {
    const scales = scaleTable();
    renderLossVsLr(scales);
    for (const [axis, label, sym] of AXES) renderOptimum(axis, label, sym, scales);
    renderLossLaw();
  }

  const lrFormat = v => {
    const e = Math.floor(Math.log10(v) + 1e-9);
    return Number((v / Math.pow(10, e)).toPrecision(2)) + "e" + e;
  };
  const countFormat = v => human(v);

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
        await loadCurves();
        renderCharts();
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
  function lawXVar(law) {
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

  function renderOptimum(axis, label, sym, scales) {
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
    const adjust = vars =>
      others.reduce((f, v) => f * (ref[v] > 0 ? Math.pow(ref[v] / vars[v], law.exponents[v].value) : 1), 1);
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
              others.map(v => v + "=" + human(ref[v])).join(", ") +
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
    Charts.plot(box, {
      x: { label: VAR_LABEL[xVar], log: true, format: countFormat },
      y: { label: label, log: true, format: yFormat },
      series,
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
        (law.cv_error == null ? "—" : fmt(law.cv_error, 3) + " (log units)") +
        (others.length
          ? " · other variables at " +
            others
              .map(v => v + " = " + human(ref[v]) + (refFromTarget[v] ? " (target)" : " (proxies' geometric mean)"))
              .join(", ")
          : "") +
        (moved.length ? " · Prior vs data: " + moved.join("; ") : "")
      : "No law for " + label.split(" [")[0] + (why ? ": " + why : "") + ". To get one: " + FIX[axis] + ".";
  }

  function renderLossLaw() {
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

  // --- diagnostics ---------------------------------------------------------------------
  function renderDiagnostics() {
    const body = clear(document.getElementById("diag-body"));
    const fit = state.fit;
    if (!fit) {
      body.className = "muted";
      body.textContent = "No fit yet.";
      return;
    }
    body.className = "";
    body.append(
      el("p", {
        class: "muted small",
        text:
          "Fit #" +
          fit.id +
          " · " +
          (fit.n_runs ?? "?") +
          " runs · " +
          (fit.optima || []).length +
          " scales · data version " +
          fit.data_version +
          (fit.bootstrap != null ? " · " + fit.bootstrap + " bootstrap resamples" : "") +
          " · " +
          fmtDate(fit.created_at),
      }),
    );

    // laws
    const tb = el("tbody");
    for (const [axis, label] of AXES) {
      const law = (fit.laws || {})[axis];
      if (!law) {
        const why = (fit.missing_laws || {})[axis] || "not fitted";
        tb.append(
          el(
            "tr",
            { "data-law": axis, class: "missing" },
            el("td", { text: label }),
            el("td", { colspan: 5, class: "muted", text: "no law — " + why }),
          ),
        );
        continue;
      }
      tb.append(
        el(
          "tr",
          { "data-law": axis },
          el("td", { text: label }),
          el("td", { text: law.form }),
          el("td", { class: "num", text: fmt(law.coefficient) }),
          el(
            "td",
            null,
            law.variables.map(v =>
              el("div", { class: "nowrap", text: v + ": " + fmtInterval(law.exponents[v], x => fmt(x, 3)) }),
            ),
          ),
          el("td", { class: "num", text: fmt(law.r2, 3) }),
          el("td", { class: "num", text: law.cv_error == null ? "—" : fmt(law.cv_error, 3) }),
        ),
      );
    }
    body.append(
      el("h3", { text: "Laws" }),
      el(
        "div",
        { class: "table-wrap" },
        el(
          "table",
          { class: "data compact", id: "diag-laws" },
          el(
            "thead",
            null,
            el(
              "tr",
              null,
              ["Hyperparameter", "Form", "Coefficient", "Exponents (90% interval)", "R²", "Backtest error*"].map(h =>
                el("th", { text: h }),
              ),
            ),
          ),
          tb,
        ),
      ),
      el("p", {
        class: "muted small",
        text: "* leave-one-scale-out error of the law in log units (0.1 ≈ 10% off at a held-out scale).",
      }),
    );

    if (fit.loss_law) {
      const ll = fit.loss_law;
      body.append(
        el("h3", { text: "Loss law" }),
        el("p", null, el("code", { text: ll.form })),
        el(
          "div",
          { class: "table-wrap" },
          el(
            "table",
            { class: "data compact kv", id: "diag-loss-law" },
            el(
              "tbody",
              null,
              Object.entries(ll.params || {}).map(([k, v]) =>
                el("tr", null, el("td", { text: k }), el("td", { class: "num", text: fmtInterval(v, x => fmt(x, 4)) })),
              ),
            ),
          ),
        ),
      );
    }

    const warnings = [...(fit.warnings || []), ...((fit.loss_law && fit.loss_law.warnings) || [])];
    body.append(
      el("h3", { text: "Warnings" }),
      warnings.length
        ? el(
            "ul",
            { class: "warnings", id: "diag-warnings" },
            warnings.map(w => el("li", { text: w })),
          )
        : el("p", { class: "muted", text: "None." }),
    );

    // per-scale optima
    const ob = el("tbody");
    for (const o of fit.optima || []) {
      const cell = iv =>
        el("td", {
          class: "num",
          text: iv ? fmtInterval(iv) + (iv.status && iv.status !== "bracketed" ? " · " + iv.status : "") : "—",
        });
      ob.append(
        el(
          "tr",
          null,
          el("td", { text: scaleLabel(o.scale) }),
          el("td", { class: "num", text: String(o.n_runs) }),
          el("td", { class: "num", text: o.n_diverged == null ? "—" : String(o.n_diverged) }),
          cell(o.learning_rate),
          cell(o.batch_size),
          cell(o.weight_decay),
          el("td", { class: "num", text: fmt(o.loss, 4) }),
          el("td", { class: "small", text: (o.flags || []).join(", ") }),
        ),
      );
    }
    body.append(
      el(
        "details",
        { class: "optima" },
        el("summary", { text: "Per-scale optima (" + (fit.optima || []).length + ")" }),
        el(
          "div",
          { class: "table-wrap" },
          el(
            "table",
            { class: "data compact" },
            el(
              "thead",
              null,
              el(
                "tr",
                null,
                [
                  "Scale",
                  "Runs",
                  "Diverged",
                  "Learning rate",
                  "Batch size [seq.]",
                  "Weight decay",
                  "Loss",
                  "Flags",
                ].map(h => el("th", { text: h })),
              ),
            ),
            ob,
          ),
        ),
      ),
    );
  }

  // --- runs table (server-side paging and filters; client-side sort within the page) ---
  const RUN_COLUMNS = [
    ["id", "ID", true],
    ["run_key", "Run key", false],
    ["fit_state", "In the fit", false],
    ["n_params", "Params", true],
    ["tokens", "Tokens", true],
    ["width", "Width", true],
    ["depth", "Depth", true],
    ["learning_rate", "LR", true],
    ["batch_size", "Batch [seq.]", true],
    ["weight_decay", "WD", true],
    ["final_loss", "Final loss", true],
    ["action", "", false],
  ];
  const runsState = { cursors: [null], index: 0, next: null, items: [], sort: null, dir: 1, filters: {} };

  function buildRunsHead() {
    const tr = clear(document.querySelector("#runs-table thead tr"));
    for (const [key, label, num] of RUN_COLUMNS) {
      const th = el("th", {
        class: num ? "num" : null,
        "data-col": key,
        "aria-sort": runsState.sort === key ? (runsState.dir > 0 ? "ascending" : "descending") : "none",
      });
      if (key === "action") th.textContent = label;
      else
        th.append(
          el(
            "button",
            {
              type: "button",
              class: "sort",
              title: "sort this page by " + label,
              onclick: () => {
                runsState.dir = runsState.sort === key ? -runsState.dir : 1;
                runsState.sort = key;
                buildRunsHead();
                renderRunsBody();
              },
            },
            label,
            el("span", { class: "arrow", text: runsState.sort === key ? (runsState.dir > 0 ? " ▲" : " ▼") : "" }),
          ),
        );
      tr.append(th);
    }
  }

  function renderRunsBody() {
    const body = clear(document.querySelector("#runs-table tbody"));
    const rows = runsState.items.slice();
    if (runsState.sort) {
      const k = runsState.sort,
        d = runsState.dir;
      rows.sort((a, b) => {
        const x = a[k],
          y = b[k];
        if (x == null && y == null) return 0;
        if (x == null) return 1;
        if (y == null) return -1;
        return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * d;
      });
    }
    const want = document.getElementById("filter-state").value;
    const stateOf = r => (r.excluded ? "excluded" : state.states[String(r.id)]);
    const shown = want ? rows.filter(r => stateOf(r) === want) : rows;
    document.getElementById("runs-table").dataset.shownCount = String(shown.length);
    if (!shown.length) {
      body.append(el("tr", null, el("td", { colspan: RUN_COLUMNS.length, class: "muted", text: "No runs match." })));
    }
    for (const r of shown) {
      const st = stateOf(r);
      const title =
        "status " +
        r.status +
        " · created " +
        fmtDate(r.created_at) +
        (r.extra
          ? "\n" +
            Object.entries(r.extra)
              .map(([k, v]) => k + "=" + (typeof v === "number" ? fmt(v) : v))
              .join("; ")
          : "") +
        (r.excluded_reason ? "\nexcluded: " + r.excluded_reason : "");
      body.append(
        el(
          "tr",
          { class: "status-" + (r.status || "completed") + " state-" + (st || "none"), "data-run-id": r.id, title },
          el("td", { class: "num", text: r.id }),
          el("td", { class: "key", title: r.run_key || null, text: r.run_key || "—" }),
          el("td", null, fitStateChip(st)),
          el("td", { class: "num", text: human(r.n_params) }),
          el("td", { class: "num", text: human(r.tokens) }),
          el("td", { class: "num", text: r.width ?? "—" }),
          el("td", { class: "num", text: r.depth ?? "—" }),
          el("td", { class: "num", text: fmt(r.learning_rate) }),
          el("td", { class: "num", text: r.batch_size }),
          el("td", { class: "num", text: fmt(r.weight_decay ?? 0) }),
          el("td", { class: "num", text: r.final_loss == null ? "—" : fmt(r.final_loss, 4) }),
          el("td", { class: "action" }, actionButton(r)),
        ),
      );
    }
  }

  /** Exclude (with a reason) or include a run: the contract 1.1 endpoints, write scope. */
  function actionButton(r) {
    if (r.excluded) {
      return el(
        "button",
        { type: "button", class: "secondary small-btn include", onclick: () => setExcluded(r, false) },
        "Include",
      );
    }
    return el(
      "button",
      {
        type: "button",
        class: "secondary small-btn exclude",
        onclick: ev => {
          const cell = clear(ev.currentTarget.parentNode);
          const input = el("input", {
            class: "reason",
            placeholder: "reason",
            "aria-label": "reason to exclude run " + r.id,
          });
          const form = el("form", { class: "exclude-form" }, input, el("button", { type: "submit" }, "OK"));
          form.addEventListener("submit", e => {
            e.preventDefault();
            setExcluded(r, true, input.value.trim());
          });
          cell.append(form);
          input.focus();
        },
      },
      "Exclude",
    );
  }

  async function setExcluded(r, exclude, reason) {
    const info = document.getElementById("runs-page");
    if (exclude && !reason) {
      info.textContent = "Give a reason to exclude run " + r.id + ".";
      return;
    }
    try {
      await api(base + "/runs/" + r.id + (exclude ? "/exclude" : "/include"), {
        method: "POST",
        body: exclude ? { reason } : {},
      });
      info.textContent =
        "Run " +
        r.id +
        (exclude ? " excluded" : " included") +
        "; the next fit " +
        (exclude ? "leaves it out." : "uses it.");
      state.study = await api(base);
      renderSummary();
      renderFitStatus();
      await loadRunsPage(false);
    } catch (e) {
      info.textContent = describeError(e);
    }
  }

  async function loadRunsPage(reset) {
    if (reset) {
      runsState.cursors = [null];
      runsState.index = 0;
    }
    const info = document.getElementById("runs-page");
    info.textContent = "Loading…";
    try {
      const page = await api(base + "/runs", {
        query: Object.assign({ cursor: runsState.cursors[runsState.index] }, runsState.filters),
      });
      runsState.items = page.items;
      runsState.next = page.next_cursor;
    } catch (e) {
      runsState.items = [];
      runsState.next = null;
      info.textContent = describeError(e);
      renderRunsBody();
      return;
    }
    buildRunsHead();
    renderRunsBody();
    const lim = Number(runsState.filters.limit || 100);
    const from = runsState.index * lim + 1;
    info.textContent = runsState.items.length
      ? "Page " +
        (runsState.index + 1) +
        " · runs " +
        from.toLocaleString("en-US") +
        "–" +
        (from + runsState.items.length - 1).toLocaleString("en-US") +
        (Object.keys(runsState.filters).some(k => k !== "limit")
          ? " (filtered)"
          : " of " + Number(state.study ? state.study.run_count : 0).toLocaleString("en-US"))
      : "No runs";
    document.getElementById("runs-prev").disabled = runsState.index === 0;
    document.getElementById("runs-next").disabled = !runsState.next;
    document.getElementById("runs-table").dataset.rowCount = String(runsState.items.length);
  }

  document.getElementById("filter-state").addEventListener("change", () => renderRunsBody());
  document.getElementById("runs-next").addEventListener("click", () => {
    if (!runsState.next) return;
    runsState.cursors = runsState.cursors.slice(0, runsState.index + 1).concat([runsState.next]);
    runsState.index++;
    loadRunsPage(false);
  });
  document.getElementById("runs-prev").addEventListener("click", () => {
    if (runsState.index === 0) return;
    runsState.index--;
    loadRunsPage(false);
  });
  document.getElementById("runs-filter").addEventListener("submit", ev => {
    ev.preventDefault();
    const f = {};
    const status = document.getElementById("filter-status").value;
    const width = document.getElementById("filter-width").value.trim();
    const depth = document.getElementById("filter-depth").value.trim();
    const info = document.getElementById("runs-page");
    for (const [k, v] of [
      ["width", width],
      ["depth", depth],
    ]) {
      if (!v) continue;
      if (!/^[1-9][0-9]{0,8}$/.test(v)) {
        info.textContent = k + " must be a positive integer";
        return;
      }
      f[k] = v;
    }
    if (status) f.status = status;
    const excl = document.getElementById("filter-excluded").value;
    if (excl) f.excluded = excl;
    f.limit = document.getElementById("filter-limit").value;
    runsState.filters = f;
    loadRunsPage(true);
  });

  HP.initTokenForm(loadAll);
  loadAll();
}
