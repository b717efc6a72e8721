// The control plane's API types, as the UI sees them (the wire format of crates/brb-api).

export type SwitchState = "running" | "paused";
export type Source = "desktop" | "tray" | "button" | "cli" | "slack" | "web" | "api" | "system" | "adapter" | "guard";

export interface Ramp {
  started_at: string;
  duration_secs: number;
  kind: "steps" | "linear";
  fractions?: number[];
  from?: number;
  /** Set while the release is held: the shape above then keeps `fraction` (for a day at most). */
  held?: RampHeld | null;
  /** A health-guarded release: the control plane advances its steps while the guards pass. */
  guard?: RampGuard | null;
}

/** A condition on one series (`db_load < 80`), checked every `interval_secs`. */
export interface GuardSpec {
  series: string;
  labels?: Record<string, string>;
  below?: number;
  above?: number;
  interval_secs?: number;
  failure_limit?: number;
}

export interface RampGuard {
  guards: GuardSpec[];
  steps: number[];
  step: number;
  step_secs: number;
  step_started_at: string;
}

export type GuardPhase = "advancing" | "holding" | "tripped" | "finished";

/** The `guard` event and `GET /api/v1/switches/{name}/guard`. */
export interface GuardStatus {
  switch: string;
  version: number;
  phase: GuardPhase;
  step: number;
  steps: number;
  fraction: number;
  dwell_ends_at: string;
  reason?: string | null;
  checks: {
    guard: GuardSpec;
    condition: string;
    outcome: "pending" | "pass" | "fail" | "no_data";
    value: number | null;
    consecutive_failures: number;
    detail?: string | null;
    checked_at: string | null;
  }[];
  at: string;
}

export interface RampHeld {
  fraction: number;
  since: string;
  remaining_secs: number;
  then: { kind: "steps" | "linear"; fractions?: number[]; from?: number };
}

export type RampAction = "hold" | "continue" | "extend" | "abort";

/** `POST /api/v1/switches/{name}/ramp`. */
export interface RampControlRequest {
  action: RampAction;
  by_secs?: number;
  reason?: string;
  source?: Source;
  expected_version?: number;
}

export interface RampSpec {
  duration_secs: number;
  kind: "steps" | "linear";
  fractions?: number[];
  from?: number;
}

export interface Switch {
  name: string;
  description: string;
  primary: boolean;
  state: SwitchState;
  version: number;
  changed_at: string;
  changed_by: string;
  source: Source;
  reason: string | null;
  ramp: Ramp | null;
  /** A resume waiting for a second operator (only while paused, on a switch that needs one). */
  resume_request?: ResumeRequest | null;
}

export interface SetStateRequest {
  state: SwitchState;
  reason?: string;
  source?: Source;
  expected_version?: number;
  ramp?: RampSpec;
  guards?: GuardSpec[];
}

export interface AuditEntry {
  id: number;
  action: string;
  switch: string | null;
  from: SwitchState | null;
  to: SwitchState | null;
  version: number | null;
  actor: string;
  source: Source;
  reason: string | null;
  remote_addr: string | null;
  at: string;
  /** The switch's ramp right after this entry (null: none); absent from older servers. */
  ramp?: Ramp | null;
}

export interface ChangeAck {
  version: number;
  state: SwitchState;
  changed_at: string;
  acknowledged: number;
  total: number;
  last_ack_ms: number | null;
}

export interface WorkerCounts {
  switch: string;
  version: number;
  total: number;
  running: number;
  draining: number;
  paused: number;
  stale: number;
  current: ChangeAck | null;
  changes: ChangeAck[];
}

export interface Series {
  name: string;
  labels?: Record<string, string>;
  kind: "gauge" | "counter";
  points: [number, number][];
}

export interface SampleTick {
  ts: number;
  values: { name: string; labels?: Record<string, string>; value: number }[];
}

export interface ServerInfo {
  server_version: string;
  environment: { name: string; color: string };
  primary_switch: string;
  caller: { name: string; role: "viewer" | "operator" | "admin" };
  /** The series that measures the primary switch's backlog (default `queue_depth`). */
  backlog_series?: string;
  /** Switches whose resumes need another operator's approval (absent: none). */
  approvals?: ApprovalRule[];
}

export interface ApiErrorBody {
  error: { code: string; message: string; current?: Switch };
}

/** An error from the control plane (or from reaching it), with a code the UI can branch on. */
export class BackendError extends Error {
  constructor(
    public code: string,
    message: string,
    public current?: Switch,
  ) {
    super(message);
  }
}

// Resume approval and fire drills (crates/brb-api/src/approval.rs, drill.rs).

/** A switch whose resumes need a second operator, and how long a request stays open. */
export interface ApprovalRule {
  switch: string;
  request_secs: number;
}

export interface ResumeRequest {
  /** The version that recorded it: approve and reject name it. */
  id: number;
  /** Token name of the operator who asked. */
  requested_by: string;
  source: Source;
  requested_at: string;
  expires_at: string;
  reason: string;
  ramp?: RampSpec | null;
  guards?: GuardSpec[];
}

/** `POST /api/v1/switches/{name}/resume-requests`. */
export interface CreateResumeRequest {
  reason: string;
  ramp?: RampSpec;
  guards?: GuardSpec[];
  source?: Source;
}

/** `POST …/resume-requests/{id}/approve` and `…/reject`. */
export interface DecideResumeRequest {
  reason?: string;
  source?: Source;
}

/** `POST /api/v1/switches/{name}/break-glass` (admins). */
export interface BreakGlassRequest {
  reason: string;
  ramp?: RampSpec;
  source?: Source;
}

/** `POST /api/v1/switches/{name}/drill`. */
export interface DrillRequest {
  reason?: string;
  source?: Source;
}

export interface DrillStarted {
  switch: string;
  version: number;
  started_at: string;
}

export interface WorkerInfo {
  worker_id: string;
  status: "running" | "draining" | "paused";
  observed_version: number;
  in_flight: number;
  processed_total: number;
  last_seen: string;
  stale: boolean;
  remote_addr: string | null;
  error?: string | null;
}

/** `GET /api/v1/switches/{name}/drills/{version}`. */
export interface DrillReport {
  switch: string;
  version: number;
  started_at: string;
  /** Fastest first. */
  answered: { worker_id: string; ms: number }[];
  p50_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  missing: WorkerInfo[];
  stale: WorkerInfo[];
  complete: boolean;
  unacknowledged: { window_secs: number; readers: number; served_current: number };
}
