// The fire drill: away from the big button, in the page's lower half, and never red. A drill
// asks every worker of the primary switch to answer without pausing anything; the report
// fills in as answers arrive (read every half second until every live worker answered or the
// window ends).

import { BackendError, type DrillReport, type DrillStarted } from "./api";
import { h } from "./dom";
import { clock } from "./format";
import { primary } from "./model";
import { DRILL_POLL_MS, drillStatus, drillSummary, keepPolling, workerLine } from "./drill";
import type { PanelHost } from "./approval-panel";

export class DrillPanel {
  readonly el = h("div", { class: "drill-panel", "data-testid": "drill" });
  private start = h("button", { type: "button", class: "drill-start", "data-testid": "drill-start" }, "Start fire drill…");
  private why = h("p", { class: "request-note hidden", id: "drill-why", "data-testid": "drill-why" });
  private report = h("div", { class: "drill-report hidden", "data-testid": "drill-report" });
  /** Small and quiet: says only that a drill started and how it ended. */
  private said = h("p", { class: "sr-only", role: "status", "data-testid": "drill-live" });
  private run: { started: DrillStarted; at: number; report: DrillReport | null; error: string | null } | null = null;
  private lastKey = "";

  constructor(private host: PanelHost) {
    this.start.setAttribute("aria-describedby", "drill-about");
    this.start.addEventListener("click", () => {
      if (this.start.getAttribute("aria-disabled") !== "true") this.confirm();
    });
    this.el.append(
      h("h2", {}, "Fire drill"),
      h(
        "p",
        { id: "drill-about", class: "muted" },
        "Checks that the brake reaches every worker: each is asked to answer, and nothing pauses.",
      ),
      this.start,
      this.why,
      this.said,
      this.report,
    );
  }

  render(now: number, down: boolean) {
    const m = this.host.model;
    const listening = this.run !== null && drillStatus(this.run.report, this.run.at, now).phase === "listening";
    const blocked = down
      ? "No connection to the control plane: a drill waits until it answers."
      : m.info?.caller.role === "viewer"
        ? "Your token is a viewer's: it cannot start a drill."
        : listening
          ? "A drill is running: its report is below."
          : null;
    // Not `disabled`: a disabled button drops keyboard focus, and focus stays here after a drill.
    this.start.setAttribute("aria-disabled", String(blocked !== null));
    this.why.textContent = blocked ?? "";
    this.why.classList.toggle("hidden", blocked === null);
    this.start.setAttribute("aria-describedby", blocked ? "drill-about drill-why" : "drill-about");
    this.renderReport(now);
  }

  private confirm() {
    const sw = primary(this.host.model);
    if (!sw) return;
    const env = this.host.model.info?.environment.name.toUpperCase() ?? "";
    const d = this.host.dialog;
    const opener = this.start;
    const reason = h("input", { type: "text", id: "drill-reason", placeholder: "e.g. quarterly check", autocomplete: "off", "data-testid": "drill-reason" });
    const form = h("form", { method: "dialog" });
    const go = h("button", { type: "submit", class: "go", "data-testid": "confirm-drill" }, "Start drill");
    const cancel = h("button", { type: "button", "data-testid": "cancel" }, "Cancel");
    cancel.addEventListener("click", () => d.close());
    form.append(
      h("h2", {}, `Start a fire drill on ${sw.name} in ${env}?`),
      h(
        "p",
        { class: "drill-promise" },
        "Nothing will pause and no one is paged: every worker is asked to answer, and the report shows who did, how fast, and who did not.",
      ),
      h("label", { for: "drill-reason" }, "Note (optional, kept in the audit log)"),
      reason,
      h("div", { class: "dialog-buttons" }, go, cancel),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      d.close();
      void this.begin(sw.name, reason.value.trim() || undefined);
    });
    d.addEventListener("close", () => opener.focus(), { once: true });
    d.replaceChildren(form);
    d.showModal();
    go.focus();
  }

  private async begin(name: string, reason: string | undefined) {
    const m = this.host.model;
    m.error = null;
    let started: DrillStarted;
    try {
      started = await this.host.backend.drill(name, { reason, source: this.host.backend.source });
    } catch (e) {
      const err = e instanceof BackendError ? e : new BackendError("internal", String(e));
      m.error = { code: err.code, message: `the fire drill did not start: ${err.message}` };
      this.host.render();
      return;
    }
    const run = { started, at: Date.now(), report: null as DrillReport | null, error: null as string | null };
    this.run = run;
    this.said.textContent = `Fire drill started on ${name}.`;
    this.host.render();
    // Read until every live worker answered or the window ends, then once more for the end.
    for (;;) {
      const more = keepPolling(run.report, run.at, Date.now());
      try {
        run.report = await this.host.backend.drillReport(name, started.version);
        run.error = null;
      } catch (e) {
        run.error = e instanceof Error ? e.message : String(e);
      }
      if (this.run !== run) return; // a newer drill took over
      this.host.render();
      if (!more || run.report?.complete) break;
      await new Promise((r) => setTimeout(r, DRILL_POLL_MS));
    }
    const status = drillStatus(run.report, run.at, Date.now());
    this.said.textContent = run.report ? `Fire drill ${status.phase}: ${drillSummary(run.report)}.` : `Fire drill: no report (${run.error ?? "unknown"}).`;
    this.host.render();
  }

  private renderReport(now: number) {
    const run = this.run;
    if (!run) return;
    const r = run.report;
    const status = drillStatus(r, run.at, now);
    // The lists change only when answers arrive; the countdown ticks on its own line.
    const key = JSON.stringify([r?.answered.length, r?.missing.map((w) => [w.worker_id, w.last_seen]), r?.stale.map((w) => w.worker_id), status.phase, run.error]);
    const statusEl = h("p", { class: `drill-status ${status.phase}`, "data-testid": "drill-status", "data-phase": status.phase }, status.text);
    if (key === this.lastKey) {
      this.report.querySelector("[data-testid=drill-status]")?.replaceWith(statusEl);
      return;
    }
    this.lastKey = key;
    const parts: Node[] = [
      h("h3", {}, `Drill of ${run.started.switch} (version ${run.started.version}) at ${clock(Date.parse(run.started.started_at))}`),
      statusEl,
    ];
    if (run.error) parts.push(h("p", { class: "error" }, `Could not read the report: ${run.error}`));
    if (r) {
      parts.push(h("p", { class: "drill-summary", "data-testid": "drill-summary" }, drillSummary(r)));
      if (r.missing.length) {
        parts.push(
          h("h4", {}, `Did not answer (${r.missing.length})`),
          h("ul", { class: "drill-missing", "data-testid": "drill-missing" }, ...r.missing.map((w) => h("li", { "data-worker": w.worker_id }, workerLine(w, now)))),
        );
      }
      if (r.stale.length) {
        parts.push(
          h("h4", {}, `Stale: not reporting, cannot answer (${r.stale.length})`),
          h("ul", { class: "drill-stale", "data-testid": "drill-stale" }, ...r.stale.map((w) => h("li", { "data-worker": w.worker_id }, workerLine(w, now)))),
        );
      }
      if (r.unacknowledged.readers > 0) {
        parts.push(h("p", { class: "muted" }, `${r.unacknowledged.readers} OpenFeature reader${r.unacknowledged.readers === 1 ? "" : "s"} send no reports and cannot answer a drill.`));
      }
      if (r.answered.length) {
        parts.push(
          h(
            "details",
            { "data-testid": "drill-answered" },
            h("summary", {}, `Answered (${r.answered.length}), fastest first`),
            h("ol", {}, ...r.answered.map((a) => h("li", {}, `${a.worker_id}: ${a.ms} ms`))),
          ),
        );
      }
    }
    // An open "Answered" list stays open while the report fills in.
    const wasOpen = this.report.querySelector("details")?.open ?? false;
    this.report.replaceChildren(...parts);
    const det = this.report.querySelector("details");
    if (det) det.open = wasOpen;
    this.report.classList.remove("hidden");
  }
}
