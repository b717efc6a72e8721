// Accessibility end-to-end: axe-core (pinned in package-lock.json) run by Debian's Chromium
// against the real console of a real `brb server --demo`, in each state a person meets:
// running, paused (with the pause dialog open), ramping (with the release controls),
// unknown (the control plane frozen with SIGSTOP) and at a 390 px phone width. No serious or
// critical violation may be left in any of them.
//
// axe is evaluated in the page through the DevTools protocol (`page.evaluate`), which the
// console's Content-Security-Policy (no inline script) does not apply to: the page under test
// is the page as served, its CSP intact.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { adminToken, apiClient, launchChromium, startDemoServer, switchBecomes, tempDataDir } from "./harness.mjs";

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const dataDir = tempDataDir("brb-a11y-e2e-");

let server;
let url;
let token;
let api;
let browser;

before(async () => {
  ({ p: server, url } = await startDemoServer(dataDir));
  token = adminToken(dataDir);
  api = apiClient(url, token);
  browser = await launchChromium();
});

after(async () => {
  server?.kill("SIGCONT");
  await browser?.close();
  server?.kill("SIGKILL");
});

async function open(viewport = { width: 1280, height: 900 }) {
  const page = await browser.newPage({ viewport });
  await page.goto(`${url}/#token=${token}`);
  await page.getByTestId("toggle").waitFor({ timeout: 20000 });
  // The graphs and the acknowledgements are part of what is checked: wait for them.
  await page.getByTestId("acks").getByText(/\d+\/\d+ workers/).waitFor({ timeout: 20000 });
  return page;
}

const kind = (page, k, timeout = 15000) =>
  page.waitForFunction((want) => document.querySelector('[data-testid="toggle"]')?.dataset.kind === want, k, { timeout });

/**
 * Runs axe (WCAG 2.0/2.1 A and AA, plus best practices) on the page as it is and fails with
 * every serious or critical violation: rule, impact, what it says, and where.
 */
async function audit(page, state) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, {
      runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
      resultTypes: ["violations"],
    });
    return {
      version: r.testEngine.version,
      violations: r.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.map((n) => `${n.target.join(" ")}: ${n.failureSummary.replace(/\s+/g, " ")}`).slice(0, 5),
      })),
    };
  });
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  const minor = result.violations.filter((v) => !bad.includes(v)).map((v) => `${v.id} (${v.impact})`);
  console.log(`# axe ${result.version}, ${state}: ${bad.length} serious/critical, ${minor.length} other${minor.length ? `: ${minor.join(", ")}` : ""}`);
  assert.deepEqual(bad, [], `${state}: serious or critical accessibility violations:\n${JSON.stringify(bad, null, 2)}`);
}

test("running: no serious or critical violations", async () => {
  const page = await open();
  await kind(page, "running");
  await audit(page, "running");
  await page.close();
});

test("paused, with the pause dialog open: no serious or critical violations", async () => {
  const page = await open();
  await kind(page, "running");
  await page.getByTestId("toggle").click();
  await page.getByTestId("reason").waitFor({ state: "visible" });
  await audit(page, "pause dialog");
  await page.getByTestId("reason").fill("e2e: axe");
  await page.getByTestId("confirm-pause").click();
  await kind(page, "paused");
  await page.getByTestId("acks").getByText(/workers paused/).waitFor({ timeout: 15000 });
  await audit(page, "paused");
  // The resume dialog (gradual first, the backlog, the guard field).
  await page.getByTestId("toggle").click();
  await page.getByTestId("confirm-release").waitFor({ state: "visible" });
  await audit(page, "resume dialog");
  await page.close();
});

test("ramping, with the release controls: no serious or critical violations", async () => {
  const page = await open();
  const r = await api("/switches/workers/state", {
    method: "PUT",
    body: JSON.stringify({ state: "running", reason: "e2e: axe ramp", source: "cli", ramp: { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 } }),
  });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  await kind(page, "ramping");
  await page.getByTestId("ramp").waitFor({ state: "visible" });
  await audit(page, "ramping");
  await page.close();
});

test("unknown (the control plane frozen): no serious or critical violations", async () => {
  const page = await open();
  server.kill("SIGSTOP");
  try {
    await kind(page, "unknown", 15000);
    await page.getByTestId("banner").waitFor({ state: "visible" });
    await audit(page, "unknown");
  } finally {
    server.kill("SIGCONT");
  }
  await kind(page, "ramping", 30000);
  await page.close();
});

test("a 390 px phone: no serious or critical violations", async () => {
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "e2e: phone", source: "cli" }) });
  await switchBecomes(api, (s) => s.state === "paused", "paused for the phone view");
  const page = await open({ width: 390, height: 844 });
  await kind(page, "paused");
  await audit(page, "phone, paused");
  await page.close();
});
