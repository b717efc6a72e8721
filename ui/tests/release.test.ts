import { describe, expect, it } from "vitest";
import type { Switch } from "../src/api";
import { admittedFraction } from "../src/format";
import { appendSample, emptyModel } from "../src/model";
import { backlogLine, parseMinutes, releaseSpec } from "../src/release";

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
