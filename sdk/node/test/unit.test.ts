// The I/O-free parts: SSE parser, HTTP/1.1 codec, ramp, backoff, option checks.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { after, describe, test } from "node:test";
import { ChunkedDecoder, HttpProtocolError, parseHead, retryAfterMs } from "../src/http1.js";
import { FrameMemo, SseLineTooLong, SseParser, type SseEvent } from "../src/sse.js";
import { backoffMs, BrbError, Gate, parseRamp, rampFraction } from "../src/index.js";
import { resolveConfig } from "../src/config.js";

const STREAM =
  "retry: 1000\r\n\r\n: keep-alive\n\nevent: switch\nid: 7\ndata: {\"who\":\"zoë ☃ 🚀\"}\n\n" +
  "event: resync\ndata: {\"after\":1,\n ignored: a field named \" ignored\"\ndata:\"current\":9}\r\r" +
  "data: no type\nid: bad\0id\n\nevent: empty\n\n";

function parseAll(chunks: Uint8Array[]): SseEvent[] {
  const p = new SseParser();
  const out: SseEvent[] = [];
  for (const c of chunks) p.feed(c, 0, c.length, { onSseEvent: (e) => out.push(e) });
  return out;
}

describe("SSE parser", () => {
  const whole = Buffer.from(STREAM, "utf8");
  const expected: SseEvent[] = [
    { event: "switch", id: "7", data: '{"who":"zoë ☃ 🚀"}' },
    { event: "resync", id: "7", data: '{"after":1,\n"current":9}' },
    { event: "message", id: "7", data: "no type" },
  ];

  test("the events of a stream, whatever the lines end with", () => {
    assert.deepEqual(parseAll([whole]), expected);
  });

  test("split at every byte (inside UTF-8 sequences and CRLF pairs) gives the same events", () => {
    for (let i = 1; i < whole.length; i++) {
      assert.deepEqual(parseAll([whole.subarray(0, i), whole.subarray(i)]), expected, `split at ${i}`);
    }
    assert.deepEqual(
      parseAll([...whole].map((b) => Uint8Array.of(b))),
      expected,
    );
  });

  test("a line longer than 1 MiB is an error, not a buffer without bound", () => {
    const p = new SseParser();
    const big = Buffer.alloc(600_000, 0x61);
    const none = { onSseEvent: () => {} };
    p.feed(big, 0, big.length, none);
    assert.throws(() => p.feed(big, 0, big.length, none), SseLineTooLong);
  });
});

describe("shared decoding of a frame (FrameMemo)", () => {
  // A press reaches every gate of a process with the same bytes.
  const FRAME = Buffer.from('event: switch\nid: 7\ndata: {"a":1}\n\n');
  const feed = (m: FrameMemo, p: SseParser, b: Uint8Array, s = 0, e = b.length): SseEvent[] => {
    const out: SseEvent[] = [];
    m.feed(p, b, s, e, { onSseEvent: (ev) => out.push(ev) });
    return out;
  };

  test("parsers given the same frame share its events; each keeps the id it set", () => {
    const m = new FrameMemo();
    const a = new SseParser();
    const b = new SseParser();
    const ea = feed(m, a, FRAME);
    // Equal bytes at an offset of another buffer (a read buffer holds more than the frame).
    const other = Buffer.concat([Buffer.from("xx"), FRAME, Buffer.from("yy")]);
    const eb = feed(m, b, other, 2, 2 + FRAME.length);
    assert.deepEqual(ea, [{ event: "switch", id: "7", data: '{"a":1}' }]);
    assert.equal(eb[0], ea[0], "the second parser is answered with the same event object");
    assert.ok(b.idle);
    assert.deepEqual(feed(m, b, Buffer.from("data: next\n\n")), [{ event: "message", id: "7", data: "next" }]);
  });

  test("a parser in the middle of an event decodes the frame on its own", () => {
    const m = new FrameMemo();
    feed(m, new SseParser(), FRAME);
    const b = new SseParser();
    assert.deepEqual(feed(m, b, Buffer.from("data: before\n")), []);
    assert.ok(!b.idle);
    assert.deepEqual(feed(m, b, FRAME), [{ event: "switch", id: "7", data: 'before\n{"a":1}' }]);
  });

  test("a frame without an id of its own, half a frame and a retry are not shared", () => {
    const m = new FrameMemo();
    const noId = Buffer.from("event: switch\ndata: x\n\n");
    const a = new SseParser();
    const b = new SseParser();
    feed(m, a, Buffer.from("id: 3\n\n"));
    feed(m, b, Buffer.from("id: 9\n\n"));
    assert.deepEqual(feed(m, a, noId), [{ event: "switch", id: "3", data: "x" }]);
    assert.deepEqual(feed(m, b, noId), [{ event: "switch", id: "9", data: "x" }]);

    const c = new SseParser();
    assert.deepEqual(feed(m, c, FRAME, 0, 10), []);
    assert.deepEqual(feed(m, c, FRAME, 10), [{ event: "switch", id: "7", data: '{"a":1}' }]);
    const d = new SseParser();
    assert.deepEqual(feed(m, d, FRAME, 0, 10), [], "half a frame is never answered from the memo");
    assert.ok(!d.idle);

    const retry = Buffer.from("retry: 50\nid: 8\ndata: r\n\n");
    const e = new SseParser();
    feed(m, e, retry);
    assert.equal(e.retryMs, 50);
    const f = new SseParser();
    feed(m, f, retry);
    assert.equal(f.retryMs, 50, "each parser reads its own retry");
  });
});

describe("HTTP/1.1 codec", () => {
  test("a head is read once complete", () => {
    const raw = Buffer.from("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nRetry-After:  3 \r\n\r\n{}");
    assert.equal(parseHead(raw.subarray(0, 20)), null);
    const h = parseHead(raw)!;
    assert.equal(h.status, 401);
    assert.equal(h.headers.get("content-type"), "application/json");
    assert.equal(h.headers.get("retry-after"), "3");
    assert.equal(raw.subarray(h.bodyStart).toString(), "{}");
    assert.throws(() => parseHead(Buffer.from("SSH-2.0-OpenSSH\r\n\r\n")), HttpProtocolError);
    assert.throws(() => parseHead(Buffer.alloc(20_000, 0x41)), /longer than/);
  });

  test("a chunked body decodes the same split at every byte; a bad size is an error", () => {
    const body = Buffer.from("5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\nleftover");
    const decode = (parts: Buffer[]) => {
      const d = new ChunkedDecoder();
      let out = "";
      const sink = { onChunkData: (b: Uint8Array, s: number, e: number) => (out += Buffer.from(b.subarray(s, e)).toString()) };
      for (const p of parts) d.feed(p, 0, p.length, sink);
      return [out, d.done];
    };
    assert.deepEqual(decode([body]), ["hello world!", true]);
    for (let i = 1; i < body.length; i++) {
      assert.deepEqual(decode([body.subarray(0, i), body.subarray(i)]), ["hello world!", true], `split at ${i}`);
    }
    assert.throws(() => decode([Buffer.from("zz\r\n")]), HttpProtocolError);
    assert.throws(() => decode([Buffer.from("2\r\nabX")]), HttpProtocolError);
  });

  test("Retry-After in seconds or as a date", () => {
    assert.equal(retryAfterMs("120"), 120_000);
    assert.equal(retryAfterMs("Thu, 01 Jan 1970 00:00:10 GMT", 4000), 6000);
    assert.equal(retryAfterMs("soon"), null);
    assert.equal(retryAfterMs(undefined), null);
  });
});

describe("ramp and backoff", () => {
  const t0 = Date.parse("2023-11-14T22:13:20Z");
  test("steps hold each fraction for an equal share (as brb_api::Ramp)", () => {
    const r = parseRamp({ started_at: "2023-11-14T22:13:20.000000Z", duration_secs: 90, kind: "steps", fractions: [0.1, 0.25, 0.5, 1.0] })!;
    const at = (s: number) => rampFraction(r, t0 + s * 1000);
    assert.deepEqual([at(-5), at(0), at(29.9), at(30), at(60), at(89.9), at(90), at(1e6)], [0.1, 0.1, 0.1, 0.25, 0.5, 0.5, 1, 1]);
  });

  test("linear climbs straight", () => {
    const r = parseRamp({ started_at: "2023-11-14T22:13:20Z", duration_secs: 100, kind: "linear", from: 0.2 })!;
    assert.ok(Math.abs(rampFraction(r, t0) - 0.2) < 1e-9);
    assert.ok(Math.abs(rampFraction(r, t0 + 50_000) - 0.6) < 1e-9);
    assert.equal(rampFraction(r, t0 + 100_000), 1);
  });

  test("a ramp that is not one is refused", () => {
    assert.equal(parseRamp(null), null);
    for (const bad of [
      { started_at: "yesterday", duration_secs: 1, kind: "linear", from: 0.5 },
      { started_at: "2023-11-14T22:13:20Z", duration_secs: 1, kind: "linear", from: 0 },
      { started_at: "2023-11-14T22:13:20Z", duration_secs: 1, kind: "steps", fractions: [0.5, "1"] },
      { started_at: "2023-11-14T22:13:20Z", duration_secs: 1, kind: "wave" },
    ]) {
      assert.throws(() => parseRamp(bad), TypeError, JSON.stringify(bad));
    }
  });

  test("full jitter: spread within the bound, capped", () => {
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) {
      const d = backoffMs(100, 30_000, 0);
      assert.ok(d >= 0 && d <= 100);
      seen.add(Math.round(d));
    }
    assert.ok(seen.size > 50, "delays are spread");
    for (const a of [10, 20, 1000]) assert.ok(backoffMs(100, 30_000, a, () => 1) <= 30_000);
    assert.equal(backoffMs(100, 30_000, 3, () => 1), 800);
  });
});

describe("options", () => {
  const dir = mkdtempSync(join(tmpdir(), "brb-node-opts-"));
  const tokenFile = join(dir, "token");
  writeFileSync(tokenFile, "brb_file_token\n");
  after(() => rmSync(dir, { recursive: true, force: true }));
  const cfg = (o: Parameters<typeof resolveConfig>[0]) => resolveConfig({ logger: null, ...o });
  const refused = (o: Parameters<typeof resolveConfig>[0], re: RegExp) =>
    assert.throws(() => cfg(o), (e: unknown) => e instanceof BrbError && e.code === "config" && re.test(e.message));

  test("plain HTTP only to loopback unless allowed", () => {
    for (const ok of ["http://127.0.0.1:7070", "http://localhost:7070/x", "http://[::1]:7070", "https://brb.example.com", "https://10.0.0.5:7070"]) {
      cfg({ urls: ok, env: {} });
    }
    for (const bad of ["http://10.0.0.5:7070", "http://brb.example.com", "http://127.0.0.1.evil.example"]) {
      refused({ urls: bad, env: {} }, /refusing plain HTTP/);
    }
    cfg({ urls: "http://10.0.0.5:7070", allowInsecureHttp: true, env: {} });
    cfg({ urls: "http://10.0.0.5:7070", env: { BRB_INSECURE_HTTP: "1" } });
    refused({ urls: "ftp://x", env: {} }, /not an http/);
    refused({ urls: "http://user:pw@127.0.0.1", env: {} }, /credentials/);
    refused({ urls: [], env: {} }, /no control-plane URL/);
  });

  test("the token: option, then file, then BRB_TOKEN, then BRB_TOKEN_FILE", () => {
    assert.equal(cfg({ token: "brb_opt", env: { BRB_TOKEN: "brb_env" } }).token, "brb_opt");
    assert.equal(cfg({ tokenFile, env: { BRB_TOKEN: "brb_env" } }).token, "brb_file_token");
    assert.equal(cfg({ env: { BRB_TOKEN: "brb_env", BRB_TOKEN_FILE: tokenFile } }).token, "brb_env");
    assert.equal(cfg({ env: { BRB_TOKEN_FILE: tokenFile } }).token, "brb_file_token");
    assert.equal(cfg({ env: {} }).token, null);
    refused({ token: "brb_a\r\nx-evil: 1", env: {} }, /control character/);
    refused({ tokenFile: join(dir, "missing"), env: {} }, /token file .*missing/);
    refused({ token: "a", tokenFile, env: {} }, /not both/);
  });

  test("TLS files: a missing CA names its path, half an identity is refused", () => {
    refused({ caFile: "/nonexistent/ca.pem", env: {} }, /\/nonexistent\/ca\.pem/);
    refused({ caFile: tokenFile, env: {} }, /no PEM certificate/);
    refused({ clientCert: tokenFile, env: {} }, /both the certificate and the key/);
    refused({ env: { BRB_CLIENT_KEY: tokenFile } }, /both the certificate and the key/);
  });

  test("numbers and names are checked", () => {
    refused({ maxConcurrency: 0, env: {} }, /maxConcurrency/);
    refused({ maxConcurrency: 1.5, env: {} }, /whole number/);
    refused({ policy: "sometimes" as never, env: {} }, /policy/);
    refused({ transport: "carrier-pigeon" as never, env: {} }, /transport/);
    refused({ workerId: "a\nb", env: {} }, /workerId/);
    assert.throws(() => new Gate({ maxConcurrency: 0, logger: null, env: {} }), /maxConcurrency/);
  });

  test("the token does not show when a gate is inspected or serialized", async () => {
    const g = new Gate({ urls: "http://127.0.0.1:1", token: "brb_x_SECRETVALUE", logger: null, env: {} });
    try {
      assert.ok(!inspect(g, { depth: 10, showHidden: true }).includes("SECRETVALUE"));
      assert.ok(!JSON.stringify(g).includes("SECRETVALUE"));
    } finally {
      await g.close();
    }
  });
});
