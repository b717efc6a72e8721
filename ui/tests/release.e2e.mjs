// Browser end-to-end for releasing the brake deliberately (issue 16, defect 8): Debian's
// Chromium via Playwright against a real `brb server --demo`. The resume dialog defaults to a
// gradual release (first, checked, focused), shows the backlog from the demo's `queue_depth`
// series, takes a custom duration; a release in progress can be held, continued, extended and
// aborted from the page, and each lands in the control plane's audit log.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { adminToken, apiClient, launchChromium, shots, startDemoServer, switchBecomes as becomes, tempDataDir } from "./harness.mjs";

const dataDir = tempDataDir("brb-release-e2e-");

let server;
let url;
let token;
let browser;
let page;

const startServer = () => startDemoServer(dataDir);

/** The API beside the page (set once the server is up). */
let api;

const sw = async () => (await api("/switches/workers")).body;
const switchBecomes = (pred, what, ms) => becomes(api, pred, what, { ms });


before(async () => {
  ({ p: server, url } = await startServer());
  token = adminToken(dataDir);
  api = apiClient(url, token);
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${url}/#token=${token}`);
  await page.getByTestId("acks").getByText(/\/40 workers running/).waitFor({ timeout: 20000 });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGKILL");
});

async function pauseViaApi(reason) {
  const r = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason, source: "cli" }) });
  assert.equal(r.status, 200);
  await page.getByTestId("toggle").getByText("WORKERS PAUSED").waitFor({ timeout: 10000 });
}

test("the resume dialog defaults to a gradual release, focused and first, with the backlog in view", async () => {
  await pauseViaApi("e2e: release dialog");
  // The demo's queue grows while paused: wait until the page has a queue_depth sample.
  await page.waitForFunction(() => Number(document.querySelector('figure[data-series="queue_depth"]')?.dataset.points ?? 0) > 1, null, { timeout: 20000 });
  await page.getByTestId("toggle").click();
  const dialog = page.getByTestId("confirm");
  await dialog.waitFor({ state: "visible" });
  assert.match(await dialog.textContent(), /Resume background workers in STAGING/);

  // The default: the stepped gradual release, first, checked and focused.
  const focused = await page.evaluate(() => ({ id: document.activeElement?.id, checked: document.activeElement?.checked }));
  assert.deepEqual(focused, { id: "release-steps", checked: true });
  const order = await dialog.locator('input[name="release"]').evaluateAll((els) => els.map((e) => e.value));
  assert.deepEqual(order, ["steps", "linear", "now"], "releasing at once is offered last");
  assert.equal(await page.getByTestId("release-now").isChecked(), false);
  assert.match(await page.getByTestId("confirm-release").textContent(), /Release gradually over 10 min/);

  // The backlog, from the series the control plane has (the demo's queue_depth).
  const backlog = await page.getByTestId("backlog").textContent();
  assert.match(backlog, /^Backlog: [\d,]+ waiting \(queue_depth\)/);

  // A custom duration: refused when out of range (nothing sent), taken when valid.
  const before = await sw();
  await page.getByTestId("release-minutes").fill("0");
  await page.getByTestId("confirm-release").click();
  await page.getByTestId("release-problem").getByText(/1 to 1440 minutes/).waitFor();
  assert.equal((await sw()).version, before.version, "nothing was sent");
  await page.getByTestId("release-minutes").fill("3");
  assert.match(await page.getByTestId("confirm-release").textContent(), /over 3 min/);
  assert.equal(await page.getByTestId("release-problem").isVisible(), false, "the complaint outlived its cause");
  await page.screenshot({ path: join(shots, "console-resume-dialog.png") });
  await page.getByTestId("confirm-release").click();
  const released = await switchBecomes((s) => s.state === "running", "released");
  assert.equal(released.source, "web");
  assert.equal(released.ramp?.kind, "steps");
  assert.equal(released.ramp?.duration_secs, 180);
  await page.getByTestId("ramp-text").getByText(/Ramping up: 10% of normal work admitted/).waitFor({ timeout: 5000 });
});

test("Enter in the dialog releases gradually, never at once", async () => {
  await pauseViaApi("e2e: keyboard");
  await page.getByTestId("toggle").click();
  await page.getByTestId("confirm").waitFor({ state: "visible" });
  await page.keyboard.press("Enter");
  const s = await switchBecomes((s) => s.state === "running", "released with Enter");
  assert.equal(s.ramp?.kind, "steps");
  assert.equal(s.ramp?.duration_secs, 600);
});

test("a release in progress is held, continued, extended and aborted from the page", async () => {
  const start = await sw();
  assert.equal(start.state, "running");
  assert.ok(start.ramp, "a release is in progress");

  await page.getByTestId("ramp-hold").click();
  const held = await switchBecomes((s) => s.ramp?.held, "held");
  assert.equal(held.version, start.version + 1);
  assert.equal(held.ramp.held.fraction, 0.1);
  await page.getByTestId("ramp-text").getByText(/Release held at 10% of normal work/).waitFor({ timeout: 5000 });
  // The big button says so too: "RAMPING UP" would promise a rise that is not coming.
  await page.getByTestId("toggle").getByText("RELEASE HELD · 10%").waitFor({ timeout: 5000 });
  await page.screenshot({ path: join(shots, "console-release-held.png") });

  await page.getByTestId("ramp-continue").click();
  const cont = await switchBecomes((s) => s.version === held.version + 1, "continued");
  assert.equal(cont.ramp.held ?? null, null);
  await page.getByTestId("ramp-text").getByText(/Ramping up: 10%/).waitFor({ timeout: 5000 });

  await page.getByTestId("ramp-extend").click();
  const ext = await switchBecomes((s) => s.version === cont.version + 1, "extended");
  assert.ok(ext.ramp.duration_secs >= cont.ramp.duration_secs + 299, `${cont.ramp.duration_secs} → ${ext.ramp.duration_secs}`);

  await page.getByTestId("ramp-abort").click();
  const ab = await switchBecomes((s) => s.version === ext.version + 1, "aborted");
  assert.equal(ab.state, "paused", "an abort pauses again; it never releases everything");
  assert.equal(ab.ramp, null);
  await page.getByTestId("toggle").getByText("WORKERS PAUSED").waitFor({ timeout: 10000 });
  assert.equal(await page.getByTestId("ramp").isHidden(), true);

  const audit = (await api("/audit?switch=workers&limit=4")).body.entries;
  assert.deepEqual(
    audit.map((e) => [e.action, e.source]),
    [["state_changed", "web"], ["ramp_changed", "web"], ["ramp_changed", "web"], ["ramp_changed", "web"]],
  );
  assert.match(audit[0].reason, /^release aborted at 10%/);
  assert.match(audit[3].reason, /^release held at 10%/);
});
