// A fire drill's report, in words, without the DOM: who answered and how fast, who did not
// (with their last report), who is stale, and whether the drill is still listening.

import type { DrillReport, WorkerInfo } from "./api";
import { duration } from "./format";

/** How long the console listens for answers (the CLI's `brb drill --timeout` default). */
export const DRILL_WINDOW_MS = 10_000;
/** How often the report is read while the drill listens. */
export const DRILL_POLL_MS = 500;

/** Whether to read the report again: until every live worker answered or the window ends. */
export function keepPolling(r: DrillReport | null, startedAt: number, now: number): boolean {
  if (r?.complete) return false;
  return now < startedAt + DRILL_WINDOW_MS;
}

/** "39/40 live workers answered · p50 85 ms · p99 240 ms · max 310 ms; nothing paused". */
export function drillSummary(r: DrillReport): string {
  const live = r.answered.length + r.missing.length;
  const ms = (v: number | null) => (v === null ? "–" : `${v} ms`);
  const times = r.answered.length ? ` · p50 ${ms(r.p50_ms)} · p99 ${ms(r.p99_ms)} · max ${ms(r.max_ms)}` : "";
  return `${r.answered.length}/${live} live workers answered${times}; nothing paused`;
}

/** Where the drill is: listening (and for how long yet), complete, or over with silence. */
export function drillStatus(r: DrillReport | null, startedAt: number, now: number): { phase: "listening" | "complete" | "ended"; text: string } {
  if (r?.complete) {
    return { phase: "complete", text: r.answered.length ? "Complete: every live worker answered." : "Complete: no live worker is reporting, so none could answer." };
  }
  const left = startedAt + DRILL_WINDOW_MS - now;
  if (left > 0) return { phase: "listening", text: `Listening for answers: ${Math.ceil(left / 1000)} s left.` };
  const n = r?.missing.length ?? 0;
  return { phase: "ended", text: `Over: ${n} live worker${n === 1 ? "" : "s"} did not answer in ${DRILL_WINDOW_MS / 1000} s.` };
}

/** A worker that did not answer (or is stale), with what it last said. */
export function workerLine(w: WorkerInfo, now: number): string {
  const age = duration(now - Date.parse(w.last_seen));
  const what = `${w.status}, version ${w.observed_version}${w.in_flight ? `, ${w.in_flight} in flight` : ""}`;
  const err = w.error ? `; says: ${w.error}` : "";
  const from = w.remote_addr ? ` from ${w.remote_addr}` : "";
  return w.stale
    ? `${w.worker_id}: silent for ${age} (last report ${what}${from})${err}`
    : `${w.worker_id}: last report ${age} ago (${what}${from})${err}`;
}
