//! The shared backend: PostgreSQL, for several control-plane replicas behind a load balancer.
//!
//! Same schema semantics as SQLite (timestamps as microseconds, an append-only audit log with
//! per-version snapshots, tokens, the outbox; one migration numbering, `migrations.rs`), and
//! the same write rules (`rules.rs`: this file reads rows and applies what they say), plus
//! what several processes need:
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
use brb_api::{AuditEntry, Switch, SwitchState};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls, Row};

use crate::migrations::MIGRATIONS;
use crate::rows::{
    AUDIT_COLUMNS, OUTBOX_COLUMNS, RawAudit, RawOutbox, RawSwitch, RawToken, SWITCH_COLUMNS,
    TOKEN_COLUMNS, decode_event, encode_event, from_micros, known_kinds_sql, micros,
};
use crate::rules::{self, NewAudit, StateDecision, SwitchWrite, TokenWrite};
use crate::{
    Actor, AuditQuery, Channel, FeedEvent, NewNotification, Outage, OutboxItem, Result, SetOutcome,
    StateChange, Store, StoreError, StoredEvent, TokenRecord,
};

/// The database's clock in microseconds, as SQL. A row's due time is written on it (and the
/// replicas read it through `Store::now`), so replicas whose wall clocks disagree still agree
/// on when a notification is due and whose lease has run out.
const DB_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT";

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
    for m in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[&m.number],
            )
            .await
            .map_err(map_pg)?;
        if applied.is_none() {
            if !m.postgres.trim().is_empty() {
                tx.batch_execute(m.postgres).await.map_err(map_pg)?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[&m.number, &micros(Utc::now())],
            )
            .await
            .map_err(map_pg)?;
            tracing::info!(
                migration = m.number,
                what = m.what,
                "applied schema migration (PostgreSQL)"
            );
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

/// Maps PostgreSQL failures by SQLSTATE to what callers act on: "cannot write now, and why"
/// (503, nothing changed) and everything else.
fn map_pg(e: tokio_postgres::Error) -> StoreError {
    let unavailable = |outage| StoreError::Unavailable {
        outage,
        detail: e.to_string(),
    };
    if e.is_closed() {
        return unavailable(Outage::Unreachable);
    }
    let Some(code) = e.code() else {
        // No SQLSTATE: an I/O or protocol failure on the way to the server.
        return unavailable(Outage::Unreachable);
    };
    let c = code.code();
    // 53100: disk full; 25006: read-only transaction (a standby after failover); 08:
    // connection exception; 57P: shutdown, cannot connect now; 53: other resources.
    let outage = if c == "53100" {
        Outage::DiskFull
    } else if c == "25006" {
        Outage::ReadOnly
    } else if c.starts_with("08") || c.starts_with("57P") {
        Outage::Unreachable
    } else if c.starts_with("53") {
        Outage::Busy
    } else {
        return StoreError::Internal(e.to_string());
    };
    unavailable(outage)
}

fn map_pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map_pg(e),
        other => StoreError::Unavailable {
            outage: Outage::Unreachable,
            detail: format!("no database connection: {other}"),
        },
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
        resume_request: r.try_get(10).map_err(map_pg)?,
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
        snapshot: r.try_get(11).map_err(map_pg)?,
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

fn raw_outbox(r: &Row) -> Result<RawOutbox> {
    Ok(RawOutbox {
        id: r.try_get(0).map_err(map_pg)?,
        channel: r.try_get(1).map_err(map_pg)?,
        kind: r.try_get(2).map_err(map_pg)?,
        event: r.try_get(3).map_err(map_pg)?,
        created_at: r.try_get(4).map_err(map_pg)?,
        attempts: r.try_get(5).map_err(map_pg)?,
        next_attempt_at: r.try_get(6).map_err(map_pg)?,
        last_attempt_at: r.try_get(7).map_err(map_pg)?,
        delivered_at: r.try_get(8).map_err(map_pg)?,
        failed: r.try_get(9).map_err(map_pg)?,
        last_error: r.try_get(10).map_err(map_pg)?,
    })
}

fn audit_rows(rows: &[Row]) -> Result<Vec<AuditEntry>> {
    rows.iter().map(|r| raw_audit(r)?.into_entry()).collect()
}

fn event_rows(rows: &[Row]) -> Result<Vec<StoredEvent>> {
    rows.iter()
        .map(|r| decode_event(r.try_get(0).map_err(map_pg)?, r.try_get(1).map_err(map_pg)?))
        .collect()
}

fn outbox_rows(rows: &[Row]) -> Result<Vec<OutboxItem>> {
    rows.iter().map(|r| raw_outbox(r)?.into_item()).collect()
}

/// Reads a switch row, deleted or not; `lock` takes its row lock for the transaction.
async fn row_any<C: GenericClient>(c: &C, name: &str, lock: bool) -> Result<rules::Row> {
    let sql = format!(
        "SELECT {SWITCH_COLUMNS}, deleted FROM switches WHERE name = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let Some(row) = c.query_opt(&sql, &[&name]).await.map_err(map_pg)? else {
        return Ok(None);
    };
    let deleted: bool = row.try_get(11).map_err(map_pg)?;
    Ok(Some((raw_switch(&row)?.into_switch()?, deleted)))
}

/// Whether a live switch is primary.
async fn primary_taken<C: GenericClient>(c: &C) -> Result<bool> {
    let row = c
        .query_one(
            "SELECT COUNT(*) > 0 FROM switches WHERE is_primary AND NOT deleted",
            &[],
        )
        .await
        .map_err(map_pg)?;
    row.try_get(0).map_err(map_pg)
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

async fn append_audit<C: GenericClient>(c: &C, a: NewAudit<'_>) -> Result<AuditEntry> {
    let snapshot = a.snapshot.as_ref().map(encode_event).transpose()?;
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
    Ok(a.entry(id as u64))
}

/// Applies a switch change the rules decided: the row, its audit entry, its notifications,
/// and the hint to other replicas (delivered on commit). The caller holds [`WRITE_LOCK`].
async fn write_switch<C: GenericClient>(c: &C, w: &SwitchWrite) -> Result<AuditEntry> {
    let s = &w.switch;
    let ramp = w.ramp_json()?;
    let version = s.version as i64;
    let changed_at = micros(s.changed_at);
    match w.replaces {
        None => {
            c.execute(
                "INSERT INTO switches (name, description, is_primary, state, version, changed_at,
                                       changed_by, source, reason, ramp, deleted)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &s.name,
                    &s.description,
                    &s.primary,
                    &s.state.as_str(),
                    &version,
                    &changed_at,
                    &s.changed_by,
                    &s.source.as_str(),
                    &s.reason,
                    &ramp,
                    &w.deleted,
                ],
            )
            .await
            .map_err(map_pg)?;
        }
        Some(was) => {
            let n = c
                .execute(
                    "UPDATE switches SET description = $2, is_primary = $3, state = $4,
                        version = $5, changed_at = $6, changed_by = $7, source = $8,
                        reason = $9, ramp = $10, deleted = $11
                     WHERE name = $1 AND version = $12",
                    &[
                        &s.name,
                        &s.description,
                        &s.primary,
                        &s.state.as_str(),
                        &version,
                        &changed_at,
                        &s.changed_by,
                        &s.source.as_str(),
                        &s.reason,
                        &ramp,
                        &w.deleted,
                        &(was as i64),
                    ],
                )
                .await
                .map_err(map_pg)?;
            rules::one_row(n, &format!("switch {:?}", s.name))?;
        }
    }
    // Its own statement, so the row's main write stays as every other change has it.
    c.execute(
        "UPDATE switches SET resume_request = $2 WHERE name = $1",
        &[&s.name, &w.resume_request_json()?],
    )
    .await
    .map_err(map_pg)?;
    let entry = append_audit(c, w.audit()).await?;
    if !w.notify.is_empty() {
        let event = w.notification_event()?;
        for channel in &w.notify {
            c.execute(
                &format!(
                    "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                         next_attempt_at)
                     VALUES ($1, $2, $3, $4, $5, {DB_NOW})"
                ),
                &[
                    &rules::change_key(entry.id, channel),
                    &channel.to_string(),
                    &w.kind.as_str(),
                    &event,
                    &micros(w.at),
                ],
            )
            .await
            .map_err(map_pg)?;
        }
    }
    notify_switch(c, &s.name, s.version).await?;
    Ok(entry)
}

/// Applies a token change the rules decided: the row, its audit entry, and the hint to other
/// replicas to reload tokens. The caller holds [`WRITE_LOCK`].
async fn write_token<C: GenericClient>(c: &C, w: &TokenWrite) -> Result<AuditEntry> {
    let t = &w.token;
    let revoked_at = t.revoked_at.map(micros);
    let policy = t.policy.to_json();
    if w.insert {
        c.execute(
            "INSERT INTO tokens (id, name, role, secret_hash, created_at, revoked_at, policy)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &t.id,
                &t.name,
                &t.role.as_str(),
                &t.secret_hash,
                &micros(t.created_at),
                &revoked_at,
                &policy,
            ],
        )
        .await
        .map_err(map_pg)?;
    } else {
        let n = c
            .execute(
                "UPDATE tokens SET secret_hash = $2, revoked_at = $3, policy = $4 WHERE id = $1",
                &[&t.id, &t.secret_hash, &revoked_at, &policy],
            )
            .await
            .map_err(map_pg)?;
        rules::one_row(n, &format!("token {:?}", t.id))?;
    }
    let entry = append_audit(c, w.audit()).await?;
    notify_tokens(c).await?;
    Ok(entry)
}

/// A write transaction: the global write order first (see the module doc).
macro_rules! write_tx {
    ($self:ident, $c:ident, $tx:ident) => {
        let mut $c = $self.client().await?;
        let $tx = $c.transaction().await.map_err(map_pg)?;
        write_lock(&*$tx).await?;
    };
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
        write_tx!(self, c, tx);
        let row = row_any(&*tx, name, true).await?;
        let taken = primary_taken(&*tx).await?;
        let Some(w) = rules::ensure(row, taken, name, description, primary, &actor, Utc::now())?
        else {
            return Ok(false);
        };
        write_switch(&*tx, &w).await?;
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
        write_tx!(self, c, tx);
        let row = row_any(&*tx, name, true).await?;
        let w = rules::create(row, name, description, false, &actor, Utc::now())?;
        let entry = write_switch(&*tx, &w).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((w.switch, entry))
    }

    async fn update_description(
        &self,
        name: &str,
        description: &str,
        actor: Actor,
    ) -> Result<(Switch, AuditEntry)> {
        write_tx!(self, c, tx);
        let row = row_any(&*tx, name, true).await?;
        let w = rules::describe(row, name, description, &actor, Utc::now())?;
        let entry = write_switch(&*tx, &w).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((w.switch, entry))
    }

    async fn delete_switch(&self, name: &str, actor: Actor) -> Result<AuditEntry> {
        write_tx!(self, c, tx);
        let row = row_any(&*tx, name, true).await?;
        let w = rules::delete(row, name, &actor, Utc::now())?;
        let entry = write_switch(&*tx, &w).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(entry)
    }

    async fn set_state(&self, change: StateChange) -> Result<SetOutcome> {
        write_tx!(self, c, tx);
        // Under the write lock this reads the latest committed version, whichever replica
        // wrote it: `expected_version` is checked against the truth, not a cache.
        let row = row_any(&*tx, &change.switch, true).await?;
        match rules::set_state(row, &change, Utc::now())? {
            StateDecision::Unchanged(s) => Ok(SetOutcome::Unchanged(s)),
            StateDecision::Write(w) => {
                let entry = write_switch(&*tx, &w).await?;
                tx.commit().await.map_err(map_pg)?;
                Ok(SetOutcome::Changed {
                    switch: w.switch,
                    entry,
                })
            }
        }
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
        write_tx!(self, c, tx);
        let taken: bool = tx
            .query_one(
                "SELECT COUNT(*) > 0 FROM tokens WHERE name = $1 AND revoked_at IS NULL",
                &[&token.name],
            )
            .await
            .map_err(map_pg)?
            .try_get(0)
            .map_err(map_pg)?;
        let entry = write_token(&*tx, &rules::create_token(taken, &token, &actor)?).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok(entry)
    }

    async fn record_adapter_action(&self, record: crate::AdapterRecord) -> Result<AuditEntry> {
        write_tx!(self, c, tx);
        let row = row_any(&*tx, &record.switch, true).await?;
        let a = rules::adapter_action(row, &record, Utc::now())?;
        let entry = append_audit(&*tx, a).await?;
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
        write_tx!(self, c, tx);
        let row = token_by_id(&*tx, id).await?;
        let w = rules::revoke_token(row, id, &actor, Utc::now())?;
        let entry = write_token(&*tx, &w).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((w.token, entry))
    }

    async fn rotate_token(
        &self,
        id: &str,
        new_secret_hash: Vec<u8>,
        grace_until: DateTime<Utc>,
        actor: Actor,
    ) -> Result<(TokenRecord, AuditEntry)> {
        write_tx!(self, c, tx);
        let row = token_by_id(&*tx, id).await?;
        let w = rules::rotate_token(row, id, new_secret_hash, grace_until, &actor, Utc::now())?;
        let entry = write_token(&*tx, &w).await?;
        tx.commit().await.map_err(map_pg)?;
        Ok((w.token, entry))
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

    async fn now(&self) -> Result<DateTime<Utc>> {
        let c = self.client().await?;
        let row = c
            .query_one(&format!("SELECT {DB_NOW}"), &[])
            .await
            .map_err(map_pg)?;
        from_micros(row.try_get(0).map_err(map_pg)?)
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
                    &format!(
                        "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                             next_attempt_at)
                         VALUES ($1, $2, $3, $4, $5, {DB_NOW})
                         ON CONFLICT (dedupe_key) DO NOTHING"
                    ),
                    &[
                        &it.dedupe_key,
                        &it.channel.to_string(),
                        &it.kind.as_str(),
                        &event,
                        &now,
                    ],
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
                            AND kind IN ({})
                          ORDER BY id LIMIT $3
                          FOR UPDATE SKIP LOCKED)
             RETURNING {OUTBOX_COLUMNS}",
            known_kinds_sql()
        );
        let rows = c
            .query(&sql, &[&micros(until), &micros(now), &i64::from(limit)])
            .await
            .map_err(map_pg)?;
        let mut items = outbox_rows(&rows)?;
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    async fn outbox_unknown_kinds(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT DISTINCT kind FROM outbox
             WHERE delivered_at IS NULL AND NOT failed AND kind NOT IN ({})
             ORDER BY kind",
            known_kinds_sql()
        );
        let rows = c.query(&sql, &[]).await.map_err(map_pg)?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(map_pg))
            .collect()
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

    async fn outbox_pending_before(&self, channel: &Channel, id: u64) -> Result<bool> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM outbox
                                WHERE channel = $1 AND id < $2
                                  AND delivered_at IS NULL AND NOT failed)",
                &[&channel.to_string(), &(id as i64)],
            )
            .await
            .map_err(map_pg)?;
        Ok(row.get::<_, bool>(0))
    }

    async fn outbox_recent(&self, limit: u32) -> Result<Vec<OutboxItem>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE kind IN ({}) ORDER BY id DESC LIMIT $1",
            known_kinds_sql()
        );
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
