// Resume approval, in words, without the DOM: whether a switch's resume needs a second
// operator, and what the request panel offers this caller (approve, reject, break glass) and,
// when it offers less, why. The control plane decides (403 `self_approval` for the requester);
// the page only never offers what it would refuse.

import type { ResumeRequest, ServerInfo } from "./api";
import { clock, duration, rampText } from "./format";
import { guardCondition } from "./release";

/** Seconds a request stays open when resuming `name` needs approval, else null. */
export function approvalSecs(info: ServerInfo | null, name: string): number | null {
  return info?.approvals?.find((a) => a.switch === name)?.request_secs ?? null;
}

/** The resume dialog's notice, said before anyone presses. */
export function approvalNotice(requestSecs: number | null): string {
  const lapse = requestSecs === null ? "" : ` (within ${duration(requestSecs * 1000)}, after which it lapses)`;
  return `This switch needs a second operator: your resume becomes a request, and the switch stays paused until another operator approves it${lapse}.`;
}

/** How the request would release: "in steps 10% → … over 10 min, guard db_load < 80". */
export function requestRelease(r: Pick<ResumeRequest, "ramp" | "guards">): string {
  const ramp = r.ramp ? `gradually, ${rampText(r.ramp)}` : "everything at once";
  const guards = (r.guards ?? []).map(guardCondition);
  return guards.length ? `${ramp}, guard ${guards.join(", ")}` : ramp;
}

export interface RequestView {
  /** "alice asked at 14:05:12 (3 min ago) from the web console". */
  asked: string;
  reason: string;
  release: string;
  /** "Expires at 14:20:12 (in 12 min)", or that it lapsed. */
  expires: string;
  expired: boolean;
  /** Why Approve is not offered (null: it is). */
  approveBlocked: string | null;
  /** Why Reject is not offered (null: it is). */
  rejectBlocked: string | null;
  /** Admins only: resume without approval. */
  breakGlass: boolean;
  /** The requester looks at their own request. */
  mine: boolean;
}

/**
 * What the panel shows for `req` to the caller `info.caller` at `now` (ms). `down`: the
 * control plane cannot be reached, so nothing can be decided from here.
 */
export function requestView(req: ResumeRequest, info: ServerInfo | null, now: number, down: boolean): RequestView {
  const me = info?.caller;
  const mine = me !== undefined && me.name === req.requested_by;
  const asked = Date.parse(req.requested_at);
  const ends = Date.parse(req.expires_at);
  const expired = now >= ends;
  const expires = expired
    ? `Lapsed at ${clock(ends)}: it can no longer be approved (the control plane clears it within a second)`
    : `Expires at ${clock(ends)} (in ${duration(ends - now)})`;
  const offline = "No connection to the control plane: approving and rejecting wait until it answers.";
  const viewer = "Your token is a viewer's: it cannot approve or reject.";
  let approveBlocked: string | null = null;
  if (down) approveBlocked = offline;
  else if (!me || me.role === "viewer") approveBlocked = viewer;
  else if (mine) approveBlocked = "You asked for this resume: another operator must approve it.";
  else if (expired) approveBlocked = "It lapsed: ask again.";
  const rejectBlocked = down ? offline : !me || me.role === "viewer" ? viewer : null;
  return {
    asked: `${req.requested_by} asked at ${clock(asked)} (${duration(now - asked)} ago)`,
    reason: req.reason,
    release: requestRelease(req),
    expires,
    expired,
    approveBlocked,
    rejectBlocked,
    breakGlass: me?.role === "admin" && !down,
    mine,
  };
}
