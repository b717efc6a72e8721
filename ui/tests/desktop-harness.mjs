// What the desktop end-to-end files share: the app binary, tauri-driver started in a process
// group of its own (so WebKitWebDriver and the app go with it), and free loopback ports for it.
// The server and the API come from harness.mjs, as for the browser suites.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";
import { Builder } from "selenium-webdriver";
import { root } from "./harness.mjs";

export const app = process.env.BRB_DESKTOP_BIN ?? join(root, "target", "debug", "brb-desktop");
export const driverBin = process.env.TAURI_DRIVER ?? join(homedir(), ".cargo", "bin", "tauri-driver");

/** A loopback port nobody holds now (tauri-driver needs two, and must not collide with other runs). */
export async function freePort() {
  const srv = createServer();
  await new Promise((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/**
 * Starts tauri-driver with `env` (the app inherits it), waits until it answers HTTP (failing
 * at once if it exits first) and opens the app: `{ driver, launchedAt, quit }`.
 */
export async function launchApp(env) {
  const port = await freePort();
  const nativePort = await freePort();
  const proc = spawn(driverBin, ["--port", String(port), "--native-port", String(nativePort)], {
    env,
    stdio: ["ignore", "ignore", "inherit"],
    detached: true,
  });
  const stop = () => {
    try {
      process.kill(-proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
  };
  let exited = null;
  proc.on("exit", (code) => (exited = code));
  const end = Date.now() + 30000;
  for (;;) {
    if (exited !== null) throw new Error(`tauri-driver exited ${exited}`);
    try {
      await fetch(`http://127.0.0.1:${port}/status`); // any answer: it is up
      break;
    } catch {
      if (Date.now() > end) {
        stop();
        throw new Error("tauri-driver did not answer within 30 s");
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const launchedAt = Date.now();
  const driver = await new Builder()
    .usingServer(`http://127.0.0.1:${port}/`)
    .withCapabilities({ browserName: "wry", "tauri:options": { application: app } })
    .build();
  return {
    driver,
    launchedAt,
    async quit() {
      await driver.quit().catch(() => {});
      stop();
    },
  };
}

/** What a read or a click can meet while the window reloads (after a save or a profile switch). */
const RELOADING = ["StaleElementReferenceError", "NoSuchElementError", "JavascriptError", "WebDriverError"];

/**
 * Waits until `f` returns something truthy, for at most `ms`; a read that met the window
 * reloading is tried again. A timeout says what `seen()` returns (what the app last showed).
 */
export async function eventually(f, { ms = 20000, seen = () => null } = {}) {
  const end = Date.now() + ms;
  let failed = "";
  for (;;) {
    let v;
    try {
      v = await f();
      failed = "";
    } catch (e) {
      if (!RELOADING.includes(e?.name)) throw e;
      failed = ` (the last read failed: ${e.name}: ${e.message})`;
    }
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out; the app last showed ${JSON.stringify(seen())}${failed}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
