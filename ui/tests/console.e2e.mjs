// Browser end-to-end: Debian's Chromium, headless, driven by Playwright, against a real
// `brb server --demo`. Screenshots of the main screen go to target/e2e-screenshots/ (never
// into the tracked docs/: the README's pictures are updated on purpose, by copying from there
// or by running with BRB_SCREENSHOT_DIR=docs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const bin = process.env.BRB_BIN ?? join(root, "target", "debug", "brb");
const shots = process.env.BRB_SCREENSHOT_DIR ?? join(root, "target", "e2e-screenshots");
const dataDir = mkdtempSync(join(tmpdir(), "brb-e2e-"));

let server;
let url;
let port;
let token;
let browser;
let page;

function startServer(listen) {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, ["server", "--demo", "--listen", listen, "--data-dir", dataDir], {
      env: { ...process.env, BRB_ENVIRONMENT: "staging", BRB_ENVIRONMENT_COLOR: "#f57c00", BRB_LOG: "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const timer = setTimeout(() => reject(new Error("server did not start")), 30000);
    p.stdout.on("data", (d) => {
      const m = /listening on (http:\/\/[\d.:]+)/.exec(String(d));
      if (m) {
        clearTimeout(timer);
        resolve({ p, url: m[1] });
      }
    });
    p.on("exit", (code) => reject(new Error(`server exited ${code}`)));
  });
}

async function api(path, init = {}) {
  const res = await fetch(`${url}/api/v1${path}`, {
    ...init,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...(init.headers ?? {}) },
  });
  return { status: res.status, body: await res.json() };
}

// Waits until the demo's graphs have drawn a point at or after `ts` (Unix seconds): each
// graph says in `data-last` the newest point it drew.
const DEMO_SERIES = ["jobs_per_second", "queue_depth", "db_load"];
async function graphsReach(p, ts, timeout = 30000) {
  const last = () =>
    p.evaluate((names) => names.map((n) => Number(document.querySelector(`figure[data-series="${n}"]`)?.dataset.last ?? 0)), DEMO_SERIES);
  await p
    .waitForFunction(
      ([names, t]) => names.every((n) => Number(document.querySelector(`figure[data-series="${n}"]`)?.dataset.last ?? 0) >= t),
      [DEMO_SERIES, ts],
      { timeout },
    )
    .catch(async (e) => {
      throw new Error(`graphs never reached ${ts}: newest points ${JSON.stringify(await last())} (${e.message})`);
    });
}

async function settle() {
  // A screenshot can lag a frame behind the DOM: let two frames pass.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

before(async () => {
  ({ p: server, url } = await startServer("127.0.0.1:0"));
  port = new URL(url).port;
  token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  mkdirSync(shots, { recursive: true });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGKILL");
});

test("the console is served with strict browser-safety headers", async () => {
  const res = await fetch(`${url}/`);
  assert.equal(res.status, 200);
  const csp = res.headers.get("content-security-policy");
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  assert.equal(res.headers.get("x-frame-options"), "DENY");
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  const html = await res.text();
  assert.doesNotMatch(html, /<script>(?!<\/script>)/, "no inline script");
});

test("no other origin may use the API or frame the console", async () => {
  // A cross-origin preflight and a cross-origin request get no CORS grant, and no cookie is ever set.
  const pre = await fetch(`${url}/api/v1/switches/workers/state`, {
    method: "OPTIONS",
    headers: { origin: "https://evil.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization" },
  });
  assert.equal(pre.headers.get("access-control-allow-origin"), null);
  assert.equal(pre.headers.get("access-control-allow-headers"), null);
  const res = await fetch(`${url}/api/v1/switches`, { headers: { authorization: `Bearer ${token}`, origin: "https://evil.example" } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  assert.equal(res.headers.get("set-cookie"), null);
  // A page on another origin that frames the console gets a blocked frame in a real browser:
  // the giant button cannot be click-jacked. The control: a frameable page of a third origin,
  // framed by the same page, does load, so a frame that never loads at all proves nothing.
  const other = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    if (req.url === "/frameable") {
      res.end(`<p id="marker">framed fine</p>`);
    } else {
      const control = `http://localhost:${other.address().port}/frameable`;
      res.end(
        `<script>window.loaded = {};</script>` +
          `<iframe id="console" src="${url}/" onload="window.loaded.console = true"></iframe>` +
          `<iframe id="control" src="${control}" onload="window.loaded.control = true"></iframe>`,
      );
    }
  });
  await new Promise((r) => other.listen(0, "127.0.0.1", r));
  const attacker = await browser.newPage();
  try {
    const consoleResponse = attacker.waitForResponse((r) => r.url() === `${url}/`);
    await attacker.goto(`http://127.0.0.1:${other.address().port}/`);
    // The browser fetched the console for the frame, and was told not to show it framed.
    const framed = await consoleResponse;
    assert.equal(framed.status(), 200);
    const headers = await framed.allHeaders();
    assert.equal(headers["x-frame-options"], "DENY");
    assert.match(headers["content-security-policy"] ?? "", /frame-ancestors 'none'/);
    await attacker.waitForFunction(() => window.loaded.console && window.loaded.control, null, { timeout: 15000 });
    const control = await (await attacker.$("#control")).contentFrame();
    assert.equal(await control.locator("#marker").textContent(), "framed fine", "the control frame loaded");
    const blocked = await (await attacker.$("#console")).contentFrame();
    assert.ok(!blocked.url().startsWith(url), `the console loaded inside a foreign frame (${blocked.url()})`);
    const app = await blocked.evaluate(() => document.getElementById("app") !== null).catch(() => false);
    assert.equal(app, false, "the console's page is in the foreign frame");
  } finally {
    await attacker.close();
    other.close();
  }
});

test("the token arrives in the fragment, is kept, and leaves the address bar", async () => {
  await page.goto(`${url}/#token=${token}`);
  await page.getByTestId("toggle").getByText("WORKERS RUNNING").waitFor({ timeout: 15000 });
  assert.equal(new URL(page.url()).hash, "", "the token is not left in the URL");
  const env = await page.getByTestId("environment").textContent();
  assert.match(env, /STAGING/);
  await page.getByTestId("acks").getByText(/\/40 workers running/).waitFor({ timeout: 15000 });
});

test("graphs draw non-empty canvases", async () => {
  for (const name of ["jobs_per_second", "queue_depth", "db_load"]) {
    const fig = page.locator(`figure[data-series="${name}"]`);
    await fig.waitFor();
    await page.waitForFunction((n) => Number(document.querySelector(`figure[data-series="${n}"]`)?.dataset.points ?? 0) > 1, name, { timeout: 20000 });
    const painted = await fig.locator("canvas").evaluate((c) => {
      const ctx = c.getContext("2d");
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
      return n;
    });
    assert.ok(painted > 500, `${name} canvas has drawing (${painted} pixels)`);
  }
  await settle();
  await page.screenshot({ path: join(shots, "console-running.png") });
});

test("the toggle pauses after a confirm step, and the state, acks and audit appear", async () => {
  await page.getByTestId("toggle").click();
  const dialog = page.getByTestId("confirm");
  await dialog.waitFor({ state: "visible" });
  assert.match(await dialog.textContent(), /Pause all background workers in STAGING/);
  // Cancel changes nothing.
  await page.getByTestId("cancel").click();
  assert.equal((await api("/switches/workers")).body.state, "running");
  await page.getByTestId("toggle").click();
  await page.getByTestId("reason").fill("e2e: db at 100% CPU");
  await page.getByTestId("confirm-pause").click();
  await page.getByTestId("toggle").getByText("WORKERS PAUSED").waitFor({ timeout: 10000 });
  const sw = (await api("/switches/workers")).body;
  assert.equal(sw.state, "paused");
  assert.equal(sw.source, "web");
  assert.equal(sw.reason, "e2e: db at 100% CPU");
  await page.getByTestId("acks").getByText(/40\/40 workers paused · \d+ ms/).waitFor({ timeout: 15000 });
  await page.getByTestId("audit").getByText("e2e: db at 100% CPU").first().waitFor();
  assert.match(await page.getByTestId("state-line").textContent(), /changed by admin from the web console/);
  // Let the graphs show a few seconds of the pause before the picture.
  await graphsReach(page, Date.parse(sw.changed_at) / 1000 + 6);
  await settle();
  await page.screenshot({ path: join(shots, "console-paused.png") });
});

test("a change made through the API shows up live", async () => {
  const r = await api("/switches/workers/state", {
    method: "PUT",
    body: JSON.stringify({ state: "running", source: "cli", reason: "from the API", ramp: { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 } }),
  });
  assert.equal(r.status, 200);
  await page.getByTestId("toggle").getByText("WORKERS RUNNING").waitFor({ timeout: 10000 });
  await page.getByTestId("ramp").getByText(/Ramping up: 10% of normal work admitted/).waitFor({ timeout: 5000 });
  assert.match(await page.getByTestId("state-line").textContent(), /from the CLI/);
});

test("a dropped connection shows the banner and recovers", async () => {
  server.kill("SIGKILL");
  await page.getByTestId("banner").getByText(/Connection to the control plane lost/).waitFor({ timeout: 45000 });
  await settle();
  await page.screenshot({ path: join(shots, "console-connection-lost.png") });
  ({ p: server } = await startServer(`127.0.0.1:${port}`));
  await page.getByTestId("banner").waitFor({ state: "hidden", timeout: 30000 });
  // Changes made while it was away are there.
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "after reconnect" }) });
  await page.getByTestId("toggle").getByText("WORKERS PAUSED").waitFor({ timeout: 10000 });
});

test("an error from the control plane is shown honestly", async () => {
  // A viewer token cannot change anything: the toggle is disabled for it.
  const t = await api("/tokens", { method: "POST", body: JSON.stringify({ name: "viewer-e2e", role: "viewer" }) });
  const viewer = await browser.newPage();
  await viewer.goto(`${url}/#token=${t.body.secret}`);
  await viewer.getByTestId("toggle").waitFor();
  assert.equal(await viewer.getByTestId("toggle").isDisabled(), true);
  // A bad token is refused with a clear message and a way to enter another.
  const bad = await browser.newPage();
  await bad.goto(`${url}/#token=brb_nope_nope`);
  await bad.getByText(/That token was refused/).waitFor({ timeout: 10000 });
  await viewer.close();
  await bad.close();
});
