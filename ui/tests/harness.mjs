// What every browser end-to-end file needs: a real `brb server --demo` on a port of its own,
// Debian's Chromium, and the API beside the page. One copy, so a change to how the server is
// started or the browser launched (flags, timeouts) reaches every suite.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const bin = process.env.BRB_BIN ?? join(root, "target", "debug", "brb");
export const shots = process.env.BRB_SCREENSHOT_DIR ?? join(root, "target", "e2e-screenshots");

/** A fresh data directory for one suite's server. */
export const tempDataDir = (prefix) => mkdtempSync(join(tmpdir(), prefix));

/**
 * Starts `brb server --demo` (or without the demo: `demo: false`) on `listen` (default: a free
 * loopback port) and resolves when it says where it listens: `{ p, url }`. Staging colours, so
 * screenshots never look like production.
 */
export function startDemoServer(dataDir, { listen = "127.0.0.1:0", demo = true, args = [], env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, ["server", ...(demo ? ["--demo"] : []), "--listen", listen, "--data-dir", dataDir, ...args], {
      env: { ...process.env, BRB_ENVIRONMENT: "staging", BRB_ENVIRONMENT_COLOR: "#f57c00", BRB_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const timer = setTimeout(() => reject(new Error("server did not start")), 30000);
    p.stdout.on("data", (d) => {
      const m = /listening on (http:\/\/[\d.:]+)/.exec(String(d));
      if (m) {
        clearTimeout(timer);
        resolve({ p, url: m[1] });
      }
    });
    p.on("exit", (code) => reject(new Error(`server exited ${code}`)));
  });
}

/** The admin token the server wrote into its data directory. */
export const adminToken = (dataDir) => readFileSync(join(dataDir, "admin-token"), "utf8").trim();

/** Headless Debian Chromium with nothing of its own on the network. */
export async function launchChromium() {
  mkdirSync(shots, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** `api(path, init)` against `url` with `token`: `{ status, body }` (body parsed as JSON). */
export function apiClient(url, token) {
  return async (path, init = {}) => {
    const res = await fetch(`${url}/api/v1${path}`, {
      ...init,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...(init.headers ?? {}) },
    });
    return { status: res.status, body: await res.json() };
  };
}

/**
 * Waits until `GET /switches/{name}` satisfies `pred` (the page acted through the control
 * plane) and returns it; fails with what the switch was.
 */
export async function switchBecomes(api, pred, what, { name = "workers", ms = 10000 } = {}) {
  const end = Date.now() + ms;
  for (;;) {
    const last = (await api(`/switches/${name}`)).body;
    if (pred(last)) return last;
    if (Date.now() > end) throw new Error(`${what}: the switch is ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
