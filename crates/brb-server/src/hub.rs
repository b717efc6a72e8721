//! The fan-out hub: the in-memory image of every switch and the broadcast of every change.
//!
//! The store is the truth; the hub is what it looked like at the last commit. Writers publish
//! here only after their transaction committed (and while holding the write lock, so events are
//! broadcast in version order). With replicas, changes committed elsewhere arrive through the
//! same lock from `propagate.rs`, in audit-id order; publishing is idempotent by audit id. Each change is encoded once, as ready-to-send SSE frames in
//! `Bytes`, and every watcher gets a reference-counted handle to the same bytes: no per-watcher
//! formatting or allocation on the fan-out path.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use brb_api::Switch;
use brb_store::{StoredEvent, SwitchEvent};
use bytes::Bytes;
use tokio::sync::{broadcast, watch};

/// How many changes a slow watcher may fall behind before it re-reads from the store.
const BROADCAST_CAPACITY: usize = 1024;

/// One change, encoded for both kinds of stream.
#[derive(Debug)]
pub struct Frame {
    pub switch: Arc<str>,
    pub version: u64,
    pub audit_id: u64,
    pub deleted: bool,
    /// Not a change: worker counts or samples, sent only on `/events`, without an `id:` (so a
    /// resumed stream never replays it and `Last-Event-ID` keeps pointing at changes).
    pub ephemeral: bool,
    /// For `/switches/{name}/events`: `id:` is the switch version.
    pub by_version: Bytes,
    /// For `/events`: `id:` is the global audit id.
    pub by_id: Bytes,
    /// The same two, framed as HTTP/1.1 chunks for streams that write their socket directly
    /// (`net.rs`): one `write` per delivery, no per-watcher framing.
    pub by_version_chunk: Bytes,
    pub by_id_chunk: Bytes,
}

type Slot = watch::Sender<Option<Arc<Switch>>>;

pub struct Hub {
    tx: broadcast::Sender<Arc<Frame>>,
    current: RwLock<HashMap<String, Slot>>,
    last_audit_id: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes one SSE event. `data` is single-line JSON, so one `data:` line suffices.
pub fn sse_frame(event: &str, id: u64, data: &str) -> Bytes {
    let mut s = String::with_capacity(event.len() + data.len() + 32);
    let _ = write!(s, "event: {event}\nid: {id}\ndata: {data}\n\n");
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

impl Frame {
    pub fn new(ev: &StoredEvent) -> Frame {
        let (name, json) = encode(&ev.event);
        let by_version = sse_frame(name, ev.event.version(), &json);
        let by_id = sse_frame(name, ev.audit_id, &json);
        Frame {
            switch: Arc::from(ev.event.name()),
            version: ev.event.version(),
            audit_id: ev.audit_id,
            deleted: matches!(ev.event, SwitchEvent::Deleted(_)),
            ephemeral: false,
            by_version_chunk: chunk(&by_version),
            by_id_chunk: chunk(&by_id),
            by_version,
            by_id,
        }
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Hub {
            tx,
            current: RwLock::new(HashMap::new()),
            last_audit_id: AtomicU64::new(0),
        }
    }

    /// Replaces the image with what the store holds (at start, or after a reconnect).
    pub fn load(&self, switches: Vec<Switch>, last_audit_id: u64) {
        let mut map = self.current.write().unwrap_or_else(|e| e.into_inner());
        for s in switches {
            let name = s.name.clone();
            let s = Some(Arc::new(s));
            match map.get(&name) {
                Some(slot) => {
                    slot.send_replace(s);
                }
                None => {
                    map.insert(name, watch::channel(s).0);
                }
            }
        }
        self.last_audit_id
            .fetch_max(last_audit_id, Ordering::SeqCst);
    }

    /// Records a committed change and sends it to every watcher. Idempotent: a change at or
    /// below the last published audit id is dropped (with several replicas the same change can
    /// arrive twice, from the local write path and from the store's feed), and returns false.
    /// Callers publish in audit-id order, which is commit order.
    pub fn publish(&self, ev: StoredEvent) -> bool {
        let frame = Arc::new(Frame::new(&ev));
        // Everything under the map lock, so two publishers can neither both pass the check
        // nor broadcast out of order.
        let mut map = self.current.write().unwrap_or_else(|e| e.into_inner());
        if ev.audit_id <= self.last_audit_id.load(Ordering::SeqCst) {
            return false;
        }
        self.last_audit_id.fetch_max(ev.audit_id, Ordering::SeqCst);
        let value = match ev.event {
            SwitchEvent::Changed(s) => Some(Arc::new(s)),
            SwitchEvent::Deleted(_) => None,
        };
        match map.get(&*frame.switch) {
            Some(slot) => {
                slot.send_replace(value);
            }
            None => {
                map.insert(frame.switch.to_string(), watch::channel(value).0);
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(frame);
        true
    }

    /// Sends a non-change event (`workers`, `samples`) to `/events` watchers.
    pub fn publish_ephemeral(&self, switch: &str, event: &str, json: &str) {
        let mut s = String::with_capacity(event.len() + json.len() + 16);
        let _ = write!(s, "event: {event}\ndata: {json}\n\n");
        let _ = self.tx.send(Arc::new(Frame {
            switch: Arc::from(switch),
            version: 0,
            audit_id: 0,
            deleted: false,
            ephemeral: true,
            by_version: Bytes::new(),
            by_version_chunk: Bytes::new(),
            by_id_chunk: chunk(s.as_bytes()),
            by_id: Bytes::from(s),
        }));
    }

    /// Wakes every event stream with an empty frame (at shutdown: streams then see the flag).
    /// Cheaper than each stream also waiting on a shutdown signal: that would lock one shared
    /// waiter list on every event of every stream.
    pub fn wake_all(&self) {
        let _ = self.tx.send(Arc::new(Frame {
            switch: Arc::from(""),
            version: 0,
            audit_id: 0,
            deleted: false,
            ephemeral: true,
            by_version: Bytes::new(),
            by_id: Bytes::new(),
            by_version_chunk: Bytes::new(),
            by_id_chunk: Bytes::new(),
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Switch>> {
        let map = self.current.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).and_then(|slot| slot.borrow().clone())
    }

    /// Live switches, primary first, then by name.
    pub fn list(&self) -> Vec<Arc<Switch>> {
        let map = self.current.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map.values().filter_map(|s| s.borrow().clone()).collect();
        out.sort_by(|a, b| b.primary.cmp(&a.primary).then_with(|| a.name.cmp(&b.name)));
        out
    }

    pub fn primary(&self) -> Option<Arc<Switch>> {
        self.list().into_iter().find(|s| s.primary)
    }

    /// A receiver that wakes on every change of one switch (for long-poll).
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<Option<Arc<Switch>>>> {
        let map = self.current.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).map(|s| s.subscribe())
    }

    pub fn last_audit_id(&self) -> u64 {
        self.last_audit_id.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{Source, SwitchState};

    fn sw(name: &str, version: u64, state: SwitchState) -> Switch {
        Switch {
            name: name.into(),
            description: String::new(),
            primary: name == "workers",
            state,
            version,
            changed_at: chrono::Utc::now(),
            changed_by: "t".into(),
            source: Source::Api,
            reason: None,
            ramp: None,
        }
    }

    #[test]
    fn frame_is_well_formed_sse() {
        let f = sse_frame("switch", 7, r#"{"a":1}"#);
        assert_eq!(&f[..], b"event: switch\nid: 7\ndata: {\"a\":1}\n\n");
    }

    #[tokio::test]
    async fn publish_updates_image_and_broadcasts_shared_bytes() {
        let hub = Hub::new();
        hub.load(vec![sw("workers", 1, SwitchState::Running)], 1);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        let mut w = hub.watch("workers").unwrap();
        hub.publish(StoredEvent {
            audit_id: 2,
            event: SwitchEvent::Changed(sw("workers", 2, SwitchState::Paused)),
        });
        let fa = a.recv().await.unwrap();
        let fb = b.recv().await.unwrap();
        assert!(
            Arc::ptr_eq(&fa, &fb),
            "every watcher shares one encoded frame"
        );
        assert_eq!(fa.version, 2);
        assert!(
            std::str::from_utf8(&fa.by_id)
                .unwrap()
                .starts_with("event: switch\nid: 2\n")
        );
        w.changed().await.unwrap();
        assert_eq!(hub.get("workers").unwrap().state, SwitchState::Paused);
        assert_eq!(hub.last_audit_id(), 2);
        // The same change again (from another path) is dropped.
        assert!(!hub.publish(StoredEvent {
            audit_id: 2,
            event: SwitchEvent::Changed(sw("workers", 2, SwitchState::Paused)),
        }));
        assert!(a.try_recv().is_err());
    }

    #[test]
    fn chunks_are_http11_chunked_framing() {
        assert_eq!(&chunk(b"hello")[..], b"5\r\nhello\r\n");
        let big = vec![b'a'; 300];
        let c = chunk(&big);
        assert!(c.starts_with(b"12c\r\n"));
        assert!(c.ends_with(b"a\r\n"));
        assert_eq!(c.len(), 5 + 300 + 2);
        assert!(chunk(b"").is_empty(), "an empty chunk would end the body");
    }

    #[test]
    fn list_puts_primary_first() {
        let hub = Hub::new();
        hub.load(
            vec![
                sw("alpha", 1, SwitchState::Running),
                sw("workers", 1, SwitchState::Running),
            ],
            2,
        );
        let names: Vec<_> = hub.list().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, vec!["workers", "alpha"]);
    }
}
