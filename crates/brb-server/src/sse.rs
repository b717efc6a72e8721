//! Server-Sent Event streams.
//!
//! A stream first sends what the watcher lacks (the current state, or the changes after its
//! `Last-Event-ID` replayed from the audit log), then each change as the hub broadcasts it,
//! and a comment every few seconds so proxies and clients know the line is alive. Frames come
//! pre-encoded from the hub; a stream only decides which ones to pass on. A watcher that falls
//! too far behind the broadcast re-reads what it missed from the store, so a slow client never
//! loses an event and never slows the others.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use brb_store::StoredEvent;
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::AppState;
use crate::error::ApiError;
use crate::hub::{Frame, encode, sse_frame};

const KEEPALIVE: &[u8] = b": keep-alive\n\n";
/// Tells `EventSource` clients to retry after one second when the stream drops.
const PREAMBLE: &[u8] = b"retry: 1000\n\n";
const REPLAY_BATCH: u32 = 1000;

#[derive(Debug, Clone)]
pub enum Scope {
    /// One switch; event ids are its versions.
    One(Arc<str>),
    /// All switches; event ids are global audit ids.
    All,
}

struct Stream {
    state: AppState,
    scope: Scope,
    rx: broadcast::Receiver<Arc<Frame>>,
    /// Version (one switch) or audit id (all) of the last event sent.
    last: u64,
    pending: VecDeque<Bytes>,
    keepalive: Interval,
    finished: bool,
    /// Ends the stream when its token is revoked or expires; counts it against the cap.
    lease: crate::auth::StreamLease,
    _gauge: crate::metrics::GaugeGuard,
}

pub async fn open(
    state: AppState,
    scope: Scope,
    last_event_id: Option<u64>,
    lease: crate::auth::StreamLease,
) -> Result<Response, ApiError> {
    // Subscribe before reading the current state: a change committed in between then arrives
    // both ways, and the `last` filter drops the duplicate; the other order could lose it.
    let rx = state.hub().subscribe();
    let mut pending = VecDeque::new();
    pending.push_back(Bytes::from_static(PREAMBLE));
    let last = match &scope {
        Scope::One(name) => {
            let current = state
                .hub()
                .get(name)
                .ok_or_else(|| ApiError::switch_not_found(name))?;
            match last_event_id {
                Some(v) if v < current.version => {
                    let events = state
                        .store()
                        .events_after_version(name, v, REPLAY_BATCH)
                        .await?;
                    push_events(&mut pending, &events, &scope);
                    events.last().map_or(v, |e| e.event.version())
                }
                Some(v) if v == current.version => v,
                // Ahead of this replica's image: the watcher saw the change on another replica
                // a moment before this one heard of it. If the store has that version, the hub
                // will publish what follows; resending an older state would step it back.
                Some(v) if ahead_is_real(&state, name, v).await => v,
                _ => {
                    let (ev, json) = encode(&brb_store::SwitchEvent::Changed((*current).clone()));
                    pending.push_back(sse_frame(ev, current.version, &json));
                    current.version
                }
            }
        }
        Scope::All => {
            let now = state.hub().last_audit_id();
            match last_event_id {
                Some(id) if id < now => {
                    let events = state.store().events_after_id(id, REPLAY_BATCH).await?;
                    push_events(&mut pending, &events, &scope);
                    events.last().map_or(id, |e| e.audit_id)
                }
                Some(id) if id == now => id,
                Some(id) if state.is_shared() && state.store().last_audit_id().await? >= id => id,
                _ => {
                    for s in state.hub().list() {
                        let (ev, json) = encode(&brb_store::SwitchEvent::Changed((*s).clone()));
                        pending.push_back(sse_frame(ev, now, &json));
                    }
                    now
                }
            }
        }
    };

    let period = Duration::from_secs(state.config().limits.keepalive_secs);
    let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let stream = Stream {
        _gauge: state.metrics().sse_watcher(),
        state,
        scope,
        rx,
        last,
        pending,
        keepalive,
        finished: false,
        lease,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, next));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Ask reverse proxies (nginx) not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// Whether a `Last-Event-ID` ahead of the hub names a version the store has (only possible
/// with replicas; otherwise the id is bogus and the watcher gets the current state).
async fn ahead_is_real(state: &AppState, name: &str, v: u64) -> bool {
    if !state.is_shared() {
        return false;
    }
    match state.store().get_switch(name).await {
        Ok(Some(s)) => s.version >= v,
        _ => false,
    }
}

fn push_events(pending: &mut VecDeque<Bytes>, events: &[StoredEvent], scope: &Scope) {
    for ev in events {
        let (name, json) = encode(&ev.event);
        let id = match scope {
            Scope::One(_) => ev.event.version(),
            Scope::All => ev.audit_id,
        };
        pending.push_back(sse_frame(name, id, &json));
    }
}

async fn next(mut s: Stream) -> Option<(Result<Bytes, Infallible>, Stream)> {
    loop {
        if let Some(b) = s.pending.pop_front() {
            return Some((Ok(b), s));
        }
        // No shutdown future in the select: one per stream would lock a waiter list shared by
        // every stream on every event. `begin_shutdown` wakes all streams through the hub.
        if s.finished || s.state.is_shutting_down() || s.lease.is_over() {
            return None;
        }
        tokio::select! {
            biased;
            r = s.rx.recv() => match r {
                Ok(frame) => s.accept(&frame),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event stream fell behind; replaying from the store");
                    if !s.replay().await {
                        return None;
                    }
                }
                Err(RecvError::Closed) => return None,
            },
            _ = s.keepalive.tick() => return Some((Ok(Bytes::from_static(KEEPALIVE)), s)),
        }
    }
}

impl Stream {
    fn accept(&mut self, f: &Frame) {
        match &self.scope {
            Scope::One(_) if f.ephemeral => {}
            Scope::All if f.ephemeral => {
                // An empty frame only wakes the stream (see `Hub::wake_all`).
                if !f.by_id.is_empty() {
                    self.pending.push_back(f.by_id.clone());
                }
            }
            Scope::One(name) => {
                if *f.switch != **name || f.version <= self.last {
                    return;
                }
                self.last = f.version;
                self.pending.push_back(f.by_version.clone());
                if f.deleted {
                    self.finished = true;
                }
            }
            Scope::All => {
                if f.audit_id <= self.last {
                    return;
                }
                self.last = f.audit_id;
                self.pending.push_back(f.by_id.clone());
            }
        }
    }

    /// Re-reads from the store everything after `last`. False if the store failed: the stream
    /// ends and the client reconnects with its `Last-Event-ID`, losing nothing.
    async fn replay(&mut self) -> bool {
        let store = self.state.store();
        let res = match &self.scope {
            Scope::One(name) => {
                store
                    .events_after_version(name, self.last, REPLAY_BATCH)
                    .await
            }
            Scope::All => store.events_after_id(self.last, REPLAY_BATCH).await,
        };
        match res {
            Ok(events) => {
                for ev in &events {
                    let f = Frame::new(ev);
                    self.accept(&f);
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "replay after lag failed; closing the stream");
                false
            }
        }
    }
}
