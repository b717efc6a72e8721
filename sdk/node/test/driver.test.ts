// The conformance driver speaks sdk/conformance/PROTOCOL.md: each command against a real
// control plane, as the orchestrator sends them (this is not the conformance suite; it checks
// that the driver answers every command the way the protocol says).

import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { BrbServer, sdkDir, until } from "./support.js";

class Driver {
  #p: ChildProcessWithoutNullStreams;
  #answers: Array<(a: any) => void> = [];
  #id = 0;
  stderr = "";
  exited: Promise<number | null>;

  constructor() {
    this.#p = spawn(process.execPath, [join(sdkDir, "build", "src", "conformance-driver.js")], { cwd: sdkDir });
    this.#p.stderr.on("data", (b: Buffer) => (this.stderr += b.toString()));
    createInterface({ input: this.#p.stdout }).on("line", (l) => this.#answers.shift()?.(JSON.parse(l)));
    this.exited = new Promise((r) => this.#p.once("exit", (c) => r(c)));
  }

  send(cmd: Record<string, unknown>): Promise<any> {
    const id = ++this.#id;
    return new Promise((resolve) => {
      this.#answers.push((a) => {
        assert.equal(a.id, id, "answers come in order, with the command's id");
        resolve(a);
      });
      this.#p.stdin.write(JSON.stringify({ id, ...cmd }) + "\n");
    });
  }

  async ok(cmd: Record<string, unknown>): Promise<any> {
    const a = await this.send(cmd);
    assert.equal(a.ok, true, JSON.stringify(a));
    return a;
  }

  /** A line that is not a command: answered with `id: null`. */
  raw(line: string): Promise<any> {
    return new Promise((resolve) => {
      this.#answers.push(resolve);
      this.#p.stdin.write(line + "\n");
    });
  }

  end(): void {
    this.#p.stdin.end();
  }

  kill(): void {
    this.#p.kill();
  }
}

describe("conformance driver", () => {
  let srv: BrbServer;
  let d: Driver;
  before(async () => {
    srv = await BrbServer.start();
    d = new Driver();
  });
  after(async () => {
    d.kill();
    await srv.stop();
  });

  test("every command of the protocol, against a real control plane", async () => {
    await srv.setState("running");
    const config = { urls: [srv.url], token: srv.token, switch: "workers", worker_id: "conf-node", backoff_base_ms: 50, backoff_cap_ms: 200, report_interval_ms: 300, ca_file: null };
    await d.ok({ op: "start", gate: "g1", config });
    const refused = await d.send({ op: "start", gate: "g0", config: { ...config, max_concurrency: 0 } });
    assert.equal(refused.ok, false);
    assert.match(refused.error, /maxConcurrency/);

    assert.equal((await d.ok({ op: "wait_open", gate: "g1", timeout_ms: 5000 })).opened, true);
    let s = await d.ok({ op: "state", gate: "g1" });
    assert.equal(s.open, true);
    assert.equal(s.connected, true);
    assert.equal(s.staleness_ms, 0);
    assert.equal(s.status, "running");
    assert.equal(s.admitted_fraction, 1);
    assert.equal(s.connects, 1);
    assert.equal(s.connect_times.length, 1);
    assert.ok(Math.abs(s.connect_times[0] - Date.now()) < 60_000, "connect times are Unix ms");

    const work = await d.ok({ op: "work", gate: "g1", for_ms: 300, job_ms: 20 });
    assert.ok(work.jobs.length >= 5, JSON.stringify(work));
    for (const [a, b] of work.jobs) assert.ok(b - a >= 19 && b - a < 1000, `${a}..${b}`);

    assert.equal((await d.ok({ op: "begin_job", gate: "g1", job: "j1" })).admitted, true);
    const paused = await srv.setState("paused");
    s = await until("the pause in the driver's state", async () => {
      const st = await d.ok({ op: "state", gate: "g1" });
      return st.version === paused.version ? st : null;
    });
    assert.equal(s.open, false);
    assert.equal(s.status, "draining");
    assert.equal(s.in_flight, 1);
    assert.equal((await d.ok({ op: "begin_job", gate: "g1", job: "j2" })).admitted, false);
    await d.ok({ op: "end_job", gate: "g1", job: "j1" });
    assert.equal((await d.ok({ op: "state", gate: "g1" })).status, "paused");
    assert.equal((await d.send({ op: "end_job", gate: "g1", job: "j1" })).ok, false);
    const none = await d.ok({ op: "work", gate: "g1", for_ms: 200, job_ms: 10 });
    assert.deepEqual(none.jobs, [], "no job while paused");
    const w = await d.ok({ op: "wait_open", gate: "g1", timeout_ms: 100 });
    assert.equal(w.opened, false);
    assert.ok(w.waited_ms >= 95, JSON.stringify(w));

    // The fleet: many gates, and when each applied a version.
    await d.ok({ op: "fleet_start", count: 20, config: { ...config, reports: false } });
    assert.equal((await d.ok({ op: "fleet_ready", timeout_ms: 10_000 })).ready, 20);
    const before = Date.now() * 1000;
    const v = (await srv.setState("running")).version;
    const seen = await d.ok({ op: "fleet_seen", version: v, timeout_ms: 5000 });
    assert.equal(seen.missing, 0);
    assert.equal(seen.seen_us.length, 20);
    const afterUs = Date.now() * 1000;
    for (const us of seen.seen_us) assert.ok(us >= before - 1000 && us <= afterUs + 1000, `${us} not within ${before}..${afterUs}`);
    const rss = await d.ok({ op: "rss" });
    assert.ok(rss.rss_bytes > 10_000_000 && rss.rss_bytes < 2_000_000_000, JSON.stringify(rss));

    // Kill and restart: the driver's gate reconnects by itself.
    await srv.kill();
    await until("the driver's gate to lose the control plane", async () => !(await d.ok({ op: "state", gate: "g1" })).connected);
    srv = await srv.restart();
    s = await until("the reconnect", async () => {
      const st = await d.ok({ op: "state", gate: "g1" });
      return st.connected ? st : null;
    }, 10_000);
    assert.equal(s.connects, 2);
    assert.equal(s.connect_times.length, 2);

    await d.ok({ op: "stop", gate: "g1" });
    assert.equal((await d.send({ op: "state", gate: "g1" })).ok, false);
    assert.match((await d.send({ op: "nonsense" })).error, /unknown op/);
    const bad = await d.raw("this is not json");
    assert.equal(bad.id, null);
    assert.equal(bad.ok, false);
    assert.equal((await d.send({ op: "rss" })).ok, true);
    assert.ok(!d.stderr.includes(srv.token), "the token never reaches stderr");

    d.end();
    assert.equal(await d.exited, 0, d.stderr);
  });
});
