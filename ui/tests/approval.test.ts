import { describe, expect, it } from "vitest";
import type { DrillReport, ResumeRequest, ServerInfo, WorkerInfo } from "../src/api";
import { approvalNotice, approvalSecs, requestRelease, requestView } from "../src/approvals";
import { DRILL_WINDOW_MS, drillStatus, drillSummary, keepPolling, workerLine } from "../src/drill";

const T0 = Date.parse("2026-12-01T14:00:00Z");
const iso = (ms: number) => new Date(ms).toISOString();

const info = (name: string, role: "viewer" | "operator" | "admin"): ServerInfo => ({
  server_version: "x",
  environment: { name: "prod", color: "#000" },
  primary_switch: "workers",
  caller: { name, role },
  approvals: [{ switch: "workers", request_secs: 900 }],
});

const request: ResumeRequest = {
  id: 7,
  requested_by: "alice",
  source: "web",
  requested_at: iso(T0),
  expires_at: iso(T0 + 15 * 60_000),
  reason: "queue drained",
  ramp: { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 },
  guards: [{ series: "db_load", below: 80 }],
};

describe("resume approval", () => {
  it("is known per switch from /info, and said before a resume", () => {
    expect(approvalSecs(info("bob", "operator"), "workers")).toBe(900);
    expect(approvalSecs(info("bob", "operator"), "search")).toBeNull();
    expect(approvalSecs(null, "workers")).toBeNull();
    expect(approvalNotice(900)).toMatch(/^This switch needs a second operator: your resume becomes a request.*within 15 min, after which it lapses/);
    expect(approvalNotice(null)).not.toMatch(/within/);
  });

  it("describes how the request would release", () => {
    expect(requestRelease(request)).toBe("gradually, 10% → 25% → 50% → 100% over 10 min, guard db_load < 80");
    expect(requestRelease({ ramp: null, guards: [] })).toBe("everything at once");
  });

  it("never offers the requester their own approval, and says why", () => {
    const v = requestView(request, info("alice", "operator"), T0 + 60_000, false);
    expect(v.mine).toBe(true);
    expect(v.approveBlocked).toBe("You asked for this resume: another operator must approve it.");
    expect(v.rejectBlocked).toBeNull();
    expect(v.breakGlass).toBe(false);
    expect(v.asked).toMatch(/^alice asked at \d\d:\d\d:\d\d \(1 min ago\)$/);
    expect(v.expires).toMatch(/^Expires at \d\d:\d\d:\d\d \(in 14 min\)$/);
  });

  it("offers another operator approve and reject, an admin break glass too", () => {
    const bob = requestView(request, info("bob", "operator"), T0, false);
    expect([bob.approveBlocked, bob.rejectBlocked, bob.breakGlass, bob.mine]).toEqual([null, null, false, false]);
    const root = requestView(request, info("root", "admin"), T0, false);
    expect([root.approveBlocked, root.breakGlass]).toEqual([null, true]);
    // An admin who asked still cannot approve their own (break glass is the loud way).
    const self = requestView({ ...request, requested_by: "root" }, info("root", "admin"), T0, false);
    expect(self.approveBlocked).toMatch(/another operator must approve/);
  });

  it("offers nothing to a viewer, nothing while the control plane is unreachable, no approval once lapsed", () => {
    const viewer = requestView(request, info("eve", "viewer"), T0, false);
    expect(viewer.approveBlocked).toMatch(/viewer/);
    expect(viewer.rejectBlocked).toMatch(/viewer/);
    const down = requestView(request, info("root", "admin"), T0, true);
    expect(down.approveBlocked).toMatch(/^No connection to the control plane/);
    expect(down.rejectBlocked).toMatch(/^No connection to the control plane/);
    expect(down.breakGlass).toBe(false);
    const late = requestView(request, info("bob", "operator"), T0 + 15 * 60_000, false);
    expect(late.expired).toBe(true);
    expect(late.approveBlocked).toBe("It lapsed: ask again.");
    expect(late.expires).toMatch(/^Lapsed at/);
  });
});

const worker = (id: string, over: Partial<WorkerInfo> = {}): WorkerInfo => ({
  worker_id: id,
  status: "running",
  observed_version: 4,
  in_flight: 0,
  processed_total: 0,
  last_seen: iso(T0 - 2000),
  stale: false,
  remote_addr: null,
  ...over,
});

const report = (over: Partial<DrillReport> = {}): DrillReport => ({
  switch: "workers",
  version: 5,
  started_at: iso(T0),
  answered: [
    { worker_id: "a", ms: 12 },
    { worker_id: "b", ms: 40 },
  ],
  p50_ms: 12,
  p99_ms: 40,
  max_ms: 40,
  missing: [worker("stuck")],
  stale: [worker("gone", { stale: true, last_seen: iso(T0 - 30_000) })],
  complete: false,
  unacknowledged: { window_secs: 60, readers: 0, served_current: 0 },
  ...over,
});

describe("the fire drill's report", () => {
  it("counts answers among live workers, with p50/p99/max, and says nothing paused", () => {
    expect(drillSummary(report())).toBe("2/3 live workers answered · p50 12 ms · p99 40 ms · max 40 ms; nothing paused");
    expect(drillSummary(report({ answered: [], p50_ms: null, p99_ms: null, max_ms: null }))).toBe("0/1 live workers answered; nothing paused");
  });

  it("listens until every live worker answered or the window ends", () => {
    expect(keepPolling(null, T0, T0)).toBe(true);
    expect(keepPolling(report(), T0, T0 + DRILL_WINDOW_MS - 1)).toBe(true);
    expect(keepPolling(report(), T0, T0 + DRILL_WINDOW_MS)).toBe(false);
    expect(keepPolling(report({ complete: true, missing: [] }), T0, T0 + 100)).toBe(false);
    expect(drillStatus(report(), T0, T0 + 2500)).toEqual({ phase: "listening", text: "Listening for answers: 8 s left." });
    expect(drillStatus(report(), T0, T0 + DRILL_WINDOW_MS)).toEqual({ phase: "ended", text: "Over: 1 live worker did not answer in 10 s." });
    expect(drillStatus(report({ complete: true, missing: [] }), T0, T0 + 300).phase).toBe("complete");
  });

  it("names who did not answer with their last report, and who is stale", () => {
    expect(workerLine(worker("stuck", { remote_addr: "10.0.0.7", in_flight: 2 }), T0)).toBe("stuck: last report 2 s ago (running, version 4, 2 in flight from 10.0.0.7)");
    expect(workerLine(worker("gone", { stale: true, last_seen: iso(T0 - 30_000), error: "redis down" }), T0)).toBe("gone: silent for 30 s (last report running, version 4); says: redis down");
  });
});
