// Desktop end-to-end for resume approval and the fire drill (issue 17, parts 2 and 3, in the
// desktop app of issue 16): the real Tauri binary under Xvfb (tauri-driver + WebKitWebDriver)
// against a real `brb server` whose primary switch needs a second operator. One app with three
// profiles, switched from the window's profile switcher as a person would: the operators alice
// and bob, and the admin. Every action is a click in the window, and what it does goes through
// the app's Rust commands (brb_request_resume, brb_decide_resume, brb_break_glass, brb_drill,
// brb_drill_report): the webview holds no token and its CSP allows no HTTP, only IPC. The test
// checks each outcome twice: in the window, and on the control plane over HTTP from Node.
// A real SDK watcher answers the drill (the Python SDK's Gate, in a process of its own); a
// worker that reports but never hears the switch does not, and one gone silent is stale.
// Run under xvfb-run (make test does). Screenshots go to target/e2e-screenshots/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { By } from "selenium-webdriver";
import { adminToken, apiClient, root, shots, startDemoServer, switchBecomes as becomes, tempDataDir } from "./harness.mjs";
import { app, eventually as waitFor, launchApp } from "./desktop-harness.mjs";

const work = tempDataDir("brb-desktop-approval-e2e-");
const dataDir = join(work, "server");
const config = join(work, "brb.toml");
// The primary switch needs a second operator. Workers that stop reporting are stale after
// 10 s (the Python gate reports every 5 s, the stuck worker every second).
writeFileSync(
  config,
  `[primary.approval]
resume = 1
expire = "15m"

[limits]
worker_stale_secs = 10
`,
);

// The Python SDK's Gate on the primary switch: it answers a drill by reporting its version.
const GATE_PY = `
import os, threading
from brb_client import Gate, GateConfig
gate = Gate(GateConfig(urls=[os.environ["BRB_URL"]], token=os.environ["BRB_TOKEN"], worker_id="python-gate", switch="workers"))
print("ready" if gate.ready(20) else "not ready", flush=True)
threading.Event().wait()
`;

let server;
let url;
let gate;
/** The API as the admin and as alice (from Node: the test's own view of the control plane). */
let api;
let asAlice;
let adminName;
let driver;
let quit;
let stuckTimer = null;

const sw = async () => (await api("/switches/workers")).body;
const switchBecomes = (pred, what, ms = 20000) => becomes(api, pred, what, { ms });

async function token(name, role) {
  const r = await api("/tokens", { method: "POST", body: JSON.stringify({ name, role }) });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.secret;
}

async function report(id, version) {
  const r = await api("/workers/report", {
    method: "POST",
    body: JSON.stringify({ worker_id: id, switch: "workers", observed_version: version, status: "running", in_flight: 0, processed_total: 0 }),
  });
  assert.ok(r.status === 200 || r.status === 204, JSON.stringify(r.body));
}

/** Starts the Python SDK's gate and resolves once it is connected. */
function startGate(secret) {
  return new Promise((resolve, reject) => {
    const p = spawn("python3", ["-c", GATE_PY], {
      env: { ...process.env, PYTHONPATH: join(root, "sdk", "python", "src"), BRB_URL: url, BRB_TOKEN: secret },
      stdio: ["ignore", "pipe", "inherit"],
    });
    p.on("exit", (code) => reject(new Error(`the Python gate exited ${code}`)));
    p.stdout.on("data", (d) => (/^ready/m.test(String(d)) ? resolve(p) : reject(new Error(`the Python gate: ${d}`))));
  });
}

// What the window showed last, so that a timeout says what the app showed instead.
let lastSeen = null;

const eventually = (f, ms = 20000) => waitFor(f, { ms, seen: () => lastSeen });

/** Everything the test reads from the window, in one round trip. */
async function look() {
  lastSeen = await driver.executeScript(`
    const t = (id, root = document) => root.querySelector('[data-testid="' + id + '"]');
    const shown = (el) => !!el && !el.classList.contains('hidden');
    const text = (el) => (el ? el.textContent : null);
    const card = t('resume-request');
    const dialog = t('confirm');
    const drill = t('drill');
    return {
      page: window.__e2ePage ?? null,
      profile: t('profile-select')?.value ?? null,
      kind: t('toggle')?.dataset.kind ?? null,
      requests: shown(t('requests')),
      card: card && {
        title: text(card.querySelector('h2')),
        asked: text(t('request-asked', card)),
        reason: text(t('request-reason', card)),
        release: text(t('request-release', card)),
        expires: text(t('request-expires', card)),
        approveDisabled: t('approve-request', card)?.disabled ?? null,
        approveWhy: text(t('request-approve-why', card)),
        approveDescribedBy: t('approve-request', card)?.getAttribute('aria-describedby') ?? null,
        approveWhyId: t('request-approve-why', card)?.id ?? null,
        reject: text(t('reject-request', card)),
        rejectDisabled: t('reject-request', card)?.disabled ?? null,
        glass: !!t('break-glass', card),
      },
      dialog: dialog?.open ? dialog.textContent : null,
      releaseProblem: shown(t('release-problem')) ? text(t('release-problem')) : null,
      glassProblem: shown(t('glass-problem')) ? text(t('glass-problem')) : null,
      banner: shown(t('banner')) ? text(t('banner')) : null,
      error: shown(t('error')) ? text(t('error')) : null,
      drill: drill && {
        disabled: t('drill-start', drill)?.getAttribute('aria-disabled') ?? null,
        why: shown(t('drill-why', drill)) ? text(t('drill-why', drill)) : null,
        report: shown(t('drill-report', drill)) ? text(t('drill-report', drill).querySelector('h3')) : null,
        summary: text(t('drill-summary', drill)),
        status: text(t('drill-status', drill)),
        missing: text(t('drill-missing', drill)),
        stale: text(t('drill-stale', drill)),
        answered: [...(t('drill-answered', drill)?.querySelectorAll('li') ?? [])].map((li) => li.textContent),
      },
      audit: (text(t('audit')) ?? '').slice(0, 3000),
    };`);
  return lastSeen;
}

/** Waits until the window satisfies `pred` and returns what it showed. */
const shows = (pred, ms) => eventually(async () => ((s) => (pred(s) ? s : null))(await look()), ms);

const click = async (css) => (await driver.findElement(By.css(css))).click();
const tid = (id) => `[data-testid="${id}"]`;
async function type(css, value) {
  const el = await driver.findElement(By.css(css));
  await el.clear();
  await el.sendKeys(value);
}

/** A Tauri command called straight from the webview, as the UI's backend calls it. */
const invoke = (cmd, args) =>
  driver.executeAsyncScript(
    "const done = arguments[arguments.length - 1]; window.__TAURI_INTERNALS__.invoke(arguments[0], arguments[1]).then((ok) => done({ ok }), (error) => done({ error }));",
    cmd,
    args,
  );

/**
 * Switches the app to profile `name` from the window's switcher (brb_use_profile) and waits
 * for the window to start again on it.
 */
async function useProfile(name) {
  const now = await shows((s) => s.kind !== null);
  if (now.profile === name && now.page === name) return;
  await driver.executeScript("window.__e2ePage = 'leaving';");
  await click(`${tid("profile-select")} option[value="${name}"]`);
  await shows((s) => s.page === null && s.profile === name && s.kind !== null, 30000);
  await driver.executeScript("window.__e2ePage = arguments[0];", name);
}

async function shot(name) {
  await driver.executeAsyncScript("const d = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(d));");
  writeFileSync(join(shots, name), await driver.takeScreenshot(), "base64");
}

async function pauseViaApi(reason) {
  if ((await sw()).state === "paused") return;
  const r = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason, source: "cli" }) });
  assert.equal(r.status, 200, JSON.stringify(r.body));
}

/** Paused, with a fresh request of alice's filed over the API (a test's starting point). */
async function aliceAsked(reason) {
  await pauseViaApi(`e2e: before "${reason}"`);
  const open = (await sw()).resume_request;
  if (open) {
    const r = await api(`/switches/workers/resume-requests/${open.id}/reject`, { method: "POST", body: "{}" });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  const f = await asAlice("/switches/workers/resume-requests", { method: "POST", body: JSON.stringify({ reason }) });
  assert.equal(f.status, 201, JSON.stringify(f.body));
  return (await switchBecomes((s) => s.resume_request?.reason === reason, `request "${reason}" filed`)).resume_request;
}

const audit = async () => (await api("/audit?limit=10")).body.entries;

before(async () => {
  statSync(app); // fails clearly if the desktop binary was not built
  mkdirSync(shots, { recursive: true });
  ({ p: server, url } = await startDemoServer(dataDir, { demo: false, args: ["--config", config] }));
  api = apiClient(url, adminToken(dataDir));
  adminName = (await api("/info")).body.caller.name;
  const alice = await token("alice", "operator");
  const bob = await token("bob", "operator");
  asAlice = apiClient(url, alice);
  gate = await startGate(await token("python-worker", "viewer"));
  // A worker that went silent long before the drill: stale by then.
  await report("gone", (await sw()).version);
  const settings = join(work, "desktop.json");
  const profile = (name, secret) => ({ name, urls: [url], token: secret });
  writeFileSync(
    settings,
    JSON.stringify({ profiles: [profile("alice", alice), profile("bob", bob), profile("admin", adminToken(dataDir))], active: 0, shortcut: null, notifications: false }),
    { mode: 0o600 },
  );
  // No session bus: the tokens stay in this file and nothing reaches a real keychain.
  ({ driver, quit } = await launchApp({
    ...process.env,
    BRB_DESKTOP_SETTINGS: settings,
    BRB_LOG: "warn",
    DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(work, "no-bus")}`,
  }));
  await shows((s) => s.kind !== null, 30000);
  await driver.executeScript("window.__e2ePage = 'alice';");
});

after(async () => {
  clearInterval(stuckTimer);
  await quit?.();
  gate?.removeAllListeners("exit");
  gate?.kill("SIGKILL");
  server?.kill("SIGCONT");
  server?.kill("SIGKILL");
});

test("alice's resume from the app becomes a request shown under the button; she cannot approve it; bob approves from his profile and the app shows the release", async () => {
  await useProfile("alice");
  await pauseViaApi("e2e: db on fire");
  await shows((s) => s.kind === "paused");

  // Said before anyone presses: the dialog files a request, and wants a reason.
  await click(tid("toggle"));
  const dialog = await shows((s) => s.dialog !== null);
  assert.match(dialog.dialog, /This switch needs a second operator: your resume becomes a request.*within 15 min/);
  assert.equal(await (await driver.findElement(By.css(tid("confirm-release")))).getText(), "Request resume: gradually over 10 min");
  const before = await sw();
  await click(tid("confirm-release"));
  assert.equal((await shows((s) => s.releaseProblem !== null)).releaseProblem, "Say why: the approver decides on it.");
  assert.equal((await sw()).version, before.version, "nothing was sent without a reason");
  await type(tid("request-reason-input"), "queue drained");
  await click(tid("confirm-release"));

  // Recorded by the control plane as the desktop's: still paused, the request on the switch.
  const asked = await switchBecomes((s) => !!s.resume_request, "request filed");
  assert.equal(asked.state, "paused");
  assert.equal(asked.resume_request.requested_by, "alice");
  assert.equal(asked.resume_request.reason, "queue drained");
  assert.equal(asked.resume_request.ramp.duration_secs, 600);
  assert.equal(asked.resume_request.source, "desktop");

  // Under the button: the request, and Approve not offered to her, with the reason.
  const mine = await shows((s) => s.requests && s.card !== null && s.dialog === null);
  assert.equal(mine.kind, "paused");
  assert.equal(mine.error, null);
  assert.equal(mine.card.title, "Resume of background workers requested: needs a second operator");
  assert.match(mine.card.asked, /^alice asked at \d\d:\d\d:\d\d \(\d+ s ago\)$/);
  assert.equal(mine.card.reason, "Why: queue drained");
  assert.equal(mine.card.release, "Release: gradually, 10% → 25% → 50% → 100% over 10 min");
  assert.match(mine.card.expires, /^Expires at \d\d:\d\d:\d\d \(in 1[45] min\)$/);
  assert.equal(mine.card.approveDisabled, true);
  assert.equal(mine.card.approveWhy, "You asked for this resume: another operator must approve it.");
  assert.equal(mine.card.approveDescribedBy, mine.card.approveWhyId);
  assert.equal(mine.card.reject, "Withdraw");
  assert.equal(mine.card.glass, false, "an operator cannot break glass");
  await shot("desktop-resume-request.png");
  // The command itself refuses her approval with the control plane's reason.
  const self = await invoke("brb_decide_resume", { name: "workers", id: asked.resume_request.id, approve: true, req: {} });
  assert.equal(self.error?.code, "self_approval", JSON.stringify(self));
  assert.equal((await sw()).state, "paused");

  // Bob's profile: the same request, Approve offered; he approves after one more look.
  await useProfile("bob");
  const his = await shows((s) => s.card !== null);
  assert.equal(his.card.approveDisabled, false);
  assert.equal(his.card.approveWhy, null);
  assert.equal(his.card.reject, "Reject");
  await click(`${tid("resume-request")} ${tid("approve-request")}`);
  const confirm = await shows((s) => s.dialog !== null);
  assert.match(confirm.dialog, /Approve alice's resume of background workers in STAGING\?.*Why they ask: queue drained.*10% → 25% → 50% → 100% over 10 min/);
  await type(tid("approve-note"), "looks calm");
  await click(tid("confirm-approve"));
  const resumed = await switchBecomes((s) => s.state === "running", "approved");
  assert.equal(resumed.changed_by, "bob");
  assert.equal(resumed.source, "desktop");
  assert.equal(resumed.ramp.duration_secs, 600);
  assert.match(resumed.reason, /^approved by bob; requested by alice: queue drained \(looks calm\)$/);
  assert.equal(resumed.resume_request, undefined);

  // The app shows the release applied: ramping, no request left, the approval in its audit.
  const applied = await shows((s) => s.kind === "ramping" && !s.requests && /approved by bob/.test(s.audit));
  assert.equal(applied.error, null);
});

test("bob rejects alice's request and alice withdraws hers, from the app: the switch stays paused", async () => {
  await useProfile("bob");
  const r1 = await aliceAsked("try again");
  await shows((s) => s.card?.reason === "Why: try again" && s.card.reject === "Reject");
  await click(`${tid("resume-request")} ${tid("reject-request")}`);
  await switchBecomes((s) => !s.resume_request, "rejected");
  assert.equal((await sw()).state, "paused");
  await shows((s) => !s.requests && s.kind === "paused" && /rejected by bob/.test(s.audit));
  assert.ok((await audit()).some((e) => e.action === "resume_rejected" && e.actor === "bob" && e.source === "desktop" && e.reason.startsWith(`resume request ${r1.id} by alice`)));

  await useProfile("alice");
  const r2 = await aliceAsked("changed my mind");
  await shows((s) => s.card?.reason === "Why: changed my mind" && s.card.reject === "Withdraw" && s.card.rejectDisabled === false);
  await click(`${tid("resume-request")} ${tid("reject-request")}`);
  await switchBecomes((s) => !s.resume_request, "withdrawn");
  assert.equal((await sw()).state, "paused");
  await shows((s) => !s.requests && s.kind === "paused");
  const withdrawn = (await audit()).find((e) => e.action === "resume_rejected" && e.reason.startsWith(`resume request ${r2.id} by alice`));
  assert.equal(withdrawn?.actor, "alice", JSON.stringify(withdrawn));
  assert.equal(withdrawn.source, "desktop");
});

test("the admin breaks glass from the app behind a loud confirmation that wants a reason, and the audit says so", async () => {
  await useProfile("admin");
  await aliceAsked("need it now");
  const card = await shows((s) => s.card?.reason === "Why: need it now" && s.card.glass);
  assert.equal(card.card.approveDisabled, false, "the admin did not ask: approve is offered too");
  await click(`${tid("resume-request")} ${tid("break-glass")}`);
  const confirm = await shows((s) => s.dialog !== null);
  assert.match(confirm.dialog, /BREAK GLASS: resume background workers in STAGING without a second operator\?.*recorded as BREAK GLASS with your name/);
  const before = await sw();
  await click(tid("confirm-break-glass"));
  assert.equal((await shows((s) => s.glassProblem !== null)).glassProblem, "Say why: breaking the glass must be explained.");
  assert.equal((await sw()).version, before.version, "nothing was sent without a reason");
  await type(tid("glass-reason"), "e2e: db recovered, bob asleep");
  await click(tid("confirm-break-glass"));
  const s = await switchBecomes((x) => x.state === "running", "glass broken");
  assert.equal(s.reason, `BREAK GLASS by ${adminName}, without approval: e2e: db recovered, bob asleep`);
  assert.equal(s.source, "desktop");
  const entry = (await audit()).find((e) => e.version === s.version);
  assert.equal(entry?.reason, s.reason, JSON.stringify(entry));
  const shown = await shows((x) => x.kind === "running" && !x.requests && x.audit.includes(`BREAK GLASS by ${adminName}, without approval`));
  assert.equal(shown.error, null);
});

test("a fire drill started from the app pauses nothing and reports who answered (the Python SDK's gate), who did not and who is stale", async () => {
  await useProfile("admin");
  const v0 = (await sw()).version;
  // A worker that reports but never hears the switch: it cannot answer.
  await report("stuck", v0);
  stuckTimer = setInterval(() => void report("stuck", v0).catch(() => {}), 1000);
  for (const end = Date.now() + 30000; ; ) {
    const w = (await api("/switches/workers/workers")).body.workers ?? [];
    const by = (id) => w.find((x) => x.worker_id === id);
    if (by("gone")?.stale && by("python-gate") && !by("python-gate").stale && by("stuck")) break;
    if (Date.now() > end) throw new Error(`workers not as the drill needs them: ${JSON.stringify(w)}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  const idle = await shows((s) => s.drill?.disabled === "false");
  assert.equal(idle.drill.why, null);
  await click(tid("drill-start"));
  const confirm = await shows((s) => s.dialog !== null);
  assert.match(confirm.dialog, /Start a fire drill on workers in STAGING\?.*Nothing will pause and no one is paged/);
  await type(tid("drill-reason"), "quiet tuesday");
  await click(tid("confirm-drill"));

  // The report fills in as the Python gate answers, then the window ends with one silent worker.
  const answered = await shows((s) => s.drill?.answered.length === 1);
  assert.match(answered.drill.summary, /^1\/2 live workers answered · p50 \d+ ms · p99 \d+ ms · max \d+ ms; nothing paused$/);
  assert.match(answered.drill.answered[0], /^python-gate: \d+ ms$/);
  assert.match(answered.drill.report, new RegExp(`^Drill of workers \\(version ${v0 + 1}\\) at \\d\\d:\\d\\d:\\d\\d$`));
  const over = await shows((s) => /^Over:/.test(s.drill?.status ?? ""), 25000);
  assert.equal(over.drill.status, "Over: 1 live worker did not answer in 10 s.");
  assert.equal(over.drill.disabled, "false");
  assert.match(over.drill.missing, /^stuck: last report \d+ s ago \(running, version \d+ from [\d.:]+\)$/);
  assert.match(over.drill.stale, /^gone: silent for \d+ (s|min) \(last report running, version \d+ from [\d.:]+\)$/);
  await driver.executeScript("document.querySelector('[data-testid=\"drill\"]').scrollIntoView({ block: 'end' });");
  await shot("desktop-drill.png");

  // Nothing paused: same state, one version more, and the audit has the desktop's drill.
  const after = await sw();
  assert.equal(after.state, "running");
  assert.equal(after.version, v0 + 1);
  const a = await audit();
  assert.ok(a.some((e) => e.action === "drill_started" && e.actor === adminName && /quiet tuesday/.test(e.reason) && e.source === "desktop"), JSON.stringify(a));
  clearInterval(stuckTimer);
});

test("with the control plane unreachable, the app's approval and drill controls are disabled with their reason", async () => {
  await useProfile("admin");
  await aliceAsked("before the freeze");
  const up = await shows((s) => s.card?.reason === "Why: before the freeze" && s.card.approveDisabled === false && s.drill?.disabled === "false");
  assert.equal(up.card.glass, true);
  server.kill("SIGSTOP");
  try {
    const down = await shows((s) => s.banner !== null && s.card?.approveDisabled === true && s.drill?.disabled === "true");
    assert.match(down.banner, /^No connection to the control plane/);
    assert.equal(down.card.approveWhy, "No connection to the control plane: approving and rejecting wait until it answers.");
    assert.equal(down.card.rejectDisabled, true);
    assert.equal(down.card.glass, false, "no break glass either");
    assert.equal(down.drill.why, "No connection to the control plane: a drill waits until it answers.");
    await shot("desktop-approval-unreachable.png");
  } finally {
    server.kill("SIGCONT");
  }
  const back = await shows((s) => s.banner === null && s.card?.approveDisabled === false && s.drill?.disabled === "false", 30000);
  assert.equal(back.card.glass, true);
});
