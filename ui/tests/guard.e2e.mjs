// Browser end-to-end for a health-guarded release (issue 17, part 1): Debian's Chromium via
// Playwright against a real `brb server` (no demo: the test pushes the guarded series itself, so
// each phase comes when the test says). The resume dialog takes a guard; the release panel, the
// sticky status and the guarded series' graph then show the guard's condition, its value
// against the limit, and whether the release holds (no data), advances, or was paused again.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { adminToken, apiClient, launchChromium, shots, startDemoServer, switchBecomes as becomes, tempDataDir } from "./harness.mjs";

const dataDir = tempDataDir("brb-guard-e2e-");

let server;
let url;
let token;
let browser;
let page;
let pushing = null;
let pushTimer = null;

/** Without the demo: the test pushes the guarded series itself. */
const startServer = () => startDemoServer(dataDir, { demo: false });

/** The API beside the page (set once the server is up). */
let api;

const sw = async () => (await api("/switches/workers")).body;

/** Pushes `db_load` = `pushing` every 250 ms (nothing while it is null). */
function pushLoop() {
  pushTimer = setInterval(() => {
    if (pushing === null) return;
    void api("/metrics", { method: "POST", body: JSON.stringify({ samples: [{ name: "db_load", value: pushing }] }) });
  }, 250);
}

const switchBecomes = (pred, what, ms = 20000) => becomes(api, pred, what, { ms });

before(async () => {
  ({ p: server, url } = await startServer());
  token = adminToken(dataDir);
  api = apiClient(url, token);
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${url}/#token=${token}`);
  await page.getByTestId("toggle").waitFor({ timeout: 20000 });
  pushLoop();
});

after(async () => {
  clearInterval(pushTimer);
  await browser?.close();
  server?.kill("SIGKILL");
});

test("a guarded release holds without data, advances while the guard passes, and re-pauses when it fails", async () => {
  const r = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "e2e: db on fire", source: "cli" }) });
  assert.equal(r.status, 200);
  await page.getByTestId("toggle").getByText("WORKERS PAUSED").waitFor({ timeout: 10000 });

  // The dialog: a guard with a linear release is refused in the page (nothing sent).
  await page.getByTestId("toggle").click();
  await page.getByTestId("confirm").waitFor({ state: "visible" });
  const before = await sw();
  await page.getByTestId("release-guard").fill("db_load");
  await page.getByTestId("confirm-release").click();
  await page.getByTestId("release-problem").getByText(/Cannot read the guard "db_load"/).waitFor();
  await page.getByTestId("release-linear").check();
  await page.getByTestId("release-guard").fill("db_load < 80");
  await page.getByTestId("confirm-release").click();
  await page.getByTestId("release-problem").getByText(/A guard needs the release in steps/).waitFor();
  assert.equal((await sw()).version, before.version, "nothing was sent");

  // Steps over one minute (20 s a step), the guard checked every second, two failures re-pause.
  await page.getByTestId("release-steps").check();
  await page.getByTestId("release-minutes").fill("1");
  await page.getByTestId("release-guard").fill("db_load < 80, interval=1s, failures=2");
  await page.getByTestId("confirm-release").click();
  const released = await switchBecomes((s) => s.state === "running", "released");
  assert.deepEqual(released.ramp.guard.guards, [{ series: "db_load", below: 80, interval_secs: 1, failure_limit: 2 }]);

  // No samples yet: the step holds and says why.
  const text = page.getByTestId("ramp-text");
  await text.getByText("Guarded release at 10% (step 1/4), guard db_load < 80: no data · holding: no series named db_load").waitFor({ timeout: 10000 });
  assert.equal(await text.getAttribute("data-guard"), "holding");
  assert.match(await page.getByTestId("sticky").textContent(), /guard db_load < 80: holding/);

  // Data that passes: the value against the limit, advancing, and the limit on the graph.
  pushing = 41;
  await text.getByText(/guard db_load < 80: now 41 · advancing/).waitFor({ timeout: 10000 });
  assert.match(await page.getByTestId("sticky").textContent(), /guard 41 vs db_load < 80: advancing/);
  await page.waitForFunction(() => document.querySelector('figure[data-series="db_load"]')?.dataset.limit === "80|advancing", null, { timeout: 10000 });
  assert.match(await page.locator('figure[data-series="db_load"] [data-testid="graph-text"]').textContent(), /Limit line: guard db_load < 80 · advancing/);
  await page.screenshot({ path: join(shots, "console-guard-advancing.png") });

  // A page opened after the release reads how it was made from the audit entry itself: the
  // steps, the time per step and the guard, not "–" for a change it did not see happen.
  const late = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await late.goto(`${url}/#token=${token}`);
  const row = late.getByTestId("audit").locator("tr", { hasText: "paused → running" }).first();
  await row.getByText("guarded 10% → 25% → 50% → 100%, 20 s a step · at step 1/4 · guard db_load < 80").waitFor({ timeout: 10000 });
  await late.close();

  // The guard fails twice in a row: the switch is paused again, by the guard, and the page says so.
  pushing = 97;
  await text.getByText(/now 97 \(failing, 1 of 2\) · holding/).waitFor({ timeout: 10000 }).catch(() => {});
  const paused = await switchBecomes((s) => s.state === "paused", "re-paused by the guard");
  assert.equal(paused.source, "guard");
  assert.match(paused.reason, /guard db_load < 80 failed 2 checks in a row at step 1\/4 \(10%\): 97 \(limit 80\)/);
  await page.getByTestId("toggle").getByText("WORKERS PAUSED").waitFor({ timeout: 10000 });
  await page.waitForFunction(() => document.querySelector('[data-testid="sticky"]')?.textContent?.includes("re-paused by its guard"), null, { timeout: 10000 });
  await page.getByText(/changed by guard from a health guard: release aborted at 10%: guard db_load < 80 failed 2 checks/).first().waitFor({ timeout: 10000 });
  assert.equal(await page.getByTestId("ramp").isVisible(), false, "no release in progress");
  await page.screenshot({ path: join(shots, "console-guard-repaused.png") });
  pushing = null;
});
