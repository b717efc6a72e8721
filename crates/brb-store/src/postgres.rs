//! The shared backend: PostgreSQL, for several control-plane replicas behind a load balancer.
//!
//! Same schema semantics as SQLite (timestamps as microseconds, an append-only audit log with
//! per-version snapshots, tokens, the outbox), plus what several processes need:
//!
//! - **One global write order.** Every write transaction that appends to the audit log first
//!   takes one transaction-scoped advisory lock ([`WRITE_LOCK`]). Audit ids are drawn from the
//!   sequence while holding it, so ids are assigned in commit order: a reader that sees id `n`
//!   committed has also seen every id below it. That is what lets `events_after_id` replay the
//!   all-switches stream without holes, and lets each replica publish changes in one order.
//!   A brake sees a handful of writes a second, so one lock costs nothing that matters.
//! - **Change notifications.** Each write sends `pg_notify('brb_changes', …)` inside its
//!   transaction (PostgreSQL delivers it only on commit). A dedicated listener connection per
//!   process turns them into [`FeedEvent`]s; the payload is only a hint (switch name and
//!   version): receivers read the committed rows. When the listener loses its connection it
//!   reconnects with backoff and announces [`FeedEvent::Connected`], so the server re-reads
//!   everything it may have missed.
//! - **Outbox claiming** with `FOR UPDATE SKIP LOCKED` plus the lease, so concurrent replicas
//!   never claim the same notification, and a replica that dies mid-delivery only delays it
//!   until the lease ends.
//!
//! Connections come from a small `deadpool-postgres` pool with short timeouts, so a database
//! outage turns writes into [`StoreError::Unavailable`] within seconds instead of hanging.
//! TLS is not wired yet: [`PgStore::connect`] uses `NoTls`, and that single call is the seam
//! where a TLS connector goes.

use std::time::Duration;

use async_trait::async_trait;
use brb_api::{AuditAction, AuditEntry, DeletedSwitch, Switch, SwitchState};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls, Row};

use crate::sqlite::{
    AUDIT_COLUMNS, OUTBOX_COLUMNS, RawAudit, RawSwitch, RawToken, SWITCH_COLUMNS, TOKEN_COLUMNS,
    corrupt, encode_event, from_micros, micros,
};
use crate::{
    Actor, AuditQuery, FeedEvent, NewAudit, NewNotification, OutboxItem, Result, SetOutcome,
    StateChange, Store, StoreError, StoredEvent, SwitchEvent, TokenRecord,
};

/// Advisory lock key held by every write transaction: serializes writers across replicas so
/// audit ids follow commit order. (Any constant works; this one spells "brb" in ASCII.)
const WRITE_LOCK: i64 = 0x0062_7262;
/// Advisory lock key held while migrating, so replicas starting together migrate once.
const MIGRATE_LOCK: i64 = 0x0062_7263;
/// The LISTEN/NOTIFY channel.
pub const CHANNEL: &str = "brb_changes";
/// How long a request waits for a pooled connection or a new one before the store reports
/// itself unavailable.
const POOL_WAIT: Duration = Duration::from_secs(3);
/// How often the listener proves its connection is alive (a dead peer can leave a TCP
/// connection silently open).
const LISTENER_PING: Duration = Duration::from_secs(2);

/// Schema migrations for PostgreSQL, the counterparts of SQLite's (same numbers, same
/// meaning). Append only: a released migration is never edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE switches (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    is_primary  BOOLEAN NOT NULL DEFAULT FALSE,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    version     BIGINT NOT NULL CHECK (version >= 1),
    changed_at  BIGINT NOT NULL,
    changed_by  TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX switches_one_primary ON switches (is_primary)
    WHERE is_primary AND NOT deleted;

CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    action      TEXT NOT NULL,
    switch      TEXT,
    from_state  TEXT,
    to_state    TEXT,
    version     BIGINT,
    actor       TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    remote_addr TEXT,
    at          BIGINT NOT NULL,
    -- The switch as it was right after this entry (JSON); NULL for token entries.
    snapshot    TEXT
);
CREATE UNIQUE INDEX audit_switch_version ON audit (switch, version) WHERE switch IS NOT NULL;
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
"#,
    ),
    (
        2,
        r#"
ALTER TABLE switches ADD COLUMN ramp TEXT;
"#,
    ),
    (
        3,
        r#"
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    dedupe_key      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    event           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    delivered_at    BIGINT,
    failed          BOOLEAN NOT NULL DEFAULT FALSE,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND NOT failed;
"#,
    ),
    (
        4,
        r#"
-- Worker acknowledgements are soft state kept by the replica a worker reports to; each replica
-- publishes its picture here about once a second so every replica can count all workers.
CREATE TABLE replica_workers (
    replica    TEXT PRIMARY KEY,
    doc        TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
"#,
    ),
    (
        5,
        r#"
-- Token lifecycle: expiry, scope and the previous secret during a rotation (JSON of
-- brb_store::TokenPolicy, NULL when none), and the last successful use.
ALTER TABLE tokens ADD COLUMN policy TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_addr TEXT;
"#,
    ),
];

pub struct PgStore {
    pool: Pool,
    /// Where this process hears of commits (its own and other replicas').
    feed: broadcast::Sender<FeedEvent>,
    listener: tokio::task::JoinHandle<()>,
    /// For logs: the URL without its password.
    display: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.display)
            .finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A URL fit for logs: `postgres://user@host:port/db`, never the password.
fn redact(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        cfg.get_user().unwrap_or(""),
        cfg.get_dbname().unwrap_or("")
    )
}

impl PgStore {
    /// Connects (`postgres://user:password@host:port/db`), applies pending migrations and
    /// starts the change listener. Must be called inside a tokio runtime.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("database URL: {e}")))?;
        cfg.connect_timeout(POOL_WAIT);
        cfg.keepalives_idle(Duration::from_secs(10));
        if cfg.get_application_name().is_none() {
            cfg.application_name("brb");
        }
        let shown = redact(&cfg);
        // TLS seam: replace NoTls here (and in `listen_once`) with a rustls connector.
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Internal(format!("connection pool: {e}")))?;
        {
            let mut c = pool.get().await.map_err(map_pool)?;
            migrate(&mut c).await?;
        }
        let (feed, _) = broadcast::channel(1024);
        // Its own name, so operators can tell the listener from pooled connections.
        let mut listener_cfg = cfg;
        listener_cfg.application_name("brb-listener");
        let listener = tokio::spawn(listen(listener_cfg, feed.clone(), shown.clone()));
        tracing::info!(database = %shown, "connected to PostgreSQL");
        Ok(PgStore {
            pool,
            feed,
            listener,
            display: shown,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(map_pool)
    }
}

async fn migrate(c: &mut deadpool_postgres::Client) -> Result<()> {
    let tx = c.transaction().await.map_err(map_pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(map_pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(map_pg)?;
    for (version, sql) in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(map_pg)?;
        if applied.is_none() {
            tx.batch_execute(sql).await.map_err(map_pg)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &micros(Utc::now())],
            )
            .await
            .map_err(map_pg)?;
            tracing::info!(migration = version, "applied schema migration (PostgreSQL)");
        }
    }
    tx.commit().await.map_err(map_pg)
}

/// Keeps one connection LISTENing for as long as the store lives, reconnecting with backoff.
async fn listen(cfg: tokio_postgres::Config, feed: broadcast::Sender<FeedEvent>, shown: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        let err = listen_once(&cfg, &feed).await;
        // Nobody listening is fine: the server may not have subscribed yet.
        let _ = feed.send(FeedEvent::Disconnected);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(database = %shown, error = %err, retry_in_ms = backoff.as_millis() as u64,
            "change listener lost its database connection; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One listener connection's life; returns why it ended.
async fn listen_once(cfg: &tokio_postgres::Config, feed: &broadcast::Sender<FeedEvent>) -> String {
    let (client, mut conn) = match cfg.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The connection object performs the I/O; notifications arrive through it, not through
    // the client.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return "listener stopped".to_string();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_string()
    });
    let abort = driver.abort_handle();
    let _stop_driver = scopeguard(move || abort.abort());
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return e.to_string();
    }
    // Only now can nothing be missed: tell the server to re-read what happened before.
    let _ = feed.send(FeedEvent::Connected);
    let mut ping = tokio::time::interval(LISTENER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(payload) => match parse_payload(&payload) {
                    Some(ev) => { let _ = feed.send(ev); }
                    None => tracing::warn!(payload = %payload, "unknown change notification"),
                },
                None => return "connection closed".to_string(),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(LISTENER_PING, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "the database did not answer a ping".to_string(),
                }
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// `s:<version>:<switch>` or `t`.
fn parse_payload(p: &str) -> Option<FeedEvent> {
    if p == "t" {
        return Some(FeedEvent::Tokens);
    }
    let rest = p.strip_prefix("s:")?;
    let (version, name) = rest.split_once(':')?;
    Some(FeedEvent::Switch {
        name: name.to_string(),
        version: version.parse().ok()?,
    })
}

async fn notify_switch<C: GenericClient>(c: &C, name: &str, version: u64) -> Result<()> {
    c.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("s:{version}:{name}")],
    )
    .await
    .map_err(map_pg)?;
    Ok(())
}

async fn notify_tokens<C: GenericClient>(c: &C) -> Result<()> {
    c.execute("SELECT pg_notify($1, 't')", &[&CHANNEL])
        .await
        .map_err(map_pg)?;
    Ok(())
}

async fn write_lock<C: GenericClient>(c: &C) -> Result<()> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(map_pg)?;
    Ok(())
}

/// Maps PostgreSQL failures to the two kinds callers act on: "cannot write now" (503, retry,
/// nothing changed) and everything else.
fn map_pg(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 53: insufficient resources; 57P: shutdown / cannot
            // connect now; 25006: read-only transaction (a standby after failover).
            if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "25006" {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Internal(e.to_string())
            }
        }
        // No SQLSTATE: an I/O or protocol failure on the way to the server.
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn map_pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map_pg(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

fn raw_switch(r: &Row) -> Result<RawSwitch> {
    Ok(RawSwitch {
        name: r.try_get(0).map_err(map_pg)?,
        description: r.try_get(1).map_err(map_pg)?,
        primary: r.try_get(2).map_err(map_pg)?,
        state: r.try_get(3).map_err(map_pg)?,
        version: r.try_get(4).map_err(map_pg)?,
        changed_at: r.try_get(5).map_err(map_pg)?,
        changed_by: r.try_get(6).map_err(map_pg)?,
        source: r.try_get(7).map_err(map_pg)?,
        reason: r.try_get(8).map_err(map_pg)?,
        ramp: r.try_get(9).map_err(map_pg)?,
    })
}

fn raw_audit(r: &Row) -> Result<RawAudit> {
    Ok(RawAudit {
        id: r.try_get(0).map_err(map_pg)?,
        action: r.try_get(1).map_err(map_pg)?,
        switch: r.try_get(2).map_err(map_pg)?,
        from: r.try_get(3).map_err(map_pg)?,
        to: r.try_get(4).map_err(map_pg)?,
        version: r.try_get(5).map_err(map_pg)?,
        actor: r.try_get(6).map_err(map_pg)?,
        source: r.try_get(7).map_err(map_pg)?,
        reason: r.try_get(8).map_err(map_pg)?,
        remote_addr: r.try_get(9).map_err(map_pg)?,
        at: r.try_get(10).map_err(map_pg)?,
    })
}

fn raw_token(r: &Row) -> Result<RawToken> {
    Ok(RawToken {
        id: r.try_get(0).map_err(map_pg)?,
        name: r.try_get(1).map_err(map_pg)?,
        role: r.try_get(2).map_err(map_pg)?,
        secret_hash: r.try_get(3).map_err(map_pg)?,
        created_at: r.try_get(4).map_err(map_pg)?,
        revoked_at: r.try_get(5).map_err(map_pg)?,
        policy: r.try_get(6).map_err(map_pg)?,
        last_used_at: r.try_get(7).map_err(map_pg)?,
        last_used_addr: r.try_get(8).map_err(map_pg)?,
    })
}

fn audit_rows(rows: &[Row]) -> Result<Vec<AuditEntry>> {
    rows.iter().map(|r| raw_audit(r)?.into_entry()).collect()
}

fn event_rows(rows: &[Row]) -> Result<Vec<StoredEvent>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get(0).map_err(map_pg)?;
        let snapshot: Option<String> = r.try_get(1).map_err(map_pg)?;
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

fn outbox_rows(rows: &[Row]) -> Result<Vec<OutboxItem>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let g = |e| map_pg(e);
        let id: i64 = r.try_get(0).map_err(g)?;
        let event: String = r.try_get(3).map_err(g)?;
        let attempts: i64 = r.try_get(5).map_err(g)?;
        let last: Option<i64> = r.try_get(7).map_err(g)?;
        let delivered: Option<i64> = r.try_get(8).map_err(g)?;
        out.push(OutboxItem {
            id: id as u64,
            channel: r.try_get(1).map_err(g)?,
            kind: r.try_get(2).map_err(g)?,
            event: serde_json::from_str(&event)
                .map_err(|e| corrupt(format!("outbox {id} event: {e}")))?,
            created_at: from_micros(r.try_get(4).map_err(g)?)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_attempt_at: from_micros(r.try_get(6).map_err(g)?)?,
            last_attempt_at: last.map(from_micros).transpose()?,
            delivered_at: delivered.map(from_micros).transpose()?,
            failed: r.try_get(9).map_err(g)?,
            last_error: r.try_get(10).map_err(g)?,
        });
    }
    Ok(out)
}

/// Reads a switch row, deleted or not; `lock` takes its row lock for the transaction.
async fn row_any<C: GenericClient>(
    c: &C,
    name: &str,
    lock: bool,
) -> Result<Option<(Switch, bool)>> {
    let sql = format!(
        "SELECT {SWITCH_COLUMNS}, deleted FROM switches WHERE name = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let Some(row) = c.query_opt(&sql, &[&name]).await.map_err(map_pg)? else {
        return Ok(None);
    };
    let deleted: bool = row.try_get(10).map_err(map_pg)?;
    Ok(Some((raw_switch(&row)?.into_switch()?, deleted)))
}

async fn live<C: GenericClient>(c: &C, name: &str, lock: bool) -> Result<Switch> {
    match row_any(c, name, lock).await? {
        Some((s, false)) => Ok(s),
        _ => Err(StoreError::SwitchNotFound(name.to_string())),
    }
}

async fn append_audit<C: GenericClient>(c: &C, a: NewAudit<'_>) -> Result<AuditEntry> {
    let snapshot = a.snapshot.map(encode_event).transpose()?;
    let row = c
        .query_one(
            "INSERT INTO audit (action, switch, from_state, to_state, version, actor, source,
                                reason, remote_addr, at, snapshot)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING id",
            &[
                &a.action.as_str(),
                &a.switch,
                &a.from.map(SwitchState::as_str),
                &a.to.map(SwitchState::as_str),
                &a.version.map(|v| v as i64),
                &a.actor.name,
                &a.actor.source.as_str(),
                &a.reason,
                &a.actor.remote_addr,
                &micros(a.at),
                &snapshot,
            ],
        )
        .await
        .map_err(map_pg)?;
    let id: i64 = row.try_get(0).map_err(map_pg)?;
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

/// Inserts or revives a switch row (see the SQLite counterpart: versions continue after a
/// delete). The caller holds [`WRITE_LOCK`].
async fn insert_switch<C: GenericClient>(
    c: &C,
    name: &str,
    description: &str,
    primary: bool,
    actor: &Actor,
) -> Result<(Switch, AuditEntry)> {
    let now = Utc::now();
    let version = match row_any(c, name, true).await? {
        Some((_, false)) => return Err(StoreError::AlreadyExists(format!("switch {name:?}"))),
        Some((prev, true)) => {
            let v = prev.version + 1;
            c.execute(
                "UPDATE switches SET description = $2, is_primary = $3, state = 'running',
                    version = $4, changed_at = $5, changed_by = $6, source = $7, reason = NULL,
                    ramp = NULL, deleted = FALSE
                 WHERE name = $1",
                &[
                    &name,
                    &description,
                    &primary,
                    &(v as i64),
                    &micros(now),
                    &actor.name,
                    &actor.source.as_str(),
                ],
            )
            .await
            .map_err(map_pg)?;
            v
        }
        None => {
            c.execute(
                "INSERT INTO switches (name, description, is_primary, state, version, changed_at,
                                       changed_by, source, reason)
                 VALUES ($1, $2, $3, 'running', 1, $4, $5, $6, NULL)",
                &[
                    &name,
                    &description,
                    &primary,
                    &micros(now),
                    &actor.name,
                    &actor.source.as_str(),
                ],
            )
            .await
            .map_err(map_pg)?;
            1
        }
    };
    let switch = live(c, name, false).await?;
    let entry = append_audit(
        c,
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
    )
    .await?;
    notify_switch(c, name, version).await?;
    Ok((switch, entry))
}

async fn token_by_id<C: GenericClient>(c: &C, id: &str) -> Result<Option<TokenRecord>> {
    c.query_opt(
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"),
        &[&id],
    )
    .await
    .map_err(map_pg)?
    .map(|r| raw_token(&r)?.into_record())
    .transpose()
}

#[async_trait]
impl Store for PgStore {
    async fn ensure_switch(
        &self,
        name: &str,
        description: &str,
        primary: bool,
        actor: Actor,
    ) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        if let Some((_, false)) = row_any(&*tx, name, true).await? {
            return Ok(false);
        }
        if primary {
            let existing = tx
                .query_opt(
                    "SELECT name FROM switches WHERE is_primary AND NOT deleted",
                    &[],
                )
                .await
                .map_err(map_pg)?;
            if existing.is_some() {
                // Another switch is already the primary one; do not create a second.
                return Ok(false);
            }
        }
        insert_switch(&*tx, name, description, primary, &actor).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(true)
    }

    async fn list_switches(&self) -> Result<Vec<Switch>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {SWITCH_COLUMNS} FROM switches WHERE NOT deleted ORDER BY is_primary DESC, name"
        );
        let rows = c.query(&sql, &[]).await.map_err(map_pg)?;
        rows.iter().map(|r| raw_switch(r)?.into_switch()).collect()
    }

    async fn get_switch(&self, name: &str) -> Result<Option<Switch>> {
        let c = self.client().await?;
        Ok(match row_any(&**c, name, false).await? {
            Some((s, false)) => Some(s),
            _ => None,
        })
    }

    async fn create_switch(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        let out = insert_switch(&*tx, name, description, false, &actor).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(out)
    }

    async fn update_description(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        let cur = live(&*tx, name, true).await?;
        let version = cur.version + 1;
        tx.execute(
            "UPDATE switches SET description = $2, version = $3 WHERE name = $1",
            &[&name, &description, &(version as i64)],
        )
        .await
        .map_err(map_pg)?;
        let switch = live(&*tx, name, false).await?;
        let entry = append_audit(
            &*tx,
            NewAudit {
                action: AuditAction::SwitchUpdated,
                switch: Some(name),
                from: Some(cur.state),
                to: Some(cur.state),
                version: Some(version),
                actor: &actor,
                reason: None,
                at: Utc::now(),
                snapshot: Some(&SwitchEvent::Changed(switch.clone())),
            },
        )
        .await?;
        notify_switch(&*tx, name, version).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((switch, entry))
    }

    async fn delete_switch(&self, name: &str, actor: Actor) -> Result<AuditEntry> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        let cur = live(&*tx, name, true).await?;
        if cur.primary {
            return Err(StoreError::Protected);
        }
        let version = cur.version + 1;
        tx.execute(
            "UPDATE switches SET deleted = TRUE, version = $2 WHERE name = $1",
            &[&name, &(version as i64)],
        )
        .await
        .map_err(map_pg)?;
        let entry = append_audit(
            &*tx,
            NewAudit {
                action: AuditAction::SwitchDeleted,
                switch: Some(name),
                from: Some(cur.state),
                to: None,
                version: Some(version),
                actor: &actor,
                reason: None,
                at: Utc::now(),
                snapshot: Some(&SwitchEvent::Deleted(DeletedSwitch {
                    name: name.to_string(),
                    version,
                })),
            },
        )
        .await?;
        notify_switch(&*tx, name, version).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(entry)
    }

    async fn set_state(&self, change: StateChange) -> Result<SetOutcome> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        // Under the write lock this reads the latest committed version, whichever replica
        // wrote it: `expected_version` is checked against the truth, not a cache.
        let cur = live(&*tx, &change.switch, true).await?;
        let now = Utc::now();
        let ramp_json = match crate::plan(&cur, &change, now)? {
            crate::Plan::Unchanged => return Ok(SetOutcome::Unchanged(cur)),
            crate::Plan::Write { ramp_json } => ramp_json,
        };
        let version = cur.version + 1;
        let n = tx
            .execute(
                "UPDATE switches SET state = $2, version = $3, changed_at = $4, changed_by = $5,
                    source = $6, reason = $7, ramp = $9
                 WHERE name = $1 AND version = $8",
                &[
                    &change.switch,
                    &change.to.as_str(),
                    &(version as i64),
                    &micros(now),
                    &change.actor.name,
                    &change.actor.source.as_str(),
                    &change.reason,
                    &(cur.version as i64),
                    &ramp_json,
                ],
            )
            .await
            .map_err(map_pg)?;
        if n != 1 {
            return Err(StoreError::Internal(format!(
                "switch {:?} changed under its row lock",
                change.switch
            )));
        }
        let switch = live(&*tx, &change.switch, false).await?;
        let entry = append_audit(
            &*tx,
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
        )
        .await?;
        let event = serde_json::to_string(&switch)
            .map_err(|e| StoreError::Internal(format!("encode event: {e}")))?;
        for channel in &change.notify {
            tx.execute(
                "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                     next_attempt_at)
                 VALUES ($1, $2, 'change', $3, $4, $4)",
                &[
                    &format!("change:{}:{channel}", entry.id),
                    channel,
                    &event,
                    &micros(now),
                ],
            )
            .await
            .map_err(map_pg)?;
        }
        notify_switch(&*tx, &change.switch, version).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(SetOutcome::Changed { switch, entry })
    }

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        let before = query.before.map(|b| b as i64).unwrap_or(i64::MAX);
        let limit = i64::from(query.limit);
        let rows = match &query.switch {
            Some(s) => {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit WHERE switch = $1 AND id < $2
                     ORDER BY id DESC LIMIT $3"
                );
                c.query(&sql, &[s, &before, &limit]).await
            }
            None => {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2"
                );
                c.query(&sql, &[&before, &limit]).await
            }
        }
        .map_err(map_pg)?;
        audit_rows(&rows)
    }

    async fn switch_history_after(
        &self,
        switch: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE switch = $1 AND version > $2
             ORDER BY version LIMIT $3"
        );
        let rows = c
            .query(&sql, &[&switch, &(after_version as i64), &i64::from(limit)])
            .await
            .map_err(map_pg)?;
        audit_rows(&rows)
    }

    async fn events_after_version(
        &self,
        switch: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, snapshot FROM audit WHERE switch = $1 AND version > $2
                 ORDER BY version LIMIT $3",
                &[&switch, &(after_version as i64), &i64::from(limit)],
            )
            .await
            .map_err(map_pg)?;
        event_rows(&rows)
    }

    async fn events_after_id(&self, after_id: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, snapshot FROM audit WHERE id > $1 AND snapshot IS NOT NULL
                 ORDER BY id LIMIT $2",
                &[&(after_id as i64), &i64::from(limit)],
            )
            .await
            .map_err(map_pg)?;
        event_rows(&rows)
    }

    async fn last_audit_id(&self) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT MAX(id) FROM audit", &[])
            .await
            .map_err(map_pg)?;
        let id: Option<i64> = row.try_get(0).map_err(map_pg)?;
        Ok(id.unwrap_or(0) as u64)
    }

    async fn create_token(&self, token: TokenRecord, actor: Actor) -> Result<AuditEntry> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        let taken = tx
            .query_opt(
                "SELECT id FROM tokens WHERE name = $1 AND revoked_at IS NULL",
                &[&token.name],
            )
            .await
            .map_err(map_pg)?;
        if taken.is_some() {
            return Err(StoreError::AlreadyExists(format!("token {:?}", token.name)));
        }
        tx.execute(
            "INSERT INTO tokens (id, name, role, secret_hash, created_at, revoked_at, policy)
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
            &[
                &token.id,
                &token.name,
                &token.role.as_str(),
                &token.secret_hash,
                &micros(token.created_at),
                &token.policy.to_json(),
            ],
        )
        .await
        .map_err(map_pg)?;
        let entry = append_audit(
            &*tx,
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
        .await?;
        notify_tokens(&*tx).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(entry)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"),
                &[],
            )
            .await
            .map_err(map_pg)?;
        rows.iter().map(|r| raw_token(r)?.into_record()).collect()
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let c = self.client().await?;
        token_by_id(&**c, id).await
    }

    async fn revoke_token(&self, id: &str, actor: Actor) -> Result<(TokenRecord, AuditEntry)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        let Some(tok) = token_by_id(&*tx, id).await? else {
            return Err(StoreError::TokenNotFound(id.to_string()));
        };
        let now = Utc::now();
        if tok.revoked_at.is_none() {
            tx.execute(
                "UPDATE tokens SET revoked_at = $2 WHERE id = $1",
                &[&id, &micros(now)],
            )
            .await
            .map_err(map_pg)?;
        }
        let entry = append_audit(
            &*tx,
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
        )
        .await?;
        let tok = token_by_id(&*tx, id)
            .await?
            .ok_or_else(|| StoreError::TokenNotFound(id.to_string()))?;
        notify_tokens(&*tx).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((tok, entry))
    }

    async fn rotate_token(
        &self,
        id: &str,
        new_secret_hash: Vec<u8>,
        grace_until: DateTime<Utc>,
        actor: Actor,
    ) -> Result<(TokenRecord, AuditEntry)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        write_lock(&*tx).await?;
        let Some(tok) = token_by_id(&*tx, id).await? else {
            return Err(StoreError::TokenNotFound(id.to_string()));
        };
        if tok.revoked_at.is_some() {
            return Err(StoreError::TokenNotFound(id.to_string()));
        }
        let now = Utc::now();
        let (policy, reason) = crate::rotation(&tok, grace_until, now);
        tx.execute(
            "UPDATE tokens SET secret_hash = $2, policy = $3 WHERE id = $1",
            &[&id, &new_secret_hash, &policy.to_json()],
        )
        .await
        .map_err(map_pg)?;
        let entry = append_audit(
            &*tx,
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
        )
        .await?;
        let tok = token_by_id(&*tx, id)
            .await?
            .ok_or_else(|| StoreError::TokenNotFound(id.to_string()))?;
        notify_tokens(&*tx).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((tok, entry))
    }

    async fn touch_tokens(&self, uses: Vec<crate::TokenUse>) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
        for u in &uses {
            // Not under the write lock and without NOTIFY: last-use is informational, and
            // other replicas read it when they list tokens.
            c.execute(
                "UPDATE tokens SET last_used_at = $2, last_used_addr = $3
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                &[&u.id, &micros(u.at), &u.addr],
            )
            .await
            .map_err(map_pg)?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(map_pg)?;
        Ok(())
    }

    async fn outbox_enqueue(&self, items: Vec<NewNotification>) -> Result<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_pg)?;
        let now = micros(Utc::now());
        let mut added = 0;
        for it in &items {
            let event = serde_json::to_string(&it.event)
                .map_err(|e| StoreError::Internal(format!("encode event: {e}")))?;
            added += tx
                .execute(
                    "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                         next_attempt_at)
                     VALUES ($1, $2, $3, $4, $5, $5)
                     ON CONFLICT (dedupe_key) DO NOTHING",
                    &[&it.dedupe_key, &it.channel, &it.kind, &event, &now],
                )
                .await
                .map_err(map_pg)? as usize;
        }
        tx.commit().await.map_err(map_pg)?;
        Ok(added)
    }

    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<OutboxItem>> {
        let until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        let c = self.client().await?;
        // SKIP LOCKED: a row another replica is claiming right now is neither waited for nor
        // claimed twice; the lease (next_attempt_at moved past now) keeps it reserved after
        // that replica's statement commits.
        let sql = format!(
            "UPDATE outbox SET next_attempt_at = $1
             WHERE id IN (SELECT id FROM outbox
                          WHERE delivered_at IS NULL AND NOT failed AND next_attempt_at <= $2
                          ORDER BY id LIMIT $3
                          FOR UPDATE SKIP LOCKED)
             RETURNING {OUTBOX_COLUMNS}"
        );
        let rows = c
            .query(&sql, &[&micros(until), &micros(now), &i64::from(limit)])
            .await
            .map_err(map_pg)?;
        let mut items = outbox_rows(&rows)?;
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    async fn outbox_delivered(&self, id: u64, at: DateTime<Utc>) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "UPDATE outbox SET delivered_at = $2, last_attempt_at = $2,
                attempts = attempts + 1, last_error = NULL
             WHERE id = $1",
            &[&(id as i64), &micros(at)],
        )
        .await
        .map_err(map_pg)?;
        Ok(())
    }

    async fn outbox_failed(
        &self,
        id: u64,
        at: DateTime<Utc>,
        error: &str,
        next: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let error = error.chars().take(500).collect::<String>();
        let c = self.client().await?;
        c.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = $2, last_error = $3,
                next_attempt_at = COALESCE($4, next_attempt_at),
                failed = ($4::BIGINT IS NULL)
             WHERE id = $1 AND delivered_at IS NULL",
            &[&(id as i64), &micros(at), &error, &next.map(micros)],
        )
        .await
        .map_err(map_pg)?;
        Ok(())
    }

    async fn outbox_recent(&self, limit: u32) -> Result<Vec<OutboxItem>> {
        let c = self.client().await?;
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY id DESC LIMIT $1");
        let rows = c.query(&sql, &[&i64::from(limit)]).await.map_err(map_pg)?;
        outbox_rows(&rows)
    }

    fn feed(&self) -> Option<broadcast::Receiver<FeedEvent>> {
        Some(self.feed.subscribe())
    }

    async fn workers_share(&self, replica: &str, doc: String, at: DateTime<Utc>) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO replica_workers (replica, doc, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (replica) DO UPDATE SET doc = EXCLUDED.doc,
                 updated_at = EXCLUDED.updated_at",
            &[&replica, &doc, &micros(at)],
        )
        .await
        .map_err(map_pg)?;
        Ok(())
    }

    async fn workers_shared(&self, since: DateTime<Utc>) -> Result<Vec<(String, String)>> {
        let c = self.client().await?;
        // Replicas gone for long are swept here rather than by a timer: any replica may do it.
        c.execute(
            "DELETE FROM replica_workers WHERE updated_at < $1",
            &[&micros(since - chrono::Duration::hours(1))],
        )
        .await
        .map_err(map_pg)?;
        let rows = c
            .query(
                "SELECT replica, doc FROM replica_workers WHERE updated_at >= $1 ORDER BY replica",
                &[&micros(since)],
            )
            .await
            .map_err(map_pg)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(map_pg)?, r.try_get(1).map_err(map_pg)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload("s:12:search:v2"),
            Some(FeedEvent::Switch {
                name: "search:v2".into(),
                version: 12
            })
        );
        assert_eq!(parse_payload("t"), Some(FeedEvent::Tokens));
        assert_eq!(parse_payload("s:x:a"), None);
        assert_eq!(parse_payload("zz"), None);
    }

    #[test]
    fn redacted_url_has_no_password() {
        let cfg: tokio_postgres::Config = "postgres://brb:hunter2@db.internal:6432/brb"
            .parse()
            .unwrap();
        let s = redact(&cfg);
        assert_eq!(s, "postgres://brb@db.internal:6432/brb");
        assert!(!s.contains("hunter2"));
    }
}
