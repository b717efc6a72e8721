// What the primary switch's state looks like: a word, a shape and a colour per state, so that
// no state is told apart by colour alone (from across a room, or by a colour-blind person).
// Pure: the logic tests check the colours under a deuteranopia simulation.

import type { Switch, WorkerCounts } from "./api";
import { admittedFraction } from "./format";

export type StateKind = "paused" | "draining" | "ramping" | "running" | "unknown";

export interface StateLook {
  kind: StateKind;
  /** The big word, e.g. "WORKERS PAUSED", "RAMPING 25%". */
  word: string;
  /** A short word for the tab title and the sticky bar, e.g. "PAUSED". */
  short: string;
  /** Background colour; `ink` is the text colour on it. */
  color: string;
  ink: string;
  /** An SVG path (24×24 box) of the state's shape. */
  icon: string;
}

/**
 * The colours. Chosen so every pair stays apart (CIE ΔE ≥ 25) for deuteranopes as well as for
 * normal vision: paused red and running teal differ in lightness, not only in hue.
 */
export const STATE_COLORS: Record<StateKind, { color: string; ink: string }> = {
  paused: { color: "#c62828", ink: "#ffffff" },
  draining: { color: "#ffb300", ink: "#1a1a1a" },
  ramping: { color: "#3949ab", ink: "#ffffff" },
  running: { color: "#00796b", ink: "#ffffff" },
  unknown: { color: "#b0bec5", ink: "#1a1a1a" },
};

/** Shapes: a stop square, an hourglass, rising steps, a play triangle, a question mark. */
export const STATE_ICONS: Record<StateKind, string> = {
  paused: "M5 5h14v14H5z",
  draining: "M6 3h12v2l-5 7 5 7v2H6v-2l5-7-5-7z",
  ramping: "M3 21v-4h5v-5h5V7h5V3h3v18z",
  running: "M7 4l13 8-13 8z",
  unknown:
    "M12 2a10 10 0 100 20 10 10 0 000-20zm1 16h-2v-2h2zm2.1-7.8l-.9.9C13.4 11.9 13 12.5 13 14h-2v-.5c0-1.1.4-2.1 1.2-2.8l1.2-1.3A2 2 0 0012 6a2 2 0 00-2 2H8a4 4 0 118 0c0 .9-.4 1.6-.9 2.2z",
};

/** The state to show. `unknown` wins: a last-known state is not the state. */
export function stateKind(sw: Switch, counts: WorkerCounts | undefined, now: number, reachable: boolean): StateKind {
  if (!reachable) return "unknown";
  if (sw.state === "paused") return counts && counts.version === sw.version && counts.draining > 0 ? "draining" : "paused";
  return admittedFraction(sw, now) < 1 ? "ramping" : "running";
}

export function stateLook(kind: StateKind, sw: Switch, counts: WorkerCounts | undefined, now: number): StateLook {
  const pct = Math.round(admittedFraction(sw, now) * 100);
  // A held release stays at its share until someone (or something) lets it go on: "RAMPING UP"
  // would promise a rise that is not coming.
  const held = kind === "ramping" && !!sw.ramp?.held;
  const words: Record<StateKind, [string, string]> = {
    paused: ["WORKERS PAUSED", "PAUSED"],
    draining: [`DRAINING · ${counts?.draining ?? 0} BUSY`, "DRAINING"],
    ramping: held ? [`RELEASE HELD · ${pct}%`, `HELD ${pct}%`] : [`RAMPING UP · ${pct}%`, `RAMPING ${pct}%`],
    running: ["WORKERS RUNNING", "RUNNING"],
    unknown: ["STATE UNKNOWN", "UNKNOWN"],
  };
  return { kind, word: words[kind][0], short: words[kind][1], ...STATE_COLORS[kind], icon: STATE_ICONS[kind] };
}

/** The favicon of a state: its shape on its colour, as an SVG data URL (CSP allows `data:`). */
export function faviconUrl(kind: StateKind): string {
  const { color, ink } = STATE_COLORS[kind];
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">` +
    `<rect width="24" height="24" rx="5" fill="${color}"/>` +
    `<path transform="translate(3 3) scale(.75)" fill="${ink}" d="${STATE_ICONS[kind]}"/></svg>`;
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}

// Colour-vision arithmetic for the tests (and anyone choosing new colours).

function toLinear(c: number): number {
  const v = c / 255;
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
}

function hexToLinear(hex: string): [number, number, number] {
  const n = Number.parseInt(hex.slice(1), 16);
  return [toLinear((n >> 16) & 255), toLinear((n >> 8) & 255), toLinear(n & 255)];
}

/** Machado, Oliveira & Fernandes (2009), deuteranopia at severity 1, on linear RGB. */
const DEUTERANOPIA = [
  [0.367322, 0.860646, -0.227968],
  [0.280085, 0.672501, 0.047413],
  [-0.01182, 0.04294, 0.968881],
];

export function simulateDeuteranopia(hex: string): [number, number, number] {
  const l = hexToLinear(hex);
  const out = DEUTERANOPIA.map((row) => Math.min(1, Math.max(0, row[0] * l[0] + row[1] * l[1] + row[2] * l[2])));
  return [out[0], out[1], out[2]];
}

/** CIE L*a*b* (D65) of a linear RGB colour. */
function lab([r, g, b]: [number, number, number]): [number, number, number] {
  const x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
  const y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  const z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
  const f = (t: number) => (t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116);
  return [116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))];
}

/** CIE76 ΔE between two colours as seen normally, or as a deuteranope sees them. */
export function deltaE(a: string, b: string, deuteranope = false): number {
  const conv = deuteranope ? simulateDeuteranopia : hexToLinear;
  const [l1, a1, b1] = lab(conv(a));
  const [l2, a2, b2] = lab(conv(b));
  return Math.hypot(l1 - l2, a1 - a2, b1 - b2);
}

/** WCAG relative luminance of `#rrggbb` (null when it is not that form). */
function luminance(hex: string): number | null {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex.trim());
  if (!m) return null;
  const [r, g, b] = m.slice(1).map((c) => {
    const v = parseInt(c, 16) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

/**
 * The text colour for the environment's header on its configured colour (any colour an
 * operator picks, e.g. staging's orange, where white reads at 2.7:1): black or white, whichever
 * contrasts more. Colours that are not `#rrggbb` keep white.
 */
export function inkOn(background: string): string {
  const l = luminance(background);
  if (l === null) return "#ffffff";
  return (1.05 / (l + 0.05)) >= ((l + 0.05) / 0.05) ? "#ffffff" : "#000000";
}
