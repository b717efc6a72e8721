//! The fan-out writers: a few threads write each change to every plain-TCP switch stream.
//!
//! Why: with a task per stream, one press wakes ten thousand tasks, each scheduled, polled,
//! re-registered with the broadcast channel, its timer and its socket, to make one `send`.
//! Redis pub/sub, the baseline we are measured against, makes the sends from one loop. This
//! does the same for the streams that dominate (workers' `/switches/{name}/events` over plain
//! HTTP, served directly by `net.rs`): each writer thread (one per core, streams spread over
//! them) takes each frame from the hub and writes the pre-framed chunk to each of its sockets
//! with a non-blocking `send`, in order, under the stream's own small lock.
//!
//! Each stream keeps a task for what is not a delivery: noticing the client hang up, the
//! keep-alive, its token lease and shutdown (woken through the hub's wake-up frame), and
//! writing a backlog when a socket is full. A write that would block moves the frame to the
//! stream's backlog and the task writes it when the socket drains; while a backlog exists the
//! thread appends to it, so order holds. A backlog past [`MAX_BACKLOG`] frames ends the stream:
//! the client reconnects with its `Last-Event-ID` and loses nothing.
//!
//! Registration goes through the thread, between two frames: the new stream's own broadcast
//! receiver (subscribed before its `last` version was read) is drained there, so no change
//! committed in between is lost or sent twice (versions only move forward).
//! `/events` streams (ephemeral events, audit ids) and TLS streams keep a task each
//! (`sse::write_direct`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf as _, Bytes};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::hub::Frame;
use crate::sse::{KEEPALIVE_CHUNK, LAST_CHUNK, Stream, WRITE_TIMEOUT};

/// Most writer threads.
const MAX_THREADS: usize = 4;
/// Frames a stream may have waiting before it is ended.
const MAX_BACKLOG: usize = 1024;

/// The handle to the writer threads.
pub struct Fanout {
    /// One registration channel per writer thread; streams are spread round-robin.
    shards: Vec<mpsc::UnboundedSender<Arc<Entry>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Fanout {
    /// Starts one writer thread per core (at most [`MAX_THREADS`]), each on its own receiver
    /// of the hub's broadcast (`subscribe`). They end when the hub is dropped. Several threads
    /// because a send costs microseconds in the kernel: ten thousand of them in one thread
    /// would be the whole latency, on one core.
    pub fn start(
        subscribe: impl Fn() -> broadcast::Receiver<Arc<Frame>>,
    ) -> std::io::Result<Fanout> {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS);
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let (register, registrations) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            let frames = subscribe();
            std::thread::Builder::new()
                .name(format!("brb-fanout-{i}"))
                .spawn(move || rt.block_on(run(frames, registrations)))?;
            shards.push(register);
        }
        Ok(Fanout {
            shards,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn register(&self, e: Arc<Entry>) -> bool {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.shards.len();
        self.shards[i].send(e).is_ok()
    }
}

/// One stream, shared by the writer thread and the stream's task.
struct Entry {
    switch: Arc<str>,
    st: Mutex<EntryState>,
    /// Wakes the stream's task: a backlog to write, an end, or a flag to check.
    wake: Notify,
}

struct EntryState {
    /// `None` once the stream ended (closes the socket with the task's handle).
    sock: Option<Arc<TcpStream>>,
    /// Version of the last frame taken (written or queued).
    last: u64,
    /// Bytes to write before anything else, in order.
    backlog: VecDeque<Bytes>,
    /// The stream must end: a write failed, the backlog overflowed, or the stream ended.
    closed: bool,
    /// The switch was deleted: end after the backlog.
    finish: bool,
    /// The stream's own receiver until the writer thread adopts it.
    rx: Option<broadcast::Receiver<Arc<Frame>>>,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, EntryState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a frame (writer thread). False when the stream is gone for good.
    fn offer(&self, f: &Frame) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if f.ephemeral {
            // Only the hub's wake-up concerns switch streams: shutdown, tokens.
            if f.by_id.is_empty() {
                self.wake.notify_one();
            }
            return true;
        }
        if *f.switch != *self.switch || f.version <= st.last {
            return true;
        }
        st.last = f.version;
        if f.deleted {
            st.finish = true;
        }
        let wake = match (st.backlog.is_empty(), &st.sock) {
            (true, Some(sock)) => match sock.try_write(&f.by_version_chunk) {
                Ok(n) if n == f.by_version_chunk.len() => f.deleted,
                Ok(n) => {
                    st.backlog.push_back(f.by_version_chunk.slice(n..));
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    st.backlog.push_back(f.by_version_chunk.clone());
                    true
                }
                Err(_) => {
                    st.closed = true;
                    true
                }
            },
            (_, None) => {
                st.closed = true;
                true
            }
            (false, Some(_)) if st.backlog.len() >= MAX_BACKLOG => {
                tracing::warn!(switch = %self.switch, "event stream too far behind; ending it (it resumes from its last id)");
                st.closed = true;
                true
            }
            (false, Some(_)) => {
                st.backlog.push_back(f.by_version_chunk.clone());
                true
            }
        };
        let keep = !st.closed;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        keep
    }

    /// Ends the stream (writer thread or task).
    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.sock = None;
        st.backlog.clear();
        st.rx = None;
        drop(st);
        self.wake.notify_one();
    }
}

async fn run(
    mut frames: broadcast::Receiver<Arc<Frame>>,
    mut registrations: mpsc::UnboundedReceiver<Arc<Entry>>,
) {
    let mut entries: Vec<Arc<Entry>> = Vec::new();
    loop {
        tokio::select! {
            biased;
            e = registrations.recv() => {
                let Some(e) = e else { return };
                if adopt(&e) {
                    entries.push(e);
                }
            }
            f = frames.recv() => match f {
                Ok(f) => entries.retain(|e| e.offer(&f)),
                Err(RecvError::Lagged(n)) => {
                    // Cannot happen while the thread keeps up; if it does, every stream may
                    // have missed frames: end them all, they resume from their last ids.
                    tracing::error!(missed = n, "fan-out writer fell behind; ending its streams");
                    for e in entries.drain(..) {
                        e.close();
                    }
                }
                Err(RecvError::Closed) => {
                    for e in entries.drain(..) {
                        e.close();
                    }
                    return;
                }
            },
        }
    }
}

/// Takes over a stream (writer thread): everything its own receiver holds, then the thread's.
fn adopt(e: &Arc<Entry>) -> bool {
    let rx = e.lock().rx.take();
    let Some(mut rx) = rx else {
        return false;
    };
    loop {
        match rx.try_recv() {
            Ok(f) => {
                if !e.offer(&f) {
                    return false;
                }
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Lagged(_)) => {
                e.close();
                return false;
            }
            Err(TryRecvError::Closed) => return false,
        }
    }
}

/// Serves a switch stream whose response head is already written: registers it with the
/// writer thread and does the rest until it ends.
pub async fn serve(fanout: &Fanout, stream: Stream, sock: TcpStream) {
    let Stream {
        state,
        scope,
        rx,
        last,
        pending,
        mut keepalive,
        finished,
        direct: _,
        mut lease,
        _gauge,
    } = stream;
    let crate::sse::Scope::One(switch) = scope else {
        return;
    };
    let sock = Arc::new(sock);
    let entry = Arc::new(Entry {
        switch,
        st: Mutex::new(EntryState {
            sock: Some(Arc::clone(&sock)),
            last,
            backlog: pending,
            closed: false,
            finish: finished,
            // Subscribed before `last` was read: holds every change since.
            rx: Some(rx),
        }),
        wake: Notify::new(),
    });
    if !fanout.register(Arc::clone(&entry)) {
        return;
    }
    let mut probe = [0u8; 64];
    loop {
        if flush(&entry, &sock).await.is_err() {
            break;
        }
        let ending = {
            let st = entry.lock();
            st.closed || st.finish
        } || state.is_shutting_down()
            || lease.is_over();
        if ending {
            // End the body properly unless the socket is already given up on.
            let open = {
                let mut st = entry.lock();
                if !st.closed {
                    st.backlog.push_back(Bytes::from_static(LAST_CHUNK));
                }
                !st.closed
            };
            if open {
                let _ = flush(&entry, &sock).await;
            }
            break;
        }
        tokio::select! {
            biased;
            () = entry.wake.notified() => {}
            r = sock.readable() => {
                if r.is_err() {
                    break;
                }
                match sock.try_read(&mut probe) {
                    // The client hung up, or sent something an event stream does not expect.
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = keepalive.tick() => {
                entry.lock().backlog.push_back(Bytes::from_static(KEEPALIVE_CHUNK));
            }
        }
    }
    entry.close();
}

/// Writes the backlog (task). Err when the stream must end.
async fn flush(entry: &Entry, sock: &TcpStream) -> Result<(), ()> {
    loop {
        {
            let mut st = entry.lock();
            if st.closed {
                return Err(());
            }
            loop {
                let Some(front) = st.backlog.front_mut() else {
                    return Ok(());
                };
                match sock.try_write(front) {
                    Ok(n) if n == front.len() => {
                        st.backlog.pop_front();
                    }
                    Ok(n) => {
                        front.advance(n);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        st.closed = true;
                        return Err(());
                    }
                }
            }
        }
        match tokio::time::timeout(WRITE_TIMEOUT, sock.writable()).await {
            Ok(Ok(())) => {}
            _ => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{Source, Switch, SwitchState};
    use brb_store::{StoredEvent, SwitchEvent};
    use tokio::io::AsyncReadExt as _;

    fn frame(name: &str, version: u64) -> Frame {
        Frame::new(&StoredEvent {
            audit_id: version,
            event: SwitchEvent::Changed(Switch {
                name: name.into(),
                description: String::new(),
                primary: true,
                state: SwitchState::Paused,
                version,
                changed_at: chrono::Utc::now(),
                changed_by: "t".into(),
                source: Source::Api,
                reason: Some("x".repeat(200)),
                ramp: None,
            }),
        })
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    fn entry(sock: &Arc<TcpStream>) -> Entry {
        Entry {
            switch: Arc::from("workers"),
            st: Mutex::new(EntryState {
                sock: Some(Arc::clone(sock)),
                last: 0,
                backlog: VecDeque::new(),
                closed: false,
                finish: false,
                rx: None,
            }),
            wake: Notify::new(),
        }
    }

    /// Versions of the `switch` frames in a chunked byte stream, in order.
    fn versions(wire: &[u8]) -> Vec<u64> {
        let text = String::from_utf8_lossy(wire);
        text.match_indices("\nid: ")
            .map(|(i, _)| {
                let rest = &text[i + 5..];
                rest[..rest.find('\n').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_full_socket_queues_in_order_and_the_task_drains_it() {
        let (server, mut client) = pair().await;
        let sock = Arc::new(server);
        let e = entry(&sock);
        // Offer until a write would block and frames queue up.
        let mut v = 0;
        while e.lock().backlog.is_empty() {
            v += 1;
            assert!(e.offer(&frame("workers", v)));
            assert!(v < 200_000, "the socket never filled");
        }
        // A few more go behind the backlog, never around it; other switches and old versions
        // are skipped.
        for _ in 0..5 {
            v += 1;
            assert!(e.offer(&frame("workers", v)));
        }
        assert!(e.offer(&frame("other", v + 1)));
        assert!(e.offer(&frame("workers", 1)));
        let reader = tokio::spawn(async move {
            let mut wire = Vec::new();
            let mut b = vec![0u8; 1 << 16];
            loop {
                let n = client.read(&mut b).await.unwrap();
                if n == 0 {
                    return wire;
                }
                wire.extend_from_slice(&b[..n]);
            }
        });
        flush(&e, &sock).await.unwrap();
        assert!(e.lock().backlog.is_empty());
        e.close();
        drop(sock);
        let wire = reader.await.unwrap();
        assert_eq!(versions(&wire), (1..=v).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_cut_off_not_buffered_forever() {
        let (server, _client) = pair().await;
        let sock = Arc::new(server);
        let e = entry(&sock);
        let mut v = 0;
        loop {
            v += 1;
            if !e.offer(&frame("workers", v)) {
                break;
            }
            assert!(v < 300_000, "never cut off");
        }
        let st = e.lock();
        assert!(st.closed);
        assert!(st.backlog.len() >= MAX_BACKLOG);
    }

    #[tokio::test]
    async fn adoption_replays_what_the_stream_missed_once() {
        let (tx, _) = broadcast::channel(16);
        let rx = tx.subscribe();
        let (server, mut client) = pair().await;
        let sock = Arc::new(server);
        let e = Arc::new(entry(&sock));
        e.lock().last = 2;
        e.lock().rx = Some(rx);
        // Published before adoption: 2 (already sent, as `last` says) and 3.
        tx.send(Arc::new(frame("workers", 2))).unwrap();
        tx.send(Arc::new(frame("workers", 3))).unwrap();
        assert!(adopt(&e));
        // The writer's own receiver then offers 3 again and 4.
        assert!(e.offer(&frame("workers", 3)));
        assert!(e.offer(&frame("workers", 4)));
        e.close();
        drop(sock);
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        assert_eq!(versions(&wire), vec![3, 4]);
    }
}
