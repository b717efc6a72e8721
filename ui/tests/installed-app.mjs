// Used by scripts/test-package.sh: starts an installed desktop binary (argv[2]) under Xvfb
// through tauri-driver, pointed at a running control plane by BRB_URL and BRB_TOKEN, and waits
// until its window shows the primary switch's state as the control plane has it. Prints what
// it showed; exits non-zero (with what it showed last) when it does not within 30 s.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";
import { Builder, By } from "selenium-webdriver";

const app = process.argv[2];
const driverBin = process.env.TAURI_DRIVER ?? join(homedir(), ".cargo", "bin", "tauri-driver");
const { BRB_URL: url, BRB_TOKEN: token } = process.env;
if (!app || !url || !token) {
  console.error("usage: BRB_URL=... BRB_TOKEN=... node installed-app.mjs /usr/bin/APP");
  process.exit(2);
}

async function freePort() {
  const srv = createServer();
  await new Promise((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

const sw = await (await fetch(`${url}/api/v1/switches/workers`, { headers: { authorization: `Bearer ${token}` } })).json();
const want = sw.state === "paused" ? "WORKERS PAUSED" : "WORKERS RUNNING";
const port = await freePort();
const driverProc = spawn(driverBin, ["--port", String(port), "--native-port", String(await freePort())], {
  stdio: ["ignore", "ignore", "inherit"],
  detached: true,
});
let shown = null;
let driver;
try {
  const end = Date.now() + 30000;
  for (;;) {
    try {
      await fetch(`http://127.0.0.1:${port}/status`);
      break;
    } catch {
      if (Date.now() > end) throw new Error("tauri-driver did not answer");
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  driver = await new Builder()
    .usingServer(`http://127.0.0.1:${port}/`)
    .withCapabilities({ browserName: "wry", "tauri:options": { application: app } })
    .build();
  for (;;) {
    try {
      shown = await (await driver.findElement(By.css('[data-testid="toggle"]'))).getText();
    } catch {
      shown = null; // not rendered yet
    }
    if (shown?.includes(want)) break;
    if (Date.now() > end) throw new Error(`the app showed ${JSON.stringify(shown)}, not ${want}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  console.log(`installed app shows: ${shown.replace(/\s+/g, " ")}`);
} catch (e) {
  console.error(`installed-app: ${e.message}`);
  process.exitCode = 1;
} finally {
  await driver?.quit().catch(() => {});
  try {
    process.kill(-driverProc.pid, "SIGKILL");
  } catch {
    // already gone
  }
}
