// Gradual release, computed locally: every gate evaluates the same pure function of the switch's
// ramp (carried with its start instant), so a fleet follows the schedule with no extra round
// trips. The same rules as `brb_api::Ramp::fraction_at`.

export type Ramp =
  | { started_at: string; duration_secs: number; kind: "steps"; fractions: number[] }
  | { started_at: string; duration_secs: number; kind: "linear"; from: number };

/** A ramp as the gate keeps it: the start parsed once. */
export interface ParsedRamp {
  startMs: number;
  durationSecs: number;
  kind: "steps" | "linear";
  fractions: number[];
  from: number;
}

const isFraction = (f: unknown): f is number => typeof f === "number" && Number.isFinite(f) && f > 0 && f <= 1;

/** Reads a switch's `ramp`; throws a TypeError naming what is wrong with it. */
export function parseRamp(r: unknown): ParsedRamp | null {
  if (r === null || r === undefined) return null;
  if (typeof r !== "object") throw new TypeError("ramp is not an object");
  const o = r as Record<string, unknown>;
  const startMs = typeof o.started_at === "string" ? Date.parse(o.started_at) : NaN;
  if (Number.isNaN(startMs)) throw new TypeError("ramp.started_at is not a timestamp");
  const durationSecs = o.duration_secs;
  if (typeof durationSecs !== "number" || !Number.isFinite(durationSecs) || durationSecs < 0) {
    throw new TypeError("ramp.duration_secs is not a duration");
  }
  if (o.kind === "steps") {
    const fr = o.fractions;
    if (!Array.isArray(fr) || fr.length < 1 || !fr.every(isFraction)) {
      throw new TypeError("ramp.fractions is not a list of fractions in (0, 1]");
    }
    return { startMs, durationSecs, kind: "steps", fractions: fr as number[], from: 0 };
  }
  if (o.kind === "linear") {
    if (!isFraction(o.from)) throw new TypeError("ramp.from is not a fraction in (0, 1]");
    return { startMs, durationSecs, kind: "linear", fractions: [], from: o.from };
  }
  throw new TypeError(`unknown ramp kind ${JSON.stringify(o.kind)}`);
}

/**
 * The fraction of normal work admitted at `nowMs` (Unix ms): in (0, 1], exactly 1 once the ramp
 * is over. Before its start (clock skew between this host and the server) it is the first
 * fraction.
 */
export function rampFraction(r: ParsedRamp, nowMs: number): number {
  const elapsed = Math.max(0, nowMs - r.startMs) / 1000;
  const total = Math.max(1, r.durationSecs);
  if (elapsed >= total) return 1;
  let f: number;
  if (r.kind === "linear") {
    f = r.from + (1 - r.from) * (elapsed / total);
  } else {
    const n = r.fractions.length;
    if (n < 2) return 1;
    const step = total / (n - 1);
    const i = Math.min(Math.floor(elapsed / step), n - 1);
    f = r.fractions[i]!;
  }
  return Math.min(1, Math.max(0, f));
}

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base·2^attempt)]. */
export function backoffMs(baseMs: number, capMs: number, attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 20));
  return ceiling * random();
}
