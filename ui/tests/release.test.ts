import { describe, expect, it } from "vitest";
import type { Switch } from "../src/api";
import { admittedFraction } from "../src/format";
import { appendSample, emptyModel } from "../src/model";
import { auditRamp, backlogLine, guardLine, parseGuard, parseMinutes, releaseSpec } from "../src/release";

describe("the release choices", () => {
  it("default to the stepped ramp and take a custom duration", () => {
    expect(releaseSpec("steps", 10)).toEqual({ kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 });
    expect(releaseSpec("linear", 3)).toEqual({ kind: "linear", from: 0.05, duration_secs: 180 });
    expect(releaseSpec("now", 10)).toBeUndefined();
  });

  it("refuse a duration out of range with a reason", () => {
    expect(parseMinutes("7")).toBe(7);
    expect(parseMinutes("1440")).toBe(1440);
    expect(parseMinutes("0")).toMatch(/1 to 1440/);
    expect(parseMinutes("1441")).toMatch(/1 to 1440/);
    expect(parseMinutes("")).toMatch(/in minutes/);
    expect(parseMinutes("abc")).toMatch(/in minutes/);
  });
});

describe("the backlog line", () => {
  it("uses the configured series, its newest value and its trend over a minute", () => {
    const m = emptyModel();
    m.info = { server_version: "x", environment: { name: "prod", color: "#000" }, primary_switch: "workers", caller: { name: "a", role: "operator" }, backlog_series: "jobs_waiting" };
    expect(backlogLine(m, 1000)).toMatch(/no "jobs_waiting" samples yet/);
    appendSample(m, "queue_depth", "queue_depth", 990, 5);
    appendSample(m, "jobs_waiting", "jobs_waiting", 930, 1000);
    appendSample(m, "jobs_waiting", "jobs_waiting", 999, 2500);
    expect(backlogLine(m, 1000)).toBe("Backlog: 2,500 waiting (jobs_waiting), up 1,500 in the last minute. A release lets it loose on the database.");
    m.info.backlog_series = undefined;
    expect(backlogLine(m, 1030)).toMatch(/^Backlog: 5 waiting \(queue_depth\) \(newest sample 40 s old\)/);
  });
});

describe("a held release", () => {
  it("admits the held fraction from the ramp alone, as every gate does", () => {
    const T0 = Date.parse("2026-11-28T12:00:00Z");
    const held: Switch = {
      name: "workers", description: "", primary: true, state: "running", version: 5,
      changed_at: new Date(T0).toISOString(), changed_by: "a", source: "web", reason: null,
      ramp: {
        started_at: new Date(T0).toISOString(), duration_secs: 86400, kind: "steps", fractions: [0.25, 1],
        held: { fraction: 0.25, since: new Date(T0).toISOString(), remaining_secs: 300, then: { kind: "steps", fractions: [0.25, 0.5, 1] } },
      },
    };
    expect(admittedFraction(held, T0 + 3_600_000)).toBe(0.25);
  });
});

describe("the guard of a release", () => {
  it("reads the CLI's form and says what is wrong otherwise", () => {
    expect(parseGuard("db_load < 80")).toEqual({ series: "db_load", below: 80 });
    expect(parseGuard("free_mb > 512, interval=30s, failures=5")).toEqual({ series: "free_mb", above: 512, interval_secs: 30, failure_limit: 5 });
    expect(parseGuard("0.1 < ratio < 0.8")).toEqual({ series: "ratio", above: 0.1, below: 0.8 });
    for (const bad of ["db_load", "db_load < x", "< 80", "db load < 80", "x < 1, nope=2"]) {
      expect(parseGuard(bad)).toMatch(/^Cannot read the guard/);
    }
    expect(parseGuard("9 < x < 1")).toMatch(/range is empty/);
  });

  it("tells the step, the value against the limit, and the phase", () => {
    const g = { guards: [{ series: "db_load", below: 80, failure_limit: 3 }], steps: [0.1, 0.25, 0.5, 1], step: 1, step_secs: 20, step_started_at: "2026-11-30T20:00:00Z" };
    expect(guardLine(g, undefined).text).toBe("Guarded release at 25% (step 2/4), guard db_load < 80: not checked yet · advancing");
    const st = (phase: "advancing" | "holding", value: number | null, outcome: "pass" | "fail" | "no_data", reason?: string) => ({
      switch: "workers", version: 5, phase, step: 2, steps: 4, fraction: 0.25, dwell_ends_at: "", reason, at: "",
      checks: [{ guard: g.guards[0], condition: "db_load < 80", outcome, value, consecutive_failures: outcome === "fail" ? 1 : 0, checked_at: "" }],
    });
    expect(guardLine(g, st("advancing", 41.04, "pass")).text).toBe("Guarded release at 25% (step 2/4), guard db_load < 80: now 41 · advancing");
    expect(guardLine(g, st("holding", 97, "fail", "holding at step 2/4 (25%): db_load < 80 is 97 (1 of 3 failures)")).text).toBe(
      "Guarded release at 25% (step 2/4), guard db_load < 80: now 97 (failing, 1 of 3) · holding: db_load < 80 is 97 (1 of 3 failures)",
    );
    const nodata = guardLine(g, st("holding", null, "no_data", "holding at step 2/4 (25%): no series named db_load"));
    expect(nodata).toEqual({ phase: "holding", text: "Guarded release at 25% (step 2/4), guard db_load < 80: no data · holding: no series named db_load" });
  });
});

describe("the audit's ramp column", () => {
  const at = "2026-11-28T12:00:00Z";
  it("spells out a plan, a hold and a guarded release with its guards", () => {
    expect(auditRamp({ started_at: at, duration_secs: 600, kind: "steps", fractions: [0.1, 0.25, 0.5, 1] })).toBe("10% → 25% → 50% → 100% over 10 min");
    expect(auditRamp({ started_at: at, duration_secs: 86400, kind: "steps", fractions: [0.25, 1], held: { fraction: 0.25, since: at, remaining_secs: 300, then: { kind: "steps", fractions: [0.25, 0.5, 1] } } })).toBe("held at 25%");
    const guard = { guards: [{ series: "db_load", below: 80 }, { series: "queue_depth", below: 500 }], steps: [0.1, 0.25, 0.5, 1], step: 1, step_secs: 200, step_started_at: at };
    const held = { fraction: 0.25, since: at, remaining_secs: 400, then: { kind: "steps" as const, fractions: [0.25, 0.5, 1] } };
    expect(auditRamp({ started_at: at, duration_secs: 86400, kind: "steps", fractions: [0.25, 1], held, guard })).toBe(
      "guarded 10% → 25% → 50% → 100%, 3 min a step · at step 2/4 · guard db_load < 80, queue_depth < 500",
    );
  });
});
