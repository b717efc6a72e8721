// Connections to the control plane: the event stream on a socket of its own (read with the
// codec in http1.ts), and short requests (reports, long-polls, samples) through node:http's
// keep-alive pools, shared by every gate of the process that uses the same TLS material.
//
// Why node:http(s) and not the built-in fetch: a private CA and a client certificate are
// per-connection TLS options, which Node's fetch only takes through the `undici` package's
// Agent (a runtime dependency); node:https takes them as they are, and the stream's own socket
// is a plain `tls.connect`. Redirects are never followed (node:http does not, and the stream
// treats a 3xx as a refusal): the token must not go to a host nobody configured.

import http from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import { ApiError, BrbError, duration, errorFromAnswer } from "./errors.js";
import { ChunkedDecoder, HttpProtocolError, parseHead, retryAfterMs, type ChunkSink, type ResponseHead } from "./http1.js";
import { FrameMemo, SseParser, type SseEvent, type SseSink } from "./sse.js";
import type { Target, TlsMaterial } from "./config.js";

export const USER_AGENT = "brb-node/0.1.0";
/** Longest error or JSON body read. */
const MAX_BODY = 1 << 20;
/** Longest error body read on the event-stream connection. */
const MAX_ERROR_BODY = 64 * 1024;

/** Percent-encodes a path segment. */
export function enc(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Adds a hint to TLS failures a person can act on. */
export function describeSocketError(e: NodeJS.ErrnoException): string {
  const code = e.code ?? "";
  let s = e.message;
  if (
    [
      "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
      "SELF_SIGNED_CERT_IN_CHAIN",
      "DEPTH_ZERO_SELF_SIGNED_CERT",
      "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
      "UNABLE_TO_GET_ISSUER_CERT",
      "CERT_UNTRUSTED",
    ].includes(code)
  ) {
    s += " (the server's TLS certificate is not trusted: give the CA that signed it with caFile / BRB_CA_FILE)";
  } else if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    s += " (the server's certificate does not name this host: use the name it was issued for)";
  } else if (/certificate required|alert number 116|handshake failure/i.test(s)) {
    s += " (the server requires a client certificate: clientCert/clientKey, or BRB_CLIENT_CERT/BRB_CLIENT_KEY)";
  }
  return s;
}

/** Keep-alive pools for one set of TLS material (created as first needed). */
export class Pools {
  readonly material: TlsMaterial;
  users = 0;
  #agents = new Map<string, http.Agent>();

  constructor(material: TlsMaterial) {
    this.material = material;
  }

  /**
   * `short`: reports and samples, a bounded pool. `poll`: long-polls, each holding a connection
   * up to the poll's wait, so no bound on their number.
   */
  agent(secure: boolean, kind: "short" | "poll"): http.Agent {
    const k = `${secure ? "https" : "http"}:${kind}`;
    let a = this.#agents.get(k);
    if (!a) {
      // The server closes an idle keep-alive connection after its header-read timeout (10 s by
      // default): drop idle ones first rather than race it.
      const opts: https.AgentOptions = {
        keepAlive: true,
        timeout: 8000,
        scheduling: "lifo",
        maxSockets: kind === "short" ? 32 : Infinity,
        maxFreeSockets: kind === "short" ? 32 : 256,
      };
      if (secure) {
        a = new https.Agent({ ...opts, ca: this.material.ca, cert: this.material.cert, key: this.material.key });
      } else {
        a = new http.Agent(opts);
      }
      this.#agents.set(k, a);
    }
    return a;
  }

  /** Ends every pooled connection (idle ones are unref'd by node:http, but a closed gate leaves none). */
  destroy(): void {
    for (const a of this.#agents.values()) a.destroy();
    this.#agents.clear();
  }
}

const pools = new Map<string, Pools>();

/** The pools for this TLS material, shared by every gate using it (counted; see `releasePools`). */
export function acquirePools(material: TlsMaterial): Pools {
  let p = pools.get(material.key_id);
  if (!p) {
    p = new Pools(material);
    pools.set(material.key_id, p);
  }
  p.users++;
  return p;
}

export function releasePools(p: Pools): void {
  p.users--;
  if (p.users > 0) return;
  if (pools.get(p.material.key_id) === p) pools.delete(p.material.key_id);
  p.destroy();
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** An in-flight request: its answer, and a way to cut it (close, a deadline). */
export interface Pending {
  answer: Promise<Answer>;
  abort(reason: BrbError): void;
}

/**
 * One request through a pool. Rejects with BrbError `unreachable` when no answer came (refused,
 * reset, `timeoutMs` elapsed) and `protocol` for a body too large; any status resolves.
 */
export function request(
  pools: Pools,
  target: Target,
  method: "GET" | "POST",
  path: string,
  token: string | null,
  body: unknown,
  timeoutMs: number,
  kind: "short" | "poll",
): Pending {
  let req: http.ClientRequest | null = null;
  let settle: ((e: BrbError) => void) | null = null;
  const answer = new Promise<Answer>((resolve, reject) => {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { "user-agent": USER_AGENT, accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (payload) {
      headers["content-type"] = "application/json";
      headers["content-length"] = payload.length;
    }
    let done = false;
    let retried = false;
    const fail = (e: BrbError) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req?.destroy();
      reject(e);
    };
    settle = fail;
    const timer = setTimeout(
      () => fail(new BrbError("unreachable", `${target.base}: no answer within ${duration(timeoutMs)}`)),
      timeoutMs,
    );
    const send = () => {
      const mod = target.secure ? https : http;
      const r = mod.request({
        host: target.host,
        port: target.port,
        method,
        path: target.prefix + path,
        headers,
        agent: pools.agent(target.secure, kind),
        servername: target.secure && net.isIP(target.host) === 0 ? target.host : undefined,
      });
      req = r;
      r.on("error", (e: NodeJS.ErrnoException) => {
        // A kept-alive connection the server closed just as we reused it: once more, fresh.
        if (!done && !retried && r.reusedSocket && e.code === "ECONNRESET") {
          retried = true;
          send();
          return;
        }
        fail(new BrbError("unreachable", `${target.base}: ${describeSocketError(e)}`));
      });
      r.on("response", (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY) {
            fail(new BrbError("protocol", `${target.base}: answer body larger than ${MAX_BODY} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on("end", () => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        });
        res.on("error", (e: NodeJS.ErrnoException) => fail(new BrbError("unreachable", `${target.base}: ${describeSocketError(e)}`)));
        res.on("aborted", () => fail(new BrbError("unreachable", `${target.base}: the answer was cut off`)));
      });
      r.end(payload ?? undefined);
    };
    send();
  });
  return {
    answer,
    abort(reason: BrbError) {
      settle?.(reason);
    },
  };
}

/** A JSON answer's body, or the error its status stands for. */
export function decodeJson(target: Target, a: Answer): unknown {
  if (a.status >= 200 && a.status < 300) {
    try {
      return JSON.parse(a.body.toString("utf8"));
    } catch (e) {
      throw new BrbError("protocol", `${target.base}: HTTP ${a.status} with an unreadable body: ${(e as Error).message}`);
    }
  }
  const ra = retryAfterMs(headerString(a.headers["retry-after"]));
  throw errorFromAnswer(target.base, a.status, { get: (n) => headerString(a.headers[n]) }, a.body, ra);
}

const headerString = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[v.length - 1] : v);

/** What an event stream tells whoever opened it. Exactly one `onStreamEnd` per stream. */
export interface StreamHandler {
  /** The server answered 200 with an event stream. */
  onStreamOpen(): void;
  /** Body bytes arrived (a keep-alive comment counts): the connection is alive. */
  onStreamBytes(): void;
  onStreamEvent(ev: SseEvent): void;
  /** The stream is over: `err` null when the server ended it cleanly. */
  onStreamEnd(err: BrbError | null): void;
}

const enum Phase {
  Connecting,
  Head,
  Stream,
  ErrorBody,
  Done,
}

// One read buffer for every plain-TCP stream of the process: `onread` hands each read to its
// callback synchronously, and nothing keeps a view of it past the call (the SSE parser copies
// a partial line), so no stream needs a buffer of its own.
const SHARED_READ = Buffer.allocUnsafe(64 * 1024);
// The decoding of the last frame, for every stream of the process (see FrameMemo).
const FRAMES = new FrameMemo();

// The stream a socket carries. The socket's listeners are functions shared by every stream of
// the process, which find their stream through the socket they are called on, instead of a
// closure of each kind per stream (measured: BENCHMARKS.md, "Node memory per watcher").
const STREAM = Symbol("brb.eventStream");
type StreamSocket = net.Socket & { [STREAM]?: EventStream };
let onSocketConnect: (this: StreamSocket) => void;
let onSocketData: (this: StreamSocket, b: Buffer) => void;
let onSocketRead: (this: StreamSocket, n: number, b: Uint8Array) => boolean;
let onSocketError: (this: StreamSocket, e: NodeJS.ErrnoException) => void;
let onSocketEof: (this: StreamSocket) => void;

/**
 * An event stream on a socket of its own: writes the GET, reads the head, then feeds the body
 * (chunked or until close) to the SSE parser. Deadlines are the owner's: it calls `destroy`.
 */
export class EventStream implements ChunkSink, SseSink {
  readonly #handler: StreamHandler;
  readonly #target: Target;
  #socket: net.Socket;
  /** The request's text until it is sent. */
  #request: string;
  #phase = Phase.Connecting;
  /** Head bytes until the head is complete, then (on an error answer) the error body. */
  #buf: Buffer | null = null;
  #head: ResponseHead | null = null;
  #chunked: ChunkedDecoder | null = null;
  #left = -1; // content-length left, -1: until close / chunked
  #sse: SseParser | null = null;

  static {
    onSocketConnect = function () {
      const s = this[STREAM];
      if (s) s.#connected();
    };
    onSocketData = function (b) {
      const s = this[STREAM];
      if (s) s.#bytes(b, 0, b.length);
    };
    // node:net calls `onread.callback` on the socket (`socket[kBufferCb](n, buf)`).
    onSocketRead = function (n, b) {
      const s = this[STREAM];
      if (s) s.#bytes(b, 0, n);
      return true;
    };
    onSocketError = function (e) {
      const s = this[STREAM];
      if (!s) return;
      const what = s.#phase === Phase.Connecting ? "connecting" : "event stream broke";
      s.#end(new BrbError("unreachable", `${s.#target.base}: ${what}: ${describeSocketError(e)}`));
    };
    onSocketEof = function () {
      const s = this[STREAM];
      if (s) s.#eof();
    };
  }

  constructor(
    target: Target,
    tlsMaterial: TlsMaterial,
    path: string,
    token: string | null,
    lastEventId: string | null,
    handler: StreamHandler,
  ) {
    this.#handler = handler;
    this.#target = target;
    this.#socket = this.#open(target, tlsMaterial);
    this.#request =
      `GET ${target.prefix}${path} HTTP/1.1\r\nhost: ${target.authority}\r\nuser-agent: ${USER_AGENT}\r\n` +
      `accept: text/event-stream\r\ncache-control: no-cache\r\n`;
    if (token) this.#request += `authorization: Bearer ${token}\r\n`;
    if (lastEventId !== null) this.#request += `last-event-id: ${lastEventId}\r\n`;
    this.#request += "\r\n";
  }

  #open(target: Target, tlsMaterial: TlsMaterial): net.Socket {
    let socket: StreamSocket;
    if (target.secure) {
      const s = tls.connect({
        host: target.host,
        port: target.port,
        servername: net.isIP(target.host) === 0 ? target.host : undefined,
        ca: tlsMaterial.ca,
        cert: tlsMaterial.cert,
        key: tlsMaterial.key,
        ALPNProtocols: ["http/1.1"],
      });
      s.on("data", onSocketData);
      // `on`, not `once`: the event comes once per socket, and `once` wraps each listener.
      s.on("secureConnect", onSocketConnect);
      socket = s;
    } else {
      const s = net.connect({
        host: target.host,
        port: target.port,
        onread: { buffer: SHARED_READ, callback: onSocketRead as (n: number, b: Uint8Array) => boolean },
      });
      s.on("connect", onSocketConnect);
      socket = s;
    }
    // Set before any event: node:net emits connect, data and errors asynchronously.
    socket[STREAM] = this;
    socket.on("error", onSocketError);
    socket.on("end", onSocketEof);
    socket.on("close", onSocketEof);
    return socket;
  }

  /** Whether the server has answered with a stream. */
  get streaming(): boolean {
    return this.#phase === Phase.Stream;
  }

  get answered(): boolean {
    return this.#phase !== Phase.Connecting && this.#phase !== Phase.Head;
  }

  destroy(reason: BrbError): void {
    this.#end(reason);
  }

  #connected(): void {
    if (this.#phase !== Phase.Connecting) return;
    this.#phase = Phase.Head;
    this.#socket.setNoDelay(true);
    // A peer that vanished without a FIN is noticed even between keep-alives.
    this.#socket.setKeepAlive(true, 15_000);
    this.#socket.write(this.#request);
    this.#request = "";
  }

  #bytes(b: Uint8Array, start: number, end: number): void {
    try {
      switch (this.#phase) {
        case Phase.Head: {
          const piece = Buffer.from(b.subarray(start, end));
          this.#buf = this.#buf ? Buffer.concat([this.#buf, piece]) : piece;
          const head = parseHead(this.#buf);
          if (!head) return;
          const rest = this.#buf.subarray(head.bodyStart);
          this.#buf = null;
          this.#answer(head);
          if (rest.length > 0 && (this.#phase as Phase) !== Phase.Done) this.#body(rest, 0, rest.length);
          return;
        }
        case Phase.Stream:
        case Phase.ErrorBody:
          this.#body(b, start, end);
          return;
        default:
          return;
      }
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      this.#end(new BrbError("protocol", `${this.#target.base}: ${msg}`));
    }
  }

  #answer(head: ResponseHead): void {
    const te = head.headers.get("transfer-encoding");
    if (te !== undefined) {
      if (!/^chunked$/i.test(te)) throw new HttpProtocolError(`unsupported Transfer-Encoding ${JSON.stringify(te)}`);
      this.#chunked = new ChunkedDecoder();
    } else {
      const cl = head.headers.get("content-length");
      if (cl !== undefined) {
        if (!/^\d{1,12}$/.test(cl)) throw new HttpProtocolError(`bad Content-Length ${JSON.stringify(cl)}`);
        this.#left = Number(cl);
      }
    }
    const ct = head.headers.get("content-type") ?? "";
    if (head.status === 200 && /^text\/event-stream\b/i.test(ct)) {
      this.#phase = Phase.Stream;
      this.#sse = new SseParser();
      this.#handler.onStreamOpen();
      return;
    }
    if (head.status === 200) {
      this.#end(
        new BrbError(
          "protocol",
          `${this.#target.base}: answered 200 with ${ct ? `Content-Type ${JSON.stringify(ct.slice(0, 60))}` : "no Content-Type"}, not an event stream (a proxy in the way?)`,
        ),
      );
      return;
    }
    // Kept only for an error answer (a stream's head is not needed again).
    this.#head = head;
    this.#phase = Phase.ErrorBody;
    this.#buf = Buffer.alloc(0);
    if (this.#left === 0) this.#refused();
  }

  #body(b: Uint8Array, start: number, end: number): void {
    if (this.#left >= 0) {
      const n = Math.min(end - start, this.#left);
      this.#left -= n;
      end = start + n;
    }
    if (this.#chunked) {
      this.#chunked.feed(b, start, end, this);
      if (this.#chunked.done) this.#eof();
    } else {
      this.#payload(b, start, end);
      if (this.#left === 0) this.#eof();
    }
  }

  #payload(b: Uint8Array, start: number, end: number): void {
    if (this.#phase === Phase.Stream) {
      if (end > start) this.#handler.onStreamBytes();
      FRAMES.feed(this.#sse!, b, start, end, this);
    } else if (this.#phase === Phase.ErrorBody) {
      const have = this.#buf!.length;
      if (have < MAX_ERROR_BODY) {
        this.#buf = Buffer.concat([this.#buf!, Buffer.from(b.subarray(start, Math.min(end, start + MAX_ERROR_BODY - have)))]);
      }
    }
  }

  /** @internal The chunked decoder's payload. */
  onChunkData(b: Uint8Array, s: number, e: number): void {
    this.#payload(b, s, e);
  }

  /** @internal The SSE parser's events. */
  onSseEvent(ev: SseEvent): void {
    if (this.#phase === Phase.Stream) this.#handler.onStreamEvent(ev);
  }

  /** The connection (or the body) ended. */
  #eof(): void {
    switch (this.#phase) {
      case Phase.Connecting:
        this.#end(new BrbError("unreachable", `${this.#target.base}: connection closed before it was established`));
        return;
      case Phase.Head:
        this.#end(new BrbError("unreachable", `${this.#target.base}: connection closed before an answer`));
        return;
      case Phase.ErrorBody:
        this.#refused();
        return;
      case Phase.Stream:
        this.#end(null);
        return;
      default:
        return;
    }
  }

  #refused(): void {
    const head = this.#head!;
    const ra = retryAfterMs(head.headers.get("retry-after"));
    this.#end(errorFromAnswer(this.#target.base, head.status, { get: (n) => head.headers.get(n) }, this.#buf ?? Buffer.alloc(0), ra));
  }

  #end(err: BrbError | null): void {
    if (this.#phase === Phase.Done) return;
    this.#phase = Phase.Done;
    this.#buf = null;
    this.#sse = null;
    this.#chunked = null;
    this.#socket.destroy();
    this.#handler.onStreamEnd(err);
  }
}

export { ApiError };
