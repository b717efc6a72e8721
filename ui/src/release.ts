// Releasing the brake, deliberately: the resume dialog (a gradual release is the default, the
// backlog is in view, the duration can be chosen) and the controls of a release in progress
// (hold, continue, extend, abort). Releasing everything at once is what brings the spike back,
// so it is offered last and never focused.

import type { RampAction, RampSpec, Switch } from "./api";
import { h } from "./dom";
import { admittedFraction, duration } from "./format";
import type { Model } from "./model";

/** The default release, the same as the server's (`RampSpec::default_release`). */
export const DEFAULT_RELEASE_MINUTES = 10;
/** How much an "Extend" press adds to the rest of a release. */
export const EXTEND_SECS = 300;

type Choice = "steps" | "linear" | "now";

/** The ramp a choice asks for, over `minutes`; `undefined` releases at once. */
export function releaseSpec(choice: Choice, minutes: number): RampSpec | undefined {
  const duration_secs = Math.round(minutes * 60);
  if (choice === "steps") return { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs };
  if (choice === "linear") return { kind: "linear", from: 0.05, duration_secs };
  return undefined;
}

/** Checks the custom duration: whole minutes from 1 to a day (the server's longest ramp). */
export function parseMinutes(raw: string): number | string {
  const n = Number(raw.trim());
  if (!raw.trim() || !Number.isFinite(n)) return "Enter the release's duration in minutes.";
  if (n < 1 || n > 1440) return "The release takes 1 to 1440 minutes (a day).";
  return n;
}

/**
 * What the backlog looks like now: the newest sample of the configured series
 * (`primary.backlog_series` on the server, `queue_depth` by default) and its trend over the
 * last minute.
 */
export function backlogLine(m: Model, nowS: number): string {
  const name = m.info?.backlog_series || "queue_depth";
  const bufs = [...m.series.values()].filter((b) => b.name === name && b.ts.length > 0);
  if (bufs.length === 0) {
    return `Backlog: no "${name}" samples yet, so the size of the backlog is unknown (set primary.backlog_series to the series that measures it).`;
  }
  let total = 0;
  let minuteAgo = 0;
  let newest = 0;
  for (const b of bufs) {
    const i = b.ts.length - 1;
    total += b.values[i];
    newest = Math.max(newest, b.ts[i]);
    let j = i;
    while (j > 0 && b.ts[j] > b.ts[i] - 60) j--;
    minuteAgo += b.values[j];
  }
  const fmt = (v: number) => Math.round(v).toLocaleString("en-US");
  const change = total - minuteAgo;
  const trend = change > 0 ? `, up ${fmt(change)} in the last minute` : change < 0 ? `, down ${fmt(-change)} in the last minute` : "";
  const age = nowS - newest > 10 ? ` (newest sample ${duration((nowS - newest) * 1000)} old)` : "";
  return `Backlog: ${fmt(total)} waiting (${name})${trend}${age}. A release lets it loose on the database.`;
}

/**
 * Fills `form` with the resume choices. `go` gets the ramp to release with (`undefined`: at
 * once). Returns the element to focus: the default, gradual choice.
 */
export function resumeForm(
  form: HTMLFormElement,
  m: Model,
  now: number,
  go: (ramp: RampSpec | undefined) => void,
  cancel: () => void,
): HTMLElement {
  // The duration is checked here, with a message that says what is allowed, instead of the
  // browser's bubble (which a submit by Enter on a radio would show far from the field).
  form.noValidate = true;
  form.append(h("p", { class: "backlog", "data-testid": "backlog" }, backlogLine(m, now / 1000)));
  const minutes = h("input", {
    type: "number",
    id: "release-minutes",
    min: "1",
    max: "1440",
    step: "1",
    value: String(DEFAULT_RELEASE_MINUTES),
    "data-testid": "release-minutes",
  });
  const problem = h("p", { class: "error hidden", role: "alert", "data-testid": "release-problem" });
  const options: [Choice, string][] = [
    ["steps", "Gradually, in steps: 10% → 25% → 50% → 100%"],
    ["linear", "Gradually, in a straight line: 5% → 100%"],
    ["now", "Everything at once: the whole backlog reaches the database now"],
  ];
  const fieldset = h("fieldset", { class: "release-choices" }, h("legend", {}, "How to release"));
  const radios = options.map(([value, label], i) => {
    const r = h("input", { type: "radio", name: "release", id: `release-${value}`, value, "data-testid": `release-${value}` });
    r.checked = i === 0;
    fieldset.append(h("div", { class: value === "now" ? "choice at-once" : "choice" }, r, h("label", { for: `release-${value}` }, label)));
    return r;
  });
  fieldset.append(
    h("div", { class: "duration" }, h("label", { for: "release-minutes" }, "Over"), minutes, h("span", {}, "minutes")),
  );
  form.append(fieldset, problem);
  const confirm = h("button", { type: "submit", class: "go", "data-testid": "confirm-release" });
  const choice = (): Choice => (radios.find((r) => r.checked)?.value as Choice) ?? "steps";
  const label = () => {
    const c = choice();
    const mins = parseMinutes(minutes.value);
    minutes.disabled = c === "now";
    confirm.className = c === "now" ? "danger" : "go";
    confirm.textContent = c === "now" ? "Release everything now" : typeof mins === "number" ? `Release gradually over ${mins} min` : "Release gradually";
    // A complaint about the duration goes once the duration is fixed (or no longer used).
    if (c === "now" || typeof mins === "number") problem.classList.add("hidden");
  };
  for (const r of radios) r.addEventListener("change", label);
  minutes.addEventListener("input", label);
  label();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const c = choice();
    const mins = c === "now" ? DEFAULT_RELEASE_MINUTES : parseMinutes(minutes.value);
    if (typeof mins === "string") {
      problem.textContent = mins;
      problem.classList.remove("hidden");
      minutes.focus();
      return;
    }
    go(releaseSpec(c, mins));
  });
  const no = h("button", { type: "button", value: "cancel", "data-testid": "cancel" }, "Cancel");
  no.addEventListener("click", (e) => {
    e.preventDefault();
    cancel();
  });
  form.append(h("div", { class: "dialog-buttons" }, confirm, no));
  return radios[0];
}

/**
 * The release in progress, with its controls: hold (or continue a hold), extend by five
 * minutes, abort (back to paused). Empty when nothing is being released.
 */
export function rampPanel(sw: Switch, now: number, canChange: boolean, act: (a: RampAction) => void): Node[] {
  const r = sw.ramp;
  const f = admittedFraction(sw, now);
  if (sw.state !== "running" || !r || f >= 1) return [];
  const pct = Math.round(f * 100);
  const held = r.held ?? null;
  const text = held
    ? `Release held at ${pct}% of normal work since ${new Date(held.since).toLocaleTimeString()}; ${duration(held.remaining_secs * 1000)} of the release left when it goes on`
    : `Ramping up: ${pct}% of normal work admitted, 100% in ${duration(Date.parse(r.started_at) + r.duration_secs * 1000 - now)}`;
  const button = (a: RampAction, label: string, title: string) => {
    const b = h("button", { type: "button", "data-testid": `ramp-${a}`, title, class: a === "abort" ? "danger" : "" }, label);
    b.disabled = !canChange;
    b.addEventListener("click", () => act(a));
    return b;
  };
  return [
    h("span", { "data-testid": "ramp-text" }, text),
    h("progress", { max: "100", value: String(pct) }),
    h(
      "div",
      { class: "ramp-controls", role: "group", "aria-label": "Release controls" },
      held
        ? button("continue", "Continue release", "Go on from the held share over what was left of the release")
        : button("hold", "Hold here", "Keep admitting this share of work until you continue (a day at most)"),
      button("extend", "+5 min", "Make the rest of the release take five minutes longer"),
      button("abort", "Abort: pause again", "Stop the release and pause the workers again"),
    ),
  ];
}
