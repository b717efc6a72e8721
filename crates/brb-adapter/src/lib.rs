//! Broker adapters (`brb adapter rq|bullmq`): for workers that run no SDK, keep the job
//! system's own pause state equal to a switch.
//!
//! Three parts, only one of which decides anything:
//! - [`reconcile`]: the reconciler, an I/O-free state machine (desired state from the switch,
//!   what was applied, the re-apply timer and the backoff), tested with a fake clock;
//! - [`broker`] over [`redis`]: what "paused" means in RQ and in BullMQ, over a minimal Redis
//!   client of our own;
//! - [`run`]: the loop that feeds the reconciler from the switch's event stream (through
//!   `brb-client`, `Last-Event-ID` resume, reconnect with backoff) and from the broker's
//!   answers, records what it changed in the audit log (`POST /api/v1/adapters/actions`,
//!   source `adapter`) and reports itself like a worker so `brb pause` counts it.
//!
//! An adapter needs a token that can read its switch and report, nothing more:
//! `brb token create rq-adapter --role viewer --switches workers`.

pub mod broker;
pub mod reconcile;
pub mod redis;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use brb_api::{AdapterAction, Switch, SwitchState, WorkerReport, WorkerStatus};
use brb_client::{Client, EventScope, StreamItem};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

pub use broker::{Broker, BrokerError};
pub use reconcile::{Now, Reconciler, Target, Timing};
pub use redis::{RedisError, RedisUrl};

/// How often the adapter reports itself when nothing changes (as the SDK's gates do).
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A stream silent for this long is taken as broken (the server sends keep-alives every 15 s).
const STREAM_SILENCE: Duration = Duration::from_secs(45);
/// Audit records kept for a control plane that cannot take them now.
const MAX_PENDING_RECORDS: usize = 64;
/// How long one report or record may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One adapter.
pub struct AdapterConfig {
    pub client: Client,
    pub switch: String,
    pub redis: RedisUrl,
    pub broker: Broker,
    pub timing: Timing,
    /// BullMQ: the queue's normal global concurrency, to ramp through after a release.
    pub max_concurrency: Option<u32>,
    /// How it reports itself (its worker id and the audit's adapter id).
    pub id: String,
}

impl AdapterConfig {
    /// `adapter-rq-HOST:PORT/DB` or `adapter-bullmq-HOST:PORT/DB-PREFIX:QUEUE`, cut to the
    /// control plane's limit for worker ids.
    pub fn default_id(redis: &RedisUrl, broker: &Broker) -> String {
        let mut id = format!(
            "adapter-{}-{}:{}/{}",
            broker.kind(),
            redis.host,
            redis.port,
            redis.db
        );
        if let Broker::BullMq { prefix, queue, .. } = broker {
            id.push_str(&format!("-{prefix}:{queue}"));
        }
        id.chars().take(brb_api::MAX_WORKER_ID).collect()
    }
}

/// What the control-plane watcher tells the loop.
enum Control {
    Switch(Box<Switch>),
    Lost(String),
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall: chrono::Utc::now(),
    }
}

/// Runs the adapter until the task is dropped. Nothing here ends it: an unreachable control
/// plane keeps the last state applied, an unreachable broker is reported and retried.
///
/// Talking to the control plane (reports, audit records) happens in a task of its own, so a
/// control plane that hangs can never hold up a re-apply (which renews RQ's expiry).
pub async fn run(mut cfg: AdapterConfig) {
    let (tx, mut rx) = mpsc::channel(16);
    let _watcher = AbortOnDrop(tokio::spawn(watch_switch(
        cfg.client.clone(),
        cfg.switch.clone(),
        tx,
    )));
    let (report_tx, report_rx) = watch::channel(None);
    let (record_tx, record_rx) = mpsc::channel(MAX_PENDING_RECORDS);
    let _writer = AbortOnDrop(tokio::spawn(control_writer(
        cfg.client.clone(),
        cfg.switch.clone(),
        report_rx,
        record_rx,
    )));
    let mut rec = Reconciler::new(cfg.timing, cfg.max_concurrency);
    let mut conn: Option<redis::Conn> = None;
    let mut known = false;
    tracing::info!(switch = %cfg.switch, adapter = %cfg.id, redis = %cfg.redis, "adapter started");
    loop {
        let deadline = rec.next_deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Control::Switch(s)) => {
                    tracing::info!(switch = %s.name, state = %s.state, version = s.version,
                        "switch seen; applying");
                    known = true;
                    rec.on_switch(*s, now());
                }
                Some(Control::Lost(why)) => {
                    // Nothing to do: the last state seen stays desired (never released for
                    // an outage) and keeps being applied on the timer.
                    tracing::warn!(switch = %cfg.switch, error = %why,
                        "control plane unreachable; keeping the last state applied");
                }
                None => return,
            },
            _ = async { match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            } } => {}
        }
        while let Some((target, version)) = rec.poll(now()) {
            match apply(&mut cfg, &mut conn, target).await {
                Ok(changed) => {
                    if let Some(r) = rec.on_applied(
                        reconcile::Applied {
                            target,
                            version,
                            changed,
                        },
                        now(),
                    ) {
                        tracing::info!(switch = %cfg.switch, adapter = %cfg.id, source = "adapter",
                            applied = %r.applied, version = r.version, detail = %r.detail,
                            "broker state set");
                        let a = AdapterAction {
                            adapter_id: cfg.id.clone(),
                            switch: cfg.switch.clone(),
                            applied: r.applied,
                            observed_version: r.version,
                            detail: r.detail,
                        };
                        if record_tx.try_send(a).is_err() {
                            tracing::warn!(switch = %cfg.switch,
                                "too many audit records waiting for the control plane; one dropped (the log has it)");
                        }
                    }
                }
                Err((e, broke)) => {
                    let msg = e.to_string();
                    if rec.error() != Some(msg.as_str()) {
                        tracing::error!(switch = %cfg.switch, adapter = %cfg.id, error = %msg,
                            "cannot apply the switch to the broker; retrying with backoff");
                    }
                    rec.on_apply_failed(msg, now());
                    // A connection that broke under us (a restarted Redis): reconnect now and,
                    // if that works, apply at once on the new connection.
                    if broke && let Ok(c) = redis::Conn::open(&cfg.redis).await {
                        conn = Some(c);
                        rec.on_broker_connected(now());
                    }
                }
            }
        }
        if known {
            let r = worker_report(&cfg, &rec);
            // The writer sends it at once when it changed, and every few seconds anyway.
            report_tx.send_if_modified(|cur| {
                let changed = cur.as_ref() != Some(&r);
                *cur = Some(r);
                changed
            });
        }
    }
}

/// One apply; the error says whether an established connection broke.
async fn apply(
    cfg: &mut AdapterConfig,
    conn: &mut Option<redis::Conn>,
    target: Target,
) -> Result<Option<String>, (BrokerError, bool)> {
    let had = conn.is_some();
    let c = match conn {
        Some(c) => c,
        None => conn.insert(
            redis::Conn::open(&cfg.redis)
                .await
                .map_err(|e| (e.into(), false))?,
        ),
    };
    match cfg.broker.apply(c, target).await {
        Ok(v) => Ok(v),
        Err(e) => {
            // After an I/O error the connection's state is unknown: start afresh.
            let broke = matches!(
                e,
                BrokerError::Redis(
                    RedisError::Io { .. }
                        | RedisError::Timeout { .. }
                        | RedisError::Protocol { .. }
                )
            );
            if broke {
                *conn = None;
            }
            Err((e, broke && had))
        }
    }
}

fn worker_report(cfg: &AdapterConfig, rec: &Reconciler) -> WorkerReport {
    let v = rec.report();
    WorkerReport {
        worker_id: cfg.id.clone(),
        switch: cfg.switch.clone(),
        observed_version: v.observed_version,
        status: match v.status {
            SwitchState::Paused => WorkerStatus::Paused,
            SwitchState::Running => WorkerStatus::Running,
        },
        in_flight: 0,
        processed_total: 0,
        error: v
            .error
            .map(|e| e.chars().take(brb_api::MAX_ADAPTER_DETAIL).collect()),
    }
}

/// Sends the adapter's report (when it changes, and every few seconds) and its audit records
/// (kept, in order, until the control plane takes them), each call under a short timeout.
async fn control_writer(
    client: Client,
    switch: String,
    mut report: watch::Receiver<Option<WorkerReport>>,
    mut records: mpsc::Receiver<AdapterAction>,
) {
    let mut pending: VecDeque<AdapterAction> = VecDeque::new();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            r = report.changed() => if r.is_err() { return },
            a = records.recv() => match a {
                Some(a) => {
                    if pending.len() == MAX_PENDING_RECORDS {
                        pending.pop_front();
                    }
                    pending.push_back(a);
                }
                None => return,
            },
            _ = tick.tick() => {}
        }
        let current = report.borrow_and_update().clone();
        if let Some(r) = current {
            match tokio::time::timeout(CALL_TIMEOUT, client.report(&r)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(switch = %switch, error = %e, "report not delivered"),
                Err(_) => tracing::debug!(switch = %switch, "report timed out"),
            }
        }
        while let Some(a) = pending.front() {
            match tokio::time::timeout(CALL_TIMEOUT, client.adapter_action(a)).await {
                Ok(Ok(_)) => {
                    pending.pop_front();
                }
                Ok(Err(e)) => {
                    tracing::warn!(switch = %switch, error = %e,
                        "cannot record the adapter's action yet; will retry");
                    break;
                }
                Err(_) => {
                    tracing::warn!(switch = %switch,
                        "recording the adapter's action timed out; will retry");
                    break;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the switch over SSE, resuming with `Last-Event-ID`; every switch event (the first
/// of each new stream included) goes to the loop, which applies it.
async fn watch_switch(client: Client, switch: String, tx: mpsc::Sender<Control>) {
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let why = match client
            .events(&EventScope::Switch(switch.clone()), last_id.as_deref())
            .await
        {
            Ok(stream) => {
                backoff = Duration::from_millis(250);
                let mut stream = std::pin::pin!(stream);
                loop {
                    match tokio::time::timeout(STREAM_SILENCE, stream.next()).await {
                        Ok(Some(Ok(StreamItem::Event(e))))
                            if e.event == brb_api::events::SWITCH =>
                        {
                            match serde_json::from_str::<Switch>(&e.data) {
                                Ok(s) => {
                                    if e.id.is_some() {
                                        last_id = e.id.clone();
                                    }
                                    if tx.send(Control::Switch(Box::new(s))).await.is_err() {
                                        return;
                                    }
                                }
                                Err(err) => {
                                    tracing::warn!(switch = %switch, error = %err,
                                        "unreadable switch event ignored");
                                }
                            }
                        }
                        Ok(Some(Ok(StreamItem::Event(e))))
                            if e.event == brb_api::events::DELETED =>
                        {
                            break format!("switch {switch} was deleted");
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(Some(Err(e))) => break format!("event stream broke: {e}"),
                        Ok(None) => break "event stream ended".to_string(),
                        Err(_) => break format!("event stream silent for {STREAM_SILENCE:?}"),
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        if tx.send(Control::Lost(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
