// The one interface components talk to. Two implementations: HTTP + SSE for the web console
// (same origin), and Tauri commands + events for the desktop app. Components never know which.

import type {
  AuditEntry,
  BreakGlassRequest,
  CreateResumeRequest,
  DecideResumeRequest,
  DrillReport,
  DrillRequest,
  DrillStarted,
  GuardStatus,
  RampControlRequest,
  SampleTick,
  Series,
  ServerInfo,
  SetStateRequest,
  Switch,
  WorkerCounts,
} from "./api";

export type LiveEvent =
  | { kind: "switch"; data: Switch }
  | { kind: "deleted"; data: { name: string; version: number } }
  | { kind: "workers"; data: WorkerCounts }
  | { kind: "samples"; data: SampleTick }
  /** The live state of a guarded release (control plane's guard evaluator). */
  | { kind: "guard"; data: GuardStatus }
  /**
   * The stream skipped changes (too far behind, or it fell behind the broadcast): the events
   * that follow are the current state, and a deletion among the skipped ones is not repeated,
   * so the picture must be reloaded.
   */
  | { kind: "resync"; data: { after: number; current: number; reason: string } }
  /** Desktop only: the office button listener's device status, as text. */
  | { kind: "button"; data: string };

export type ConnectionStatus = "connecting" | "open" | "lost";

export interface Backend {
  /** Where the changes come from: `web` in a browser, `desktop` in the app. */
  readonly source: "web" | "desktop";
  info(): Promise<ServerInfo>;
  switches(): Promise<Switch[]>;
  setState(name: string, req: SetStateRequest): Promise<Switch>;
  /** Hold, continue, extend or abort the release in progress. */
  rampControl(name: string, req: RampControlRequest): Promise<Switch>;
  audit(limit: number, switchName?: string): Promise<AuditEntry[]>;
  workers(name: string): Promise<WorkerCounts>;
  series(sinceUnix: number): Promise<Series[]>;
  /** Files a resume request on a switch whose resumes need a second operator. */
  requestResume(name: string, req: CreateResumeRequest): Promise<Switch>;
  /** Approves (`approve`) or rejects the open request `id`. */
  decideResume(name: string, id: number, approve: boolean, req: DecideResumeRequest): Promise<Switch>;
  /** Admins: resume without approval (recorded loudly). */
  breakGlass(name: string, req: BreakGlassRequest): Promise<Switch>;
  /** Starts a fire drill (nothing pauses); its report is `drillReport(name, version)`. */
  drill(name: string, req: DrillRequest): Promise<DrillStarted>;
  drillReport(name: string, version: number): Promise<DrillReport>;
  /** Desktop only: the tray (or another quick path) asks for the resume dialog. */
  onResumeRequest?(cb: () => void): void;
  /**
   * Live events; calls `onStatus` as the connection comes and goes, with when the control
   * plane was last heard from (ms) when known. Returns a stop function.
   */
  subscribe(onEvent: (e: LiveEvent) => void, onStatus: (s: ConnectionStatus, lastHeard?: number) => void): () => void;
}

/** Desktop only: a named profile as the app shows it (never its token). */
export interface ProfileView {
  name: string;
  urls: string[];
  ca_file: string | null;
  client_cert: string | null;
  client_key: string | null;
  color: string | null;
  insecure_http: boolean;
  token: { kind: "keychain" | "environment" | "unknown" } | { kind: "file"; reason: string };
  active: boolean;
}

export interface ProfilesAnswer {
  profiles: ProfileView[];
  /** Why tokens stay in the settings file (no OS keychain), when they do. */
  keychain_problem: string | null;
  settings_path: string;
}

/** What the connect screen sends: the token goes in and never comes back. */
export interface ProfileDraft {
  name: string;
  urls: string[];
  token: string | null;
  ca_file: string | null;
  client_cert: string | null;
  client_key: string | null;
  color: string | null;
  insecure_http: boolean;
}

export type ProbeStep = "settings" | "dns" | "connect" | "tls" | "unauthorized" | "forbidden" | "wrong_server" | "ok";

export interface ProbeReport {
  url: string;
  step: ProbeStep;
  message: string;
  environment: { name: string; color: string } | null;
  role: string | null;
}

/** Desktop only: the profiles behind the connect screen and the profile switcher. */
export interface ProfileStore {
  profiles(): Promise<ProfilesAnswer>;
  testConnection(draft: ProfileDraft, replacing: string | null): Promise<ProbeReport[]>;
  /** Saves, makes it the active profile and connects; answers where the token went. */
  saveProfile(draft: ProfileDraft, replacing: string | null): Promise<ProfileView["token"]>;
  useProfile(name: string): Promise<void>;
  /**
   * Deletes a profile and its token in the keychain; answers why the token is still there
   * when the keychain would not remove it (null: removed).
   */
  deleteProfile(name: string): Promise<string | null>;
  /** Called when the active profile changes (from the tray too): the window starts again. */
  onProfileChange(cb: () => void): void;
  /** Reports the first painted frame (`pageMs`: the page's clock then); answers ms since the
   * process started. */
  painted(pageMs: number): Promise<number>;
}
