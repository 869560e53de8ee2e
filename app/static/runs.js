/* The runs table (ES module): filters, the latest fit's state and sorting by any column, all on the
 * server over the whole study (keyset pages); a CSV download of the filtered view; each run's page
 * one click away; exclude/include with a reason (write token). On a phone each run is a card that
 * keeps LR, batch, loss and state in view. */
import { base, name, state, hooks } from "./studystate.js";
import { fitStateChip, FIT_STATES } from "./runstates.js";
import { excludeButton } from "./exclude.js";

const { api, el, clear, fmt, human, fmtDate, describeError, getToken } = HP;

// [field, header, numeric, sortable on the server]
const RUN_COLUMNS = [
  ["id", "ID", true, true],
  ["run_key", "Run key", false, true],
  ["fit_state", "In the fit", false, false],
  ["learning_rate", "LR", true, true],
  ["batch_size", "Batch [seq.]", true, true],
  ["final_loss", "Final loss", true, true],
  ["n_params", "Params", true, true],
  ["tokens", "Tokens", true, true],
  ["width", "Width", true, true],
  ["depth", "Depth", true, true],
  ["weight_decay", "WD", true, true],
  ["action", "", false, false],
];
const runsState = { cursors: [null], index: 0, next: null, items: [], sort: "id", order: "asc", filters: {} };

/** The listing's query: filters, state, sort (the same for a page and for the CSV). */
function listingQuery() {
  const q = Object.assign({}, runsState.filters);
  if (runsState.sort !== "id" || runsState.order !== "asc") {
    q.sort = runsState.sort;
    q.order = runsState.order;
  }
  return q;
}

function buildRunsHead() {
  const tr = clear(document.querySelector("#runs-table thead tr"));
  for (const [key, label, num, sortable] of RUN_COLUMNS) {
    const active = runsState.sort === key;
    const th = el("th", {
      class: num ? "num" : null,
      "data-col": key,
      "aria-sort": active ? (runsState.order === "asc" ? "ascending" : "descending") : "none",
    });
    if (!sortable) th.textContent = label;
    else
      th.append(
        el(
          "button",
          {
            type: "button",
            class: "sort",
            title: "sort the whole study by " + label + " (click again to reverse)",
            onclick: () => {
              runsState.order = active && runsState.order === "asc" ? "desc" : "asc";
              runsState.sort = key;
              loadRunsPage(true);
            },
          },
          label,
          el("span", { class: "arrow", text: active ? (runsState.order === "asc" ? " ▲" : " ▼") : "" }),
        ),
      );
    tr.append(th);
  }
}

function runLink(r) {
  return el("a", {
    href: "/studies/" + encodeURIComponent(name) + "/runs/" + r.id,
    text: String(r.id),
    title: "the run's page: curves, config, state and history",
  });
}

export function renderRunsBody() {
  const body = clear(document.querySelector("#runs-table tbody"));
  const rows = runsState.items;
  document.getElementById("runs-table").dataset.shownCount = String(rows.length);
  if (!rows.length) {
    body.append(el("tr", null, el("td", { colspan: RUN_COLUMNS.length, class: "muted", text: "No runs match." })));
  }
  for (const r of rows) {
    const st = r.fit_state;
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
    const td = (label, attrs, ...children) => el("td", Object.assign({ "data-label": label }, attrs), ...children);
    body.append(
      el(
        "tr",
        { class: "status-" + (r.status || "completed") + " state-" + (st || "none"), "data-run-id": r.id, title },
        td("ID", { class: "num id" }, runLink(r)),
        td("Run key", { class: "key", title: r.run_key || null, text: r.run_key || "—" }),
        td("In the fit", { class: "state" }, fitStateChip(st)),
        td("LR", { class: "num", text: fmt(r.learning_rate) }),
        td("Batch", { class: "num", text: r.batch_size }),
        td("Loss", { class: "num", text: r.final_loss == null ? "—" : fmt(r.final_loss, 4) }),
        td("Params", { class: "num", text: human(r.n_params) }),
        td("Tokens", { class: "num", text: human(r.tokens) }),
        td("Width", { class: "num", text: r.width ?? "—" }),
        td("Depth", { class: "num", text: r.depth ?? "—" }),
        td("WD", {
          class: "num",
          text: r.weight_decay == null ? "?" : fmt(r.weight_decay),
          title: r.weight_decay == null ? "unknown: the source did not record a weight decay" : null,
        }),
        td("", { class: "action" }, actionButton(r)),
      ),
    );
  }
}

/** The row's Exclude/Include button; after a change the study and this page are loaded again. */
function actionButton(r) {
  return excludeButton(base, r, async () => {
    state.study = await api(base);
    hooks.refreshStudy();
    await loadRunsPage(false);
  });
}

function describePage() {
  const lim = Number(runsState.filters.limit || 100);
  const from = runsState.index * lim + 1;
  const n = runsState.items.length;
  if (!n) return runsState.index ? "No more runs" : "No runs";
  const span = "runs " + from.toLocaleString("en-US") + "–" + (from + n - 1).toLocaleString("en-US");
  const f = runsState.filters;
  const described = [];
  if (f.state) described.push((FIT_STATES[f.state] || [f.state])[0]);
  if (f.status) described.push("status " + f.status);
  if (f.excluded) described.push(f.excluded === "true" ? "excluded" : "not excluded");
  if (f.width) described.push("width " + f.width);
  if (f.depth) described.push("depth " + f.depth);
  const total = runsState.total == null ? "" : " of " + Number(runsState.total).toLocaleString("en-US");
  const order =
    runsState.sort !== "id" || runsState.order !== "asc" ? " · by " + runsState.sort + " " + runsState.order : "";
  return (
    "Page " +
    (runsState.index + 1) +
    " · " +
    span +
    total +
    (described.length ? " (" + described.join(", ") + ")" : "") +
    order
  );
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
      query: Object.assign({ cursor: runsState.cursors[runsState.index] }, listingQuery()),
    });
    runsState.items = page.items;
    runsState.next = page.next_cursor;
    runsState.fitId = page.fit_id;
    if (page.total != null) runsState.total = page.total; // (given on a first page)
  } catch (e) {
    runsState.items = [];
    runsState.next = null;
    buildRunsHead();
    renderRunsBody();
    info.textContent = describeError(e);
    return;
  }
  buildRunsHead();
  showSort();
  renderRunsBody();
  info.textContent = describePage();
  document.getElementById("runs-prev").disabled = runsState.index === 0;
  document.getElementById("runs-next").disabled = !runsState.next;
  document.getElementById("runs-table").dataset.rowCount = String(runsState.items.length);
}

/** The CSV of the current view (filters and order), fetched with the token and saved as a file. */
async function downloadCsv() {
  const info = document.getElementById("runs-message");
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(listingQuery())) if (k !== "limit" && v) qs.set(k, String(v));
  const url = base + "/runs.csv" + (qs.toString() ? "?" + qs : "");
  info.className = "small";
  info.textContent = "Preparing the CSV…";
  try {
    const headers = {};
    const token = getToken();
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(url, { headers });
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error.message;
      } catch (e) {
        /* not JSON */
      }
      throw new Error(message);
    }
    const blob = await response.blob();
    const a = el("a", {
      href: URL.createObjectURL(blob),
      download: name + (qs.toString() ? "-view" : "") + "-runs.csv",
    });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    info.textContent = "Downloaded the runs of this view as CSV (" + Math.round(blob.size / 1024) + " KB).";
  } catch (e) {
    info.className = "small error-text";
    info.textContent = "The CSV could not be made: " + describeError(e);
  }
}

function readFilters() {
  const f = {};
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
      return null;
    }
    f[k] = v;
  }
  const status = document.getElementById("filter-status").value;
  if (status) f.status = status;
  const fitState = document.getElementById("filter-state").value;
  if (fitState) f.state = fitState;
  const excl = document.getElementById("filter-excluded").value;
  if (excl) f.excluded = excl;
  f.limit = document.getElementById("filter-limit").value;
  return f;
}

function applyFilters() {
  const f = readFilters();
  if (!f) return;
  runsState.filters = f;
  runsState.sort = document.getElementById("filter-sort").value;
  runsState.order = document.getElementById("filter-order").value;
  loadRunsPage(true);
}

/** The sort controls of the form show the order the headers set (and the other way round). */
function showSort() {
  const sel = document.getElementById("filter-sort");
  if (![...sel.options].some(o => o.value === runsState.sort))
    sel.append(el("option", { value: runsState.sort, text: runsState.sort }));
  sel.value = runsState.sort;
  document.getElementById("filter-order").value = runsState.order;
}

for (const id of ["filter-state", "filter-sort", "filter-order"])
  document.getElementById(id).addEventListener("change", applyFilters);
document.getElementById("runs-csv").addEventListener("click", downloadCsv);
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
  applyFilters();
});
