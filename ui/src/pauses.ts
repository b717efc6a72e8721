// Paused periods and change markers for the graphs, from the audit log.

import type { AuditEntry, Switch } from "./api";

export interface Marker {
  ts: number; // unix seconds
  to: "paused" | "running";
  label: string;
}

/** State changes of one switch, oldest first, as markers. */
export function markers(audit: AuditEntry[], switchName: string): Marker[] {
  return audit
    .filter((e) => e.switch === switchName && e.action === "state_changed" && e.to)
    .map((e) => ({
      ts: Date.parse(e.at) / 1000,
      to: e.to as "paused" | "running",
      // Who and why, on the graph: "paused by alice: db at 100% CPU".
      label: `${e.to} by ${e.actor}${e.reason ? `: ${e.reason}` : ""}`,
    }))
    .sort((a, b) => a.ts - b.ts);
}

/** Paused intervals `[start, end]` (unix seconds) overlapping `[from, to]`. */
export function pausedIntervals(
  audit: AuditEntry[],
  current: Switch | undefined,
  from: number,
  to: number,
): [number, number][] {
  if (!current) return [];
  const ms = markers(audit, current.name);
  const out: [number, number][] = [];
  // The state before the first known change is the opposite of that change.
  let state: "paused" | "running" | null = ms.length ? (ms[0].to === "paused" ? "running" : "paused") : current.state;
  let since = -Infinity;
  for (const m of ms) {
    if (m.to === state) continue;
    if (state === "paused") out.push([since, m.ts]);
    state = m.to;
    since = m.ts;
  }
  if (current.state === "paused") {
    const start = state === "paused" ? since : Date.parse(current.changed_at) / 1000;
    out.push([start, Infinity]);
  }
  return out
    .map(([a, b]): [number, number] => [Math.max(a, from), Math.min(b, to)])
    .filter(([a, b]) => b > a);
}

/** The visible time range. "Watch after release" keeps the last resume in frame. */
export function visibleRange(
  windowSecs: number,
  watchAfterRelease: boolean,
  lastResume: number | null,
  now: number,
): [number, number] {
  let start = now - windowSecs;
  if (watchAfterRelease && lastResume !== null && lastResume < start + 30) {
    start = Math.max(now - 3600, lastResume - 30);
  }
  return [start, now];
}
