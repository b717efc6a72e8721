// The desktop app's tray, OS notifications and global shortcut, driven and observed through
// the protocols a real desktop uses: the real Tauri binary under Xvfb in a D-Bus session of
// its own, against a real `brb server --demo`.
//
// - The tray: Tauri's tray on Linux is libayatana-appindicator, a StatusNotifierItem with a
//   com.canonical.dbusmenu menu. `tray_host.py` is the panel: it owns the
//   StatusNotifierWatcher, reads the menu with GetLayout (the Profile submenu and its check
//   marks too), clicks with Event("clicked"), and reads the icon's pixels as a panel gets them
//   (IconPixmap, or the PNG file IconName names).
// - Notifications: dunst (Debian's) owns org.freedesktop.Notifications; the test reads what
//   it received through dunst's own D-Bus interface (closed, then its history).
// - The shortcut: xdotool types the key combination into the X server, where the app holds a
//   grab on it.
// - The window: tauri-driver and WebKitWebDriver, as in desktop.e2e.mjs.
//
// Run it as make test does:
//   dbus-run-session -- xvfb-run -a -s '-screen 0 1280x900x24' node --test tests/tray.e2e.mjs
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdtempSync, readFileSync, writeFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { By, until } from "selenium-webdriver";
import { startDemoServer } from "./harness.mjs";
import { app, launchApp } from "./desktop-harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const dataDir = mkdtempSync(join(tmpdir(), "brb-tray-e2e-"));
// Debian's Python, where python3-dbus and python3-gi live (a pyenv shim may come first on PATH).
const python = process.env.BRB_SYSTEM_PYTHON ?? "/usr/bin/python3";
const SHORTCUT = "CommandOrControl+Shift+F12";

let server;
let url;
let token;
// A second control plane, for the tray's Profile submenu.
let stagingUrl;
let stagingToken;
let settings;
const E2E_COLOR = "#1565c0";
const STAGING_COLOR = "#f9a825";
let host;
let dunst;
let driver;
let quit;
const children = [];

async function call(base, tok, path, init = {}) {
  const res = await fetch(`${base}/api/v1${path}`, {
    ...init,
    headers: { authorization: `Bearer ${tok}`, "content-type": "application/json" },
  });
  return { status: res.status, body: await res.json() };
}
const api = (path, init) => call(url, token, path, init);

const primary = async () => (await api("/switches/workers")).body;

// What the last poll saw, so that a timeout says what was there instead.
let lastSeen = null;

async function eventually(f, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out; last saw ${JSON.stringify(lastSeen)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// The tray host: one JSON line per command, answers matched by id; unprompted events queued.
function startHost() {
  const proc = spawn(python, [join(here, "tray_host.py")], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(proc);
  const waiting = new Map();
  const events = [];
  let next = 1;
  let wake = () => {};
  createInterface({ input: proc.stdout }).on("line", (line) => {
    const msg = JSON.parse(line);
    if (msg.event) {
      events.push(msg);
      wake();
    } else {
      waiting.get(msg.id)?.(msg);
      waiting.delete(msg.id);
    }
  });
  const exited = new Promise((_, reject) => proc.on("exit", (code) => reject(new Error(`tray host exited ${code}`))));
  exited.catch(() => {});
  return {
    async call(cmd, args = {}) {
      const id = next++;
      const answer = new Promise((resolve) => waiting.set(id, resolve));
      proc.stdin.write(JSON.stringify({ id, cmd, ...args }) + "\n");
      const msg = await Promise.race([answer, exited]);
      if (msg.error) throw new Error(`tray host: ${msg.error}`);
      return msg;
    },
    async event(name, ms = 30000) {
      const end = Date.now() + ms;
      for (;;) {
        const hit = events.find((e) => e.event === name);
        if (hit) return hit;
        if (Date.now() > end) throw new Error(`no "${name}" from the tray host; saw ${JSON.stringify(events)}`);
        await Promise.race([new Promise((r) => (wake = r)), new Promise((r) => setTimeout(r, 500)), exited]);
      }
    },
  };
}

// The tray menu as a panel would show it: [label, enabled] per entry, separators left out.
async function menu() {
  const { items } = await host.call("menu");
  lastSeen = items.filter((i) => i.type !== "separator").map((i) => [i.label, i.enabled]);
  return lastSeen;
}

// Every notification dunst has received so far (it keeps them in its history once closed).
async function notifications() {
  const { notifications } = await host.call("notifications");
  lastSeen = notifications.map((n) => `${n.summary} | ${n.body}`);
  return notifications;
}

function xdotool(...args) {
  return new Promise((resolve, reject) =>
    execFile("xdotool", args, (err, stdout, stderr) => (err ? reject(new Error(`xdotool ${args.join(" ")}: ${stderr || err.message}`)) : resolve(stdout))),
  );
}

before(async () => {
  statSync(app); // fails clearly if the desktop binary was not built
  assert.ok(process.env.DBUS_SESSION_BUS_ADDRESS, "run under dbus-run-session: the tray and notifications talk D-Bus");
  assert.ok(process.env.DISPLAY, "run under xvfb-run");
  // The panel first: an app that finds no StatusNotifierWatcher falls back to an XEmbed icon.
  host = startHost();
  await host.event("ready");
  dunst = spawn("dunst", [], { stdio: ["ignore", "ignore", "inherit"] });
  children.push(dunst);
  await eventually(async () => (await host.call("has_owner", { name: "org.freedesktop.Notifications" })).owned);

  let p;
  ({ p, url } = await startDemoServer(dataDir, { env: { BRB_ENVIRONMENT: "production", BRB_ENVIRONMENT_COLOR: "#b71c1c" } }));
  server = p;
  children.push(server);
  token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
  const stagingDir = join(dataDir, "staging");
  let staging;
  ({ p: staging, url: stagingUrl } = await startDemoServer(stagingDir, { demo: false, env: { BRB_ENVIRONMENT: "staging" } }));
  children.push(staging);
  stagingToken = readFileSync(join(stagingDir, "admin-token"), "utf8").trim();
  settings = join(dataDir, "desktop.json");
  writeFileSync(
    settings,
    JSON.stringify({
      profiles: [
        { name: "e2e", urls: [url], token, color: E2E_COLOR },
        { name: "staging", urls: [stagingUrl], token: stagingToken, color: STAGING_COLOR },
      ],
      active: 0,
      shortcut: SHORTCUT,
      shortcut_action: "pause",
      notifications: true,
    }),
  );
  ({ driver, quit } = await launchApp({ ...process.env, BRB_DESKTOP_SETTINGS: settings, BRB_LOG: "warn" }));
});

after(async () => {
  await quit?.();
  for (const c of children) c.kill("SIGKILL");
});

test("the app's tray registers with the panel's StatusNotifierWatcher and its menu says the state", async () => {
  // As a person would, start once the window shows the state.
  const toggle = await driver.wait(until.elementLocated(By.css('[data-testid="toggle"]')), 20000);
  await eventually(async () => {
    lastSeen = await toggle.getText();
    return /WORKERS RUNNING/.test(lastSeen);
  });
  const reg = await host.event("registered");
  assert.match(reg.path, /^\//);
  await eventually(async () => {
    const m = await menu();
    return m.some(([l]) => l === "Workers running") && m.some(([l, on]) => l === "Pause workers" && on);
  });
  // The state line is information, not a button.
  assert.deepEqual((await menu()).find(([l]) => l === "Workers running"), ["Workers running", false]);
});

test("one click on the tray's Pause workers pauses at once, recorded as the tray's, and the menu follows", async () => {
  const before = await primary();
  assert.equal(before.state, "running");
  await host.call("click", { label: "Pause workers" });
  const paused = await eventually(async () => {
    lastSeen = await primary();
    return lastSeen.state === "paused" ? lastSeen : null;
  }, 10000);
  assert.equal(paused.source, "tray");
  assert.equal(paused.reason, "paused from the tray");
  assert.equal(paused.version, before.version + 1);
  await eventually(async () => {
    const m = await menu();
    return m.some(([l]) => l === "Workers PAUSED") && m.some(([l]) => l === "Resume workers…");
  });
});

test("the pause is announced as an OS notification through org.freedesktop.Notifications", async () => {
  const seen = await eventually(async () =>
    (await notifications()).find((n) => n.summary === "[production] Workers PAUSED"),
  );
  assert.equal(seen.body, "by admin from tray: paused from the tray");
  assert.equal(seen.appname, "brb-desktop");
});

test("the tray's Resume workers… releases nothing: it brings up the resume dialog, gradual first", async () => {
  const before = await primary();
  assert.equal(before.state, "paused", "the tray's pause is still in force");
  await host.call("click", { label: "Resume workers…" });
  const dialog = await driver.wait(until.elementLocated(By.css('[data-testid="confirm-release"]')), 10000);
  await driver.wait(until.elementIsVisible(dialog), 5000);
  await eventually(async () => {
    const f = await driver.executeScript("return [document.activeElement?.id, document.activeElement?.checked];");
    lastSeen = f;
    return f[0] === "release-steps" && f[1] === true;
  });
  const still = await primary();
  assert.equal(still.state, "paused", "nothing was released");
  assert.equal(still.version, before.version, "nothing was written");
  // The person chooses in the dialog: the gradual release it offers first.
  await dialog.click();
  const released = await eventually(async () => {
    lastSeen = await primary();
    return lastSeen.state === "running" ? lastSeen : null;
  });
  assert.equal(released.source, "desktop");
  assert.equal(released.ramp?.kind, "steps");
  await eventually(async () => (await menu()).some(([l]) => l === "Pause workers"));
});

test("a change made elsewhere is announced too", async () => {
  const cur = await primary();
  assert.equal(cur.state, "running");
  const res = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "paused", source: "cli", reason: "db at 100%" }) });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const seen = await eventually(async () =>
    (await notifications()).find((n) => n.summary === "[production] Workers PAUSED" && n.body.includes("from cli")),
  );
  assert.equal(seen.body, "by admin from cli: db at 100%");
  await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", source: "cli", reason: "db recovered" }) });
  await eventually(async () => (await notifications()).find((n) => n.summary === "[production] Workers resumed" && n.body === "by admin from cli: db recovered"));
});

test("the global shortcut pauses from the keyboard and never resumes", async () => {
  const before = await eventually(async () => {
    lastSeen = await primary();
    return lastSeen.state === "running" ? lastSeen : null;
  });
  // What a keyboard (or a USB button that acts as one) sends: the X server delivers it to the
  // app's grab, whichever window has the focus.
  await xdotool("key", "ctrl+shift+F12");
  const paused = await eventually(async () => {
    lastSeen = await primary();
    return lastSeen.state === "paused" ? lastSeen : null;
  }, 10000);
  assert.equal(paused.source, "desktop");
  assert.equal(paused.reason, "paused with the keyboard shortcut");
  assert.equal(paused.version, before.version + 1);
  // Pressed again while paused: it stays paused, nothing is written, and the app says so (a
  // press that changes nothing on screen cannot be told from a missed key).
  await eventually(async () => same((await iconColours()).body, await stateColour("paused")));
  const icons = (await host.call("icon_changes")).count;
  await xdotool("key", "ctrl+shift+F12");
  const notice = await eventually(
    async () => (await notifications()).find((n) => n.summary === "[production] Workers already PAUSED"),
    10000,
  );
  assert.equal(notice.body, "by admin from desktop: paused with the keyboard shortcut");
  const after = await primary();
  assert.equal(after.state, "paused");
  assert.equal(after.version, paused.version);
  // Nothing changed, so the tray icon was not set again: each icon set is a new file with the
  // old one deleted, which a panel still reading the old name finds gone. Resumed from
  // elsewhere, the icon turns green with one new icon, not two.
  const res = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", source: "cli", reason: "e2e: after the second press" }) });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  await eventually(async () => same((await iconColours()).body, await stateColour("running")));
  assert.equal((await host.call("icon_changes")).count - icons, 1);
  // The next test starts from the shortcut's pause.
  await xdotool("key", "ctrl+shift+F12");
  await eventually(async () => (await primary()).state === "paused");
});

// Where a panel's pixels are read: the icon's body (the state: a red, green or grey disc) and
// the band along its bottom third (the environment's colour, `mark_environment`).
const BODY = [16, 8];
const BAND = [16, 28];
const iconsDir = join(here, "..", "..", "src-tauri", "icons");
const rgba = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)).concat(255);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** The tray icon's body and band colours as the panel gets them (IconPixmap, or the file it names). */
async function iconColours() {
  const i = await host.call("icon", { at: [BODY, BAND] });
  lastSeen = i;
  return { source: i.source, body: i.pixels[0], band: i.pixels[1] };
}

/** The body colour of the app's own icon for a state, read from the PNG it ships. */
async function stateColour(state) {
  return (await host.call("png", { path: join(iconsDir, `tray-${state}.png`), at: [BODY] })).pixels[0];
}

async function iconShows(body, band) {
  return eventually(async () => {
    const c = await iconColours();
    return same(c.body, body) && same(c.band, band) ? c : null;
  });
}

/** The Profile submenu: [label, checked] per profile. */
async function profiles() {
  const { items } = await host.call("menu");
  lastSeen = items.filter((i) => i.parent === "Profile").map((i) => [i.label, i.checked]);
  return lastSeen;
}

test("the tray icon shows the state in its body and the environment's colour as a band along its bottom", async () => {
  const [red, green] = [await stateColour("paused"), await stateColour("running")];
  assert.notDeepEqual(red, green);
  // Paused by the shortcut above: red, with the e2e profile's blue band.
  assert.equal((await primary()).state, "paused");
  const shown = await iconShows(red, rgba(E2E_COLOR));
  console.log(`# the tray host read the icon from the item's ${shown.source}`);
  const res = await api("/switches/workers/state", { method: "PUT", body: JSON.stringify({ state: "running", source: "cli", reason: "e2e: the icon follows" }) });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  await iconShows(green, rgba(E2E_COLOR));
});

test("the tray's Profile submenu lists the profiles, and choosing one moves the app, its icon and its pause to that control plane", async () => {
  assert.deepEqual(await profiles(), [
    ["e2e", true],
    ["staging", false],
  ]);
  const production = await primary();
  await host.call("click", { label: "staging", parent: "Profile" });
  await eventually(() => JSON.parse(readFileSync(settings, "utf8")).active === 1);
  // The app rebuilds its menu on a switch: a read that meets the rebuild is read again.
  await eventually(async () => same(await profiles().catch(() => null), [["e2e", false], ["staging", true]]));
  // Staging's amber band, and the state of staging's control plane (running) in the body.
  await iconShows(await stateColour("running"), rgba(STAGING_COLOR));
  await eventually(async () => {
    const m = await menu();
    return m.some(([l]) => l === "Workers running") && m.some(([l, on]) => l === "Pause workers" && on);
  });
  // The tray now acts on staging: its pause lands there, and production is left alone.
  await host.call("click", { label: "Pause workers" });
  const paused = await eventually(async () => {
    lastSeen = (await call(stagingUrl, stagingToken, "/switches/workers")).body;
    return lastSeen.state === "paused" ? lastSeen : null;
  }, 10000);
  assert.equal(paused.source, "tray");
  assert.equal((await primary()).version, production.version, "production was not touched");
  await iconShows(await stateColour("paused"), rgba(STAGING_COLOR));
  await eventually(async () => (await notifications()).find((n) => n.summary === "[staging] Workers PAUSED"));
});
