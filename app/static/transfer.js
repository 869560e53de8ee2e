/* "Does the transfer work?" (ES module): the study's transfer check from GET …/transfer-check
 * (contract 1.2). The service computes everything; this draws a table, hints and the reuse cost. */
import { base, state, hooks } from "./studystate.js";

const { api, el, dataTable, clear, fmt, describeError } = HP;

const VERDICT_CLASS = { transfers: "ok", drifts: "bad", undetermined: "warn" };
const pct = x => (x == null ? "—" : fmt(100 * x) + "%");
const exp2 = x => (x >= 0 ? "+" : "") + x.toFixed(2);

async function loadTransferCheck() {
  const out = document.getElementById("transfer-body");
  if (!out) return;
  const query = {};
  const t = state.target || {};
  if (t.n_params && t.tokens) for (const v of ["n_params", "tokens", "width", "depth"]) if (t[v]) query[v] = t[v];
  try {
    renderTransferCheck(await api(base + "/transfer-check", { query }));
  } catch (e) {
    clear(out).append(el("p", { class: e.status === 409 ? "muted" : "error-text", text: describeError(e) }));
  }
}

export function renderTransferCheck(tc) {
  const out = clear(document.getElementById("transfer-body"));
  const note = document.getElementById("transfer-note");
  if (note)
    note.textContent =
      "Parameterization " +
      tc.parameterization +
      ": the drift of each optimum along width and depth as the proxies move (|exponent| ≤ " +
      fmt(tc.tolerance) +
      " and set by the data: transfers). " +
      (tc.parameterization === "sp" ? "Under SP nothing is meant to transfer; the drift is reported plainly." : "");
  const tb = el("tbody");
  for (const c of tc.checks || []) {
    const e = c.exponent;
    const path = Object.entries(c.path || {})
      .filter(([, s]) => s)
      .map(([v, s]) => v + " ×" + fmt(s))
      .join(", ");
    tb.append(
      el(
        "tr",
        { "data-axis": c.axis, "data-hp": c.hyperparameter, "data-verdict": c.verdict },
        el("td", { text: c.axis }),
        el("td", { text: c.hyperparameter.replace(/_/g, " ") }),
        el(
          "td",
          null,
          el("span", {
            // Under SP a drift is expected: shown as information, not as a fault.
            class: "pill " + (tc.parameterization === "sp" ? "info" : VERDICT_CLASS[c.verdict] || "muted"),
            text: c.verdict,
          }),
        ),
        el("td", { class: "num", text: exp2(e.value) + " [" + exp2(e.low) + ", " + exp2(e.high) + "]" }),
        el("td", { class: "small", text: path }),
        el("td", { class: "small", text: c.message + (c.what_to_run ? " — to decide: " + c.what_to_run : "") }),
      ),
    );
  }
  out.append(
    dataTable(
      { class: "data compact", id: "transfer-table" },
      [
        "Axis",
        "Hyperparameter",
        "Verdict",
        { class: "num", text: "Drift exponent [90%]" },
        "Moves with it",
        "What it says",
      ],
      tb,
    ),
  );
  const hints = (tc.checks || []).filter(c => (c.hints || []).length || (c.notes || []).length);
  for (const c of hints) {
    const det = el(
      "details",
      { class: "per-layer" },
      el("summary", { text: c.axis + " / " + c.hyperparameter.replace(/_/g, " ") + ": causes to check and notes" }),
    );
    det.append(
      el(
        "ul",
        { class: "warnings" },
        [...(c.hints || []), ...(c.notes || [])].map(h => el("li", { text: h })),
      ),
    );
    out.append(det);
  }
  const r = tc.reuse_base;
  if (r && r.available)
    out.append(
      el("p", {
        id: "transfer-reuse",
        text:
          "At the target, reusing the base model's optimum (" +
          r.chosen_as +
          ") costs " +
          pct(r.expected_loss_penalty.value) +
          " of loss (90%: " +
          pct(r.expected_loss_penalty.low) +
          " – " +
          pct(r.expected_loss_penalty.high) +
          "); the recommendation " +
          pct(r.recommendation_penalty.value) +
          ".",
      }),
    );
  else
    out.append(
      el("p", {
        class: "muted small",
        text: "Ask for a recommendation above to see the cost of reusing the base model's optimum at that target.",
      }),
    );
}

hooks.transferCheck = loadTransferCheck;
