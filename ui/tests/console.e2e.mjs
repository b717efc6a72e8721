// Browser end-to-end: Debian's Chromium, headless, driven by Playwright, against a real
// `brb server --demo`. Screenshots of the main screen go to target/e2e-screenshots/ (never
// into the tracked docs/: the README's pictures are updated on purpose, by copying from there
// or by running with BRB_SCREENSHOT_DIR=docs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { join } from "node:path";
import { adminToken, apiClient, launchChromium, shots, startDemoServer, tempDataDir } from "./harness.mjs";

const dataDir = tempDataDir("brb-e2e-");

let server;
let url;
let port;
let token;
let browser;
let page;

const startServer = (listen) => startDemoServer(dataDir, { listen });

/** The API beside the page (set once the server is up). */
let api;

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

/** The state the big button shows: paused, draining, ramping, running or unknown. */
const kindOf = (p) => p.getByTestId("toggle").getAttribute("data-kind");

async function waitKind(p, kind, timeout = 15000) {
  await p.waitForFunction((k) => document.querySelector('[data-testid="toggle"]')?.dataset.kind === k, kind, { timeout });
}

/** Waits until every graph has drawn `n` more seconds of samples: `n` renders have passed. */
async function renders(p, n) {
  const newest = await p.evaluate(() => Math.max(...[...document.querySelectorAll("figure[data-series]")].map((f) => Number(f.dataset.last ?? 0))));
  await p.waitForFunction(
    ([t]) => Math.max(...[...document.querySelectorAll("figure[data-series]")].map((f) => Number(f.dataset.last ?? 0))) >= t,
    [newest + n],
    { timeout: 20000 },
  );
}

async function settle() {
  // A screenshot can lag a frame behind the DOM: let two frames pass.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

before(async () => {
  ({ p: server, url } = await startServer("127.0.0.1:0"));
  port = new URL(url).port;
  token = adminToken(dataDir);
  api = apiClient(url, token);
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
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
  // The tab says the state too (title and icon), for a tab in the background.
  await page.waitForFunction(() => document.title === "RUNNING · STAGING · Big Red Button");
  assert.equal(await page.locator('link[rel="icon"]').getAttribute("data-kind"), "running");
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

test("graphs have human titles with units, colours that mean something and stay, a legend", async () => {
  const captions = async () =>
    page.evaluate(() =>
      Object.fromEntries(
        [...document.querySelectorAll("figure[data-series]")].map((f) => [
          f.dataset.series,
          { title: f.querySelector("figcaption .title")?.textContent ?? f.querySelector("figcaption")?.textContent, color: getComputedStyle(f).getPropertyValue("--series").trim() },
        ]),
      ),
    );
  await page.locator('figure[data-series="fleet_paused{switch=workers}"]').waitFor({ timeout: 15000 });
  const before = await captions();
  assert.equal(before["db_load"].title, "Database load (%)");
  assert.equal(before["jobs_per_second"].title, "Jobs done (jobs/s)");
  assert.equal(before["fleet_in_flight{switch=workers}"].title, "Jobs in flight · switch workers (jobs)");
  for (const [k, c] of Object.entries(before)) assert.doesNotMatch(c.title, /[{}_]/, `raw key as the title of ${k}`);
  // Paused workers are drawn in the paused colour (red), running ones in the running colour.
  const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const [pr, pg, pb] = rgb(before["fleet_paused{switch=workers}"].color);
  assert.ok(pr > 180 && pg < 120 && pb < 120, `fleet_paused is ${before["fleet_paused{switch=workers}"].color}`);
  const [rr, rg] = rgb(before["fleet_running{switch=workers}"].color);
  assert.ok(rg > rr, `fleet_running is ${before["fleet_running{switch=workers}"].color}`);
  // Each series' latest value is in its caption.
  assert.match(await page.locator('figure[data-series="queue_depth"] [data-testid="latest"]').textContent(), /^now \d[\d,.]* jobs$/);
  const legend = await page.getByRole("list", { name: "Legend" }).textContent();
  for (const w of ["paused period", "paused (who: why)", "resumed", "no samples"]) assert.ok(legend.includes(w), `legend has "${w}": ${legend}`);
  // The same colours after a reload, whatever order the series arrive in.
  await page.reload();
  await page.locator('figure[data-series="fleet_paused{switch=workers}"]').waitFor({ timeout: 15000 });
  assert.deepEqual(await captions(), before);
});

test("keyboard and screen reader: stable switches, quiet live region, Enter submits, focus kept", async () => {
  await api("/switches", { method: "POST", body: JSON.stringify({ name: "search-indexing", description: "Pause search re-indexing" }) });
  const small = page.locator('[data-switch="search-indexing"]');
  await small.waitFor({ timeout: 10000 });
  // Focus stays on a small switch while the page keeps updating.
  await small.focus();
  await renders(page, 3);
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("data-switch")), "search-indexing", "focus left the switch");
  // One live region, and it does not speak while nothing changes.
  assert.deepEqual(await page.evaluate(() => [...document.querySelectorAll("[aria-live]")].map((e) => e.getAttribute("data-testid"))), ["live"]);
  await page.evaluate(() => {
    window.liveChanges = 0;
    new MutationObserver(() => window.liveChanges++).observe(document.querySelector('[data-testid="live"]'), { childList: true, characterData: true, subtree: true });
  });
  await renders(page, 3);
  assert.equal(await page.evaluate(() => window.liveChanges), 0, "the live region changed while nothing happened");
  // The accessibility tree names things as a screen reader says them.
  const tree = await page.locator("body").ariaSnapshot();
  assert.match(tree, /switch "Big Red Button: workers running; press to pause"/, tree);
  assert.match(tree, /switch "search-indexing: running; press to pause"/, tree);
  assert.match(tree, /figure "Database load graph":\n.*\n\s+- paragraph: "?Database load, last 5 min: now [\d.]+%, lowest/, tree);
  assert.match(tree, /- status: Workers running, changed by system/, tree);
  // Pause with the keyboard alone: Enter opens, the reason, Enter sends.
  await page.getByTestId("toggle").focus();
  await page.keyboard.press("Enter");
  await page.getByTestId("reason").waitFor({ state: "visible" });
  await page.keyboard.type("keyboard: db at 100%");
  await page.keyboard.press("Enter");
  await page.getByTestId("confirm").waitFor({ state: "hidden", timeout: 5000 });
  await waitKind(page, "paused");
  assert.equal((await api("/switches/workers")).body.reason, "keyboard: db at 100%");
  await page.getByTestId("acks").getByText(/40\/40 workers paused/).waitFor({ timeout: 15000 });
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("data-testid")), "toggle", "focus was lost by the pause");
  await page.getByTestId("live").getByText(/Workers paused, changed by admin from the web console: keyboard: db at 100%/).waitFor();
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", reason: "e2e: back" }) });
  await waitKind(page, "running");
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
  assert.equal(await kindOf(page), "paused");
  await page.waitForFunction(() => document.title === "PAUSED · STAGING · Big Red Button");
  assert.equal(await page.locator('link[rel="icon"]').getAttribute("data-kind"), "paused");
  // The audit says when with the date and the time zone.
  assert.match(await page.getByTestId("audit").locator("td.when").first().textContent(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (UTC|GMT[+-]?\d*|[A-Z]{2,5})$/);
  // Let the graphs show a few seconds of the pause before the picture.
  await graphsReach(page, Date.parse(sw.changed_at) / 1000 + 6);
  await page.evaluate(() => window.scrollTo(0, 0));
  await settle();
  await page.screenshot({ path: join(shots, "console-paused.png") });
});

test("the console fits a phone from 360 px: no sideways scrolling, the proof line in full", async () => {
  for (const [width, height] of [[360, 740], [390, 844]]) {
    const phone = await browser.newPage({ viewport: { width, height }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    try {
      await phone.goto(`${url}/#token=${token}`);
      await phone.getByTestId("acks").getByText(/40\/40 workers paused/).waitFor({ timeout: 15000 });
      await graphsReach(phone, Math.floor(Date.now() / 1000) - 1);
      const m = await phone.evaluate(() => {
        const r = (sel) => document.querySelector(sel).getBoundingClientRect().toJSON();
        const wide = [...document.querySelectorAll("body *")]
          .filter((e) => !e.closest(".table-scroll") && e.getBoundingClientRect().right > innerWidth + 0.5)
          .map((e) => `${e.tagName}.${e.className}`);
        return { scroll: document.documentElement.scrollWidth, inner: innerWidth, acks: r('[data-testid="acks"]'), line: r('[data-testid="state-line"]'), toggle: r('[data-testid="toggle"]'), wide };
      });
      assert.equal(m.scroll, m.inner, `${width} px: the page scrolls sideways (${m.scroll} px wide): ${m.wide.slice(0, 5)}`);
      assert.deepEqual(m.wide, [], `${width} px: cut off at the right`);
      for (const k of ["acks", "line", "toggle"]) {
        assert.ok(m[k].left >= 0 && m[k].right <= width, `${width} px: ${k} is cut off (${JSON.stringify(m[k])})`);
      }
      assert.ok(m.acks.bottom <= height, `${width} px: the proof line is below the fold (${m.acks.bottom})`);
      if (width === 390) await phone.screenshot({ path: join(shots, "console-phone.png") });
    } finally {
      await phone.close();
    }
  }
});

test("a change made through the API shows up live", async () => {
  const r = await api("/switches/workers/state", {
    method: "PUT",
    body: JSON.stringify({ state: "running", source: "cli", reason: "from the API", ramp: { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 } }),
  });
  assert.equal(r.status, 200);
  await page.getByTestId("toggle").getByText("RAMPING UP · 10%").waitFor({ timeout: 10000 });
  await page.getByTestId("ramp").getByText(/Ramping up: 10% of normal work admitted/).waitFor({ timeout: 5000 });
  assert.match(await page.getByTestId("state-line").textContent(), /from the CLI/);
  // Ramping is a state of its own: word, shape and colour differ from running and paused.
  await waitKind(page, "ramping");
  assert.match(await page.getByTestId("toggle").textContent(), /RAMPING UP · 10%/);
  await page.waitForFunction(() => document.title === "RAMPING 10% · STAGING · Big Red Button");
  await page.getByTestId("audit").getByText("10% → 25% → 50% → 100% over 10 min").first().waitFor();
});

test("each state has its own word, shape and colour", async () => {
  // The looks seen so far in this run, read from the page (running and paused earlier).
  const look = () =>
    page.evaluate(() => {
      const t = document.querySelector('[data-testid="toggle"]');
      return { kind: t.dataset.kind, word: t.querySelector(".big").textContent, icon: t.querySelector("svg path")?.getAttribute("d"), color: getComputedStyle(t).getPropertyValue("--state").trim() };
    });
  const ramping = await look();
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "e2e: looks" }) });
  await waitKind(page, "paused");
  const paused = await look();
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", reason: "e2e: looks" }) });
  await waitKind(page, "running");
  const running = await look();
  const all = [ramping, paused, running];
  for (const f of ["word", "icon", "color"]) {
    assert.equal(new Set(all.map((l) => l[f])).size, 3, `${f} is not distinct: ${JSON.stringify(all)}`);
  }
  // Back to the gradual release for the tests that follow.
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", reason: "e2e: looks" }) });
  await waitKind(page, "paused");
  await api("/switches/workers/state", {
    method: "PUT",
    body: JSON.stringify({ state: "running", source: "cli", reason: "from the API", ramp: { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 } }),
  });
  await waitKind(page, "ramping");
});

test("watching the graphs keeps the state in view; hovering reads a value", async () => {
  await page.setViewportSize({ width: 1280, height: 720 });
  try {
    await page.locator('figure[data-series="db_load"]').scrollIntoViewIfNeeded();
    await page.locator('figure[data-series="queue_depth"]').evaluate((e) => e.scrollIntoView({ block: "start" }));
    const sticky = page.getByTestId("sticky");
    await sticky.waitFor({ state: "visible", timeout: 5000 });
    const text = await sticky.textContent();
    assert.match(text, /RAMPING 10%/);
    assert.match(text, /\/40 workers running/);
    assert.match(text, /ramp 10%/);
    const box = await page.locator('figure[data-series="jobs_per_second"] canvas').boundingBox();
    await page.mouse.move(box.x + box.width - 30, box.y + box.height / 2);
    await page.locator('figure[data-series="jobs_per_second"] [data-testid="readout"]').getByText(/^\d\d:\d\d:\d\d: (\d[\d,.]* jobs\/s|no sample)/).waitFor({ timeout: 5000 });
    await settle();
    await page.screenshot({ path: join(shots, "console-watching.png") });
    await page.mouse.move(0, 0);
    await page.evaluate(() => window.scrollTo(0, 0));
    await sticky.waitFor({ state: "hidden", timeout: 5000 });
  } finally {
    await page.setViewportSize({ width: 1280, height: 1000 });
  }
});

test("a period without samples is a gap in the line, not a line across it", async () => {
  // db_latency_ms is measured only while jobs run: a pause of its own leaves it without
  // samples (the pauses of the tests above may be too short for a gap of 6 s).
  const points = async () => (await api("/metrics/series?name=db_latency_ms")).body.series[0].points;
  const put = (body) => api("/switches/workers/state", { method: "PUT", body: JSON.stringify(body) });
  assert.equal((await put({ state: "paused", source: "cli", reason: "e2e: a gap" })).status, 200);
  const deadline = Date.now() + 30000;
  while (Date.now() / 1000 - (await points()).at(-1)[0] < 7) {
    assert.ok(Date.now() < deadline, "db_latency_ms kept being sampled while paused");
    await page.waitForTimeout(250); // polling the series: the condition is the silence itself
  }
  const silentFrom = (await points()).at(-1)[0];
  assert.equal(
    (await put({ state: "running", source: "cli", reason: "from the API", ramp: { kind: "steps", fractions: [0.1, 0.25, 0.5, 1], duration_secs: 600 } })).status,
    200,
  );
  await waitKind(page, "ramping");
  while ((await points()).at(-1)[0] <= silentFrom) {
    assert.ok(Date.now() < deadline + 30000, "db_latency_ms was not sampled again after the release");
    await page.waitForTimeout(250);
  }
  // The gap is this test's pause: from the last point before it to the first after the release.
  const pts = await points();
  const after = pts.findIndex((p) => p[0] > silentFrom);
  const gap = [silentFrom, pts[after][0]];
  assert.ok(gap[1] - gap[0] >= 6, `no pause-long gap in db_latency_ms: ${JSON.stringify(pts.slice(-40))}`);
  // The control looks a few seconds past the release, clear of its change marker (drawn at the
  // release, where the first sample after the gap is: samples carry the second they describe).
  await graphsReach(page, gap[1] + 6);
  const fig = page.locator('figure[data-series="db_latency_ms"]');
  await page.waitForFunction((t) => Number(document.querySelector('figure[data-series="db_latency_ms"]').dataset.last) >= t, gap[1] + 6);
  const inColumn = (t) =>
    fig.evaluate((f, t) => {
      const plot = JSON.parse(f.dataset.plot);
      const c = f.querySelector("canvas");
      const k = c.width / c.clientWidth;
      const x = Math.round((plot.left + ((t - plot.from) / (plot.to - plot.from)) * plot.width) * k);
      const color = getComputedStyle(f).getPropertyValue("--series").trim();
      const want = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
      // Below the marker labels at the top, one column either side.
      const y0 = Math.round((plot.top + 20) * k);
      const h = Math.round((plot.height - 20) * k);
      const d = c.getContext("2d").getImageData(x - 1, y0, 3, h).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] > 200 && Math.abs(d[i] - want[0]) + Math.abs(d[i + 1] - want[1]) + Math.abs(d[i + 2] - want[2]) < 60) n++;
      }
      return n;
    }, t);
  // The control: where samples exist the line is found; in the middle of the gap, nothing.
  const lineAt = Math.min(gap[1] + 5, Number(await fig.getAttribute("data-last")));
  let control = 0;
  for (let t = gap[1] + 3; t <= lineAt && control === 0; t++) control += await inColumn(t);
  assert.ok(control > 0, `the line itself was not found (the pixel check is broken): ${JSON.stringify({ gap, pts: (await points()).slice(-12) })}`);
  assert.equal(await inColumn((gap[0] + gap[1]) / 2), 0, `a line is drawn across ${gap[0]}..${gap[1]} with no samples`);
});

test("a press against a frozen control plane fails in seconds, names the other ways, and a late apply is shown", async () => {
  await waitKind(page, "ramping");
  const stoppedAt = Date.now();
  server.kill("SIGSTOP");
  try {
    await page.getByTestId("toggle").click();
    await page.getByTestId("reason").fill("e2e: frozen");
    await page.getByTestId("confirm-pause").click();
    const pressed = Date.now();
    const error = page.getByTestId("error");
    await error.getByText(/did not answer within 5 s/).waitFor({ timeout: 9000 });
    assert.ok(Date.now() - pressed < 8000, `the press failed after ${Date.now() - pressed} ms`);
    const text = await error.textContent();
    for (const way of ["brb pause", "/bigred pause", "office button"]) assert.ok(text.includes(way), `the error names "${way}": ${text}`);
    assert.doesNotMatch(await page.getByTestId("toggle").textContent(), /PAUSING…/);
    // The stream's silence is noticed within ~5 s, and the outage's age is its true age.
    const banner = page.getByTestId("banner");
    await banner.getByText(/No connection to the control plane/).waitFor({ timeout: 8000 });
    assert.ok(Date.now() - stoppedAt < 9000, `noticed after ${Date.now() - stoppedAt} ms`);
    const said = Number(/nothing heard for (\d+) s/.exec(await banner.textContent())[1]);
    assert.ok(said * 1000 >= Date.now() - stoppedAt - 3500, `the banner says ${said} s; stopped ${Date.now() - stoppedAt} ms ago`);
    await waitKind(page, "unknown");
    assert.match(await page.getByTestId("toggle").textContent(), /STATE UNKNOWN.*last known: running at \d\d:\d\d:\d\d/);
    assert.match(await page.getByTestId("late").textContent(), /unconfirmed/);
  } finally {
    server.kill("SIGCONT");
  }
  // The control plane wakes up and applies the queued press: the page says it was this press.
  await page.getByTestId("late").getByText(/Your pause sent at \d\d:\d\d:\d\d, which timed out, was applied by the control plane at \d\d:\d\d:\d\d/).waitFor({ timeout: 15000 });
  await waitKind(page, "paused");
  assert.equal((await api("/switches/workers")).body.reason, "e2e: frozen");
  await page.getByTestId("banner").waitFor({ state: "hidden", timeout: 15000 });
  await page.getByTestId("late-dismiss").click();
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", reason: "e2e: thawed" }) });
  await waitKind(page, "running");
});

test("a dropped connection shows the banner and recovers", async () => {
  await page.getByTestId("acks").getByText(/40\/40 workers running/).waitFor({ timeout: 15000 });
  server.kill("SIGKILL");
  await page.getByTestId("banner").getByText(/No connection to the control plane/).waitFor({ timeout: 10000 });
  // Unknown, not a confident "running": grey, the last known state with its time, frozen.
  await waitKind(page, "unknown");
  const toggle = await page.getByTestId("toggle").textContent();
  assert.match(toggle, /STATE UNKNOWN/);
  assert.match(toggle, /last known: running at \d\d:\d\d:\d\d/);
  assert.match(await page.getByTestId("acks").textContent(), /^last known: 40\/40 workers running/);
  assert.equal(await page.locator('link[rel="icon"]').getAttribute("data-kind"), "unknown");
  const line = await page.getByTestId("state-line").textContent();
  const age = await page.getByTestId("banner").textContent();
  await page.waitForFunction((a) => document.querySelector('[data-testid="banner"]').textContent !== a, age, { timeout: 5000 });
  assert.equal(await page.getByTestId("state-line").textContent(), line, "the last known state kept ticking");
  // The banner cannot pass for the (red, in production) environment header.
  const look = await page.evaluate(() => {
    const b = getComputedStyle(document.querySelector('[data-testid="banner"]'));
    const e = getComputedStyle(document.querySelector('[data-testid="environment"]'));
    return { banner: b.backgroundColor, image: b.backgroundImage, env: e.backgroundColor };
  });
  assert.notEqual(look.banner, look.env);
  assert.match(look.image, /repeating-linear-gradient/, "the banner is striped");
  await settle();
  await page.screenshot({ path: join(shots, "console-unknown.png") });
  ({ p: server } = await startServer(`127.0.0.1:${port}`));
  await page.getByTestId("banner").waitFor({ state: "hidden", timeout: 30000 });
  await waitKind(page, "running");
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
