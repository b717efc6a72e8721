import { describe, expect, it } from "vitest";
import type { AuditEntry, Switch, WorkerCounts } from "../src/api";
import { ackLine, admittedFraction, auditWhen, changeLine, duration, rampText } from "../src/format";
import { appendSample, applyEvent, applySnapshot, emptyModel, lastResume, loadSeries, noteSwitch, seriesKey, setConnection, unreachable } from "../src/model";
import { formatValue, gaps, seriesMeta, withGaps } from "../src/series-meta";
import { STATE_COLORS, type StateKind, deltaE, faviconUrl, inkOn, simulateDeuteranopia, stateKind, stateLook } from "../src/states";
import { dispatch } from "../src/http-backend";
import { markers, pausedIntervals, visibleRange } from "../src/pauses";
import { SseParser } from "../src/sse";

const T0 = Date.parse("2026-11-28T12:00:00Z");

function sw(over: Partial<Switch> = {}): Switch {
  return {
    name: "workers",
    description: "Pause all background workers",
    primary: true,
    state: "running",
    version: 1,
    changed_at: new Date(T0).toISOString(),
    changed_by: "system",
    source: "system",
    reason: null,
    ramp: null,
    ...over,
  };
}

function entry(id: number, to: "paused" | "running", atSecs: number): AuditEntry {
  return {
    id,
    action: "state_changed",
    switch: "workers",
    from: to === "paused" ? "running" : "paused",
    to,
    version: id + 1,
    actor: "alice",
    source: "cli",
    reason: null,
    remote_addr: null,
    at: new Date(T0 + atSecs * 1000).toISOString(),
  };
}

function counts(over: Partial<WorkerCounts> = {}): WorkerCounts {
  return { switch: "workers", version: 2, total: 40, running: 0, draining: 0, paused: 40, stale: 0, current: null, changes: [], ...over };
}

describe("SSE parser", () => {
  it("parses events split anywhere, with CRLF and comments", () => {
    const text = "retry: 1000\r\n\r\n: keep-alive\n\nevent: switch\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n";
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SseParser();
      const ev = [...p.feed(text.slice(0, cut)), ...p.feed(text.slice(cut))];
      expect(ev).toEqual([
        { event: "switch", id: "7", data: '{"a":1}' },
        { event: "message", id: "7", data: "x\ny" },
      ]);
      expect(p.lastId).toBe("7");
    }
  });
});

describe("format", () => {
  it("says durations the way people do", () => {
    expect(duration(4_000)).toBe("4 s");
    expect(duration(12 * 60_000)).toBe("12 min");
    expect(duration(125 * 60_000)).toBe("2 h 5 min");
  });

  it("shows acknowledgement progress with draining and stale called out", () => {
    const p = sw({ state: "paused", version: 2 });
    expect(ackLine(p, counts({ current: { version: 2, state: "paused", changed_at: "", acknowledged: 40, total: 40, last_ack_ms: 85 } }))).toBe(
      "40/40 workers paused · 85 ms",
    );
    expect(
      ackLine(p, counts({ paused: 36, draining: 2, stale: 2, current: { version: 2, state: "paused", changed_at: "", acknowledged: 37, total: 38, last_ack_ms: null } })),
    ).toBe("36/38 workers paused · 37/38 acknowledged · 2 draining · 2 stale");
    expect(ackLine(p, counts({ total: 0, paused: 0 }))).toBe("no workers are reporting");
  });

  it("says who changed it, from where and why", () => {
    const line = changeLine(sw({ state: "paused", changed_by: "alice", source: "button", reason: "db on fire" }), T0 + 5 * 60_000);
    expect(line).toBe("Paused for 5 min · changed by alice from the office button: db on fire");
  });

  it("computes the ramp fraction like the server", () => {
    const r = sw({ ramp: { started_at: new Date(T0).toISOString(), duration_secs: 90, kind: "steps", fractions: [0.1, 0.25, 0.5, 1] } });
    expect(admittedFraction(r, T0)).toBe(0.1);
    expect(admittedFraction(r, T0 + 30_000)).toBe(0.25);
    expect(admittedFraction(r, T0 + 60_000)).toBe(0.5);
    expect(admittedFraction(r, T0 + 90_000)).toBe(1);
    const l = sw({ ramp: { started_at: new Date(T0).toISOString(), duration_secs: 100, kind: "linear", from: 0.2 } });
    expect(admittedFraction(l, T0 + 50_000)).toBeCloseTo(0.6);
    expect(admittedFraction(sw({ state: "paused" }), T0)).toBe(0);
  });
});

describe("pauses", () => {
  const audit = [entry(3, "running", 300), entry(2, "paused", 100)];

  it("shades paused periods within the window", () => {
    const cur = sw({ state: "running", version: 4, changed_at: new Date(T0 + 300_000).toISOString() });
    const base = T0 / 1000;
    expect(pausedIntervals(audit, cur, base, base + 600)).toEqual([[base + 100, base + 300]]);
    expect(pausedIntervals(audit, cur, base + 200, base + 600)).toEqual([[base + 200, base + 300]]);
  });

  it("a pause still going runs to the right edge", () => {
    const a = [entry(4, "paused", 500), ...audit];
    const cur = sw({ state: "paused", version: 5, changed_at: new Date(T0 + 500_000).toISOString() });
    const base = T0 / 1000;
    expect(pausedIntervals(a, cur, base, base + 600)).toEqual([
      [base + 100, base + 300],
      [base + 500, base + 600],
    ]);
    expect(markers(a, "workers").map((m) => m.to)).toEqual(["paused", "running", "paused"]);
  });

  it("watch after release keeps the last resume in frame", () => {
    expect(visibleRange(300, false, 1000, 2000)).toEqual([1700, 2000]);
    expect(visibleRange(300, true, 1000, 2000)).toEqual([970, 2000]);
    expect(visibleRange(300, true, 1900, 2000)).toEqual([1700, 2000]);
  });
});

describe("model", () => {
  it("applies switch events in version order and clears a pending change", () => {
    const m = emptyModel();
    m.switches.set("workers", sw());
    m.pending = { switch: "workers", to: "paused" };
    expect(applyEvent(m, { kind: "switch", data: sw({ state: "paused", version: 2 }) })).toBe(true);
    expect(m.pending).toBeNull();
    expect(applyEvent(m, { kind: "switch", data: sw({ version: 1 }) })).toBe(false);
    // A resync says changes were skipped: the caller must re-read the whole picture.
    expect(applyEvent(m, { kind: "resync", data: { after: 1, current: 1502, reason: "too_far_behind" } })).toBe(true);
    expect(m.switches.get("workers")?.state).toBe("paused");
  });

  it("appends samples and keeps at most an hour", () => {
    const m = emptyModel();
    loadSeries(m, [{ name: "queue_depth", kind: "gauge", points: [[100, 1], [101, 2]] }]);
    applyEvent(m, { kind: "samples", data: { ts: 102, values: [{ name: "queue_depth", value: 3 }, { name: "fleet_paused", labels: { switch: "workers" }, value: 0 }] } });
    expect(m.series.get("queue_depth")?.values).toEqual([1, 2, 3]);
    expect(m.series.has(seriesKey("fleet_paused", { switch: "workers" }))).toBe(true);
    appendSample(m, "queue_depth", "queue_depth", 102 + 3600, 9);
    expect(m.series.get("queue_depth")?.ts).toEqual([102 + 3600]);
  });

  it("a refresh answered after newer live events does not undo them", () => {
    // The CI failure this guards against: a pause triggers a refresh; the workers' "40/40
    // paused" arrives by event; then the refresh's older answer ("0/40") landed on top and
    // stayed until the next change.
    const m = emptyModel();
    m.switches.set("workers", sw());
    applyEvent(m, { kind: "switch", data: sw({ state: "paused", version: 2 }) });
    const startedAt = m.eventSeq;
    applyEvent(m, { kind: "workers", data: counts({ version: 2, paused: 40, running: 0 }) });
    applyEvent(m, { kind: "switch", data: sw({ state: "running", version: 3 }) });
    applySnapshot(m, { switches: [sw({ state: "paused", version: 2 })], audit: [entry(1, "paused", 1)], counts: counts({ version: 2, paused: 0, running: 40 }) }, startedAt);
    expect(m.counts.get("workers")?.paused).toBe(40);
    expect(m.switches.get("workers")?.version).toBe(3);
    expect(m.audit).toHaveLength(1);
    // A refresh started after the last event is the newest picture and replaces it.
    applySnapshot(m, { switches: [sw({ state: "running", version: 3 })], audit: [], counts: counts({ version: 3, paused: 0, running: 40 }) }, m.eventSeq);
    expect(m.counts.get("workers")?.running).toBe(40);
    expect(m.counts.get("workers")?.paused).toBe(0);
  });

  it("tracks when the connection was lost", () => {
    const m = emptyModel();
    setConnection(m, "lost", 1000);
    setConnection(m, "connecting", 2000);
    expect(m.lostSince).toBe(1000);
    setConnection(m, "open", 3000);
    expect(m.lostSince).toBeNull();
  });

  it("finds the last release", () => {
    const m = emptyModel();
    m.switches.set("workers", sw({ version: 4 }));
    m.audit = [entry(3, "running", 300), entry(2, "paused", 100)];
    expect(lastResume(m)).toBe(T0 / 1000 + 300);
  });
});

describe("dispatch", () => {
  it("passes on the events the UI knows, resync included, and drops the rest", () => {
    const got: unknown[] = [];
    dispatch("resync", '{"after":1,"current":2,"reason":"lagged"}', (e) => got.push(e));
    dispatch("nonsense", "{}", (e) => got.push(e));
    dispatch("switch", "{not json", (e) => got.push(e));
    expect(got).toEqual([{ kind: "resync", data: { after: 1, current: 2, reason: "lagged" } }]);
  });
});

describe("state looks", () => {
  const kinds = Object.keys(STATE_COLORS) as StateKind[];
  it("tells every pair of states apart by colour, also under deuteranopia", () => {
    for (let i = 0; i < kinds.length; i++) {
      for (let j = i + 1; j < kinds.length; j++) {
        const [a, b] = [STATE_COLORS[kinds[i]].color, STATE_COLORS[kinds[j]].color];
        expect(deltaE(a, b), `${kinds[i]} vs ${kinds[j]}`).toBeGreaterThan(25);
        expect(deltaE(a, b, true), `${kinds[i]} vs ${kinds[j]}, deuteranope`).toBeGreaterThan(25);
      }
    }
  });
  it("the simulation is the real one: the old red and green collapse for deuteranopes", () => {
    // #d32f2f / #2e7d32 (the console's colours before) are far apart normally, close for a deuteranope.
    expect(deltaE("#d32f2f", "#2e7d32")).toBeGreaterThan(90);
    expect(deltaE("#d32f2f", "#2e7d32", true)).toBeLessThan(20);
    // Grey stays grey.
    const [r, g, b] = simulateDeuteranopia("#808080");
    expect(Math.abs(r - g) + Math.abs(g - b)).toBeLessThan(0.01);
  });
  it("gives each state its own word and shape", () => {
    const s = sw({ state: "running", ramp: { kind: "steps", fractions: [0.25, 1], duration_secs: 600, started_at: new Date(T0).toISOString() } });
    const looks = [
      stateLook("paused", sw({ state: "paused" }), undefined, T0),
      stateLook("draining", sw({ state: "paused" }), counts({ draining: 3 }), T0),
      stateLook("ramping", s, undefined, T0 + 1000),
      stateLook("running", sw(), undefined, T0),
      stateLook("unknown", sw(), undefined, T0),
    ];
    expect(new Set(looks.map((l) => l.word)).size).toBe(5);
    expect(new Set(looks.map((l) => l.icon)).size).toBe(5);
    expect(looks[2].word).toBe("RAMPING UP · 25%");
    expect(looks[1].word).toBe("DRAINING · 3 BUSY");
  });
  it("says a held release is held, not rising", () => {
    const held = { fraction: 0.1, since: new Date(T0).toISOString(), remaining_secs: 540, then: { kind: "steps" as const, fractions: [0.1, 1] } };
    const s = sw({ state: "running", ramp: { kind: "steps", fractions: [0.1, 1], duration_secs: 86_400, started_at: new Date(T0).toISOString(), held } });
    const look = stateLook(stateKind(s, undefined, T0 + 5000, true), s, undefined, T0 + 5000);
    expect(look.kind).toBe("ramping");
    expect(look.word).toBe("RELEASE HELD · 10%");
    expect(look.short).toBe("HELD 10%");
  });
  it("picks the state: unknown first, draining while paused workers finish, ramping below 100%", () => {
    const ramp = { kind: "linear" as const, from: 0.05, duration_secs: 100, started_at: new Date(T0).toISOString() };
    expect(stateKind(sw({ state: "paused" }), undefined, T0, false)).toBe("unknown");
    expect(stateKind(sw({ state: "paused", version: 2 }), counts({ version: 2, draining: 1 }), T0, true)).toBe("draining");
    expect(stateKind(sw({ state: "paused", version: 3 }), counts({ version: 2, draining: 1 }), T0, true)).toBe("paused");
    expect(stateKind(sw({ ramp }), undefined, T0 + 50_000, true)).toBe("ramping");
    expect(stateKind(sw({ ramp }), undefined, T0 + 100_000, true)).toBe("running");
    expect(faviconUrl("paused")).toMatch(/^data:image\/svg\+xml,/);
  });
});

describe("series", () => {
  it("breaks the line where samples stop, and only there", () => {
    expect(withGaps([1, 2, 3, 10, 11], [5, 5, 5, 7, 7])).toEqual([
      [1, 2, 3, 4, 10, 11],
      [5, 5, 5, null, 7, 7],
    ]);
    expect(withGaps([1, 2, 4], [1, 1, 1])).toEqual([[1, 2, 4], [1, 1, 1]]);
    expect(gaps([1, 2, 3, 10, 11, 30])).toEqual([[3, 10], [11, 30]]);
  });
  it("has human titles with units, and the same colour on every load", () => {
    expect(seriesMeta("db_latency_ms")).toMatchObject({ title: "Database latency", unit: "ms" });
    expect(seriesMeta("fleet_in_flight", { switch: "workers" }).title).toBe("Jobs in flight · switch workers");
    const a = seriesMeta("checkout_retries_per_second");
    expect(a).toEqual(seriesMeta("checkout_retries_per_second"));
    expect(a).toMatchObject({ title: "Checkout retries per second", unit: "/s" });
    expect(formatValue(1234.5, "jobs")).toBe("1,235 jobs");
    expect(formatValue(12.34, "ms")).toBe("12.3 ms");
    expect(formatValue(87, "%")).toBe("87%");
    expect(formatValue(null, "ms")).toBe("–");
  });
});

describe("outages and late presses", () => {
  it("dates an outage from when the control plane was last heard, and freezes the last known state", () => {
    const m = emptyModel();
    m.switches.set("workers", sw());
    setConnection(m, "open", 1000);
    setConnection(m, "lost", 9000, 4000);
    expect(m.lostSince).toBe(4000);
    expect(unreachable(m)).toBe(true);
    expect(m.lastKnown?.state).toBe("running");
    setConnection(m, "connecting", 10_000, 4000);
    expect(m.lostSince).toBe(4000);
    setConnection(m, "open", 11_000, 11_000);
    expect(unreachable(m)).toBe(false);
  });
  it("shows a timed-out press as applied when the control plane applies it later", () => {
    const m = emptyModel();
    m.switches.set("workers", sw({ version: 4 }));
    m.error = { code: "timeout", message: "no answer" };
    m.unconfirmed = { switch: "workers", to: "paused", reason: "db", sentAt: T0, fromVersion: 4, actor: "alice", source: "web" };
    // Someone else's older change does not count; ours, newer, does.
    noteSwitch(m, sw({ version: 4 }));
    expect(m.late).toBeNull();
    noteSwitch(m, sw({ version: 5, state: "paused", changed_by: "alice", source: "web", reason: "db", changed_at: new Date(T0 + 60_000).toISOString() }));
    expect(m.late).toMatchObject({ to: "paused", version: 5, appliedAt: new Date(T0 + 60_000).toISOString() });
    expect(m.unconfirmed).toBeNull();
    expect(m.error).toBeNull();
  });
  it("drops a timed-out press that another change overtook", () => {
    const m = emptyModel();
    m.unconfirmed = { switch: "workers", to: "paused", reason: "db", sentAt: T0, fromVersion: 4, actor: "alice", source: "web" };
    noteSwitch(m, sw({ version: 5, state: "paused", changed_by: "bob", source: "cli", reason: "other" }));
    expect(m.late).toBeNull();
    expect(m.unconfirmed).toBeNull();
  });
});

describe("audit words", () => {
  it("dates with the day and the time zone, and spells out ramps", () => {
    expect(auditWhen("2026-11-28T12:00:05Z", "UTC")).toBe("2026-11-28 12:00:05 UTC");
    expect(auditWhen("2026-11-28T12:00:05Z", "Europe/Paris")).toMatch(/^2026-11-28 13:00:05 (CET|GMT\+1)$/);
    expect(rampText({ kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 })).toBe("10% → 25% → 50% → 100% over 10 min");
    expect(rampText({ kind: "linear", from: 0.05, duration_secs: 300 })).toBe("5% → 100% linearly over 5 min");
  });
});

describe("the environment header's text", () => {
  it("is black or white, whichever reads on the configured colour", () => {
    expect(inkOn("#f57c00")).toBe("#000000"); // staging orange: white would be 2.7:1
    expect(inkOn("#b71c1c")).toBe("#ffffff"); // production red
    expect(inkOn("#FFEB3B")).toBe("#000000");
    expect(inkOn("#1565c0")).toBe("#ffffff");
    expect(inkOn("rebeccapurple")).toBe("#ffffff");
  });
});
