//! Durable state of the Big Red Button.
//!
//! The control plane's promise is that an acknowledged press is never lost, so everything that
//! must survive a `kill -9` goes through the [`Store`] trait: switches with their versions, the
//! append-only audit log, and API tokens (hashed). A change is committed before any method
//! returns, and the HTTP layer acknowledges only after that.
//!
//! The trait is async and object-safe so the server can hold an `Arc<dyn Store>` and choose the
//! backend at start ([`open`] picks it from a URL): [`SqliteStore`] (embedded default, WAL with
//! `synchronous=FULL`, one process) or [`PgStore`] (PostgreSQL, shared by several replicas,
//! which hear of each other's commits through [`Store::feed`]). Each backend guarantees the
//! same invariants, checked by the shared suite in `tests/`, run against both:
//!
//! - a switch's `version` increases by exactly one per change, and every version has exactly one
//!   audit entry (no gaps, no duplicates), even across delete and re-create;
//! - the audit log is append-only (the SQLite schema rejects `UPDATE` and `DELETE` on it);
//! - setting the state a switch already has changes nothing and writes no audit entry;
//! - exactly one live switch is primary, and it cannot be deleted.

use async_trait::async_trait;
use brb_api::{AuditEntry, DeletedSwitch, Role, Source, Switch, SwitchState, TokenInfo};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod migrations;
mod postgres;
mod rows;
mod rules;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Where the data lives, parsed from `--database-url` / `BRB_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq)]
pub enum DatabaseUrl {
    /// The embedded file (a path, or `sqlite:PATH`).
    Sqlite(std::path::PathBuf),
    /// `postgres://…` or `postgresql://…`, shared by every replica.
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(s: &str) -> DatabaseUrl {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return DatabaseUrl::Postgres(s.to_string());
        }
        let path = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
            .unwrap_or(s);
        DatabaseUrl::Sqlite(path.into())
    }
}

/// Opens the store a URL names: SQLite for a path, PostgreSQL for a `postgres://` URL.
pub async fn open(url: &DatabaseUrl) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path)?),
        DatabaseUrl::Postgres(url) => std::sync::Arc::new(PgStore::connect(url).await?),
    })
}

/// What a shared store tells every process about commits (its own and other replicas').
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// The change listener is (again) connected: anything before may have been missed, so
    /// re-read everything.
    Connected,
    /// The change listener lost its database connection and is reconnecting.
    Disconnected,
    /// A switch changed. Only a hint: the receiver reads the committed rows.
    Switch { name: String, version: u64 },
    /// A token was created or revoked.
    Tokens,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no switch named {0:?}")]
    SwitchNotFound(String),
    #[error("no token with id {0:?}")]
    TokenNotFound(String),
    #[error("version conflict: the switch is at version {}", current.version)]
    Conflict { current: Box<Switch> },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("the primary switch cannot be deleted")]
    Protected,
    #[error("switch {0:?} has no release in progress")]
    NoRamp(String),
    /// A plain resume of a switch whose resumes need a second operator.
    #[error("resuming {0:?} needs another operator's approval: file a resume request")]
    ApprovalRequired(String),
    /// Another operator's request is open.
    #[error("{by} already asked to resume {switch:?} (request {id}); approve or reject it first")]
    RequestPending { switch: String, by: String, id: u64 },
    /// No open request matches (or none can be filed); the text says which.
    #[error("{0}")]
    NoRequest(String),
    #[error("the resume request {id} on {switch:?} lapsed at {expired_at}")]
    RequestExpired {
        switch: String,
        id: u64,
        expired_at: DateTime<Utc>,
    },
    #[error("{0} cannot approve their own resume request; another operator must")]
    SelfApproval(String),
    /// A value the rule refuses (e.g. an extension past the longest ramp). Nothing written.
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take writes now (disk full, read-only, database down). Nothing was
    /// written. `detail` is the driver's text, for logs only (it may name hosts or paths).
    #[error("store unavailable ({outage}): {detail}")]
    Unavailable { outage: Outage, detail: String },
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store cannot take writes, as the driver's typed error code says (never its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The disk holding the database is full.
    DiskFull,
    /// The database is read-only: the file system, its permissions, or a standby database.
    ReadOnly,
    /// The disk fails reads or writes (which also happens when a file system turns read-only
    /// under open files).
    DiskFailing,
    /// The database is locked or out of memory: a later try may work.
    Busy,
    /// No connection to the database server (refused, lost, shutting down, pool exhausted).
    Unreachable,
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outage::DiskFull => "disk full",
            Outage::ReadOnly => "read-only",
            Outage::DiskFailing => "disk failing",
            Outage::Busy => "busy",
            Outage::Unreachable => "unreachable",
        })
    }
}

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// The Slack incoming webhook.
    Slack,
    /// A configured webhook, by name.
    Webhook(String),
    /// PagerDuty's Events API v2: an alert triggered on pause, resolved on resume.
    PagerDuty,
    /// Grafana annotations: a region from pause to resume.
    Grafana,
}

impl Channel {
    /// Slack and webhooks: where people (and their bots) read about a switch. Incident tools
    /// hear of pauses and resumes only; reminders and resume requests go to these.
    pub fn is_chat(&self) -> bool {
        matches!(self, Channel::Slack | Channel::Webhook(_))
    }

    /// `slack`, `webhook:<name>`, `pagerduty` or `grafana`, as stored and shown.
    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "slack" => Some(Channel::Slack),
            "pagerduty" => Some(Channel::PagerDuty),
            "grafana" => Some(Channel::Grafana),
            _ => s
                .strip_prefix("webhook:")
                .filter(|n| !n.is_empty())
                .map(|n| Channel::Webhook(n.to_string())),
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Slack => f.write_str("slack"),
            Channel::Webhook(n) => write!(f, "webhook:{n}"),
            Channel::PagerDuty => f.write_str("pagerduty"),
            Channel::Grafana => f.write_str("grafana"),
        }
    }
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    /// A switch changed.
    Change,
    /// A switch is still paused.
    Reminder,
    /// Someone asked to resume a switch that needs approval (the event carries the request).
    ResumeRequested,
    /// Another operator approved a resume request: a resume (incident tools close on it).
    ResumeApproved,
    /// A resume request was rejected; the switch stays paused.
    ResumeRejected,
    /// A resume request lapsed unapproved; the switch stays paused.
    ResumeExpired,
    /// An admin resumed without approval: a resume, announced loudly.
    BreakGlass,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 7] = [
        NotificationKind::Change,
        NotificationKind::Reminder,
        NotificationKind::ResumeRequested,
        NotificationKind::ResumeApproved,
        NotificationKind::ResumeRejected,
        NotificationKind::ResumeExpired,
        NotificationKind::BreakGlass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Change => "change",
            NotificationKind::Reminder => "reminder",
            NotificationKind::ResumeRequested => "resume_requested",
            NotificationKind::ResumeApproved => "resume_approved",
            NotificationKind::ResumeRejected => "resume_rejected",
            NotificationKind::ResumeExpired => "resume_expired",
            NotificationKind::BreakGlass => "break_glass",
        }
    }

    pub fn parse(s: &str) -> Option<NotificationKind> {
        NotificationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the switch's state changed with it (a pause or a resume): what incident tools
    /// hear of.
    pub fn is_state_change(self) -> bool {
        matches!(
            self,
            NotificationKind::Change
                | NotificationKind::ResumeApproved
                | NotificationKind::BreakGlass
        )
    }
}

impl std::fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a change and from where: recorded with it in the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    /// Token name.
    pub name: String,
    pub source: Source,
    pub remote_addr: Option<String>,
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            name: "system".into(),
            source: Source::System,
            remote_addr: None,
        }
    }
}

/// What a broker adapter applied to its broker, to record in the audit log. It changes no
/// switch: the entry has no version and no snapshot, so event streams never replay it.
#[derive(Debug, Clone)]
pub struct AdapterRecord {
    pub switch: String,
    pub applied: SwitchState,
    /// The adapter's own words, with its id (validated by the caller).
    pub reason: String,
    pub actor: Actor,
}

/// A request to change a switch's state.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub switch: String,
    pub to: SwitchState,
    pub reason: Option<String>,
    pub expected_version: Option<u64>,
    /// With `to: Running`: release gradually. Validated by the caller.
    pub ramp: Option<brb_api::RampSpec>,
    /// Instead of setting `to`: hold, continue, extend or abort the release in progress
    /// (`to` is then ignored; an abort pauses).
    pub control: Option<RampControl>,
    /// With `to: Running` and a stepped `ramp`: a health-guarded release (validated by the
    /// caller). Empty: none.
    pub guards: Vec<brb_api::GuardSpec>,
    /// Instead of setting `to`: the guard evaluator moves a guarded release on.
    pub guard_op: Option<GuardOp>,
    pub actor: Actor,
    /// Channels to notify of this change: written to the outbox in the same transaction as
    /// the change, so a committed change is never left unannounced.
    pub notify: Vec<Channel>,
    /// `Some(secs)`: this switch's resumes need a second operator, and a request lapses after
    /// `secs`. Filled by the server from its config, so the rule stays pure.
    pub approval_secs: Option<u64>,
    /// Instead of a plain change: an operation on the switch's resume request, or a drill.
    pub request: Option<SwitchOp>,
}

/// What is done to a switch besides setting its state: its resume request (see
/// `rules::resume_request`), or a fire drill.
#[derive(Debug, Clone, PartialEq)]
pub enum SwitchOp {
    /// File (or, by the same operator, replace) a request to resume with the change's reason
    /// and ramp, and these guards.
    Request { guards: Vec<brb_api::GuardSpec> },
    /// Resume as request `id` asked, by another operator, before it lapsed.
    Approve { id: u64 },
    /// Drop request `id`.
    Reject { id: u64 },
    /// Drop request `id` because it lapsed (the server's sweeper).
    Expire { id: u64 },
    /// An admin resumes without approval (the caller checks the role); recorded loudly.
    BreakGlass,
    /// A fire drill: a new version with the same state, ramp and request (every SDK reports
    /// at once on a new version, which is the acknowledgement), nothing else changes.
    Drill,
}

/// What the guard evaluator does to a guarded release. A trip is not here: it is an abort
/// ([`RampControl`]), announced like any pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOp {
    /// The next step, or the end of the release after the last one. Refused with a conflict
    /// unless the release is still at `from_step`, so two replicas (or a stale tick) cannot
    /// advance it twice.
    Advance { from_step: u32 },
}

/// A change to a release in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RampControl {
    pub action: brb_api::RampAction,
    /// With `Extend`: how much longer the rest takes.
    pub by_secs: u64,
}

/// A notification waiting in (or delivered from) the outbox. The message is rendered at
/// delivery time from `event`, the switch as it was right after the change.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub id: u64,
    pub channel: Channel,
    pub kind: NotificationKind,
    pub event: Switch,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub failed: bool,
    pub last_error: Option<String>,
}

/// A notification to enqueue outside a state change (reminders).
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub channel: Channel,
    pub kind: NotificationKind,
    pub event: Switch,
    /// Enqueuing the same key twice is a no-op: several replicas (or a restart) may decide to
    /// send the same reminder, and it must go out once.
    pub dedupe_key: String,
}

/// What [`Store::set_state`] did.
#[derive(Debug, Clone, PartialEq)]
// Built once per committed change and moved straight to the caller: boxing the entry would
// add an allocation to every write for no saving (it is never stored in a collection).
#[allow(clippy::large_enum_variant)]
pub enum SetOutcome {
    /// The state changed: committed, with its audit entry.
    Changed { switch: Switch, entry: AuditEntry },
    /// The switch already had that state: nothing written.
    Unchanged(Switch),
}

/// A token as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Expiry, scope and the previous secret (stored together as one JSON column).
    pub policy: TokenPolicy,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_addr: Option<String>,
}

/// The parts of a token that change rarely and are read together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<brb_api::TokenScope>,
    /// The secret before the last rotation, accepted until `valid_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousSecret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// SHA-256 of the old secret, hex.
    pub secret_hash: String,
    pub valid_until: DateTime<Utc>,
}

impl TokenPolicy {
    pub(crate) fn to_json(&self) -> Option<String> {
        (*self != TokenPolicy::default()).then(|| serde_json::to_string(self).unwrap_or_default())
    }

    pub(crate) fn from_json(s: Option<&str>) -> Result<TokenPolicy> {
        match s {
            None => Ok(TokenPolicy::default()),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| StoreError::Internal(format!("token policy {s:?}: {e}"))),
        }
    }
}

/// One successful use of a token, flushed in batches.
#[derive(Debug, Clone)]
pub struct TokenUse {
    pub id: String,
    pub at: DateTime<Utc>,
    pub addr: Option<String>,
}

impl TokenRecord {
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            expires_at: self.policy.expires_at,
            scope: self.policy.scope.clone(),
            previous_secret_valid_until: self.policy.previous.as_ref().map(|p| p.valid_until),
            last_used_at: self.last_used_at,
            last_used_addr: self.last_used_addr.clone(),
        }
    }
}

/// What a switch looked like right after one change: the payload of an event-stream event.
// Nearly every event is `Changed`; boxing it would add an allocation per event on the fan-out
// path to save bytes on the rare `Deleted`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SwitchEvent {
    Changed(Switch),
    Deleted(DeletedSwitch),
}

impl SwitchEvent {
    pub fn name(&self) -> &str {
        match self {
            SwitchEvent::Changed(s) => &s.name,
            SwitchEvent::Deleted(d) => &d.name,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            SwitchEvent::Changed(s) => s.version,
            SwitchEvent::Deleted(d) => d.version,
        }
    }
}

/// A [`SwitchEvent`] read back from the audit log, with the audit id that orders it among all
/// switches.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub audit_id: u64,
    pub event: SwitchEvent,
}

/// Which audit entries to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub switch: Option<String>,
    /// Only entries with `id < before`.
    pub before: Option<u64>,
    pub limit: u32,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the switch if no live switch has that name; does nothing otherwise. Used to seed
    /// the primary switch and switches declared in the config file. Returns whether it created.
    async fn ensure_switch(
        &self,
        name: &str,
        description: &str,
        primary: bool,
        actor: Actor,
    ) -> Result<bool>;

    async fn list_switches(&self) -> Result<Vec<Switch>>;

    async fn get_switch(&self, name: &str) -> Result<Option<Switch>>;

    async fn create_switch(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)>;

    async fn update_description(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)>;

    /// Deletes a non-primary switch. Its audit history stays; re-creating the name continues
    /// its version sequence.
    async fn delete_switch(&self, name: &str, actor: Actor) -> Result<AuditEntry>;

    /// Changes a switch's state, committed durably before it returns.
    async fn set_state(&self, change: StateChange) -> Result<SetOutcome>;

    /// Newest first.
    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>>;

    /// Entries of one switch with `version > after_version`, oldest first: what a watcher that
    /// reconnects with `Last-Event-ID` missed.
    async fn switch_history_after(
        &self,
        switch: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>>;

    /// The events of one switch with `version > after_version`, oldest first: exactly what a
    /// watcher that reconnects with `Last-Event-ID` missed.
    async fn events_after_version(
        &self,
        switch: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>>;

    /// Switch events of all switches with audit `id > after_id`, oldest first.
    async fn events_after_id(&self, after_id: u64, limit: u32) -> Result<Vec<StoredEvent>>;

    /// The id of the newest audit entry (0 when empty).
    async fn last_audit_id(&self) -> Result<u64>;

    async fn create_token(&self, token: TokenRecord, actor: Actor) -> Result<AuditEntry>;

    /// Appends an adapter's entry to the audit log; the switch must exist.
    async fn record_adapter_action(&self, record: AdapterRecord) -> Result<AuditEntry>;

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>>;

    async fn revoke_token(&self, id: &str, actor: Actor) -> Result<(TokenRecord, AuditEntry)>;
    /// Gives a live token a new secret (hash); the old one stays valid until `grace_until`.
    async fn rotate_token(
        &self,
        id: &str,
        new_secret_hash: Vec<u8>,
        grace_until: DateTime<Utc>,
        actor: Actor,
    ) -> Result<(TokenRecord, AuditEntry)>;
    /// Records last-use times and addresses (only moving them forward).
    async fn touch_tokens(&self, uses: Vec<TokenUse>) -> Result<()>;

    /// A cheap round trip that proves the store answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// The clock leases and due times are kept on (the outbox, the shared worker pictures).
    /// Replicas sharing a store must agree on it even when their wall clocks do not, so a
    /// shared store answers with its own clock; a store one process uses, with that process's.
    async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(Utc::now())
    }

    /// Enqueues notifications; returns how many were new (duplicates by key are skipped).
    async fn outbox_enqueue(&self, items: Vec<NewNotification>) -> Result<usize>;

    /// Claims up to `limit` undelivered notifications that are due, leasing them for `lease`
    /// (their next attempt moves past the lease, so another claimer skips them; if the claimer
    /// dies, they come due again when the lease ends). Only kinds this binary knows are claimed:
    /// a newer binary's rows are left, untouched, for a replica that can deliver them.
    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<OutboxItem>>;

    async fn outbox_delivered(&self, id: u64, at: DateTime<Utc>) -> Result<()>;

    /// Kinds of undelivered, not given-up rows that this binary does not know (written by a
    /// newer binary during a rolling upgrade), sorted. `outbox_claim` and `outbox_recent` pass
    /// such rows by; this says they are there.
    async fn outbox_unknown_kinds(&self) -> Result<Vec<String>>;

    /// Records a failed attempt; `next` `None` means give up.
    async fn outbox_failed(
        &self,
        id: u64,
        at: DateTime<Utc>,
        error: &str,
        next: Option<DateTime<Utc>>,
    ) -> Result<()>;

    /// The most recent notifications of the kinds this binary knows, newest first.
    async fn outbox_recent(&self, limit: u32) -> Result<Vec<OutboxItem>>;

    /// Whether a notification older than `id` on `channel` is still neither delivered nor
    /// given up (including one leased right now). Incident tools need their events in order:
    /// a resolve sent before its trigger would leave an incident nobody resolves.
    async fn outbox_pending_before(&self, channel: &Channel, id: u64) -> Result<bool>;

    /// Commits made by any process sharing this store, as they happen. `None` for a store only
    /// one process uses (SQLite): that process already knows every change it made.
    fn feed(&self) -> Option<tokio::sync::broadcast::Receiver<FeedEvent>> {
        None
    }

    /// Publishes one replica's worker picture (an opaque JSON document) for the others. A
    /// no-op where one process holds every worker.
    async fn workers_share(&self, _replica: &str, _doc: String, _at: DateTime<Utc>) -> Result<()> {
        Ok(())
    }

    /// The worker pictures of every replica that shared one at or after `since`:
    /// `(replica, doc)`.
    async fn workers_shared(&self, _since: DateTime<Utc>) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn channels_and_kinds_round_trip_through_their_stored_text() {
        use super::{Channel, NotificationKind};
        for c in [
            Channel::Slack,
            Channel::Webhook("ops:eu".into()),
            Channel::PagerDuty,
            Channel::Grafana,
        ] {
            assert_eq!(Channel::parse(&c.to_string()), Some(c));
        }
        assert_eq!(Channel::parse("webhook:"), None);
        assert_eq!(Channel::parse("email"), None);
        for k in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(NotificationKind::parse("drill"), None);
    }

    #[test]
    fn kind_names_are_sql_safe() {
        use super::NotificationKind;
        // `rows::known_kinds_sql` puts them into statements as literals.
        for k in NotificationKind::ALL {
            assert!(
                k.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_'),
                "{k}"
            );
        }
        assert_eq!(
            crate::rows::known_kinds_sql(),
            "'change', 'reminder', 'resume_requested', 'resume_approved', 'resume_rejected', \
             'resume_expired', 'break_glass'"
        );
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseUrl::parse("postgres://u:p@h:5432/brb"),
            DatabaseUrl::Postgres("postgres://u:p@h:5432/brb".into())
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://h/brb"),
            DatabaseUrl::Postgres("postgresql://h/brb".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:/var/lib/brb/brb.db"),
            DatabaseUrl::Sqlite("/var/lib/brb/brb.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/brb/brb.db"),
            DatabaseUrl::Sqlite("/var/lib/brb/brb.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("data/brb.db"),
            DatabaseUrl::Sqlite("data/brb.db".into())
        );
    }
}
