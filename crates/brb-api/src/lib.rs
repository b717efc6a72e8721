//! The Big Red Button HTTP API, as Rust types.
//!
//! Every program that speaks to the control plane (the server itself, the worker SDK, the CLI,
//! the desktop app, the button daemon) uses these types, so the wire format is defined exactly
//! once. The crate does no I/O and depends on nothing internal: it is plain data plus the small
//! pure rules that go with the data (name validation, role ordering, error-code to status
//! mapping), which is why it can be shared by a tokio server and a Tauri webview bridge alike.
//! The OpenAPI schema is derived from these same definitions (`utoipa`), never written by hand.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod approval;
mod drill;
mod error;
mod guard;
pub mod ints;
mod names;
pub mod ofrep;
mod ramp;
mod series;
mod workers;

pub use approval::{
    ApprovalRule, BreakGlassRequest, CreateResumeRequest, DecideResumeRequest, MAX_REQUEST_GUARDS,
    PendingResume, ResumeRequest, ResumeRequestList,
};
pub use drill::{DrillAnswer, DrillReport, DrillRequest, DrillStarted, nearest_rank};
pub use error::{ApiErrorBody, ErrorCode, ErrorDetail};
pub use guard::{
    DEFAULT_GUARD_FAILURE_LIMIT, DEFAULT_GUARD_INTERVAL_SECS, GuardCheck, GuardError, GuardOutcome,
    GuardPhase, GuardSpec, GuardStatus, MAX_GUARDS, RampGuard, validate_guards,
};
pub use names::{NameError, validate_switch_name, validate_token_name};
pub use ramp::{
    MAX_RAMP_SECS, MAX_RAMP_STEPS, Ramp, RampAction, RampError, RampHeld, RampShape, RampSpec,
    parse_duration,
};
pub use series::{
    Accepted, MAX_SAMPLES_PER_POST, MAX_SERIES_NAME, Sample, SampleBatch, SampleKind, SampleTick,
    Series, SeriesList, TickValue,
};
pub use workers::{
    AdapterAction, ChangeAck, MAX_ADAPTER_DETAIL, MAX_WORKER_ID, UnacknowledgedReaders,
    WorkerCounts, WorkerInfo, WorkerReport, WorkerStatus,
};

/// The path prefix of every versioned endpoint.
pub const API_PREFIX: &str = "/api/v1";

/// The name of the switch that exists from the first start: the Big Red Button itself.
pub const PRIMARY_SWITCH: &str = "workers";

/// Longest accepted `reason` text, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

/// Longest accepted switch description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// What a switch lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SwitchState {
    /// Workers take jobs.
    Running,
    /// Workers take no new jobs: the brake is pulled.
    Paused,
}

impl SwitchState {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchState::Running => "running",
            SwitchState::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(SwitchState::Running),
            "paused" => Some(SwitchState::Paused),
            _ => None,
        }
    }
}

impl std::fmt::Display for SwitchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a change was made from. Recorded in the audit log and shown to people, so that
/// "who pressed it" always comes with "from where".
///
/// A request may name its source, but only one of the programs that talk to the API as a
/// client with a token of their own ([`Source::client_may_claim`]: desktop, tray, button, cli,
/// web, api). Those names describe the client, and the audit entry carries the token's name
/// and the address next to them, so a false claim still points at who made it. `slack` and
/// `system` name channels the control plane runs itself (its Slack handler, verified by
/// Slack's signature; the server's own writes): a token claiming them would make a change look
/// as if it came from no token at all, so requests naming them are refused with 422.
/// `adapter` is recorded only by `POST /api/v1/adapters/actions` (what a broker adapter did to
/// its broker, never a change of a switch), so a state change cannot pass for an adapter's.
/// `guard` is the control plane's health guard re-pausing a guarded release; no request may
/// claim it either.
///
/// Decoding is tolerant: a value this build does not know (a source added by a newer control
/// plane) reads as [`Source::Other`], so an already-deployed gate, CLI or desktop app keeps
/// reading the switch and the audit log instead of failing on the whole event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The desktop app's main window.
    Desktop,
    /// The desktop app's tray menu.
    Tray,
    /// A physical button (office button daemon or the desktop app's listener).
    Button,
    /// The `brb` command line.
    Cli,
    /// The Slack slash command.
    Slack,
    /// The web console served by `brb server`.
    Web,
    /// Any other HTTP client (the default when a request names no source).
    Api,
    /// The control plane itself (first start, migrations).
    System,
    /// A broker adapter (`brb adapter`) recording what it applied to its broker.
    Adapter,
    /// A health guard of a guarded release (`brb resume --guard`) that re-paused the switch.
    Guard,
    /// A source this build does not know (never written by this control plane; refused in
    /// requests).
    #[serde(other)]
    Other,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Desktop => "desktop",
            Source::Tray => "tray",
            Source::Button => "button",
            Source::Cli => "cli",
            Source::Slack => "slack",
            Source::Web => "web",
            Source::Api => "api",
            Source::System => "system",
            Source::Adapter => "adapter",
            Source::Guard => "guard",
            Source::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "desktop" => Source::Desktop,
            "tray" => Source::Tray,
            "button" => Source::Button,
            "cli" => Source::Cli,
            "slack" => Source::Slack,
            "web" => Source::Web,
            "api" => Source::Api,
            "system" => Source::System,
            "adapter" => Source::Adapter,
            "guard" => Source::Guard,
            _ => return None,
        })
    }
}

impl Source {
    /// The sources a request may name: every one but those of channels the server runs.
    pub const CLIENT_CLAIMABLE: [Source; 6] = [
        Source::Desktop,
        Source::Tray,
        Source::Button,
        Source::Cli,
        Source::Web,
        Source::Api,
    ];

    /// Whether a client request may record this source (see the type's documentation).
    pub fn client_may_claim(self) -> bool {
        Self::CLIENT_CLAIMABLE.contains(&self)
    }
}

/// Reads a request's `source`, refusing the ones only the server itself may record.
fn claimed_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Source>, D::Error> {
    let source = Option::<Source>::deserialize(d)?;
    match source {
        Some(s) if !s.client_may_claim() => Err(serde::de::Error::custom(format!(
            "source {:?} is recorded only by the control plane itself; a request may name {}",
            s.as_str(),
            Source::CLIENT_CLAIMABLE.map(Source::as_str).join(", ")
        ))),
        other => Ok(other),
    }
}

/// The OpenAPI schema of a request's `source`: the claimable values only.
fn claimed_source_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let values = Source::CLIENT_CLAIMABLE
        .iter()
        .map(|s| serde_json::Value::from(s.as_str()))
        .chain([serde_json::Value::Null]);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(values))
        .description(Some(
            "Where the request comes from (default `api`). `slack`, `system`, `adapter` and \
             `guard` are recorded only by the control plane's own paths and are refused here \
             (422).",
        ))
        .build()
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One switch: the primary one is the Big Red Button, the others are feature kill switches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Switch {
    pub name: String,
    pub description: String,
    /// The Big Red Button. Exactly one switch is primary and it cannot be deleted.
    pub primary: bool,
    pub state: SwitchState,
    /// Increases by one with every change to this switch; never reused, never skipped.
    pub version: u64,
    pub changed_at: DateTime<Utc>,
    /// The token name that made the last change.
    pub changed_by: String,
    pub source: Source,
    pub reason: Option<String>,
    /// A gradual release in progress (only while running, after a resume that asked for one).
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// A resume waiting for a second operator (only while paused, on a switch whose resumes
    /// need approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_request: Option<Box<ResumeRequest>>,
}

impl Switch {
    /// The fraction of normal work this switch admits at `now`: 0 when paused, the ramp's
    /// fraction while it ramps, else 1.
    pub fn admitted_fraction(&self, now: DateTime<Utc>) -> f64 {
        match (self.state, &self.ramp) {
            (SwitchState::Paused, _) => 0.0,
            (SwitchState::Running, Some(r)) => r.fraction_at(now),
            (SwitchState::Running, None) => 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SwitchList {
    pub switches: Vec<Switch>,
}

/// `PUT /api/v1/switches/{name}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStateRequest {
    pub state: SwitchState,
    /// Why (at most 1000 characters), shown to everyone and kept in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
    /// Defaults to `api`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
    /// When given, the change is refused with 409 unless the switch is at this version.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "ints::opt_u64"
    )]
    pub expected_version: Option<u64>,
    /// With `running`: release gradually instead of all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampSpec>,
    /// With a stepped `ramp`: health guards (at most 4). Each step proceeds only while every
    /// guard passes; a guard failing `failure_limit` checks in a row pauses the switch again;
    /// no data holds the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 4)]
    pub guards: Vec<GuardSpec>,
}

/// `POST /api/v1/switches/{name}/ramp`: hold, continue, extend or abort the release in
/// progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RampControlRequest {
    pub action: RampAction,
    /// With `extend`: how much longer the rest of the release takes (1 to 86400; the whole
    /// release stays within a day).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "ints::opt_u64"
    )]
    #[schema(minimum = 1, maximum = 86400)]
    pub by_secs: Option<u64>,
    /// Why (at most 1000 characters), kept in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
    /// Defaults to `api`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
    /// When given, refused with 409 unless the switch is at this version.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "ints::opt_u64"
    )]
    pub expected_version: Option<u64>,
}

/// `POST /api/v1/switches` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSwitchRequest {
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9_-]*$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
}

/// `PATCH /api/v1/switches/{name}` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSwitchRequest {
    #[schema(max_length = 500)]
    pub description: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
}

/// What an audit entry records. Decoding is tolerant like [`Source`]'s: an action this build
/// does not know reads as [`AuditAction::Other`], so `brb audit` of an older build still lists
/// the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A switch's state changed (pause or resume).
    StateChanged,
    SwitchCreated,
    SwitchUpdated,
    SwitchDeleted,
    TokenCreated,
    TokenRevoked,
    /// A token got a new secret; the old one works until the grace period ends.
    TokenRotated,
    /// A broker adapter applied the switch's state to its broker (no switch version: the
    /// switch did not change).
    AdapterApplied,
    /// A release in progress was held, continued or extended (the snapshot has the new ramp;
    /// the reason says which). An abort is a `state_changed` to paused.
    RampChanged,
    /// An operator asked to resume a switch whose resumes need approval (the snapshot holds
    /// the request). The approval is a `state_changed` naming both operators.
    ResumeRequested,
    /// A pending resume request was rejected.
    ResumeRejected,
    /// A pending resume request lapsed unapproved.
    ResumeExpired,
    /// A fire drill: a new version with nothing else changed, which every watcher answers with
    /// a report (`POST /api/v1/switches/{name}/drill`). Nothing pauses.
    DrillStarted,
    /// An action this build does not know (never written by this control plane).
    #[serde(other)]
    Other,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::StateChanged => "state_changed",
            AuditAction::SwitchCreated => "switch_created",
            AuditAction::SwitchUpdated => "switch_updated",
            AuditAction::SwitchDeleted => "switch_deleted",
            AuditAction::TokenCreated => "token_created",
            AuditAction::TokenRevoked => "token_revoked",
            AuditAction::TokenRotated => "token_rotated",
            AuditAction::AdapterApplied => "adapter_applied",
            AuditAction::RampChanged => "ramp_changed",
            AuditAction::ResumeRequested => "resume_requested",
            AuditAction::ResumeRejected => "resume_rejected",
            AuditAction::ResumeExpired => "resume_expired",
            AuditAction::DrillStarted => "drill_started",
            AuditAction::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "state_changed" => AuditAction::StateChanged,
            "switch_created" => AuditAction::SwitchCreated,
            "switch_updated" => AuditAction::SwitchUpdated,
            "switch_deleted" => AuditAction::SwitchDeleted,
            "token_created" => AuditAction::TokenCreated,
            "token_revoked" => AuditAction::TokenRevoked,
            "token_rotated" => AuditAction::TokenRotated,
            "adapter_applied" => AuditAction::AdapterApplied,
            "ramp_changed" => AuditAction::RampChanged,
            "resume_requested" => AuditAction::ResumeRequested,
            "resume_rejected" => AuditAction::ResumeRejected,
            "resume_expired" => AuditAction::ResumeExpired,
            "drill_started" => AuditAction::DrillStarted,
            _ => return None,
        })
    }
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Global, strictly increasing across all switches.
    pub id: u64,
    pub action: AuditAction,
    /// The switch concerned (absent for token actions).
    pub switch: Option<String>,
    pub from: Option<SwitchState>,
    pub to: Option<SwitchState>,
    /// The switch's version after this entry (absent for token actions).
    pub version: Option<u64>,
    /// Token name of whoever did it.
    pub actor: String,
    pub source: Source,
    pub reason: Option<String>,
    /// Network address the request came from, when it came over the network.
    pub remote_addr: Option<String>,
    pub at: DateTime<Utc>,
    /// The switch's release right after this entry, from the audit's snapshot of that
    /// version: the ramp a resume started (with its `guard` on a health-guarded release), or
    /// what a ramp change left. Null when the switch had no ramp then, and on entries without
    /// a snapshot (tokens, adapter records, deletions); absent from servers before it.
    #[serde(default)]
    pub ramp: Option<Ramp>,
}

/// `GET /api/v1/audit` answer: newest first. `next_before` pages further back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before=` to get the next (older) page; absent on the last page.
    pub next_before: Option<u64>,
}

/// What a token may do. Ordered: each role can do everything the roles below it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read state, audit and series; watch events.
    Viewer,
    /// Viewer, plus pause and resume.
    Operator,
    /// Operator, plus manage switches and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /api/v1/tokens` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_.@-]*$")]
    pub name: String,
    pub role: Role,
    /// After this instant the token is refused (`token_expired`). None: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Limit the token to these switches and/or to pausing. None: everything its role allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

/// What a scoped token may touch. An office button's token, for instance: `switches =
/// ["workers"]`, `pause_only = true`: it can pause `workers` and read it, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenScope {
    /// The switches the token may see and change (its role still applies).
    #[schema(schema_with = scope_switches_schema)]
    pub switches: Vec<String>,
    /// Only pausing: resuming is refused (`out_of_scope`).
    #[serde(default)]
    pub pause_only: bool,
}

/// At least one switch name, each following the switch name rules.
fn scope_switches_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(63))
                .pattern(Some("^[a-z0-9][a-z0-9_-]*$")),
        )
        .min_items(Some(1))
        .build()
}

impl TokenScope {
    pub fn allows_switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

/// `POST /api/v1/tokens/{id}/rotate` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenRequest {
    /// How long the old secret keeps working, in seconds (0: not at all). Default one hour.
    #[serde(default = "default_grace_secs", deserialize_with = "ints::u64")]
    #[schema(maximum = 604800)]
    pub grace_secs: u64,
}

fn default_grace_secs() -> u64 {
    3600
}

/// Longest rotation grace period: a week.
pub const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;

/// A token as listed: never with its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
    /// Until when the secret before the last rotation still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
    /// Last successful use (recorded in memory, written out every few seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_addr: Option<String>,
}

/// The answer to creating a token: the only time the secret is ever shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenInfo,
    /// Send as `Authorization: Bearer <secret>`. Stored only as a hash: it cannot be shown again.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// The deployment's name and color, shown large so nobody pauses production thinking it is
/// staging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Environment {
    pub name: String,
    /// A CSS color, e.g. `#d32f2f`.
    pub color: String,
}

/// `GET /api/v1/info`: what this control plane is and who is asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    pub server_version: String,
    pub environment: Environment,
    pub primary_switch: String,
    /// The caller's token name and role.
    pub caller: Caller,
    /// The series that measures the primary switch's backlog (`primary.backlog_series`,
    /// default `queue_depth`): what the console's resume dialog shows before a release.
    #[serde(default)]
    pub backlog_series: String,
    /// The switches this token may see whose resumes need another operator's approval
    /// (`[switches.approval]`); absent when none do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is wrong.
    pub status: String,
}

/// Delivery state of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet; will be tried (again).
    Pending,
    Delivered,
    /// Gave up: after retrying for a day, or at once when the receiver refused the request
    /// itself (an incident tool's 400 or 401).
    Failed,
}

/// One notification in the outbox, as `GET /api/v1/notifications` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: u64,
    /// `slack`, `webhook:<name>`, `pagerduty` or `grafana`.
    pub channel: String,
    /// `change`, `reminder`, or a resume request's: `resume_requested`, `resume_approved`,
    /// `resume_rejected`, `resume_expired`, `break_glass`.
    pub kind: String,
    pub switch: String,
    /// The switch version the notification is about.
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    pub notifications: Vec<Notification>,
}

/// SSE event names used on the event streams.
pub mod events {
    /// Data: a [`crate::Switch`]; sent first with the current state, then on every change.
    pub const SWITCH: &str = "switch";
    /// Data: [`crate::DeletedSwitch`].
    pub const DELETED: &str = "deleted";
    /// Data: [`crate::WorkerCounts`] (without the worker list); only on `/api/v1/events`.
    pub const WORKERS: &str = "workers";
    /// Data: [`crate::SampleTick`], once a second; only on `/api/v1/events`.
    pub const SAMPLES: &str = "samples";
    /// Data: [`crate::Resync`]. The stream skipped changes (the watcher was too far behind to
    /// replay every step, the history could not be read, or it fell behind the broadcast): the
    /// events that follow at once are the current state, not each step. Has no `id:`. A watcher
    /// that keeps a picture of every switch (from `/api/v1/events`) should reload it, since a
    /// deletion among the skipped changes is not repeated.
    pub const RESYNC: &str = "resync";
    /// Data: [`crate::GuardStatus`] of a guarded release, on every check; only on
    /// `/api/v1/events`, without `id:` (live state, not a change).
    pub const GUARD: &str = "guard";
}

/// Data of a `resync` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resync {
    /// The id the watcher had (a version, or an audit id on `/api/v1/events`).
    pub after: u64,
    /// The id of the current state sent next.
    pub current: u64,
    pub reason: ResyncReason,
}

/// Why a stream sent the current state instead of every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// More changes behind than a stream replays one by one.
    TooFarBehind,
    /// The change history could not be read (the database is down); the replica's current
    /// state is sent.
    HistoryUnavailable,
    /// The watcher fell behind the live broadcast.
    Lagged,
}

/// Data of a `deleted` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedSwitch {
    pub name: String,
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Operator);
        assert!(Role::Operator < Role::Admin);
    }

    #[test]
    fn enums_round_trip_through_their_wire_names() {
        for s in [SwitchState::Running, SwitchState::Paused] {
            assert_eq!(SwitchState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for s in [
            Source::Desktop,
            Source::Tray,
            Source::Button,
            Source::Cli,
            Source::Slack,
            Source::Web,
            Source::Api,
            Source::System,
            Source::Adapter,
            Source::Guard,
        ] {
            assert_eq!(Source::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn unknown_source_and_action_decode() {
        // An event from a newer control plane: a source and an audit action this build has
        // never heard of must not make the switch or the audit entry unreadable.
        let sw: Switch = serde_json::from_str(
            r#"{"name":"workers","description":"","primary":true,"state":"paused","version":7,
                "changed_at":"2026-11-30T20:00:00Z","changed_by":"guard","source":"sentinel",
                "reason":"tripped","ramp":null}"#,
        )
        .unwrap();
        assert_eq!(sw.source, Source::Other);
        assert_eq!(sw.state, SwitchState::Paused);
        assert_eq!(sw.version, 7);
        let e: AuditEntry = serde_json::from_str(
            r#"{"id":9,"action":"switch_teleported","switch":"workers","from":"paused","to":"paused",
                "version":8,"actor":"alice","source":"sentinel","reason":null,
                "remote_addr":null,"at":"2026-11-30T20:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(e.action, AuditAction::Other);
        assert_eq!(e.source, Source::Other);
        // The guard's own source decodes as itself, and no request may claim it.
        let g: Switch = serde_json::from_str(
            &serde_json::to_string(&Switch {
                source: Source::Guard,
                ..sw.clone()
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(g.source, Source::Guard);
        for s in ["guard", "other", "sentinel"] {
            let body = format!(r#"{{"state":"paused","source":"{s}"}}"#);
            assert!(
                serde_json::from_str::<SetStateRequest>(&body).is_err(),
                "{s}"
            );
        }
    }

    #[test]
    fn set_state_request_rejects_unknown_fields() {
        // A typo such as "expected_verison" must not silently drop the concurrency check.
        let err =
            serde_json::from_str::<SetStateRequest>(r#"{"state":"paused","expected_verison":3}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn set_state_request_minimal() {
        let r: SetStateRequest = serde_json::from_str(r#"{"state":"paused"}"#).unwrap();
        assert_eq!(r.state, SwitchState::Paused);
        assert_eq!(r.reason, None);
        assert_eq!(r.source, None);
    }

    #[test]
    fn created_token_flattens_info() {
        let t = CreatedToken {
            token: TokenInfo {
                id: "abc".into(),
                name: "ci".into(),
                role: Role::Operator,
                created_at: DateTime::from_timestamp(0, 0).unwrap(),
                revoked_at: None,
                expires_at: None,
                scope: None,
                previous_secret_valid_until: None,
                last_used_at: None,
                last_used_addr: None,
            },
            secret: "brb_abc_s".into(),
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["name"], "ci");
        assert_eq!(v["secret"], "brb_abc_s");
    }
}
