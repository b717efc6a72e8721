// Test support: the real `brb server` as a child process on a free loopback port, an admin
// client for it, a TCP forwarder that can cut connections, and a log collector.

import { spawn, type ChildProcess } from "node:child_process";
import http from "node:http";
import https from "node:https";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
/** sdk/node, whether this runs from build/test or test/. */
export const sdkDir = resolve(here, existsSync(join(here, "..", "package.json")) ? ".." : "../..");
const repo = resolve(sdkDir, "..", "..");

/** The `brb` binary: BRB_BIN, else the workspace's debug build. */
export function brbBin(): string {
  const bin = process.env.BRB_BIN ?? join(repo, "target", "debug", "brb");
  if (!existsSync(bin)) {
    throw new Error(`no brb binary at ${bin}: build it (cargo build -p brb) or set BRB_BIN`);
  }
  return bin;
}

export interface ServerOptions {
  port?: number;
  dataDir?: string;
  args?: string[];
  env?: Record<string, string>;
  /** For the test's own admin calls to a TLS server: its CA, and a client identity. */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  /** Whether `stop` removes `dataDir` (default: when the server made it). */
  ownsDir?: boolean;
}

export class BrbServer {
  readonly dataDir: string;
  readonly url: string;
  readonly port: number;
  readonly token: string;
  #child: ChildProcess;
  #ownsDir: boolean;
  #tls: ServerOptions["tls"];
  #exited: Promise<void>;
  stderr = "";

  private constructor(child: ChildProcess, dataDir: string, ownsDir: boolean, url: string, exited: Promise<void>, tls: ServerOptions["tls"]) {
    this.#child = child;
    this.#tls = tls;
    this.dataDir = dataDir;
    this.#ownsDir = ownsDir;
    this.url = url;
    this.port = Number(new URL(url).port);
    this.token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
    this.#exited = exited;
  }

  /** Starts `brb server` and waits for its "listening on" line. */
  static async start(o: ServerOptions = {}): Promise<BrbServer> {
    const ownsDir = o.ownsDir ?? o.dataDir === undefined;
    const dataDir = o.dataDir ?? mkdtempSync(join(tmpdir(), "brb-node-sdk-"));
    const scheme = o.args?.includes("--tls-cert") ? "https" : "http";
    const child = spawn(brbBin(), ["server", "--listen", `127.0.0.1:${o.port ?? 0}`, "--data-dir", dataDir, ...(o.args ?? [])], {
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        BRB_LOG: "warn",
        // Tests make many changes quickly; the abuse limits are not what they test.
        BRB_CHANGES_PER_SEC: "100000",
        BRB_CHANGES_BURST: "100000",
        ...o.env,
      },
    });
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    let err = "";
    child.stderr!.on("data", (b: Buffer) => {
      err += b.toString();
      if (err.length > 100_000) err = err.slice(-50_000);
    });
    const url = await new Promise<string>((res, rej) => {
      let out = "";
      const timer = setTimeout(() => rej(new Error(`brb server did not start within 30 s: ${err}`)), 30_000);
      child.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        const m = /listening on (https?:\/\/[0-9.:]+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          res(m[1]!.replace(/^https?/, scheme));
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        rej(new Error(`brb server exited (${code}) before listening: ${err}`));
      });
    });
    const s = new BrbServer(child, dataDir, ownsDir, url, exited, o.tls);
    child.stderr!.on("data", (b: Buffer) => (s.stderr += b.toString()));
    return s;
  }

  /** Starts another server on the same port and data dir (after `kill`). */
  restart(o: ServerOptions = {}): Promise<BrbServer> {
    // The restarted server removes the data dir in its turn, when this one would have.
    return BrbServer.start({ tls: this.#tls, ...o, port: this.port, dataDir: this.dataDir, ownsDir: this.#ownsDir });
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill(signal);
    await this.#exited;
  }

  /** Kills the server and removes its data dir (when this server made it). */
  async stop(): Promise<void> {
    await this.kill();
    if (this.#ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** An admin call (node:http, so that a private CA and a client certificate can be given). */
  api(method: string, path: string, body?: unknown, token = this.token): Promise<any> {
    const u = new URL(this.url + path);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = (u.protocol === "https:" ? https : http).request(
        u,
        {
          method,
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          ca: this.#tls?.ca,
          cert: this.#tls?.cert,
          key: this.#tls?.key,
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (text += c));
          res.on("end", () => {
            if ((res.statusCode ?? 0) >= 300) reject(new Error(`${method} ${path}: HTTP ${res.statusCode}: ${text}`));
            else resolve(text ? JSON.parse(text) : null);
          });
        },
      );
      req.on("error", reject);
      req.end(payload);
    });
  }

  setState(state: "paused" | "running", extra: Record<string, unknown> = {}, sw = "workers"): Promise<{ version: number }> {
    return this.api("PUT", `/api/v1/switches/${sw}/state`, { state, ...extra });
  }

  workers(sw = "workers"): Promise<any> {
    return this.api("GET", `/api/v1/switches/${sw}/workers`);
  }
}

/** Polls `cond` until it holds (a condition, not a fixed sleep); throws with `what` on timeout. */
export async function until<T>(what: string, cond: () => T | Promise<T>, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Collects the SDK's log lines. */
export class Logs implements Logger {
  lines: string[] = [];
  debug(m: string): void {
    this.lines.push(`DEBUG ${m}`);
  }
  info(m: string): void {
    this.lines.push(`INFO ${m}`);
  }
  warn(m: string): void {
    this.lines.push(`WARN ${m}`);
  }
  error(m: string): void {
    this.lines.push(`ERROR ${m}`);
  }
  has(re: RegExp): boolean {
    return this.lines.some((l) => re.test(l));
  }
  text(): string {
    return this.lines.join("\n");
  }
}

/**
 * A TCP forwarder on its own loopback port: `cut()` ends every forwarded connection and refuses
 * new ones (a replica or a network gone), `heal()` accepts again on the same port. Counts the
 * connections it accepted.
 */
export class Forwarder {
  readonly port: number;
  accepted = 0;
  #target: number;
  #server: net.Server;
  #pairs = new Set<net.Socket>();

  private constructor(server: net.Server, port: number, target: number) {
    this.#server = server;
    this.port = port;
    this.#target = target;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(targetPort: number, port = 0): Promise<Forwarder> {
    let f: Forwarder | null = null;
    const server = net.createServer((c) => f!.#forward(c));
    await new Promise<void>((r, j) => {
      server.once("error", j);
      server.listen(port, "127.0.0.1", () => r());
    });
    f = new Forwarder(server, (server.address() as net.AddressInfo).port, targetPort);
    return f;
  }

  #forward(c: net.Socket): void {
    this.accepted++;
    const u = net.connect(this.#target, "127.0.0.1");
    this.#pairs.add(c);
    this.#pairs.add(u);
    const end = () => {
      c.destroy();
      u.destroy();
      this.#pairs.delete(c);
      this.#pairs.delete(u);
    };
    c.on("error", end).on("close", end);
    u.on("error", end).on("close", end);
    c.pipe(u);
    u.pipe(c);
  }

  async cut(): Promise<void> {
    const closed = new Promise<void>((r) => this.#server.close(() => r()));
    for (const s of this.#pairs) s.destroy();
    await closed;
  }

  async heal(): Promise<void> {
    await new Promise<void>((r, j) => {
      this.#server.once("error", j);
      this.#server.listen(this.port, "127.0.0.1", () => r());
    });
  }

  async stop(): Promise<void> {
    if (this.#server.listening) await this.cut();
    else for (const s of this.#pairs) s.destroy();
  }
}

/** A free loopback port now (another process may take it before it is used: callers retry). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r, j) => {
    s.once("error", j);
    s.listen(0, "127.0.0.1", () => r());
  });
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A real `redis-server` (Debian's) on a loopback port of its own, in memory only. */
export class RedisServer {
  readonly port: number;
  #child: ChildProcess;
  #exited: Promise<void>;

  private constructor(child: ChildProcess, port: number, exited: Promise<void>) {
    this.#child = child;
    this.port = port;
    this.#exited = exited;
  }

  /** Starts it on a free port and waits for "Ready to accept connections" (a few tries: the port may be taken meanwhile). */
  static async start(): Promise<RedisServer> {
    let last = "";
    for (let attempt = 0; attempt < 5; attempt++) {
      const port = await freePort();
      const child = spawn(
        "redis-server",
        ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "notice"],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      let out = "";
      const ok = await new Promise<boolean>((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`redis-server did not start within 30 s: ${out}`)), 30_000);
        const onData = (b: Buffer) => {
          out += b.toString();
          if (out.includes("Ready to accept connections")) {
            clearTimeout(timer);
            res(true);
          }
        };
        child.stdout!.on("data", onData);
        child.stderr!.on("data", onData);
        child.once("error", (e) => {
          clearTimeout(timer);
          rej(new Error(`cannot run redis-server (apt-get install redis-server): ${e.message}`));
        });
        child.once("exit", () => {
          clearTimeout(timer);
          res(false);
        });
      });
      if (ok) return new RedisServer(child, port, exited);
      last = out;
    }
    throw new Error(`redis-server did not start: ${last}`);
  }

  async stop(): Promise<void> {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGKILL");
    await this.#exited;
  }
}
