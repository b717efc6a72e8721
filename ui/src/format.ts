// Words and numbers for people.

import type { Source, Switch, WorkerCounts } from "./api";

export function sourceLabel(s: Source): string {
  return {
    desktop: "the desktop app",
    tray: "the tray",
    button: "the office button",
    cli: "the CLI",
    slack: "Slack",
    web: "the web console",
    api: "the API",
    system: "the control plane",
    adapter: "a broker adapter",
    guard: "a health guard",
  }[s] ?? s;
}

/** "4 s", "12 min", "2 h 5 min". */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** "38/40 workers paused · 85 ms", with draining and stale workers called out. */
export function ackLine(sw: Switch, c: WorkerCounts | undefined): string {
  if (!c || c.total === 0) return "no workers are reporting";
  const live = c.total - c.stale;
  const done = sw.state === "paused" ? c.paused : c.running;
  let line = `${done}/${live} workers ${sw.state}`;
  const cur = c.current && c.current.version === sw.version ? c.current : null;
  if (cur && cur.last_ack_ms !== null && cur.acknowledged === cur.total) {
    line += ` · ${cur.last_ack_ms} ms`;
  } else if (cur) {
    line += ` · ${cur.acknowledged}/${cur.total} acknowledged`;
  }
  if (c.draining > 0) line += ` · ${c.draining} draining`;
  if (c.stale > 0) line += ` · ${c.stale} stale`;
  return line;
}

/** "Paused 4 min ago by alice from the office button: db on fire". */
export function changeLine(sw: Switch, now: number): string {
  const verb = sw.state === "paused" ? "Paused" : "Running";
  const when = duration(now - Date.parse(sw.changed_at));
  const reason = sw.reason ? `: ${sw.reason}` : "";
  return `${verb} for ${when} · changed by ${sw.changed_by} from ${sourceLabel(sw.source)}${reason}`;
}

/** The admitted fraction of a switch at `now` (mirrors brb_api::Ramp::fraction_at). */
export function admittedFraction(sw: Switch, now: number): number {
  if (sw.state === "paused") return 0;
  const r = sw.ramp;
  if (!r) return 1;
  const elapsed = Math.max(0, (now - Date.parse(r.started_at)) / 1000);
  const total = Math.max(1, r.duration_secs);
  if (elapsed >= total) return 1;
  if (r.kind === "linear") {
    const from = r.from ?? 0.05;
    return Math.min(1, from + (1 - from) * (elapsed / total));
  }
  const f = r.fractions ?? [1];
  if (f.length < 2) return 1;
  const step = total / (f.length - 1);
  return f[Math.min(f.length - 1, Math.floor(elapsed / step))];
}

/** "14:05:12" in the viewer's time zone, 24-hour. */
export function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** "2026-11-30 14:05:12 UTC": the date, the time and the viewer's time zone, for the audit. */
export function auditWhen(iso: string, timeZone?: string): string {
  const d = new Date(iso);
  const parts = new Intl.DateTimeFormat("en-GB", {
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
    timeZoneName: "short",
    timeZone,
  }).formatToParts(d);
  const get = (t: string) => parts.find((p) => p.type === t)?.value ?? "";
  return `${get("year")}-${get("month")}-${get("day")} ${get("hour")}:${get("minute")}:${get("second")} ${get("timeZoneName")}`;
}

/** "10% → 25% → 50% → 100% over 10 min" or "5% → 100% linearly over 5 min". */
export function rampText(r: { kind: "steps" | "linear"; duration_secs: number; fractions?: number[]; from?: number }): string {
  const over = duration(r.duration_secs * 1000);
  if (r.kind === "linear") return `${Math.round((r.from ?? 0.05) * 100)}% → 100% linearly over ${over}`;
  return `${(r.fractions ?? [1]).map((f) => `${Math.round(f * 100)}%`).join(" → ")} over ${over}`;
}
