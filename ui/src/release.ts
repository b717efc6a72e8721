// Releasing the brake, deliberately: the resume dialog (a gradual release is the default, the
// backlog is in view, the duration can be chosen) and the controls of a release in progress
// (hold, continue, extend, abort). Releasing everything at once is what brings the spike back,
// so it is offered last and never focused.

import type { GuardSpec, GuardStatus, Ramp, RampAction, RampGuard, RampSpec, Switch } from "./api";
import { h } from "./dom";
import { admittedFraction, duration, rampText } from "./format";
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
 * Reads a guard as the CLI takes it (`brb_api::GuardSpec::parse`): `db_load < 80`,
 * `free_mb > 500` or `10 < x < 90`, optionally followed by `, interval=10s, failures=3`.
 * Returns what is wrong instead when it cannot.
 */
export function parseGuard(raw: string): GuardSpec | string {
  const bad = `Cannot read the guard "${raw.trim()}": write e.g. db_load < 80 (or db_load < 80, interval=10s, failures=3).`;
  const [cond, ...opts] = raw.split(",");
  const num = (t: string | undefined) => (t !== undefined && t.trim() !== "" && Number.isFinite(Number(t)) ? Number(t) : null);
  const name = (t: string | undefined) => (t !== undefined && /^[A-Za-z0-9_:.-]{1,100}$/.test(t.trim()) ? t.trim() : null);
  let spec: GuardSpec | null = null;
  const lt = cond.split("<");
  const gt = cond.split(">");
  if (lt.length === 2 && gt.length === 1 && name(lt[0]) && num(lt[1]) !== null) spec = { series: name(lt[0])!, below: num(lt[1])! };
  else if (lt.length === 3 && name(lt[1]) && num(lt[0]) !== null && num(lt[2]) !== null) {
    spec = { series: name(lt[1])!, above: num(lt[0])!, below: num(lt[2])! };
    if (spec.above! >= spec.below!) return `The guard's range is empty: ${spec.above} is not below ${spec.below}.`;
  } else if (gt.length === 2 && lt.length === 1 && name(gt[0]) && num(gt[1]) !== null) spec = { series: name(gt[0])!, above: num(gt[1])! };
  if (!spec) return bad;
  for (const o of opts) {
    const [k, v] = o.split("=").map((x) => x.trim());
    const secs = /^(\d+)(s|m)?$/.exec(v ?? "");
    if (k === "interval" && secs) spec.interval_secs = Number(secs[1]) * (secs[2] === "m" ? 60 : 1);
    else if (k === "failures" && /^\d+$/.test(v ?? "")) spec.failure_limit = Number(v);
    else return bad;
  }
  return spec;
}

/** A guard as its condition reads: `db_load < 80`. */
export function guardCondition(g: GuardSpec): string {
  if (g.above !== undefined && g.below !== undefined) return `${g.above} < ${g.series} < ${g.below}`;
  return g.below !== undefined ? `${g.series} < ${g.below}` : `${g.series} > ${g.above}`;
}

/**
 * A release as the audit log shows it (from the entry's own `ramp`, so a release made before
 * the page loaded reads the same): the plan, a guarded release's steps, step and guards, or
 * the hold it was put on.
 */
export function auditRamp(r: Ramp): string {
  const pct = (f: number) => `${Math.round(f * 100)}%`;
  const g = r.guard;
  if (g) {
    const conds = g.guards.map(guardCondition).join(", ");
    return `guarded ${g.steps.map(pct).join(" → ")}, ${duration(g.step_secs * 1000)} a step · at step ${g.step + 1}/${g.steps.length} · guard ${conds}`;
  }
  if (r.held) return `held at ${pct(r.held.fraction)}`;
  return rampText(r);
}

const fmtValue = (v: number) => (Math.round(v * 10) / 10).toLocaleString("en-US");

/**
 * What a guarded release is doing, in words: the step, each guard's condition and its last
 * value against the limit, and whether it advances, holds (and why) or paused again.
 * `st` is the evaluator's last status (absent until its first check).
 */
export function guardLine(g: RampGuard, st: GuardStatus | undefined): { phase: string; text: string } {
  const pct = Math.round((g.steps[g.step] ?? 1) * 100);
  const head = `Guarded release at ${pct}% (step ${g.step + 1}/${g.steps.length})`;
  const fresh = st && st.step === g.step + 1 ? st : undefined;
  const checks = g.guards.map((spec, i) => {
    const c = fresh?.checks[i];
    const cond = guardCondition(spec);
    if (!c || c.outcome === "pending") return `${cond}: not checked yet`;
    if (c.value === null) return `${cond}: no data`;
    return `${cond}: now ${fmtValue(c.value)}${c.outcome === "fail" ? ` (failing, ${c.consecutive_failures} of ${spec.failure_limit ?? 3})` : ""}`;
  });
  const phase = fresh?.phase ?? "advancing";
  const tail =
    phase === "holding"
      ? ` · holding${fresh?.reason ? `: ${fresh.reason.replace(/^holding at [^:]*: /, "")}` : ""}`
      : phase === "tripped"
        ? " · re-paused"
        : " · advancing";
  return { phase, text: `${head}, guard ${checks.join(", ")}${tail}` };
}

/**
 * Fills `form` with the resume choices. `go` gets the ramp to release with (`undefined`: at
 * once) and the guards (none unless one was typed). Returns the element to focus: the
 * default, gradual choice.
 */
export function resumeForm(
  form: HTMLFormElement,
  m: Model,
  now: number,
  go: (ramp: RampSpec | undefined, guards: GuardSpec[], reason?: string) => void,
  cancel: () => void,
  approval: { notice: string; pendingBy: string | null } | null = null,
): HTMLElement {
  // The duration is checked here, with a message that says what is allowed, instead of the
  // browser's bubble (which a submit by Enter on a radio would show far from the field).
  form.noValidate = true;
  // Said before anyone presses: on such a switch a resume only files a request.
  if (approval) {
    form.append(h("p", { class: "approval-notice", "data-testid": "approval-notice" }, approval.notice));
    if (approval.pendingBy) {
      form.append(h("p", { class: "approval-notice" }, `${approval.pendingBy} has a request open (shown under the button): approve or reject it there.`));
    }
  }
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
  // Optional: each step proceeds only while the guard holds; it pauses again if it keeps failing.
  const guard = h("input", { type: "text", id: "release-guard", placeholder: "e.g. db_load < 80", "data-testid": "release-guard", autocomplete: "off" });
  fieldset.append(
    h(
      "div",
      { class: "guard" },
      h("label", { for: "release-guard" }, "Guard (optional)"),
      guard,
      h("span", { class: "hint" }, "steps only while it holds; pauses again if it keeps failing"),
    ),
  );
  // A request needs a reason: the approver decides on it.
  const why = h("textarea", { id: "request-reason", rows: "2", placeholder: "e.g. queue drained, db at 30%", "data-testid": "request-reason-input" });
  if (approval) form.append(fieldset, h("label", { for: "request-reason" }, "Why? (the approver decides on it; required)"), why, problem);
  else form.append(fieldset, problem);
  const confirm = h("button", { type: "submit", class: "go", "data-testid": "confirm-release" });
  const choice = (): Choice => (radios.find((r) => r.checked)?.value as Choice) ?? "steps";
  const label = () => {
    const c = choice();
    const mins = parseMinutes(minutes.value);
    minutes.disabled = c === "now";
    confirm.className = c === "now" ? "danger" : "go";
    const how = c === "now" ? "everything now" : typeof mins === "number" ? `gradually over ${mins} min` : "gradually";
    confirm.textContent = approval ? `Request resume: ${how === "everything now" ? "everything at once" : how}` : `Release ${how}`;
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
    const guards: GuardSpec[] = [];
    if (guard.value.trim()) {
      const g = c === "steps" ? parseGuard(guard.value) : "A guard needs the release in steps: it holds a step until the guard passes.";
      if (typeof g === "string") {
        problem.textContent = g;
        problem.classList.remove("hidden");
        guard.focus();
        return;
      }
      guards.push(g);
    }
    if (approval && !why.value.trim()) {
      problem.textContent = "Say why: the approver decides on it.";
      problem.classList.remove("hidden");
      why.focus();
      return;
    }
    go(releaseSpec(c, mins), guards, approval ? why.value.trim() : undefined);
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
export function rampPanel(
  sw: Switch,
  now: number,
  canChange: boolean,
  act: (a: RampAction) => void,
  guard?: GuardStatus,
): Node[] {
  const r = sw.ramp;
  const f = admittedFraction(sw, now);
  // A guarded release at 100% is still watched (one more step) before it ends.
  if (sw.state !== "running" || !r || (f >= 1 && !r.guard)) return [];
  const pct = Math.round(f * 100);
  const held = r.held && !r.guard ? r.held : null;
  const text = r.guard
    ? guardLine(r.guard, guard).text
    : held
    ? `Release held at ${pct}% of normal work since ${new Date(held.since).toLocaleTimeString()}; ${duration(held.remaining_secs * 1000)} of the release left when it goes on`
    : `Ramping up: ${pct}% of normal work admitted, 100% in ${duration(Date.parse(r.started_at) + r.duration_secs * 1000 - now)}`;
  const button = (a: RampAction, label: string, title: string) => {
    const b = h("button", { type: "button", "data-testid": `ramp-${a}`, title, class: a === "abort" ? "danger" : "" }, label);
    b.disabled = !canChange;
    b.addEventListener("click", () => act(a));
    return b;
  };
  return [
    h("span", { "data-testid": "ramp-text", "data-guard": r.guard ? guardLine(r.guard, guard).phase : "" }, text),
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
