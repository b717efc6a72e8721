// The worker gate: what a background worker checks before taking a job.
//
// A Gate follows one switch. It holds an event stream open (SSE, or long-poll when SSE cannot be
// held) and keeps what it learns in plain fields, so `isOpen()` is a field read with no I/O and
// can be called before every job. `acquire()` / `job()` are the fuller form: they wait until the
// switch lets work through, count the job as in flight until it ends (so the gate reports
// `draining` while jobs started before a pause finish), and apply a release ramp by duty cycle:
// at an admitted fraction f each job slot rests `duration × (1 − f) / f` after a job, so the
// worker does f of its normal work whatever its job length, with no coordination beyond the
// switch state every gate already has.
//
// When the control plane cannot be reached the gate keeps the last known state
// (`keep_last_known`, the default: a pause is never silently undone by a network problem), or
// fails open or closed after a grace period. Reconnects use exponential backoff with full
// jitter, the first few within one base period, so a fleet is back about a second after a
// control-plane restart without all reconnecting in the same millisecond.
//
// Per-gate cost is kept small because a process may hold a thousand gates: one socket for the
// stream, no timer of its own at rest (one sweeper for every gate of the process checks
// deadlines, heartbeats and grace periods), no pending promise or async frame of its own while
// the stream is open (the watch loop runs as callbacks; a call that waits makes one waiter),
// and request pools shared between gates.

import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import { ApiError, BrbError, duration } from "./errors.js";
import { acquirePools, decodeJson, enc, EventStream, releasePools, request, type Pending, type Pools, type StreamHandler } from "./client.js";
import { NOOP_LOG, readTokenFile, resolveConfig, type GateOptions, type ResolvedConfig, type Target } from "./config.js";
import { backoffMs, parseRamp, rampFraction, type ParsedRamp } from "./ramp.js";
import type { SseEvent } from "./sse.js";

export type SwitchState = "running" | "paused";
export type WorkerStatus = "running" | "draining" | "paused";

/** What a `change` event carries. */
export interface GateChange {
  /** What `isOpen()` answers from now on. */
  open: boolean;
  /** The state the control plane last confirmed (null before first contact). */
  state: SwitchState | null;
  version: number;
  admittedFraction: number;
  changedBy: string | null;
  source: string | null;
  /** Why `open` is what it is: the switch, or the fail policy while the control plane is unreachable. */
  cause: "switch" | "policy";
}

export interface WaitOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

const KNOWN_NONE = 0;
const KNOWN_RUNNING = 1;
const KNOWN_PAUSED = 2;

/** Failed reconnects retried within `backoffBaseMs` before the bound starts doubling. */
const FLAT_ATTEMPTS = 2;
/** Consecutive SSE failures before `auto` falls back to long-poll. */
const SSE_FAILURES_BEFORE_FALLBACK = 3;
/** The long-poll's `wait` (the server caps it at `max_long_poll_secs`, 60 by default). */
const LONG_POLL_WAIT_S = 25;
/** After a refused token or a missing switch, the retry interval's bound is at least this. */
const REFUSED_RETRY_MIN_MS = 5000;
/** The same problem is logged at its level once per this period, at debug level in between. */
const RELOG_MS = 60_000;
const SWEEP_MS = 250;
const SAMPLE_TICKS = 4; // a second

/** The longest delay node:timers takes as it is. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const isKnown = (g: Gate): boolean => g.state !== null;
const isOpen = (g: Gate): boolean => g.isOpen();

/** Milliseconds as whole sweeper ticks (at least one). */
const ticks = (ms: number): number => Math.max(1, Math.ceil(ms / SWEEP_MS));

/** Every gate of the process that is not closed, ticked by one sweeper. */
const live = new Set<Gate>();
let sweeper: NodeJS.Timeout | null = null;
// Deadlines at rest are counted in sweeps, not Unix ms: a small integer is stored and compared
// without allocating, where a Date.now() value is a heap number (a thousand gates ticking four
// times a second would otherwise make garbage while nothing happens).
let tickNo = 0;
let tickGate: (g: Gate, now: number) => void;
let releasePermit: (g: Gate, slot: number, started: number, abandoned: boolean) => void;
let streamOpen: (g: Gate) => void;
let streamBytes: (g: Gate) => void;
let streamEvent: (g: Gate, ev: SseEvent) => void;
let streamEnd: (g: Gate, err: BrbError | null) => void;
let addWaiter: (g: Gate, w: Waiter) => void;
let dropWaiter: (g: Gate, w: Waiter) => void;
let waiterTimer: (w: Waiter) => void;

function sweep(): void {
  tickNo++;
  for (const g of live) tickGate(g, tickNo);
}

// Streams being opened at once in this process, at most: a thousand gates started together
// otherwise hold a thousand half-open connections' objects (sockets, connect and write requests,
// pending promises) at the same time, all of which survive V8's young-generation collections
// of the burst and grow the young generation for good (measured: BENCHMARKS.md, "SDK
// fan-out"). Past the bound a stream waits its turn; a turn ends when the stream is answered
// or ended, or one sweep after it started (a control plane that accepts and never answers
// must not hold the others back for the answer timeout).
const MAX_OPENING = 32;
let opening = 0;
const openQueue: Gate[] = [];
let startStream: (g: Gate) => void;

function admitOpening(): void {
  while (opening < MAX_OPENING && openQueue.length > 0) {
    opening++;
    startStream(openQueue.shift()!);
  }
}

/** Forwards one stream's callbacks to its gate (the gate's own methods stay private). */
class Handler implements StreamHandler {
  readonly #gate: Gate;
  constructor(gate: Gate) {
    this.#gate = gate;
  }
  onStreamOpen(): void {
    streamOpen(this.#gate);
  }
  onStreamBytes(): void {
    streamBytes(this.#gate);
  }
  onStreamEvent(ev: SseEvent): void {
    streamEvent(this.#gate, ev);
  }
  onStreamEnd(err: BrbError | null): void {
    streamEnd(this.#gate, err);
  }
}

/**
 * A call waiting on a gate (`ready`, `waitOpen`, `acquire`): woken by the gate's #notify (a
 * change, a release, close), by its deadline, or by its signal. An object per waiting call and no
 * closure of its own (its timer gets it as the argument, its signal as a listener object): a
 * thousand gates awaited together (a fleet's `ready()`) hold a promise and one of these each,
 * not two async frames, their promises and four closures.
 */
class Waiter {
  readonly #gate: Gate;
  /** What it waits for; null: the next wake-up (acquire's loop checks for itself). */
  readonly #cond: ((g: Gate) => boolean) | null;
  /** performance.now() ms; Infinity: none. */
  readonly #deadline: number;
  readonly #signal: AbortSignal | undefined;
  readonly #resolve: (v: boolean) => void;
  readonly #reject: (e: unknown) => void;
  #timer: NodeJS.Timeout | null = null;
  #settled = false;

  private constructor(
    gate: Gate,
    cond: ((g: Gate) => boolean) | null,
    deadline: number,
    signal: AbortSignal | undefined,
    resolve: (v: boolean) => void,
    reject: (e: unknown) => void,
  ) {
    this.#gate = gate;
    this.#cond = cond;
    this.#deadline = deadline;
    this.#signal = signal;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  static start(gate: Gate, cond: ((g: Gate) => boolean) | null, deadline: number, signal: AbortSignal | undefined): Promise<boolean> {
    let w!: Waiter;
    const p = new Promise<boolean>((resolve, reject) => {
      w = new Waiter(gate, cond, deadline, signal, resolve, reject);
    });
    signal?.addEventListener("abort", w, { once: true });
    w.#arm();
    addWaiter(gate, w);
    return p;
  }

  /** The gate changed (its list of waiters is emptied first): done, or wait on. */
  wake(): void {
    if (this.#settled) return;
    const cond = this.#cond;
    if (cond === null || cond(this.#gate)) this.#done(true);
    else if (this.#gate.closed) this.#fail(new BrbError("closed", "the gate is closed"));
    else if (performance.now() >= this.#deadline) this.#done(false);
    else addWaiter(this.#gate, this);
  }

  /** The signal aborted. */
  handleEvent(): void {
    this.#fail(this.#signal!.reason);
  }

  #arm(): void {
    if (!Number.isFinite(this.#deadline)) return;
    // node:timers fire at once past 2^31 − 1 ms: a longer wait takes several turns. Whole ms:
    // timers of one duration share one list in node:timers (waiters started together, one list).
    const ms = Math.min(MAX_TIMER_MS, Math.max(0, Math.ceil(this.#deadline - performance.now())));
    this.#timer = setTimeout(waiterTimer, ms, this);
  }

  static {
    waiterTimer = (w) => {
      w.#timer = null;
      if (w.#settled) return;
      const cond = w.#cond;
      if (cond !== null && cond(w.#gate)) w.#done(true);
      else if (cond === null || performance.now() >= w.#deadline) w.#done(cond === null);
      else w.#arm();
    };
  }

  #done(ok: boolean): void {
    if (this.#end()) this.#resolve(ok);
  }

  #fail(err: unknown): void {
    if (this.#end()) this.#reject(err);
  }

  /** Stops waiting; false when it had already. */
  #end(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#signal?.removeEventListener("abort", this);
    dropWaiter(this.#gate, this);
    return true;
  }
}

/** How one connection attempt ended. */
interface Outcome {
  /** The control plane was heard on it (so the next reconnect starts quick). */
  heard: boolean;
  kind: "ok" | "unreachable" | "refused" | "auth" | "not_found" | "rate_limited" | "closed";
  retryAfterMs?: number | null;
  error?: BrbError | null;
}

const nowUs = (): number => Math.round((performance.timeOrigin + performance.now()) * 1000);

/** A job in flight. `release()` ends it; `abandon()` gives the slot back without counting a job. */
export class Permit {
  readonly #gate: Gate;
  readonly #slot: number;
  readonly #started: number;
  #done = false;

  /** @internal */
  constructor(gate: Gate, slot: number, started: number) {
    this.#gate = gate;
    this.#slot = slot;
    this.#started = started;
  }

  /** The job is done: counted, reported, and the slot rests as the ramp says. Idempotent. */
  release(): void {
    if (this.#done) return;
    this.#done = true;
    releasePermit(this.#gate, this.#slot, this.#started, false);
  }

  /** The worker found nothing to do: the slot is free at once and no job is counted. Idempotent. */
  abandon(): void {
    if (this.#done) return;
    this.#done = true;
    releasePermit(this.#gate, this.#slot, this.#started, true);
  }
}

/** The events a Gate emits, with their arguments. */
export interface GateEvents {
  change: [GateChange];
  connected: [];
  disconnected: [BrbError | null];
}

// Typed listeners for the gate's own events (declaration merging with the class below).
export interface Gate {
  on<K extends keyof GateEvents>(event: K, listener: (...args: GateEvents[K]) => void): this;
  once<K extends keyof GateEvents>(event: K, listener: (...args: GateEvents[K]) => void): this;
  off<K extends keyof GateEvents>(event: K, listener: (...args: GateEvents[K]) => void): this;
}

/**
 * A gate on one switch. Events: `change` (GateChange: the decision, the version or the ramp
 * changed), `connected`, `disconnected` (BrbError | null). `close()` ends everything it started.
 */
export class Gate extends EventEmitter {
  readonly #cfg: ResolvedConfig;
  #token: string | null;
  readonly #pools: Pools;
  #urlIndex: number;

  #open = false;
  #known = KNOWN_NONE;
  #version = 0;
  #ramp: ParsedRamp | null = null;
  #changedBy: string | null = null;
  #source: string | null = null;
  #connected = false;
  #lastContactMs = 0;
  #lostAtMs = 0;
  /** After a `resync` event the next state is current, even if older than ours (a restored server). */
  #trustNext = false;

  #inFlight = 0;
  #processed = 0;
  /** When each job slot is free again (performance.now ms; Infinity while a job holds it). */
  readonly #slots: number[];
  #waiters: Waiter[] | null = null;

  #connects = 0;
  #connectTimes: number[] = [];
  #lastChangeUs = 0;

  #closed = false;
  #stream: EventStream | null = null;
  /** The base URL of the current stream, for messages. */
  #streamBase = "";
  #streamHeard = false;
  /** An SSE attempt's stream is opening or open: its end decides what comes next (#streamEnded). */
  #streamPending = false;
  /** How many URLs the current SSE attempt has tried (from #urlIndex on). */
  #sseTried = 0;
  /** The URL of a stream waiting for its turn to open (see MAX_OPENING). */
  #toOpen: Target | null = null;
  /** Whether this gate's stream holds one of the process's opening turns, and since which sweep. */
  #turn = false;
  #turnTick = 0;
  #unknownLogged = false;
  /** The sweep by which the stream must have answered (0: none). */
  #deadlineTick = 0;
  /** The sweep during which the stream last sent bytes. */
  #lastByteTick = 0;
  #poll: Pending | null = null;
  /** The backoff between two attempts (set only while the watch loop sleeps). */
  #sleepTimer: NodeJS.Timeout | null = null;
  // The watch loop's state. The loop runs as callbacks (a stream's end, the backoff's timer, a
  // long-poll spell's answer), so a gate holds no async frame or pending promise for it while
  // its stream is open (~1 KiB per gate: BENCHMARKS.md, "Node memory per watcher").
  #attempt = 0;
  #sseFailures = 0;
  #longPollUntil = 0;
  /** The current attempt is a spell of long-poll. */
  #polling = false;
  /** The loop has ended (closed, or failed); close() waits for it. */
  #stopped = false;
  #stoppedWait: Promise<void> | null = null;
  #onStopped: (() => void) | null = null;

  #report: Pending | null = null;
  #reportDirty = false;
  #nextReportTick = 0;
  #holdReportsUntilTick = 0;
  #sample: Pending | null = null;
  #sampledProcessed = 0;
  #nextSampleTick = 0;

  #lastError: BrbError | null = null;
  #lastLogged = "";
  #lastLoggedAt = 0;

  static {
    tickGate = (g, now) => g.#tick(now);
    releasePermit = (g, slot, started, abandoned) => g.#release(slot, started, abandoned);
    streamOpen = (g) => g.#onStreamOpen();
    streamBytes = (g) => {
      if (g.#lastByteTick !== tickNo) {
        // Once per sweep at most: the clock is read (and a number allocated) only then.
        g.#lastByteTick = tickNo;
        g.#lastContactMs = Date.now();
      }
      if (!g.#streamHeard) {
        g.#streamHeard = true;
        g.#lastContactMs = Date.now();
        g.#setConnected(true);
      }
    };
    streamEvent = (g, ev) => g.#onEvent(ev);
    streamEnd = (g, err) => g.#onStreamEnd(err);
    startStream = (g) => g.#openStream();
    addWaiter = (g, w) => {
      // A literal holds exactly its elements; `push` onto [] reserves room for 17.
      if (g.#waiters) g.#waiters.push(w);
      else g.#waiters = [w];
    };
    dropWaiter = (g, w) => {
      const l = g.#waiters;
      const i = l ? l.indexOf(w) : -1;
      if (i >= 0) l!.splice(i, 1);
    };
  }

  /** Starts following the switch at once. Throws BrbError `config` for a setting it refuses. */
  constructor(options: GateOptions = {}) {
    super();
    this.#cfg = resolveConfig(options);
    this.#token = this.#cfg.token;
    // A plain array: smaller than a typed array (and its buffer) for the usual one or few slots.
    this.#slots = new Array<number>(this.#cfg.maxConcurrency).fill(0);
    this.#urlIndex = Math.floor(Math.random() * this.#cfg.targets.length);
    this.#pools = acquirePools(this.#cfg.tls);
    this.#nextReportTick = tickNo + this.#reportTicks();
    live.add(this);
    if (!sweeper) sweeper = setInterval(sweep, SWEEP_MS);
    this.#next();
  }

  /** Whether the switch lets work through now. No I/O: call it before every job. */
  isOpen(): boolean {
    return this.#open;
  }

  /** The switch version this gate acts on (0 before first contact). */
  get version(): number {
    return this.#version;
  }

  /** The state the control plane last confirmed, null before first contact. */
  get state(): SwitchState | null {
    return this.#known === KNOWN_RUNNING ? "running" : this.#known === KNOWN_PAUSED ? "paused" : null;
  }

  get connected(): boolean {
    return this.#connected;
  }

  get switchName(): string {
    return this.#cfg.switch;
  }

  get workerId(): string {
    return this.#cfg.workerId;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get processed(): number {
    return this.#processed;
  }

  /** How many times the stream has connected. */
  get connects(): number {
    return this.#connects;
  }

  /** When the stream connected, each time (Unix ms; the last 1,000). */
  get connectTimes(): number[] {
    return this.#connectTimes.slice();
  }

  /** The last version applied and the Unix microsecond from which `isOpen()` answered by it. */
  get lastChange(): { version: number; atUs: number } | null {
    return this.#lastChangeUs === 0 ? null : { version: this.#version, atUs: this.#lastChangeUs };
  }

  /** The last problem reaching the control plane (null once it is heard again). */
  get lastError(): BrbError | null {
    return this.#lastError;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * How old the gate's knowledge may be, in ms: 0 while the stream is connected (every change
   * is pushed at once), else the time since the control plane was last heard; null if never.
   */
  staleness(): number | null {
    if (this.#connected) return 0;
    if (this.#lastContactMs === 0) return null;
    return Math.max(0, Date.now() - this.#lastContactMs);
  }

  /** What this worker reports: running, draining (closed with jobs in flight) or paused. */
  status(): WorkerStatus {
    if (this.#open) return "running";
    return this.#inFlight > 0 ? "draining" : "paused";
  }

  /** The fraction of normal work admitted now: 0 when closed, the ramp's while ramping, else 1. */
  admittedFraction(): number {
    if (!this.#open) return 0;
    if (this.#ramp && this.#known === KNOWN_RUNNING) return rampFraction(this.#ramp, Date.now());
    return 1;
  }

  /** Waits until the gate has heard from the control plane once. False on timeout. */
  ready(opts: WaitOptions = {}): Promise<boolean> {
    return this.#until(isKnown, opts);
  }

  /**
   * Waits until the switch lets work through: true once open, false when `timeoutMs` ran out.
   * Rejects with the signal's reason when aborted, and with BrbError `closed` when the gate is.
   */
  waitOpen(opts: WaitOptions = {}): Promise<boolean> {
    return this.#until(isOpen, opts);
  }

  /**
   * Takes a job slot without waiting: null when closed, every slot busy, or the ramp's duty cycle
   * has the free slots resting.
   */
  tryAcquire(): Permit | null {
    if (!this.#open || this.#closed) return null;
    const now = performance.now();
    const slots = this.#slots;
    for (let i = 0; i < slots.length; i++) {
      if (slots[i]! <= now) {
        slots[i] = Infinity; // busy until released (then it gets its rest time)
        this.#inFlight++;
        return new Permit(this, i, now);
      }
    }
    return null;
  }

  /**
   * Waits until the switch is open and a slot is free (and rested, during a ramp), then takes it.
   * Rejects with BrbError `timeout` after `timeoutMs`, the signal's reason when aborted, BrbError
   * `closed` when the gate is closed.
   */
  async acquire(opts: WaitOptions = {}): Promise<Permit> {
    opts.signal?.throwIfAborted();
    const deadline = opts.timeoutMs === undefined ? Infinity : performance.now() + opts.timeoutMs;
    for (;;) {
      if (this.#closed) throw new BrbError("closed", "the gate is closed");
      const p = this.tryAcquire();
      if (p) return p;
      const now = performance.now();
      let wait = deadline - now;
      if (wait <= 0) throw new BrbError("timeout", `no job slot admitted within ${opts.timeoutMs} ms`);
      if (this.#open) {
        // Open, no slot yet: a release wakes us, or the next slot's rest ends.
        let next = Infinity;
        for (const t of this.#slots) next = Math.min(next, t);
        if (Number.isFinite(next)) wait = Math.min(wait, Math.min(250, Math.max(1, next - now)));
      }
      await this.#wait(wait, opts.signal);
    }
  }

  /** Runs `fn` as one job: acquire, run, release (also when `fn` throws). */
  async job<T>(fn: () => T | Promise<T>, opts: WaitOptions = {}): Promise<T> {
    const permit = await this.acquire(opts);
    try {
      return await fn();
    } finally {
      permit.release();
    }
  }

  /**
   * Stops the gate: its stream, requests and timers end, waiting calls reject with BrbError
   * `closed`. Permits still held can be released. Nothing of the gate keeps the process alive
   * afterwards.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      live.delete(this);
      if (live.size === 0 && sweeper) {
        clearInterval(sweeper);
        sweeper = null;
      }
      const why = new BrbError("closed", "the gate is closed");
      const q = openQueue.indexOf(this);
      if (q >= 0) {
        // Waiting for its turn: no stream to end, the attempt ends here.
        openQueue.splice(q, 1);
        this.#toOpen = null;
        this.#streamEnded({ heard: false, kind: "closed" });
      }
      this.#endTurn();
      // An open stream or a long-poll ends the loop as it ends; a sleeping loop ends here.
      this.#stream?.destroy(why);
      this.#poll?.abort(why);
      this.#report?.abort(why);
      this.#sample?.abort(why);
      if (this.#sleepTimer) {
        clearTimeout(this.#sleepTimer);
        this.#sleepTimer = null;
        this.#stop();
      }
      this.#notify();
      await this.#whenStopped();
      releasePools(this.#pools);
      if (this.#connected) {
        this.#connected = false;
        this.emit("disconnected", null);
      }
    }
    await this.#whenStopped();
  }

  // ---- deciding ----

  #recompute(cause: "switch" | "policy" = "switch"): boolean {
    const lost = this.#lostAtMs;
    const beyondGrace = lost !== 0 && Date.now() - lost >= this.#cfg.graceMs;
    const policy = this.#cfg.policy;
    let open: boolean;
    let byPolicy = false;
    if (policy === "open" && beyondGrace) {
      open = true;
      byPolicy = true;
    } else if (policy === "closed" && beyondGrace) {
      open = false;
      byPolicy = true;
    } else {
      open = this.#known === KNOWN_RUNNING;
    }
    if (open === this.#open) return false;
    this.#open = open;
    if (byPolicy) {
      this.#log(
        "warn",
        `control plane unreachable for ${Math.round((Date.now() - lost) / 1000)} s (grace ${this.#cfg.graceMs} ms): ` +
          `failing ${policy} (policy ${policy}); work is ${open ? "allowed" : "stopped"}`,
      );
    }
    this.#changed(byPolicy ? "policy" : cause);
    return true;
  }

  /** Waiters, the reporter and listeners learn of a new decision, version or ramp. */
  #changed(cause: "switch" | "policy"): void {
    this.#notify();
    this.#reportSoon();
    if (this.listenerCount("change") > 0) {
      const ch: GateChange = {
        open: this.#open,
        state: this.state,
        version: this.#version,
        admittedFraction: this.admittedFraction(),
        changedBy: this.#changedBy,
        source: this.#source,
        cause,
      };
      this.emit("change", ch);
    }
  }

  /** Applies a `switch` event's data. Garbage is logged and changes nothing. */
  #applyEvent(data: string): void {
    let sw: SwitchDoc;
    try {
      sw = decodeSwitchEvent(data);
    } catch (e) {
      const what = e instanceof SyntaxError ? "switch event" : "switch";
      this.#log("warn", `ignoring an unreadable ${what} (${(e as Error).message}); the state stays as it was`);
      return;
    }
    this.#applyDoc(sw);
  }

  #apply(v: unknown): void {
    let sw: SwitchDoc;
    try {
      sw = checkSwitch(v);
    } catch (e) {
      this.#log("warn", `ignoring an unreadable switch (${(e as Error).message}); the state stays as it was`);
      return;
    }
    this.#applyDoc(sw);
  }

  /** Applies a checked switch (shared between gates: read, never changed). */
  #applyDoc(sw: SwitchDoc): void {
    if (sw.name !== this.#cfg.switch) {
      this.#log("warn", `ignoring an unreadable switch (it names switch ${JSON.stringify(sw.name)}); the state stays as it was`);
      return;
    }
    const ramp = sw.ramp;
    const version = sw.version;
    if (version < this.#version && this.#known !== KNOWN_NONE && !this.#trustNext) {
      if (this.#logs("debug")) this.#log("debug", `ignoring version ${version}, older than ${this.#version} (a lagging replica)`);
      return;
    }
    this.#trustNext = false;
    const k = sw.state === "running" ? KNOWN_RUNNING : KNOWN_PAUSED;
    const versionChanged = version !== this.#version;
    const rampChanged = !sameRamp(this.#ramp, ramp);
    this.#ramp = ramp;
    if (versionChanged) this.#lastChangeUs = nowUs();
    this.#version = version;
    this.#changedBy = sw.changedBy;
    this.#source = sw.source;
    const prev = this.#known;
    this.#known = k;
    this.#lastContactMs = Date.now();
    const flipped = this.#recompute();
    if (prev === KNOWN_NONE) {
      if (this.#logs("debug")) this.#log("debug", `learned the state: ${sw.state} (version ${version})`);
    } else if (prev !== k && this.#logs("info")) {
      this.#log(
        "info",
        `observed a change: ${sw.state} (version ${version}, by ${this.#changedBy ?? "?"} via ${this.#source ?? "?"})`,
      );
    }
    if (!flipped && (versionChanged || rampChanged || prev !== k)) this.#changed("switch");
  }

  #setConnected(yes: boolean, err: BrbError | null = null): void {
    const was = this.#connected;
    this.#connected = yes;
    if (yes) {
      this.#lostAtMs = 0;
      if (!was) {
        this.#connects++;
        // The first one as a literal (exactly one element; `push` onto [] reserves room for 17).
        if (this.#connectTimes.length === 0) this.#connectTimes = [Date.now()];
        else this.#connectTimes.push(Date.now());
        if (this.#connectTimes.length > 1000) this.#connectTimes.splice(0, this.#connectTimes.length - 1000);
        if (this.#lastError) {
          this.#log("info", `connected to the control plane again (version ${this.#version})`);
          this.#lastError = null;
          this.#lastLogged = "";
        }
        this.emit("connected");
      }
    } else if (was || this.#lostAtMs === 0) {
      this.#lostAtMs = Date.now();
      if (was) this.emit("disconnected", err);
    }
    this.#recompute();
  }

  // ---- admission ----

  #release(slot: number, started: number, abandoned: boolean): void {
    const now = performance.now();
    if (abandoned) {
      this.#slots[slot] = now;
    } else {
      const f = this.admittedFraction();
      // Duty cycle: at fraction f the slot rests took·(1−f)/f, so it works f of the time.
      const rest = f > 0 && f < 1 ? ((now - started) * (1 - f)) / f : 0;
      this.#slots[slot] = now + rest;
      this.#processed++;
    }
    this.#inFlight--;
    if (this.#inFlight === 0 && !this.#open) this.#reportSoon(); // drained: say so at once
    this.#notify();
  }

  #notify(): void {
    const w = this.#waiters;
    if (!w) return;
    this.#waiters = null;
    for (const x of w) x.wake();
  }

  /** Resolves on the next change or release, after `ms`, or rejects when aborted. */
  #wait(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    return Waiter.start(this, null, performance.now() + ms, signal);
  }

  /** Resolves true once `cond(gate)` holds, false at the deadline; rejects when aborted or closed. */
  #until(cond: (g: Gate) => boolean, opts: WaitOptions): Promise<boolean> {
    const signal = opts.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (cond(this)) return Promise.resolve(true);
    if (this.#closed) return Promise.reject(new BrbError("closed", "the gate is closed"));
    const deadline = opts.timeoutMs === undefined ? Infinity : performance.now() + opts.timeoutMs;
    if (deadline - performance.now() <= 0) return Promise.resolve(false);
    return Waiter.start(this, cond, deadline, signal);
  }

  // ---- the stream ----

  // The watch loop: an attempt (SSE on each URL in turn from the current one, or a spell of
  // long-poll) ends in #attemptEnded, which sleeps the backoff on a timer and starts the next.
  // Each step is entered from a callback; a step that throws (a listener of the gate's events
  // that throws, a socket option node refuses) ends the loop with a log line, as the loop's
  // rejected promise did when it was an async function.

  /** Starts the next attempt, unless the gate is closed. */
  #next(): void {
    if (this.#closed) {
      this.#stop();
      return;
    }
    try {
      const cfg = this.#cfg;
      this.#polling = cfg.transport === "long_poll" || (cfg.transport === "auto" && Date.now() < this.#longPollUntil);
      if (this.#polling) {
        this.#longPoll(cfg.transport === "auto" ? this.#longPollUntil : Infinity).then(
          (r) => this.#attemptEnded(r),
          (e: unknown) => this.#fail(e),
        );
        return;
      }
      this.#sseTried = 0;
      this.#streamFrom(cfg.targets[this.#urlIndex]!);
    } catch (e) {
      this.#fail(e);
    }
  }

  /** The stream on one URL ended: the next URL while they are unreachable, else the attempt's end. */
  #streamEnded(r: Outcome): void {
    if (!this.#streamPending) return;
    this.#streamPending = false;
    if (!r.heard) {
      // This replica failed: the next attempt (or the next URL now) starts at the next one.
      const n = this.#cfg.targets.length;
      this.#urlIndex = (this.#urlIndex + 1) % n;
      if (r.kind === "unreachable" && ++this.#sseTried < n && !this.#closed) {
        try {
          this.#log("debug", `${r.error?.message ?? "unreachable"}; trying the next URL`);
          this.#streamFrom(this.#cfg.targets[this.#urlIndex]!);
        } catch (e) {
          this.#fail(e);
        }
        return;
      }
    }
    this.#attemptEnded(r);
  }

  /** An attempt ended: the gate is disconnected; the next attempt after the backoff. */
  #attemptEnded(r: Outcome): void {
    if (this.#closed) {
      this.#stop();
      return;
    }
    let delay: number;
    try {
      delay = this.#backoffAfter(r);
    } catch (e) {
      this.#fail(e);
      return;
    }
    if (this.#closed) {
      // Closed by a listener of `disconnected`.
      this.#stop();
      return;
    }
    const reread = r.kind === "auth";
    // Not unref'd: a worker waiting while paused must not see its process exit under it.
    this.#sleepTimer = setTimeout(() => {
      this.#sleepTimer = null;
      if (reread && this.#cfg.tokenFile && !this.#closed) {
        // The token may have been rotated in its file meanwhile.
        try {
          this.#token = readTokenFile(this.#cfg.tokenFile);
        } catch (e) {
          this.#log("error", (e as Error).message);
        }
      }
      this.#next();
    }, delay);
  }

  /** What an attempt's end changes (connection, fallback to long-poll), and the backoff before the next. */
  #backoffAfter(r: Outcome): number {
    const cfg = this.#cfg;
    this.#setConnected(false, r.error ?? null);
    if (!this.#polling && cfg.transport === "auto") {
      if (r.heard) this.#sseFailures = 0;
      else if (r.kind === "refused" || r.kind === "rate_limited") this.#sseFailures++;
    }
    if (cfg.transport === "auto" && this.#longPollUntil === 0 && this.#sseFailures >= SSE_FAILURES_BEFORE_FALLBACK) {
      this.#log("warn", "the event stream keeps failing (a proxy that refuses or buffers it?); falling back to long-poll");
      this.#longPollUntil = Date.now() + cfg.longPollSpellMs;
      this.#sseFailures = 0;
    } else if (this.#longPollUntil !== 0 && Date.now() >= this.#longPollUntil) {
      this.#longPollUntil = 0;
      this.#log("info", "trying the event stream again after a spell of long-poll");
    }
    this.#attempt = r.heard ? 0 : this.#attempt + 1;
    let delay = backoffMs(cfg.backoffBaseMs, cfg.backoffCapMs, Math.max(0, this.#attempt - FLAT_ATTEMPTS));
    if (r.kind === "auth" || r.kind === "not_found") {
      // Retrying soon would not change the answer: the longest interval at once (half to all
      // of the cap, never less than a few seconds), still spread, never a storm.
      const long = Math.max(cfg.backoffCapMs, REFUSED_RETRY_MIN_MS);
      delay = long / 2 + (Math.random() * long) / 2;
    } else if (r.kind === "rate_limited") {
      const ra = Math.min(r.retryAfterMs ?? 0, 3_600_000);
      delay = Math.max(delay, ra + Math.random() * cfg.backoffBaseMs);
    }
    if (r.error && !r.heard) this.#problem(r, delay);
    return delay;
  }

  #fail(e: unknown): void {
    this.#log("error", `the gate's watch loop failed: ${e instanceof Error ? e.message : String(e)}`);
    this.#stop();
  }

  #stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    const f = this.#onStopped;
    this.#onStopped = null;
    f?.();
  }

  /** Resolves once the watch loop has ended (a promise is made only for whoever waits). */
  #whenStopped(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return (this.#stoppedWait ??= new Promise<void>((resolve) => {
      this.#onStopped = resolve;
    }));
  }

  /** Logs a failed attempt: at its level when new (or once a minute), else at debug. */
  #problem(r: Outcome, delay: number): void {
    const err = r.error!;
    this.#lastError = err;
    const next = `next try in ${(delay / 1000).toFixed(1)} s`;
    let level: "warn" | "error" = "warn";
    let msg: string;
    switch (r.kind) {
      case "auth":
        level = "error";
        msg = `the control plane refused this gate's token: ${err.message}; check the token (token / tokenFile option, BRB_TOKEN, BRB_TOKEN_FILE) and its role and scope; ${next}`;
        break;
      case "not_found":
        level = "error";
        msg = `switch ${JSON.stringify(this.#cfg.switch)} not found: ${err.message}; keeping the last known state; ${next}`;
        break;
      case "rate_limited":
        msg = `the control plane asks to slow down: ${err.message}; ${next}`;
        break;
      default:
        msg = `cannot follow switch ${JSON.stringify(this.#cfg.switch)}: ${err.message}; keeping the ${this.#known === KNOWN_NONE ? "gate closed (no state known yet)" : `last known state (${this.state}, version ${this.#version})`}; ${next}`;
    }
    const key = `${r.kind}:${err.message}`;
    const now = Date.now();
    if (key !== this.#lastLogged || now - this.#lastLoggedAt >= RELOG_MS) {
      this.#lastLogged = key;
      this.#lastLoggedAt = now;
      this.#log(level, msg);
    } else {
      this.#log("debug", msg);
    }
  }

  /** Opens a stream to `t`, now or when an opening turn is free (see MAX_OPENING). */
  #streamFrom(t: Target): void {
    this.#streamHeard = false;
    this.#unknownLogged = false;
    this.#streamPending = true;
    this.#streamBase = t.base;
    this.#toOpen = t;
    if (opening < MAX_OPENING && openQueue.length === 0) {
      opening++;
      this.#openStream();
    } else {
      openQueue.push(this);
    }
  }

  /** Opens the stream to `#toOpen`, holding one of the process's opening turns. */
  #openStream(): void {
    const t = this.#toOpen;
    this.#toOpen = null;
    this.#turn = true;
    this.#turnTick = tickNo;
    if (!t || this.#closed) {
      this.#endTurn();
      this.#streamEnded({ heard: false, kind: "closed" });
      return;
    }
    this.#deadlineTick = tickNo + ticks(this.#cfg.answerTimeoutMs) + 1;
    const lastId = this.#known !== KNOWN_NONE ? String(this.#version) : null;
    try {
      this.#stream = new EventStream(
        t,
        this.#cfg.tls,
        `/api/v1/switches/${enc(this.#cfg.switch)}/events`,
        this.#token,
        lastId,
        new Handler(this),
      );
    } catch (e) {
      // Node refused to open it (TLS material it cannot load): the loop ends, logged.
      this.#deadlineTick = 0;
      this.#streamPending = false;
      this.#endTurn();
      this.#fail(e);
    }
  }

  /** Gives the opening turn back (idempotent) and lets the next waiting stream open. */
  #endTurn(): void {
    if (!this.#turn) return;
    this.#turn = false;
    opening--;
    admitOpening();
  }

  #onStreamOpen(): void {
    this.#lastByteTick = tickNo;
    this.#endTurn();
  }

  #onEvent(ev: SseEvent): void {
    switch (ev.event) {
      case "switch":
        this.#applyEvent(ev.data);
        return;
      case "resync": {
        let r: Record<string, unknown> | null = null;
        try {
          const v: unknown = JSON.parse(ev.data);
          if (typeof v === "object" && v !== null) r = v as Record<string, unknown>;
        } catch {
          r = null;
        }
        if (r && typeof r.after === "number" && typeof r.current === "number") {
          // The state that follows is current, not each step: take it even if it is older.
          this.#trustNext = true;
          this.#log("info", `the stream skipped changes ${r.after} → ${r.current} (${String(r.reason)}); the current state follows`);
        } else {
          this.#log("warn", "ignoring an unreadable resync event");
        }
        return;
      }
      case "deleted":
        this.#log("error", `switch ${JSON.stringify(this.#cfg.switch)} was deleted; keeping the last known state`);
        this.#stream?.destroy(new BrbError("protocol", "the switch was deleted"));
        return;
      default:
        if (!this.#unknownLogged) {
          this.#unknownLogged = true;
          this.#log("warn", `ignoring an event of unknown type ${JSON.stringify(ev.event.slice(0, 40))} on the stream`);
        }
    }
  }

  #onStreamEnd(err: BrbError | null): void {
    this.#endTurn();
    this.#stream = null;
    this.#deadlineTick = 0;
    if (!this.#streamPending) return;
    if (this.#closed) {
      this.#streamEnded({ heard: this.#streamHeard, kind: "closed" });
      return;
    }
    if (this.#streamHeard) {
      if (err) this.#log("debug", `event stream ended: ${err.message}`);
      this.#streamEnded({ heard: true, kind: "ok", error: err });
      return;
    }
    this.#streamEnded(classify(err ?? new BrbError("protocol", "the event stream ended before anything was sent on it")));
  }

  /** Long-polls until an error, or until `untilMs` (Unix ms), when the stream is to be tried again. */
  async #longPoll(untilMs: number): Promise<Outcome> {
    let heard = false;
    const name = enc(this.#cfg.switch);
    while (!this.#closed) {
      if (heard && Date.now() >= untilMs) return { heard, kind: "ok" };
      const path =
        this.#known === KNOWN_NONE
          ? `/api/v1/switches/${name}`
          : `/api/v1/switches/${name}?after_version=${this.#version}&wait=${LONG_POLL_WAIT_S}`;
      const timeout = (this.#known === KNOWN_NONE ? 0 : LONG_POLL_WAIT_S * 1000) + this.#cfg.answerTimeoutMs;
      let sw: unknown;
      try {
        sw = await this.#call("poll", "GET", path, undefined, timeout, (p) => (this.#poll = p));
      } catch (e) {
        this.#poll = null;
        if (this.#closed) return { heard, kind: "closed" };
        const o = classify(e);
        return heard ? { ...o, heard } : o;
      }
      this.#poll = null;
      heard = true;
      this.#setConnected(true);
      this.#apply(sw);
    }
    return { heard, kind: "closed" };
  }

  /** A JSON request to the current URL, then each other in turn while unreachable. */
  async #call(
    kind: "short" | "poll",
    method: "GET" | "POST",
    path: string,
    body: unknown,
    timeoutMs: number,
    track: (p: Pending) => void,
  ): Promise<unknown> {
    const targets = this.#cfg.targets;
    let last: unknown;
    for (let k = 0; k < targets.length; k++) {
      const t = targets[(this.#urlIndex + k) % targets.length]!;
      const p = request(this.#pools, t, method, path, this.#token, body, timeoutMs, kind);
      track(p);
      try {
        const a = await p.answer;
        // A report's or a sample's answer is only looked at for an error.
        if (kind === "short" && a.status >= 200 && a.status < 300) return null;
        return decodeJson(t, a);
      } catch (e) {
        if (!(e instanceof BrbError) || e.code !== "unreachable" || this.#closed) throw e;
        last = e;
      }
    }
    throw last;
  }

  // ---- reports and the sweeper ----

  #reportSoon(): void {
    if (!this.#cfg.reports || this.#closed || this.#known === KNOWN_NONE) return;
    if (this.#report || tickNo < this.#holdReportsUntilTick) {
      this.#reportDirty = true;
      return;
    }
    this.#sendReport();
  }

  /**
   * The heartbeat's interval in sweeps, between 80% and 100% of `reportIntervalMs`: gates started
   * together (a fleet, a deploy) drift apart instead of reporting in the same instant forever.
   */
  #reportTicks(): number {
    return ticks(this.#cfg.reportIntervalMs * (0.8 + 0.2 * Math.random()));
  }

  #sendReport(): void {
    this.#reportDirty = false;
    this.#nextReportTick = tickNo + this.#reportTicks();
    const body = {
      worker_id: this.#cfg.workerId,
      switch: this.#cfg.switch,
      observed_version: this.#version,
      status: this.status(),
      in_flight: this.#inFlight,
      processed_total: this.#processed,
    };
    this.#call("short", "POST", "/api/v1/workers/report", body, this.#cfg.answerTimeoutMs, (p) => (this.#report = p))
      .catch((e: unknown) => {
        if (this.#closed) return;
        const err = e instanceof BrbError ? e : new BrbError("protocol", String(e));
        if (err instanceof ApiError && err.status === 429) {
          this.#holdReportsUntilTick = tickNo + ticks(Math.min(err.retryAfterMs ?? this.#cfg.reportIntervalMs, 600_000));
          this.#reportDirty = true;
        }
        const level = err instanceof ApiError && err.status !== 429 ? "warn" : "debug";
        this.#log(level, `report failed: ${err.message}`);
      })
      .finally(() => {
        this.#report = null;
        if (this.#reportDirty && !this.#closed && tickNo >= this.#holdReportsUntilTick) this.#sendReport();
      });
  }

  #sendSample(): void {
    const now = this.#processed;
    const delta = now - this.#sampledProcessed;
    const body = { samples: [{ name: "sdk_jobs_processed", value: delta, kind: "counter" }] };
    this.#call("short", "POST", "/api/v1/metrics", body, this.#cfg.answerTimeoutMs, (p) => (this.#sample = p))
      .then(() => {
        this.#sampledProcessed = now;
      })
      .catch((e: unknown) => {
        if (!this.#closed) this.#log("debug", `sending samples failed: ${e instanceof Error ? e.message : String(e)}`);
      })
      .finally(() => {
        this.#sample = null;
      });
  }

  #tick(now: number): void {
    if (this.#turn && now > this.#turnTick) this.#endTurn();
    const s = this.#stream;
    if (s) {
      if (!s.answered) {
        if (this.#deadlineTick !== 0 && now >= this.#deadlineTick) {
          s.destroy(
            new BrbError("unreachable", `${this.#streamBase}: no answer to the event-stream request within ${duration(this.#cfg.answerTimeoutMs)}`),
          );
        }
      } else if (s.streaming && now - this.#lastByteTick > ticks(this.#cfg.idleTimeoutMs)) {
        s.destroy(
          this.#streamHeard
            ? new BrbError("unreachable", `${this.#streamBase}: event stream silent for ${duration(this.#cfg.idleTimeoutMs)}; reconnecting`)
            : new BrbError(
                "protocol",
                `${this.#streamBase}: event stream answered but sent nothing for ${duration(this.#cfg.idleTimeoutMs)} (a buffering proxy?)`,
              ),
        );
      }
    }
    if (this.#cfg.policy !== "keep_last_known" && !this.#connected) this.#recompute("policy");
    if (
      this.#cfg.reports &&
      this.#known !== KNOWN_NONE &&
      !this.#report &&
      now >= this.#holdReportsUntilTick &&
      (now >= this.#nextReportTick || this.#reportDirty)
    ) {
      this.#sendReport();
    }
    if (this.#cfg.samples && now >= this.#nextSampleTick) {
      this.#nextSampleTick = now + SAMPLE_TICKS;
      if (this.#processed !== this.#sampledProcessed && !this.#sample) this.#sendSample();
    }
  }

  /** Whether a line at `level` goes anywhere (a line per delivery is not formatted for nothing). */
  #logs(level: "debug" | "info" | "warn" | "error"): boolean {
    const l = this.#cfg.logger;
    return l !== null && l[level] !== NOOP_LOG;
  }

  #log(level: "debug" | "info" | "warn" | "error", message: string): void {
    const l = this.#cfg.logger;
    if (!l) return;
    // One line per message, whatever a peer's error text holds.
    let m = `switch=${this.#cfg.switch} worker=${this.#cfg.workerId}: ${message.replace(/\s*[\r\n]+\s*/g, " ")}`;
    // Whatever a server put in an error message, the token never reaches a log.
    if (this.#token && m.includes(this.#token)) m = m.split(this.#token).join("<token>");
    l[level](m);
  }
}

/** A switch as the control plane sent it, checked; shared by the gates that read it, never changed. */
interface SwitchDoc {
  readonly name: unknown;
  readonly state: SwitchState;
  readonly version: number;
  readonly ramp: ParsedRamp | null;
  readonly changedBy: string | null;
  readonly source: string | null;
}

/** Checks a decoded switch (whatever its name: each gate compares that). Throws TypeError. */
function checkSwitch(v: unknown): SwitchDoc {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new TypeError("not a JSON object");
  const sw = v as Record<string, unknown>;
  if (sw.state !== "running" && sw.state !== "paused") throw new TypeError(`unknown state ${JSON.stringify(sw.state)}`);
  if (typeof sw.version !== "number" || !Number.isSafeInteger(sw.version) || sw.version < 0) {
    throw new TypeError(`version ${JSON.stringify(sw.version)} is not a version`);
  }
  return {
    name: sw.name,
    state: sw.state,
    version: sw.version,
    ramp: parseRamp(sw.ramp),
    changedBy: typeof sw.changed_by === "string" ? sw.changed_by : null,
    source: typeof sw.source === "string" ? sw.source : null,
  };
}

// The last `switch` event's data and its checked switch. The streams of a process hand their
// gates the same event objects for the same frame (FrameMemo), so one JSON.parse serves every
// gate of the process; a failure is not remembered (each gate logs its own line).
let lastSwitchData: string | null = null;
let lastSwitchDoc: SwitchDoc | null = null;

/** A `switch` event's data, checked: SyntaxError for JSON that is not, TypeError for a bad switch. */
function decodeSwitchEvent(data: string): SwitchDoc {
  if (lastSwitchDoc !== null && data === lastSwitchData) return lastSwitchDoc;
  const doc = checkSwitch(JSON.parse(data));
  lastSwitchData = data;
  lastSwitchDoc = doc;
  return doc;
}

function classify(e: unknown): Outcome {
  const err = e instanceof BrbError ? e : new BrbError("protocol", e instanceof Error ? e.message : String(e));
  if (err instanceof ApiError) {
    // The control plane's own refusals carry its error body; a 403 or 404 without one is a proxy
    // in the way (refusing the stream's path), which long-poll may get around.
    const ours = err.apiCode !== null;
    if (err.status === 401 || (err.status === 403 && ours)) return { heard: false, kind: "auth", error: err };
    if (err.status === 404 && ours) return { heard: false, kind: "not_found", error: err };
    if (err.status === 429) return { heard: false, kind: "rate_limited", retryAfterMs: err.retryAfterMs, error: err };
    return { heard: false, kind: "refused", error: err };
  }
  if (err.code === "unreachable") return { heard: false, kind: "unreachable", error: err };
  if (err.code === "closed") return { heard: false, kind: "closed", error: err };
  return { heard: false, kind: "refused", error: err };
}

function sameRamp(a: ParsedRamp | null, b: ParsedRamp | null): boolean {
  if (a === b) return true;
  if (!a || !b) return false;
  return (
    a.startMs === b.startMs &&
    a.durationSecs === b.durationSecs &&
    a.kind === b.kind &&
    a.from === b.from &&
    a.fractions.length === b.fractions.length &&
    a.fractions.every((f, i) => f === b.fractions[i])
  );
}
