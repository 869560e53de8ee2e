/* The runs table (ES module): server-side pages and filters, each run's state in the fit, and
 * exclude/include with a reason (write token). */
import { base, state, hooks } from "./studystate.js";
import { fitStateChip } from "./runstates.js";

const { api, el, clear, fmt, human, fmtDate, describeError } = HP;

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

export function renderRunsBody() {
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
  const info = document.getElementById("runs-message");
  if (exclude && !reason) {
    info.textContent = "Give a reason to exclude run " + r.id + ".";
    return;
  }
  try {
    await api(base + "/runs/" + r.id + (exclude ? "/exclude" : "/include"), {
      method: "POST",
      body: exclude ? { reason } : {},
    });
    state.study = await api(base);
    hooks.refreshStudy();
    await loadRunsPage(false);
    info.className = "small";
    info.textContent =
      "Run " +
      r.id +
      (exclude ? " excluded" : " included") +
      "; the next fit " +
      (exclude ? "leaves it out." : "uses it.");
  } catch (e) {
    info.className = "small error-text";
    info.textContent = describeError(e);
  }
}

export async function loadRunsPage(reset) {
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
