// Desktop end-to-end: the real Tauri binary under Xvfb, driven through tauri-driver and
// WebKitWebDriver, against a real `brb server --demo`. Run under xvfb-run (make test does).
// Screenshots go to target/e2e-screenshots/ (or BRB_SCREENSHOT_DIR), never into docs/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { By, until } from "selenium-webdriver";
import { startDemoServer } from "./harness.mjs";
import { app, launchApp } from "./desktop-harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const shots = process.env.BRB_SCREENSHOT_DIR ?? join(root, "target", "e2e-screenshots");
const dataDir = mkdtempSync(join(tmpdir(), "brb-desktop-e2e-"));

let server;
let url;
let token;
let driver;
let quit;

async function api(path, init = {}) {
  const res = await fetch(`${url}/api/v1${path}`, {
    ...init,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
  });
  return { status: res.status, body: await res.json() };
}

// The last text read from the app, so that a timeout says what the app showed instead.
let lastText = null;

async function eventually(f, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out; the app last showed ${JSON.stringify(lastText)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

before(async () => {
  statSync(app); // fails clearly if the desktop binary was not built
  ({ p: server, url } = await startDemoServer(dataDir, { env: { BRB_ENVIRONMENT: "production", BRB_ENVIRONMENT_COLOR: "#b71c1c" } }));
  token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
  const settings = join(dataDir, "desktop.json");
  writeFileSync(settings, JSON.stringify({ profiles: [{ name: "e2e", urls: [url], token }], active: 0, shortcut: null, notifications: true, button_listener: true }));
  ({ driver, quit } = await launchApp({ ...process.env, BRB_DESKTOP_SETTINGS: settings, BRB_LOG: "warn" }));
  mkdirSync(shots, { recursive: true });
});

after(async () => {
  await quit?.();
  server?.kill("SIGKILL");
});

async function textOf(testid) {
  lastText = await (await driver.findElement(By.css(`[data-testid="${testid}"]`))).getText();
  return lastText;
}

async function toggleText() {
  return textOf("toggle");
}

async function shot(name) {
  // A WebDriver screenshot can lag a frame behind the DOM: wait two frames.
  await driver.executeAsyncScript("const d = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(d));");
  writeFileSync(join(shots, name), await driver.takeScreenshot(), "base64");
}

test("the desktop app shows the switch and pauses it through the confirm step", async () => {
  await driver.wait(until.elementLocated(By.css('[data-testid="toggle"]')), 20000);
  await eventually(async () => /WORKERS RUNNING/.test(await toggleText()));
  assert.match(await (await driver.findElement(By.css('[data-testid="environment"]'))).getText(), /PRODUCTION/);
  await eventually(async () => /workers running/.test(await textOf("acks")));
  // The office button listener runs inside the app and says where the device stands (there
  // is none on this machine).
  await eventually(async () => /Office button: looking for it/.test(await textOf("device")));
  await shot("desktop-running.png");
  await (await driver.findElement(By.css('[data-testid="toggle"]'))).click();
  const reason = await driver.wait(until.elementLocated(By.css('[data-testid="reason"]')), 5000);
  await driver.wait(until.elementIsVisible(reason), 5000);
  await reason.sendKeys("desktop e2e");
  await (await driver.findElement(By.css('[data-testid="confirm-pause"]'))).click();
  await eventually(async () => /WORKERS PAUSED/.test(await toggleText()));
  const sw = (await api("/switches/workers")).body;
  assert.equal(sw.state, "paused");
  assert.equal(sw.source, "desktop");
  assert.equal(sw.reason, "desktop e2e");
  await eventually(async () => /40\/40 workers paused/.test(await textOf("acks")));
  // Let the demo's graphs show a few seconds of the pause before the picture (each says in
  // `data-last` the newest point it drew).
  const pausedAt = Date.parse(sw.changed_at) / 1000;
  const newest = () =>
    driver.executeScript(
      "return ['jobs_per_second', 'queue_depth', 'db_load'].map((n) => Number(document.querySelector(`figure[data-series=\"${n}\"]`)?.dataset.last || 0));",
    );
  await eventually(async () => {
    const last = await newest();
    lastText = `graphs' newest points ${JSON.stringify(last)}, want ${pausedAt + 3}`;
    return last.every((t) => t >= pausedAt + 3);
  }, 30000);
  await shot("desktop-paused.png");
});

test("the tray's quick toggle (the same Rust function the tray menu calls) pauses at once but opens the resume dialog instead of releasing", async () => {
  const tray = () =>
    driver.executeAsyncScript(
      "const done = arguments[arguments.length - 1]; window.__TAURI_INTERNALS__.invoke('brb_tray_toggle').then((s) => done(s), (e) => done({ error: e }));",
    );
  const before = (await api("/switches/workers")).body;
  assert.equal(before.state, "paused", "the first test left it paused");
  // Paused: the tray changes nothing, and the window shows the resume dialog, gradual release
  // first, checked and focused.
  const asked = await tray();
  assert.equal(asked.error, undefined, JSON.stringify(asked));
  assert.equal(asked.action, "ask_resume");
  const still = (await api("/switches/workers")).body;
  assert.equal(still.state, "paused", "nothing was released");
  assert.equal(still.version, before.version, "nothing was written");
  await driver.wait(until.elementLocated(By.css('[data-testid="confirm-release"]')), 10000);
  await eventually(async () => {
    const f = await driver.executeScript("return [document.activeElement?.id, document.activeElement?.checked];");
    lastText = JSON.stringify(f);
    return f[0] === "release-steps" && f[1] === true;
  });
  await shot("desktop-resume-dialog.png");
  await (await driver.findElement(By.css('[data-testid="confirm-release"]'))).click();
  const released = await eventually(async () => {
    const s = (await api("/switches/workers")).body;
    return s.state === "running" ? s : null;
  });
  assert.equal(released.source, "desktop");
  assert.equal(released.ramp?.kind, "steps");
  assert.equal(released.ramp?.duration_secs, 600);
  // Running: one click pauses, recorded as the tray's.
  const paused = await tray();
  assert.equal(paused.action, "paused", JSON.stringify(paused));
  const after = (await api("/switches/workers")).body;
  assert.equal(after.state, "paused");
  assert.equal(after.source, "tray");
  assert.equal(after.version, released.version + 1);
  await eventually(async () => /WORKERS PAUSED/.test(await toggleText()));
});

test("a change made elsewhere shows up live in the app", async () => {
  const cur = (await api("/switches/workers")).body;
  const to = cur.state === "paused" ? "running" : "paused";
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: to, source: "cli", reason: "from the CLI" }) });
  await eventually(async () => new RegExp(to === "paused" ? "WORKERS PAUSED" : "WORKERS RUNNING").test(await toggleText()));
});
