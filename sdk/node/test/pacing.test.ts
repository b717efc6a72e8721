// Many gates starting together open their streams a bounded number at a time (gate.ts,
// MAX_OPENING): a thousand half-open connections at once grew V8's young generation for good.

import assert from "node:assert/strict";
import net from "node:net";
import { mock, test } from "node:test";
import { Gate } from "../src/index.js";

const HEAD = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";

test("80 gates starting together open at most 32 streams at once; each answer lets one more open", async () => {
  // The sweeper is the only other thing that ends a turn (one sweep after it began, for a
  // control plane that never answers): held still here, so only answers end turns.
  mock.timers.enable({ apis: ["setInterval"] });
  const conns: net.Socket[] = [];
  let waiters: Array<() => void> = [];
  const server = net.createServer((c) => {
    c.on("error", () => {});
    conns.push(c);
    for (const w of waiters.splice(0)) w();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  const connections = async (n: number) => {
    while (conns.length < n) await new Promise<void>((r) => waiters.push(r));
  };
  const gates = Array.from(
    { length: 80 },
    (_, i) =>
      new Gate({
        urls: [`http://127.0.0.1:${port}`],
        token: "brb_test_secret",
        workerId: `pacing-${i}`,
        transport: "sse",
        reports: false,
        samples: false,
        logger: null,
      }),
  );
  // How many of the gates' connections the server has when a connection made now reaches it:
  // the kernel queues accepted connections in order, so every connect issued before this one
  // is accepted first.
  const gateConnsNow = async (): Promise<number> => {
    const probe = net.connect(port, "127.0.0.1");
    await new Promise<void>((r) => probe.once("connect", () => r()));
    const mine = (c: net.Socket) => c.remotePort === probe.localPort;
    while (!conns.some(mine)) await new Promise<void>((r) => waiters.push(r));
    conns.splice(conns.findIndex(mine), 1)[0]!.destroy();
    probe.destroy();
    return conns.length;
  };
  try {
    await connections(32);
    assert.equal(await gateConnsNow(), 32, "32 streams opening at once, the others waiting");
    conns[0]!.write(HEAD); // answered: that stream's turn ends, the next waiting one opens
    await connections(33);
    conns[1]!.write(HEAD);
    await connections(34);
    assert.equal(await gateConnsNow(), 34, "no stream opened but in an answered one's turn");
  } finally {
    // Most gates are still waiting for their turn: closing them ends that wait.
    await Promise.all(gates.map((g) => g.close()));
    mock.timers.reset();
    for (const c of conns) c.destroy();
    waiters = [];
    await new Promise<void>((r) => server.close(() => r()));
  }
});
