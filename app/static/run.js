/* One run at `/studies/{study}/runs/{id}` (ES module): its state in the latest fit and why, its
 * curves (loss and eval metrics, as stored), its scale and hyperparameters, its extra values, the
 * submission that stored it and its audit trail, and exclude/include. All from
 * GET /v1/studies/{study}/runs/{id}; the page computes nothing. */
import { fitStateChip } from "./runstates.js";
import { excludeButton } from "./exclude.js";

const { api, el, clear, fmt, human, fmtDate, banner, describeError } = HP;

const match = location.pathname.match(/^\/studies\/([^/]+)\/runs\/([0-9]+)\/?$/);
const study = match ? decodeURIComponent(match[1]) : "";
const runId = match ? match[2] : "";
const studyPath = "/studies/" + encodeURIComponent(study);
const base = "/v1/studies/" + encodeURIComponent(study);

document.title = "hpscale · " + study + " · run " + runId;
const crumb = document.getElementById("crumb-study");
crumb.textContent = study;
crumb.setAttribute("href", studyPath);
document.getElementById("crumb-run").textContent = "run " + runId;

const FIELDS = [
  ["n_params", "Parameters N", v => human(v) + " (" + fmt(v) + ")"],
  ["tokens", "Training tokens D", v => human(v) + " (" + fmt(v) + ")"],
  ["width", "Width [d_model]", String],
  ["depth", "Depth [layers]", String],
  ["seq_len", "Sequence length [tokens]", String],
  ["learning_rate", "Learning rate (peak)", v => fmt(v, 4)],
  ["batch_size", "Batch size [sequences]", String],
  ["weight_decay", "Weight decay", v => fmt(v, 4)],
  ["status", "Status", String],
  ["final_loss", "Final loss", v => fmt(v, 5)],
  ["seed", "Seed", String],
  ["created_at", "Stored", fmtDate],
  ["created_by", "Stored by (token)", String],
];

async function load() {
  banner(null);
  let run;
  try {
    run = await api(base + "/runs/" + runId);
  } catch (e) {
    if (e.status === 404) {
      notFound();
      return;
    }
    banner(describeError(e));
    return;
  }
  render(run);
}

function notFound() {
  for (const sec of document.querySelectorAll("main.page > section, main.page > .run-columns")) sec.hidden = true;
  document.getElementById("not-found").hidden = false;
  document.getElementById("not-found-run").textContent = runId;
  document.getElementById("not-found-study").textContent = study;
  document.getElementById("not-found-link").setAttribute("href", studyPath);
}

function render(run) {
  document.getElementById("run-id").textContent = String(run.id);
  document.getElementById("run-key").textContent = run.run_key ? "· " + run.run_key : "";
  const stateLine = clear(document.getElementById("run-state"));
  stateLine.append(
    "In the latest fit" + (run.fit_id != null ? " (#" + run.fit_id + ")" : "") + ": ",
    fitStateChip(run.fit_state),
  );
  document.getElementById("run-reason").textContent = run.state_reason || "";
  const excluded = document.getElementById("run-excluded");
  excluded.hidden = !run.excluded;
  excluded.textContent = run.excluded ? "Excluded: " + (run.excluded_reason || "no reason given") : "";
  clear(document.getElementById("run-action")).append(excludeButton(base, run, load));

  renderFields(run);
  renderExtra(run.extra || {});
  renderCurves(run.curves || [], run);
  renderHistory(run);
  document.getElementById("run-summary").dataset.rendered = "1";
}

function renderFields(run) {
  const tb = clear(document.querySelector("#run-fields tbody"));
  for (const [key, label, f] of FIELDS) {
    let text;
    if (key === "weight_decay" && run.weight_decay == null) text = "unknown (the source did not record one)";
    else text = run[key] == null ? "—" : f(run[key]);
    tb.append(el("tr", { "data-field": key }, el("td", { text: label }), el("td", { class: "num", text })));
  }
}

function renderExtra(extra) {
  const tb = clear(document.querySelector("#run-extra tbody"));
  const entries = Object.entries(extra).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) tb.append(el("tr", null, el("td", { class: "muted", colspan: 2, text: "No extra values." })));
  for (const [k, v] of entries)
    tb.append(
      el(
        "tr",
        { "data-key": k },
        el("td", { text: k }),
        el("td", { class: typeof v === "number" ? "num" : null, text: typeof v === "number" ? fmt(v, 4) : String(v) }),
      ),
    );
}

const SERIES_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/** One chart per series (a loss and an accuracy do not share a y axis), the loss curve first. */
function renderCurves(curves, run) {
  const box = clear(document.getElementById("run-curves"));
  const note = document.getElementById("run-curves-note");
  box.dataset.curveCount = String(curves.length);
  if (!curves.length) {
    box.append(
      el("p", {
        class: "chart-empty",
        text:
          "No curves were stored for this run. Submit `loss_curve` ([[tokens, loss], …]) and `curves` " +
          '({"eval_loss": [[tokens, loss], …]}) with the run, or log them with Client.track (run.log) or the ' +
          "training callbacks; W&B and MLflow imports bring their histories.",
      }),
    );
    note.textContent = "";
    return;
  }
  const downsampled = curves.filter(c => c.downsampled);
  note.textContent =
    "As stored: x in " +
    [...new Set(curves.map(c => c.x_unit))].join(" / ") +
    (downsampled.length
      ? "; " +
        downsampled.map(c => c.name + " keeps " + c.points.length + " of " + c.n_points + " points").join(", ") +
        " (the service stores at most 1,000 per curve: the first and last, the lowest and an even spread)"
      : "") +
    ". Hover a line for its name.";
  curves.forEach((c, i) => {
    const panel = el("div", {
      class: "chart curve",
      id: "curve-" + c.name.replace(/[^A-Za-z0-9_-]/g, "_"),
      role: "img",
      "aria-label": c.name + " against " + c.x_unit,
      "data-series": c.name,
    });
    box.append(
      el(
        "figure",
        { class: "panel" + (i === 0 ? " main" : "") },
        el("figcaption", { text: c.name === "loss" ? "loss (the run's loss_curve)" : c.name }),
        panel,
      ),
    );
    const xs = c.points.map(p => p[0]);
    const logX = xs.length > 1 && Math.min(...xs) > 0;
    const series = [
      {
        name: c.name + " (" + c.points.length + " points)",
        color: SERIES_COLORS[i % SERIES_COLORS.length],
        role: "curve",
        width: 1.6,
        line: c.points,
      },
    ];
    if (c.name === "loss" && run.final_loss != null && xs.length) {
      series.push({
        name: "final_loss " + fmt(run.final_loss, 4),
        color: "#d62728",
        role: "target",
        marker: "star",
        points: [{ x: Math.max(...xs), y: run.final_loss, r: 3, title: "final_loss " + fmt(run.final_loss, 5) }],
      });
    }
    Charts.plot(panel, {
      x: { label: c.x_unit === "steps" ? "training step" : "tokens seen [tokens]", log: logX },
      y: { label: c.name, log: false },
      series,
    });
    panel.dataset.pointCount = String(c.points.length);
  });
}

function renderHistory(run) {
  const sub = run.submission;
  const p = clear(document.getElementById("run-submission"));
  if (sub) {
    p.append(
      "Stored by submission " + sub.id + " (" + (sub.source || "?") + ", " + fmtDate(sub.created_at) + ", ",
      "token " + (sub.created_by || "—") + "). Undo that whole submission (admin): ",
      el("code", { text: "DELETE " + base + "/submissions/" + sub.id }),
      " or ",
      el("code", { text: "hpscale import --undo " + sub.id + " --study " + study }),
      ".",
    );
  } else p.textContent = "No submission recorded (stored before submissions were).";
  const tb = clear(document.querySelector("#run-audit tbody"));
  const rows = run.audit || [];
  if (!rows.length) tb.append(el("tr", null, el("td", { class: "muted", colspan: 4, text: "Nothing audited." })));
  for (const a of rows) {
    const what =
      a.action +
      (a.run_id != null ? " run " + a.run_id : a.submission_id != null ? " submission " + a.submission_id : "") +
      (a.count != null ? " (" + a.count + " runs)" : "");
    tb.append(
      el(
        "tr",
        { "data-action": a.action },
        el("td", { "data-label": "When", text: fmtDate(a.created_at) }),
        el("td", { "data-label": "Who", text: a.actor || "—" }),
        el("td", { "data-label": "What", text: what }),
        el("td", { "data-label": "Why", text: a.reason || "" }),
      ),
    );
  }
}

HP.initTokenForm(load);
load();
