// Desktop only: the connect screen (first run, "Add profile", "Edit") and the profile switcher
// above the console. The token is typed here and handed to the Rust side, which keeps it in
// the OS keychain; nothing here ever reads a token back.

import type { ProbeReport, ProfileDraft, ProfileStore, ProfilesAnswer, ProfileView } from "./backend";
import { h } from "./dom";

const STEP_TITLES: Record<ProbeReport["step"], string> = {
  settings: "Settings",
  dns: "Name lookup (DNS) failed",
  connect: "Connection failed",
  tls: "TLS failed",
  unauthorized: "Token refused (401)",
  forbidden: "Token not allowed (403)",
  wrong_server: "Not a Big Red Button control plane",
  ok: "OK",
};

/** What the first frame says until the control plane answers. */
export function showConnecting(mount: HTMLElement, profile: string | null) {
  mount.replaceChildren(
    h(
      "p",
      { class: "boot", "data-testid": "connecting", role: "status" },
      profile ? `Connecting to ${profile}…` : "Connecting…",
    ),
  );
}

/** Tells the Rust side once the current frame is on screen (two animation frames). */
export function reportPainted(store: ProfileStore) {
  requestAnimationFrame(() =>
    requestAnimationFrame(() => {
      // Where the page's own clock stood: the e2e splits the figure into "before the page
      // loaded" and "the page's own work".
      const pageMs = performance.now();
      document.body.dataset.paintedAtPageMs = String(Math.round(pageMs));
      void store
        .painted(pageMs)
        .then((ms) => {
          document.body.dataset.firstPaintMs = String(ms);
        })
        .catch(() => {});
    }),
  );
}

function field(label: string, input: HTMLElement, hint?: string) {
  return h("label", { class: "field" }, h("span", {}, label), input, ...(hint ? [h("small", {}, hint)] : []));
}

function input(testid: string, value: string, attrs: Record<string, string> = {}) {
  const el = h("input", { "data-testid": testid, autocomplete: "off", spellcheck: "false", ...attrs });
  el.value = value;
  return el;
}

function keychainNotice(answer: ProfilesAnswer, profile?: ProfileView) {
  const inFile = profile?.token.kind === "file" ? profile.token.reason : answer.keychain_problem;
  if (!inFile) return null;
  return h(
    "p",
    { class: "notice", "data-testid": "keychain-notice", role: "note" },
    `No OS keychain is available (${inFile}). Tokens are kept in ${answer.settings_path}, readable only by you (mode 0600), and moved to the keychain at the next start where one answers.`,
  );
}

/**
 * The connect form. `editing` prefills it from a profile (its token is kept unless a new one is
 * pasted). On bad input it says what is wrong and keeps everything typed.
 */
export function showConnect(
  mount: HTMLElement,
  store: ProfileStore,
  answer: ProfilesAnswer,
  opts: { editing?: ProfileView; problem?: string; onCancel?: () => void } = {},
) {
  const e = opts.editing;
  const name = input("profile-name", e?.name ?? (answer.profiles.length ? "" : "production"));
  const color = input("profile-color", e?.color ?? "#b71c1c", { type: "color" });
  const urls = h("textarea", { "data-testid": "profile-urls", rows: "3", spellcheck: "false", placeholder: "https://brb.example.internal:7070" });
  urls.value = (e?.urls ?? []).join("\n");
  const token = input("profile-token", "", {
    type: "password",
    placeholder: e ? "leave empty to keep the saved token" : "brb_…",
  });
  const ca = input("profile-ca", e?.ca_file ?? "", { placeholder: "/etc/ssl/private-ca.pem" });
  const cert = input("profile-cert", e?.client_cert ?? "");
  const key = input("profile-key", e?.client_key ?? "");
  const insecure = input("profile-insecure", "", { type: "checkbox" });
  insecure.checked = e?.insecure_http ?? false;
  const error = h("p", { class: "error hidden", "data-testid": "connect-error", role: "alert" });
  const results = h("ul", { class: "probe", "data-testid": "probe-results", "aria-live": "polite" });
  const test = h("button", { type: "button", "data-testid": "test-connection" }, "Test connection");
  const save = h("button", { type: "submit", class: "primary", "data-testid": "save-profile" }, "Save profile");
  const buttons = h("div", { class: "dialog-buttons" }, test, save);
  if (opts.onCancel) {
    const cancel = h("button", { type: "button", "data-testid": "cancel-profile" }, "Cancel");
    cancel.addEventListener("click", () => opts.onCancel?.());
    buttons.append(cancel);
  }
  // Deleting asks once more, naming what goes: the profile and its token in the keychain.
  const removal = e && e.token.kind !== "environment" ? deleteControls(e, store, (m) => fail(m)) : null;
  if (removal) buttons.append(removal.button);
  const notice = keychainNotice(answer, e);
  const form = h(
    "form",
    { class: "connect", "data-testid": "connect-form", "aria-label": "Connect to a control plane" },
    h("h1", {}, e ? `Edit profile ${e.name}` : answer.profiles.length ? "Add a profile" : "Connect to a control plane"),
    h(
      "p",
      {},
      opts.problem ??
        "Give the control plane's address (one line per replica) and an API token (brb token create NAME --role operator). The token is kept in the OS keychain.",
    ),
    ...(notice ? [notice] : []),
    field("Profile name", name, "e.g. staging, production"),
    field("Environment colour", color, "shown on the tray icon and above the console"),
    field("URLs", urls, "one per line; several for replicas"),
    field("API token", token),
    field("CA file (optional)", ca, "PEM bundle of a private CA that signed the control plane's certificate"),
    field("Client certificate (optional)", cert, "PEM, when the control plane asks for mutual TLS"),
    field("Client key (optional)", key),
    h("label", { class: "check" }, insecure, " allow plain http:// to a host other than this machine (a TLS proxy on a trusted hop)"),
    error,
    results,
    buttons,
    ...(removal ? [removal.confirm] : []),
  );
  const draft = (): ProfileDraft => ({
    name: name.value,
    urls: urls.value.split(/[\n,]/).map((u) => u.trim()).filter(Boolean),
    token: token.value.trim() || null,
    ca_file: ca.value.trim() || null,
    client_cert: cert.value.trim() || null,
    client_key: key.value.trim() || null,
    color: color.value || null,
    insecure_http: insecure.checked,
  });
  const fail = (err: unknown) => {
    const m = err as { message?: string; code?: string };
    error.textContent = m.message ?? String(err);
    error.classList.remove("hidden");
  };
  const busy = (on: boolean) => {
    test.disabled = on;
    save.disabled = on;
  };
  test.addEventListener("click", () => {
    error.classList.add("hidden");
    results.replaceChildren(h("li", {}, "Testing…"));
    busy(true);
    store
      .testConnection(draft(), e?.name ?? null)
      .then((rs) => {
        results.replaceChildren(
          ...rs.map((r) =>
            h(
              "li",
              { class: r.step === "ok" ? "ok" : "bad", "data-step": r.step, "data-testid": "probe-result" },
              h("strong", {}, `${r.url}: ${STEP_TITLES[r.step]}`),
              ` — ${r.message}`,
            ),
          ),
        );
        // The server knows its environment's colour: offer it for a new profile.
        const env = rs.find((r) => r.environment)?.environment;
        if (env && !e && /^#[0-9a-f]{6}$/i.test(env.color)) color.value = env.color;
      })
      .catch((err) => {
        results.replaceChildren();
        fail(err);
      })
      .finally(() => busy(false));
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.classList.add("hidden");
    busy(true);
    store
      .saveProfile(draft(), e?.name ?? null)
      // Connected to the new profile on the Rust side: start the window again on it.
      .then(() => location.reload())
      .catch((err) => {
        busy(false);
        fail(err);
      });
  });
  mount.replaceChildren(form);
  (e ? urls : name).focus();
}

/**
 * "Delete profile" and its confirmation. After the deletion the window starts again (on the
 * profile now active, or the connect screen); a token the keychain would not remove is said
 * first, and the window starts again when the person has read it.
 */
function deleteControls(p: ProfileView, store: ProfileStore, fail: (message: string) => void) {
  const button = h("button", { type: "button", class: "delete", "data-testid": "delete-profile" }, "Delete profile");
  const yes = h("button", { type: "button", class: "delete", "data-testid": "confirm-delete-profile" }, `Delete ${p.name}`);
  const no = h("button", { type: "button", "data-testid": "keep-profile" }, "Keep it");
  const where = p.token.kind === "keychain" ? "its token is removed from the OS keychain" : "its token goes with it";
  const confirm = h(
    "div",
    { class: "confirm-delete hidden", "data-testid": "delete-confirm", role: "group", "aria-label": `Delete profile ${p.name}` },
    h("p", {}, `Delete the profile ${p.name}? ${where}; the control plane is not touched.`),
    yes,
    no,
  );
  button.addEventListener("click", () => {
    confirm.classList.remove("hidden");
    no.focus();
  });
  no.addEventListener("click", () => {
    confirm.classList.add("hidden");
    button.focus();
  });
  yes.addEventListener("click", () => {
    yes.disabled = true;
    store
      .deleteProfile(p.name)
      .then((left) => {
        if (!left) return location.reload();
        fail(`The profile ${p.name} is deleted, but its token is still in the OS keychain: ${left}`);
        confirm.replaceChildren(h("button", { type: "button", "data-testid": "deleted-continue" }, "Continue"));
        confirm.querySelector("button")?.addEventListener("click", () => location.reload());
      })
      .catch((err: { message?: string }) => {
        yes.disabled = false;
        fail(err.message ?? String(err));
      });
  });
  return { button, confirm };
}

/** The switcher above the console: colour, profile list, Edit, Add. */
export function profileBar(
  store: ProfileStore,
  answer: ProfilesAnswer,
  mount: HTMLElement,
): HTMLElement {
  const active = answer.profiles.find((p) => p.active);
  const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
  swatch.style.background = active?.color ?? "#455a64";
  const select = h("select", { "data-testid": "profile-select", "aria-label": "Profile" });
  for (const p of answer.profiles) {
    const o = h("option", { value: p.name }, p.name);
    o.selected = p.active;
    select.append(o);
  }
  const error = h("span", { class: "bar-error", "data-testid": "profile-error", role: "alert" });
  select.addEventListener("change", () => {
    store.useProfile(select.value).catch((err: { message?: string }) => {
      error.textContent = err.message ?? String(err);
      if (active) select.value = active.name;
    });
  });
  const back = () => location.reload();
  const edit = h("button", { type: "button", "data-testid": "edit-profile" }, "Edit");
  edit.addEventListener("click", () => showConnect(mount, store, answer, { editing: active, onCancel: back }));
  const add = h("button", { type: "button", "data-testid": "add-profile" }, "Add profile");
  add.addEventListener("click", () => showConnect(mount, store, answer, { onCancel: back }));
  if (!active || active.token.kind === "environment") edit.disabled = true;
  const bar = h(
    "nav",
    { class: "profiles", "data-testid": "profiles", "aria-label": "Profiles" },
    swatch,
    h("span", { class: "muted" }, "Profile"),
    select,
    edit,
    add,
    error,
  );
  const notice = keychainNotice(answer, active);
  if (notice) bar.append(notice);
  return bar;
}
