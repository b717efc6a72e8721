//! Cross-replica propagation: how a change committed through any replica reaches the watchers
//! of every replica.
//!
//! Only for a shared store (PostgreSQL); with SQLite this process makes every change and the
//! module does nothing. The store's feed (LISTEN/NOTIFY) says "switch X is at version N"; that
//! is a hint, never trusted as data: the replica reads the committed changes after what its hub
//! has (`events_after_id`, in audit-id order, which the store makes commit order) and publishes
//! them in order. The hub drops what it already has, so the local write path and the feed may
//! both deliver a change without a duplicate reaching a watcher.
//!
//! When the feed reconnects after a lost database connection, the replica replays every change
//! it missed from the audit log (so watchers see each version, not only the last) and reloads
//! the token table (so a revocation made elsewhere takes effect). A failed read is retried
//! every second until the store answers.
//!
//! Worker acknowledgements stay soft state on the replica a worker reports to; once a second
//! each replica shares its picture through the store and reads the others', so the worker
//! count on any replica covers the workers connected to all of them.

use std::time::Duration;

use brb_store::FeedEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;

const RETRY: Duration = Duration::from_secs(1);
const SHARE_EVERY: Duration = Duration::from_secs(1);

/// Starts the propagation and worker-sharing tasks if the store is shared.
pub fn spawn(state: &AppState) {
    let feed = state
        .inner
        .feed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(feed) = feed else {
        return;
    };
    tracing::info!(replica = %state.replica_id(), "shared store: propagating changes across replicas");
    tokio::spawn(run(state.clone(), feed));
    tokio::spawn(share_workers(state.clone()));
}

/// Asks the propagation task to catch up soon.
pub fn request_catch_up(state: &AppState) {
    state.inner.resync.notify_one();
}

async fn run(state: AppState, mut feed: tokio::sync::broadcast::Receiver<FeedEvent>) {
    let mut shutdown = state.shutdown_signal();
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the hub may be behind the store, and whether the token table may have changed.
    let (mut behind, mut tokens) = (false, false);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            ev = feed.recv() => match ev {
                Ok(FeedEvent::Switch { name, version }) => {
                    let have = state.hub().get(&name).map_or(0, |s| s.version);
                    behind |= version > have;
                }
                Ok(FeedEvent::Tokens) => tokens = true,
                Ok(FeedEvent::Connected) => {
                    tracing::info!("change feed connected; re-reading what may have been missed");
                    behind = true;
                    tokens = true;
                }
                Ok(FeedEvent::Disconnected) => {
                    tracing::warn!("change feed lost the database; serving the last known state");
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "change feed overflowed; re-reading everything");
                    behind = true;
                    tokens = true;
                }
                Err(RecvError::Closed) => return,
            },
            _ = state.inner.resync.notified() => behind = true,
            _ = retry.tick() => {}
        }
        if behind {
            match state.catch_up().await {
                Ok(n) => {
                    behind = false;
                    if n > 0 {
                        tracing::debug!(changes = n, "caught up with other replicas");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read changes yet; retrying"),
            }
        }
        if tokens {
            match state.reads().list_tokens().await {
                Ok(list) => {
                    state.tokens().load(&list);
                    tokens = false;
                }
                Err(e) => tracing::warn!(error = %e, "cannot reload tokens yet; retrying"),
            }
        }
    }
}

/// Once a second: publish this replica's worker picture, read everybody's.
async fn share_workers(state: AppState) {
    let mut shutdown = state.shutdown_signal();
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fresh = chrono::Duration::seconds(state.config().limits.worker_stale_secs.max(1) as i64);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        // The store's clock: replicas' wall clocks may disagree, and a row stamped by a slow
        // one would look stale to the others (or a fast one's never would).
        let now = state.bookkeeping().now().await;
        let doc = match serde_json::to_string(&state.workers().export()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "encoding the worker picture");
                continue;
            }
        };
        if let Err(e) = state
            .bookkeeping()
            .workers_share(state.replica_id(), doc, now)
            .await
        {
            tracing::debug!(error = %e, "cannot share the worker picture");
            continue;
        }
        match state.reads().workers_shared(now - fresh).await {
            Ok(docs) => {
                let mut remote = Vec::new();
                for (replica, doc) in docs {
                    if replica == state.replica_id() {
                        continue;
                    }
                    match serde_json::from_str::<Vec<crate::workers::SharedWorker>>(&doc) {
                        Ok(ws) => remote.extend(ws),
                        Err(e) => {
                            tracing::warn!(replica = %replica, error = %e, "unreadable worker picture")
                        }
                    }
                }
                state.workers().set_remote(remote);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the other replicas' workers"),
        }
    }
}
