// The one interface components talk to. Two implementations: HTTP + SSE for the web console
// (same origin), and Tauri commands + events for the desktop app. Components never know which.

import type {
  AuditEntry,
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
  /** Desktop only: the tray (or another quick path) asks for the resume dialog. */
  onResumeRequest?(cb: () => void): void;
  /**
   * Live events; calls `onStatus` as the connection comes and goes, with when the control
   * plane was last heard from (ms) when known. Returns a stop function.
   */
  subscribe(onEvent: (e: LiveEvent) => void, onStatus: (s: ConnectionStatus, lastHeard?: number) => void): () => void;
}
