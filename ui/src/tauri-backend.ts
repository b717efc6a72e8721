// The desktop app's backend: the Rust side (src-tauri) holds the token and talks to the control
// plane; the webview only calls commands and listens to events. Errors arrive as {code, message}.

import { invoke } from "@tauri-apps/api/core";
import { listen } from "@tauri-apps/api/event";
import {
  BackendError,
  type AuditEntry,
  type BreakGlassRequest,
  type CreateResumeRequest,
  type DecideResumeRequest,
  type DrillReport,
  type DrillRequest,
  type DrillStarted,
  type RampControlRequest,
  type Series,
  type ServerInfo,
  type SetStateRequest,
  type Switch,
  type WorkerCounts,
} from "./api";
import type {
  Backend,
  ConnectionStatus,
  LiveEvent,
  ProbeReport,
  ProfileDraft,
  ProfileStore,
  ProfilesAnswer,
  ProfileView,
} from "./backend";
import { dispatch } from "./http-backend";

async function call<T>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    const err = e as { code?: string; message?: string; current?: Switch };
    throw new BackendError(err.code ?? "internal", err.message ?? String(e), err.current);
  }
}

export class TauriBackend implements Backend, ProfileStore {
  readonly source = "desktop" as const;

  profiles() {
    return call<ProfilesAnswer>("brb_profiles");
  }
  testConnection(draft: ProfileDraft, replacing: string | null) {
    return call<ProbeReport[]>("brb_test_connection", { draft, replacing });
  }
  saveProfile(draft: ProfileDraft, replacing: string | null) {
    return call<ProfileView["token"]>("brb_save_profile", { draft, replacing });
  }
  useProfile(name: string) {
    return call<void>("brb_use_profile", { name });
  }
  deleteProfile(name: string) {
    return call<string | null>("brb_delete_profile", { name });
  }
  onProfileChange(cb: () => void) {
    void listen<string>("brb://profile", () => cb());
  }
  painted(pageMs: number) {
    return call<number>("brb_painted", { pageMs });
  }

  info() {
    return call<ServerInfo>("brb_info");
  }
  switches() {
    return call<Switch[]>("brb_switches");
  }
  setState(name: string, req: SetStateRequest) {
    return call<Switch>("brb_set_state", { name, req });
  }
  rampControl(name: string, req: RampControlRequest) {
    return call<Switch>("brb_ramp", { name, req });
  }
  requestResume(name: string, req: CreateResumeRequest) {
    return call<Switch>("brb_request_resume", { name, req });
  }
  decideResume(name: string, id: number, approve: boolean, req: DecideResumeRequest) {
    return call<Switch>("brb_decide_resume", { name, id, approve, req });
  }
  breakGlass(name: string, req: BreakGlassRequest) {
    return call<Switch>("brb_break_glass", { name, req });
  }
  drill(name: string, req: DrillRequest) {
    return call<DrillStarted>("brb_drill", { name, req });
  }
  drillReport(name: string, version: number) {
    return call<DrillReport>("brb_drill_report", { name, version });
  }
  audit(limit: number, switchName?: string) {
    return call<AuditEntry[]>("brb_audit", { limit, switch: switchName ?? null });
  }
  workers(name: string) {
    return call<WorkerCounts>("brb_workers", { name });
  }
  series(sinceUnix: number) {
    return call<Series[]>("brb_series", { since: sinceUnix });
  }
  onResumeRequest(cb: () => void) {
    void listen("brb://ask-resume", () => cb());
  }
  subscribe(onEvent: (e: LiveEvent) => void, onStatus: (s: ConnectionStatus) => void) {
    const unlisten: (() => void)[] = [];
    void listen<{ event: string; data: string }>("brb://event", (e) =>
      dispatch(e.payload.event, e.payload.data, onEvent),
    ).then((u) => unlisten.push(u));
    void listen<ConnectionStatus>("brb://status", (e) => onStatus(e.payload)).then((u) =>
      unlisten.push(u),
    );
    void listen<string>("brb://button", (e) => onEvent({ kind: "button", data: e.payload })).then((u) =>
      unlisten.push(u),
    );
    void call<ConnectionStatus>("brb_connection").then(onStatus).catch(() => onStatus("lost"));
    // Events sent before this window listened are not replayed: ask for the current status.
    void call<string | null>("brb_button_status")
      .then((text) => text && onEvent({ kind: "button", data: text }))
      .catch(() => {});
    return () => unlisten.forEach((u) => u());
  }
}

export function inTauri(): boolean {
  return typeof window !== "undefined" && "__TAURI_INTERNALS__" in window;
}
