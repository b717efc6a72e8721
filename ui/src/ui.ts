// The Big Red Button screen. Rendering is plain DOM: built once, then updated from the model.

import { BackendError, type RampAction, type RampSpec, type Switch, type SwitchState } from "./api";
import type { Backend } from "./backend";
import { ackLine, changeLine, duration } from "./format";
import { Graph } from "./graphs";
import { type Model, lastResume, primary } from "./model";
import { markers, pausedIntervals, visibleRange } from "./pauses";
import { EXTEND_SECS, rampPanel, resumeForm } from "./release";

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

/** Series shown first, in this order; any other series the server offers follows. */
const MAIN_SERIES = ["jobs_per_second", "queue_depth", "db_load"];


export class App {
  private root: HTMLElement;
  private env = h("header", { class: "env", "data-testid": "environment" });
  private banner = h("div", { class: "banner hidden", role: "alert", "data-testid": "banner" });
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
  private windowSecs = 300;
  private watchAfterRelease = false;

  constructor(
    mount: HTMLElement,
    private model: Model,
    private backend: Backend,
    private refresh: () => Promise<void>,
  ) {
    this.root = mount;
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

    this.toggle.addEventListener("click", () => this.askConfirm());
    this.root.replaceChildren(
      this.env,
      this.banner,
      h(
        "main",
        {},
        h(
          "section",
          { class: "button-panel", "aria-label": "The Big Red Button" },
          this.toggle,
          this.stateLine,
          this.ackEl,
          this.rampEl,
          this.buttonEl,
          this.errorBox,
        ),
        h("section", { class: "graphs-panel", "aria-label": "Utilization" }, h("div", { class: "graphs-head" }, h("h2", {}, "Utilization"), windows), this.graphsEl),
        h(
          "section",
          { class: "lower" },
          h("div", { class: "others-panel" }, h("h2", {}, "Other switches"), this.others),
          h(
            "div",
            { class: "audit-panel" },
            h("h2", {}, "Audit log"),
            h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Switch"), h("th", {}, "Change"), h("th", {}, "Who"), h("th", {}, "From"), h("th", {}, "Why"))), this.auditEl),
          ),
        ),
      ),
      this.dialog,
    );
    window.addEventListener("resize", () => this.layoutGraphs());
  }

  private layoutGraphs() {
    const w = this.graphsEl.clientWidth;
    const cols = w > 1100 ? 3 : w > 700 ? 2 : 1;
    for (const g of this.graphs.values()) g.resize(Math.floor(w / cols) - 24);
  }

  /** The confirm step: the reason for a pause, the way back for a resume. */
  askConfirm(target?: Switch) {
    const sw = target ?? primary(this.model);
    if (!sw || this.model.pending) return;
    const to: SwitchState = sw.state === "paused" ? "running" : "paused";
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
      go.addEventListener("click", (e) => {
        e.preventDefault();
        this.dialog.close();
        void this.change(sw, "paused", reason.value.trim() || undefined, undefined);
      });
      buttons.append(go);
    } else {
      const first = resumeForm(
        form,
        this.model,
        Date.now(),
        (ramp) => {
          this.dialog.close();
          void this.change(sw, "running", undefined, ramp);
        },
        () => this.dialog.close(),
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

  private async change(sw: Switch, to: SwitchState, reason: string | undefined, ramp: RampSpec | undefined) {
    this.model.pending = { switch: sw.name, to };
    this.model.error = null;
    this.render();
    try {
      const updated = await this.backend.setState(sw.name, {
        state: to,
        reason,
        source: this.backend.source,
        ramp,
      });
      // Acknowledged: the control plane committed it.
      const cur = this.model.switches.get(sw.name);
      if (!cur || cur.version <= updated.version) this.model.switches.set(sw.name, updated);
      this.model.pending = null;
      await this.refresh();
    } catch (e) {
      this.model.pending = null;
      const err = e instanceof BackendError ? e : new BackendError("internal", String(e));
      this.model.error = { code: err.code, message: err.message };
    }
    this.render();
  }

  render(now = Date.now()) {
    const m = this.model;
    const p = primary(m);
    if (m.info) {
      this.env.textContent = `${m.info.environment.name.toUpperCase()} · Big Red Button`;
      this.env.style.background = m.info.environment.color;
    }
    // Connection banner.
    if (m.connection !== "open" && m.lostSince !== null) {
      this.banner.textContent = `Connection to the control plane lost ${duration(now - m.lostSince)} ago — the state shown may be stale. Reconnecting…`;
      this.banner.classList.remove("hidden");
    } else {
      this.banner.classList.add("hidden");
    }
    document.body.classList.toggle("stale", m.connection !== "open");
    if (m.error) {
      this.errorBox.textContent = `Not done: ${m.error.message} (${m.error.code}). The state below is what the control plane says.`;
      this.errorBox.classList.remove("hidden");
    } else {
      this.errorBox.classList.add("hidden");
    }
    if (p) this.renderToggle(p, now);
    if (m.button) {
      this.buttonEl.textContent = m.button;
      this.buttonEl.classList.remove("hidden");
    }
    this.renderGraphs(now);
    this.renderOthers();
    this.renderAudit();
  }

  private renderToggle(p: Switch, now: number) {
    const pending = this.model.pending?.switch === p.name ? this.model.pending : null;
    const shown = pending ? pending.to : p.state;
    document.body.classList.toggle("paused", p.state === "paused");
    this.toggle.className = `toggle ${shown}${pending ? " pending" : ""}`;
    this.toggle.setAttribute("aria-checked", String(p.state === "paused"));
    this.toggle.dataset.state = p.state;
    this.toggle.disabled = pending !== null || this.model.info?.caller.role === "viewer";
    const big = pending ? (pending.to === "paused" ? "PAUSING…" : "RESUMING…") : p.state === "paused" ? "WORKERS PAUSED" : "WORKERS RUNNING";
    const small = pending ? "waiting for the control plane" : p.state === "paused" ? "press to resume" : "press to pause";
    this.toggle.replaceChildren(h("span", { class: "big" }, big), h("span", { class: "small" }, small));
    this.toggle.setAttribute("aria-label", `${big.toLowerCase()}; ${small}`);
    this.stateLine.textContent = changeLine(p, now);
    this.ackEl.textContent = ackLine(p, this.model.counts.get(p.name));
    this.renderRamp(p, now);
  }

  /** The release in progress and its controls; the controls are rebuilt only when the ramp
   * changes, so a focused control keeps its focus while the numbers tick. */
  private rampKey = "";
  private renderRamp(p: Switch, now: number) {
    const canChange = this.model.pending === null && this.model.info?.caller.role !== "viewer";
    const parts = rampPanel(p, now, canChange, (a) => void this.rampAction(p.name, a));
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

  private renderGraphs(now: number) {
    const keys = [...this.model.series.keys()];
    const ordered = [
      ...MAIN_SERIES,
      ...keys.filter((k) => !MAIN_SERIES.includes(k)).sort(),
    ];
    let added = false;
    ordered.forEach((k, i) => {
      if (!this.graphs.has(k)) {
        const g = new Graph(k, k, i);
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
    for (const [k, g] of this.graphs) g.update(this.model.series.get(k), overlay);
    for (const b of this.root.querySelectorAll<HTMLButtonElement>(".windows button")) {
      const w = b.dataset.window;
      b.setAttribute("aria-pressed", String(this.watchAfterRelease ? w === "release" : w === String(this.windowSecs)));
    }
  }

  private renderOthers() {
    const others = [...this.model.switches.values()].filter((s) => !s.primary);
    if (others.length === 0) {
      this.others.replaceChildren(h("li", { class: "muted" }, "No other switches."));
      return;
    }
    this.others.replaceChildren(
      ...others.map((s) => {
        const b = h("button", { class: `small-toggle ${s.state}`, role: "switch", "aria-checked": String(s.state === "paused"), "data-switch": s.name }, s.state === "paused" ? "paused" : "running");
        b.disabled = this.model.pending !== null || this.model.info?.caller.role === "viewer";
        b.addEventListener("click", () => this.askConfirm(s));
        return h("li", {}, b, h("span", { class: "name" }, s.name), h("span", { class: "desc" }, s.description));
      }),
    );
  }

  private renderAudit() {
    this.auditEl.replaceChildren(
      ...this.model.audit.slice(0, 30).map((e) => {
        const change = e.action === "state_changed" ? `${e.from} → ${e.to}` : e.action.replace(/_/g, " ");
        return h(
          "tr",
          { class: e.to === "paused" && e.action === "state_changed" ? "paused" : "" },
          h("td", {}, new Date(e.at).toLocaleTimeString()),
          h("td", {}, e.switch ?? "–"),
          h("td", {}, change),
          h("td", {}, e.actor),
          h("td", {}, e.source),
          h("td", {}, e.reason ?? ""),
        );
      }),
    );
  }
}
