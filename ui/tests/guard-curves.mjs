// Records the three curves of a release after a pause on the real demo (`brb server --demo`),
// one fresh server each: resume at once (relapse), a guarded stepped release (recovers), and a
// release too fast for the backlog (the guard pauses again). Writes a screenshot of the console
// and the series data per outcome to docs/guard-curves/. A recording, not a test (minutes of
// real time): `node tests/guard-curves.mjs` after `make build`.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const bin = process.env.BRB_BIN ?? join(root, "target", "debug", "brb");
const out = join(root, "docs", "guard-curves");
const PAUSE_SECS = Number(process.env.PAUSE_SECS ?? 30);
const GUARD = { series: "db_load", below: 100, interval_secs: 5, failure_limit: 3 };
const steps = (secs) => ({ kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: secs });

const outcomes = [
  { name: "relapse", title: "resume at once", release: {}, watchSecs: 60 },
  { name: "guarded", title: "guarded steps:2m, db_load < 100", release: { ramp: steps(120), guards: [GUARD] }, until: (s) => s.state === "running" && !s.ramp, watchSecs: 30 },
  { name: "trip", title: "guarded steps:20s, db_load < 100", release: { ramp: steps(20), guards: [GUARD] }, until: (s) => s.state === "paused", watchSecs: 10 },
];

function startServer(dataDir) {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, ["server", "--demo", "--demo-steady", "--listen", "127.0.0.1:0", "--data-dir", dataDir], {
      env: { ...process.env, BRB_LOG: "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const timer = setTimeout(() => reject(new Error("server did not start")), 30000);
    p.stdout.on("data", (d) => {
      const m = /listening on (http:\/\/[\d.:]+)/.exec(String(d));
      if (m) {
        clearTimeout(timer);
        resolve({ p, url: m[1] });
      }
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"],
});
// `ONLY=guarded` records one outcome.
for (const o of outcomes.filter((o) => !process.env.ONLY || process.env.ONLY === o.name)) {
  const dataDir = mkdtempSync(join(tmpdir(), `brb-curves-${o.name}-`));
  const { p, url } = await startServer(dataDir);
  const token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
  const api = async (path, init = {}) => {
    const res = await fetch(`${url}/api/v1${path}`, { ...init, headers: { authorization: `Bearer ${token}`, "content-type": "application/json" } });
    return res.json();
  };
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  await page.goto(`${url}/#token=${token}`);
  await page.getByTestId("acks").getByText(/\/40 workers running/).waitFor({ timeout: 60000 });
  const start = Math.floor(Date.now() / 1000);
  await sleep(10000);
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "db on fire", source: "cli" }) });
  await sleep(PAUSE_SECS * 1000);
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", reason: o.title, source: "cli", ...o.release }) });
  const resumed = Date.now();
  if (o.until) {
    for (;;) {
      const s = await api("/switches/workers");
      if (o.until(s)) break;
      if (Date.now() - resumed > 600000) throw new Error(`${o.name}: did not end: ${JSON.stringify(s)}`);
      await sleep(500);
    }
  }
  await sleep(o.watchSecs * 1000);
  await page.locator(".graphs-panel").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(out, `${o.name}.png`), fullPage: false });
  const series = await api(`/metrics/series?since=${start}`);
  const names = ["db_load", "queue_depth", "jobs_per_second", "jobs_failed"];
  const rows = new Map();
  for (const s of series.series.filter((s) => names.includes(s.name))) {
    for (const [ts, v] of s.points) {
      if (!rows.has(ts)) rows.set(ts, {});
      rows.get(ts)[s.name] = v;
    }
  }
  const csv = [`t,${names.join(",")}`, ...[...rows.keys()].sort((a, b) => a - b).map((ts) => [ts - start, ...names.map((n) => rows.get(ts)[n] ?? "")].join(","))];
  writeFileSync(join(out, `${o.name}.csv`), csv.join("\n") + "\n");
  const audit = await api("/audit?limit=20");
  console.log(`--- ${o.name} (${o.title})`);
  for (const e of audit.entries.reverse()) console.log(`  ${e.at} ${e.action} ${e.from ?? ""}->${e.to ?? ""} by ${e.actor} (${e.source}): ${e.reason ?? ""}`);
  await page.close();
  p.kill("SIGKILL");
}
await browser.close();
