// Browser end-to-end for resume approval and the fire drill (issue 17, parts 2 and 3): Debian's
// Chromium via Playwright against a real `brb server --demo` whose primary switch needs a second
// operator. Two operators (alice, bob) each have a page, an admin a phone-sized one: alice's
// resume becomes a request that every page shows, alice cannot approve her own, bob approves
// (or rejects) and every page follows the stream without a reload; a request that lapses goes
// away by itself; a fire drill against the demo's 40 SDK gates, plus a worker that reports but
// never hears the switch and one gone silent, reports who answered, who did not and who is
// stale; with the control plane frozen, nothing can be decided from the page and it says why.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { adminToken, apiClient, launchChromium, shots, startDemoServer, switchBecomes as becomes, tempDataDir } from "./harness.mjs";

const dataDir = tempDataDir("brb-approval-e2e-");
const config = join(dataDir, "brb.toml");
// The primary switch needs a second operator; `quick` lapses its requests in 3 s. Workers that
// stop reporting are stale after 10 s (the demo's gates report every 3 s).
writeFileSync(
  config,
  `[primary.approval]
resume = 1
expire = "15m"

[[switches]]
name = "quick"
description = "Lapses fast"
[switches.approval]
resume = 1
expire = "3s"

[limits]
worker_stale_secs = 10
`,
);

let server;
let url;
let browser;
let admin;
/** The API as the admin, as alice and as bob. */
let api;
let asAlice;
let asBob;
/** Pages: alice's, bob's, and the admin's on a 360 px phone. */
let pageA;
let pageB;
let phone;
let stuckTimer = null;

const sw = async (name = "workers") => (await api(`/switches/${name}`)).body;
const switchBecomes = (pred, what, ms = 15000, name = "workers") => becomes(api, pred, what, { ms, name });
const kind = (page, k) => page.waitForFunction((want) => document.querySelector('[data-testid="toggle"]')?.dataset.kind === want, k, { timeout: 15000 });
const focused = (page) => page.evaluate(() => document.activeElement?.dataset.testid ?? document.activeElement?.tagName);

async function operator(name) {
  const r = await api("/tokens", { method: "POST", body: JSON.stringify({ name, role: "operator" }) });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.secret;
}

async function open(token, viewport) {
  const page = await browser.newPage({ viewport });
  await page.goto(`${url}/#token=${token}`);
  await page.getByTestId("acks").getByText(/\/4\d workers/).waitFor({ timeout: 30000 });
  return page;
}

async function report(id, version) {
  const r = await api("/workers/report", {
    method: "POST",
    body: JSON.stringify({ worker_id: id, switch: "workers", observed_version: version, status: "running", in_flight: 0, processed_total: 0 }),
  });
  assert.ok(r.status === 200 || r.status === 204, JSON.stringify(r.body));
}

before(async () => {
  ({ p: server, url } = await startDemoServer(dataDir, { args: ["--config", config] }));
  admin = adminToken(dataDir);
  api = apiClient(url, admin);
  const alice = await operator("alice");
  const bob = await operator("bob");
  asAlice = apiClient(url, alice);
  asBob = apiClient(url, bob);
  // A worker that went silent long before the drill: stale by then.
  await report("gone", (await sw()).version);
  browser = await launchChromium();
  pageA = await open(alice, { width: 1280, height: 900 });
  pageB = await open(bob, { width: 1280, height: 900 });
  phone = await open(admin, { width: 360, height: 740 });
});

after(async () => {
  clearInterval(stuckTimer);
  await browser?.close();
  server?.kill("SIGCONT");
  server?.kill("SIGKILL");
});

async function pauseViaApi(reason) {
  const r = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason, source: "cli" }) });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  for (const p of [pageA, pageB]) await kind(p, "paused");
}

/** Alice asks through her page's resume dialog. */
async function aliceAsks(reason) {
  await pageA.getByTestId("toggle").click();
  const dialog = pageA.getByTestId("confirm");
  await dialog.waitFor({ state: "visible" });
  await pageA.getByLabel("Why? (the approver decides on it; required)").fill(reason);
  await pageA.getByTestId("release-minutes").fill("1");
  await pageA.getByTestId("confirm-release").click();
  await dialog.waitFor({ state: "hidden" });
}

test("alice's resume becomes a request; she cannot approve it; bob approves and every page follows", async () => {
  await pauseViaApi("e2e: db on fire");
  assert.match(await pageA.getByTestId("toggle").getAttribute("aria-label"), /workers paused; press to ask to resume$/);

  // Said before anyone presses: the dialog files a request, and wants a reason.
  await pageA.getByTestId("toggle").click();
  const dialog = pageA.getByTestId("confirm");
  await dialog.waitFor({ state: "visible" });
  assert.match(await pageA.getByTestId("approval-notice").textContent(), /^This switch needs a second operator: your resume becomes a request.*within 15 min/);
  await pageA.getByTestId("release-minutes").fill("1");
  assert.equal(await pageA.getByTestId("confirm-release").textContent(), "Request resume: gradually over 1 min");
  const before = await sw();
  await pageA.getByTestId("confirm-release").click();
  await pageA.getByTestId("release-problem").getByText("Say why: the approver decides on it.").waitFor();
  assert.equal((await sw()).version, before.version, "nothing was sent without a reason");
  assert.equal(await pageA.evaluate(() => document.activeElement?.id), "request-reason");
  await pageA.getByLabel("Why? (the approver decides on it; required)").fill("queue drained");
  await pageA.getByTestId("confirm-release").click();

  // Recorded: still paused, the request on the switch, no raw 409 on the page.
  const asked = await switchBecomes((s) => !!s.resume_request, "request filed");
  assert.equal(asked.state, "paused");
  assert.equal(asked.resume_request.requested_by, "alice");
  assert.equal(asked.resume_request.reason, "queue drained");
  assert.equal(asked.resume_request.ramp.duration_secs, 60);
  assert.equal(asked.resume_request.source, "web");
  assert.equal(await pageA.getByTestId("error").isVisible(), false);
  assert.equal(await focused(pageA), "toggle", "focus back on the button after filing");

  // Alice's page: the request, and Approve not offered to her, with the reason.
  const cardA = pageA.getByTestId("resume-request");
  await cardA.waitFor({ timeout: 10000 });
  assert.match(await cardA.getByTestId("request-asked").textContent(), /^alice asked at \d\d:\d\d:\d\d \(\d+ s ago\)$/);
  assert.equal(await cardA.getByTestId("request-reason").textContent(), "Why: queue drained");
  assert.equal(await cardA.getByTestId("request-release").textContent(), "Release: gradually, 10% → 25% → 50% → 100% over 1 min");
  assert.match(await cardA.getByTestId("request-expires").textContent(), /^Expires at \d\d:\d\d:\d\d \(in 1[45] min\)$/);
  assert.equal(await cardA.getByTestId("approve-request").isDisabled(), true);
  assert.equal(await cardA.getByTestId("request-approve-why").textContent(), "You asked for this resume: another operator must approve it.");
  assert.equal(await cardA.getByTestId("approve-request").getAttribute("aria-describedby"), await cardA.getByTestId("request-approve-why").getAttribute("id"));
  assert.equal(await cardA.getByTestId("break-glass").count(), 0, "an operator cannot break glass");
  // The server agrees: her own approval is refused.
  const self = await asAlice(`/switches/workers/resume-requests/${asked.resume_request.id}/approve`, { method: "POST", body: "{}" });
  assert.equal(self.body.error?.code, "self_approval");
  await pageA.screenshot({ path: join(shots, "console-resume-request.png") });

  // Bob's page: the same request, Approve offered; the admin's phone: Break glass too.
  const cardB = pageB.getByTestId("resume-request");
  await cardB.waitFor({ timeout: 10000 });
  assert.equal(await cardB.getByTestId("approve-request").isDisabled(), false);
  assert.equal(await cardB.getByTestId("request-approve-why").count(), 0);
  await phone.getByTestId("resume-request").getByTestId("break-glass").waitFor({ timeout: 10000 });
  assert.ok(await phone.evaluate(() => document.scrollingElement.scrollWidth <= 360), "the request fits a 360 px phone");
  await phone.getByTestId("resume-request").screenshot({ path: join(shots, "console-resume-request-phone.png") });

  // Bob approves, after one more look at what it releases.
  await cardB.getByTestId("approve-request").click();
  const confirm = pageB.getByTestId("confirm");
  await confirm.waitFor({ state: "visible" });
  assert.match(await confirm.textContent(), /Approve alice's resume of background workers in STAGING\?.*Why they ask: queue drained.*10% → 25% → 50% → 100% over 1 min/);
  await pageB.getByLabel("Your note (optional, kept in the audit log)").fill("looks calm");
  await pageB.getByTestId("confirm-approve").click();
  const resumed = await switchBecomes((s) => s.state === "running", "approved");
  assert.equal(resumed.changed_by, "bob");
  assert.equal(resumed.ramp.duration_secs, 60);
  assert.match(resumed.reason, /approved by bob.*requested by alice: queue drained/);
  assert.equal(resumed.resume_request, undefined);

  // Every page follows the stream: ramping, and no request left.
  for (const p of [pageA, pageB, phone]) {
    await kind(p, "ramping");
    await p.getByTestId("requests").waitFor({ state: "hidden", timeout: 10000 });
  }
  assert.equal(await focused(pageB), "toggle", "focus lands on the button when the request goes away");
  await pageA.getByTestId("audit").getByText(/approved by bob/).first().waitFor({ timeout: 10000 });
});

test("bob rejects a request: the switch stays paused and the request is gone everywhere", async () => {
  await pauseViaApi("e2e: again");
  await aliceAsks("try again");
  await pageB.getByTestId("resume-request").waitFor({ timeout: 10000 });
  await pageB.getByTestId("reject-request").click();
  await switchBecomes((s) => !s.resume_request, "rejected");
  const s = await sw();
  assert.equal(s.state, "paused");
  for (const p of [pageA, pageB]) await p.getByTestId("requests").waitFor({ state: "hidden", timeout: 10000 });
  await kind(pageA, "paused");
  const audit = (await api("/audit?limit=5")).body.entries;
  assert.ok(audit.some((e) => e.action === "resume_rejected" && e.actor === "bob"), JSON.stringify(audit));
  assert.equal(await focused(pageB), "toggle");
});

test("a request that lapses leaves every page by itself", async () => {
  const r = await asAlice("/switches/quick/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "e2e" }) });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const f = await asAlice("/switches/quick/resume-requests", { method: "POST", body: JSON.stringify({ reason: "quick one" }) });
  assert.equal(f.status, 201, JSON.stringify(f.body));
  const card = pageB.locator('[data-request="quick"]');
  await card.waitFor({ timeout: 10000 });
  assert.match(await card.textContent(), /Resume of quick requested.*alice asked.*Why: quick one.*Release: everything at once/);
  await switchBecomes((s) => !s.resume_request, "lapsed", 15000, "quick");
  await card.waitFor({ state: "detached", timeout: 10000 });
  await pageA.locator('[data-request="quick"]').waitFor({ state: "detached", timeout: 10000 });
});

test("an admin breaks glass on a 360 px phone, behind a loud confirmation that wants a reason", async () => {
  const f = await asAlice("/switches/workers/resume-requests", { method: "POST", body: JSON.stringify({ reason: "need it now" }) });
  assert.equal(f.status, 201, JSON.stringify(f.body));
  const card = phone.getByTestId("resume-request");
  await card.waitFor({ timeout: 10000 });
  await card.getByTestId("break-glass").click();
  const dialog = phone.getByTestId("confirm");
  await dialog.waitFor({ state: "visible" });
  assert.match(await dialog.textContent(), /BREAK GLASS: resume background workers in STAGING without a second operator\?.*recorded as BREAK GLASS with your name/);
  assert.equal(await phone.evaluate(() => document.activeElement?.id), "glass-reason");
  const before = await sw();
  await phone.getByTestId("confirm-break-glass").click();
  await phone.getByTestId("glass-problem").getByText("Say why: breaking the glass must be explained.").waitFor();
  assert.equal((await sw()).version, before.version, "nothing was sent without a reason");
  await phone.getByLabel("Why can this not wait for a second operator? (required)").fill("e2e: db recovered, bob asleep");
  assert.ok(await phone.evaluate(() => document.scrollingElement.scrollWidth <= 360), "the confirmation fits a 360 px phone");
  await phone.screenshot({ path: join(shots, "console-break-glass-phone.png") });
  await phone.getByTestId("confirm-break-glass").click();
  const s = await switchBecomes((x) => x.state === "running", "glass broken");
  assert.match(s.reason, /^BREAK GLASS by /);
  assert.match(s.reason, /e2e: db recovered, bob asleep/);
  for (const p of [pageA, pageB, phone]) {
    await kind(p, "running");
    await p.getByTestId("requests").waitFor({ state: "hidden", timeout: 10000 });
  }
  assert.equal(await focused(phone), "toggle");
});

test("a fire drill pauses nothing and reports who answered, who did not and who is stale", async () => {
  const v0 = (await sw()).version;
  // A worker that reports but never hears the switch: it cannot answer.
  await report("stuck", v0);
  stuckTimer = setInterval(() => void report("stuck", v0).catch(() => {}), 1000);
  const workers = async () => (await api("/switches/workers/workers")).body;
  for (const end = Date.now() + 20000; ; ) {
    const w = await workers();
    const gone = w.workers?.find((x) => x.worker_id === "gone");
    if (gone?.stale) break;
    if (Date.now() > end) throw new Error(`gone is not stale: ${JSON.stringify(gone)}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  // Far from the big button, not red, and the confirmation says nothing pauses.
  const start = pageB.getByTestId("drill-start");
  assert.equal(await start.textContent(), "Start fire drill…");
  assert.equal(await pageB.locator('.button-panel [data-testid="drill-start"]').count(), 0);
  await start.click();
  const confirm = pageB.getByTestId("confirm");
  await confirm.waitFor({ state: "visible" });
  assert.match(await confirm.textContent(), /Start a fire drill on workers in STAGING\?.*Nothing will pause and no one is paged/);
  await pageB.getByLabel("Note (optional, kept in the audit log)").fill("quiet tuesday");
  await pageB.getByTestId("confirm-drill").click();
  assert.equal(await focused(pageB), "drill-start", "focus stays on the drill button");

  // The report fills in, then the window ends with one silent worker.
  const rep = pageB.getByTestId("drill-report");
  await rep.getByTestId("drill-summary").getByText(/^40\/41 live workers answered · p50 \d+ ms · p99 \d+ ms · max \d+ ms; nothing paused$/).waitFor({ timeout: 10000 });
  assert.equal(await start.getAttribute("aria-disabled"), "true", "one drill at a time");
  await rep.getByTestId("drill-status").getByText("Over: 1 live worker did not answer in 10 s.").waitFor({ timeout: 15000 });
  assert.equal(await start.getAttribute("aria-disabled"), "false");
  assert.match(await rep.getByTestId("drill-missing").textContent(), /^stuck: last report \d+ s ago \(running, version \d+ from [\d.:]+\)$/);
  assert.match(await rep.getByTestId("drill-stale").textContent(), /^gone: silent for \d+ (s|min) \(last report running, version \d+ from [\d.:]+\)$/);
  assert.match(await rep.textContent(), new RegExp(`Drill of workers \\(version ${v0 + 1}\\)`));
  await rep.getByTestId("drill-answered").locator("summary").click();
  await pageB.getByTestId("drill").evaluate((el) => el.scrollIntoView({ block: "end" }));
  await pageB.screenshot({ path: join(shots, "console-drill.png") });

  // Nothing paused: same state, one version more, and the audit says so.
  const after = await sw();
  assert.equal(after.state, "running");
  assert.equal(after.version, v0 + 1);
  const audit = (await api("/audit?limit=5")).body.entries;
  assert.ok(audit.some((e) => e.action === "drill_started" && e.actor === "bob" && /quiet tuesday/.test(e.reason) && e.source === "web"), JSON.stringify(audit));
  await kind(pageB, "running");
  clearInterval(stuckTimer);
});

test("with the control plane frozen, nothing can be decided from the page, and it says why", async () => {
  await pauseViaApi("e2e: frozen decisions");
  const f = await asAlice("/switches/workers/resume-requests", { method: "POST", body: JSON.stringify({ reason: "before the freeze" }) });
  assert.equal(f.status, 201, JSON.stringify(f.body));
  const card = pageB.getByTestId("resume-request");
  await card.waitFor({ timeout: 10000 });
  assert.equal(await card.getByTestId("approve-request").isDisabled(), false);
  server.kill("SIGSTOP");
  try {
    await pageB.getByTestId("banner").getByText(/No connection to the control plane/).waitFor({ timeout: 10000 });
    await card.getByTestId("approve-request").and(pageB.locator(":disabled")).waitFor({ timeout: 5000 });
    assert.equal(await card.getByTestId("reject-request").isDisabled(), true);
    assert.match(await card.getByTestId("request-approve-why").textContent(), /^No connection to the control plane: approving and rejecting wait until it answers\.$/);
    assert.equal(await pageB.getByTestId("drill-start").getAttribute("aria-disabled"), "true");
    assert.equal(await pageB.getByTestId("drill-why").textContent(), "No connection to the control plane: a drill waits until it answers.");
  } finally {
    server.kill("SIGCONT");
  }
  await pageB.getByTestId("banner").waitFor({ state: "hidden", timeout: 15000 });
  await card.getByTestId("approve-request").and(pageB.locator(":enabled")).waitFor({ timeout: 10000 });
  assert.equal(await pageB.getByTestId("drill-start").getAttribute("aria-disabled"), "false");
});
