// How each series is shown: a human title, its unit and a colour that means something. This
// table is the place to configure a series (by its name as published to the control plane);
// a series not listed gets a title from its name, a unit from its suffix and a colour from a
// hash of its name, so it keeps the same colour on every page load. Pure, under Vitest.

export interface SeriesMeta {
  title: string;
  /** Shown after values: "jobs/s", "ms", "%". */
  unit: string;
  color: string;
  /** One line for people: what a rising line means. */
  help?: string;
}

export const SERIES: Record<string, SeriesMeta> = {
  jobs_per_second: { title: "Jobs done", unit: "jobs/s", color: "#42a5f5", help: "background work completed" },
  queue_depth: { title: "Queue backlog", unit: "jobs", color: "#ffb300", help: "jobs waiting; grows while paused" },
  db_load: { title: "Database load", unit: "%", color: "#ab47bc", help: "of the database's capacity" },
  db_latency_ms: { title: "Database latency", unit: "ms", color: "#ec407a", help: "average query time" },
  jobs_failed: { title: "Jobs timed out", unit: "jobs/s", color: "#8d6e63", help: "queries that timed out; their jobs are retried" },
  fleet_in_flight: { title: "Jobs in flight", unit: "jobs", color: "#26c6da", help: "started, not yet finished" },
  // Paused workers in the paused colour, running ones in the running colour (see states.ts).
  fleet_paused: { title: "Workers paused", unit: "workers", color: "#ef5350" },
  fleet_running: { title: "Workers running", unit: "workers", color: "#26a69a" },
};

const FALLBACK_COLORS = ["#42a5f5", "#ffb300", "#ab47bc", "#ec407a", "#26c6da", "#9ccc65", "#ff7043", "#8d6e63"];

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function unitFromName(name: string): string {
  if (name.endsWith("_ms")) return "ms";
  if (name.endsWith("_seconds") || name.endsWith("_secs")) return "s";
  if (name.endsWith("_per_second")) return "/s";
  if (name.endsWith("_bytes")) return "bytes";
  if (name.endsWith("_percent") || name.endsWith("_pct")) return "%";
  return "";
}

/** The meta of a series `name` with `labels` (labels are named in the title: "· switch workers"). */
export function seriesMeta(name: string, labels?: Record<string, string>): SeriesMeta {
  const known = SERIES[name];
  const base: SeriesMeta = known ?? {
    title: name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()),
    unit: unitFromName(name),
    color: FALLBACK_COLORS[hash(name) % FALLBACK_COLORS.length],
  };
  const l = Object.entries(labels ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return l ? { ...base, title: `${base.title} · ${l}` } : base;
}

/** "1,234 jobs/s", "12.5 ms", "87%". */
export function formatValue(v: number | null | undefined, unit: string): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const digits = Math.abs(v) >= 100 || Number.isInteger(v) ? 0 : 1;
  const n = v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  if (!unit) return n;
  return unit === "%" ? `${n}%` : `${n} ${unit}`;
}

/**
 * Samples arrive once a second. Where two are further apart than `maxGapSecs`, nothing was
 * measured in between: a `null` there makes the graph break the line instead of drawing a
 * straight one across the silence.
 */
export function withGaps(ts: number[], values: number[], maxGapSecs = 3): [number[], (number | null)[]] {
  const outT: number[] = [];
  const outV: (number | null)[] = [];
  for (let i = 0; i < ts.length; i++) {
    if (i > 0 && ts[i] - ts[i - 1] > maxGapSecs) {
      outT.push(ts[i - 1] + 1);
      outV.push(null);
    }
    outT.push(ts[i]);
    outV.push(values[i]);
  }
  return [outT, outV];
}

/** The periods without samples `[from, to]` (unix seconds), as `withGaps` breaks them. */
export function gaps(ts: number[], maxGapSecs = 3): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 1; i < ts.length; i++) if (ts[i] - ts[i - 1] > maxGapSecs) out.push([ts[i - 1], ts[i]]);
  return out;
}
