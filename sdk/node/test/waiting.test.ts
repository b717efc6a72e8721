// What a gate holds while it waits: nothing pending of its own while its stream is open (the
// watch loop runs as callbacks), and one waiter per call that waits (ready, waitOpen), which
// keeps waiting through wake-ups that do not satisfy it.

import assert from "node:assert/strict";
import { createHook } from "node:async_hooks";
import { after, before, describe, test } from "node:test";
import { BrbError, Gate, type GateOptions } from "../src/index.js";
import { BrbServer, freePort, until } from "./support.js";

const quick: Partial<GateOptions> = { backoffBaseMs: 50, backoffCapMs: 200, reportIntervalMs: 500, logger: null };

describe("what a gate holds while it waits", () => {
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

  test("a connected gate keeps no pending promise of the SDK's: its watch loop runs as callbacks", async () => {
    await srv.setState("running");
    // Every promise made from here on, with the stack that made it, until it is resolved.
    const pending = new Map<number, string>();
    const hook = createHook({
      init(id, type) {
        if (type === "PROMISE") pending.set(id, new Error().stack ?? "");
      },
      promiseResolve(id) {
        pending.delete(id);
      },
    });
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 50;
    hook.enable();
    let left: string[];
    try {
      const g = gate({ urls: [srv.url], token: srv.token, reports: false, samples: false, workerId: "node-idle" });
      assert.equal(await g.ready({ timeoutMs: 5000 }), true);
      const paused = await srv.setState("paused");
      await until("the pause to be seen", () => g.version === paused.version && g.connected);
      assert.equal(await g.waitOpen({ timeoutMs: 1 }), false);
      // The SDK's own (gate.js) promises still unresolved while the stream is open and idle.
      left = [...pending.values()].filter((stack) => /[\\/]gate\.js:/.test(stack));
    } finally {
      hook.disable();
      Error.stackTraceLimit = limit;
    }
    assert.deepEqual(left, [], `pending promises made by the gate:\n${left.join("\n\n")}`);
  });

  test("a waiter woken by a change that does not satisfy it waits on; then the resume opens it", async () => {
    await srv.setState("running");
    const g = gate({ urls: [srv.url], token: srv.token, workerId: "node-wait-on" });
    assert.equal(await g.ready({ timeoutMs: 5000 }), true);
    const permit = g.tryAcquire();
    assert.ok(permit);
    const paused = await srv.setState("paused");
    await until("the pause to be seen", () => g.version === paused.version);
    let settled: boolean | "rejected" | null = null;
    const waiting = g.waitOpen({ timeoutMs: 20_000 }).then(
      (v) => (settled = v),
      () => (settled = "rejected"),
    );
    // Releasing the job wakes every waiter of the gate (the worker drained); still paused.
    permit.release();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.equal(settled, null, "still waiting after a wake-up while paused");
    await srv.setState("running");
    await waiting;
    assert.equal(settled, true);
    assert.equal(g.isOpen(), true);
  });

  test("ready and waitOpen: false at the timeout, the signal's reason when aborted, `closed` when the gate closes", async () => {
    // A port nothing listens on: the gate never hears the control plane.
    const port = await freePort();
    const g = gate({ urls: [`http://127.0.0.1:${port}`], token: "t", workerId: "node-unheard" });
    const t0 = performance.now();
    assert.equal(await g.ready({ timeoutMs: 150 }), false);
    assert.ok(performance.now() - t0 >= 140, `timed out after ${performance.now() - t0} ms`);
    assert.equal(await g.waitOpen({ timeoutMs: 0 }), false);

    const ac = new AbortController();
    const aborted = g.waitOpen({ signal: ac.signal });
    ac.abort(new Error("worker shutting down"));
    await assert.rejects(aborted, /worker shutting down/);
    await assert.rejects(g.ready({ signal: AbortSignal.abort(new Error("already")) }), /already/);

    const a = g.ready();
    const b = g.waitOpen({ timeoutMs: 60_000 });
    await g.close();
    for (const p of [a, b]) {
      await assert.rejects(p, (e: unknown) => e instanceof BrbError && e.code === "closed");
    }
    await assert.rejects(g.waitOpen(), (e: unknown) => e instanceof BrbError && e.code === "closed");
  });
});
