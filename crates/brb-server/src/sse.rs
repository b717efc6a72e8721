//! Server-Sent Event streams.
//!
//! A stream first sends what the watcher lacks (the current state, or the changes after its
//! `Last-Event-ID` replayed from the audit log), then each change as the hub broadcasts it,
//! and a comment every few seconds so proxies and clients know the line is alive. Frames come
//! pre-encoded from the hub; a stream only decides which ones to pass on. A watcher that falls
//! too far behind the broadcast re-reads what it missed from the store, so a slow client never
//! loses an event and never slows the others.
//!
//! Three ways to the wire, one filtering logic. Normally the stream is a hyper response body.
//! When the accept loop read the request head itself (`net.rs`, the first request of a
//! connection), the handler hands the stream back instead ([`Takeover`]): a switch stream on
//! plain TCP goes to the fan-out writer threads (`fanout.rs`), any other to [`write_direct`],
//! which owns the socket. Either way frames come pre-framed as chunks from the hub and each
//! delivery is one `write`, without hyper's per-connection dispatcher, body layers and buffers
//! (BENCHMARKS.md, "Second round").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use brb_store::StoredEvent;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::AppState;
use crate::error::ApiError;
use crate::hub::{Frame, chunk, encode, sse_frame};

const KEEPALIVE: &[u8] = b": keep-alive\n\n";
/// The same as one HTTP/1.1 chunk (14 bytes).
pub(crate) const KEEPALIVE_CHUNK: &[u8] = b"e\r\n: keep-alive\n\n\r\n";
/// The end of a chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// Tells `EventSource` clients to retry after one second when the stream drops.
const PREAMBLE: &[u8] = b"retry: 1000\n\n";
const REPLAY_BATCH: u32 = 1000;
/// A watcher that takes nothing from its socket for this long while a frame waits is
/// dropped; it reconnects with its `Last-Event-ID` and loses nothing.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Request extension set by the accept loop when it can write this request's answer itself.
#[derive(Debug, Clone, Copy)]
pub struct Direct;

/// Response extension: the stream, for the accept loop to run with [`write_direct`].
#[derive(Clone)]
pub struct Takeover(Arc<Mutex<Option<Stream>>>);

impl Takeover {
    pub fn take(&self) -> Option<Stream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[derive(Debug, Clone)]
pub enum Scope {
    /// One switch; event ids are its versions.
    One(Arc<str>),
    /// All switches; event ids are global audit ids.
    All,
}

pub struct Stream {
    pub(crate) state: AppState,
    pub(crate) scope: Scope,
    pub(crate) rx: broadcast::Receiver<Arc<Frame>>,
    /// Version (one switch) or audit id (all) of the last event sent.
    pub(crate) last: u64,
    /// Ready to send: SSE frames, or HTTP/1.1 chunks of them when `direct`.
    pub(crate) pending: VecDeque<Bytes>,
    pub(crate) keepalive: Interval,
    pub(crate) finished: bool,
    pub(crate) direct: bool,
    /// Ends the stream when its token is revoked or expires; counts it against the cap.
    pub(crate) lease: crate::auth::StreamLease,
    pub(crate) _gauge: crate::metrics::GaugeGuard,
}

pub async fn open(
    state: AppState,
    scope: Scope,
    last_event_id: Option<u64>,
    lease: crate::auth::StreamLease,
    direct: bool,
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

    if direct {
        for b in pending.iter_mut() {
            *b = chunk(b);
        }
    }
    let stream = Stream {
        _gauge: state.metrics().sse_watcher(),
        state,
        scope,
        rx,
        last,
        pending,
        keepalive,
        finished: false,
        direct,
        lease,
    };
    let mut res = if direct {
        let mut res = Response::new(Body::empty());
        res.extensions_mut()
            .insert(Takeover(Arc::new(Mutex::new(Some(stream)))));
        res
    } else {
        Response::new(Body::from_stream(futures_util::stream::unfold(
            stream, next,
        )))
    };
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
    // (Framed as chunks afterwards by `open` when the stream is written directly.)
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
        if !s.wait().await {
            return None;
        }
    }
}

/// Runs a stream on a socket the accept loop handed over, after it wrote the response head.
/// Ends when the stream ends (then closes the body properly), when the client closes or
/// sends anything (an event stream expects nothing more), or when a write stalls for
/// [`WRITE_TIMEOUT`].
pub async fn write_direct<IO: AsyncRead + AsyncWrite + Unpin>(mut s: Stream, io: &mut IO) {
    let mut probe = [0u8; 64];
    loop {
        while let Some(b) = s.pending.pop_front() {
            if send(io, &b).await.is_err() {
                return;
            }
        }
        tokio::select! {
            biased;
            more = s.wait() => if !more {
                let _ = send(io, LAST_CHUNK).await;
                let _ = io.shutdown().await;
                return;
            },
            // Cancelling `wait` is safe here: the stream ends either way.
            _ = io.read(&mut probe) => return,
        }
    }
}

/// Writes `b` and flushes (TLS). The usual case completes at once, without a timer; only a
/// write that has to wait for the client gets a deadline.
async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, b: &[u8]) -> std::io::Result<()> {
    let mut fut = pin!(async {
        io.write_all(b).await?;
        io.flush().await
    });
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return r;
    }
    match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

impl Stream {
    /// Waits for something to send (queued in `pending`). False when the stream should end.
    async fn wait(&mut self) -> bool {
        // No shutdown future in the select: one per stream would lock a waiter list shared by
        // every stream on every event. `begin_shutdown` wakes all streams through the hub.
        if self.finished || self.state.is_shutting_down() || self.lease.is_over() {
            return false;
        }
        tokio::select! {
            biased;
            r = self.rx.recv() => match r {
                Ok(frame) => {
                    self.accept(&frame);
                    true
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event stream fell behind; replaying from the store");
                    self.replay().await
                }
                Err(RecvError::Closed) => false,
            },
            _ = self.keepalive.tick() => {
                self.pending.push_back(Bytes::from_static(if self.direct { KEEPALIVE_CHUNK } else { KEEPALIVE }));
                true
            }
        }
    }

    fn accept(&mut self, f: &Frame) {
        let (by_version, by_id) = if self.direct {
            (&f.by_version_chunk, &f.by_id_chunk)
        } else {
            (&f.by_version, &f.by_id)
        };
        match &self.scope {
            Scope::One(_) if f.ephemeral => {}
            Scope::All if f.ephemeral => {
                // An empty frame only wakes the stream (see `Hub::wake_all`).
                if !by_id.is_empty() {
                    self.pending.push_back(by_id.clone());
                }
            }
            Scope::One(name) => {
                if *f.switch != **name || f.version <= self.last {
                    return;
                }
                self.last = f.version;
                self.pending.push_back(by_version.clone());
                if f.deleted {
                    self.finished = true;
                }
            }
            Scope::All => {
                if f.audit_id <= self.last {
                    return;
                }
                self.last = f.audit_id;
                self.pending.push_back(by_id.clone());
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
