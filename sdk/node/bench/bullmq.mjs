#!/usr/bin/env node
// BullMQ under the brake, measured (a benchmark, not a test): real redis-server, the real
// `brb server` (BRB_BIN, else the workspace's target/debug/brb), two worker processes
// (fixtures/bullmq-worker.ts: `withBrake` around a Worker of concurrency 5 whose jobs take
// 100 ms), a producer enqueuing all along. Prints Markdown for BENCHMARKS.md:
//
// 1. Press → last job start, over PRESSES presses (default 10): the wall clock read just before
//    the pause's PUT, then the latest start in either worker (each worker stamps its starts and
//    its gate's change on the same clock); also press → both gates applied and press → both
//    reported paused with nothing in flight. The producer runs at 60 jobs/s, the workers take
//    them as they come; after each press the switch is resumed at once and the next press
//    waits for 20 more starts.
// 2. The release curve: a backlog built while paused (the producer at 40 jobs/s for BACKLOG_S
//    seconds, default 20), then `brb resume` at once, jobs started per second; the same again
//    with `brb resume --ramp steps:1m`.
//
// Usage (in sdk/node, after `npm ci`): node bench/bullmq.mjs [--presses 10] [--backlog-s 20]
// It compiles the tests and fixtures first (tsc -p tsconfig.test.json) and imports them from
// build/.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const sdk = join(dirname(fileURLToPath(import.meta.url)), "..");
execFileSync(process.execPath, [join(sdk, "node_modules", "typescript", "bin", "tsc"), "-p", join(sdk, "tsconfig.test.json")], { stdio: "inherit" });
const { BrbServer, RedisServer, until } = await import(join(sdk, "build", "test", "support.js"));
const { brb, perSecond, Producer, WorkerProc } = await import(join(sdk, "build", "test", "bullmq-harness.js"));

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const PRESSES = arg("--presses", 10);
const BACKLOG_S = arg("--backlog-s", 20);
const CONCURRENCY = 5;
const JOB_MS = 100;

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const ms = (us) => `${(us / 1000).toFixed(1)} ms`;
const log = (m) => process.stderr.write(`${m}\n`);

const load0 = loadavg();
const [redis, srv] = await Promise.all([RedisServer.start(), BrbServer.start()]);
const workers = [];
let producer = null;
try {
  await srv.setState("running");
  const env = {
    REDIS_PORT: String(redis.port),
    QUEUE: "bench",
    CONCURRENCY: String(CONCURRENCY),
    JOB_MS: String(JOB_MS),
    BRB_URL: srv.url,
    BRB_TOKEN: srv.token,
    BRB_TOKEN_FILE: "",
    BRB_LOG_LEVEL: "warn",
  };
  workers.push(new WorkerProc(1, env), new WorkerProc(2, env));
  const all = () => workers.flatMap((w) => w.starts);
  const reported = async (status, version) => {
    const c = await srv.workers();
    return c.workers.length === 2 && c.workers.every((w) => w.status === status && w.observed_version === version && (status !== "paused" || w.in_flight === 0));
  };
  producer = new Producer("bench", redis.port);
  producer.start(60);
  await until("both workers running jobs", () => workers.every((w) => w.starts.length >= 5), 60_000);

  // 1. Presses.
  const lastStart = [];
  const applied = [];
  const drained = [];
  for (let i = 0; i < PRESSES; i++) {
    const before = all().length;
    await until("20 more starts", () => all().length >= before + 20, 60_000);
    const t0 = nowUs();
    const { version } = await srv.setState("paused", { reason: `bench press ${i + 1}` });
    await until("both gates applied the pause", () => workers.every((w) => w.appliedAt(version) !== undefined), 30_000);
    const appliedUs = Math.max(...workers.map((w) => w.appliedAt(version)));
    await until("both reported paused", () => reported("paused", version), 30_000);
    drained.push(nowUs() - t0);
    applied.push(appliedUs - t0);
    lastStart.push(Math.max(...all().map((s) => s.us)) - t0);
    const late = all().filter((s) => s.us > appliedUs);
    if (late.length > 0) throw new Error(`press ${i + 1}: ${late.length} jobs started after the gates applied the pause`);
    log(`press ${i + 1}: last start ${ms(lastStart.at(-1))}, gates ${ms(applied.at(-1))}, reported paused ${ms(drained.at(-1))}`);
    const r = await srv.setState("running", { reason: "bench" });
    await until("both running", () => reported("running", r.version), 30_000);
  }
  await producer.stop();

  // 2. Release curves.
  const curve = async (label, args) => {
    const p = await brb(srv, ["pause", "--reason", `bench ${label}`, "--wait", "30"]);
    if (p.code !== 0) throw new Error(`brb pause: ${p.stderr}`);
    const paused = await srv.api("GET", "/api/v1/switches/workers");
    await until("both reported paused", () => reported("paused", paused.version), 30_000);
    // Whatever was left over drains first; then the backlog is built from empty.
    const backlogStart = await producer.queue.getWaitingCount();
    producer.start(40);
    await until(`${BACKLOG_S * 40} jobs waiting`, async () => (await producer.queue.getWaitingCount()) >= backlogStart + BACKLOG_S * 40, BACKLOG_S * 3000);
    const backlog = await producer.queue.getWaitingCount();
    const r = await brb(srv, ["resume", "--reason", `bench ${label}`, "--wait", "30", ...args]);
    if (r.code !== 0) throw new Error(`brb resume: ${r.stderr}`);
    const sw = await srv.api("GET", "/api/v1/switches/workers");
    // From the release: the switch's own instant (the ramp's start when there is one).
    const fromUs = sw.ramp ? Date.parse(sw.ramp.started_at) * 1000 : Math.min(...workers.map((w) => w.appliedAt(sw.version)));
    const secs = sw.ramp ? sw.ramp.duration_secs + 30 : 40;
    await until("the curve's window", () => nowUs() >= fromUs + secs * 1e6 || all().some((s) => s.us >= fromUs + secs * 1e6), (secs + 30) * 1000);
    await producer.stop();
    log(`${label}: backlog ${backlog}, ${r.stdout.trim()}`);
    return { label, backlog, perSec: perSecond(all(), fromUs, secs), ack: r.stdout.trim().split("\n").at(-1) };
  };
  const atOnce = await curve("at once", []);
  const ramp = await curve("steps:1m", ["--ramp", "steps:1m"]);

  // Markdown.
  const out = [];
  out.push(`Load average before: ${load0}; after: ${loadavg()}. brb: ${process.env.BRB_BIN ?? "target/debug/brb"}.`, "");
  out.push(`Press → … over ${PRESSES} presses (2 workers × concurrency ${CONCURRENCY}, ${JOB_MS} ms jobs, producer 60 jobs/s):`, "");
  out.push("| from the press (the PUT's start) to | p50 | max |", "| --- | ---: | ---: |");
  out.push(`| the last job start (either worker) | ${ms(pct(lastStart, 50))} | ${ms(Math.max(...lastStart))} |`);
  out.push(`| both gates applied the pause | ${ms(pct(applied, 50))} | ${ms(Math.max(...applied))} |`);
  out.push(`| both reported paused, nothing in flight (as polled) | ${ms(pct(drained, 50))} | ${ms(Math.max(...drained))} |`);
  out.push("", `Each press, last start: ${lastStart.map((x) => (x / 1000).toFixed(1)).join(", ")} ms.`, "");
  out.push(`Release after a backlog (${atOnce.backlog} and ${ramp.backlog} jobs waiting; the producer goes on at 40 jobs/s), jobs started per second:`, "");
  const n = Math.max(atOnce.perSec.length, ramp.perSec.length);
  const bucket = 5;
  out.push("| seconds after the release | resume at once | --ramp steps:1m |", "| --- | ---: | ---: |");
  for (let s = 0; s < n; s += bucket) {
    const avg = (xs) => {
      const w = xs.slice(s, s + bucket);
      return w.length === 0 ? "" : `${(w.reduce((a, b) => a + b, 0) / w.length).toFixed(1)}/s (max ${Math.max(...w)})`;
    };
    out.push(`| ${s}–${s + bucket} | ${avg(atOnce.perSec)} | ${avg(ramp.perSec)} |`);
  }
  out.push("", `Per second, at once: ${atOnce.perSec.join(" ")}`, "", `Per second, steps:1m: ${ramp.perSec.join(" ")}`);
  out.push("", `Given back while paused (fetched in flight at a press): ${workers.map((w) => w.givenBack).join(" + ")} jobs.`);
  process.stdout.write(out.join("\n") + "\n");
} finally {
  await producer?.close().catch(() => {});
  for (const w of workers) w.kill();
  await Promise.all([redis.stop(), srv.stop()]);
}
