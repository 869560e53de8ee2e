/* Exclude (with a reason) or include a run (ES module): the contract 1.1 endpoints, write scope.
 * Used by the runs table and the run page; touches no element at import. The outcome is written
 * to the page's #runs-message. */

const { api, el, clear, describeError } = HP;

/** The Exclude button of run `r` of the study at API path `base` (or Include, for an excluded
 * run); `after()` runs once the change is stored (to reload what shows the run). */
export function excludeButton(base, r, after) {
  if (r.excluded) {
    return el(
      "button",
      { type: "button", class: "secondary small-btn include", onclick: () => setExcluded(base, r, false, null, after) },
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
          setExcluded(base, r, true, input.value.trim(), after);
        });
        cell.append(form);
        input.focus();
      },
    },
    "Exclude",
  );
}

async function setExcluded(base, r, exclude, reason, after) {
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
    await after();
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
