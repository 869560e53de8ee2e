/* The list of studies at `/`. */
"use strict";

(() => {
  const { api, el, clear, fmt, fmtDate, banner, describeError } = HP;

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
      body.append(el("tr", null, el("td", { colspan: 6, class: "muted", text: "No studies yet: create one with POST /v1/studies or `hpscale import --create`." })));
    }
    for (const s of data.items) {
      body.append(el("tr", { "data-study": s.name },
        el("td", null, el("a", { href: "/studies/" + encodeURIComponent(s.name), text: s.name })),
        el("td", { text: s.description || "" }),
        el("td", { text: s.parameterization || "" }),
        el("td", { text: s.optimizer || "" }),
        el("td", { class: "num", text: s.seq_len == null ? "—" : fmt(s.seq_len) }),
        el("td", { text: fmtDate(s.created_at) }),
      ));
    }
  }

  HP.initTokenForm(load);
  load();
})();
