// The open resume requests, shown prominently under the button: who asked, when, why, how it
// would release, when it lapses; Approve (never offered to the requester), Reject, and for
// admins Break glass behind a loud confirmation. Rebuilt only when what it offers changes, so
// a focused button keeps its focus while the times tick.

import { BackendError, type ResumeRequest, type Switch } from "./api";
import type { Backend } from "./backend";
import { h } from "./dom";
import type { Model } from "./model";
import { requestView } from "./approvals";

export interface PanelHost {
  model: Model;
  backend: Backend;
  /** The page's one modal dialog. */
  dialog: HTMLDialogElement;
  /** Re-reads the switches, the audit and the counts. */
  refresh(): Promise<void>;
  render(): void;
  /** Where focus goes when the control it was on goes away (the big button). */
  focusHome(): void;
}

export class ApprovalPanel {
  readonly el = h("section", { class: "requests hidden", "aria-label": "Resume requests", "data-testid": "requests" });
  private key = "";
  private busy = false;

  constructor(private host: PanelHost) {}

  render(now: number, down: boolean) {
    const m = this.host.model;
    const open = [...m.switches.values()]
      .filter((s): s is Switch & { resume_request: ResumeRequest } => s.state === "paused" && !!s.resume_request)
      .sort((a, b) => Number(b.primary) - Number(a.primary) || a.name.localeCompare(b.name));
    const views = open.map((s) => ({ s, v: requestView(s.resume_request, m.info, now, down) }));
    const key = JSON.stringify([
      views.map(({ s, v }) => [s.name, s.resume_request.id, v.approveBlocked, v.rejectBlocked, v.breakGlass, v.expired]),
    ]);
    if (key !== this.key) {
      this.key = key;
      this.el.replaceChildren(...views.map(({ s, v }) => this.card(s, v)));
      this.el.classList.toggle("hidden", views.length === 0);
      return;
    }
    // Same offers: only the times move.
    for (const { s, v } of views) {
      const card = this.el.querySelector<HTMLElement>(`[data-request="${CSS.escape(s.name)}"]`);
      const asked = card?.querySelector("[data-testid=request-asked]");
      const expires = card?.querySelector("[data-testid=request-expires]");
      if (asked && asked.textContent !== v.asked) asked.textContent = v.asked;
      if (expires && expires.textContent !== v.expires) expires.textContent = v.expires;
    }
  }

  private card(s: Switch & { resume_request: ResumeRequest }, v: ReturnType<typeof requestView>): HTMLElement {
    const r = s.resume_request;
    const id = `request-${s.name}`;
    const note = (text: string | null, tid: string) =>
      text ? h("p", { class: "request-note", id: `${id}-${tid}`, "data-testid": `request-${tid}` }, text) : null;
    const approveNote = note(v.approveBlocked, "approve-why");
    const rejectNote = v.rejectBlocked && v.rejectBlocked !== v.approveBlocked ? note(v.rejectBlocked, "reject-why") : null;
    const approve = h("button", { type: "button", class: "go", "data-testid": "approve-request" }, "Approve resume…");
    approve.disabled = v.approveBlocked !== null;
    if (approveNote) approve.setAttribute("aria-describedby", approveNote.id);
    approve.addEventListener("click", () => this.confirmApprove(s, r));
    const reject = h("button", { type: "button", "data-testid": "reject-request" }, v.mine ? "Withdraw" : "Reject");
    reject.disabled = v.rejectBlocked !== null;
    if (rejectNote) reject.setAttribute("aria-describedby", rejectNote.id);
    else if (v.rejectBlocked && approveNote) reject.setAttribute("aria-describedby", approveNote.id);
    reject.addEventListener("click", () => void this.decide(s.name, r.id, false, undefined));
    const buttons = h("div", { class: "request-buttons", role: "group", "aria-label": `Decide ${r.requested_by}'s request` }, approve, reject);
    if (v.breakGlass) {
      const glass = h("button", { type: "button", class: "danger glass", "data-testid": "break-glass" }, "Break glass…");
      glass.addEventListener("click", () => this.confirmBreakGlass(s, r));
      buttons.append(glass);
    }
    const card = h(
      "article",
      { class: "request", "data-request": s.name, "data-testid": "resume-request", "aria-labelledby": `${id}-title` },
      h("h2", { id: `${id}-title` }, `Resume of ${s.primary ? "background workers" : s.name} requested: needs a second operator`),
      h("p", { "data-testid": "request-asked" }, v.asked),
      h("p", { class: "request-reason", "data-testid": "request-reason" }, `Why: ${v.reason}`),
      h("p", { "data-testid": "request-release" }, `Release: ${v.release}`),
      h("p", { class: v.expired ? "request-expires lapsed" : "request-expires", "data-testid": "request-expires" }, v.expires),
      buttons,
    );
    if (approveNote) card.append(approveNote);
    if (rejectNote) card.append(rejectNote);
    return card;
  }

  /** Approving releases workers: one more look at what it releases, as every resume has. */
  private confirmApprove(s: Switch, r: ResumeRequest) {
    const env = this.host.model.info?.environment.name.toUpperCase() ?? "";
    const note = h("textarea", { id: "approve-note", rows: "2", placeholder: "optional", "data-testid": "approve-note" });
    const go = h("button", { type: "submit", class: "go", "data-testid": "confirm-approve" }, "Approve and resume");
    this.openDialog(
      [
        h("h2", {}, `Approve ${r.requested_by}'s resume of ${s.primary ? "background workers" : s.name} in ${env}?`),
        h("p", {}, `Why they ask: ${r.reason}`),
        h("p", {}, `It releases ${requestView(r, this.host.model.info, Date.now(), false).release}. The audit records both of you.`),
        h("label", { for: "approve-note" }, "Your note (optional, kept in the audit log)"),
        note,
      ],
      go,
      () => void this.decide(s.name, r.id, true, note.value.trim() || undefined),
    );
  }

  /** Breaking the glass skips the second operator: said loudly, and it needs a reason. */
  private confirmBreakGlass(s: Switch, r: ResumeRequest) {
    const env = this.host.model.info?.environment.name.toUpperCase() ?? "";
    const reason = h("textarea", { id: "glass-reason", rows: "2", required: "", "data-testid": "glass-reason" });
    const problem = h("p", { class: "error hidden", role: "alert", "data-testid": "glass-problem" });
    reason.addEventListener("input", () => reason.value.trim() && problem.classList.add("hidden"));
    const go = h("button", { type: "submit", class: "danger", "data-testid": "confirm-break-glass" }, "Break glass: resume now");
    this.openDialog(
      [
        h("h2", { class: "glass-title" }, `BREAK GLASS: resume ${s.primary ? "background workers" : s.name} in ${env} without a second operator?`),
        h(
          "p",
          { class: "glass-warning" },
          `This skips ${r.requested_by}'s request and the approval this switch requires. It is recorded as BREAK GLASS with your name in the audit log and announced like any resume (Slack, webhooks).`,
        ),
        h("p", {}, `It releases ${requestView({ ...r, guards: [] }, this.host.model.info, Date.now(), false).release}${r.guards?.length ? " (without the request's guard: breaking the glass takes no guard)" : ""}.`),
        h("label", { for: "glass-reason" }, "Why can this not wait for a second operator? (required)"),
        reason,
        problem,
      ],
      go,
      () => {
        const why = reason.value.trim();
        if (!why) {
          problem.textContent = "Say why: breaking the glass must be explained.";
          problem.classList.remove("hidden");
          reason.focus();
          return false;
        }
        void this.breakGlass(s.name, why, r);
        return true;
      },
      reason,
    );
  }

  /** `act` returns false to keep the dialog open (a missing field). */
  private openDialog(body: Node[], go: HTMLButtonElement, act: () => boolean | void, focus?: HTMLElement) {
    const d = this.host.dialog;
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    const form = h("form", { method: "dialog" });
    form.noValidate = true;
    const cancel = h("button", { type: "button", "data-testid": "cancel" }, "Cancel");
    cancel.addEventListener("click", () => d.close());
    form.append(...body, h("div", { class: "dialog-buttons" }, go, cancel));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (act() === false) return;
      d.close();
    });
    // Back where the person was; if that control went away with the request, to the button.
    d.addEventListener("close", () => (opener?.isConnected ? opener.focus() : this.host.focusHome()), { once: true });
    d.replaceChildren(form);
    d.showModal();
    (focus ?? cancel).focus();
  }

  private async decide(name: string, id: number, approve: boolean, reason: string | undefined) {
    await this.run(() => this.host.backend.decideResume(name, id, approve, { reason, source: this.host.backend.source }));
  }

  private async breakGlass(name: string, reason: string, r: ResumeRequest) {
    await this.run(() => this.host.backend.breakGlass(name, { reason, ramp: r.ramp ?? undefined, source: this.host.backend.source }));
  }

  private async run(call: () => Promise<Switch>) {
    // One decision at a time; the buttons stay as they are (a disabled button drops focus).
    if (this.busy) return;
    const m = this.host.model;
    m.error = null;
    this.busy = true;
    try {
      const updated = await call();
      const cur = m.switches.get(updated.name);
      if (!cur || cur.version <= updated.version) m.switches.set(updated.name, updated);
      await this.host.refresh().catch(() => {});
    } catch (e) {
      const err = e instanceof BackendError ? e : new BackendError("internal", String(e));
      m.error = { code: err.code, message: err.message };
    }
    this.busy = false;
    this.host.render();
    // The card this was pressed on is gone when the request is settled: focus the button.
    if (!(document.activeElement instanceof HTMLElement) || !document.activeElement.isConnected || document.activeElement === document.body) {
      this.host.focusHome();
    }
  }
}
