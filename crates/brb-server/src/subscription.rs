//! The subscription core: every rule of an event stream, and no I/O.
//!
//! A watcher must always end at the committed state. That promise is broken by a rule applied
//! in one writer and forgotten in another (a replay cap here, an ending there), so the rules
//! live once, here, as a state machine that sees frames and a clock and answers what to write:
//! what a resumed stream replays (every step up to [`REPLAY_LIMIT`], else the current state,
//! said with a `resync` event), which frames pass the scope and the `last` id filter, when a
//! stream ends (deleted switch, shutdown, token no longer valid) and that nothing follows its
//! end, when a keep-alive is due, and what a stream that fell behind the broadcast gets.
//!
//! The three ways to the wire are adapters around it that only move bytes: a hyper response
//! body and a task that writes its socket (`sse.rs`), and the fan-out writer threads
//! (`fanout.rs`). It reads no socket, no store and no clock: the store's answer at open
//! ([`Fetched`]), the hub's image ([`Image`]) and the time are passed in, so the rules are
//! tested with a fake clock and no sockets (below), and the adapters over raw sockets
//! (`tests/wire.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use brb_api::{Resync, ResyncReason, Switch};
use brb_store::{StoredEvent, SwitchEvent};
use bytes::Bytes;

/// How many changes behind a resumed stream may be and still get each one replayed; further
/// behind, it gets the current state (a gate needs the latest state, not every step).
pub const REPLAY_LIMIT: u64 = 1000;

/// Tells `EventSource` clients to retry after one second when the stream drops.
const PREAMBLE: &[u8] = b"retry: 1000\n\n";
const KEEPALIVE: &[u8] = b": keep-alive\n\n";
/// The same as one HTTP/1.1 chunk (14 bytes).
const KEEPALIVE_CHUNK: &[u8] = b"e\r\n: keep-alive\n\n\r\n";
/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What the hub broadcasts.
#[derive(Debug)]
pub enum Frame {
    /// A committed change.
    Change(Change),
    /// Worker counts or samples: only for `/events`, without an `id:` (a resumed stream never
    /// replays it, and `Last-Event-ID` keeps pointing at changes).
    Ephemeral(Encoded),
    /// Nothing to send: every stream re-checks whether it must end (shutdown, tokens).
    Wake,
}

/// One change, encoded once for every kind of stream.
#[derive(Debug)]
pub struct Change {
    pub switch: Arc<str>,
    pub version: u64,
    pub audit_id: u64,
    pub deleted: bool,
    /// For `/switches/{name}/events`: `id:` is the switch version.
    by_version: Encoded,
    /// For `/events`: `id:` is the global audit id.
    by_id: Encoded,
}

/// One SSE event, as is (for a hyper body, which frames it) and as an HTTP/1.1 chunk (for
/// the writers that own their socket: one `write` per delivery, no per-watcher framing).
#[derive(Debug, Clone)]
pub struct Encoded {
    sse: Bytes,
    chunk: Bytes,
}

impl Encoded {
    pub fn new(sse: Bytes) -> Encoded {
        Encoded {
            chunk: chunk(&sse),
            sse,
        }
    }

    fn get(&self, framing: Framing) -> &Bytes {
        match framing {
            Framing::Sse => &self.sse,
            Framing::Chunked => &self.chunk,
        }
    }
}

impl Frame {
    /// A committed change, as read back from the store or made by this process.
    pub fn change(ev: &StoredEvent) -> Frame {
        let (name, json) = encode(&ev.event);
        Frame::Change(Change {
            switch: Arc::from(ev.event.name()),
            version: ev.event.version(),
            audit_id: ev.audit_id,
            deleted: matches!(ev.event, SwitchEvent::Deleted(_)),
            by_version: Encoded::new(sse_frame(name, Some(ev.event.version()), &json)),
            by_id: Encoded::new(sse_frame(name, Some(ev.audit_id), &json)),
        })
    }

    /// A non-change event for `/events`.
    pub fn ephemeral(event: &str, json: &str) -> Frame {
        Frame::Ephemeral(Encoded::new(sse_frame(event, None, json)))
    }
}

/// Encodes one SSE event. `data` is single-line JSON, so one `data:` line suffices.
pub fn sse_frame(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut s = String::with_capacity(event.len() + data.len() + 32);
    s.push_str("event: ");
    s.push_str(event);
    if let Some(id) = id {
        s.push_str("\nid: ");
        s.push_str(&id.to_string());
    }
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// `bytes` as one HTTP/1.1 chunk (`{len:x}\r\n{bytes}\r\n`); empty input stays empty (an
/// empty chunk would end the body).
pub fn chunk(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() {
        return Bytes::new();
    }
    let mut s = Vec::with_capacity(bytes.len() + 12);
    s.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    s.extend_from_slice(bytes);
    s.extend_from_slice(b"\r\n");
    Bytes::from(s)
}

/// The event name and JSON data of a change.
pub fn encode(ev: &SwitchEvent) -> (&'static str, String) {
    // serde_json of our own types cannot fail (no maps with non-string keys, no custom
    // serializers); an empty object keeps the stream well-formed if it ever did.
    match ev {
        SwitchEvent::Changed(s) => (
            brb_api::events::SWITCH,
            serde_json::to_string(s).unwrap_or_else(|_| "{}".into()),
        ),
        SwitchEvent::Deleted(d) => (
            brb_api::events::DELETED,
            serde_json::to_string(d).unwrap_or_else(|_| "{}".into()),
        ),
    }
}

/// Which changes a stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// One switch; event ids are its versions.
    One(Arc<str>),
    /// All switches; event ids are global audit ids; ephemeral events too.
    All,
}

/// How the adapter's wire wants bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// SSE as is: a hyper body frames it and ends it.
    Sse,
    /// Each event an HTTP/1.1 chunk, ended by [`LAST_CHUNK`]: the writers that own the socket.
    Chunked,
}

/// What the hub looked like at one instant: the live switches in scope and the last audit id.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub switches: Vec<Arc<Switch>>,
    pub last_audit_id: u64,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its switch was deleted (the `deleted` event was its last).
    Deleted,
    /// The server is shutting down.
    Shutdown,
    /// Its token was revoked, expired, or its rotation grace ended.
    TokenEnded,
    /// The adapter gave up on the socket (the client stopped reading, or hung up).
    Abandoned,
}

/// Whether the stream must end now, asked when the hub wakes every stream and at each
/// keep-alive. The adapter's answer (shutdown flag, token lease) without I/O.
pub trait Liveness: Send {
    fn check(&mut self) -> Option<End>;
}

/// What the store must answer before the stream can start: the only read at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// The events after `after` (versions of one switch, or audit ids), oldest first, at most
    /// `limit`.
    History {
        after: u64,
        limit: u32,
    },
    /// Whether the store has reached this id: a `Last-Event-ID` ahead of this replica's image
    /// (the watcher saw the change on another replica a moment earlier).
    Ahead(u64),
}

/// The store's answer to [`Need`].
#[derive(Debug, Clone)]
pub enum Fetched {
    Nothing,
    History(Vec<StoredEvent>),
    Ahead(bool),
    /// The read failed (database down): a replay starts from the image, and says so; an id
    /// ahead of the image is kept (see [`Subscription::open`]).
    Failed,
}

/// What to do with one frame, or at one tick.
#[derive(Debug, PartialEq)]
pub enum Offer<'f> {
    Skip,
    Deliver(&'f Bytes),
    /// Write this, then the terminator ([`Subscription::terminator`]), then close.
    Last(&'f Bytes),
    /// Write the terminator and close.
    End,
    /// The stream has ended already: write nothing more.
    Gone,
}

/// Where a stream stands in the event sequence of its scope.
fn current_id(scope: &Scope, image: &Image) -> Option<u64> {
    match scope {
        Scope::One(_) => image.switches.first().map(|s| s.version),
        Scope::All => Some(image.last_audit_id),
    }
}

/// What a stream opened with `resume` (its `Last-Event-ID`) needs from the store, given the
/// hub's image read after subscribing. `shared`: other replicas write the same store, so an
/// id ahead of the image may be real.
pub fn need(scope: &Scope, resume: Option<u64>, image: &Image, shared: bool) -> Need {
    let (Some(from), Some(current)) = (resume, current_id(scope, image)) else {
        return Need::Nothing;
    };
    if from < current {
        let gap = current - from;
        if gap <= REPLAY_LIMIT {
            // One switch: exactly `gap` versions. All: at most `gap` events (token entries
            // take audit ids too), so the answer is complete when it reaches `current`.
            return Need::History {
                after: from,
                limit: u32::try_from(gap).unwrap_or(u32::MAX),
            };
        }
        return Need::Nothing;
    }
    if from > current && shared {
        return Need::Ahead(from);
    }
    Need::Nothing
}

/// One event stream's rules. See the module doc.
pub struct Subscription<L> {
    scope: Scope,
    framing: Framing,
    /// Version (one switch) or audit id (all) of the last change sent.
    last: u64,
    ended: Option<End>,
    keepalive_every: Duration,
    next_keepalive: Instant,
    /// Dropped when the stream ends: it holds the stream's resources (its token lease, its
    /// place in the watcher gauge), which must not outlive the stream even while an adapter
    /// still holds the core (the fan-out thread drops its entries lazily).
    liveness: Option<L>,
}

impl<L: Liveness> Subscription<L> {
    /// Starts a stream: `resume` is its `Last-Event-ID`, `image` the hub's state read after the
    /// adapter subscribed to the broadcast (so every change after the image arrives as a
    /// frame), `fetched` the store's answer to [`need`] for the same arguments. Returns the
    /// stream and its first bytes, after which it is at the image's state or later, whatever
    /// the store answered.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        scope: Scope,
        framing: Framing,
        resume: Option<u64>,
        image: &Image,
        shared: bool,
        fetched: Fetched,
        now: Instant,
        keepalive_every: Duration,
        mut liveness: L,
    ) -> (Self, Vec<Bytes>) {
        let ended = liveness.check();
        let mut s = Subscription {
            scope,
            framing,
            last: 0,
            ended: None,
            keepalive_every,
            next_keepalive: now + keepalive_every,
            liveness: Some(liveness),
        };
        let mut out = vec![s.framed(Bytes::from_static(PREAMBLE))];
        let current = current_id(&s.scope, image).unwrap_or(0);
        match (need(&s.scope, resume, image, shared), fetched) {
            (Need::History { after, limit }, Fetched::History(events))
                if reaches(&s.scope, &events, limit, current) =>
            {
                s.last = after;
                for ev in &events {
                    let id = s.id_of(ev);
                    if id > s.last && s.in_scope(ev) {
                        s.last = id;
                        let (name, json) = encode(&ev.event);
                        out.push(s.framed(sse_frame(name, Some(id), &json)));
                    }
                }
            }
            (Need::History { after, .. }, _) => {
                // Failed, or shorter than the image says it must be: the image is the truth
                // this replica has.
                s.last = after;
                s.resync(image, ResyncReason::HistoryUnavailable, &mut out);
            }
            // Found by tests/chaos.rs: a watcher that saw version 55 on one replica resumed on
            // another that had been stopped at 54 while the database was down; it got 54 and
            // went backwards. When the store cannot be asked, the id came from a replica of
            // this same store: keep it, and let this replica's hub catch up to it. Only an id
            // the store denies gets the current state.
            (Need::Ahead(id), Fetched::Ahead(true) | Fetched::Failed) => s.last = id,
            (Need::Ahead(_) | Need::Nothing, _) => match resume {
                Some(from) if from == current => s.last = from,
                Some(from) if from < current => {
                    s.last = from;
                    s.resync(image, ResyncReason::TooFarBehind, &mut out);
                }
                // No id, or one the store denies: the current state.
                _ => s.snapshot(image, &mut out),
            },
        }
        if let Some(end) = ended {
            s.finish(end, &mut out);
        }
        (s, out)
    }

    /// A frame from the hub.
    pub fn offer<'f>(&mut self, f: &'f Frame) -> Offer<'f> {
        if self.ended.is_some() {
            return Offer::Gone;
        }
        match f {
            Frame::Wake => match self.check() {
                Some(end) => {
                    self.end(end);
                    Offer::End
                }
                None => Offer::Skip,
            },
            Frame::Ephemeral(e) => match self.scope {
                Scope::All => Offer::Deliver(e.get(self.framing)),
                Scope::One(_) => Offer::Skip,
            },
            Frame::Change(c) => {
                let (id, bytes) = match &self.scope {
                    Scope::One(name) if *c.switch != **name => return Offer::Skip,
                    Scope::One(_) => (c.version, c.by_version.get(self.framing)),
                    Scope::All => (c.audit_id, c.by_id.get(self.framing)),
                };
                if id <= self.last {
                    return Offer::Skip;
                }
                self.last = id;
                if c.deleted && matches!(self.scope, Scope::One(_)) {
                    self.end(End::Deleted);
                    return Offer::Last(bytes);
                }
                Offer::Deliver(bytes)
            }
        }
    }

    /// The clock moved: a keep-alive when one is due, or the end when the stream must end.
    pub fn tick(&mut self, now: Instant) -> Offer<'static> {
        if self.ended.is_some() {
            return Offer::Gone;
        }
        if now < self.next_keepalive {
            return Offer::Skip;
        }
        if let Some(end) = self.check() {
            self.end(end);
            return Offer::End;
        }
        self.next_keepalive = now + self.keepalive_every;
        Offer::Deliver(match self.framing {
            Framing::Sse => &KEEPALIVE_BYTES,
            Framing::Chunked => &KEEPALIVE_CHUNK_BYTES,
        })
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn deadline(&self) -> Instant {
        self.next_keepalive
    }

    /// The stream missed frames of the broadcast: it gets the current state from `image` (read
    /// after the miss), said with a `resync` event; frames still queued at or below it are
    /// skipped by the `last` filter. Appends what to write to `out`.
    pub fn lagged(&mut self, image: &Image, out: &mut Vec<Bytes>) {
        if self.ended.is_some() {
            return;
        }
        self.resync(image, ResyncReason::Lagged, out);
    }

    /// The adapter gave up on the wire: nothing more is written.
    pub fn abandon(&mut self) {
        if self.ended.is_none() {
            self.end(End::Abandoned);
        }
        self.liveness = None;
    }

    fn check(&mut self) -> Option<End> {
        self.liveness.as_mut().and_then(Liveness::check)
    }

    fn end(&mut self, end: End) {
        self.ended = Some(end);
        self.liveness = None;
    }

    pub fn ended(&self) -> Option<End> {
        self.ended
    }

    /// Written after the last event: the last chunk, or nothing where hyper ends the body.
    pub fn terminator(&self) -> &'static [u8] {
        match self.framing {
            Framing::Sse => b"",
            Framing::Chunked => LAST_CHUNK,
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The id of the last change sent.
    pub fn last(&self) -> u64 {
        self.last
    }

    fn framed(&self, b: Bytes) -> Bytes {
        match self.framing {
            Framing::Sse => b,
            Framing::Chunked => chunk(&b),
        }
    }

    fn id_of(&self, ev: &StoredEvent) -> u64 {
        match self.scope {
            Scope::One(_) => ev.event.version(),
            Scope::All => ev.audit_id,
        }
    }

    fn in_scope(&self, ev: &StoredEvent) -> bool {
        match &self.scope {
            Scope::One(name) => ev.event.name() == &**name,
            Scope::All => true,
        }
    }

    /// The current state of everything in scope, with ids past `last` only.
    fn snapshot(&mut self, image: &Image, out: &mut Vec<Bytes>) {
        match &self.scope {
            Scope::One(_) => {
                if let Some(s) = image.switches.first()
                    && s.version > self.last
                {
                    self.last = s.version;
                    out.push(self.switch_event(s, s.version));
                }
            }
            Scope::All => {
                if image.last_audit_id > self.last {
                    self.last = image.last_audit_id;
                    for s in &image.switches {
                        out.push(self.switch_event(s, image.last_audit_id));
                    }
                }
            }
        }
    }

    fn switch_event(&self, s: &Switch, id: u64) -> Bytes {
        let json = serde_json::to_string(s).unwrap_or_else(|_| "{}".into());
        self.framed(sse_frame(brb_api::events::SWITCH, Some(id), &json))
    }

    /// Says the stream skips to the current state, then sends it. One switch gone from the
    /// image (deleted meanwhile) ends the stream: the watcher reconnects and learns it.
    fn resync(&mut self, image: &Image, reason: ResyncReason, out: &mut Vec<Bytes>) {
        let Some(current) = current_id(&self.scope, image) else {
            self.finish(End::Deleted, out);
            return;
        };
        if current <= self.last {
            return;
        }
        let note = Resync {
            after: self.last,
            current,
            reason,
        };
        let json = serde_json::to_string(&note).unwrap_or_else(|_| "{}".into());
        out.push(self.framed(sse_frame(brb_api::events::RESYNC, None, &json)));
        self.snapshot(image, out);
    }

    fn finish(&mut self, end: End, out: &mut Vec<Bytes>) {
        self.end(end);
        if !self.terminator().is_empty() {
            out.push(Bytes::from_static(self.terminator()));
        }
    }
}

static KEEPALIVE_BYTES: Bytes = Bytes::from_static(KEEPALIVE);
static KEEPALIVE_CHUNK_BYTES: Bytes = Bytes::from_static(KEEPALIVE_CHUNK);

/// Whether a replay answer brings the stream up to the image's `current` id. One switch: its
/// versions have no gaps, so the answer must reach `current`. All switches: audit ids of token
/// entries carry no event, so an answer shorter than asked also means the store had no more
/// changes (and the store is never behind the hub).
fn reaches(scope: &Scope, events: &[StoredEvent], limit: u32, current: u64) -> bool {
    let last = events.last().map(|e| match scope {
        Scope::One(_) => e.event.version(),
        Scope::All => e.audit_id,
    });
    match scope {
        Scope::One(_) => last.is_some_and(|v| v >= current),
        Scope::All => events.len() < limit as usize || last.is_some_and(|id| id >= current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{DeletedSwitch, Source, SwitchState};
    use proptest::prelude::*;
    use std::sync::Mutex;

    /// A liveness answer the test sets.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Option<End>>>);

    impl Fake {
        fn end(&self, e: End) {
            *self.0.lock().unwrap() = Some(e);
        }
    }

    impl Liveness for Fake {
        fn check(&mut self) -> Option<End> {
            *self.0.lock().unwrap()
        }
    }

    const EVERY: Duration = Duration::from_secs(15);

    fn sw(name: &str, version: u64) -> Switch {
        Switch {
            name: name.into(),
            description: String::new(),
            primary: name == "workers",
            state: if version.is_multiple_of(2) {
                SwitchState::Paused
            } else {
                SwitchState::Running
            },
            version,
            changed_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            changed_by: "t".into(),
            source: Source::Api,
            reason: None,
            ramp: None,
            resume_request: None,
        }
    }

    /// Version `v` of `name`, audit id `id`.
    fn ev(name: &str, v: u64, id: u64) -> StoredEvent {
        StoredEvent {
            audit_id: id,
            event: SwitchEvent::Changed(sw(name, v)),
        }
    }

    fn image_one(v: u64) -> Image {
        Image {
            switches: vec![Arc::new(sw("workers", v))],
            last_audit_id: v,
        }
    }

    fn one() -> Scope {
        Scope::One(Arc::from("workers"))
    }

    fn open(
        scope: Scope,
        resume: Option<u64>,
        image: &Image,
        fetched: Fetched,
        framing: Framing,
    ) -> (Subscription<Fake>, Vec<Bytes>, Fake, Instant) {
        let t0 = Instant::now();
        let live = Fake::default();
        let (s, out) = Subscription::open(
            scope,
            framing,
            resume,
            image,
            false,
            fetched,
            t0,
            EVERY,
            live.clone(),
        );
        (s, out, live, t0)
    }

    /// The SSE text of one write, without its chunk framing if it has one.
    fn unframe(b: &[u8]) -> String {
        let text = String::from_utf8_lossy(b).into_owned();
        match text.split_once("\r\n") {
            Some((len, rest)) if usize::from_str_radix(len, 16).is_ok() => {
                rest.trim_end_matches("\r\n").to_string()
            }
            _ => text,
        }
    }

    /// `(event, id)` of each SSE event in `bytes` (comments and the preamble skipped).
    fn events(out: &[Bytes]) -> Vec<(String, Option<u64>)> {
        let mut v = Vec::new();
        for b in out {
            let text = unframe(b);
            let Some(rest) = text.strip_prefix("event: ") else {
                continue;
            };
            let name = rest.lines().next().unwrap().to_string();
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(|i| i.parse().unwrap());
            v.push((name, id));
        }
        v
    }

    fn ids(out: &[Bytes]) -> Vec<u64> {
        events(out).into_iter().filter_map(|(_, id)| id).collect()
    }

    #[test]
    fn frames_are_well_formed_sse_and_chunks() {
        let f = sse_frame("switch", Some(7), r#"{"a":1}"#);
        assert_eq!(&f[..], b"event: switch\nid: 7\ndata: {\"a\":1}\n\n");
        let f = sse_frame("workers", None, "{}");
        assert_eq!(&f[..], b"event: workers\ndata: {}\n\n");
        assert_eq!(&chunk(b"hello")[..], b"5\r\nhello\r\n");
        let big = vec![b'a'; 300];
        let c = chunk(&big);
        assert!(c.starts_with(b"12c\r\n"));
        assert!(c.ends_with(b"a\r\n"));
        assert_eq!(c.len(), 5 + 300 + 2);
        assert!(chunk(b"").is_empty(), "an empty chunk would end the body");
        assert_eq!(KEEPALIVE_CHUNK, &chunk(KEEPALIVE)[..]);
    }

    #[test]
    fn a_fresh_stream_starts_with_the_current_state() {
        let (s, out, ..) = open(one(), None, &image_one(7), Fetched::Nothing, Framing::Sse);
        assert_eq!(&out[0][..], PREAMBLE);
        assert_eq!(events(&out), vec![("switch".into(), Some(7))]);
        assert_eq!(s.last(), 7);
    }

    #[test]
    fn a_resume_within_the_limit_replays_every_step() {
        let image = image_one(40);
        assert_eq!(
            need(&one(), Some(10), &image, false),
            Need::History {
                after: 10,
                limit: 30
            }
        );
        let history = (11..=40).map(|v| ev("workers", v, v)).collect();
        let (s, out, ..) = open(
            one(),
            Some(10),
            &image,
            Fetched::History(history),
            Framing::Sse,
        );
        assert_eq!(ids(&out), (11..=40).collect::<Vec<_>>());
        assert_eq!(s.last(), 40);
    }

    /// The defect this module exists for: 1,501 versions behind, the stream must end at the
    /// current version, not at the end of one replay batch.
    #[test]
    fn a_resume_past_the_limit_sends_the_current_state_and_says_so() {
        let image = image_one(1502);
        assert_eq!(need(&one(), Some(1), &image, false), Need::Nothing);
        let (s, out, ..) = open(one(), Some(1), &image, Fetched::Nothing, Framing::Sse);
        assert_eq!(
            events(&out),
            vec![("resync".into(), None), ("switch".into(), Some(1502))]
        );
        let note = String::from_utf8_lossy(&out[1]);
        assert!(
            note.contains(r#"{"after":1,"current":1502,"reason":"too_far_behind"}"#),
            "{note}"
        );
        assert_eq!(s.last(), 1502);
    }

    #[test]
    fn a_short_or_failed_history_falls_back_to_the_image() {
        let image = image_one(40);
        for fetched in [
            Fetched::Failed,
            Fetched::History((11..=20).map(|v| ev("workers", v, v)).collect()),
            Fetched::History(Vec::new()),
        ] {
            let (s, out, ..) = open(one(), Some(10), &image, fetched, Framing::Sse);
            assert_eq!(
                events(&out),
                vec![("resync".into(), None), ("switch".into(), Some(40))]
            );
            assert!(String::from_utf8_lossy(&out[1]).contains("history_unavailable"));
            assert_eq!(s.last(), 40);
        }
    }

    #[test]
    fn an_id_ahead_of_the_image_is_kept_unless_the_store_denies_it() {
        let image = image_one(5);
        assert_eq!(need(&one(), Some(6), &image, true), Need::Ahead(6));
        assert_eq!(need(&one(), Some(6), &image, false), Need::Nothing);
        let t0 = Instant::now();
        let (s, out) = Subscription::open(
            one(),
            Framing::Sse,
            Some(6),
            &image,
            true,
            Fetched::Ahead(true),
            t0,
            EVERY,
            Fake::default(),
        );
        assert!(events(&out).is_empty());
        assert_eq!(s.last(), 6);
        // The store cannot be asked (this replica is cut off): never back to 5.
        let (s, out) = Subscription::open(
            one(),
            Framing::Sse,
            Some(6),
            &image,
            true,
            Fetched::Failed,
            t0,
            EVERY,
            Fake::default(),
        );
        assert!(
            events(&out).is_empty(),
            "a resumed stream must not go backwards"
        );
        assert_eq!(s.last(), 6);
        // The store says there is no version 6: the current state.
        let (s, out) = Subscription::open(
            one(),
            Framing::Sse,
            Some(6),
            &image,
            true,
            Fetched::Ahead(false),
            t0,
            EVERY,
            Fake::default(),
        );
        assert_eq!(ids(&out), vec![5]);
        assert_eq!(s.last(), 5);
        let (s, out, ..) = open(one(), Some(5), &image, Fetched::Nothing, Framing::Sse);
        assert!(events(&out).is_empty(), "up to date: nothing to send");
        assert_eq!(s.last(), 5);
    }

    #[test]
    fn frames_pass_the_scope_and_the_last_filter_once() {
        let (mut s, ..) = open(one(), None, &image_one(3), Fetched::Nothing, Framing::Sse);
        assert_eq!(s.offer(&Frame::change(&ev("workers", 3, 3))), Offer::Skip);
        assert_eq!(s.offer(&Frame::change(&ev("other", 9, 4))), Offer::Skip);
        assert_eq!(
            s.offer(&Frame::ephemeral("workers", "{}")),
            Offer::Skip,
            "ephemeral events go to /events only"
        );
        let f = Frame::change(&ev("workers", 4, 5));
        assert!(
            matches!(s.offer(&f), Offer::Deliver(b) if ids(std::slice::from_ref(b)) == vec![4])
        );
        assert_eq!(s.offer(&f), Offer::Skip, "the same change twice");
        assert_eq!(s.last(), 4);
    }

    #[test]
    fn the_all_stream_uses_audit_ids_and_carries_ephemeral_events() {
        let image = Image {
            switches: vec![Arc::new(sw("workers", 2)), Arc::new(sw("other", 1))],
            last_audit_id: 9,
        };
        let (mut s, out, ..) = open(Scope::All, None, &image, Fetched::Nothing, Framing::Sse);
        assert_eq!(ids(&out), vec![9, 9]);
        assert_eq!(s.offer(&Frame::change(&ev("other", 2, 9))), Offer::Skip);
        assert!(matches!(
            s.offer(&Frame::change(&ev("other", 2, 10))),
            Offer::Deliver(_)
        ));
        assert!(matches!(
            s.offer(&Frame::ephemeral("workers", "{}")),
            Offer::Deliver(b) if b.starts_with(b"event: workers\ndata: {}")
        ));
        // A deletion does not end the all-switches stream.
        let del = Frame::change(&StoredEvent {
            audit_id: 11,
            event: SwitchEvent::Deleted(DeletedSwitch {
                name: "other".into(),
                version: 3,
            }),
        });
        assert!(matches!(s.offer(&del), Offer::Deliver(_)));
        assert_eq!(s.ended(), None);
    }

    #[test]
    fn all_stream_replay_is_complete_when_the_store_runs_out() {
        // Audit ids 6 and 7 are token entries: no switch event, nothing missed.
        let image = Image {
            switches: vec![Arc::new(sw("workers", 2))],
            last_audit_id: 7,
        };
        assert_eq!(
            need(&Scope::All, Some(3), &image, false),
            Need::History { after: 3, limit: 4 }
        );
        let (s, out, ..) = open(
            Scope::All,
            Some(3),
            &image,
            Fetched::History(vec![ev("workers", 2, 5)]),
            Framing::Sse,
        );
        assert_eq!(ids(&out), vec![5]);
        assert_eq!(s.last(), 5);
    }

    #[test]
    fn a_deleted_switch_ends_its_stream_and_nothing_follows_the_end() {
        let (mut s, ..) = open(
            one(),
            None,
            &image_one(3),
            Fetched::Nothing,
            Framing::Chunked,
        );
        let del = Frame::change(&StoredEvent {
            audit_id: 4,
            event: SwitchEvent::Deleted(DeletedSwitch {
                name: "workers".into(),
                version: 4,
            }),
        });
        assert!(matches!(s.offer(&del), Offer::Last(_)));
        assert_eq!(s.ended(), Some(End::Deleted));
        assert_eq!(s.terminator(), LAST_CHUNK);
        assert_eq!(s.offer(&Frame::change(&ev("workers", 5, 5))), Offer::Gone);
        assert_eq!(s.offer(&Frame::Wake), Offer::Gone);
        assert_eq!(s.tick(Instant::now() + EVERY * 2), Offer::Gone);
        let mut out = Vec::new();
        s.lagged(&image_one(9), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_wake_ends_the_stream_only_when_liveness_says_so() {
        let (mut s, _, live, _) = open(
            one(),
            None,
            &image_one(1),
            Fetched::Nothing,
            Framing::Chunked,
        );
        assert_eq!(s.offer(&Frame::Wake), Offer::Skip);
        live.end(End::TokenEnded);
        assert_eq!(s.offer(&Frame::Wake), Offer::End);
        assert_eq!(s.ended(), Some(End::TokenEnded));
        assert_eq!(s.offer(&Frame::change(&ev("workers", 2, 2))), Offer::Gone);
    }

    /// Its liveness holds the stream's token lease: it must be let go when the stream ends,
    /// not when the adapter drops the core (the fan-out thread drops its entries lazily).
    #[test]
    fn an_ended_stream_lets_go_of_its_resources() {
        for how in ["wake", "deleted", "abandon"] {
            let (mut s, _, live, _) = open(
                one(),
                None,
                &image_one(1),
                Fetched::Nothing,
                Framing::Chunked,
            );
            assert_eq!(Arc::strong_count(&live.0), 2);
            match how {
                "wake" => {
                    live.end(End::TokenEnded);
                    s.offer(&Frame::Wake);
                }
                "deleted" => {
                    s.offer(&Frame::change(&StoredEvent {
                        audit_id: 2,
                        event: SwitchEvent::Deleted(DeletedSwitch {
                            name: "workers".into(),
                            version: 2,
                        }),
                    }));
                }
                _ => s.abandon(),
            }
            assert!(s.ended().is_some());
            assert_eq!(Arc::strong_count(&live.0), 1, "{how}: liveness still held");
        }
    }

    #[test]
    fn a_stream_opened_during_shutdown_ends_after_its_first_bytes() {
        let live = Fake::default();
        live.end(End::Shutdown);
        let (s, out) = Subscription::open(
            one(),
            Framing::Chunked,
            None,
            &image_one(1),
            false,
            Fetched::Nothing,
            Instant::now(),
            EVERY,
            live,
        );
        assert_eq!(s.ended(), Some(End::Shutdown));
        assert_eq!(&out.last().unwrap()[..], LAST_CHUNK);
        assert_eq!(ids(&out), vec![1]);
    }

    #[test]
    fn keep_alives_follow_the_clock_passed_in() {
        let (mut s, _, live, t0) = open(one(), None, &image_one(1), Fetched::Nothing, Framing::Sse);
        assert_eq!(s.deadline(), t0 + EVERY);
        assert_eq!(s.tick(t0 + EVERY - Duration::from_millis(1)), Offer::Skip);
        assert_eq!(s.tick(t0 + EVERY), Offer::Deliver(&KEEPALIVE_BYTES));
        assert_eq!(s.deadline(), t0 + EVERY * 2);
        // A late tick counts the period from when it ran (no burst of catch-up keep-alives).
        assert_eq!(s.tick(t0 + EVERY * 5), Offer::Deliver(&KEEPALIVE_BYTES));
        assert_eq!(s.tick(t0 + EVERY * 5), Offer::Skip);
        assert_eq!(s.deadline(), t0 + EVERY * 6);
        live.end(End::TokenEnded);
        assert_eq!(s.tick(t0 + EVERY * 6), Offer::End);
    }

    #[test]
    fn chunked_streams_frame_every_event_as_a_chunk() {
        let (mut s, out, _, t0) = open(
            one(),
            None,
            &image_one(1),
            Fetched::Nothing,
            Framing::Chunked,
        );
        for b in &out {
            let text = String::from_utf8_lossy(b);
            let (len, body) = text.split_once("\r\n").unwrap();
            assert_eq!(usize::from_str_radix(len, 16).unwrap() + 2, body.len());
        }
        assert_eq!(s.tick(t0 + EVERY), Offer::Deliver(&KEEPALIVE_CHUNK_BYTES));
        let f = Frame::change(&ev("workers", 2, 2));
        let Offer::Deliver(b) = s.offer(&f) else {
            panic!("not delivered")
        };
        let text = String::from_utf8_lossy(b);
        let (len, body) = text.split_once("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(len, 16).unwrap() + 2, body.len());
        assert_eq!(s.offer(&f), Offer::Skip, "delivered twice");
    }

    #[test]
    fn a_lagging_stream_gets_the_current_state_and_skips_what_it_covers() {
        let (mut s, ..) = open(one(), None, &image_one(3), Fetched::Nothing, Framing::Sse);
        let mut out = Vec::new();
        s.lagged(&image_one(2000), &mut out);
        assert_eq!(
            events(&out),
            vec![("resync".into(), None), ("switch".into(), Some(2000))]
        );
        assert!(String::from_utf8_lossy(&out[0]).contains("\"reason\":\"lagged\""));
        // Frames still queued behind the miss are older: skipped.
        assert_eq!(
            s.offer(&Frame::change(&ev("workers", 1500, 1500))),
            Offer::Skip
        );
        assert!(matches!(
            s.offer(&Frame::change(&ev("workers", 2001, 2001))),
            Offer::Deliver(_)
        ));
        // Nothing newer in the image: nothing to say.
        let mut out = Vec::new();
        s.lagged(&image_one(2001), &mut out);
        assert!(out.is_empty());
        // The switch is gone from the image: the stream ends.
        let mut out = Vec::new();
        s.lagged(&Image::default(), &mut out);
        assert_eq!(s.ended(), Some(End::Deleted));
    }

    proptest! {
        /// Whatever the resume point, the history answer and the overlap between the image and
        /// the broadcast, a stream's ids strictly increase and it ends at the newest version;
        /// within the replay limit it carries every version after its resume point.
        #[test]
        fn every_stream_ends_at_the_newest_version(
            newest in 1u64..3000,
            image_back in 0u64..50,
            overlap in 0u64..50,
            resume in proptest::option::of(0u64..3100),
            history_fails in any::<bool>(),
            chunked in any::<bool>(),
        ) {
            let current = newest.saturating_sub(image_back).max(1);
            let image = image_one(current);
            let fetched = match need(&one(), resume, &image, false) {
                Need::History { .. } if history_fails => Fetched::Failed,
                Need::History { after, limit } => {
                    // The store is at `newest` (it is never behind the hub).
                    Fetched::History(
                        (after + 1..=newest).take(limit as usize).map(|v| ev("workers", v, v)).collect(),
                    )
                }
                Need::Ahead(_) => unreachable!("not shared"),
                Need::Nothing => Fetched::Nothing,
            };
            let framing = if chunked { Framing::Chunked } else { Framing::Sse };
            let (mut s, out, ..) = open(one(), resume, &image, fetched, framing);
            let mut seen = ids(&out);
            // Subscribed before the image was read: the broadcast repeats a few older frames.
            let first = current.saturating_sub(overlap).max(1);
            for v in first..=newest {
                let f = Frame::change(&ev("workers", v, v));
                if let Offer::Deliver(b) = s.offer(&f) {
                    seen.extend(ids(std::slice::from_ref(b)));
                }
            }
            prop_assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
            prop_assert_eq!(s.last(), newest);
            prop_assert_eq!(seen.last().copied().unwrap_or(s.last()), s.last());
            if let Some(r) = resume
                && r < current
                && current - r <= REPLAY_LIMIT
                && !history_fails
            {
                prop_assert_eq!(seen, (r + 1..=newest).collect::<Vec<_>>());
            }
        }
    }
}
