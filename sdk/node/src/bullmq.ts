// The brake around a BullMQ `Worker`: `withBrake(worker)`.
//
// BullMQ's Worker fetches jobs by itself (a main loop that moves jobs to "active" and calls the
// processor), so the gate cannot sit in front of a `queue.take()` as in a hand-written loop.
// Three things are needed instead, all on the worker's public surface or its processor:
//
// 1. Stop fetching while paused: `worker.pause(true)` (doNotWaitActive). BullMQ's main loop then
//    issues no new fetch and lets the running jobs finish. Not `pause()` without the flag: it
//    waits for the main loop to end, which a resume arriving meanwhile keeps alive, and its tail
//    (reconnecting the blocking connection, stopping the stalled checker) would then run at an
//    arbitrary later time.
// 2. But `pause` alone does not stop every start. A fetch already in flight when the brake is
//    pulled (the blocking wait for a job marker, up to `drainDelay` seconds, or the fetch of the
//    next job folded into completing one) still moves a job to active after the flag is set,
//    and BullMQ runs it. So the processor is wrapped: a job starts only with a permit from the
//    gate. A job that arrives while the gate is closed is given back: `job.moveToWait(token)`
//    (BullMQ's own script, which puts it back at the head of the wait list and frees its lock)
//    and a `WaitingError`, which BullMQ takes as "moved back", not as a failure: no attempt is
//    counted, nothing is run, the job runs once after the release.
// 3. A release ramp limits starts: the permit comes from the gate's duty cycle (at fraction f
//    each slot rests after a job, so f of normal work starts), and the worker's concurrency is
//    lowered to ceil(f × concurrency) meanwhile, so that the worker does not hold (fetched, not
//    started) more jobs than it may run.

import { BrbError } from "./errors.js";
import { Gate, type GateChange, type Permit } from "./gate.js";
import type { GateOptions } from "./config.js";

/** The part of a BullMQ `Job` the brake uses. */
export interface BrakeJob {
  id?: string | undefined;
  moveToWait(token?: string): Promise<unknown>;
}

/**
 * The part of a BullMQ `Worker` the brake uses (structural, so that this module needs no
 * runtime import of bullmq). `processFn` is BullMQ's own field for the processor (a function, or
 * the sandbox's dispatcher when the processor is a file): wrapping it is what lets the brake
 * decide at the last moment whether a fetched job starts.
 */
export interface BrakeWorker {
  concurrency: number;
  pause(doNotWaitActive?: boolean): Promise<void>;
  resume(): Promise<void>;
  isPaused(): boolean;
  on(event: "closing" | "closed", listener: () => void): unknown;
  off(event: "closing" | "closed", listener: () => void): unknown;
  emit(event: "error", err: Error): boolean;
}

type ProcessFn = (job: BrakeJob, token?: string, signal?: AbortSignal) => Promise<unknown>;

export interface BrakeOptions extends GateOptions {
  /**
   * A gate of your own (then the other options are not used, and `close()` does not close it).
   * Give it `maxConcurrency` equal to the worker's concurrency.
   */
  gate?: Gate;
  /** How often the worker's concurrency follows a ramp, in ms (default 250). */
  rampTickMs?: number;
}

/** What `withBrake` returns. */
export interface Brake {
  readonly gate: Gate;
  /** Jobs fetched while the gate was closed and given back to the queue unstarted. */
  readonly givenBack: number;
  /** Jobs waiting now for a permit (fetched during a ramp, their slot resting). */
  readonly waiting: number;
  /**
   * Detaches from the worker (its processor and concurrency as they were; paused or not as it is
   * now) and closes the gate if `withBrake` made it. Done by itself when the worker closes.
   */
  close(): Promise<void>;
}

/** The name BullMQ's worker recognises (`err.name == 'WaitingError'`) as "moved back to wait". */
class WaitingError extends Error {
  constructor() {
    super("bullmq:movedToWait");
    this.name = "WaitingError";
  }
}

/**
 * Puts the worker under the brake: while the switch is paused it fetches nothing and starts
 * nothing (jobs already running finish), it reports draining → paused with its jobs in flight,
 * and on a gradual release it starts f of its normal work. One line after making the worker:
 *
 * ```ts
 * const worker = new Worker("emails", handle, { connection, concurrency: 8 });
 * withBrake(worker); // BRB_URL, BRB_TOKEN_FILE from the environment; switch "workers"
 * ```
 *
 * Makes a `Gate` (its options, `maxConcurrency` defaulting to the worker's concurrency) unless
 * `options.gate` is given, and closes it when the worker closes. The brake owns the worker's
 * `pause()`/`resume()` and, during a ramp, its `concurrency`: do not drive them yourself.
 */
export function withBrake(worker: BrakeWorker, options: BrakeOptions = {}): Brake {
  const raw = worker as unknown as { processFn?: ProcessFn };
  const inner = raw.processFn;
  if (typeof inner !== "function") {
    throw new BrbError("config", "withBrake needs a Worker made with a processor (a function or a file); a worker without one fetches nothing by itself");
  }
  const base = worker.concurrency;
  if (!Number.isInteger(base) || base < 1) throw new BrbError("config", `the worker's concurrency ${String(base)} is not a whole number ≥ 1`);
  const { gate: given, rampTickMs = 250, ...gateOptions } = options;
  if (!Number.isFinite(rampTickMs) || rampTickMs < 10) throw new BrbError("config", "rampTickMs must be a number of ms ≥ 10");
  const gate = given ?? new Gate({ maxConcurrency: base, ...gateOptions });
  const ownsGate = given === undefined;

  let givenBack = 0;
  let closing = false;
  let closed = false;
  /** Aborted when the gate closes or the worker closes: jobs waiting for a permit go back. */
  let stop = new AbortController();
  const waiters = new Set<AbortController>();
  let rampTimer: NodeJS.Timeout | null = null;

  const fail = (e: unknown): void => {
    worker.emit("error", e instanceof Error ? e : new Error(String(e)));
  };

  /** The concurrency the worker may have now: ceil(f × base) while ramping, else base. */
  const followRamp = (): void => {
    if (closed) return;
    const f = gate.admittedFraction();
    const want = f > 0 && f < 1 ? Math.min(base, Math.max(1, Math.ceil(f * base))) : base;
    if (worker.concurrency !== want) worker.concurrency = want;
    const ramping = gate.isOpen() && f < 1;
    if (ramping && !rampTimer) {
      rampTimer = setInterval(followRamp, rampTickMs);
      rampTimer.unref();
    } else if (!ramping && rampTimer) {
      clearInterval(rampTimer);
      rampTimer = null;
    }
  };

  const onChange = (c: GateChange): void => {
    if (closed) return;
    if (c.open) {
      followRamp();
      if (worker.isPaused()) worker.resume().catch(fail);
    } else {
      // Synchronously: BullMQ sets its flag before pause() first awaits, so from here on the
      // main loop asks for no job (and completing a job fetches no next one).
      worker.pause(true).catch(fail);
      stop.abort(new BrbError("closed", "the switch is paused"));
      stop = new AbortController();
      followRamp();
    }
  };

  /**
   * Gives a job that may not start back to the queue: BullMQ's `job.moveToWait` (the job goes
   * back to the head of the wait list, its lock freed) and a WaitingError, which BullMQ takes as
   * "moved back", not as a failure: no attempt counted, nothing run. When that fails (Redis
   * unreachable), the job stays ours, active with its lock renewed by BullMQ: rather than fail
   * it because of the pause, it waits for a permit and runs after the release.
   */
  const giveBack = async (job: BrakeJob, token: string | undefined, signal: AbortSignal | undefined): Promise<unknown> => {
    try {
      await job.moveToWait(token);
    } catch (e) {
      fail(new Error(`could not give job ${job.id ?? "?"} back to the queue while paused (${e instanceof Error ? e.message : String(e)}); it runs after the release`));
      return run(await gate.acquire(signal ? { signal } : {}), job, token, signal);
    }
    givenBack++;
    throw new WaitingError();
  };

  const run = async (p: Permit, job: BrakeJob, token: string | undefined, signal: AbortSignal | undefined): Promise<unknown> => {
    try {
      return await inner.call(worker, job, token, signal);
    } finally {
      p.release();
    }
  };

  /**
   * Open but no permit: a ramp's slot is resting, or every slot is busy. Waits for one; null when
   * the switch is paused or the worker closes meanwhile. Rejects when BullMQ cancels the job.
   */
  const waitPermit = async (signal: AbortSignal | undefined): Promise<Permit | null> => {
    const mine = new AbortController();
    waiters.add(mine);
    const cur = stop.signal;
    const onStop = () => mine.abort();
    cur.addEventListener("abort", onStop, { once: true });
    try {
      return await gate.acquire({ signal: signal ? AbortSignal.any([mine.signal, signal]) : mine.signal });
    } catch (e) {
      if (signal?.aborted) throw e;
      return null;
    } finally {
      cur.removeEventListener("abort", onStop);
      waiters.delete(mine);
    }
  };

  const wrapped: ProcessFn = async (job, token, signal) => {
    let p = gate.tryAcquire();
    if (!p && gate.isOpen() && !closing) p = await waitPermit(signal);
    if (p) return run(p, job, token, signal);
    return giveBack(job, token, signal);
  };

  const onClosing = (): void => {
    closing = true;
    if (rampTimer) clearInterval(rampTimer);
    rampTimer = null;
    for (const w of waiters) w.abort();
  };

  const detach = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    onClosing();
    gate.off("change", onChange);
    worker.off("closing", onClosing);
    worker.off("closed", onClosed);
    if (raw.processFn === wrapped) raw.processFn = inner;
    if (worker.concurrency !== base) worker.concurrency = base;
    if (ownsGate) await gate.close();
  };
  const onClosed = (): void => {
    detach().catch(fail);
  };

  raw.processFn = wrapped;
  gate.on("change", onChange);
  worker.on("closing", onClosing);
  worker.on("closed", onClosed);
  // Until the control plane is heard the gate is closed: the worker must not fetch meanwhile.
  if (!gate.isOpen()) worker.pause(true).catch(fail);
  followRamp();

  return {
    gate,
    get givenBack() {
      return givenBack;
    },
    get waiting() {
      return waiters.size;
    },
    close: detach,
  };
}
