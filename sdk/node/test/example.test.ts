// examples/node/worker.mjs runs as documented against a real control plane.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { BrbServer, sdkDir, until } from "./support.js";

let srv: BrbServer;
before(async () => {
  srv = await BrbServer.start();
});
after(async () => {
  await srv.stop();
});

test("the example worker runs, pauses when the brake is pulled, is counted, and stops on SIGTERM", async () => {
  await srv.setState("running");
  const p = spawn(process.execPath, [join(sdkDir, "..", "..", "examples", "node", "worker.mjs")], {
    env: { ...process.env, BRB_URL: srv.url, BRB_TOKEN: srv.token, BRB_TOKEN_FILE: "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  p.stdout.on("data", (b: Buffer) => (out += b.toString()));
  p.stderr.on("data", (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((r) => p.once("exit", (c) => r(c)));
  try {
    await until("jobs processed", () => /processed \d+ jobs/.test(out));
    const v = (await srv.setState("paused", { reason: "example test" })).version;
    await until("the pause", () => out.includes(`paused (version ${v}, by admin)`));
    await until("the worker counted as paused", async () => {
      const c = await srv.workers();
      return c.workers.length === 1 && c.workers[0].status === "paused" && c.workers[0].observed_version === v;
    });
    p.kill("SIGTERM");
    assert.equal(await exited, 0, out);
    assert.match(out, /SIGTERM: finishing the jobs in flight\nstopped\n/);
    assert.ok(!out.includes(srv.token));
  } finally {
    p.kill();
  }
});
