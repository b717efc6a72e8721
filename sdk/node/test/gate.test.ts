// The gate against the real `brb server` (a child process on a loopback port, its own data dir).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { BrbError, Gate, type GateChange, type GateOptions } from "../src/index.js";
import { BrbServer, Forwarder, Logs, until } from "./support.js";

const quick: Partial<GateOptions> = { backoffBaseMs: 50, backoffCapMs: 200, reportIntervalMs: 500 };

describe("gate against a real control plane", () => {
  let srv: BrbServer;
  const gates: Gate[] = [];
  const gate = (o: GateOptions): Gate => {
    const g = new Gate({ ...quick, ...o });
    gates.push(g);
    return g;
  };

  before(async () => {
    srv = await BrbServer.start();
  });
  after(async () => {
    await Promise.all(gates.map((g) => g.close()));
    await srv.stop();
  });

  test("learns the state, sees pause and resume at once, and is counted by the control plane", async () => {
    await srv.setState("running");
    const logs = new Logs();
    const g = gate({ urls: [srv.url], token: srv.token, workerId: "node-basic", logger: logs });
    assert.equal(g.isOpen(), false, "closed until the control plane is heard");
    assert.equal(g.staleness(), null);
    assert.equal(await g.ready({ timeoutMs: 5000 }), true);
    assert.equal(g.isOpen(), true);
    assert.equal(g.staleness(), 0);
    assert.equal(g.connected, true);

    const changes: GateChange[] = [];
    g.on("change", (c: GateChange) => changes.push(c));
    const t0 = Date.now();
    const paused = await srv.setState("paused", { reason: "node sdk test" });
    await until("the pause to be seen", () => g.version === paused.version);
    assert.ok(Date.now() - t0 < 1000, `pause seen in ${Date.now() - t0} ms`);
    assert.equal(g.isOpen(), false);
    assert.deepEqual(
      changes.map((c) => [c.open, c.version, c.state, c.cause]),
      [[false, paused.version, "paused", "switch"]],
    );
    assert.equal(changes[0]!.changedBy, "admin");
    // The control plane counts this worker as paused on the new version.
    const w = await until("the report to be counted", async () => {
      const c = await srv.workers();
      const me = c.workers.find((x: any) => x.worker_id === "node-basic");
      return me?.observed_version === paused.version && me.status === "paused" ? c : null;
    });
    assert.ok(w.paused >= 1);

    const waiting = g.waitOpen({ timeoutMs: 5000 });
    const resumed = await srv.setState("running");
    assert.equal(await waiting, true);
    assert.equal(g.version, resumed.version);
    assert.ok(logs.has(/INFO .*observed a change: running/), logs.text());
    assert.ok(!logs.text().includes(srv.token), "the token is never logged");
  });

  test("acquire waits while paused; a held job makes the worker report draining", async () => {
    await srv.setState("running");
    const g = gate({ urls: [srv.url], token: srv.token, workerId: "node-drain", maxConcurrency: 2, logger: null });
    await g.ready({ timeoutMs: 5000 });
    const held = g.tryAcquire();
    assert.ok(held, "admitted while running");
    assert.equal(g.inFlight, 1);
    const v = (await srv.setState("paused")).version;
    await until("the pause", () => !g.isOpen());
    assert.equal(g.tryAcquire(), null, "no job starts while paused");
    assert.equal(g.status(), "draining");
    await until("draining to be counted", async () => {
      const me = (await srv.workers()).workers.find((x: any) => x.worker_id === "node-drain");
      return me?.status === "draining" && me.in_flight === 1 && me.observed_version === v;
    });
    let admitted = false;
    const next = g.acquire({ timeoutMs: 10_000 }).then((p) => {
      admitted = true;
      return p;
    });
    held.release();
    assert.equal(g.status(), "paused");
    await until("paused (drained) to be counted", async () => {
      const me = (await srv.workers()).workers.find((x: any) => x.worker_id === "node-drain");
      return me?.status === "paused" && me.in_flight === 0 && me.processed_total === 1;
    });
    assert.equal(admitted, false, "acquire still waits while paused");
    await srv.setState("running");
    const p = await next;
    p.release();
    assert.equal(g.processed, 2);
    await assert.rejects(g.acquire({ signal: AbortSignal.abort(new Error("stop")) }), /stop/);
    await assert.rejects(
      (async () => {
        await srv.setState("paused");
        await until("the pause", () => !g.isOpen());
        return g.acquire({ timeoutMs: 50 });
      })(),
      (e: unknown) => e instanceof BrbError && e.code === "timeout",
    );
    await srv.setState("running");
  });

  test("long-poll alone follows the switch, reports, and survives its connection being cut", async () => {
    await srv.setState("running");
    const fwd = await Forwarder.start(srv.port);
    try {
      const g = gate({ urls: [fwd.url], token: srv.token, workerId: "node-long-poll", transport: "long_poll", logger: null });
      await g.ready({ timeoutMs: 5000 });
      assert.equal(g.isOpen(), true);
      const p = await srv.setState("paused");
      await until("the pause through long-poll", () => g.version === p.version);
      await until("the long-poll worker counted", async () => {
        const me = (await srv.workers()).workers.find((x: any) => x.worker_id === "node-long-poll");
        return me?.status === "paused" && me.observed_version === p.version;
      });
      await fwd.cut();
      await until("the cut noticed", () => !g.connected);
      const r = await srv.setState("running");
      await fwd.heal();
      await until("the resume after the cut", () => g.version === r.version && g.isOpen());
      assert.ok(fwd.accepted >= 2);
    } finally {
      await fwd.stop();
    }
  });

  test("a ramp admits its fraction of the work by duty cycle", async () => {
    await srv.setState("paused");
    const g = gate({ urls: [srv.url], token: srv.token, workerId: "node-ramp", logger: null });
    await g.ready({ timeoutMs: 5000 });
    await srv.setState("running", { ramp: { kind: "steps", fractions: [0.5, 1.0], duration_secs: 3600 } });
    await until("the ramp", () => g.isOpen());
    assert.ok(Math.abs(g.admittedFraction() - 0.5) < 1e-9, `fraction ${g.admittedFraction()}`);
    const start = Date.now();
    let busy = 0;
    while (Date.now() - start < 3000) {
      await g.job(async () => {
        const t = Date.now();
        await new Promise((r) => setTimeout(r, 50));
        busy += Date.now() - t;
      });
    }
    const fraction = busy / (Date.now() - start);
    assert.ok(Math.abs(fraction - 0.5) < 0.1, `busy fraction ${fraction.toFixed(3)} at a 0.5 ramp`);
    await srv.setState("running");
    await until("the ramp to end", () => g.admittedFraction() === 1);
  });

  test("resumes with Last-Event-ID and is replayed each change it missed", async () => {
    await srv.setState("running");
    const fwd = await Forwarder.start(srv.port);
    try {
      const g = gate({ urls: [fwd.url], token: srv.token, workerId: "node-resume", logger: null });
      await g.ready({ timeoutMs: 5000 });
      const seen: Array<[number, boolean]> = [];
      g.on("change", (c: GateChange) => seen.push([c.version, c.open]));
      await fwd.cut();
      await until("the gate to notice", () => !g.connected);
      const p = await srv.setState("paused");
      const r = await srv.setState("running");
      await fwd.heal();
      await until("the missed changes", () => g.version === r.version);
      // Without Last-Event-ID only the current state (running) would come: the pause between
      // is seen only because the stream resumed from the gate's version.
      assert.deepEqual(seen, [
        [p.version, false],
        [r.version, true],
      ]);
      assert.equal(g.connects, 2);
    } finally {
      await fwd.stop();
    }
  });

  test("a resume from far behind gets a resync and the current state", async () => {
    await srv.setState("running");
    const fwd = await Forwarder.start(srv.port);
    try {
      const logs = new Logs();
      const g = gate({ urls: [fwd.url], token: srv.token, workerId: "node-resync", logger: logs });
      await g.ready({ timeoutMs: 5000 });
      await fwd.cut();
      await until("the gate to notice", () => !g.connected);
      let last = { version: 0 };
      // More changes than a stream replays one by one (1,000).
      for (let i = 0; i < 1002; i++) last = await srv.setState(i % 2 === 0 ? "paused" : "running");
      const seen: number[] = [];
      g.on("change", (c: GateChange) => seen.push(c.version));
      await fwd.heal();
      await until("the current state", () => g.version === last.version, 20_000);
      assert.equal(g.isOpen(), true);
      assert.deepEqual(seen, [last.version], "one jump to the current state, not each step");
      assert.ok(logs.has(/INFO .*skipped changes/), logs.text());
    } finally {
      await fwd.stop();
    }
  });

  test("a replica that is down is skipped, and one that goes down is left for the next", async () => {
    await srv.setState("running");
    const dead = await Forwarder.start(srv.port);
    await dead.cut(); // a port nothing listens on
    const a = await Forwarder.start(srv.port);
    const b = await Forwarder.start(srv.port);
    try {
      const g = gate({ urls: [dead.url, a.url, b.url], token: srv.token, workerId: "node-replicas", logger: null });
      await g.ready({ timeoutMs: 5000 });
      const before = a.accepted + b.accepted;
      assert.ok(before >= 1);
      // Whichever of a/b it holds, cut both in turn: it keeps following through the other.
      const holding = a.accepted > 0 ? a : b;
      const other = holding === a ? b : a;
      await holding.cut();
      await until("a stream on the other replica", () => g.connected && other.accepted > 0);
      const v = (await srv.setState("paused")).version;
      await until("the pause through the other replica", () => g.version === v);
      assert.equal(g.isOpen(), false);
    } finally {
      await Promise.all([dead.stop(), a.stop(), b.stop()]);
    }
    await srv.setState("running");
  });

  test("a bad token: a clear error, no retry storm, nothing opened", async () => {
    const fwd = await Forwarder.start(srv.port);
    try {
      const logs = new Logs();
      const bad = "brb_0123456789_" + "ab".repeat(32);
      const g = gate({ urls: [fwd.url], token: bad, workerId: "node-bad-token", logger: logs, backoffBaseMs: 10, backoffCapMs: 20 });
      const line = await until("the error line", () => logs.lines.find((l) => /ERROR .*refused this gate's token/.test(l)));
      // One connection, and the next try is scheduled seconds away (half to all of the cap,
      // taken as at least 5 s), where an unreachable server would be tried again within 20 ms.
      assert.equal(fwd.accepted, 1);
      const next = Number(/next try in ([\d.]+) s/.exec(line)?.[1]);
      assert.ok(next >= 2.5, line);
      assert.equal(g.isOpen(), false);
      assert.ok(!logs.text().includes(bad), "the token is never logged");
      assert.ok(g.lastError?.message.includes("401"), g.lastError?.message);
    } finally {
      await fwd.stop();
    }
  });
});

describe("control plane killed and restarted", () => {
  test("keep_last_known holds a pause through an outage; open and closed apply after their grace", async () => {
    let srv = await BrbServer.start();
    const gates: Gate[] = [];
    try {
      await srv.setState("paused");
      const opts = { ...quick, urls: [srv.url], token: srv.token, logger: null, graceMs: 300 };
      const keep = new Gate({ ...opts, workerId: "node-keep" });
      const open = new Gate({ ...opts, workerId: "node-open", policy: "open" });
      const closedPaused = new Gate({ ...opts, workerId: "node-closed", policy: "closed" });
      gates.push(keep, open, closedPaused);
      await Promise.all(gates.map((g) => g.ready({ timeoutMs: 5000 })));
      assert.deepEqual(
        gates.map((g) => g.isOpen()),
        [false, false, false],
      );
      const opened: GateChange[] = [];
      open.on("change", (c: GateChange) => opened.push(c));
      await srv.kill();
      await until("open to fail open after its grace", () => open.isOpen());
      assert.equal(opened[0]?.cause, "policy");
      await until("keep_last_known to be stale beyond the grace", () => (keep.staleness() ?? 0) > 900);
      assert.equal(keep.isOpen(), false, "an outage never undoes a pause");
      assert.equal(keep.connected, false);

      srv = await srv.restart();
      await until("every gate back", () => gates.every((g) => g.connected), 10_000);
      assert.deepEqual(
        gates.map((g) => [g.isOpen(), g.connects]),
        [
          [false, 2],
          [false, 2],
          [false, 2],
        ],
        "back on the control plane's state (paused)",
      );
      // `closed` on a running switch: closes after the grace, opens again when heard.
      const running = (await srv.setState("running")).version;
      await until("running everywhere", () => gates.every((g) => g.version === running && g.isOpen()));
      await srv.kill();
      await until("closed to fail closed", () => !closedPaused.isOpen());
      assert.equal(keep.isOpen(), true, "keep_last_known keeps running too");
      srv = await srv.restart();
      await until("closed to open again", () => closedPaused.isOpen(), 10_000);
    } finally {
      await Promise.all(gates.map((g) => g.close()));
      await srv.stop();
    }
  });
});
