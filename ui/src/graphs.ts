// Live utilization graphs with uPlot: thousands of points per series redraw cheaply, once a
// second. Paused periods are shaded and each change is marked.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type { Marker } from "./pauses";
import type { SeriesBuf } from "./model";

export interface Overlay {
  paused: [number, number][];
  markers: Marker[];
  range: [number, number];
}

const COLORS = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#558b2f", "#ad1457"];

function overlayPlugin(get: () => Overlay): uPlot.Plugin {
  return {
    hooks: {
      drawClear: (u: uPlot) => {
        const ctx = u.ctx;
        const { top, height } = u.bbox;
        ctx.save();
        ctx.fillStyle = "rgba(211, 47, 47, 0.16)";
        for (const [a, b] of get().paused) {
          const x0 = u.valToPos(a, "x", true);
          const x1 = u.valToPos(b, "x", true);
          ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
        }
        ctx.restore();
      },
      draw: (u: uPlot) => {
        const ctx = u.ctx;
        const { top, height } = u.bbox;
        const [from, to] = get().range;
        ctx.save();
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
        for (const m of get().markers) {
          if (m.ts < from || m.ts > to) continue;
          const x = u.valToPos(m.ts, "x", true);
          ctx.strokeStyle = m.to === "paused" ? "#d32f2f" : "#2e7d32";
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
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

  constructor(
    public readonly key: string,
    title: string,
    index: number,
  ) {
    this.el = document.createElement("figure");
    this.el.className = "graph";
    this.el.dataset.series = key;
    const cap = document.createElement("figcaption");
    cap.textContent = title;
    this.el.append(cap);
    const opts: uPlot.Options = {
      width: 420,
      height: 170,
      legend: { show: false },
      cursor: { show: true, drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), Math.max(1, max * 1.1)] } },
      axes: [{ stroke: "#888", grid: { stroke: "#2a2f36" } }, { stroke: "#888", grid: { stroke: "#2a2f36" }, size: 56 }],
      series: [{}, { label: title, stroke: COLORS[index % COLORS.length], width: 2, fill: COLORS[index % COLORS.length] + "22", points: { show: false } }],
      plugins: [overlayPlugin(() => this.overlay)],
    };
    this.plot = new uPlot(opts, [[], []], this.el);
  }

  update(buf: SeriesBuf | undefined, overlay: Overlay) {
    this.overlay = overlay;
    const [from, to] = overlay.range;
    const ts = buf?.ts ?? [];
    const vs = buf?.values ?? [];
    this.plot.batch(() => {
      this.plot.setData([ts, vs], false);
      this.plot.setScale("x", { min: from, max: to });
    });
    this.el.dataset.points = String(ts.filter((t) => t >= from && t <= to).length);
    // The newest point drawn (Unix seconds): end-to-end tests wait on it instead of a clock.
    this.el.dataset.last = String(ts.length ? ts[ts.length - 1] : 0);
  }

  resize(width: number) {
    this.plot.setSize({ width: Math.max(240, width), height: 170 });
  }
}
