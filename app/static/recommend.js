/* The recommendation form and its answer (ES module). */
import { base, state, hooks } from "./studystate.js";

const { api, el, dataTable, clear, fmt, human, describeError } = HP;

const REC_FIELDS = [
  "n_params",
  "tokens",
  "width",
  "depth",
  "batch_size",
  "batch_multiple",
  "compute",
  "max_loss_increase",
];
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
    if (hooks.transferCheck) hooks.transferCheck();
    if (!state.fit || state.fit.id !== rec.fit_id) {
      await hooks.loadFit(rec.fit_id);
      state.study = await api(base).catch(() => state.study);
      hooks.refreshStudy();
    } else {
      await hooks.loadCurves();
    }
    hooks.renderCharts();
  } catch (e) {
    clear(out).append(el("p", { class: "error-text", role: "alert", text: describeError(e) }));
  } finally {
    btn.disabled = false;
  }
});

/** An expected penalty as "0.12% [0.01–0.3%]", or — */
function pen(p) {
  return p ? fmt(100 * p.value) + "% [" + fmt(100 * p.low) + "–" + fmt(100 * p.high) + "%]" : "—";
}

export function renderRecommendation(r) {
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
    tile("Expected loss penalty", r.expected_loss_penalty, "rec-penalty", v => fmt(100 * v) + "%"),
  );
  out.append(main);
  const tbatch = r.tolerance_batch;
  if (tbatch && tbatch.available)
    out.append(
      el("p", {
        id: "rec-tolerance",
        text:
          "Largest batch within +" +
          fmt(100 * tbatch.max_loss_increase) +
          "% of the optimal loss: " +
          fmt(Math.round(tbatch.batch_size.value)) +
          " sequences (90%: " +
          fmt(Math.round(tbatch.batch_size.low)) +
          " – " +
          fmt(Math.round(tbatch.batch_size.high)) +
          "), learning rate " +
          fmt(tbatch.learning_rate.value) +
          (tbatch.steps ? ", " + fmt(Math.round(tbatch.steps.value)) + " steps" : "") +
          (tbatch.steps_at_optimal_batch ? " instead of " + fmt(Math.round(tbatch.steps_at_optimal_batch)) : "") +
          (tbatch.capped ? " (a lower bound: the bowl never reaches the tolerance where the runs describe it)" : ""),
      }),
    );
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
        el("td", { class: "num", text: pen(r.expected_loss_penalty) }),
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
          el("td", { class: "num", text: ok ? pen(b.expected_loss_penalty) : "—" }),
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
      dataTable(
        { class: "data compact cards-on-phone", id: "rec-baselines" },
        [
          "Source",
          { class: "num", text: "Learning rate" },
          { class: "num", text: "Batch [seq.]" },
          { class: "num", text: "Batch [tokens]" },
          { class: "num", text: "Expected loss penalty [90%]" },
          "Notes",
        ],
        tb,
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
