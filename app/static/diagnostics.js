/* The fit's diagnostics: laws, loss law, warnings, per-scale optima (ES module). */
import { state, axesOf } from "./studystate.js";
import { scaleLabel } from "./landscape.js";

const { el, dataTable, clear, fmt, fmtInterval, fmtDate } = HP;

export function renderDiagnostics() {
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
  for (const [axis, label] of axesOf(state.study)) {
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
          law.variables.map(v => {
            // Prior vs data: the published prior, how far the data moved the exponent (in prior
            // sds) and the share of the posterior's precision that comes from the data.
            const e = law.exponents[v];
            const prior = e.prior
              ? " · prior " +
                fmt(e.prior.mean, 3) +
                "±" +
                fmt(e.prior.sd, 2) +
                ", moved " +
                fmt(e.shift, 2) +
                " sd, " +
                Math.round(100 * e.data_share) +
                "% data"
              : " · no published prior";
            return el("div", { text: v + ": " + fmtInterval(e, x => fmt(x, 3)) + prior });
          }),
        ),
        el("td", { class: "num", text: fmt(law.r2, 3) }),
        el("td", {
          class: "num",
          text: law.cv_error == null ? "—" : fmt(law.cv_error, 3) + " (×" + fmt(Math.exp(law.cv_error), 3) + ")",
        }),
      ),
    );
  }
  body.append(
    el("h3", { text: "Laws" }),
    dataTable(
      { class: "data compact cards-on-phone", id: "diag-laws" },
      [
        "Hyperparameter",
        "Form",
        "Coefficient",
        "Exponents (90% interval) · prior vs data",
        "R²",
        "Backtest error [log units]*",
      ],
      tb,
    ),
    el("p", {
      class: "muted small",
      text:
        "* leave-one-scale-out RMS error of the law in natural-log units: e ≈ a typical factor of exp(e) off at " +
        "a held-out scale (0.1 ≈ ×1.11, 0.28 ≈ ×1.32).",
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
      dataTable(
        { class: "data compact cards-on-phone" },
        ["Scale", "Runs", "Diverged", "Learning rate", "Batch size [seq.]", "Weight decay", "Loss", "Flags"],
        ob,
      ),
    ),
  );
}
