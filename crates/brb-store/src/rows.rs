//! How rows look in both backends: the column lists, the raw values read from a row, and their
//! conversion into API types. Both schemas store the same values in the same columns
//! (timestamps as microseconds since the epoch, enums as their snake_case names, JSON for the
//! ramp, the token policy and the audit snapshot), so one decoding serves both; each backend
//! only fills the raw structs from its own row type.

use brb_api::{AuditAction, AuditEntry, Ramp, Role, Source, Switch, SwitchState};
use chrono::{DateTime, Utc};

use crate::{Channel, NotificationKind, OutboxItem, Result, StoreError, SwitchEvent, TokenRecord};

pub(crate) const SWITCH_COLUMNS: &str = "name, description, is_primary, state, version, changed_at, changed_by, source, reason, ramp, \
     resume_request";

pub(crate) const AUDIT_COLUMNS: &str = "id, action, switch, from_state, to_state, version, actor, source, reason, remote_addr, at, \
     snapshot";

/// The token columns, in the order `RawToken` reads them.
pub(crate) const TOKEN_COLUMNS: &str =
    "id, name, role, secret_hash, created_at, revoked_at, policy, last_used_at, last_used_addr";

pub(crate) const OUTBOX_COLUMNS: &str = "id, channel, kind, event, created_at, attempts, \
     next_attempt_at, last_attempt_at, delivered_at, failed, last_error";

/// The outbox kinds this binary can deliver, as an SQL list (`'change', 'reminder', …`).
/// Claims and listings read only these, so a row a newer binary wrote (a kind added after this
/// one was built) is never claimed, failed or dropped here: it waits for a replica that knows
/// it, and the rows behind it are claimed as if it were not there. The names are fixed
/// identifiers (`kind_names_are_sql_safe`), so they go into the statement as literals.
pub(crate) fn known_kinds_sql() -> String {
    NotificationKind::ALL
        .iter()
        .map(|k| format!("'{}'", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(format!("timestamp {v}")))
}

pub(crate) fn corrupt(what: String) -> StoreError {
    StoreError::Internal(format!("unreadable value in the database: {what}"))
}

fn parse_state(s: &str) -> Result<SwitchState> {
    SwitchState::parse(s).ok_or_else(|| corrupt(format!("state {s:?}")))
}

fn parse_source(s: &str) -> Result<Source> {
    Source::parse(s).ok_or_else(|| corrupt(format!("source {s:?}")))
}

pub(crate) fn encode_event(e: &SwitchEvent) -> Result<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Internal(format!("encode snapshot: {e}")))
}

/// The event of an audit row, from its snapshot column.
pub(crate) fn decode_event(id: i64, snapshot: Option<String>) -> Result<crate::StoredEvent> {
    let snapshot = snapshot.ok_or_else(|| corrupt(format!("audit {id} has no snapshot")))?;
    let event = serde_json::from_str(&snapshot)
        .map_err(|e| corrupt(format!("audit {id} snapshot: {e}")))?;
    Ok(crate::StoredEvent {
        audit_id: u64::try_from(id).map_err(|_| corrupt(format!("audit id {id}")))?,
        event,
    })
}

pub(crate) struct RawSwitch {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) primary: bool,
    pub(crate) state: String,
    pub(crate) version: i64,
    pub(crate) changed_at: i64,
    pub(crate) changed_by: String,
    pub(crate) source: String,
    pub(crate) reason: Option<String>,
    pub(crate) ramp: Option<String>,
    pub(crate) resume_request: Option<String>,
}

impl RawSwitch {
    pub(crate) fn into_switch(self) -> Result<Switch> {
        Ok(Switch {
            state: parse_state(&self.state)?,
            version: u64::try_from(self.version).map_err(|_| corrupt("version".into()))?,
            changed_at: from_micros(self.changed_at)?,
            source: parse_source(&self.source)?,
            name: self.name,
            description: self.description,
            primary: self.primary,
            changed_by: self.changed_by,
            reason: self.reason,
            ramp: self
                .ramp
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt(format!("ramp: {e}")))?,
            resume_request: self
                .resume_request
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt(format!("resume_request: {e}")))?,
        })
    }
}

pub(crate) struct RawAudit {
    pub(crate) id: i64,
    pub(crate) action: String,
    pub(crate) switch: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) version: Option<i64>,
    pub(crate) actor: String,
    pub(crate) source: String,
    pub(crate) reason: Option<String>,
    pub(crate) remote_addr: Option<String>,
    pub(crate) at: i64,
    pub(crate) snapshot: Option<String>,
}

/// The only part of a snapshot an audit entry shows: the ramp (a deleted switch's snapshot
/// has none). Decoding just this skips the rest of the switch.
#[derive(serde::Deserialize)]
struct SnapshotRamp {
    #[serde(default)]
    ramp: Option<Ramp>,
}

/// The ramp of the switch at an audit row's version, from its snapshot.
fn snapshot_ramp(id: i64, snapshot: Option<&str>) -> Result<Option<Ramp>> {
    let Some(text) = snapshot else {
        return Ok(None);
    };
    serde_json::from_str::<SnapshotRamp>(text)
        .map(|s| s.ramp)
        .map_err(|e| corrupt(format!("audit {id} snapshot: {e}")))
}

impl crate::rules::NewAudit<'_> {
    /// The entry this row reads back as, once the backend has its id.
    pub(crate) fn entry(&self, id: u64) -> AuditEntry {
        AuditEntry {
            id,
            action: self.action,
            switch: self.switch.map(str::to_string),
            from: self.from,
            to: self.to,
            version: self.version,
            actor: self.actor.name.clone(),
            source: self.actor.source,
            reason: self.reason.map(str::to_string),
            remote_addr: self.actor.remote_addr.clone(),
            at: self.at,
            ramp: match &self.snapshot {
                Some(SwitchEvent::Changed(s)) => s.ramp.clone(),
                _ => None,
            },
        }
    }
}

impl RawAudit {
    pub(crate) fn into_entry(self) -> Result<AuditEntry> {
        let ramp = snapshot_ramp(self.id, self.snapshot.as_deref())?;
        Ok(AuditEntry {
            id: u64::try_from(self.id).map_err(|_| corrupt("audit id".into()))?,
            action: AuditAction::parse(&self.action)
                .ok_or_else(|| corrupt(format!("action {:?}", self.action)))?,
            switch: self.switch,
            from: self.from.as_deref().map(parse_state).transpose()?,
            to: self.to.as_deref().map(parse_state).transpose()?,
            version: self
                .version
                .map(|v| u64::try_from(v).map_err(|_| corrupt("audit version".into())))
                .transpose()?,
            actor: self.actor,
            source: parse_source(&self.source)?,
            reason: self.reason,
            remote_addr: self.remote_addr,
            at: from_micros(self.at)?,
            ramp,
        })
    }
}

pub(crate) struct RawToken {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) secret_hash: Vec<u8>,
    pub(crate) created_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) policy: Option<String>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) last_used_addr: Option<String>,
}

impl RawToken {
    pub(crate) fn into_record(self) -> Result<TokenRecord> {
        Ok(TokenRecord {
            role: Role::parse(&self.role)
                .ok_or_else(|| corrupt(format!("role {:?}", self.role)))?,
            created_at: from_micros(self.created_at)?,
            revoked_at: self.revoked_at.map(from_micros).transpose()?,
            policy: crate::TokenPolicy::from_json(self.policy.as_deref())?,
            last_used_at: self.last_used_at.map(from_micros).transpose()?,
            last_used_addr: self.last_used_addr,
            id: self.id,
            name: self.name,
            secret_hash: self.secret_hash,
        })
    }
}

pub(crate) struct RawOutbox {
    pub(crate) id: i64,
    pub(crate) channel: String,
    pub(crate) kind: String,
    pub(crate) event: String,
    pub(crate) created_at: i64,
    pub(crate) attempts: i64,
    pub(crate) next_attempt_at: i64,
    pub(crate) last_attempt_at: Option<i64>,
    pub(crate) delivered_at: Option<i64>,
    pub(crate) failed: bool,
    pub(crate) last_error: Option<String>,
}

impl RawOutbox {
    pub(crate) fn into_item(self) -> Result<OutboxItem> {
        let id = self.id;
        Ok(OutboxItem {
            id: u64::try_from(id).map_err(|_| corrupt(format!("outbox id {id}")))?,
            channel: Channel::parse(&self.channel)
                .ok_or_else(|| corrupt(format!("outbox {id} channel {:?}", self.channel)))?,
            kind: NotificationKind::parse(&self.kind)
                .ok_or_else(|| corrupt(format!("outbox {id} kind {:?}", self.kind)))?,
            event: serde_json::from_str(&self.event)
                .map_err(|e| corrupt(format!("outbox {id} event: {e}")))?,
            created_at: from_micros(self.created_at)?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_attempt_at: from_micros(self.next_attempt_at)?,
            last_attempt_at: self.last_attempt_at.map(from_micros).transpose()?,
            delivered_at: self.delivered_at.map(from_micros).transpose()?,
            failed: self.failed,
            last_error: self.last_error,
        })
    }
}
