// The Big Red Button screen. Rendering is plain DOM: built once, then updated from the model.

import { BackendError, type GuardSpec, type RampAction, type RampSpec, type Switch, type SwitchState } from "./api";
import type { Backend } from "./backend";
import { ackLine, admittedFraction, auditWhen, changeLine, clock, duration, sourceLabel } from "./format";
import { Graph, type GuardLimit } from "./graphs";
import { type Model, lastResume, noteSwitch, primary, seriesKey, unreachable } from "./model";
import { markers, pausedIntervals, visibleRange } from "./pauses";
import { h } from "./dom";
import { EXTEND_SECS, auditRamp, guardCondition, guardLine, rampPanel, resumeForm } from "./release";
import { seriesMeta } from "./series-meta";
import { type StateLook, faviconUrl, inkOn, stateKind, stateLook } from "./states";
import { ApprovalPanel } from "./approval-panel";
import { approvalNotice, approvalSecs } from "./approvals";
import { DrillPanel } from "./drill-panel";

/** How long a press waits for the control plane before it says so. */
export const PRESS_TIMEOUT_MS = 5_000;

/** The other ways to pull the brake, named whenever the console cannot. */
export const OTHER_WAYS =
  'Pause another way: `brb pause --reason "…"` from a shell, `/bigred pause` in Slack, or the office button.';

const SVG = "http://www.w3.org/2000/svg";

/** A state's shape as an inline SVG (decorative: the word says the same). */
function icon(path: string): SVGSVGElement {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const p = document.createElementNS(SVG, "path");
  p.setAttribute("d", path);
  p.setAttribute("fill", "currentColor");
  svg.append(p);
  return svg;
}

/** Series shown first, in this order; any other series the server offers follows. */
const MAIN_SERIES = ["jobs_per_second", "queue_depth", "db_load"];


export class App {
  private root: HTMLElement;
  private env = h("header", { class: "env", "data-testid": "environment" });
  private banner = h("div", { class: "banner hidden", "data-testid": "banner" });
  /** The one live region: a sentence when something changes, never the ticking numbers. */
  private live = h("div", { class: "sr-only", role: "status", "aria-live": "polite", "data-testid": "live" });
  private lastAnnounced = "";
  private sticky = h("div", { class: "sticky-status hidden", "aria-hidden": "true", "data-testid": "sticky" });
  private lateEl = h("div", { class: "late hidden", role: "alert", "data-testid": "late" });
  private favicon: HTMLLinkElement | null = null;
  private smallToggles = new Map<string, { li: HTMLLIElement; button: HTMLButtonElement; desc: HTMLSpanElement }>();
  private errorBox = h("div", { class: "error hidden", role: "alert", "data-testid": "error" });
  private toggle = h("button", { class: "toggle", role: "switch", "aria-checked": "false", "data-testid": "toggle" });
  private stateLine = h("p", { class: "state-line", "data-testid": "state-line" });
  private ackEl = h("p", { class: "acks", "data-testid": "acks" });
  private rampEl = h("div", { class: "ramp hidden", "data-testid": "ramp" });
  private buttonEl = h("p", { class: "device hidden", "data-testid": "device" });
  private graphsEl = h("div", { class: "graphs", "data-testid": "graphs" });
  private others = h("ul", { class: "others", "data-testid": "others" });
  private auditEl = h("tbody", { "data-testid": "audit" });
  private dialog = h("dialog", { class: "confirm", "data-testid": "confirm" });
  private graphs = new Map<string, Graph>();
  /** Open resume requests (under the button) and the fire drill (in the lower half). */
  private requests!: ApprovalPanel;
  private drill!: DrillPanel;
  /** Switches a 409 `approval_required` revealed (a control plane older than `approvals`). */
  private approvalLearned = new Set<string>();
  private windowSecs = 300;
  private watchAfterRelease = false;

  constructor(
    mount: HTMLElement,
    private model: Model,
    private backend: Backend,
    private refresh: () => Promise<void>,
  ) {
    this.root = mount;
    const host = {
      model,
      backend,
      dialog: this.dialog,
      refresh,
      render: () => this.render(),
      focusHome: () => this.toggle.focus(),
    };
    this.requests = new ApprovalPanel(host);
    this.drill = new DrillPanel(host);
    this.build();
  }

  private build() {
    const windows = h("div", { class: "windows", role: "group", "aria-label": "Graph window" });
    for (const [label, secs] of [["5 min", 300], ["15 min", 900], ["1 h", 3600]] as const) {
      const b = h("button", { "data-window": String(secs) }, label);
      b.addEventListener("click", () => {
        this.windowSecs = secs;
        this.watchAfterRelease = false;
        this.render();
      });
      windows.append(b);
    }
    const watch = h("button", { "data-window": "release", title: "Keep the last release in frame" }, "Watch after release");
    watch.addEventListener("click", () => {
      this.watchAfterRelease = true;
      this.render();
    });
    windows.append(watch);

    this.toggle.addEventListener("click", () => {
      // Not `disabled` while a press is pending: a disabled button drops keyboard focus.
      if (this.toggle.getAttribute("aria-disabled") !== "true") this.askConfirm();
    });
    const legend = h(
      "ul",
      { class: "legend", "aria-label": "Legend" },
      h("li", {}, h("span", { class: "swatch shade", "aria-hidden": "true" }), "paused period"),
      h("li", {}, h("span", { class: "swatch mark-paused", "aria-hidden": "true" }), "paused (who: why)"),
      h("li", {}, h("span", { class: "swatch mark-running", "aria-hidden": "true" }), "resumed"),
      h("li", {}, h("span", { class: "swatch gap", "aria-hidden": "true" }), "break in a line: no samples"),
    );
    this.root.replaceChildren(
      this.env,
      this.banner,
      this.sticky,
      this.live,
      h(
        "main",
        {},
        h(
          "section",
          { class: "button-panel", "aria-label": "The Big Red Button" },
          this.toggle,
          this.lateEl,
          this.stateLine,
          this.ackEl,
          this.requests.el,
          this.rampEl,
          this.buttonEl,
          this.errorBox,
        ),
        h("section", { class: "graphs-panel", "aria-label": "Utilization" }, h("div", { class: "graphs-head" }, h("h2", {}, "Utilization"), windows), legend, this.graphsEl),
        h(
          "section",
          { class: "lower" },
          h("div", { class: "others-panel" }, h("h2", {}, "Other switches"), this.others),
          h(
            "div",
            { class: "audit-panel" },
            h("h2", {}, "Audit log"),
            // A scrolling region is reachable by keyboard (it scrolls sideways on a phone).
            h("div", { class: "table-scroll", tabindex: "0", role: "region", "aria-label": "Audit log entries" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Switch"), h("th", {}, "Change"), h("th", {}, "Ramp"), h("th", {}, "Who"), h("th", {}, "From"), h("th", {}, "Why"))), this.auditEl)),
          ),
          this.drill.el,
        ),
      ),
      this.dialog,
    );
    window.addEventListener("resize", () => this.layoutGraphs());
    // The compact status shows while the big button is out of view (e.g. watching graphs).
    if ("IntersectionObserver" in window) {
      // Shown as soon as less than half of the button is in view.
      new IntersectionObserver(([e]) => this.sticky.classList.toggle("hidden", e.intersectionRatio >= 0.5), {
        threshold: [0, 0.5, 1],
      }).observe(this.toggle);
    }
  }

  private layoutGraphs() {
    const w = this.graphsEl.clientWidth;
    const cols = w > 1100 ? 3 : w > 700 ? 2 : 1;
    // Each graph's width includes the flex gap (12 px) between columns.
    for (const g of this.graphs.values()) g.resize(Math.floor((w - 12 * (cols - 1)) / cols));
  }

  /** The confirm step: the reason for a pause, the way back for a resume. */
  askConfirm(target?: Switch) {
    const sw = target ?? primary(this.model);
    if (!sw || this.model.pending) return;
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : this.toggle;
    // Keyboard users land back where they were, whichever way the dialog closes.
    this.dialog.addEventListener("close", () => opener.focus(), { once: true });
    // With the state unknown, the only offer is the brake: resuming blind is not.
    const to: SwitchState = unreachable(this.model) ? "paused" : sw.state === "paused" ? "running" : "paused";
    const env = this.model.info?.environment.name ?? "";
    const reason = h("textarea", { id: "reason", rows: "2", placeholder: "e.g. db at 100% CPU", "data-testid": "reason" });
    const form = h("form", { method: "dialog" });
    const title = to === "paused"
      ? `Pause ${sw.primary ? "all background workers" : sw.name} in ${env.toUpperCase()}?`
      : `Resume ${sw.primary ? "background workers" : sw.name} in ${env.toUpperCase()}?`;
    form.append(h("h2", {}, title));
    const buttons = h("div", { class: "dialog-buttons" });
    if (to === "paused") {
      form.append(h("label", { for: "reason" }, "Why? (recorded and shown to everyone)"), reason);
      const go = h("button", { class: "danger", value: "go", "data-testid": "confirm-pause" }, "Pause");
      // Enter sends (the reason is one line); Shift+Enter still breaks a line.
      reason.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          go.click();
        }
      });
      go.addEventListener("click", (e) => {
        e.preventDefault();
        this.dialog.close();
        void this.change(sw, "paused", reason.value.trim() || undefined, undefined);
      });
      buttons.append(go);
    } else {
      const secs = approvalSecs(this.model.info, sw.name);
      const needs = secs !== null || this.approvalLearned.has(sw.name);
      const other = sw.resume_request && sw.resume_request.requested_by !== this.model.info?.caller.name ? sw.resume_request.requested_by : null;
      const first = resumeForm(
        form,
        this.model,
        Date.now(),
        (ramp, guards, why) => {
          this.dialog.close();
          if (needs) void this.fileRequest(sw, why ?? "", ramp, guards);
          else void this.change(sw, "running", undefined, ramp, guards);
        },
        () => this.dialog.close(),
        needs ? { notice: approvalNotice(secs), pendingBy: other } : null,
      );
      this.dialog.replaceChildren(form);
      this.dialog.showModal();
      first.focus();
      return;
    }
    const cancel = h("button", { value: "cancel", "data-testid": "cancel" }, "Cancel");
    cancel.addEventListener("click", (e) => {
      e.preventDefault();
      this.dialog.close();
    });
    buttons.append(cancel);
    form.append(buttons);
    this.dialog.replaceChildren(form);
    this.dialog.showModal();
    (to === "paused" ? reason : (buttons.firstElementChild as HTMLElement)).focus();
  }

  private async change(sw: Switch, to: SwitchState, reason: string | undefined, ramp: RampSpec | undefined, guards: GuardSpec[] = []) {
    this.model.pending = { switch: sw.name, to };
    this.model.error = null;
    this.model.late = null;
    this.render();
    const sentAt = Date.now();
    const request = this.backend.setState(sw.name, {
      state: to,
      reason,
      source: this.backend.source,
      ramp,
      ...(guards.length ? { guards } : {}),
    });
    let timer = 0;
    const timeout = new Promise<never>((_, reject) => {
      timer = window.setTimeout(() => reject(new BackendError("timeout", `the control plane did not answer within ${PRESS_TIMEOUT_MS / 1000} s`)), PRESS_TIMEOUT_MS);
    });
    try {
      const updated = await Promise.race([request, timeout]).finally(() => clearTimeout(timer));
      // Acknowledged: the control plane committed it.
      const cur = this.model.switches.get(sw.name);
      if (!cur || cur.version <= updated.version) this.model.switches.set(sw.name, updated);
      this.model.pending = null;
      await this.refresh();
    } catch (e) {
      this.model.pending = null;
      const err = e instanceof BackendError ? e : new BackendError("internal", String(e));
      // A control plane that did not say (in `/info`) that this switch needs approval: the
      // next dialog files a request; say so instead of the bare refusal.
      const needsApproval = err.code === "approval_required";
      if (needsApproval) this.approvalLearned.add(sw.name);
      this.model.error = {
        code: err.code,
        message: needsApproval ? "this switch needs a second operator: press again to file a resume request with your reason" : err.message,
      };
      if (err.code === "timeout" || err.code === "unreachable") {
        // It may still be applied when the control plane wakes up: remember it, so that the
        // change (its answer, or the event of it) is shown as this press, applied late.
        this.model.unconfirmed = {
          switch: sw.name,
          to,
          reason,
          sentAt,
          fromVersion: sw.version,
          actor: this.model.info?.caller.name ?? "",
          source: this.backend.source,
        };
        request
          .then((applied) => {
            const cur = this.model.switches.get(sw.name);
            if (!cur || cur.version < applied.version) this.model.switches.set(sw.name, applied);
            noteSwitch(this.model, applied);
            this.render();
          })
          .catch(() => {
            // Refused or never answered: nothing was applied by this request.
          });
      }
    }
    this.render();
  }

  render(now = Date.now()) {
    const m = this.model;
    const down = unreachable(m);
    // Frozen clock while the control plane is unreachable: nothing may tick as if it knew.
    const at = down && m.lostSince !== null ? m.lostSince : now;
    const p = down ? (m.lastKnown ?? primary(m)) : primary(m);
    if (m.info) {
      this.env.textContent = `${m.info.environment.name.toUpperCase()} · Big Red Button`;
      this.env.style.background = m.info.environment.color;
      this.env.style.color = inkOn(m.info.environment.color);
    }
    // Connection banner: dark with hazard stripes and a grey "unknown" mark, never a red bar
    // that could pass for a red environment header.
    if (down && m.lostSince !== null) {
      this.banner.replaceChildren(
        icon("M1 21h22L12 2 1 21zm12-3h-2v-2h2v2zm0-4h-2v-4h2v4z"),
        h(
          "div",
          {},
          h("strong", {}, "No connection to the control plane"),
          ` — nothing heard for ${duration(now - m.lostSince)} (since ${clock(m.lostSince)}). The state is unknown; what you see is the last known. Reconnecting…`,
          h("div", { class: "ways" }, OTHER_WAYS),
        ),
      );
      this.banner.classList.remove("hidden");
    } else {
      this.banner.classList.add("hidden");
    }
    document.body.classList.toggle("stale", down);
    if (m.error) {
      const truth = down
        ? "The control plane cannot be reached: the state below is only the last known."
        : "The state below is what the control plane says.";
      const ways = m.error.code === "timeout" || m.error.code === "unreachable" ? ` ${OTHER_WAYS}` : "";
      this.errorBox.textContent = `Not done: ${m.error.message} (${m.error.code}). ${truth}${ways}`;
      this.errorBox.classList.remove("hidden");
    } else {
      this.errorBox.classList.add("hidden");
    }
    if (m.late) {
      const verb = m.late.to === "paused" ? "pause" : "resume";
      this.lateEl.replaceChildren(
        `Your ${verb} sent at ${clock(m.late.sentAt)}, which timed out, was applied by the control plane at ${clock(Date.parse(m.late.appliedAt))}. `,
        this.dismissButton(),
      );
      this.lateEl.classList.remove("hidden");
    } else if (m.unconfirmed) {
      const verb = m.unconfirmed.to === "paused" ? "pause" : "resume";
      this.lateEl.textContent = `Your ${verb} sent at ${clock(m.unconfirmed.sentAt)} is unconfirmed: the control plane may still apply it when it answers, and this page will say so.`;
      this.lateEl.classList.remove("hidden");
    } else {
      this.lateEl.classList.add("hidden");
    }
    if (p) this.renderToggle(p, at, down, now);
    if (m.button) {
      this.buttonEl.textContent = m.button;
      this.buttonEl.classList.remove("hidden");
    }
    this.requests.render(now, down);
    this.drill.render(now, down);
    this.renderGraphs(now);
    this.renderOthers(down);
    this.renderAudit();
  }

  private dismissButton(): HTMLButtonElement {
    const b = h("button", { class: "dismiss", "data-testid": "late-dismiss" }, "OK");
    b.addEventListener("click", () => {
      this.model.late = null;
      this.render();
      this.toggle.focus();
    });
    return b;
  }

  /** `at` is the time the texts are computed for: now, or when the connection was lost. */
  private renderToggle(p: Switch, at: number, down: boolean, now: number) {
    const pending = this.model.pending?.switch === p.name ? this.model.pending : null;
    const counts = this.model.counts.get(p.name);
    const look = stateLook(stateKind(p, counts, at, !down), p, counts, at);
    document.body.classList.toggle("paused", !down && p.state === "paused");
    document.body.dataset.state = look.kind;
    this.toggle.className = `toggle ${look.kind}${pending ? " pending" : ""}`;
    this.toggle.style.setProperty("--state", look.color);
    this.toggle.style.setProperty("--ink", look.ink);
    this.toggle.setAttribute("aria-checked", down ? "mixed" : String(p.state === "paused"));
    this.toggle.dataset.state = p.state;
    this.toggle.dataset.kind = look.kind;
    const locked = pending !== null || this.model.info?.caller.role === "viewer";
    this.toggle.setAttribute("aria-disabled", String(locked));
    this.toggle.disabled = this.model.info?.caller.role === "viewer";
    const big = pending ? (pending.to === "paused" ? "PAUSING…" : "RESUMING…") : look.word;
    const lastKnown = `last known: ${p.state} at ${clock(this.model.lostSince ?? at)}`;
    const small = pending
      ? "waiting for the control plane"
      : down
        ? lastKnown
        : p.state === "paused"
          ? approvalSecs(this.model.info, p.name) === null ? "press to resume" : "press to ask to resume"
          : "press to pause";
    // Rebuilt only when its words or shape change: replacing the nodes under a pointer on every
    // tick can swallow a click that lands between its press and its release.
    const face = `${look.icon}|${big}|${small}`;
    if (face !== this.toggleFace) {
      this.toggleFace = face;
      this.toggle.replaceChildren(icon(look.icon), h("span", { class: "big" }, big), h("span", { class: "small" }, small));
    }
    const action = pending ? "waiting for the control plane" : down ? `${lastKnown}; press to try pausing` : small;
    this.toggle.setAttribute("aria-label", `Big Red Button: ${big.toLowerCase()}; ${action}`);
    this.stateLine.textContent = down ? `Last known: ${changeLine(p, at)}` : changeLine(p, at);
    const acks = ackLine(p, this.model.counts.get(p.name));
    this.ackEl.textContent = down ? `last known: ${acks}` : acks;
    const f = admittedFraction(p, at);
    this.renderRamp(p, at);
    this.renderSticky(look, acks, f, p, down);
    this.renderTab(look);
    this.announce(look, p, counts, down, now);
  }

  /** The release in progress and its controls; the controls are rebuilt only when the ramp
   * changes, so a focused control keeps its focus while the numbers tick. */
  private rampKey = "";
  private toggleFace = "";
  private renderRamp(p: Switch, now: number) {
    const canChange = this.model.pending === null && this.model.info?.caller.role !== "viewer";
    const parts = rampPanel(p, now, canChange, (a) => void this.rampAction(p.name, a), this.model.guards.get(p.name));
    const key = `${p.version}|${canChange}|${parts.length}`;
    if (parts.length === 0) {
      this.rampKey = key;
      this.rampEl.replaceChildren();
      this.rampEl.classList.add("hidden");
      return;
    }
    if (key !== this.rampKey) {
      this.rampKey = key;
      this.rampEl.replaceChildren(...parts);
    } else {
      // Same ramp: refresh the words and the bar only.
      const [text, bar] = parts as [HTMLElement, HTMLProgressElement];
      this.rampEl.querySelector("[data-testid=ramp-text]")?.replaceWith(text);
      this.rampEl.querySelector("progress")?.replaceWith(bar);
    }
    this.rampEl.classList.remove("hidden");
  }

  /** Opens the resume dialog for the primary switch when it is paused (the tray's "Resume
   * workers" lands here: a release is always a deliberate choice). */
  askResume() {
    const sw = primary(this.model);
    if (sw && sw.state === "paused" && !this.dialog.open) this.askConfirm(sw);
  }

  /** On a switch that needs approval a resume is a request: recorded, the switch stays paused. */
  private async fileRequest(sw: Switch, reason: string, ramp: RampSpec | undefined, guards: GuardSpec[]) {
    this.model.error = null;
    try {
      const updated = await this.backend.requestResume(sw.name, {
        reason,
        ramp,
        ...(guards.length ? { guards } : {}),
        source: this.backend.source,
      });
      const cur = this.model.switches.get(sw.name);
      if (!cur || cur.version <= updated.version) this.model.switches.set(sw.name, updated);
      await this.refresh();
    } catch (e) {
      const err = e instanceof BackendError ? e : new BackendError("internal", String(e));
      this.model.error = { code: err.code, message: `the resume request was not filed: ${err.message}` };
    }
    this.render();
  }

  private async rampAction(name: string, action: RampAction) {
    this.model.error = null;
    try {
      const updated = await this.backend.rampControl(name, {
        action,
        by_secs: action === "extend" ? EXTEND_SECS : undefined,
        source: this.backend.source,
      });
      const cur = this.model.switches.get(name);
      if (!cur || cur.version <= updated.version) this.model.switches.set(name, updated);
      await this.refresh();
    } catch (e) {
      const err = e instanceof BackendError ? e : new BackendError("internal", String(e));
      this.model.error = { code: err.code, message: err.message };
    }
    this.render();
  }

  private renderSticky(look: StateLook, acks: string, f: number, p: Switch, down: boolean) {
    let ramp = p.state === "running" && f < 1 ? ` · ramp ${Math.round(f * 100)}%` : "";
    // A guarded release says what its guard sees; a guard's pause says so.
    const g = p.state === "running" ? p.ramp?.guard : null;
    if (g) {
      const st = this.model.guards.get(p.name);
      const c = st && st.step === g.step + 1 ? st.checks[0] : undefined;
      const value = c?.value !== null && c?.value !== undefined ? `${Math.round(c.value * 10) / 10} vs ` : "";
      const cond = guardCondition(g.guards[0]);
      ramp = ` · ramp ${Math.round((g.steps[g.step] ?? 1) * 100)}% · guard ${value}${cond}: ${guardLine(g, st).phase}`;
    } else if (p.state === "paused" && p.source === "guard") {
      ramp = " · re-paused by its guard";
    }
    this.sticky.style.setProperty("--state", look.color);
    this.sticky.style.setProperty("--ink", look.ink);
    this.sticky.dataset.kind = look.kind;
    this.sticky.replaceChildren(
      h("span", { class: "chip" }, icon(look.icon), look.short),
      h("span", { class: "sticky-acks" }, `${down ? "last known: " : ""}${acks}${ramp}`),
    );
  }

  /** The tab's title and icon follow the state, for a tab in the background. */
  private renderTab(look: StateLook) {
    const env = this.model.info?.environment.name.toUpperCase() ?? "";
    const title = `${look.short} · ${env} · Big Red Button`;
    if (document.title !== title) document.title = title;
    if (!this.favicon) {
      this.favicon = document.querySelector<HTMLLinkElement>("link[rel=icon]") ?? h("link", { rel: "icon", type: "image/svg+xml" });
      document.head.append(this.favicon);
    }
    const href = faviconUrl(look.kind);
    if (this.favicon.getAttribute("href") !== href) {
      this.favicon.setAttribute("href", href);
      this.favicon.dataset.kind = look.kind;
    }
  }

  /** Says what changed, once: the state, who and why, and the fleet's proof when complete. */
  private announce(look: StateLook, p: Switch, counts: import("./api").WorkerCounts | undefined, down: boolean, now: number) {
    let text: string;
    if (down) {
      text = `Connection to the control plane lost. State unknown; last known ${p.state}.`;
    } else {
      const kind = look.kind === "ramping" ? "Workers ramping up" : look.kind === "draining" ? "Workers pausing, some still busy" : `Workers ${p.state}`;
      text = `${kind}, changed by ${p.changed_by} from ${sourceLabel(p.source)}${p.reason ? `: ${p.reason}` : ""}.`;
      const cur = counts?.current;
      if (cur && cur.version === p.version && cur.total > 0 && cur.acknowledged === cur.total) {
        text += ` All ${cur.total} workers acknowledged.`;
      }
      if (p.state === "paused" && p.resume_request) text += ` ${p.resume_request.requested_by} asked to resume; it needs a second operator.`;
    }
    if (this.model.pending) text = this.model.pending.to === "paused" ? "Pausing…" : "Resuming…";
    if (this.model.error) text += ` Not done: ${this.model.error.message}.`;
    if (text !== this.lastAnnounced) {
      this.lastAnnounced = text;
      this.live.textContent = text;
    }
    void now;
  }

  private renderGraphs(now: number) {
    const keys = [...this.model.series.keys()];
    const ordered = [
      ...MAIN_SERIES,
      ...keys.filter((k) => !MAIN_SERIES.includes(k)).sort(),
    ];
    let added = false;
    ordered.forEach((k) => {
      if (!this.graphs.has(k)) {
        const buf = this.model.series.get(k);
        const meta = seriesMeta(buf?.name ?? k, buf?.labels);
        const g = new Graph(k, meta);
        this.graphs.set(k, g);
        this.graphsEl.append(g.el);
        added = true;
      }
    });
    if (added) this.layoutGraphs();
    const p = primary(this.model);
    const nowS = now / 1000;
    const range = visibleRange(this.windowSecs, this.watchAfterRelease, lastResume(this.model), nowS);
    const overlay = {
      range,
      paused: pausedIntervals(this.model.audit, p, range[0], range[1]),
      markers: p ? markers(this.model.audit, p.name) : [],
    };
    // The guard's limit is drawn on the series it watches, coloured by what the release does.
    const limits = new Map<string, GuardLimit>();
    const pg = p?.state === "running" ? p.ramp?.guard : null;
    if (p && pg) {
      const phase = guardLine(pg, this.model.guards.get(p.name)).phase;
      for (const spec of pg.guards) {
        const value = spec.below ?? spec.above;
        if (value !== undefined) limits.set(seriesKey(spec.series, spec.labels), { value, label: `guard ${guardCondition(spec)} · ${phase}`, phase });
      }
    }
    for (const [k, g] of this.graphs) g.update(this.model.series.get(k), { ...overlay, limit: limits.get(k) });
    for (const b of this.root.querySelectorAll<HTMLButtonElement>(".windows button")) {
      const w = b.dataset.window;
      b.setAttribute("aria-pressed", String(this.watchAfterRelease ? w === "release" : w === String(this.windowSecs)));
    }
  }

  /** The other switches: one stable button each (updated in place, so focus stays on it). */
  private renderOthers(down: boolean) {
    const others = [...this.model.switches.values()].filter((s) => !s.primary);
    if (others.length === 0) {
      if (!this.others.querySelector(".muted")) this.others.replaceChildren(h("li", { class: "muted" }, "No other switches."));
      this.smallToggles.clear();
      return;
    }
    this.others.querySelector(".muted")?.remove();
    const names = new Set(others.map((s) => s.name));
    for (const [name, t] of this.smallToggles) {
      if (!names.has(name)) {
        t.li.remove();
        this.smallToggles.delete(name);
      }
    }
    for (const s of others) {
      let t = this.smallToggles.get(s.name);
      if (!t) {
        const button = h("button", { class: "small-toggle", role: "switch", "data-switch": s.name });
        button.addEventListener("click", () => {
          const cur = this.model.switches.get(s.name);
          if (cur && button.getAttribute("aria-disabled") !== "true") this.askConfirm(cur);
        });
        const desc = h("span", { class: "desc", id: `desc-${s.name}` });
        const li = h("li", {}, button, h("span", { class: "name" }, s.name), desc);
        button.setAttribute("aria-describedby", desc.id);
        t = { li, button, desc };
        this.smallToggles.set(s.name, t);
        this.others.append(li);
      }
      const word = down ? "unknown" : s.state;
      t.button.className = `small-toggle ${down ? "unknown" : s.state}`;
      if (t.button.textContent !== word) t.button.textContent = word;
      t.button.setAttribute("aria-checked", down ? "mixed" : String(s.state === "paused"));
      const action = s.state === "paused" ? "press to resume" : "press to pause";
      t.button.setAttribute("aria-label", `${s.name}: ${down ? `last known ${s.state}` : s.state}; ${action}`);
      const locked = this.model.pending !== null || this.model.info?.caller.role === "viewer";
      t.button.setAttribute("aria-disabled", String(locked));
      if (t.desc.textContent !== s.description) t.desc.textContent = s.description;
    }
  }

  private renderAudit() {
    const entries = this.model.audit.slice(0, 30);
    // Rebuilt only when the log changed: a table re-made every second loses text selection.
    const sig = entries.map((e) => e.id).join(",");
    if (this.auditEl.dataset.sig === sig) return;
    this.auditEl.dataset.sig = sig;
    this.auditEl.replaceChildren(
      ...entries.map((e) => {
        const change = e.action === "state_changed" ? `${e.from} → ${e.to}` : e.action.replace(/_/g, " ");
        // Each entry carries the ramp of its version (servers before that: "–", unknown).
        let ramp = "";
        if ((e.action === "state_changed" && e.to === "running") || e.action === "ramp_changed") {
          ramp = e.ramp ? auditRamp(e.ramp) : e.ramp === null ? "at once" : "–";
        }
        return h(
          "tr",
          { class: e.to === "paused" && e.action === "state_changed" ? "paused" : "" },
          h("td", { class: "when" }, h("time", { datetime: e.at }, auditWhen(e.at))),
          h("td", {}, e.switch ?? "–"),
          h("td", {}, change),
          h("td", {}, ramp),
          h("td", {}, e.actor),
          h("td", {}, e.source),
          h("td", {}, e.reason ?? ""),
        );
      }),
    );
  }
}
