/* How the latest fit used each run (ES module): the chips of the runs table. The states come
 * from GET .../fits/{id}/run-states; this module only names and colours them. */

const { el } = HP;

export const FIT_STATES = {
  near_optimal: ["near-optimal", "ok", "within 0.25% of its scale's best loss: sets the near-optimal ranges"],
  used: ["used", "info", "completed; the fit's bowl and optimum use it"],
  diverged: ["treated as diverged", "bad", "diverged, or > 20% above its scale's best loss: only bounds the optimum"],
  outlier: ["outlier", "warn", "implausible for its scale (see the fit's outliers): left out"],
  excluded: ["excluded", "muted", "excluded by a user: no fit uses it"],
  failed: ["not used", "muted", "no final loss, or a scale the latest fit has not seen"],
};

/** A chip for a run's fit state (or "no fit" when there is none). */
export function fitStateChip(state) {
  const [label, kind, why] = FIT_STATES[state] || ["no fit", "muted", "no fit of these runs yet"];
  return el("span", { class: "pill " + kind, title: why, "data-state": state || "" }, label);
}
