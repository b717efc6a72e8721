// The conformance driver (sdk/conformance/PROTOCOL.md): reads one JSON command per line on stdin,
// drives the SDK's gates through its public API as a worker would, and answers one JSON line per
// command on stdout, in order. No scenario logic, no retries, nothing read from the control
// plane here: it exposes what the SDK knows. The SDK's own log lines go to stderr.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { BrbError, Gate, type GateOptions, type Permit } from "./index.js";

type Json = Record<string, unknown>;

interface Held {
  gate: Gate;
  maxConcurrency: number;
  jobs: Map<string, Permit>;
}

const gates = new Map<string, Held>();
let fleet: Gate[] = [];

class CommandError extends Error {}

const opt = <T>(v: unknown): T | undefined => (v === null || v === undefined ? undefined : (v as T));

function str(c: Json, key: string): string {
  const v = c[key];
  if (typeof v !== "string" || v.length === 0) throw new CommandError(`"${key}" must be a non-empty string`);
  return v;
}

function nonNeg(c: Json, key: string, dflt?: number): number {
  const v = c[key] ?? dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new CommandError(`"${key}" must be a number >= 0`);
  return v;
}

/** The protocol's config, as the SDK's options. Missing or null fields: the SDK's default. */
function options(config: unknown, workerId?: string): GateOptions {
  if (typeof config !== "object" || config === null) throw new CommandError(`"config" must be an object`);
  const c = config as Json;
  const o: GateOptions = {
    urls: opt<string[]>(c.urls),
    switch: opt<string>(c.switch),
    token: opt<string>(c.token),
    tokenFile: opt<string>(c.token_file),
    workerId: workerId ?? opt<string>(c.worker_id),
    policy: opt(c.policy),
    graceMs: opt<number>(c.grace_ms),
    maxConcurrency: opt<number>(c.max_concurrency),
    reportIntervalMs: opt<number>(c.report_interval_ms),
    transport: opt(c.transport),
    backoffBaseMs: opt<number>(c.backoff_base_ms),
    backoffCapMs: opt<number>(c.backoff_cap_ms),
    idleTimeoutMs: opt<number>(c.idle_timeout_ms),
    caFile: opt<string>(c.ca_file),
    clientCert: opt<string>(c.client_cert),
    clientKey: opt<string>(c.client_key),
    reports: opt<boolean>(c.reports),
  };
  if (!Array.isArray(o.urls) || o.urls.length === 0) throw new CommandError(`"config.urls" must list at least one URL`);
  if (o.switch === undefined) throw new CommandError(`"config.switch" is required`);
  return o;
}

function held(c: Json): Held {
  const name = str(c, "gate");
  const h = gates.get(name);
  if (!h) throw new CommandError(`no gate ${JSON.stringify(name)} (start it first)`);
  return h;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** One worker loop of `work`: jobs through the SDK's admission until `endAt` (Unix ms). */
async function workLoop(gate: Gate, endAt: number, jobMs: number, jobs: Array<[number, number]>): Promise<void> {
  for (;;) {
    const left = endAt - Date.now();
    if (left <= 0) return;
    let permit: Permit;
    try {
      permit = await gate.acquire({ timeoutMs: left });
    } catch (e) {
      if (e instanceof BrbError && e.code === "timeout") return;
      throw e;
    }
    const start = Date.now();
    try {
      await sleep(jobMs);
    } finally {
      permit.release();
    }
    jobs.push([start, Date.now()]);
  }
}

function rssBytes(): number {
  const m = /VmRSS:\s+(\d+)\s*kB/.exec(readFileSync("/proc/self/status", "utf8"));
  if (!m) throw new CommandError("VmRSS not found in /proc/self/status");
  return Number(m[1]) * 1024;
}

async function run(c: Json): Promise<Json> {
  switch (c.op) {
    case "start": {
      const name = str(c, "gate");
      if (gates.has(name)) throw new CommandError(`gate ${JSON.stringify(name)} exists already`);
      const o = options(c.config);
      const gate = new Gate(o);
      gates.set(name, { gate, maxConcurrency: o.maxConcurrency ?? 1, jobs: new Map() });
      return {};
    }
    case "state": {
      const g = held(c).gate;
      return {
        open: g.isOpen(),
        version: g.version,
        connected: g.connected,
        staleness_ms: g.staleness(),
        status: g.status(),
        in_flight: g.inFlight,
        processed: g.processed,
        admitted_fraction: g.admittedFraction(),
        connects: g.connects,
        connect_times: g.connectTimes,
      };
    }
    case "wait_open": {
      const g = held(c).gate;
      const t0 = performance.now();
      const opened = await g.waitOpen({ timeoutMs: c.timeout_ms === undefined ? undefined : nonNeg(c, "timeout_ms") });
      return { opened, waited_ms: Math.round(performance.now() - t0) };
    }
    case "work": {
      const h = held(c);
      const endAt = Date.now() + nonNeg(c, "for_ms");
      const jobMs = nonNeg(c, "job_ms", 0);
      const jobs: Array<[number, number]> = [];
      const loops = [];
      for (let i = 0; i < h.maxConcurrency; i++) loops.push(workLoop(h.gate, endAt, jobMs, jobs));
      await Promise.all(loops);
      jobs.sort((a, b) => a[0] - b[0]);
      return { jobs };
    }
    case "begin_job": {
      const h = held(c);
      const job = str(c, "job");
      if (h.jobs.has(job)) throw new CommandError(`job ${JSON.stringify(job)} is already held`);
      const p = h.gate.tryAcquire();
      if (p) h.jobs.set(job, p);
      return { admitted: p !== null };
    }
    case "end_job": {
      const h = held(c);
      const job = str(c, "job");
      const p = h.jobs.get(job);
      if (!p) throw new CommandError(`no job ${JSON.stringify(job)} held`);
      h.jobs.delete(job);
      p.release();
      return {};
    }
    case "stop": {
      const h = held(c);
      gates.delete(str(c, "gate"));
      await h.gate.close();
      return {};
    }
    case "fleet_start": {
      const count = nonNeg(c, "count");
      if (!Number.isInteger(count) || count < 1) throw new CommandError(`"count" must be a whole number >= 1`);
      const base = options(c.config);
      // A fleet is a benchmark: one info line per gate per change would measure stderr. Its
      // gates log problems only, unless BRB_LOG_LEVEL says otherwise.
      base.logLevel = process.env.BRB_LOG_LEVEL ? undefined : "warn";
      const prefix = base.workerId ?? "conf-fleet";
      const started: Gate[] = [];
      try {
        for (let n = 0; n < count; n++) started.push(new Gate({ ...base, workerId: `${prefix}-${n}` }));
      } catch (e) {
        await Promise.all(started.map((g) => g.close()));
        throw e;
      }
      fleet.push(...started);
      return {};
    }
    case "fleet_ready": {
      const timeoutMs = nonNeg(c, "timeout_ms", 30_000);
      const ok = await Promise.all(fleet.map((g) => g.ready({ timeoutMs })));
      return { ready: ok.filter(Boolean).length };
    }
    case "fleet_seen": {
      const version = nonNeg(c, "version");
      const deadline = performance.now() + nonNeg(c, "timeout_ms", 5000);
      // Only waiting is done here; each instant is the one the SDK recorded when it applied the
      // change (Gate.lastChange), not when this loop noticed it.
      while (fleet.some((g) => g.version < version) && performance.now() < deadline) await sleep(5);
      const seen_us: number[] = [];
      let missing = 0;
      for (const g of fleet) {
        const lc = g.lastChange;
        if (g.version >= version && lc) seen_us.push(lc.atUs);
        else missing++;
      }
      return { seen_us, missing };
    }
    case "fleet_stop": {
      const all = fleet;
      fleet = [];
      await Promise.all(all.map((g) => g.close()));
      return {};
    }
    case "rss":
      return { rss_bytes: rssBytes() };
    default:
      throw new CommandError(`unknown op ${JSON.stringify(c.op)}`);
  }
}

function answer(a: Json): void {
  process.stdout.write(JSON.stringify(a) + "\n");
}

async function main(): Promise<void> {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === "") continue;
    let c: Json;
    try {
      const v: unknown = JSON.parse(line);
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
      c = v as Json;
    } catch (e) {
      answer({ id: null, ok: false, error: `unreadable command: ${(e as Error).message}` });
      continue;
    }
    const id = typeof c.id === "number" ? c.id : null;
    try {
      answer({ id, ok: true, ...(await run(c)) });
    } catch (e) {
      answer({ id, ok: false, error: e instanceof Error ? e.message : String(e) });
    }
  }
  const all = [...gates.values()].map((h) => h.gate).concat(fleet);
  gates.clear();
  fleet = [];
  await Promise.all(all.map((g) => g.close()));
  // Closed gates keep nothing alive: the process ends by itself now. If it did not, that is an
  // SDK bug worth a loud line (this timer is unref'd, so it never holds the process either).
  setTimeout(() => {
    process.stderr.write("conformance driver: the process did not exit 5 s after every gate was closed\n");
    process.exit(1);
  }, 5000).unref();
}

main().catch((e: unknown) => {
  process.stderr.write(`conformance driver: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(2);
});
