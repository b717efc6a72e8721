// Entry point: pick the backend (Tauri or HTTP), load the state, follow live events.

// Must stay the first import: see locale-guard.ts.
import "./locale-guard";
import "./style.css";
import type { Backend } from "./backend";
import { HttpBackend } from "./http-backend";
import { applyEvent, applySnapshot, emptyModel, loadSeries, setConnection } from "./model";
import { TauriBackend, inTauri } from "./tauri-backend";
import { profileBar, reportPainted, showConnect, showConnecting } from "./connect";
import { App } from "./ui";

const TOKEN_KEY = "brb.token";

/** The web console's token: from `#token=...` (then removed from the address bar: it never
 * reaches the server's logs), else from this browser's storage. */
function webToken(): string | null {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    const t = decodeURIComponent(m[1]);
    localStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, "", location.pathname + location.search);
    return t;
  }
  return localStorage.getItem(TOKEN_KEY);
}

function askToken(mount: HTMLElement, problem?: string) {
  const form = document.createElement("form");
  form.className = "login";
  const h = document.createElement("h1");
  h.textContent = "Big Red Button";
  const p = document.createElement("p");
  p.textContent = problem ?? "Paste an API token (brb token create NAME --role operator).";
  const input = document.createElement("input");
  input.type = "password";
  input.autocomplete = "off";
  input.setAttribute("aria-label", "API token");
  input.dataset.testid = "token";
  const go = document.createElement("button");
  go.type = "submit";
  go.textContent = "Open";
  form.append(h, p, input, go);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  });
  mount.replaceChildren(form);
  input.focus();
}

async function start() {
  const mount = document.getElementById("app");
  if (!mount) return;
  let backend: Backend;
  let desktop: TauriBackend | null = null;
  if (inTauri()) {
    // Desktop: say "connecting…" at once (the keychain and the control plane answer later),
    // then put the profile switcher above, or the connect screen when there is no profile.
    desktop = new TauriBackend();
    backend = desktop;
    showConnecting(mount, null);
    reportPainted(desktop);
    desktop.onProfileChange(() => location.reload());
    const answer = await desktop.profiles();
    const active = answer.profiles.find((p) => p.active);
    if (!active) return showConnect(mount, desktop, answer);
    mount.before(profileBar(desktop, answer, mount));
    showConnecting(mount, active.name);
  } else {
    const token = webToken();
    if (!token) return askToken(mount);
    backend = new HttpBackend(token);
  }
  const model = emptyModel();
  const refresh = async () => {
    const p = model.info?.primary_switch;
    const startedAt = model.eventSeq;
    const [switches, audit, counts] = await Promise.all([
      backend.switches(),
      backend.audit(200),
      p ? backend.workers(p) : Promise.resolve(null),
    ]);
    applySnapshot(model, { switches, audit, counts }, startedAt);
  };
  try {
    model.info = await backend.info();
  } catch (e) {
    const err = e as { code?: string; message?: string };
    if (err.code === "unauthorized" && !inTauri()) {
      localStorage.removeItem(TOKEN_KEY);
      return askToken(mount, `That token was refused (${err.message}). Paste another.`);
    }
    if (desktop && err.code !== "unreachable") {
      // A refused token, a keychain that lost it, a bad CA file: fixing the profile is the
      // way out, so show it with the reason instead of retrying.
      const answer = await desktop.profiles();
      const active = answer.profiles.find((p) => p.active);
      return showConnect(mount, desktop, answer, {
        editing: active?.token.kind === "environment" ? undefined : active,
        problem: `Cannot use this profile: ${err.message ?? String(e)}`,
      });
    }
    mount.textContent = `Cannot reach the control plane: ${err.message ?? String(e)}`;
    setTimeout(() => location.reload(), 3000);
    return;
  }
  await refresh();
  loadSeries(model, await backend.series(Math.floor(Date.now() / 1000) - 3600));
  const app = new App(mount, model, backend, refresh);
  app.render();
  backend.onResumeRequest?.(() => app.askResume());
  let wasOpen = false;
  backend.subscribe(
    (ev) => {
      if (applyEvent(model, ev)) {
        // A change: fetch the audit log and counts so who/why/acks are exact.
        void refresh().then(() => app.render());
      }
      app.render();
    },
    (status, lastHeard) => {
      setConnection(model, status, Date.now(), lastHeard);
      if (status === "open" && wasOpen) {
        // Back after a drop: re-read everything, the stream resumes from its last id.
        void refresh()
          .then(() => backend.series(Math.floor(Date.now() / 1000) - 3600))
          .then((s) => loadSeries(model, s))
          .then(() => app.render());
      }
      if (status === "open") wasOpen = true;
      app.render();
    },
  );
  setInterval(() => app.render(), 1000);
}

start().catch((e: unknown) => {
  // Never a blank screen: say what went wrong and try again.
  const mount = document.getElementById("app");
  const err = e as { code?: string; message?: string };
  if (mount) {
    mount.textContent = `The console could not start: ${err.message ?? String(e)}${err.code ? ` (${err.code})` : ""}. Retrying in 5 s…`;
    mount.className = "fatal";
  }
  console.error(e);
  setTimeout(() => location.reload(), 5000);
});
