//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so a commit has
//! reached the disk before the caller hears about it.
//!
//! One connection writes (behind a mutex: SQLite allows one writer anyway) and one reads, so a
//! slow audit page never waits behind a commit. Both run on tokio's blocking pool. What a
//! write means is decided in `rules.rs`, shared with PostgreSQL; this file reads rows and
//! applies what the rules say.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use brb_api::{AuditEntry, Switch, SwitchState};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::migrations::{MIGRATIONS, sqlite_renumbered};
use crate::rows::{
    AUDIT_COLUMNS, OUTBOX_COLUMNS, RawAudit, RawOutbox, RawSwitch, RawToken, SWITCH_COLUMNS,
    TOKEN_COLUMNS, decode_event, encode_event, known_kinds_sql, micros,
};
use crate::rules::{self, NewAudit, StateDecision, SwitchWrite, TokenWrite};
use crate::{
    Actor, AuditQuery, Channel, NewNotification, Outage, OutboxItem, Result, SetOutcome,
    StateChange, Store, StoreError, StoredEvent, TokenRecord,
};

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
    let recorded: Vec<i64> = {
        let mut stmt = conn
            .prepare("SELECT version FROM schema_migrations")
            .map_err(map_err)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(map_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(map_err)?
    };
    let has_policy: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('tokens') WHERE name = 'policy'",
            [],
            |r| r.get(0),
        )
        .map_err(map_err)?;
    if sqlite_renumbered(&recorded, has_policy) {
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (5, ?1)",
            params![micros(Utc::now())],
        )
        .map_err(map_err)?;
        tracing::info!("recorded the token lifecycle migration under its shared number (5)");
    }
    for m in MIGRATIONS {
        let tx = conn.transaction().map_err(map_err)?;
        let applied: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [m.number],
                |r| r.get(0),
            )
            .optional()
            .map_err(map_err)?;
        if applied.is_none() {
            if !m.sqlite.trim().is_empty() {
                tx.execute_batch(m.sqlite).map_err(map_err)?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![m.number, micros(Utc::now())],
            )
            .map_err(map_err)?;
            tracing::info!(
                migration = m.number,
                what = m.what,
                "applied schema migration"
            );
        }
        tx.commit().map_err(map_err)?;
    }
    Ok(())
}

/// Maps SQLite failures by their typed code to what callers act on: "cannot write now, and
/// why" (503, nothing changed) and everything else.
fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        let outage = match f.code {
            C::DiskFull => Some(Outage::DiskFull),
            C::ReadOnly | C::PermissionDenied => Some(Outage::ReadOnly),
            C::SystemIoFailure | C::CannotOpen => Some(Outage::DiskFailing),
            C::DatabaseBusy | C::DatabaseLocked | C::OutOfMemory => Some(Outage::Busy),
            _ => None,
        };
        if let Some(outage) = outage {
            return StoreError::Unavailable {
                outage,
                detail: e.to_string(),
            };
        }
    }
    StoreError::Internal(e.to_string())
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
        resume_request: r.get(10)?,
    })
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
        snapshot: r.get(11)?,
    })
}

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

fn raw_outbox(r: &Row<'_>) -> rusqlite::Result<RawOutbox> {
    Ok(RawOutbox {
        id: r.get(0)?,
        channel: r.get(1)?,
        kind: r.get(2)?,
        event: r.get(3)?,
        created_at: r.get(4)?,
        attempts: r.get(5)?,
        next_attempt_at: r.get(6)?,
        last_attempt_at: r.get(7)?,
        delivered_at: r.get(8)?,
        failed: r.get(9)?,
        last_error: r.get(10)?,
    })
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
        out.push(decode_event(id, snapshot)?);
    }
    Ok(out)
}

fn collect_outbox(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<OutboxItem>> {
    let rows = stmt.query_map(params, raw_outbox).map_err(map_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(map_err)?.into_item()?);
    }
    Ok(out)
}

/// Reads a switch row, deleted or not.
fn row_any(c: &Connection, name: &str) -> Result<rules::Row> {
    let sql = format!("SELECT {SWITCH_COLUMNS}, deleted FROM switches WHERE name = ?1");
    let raw = c
        .query_row(&sql, [name], |r| {
            Ok((raw_switch(r)?, r.get::<_, bool>(11)?))
        })
        .optional()
        .map_err(map_err)?;
    raw.map(|(s, deleted)| Ok((s.into_switch()?, deleted)))
        .transpose()
}

/// Whether a live switch is primary.
fn primary_taken(c: &Connection) -> Result<bool> {
    c.query_row(
        "SELECT COUNT(*) > 0 FROM switches WHERE is_primary = 1 AND deleted = 0",
        [],
        |r| r.get(0),
    )
    .map_err(map_err)
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
            a.snapshot.as_ref().map(encode_event).transpose()?,
        ],
    )
    .map_err(map_err)?;
    let id = tx.last_insert_rowid();
    Ok(a.entry(id as u64))
}

/// Applies a switch change the rules decided: the row, its audit entry, its notifications.
fn write_switch(tx: &Connection, w: &SwitchWrite) -> Result<AuditEntry> {
    let s = &w.switch;
    let ramp = w.ramp_json()?;
    match w.replaces {
        None => {
            tx.execute(
                "INSERT INTO switches (name, description, is_primary, state, version, changed_at,
                                       changed_by, source, reason, ramp, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    s.name,
                    s.description,
                    s.primary,
                    s.state.as_str(),
                    s.version as i64,
                    micros(s.changed_at),
                    s.changed_by,
                    s.source.as_str(),
                    s.reason,
                    ramp,
                    w.deleted,
                ],
            )
            .map_err(map_err)?;
        }
        Some(was) => {
            let n = tx
                .execute(
                    "UPDATE switches SET description = ?2, is_primary = ?3, state = ?4,
                        version = ?5, changed_at = ?6, changed_by = ?7, source = ?8,
                        reason = ?9, ramp = ?10, deleted = ?11
                     WHERE name = ?1 AND version = ?12",
                    params![
                        s.name,
                        s.description,
                        s.primary,
                        s.state.as_str(),
                        s.version as i64,
                        micros(s.changed_at),
                        s.changed_by,
                        s.source.as_str(),
                        s.reason,
                        ramp,
                        w.deleted,
                        was as i64,
                    ],
                )
                .map_err(map_err)?;
            rules::one_row(n as u64, &format!("switch {:?}", s.name))?;
        }
    }
    // Its own statement, so the row's main write stays as every other change has it.
    tx.execute(
        "UPDATE switches SET resume_request = ?2 WHERE name = ?1",
        params![s.name, w.resume_request_json()?],
    )
    .map_err(map_err)?;
    let entry = append_audit(tx, w.audit())?;
    if !w.notify.is_empty() {
        let event = w.notification_event()?;
        for channel in &w.notify {
            tx.execute(
                "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                     next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![
                    rules::change_key(entry.id, channel),
                    channel.to_string(),
                    w.kind.as_str(),
                    event,
                    micros(w.at)
                ],
            )
            .map_err(map_err)?;
        }
    }
    Ok(entry)
}

/// Applies a token change the rules decided: the row and its audit entry.
fn write_token(tx: &Connection, w: &TokenWrite) -> Result<AuditEntry> {
    let t = &w.token;
    if w.insert {
        tx.execute(
            "INSERT INTO tokens (id, name, role, secret_hash, created_at, revoked_at, policy)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.id,
                t.name,
                t.role.as_str(),
                t.secret_hash,
                micros(t.created_at),
                t.revoked_at.map(micros),
                t.policy.to_json()
            ],
        )
        .map_err(map_err)?;
    } else {
        let n = tx
            .execute(
                "UPDATE tokens SET secret_hash = ?2, revoked_at = ?3, policy = ?4 WHERE id = ?1",
                params![
                    t.id,
                    t.secret_hash,
                    t.revoked_at.map(micros),
                    t.policy.to_json()
                ],
            )
            .map_err(map_err)?;
        rules::one_row(n as u64, &format!("token {:?}", t.id))?;
    }
    append_audit(tx, w.audit())
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
            let row = row_any(tx, &name)?;
            let taken = primary_taken(tx)?;
            match rules::ensure(row, taken, &name, &description, primary, &actor, Utc::now())? {
                Some(w) => write_switch(tx, &w).map(|_| true),
                None => Ok(false),
            }
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
        self.write(move |tx| {
            let w = rules::create(
                row_any(tx, &name)?,
                &name,
                &description,
                false,
                &actor,
                Utc::now(),
            )?;
            let entry = write_switch(tx, &w)?;
            Ok((w.switch, entry))
        })
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
            let w = rules::describe(row_any(tx, &name)?, &name, &description, &actor, Utc::now())?;
            let entry = write_switch(tx, &w)?;
            Ok((w.switch, entry))
        })
        .await
    }

    async fn delete_switch(&self, name: &str, actor: Actor) -> Result<AuditEntry> {
        let name = name.to_string();
        self.write(move |tx| {
            let w = rules::delete(row_any(tx, &name)?, &name, &actor, Utc::now())?;
            write_switch(tx, &w)
        })
        .await
    }

    async fn set_state(&self, change: StateChange) -> Result<SetOutcome> {
        self.write(move |tx| {
            match rules::set_state(row_any(tx, &change.switch)?, &change, Utc::now())? {
                StateDecision::Unchanged(s) => Ok(SetOutcome::Unchanged(s)),
                StateDecision::Write(w) => {
                    let entry = write_switch(tx, &w)?;
                    Ok(SetOutcome::Changed {
                        switch: w.switch,
                        entry,
                    })
                }
            }
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
            let taken: bool = tx
                .query_row(
                    "SELECT COUNT(*) > 0 FROM tokens WHERE name = ?1 AND revoked_at IS NULL",
                    [&token.name],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            write_token(tx, &rules::create_token(taken, &token, &actor)?)
        })
        .await
    }

    async fn record_adapter_action(&self, record: crate::AdapterRecord) -> Result<AuditEntry> {
        self.write(move |tx| {
            let a = rules::adapter_action(row_any(tx, &record.switch)?, &record, Utc::now())?;
            append_audit(tx, a)
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
            let w = rules::revoke_token(token_by_id(tx, &id)?, &id, &actor, Utc::now())?;
            let entry = write_token(tx, &w)?;
            Ok((w.token, entry))
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
            let row = token_by_id(tx, &id)?;
            let w =
                rules::rotate_token(row, &id, new_secret_hash, grace_until, &actor, Utc::now())?;
            let entry = write_token(tx, &w)?;
            Ok((w.token, entry))
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
                        params![
                            it.dedupe_key,
                            it.channel.to_string(),
                            it.kind.as_str(),
                            event,
                            now
                        ],
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
                                AND kind IN ({})
                              ORDER BY id LIMIT ?3)
                 RETURNING {OUTBOX_COLUMNS}",
                known_kinds_sql()
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

    async fn outbox_unknown_kinds(&self) -> Result<Vec<String>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT DISTINCT kind FROM outbox
                 WHERE delivered_at IS NULL AND failed = 0 AND kind NOT IN ({})
                 ORDER BY kind",
                known_kinds_sql()
            );
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(map_err)?;
            let mut kinds = Vec::new();
            for row in rows {
                kinds.push(row.map_err(map_err)?);
            }
            Ok(kinds)
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

    async fn outbox_pending_before(&self, channel: &Channel, id: u64) -> Result<bool> {
        let channel = channel.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM outbox
                                WHERE channel = ?1 AND id < ?2
                                  AND delivered_at IS NULL AND failed = 0)",
                params![channel, id as i64],
                |r| r.get::<_, bool>(0),
            )
            .map_err(map_err)
        })
        .await
    }

    async fn outbox_recent(&self, limit: u32) -> Result<Vec<OutboxItem>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE kind IN ({})
                 ORDER BY id DESC LIMIT ?1",
                known_kinds_sql()
            );
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            collect_outbox(&mut stmt, params![i64::from(limit)])
        })
        .await
    }
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

    /// A database made before the backends shared one numbering recorded the token lifecycle
    /// as migration 4: it must open (not re-run that migration as 5 and fail on the existing
    /// column), keep its tokens, and record 5.
    #[test]
    fn a_database_numbered_the_old_way_opens_and_keeps_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            configure(&c).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .unwrap();
            let old = [
                (1, MIGRATIONS[0].sqlite),
                (2, MIGRATIONS[1].sqlite),
                (3, MIGRATIONS[2].sqlite),
                (4, MIGRATIONS[4].sqlite),
            ];
            for (n, sql) in old {
                c.execute_batch(sql).unwrap();
                c.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [n])
                    .unwrap();
            }
            c.execute(
                "INSERT INTO tokens (id, name, role, secret_hash, created_at, policy)
                 VALUES ('t1', 'ci', 'operator', x'00', 0, '{\"expires_at\":\"2030-01-01T00:00:00Z\"}')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).expect("an old database opens");
        let c = store.reader.lock().unwrap();
        let recorded: Vec<i64> = c
            .prepare("SELECT version FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(recorded, vec![1, 2, 3, 4, 5, 6]);
        let tok = token_by_id(&c, "t1").unwrap().unwrap();
        assert!(tok.policy.expires_at.is_some());
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
