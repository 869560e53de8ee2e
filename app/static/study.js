/* One study at `/studies/{name}`: summary, recommendation form, plots, fit diagnostics, runs.
 * Everything comes from the /v1 API with the token in session storage. */
"use strict";

(() => {
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
    n_params: "parameters N [count]", tokens: "training tokens D [tokens]", width: "width [d_model]",
    depth: "depth [layers]", compute: "compute 6·N·D [FLOPs]",
  };
  const Z90 = 1.6449;

  const name = decodeURIComponent(location.pathname.replace(/^\/studies\//, "").replace(/\/+$/, ""));
  const base = "/v1/studies/" + encodeURIComponent(name);
  const state = { study: null, fit: null, runs: [], runsTruncated: false, rec: null, target: null, xVar: "n_params", scaleFilter: "" };

  document.title = "hpscale · " + name;
  document.getElementById("crumb-study").textContent = name;
  document.getElementById("study-name").textContent = name;

  // --- scales --------------------------------------------------------------------------
  const scaleKey = sc => [sc.n_params, sc.tokens, sc.width, sc.depth].map(v => v == null ? "" : v).join("|");
  function scaleLabel(sc) {
    let s = "N=" + human(sc.n_params) + " D=" + human(sc.tokens);
    if (sc.width != null || sc.depth != null) s += " (" + (sc.width != null ? "w" + sc.width : "") + (sc.depth != null ? "×" + sc.depth + "L" : "") + ")";
    return s;
  }
  const scaleVars = sc => ({ n_params: sc.n_params, tokens: sc.tokens, width: sc.width, depth: sc.depth, compute: 6 * sc.n_params * sc.tokens });

  /** Every scale seen in the runs and the fit, sorted by size, with one colour each. */
  function scaleTable() {
    const map = new Map();
    const add = sc => { const k = scaleKey(sc); if (!map.has(k)) map.set(k, { key: k, scale: sc }); };
    for (const r of state.runs) add({ n_params: r.n_params, tokens: r.tokens, width: r.width, depth: r.depth });
    for (const o of (state.fit && state.fit.optima) || []) add(o.scale);
    const list = [...map.values()].sort((a, b) => a.scale.n_params - b.scale.n_params || a.scale.tokens - b.scale.tokens ||
      (a.scale.width || 0) - (b.scale.width || 0) || (a.scale.depth || 0) - (b.scale.depth || 0));
    const colors = Charts.palette(list.length);
    list.forEach((s, i) => { s.color = colors[i]; s.label = scaleLabel(s.scale); });
    return { list, byKey: new Map(list.map(s => [s.key, s])) };
  }

  // --- loading -------------------------------------------------------------------------
  async function loadAll() {
    banner(null);
    try {
      state.study = await api(base);
    } catch (e) {
      banner(describeError(e));
      document.getElementById("fit-status-text").textContent = e.status === 404 ? "No such study." : "Could not load the study.";
      return;
    }
    renderSummary();
    loadRunsPage(true);  // the table does not wait for the plots
    const runsPromise = loadPlotRuns();
    await loadFit();
    renderCharts();  // optima and laws at once; the loss-vs-LR plot fills in as its pages arrive
    await runsPromise;
    renderLossVsLr(scaleTable());
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
  }

  async function loadPlotRuns() {
    const runs = [];
    let cursor = null;
    try {
      do {
        const page = await api(base + "/runs", { query: { limit: PLOT_PAGE, cursor } });
        runs.push(...page.items);
        cursor = page.next_cursor;
        if (cursor && runs.length === page.items.length) {  // first page of several: draw it now
          state.runs = runs.slice(); state.runsTruncated = true; state.runsLoading = true;
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
      text.textContent = "No fit yet: the optimum and law plots appear after a fit (needs a write token, or ask for a recommendation, which fits first).";
      btn.hidden = false;
      return;
    }
    const stale = state.study && String(f.data_version) !== String(state.study.data_version);
    text.textContent = "Fit #" + f.id + " of " + (f.n_runs ?? "?") + " runs, " + fmtDate(f.created_at) +
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
      banner(null);
    } catch (e) {
      banner(describeError(e));
    }
    btn.disabled = false;
    renderSummary(); renderFitStatus(); renderDiagnostics(); renderCharts();
  });

  // --- recommendation ------------------------------------------------------------------
  const REC_FIELDS = ["n_params", "tokens", "width", "depth", "batch_size", "batch_multiple", "compute"];
  const INT_FIELDS = new Set(["width", "depth", "batch_size", "batch_multiple"]);

  document.getElementById("rec-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = clear(document.getElementById("rec-result"));
    const query = {}, problems = [];
    for (const f of REC_FIELDS) {
      const raw = document.getElementById("rec-" + f).value.trim().replace(/_/g, "");
      if (!raw) continue;
      const v = Number(raw);
      if (!isFinite(v) || v <= 0 || (INT_FIELDS.has(f) && !Number.isInteger(v))) {
        problems.push(f + " must be a positive " + (INT_FIELDS.has(f) ? "integer" : "number"));
      } else query[f] = raw;
    }
    if (problems.length) { out.append(el("p", { class: "error-text", text: problems.join("; ") })); return; }
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
        renderSummary(); renderFitStatus();
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
    const tile = (label, iv, id, f = fmt) => el("div", { class: "tile", id, "data-value": iv && typeof iv === "object" ? iv.value : iv },
      el("div", { class: "tile-label", text: label }),
      el("div", { class: "tile-value", text: iv == null ? "—" : f(typeof iv === "object" ? iv.value : iv) }),
      iv && typeof iv === "object" ? el("div", { class: "tile-range", text: "90%: " + f(iv.low) + " – " + f(iv.high) }) : null);
    main.append(
      tile("Learning rate (peak)", r.learning_rate, "rec-lr"),
      tile("Batch size [sequences]", r.batch_size, "rec-bs", v => fmt(Math.round(v))),
      tile("Batch [tokens]", r.batch_tokens, "rec-bt", human),
      tile("Weight decay", r.weight_decay, "rec-wd"),
      tile("Predicted loss", r.predicted_loss, "rec-loss"),
    );
    out.append(main);
    const levelClass = ext.level === "interpolation" ? "ok" : ext.level === "far" ? "bad" : "warn";
    out.append(el("p", null, el("span", { class: "pill " + levelClass, text: ext.level || "?" }),
      " target is " + (ext.factor != null ? fmt(ext.factor) + "× " : "") + "beyond the proxies' range · fit #" + r.fit_id + " · data version " + r.data_version));
    if (r.warnings && r.warnings.length) out.append(el("ul", { class: "warnings" }, r.warnings.map(w => el("li", { text: w }))));

    // baselines: the fitted answer next to published laws
    const bl = r.baselines || {};
    const names = Object.keys(bl);
    if (names.length) {
      const tb = el("tbody");
      tb.append(el("tr", { class: "ours" }, el("td", { text: "this study's fit" }), el("td", { class: "num", text: fmt(r.learning_rate && r.learning_rate.value) }),
        el("td", { class: "num", text: r.batch_size ? fmt(Math.round(r.batch_size.value)) : "—" }), el("td", { class: "num", text: human(r.batch_tokens) }), el("td", { text: "" })));
      for (const k of names) {
        const b = bl[k] || {};
        const ok = b.available !== false && (b.learning_rate != null || b.batch_tokens != null || b.batch_size != null);
        tb.append(el("tr", { "data-baseline": k },
          el("td", { title: b.source || null, text: k.replace(/_/g, " ") }),
          el("td", { class: "num", text: ok ? fmt(b.learning_rate) : "—" }),
          el("td", { class: "num", text: ok && b.batch_size != null ? fmt(Math.round(b.batch_size)) : "—" }),
          el("td", { class: "num", text: ok ? human(b.batch_tokens) : "—" }),
          el("td", { class: "small", text: ok ? [b.form, b.in_fitted_range === false ? "target outside its fitted range" : "", (b.missing || []).length ? "missing: " + b.missing.join(", ") : ""].filter(Boolean).join(" · ")
            : "unavailable: " + (b.reason || "") + ((b.missing || []).length ? " (missing " + b.missing.join(", ") + ")" : "") })));
      }
      out.append(el("h3", { text: "Baselines" }), el("div", { class: "table-wrap" }, el("table", { class: "data compact", id: "rec-baselines" },
        el("thead", null, el("tr", null, el("th", { text: "Source" }), el("th", { class: "num", text: "Learning rate" }), el("th", { class: "num", text: "Batch [seq.]" }), el("th", { class: "num", text: "Batch [tokens]" }), el("th", { text: "Notes" }))), tb)));
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
        else tb.append(el("tr", null, el("td", { text: key }), el("td", { class: "num", text: typeof v === "number" ? fmt(v) : Array.isArray(v) ? v.map(x => typeof x === "number" ? fmt(x) : String(x)).join(", ") : String(v) })));
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
    renderLossLaw(scales);
  }

  const lrFormat = v => { const e = Math.floor(Math.log10(v) + 1e-9); return Number((v / Math.pow(10, e)).toPrecision(2)) + "e" + e; };
  const countFormat = v => human(v);

  function renderLossVsLr(scales) {
    const box = document.getElementById("chart-loss-lr");
    const note = document.getElementById("lossvlr-note");
    const groups = new Map();
    let diverged = 0, failed = 0;
    for (const r of state.runs) {
      const k = scaleKey(r);
      if (!groups.has(k)) groups.set(k, { completed: [], diverged: [] });
      if (r.status === "completed" && r.final_loss != null && isFinite(r.final_loss)) groups.get(k).completed.push(r);
      else if (r.status === "diverged") { groups.get(k).diverged.push(r); diverged++; }
      else failed++;
    }
    // y range: from the best loss to 25% above the worst scale's best; higher losses sit on the top edge as ▲.
    let bestMax = -Infinity;
    for (const g of groups.values()) if (g.completed.length) bestMax = Math.max(bestMax, Math.min(...g.completed.map(r => r.final_loss)));
    const clip = isFinite(bestMax) ? bestMax * 1.25 : undefined;
    const series = [];
    let nPoints = 0, nClipped = 0;
    for (const s of scales.list) {
      const g = groups.get(s.key);
      if (!g || !(g.completed.length + g.diverged.length)) continue;
      // The best loss at each learning rate (over batch sizes etc.) traces the curve.
      const best = new Map();
      for (const r of g.completed) {
        const lr = Number(r.learning_rate.toPrecision(6));
        if (!best.has(lr) || best.get(lr) > r.final_loss) best.set(lr, r.final_loss);
      }
      const line = [...best.entries()].sort((a, b) => a[0] - b[0]);
      const points = g.completed.map(r => ({
        x: r.learning_rate, y: r.final_loss,
        title: s.label + "\nlr " + fmt(r.learning_rate) + ", batch " + r.batch_size + ", wd " + fmt(r.weight_decay ?? 0) + "\nloss " + fmt(r.final_loss, 4) + (r.run_key ? "\n" + r.run_key : ""),
      }));
      nPoints += points.length;
      nClipped += points.filter(p => clip !== undefined && p.y > clip).length;
      const hidden = state.scaleFilter && state.scaleFilter !== s.key;
      if (hidden) continue;
      series.push({ name: s.label + " · " + g.completed.length + " runs", color: s.color, role: "data", points, line, width: 1.4, r: 2.6 });
      if (g.diverged.length) series.push({
        name: null, color: s.color, role: "diverged", marker: "cross", legend: false,
        points: g.diverged.map(r => ({ x: r.learning_rate, y: clip ?? 0, title: s.label + "\nDIVERGED at lr " + fmt(r.learning_rate) + ", batch " + r.batch_size + (r.run_key ? "\n" + r.run_key : "") })),
      });
    }
    if (diverged) series.push({ name: "diverged run (×, top edge)", color: "#333", role: "legend-only", marker: "cross", points: [] });
    if (nClipped) series.push({ name: "loss above the plotted range (▲, top edge)", color: "#777", role: "legend-only", marker: "triangle", points: [] });
    Charts.plot(box, {
      x: { label: "peak learning rate", log: true, format: lrFormat },
      y: { label: "final loss [nats/token]", log: false, clipMax: clip },
      series, empty: "No runs yet.",
    });
    box.dataset.completedRuns = String(nPoints);
    box.dataset.divergedRuns = String(diverged);
    box.dataset.loadedRuns = String(state.runs.length);
    const total = state.study ? state.study.run_count : state.runs.length;
    note.textContent = (state.runsLoading ? "Loading runs… " : "") + (state.runsTruncated ? "Showing the first " + state.runs.length.toLocaleString("en-US") + " of " + Number(total).toLocaleString("en-US") + " runs (plot cap); the optimum plots below use all runs through the fit. " : "All " + state.runs.length.toLocaleString("en-US") + " runs. ") +
      "One colour per scale (dark = small, light = large); the line joins the best loss at each learning rate. " +
      (diverged ? diverged + " diverged runs marked ×. " : "") + (failed ? failed + " failed runs not shown. " : "") +
      (nClipped ? nClipped + " runs with loss above " + fmt(clip, 3) + " drawn as ▲ on the top edge." : "");
    fillScaleFilter(scales);
  }

  function fillScaleFilter(scales) {
    let sel = document.getElementById("scale-filter");
    if (!sel) {
      sel = el("select", { id: "scale-filter", "aria-label": "show one scale" });
      sel.addEventListener("change", () => { state.scaleFilter = sel.value; renderLossVsLr(scaleTable()); });
      document.getElementById("lossvlr-note").before(el("label", { class: "inline-control" }, "Scale ", sel));
    }
    const current = state.scaleFilter;
    clear(sel).append(el("option", { value: "", text: "all scales" }));
    for (const s of scales.list) sel.append(el("option", { value: s.key, text: s.label, selected: s.key === current }));
  }

  /** h* = C · Π x_v^a_v */
  function lawAt(law, vars) {
    let y = law.coefficient;
    for (const v of law.variables) y *= Math.pow(vars[v], law.exponents[v].value);
    return y;
  }

  function geoMean(values) {
    const ok = values.filter(v => v > 0 && isFinite(v));
    return ok.length ? Math.exp(ok.reduce((a, v) => a + Math.log(v), 0) / ok.length) : NaN;
  }

  function xVarOptions() {
    const vars = new Set();
    for (const [axis] of AXES) for (const v of ((state.fit && state.fit.laws && state.fit.laws[axis]) || {}).variables || []) vars.add(v);
    return ["n_params", "tokens", "width", "depth", "compute"].filter(v => vars.has(v) || v === "n_params");
  }

  function ensureXSelect() {
    let sel = document.getElementById("x-var");
    const opts = xVarOptions();
    if (!opts.includes(state.xVar)) state.xVar = opts[0];
    if (!sel) {
      sel = el("select", { id: "x-var", "aria-label": "x axis of the optimum plots" });
      sel.addEventListener("change", () => { state.xVar = sel.value; renderCharts(); });
      const charts = document.querySelector(".charts");
      charts.prepend(el("div", { class: "chart-controls" }, el("label", { class: "inline-control" }, "Optima plotted against ", sel),
        el("span", { class: "muted small", text: "With a law in several variables, each optimum is rescaled by the fitted exponents to the target's (else the proxies' typical) value of the others, so all share one line; hover a point for its raw value." })));
    }
    clear(sel);
    for (const v of opts) sel.append(el("option", { value: v, text: VAR_LABEL[v], selected: v === state.xVar }));
  }

  function renderOptimum(axis, label, sym, scales) {
    ensureXSelect();
    const box = document.getElementById("chart-opt-" + axis);
    const note = document.getElementById("opt-" + axis + "-note");
    const fit = state.fit;
    if (!fit) {
      Charts.plot(box, { x: { label: "" }, y: { label: "" }, series: [], empty: "No fit yet — use “Fit now” or ask for a recommendation." });
      note.textContent = "";
      return;
    }
    const law = (fit.laws || {})[axis] || null;
    const optima = (fit.optima || []).filter(o => o[axis] && o[axis].value > 0);
    const xVar = law && law.variables.length && !law.variables.includes(state.xVar) ? law.variables[0] : state.xVar;
    const others = law ? law.variables.filter(v => v !== xVar) : [];
    // reference values of the other variables: the target's when there is one, else the proxies' geometric mean
    const ref = {}, refFromTarget = {};
    for (const v of others) {
      if (state.target && state.target[v] > 0) { ref[v] = state.target[v]; refFromTarget[v] = true; }
      else ref[v] = geoMean((fit.optima || []).map(o => scaleVars(o.scale)[v]));
    }
    const adjust = vars => others.reduce((f, v) => f * Math.pow(ref[v] / vars[v], law.exponents[v].value), 1);
    const points = [];
    for (const o of optima) {
      const vars = scaleVars(o.scale), s = scales.byKey.get(scaleKey(o.scale));
      const f = law ? adjust(vars) : 1;
      const iv = o[axis];
      points.push({
        x: vars[xVar], y: iv.value * f, lo: iv.low * f, hi: iv.high * f, color: s ? s.color : "#444",
        marker: iv.status && iv.status !== "bracketed" ? "ring" : "circle", r: 4,
        title: (s ? s.label : scaleLabel(o.scale)) + "\n" + sym + " = " + fmtInterval(iv) + (iv.status ? " (" + iv.status + ")" : "") +
          (f !== 1 ? "\nplotted ×" + fmt(f) + " (rescaled to the reference " + others.map(v => v + "=" + human(ref[v])).join(", ") + ")" : "") + "\n" + o.n_runs + " runs",
      });
    }
    const series = [{ name: "per-scale optimum (90% interval; ring = not bracketed)", color: "#2b4c7e", role: "data", points }];
    const xs = points.map(p => p.x).filter(v => v > 0);
    const tx = state.target ? state.target[xVar] : undefined;
    if (tx > 0) xs.push(tx);
    if (law && xs.length) {
      const lo = Math.min(...xs) / 1.3, hi = Math.max(...xs) * 1.3;
      const centre = {};
      for (const v of law.variables) centre[v] = Math.log(geoMean((fit.optima || []).map(o => scaleVars(o.scale)[v])));
      const line = [], band = [];
      for (let i = 0; i <= 80; i++) {
        const x = Math.exp(Math.log(lo) + (Math.log(hi) - Math.log(lo)) * i / 80);
        const vars = Object.assign({}, ref, { [xVar]: x });
        const y = lawAt(law, vars);
        // approximate 90% band: exponent intervals (independent) around the proxies' centre, plus the between-scale scatter
        let var2 = Math.pow(Z90 * (law.scatter || 0), 2);
        for (const v of law.variables) {
          const e = law.exponents[v], half = (e.high - e.low) / 2;
          var2 += Math.pow(half * (Math.log(vars[v]) - centre[v]), 2);
        }
        const w = Math.sqrt(var2);
        line.push([x, y]); band.push([x, y * Math.exp(-w), y * Math.exp(w)]);
      }
      series.push({ name: "approx. 90% band", color: "#e07b39", role: "band", band });
      series.push({ name: "fitted law: " + sym + " = " + fmt(law.coefficient) + law.variables.map(v => "·" + v + "^" + fmt(law.exponents[v].value, 3)).join(""), color: "#e07b39", role: "law", line, width: 2 });
    }
    if (state.rec && state.target && tx > 0) {
      const iv = state.rec[axis];
      if (iv && iv.value > 0) series.push({
        name: "target (recommendation, 90% interval)", color: "#d62728", role: "target", marker: "star",
        points: [{ x: tx, y: iv.value, lo: iv.low, hi: iv.high, r: 4, title: "target " + scaleLabel(state.target) + "\n" + sym + " = " + fmtInterval(iv) }],
      });
    }
    const yFormat = axis === "batch_size" ? v => fmt(v, 2) : lrFormat;
    Charts.plot(box, {
      x: { label: VAR_LABEL[xVar], log: true, format: countFormat },
      y: { label: label, log: true, format: yFormat },
      series, empty: "No optimum of " + label.split(" [")[0] + " at any scale." + (fit.missing_laws && fit.missing_laws[axis] ? " " + fit.missing_laws[axis] : ""),
    });
    const missing = (fit.missing_laws || {})[axis];
    note.textContent = law
      ? law.form + " · R² " + fmt(law.r2, 3) + " · leave-one-scale-out error " + (law.cv_error == null ? "—" : fmt(law.cv_error, 3) + " (log units)") +
        (others.length ? " · other variables at " + others.map(v => v + " = " + human(ref[v]) + (refFromTarget[v] ? " (target)" : " (proxies' geometric mean)")).join(", ") : "")
      : "No law for " + label.split(" [")[0] + (missing ? ": " + missing : ".");
  }

  function renderLossLaw(scales) {
    const box = document.getElementById("chart-loss-law");
    const note = document.getElementById("loss-law-note");
    const fit = state.fit;
    if (!fit) { Charts.plot(box, { x: { label: "" }, y: { label: "" }, series: [], empty: "No fit yet." }); note.textContent = ""; return; }
    const law = fit.loss_law;
    const optima = (fit.optima || []).filter(o => o.loss != null && isFinite(o.loss));
    const ns = [...new Set(optima.map(o => o.scale.n_params))].sort((a, b) => a - b);
    const colors = Charts.palette(ns.length);
    const colorOfN = n => colors[ns.indexOf(n)];
    const series = [{
      name: "best loss per scale", color: "#2b4c7e", role: "data",
      points: optima.map(o => ({ x: o.scale.tokens, y: o.loss, color: colorOfN(o.scale.n_params), r: 4, title: scaleLabel(o.scale) + "\nbest loss " + fmt(o.loss, 4) })),
    }];
    if (law && law.params) {
      const p = k => law.params[k] && (typeof law.params[k] === "object" ? law.params[k].value : law.params[k]);
      const E = p("E"), A = p("A"), B = p("B"), al = p("alpha"), be = p("beta");
      const L = (n, d) => E + A / Math.pow(n, al) + B / Math.pow(d, be);
      const ds = optima.map(o => o.scale.tokens);
      if (state.target && state.target.tokens) ds.push(state.target.tokens);
      const lo = Math.min(...ds) / 1.5, hi = Math.max(...ds) * 1.5;
      const grid = Array.from({ length: 61 }, (_, i) => Math.exp(Math.log(lo) + (Math.log(hi) - Math.log(lo)) * i / 60));
      ns.forEach((n, i) => series.push({ name: "law at N=" + human(n), color: colors[i], role: "law", line: grid.map(d => [d, L(n, d)]), width: 1.6 }));
      if (state.target && state.target.n_params && state.target.tokens) {
        const tn = state.target.n_params;
        series.push({ name: "law at target N=" + human(tn), color: "#d62728", role: "law", dash: "6 4", line: grid.map(d => [d, L(tn, d)]), width: 1.6 });
        const pl = state.rec && state.rec.predicted_loss;
        const y = pl ? pl.value : L(tn, state.target.tokens);
        series.push({ name: "target (predicted loss)", color: "#d62728", role: "target", marker: "star",
          points: [{ x: state.target.tokens, y, lo: pl ? pl.low : undefined, hi: pl ? pl.high : undefined, title: "target " + scaleLabel(state.target) + "\npredicted loss " + (pl ? fmtInterval(pl) : fmt(y)) }] });
      }
    }
    Charts.plot(box, {
      x: { label: "training tokens D [tokens]", log: true, format: countFormat },
      y: { label: "best final loss [nats/token]", log: false },
      series, empty: "No per-scale optimum to plot.",
    });
    note.textContent = law ? law.form + " with " + Object.entries(law.params).map(([k, v]) => k + " = " + fmt(typeof v === "object" ? v.value : v, 3)).join(", ") +
      ". One line per model size N; points coloured by N." : "No loss law in this fit.";
  }

  // --- diagnostics ---------------------------------------------------------------------
  function renderDiagnostics() {
    const body = clear(document.getElementById("diag-body"));
    const fit = state.fit;
    if (!fit) { body.className = "muted"; body.textContent = "No fit yet."; return; }
    body.className = "";
    body.append(el("p", { class: "muted small", text: "Fit #" + fit.id + " · " + (fit.n_runs ?? "?") + " runs · " + ((fit.optima || []).length) + " scales · data version " + fit.data_version + (fit.bootstrap != null ? " · " + fit.bootstrap + " bootstrap resamples" : "") + " · " + fmtDate(fit.created_at) }));

    // laws
    const tb = el("tbody");
    for (const [axis, label] of AXES) {
      const law = (fit.laws || {})[axis];
      if (!law) {
        const why = (fit.missing_laws || {})[axis] || "not fitted";
        tb.append(el("tr", { "data-law": axis, class: "missing" }, el("td", { text: label }), el("td", { colspan: 5, class: "muted", text: "no law — " + why })));
        continue;
      }
      tb.append(el("tr", { "data-law": axis },
        el("td", { text: label }),
        el("td", { text: law.form }),
        el("td", { class: "num", text: fmt(law.coefficient) }),
        el("td", null, law.variables.map(v => el("div", { class: "nowrap", text: v + ": " + fmtInterval(law.exponents[v], x => fmt(x, 3)) }))),
        el("td", { class: "num", text: fmt(law.r2, 3) }),
        el("td", { class: "num", text: law.cv_error == null ? "—" : fmt(law.cv_error, 3) })));
    }
    body.append(el("h3", { text: "Laws" }), el("div", { class: "table-wrap" }, el("table", { class: "data compact", id: "diag-laws" },
      el("thead", null, el("tr", null, ["Hyperparameter", "Form", "Coefficient", "Exponents (90% interval)", "R²", "Backtest error*"].map(h => el("th", { text: h })))), tb)),
      el("p", { class: "muted small", text: "* leave-one-scale-out error of the law in log units (0.1 ≈ 10% off at a held-out scale)." }));

    if (fit.loss_law) {
      const ll = fit.loss_law;
      body.append(el("h3", { text: "Loss law" }), el("p", null, el("code", { text: ll.form })),
        el("div", { class: "table-wrap" }, el("table", { class: "data compact kv", id: "diag-loss-law" }, el("tbody", null,
          Object.entries(ll.params || {}).map(([k, v]) => el("tr", null, el("td", { text: k }), el("td", { class: "num", text: fmtInterval(v, x => fmt(x, 4)) })))))));
    }

    const warnings = [...(fit.warnings || []), ...((fit.loss_law && fit.loss_law.warnings) || [])];
    body.append(el("h3", { text: "Warnings" }), warnings.length
      ? el("ul", { class: "warnings", id: "diag-warnings" }, warnings.map(w => el("li", { text: w })))
      : el("p", { class: "muted", text: "None." }));

    // per-scale optima
    const ob = el("tbody");
    for (const o of fit.optima || []) {
      const cell = iv => el("td", { class: "num", text: iv ? fmtInterval(iv) + (iv.status && iv.status !== "bracketed" ? " · " + iv.status : "") : "—" });
      ob.append(el("tr", null, el("td", { text: scaleLabel(o.scale) }), el("td", { class: "num", text: String(o.n_runs) }),
        el("td", { class: "num", text: o.n_diverged == null ? "—" : String(o.n_diverged) }),
        cell(o.learning_rate), cell(o.batch_size), cell(o.weight_decay), el("td", { class: "num", text: fmt(o.loss, 4) }),
        el("td", { class: "small", text: (o.flags || []).join(", ") })));
    }
    body.append(el("details", { class: "optima" }, el("summary", { text: "Per-scale optima (" + (fit.optima || []).length + ")" }),
      el("div", { class: "table-wrap" }, el("table", { class: "data compact" },
        el("thead", null, el("tr", null, ["Scale", "Runs", "Diverged", "Learning rate", "Batch size [seq.]", "Weight decay", "Loss", "Flags"].map(h => el("th", { text: h })))), ob))));
  }

  // --- runs table (server-side paging and filters; client-side sort within the page) ---
  const RUN_COLUMNS = [
    ["id", "ID", true], ["run_key", "Run key", false], ["status", "Status", false],
    ["n_params", "Params", true], ["tokens", "Tokens", true], ["width", "Width", true], ["depth", "Depth", true],
    ["learning_rate", "LR", true], ["batch_size", "Batch [seq.]", true], ["weight_decay", "WD", true],
    ["final_loss", "Final loss", true], ["extra", "Extra", false], ["created_at", "Created", false],
  ];
  const runsState = { cursors: [null], index: 0, next: null, items: [], sort: null, dir: 1, filters: {} };

  function buildRunsHead() {
    const tr = clear(document.querySelector("#runs-table thead tr"));
    for (const [key, label, num] of RUN_COLUMNS) {
      const th = el("th", { class: num ? "num" : null, "data-col": key, "aria-sort": runsState.sort === key ? (runsState.dir > 0 ? "ascending" : "descending") : "none" });
      if (key === "extra") th.textContent = label;
      else th.append(el("button", { type: "button", class: "sort", title: "sort this page by " + label, onclick: () => {
        runsState.dir = runsState.sort === key ? -runsState.dir : 1; runsState.sort = key; buildRunsHead(); renderRunsBody();
      } }, label, el("span", { class: "arrow", text: runsState.sort === key ? (runsState.dir > 0 ? " ▲" : " ▼") : "" })));
      tr.append(th);
    }
  }

  function renderRunsBody() {
    const body = clear(document.querySelector("#runs-table tbody"));
    const rows = runsState.items.slice();
    if (runsState.sort) {
      const k = runsState.sort, d = runsState.dir;
      rows.sort((a, b) => {
        const x = a[k], y = b[k];
        if (x == null && y == null) return 0;
        if (x == null) return 1;
        if (y == null) return -1;
        return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * d;
      });
    }
    if (!rows.length) body.append(el("tr", null, el("td", { colspan: RUN_COLUMNS.length, class: "muted", text: "No runs match." })));
    for (const r of rows) {
      body.append(el("tr", { class: "status-" + (r.status || "completed") },
        el("td", { class: "num", text: r.id }),
        el("td", { class: "key", title: r.run_key || null, text: r.run_key || "—" }),
        el("td", null, el("span", { class: "pill " + (r.status === "completed" ? "ok" : r.status === "diverged" ? "bad" : "warn"), text: r.status })),
        el("td", { class: "num", text: human(r.n_params) }), el("td", { class: "num", text: human(r.tokens) }),
        el("td", { class: "num", text: r.width ?? "—" }), el("td", { class: "num", text: r.depth ?? "—" }),
        el("td", { class: "num", text: fmt(r.learning_rate) }), el("td", { class: "num", text: r.batch_size }),
        el("td", { class: "num", text: fmt(r.weight_decay ?? 0) }), el("td", { class: "num", text: r.final_loss == null ? "—" : fmt(r.final_loss, 4) }),
        el("td", { class: "extra", text: r.extra ? Object.entries(r.extra).map(([k, v]) => k + "=" + (typeof v === "number" ? fmt(v) : v)).join("; ") : "" }),
        el("td", { class: "nowrap", text: fmtDate(r.created_at) })));
    }
  }

  async function loadRunsPage(reset) {
    if (reset) { runsState.cursors = [null]; runsState.index = 0; }
    const info = document.getElementById("runs-page");
    info.textContent = "Loading…";
    try {
      const page = await api(base + "/runs", { query: Object.assign({ cursor: runsState.cursors[runsState.index] }, runsState.filters) });
      runsState.items = page.items;
      runsState.next = page.next_cursor;
    } catch (e) {
      runsState.items = []; runsState.next = null;
      info.textContent = describeError(e);
      renderRunsBody();
      return;
    }
    buildRunsHead();
    renderRunsBody();
    const lim = Number(runsState.filters.limit || 100);
    const from = runsState.index * lim + 1;
    info.textContent = runsState.items.length ? "Page " + (runsState.index + 1) + " · runs " + from.toLocaleString("en-US") + "–" + (from + runsState.items.length - 1).toLocaleString("en-US") +
      (Object.keys(runsState.filters).some(k => k !== "limit") ? " (filtered)" : " of " + Number(state.study ? state.study.run_count : 0).toLocaleString("en-US")) : "No runs";
    document.getElementById("runs-prev").disabled = runsState.index === 0;
    document.getElementById("runs-next").disabled = !runsState.next;
    document.getElementById("runs-table").dataset.rowCount = String(runsState.items.length);
  }

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
    for (const [k, v] of [["width", width], ["depth", depth]]) {
      if (!v) continue;
      if (!/^[1-9][0-9]{0,8}$/.test(v)) { info.textContent = k + " must be a positive integer"; return; }
      f[k] = v;
    }
    if (status) f.status = status;
    f.limit = document.getElementById("filter-limit").value;
    runsState.filters = f;
    loadRunsPage(true);
  });

  HP.initTokenForm(loadAll);
  loadAll();
})();
