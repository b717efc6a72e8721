// The UI's state and the pure functions that update it from API answers and live events.

import type { AuditEntry, GuardStatus, Series, ServerInfo, Switch, WorkerCounts } from "./api";
import type { ConnectionStatus, LiveEvent } from "./backend";

/** One series at one-second resolution, at most an hour. */
export interface SeriesBuf {
  name: string;
  labels?: Record<string, string>;
  key: string;
  ts: number[];
  values: number[];
}

export const RETENTION_SECS = 3600;

export interface Model {
  info: ServerInfo | null;
  switches: Map<string, Switch>;
  counts: Map<string, WorkerCounts>;
  audit: AuditEntry[];
  series: Map<string, SeriesBuf>;
  connection: ConnectionStatus;
  /**
   * While the connection is lost: when the control plane was last heard from (ms), so the
   * outage's age is its true age, not the time since the page noticed.
   */
  lostSince: number | null;
  /** The state as last known when the connection was lost (frozen while it is). */
  lastKnown: Switch | null;
  /**
   * A press that timed out unanswered. The control plane may still apply it when it
   * recovers (the request may sit in its socket): when a change that is this press shows up,
   * `late` says so on screen until dismissed.
   */
  unconfirmed: Unconfirmed | null;
  late: (Unconfirmed & { appliedAt: string; version: number }) | null;
  /** A change sent and not yet acknowledged. */
  pending: { switch: string; to: "paused" | "running" } | null;
  error: { code: string; message: string } | null;
  /** Desktop only: the office button's status, when its listener runs in the app. */
  button: string | null;
  /**
   * How many live events have been applied. A full refresh notes it when it starts: counts
   * pushed by an event after that are newer than what the refresh fetched, and win.
   */
  eventSeq: number;
  /** Per switch, the `eventSeq` of the last `workers` event. */
  countsSeq: Map<string, number>;
  /** Per switch, the last status of its guarded release (`guard` events). */
  guards: Map<string, GuardStatus>;
}

export interface Unconfirmed {
  switch: string;
  to: "paused" | "running";
  reason: string | undefined;
  /** When it was sent (ms) and the version it was sent against. */
  sentAt: number;
  fromVersion: number;
  actor: string;
  source: string;
}

export function emptyModel(): Model {
  return {
    info: null,
    switches: new Map(),
    counts: new Map(),
    audit: [],
    series: new Map(),
    connection: "connecting",
    lostSince: null,
    lastKnown: null,
    unconfirmed: null,
    late: null,
    pending: null,
    error: null,
    button: null,
    eventSeq: 0,
    countsSeq: new Map(),
    guards: new Map(),
  };
}

/** What a full refresh fetched. */
export interface Snapshot {
  switches: Switch[];
  audit: AuditEntry[];
  counts: WorkerCounts | null;
}

/**
 * Applies a full refresh that started when `m.eventSeq` was `startedAt`. Requests race live
 * events: an answer may arrive after an event that is newer than it, and must not undo it
 * (a stale "0/40 workers paused" would otherwise stay on screen until the next change).
 */
export function applySnapshot(m: Model, s: Snapshot, startedAt: number) {
  const next = new Map<string, Switch>();
  for (const sw of s.switches) {
    const cur = m.switches.get(sw.name);
    next.set(sw.name, cur && cur.version > sw.version ? cur : sw);
  }
  m.switches = next;
  for (const sw of next.values()) noteSwitch(m, sw);
  m.audit = s.audit;
  if (s.counts && (m.countsSeq.get(s.counts.switch) ?? -1) < startedAt) {
    m.counts.set(s.counts.switch, s.counts);
  }
}

export function seriesKey(name: string, labels?: Record<string, string>): string {
  const l = Object.entries(labels ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
  return l ? `${name}{${l}}` : name;
}

export function loadSeries(m: Model, list: Series[]) {
  for (const s of list) {
    const key = seriesKey(s.name, s.labels);
    m.series.set(key, {
      name: s.name,
      labels: s.labels,
      key,
      ts: s.points.map((p) => p[0]),
      values: s.points.map((p) => p[1]),
    });
  }
}

export function appendSample(m: Model, key: string, name: string, ts: number, value: number, labels?: Record<string, string>) {
  let b = m.series.get(key);
  if (!b) {
    b = { name, labels, key, ts: [], values: [] };
    m.series.set(key, b);
  }
  const last = b.ts.length ? b.ts[b.ts.length - 1] : -Infinity;
  if (ts > last) {
    b.ts.push(ts);
    b.values.push(value);
  } else if (ts === last) {
    b.values[b.values.length - 1] = value;
  } else {
    return; // older than what we have: the full load already covered it
  }
  const cut = ts - RETENTION_SECS;
  let drop = 0;
  while (drop < b.ts.length && b.ts[drop] <= cut) drop++;
  if (drop) {
    b.ts.splice(0, drop);
    b.values.splice(0, drop);
  }
}

/**
 * Applies a live event. Returns true when the picture must be re-read: the primary switch
 * changed (to refresh the audit), or the stream skipped changes (`resync`).
 */
export function applyEvent(m: Model, e: LiveEvent): boolean {
  m.eventSeq += 1;
  switch (e.kind) {
    case "switch": {
      const prev = m.switches.get(e.data.name);
      if (prev && prev.version > e.data.version) return false; // stale replay
      m.switches.set(e.data.name, e.data);
      noteSwitch(m, e.data);
      if (m.pending && m.pending.switch === e.data.name && e.data.state === m.pending.to) {
        m.pending = null;
      }
      return !prev || prev.version !== e.data.version;
    }
    case "deleted":
      m.switches.delete(e.data.name);
      return true;
    case "workers":
      m.counts.set(e.data.switch, e.data);
      m.countsSeq.set(e.data.switch, m.eventSeq);
      return false;
    case "samples":
      for (const v of e.data.values) {
        appendSample(m, seriesKey(v.name, v.labels), v.name, e.data.ts, v.value, v.labels);
      }
      return false;
    case "guard":
      m.guards.set(e.data.switch, e.data);
      return false;
    case "button":
      m.button = e.data;
      return false;
    case "resync":
      return true;
  }
}

/**
 * Notes a switch as seen: whether it is a timed-out press of ours that the control plane
 * applied after all (same target, made after it was sent, by the same caller from the same
 * source, with the same reason).
 */
export function noteSwitch(m: Model, sw: Switch) {
  const u = m.unconfirmed;
  if (!u || u.switch !== sw.name || sw.version <= u.fromVersion) return;
  const ours =
    sw.state === u.to && sw.changed_by === u.actor && sw.source === u.source && (sw.reason ?? undefined) === u.reason;
  if (ours) {
    m.late = { ...u, appliedAt: sw.changed_at, version: sw.version };
    // The "not done" of that press is no longer true.
    m.error = null;
  }
  // Anything newer than the press settles it: applied (said above), or overtaken.
  m.unconfirmed = null;
}

/**
 * `lastHeard` (ms) is when the stream last delivered anything, when the backend knows: a
 * frozen control plane is noticed only after some silence, but it stopped before that.
 */
export function setConnection(m: Model, s: ConnectionStatus, now: number, lastHeard?: number) {
  if (s === "lost" && m.lostSince === null) {
    m.lostSince = Math.min(now, lastHeard ?? now);
    m.lastKnown = primary(m) ?? null;
  }
  if (s === "open") {
    m.lostSince = null;
    m.lastKnown = null;
  }
  m.connection = s;
}

/** Whether the control plane is known to be unreachable (the state shown is only last known). */
export function unreachable(m: Model): boolean {
  return m.connection !== "open" && m.lostSince !== null;
}

export function primary(m: Model): Switch | undefined {
  const name = m.info?.primary_switch;
  if (name && m.switches.has(name)) return m.switches.get(name);
  return [...m.switches.values()].find((s) => s.primary);
}

/** The time (unix s) of the last resume of the primary switch, from the audit log. */
export function lastResume(m: Model): number | null {
  const p = primary(m);
  if (!p) return null;
  if (p.state === "running" && p.version > 1) {
    const e = m.audit.find((a) => a.switch === p.name && a.action === "state_changed" && a.to === "running");
    if (e) return Date.parse(e.at) / 1000;
    return Date.parse(p.changed_at) / 1000;
  }
  return null;
}
