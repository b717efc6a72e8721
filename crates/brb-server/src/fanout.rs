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
//! This is an adapter: which frames a stream takes, when it ends and what it gets after
//! falling behind are decided by its core (`subscription.rs`), kept in the stream's entry and
//! asked under the entry's lock, so the thread and the stream's task see one sequence. The
//! core's last bytes (the terminating chunk) are written through the same path as every
//! frame, and after them the core answers nothing more: no byte can follow the end of a body.
//!
//! Each stream keeps a task for what is not a delivery: noticing the client hang up, the
//! keep-alive deadline, and writing a backlog when a socket is full. A write that would block
//! moves the frame to the stream's backlog and the task writes it when the socket drains;
//! while a backlog exists the thread appends to it, so order holds. A backlog past
//! [`MAX_BACKLOG`] frames ends the stream: the client reconnects with its `Last-Event-ID` and
//! loses nothing.
//!
//! Registration goes through the thread, between two frames: the new stream's own broadcast
//! receiver (subscribed before the hub's image was read) is drained there, so no change
//! committed in between is lost or sent twice (versions only move forward).
//! `/events` streams (ephemeral events, audit ids) and TLS streams keep a task each
//! (`sse::write_direct`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::{Buf as _, Bytes};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

use crate::hub::Hub;
use crate::sse::{Live, Opened, WRITE_TIMEOUT};
use crate::subscription::{Frame, Liveness, Offer, Subscription};

/// Most writer threads.
const MAX_THREADS: usize = 4;
/// Frames a stream may have waiting before it is ended.
const MAX_BACKLOG: usize = 1024;

/// The handle to the writer threads.
pub struct Fanout {
    /// One registration channel per writer thread; streams are spread round-robin.
    shards: Vec<mpsc::UnboundedSender<Arc<Entry<Live>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Fanout {
    /// Starts one writer thread per core (at most [`MAX_THREADS`]), each on its own receiver
    /// of the hub's broadcast. They end when the hub is dropped (they hold it weakly, to read
    /// its image when they fall behind). Several threads because a send costs microseconds in
    /// the kernel: ten thousand of them in one thread would be the whole latency, on one core.
    pub fn start(hub: &Arc<Hub>) -> std::io::Result<Fanout> {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS);
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let (register, registrations) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            let frames = hub.subscribe();
            let hub = Arc::downgrade(hub);
            std::thread::Builder::new()
                .name(format!("brb-fanout-{i}"))
                .spawn(move || rt.block_on(run(frames, registrations, hub)))?;
            shards.push(register);
        }
        Ok(Fanout {
            shards,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn register(&self, e: Arc<Entry<Live>>) -> bool {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.shards.len();
        self.shards[i].send(e).is_ok()
    }
}

/// One stream, shared by the writer thread and the stream's task.
struct Entry<L> {
    st: Mutex<EntryState<L>>,
    /// Wakes the stream's task: a backlog to write, an end, or a flag to check.
    wake: Notify,
}

struct EntryState<L> {
    sub: Subscription<L>,
    /// `None` once the task let go of the socket.
    sock: Option<Arc<TcpStream>>,
    /// Bytes to write before anything else, in order.
    backlog: VecDeque<Bytes>,
    /// The socket is given up on (a write failed, the backlog overflowed, the task ended):
    /// nothing more is written.
    dead: bool,
    /// The stream's own receiver until the writer thread adopts it.
    rx: Option<broadcast::Receiver<Arc<Frame>>>,
}

impl<L: Liveness> EntryState<L> {
    /// Writes `b` now if nothing waits before it and the socket takes it, else queues it.
    /// True when the task must look (a backlog to write, or the socket is given up).
    fn write(&mut self, b: &Bytes) -> bool {
        if self.dead {
            return true;
        }
        match (&self.sock, self.backlog.is_empty()) {
            (None, _) => self.die(),
            (Some(sock), true) => match sock.try_write(b) {
                Ok(n) if n == b.len() => return false,
                Ok(n) => self.backlog.push_back(b.slice(n..)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.backlog.push_back(b.clone())
                }
                Err(_) => self.die(),
            },
            (Some(_), false) if self.backlog.len() >= MAX_BACKLOG => {
                tracing::warn!(
                    "event stream too far behind; ending it (it resumes from its last id)"
                );
                self.die();
            }
            (Some(_), false) => self.backlog.push_back(b.clone()),
        }
        true
    }

    /// Writes what an offer says; true when the task must look.
    fn apply(&mut self, offer: Offer<'_>) -> bool {
        let terminator = Bytes::from_static(self.sub.terminator());
        match offer {
            Offer::Skip | Offer::Gone => false,
            Offer::Deliver(b) => self.write(b),
            Offer::Last(b) => {
                self.write(b);
                self.write(&terminator);
                true
            }
            Offer::End => {
                self.write(&terminator);
                true
            }
        }
    }

    fn die(&mut self) {
        self.dead = true;
        self.sub.abandon();
    }

    /// Whether the writer thread still has business with this stream.
    fn open(&self) -> bool {
        !self.dead && self.sub.ended().is_none()
    }
}

impl<L: Liveness> Entry<L> {
    fn lock(&self) -> MutexGuard<'_, EntryState<L>> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a frame (writer thread). False when the thread is done with the stream.
    fn offer(&self, f: &Frame) -> bool {
        let mut st = self.lock();
        if !st.open() {
            return false;
        }
        let offer = st.sub.offer(f);
        let wake = st.apply(offer);
        let keep = st.open();
        drop(st);
        if wake || !keep {
            self.wake.notify_one();
        }
        keep
    }

    /// The stream missed frames (writer thread): its core decides what it gets instead.
    fn lagged(&self, hub: &Hub) -> bool {
        let mut st = self.lock();
        if !st.open() {
            return false;
        }
        let image = hub.image(st.sub.scope());
        let mut out = Vec::new();
        st.sub.lagged(&image, &mut out);
        for b in &out {
            st.write(b);
        }
        let keep = st.open();
        drop(st);
        self.wake.notify_one();
        keep
    }

    /// Lets go of the stream (its task, at the end).
    fn close(&self) {
        let mut st = self.lock();
        st.die();
        st.sock = None;
        st.backlog.clear();
        st.rx = None;
    }
}

async fn run(
    mut frames: broadcast::Receiver<Arc<Frame>>,
    mut registrations: mpsc::UnboundedReceiver<Arc<Entry<Live>>>,
    hub: Weak<Hub>,
) {
    let mut entries: Vec<Arc<Entry<Live>>> = Vec::new();
    loop {
        tokio::select! {
            biased;
            e = registrations.recv() => {
                let Some(e) = e else { return };
                if adopt(&e, &hub) {
                    entries.push(e);
                }
            }
            f = frames.recv() => match f {
                Ok(f) => entries.retain(|e| e.offer(&f)),
                Err(RecvError::Lagged(missed)) => {
                    // Cannot happen while the thread keeps up; if it does, every stream may
                    // have missed frames: each gets what its core gives a stream that lagged.
                    tracing::error!(missed, "fan-out writer fell behind; sending its streams the current state");
                    match hub.upgrade() {
                        Some(hub) => entries.retain(|e| e.lagged(&hub)),
                        None => return,
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Takes over a stream (writer thread): everything its own receiver holds, then the thread's.
fn adopt<L: Liveness>(e: &Entry<L>, hub: &Weak<Hub>) -> bool {
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
            Err(TryRecvError::Lagged(_)) => match hub.upgrade() {
                Some(hub) => {
                    if !e.lagged(&hub) {
                        return false;
                    }
                }
                None => return false,
            },
            Err(TryRecvError::Closed) => return false,
        }
    }
}

/// Serves a switch stream whose response head is already written: registers it with the
/// writer threads and returns the stream's task, which does the rest until it ends.
///
/// Not an `async fn`: its arguments would stay in the task's future for the stream's whole
/// life (the core and the first bytes have moved into the entry by then), and that future is
/// memory every idle watcher holds.
pub fn serve(
    fanout: &Fanout,
    o: Opened,
    sock: TcpStream,
) -> impl std::future::Future<Output = ()> + use<> {
    let Opened { sub, rx, first, .. } = o;
    let sock = Arc::new(sock);
    let deadline = sub.deadline();
    let entry = Arc::new(Entry {
        st: Mutex::new(EntryState {
            sub,
            sock: Some(Arc::clone(&sock)),
            backlog: first.into(),
            dead: false,
            rx: Some(rx),
        }),
        wake: Notify::new(),
    });
    let registered = fanout.register(Arc::clone(&entry));
    async move {
        if registered {
            run_task(&entry, &sock, deadline).await;
        }
        entry.close();
    }
}

/// A stream's task: writes the backlog, notices the client leave, keeps the keep-alive
/// deadline; returns when the stream is over (its last bytes written) or the socket is lost.
async fn run_task<L: Liveness>(entry: &Entry<L>, sock: &TcpStream, deadline: std::time::Instant) {
    let timer = tokio::time::sleep_until(Instant::from_std(deadline));
    tokio::pin!(timer);
    let mut probe = [0u8; 64];
    loop {
        if flush(entry, sock).await.is_err() {
            return;
        }
        {
            let st = entry.lock();
            if st.dead || (st.sub.ended().is_some() && st.backlog.is_empty()) {
                return;
            }
        }
        tokio::select! {
            biased;
            () = entry.wake.notified() => {}
            r = sock.readable() => {
                if r.is_err() {
                    return;
                }
                match sock.try_read(&mut probe) {
                    // The client hung up, or sent something an event stream does not expect.
                    Ok(_) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            () = &mut timer => {
                let mut st = entry.lock();
                let offer = st.sub.tick(Instant::now().into_std());
                st.apply(offer);
                timer.as_mut().reset(Instant::from_std(st.sub.deadline()));
            }
        }
    }
}

/// Writes the backlog (task). Err when the stream must end.
async fn flush<L: Liveness>(entry: &Entry<L>, sock: &TcpStream) -> Result<(), ()> {
    loop {
        {
            let mut st = entry.lock();
            if st.dead {
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
                        st.die();
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
    use crate::subscription::{End, Fetched, Framing, Image, LAST_CHUNK, Scope};
    use brb_api::{Source, Switch, SwitchState};
    use brb_store::{StoredEvent, SwitchEvent};
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Option<End>>>);

    impl Liveness for Fake {
        fn check(&mut self) -> Option<End> {
            *self.0.lock().unwrap()
        }
    }

    fn switch(name: &str, version: u64) -> Switch {
        Switch {
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
            resume_request: None,
        }
    }

    fn frame(name: &str, version: u64) -> Frame {
        Frame::change(&StoredEvent {
            audit_id: version,
            event: SwitchEvent::Changed(switch(name, version)),
        })
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    /// An entry for a stream of `workers` that has sent version `last` (its first bytes are
    /// dropped: the tests look at what comes after).
    fn entry(sock: &Arc<TcpStream>, last: u64, live: Fake) -> Entry<Fake> {
        let image = Image {
            switches: vec![Arc::new(switch("workers", last))],
            last_audit_id: last,
        };
        let (sub, _first) = Subscription::open(
            Scope::One(Arc::from("workers")),
            Framing::Chunked,
            Some(last),
            &image,
            false,
            Fetched::Nothing,
            std::time::Instant::now(),
            Duration::from_secs(15),
            live,
        );
        Entry {
            st: Mutex::new(EntryState {
                sub,
                sock: Some(Arc::clone(sock)),
                backlog: VecDeque::new(),
                dead: false,
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

    fn read_all(mut client: TcpStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut wire = Vec::new();
            client.read_to_end(&mut wire).await.unwrap();
            wire
        })
    }

    /// Offers versions from `v + 1` on until a write would block and frames queue up.
    fn fill(e: &Entry<Fake>, v: &mut u64) {
        while e.lock().backlog.is_empty() {
            *v += 1;
            assert!(e.offer(&frame("workers", *v)));
            assert!(*v < 200_000, "the socket never filled");
        }
    }

    #[tokio::test]
    async fn a_full_socket_queues_in_order_and_the_task_drains_it() {
        let (server, client) = pair().await;
        let sock = Arc::new(server);
        let e = entry(&sock, 0, Fake::default());
        let mut v = 0;
        fill(&e, &mut v);
        // A few more go behind the backlog, never around it; other switches and old versions
        // are skipped.
        for _ in 0..5 {
            v += 1;
            assert!(e.offer(&frame("workers", v)));
        }
        assert!(e.offer(&frame("other", v + 1)));
        assert!(e.offer(&frame("workers", 1)));
        let reader = read_all(client);
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
        let e = entry(&sock, 0, Fake::default());
        let mut v = 0;
        loop {
            v += 1;
            if !e.offer(&frame("workers", v)) {
                break;
            }
            assert!(v < 300_000, "never cut off");
        }
        let st = e.lock();
        assert!(st.dead);
        assert_eq!(st.sub.ended(), Some(End::Abandoned));
        assert!(st.backlog.len() >= MAX_BACKLOG);
    }

    #[tokio::test]
    async fn adoption_replays_what_the_stream_missed_once() {
        let (tx, _) = broadcast::channel(16);
        let rx = tx.subscribe();
        let (server, client) = pair().await;
        let sock = Arc::new(server);
        let e = Arc::new(entry(&sock, 2, Fake::default()));
        e.lock().rx = Some(rx);
        // Published before adoption: 2 (already sent, as the stream's `last` says) and 3.
        tx.send(Arc::new(frame("workers", 2))).unwrap();
        tx.send(Arc::new(frame("workers", 3))).unwrap();
        assert!(adopt(&e, &Weak::new()));
        // The writer's own receiver then offers 3 again and 4.
        assert!(e.offer(&frame("workers", 3)));
        assert!(e.offer(&frame("workers", 4)));
        e.close();
        drop(sock);
        let wire = read_all(client).await.unwrap();
        assert_eq!(versions(&wire), vec![3, 4]);
    }

    /// The end of a body is its last bytes: a frame offered after the stream ended (while the
    /// terminating chunk still waits in the backlog of a full socket) is refused, never
    /// written after it. Over a raw socket, with the real task draining it.
    #[tokio::test]
    async fn nothing_is_written_after_the_terminating_chunk() {
        let (server, client) = pair().await;
        let sock = Arc::new(server);
        let live = Fake::default();
        let e = entry(&sock, 0, live.clone());
        let mut v = 0;
        fill(&e, &mut v);
        *live.0.lock().unwrap() = Some(End::Shutdown);
        assert!(!e.offer(&Frame::Wake), "the stream ends");
        assert_eq!(
            e.lock().backlog.back().map(|b| b.to_vec()),
            Some(LAST_CHUNK.to_vec()),
            "the terminator waits behind the backlog"
        );
        for later in v + 1..v + 10 {
            assert!(!e.offer(&frame("workers", later)));
        }
        let reader = read_all(client);
        run_task(
            &e,
            &sock,
            std::time::Instant::now() + Duration::from_secs(60),
        )
        .await;
        e.close();
        drop(sock);
        let wire = reader.await.unwrap();
        assert!(
            wire.ends_with(LAST_CHUNK),
            "the body ends with the last chunk"
        );
        assert_eq!(versions(&wire), (1..=v).collect::<Vec<_>>());
    }

    /// The same with a writer thread offering frames as fast as it can while the stream ends:
    /// whatever the interleaving, the last chunk is the last thing on the wire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_racing_the_writer_thread_still_ends_the_body_last() {
        for _ in 0..20 {
            let (server, client) = pair().await;
            let sock = Arc::new(server);
            let live = Fake::default();
            let e = Arc::new(entry(&sock, 0, live.clone()));
            let writer = {
                let e = Arc::clone(&e);
                std::thread::spawn(move || {
                    let mut v = 0;
                    loop {
                        // Stay under the backlog cap (the reader is slower than this loop).
                        while e.lock().backlog.len() > 64 {
                            std::thread::yield_now();
                        }
                        v += 1;
                        if !e.offer(&frame("workers", v)) {
                            return v;
                        }
                    }
                })
            };
            let reader = read_all(client);
            let task = {
                let (e, sock) = (Arc::clone(&e), Arc::clone(&sock));
                tokio::spawn(async move {
                    run_task(
                        &e,
                        &sock,
                        std::time::Instant::now() + Duration::from_secs(60),
                    )
                    .await
                })
            };
            // End it once some frames went out.
            while e.lock().sub.last() < 50 {
                tokio::task::yield_now().await;
            }
            *live.0.lock().unwrap() = Some(End::Shutdown);
            e.offer(&Frame::Wake);
            let offered = writer.join().unwrap();
            task.await.unwrap();
            e.close();
            drop(sock);
            let wire = reader.await.unwrap();
            assert!(
                wire.ends_with(LAST_CHUNK),
                "{} bytes, offered {offered}",
                wire.len()
            );
            let vs = versions(&wire);
            assert_eq!(vs, (1..=vs.len() as u64).collect::<Vec<_>>());
        }
    }
}
