// TLS with a private CA and a client certificate (certificates made with openssl for the test),
// and what a gate does to its process's lifetime.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Gate } from "../src/index.js";
import { BrbServer, Logs, sdkDir, until } from "./support.js";

/** A private CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`. */
function makeCerts(dir: string): void {
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  ssl("req", "-x509", ...ec, "-days", "2", "-subj", "/CN=brb test CA", "-keyout", "ca.key", "-out", "ca.pem");
  writeFileSync(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  writeFileSync(join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const [name, cn] of [
    ["server", "127.0.0.1"],
    ["client", "node-worker"],
  ] as const) {
    ssl("req", ...ec, "-subj", `/CN=${cn}`, "-keyout", `${name}.key`, "-out", `${name}.csr`);
    ssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.pem`);
  }
}

describe("TLS with a private CA and a client certificate", () => {
  let dir: string;
  let srv: BrbServer;
  const gates: Gate[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "brb-node-tls-"));
    makeCerts(dir);
    const f = (n: string) => join(dir, n);
    srv = await BrbServer.start({
      args: ["--tls-cert", f("server.pem"), "--tls-key", f("server.key"), "--tls-client-ca", f("ca.pem")],
      tls: { ca: readFileSync(f("ca.pem")), cert: readFileSync(f("client.pem")), key: readFileSync(f("client.key")) },
    });
    assert.match(srv.url, /^https:/);
  });
  after(async () => {
    await Promise.all(gates.map((g) => g.close()));
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("follows the switch and reports over mutual TLS", async () => {
    await srv.setState("running");
    const g = new Gate({
      urls: [srv.url],
      token: srv.token,
      workerId: "node-tls",
      caFile: join(dir, "ca.pem"),
      clientCert: join(dir, "client.pem"),
      clientKey: join(dir, "client.key"),
      reportIntervalMs: 300,
      logger: null,
    });
    gates.push(g);
    assert.equal(await g.ready({ timeoutMs: 10_000 }), true);
    assert.equal(g.isOpen(), true);
    const v = (await srv.setState("paused")).version;
    await until("the pause over TLS", () => g.version === v);
    await until("the report over TLS", async () => {
      const me = (await srv.workers()).workers.find((x: any) => x.worker_id === "node-tls");
      return me?.status === "paused" && me.observed_version === v;
    });
    await srv.setState("running");
  });

  test("an untrusted server certificate, or no client certificate: a clear error, nothing opened", async () => {
    const untrusted = new Logs();
    const noCert = new Logs();
    const opts = { urls: [srv.url], token: srv.token, backoffBaseMs: 50, backoffCapMs: 100, reports: false };
    const a = new Gate({ ...opts, logger: untrusted, env: {} });
    const b = new Gate({ ...opts, logger: noCert, caFile: join(dir, "ca.pem"), env: {} });
    gates.push(a, b);
    await until("the untrusted-certificate line", () => untrusted.has(/WARN .*not trusted: give the CA that signed it with caFile/));
    await until("the client-certificate line", () => noCert.has(/WARN .*certificate required.*\(the server requires a client certificate: clientCert/));
    assert.equal(a.isOpen(), false);
    assert.equal(b.isOpen(), false);
    assert.ok(!untrusted.text().includes(srv.token) && !noCert.text().includes(srv.token));
  });
});

describe("the process's lifetime", () => {
  let srv: BrbServer;
  before(async () => {
    srv = await BrbServer.start();
  });
  after(async () => {
    await srv.stop();
  });

  /** Runs an ES module that imports the SDK; resolves with its exit code and output. */
  function child(code: string, env: Record<string, string>) {
    const p = spawn(process.execPath, ["--input-type=module", "-e", code], {
      cwd: sdkDir,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    p.stdout.on("data", (b: Buffer) => (out += b.toString()));
    p.stderr.on("data", (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((r) => p.once("exit", (c) => r(c)));
    return { p, exited, out: () => out };
  }
  const sdk = JSON.stringify(join(sdkDir, "build", "src", "index.js"));

  test("a closed gate leaves nothing that keeps the process alive", async () => {
    await srv.setState("running");
    const c = child(
      `import { Gate } from ${sdk};
       const g = new Gate({ urls: [process.env.URL], token: process.env.TOKEN, reportIntervalMs: 200 });
       await g.ready({ timeoutMs: 5000 });
       await g.job(() => 1);
       await g.close();
       console.log("closed");`,
      { URL: srv.url, TOKEN: srv.token },
    );
    const timer = setTimeout(() => c.p.kill(), 10_000);
    const code = await c.exited;
    clearTimeout(timer);
    assert.equal(code, 0, c.out());
    assert.match(c.out(), /closed/);
  });

  test("a worker waiting while paused is kept alive until the resume", async () => {
    await srv.setState("paused");
    const c = child(
      `import { Gate } from ${sdk};
       const g = new Gate({ urls: [process.env.URL], token: process.env.TOKEN, workerId: "node-lifetime", reportIntervalMs: 200 });
       await g.ready({ timeoutMs: 5000 });
       console.log("waiting", g.isOpen());
       await g.waitOpen();
       console.log("opened");
       await g.close();`,
      { URL: srv.url, TOKEN: srv.token },
    );
    try {
      await until("the child to wait", () => c.out().includes("waiting false"));
      // Alive while it waits: its reports keep coming in.
      const first = await until("a report", async () => {
        const me = (await srv.workers()).workers.find((x: any) => x.worker_id === "node-lifetime");
        return me ? Date.parse(me.last_seen) : 0;
      });
      await until("a later report", async () => {
        const me = (await srv.workers()).workers.find((x: any) => x.worker_id === "node-lifetime");
        return me && Date.parse(me.last_seen) > first + 300;
      });
      assert.equal(c.p.exitCode, null, "still running while paused");
      await srv.setState("running");
      assert.equal(await c.exited, 0, c.out());
      assert.match(c.out(), /opened/);
    } finally {
      c.p.kill();
    }
  });
});
