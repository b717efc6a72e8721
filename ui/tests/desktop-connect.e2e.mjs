// Desktop end-to-end for the connect screen, named profiles (deleting one takes its keychain
// entry too), tokens in the OS keychain and the first frame: the real Tauri binary under Xvfb
// (tauri-driver + WebKitWebDriver), a real `brb server --demo`, and a real Secret Service: a
// private D-Bus session bus with gnome-keyring-daemon on it, its keyring in a temporary
// directory, unlocked with a test password, checked from outside with `secret-tool`. Run under xvfb-run (make test does).
// Screenshots go to target/e2e-screenshots/ (or BRB_SCREENSHOT_DIR).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer, connect } from "node:net";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { By, Key, until } from "selenium-webdriver";
import { startDemoServer } from "./harness.mjs";
import { app, eventually as waitFor, launchApp } from "./desktop-harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const shots = process.env.BRB_SCREENSHOT_DIR ?? join(root, "target", "e2e-screenshots");
const work = mkdtempSync(join(tmpdir(), "brb-desktop-connect-e2e-"));

let server;
let url;
let token;
let keyring; // { env, stop }
const cleanups = [];

let lastText = null;
const eventually = (f, ms = 20000) => waitFor(f, { ms, seen: () => lastText });

/**
 * A private session bus: its environment, and a stop function. Its own configuration has no
 * service directories, so nothing is started on demand: the only Secret Service on it is the
 * one the test starts (none at all for the "no keychain" case).
 */
async function sessionBus(dir) {
  mkdirSync(dir, { recursive: true });
  const config = join(dir, "bus.conf");
  writeFileSync(
    config,
    `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:dir=${dir}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy></busconfig>`,
  );
  const bus = spawn("dbus-daemon", [`--config-file=${config}`, "--nofork", "--print-address=1"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const address = await new Promise((resolve, reject) => {
    bus.once("exit", (c) => reject(new Error(`dbus-daemon exited ${c}`)));
    bus.stdout.once("data", (d) => resolve(String(d).trim().split("\n")[0]));
  });
  const stop = () => bus.kill("SIGKILL");
  cleanups.push(stop);
  const env = {
    ...process.env,
    DBUS_SESSION_BUS_ADDRESS: address,
    HOME: join(dir, "home"),
    XDG_DATA_HOME: join(dir, "data"),
    XDG_RUNTIME_DIR: join(dir, "run"),
    XDG_CONFIG_HOME: join(dir, "config"),
  };
  for (const d of ["home", "data", "run", "config"]) mkdirSync(join(dir, d), { recursive: true, mode: 0o700 });
  return { env, stop };
}

/** gnome-keyring's Secret Service on a private bus, unlocked with a test password. */
async function startKeyring() {
  const dir = join(work, "keyring");
  const bus = await sessionBus(dir);
  const daemon = spawn("gnome-keyring-daemon", ["--unlock", "--components=secrets", "--foreground"], {
    env: bus.env,
    stdio: ["pipe", "ignore", "inherit"],
  });
  daemon.stdin.end("e2e-keyring-password");
  cleanups.push(() => daemon.kill("SIGKILL"));
  // Ready when a secret can be stored and read back from outside.
  await eventually(() => {
    try {
      execFileSync("secret-tool", ["store", "--label=ready", "service", "brb-e2e-ready"], { env: bus.env, input: "ok", stdio: ["pipe", "ignore", "ignore"] });
      return true;
    } catch {
      return false;
    }
  });
  return { env: bus.env };
}

/** What the keychain holds for a profile, read with secret-tool (null when nothing). */
function keychainToken(env, profile) {
  try {
    return execFileSync("secret-tool", ["lookup", "service", "big-red-button", "username", `profile:${profile}`], {
      env,
      stdio: ["ignore", "pipe", "ignore"],
    }).toString();
  } catch {
    return null;
  }
}

/**
 * A TCP proxy in front of the server that holds every connection until `release()`: the
 * control plane's first answer comes exactly when the test says.
 */
async function slowProxy(target) {
  const held = [];
  let released = false;
  let answered = 0;
  const pipe = (sock) => {
    const up = connect(Number(new URL(target).port), "127.0.0.1");
    up.once("data", () => answered++);
    sock.pipe(up).pipe(sock);
    sock.on("error", () => up.destroy());
    up.on("error", () => sock.destroy());
  };
  const srv = createServer((sock) => (released ? pipe(sock) : held.push(sock)));
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  cleanups.push(() => srv.close());
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    held: () => held.length,
    answered: () => answered,
    release() {
      released = true;
      held.splice(0).forEach(pipe);
    },
  };
}

/** Starts tauri-driver with `env` (the app inherits it) and opens the app, stopped at the end. */
async function launch(env) {
  const a = await launchApp({ ...env, BRB_LOG: "info,brb_desktop=debug" });
  cleanups.push(() => void a.quit());
  return a;
}

const $ = (driver, id) => driver.findElement(By.css(`[data-testid="${id}"]`));
async function text(driver, id) {
  lastText = await (await $(driver, id)).getText();
  return lastText;
}
async function present(driver, id) {
  return (await driver.findElements(By.css(`[data-testid="${id}"]`))).length > 0;
}
async function type(driver, id, value) {
  const el = await $(driver, id);
  await el.clear();
  // One line at a time: a newline is the Enter key (a textarea's way to a new line).
  const lines = value.split("\n");
  for (const [i, line] of lines.entries()) {
    if (i > 0) await el.sendKeys(Key.ENTER);
    if (line) await el.sendKeys(line);
  }
}
async function shot(driver, name) {
  await driver.executeAsyncScript("const d = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(d));");
  writeFileSync(join(shots, name), await driver.takeScreenshot(), "base64");
}

before(async () => {
  statSync(app);
  mkdirSync(shots, { recursive: true });
  const dataDir = join(work, "server");
  ({ p: server, url } = await startDemoServer(dataDir, { env: { BRB_ENVIRONMENT: "production", BRB_ENVIRONMENT_COLOR: "#b71c1c" } }));
  token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();
  keyring = await startKeyring();
});

after(() => {
  server?.kill("SIGKILL");
  for (const c of cleanups.reverse()) {
    try {
      c();
    } catch {
      // best effort
    }
  }
});

test("start-up: the first frame says connecting… before the control plane's first answer; a token in the file moves to the keychain", async () => {
  const proxy = await slowProxy(url);
  const settings = join(work, "legacy", "desktop.json");
  mkdirSync(dirname(settings), { recursive: true });
  writeFileSync(settings, JSON.stringify({ profiles: [{ name: "legacy", urls: [proxy.url], token }], active: 0, shortcut: null, notifications: false }), { mode: 0o600 });
  const { driver, launchedAt, quit } = await launch({ ...keyring.env, BRB_DESKTOP_SETTINGS: settings });
  try {
    await eventually(async () => (await present(driver, "connecting")) && /Connecting/.test(await text(driver, "connecting")));
    const shownAfter = Date.now() - launchedAt;
    assert.equal(proxy.answered(), 0, "connecting… must be on screen before the control plane has answered anything");
    const firstPaint = Number(await eventually(() => driver.executeScript("return document.body.dataset.firstPaintMs;")));
    const inPage = Number(await driver.executeScript("return document.body.dataset.paintedAtPageMs;"));
    console.log(
      `# desktop start-up: first frame painted ${firstPaint} ms after process start, of which ${inPage} ms after the page's navigation began ` +
        `(connecting… seen by the test ${shownAfter} ms after the session request)`,
    );
    // The file's token is in the keychain and gone from the file.
    await eventually(() => keychainToken(keyring.env, "legacy") === token);
    await eventually(() => {
      const saved = JSON.parse(readFileSync(settings, "utf8"));
      lastText = JSON.stringify(saved);
      return saved.profiles.length === 1 && !("token" in saved.profiles[0]) && saved.profiles[0].urls[0] === proxy.url;
    });
    assert.equal((statSync(settings).mode & 0o777).toString(8), "600");
    proxy.release();
    await eventually(async () => (await present(driver, "toggle")) && /WORKERS RUNNING/.test(await text(driver, "toggle")));
  } finally {
    await quit();
  }
});

test("first run: the connect screen says which step failed, keeps what was typed on bad input, and saves profiles with tokens in the keychain; the switcher changes profile", async () => {
  const settings = join(work, "first", "desktop.json");
  assert.equal(existsSync(settings), false);
  const { driver, quit } = await launch({ ...keyring.env, BRB_DESKTOP_SETTINGS: settings });
  try {
    await driver.wait(until.elementLocated(By.css('[data-testid="connect-form"]')), 20000);
    await type(driver, "profile-name", "staging");
    await type(driver, "profile-urls", `https://brb-nowhere.invalid:7070\n${url}`);
    await type(driver, "profile-token", "brb_wrong_token");
    await (await $(driver, "test-connection")).click();
    const steps = await eventually(async () => {
      lastText = `${await text(driver, "probe-results")} | ${await (await $(driver, "connect-error")).getAttribute("textContent")}`;
      const items = await driver.findElements(By.css('[data-testid="probe-result"]'));
      if (items.length !== 2) return null;
      return Promise.all(items.map((i) => i.getAttribute("data-step")));
    });
    assert.deepEqual(steps, ["dns", "unauthorized"]);
    assert.match(await text(driver, "probe-results"), /Name lookup \(DNS\) failed[\s\S]*Token refused \(401\)/);

    // Bad input: a clear error naming the field, and nothing typed is lost.
    await type(driver, "profile-name", "");
    await (await $(driver, "save-profile")).click();
    await eventually(async () => /Name:/.test(await text(driver, "connect-error")));
    assert.match(await (await $(driver, "profile-urls")).getAttribute("value"), /brb-nowhere\.invalid/);
    assert.equal(await (await $(driver, "profile-token")).getAttribute("value"), "brb_wrong_token");
    assert.equal(existsSync(settings), false, "nothing saved");

    await type(driver, "profile-name", "staging");
    await type(driver, "profile-urls", url);
    await type(driver, "profile-token", token);
    await (await $(driver, "test-connection")).click();
    await eventually(async () => {
      const items = await driver.findElements(By.css('[data-testid="probe-result"]'));
      return items.length === 1 && (await items[0].getAttribute("data-step")) === "ok";
    });
    // Staging's own colour (the test offered the server's red): the switcher and the tray tell
    // the two apart.
    await driver.executeScript("const c = document.querySelector('[data-testid=\"profile-color\"]'); c.value = '#f9a825';");
    await shot(driver, "desktop-connect.png");
    await (await $(driver, "save-profile")).click();
    await eventually(async () => (await present(driver, "toggle")) && /WORKERS/.test(await text(driver, "toggle")));
    assert.equal(keychainToken(keyring.env, "staging"), token, "the token is in the keychain");
    const saved = readFileSync(settings, "utf8");
    assert.equal(saved.includes(token), false, "the token is not in the settings file");
    assert.equal(JSON.parse(saved).profiles[0].name, "staging");
    assert.equal(JSON.parse(saved).profiles[0].color, "#f9a825");

    // A second profile, then switch back from the window's switcher.
    await (await $(driver, "add-profile")).click();
    await driver.wait(until.elementLocated(By.css('[data-testid="connect-form"]')), 5000);
    await type(driver, "profile-name", "production");
    await type(driver, "profile-urls", url);
    await type(driver, "profile-token", token);
    await (await $(driver, "save-profile")).click();
    await eventually(async () => (await present(driver, "profile-select")) && (await (await $(driver, "profile-select")).getAttribute("value")) === "production");
    assert.equal(JSON.parse(readFileSync(settings, "utf8")).active, 1);
    assert.equal(keychainToken(keyring.env, "production"), token);
    await eventually(async () => (await present(driver, "toggle")) && /WORKERS/.test(await text(driver, "toggle")));
    await shot(driver, "desktop-profiles.png");
    await (await driver.findElement(By.css('[data-testid="profile-select"] option[value="staging"]'))).click();
    await eventually(() => JSON.parse(readFileSync(settings, "utf8")).active === 0);
    await eventually(async () => (await present(driver, "profile-select")) && (await (await $(driver, "profile-select")).getAttribute("value")) === "staging");
    await eventually(async () => (await present(driver, "toggle")) && /WORKERS/.test(await text(driver, "toggle")));

    // Deleting the active profile: asked once more, then gone from the file, the keychain and
    // the switcher; the window starts again on the profile left, whose token stays.
    await (await $(driver, "edit-profile")).click();
    await driver.wait(until.elementLocated(By.css('[data-testid="delete-profile"]')), 5000);
    await (await $(driver, "delete-profile")).click();
    await eventually(async () => /Delete the profile staging\? its token is removed from the OS keychain/.test(await text(driver, "delete-confirm")));
    assert.equal(keychainToken(keyring.env, "staging"), token, "nothing is deleted before the confirmation");
    assert.equal(JSON.parse(readFileSync(settings, "utf8")).profiles.length, 2);
    await (await $(driver, "confirm-delete-profile")).click();
    await eventually(() => {
      const saved = JSON.parse(readFileSync(settings, "utf8"));
      lastText = JSON.stringify(saved);
      return saved.profiles.length === 1 && saved.profiles[0].name === "production" && saved.active === 0;
    });
    await eventually(() => keychainToken(keyring.env, "staging") === null);
    assert.equal(keychainToken(keyring.env, "production"), token, "the other profile's token stays");
    await eventually(async () => (await present(driver, "profile-select")) && (await (await $(driver, "profile-select")).getAttribute("value")) === "production");
    const left = await driver.findElements(By.css('[data-testid="profile-select"] option'));
    assert.deepEqual(await Promise.all(left.map((o) => o.getAttribute("value"))), ["production"]);
    await eventually(async () => (await present(driver, "toggle")) && /WORKERS/.test(await text(driver, "toggle")));
  } finally {
    await quit();
  }
});

test("no keychain: the token stays in the settings file, untouched, and the window says so", async () => {
  const bare = await sessionBus(join(work, "bare"));
  const settings = join(work, "bare", "desktop.json");
  const original = JSON.stringify({ profiles: [{ name: "laptop", urls: [url], token }], active: 0, shortcut: null, notifications: false });
  writeFileSync(settings, original, { mode: 0o600 });
  const { driver, quit } = await launch({ ...bare.env, BRB_DESKTOP_SETTINGS: settings });
  try {
    await eventually(async () => (await present(driver, "toggle")) && /WORKERS/.test(await text(driver, "toggle")));
    await eventually(async () => (await present(driver, "keychain-notice")) && /No OS keychain is available/.test(await text(driver, "keychain-notice")));
    assert.match(await text(driver, "keychain-notice"), /0600/);
    assert.equal(readFileSync(settings, "utf8"), original, "the file is exactly as it was");
    assert.equal(keychainToken(keyring.env, "laptop"), null, "nothing went to the other session's keychain");
  } finally {
    await quit();
  }
});
