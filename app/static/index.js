/* The studies overview at `/` (ES module): run counts, latest fit, extrapolation at a default
 * target, and a side-by-side comparison of the selected studies' laws (curves and bands from
 * GET .../fits/{id}/curves; this page only draws them). Uses the globals HP and Charts. */

const { api, el, clear, fmt, human, fmtInterval, fmtDate, banner, describeError } = HP;

// The default target of the overview's extrapolation column.
const DEFAULT_TARGET = { n_params: 7e9, tokens: 1.4e12, width: 4096, depth: 32 };
const MAX_DETAILED = 50; // studies whose run counts and fits are looked up (one request each)
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const LAWS = [
  ["learning_rate", "optimal learning rate (peak)", "lr*"],
  ["batch_size", "optimal batch size [sequences]", "bs*"],
];
// Batch sizes are in sequences: studies with different sequence lengths are compared in tokens.
const BATCH_TOKENS_LABEL = "optimal batch size [tokens] (batch × seq_len)";
const selected = new Set();
const info = new Map(); // name → {study, fit}

async function load() {
  const body = document.querySelector("#studies-table tbody");
  clear(body).append(el("tr", null, el("td", { colspan: 6, class: "muted", text: "Loading…" })));
  banner(null);
  let data;
  try {
    data = await api("/v1/studies");
  } catch (e) {
    clear(body).append(el("tr", null, el("td", { colspan: 6, class: "muted", text: "Could not load the studies." })));
    banner(describeError(e));
    return;
  }
  clear(body);
  if (!data.items.length) {
    body.append(
      el(
        "tr",
        null,
        el("td", {
          colspan: 6,
          class: "muted",
          text: "No studies yet: create one with POST /v1/studies or `hpscale import --create`.",
        }),
      ),
    );
  }
  data.items.forEach((s, i) => {
    const box = el("input", {
      type: "checkbox",
      class: "compare-pick",
      "aria-label": "compare " + s.name,
      checked: selected.has(s.name),
    });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(s.name);
      else selected.delete(s.name);
      renderComparison();
    });
    const cells = {
      runs: el("td", { class: "num", text: "…" }),
      fit: el("td", { class: "muted", text: "…" }),
      ext: el("td", { class: "muted", text: "…" }),
    };
    body.append(
      el(
        "tr",
        { "data-study": s.name },
        el("td", null, box),
        el(
          "td",
          null,
          el("a", { href: "/studies/" + encodeURIComponent(s.name), text: s.name }),
          s.description ? el("div", { class: "muted small", text: s.description }) : null,
        ),
        el("td", { text: [s.optimizer, s.parameterization].filter(Boolean).join(" · ") || "—" }),
        cells.runs,
        cells.fit,
        cells.ext,
      ),
    );
    cells.runs.textContent = Number(s.run_count ?? 0).toLocaleString("en-US");
    if (i < MAX_DETAILED) detail(s, cells);
    else info.set(s.name, { study: s, fit: null });
  });
}

/** A study's latest fit and where the default target lies (the list gives its run count and
 * latest fit id: a study without a fit costs no request, and no 404). */
async function detail(study, cells) {
  const name = study.name;
  const base = "/v1/studies/" + encodeURIComponent(name);
  let fit = null;
  if (study.latest_fit_id != null) {
    try {
      fit = await api(base + "/fits/" + study.latest_fit_id);
    } catch (e) {
      fit = null;
    }
  }
  info.set(name, { study, fit });
  clear(cells.fit);
  clear(cells.ext);
  if (!fit) {
    cells.fit.append(el("span", { class: "pill muted", text: "no fit" }));
    cells.ext.textContent = "—";
    return;
  }
  const current = String(fit.data_version) === String(study.data_version);
  cells.fit.className = "";
  cells.fit.append(
    el("span", { class: "pill " + (current ? "ok" : "warn"), text: current ? "current" : "out of date" }),
    el("span", {
      class: "small",
      text: fmtDate(fit.created_at) + " · " + fit.n_runs + " runs · " + Object.keys(fit.laws || {}).length + " laws",
    }),
  );
  if (!current || !(fit.laws || {}).learning_rate) {
    // never make the overview start a fit
    cells.ext.textContent = current ? "no learning-rate law" : "refit first";
    return;
  }
  try {
    const rec = await api(base + "/recommendation", { query: DEFAULT_TARGET });
    const ext = rec.extrapolation || {};
    const kind = ext.level === "interpolation" ? "ok" : ext.level === "far" ? "bad" : "warn";
    cells.ext.className = "";
    cells.ext.append(
      el("span", { class: "pill " + kind, text: ext.level || "?" }),
      el("span", { class: "small", text: ext.factor != null ? fmt(ext.factor) + "× beyond" : "" }),
    );
  } catch (e) {
    cells.ext.textContent = describeError(e);
  }
}

async function renderComparison() {
  const names = [...selected];
  const charts = document.getElementById("compare-charts");
  const table = document.getElementById("compare-table");
  const note = document.getElementById("compare-note");
  if (names.length < 1) {
    charts.hidden = true;
    table.hidden = true;
    note.textContent = "Tick two or more studies above (e.g. two optimizers) to see their laws on one plot.";
    return;
  }
  note.textContent = "Loading the laws…";
  const curves = {};
  for (const n of names) {
    const fit = info.get(n) && info.get(n).fit;
    if (!fit) continue;
    try {
      curves[n] = await api("/v1/studies/" + encodeURIComponent(n) + "/fits/" + fit.id + "/curves", {
        query: { x: "n_params", points: 50 },
      });
    } catch (e) {
      curves[n] = null;
    }
  }
  charts.hidden = false;
  table.hidden = false;
  // Different sequence lengths: a batch of 256 sequences of 2,048 tokens is not one of 4,096.
  const seqLens = names.map(n => (info.get(n) && info.get(n).study ? info.get(n).study.seq_len : null));
  const known = seqLens.filter(v => v > 0);
  const mixed = new Set(seqLens.map(v => v || 0)).size > 1;
  const inTokens = mixed && known.length === seqLens.length;
  let batchNote = "";
  if (inTokens)
    batchNote =
      " Batch sizes are compared in tokens (batch × seq_len): the studies' sequence lengths differ (" +
      names.map((n, k) => n + " " + seqLens[k]).join(", ") +
      ").";
  else if (mixed)
    batchNote =
      " Caution: the batch sizes are in sequences and the studies' sequence lengths differ or are unknown (" +
      names.map((n, k) => n + " " + (seqLens[k] || "?")).join(", ") +
      "); set seq_len on each study to compare them in tokens.";
  for (const [axis, baseLabel] of LAWS) {
    const series = [];
    const batchTokens = axis === "batch_size" && inTokens;
    const label = batchTokens ? BATCH_TOKENS_LABEL : baseLabel;
    names.forEach((n, i) => {
      const raw = curves[n] && curves[n].laws[axis];
      if (!raw) return;
      const k = batchTokens ? seqLens[i] : 1;
      const c = {
        x: raw.x,
        value: raw.value.map(v => v * k),
        low: raw.low.map(v => v * k),
        high: raw.high.map(v => v * k),
        optima: raw.optima.map(o => Object.assign({}, o, { value: o.value * k, low: o.low * k, high: o.high * k })),
      };
      const color = COLORS[i % COLORS.length];
      series.push({
        name: null,
        legend: false,
        color,
        role: "band",
        band: c.x.map((x, k) => [x, c.low[k], c.high[k]]),
      });
      series.push({ name: n, color, role: "law", width: 2, line: c.x.map((x, k) => [x, c.value[k]]) });
      series.push({
        name: null,
        legend: false,
        color,
        role: "data",
        r: 3.5,
        looseIntervals: true,
        points: c.optima.map(o => ({ x: o.x, y: o.value, lo: o.low, hi: o.high, title: n + ": " + fmtInterval(o) })),
      });
    });
    Charts.plot(document.getElementById("compare-" + axis), {
      x: { label: "parameters N [count]", log: true, format: human },
      y: { label, log: true },
      series,
      empty: "None of the selected studies has a " + label.split(" [")[0] + " law.",
    });
  }
  const tb = clear(table.querySelector("tbody"));
  for (const n of names) {
    const fit = info.get(n) && info.get(n).fit;
    if (!fit) {
      tb.append(
        el(
          "tr",
          null,
          el("td", { text: n }),
          el("td", { colspan: 3, class: "muted", text: "no fit yet: fit the study (its page has “Fit now”)" }),
        ),
      );
      continue;
    }
    for (const [axis, , sym] of LAWS) {
      const law = (fit.laws || {})[axis];
      tb.append(
        el(
          "tr",
          { "data-study": n, "data-law": axis },
          el("td", { text: n }),
          el("td", { text: sym }),
          law
            ? el(
                "td",
                null,
                law.variables.map(v => {
                  const e = law.exponents[v];
                  return el("div", {
                    class: "nowrap",
                    text:
                      v +
                      ": " +
                      fmtInterval(e, x => fmt(x, 3)) +
                      (e.prior ? " · prior " + fmt(e.prior.mean, 3) + "±" + fmt(e.prior.sd, 2) : ""),
                  });
                }),
              )
            : el("td", { class: "muted", text: "no law: " + ((fit.missing_laws || {})[axis] || "not fitted") }),
          el("td", {
            class: "num",
            text:
              law && law.cv_error != null ? fmt(law.cv_error, 3) + " (×" + fmt(Math.exp(law.cv_error), 3) + ")" : "—",
          }),
        ),
      );
    }
  }
  HP.labelCells(tb, ["Study", "Law", "Exponents", "Backtest error [log units]"]);
  note.textContent =
    "Each law with its 90% band (the recommendation's interval at each N), evaluated by the service " +
    "with the study's other variables at its proxies' geometric centre; points are the per-scale optima. " +
    "Backtest error: leave-one-scale-out RMS in natural-log units (×exp(e) typical factor)." +
    batchNote;
  document.getElementById("compare").dataset.batchUnit = inTokens ? "tokens" : "sequences";
}

HP.initTokenForm(load);
load();
