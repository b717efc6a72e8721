// The parts of a BullMQ run shared by the end-to-end test and the benchmark (bench/bullmq.mjs):
// worker processes (fixtures/bullmq-worker.ts) whose event lines are parsed as they come, a
// producer that enqueues at a steady rate, and the real `brb` CLI.

import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { Queue } from "bullmq";
import { brbBin, sdkDir, type BrbServer } from "./support.js";

export interface Start {
  job: string;
  us: number;
  worker: number;
}

export interface GateLine {
  open: boolean;
  version: number;
  us: number;
}

/** One worker process and what it printed so far. */
export class WorkerProc {
  readonly n: number;
  readonly starts: Start[] = [];
  readonly gates: GateLine[] = [];
  givenBack = 0;
  stopped = false;
  out = "";
  err = "";
  readonly #child: ChildProcess;
  readonly #exited: Promise<number | null>;

  constructor(n: number, env: Record<string, string>) {
    this.n = n;
    const script = join(sdkDir, "build", "fixtures", "bullmq-worker.js");
    this.#child = spawn(process.execPath, [script], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    this.#exited = new Promise((r) => this.#child.once("exit", (c) => r(c)));
    let partial = "";
    this.#child.stdout!.setEncoding("utf8").on("data", (s: string) => {
      this.out += s;
      if (this.out.length > 200_000) this.out = this.out.slice(-100_000);
      partial += s;
      const lines = partial.split("\n");
      partial = lines.pop()!;
      for (const l of lines) this.#line(l);
    });
    this.#child.stderr!.setEncoding("utf8").on("data", (s: string) => {
      this.err += s;
      if (this.err.length > 100_000) this.err = this.err.slice(-50_000);
    });
  }

  #line(l: string): void {
    const f = l.split(" ");
    if (f[0] === "start") this.starts.push({ job: f[1]!, us: Number(f[2]), worker: this.n });
    else if (f[0] === "gate") this.gates.push({ open: f[1] === "open", version: Number(f[2]), us: Number(f[3]) });
    else if (f[0] === "given-back") this.givenBack = Number(f[1]);
    else if (f[0] === "stopped") this.stopped = true;
  }

  /** When this worker's gate applied `version` (Unix µs), if it has. */
  appliedAt(version: number): number | undefined {
    return this.gates.find((g) => g.version === version)?.us;
  }

  /** SIGTERM, then the exit code (the worker closes: jobs in flight finish). */
  async stop(): Promise<number | null> {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGTERM");
    return this.#exited;
  }

  kill(): void {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGKILL");
  }
}

/** Enqueues jobs j1, j2, ... at `perSec` on average, from a timer (it catches up if late). */
export class Producer {
  readonly queue: Queue;
  readonly ids: string[] = [];
  #timer: NodeJS.Timeout | null = null;
  #t0 = 0;
  #adding: Promise<unknown> = Promise.resolve();
  #n = 0;
  error: unknown = null;

  constructor(queueName: string, redisPort: number) {
    this.queue = new Queue(queueName, { connection: { host: "127.0.0.1", port: redisPort, maxRetriesPerRequest: null } });
  }

  start(perSec: number): void {
    this.#t0 = performance.now();
    const base = this.#n;
    this.#timer = setInterval(() => {
      const due = base + Math.floor(((performance.now() - this.#t0) / 1000) * perSec) - this.#n;
      if (due <= 0) return;
      const batch: Array<{ name: string; data: object; opts: { jobId: string } }> = [];
      for (let i = 0; i < due; i++) {
        const id = `j${++this.#n}`;
        batch.push({ name: "job", data: {}, opts: { jobId: id } });
      }
      this.#adding = this.#adding
        .then(() => this.queue.addBulk(batch))
        .then(() => this.ids.push(...batch.map((b) => b.opts.jobId)))
        .catch((e: unknown) => (this.error = e));
    }, 20);
  }

  /** Stops enqueuing; resolves once every job it made is in Redis. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await this.#adding;
  }

  async close(): Promise<void> {
    await this.stop();
    await this.queue.close();
  }
}

/** Runs the real `brb` CLI against `srv` and returns what it printed. */
export function brb(srv: BrbServer, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(brbBin(), args, {
      env: { ...process.env, BRB_URL: srv.url, BRB_TOKEN_FILE: join(srv.dataDir, "admin-token"), BRB_TOKEN: "" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    p.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    p.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    p.once("error", reject);
    p.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Starts per whole second from `fromUs`, for `seconds` seconds. */
export function perSecond(starts: Start[], fromUs: number, seconds: number): number[] {
  const out = new Array<number>(seconds).fill(0);
  for (const s of starts) {
    const i = Math.floor((s.us - fromUs) / 1e6);
    if (i >= 0 && i < seconds) out[i]!++;
  }
  return out;
}
