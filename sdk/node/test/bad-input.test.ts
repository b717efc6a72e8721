// Bad input: small servers of the test's own that misbehave on purpose (garbage events, refusals,
// silence, redirects). The gate must not crash, must not change its state on garbage, must say
// what happened in a clear log line, and must retry within bounds.

import assert from "node:assert/strict";
import net from "node:net";
import { after, describe, test } from "node:test";
import { Gate, type GateOptions } from "../src/index.js";
import { Logs, until } from "./support.js";

const SWITCH = (state: string, version: number) =>
  JSON.stringify({
    name: "workers",
    description: "Pause all background workers",
    primary: true,
    state,
    version,
    changed_at: "2026-01-01T00:00:00Z",
    changed_by: "test",
    source: "api",
    reason: null,
    ramp: null,
  });

const STREAM_HEAD = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
const chunk = (s: string) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;

interface Conn {
  at: number;
  head: string;
  socket: net.Socket;
}

/** A server that hands each request (its head read) to `handle`; records every connection. */
class BadServer {
  conns: Conn[] = [];
  #server: net.Server;
  readonly port: number;

  private constructor(server: net.Server, port: number) {
    this.#server = server;
    this.port = port;
  }

  static async start(handle: (c: Conn, n: number) => void, host = "127.0.0.1"): Promise<BadServer> {
    let s: BadServer | null = null;
    const server = net.createServer((socket) => {
      socket.on("error", () => {});
      // Each request head on the connection (keep-alive reuses it), bodies skipped.
      let buf = "";
      socket.on("data", (b) => {
        buf += b.toString("latin1");
        for (let end = buf.indexOf("\r\n\r\n"); end >= 0; end = buf.indexOf("\r\n\r\n")) {
          const head = buf.slice(0, end + 4);
          const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
          if (buf.length < end + 4 + len) return;
          buf = buf.slice(end + 4 + len);
          const c = { at: Date.now(), head, socket };
          s!.conns.push(c);
          handle(c, s!.conns.length);
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, host, () => r()));
    s = new BadServer(server, (server.address() as net.AddressInfo).port);
    return s;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  streams(): Conn[] {
    return this.conns.filter((c) => c.head.startsWith("GET /api/v1/switches/workers/events"));
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

describe("bad input", () => {
  const gates: Gate[] = [];
  const servers: BadServer[] = [];
  const gate = (o: GateOptions) => {
    const g = new Gate({ token: "brb_test_secret", backoffBaseMs: 20, backoffCapMs: 50, reports: false, samples: false, ...o });
    gates.push(g);
    return g;
  };
  const server = async (h: (c: Conn, n: number) => void, host?: string) => {
    const s = await BadServer.start(h, host);
    servers.push(s);
    return s;
  };
  after(async () => {
    await Promise.all(gates.map((g) => g.close()));
    await Promise.all(servers.map((s) => s.stop()));
  });

  test("garbage events change nothing and are named in the log; the stream goes on", async () => {
    const logs = new Logs();
    let sock: net.Socket | null = null;
    const s = await server((c) => {
      sock = c.socket;
      c.socket.write(STREAM_HEAD + chunk(`retry: 1000\n\nevent: switch\nid: 1\ndata: ${SWITCH("running", 1)}\n\n`));
    });
    const g = gate({ urls: [s.url], logger: logs });
    await until("running", () => g.isOpen());
    const garbage = [
      "event: switch\ndata: {not json\n\n",
      `event: switch\ndata: ${SWITCH("stopped", 2)}\n\n`,
      `event: switch\ndata: ${SWITCH("paused", 3).replace('"version":3', '"version":"3"')}\n\n`,
      `event: switch\ndata: ${SWITCH("paused", 4).replace('"workers"', '"other"')}\n\n`,
      `event: switch\ndata: ${SWITCH("paused", 5).replace('"ramp":null', '"ramp":{"kind":"wave"}')}\n\n`,
      "event: switch\ndata: [1,2,3]\n\n",
      "event: surprise\ndata: {}\n\n",
      "data: no event name\n\n",
    ];
    for (const gb of garbage) sock!.write(chunk(gb));
    sock!.write(chunk(`event: switch\nid: 6\ndata: ${SWITCH("paused", 6)}\n\n`));
    await until("the valid pause after the garbage", () => g.version === 6);
    assert.equal(g.isOpen(), false);
    assert.equal(g.connects, 1, "garbage did not cost the connection");
    const warns = logs.lines.filter((l) => l.startsWith("WARN "));
    assert.equal(warns.filter((l) => /ignoring an unreadable switch/.test(l)).length, 6, logs.text());
    assert.ok(logs.has(/WARN .*unknown type "surprise"/), logs.text());
  });

  test("a truncated event is dropped with its connection; the gate reconnects", async () => {
    const logs = new Logs();
    const s = await server((c, n) => {
      if (n === 1) {
        // The state, then half an event, then the connection ends.
        c.socket.end(
          STREAM_HEAD +
            chunk(`event: switch\nid: 1\ndata: ${SWITCH("running", 1)}\n\n`) +
            chunk(`event: switch\nid: 2\ndata: ${SWITCH("paused", 2).slice(0, 40)}`),
        );
      } else {
        c.socket.write(STREAM_HEAD + chunk(": resumed\n\n"));
      }
    });
    const g = gate({ urls: [s.url], logger: logs });
    await until("the reconnect", () => s.streams().length >= 2 && g.connects === 2);
    assert.equal(g.isOpen(), true, "the half event did not pause");
    assert.equal(g.version, 1);
    assert.equal(s.streams()[1]!.head.match(/last-event-id: (\d+)/i)?.[1], "1", "resumes from the last version applied");
  });

  test("an older state is ignored (a lagging replica) unless a resync says it is current", async () => {
    const logs = new Logs();
    const s = await server((c, n) => {
      if (n === 1) {
        c.socket.end(STREAM_HEAD + chunk(`event: switch\nid: 10\ndata: ${SWITCH("running", 10)}\n\n`) + "0\r\n\r\n");
      } else if (n === 2) {
        // A replica behind the first: its older state must not undo what the gate knows.
        c.socket.end(STREAM_HEAD + chunk(`event: switch\nid: 4\ndata: ${SWITCH("paused", 4)}\n\n`) + "0\r\n\r\n");
      } else {
        // A control plane restored from a backup: it says so, and its state is the truth.
        c.socket.write(
          STREAM_HEAD +
            chunk(`event: resync\ndata: {"after":10,"current":3,"reason":"too_far_behind"}\n\n`) +
            chunk(`event: switch\nid: 3\ndata: ${SWITCH("paused", 3)}\n\n`),
        );
      }
    });
    const g = gate({ urls: [s.url], logger: logs });
    await until("the third connection's state", () => g.version === 3, 5000);
    assert.equal(g.isOpen(), false);
    assert.ok(logs.has(/DEBUG .*ignoring version 4, older than 10/), logs.text());
    assert.ok(logs.has(/INFO .*skipped changes 10 → 3/), logs.text());
    assert.equal(s.streams()[1]!.head.match(/last-event-id: (\d+)/i)?.[1], "10");
  });

  for (const status of [401, 403]) {
    test(`${status}: a clear error and a long interval before the next try`, async () => {
      const logs = new Logs();
      const s = await server((c) => {
        const body = JSON.stringify({ error: { code: status === 401 ? "unauthorized" : "forbidden", message: "no such token" } });
        c.socket.end(`HTTP/1.1 ${status} X\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      });
      const g = gate({ urls: [s.url], logger: logs, policy: "open", graceMs: 100_000 });
      const line = await until("the error line", () => logs.lines.find((l) => /^ERROR .*refused this gate's token/.test(l)));
      assert.match(line, new RegExp(`HTTP ${status}`));
      // Half to all of the backoff cap, which is taken as at least 5 s here (the test's cap is
      // 50 ms: an unreachable server would be tried again within it).
      assert.ok(Number(/next try in ([\d.]+) s/.exec(line)?.[1]) >= 2.5, line);
      assert.equal(s.conns.length, 1);
      assert.equal(g.isOpen(), false);
      assert.ok(!logs.text().includes("brb_test_secret"));
    });
  }

  test("429 with Retry-After: the next try waits for it", async () => {
    const logs = new Logs();
    const s = await server((c, n) => {
      if (n === 1) {
        c.socket.end('HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}');
      } else {
        c.socket.write(STREAM_HEAD + chunk(`event: switch\nid: 1\ndata: ${SWITCH("running", 1)}\n\n`));
      }
    });
    const g = gate({ urls: [s.url], logger: logs });
    await until("the second try", () => g.isOpen(), 5000);
    const gap = s.conns[1]!.at - s.conns[0]!.at;
    assert.ok(gap >= 1000, `retried after ${gap} ms despite Retry-After: 1`);
    assert.ok(logs.has(/WARN .*asks to slow down/), logs.text());
  });

  test("a server that accepts and never answers: the next URL after the answer timeout", async () => {
    const logs = new Logs();
    const mute = await server(() => {});
    const good = await server((c) => c.socket.write(STREAM_HEAD + chunk(`event: switch\nid: 1\ndata: ${SWITCH("paused", 1)}\n\n`)));
    const g = new Gate({
      urls: [mute.url, good.url],
      token: "brb_test_secret",
      reports: false,
      samples: false,
      answerTimeoutMs: 300,
      logger: logs,
    });
    gates.push(g);
    await until("the state from the second URL", () => g.version === 1, 5000);
    assert.equal(g.isOpen(), false);
    // Only a lone mute server: attempts stay bounded by the timeout and the backoff.
    const logs2 = new Logs();
    const g2 = gate({ urls: [mute.url], answerTimeoutMs: 300, logger: logs2 });
    await until("the timeout line", () => logs2.has(/WARN .*no answer to the event-stream request within 300 ms/), 5000);
    assert.equal(g2.isOpen(), false);
    assert.ok(mute.streams().length <= 4, `${mute.streams().length} tries`);
  });

  test("a redirect to another host is not followed", async () => {
    const logs = new Logs();
    const elsewhere = await server(() => {}, "127.0.0.2");
    const s = await server((c) =>
      c.socket.end(`HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:${elsewhere.port}/steal\r\ncontent-length: 0\r\n\r\n`),
    );
    const g = gate({ urls: [s.url], logger: logs });
    await until("the redirect line", () => logs.has(/WARN .*HTTP 302 redirect to .*127\.0\.0\.2.* not followed/));
    await until("a few tries", () => s.conns.length >= 2, 5000);
    assert.equal(elsewhere.conns.length, 0, "the token went nowhere else");
    assert.equal(g.isOpen(), false);
  });

  test("a line longer than 1 MiB ends the connection, not the process", async () => {
    const logs = new Logs();
    const s = await server((c, n) => {
      if (n === 1) {
        c.socket.write(STREAM_HEAD + chunk(`event: switch\nid: 1\ndata: ${SWITCH("running", 1)}\n\n`));
        c.socket.write(chunk("data: " + "x".repeat(1 << 20)) + chunk("y".repeat(1024)));
      } else {
        c.socket.write(STREAM_HEAD + chunk(": ok\n\n"));
      }
    });
    const g = gate({ urls: [s.url], logger: logs });
    await until("the reconnect", () => g.connects === 2, 5000);
    assert.equal(g.isOpen(), true);
    assert.ok(logs.has(/longer than 1048576 bytes/), logs.text());
  });

  test("a stream that a buffering proxy keeps mute: dropped after the idle timeout, then long-poll", async () => {
    const logs = new Logs();
    const s = await server((c) => {
      if (c.head.startsWith("GET /api/v1/switches/workers/events")) {
        c.socket.write(STREAM_HEAD); // and then nothing, ever
        return;
      }
      const body = SWITCH("paused", 7);
      c.socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    });
    const g = gate({ urls: [s.url], logger: logs, idleTimeoutMs: 500 });
    await until("the state through long-poll", () => g.version === 7, 10_000);
    assert.equal(s.streams().length, 3);
    assert.ok(logs.has(/WARN .*answered but sent nothing for 500 ms \(a buffering proxy\?\)/), logs.text());
    assert.ok(logs.has(/WARN .*falling back to long-poll/), logs.text());
  });

  test("an event stream that a proxy refuses: long-poll takes over", async () => {
    const logs = new Logs();
    let polls = 0;
    const s = await server((c) => {
      if (c.head.startsWith("GET /api/v1/switches/workers/events")) {
        // A proxy's refusals, not the control plane's (no API error body).
        const status = ["502 Bad Gateway", "403 Forbidden", "404 Not Found"][s.streams().length % 3];
        c.socket.end(`HTTP/1.1 ${status}\r\ncontent-type: text/html\r\ncontent-length: 11\r\n\r\n<h1>no</h1>`);
        return;
      }
      polls++;
      const body = SWITCH(polls === 1 ? "running" : "paused", polls === 1 ? 1 : 2);
      const reply = () => c.socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      // The first GET answers at once; the long-poll after it answers with the change, the
      // next ones after a short wait, unchanged (as the real one does when its wait ends).
      if (polls === 1) reply();
      else setTimeout(reply, 50);
    });
    const g = gate({ urls: [s.url], logger: logs, longPollSpellMs: 400 });
    await until("the pause through long-poll", () => g.version === 2, 5000);
    assert.equal(g.isOpen(), false);
    assert.equal(s.streams().length, 3, "three refused streams before the fallback");
    assert.ok(logs.has(/WARN .*falling back to long-poll/), logs.text());
    assert.ok(s.conns.some((c) => /after_version=1&wait=25/.test(c.head)), "asked for changes after version 1");
    // After the spell, the stream is tried again (and, refused three times more, long-poll again).
    await until("SSE tried again after the spell", () => s.streams().length >= 4 && logs.has(/INFO .*trying the event stream again/), 5000);
    assert.equal(g.isOpen(), false, "the state held through the switch of transport");
  });
});
