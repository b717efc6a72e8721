//! Server-Sent Event streams: opening one, and the two adapters that run it in a task.
//!
//! Every rule of a stream (what a resumed stream replays, which frames pass, when it ends,
//! keep-alives, lag) lives in the I/O-free core (`subscription.rs`). Here is what needs I/O:
//! [`open`] subscribes to the hub, reads the hub's image and whatever the core asks of the
//! store, and starts the core; then the stream runs in one of three adapters that only move
//! bytes. Normally it is a hyper response body ([`TaskStream`] behind `Body::from_stream`).
//! When the accept loop read the request head itself (`net.rs`, the first request of a
//! connection), the handler hands the stream back instead ([`Takeover`]): a switch stream on
//! plain TCP goes to the fan-out writer threads (`fanout.rs`), any other to [`write_direct`],
//! which owns the socket. Either way frames come pre-framed as chunks from the hub and each
//! delivery is one `write`, without hyper's per-connection dispatcher, body layers and buffers
//! (BENCHMARKS.md, "Second round").

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Sleep};

use crate::AppState;
use crate::error::ApiError;
pub use crate::subscription::Scope;
use crate::subscription::{End, Fetched, Frame, Framing, Liveness, Need, Offer, Subscription};

/// A watcher that takes nothing from its socket for this long while a frame waits is
/// dropped; it reconnects with its `Last-Event-ID` and loses nothing.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Request extension set by the accept loop when it can write this request's answer itself.
#[derive(Debug, Clone, Copy)]
pub struct Direct;

/// Response extension: the opened stream, for the accept loop to run on its socket.
#[derive(Clone)]
pub struct Takeover(Arc<Mutex<Option<Opened>>>);

impl Takeover {
    pub fn take(&self) -> Option<Opened> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A stream's answer to "must I end?": the server's shutdown flag and the token's lease.
pub struct Live {
    state: AppState,
    lease: crate::auth::StreamLease,
    /// Counts the stream in `brb_watchers` for as long as it lives.
    _gauge: crate::metrics::GaugeGuard,
}

impl Liveness for Live {
    fn check(&mut self) -> Option<End> {
        if self.state.is_shutting_down() {
            Some(End::Shutdown)
        } else if self.lease.is_over() {
            Some(End::TokenEnded)
        } else {
            None
        }
    }
}

/// A started stream, before an adapter runs it.
pub struct Opened {
    pub(crate) state: AppState,
    pub(crate) sub: Subscription<Live>,
    /// Subscribed before the image was read: holds every change since.
    pub(crate) rx: broadcast::Receiver<Arc<Frame>>,
    /// The first bytes (preamble, replay or current state), in the stream's framing.
    pub(crate) first: Vec<Bytes>,
}

/// The longest silence on `/api/v1/events`, in seconds (see `open`).
pub const ALL_KEEPALIVE_SECS: u64 = 2;

pub async fn open(
    state: AppState,
    scope: Scope,
    last_event_id: Option<u64>,
    lease: crate::auth::StreamLease,
    direct: bool,
) -> Result<Response, ApiError> {
    // Subscribe before reading the image: a change committed in between then arrives both
    // ways, and the core's `last` filter drops the duplicate; the other order could lose it.
    let rx = state.hub().subscribe();
    let image = state.hub().image(&scope);
    if let Scope::One(name) = &scope
        && image.switches.is_empty()
    {
        return Err(ApiError::switch_not_found(name));
    }
    let shared = state.is_shared();
    let fetched = match crate::subscription::need(&scope, last_event_id, &image, shared) {
        Need::Nothing => Fetched::Nothing,
        Need::History { after, limit } => {
            let store = state.reads();
            let res = match &scope {
                Scope::One(name) => store.events_after_version(name, after, limit).await,
                Scope::All => store.events_after_id(after, limit).await,
            };
            match res {
                Ok(events) => Fetched::History(events),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the history to replay; sending the current state");
                    Fetched::Failed
                }
            }
        }
        Need::Ahead(id) => {
            let store = state.reads();
            let res = match &scope {
                Scope::One(name) => store
                    .get_switch(name)
                    .await
                    .map(|s| s.is_some_and(|s| s.version >= id)),
                Scope::All => store.last_audit_id().await.map(|last| last >= id),
            };
            res.map_or(Fetched::Failed, Fetched::Ahead)
        }
    };
    // The all-switches stream is what people watch (the console, the desktop app, `brb watch`):
    // a keep-alive at least every 2 s lets them tell a frozen control plane from a quiet one
    // within ~5 s. Worker streams keep the configured interval: they are many, and a gate
    // keeps its last state anyway.
    let keepalive = match &scope {
        Scope::All => {
            Duration::from_secs(state.config().limits.keepalive_secs.min(ALL_KEEPALIVE_SECS))
        }
        Scope::One(_) => Duration::from_secs(state.config().limits.keepalive_secs),
    };
    let framing = if direct {
        Framing::Chunked
    } else {
        Framing::Sse
    };
    let live = Live {
        _gauge: state.metrics().sse_watcher(),
        state: state.clone(),
        lease,
    };
    let (sub, first) = Subscription::open(
        scope,
        framing,
        last_event_id,
        &image,
        shared,
        fetched,
        Instant::now().into_std(),
        keepalive,
        live,
    );
    let opened = Opened {
        state,
        sub,
        rx,
        first,
    };
    let mut res = if direct {
        let mut res = Response::new(Body::empty());
        res.extensions_mut()
            .insert(Takeover(Arc::new(Mutex::new(Some(opened)))));
        res
    } else {
        let stream = TaskStream::new(opened);
        Response::new(Body::from_stream(futures_util::stream::unfold(
            stream,
            |mut s| async move { s.next().await.map(|b| (Ok::<_, Infallible>(b), s)) },
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

/// A stream run by its own task: it waits on the broadcast and the core's keep-alive deadline
/// and yields what the core says to write, in order, ending after the core's terminator.
pub struct TaskStream {
    state: AppState,
    sub: Subscription<Live>,
    rx: broadcast::Receiver<Arc<Frame>>,
    pending: std::collections::VecDeque<Bytes>,
    timer: Pin<Box<Sleep>>,
}

impl TaskStream {
    pub fn new(o: Opened) -> TaskStream {
        let deadline = Instant::from_std(o.sub.deadline());
        TaskStream {
            state: o.state,
            sub: o.sub,
            rx: o.rx,
            pending: o.first.into(),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// The next bytes to write; `None` when the stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.sub.ended().is_some() {
                return None;
            }
            tokio::select! {
                biased;
                r = self.rx.recv() => match r {
                    Ok(frame) => {
                        let offer = self.sub.offer(&frame);
                        push(&mut self.pending, offer, self.sub.terminator());
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event stream fell behind; sending the current state");
                        let image = self.state.hub().image(self.sub.scope());
                        let mut out = Vec::new();
                        self.sub.lagged(&image, &mut out);
                        self.pending.extend(out);
                    }
                    Err(RecvError::Closed) => self.sub.abandon(),
                },
                () = self.timer.as_mut() => {
                    let offer = self.sub.tick(Instant::now().into_std());
                    push(&mut self.pending, offer, self.sub.terminator());
                    self.timer.as_mut().reset(Instant::from_std(self.sub.deadline()));
                }
            }
        }
    }
}

/// Queues what an offer says to write.
fn push(
    pending: &mut std::collections::VecDeque<Bytes>,
    offer: Offer<'_>,
    terminator: &'static [u8],
) {
    let end = match offer {
        Offer::Skip | Offer::Gone => return,
        Offer::Deliver(b) => {
            pending.push_back(b.clone());
            return;
        }
        Offer::Last(b) => {
            pending.push_back(b.clone());
            true
        }
        Offer::End => true,
    };
    if end && !terminator.is_empty() {
        pending.push_back(Bytes::from_static(terminator));
    }
}

/// Runs a stream on a socket the accept loop handed over, after it wrote the response head.
/// Ends after the core's last bytes, when the client closes or sends anything (an event
/// stream expects nothing more), or when a write stalls for [`WRITE_TIMEOUT`].
pub async fn write_direct<IO: AsyncRead + AsyncWrite + Unpin>(o: Opened, io: &mut IO) {
    let mut s = TaskStream::new(o);
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            biased;
            b = s.next() => match b {
                Some(b) => if send(io, &b).await.is_err() {
                    return;
                },
                None => {
                    let _ = io.shutdown().await;
                    return;
                }
            },
            // Cancelling `next` is safe here: the stream ends either way.
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
