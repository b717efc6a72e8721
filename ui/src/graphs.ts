// Live utilization graphs with uPlot: thousands of points per series redraw cheaply, once a
// second. Paused periods are shaded, each change is marked with who and why, periods without
// samples are breaks in the line, and each graph has a text alternative and a hover readout.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { clock } from "./format";
import type { SeriesBuf } from "./model";
import type { Marker } from "./pauses";
import { type SeriesMeta, formatValue, gaps, withGaps } from "./series-meta";

export interface Overlay {
  paused: [number, number][];
  markers: Marker[];
  range: [number, number];
  /** A guarded release's limit on this series: a horizontal line. */
  limit?: GuardLimit;
}

export interface GuardLimit {
  value: number;
  label: string;
  phase: string;
}

/** The limit line's colour by what the guarded release does. */
export function limitColor(phase: string): string {
  return phase === "holding" ? "#ffb300" : phase === "tripped" ? MARK_PAUSED : MARK_RUNNING;
}

/** Marker colours: the paused and running colours of states.ts, lightened for a dark plot. */
export const MARK_PAUSED = "#ef5350";
export const MARK_RUNNING = "#26a69a";
export const PAUSED_SHADE = "rgba(198, 40, 40, 0.18)";

function overlayPlugin(get: () => Overlay): uPlot.Plugin {
  return {
    hooks: {
      drawClear: (u: uPlot) => {
        const ctx = u.ctx;
        const { top, height } = u.bbox;
        ctx.save();
        ctx.fillStyle = PAUSED_SHADE;
        for (const [a, b] of get().paused) {
          const x0 = u.valToPos(a, "x", true);
          const x1 = u.valToPos(b, "x", true);
          ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
        }
        ctx.restore();
      },
      draw: (u: uPlot) => {
        const ctx = u.ctx;
        const { top, height, left, width } = u.bbox;
        const [from, to] = get().range;
        const px = devicePixelRatio;
        ctx.save();
        ctx.lineWidth = 2 * px;
        ctx.font = `${11 * px}px system-ui, sans-serif`;
        ctx.textBaseline = "top";
        // uPlot leaves the axes' alignment set.
        ctx.textAlign = "left";
        const shown = get().markers.filter((m) => m.ts >= from && m.ts <= to);
        ctx.setLineDash([4 * px, 3 * px]);
        for (const m of shown) {
          const x = u.valToPos(m.ts, "x", true);
          ctx.strokeStyle = m.to === "paused" ? MARK_PAUSED : MARK_RUNNING;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
        }
        // Who and why beside each line, newest first, in two rows at the top; a label that
        // would overlap another is left out (the hover readout and the text alternative still
        // say it).
        const taken: [number, number][][] = [[], []];
        for (const m of [...shown].reverse()) {
          const x = u.valToPos(m.ts, "x", true);
          const color = m.to === "paused" ? MARK_PAUSED : MARK_RUNNING;
          const text = m.label.length > 40 ? `${m.label.slice(0, 39)}…` : m.label;
          const w = ctx.measureText(text).width;
          // Right of the line, or left of it near the right edge.
          const tx = x + 4 * px + w <= left + width ? x + 4 * px : Math.max(left, x - 4 * px - w);
          const a = tx - 4 * px;
          const b = tx + w + 4 * px;
          const row = taken.findIndex((spans) => spans.every(([s, e]) => b < s || a > e));
          if (row < 0) continue;
          taken[row].push([a, b]);
          const ty = top + 2 * px + row * 16 * px;
          ctx.fillStyle = "rgba(20, 23, 28, 0.85)";
          ctx.fillRect(tx - 2 * px, ty, w + 4 * px, 14 * px);
          ctx.fillStyle = color;
          ctx.fillText(text, tx, ty + px);
        }
        const limit = get().limit;
        if (limit) {
          const y = u.valToPos(limit.value, "y", true);
          ctx.setLineDash([8 * px, 4 * px]);
          ctx.strokeStyle = limitColor(limit.phase);
          ctx.beginPath();
          ctx.moveTo(left, y);
          ctx.lineTo(left + width, y);
          ctx.stroke();
          ctx.fillStyle = limitColor(limit.phase);
          ctx.textBaseline = "bottom";
          ctx.fillText(limit.label, left + 4 * px, y - 2 * px);
        }
        ctx.restore();
      },
    },
  };
}

export class Graph {
  readonly el: HTMLElement;
  private plot: uPlot;
  private overlay: Overlay = { paused: [], markers: [], range: [0, 1] };
  private latest: HTMLSpanElement;
  private readout: HTMLSpanElement;
  private alt: HTMLParagraphElement;
  private ts: number[] = [];
  private vs: (number | null)[] = [];

  constructor(
    public readonly key: string,
    private meta: SeriesMeta,
  ) {
    this.el = document.createElement("figure");
    this.el.className = "graph";
    this.el.dataset.series = key;
    this.el.style.setProperty("--series", meta.color);
    const cap = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = meta.unit ? `${meta.title} (${meta.unit})` : meta.title;
    this.latest = document.createElement("span");
    this.latest.className = "latest";
    this.latest.dataset.testid = "latest";
    this.readout = document.createElement("span");
    this.readout.className = "readout";
    this.readout.dataset.testid = "readout";
    cap.append(title, this.latest, this.readout);
    // The graph's text alternative: what a sighted person reads off it.
    this.alt = document.createElement("p");
    this.alt.className = "sr-only";
    this.alt.dataset.testid = "graph-text";
    this.el.append(cap, this.alt);
    const opts: uPlot.Options = {
      width: 420,
      height: 170,
      legend: { show: false },
      cursor: { show: true, drag: { x: false, y: false } },
      // A guard's limit stays in view even while the series is far below it.
      scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), Math.max(1, max * 1.1, (this.overlay.limit?.value ?? 0) * 1.1)] } },
      axes: [
        { stroke: "#888", grid: { stroke: "#2a2f36" } },
        { stroke: "#888", grid: { stroke: "#2a2f36" }, size: 50, values: (_u, vals) => vals.map((v) => formatValue(v, meta.unit === "%" ? "%" : "")) },
      ],
      // No spanGaps: a null (see withGaps) is a break in the line.
      series: [{}, { label: meta.title, stroke: meta.color, width: 2, fill: meta.color + "22", points: { show: false }, spanGaps: false }],
      plugins: [overlayPlugin(() => this.overlay)],
      hooks: { setCursor: [(u) => this.showReadout(u.cursor.idx ?? null)] },
    };
    this.plot = new uPlot(opts, [[], []], this.el);
    this.plot.root.querySelector("canvas")?.setAttribute("aria-hidden", "true");
  }

  private showReadout(idx: number | null) {
    if (idx === null || idx === undefined || this.ts[idx] === undefined) {
      this.readout.textContent = "";
      return;
    }
    const t = this.ts[idx];
    const v = this.vs[idx];
    const near = this.overlay.markers.find((m) => Math.abs(m.ts - t) <= Math.max(2, (this.overlay.range[1] - this.overlay.range[0]) / 100));
    this.readout.textContent = `${clock(t * 1000)}: ${v === null ? "no sample" : formatValue(v, this.meta.unit)}${near ? ` · ${near.label}` : ""}`;
  }

  update(buf: SeriesBuf | undefined, overlay: Overlay) {
    this.overlay = overlay;
    const [from, to] = overlay.range;
    const rawTs = buf?.ts ?? [];
    const rawVs = buf?.values ?? [];
    const [ts, vs] = withGaps(rawTs, rawVs);
    this.ts = ts;
    this.vs = vs;
    this.plot.batch(() => {
      this.plot.setData([ts, vs] as uPlot.AlignedData, false);
      this.plot.setScale("x", { min: from, max: to });
    });
    const last = rawVs.length ? rawVs[rawVs.length - 1] : null;
    const lastTs = rawTs.length ? rawTs[rawTs.length - 1] : null;
    // A value from before a silence is not "now" (db latency has none while workers are paused).
    this.latest.textContent =
      lastTs !== null && to - lastTs > 3
        ? `last ${formatValue(last, this.meta.unit)} at ${clock(lastTs * 1000)}`
        : `now ${formatValue(last, this.meta.unit)}`;
    const inView = rawVs.filter((_, i) => rawTs[i] >= from && rawTs[i] <= to);
    const minutes = Math.round((to - from) / 60);
    const holes = gaps(rawTs).filter(([a, b]) => b >= from && a <= to);
    const marks = overlay.markers.filter((m) => m.ts >= from && m.ts <= to);
    const alt = [
      `${this.meta.title}, last ${minutes} min: ${this.latest.textContent}`,
      inView.length ? `, lowest ${formatValue(Math.min(...inView), this.meta.unit)}, highest ${formatValue(Math.max(...inView), this.meta.unit)}.` : ", no samples.",
      ...marks.map((m) => ` At ${clock(m.ts * 1000)} ${m.label}.`),
      ...holes.map(([a, b]) => ` No samples from ${clock(a * 1000)} to ${clock(b * 1000)}.`),
      overlay.limit ? ` Limit line: ${overlay.limit.label}.` : "",
    ].join("");
    if (this.alt.textContent !== alt) this.alt.textContent = alt;
    this.el.setAttribute("aria-label", `${this.meta.title} graph`);
    // The guard's limit, for the text alternative's readers and for tests.
    if (overlay.limit) this.el.dataset.limit = `${overlay.limit.value}|${overlay.limit.phase}`;
    else delete this.el.dataset.limit;
    this.el.dataset.points = String(inView.length);
    // The newest point drawn (Unix seconds): end-to-end tests wait on it instead of a clock.
    this.el.dataset.last = String(rawTs.length ? rawTs[rawTs.length - 1] : 0);
    // Where the plot area is, in CSS pixels of the canvas, and its time range: tests read pixels.
    const b = this.plot.bbox;
    this.el.dataset.plot = JSON.stringify({ left: b.left / devicePixelRatio, top: b.top / devicePixelRatio, width: b.width / devicePixelRatio, height: b.height / devicePixelRatio, from, to });
  }

  resize(width: number) {
    this.plot.setSize({ width: Math.max(240, width), height: 170 });
  }
}
