/* hpscale dashboard: shared helpers (token, API client, safe DOM building, number formats).
 * Every value from the API is put into the page with textContent or as an attribute via
 * setAttribute, never as HTML, so study names, run keys and extra strings cannot inject markup. */
"use strict";

const HP = (() => {
  const TOKEN_KEY = "hpscale.token";

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* storage off */
    }
  }

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || [];
    }
  }

  /** GET/POST a /v1 path; resolves to parsed JSON, rejects with ApiError. */
  async function api(path, { method = "GET", query = null, body = undefined } = {}) {
    let url = path;
    if (query) {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined && v !== "") qs.set(k, String(v));
      const s = qs.toString();
      if (s) url += (url.includes("?") ? "&" : "?") + s;
    }
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, "network", "the server did not answer (" + e.message + ")");
    }
    let data = null;
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(
        response.status,
        err.code || "http_" + response.status,
        err.message || response.statusText || "request failed",
        err.details,
      );
    }
    return data;
  }

  /** el("td", {class: "num", title: x}, child, "text", ...) — children are nodes or text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "text") node.textContent = String(v);
        else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  /** A scrolling table: `attrs` of the <table>, one header cell per `head` entry (its text, or
   * the th's attrs such as {class: "num", text}), then `body` (its <tbody>). */
  function dataTable(attrs, head, body) {
    const th = h => el("th", typeof h === "string" ? { text: h } : h);
    labelCells(
      body,
      head.map(h => (typeof h === "string" ? h : h.text || "")),
    );
    return el(
      "div",
      { class: "table-wrap" },
      el("table", attrs, el("thead", null, el("tr", null, head.map(th))), body),
    );
  }

  /** Give each body cell its column's name (`data-label`), which a table with the class
   * `cards-on-phone` shows before the cell on a narrow screen. */
  function labelCells(body, labels) {
    for (const tr of body.querySelectorAll("tr")) {
      let col = 0;
      for (const td of tr.children) {
        if (!td.hasAttribute("data-label") && labels[col] !== undefined) td.setAttribute("data-label", labels[col]);
        col += Number(td.getAttribute("colspan") || 1);
      }
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  /** Compact number: 7e9 → "7.00e9", 0.00123 → "1.23e-3", 4096 → "4096", 2.3456 → "2.346". */
  function fmt(x, digits = 3) {
    if (x === null || x === undefined || (typeof x === "number" && !isFinite(x))) return "—";
    if (typeof x !== "number") return String(x);
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (Number.isInteger(x) && a < 1e6) return String(x);
    if (a >= 1e5 || a < 1e-2) {
      const e = Math.floor(Math.log10(a));
      let m = x / Math.pow(10, e);
      if (Math.abs(m) >= 9.9995 && digits >= 3) {
        m /= 10;
        return m.toFixed(digits - 1) + "e" + (e + 1);
      }
      return m.toFixed(digits - 1) + "e" + e;
    }
    return Number(x.toPrecision(digits + 1)).toString();
  }

  /** Human scale: 2.15e8 → "215M", 1.4e12 → "1.4T". */
  function human(x) {
    if (x === null || x === undefined || !isFinite(x)) return "—";
    const units = [
      [1e12, "T"],
      [1e9, "B"],
      [1e6, "M"],
      [1e3, "k"],
    ];
    for (const [v, u] of units) if (Math.abs(x) >= v) return Number((x / v).toPrecision(3)) + u;
    return Number(x.toPrecision(3)).toString();
  }

  function fmtInterval(iv, f = fmt) {
    if (!iv) return "—";
    if (typeof iv === "number") return f(iv);
    return f(iv.value) + "  [" + f(iv.low) + ", " + f(iv.high) + "]";
  }

  function fmtDate(s) {
    if (!s) return "—";
    const d = new Date(s);
    return isNaN(d) ? String(s) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  function banner(message, kind = "error") {
    const b = document.getElementById("banner");
    if (!b) return;
    if (!message) {
      b.hidden = true;
      clear(b);
      return;
    }
    clear(b);
    b.className = "banner " + kind;
    b.append(message instanceof Node ? message : document.createTextNode(message));
    b.hidden = false;
  }

  /** A readable sentence for an API failure; 401/403 point at the token field. */
  function describeError(e) {
    if (!(e instanceof ApiError)) return String((e && e.message) || e);
    if (e.status === 401)
      return "The server needs an API token: paste one in the “API token” field (top right). (" + e.message + ")";
    if (e.status === 403) return "Your token lacks the scope for this: " + e.message;
    let s = e.message;
    if (e.details && e.details.length)
      s += " — " + e.details.map(d => (d.field ? d.field + ": " : "") + (d.message || "")).join("; ");
    return s;
  }

  function initTokenForm(onChange) {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    const clearBtn = document.getElementById("token-clear");
    if (!form) return;
    input.value = getToken();
    form.addEventListener("submit", ev => {
      ev.preventDefault();
      setToken(input.value.trim());
      onChange();
    });
    clearBtn.addEventListener("click", () => {
      input.value = "";
      setToken("");
      onChange();
    });
  }

  return {
    api,
    ApiError,
    el,
    dataTable,
    labelCells,
    clear,
    fmt,
    human,
    fmtInterval,
    fmtDate,
    banner,
    describeError,
    initTokenForm,
    getToken,
    setToken,
  };
})();
