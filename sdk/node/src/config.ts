// Gate options: defaults, the BRB_* environment, and the checks that refuse a bad setting at
// construction rather than at the first reconnect.

import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { isIP } from "node:net";
import { rootCertificates } from "node:tls";
import { BrbError } from "./errors.js";

export type FailPolicy = "keep_last_known" | "open" | "closed";
export type Transport = "auto" | "sse" | "long_poll";
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** Where the SDK's log lines go. Messages never contain the token. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface GateOptions {
  /** Control-plane base URLs (replicas). Default: `BRB_URL` (comma-separated), else http://127.0.0.1:7070. */
  urls?: string | string[];
  /** The switch to follow. Default `workers` (the Big Red Button). */
  switch?: string;
  /** The API token. Default: `tokenFile`, else `BRB_TOKEN`, else the file named by `BRB_TOKEN_FILE`. */
  token?: string;
  /** A file holding the token; read again after the control plane refuses it (rotation). */
  tokenFile?: string;
  /** This worker's id in the control plane's counts. Default `hostname-pid-random`. */
  workerId?: string;
  /** What to do while the control plane cannot be reached. Default `keep_last_known`. */
  policy?: FailPolicy;
  /** How long the control plane may be unreachable before `open`/`closed` apply. Default 10 s. */
  graceMs?: number;
  /** Jobs admitted at once (the ramp's duty cycle applies per slot). Default 1. */
  maxConcurrency?: number;
  /** Heartbeat report interval; a report also goes out at once on every change. Default 5 s. */
  reportIntervalMs?: number;
  /** Report to the control plane (so `brb pause` counts this worker). Default true. */
  reports?: boolean;
  /** Send a `sdk_jobs_processed` counter sample once a second while jobs finish. Default true. */
  samples?: boolean;
  /** SSE (falling back to long-poll when it keeps failing), SSE only, or long-poll only. Default `auto`. */
  transport?: Transport;
  /** First reconnect delay bound; doubles per failed attempt up to `backoffCapMs`. Default 1 s. */
  backoffBaseMs?: number;
  /** Default 30 s. */
  backoffCapMs?: number;
  /** A connected stream that sends nothing (not even a keep-alive) for this long is dead. Default 45 s. */
  idleTimeoutMs?: number;
  /** How long a request may wait for the server's answer before the next URL is tried. Default 10 s. */
  answerTimeoutMs?: number;
  /** With `transport: "auto"`: how long a fallback to long-poll lasts before SSE is tried again. Default 5 min. */
  longPollSpellMs?: number;
  /** A PEM bundle of CAs to trust besides the system's (a private CA). Default `BRB_CA_FILE`. */
  caFile?: string;
  /** Client certificate chain (PEM) for mutual TLS. Default `BRB_CLIENT_CERT`. */
  clientCert?: string;
  /** The client certificate's key (PEM). Default `BRB_CLIENT_KEY`. */
  clientKey?: string;
  /** Allow http:// to a host that is not loopback (a TLS proxy on a trusted hop). Default `BRB_INSECURE_HTTP`. */
  allowInsecureHttp?: boolean;
  /** Where log lines go. Default: stderr, from `logLevel` up. `null`: nowhere. */
  logger?: Logger | null;
  /** Default `BRB_LOG_LEVEL`, else `info`. */
  logLevel?: LogLevel;
  /** Where the BRB_* variables are read from. Default `process.env`. */
  env?: Record<string, string | undefined>;
}

/** A base URL, split the way the SDK's requests need it. */
export interface Target {
  /** The base URL as given, without a trailing slash: what messages name. */
  base: string;
  secure: boolean;
  /** Host to connect to (IPv6 without brackets). */
  host: string;
  port: number;
  /** The `Host:` header. */
  authority: string;
  /** The base URL's path, prefixed to every request. */
  prefix: string;
}

export interface TlsMaterial {
  ca?: string[];
  cert?: Buffer;
  key?: Buffer;
  /** Identifies the material, to share connection pools between gates that use the same. */
  key_id: string;
}

export interface ResolvedConfig {
  targets: Target[];
  switch: string;
  token: string | null;
  tokenFile: string | null;
  workerId: string;
  policy: FailPolicy;
  graceMs: number;
  maxConcurrency: number;
  reportIntervalMs: number;
  reports: boolean;
  samples: boolean;
  transport: Transport;
  backoffBaseMs: number;
  backoffCapMs: number;
  idleTimeoutMs: number;
  answerTimeoutMs: number;
  longPollSpellMs: number;
  tls: TlsMaterial;
  logger: Logger | null;
}

const POLICIES: readonly FailPolicy[] = ["keep_last_known", "open", "closed"];
const TRANSPORTS: readonly Transport[] = ["auto", "sse", "long_poll"];
const LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error", "silent"];

function configError(message: string): BrbError {
  return new BrbError("config", message);
}

/** `hostname-pid-random`, unique enough to tell workers apart. */
export function defaultWorkerId(): string {
  let host = "worker";
  try {
    host = hostname().trim() || host;
  } catch {
    // keep the default
  }
  const rnd = Math.floor(Math.random() * 0x10000)
    .toString(16)
    .padStart(4, "0");
  return `${host}-${process.pid}-${rnd}`;
}

const isLoopback = (host: string): boolean => {
  const h = host.toLowerCase();
  if (h === "localhost" || h === "::1") return true;
  return isIP(h) === 4 && h.startsWith("127.");
};

// Gates of one process usually share their URLs: one parsed Target each (they are read-only).
const targetCache = new Map<string, Target>();

function cachedTarget(raw: string, allowInsecureHttp: boolean): Target {
  const key = `${allowInsecureHttp ? 1 : 0}${raw}`;
  let t = targetCache.get(key);
  if (!t) {
    t = Object.freeze(parseTarget(raw, allowInsecureHttp));
    if (targetCache.size < 1000) targetCache.set(key, t);
  }
  return t;
}

/** Parses and checks one base URL: plain HTTP only to loopback unless allowed. */
export function parseTarget(raw: string, allowInsecureHttp: boolean): Target {
  const base = raw.trim().replace(/\/+$/, "");
  let u: URL;
  try {
    u = new URL(base);
  } catch {
    throw configError(`${JSON.stringify(base)} is not a URL (expected e.g. http://127.0.0.1:7070)`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw configError(`${JSON.stringify(base)} is not an http:// or https:// URL`);
  }
  if (u.username || u.password) {
    throw configError(`${JSON.stringify(u.origin)}...: credentials in the URL are not accepted; use the token`);
  }
  if (u.search || u.hash) {
    throw configError(`${JSON.stringify(base)}: a base URL takes no query or fragment`);
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, "$1");
  const secure = u.protocol === "https:";
  if (!secure && !isLoopback(host) && !allowInsecureHttp) {
    throw configError(
      `${JSON.stringify(base)}: refusing plain HTTP to a host that is not loopback (the token would ` +
        `cross the network in clear text); use https://, or allow it explicitly (allowInsecureHttp / ` +
        `BRB_INSECURE_HTTP=1) when a TLS proxy on a trusted hop is in front`,
    );
  }
  const port = u.port ? Number(u.port) : secure ? 443 : 80;
  return { base, secure, host, port, authority: u.host, prefix: u.pathname.replace(/\/+$/, "") };
}

function readFile(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw configError(`${what} ${path}: ${(e as Error).message}`);
  }
}

/** Reads a token file: the first line, trimmed. */
export function readTokenFile(path: string): string {
  const t = readFile("token file", path).toString("utf8").trim();
  if (!t) throw configError(`token file ${path} is empty`);
  return checkToken(t, `token file ${path}`);
}

function checkToken(t: string, from: string): string {
  // A control character would end the header early (and let the token's owner inject one).
  if (/[\x00-\x20\x7f]/.test(t)) throw configError(`the token from ${from} contains whitespace or a control character`);
  return t;
}

const num = (name: string, v: unknown, dflt: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    throw configError(`${name} must be a number from ${min} to ${max}, not ${JSON.stringify(v)}`);
  }
  return v;
};

const truthy = (v: string | undefined): boolean => v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());

const loggers = new Map<LogLevel, Logger>();

/** What the stderr logger does below its level (gates skip formatting such lines). */
export const NOOP_LOG = (_message: string): void => {};

/** Log lines on stderr from `level` up (one logger per level, shared by every gate). */
export function stderrLogger(level: LogLevel): Logger | null {
  if (level === "silent") return null;
  const have = loggers.get(level);
  if (have) return have;
  const rank = LEVELS.indexOf(level);
  const line = (lvl: LogLevel) =>
    LEVELS.indexOf(lvl) >= rank
      ? (m: string) => {
          process.stderr.write(`${new Date().toISOString()} ${lvl.toUpperCase()} brb-gate: ${m}\n`);
        }
      : NOOP_LOG;
  const l = { debug: line("debug"), info: line("info"), warn: line("warn"), error: line("error") };
  loggers.set(level, l);
  return l;
}

const NO_TLS: TlsMaterial = Object.freeze({ key_id: "" });
const materialCache = new Map<string, TlsMaterial>();

/** Reads the CA and client identity files (one copy per distinct content, shared by gates). */
function tlsMaterial(caFile: string | null, certFile: string | null, keyFile: string | null): TlsMaterial {
  if (!caFile && !certFile) return NO_TLS;
  const parts: string[] = [];
  let caPem: string | null = null;
  if (caFile) {
    caPem = readFile("CA file", caFile).toString("utf8");
    if (!caPem.includes("-----BEGIN CERTIFICATE-----")) throw configError(`CA file ${caFile}: no PEM certificate in it`);
    parts.push(`ca:${caPem}`);
  }
  let cert: Buffer | null = null;
  let key: Buffer | null = null;
  if (certFile && keyFile) {
    cert = readFile("client certificate", certFile);
    key = readFile("client key", keyFile);
    parts.push(`cert:${cert.toString("base64")}:${key.toString("base64")}`);
  }
  const id = parts.join("|");
  const have = materialCache.get(id);
  if (have) return have;
  const m: TlsMaterial = { key_id: id };
  // Node's `ca` replaces the trusted roots: keep the system's, as the Rust SDK does.
  if (caPem) m.ca = [...rootCertificates, caPem];
  if (cert && key) {
    m.cert = cert;
    m.key = key;
  }
  if (materialCache.size < 100) materialCache.set(id, m);
  return m;
}

export function resolveConfig(o: GateOptions): ResolvedConfig {
  const env = o.env ?? process.env;
  const allowInsecureHttp = o.allowInsecureHttp ?? truthy(env.BRB_INSECURE_HTTP);
  const rawUrls =
    o.urls === undefined
      ? (env.BRB_URL ?? "http://127.0.0.1:7070").split(",")
      : typeof o.urls === "string"
        ? o.urls.split(",")
        : o.urls;
  const urls = rawUrls.map((u) => u.trim()).filter((u) => u.length > 0);
  if (urls.length === 0) throw configError("no control-plane URL given");
  const targets = urls.map((u) => cachedTarget(u, allowInsecureHttp));

  const sw = o.switch ?? "workers";
  if (typeof sw !== "string" || sw.length === 0 || sw.length > 64) {
    throw configError(`switch must be a switch name, not ${JSON.stringify(sw)}`);
  }

  let token: string | null = null;
  let tokenFile: string | null = null;
  if (o.token !== undefined && o.tokenFile !== undefined) {
    throw configError("give token or tokenFile, not both");
  }
  if (o.token !== undefined) token = checkToken(o.token.trim(), "the token option");
  else if (o.tokenFile !== undefined) tokenFile = o.tokenFile;
  else if (env.BRB_TOKEN) token = checkToken(env.BRB_TOKEN.trim(), "BRB_TOKEN");
  else if (env.BRB_TOKEN_FILE) tokenFile = env.BRB_TOKEN_FILE;
  if (tokenFile !== null) token = readTokenFile(tokenFile);

  const workerId = o.workerId ?? defaultWorkerId();
  if (workerId.length < 1 || workerId.length > 128 || /[\x00-\x1f\x7f-\x9f]/.test(workerId)) {
    throw configError("workerId must be 1 to 128 characters, none of them control characters");
  }
  const policy = o.policy ?? "keep_last_known";
  if (!POLICIES.includes(policy)) throw configError(`policy must be one of ${POLICIES.join(", ")}, not ${JSON.stringify(policy)}`);
  const transport = o.transport ?? "auto";
  if (!TRANSPORTS.includes(transport)) {
    throw configError(`transport must be one of ${TRANSPORTS.join(", ")}, not ${JSON.stringify(transport)}`);
  }
  const maxConcurrency = num("maxConcurrency", o.maxConcurrency, 1, 1, 100_000);
  if (!Number.isInteger(maxConcurrency)) throw configError("maxConcurrency must be a whole number");

  const caFile = o.caFile ?? env.BRB_CA_FILE ?? null;
  const certFile = o.clientCert ?? env.BRB_CLIENT_CERT ?? null;
  const keyFile = o.clientKey ?? env.BRB_CLIENT_KEY ?? null;
  if ((certFile === null) !== (keyFile === null)) {
    throw configError("a client certificate needs both the certificate and the key (clientCert and clientKey)");
  }
  const tls = tlsMaterial(caFile, certFile, keyFile);

  const level = o.logLevel ?? (env.BRB_LOG_LEVEL as LogLevel | undefined) ?? "info";
  if (!LEVELS.includes(level)) throw configError(`logLevel must be one of ${LEVELS.join(", ")}`);
  const logger = o.logger === undefined ? stderrLogger(level) : o.logger;

  const backoffBaseMs = num("backoffBaseMs", o.backoffBaseMs, 1000, 1);
  return {
    targets,
    switch: sw,
    token,
    tokenFile,
    workerId,
    policy,
    graceMs: num("graceMs", o.graceMs, 10_000, 0),
    maxConcurrency,
    reportIntervalMs: num("reportIntervalMs", o.reportIntervalMs, 5000, 100),
    reports: o.reports ?? true,
    samples: o.samples ?? true,
    transport,
    backoffBaseMs,
    backoffCapMs: num("backoffCapMs", o.backoffCapMs, Math.max(30_000, backoffBaseMs), backoffBaseMs),
    idleTimeoutMs: num("idleTimeoutMs", o.idleTimeoutMs, 45_000, 500),
    answerTimeoutMs: num("answerTimeoutMs", o.answerTimeoutMs, 10_000, 100),
    longPollSpellMs: num("longPollSpellMs", o.longPollSpellMs, 300_000, 0),
    tls,
    logger,
  };
}
