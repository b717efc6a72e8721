// withBrake around real BullMQ workers: a real redis-server on a loopback port of its own, the
// real `brb server`, two worker processes (fixtures/bullmq-worker.ts), a producer enqueuing all
// along, and the brake pulled and released with the real `brb` CLI.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Queue, Worker, type Job } from "bullmq";
import { Redis } from "ioredis";
import { withBrake } from "../src/bullmq.js";
import { BrbError } from "../src/index.js";
import { brb, perSecond, Producer, WorkerProc, type Start } from "./bullmq-harness.js";
import { BrbServer, Logs, RedisServer, until } from "./support.js";

const CONCURRENCY = 5;
const JOB_MS = 100;
const PRODUCE_PER_SEC = 40;
/** The ramp: steps:12s is 10% for 4 s, 25% for 4 s, 50% for 4 s, then 100%. */
const RAMP = "steps:12s";
const STEPS = [0.1, 0.25, 0.5];
const STEP_S = 4;

let redis: RedisServer;
let srv: BrbServer;
const workers: WorkerProc[] = [];
let producer: Producer | null = null;

before(async () => {
  [redis, srv] = await Promise.all([RedisServer.start(), BrbServer.start()]);
});
after(async () => {
  for (const w of workers) w.kill();
  await producer?.close();
  await Promise.all([redis?.stop(), srv?.stop()]);
});

const dump = (): string =>
  workers.map((w) => `worker ${w.n}: ${w.starts.length} starts, gates ${JSON.stringify(w.gates)}\nstderr: ${w.err.slice(-2000)}`).join("\n");

test("BullMQ under the brake: no start once paused, every job once, `brb pause` counts both workers, the release follows the ramp", async () => {
  await srv.setState("running");
  const queue = `e2e-${process.pid}`;
  const env = {
    REDIS_PORT: String(redis.port),
    QUEUE: queue,
    CONCURRENCY: String(CONCURRENCY),
    JOB_MS: String(JOB_MS),
    BRB_URL: srv.url,
    BRB_TOKEN: srv.token,
    BRB_TOKEN_FILE: "",
    BRB_LOG_LEVEL: "warn",
  };
  workers.push(new WorkerProc(1, env), new WorkerProc(2, env));
  producer = new Producer(queue, redis.port);
  producer.start(PRODUCE_PER_SEC);

  // Running: both workers take jobs and report to the control plane.
  await until("both workers running jobs", () => workers.every((w) => w.starts.length >= 5), 30_000).catch((e) => {
    throw new Error(`${(e as Error).message}\n${dump()}`);
  });
  await until("both workers reporting running", async () => {
    const c = await srv.workers();
    return c.workers.length === 2 && c.workers.every((w: { status: string }) => w.status === "running");
  });

  // The press, with the real CLI: it waits for the acknowledgements.
  const pause = await brb(srv, ["pause", "--reason", "bullmq e2e", "--wait", "20"]);
  assert.equal(pause.code, 0, pause.stderr);
  assert.match(pause.stdout, /paused · 2\/2 workers acknowledged in \d+ ms/, pause.stdout + pause.stderr);
  const paused = (await srv.api("GET", "/api/v1/switches/workers")) as { version: number };
  await until("both workers drained and reporting paused", async () => {
    const c = await srv.workers();
    return c.workers.every((w: { status: string; in_flight: number; observed_version: number }) => w.status === "paused" && w.in_flight === 0 && w.observed_version === paused.version);
  });
  // The producer goes on while paused: a backlog builds up (and nothing starts, checked below).
  await until("a backlog while paused", async () => (await producer!.queue.getWaitingCount()) >= 120, 30_000);

  // The release, gradual.
  const resume = await brb(srv, ["resume", "--reason", "bullmq e2e", "--ramp", RAMP, "--wait", "20"]);
  assert.equal(resume.code, 0, resume.stderr);
  assert.match(resume.stdout, /running · 2\/2 workers acknowledged/, resume.stdout + resume.stderr);
  const released = (await srv.api("GET", "/api/v1/switches/workers")) as { version: number; ramp: { started_at: string } };
  const rampUs = Date.parse(released.ramp.started_at) * 1000;
  const rampEndUs = rampUs + STEPS.length * STEP_S * 1e6;
  // Two seconds at 100% after the ramp, while the backlog lasts, are the reference rate.
  const all = (): Start[] => workers.flatMap((w) => w.starts);
  await until("two seconds of starts after the ramp", () => all().some((s) => s.us >= rampEndUs + 2e6), 60_000);
  await producer.stop();
  assert.equal(producer.error, null);
  const enqueued = producer.ids.length;
  await until(
    "every enqueued job completed",
    async () => (await producer!.queue.getJobCounts("completed")).completed === enqueued,
    60_000,
  );
  const counts = await producer.queue.getJobCounts("completed", "failed", "active", "waiting", "delayed", "prioritized");
  assert.deepEqual(counts, { completed: enqueued, failed: 0, active: 0, waiting: 0, delayed: 0, prioritized: 0 });
  const stops = await Promise.all(workers.map((w) => w.stop()));
  assert.deepEqual(stops, [0, 0], dump());

  // 1. No job started in a worker between its gate applying the pause (which is before it
  // acknowledged it) and applying the release.
  for (const w of workers) {
    const closedAt = w.appliedAt(paused.version);
    const openedAt = w.appliedAt(released.version);
    assert.ok(closedAt && openedAt && closedAt < openedAt, `worker ${w.n} applied both changes: ${dump()}`);
    const during = w.starts.filter((s) => s.us > closedAt && s.us < openedAt);
    assert.deepEqual(during, [], `worker ${w.n} started jobs while paused`);
    // And it stopped fetching: only what BullMQ had in flight at the press came and went back
    // (a fetch of the next job with each of its jobs running, and one blocking fetch).
    assert.ok(w.givenBack <= CONCURRENCY + 1, `worker ${w.n} gave back ${w.givenBack} jobs: it kept fetching while paused`);
  }

  // 2. Every enqueued job ran exactly once.
  const runs = new Map<string, number>();
  for (const s of all()) runs.set(s.job, (runs.get(s.job) ?? 0) + 1);
  const twice = [...runs].filter(([, n]) => n > 1);
  assert.deepEqual(twice, [], "jobs run more than once");
  const missing = producer.ids.filter((id) => !runs.has(id));
  assert.deepEqual(missing, [], "enqueued jobs never run");
  assert.equal(runs.size, enqueued);

  // 3. The release follows the ramp. Reference: the rate in the two seconds after it (100%).
  // Each step is measured without its first second: a slot that rested at the step before
  // (up to a job's time × (1 − f)/f: 0.9 s at 10%) still rests into the next one.
  const full = perSecond(all(), rampEndUs, 2).reduce((a, b) => a + b, 0) / 2;
  const rates = STEPS.map((_, i) => perSecond(all(), rampUs + (i * STEP_S + 1) * 1e6, STEP_S - 1).reduce((a, b) => a + b, 0) / (STEP_S - 1));
  const ratios = rates.map((r) => r / full);
  const curve = `per second from the release: ${JSON.stringify(perSecond(all(), rampUs, STEPS.length * STEP_S + 2))}; steps ${JSON.stringify(rates)} /s vs ${full} /s at 100% → ${ratios.map((r) => r.toFixed(2)).join(", ")} (want ${STEPS.join(", ")})`;
  process.stdout.write(`# ${curve}; given back while paused: ${workers.map((w) => w.givenBack).join(" + ")}\n`);
  // The nominal full rate is 2 workers × 5 slots / 100 ms = 100 /s; BullMQ's own round trips per
  // job lower it a little, and the machine's load more: at least half of it must be reached for
  // the comparison to mean anything.
  assert.ok(full >= 50, `full rate ${full} /s: ${curve}`);
  // Within ±35% of each step's fraction: the duty cycle rests each slot by the job's measured
  // time, without BullMQ's round trips between jobs (which make the ramp's rate a little lower),
  // and a step's three seconds hold 3 × f × 100 jobs, counted whole (±1 job is ±3% at 50%, ±10%
  // at 10%). A ramp not applied gives 1.0 for every step; concurrency alone (1 of 5 slots at
  // 10%) gives 0.2.
  for (const [i, f] of STEPS.entries()) {
    assert.ok(ratios[i]! > f * 0.65 && ratios[i]! < f * 1.35, `step ${i} (${f}): ${curve}`);
  }
});

test("a job BullMQ fetches after the pause (its blocking fetch was in flight) is given back unstarted, the worker reports draining then paused, and the job runs once after the release", async () => {
  await srv.setState("running");
  const name = `race-${process.pid}`;
  const connection = { host: "127.0.0.1", port: redis.port, maxRetriesPerRequest: null };
  const queue = new Queue(name, { connection });
  const admin = new Redis({ host: "127.0.0.1", port: redis.port });
  const started: string[] = [];
  let finishLong: (() => void) | null = null;
  // drainDelay 10 s: once the queue is empty, the worker blocks up to 10 s waiting for a job.
  const worker = new Worker(
    name,
    async (job: Job) => {
      started.push(job.id!);
      if (job.name === "long") await new Promise<void>((r) => (finishLong = r));
    },
    { connection, concurrency: 2, drainDelay: 10 },
  );
  const errors: Error[] = [];
  worker.on("error", (e) => errors.push(e));
  const logs = new Logs();
  const brake = withBrake(worker, { urls: srv.url, token: srv.token, reportIntervalMs: 60_000, logger: logs });
  const blocked = async () => ((await admin.client("LIST")) as string).split("\n").some((l) => l.includes("cmd=bzpopmin"));
  try {
    // A long job in flight, and the worker blocked waiting for the next.
    await queue.add("long", {}, { jobId: "long" });
    await until("the long job started", () => started.includes("long"));
    await until("the worker blocked in its fetch", blocked);

    const v = (await srv.setState("paused", { reason: "race" })).version;
    await until("the gate closed and the worker paused", () => !brake.gate.isOpen() && worker.isPaused());
    await until("the worker reporting draining with its job in flight", async () => {
      const w = (await srv.workers()).workers[0];
      return w?.status === "draining" && w.in_flight === 1 && w.observed_version === v;
    });
    // BullMQ's pause(true) does not interrupt the blocking fetch: the job added now is fetched.
    assert.ok(await blocked(), "the fetch is still in flight");
    await queue.add("short", {}, { jobId: "late" });
    await until("the late job given back (or started)", () => brake.givenBack === 1 || started.includes("late"));
    assert.deepEqual(started, ["long"], "the late job must not start while paused");
    assert.equal(await queue.getJobState("late"), "waiting");

    finishLong!();
    await until("the worker reporting paused, nothing in flight", async () => {
      const w = (await srv.workers()).workers[0];
      return w?.status === "paused" && w.in_flight === 0;
    });
    assert.deepEqual(started, ["long"]);

    await srv.setState("running");
    await until("the late job completed", async () => (await queue.getJobState("late")) === "completed");
    assert.deepEqual(started, ["long", "late"]);
    const late = await queue.getJob("late");
    // One attempt, the run: being given back counted none (BullMQ counts it as a second fetch
    // in `attemptsStarted`, which only its `maxStartedAttempts` option, unset here, looks at).
    assert.equal(late?.attemptsMade, 1, "given back is not an attempt");
    assert.equal(late?.attemptsStarted, 2);
    assert.deepEqual(errors, []);
  } finally {
    // A failed check must not leave close() waiting for the long job.
    (finishLong as (() => void) | null)?.();
    await worker.close();
    await queue.close();
    admin.disconnect();
  }
  assert.ok(brake.gate.closed, "the brake closes the gate it made when the worker closes");
});

test("withBrake refuses what it cannot brake: a worker without a processor, a bad rampTickMs (a clear error, the worker untouched)", async () => {
  const connection = { host: "127.0.0.1", port: redis.port, maxRetriesPerRequest: null };
  const manual = new Worker(`manual-${process.pid}`, null, { connection });
  const auto = new Worker(`auto-${process.pid}`, async () => {}, { connection, autorun: false, concurrency: 3 });
  try {
    assert.throws(() => withBrake(manual, { urls: srv.url, token: srv.token }), (e: unknown) => e instanceof BrbError && e.code === "config" && /processor/.test(e.message));
    assert.throws(() => withBrake(auto, { urls: srv.url, token: srv.token, rampTickMs: 0 }), (e: unknown) => e instanceof BrbError && e.code === "config" && /rampTickMs/.test(e.message));
    assert.equal(auto.isPaused(), false);
    assert.equal(auto.concurrency, 3);
  } finally {
    await Promise.all([manual.close(), auto.close()]);
  }
});
