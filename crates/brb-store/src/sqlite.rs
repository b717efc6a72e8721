//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so a commit has
//! reached the disk before the caller hears about it.
//!
//! One connection writes (behind a mutex: SQLite allows one writer anyway) and one reads, so a
//! slow audit page never waits behind a commit. Both run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use brb_api::{AuditAction, AuditEntry, DeletedSwitch, Role, Source, Switch, SwitchState};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::{
    Actor, AuditQuery, NewAudit, NewNotification, OutboxItem, Result, SetOutcome, StateChange,
    Store, StoreError, StoredEvent, SwitchEvent, TokenRecord,
};

/// Schema migrations, applied in order, each in its own transaction. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE switches (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    is_primary  INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    changed_at  INTEGER NOT NULL,
    changed_by  TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX switches_one_primary ON switches (is_primary)
    WHERE is_primary = 1 AND deleted = 0;

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    action      TEXT NOT NULL,
    switch      TEXT,
    from_state  TEXT,
    to_state    TEXT,
    version     INTEGER,
    actor       TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    remote_addr TEXT,
    at          INTEGER NOT NULL,
    -- The switch as it was right after this entry (JSON), so a watcher that reconnects with
    -- Last-Event-ID is replayed exactly what it missed. NULL for token entries.
    snapshot    TEXT
);
CREATE UNIQUE INDEX audit_switch_version ON audit (switch, version) WHERE switch IS NOT NULL;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
"#,
    ),
    (
        2,
        r#"
-- The gradual release in progress (JSON of brb_api::Ramp), NULL when none.
ALTER TABLE switches ADD COLUMN ramp TEXT;
"#,
    ),
    (
        3,
        r#"
-- Notifications to deliver, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    event           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    delivered_at    INTEGER,
    failed          INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed = 0;
"#,
    ),
    (
        4,
        r#"
-- Token lifecycle: expiry, scope and the previous secret during a rotation (JSON of
-- brb_store::TokenPolicy, NULL when none), and the last successful use.
ALTER TABLE tokens ADD COLUMN policy TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_addr TEXT;
"#,
    ),
];

pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut writer = Connection::open(&path).map_err(map_err)?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let reader = Connection::open(&path).map_err(map_err)?;
        configure(&reader)?;
        Ok(SqliteStore {
            path,
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.writer);
        run_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Internal("writer lock poisoned".into()))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let out = f(&tx)?;
            tx.commit().map_err(map_err)?;
            Ok(out)
        })
        .await
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.reader);
        run_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| StoreError::Internal("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
    }
}

async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
}

fn configure(conn: &Connection) -> Result<()> {
    // WAL lets the reader run beside the writer; FULL makes every commit durable (fsync of the
    // WAL), which is what "acknowledged means never lost" needs.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(map_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(map_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(map_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(map_err)?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(map_err)?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction().map_err(map_err)?;
        let applied: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(map_err)?;
        if applied.is_none() {
            tx.execute_batch(sql).map_err(map_err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, micros(Utc::now())],
            )
            .map_err(map_err)?;
            tracing::info!(migration = version, "applied schema migration");
        }
        tx.commit().map_err(map_err)?;
    }
    Ok(())
}

/// Maps SQLite failures to the two kinds callers act on: "cannot write now" (503, retry later,
/// nothing changed) and everything else.
fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            C::DiskFull
            | C::ReadOnly
            | C::CannotOpen
            | C::SystemIoFailure
            | C::DatabaseBusy
            | C::DatabaseLocked
            | C::PermissionDenied
            | C::OutOfMemory => return StoreError::Unavailable(e.to_string()),
            _ => {}
        }
    }
    StoreError::Internal(e.to_string())
}

pub(crate) fn encode_event(e: &SwitchEvent) -> Result<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Internal(format!("encode snapshot: {e}")))
}

fn collect_events(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredEvent>> {
    let rows = stmt
        .query_map(params, |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .map_err(map_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, snapshot) = row.map_err(map_err)?;
        let snapshot = snapshot.ok_or_else(|| corrupt(format!("audit {id} has no snapshot")))?;
        let event = serde_json::from_str(&snapshot)
            .map_err(|e| corrupt(format!("audit {id} snapshot: {e}")))?;
        out.push(StoredEvent {
            audit_id: id as u64,
            event,
        });
    }
    Ok(out)
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

pub(crate) fn parse_state(s: &str) -> Result<SwitchState> {
    SwitchState::parse(s).ok_or_else(|| corrupt(format!("state {s:?}")))
}

pub(crate) fn parse_source(s: &str) -> Result<Source> {
    Source::parse(s).ok_or_else(|| corrupt(format!("source {s:?}")))
}

pub(crate) const SWITCH_COLUMNS: &str =
    "name, description, is_primary, state, version, changed_at, changed_by, source, reason, ramp";

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
}

fn raw_switch(r: &Row<'_>) -> rusqlite::Result<RawSwitch> {
    Ok(RawSwitch {
        name: r.get(0)?,
        description: r.get(1)?,
        primary: r.get(2)?,
        state: r.get(3)?,
        version: r.get(4)?,
        changed_at: r.get(5)?,
        changed_by: r.get(6)?,
        source: r.get(7)?,
        reason: r.get(8)?,
        ramp: r.get(9)?,
    })
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
        })
    }
}

pub(crate) const AUDIT_COLUMNS: &str =
    "id, action, switch, from_state, to_state, version, actor, source, reason, remote_addr, at";

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
}

fn raw_audit(r: &Row<'_>) -> rusqlite::Result<RawAudit> {
    Ok(RawAudit {
        id: r.get(0)?,
        action: r.get(1)?,
        switch: r.get(2)?,
        from: r.get(3)?,
        to: r.get(4)?,
        version: r.get(5)?,
        actor: r.get(6)?,
        source: r.get(7)?,
        reason: r.get(8)?,
        remote_addr: r.get(9)?,
        at: r.get(10)?,
    })
}

impl RawAudit {
    pub(crate) fn into_entry(self) -> Result<AuditEntry> {
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
        })
    }
}

fn collect_audit(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<AuditEntry>> {
    let rows = stmt.query_map(params, raw_audit).map_err(map_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(map_err)?.into_entry()?);
    }
    Ok(out)
}

/// Reads a switch row, deleted or not, inside a transaction.
fn row_any(tx: &Connection, name: &str) -> Result<Option<(Switch, bool)>> {
    let sql = format!("SELECT {SWITCH_COLUMNS}, deleted FROM switches WHERE name = ?1");
    let raw = tx
        .query_row(&sql, [name], |r| {
            Ok((raw_switch(r)?, r.get::<_, bool>(10)?))
        })
        .optional()
        .map_err(map_err)?;
    raw.map(|(s, deleted)| Ok((s.into_switch()?, deleted)))
        .transpose()
}

fn live(tx: &Connection, name: &str) -> Result<Switch> {
    match row_any(tx, name)? {
        Some((s, false)) => Ok(s),
        _ => Err(StoreError::SwitchNotFound(name.to_string())),
    }
}

fn append_audit(tx: &Connection, a: NewAudit<'_>) -> Result<AuditEntry> {
    tx.execute(
        "INSERT INTO audit (action, switch, from_state, to_state, version, actor, source, reason,
                            remote_addr, at, snapshot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            a.action.as_str(),
            a.switch,
            a.from.map(SwitchState::as_str),
            a.to.map(SwitchState::as_str),
            a.version.map(|v| v as i64),
            a.actor.name,
            a.actor.source.as_str(),
            a.reason,
            a.actor.remote_addr,
            micros(a.at),
            a.snapshot.map(encode_event).transpose()?,
        ],
    )
    .map_err(map_err)?;
    let id = tx.last_insert_rowid();
    Ok(AuditEntry {
        id: id as u64,
        action: a.action,
        switch: a.switch.map(str::to_string),
        from: a.from,
        to: a.to,
        version: a.version,
        actor: a.actor.name.clone(),
        source: a.actor.source,
        reason: a.reason.map(str::to_string),
        remote_addr: a.actor.remote_addr.clone(),
        at: a.at,
    })
}

/// Inserts or revives a switch row. A deleted switch's row is kept so that a re-created switch
/// continues its version sequence: a watcher's `Last-Event-ID` never points into a reused range.
fn insert_switch(
    tx: &Connection,
    name: &str,
    description: &str,
    primary: bool,
    actor: &Actor,
) -> Result<(Switch, AuditEntry)> {
    let now = Utc::now();
    let version = match row_any(tx, name)? {
        Some((_, false)) => return Err(StoreError::AlreadyExists(format!("switch {name:?}"))),
        Some((prev, true)) => {
            let v = prev.version + 1;
            tx.execute(
                "UPDATE switches SET description = ?2, is_primary = ?3, state = 'running',
                    version = ?4, changed_at = ?5, changed_by = ?6, source = ?7, reason = NULL,
                    ramp = NULL, deleted = 0
                 WHERE name = ?1",
                params![
                    name,
                    description,
                    primary,
                    v as i64,
                    micros(now),
                    actor.name,
                    actor.source.as_str()
                ],
            )
            .map_err(map_err)?;
            v
        }
        None => {
            tx.execute(
                "INSERT INTO switches (name, description, is_primary, state, version, changed_at,
                                       changed_by, source, reason)
                 VALUES (?1, ?2, ?3, 'running', 1, ?4, ?5, ?6, NULL)",
                params![
                    name,
                    description,
                    primary,
                    micros(now),
                    actor.name,
                    actor.source.as_str()
                ],
            )
            .map_err(map_err)?;
            1
        }
    };
    let switch = live(tx, name)?;
    let entry = append_audit(
        tx,
        NewAudit {
            action: AuditAction::SwitchCreated,
            switch: Some(name),
            from: None,
            to: Some(SwitchState::Running),
            version: Some(version),
            actor,
            reason: None,
            at: now,
            snapshot: Some(&SwitchEvent::Changed(switch.clone())),
        },
    )?;
    Ok((switch, entry))
}

#[async_trait]
impl Store for SqliteStore {
    async fn ensure_switch(
        &self,
        name: &str,
        description: &str,
        primary: bool,
        actor: Actor,
    ) -> Result<bool> {
        let (name, description) = (name.to_string(), description.to_string());
        self.write(move |tx| {
            if let Some((_, false)) = row_any(tx, &name)? {
                return Ok(false);
            }
            if primary {
                let existing: Option<String> = tx
                    .query_row(
                        "SELECT name FROM switches WHERE is_primary = 1 AND deleted = 0",
                        [],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(map_err)?;
                if existing.is_some() {
                    // Another switch is already the primary one; do not create a second.
                    return Ok(false);
                }
            }
            insert_switch(tx, &name, &description, primary, &actor)?;
            Ok(true)
        })
        .await
    }

    async fn list_switches(&self) -> Result<Vec<Switch>> {
        self.read(|c| {
            let sql = format!(
                "SELECT {SWITCH_COLUMNS} FROM switches WHERE deleted = 0
                 ORDER BY is_primary DESC, name"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = stmt.query_map([], raw_switch).map_err(map_err)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r.map_err(map_err)?.into_switch()?);
            }
            Ok(out)
        })
        .await
    }

    async fn get_switch(&self, name: &str) -> Result<Option<Switch>> {
        let name = name.to_string();
        self.read(move |c| match row_any(c, &name)? {
            Some((s, false)) => Ok(Some(s)),
            _ => Ok(None),
        })
        .await
    }

    async fn create_switch(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)> {
        let (name, description) = (name.to_string(), description.to_string());
        self.write(move |tx| insert_switch(tx, &name, &description, false, &actor))
            .await
    }

    async fn update_description(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)> {
        let (name, description) = (name.to_string(), description.to_string());
        self.write(move |tx| {
            let cur = live(tx, &name)?;
            let version = cur.version + 1;
            let now = Utc::now();
            tx.execute(
                "UPDATE switches SET description = ?2, version = ?3 WHERE name = ?1",
                params![name, description, version as i64],
            )
            .map_err(map_err)?;
            let switch = live(tx, &name)?;
            let entry = append_audit(
                tx,
                NewAudit {
                    action: AuditAction::SwitchUpdated,
                    switch: Some(&name),
                    from: Some(cur.state),
                    to: Some(cur.state),
                    version: Some(version),
                    actor: &actor,
                    reason: None,
                    at: now,
                    snapshot: Some(&SwitchEvent::Changed(switch.clone())),
                },
            )?;
            Ok((switch, entry))
        })
        .await
    }

    async fn delete_switch(&self, name: &str, actor: Actor) -> Result<AuditEntry> {
        let name = name.to_string();
        self.write(move |tx| {
            let cur = live(tx, &name)?;
            if cur.primary {
                return Err(StoreError::Protected);
            }
            let version = cur.version + 1;
            tx.execute(
                "UPDATE switches SET deleted = 1, version = ?2 WHERE name = ?1",
                params![name, version as i64],
            )
            .map_err(map_err)?;
            append_audit(
                tx,
                NewAudit {
                    action: AuditAction::SwitchDeleted,
                    switch: Some(&name),
                    from: Some(cur.state),
                    to: None,
                    version: Some(version),
                    actor: &actor,
                    reason: None,
                    at: Utc::now(),
                    snapshot: Some(&SwitchEvent::Deleted(DeletedSwitch {
                        name: name.clone(),
                        version,
                    })),
                },
            )
        })
        .await
    }

    async fn set_state(&self, change: StateChange) -> Result<SetOutcome> {
        self.write(move |tx| {
            let cur = live(tx, &change.switch)?;
            let now = Utc::now();
            let ramp_json = match crate::plan(&cur, &change, now)? {
                crate::Plan::Unchanged => return Ok(SetOutcome::Unchanged(cur)),
                crate::Plan::Write { ramp_json } => ramp_json,
            };
            let version = cur.version + 1;
            tx.execute(
                "UPDATE switches SET state = ?2, version = ?3, changed_at = ?4, changed_by = ?5,
                    source = ?6, reason = ?7, ramp = ?9
                 WHERE name = ?1 AND version = ?8",
                params![
                    change.switch,
                    change.to.as_str(),
                    version as i64,
                    micros(now),
                    change.actor.name,
                    change.actor.source.as_str(),
                    change.reason,
                    cur.version as i64,
                    ramp_json,
                ],
            )
            .map_err(map_err)?;
            let switch = live(tx, &change.switch)?;
            let entry = append_audit(
                tx,
                NewAudit {
                    action: AuditAction::StateChanged,
                    switch: Some(&change.switch),
                    from: Some(cur.state),
                    to: Some(change.to),
                    version: Some(version),
                    actor: &change.actor,
                    reason: change.reason.as_deref(),
                    at: now,
                    snapshot: Some(&SwitchEvent::Changed(switch.clone())),
                },
            )?;
            let event = serde_json::to_string(&switch)
                .map_err(|e| StoreError::Internal(format!("encode event: {e}")))?;
            for channel in &change.notify {
                tx.execute(
                    "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                         next_attempt_at)
                     VALUES (?1, ?2, 'change', ?3, ?4, ?4)",
                    params![
                        format!("change:{}:{channel}", entry.id),
                        channel,
                        event,
                        micros(now)
                    ],
                )
                .map_err(map_err)?;
            }
            Ok(SetOutcome::Changed { switch, entry })
        })
        .await
    }

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        self.read(move |c| {
            let before = query.before.map(|b| b as i64).unwrap_or(i64::MAX);
            let limit = i64::from(query.limit);
            match &query.switch {
                Some(s) => {
                    let sql = format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit WHERE switch = ?1 AND id < ?2
                         ORDER BY id DESC LIMIT ?3"
                    );
                    let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
                    collect_audit(&mut stmt, params![s, before, limit])
                }
                None => {
                    let sql = format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
                    );
                    let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
                    collect_audit(&mut stmt, params![before, limit])
                }
            }
        })
        .await
    }

    async fn switch_history_after(
        &self,
        switch: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let switch = switch.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT {AUDIT_COLUMNS} FROM audit WHERE switch = ?1 AND version > ?2
                 ORDER BY version LIMIT ?3"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            collect_audit(
                &mut stmt,
                params![switch, after_version as i64, i64::from(limit)],
            )
        })
        .await
    }

    async fn events_after_version(
        &self,
        switch: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let switch = switch.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, snapshot FROM audit WHERE switch = ?1 AND version > ?2
                     ORDER BY version LIMIT ?3",
                )
                .map_err(map_err)?;
            collect_events(
                &mut stmt,
                params![switch, after_version as i64, i64::from(limit)],
            )
        })
        .await
    }

    async fn events_after_id(&self, after_id: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, snapshot FROM audit WHERE id > ?1 AND snapshot IS NOT NULL
                     ORDER BY id LIMIT ?2",
                )
                .map_err(map_err)?;
            collect_events(&mut stmt, params![after_id as i64, i64::from(limit)])
        })
        .await
    }

    async fn last_audit_id(&self) -> Result<u64> {
        self.read(|c| {
            let id: Option<i64> = c
                .query_row("SELECT MAX(id) FROM audit", [], |r| r.get(0))
                .map_err(map_err)?;
            Ok(id.unwrap_or(0) as u64)
        })
        .await
    }

    async fn create_token(&self, token: TokenRecord, actor: Actor) -> Result<AuditEntry> {
        self.write(move |tx| {
            let taken: Option<String> = tx
                .query_row(
                    "SELECT id FROM tokens WHERE name = ?1 AND revoked_at IS NULL",
                    [&token.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists(format!("token {:?}", token.name)));
            }
            tx.execute(
                "INSERT INTO tokens (id, name, role, secret_hash, created_at, revoked_at, policy)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
                params![
                    token.id,
                    token.name,
                    token.role.as_str(),
                    token.secret_hash,
                    micros(token.created_at),
                    token.policy.to_json()
                ],
            )
            .map_err(map_err)?;
            append_audit(
                tx,
                NewAudit {
                    action: AuditAction::TokenCreated,
                    switch: None,
                    from: None,
                    to: None,
                    version: None,
                    actor: &actor,
                    reason: Some(&format!("{} ({})", token.name, token.role)),
                    at: token.created_at,
                    snapshot: None,
                },
            )
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map([], raw_token).map_err(map_err)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r.map_err(map_err)?.into_record()?);
            }
            Ok(out)
        })
        .await
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let id = id.to_string();
        self.read(move |c| token_by_id(c, &id)).await
    }

    async fn revoke_token(&self, id: &str, actor: Actor) -> Result<(TokenRecord, AuditEntry)> {
        let id = id.to_string();
        self.write(move |tx| {
            let Some(tok) = token_by_id(tx, &id)? else {
                return Err(StoreError::TokenNotFound(id));
            };
            let now = Utc::now();
            if tok.revoked_at.is_none() {
                tx.execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1",
                    params![id, micros(now)],
                )
                .map_err(map_err)?;
            }
            let entry = append_audit(
                tx,
                NewAudit {
                    action: AuditAction::TokenRevoked,
                    switch: None,
                    from: None,
                    to: None,
                    version: None,
                    actor: &actor,
                    reason: Some(&format!("{} ({})", tok.name, tok.role)),
                    at: now,
                    snapshot: None,
                },
            )?;
            let tok = token_by_id(tx, &id)?.ok_or(StoreError::TokenNotFound(id))?;
            Ok((tok, entry))
        })
        .await
    }

    async fn rotate_token(
        &self,
        id: &str,
        new_secret_hash: Vec<u8>,
        grace_until: DateTime<Utc>,
        actor: Actor,
    ) -> Result<(TokenRecord, AuditEntry)> {
        let id = id.to_string();
        self.write(move |tx| {
            let Some(tok) = token_by_id(tx, &id)? else {
                return Err(StoreError::TokenNotFound(id));
            };
            if tok.revoked_at.is_some() {
                return Err(StoreError::TokenNotFound(id));
            }
            let now = Utc::now();
            let (policy, reason) = crate::rotation(&tok, grace_until, now);
            tx.execute(
                "UPDATE tokens SET secret_hash = ?2, policy = ?3 WHERE id = ?1",
                params![id, new_secret_hash, policy.to_json()],
            )
            .map_err(map_err)?;
            let entry = append_audit(
                tx,
                NewAudit {
                    action: AuditAction::TokenRotated,
                    switch: None,
                    from: None,
                    to: None,
                    version: None,
                    actor: &actor,
                    reason: Some(&reason),
                    at: now,
                    snapshot: None,
                },
            )?;
            let tok = token_by_id(tx, &id)?.ok_or(StoreError::TokenNotFound(id))?;
            Ok((tok, entry))
        })
        .await
    }

    async fn touch_tokens(&self, uses: Vec<crate::TokenUse>) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        self.write(move |tx| {
            for u in &uses {
                tx.execute(
                    "UPDATE tokens SET last_used_at = ?2, last_used_addr = ?3
                     WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                    params![u.id, micros(u.at), u.addr],
                )
                .map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn outbox_enqueue(&self, items: Vec<NewNotification>) -> Result<usize> {
        self.write(move |tx| {
            let now = micros(Utc::now());
            let mut added = 0;
            for it in &items {
                let event = serde_json::to_string(&it.event)
                    .map_err(|e| StoreError::Internal(format!("encode event: {e}")))?;
                added += tx
                    .execute(
                        "INSERT OR IGNORE INTO outbox (dedupe_key, channel, kind, event,
                                                       created_at, next_attempt_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                        params![it.dedupe_key, it.channel, it.kind, event, now],
                    )
                    .map_err(map_err)?;
            }
            Ok(added)
        })
        .await
    }

    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<OutboxItem>> {
        let until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        self.write(move |tx| {
            let sql = format!(
                "UPDATE outbox SET next_attempt_at = ?1
                 WHERE id IN (SELECT id FROM outbox
                              WHERE delivered_at IS NULL AND failed = 0 AND next_attempt_at <= ?2
                              ORDER BY id LIMIT ?3)
                 RETURNING {OUTBOX_COLUMNS}"
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(map_err)?;
            let mut items = collect_outbox(
                &mut stmt,
                params![micros(until), micros(now), i64::from(limit)],
            )?;
            items.sort_by_key(|i| i.id);
            Ok(items)
        })
        .await
    }

    async fn outbox_delivered(&self, id: u64, at: DateTime<Utc>) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE outbox SET delivered_at = ?2, last_attempt_at = ?2,
                    attempts = attempts + 1, last_error = NULL
                 WHERE id = ?1",
                params![id as i64, micros(at)],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn outbox_failed(
        &self,
        id: u64,
        at: DateTime<Utc>,
        error: &str,
        next: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let error = error.chars().take(500).collect::<String>();
        self.write(move |tx| {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ?2, last_error = ?3,
                    next_attempt_at = COALESCE(?4, next_attempt_at),
                    failed = CASE WHEN ?4 IS NULL THEN 1 ELSE 0 END
                 WHERE id = ?1 AND delivered_at IS NULL",
                params![id as i64, micros(at), error, next.map(micros)],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn outbox_recent(&self, limit: u32) -> Result<Vec<OutboxItem>> {
        self.read(move |c| {
            let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY id DESC LIMIT ?1");
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            collect_outbox(&mut stmt, params![i64::from(limit)])
        })
        .await
    }
}

pub(crate) const OUTBOX_COLUMNS: &str = "id, channel, kind, event, created_at, attempts, next_attempt_at, \
     last_attempt_at, delivered_at, failed, last_error";

fn collect_outbox(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<OutboxItem>> {
    type Raw = (
        i64,
        String,
        String,
        String,
        i64,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        bool,
        Option<String>,
    );
    let rows = stmt
        .query_map(params, |r| {
            Ok::<Raw, rusqlite::Error>((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ))
        })
        .map_err(map_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, channel, kind, event, created, attempts, next, last, delivered, failed, err) =
            row.map_err(map_err)?;
        out.push(OutboxItem {
            id: id as u64,
            channel,
            kind,
            event: serde_json::from_str(&event)
                .map_err(|e| corrupt(format!("outbox {id} event: {e}")))?,
            created_at: from_micros(created)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_attempt_at: from_micros(next)?,
            last_attempt_at: last.map(from_micros).transpose()?,
            delivered_at: delivered.map(from_micros).transpose()?,
            failed,
            last_error: err,
        });
    }
    Ok(out)
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

/// The token columns, in the order `RawToken` reads them (both backends).
pub(crate) const TOKEN_COLUMNS: &str =
    "id, name, role, secret_hash, created_at, revoked_at, policy, last_used_at, last_used_addr";

fn raw_token(r: &Row<'_>) -> rusqlite::Result<RawToken> {
    Ok(RawToken {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
        policy: r.get(6)?,
        last_used_at: r.get(7)?,
        last_used_addr: r.get(8)?,
    })
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

fn token_by_id(c: &Connection, id: &str) -> Result<Option<TokenRecord>> {
    c.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
        [id],
        raw_token,
    )
    .optional()
    .map_err(map_err)?
    .map(RawToken::into_record)
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rows_cannot_be_changed_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("t.db")).unwrap();
        configure(&c).unwrap();
        migrate(&mut c).unwrap();
        c.execute(
            "INSERT INTO audit (action, actor, source, at) VALUES ('token_created', 'a', 'api', 0)",
            [],
        )
        .unwrap();
        let upd = c.execute("UPDATE audit SET actor = 'mallory'", []);
        assert!(upd.unwrap_err().to_string().contains("append-only"));
        let del = c.execute("DELETE FROM audit", []);
        assert!(del.unwrap_err().to_string().contains("append-only"));
    }

    #[test]
    fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("t.db")).unwrap();
        migrate(&mut c).unwrap();
        migrate(&mut c).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
    }

    #[test]
    fn pragmas_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("t.db")).unwrap();
        configure(&c).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous must be FULL (2)");
    }
}
