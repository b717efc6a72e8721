//! The fan-out hub: the in-memory image of every switch and the broadcast of every change.
//!
//! The store is the truth; the hub is what it looked like at the last commit. Writers publish
//! here only after their transaction committed (and while holding the write lock, so events are
//! broadcast in version order). With replicas, changes committed elsewhere arrive through the
//! same lock from `propagate.rs`, in audit-id order; publishing is idempotent by audit id. Each change is encoded once, as ready-to-send SSE frames in
//! `Bytes`, and every watcher gets a reference-counted handle to the same bytes: no per-watcher
//! formatting or allocation on the fan-out path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use brb_api::Switch;
use brb_store::{StoredEvent, SwitchEvent};
use tokio::sync::{broadcast, watch};

use crate::subscription::{Frame, Image, Scope};

/// How many changes a slow watcher may fall behind before it is sent the current state.
const BROADCAST_CAPACITY: usize = 1024;

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
        let frame = Arc::new(Frame::change(&ev));
        // Everything under the map lock, so two publishers can neither both pass the check
        // nor broadcast out of order.
        let mut map = self.current.write().unwrap_or_else(|e| e.into_inner());
        if ev.audit_id <= self.last_audit_id.load(Ordering::SeqCst) {
            return false;
        }
        self.last_audit_id.fetch_max(ev.audit_id, Ordering::SeqCst);
        let value = match &ev.event {
            SwitchEvent::Changed(s) => Some(Arc::new(s.clone())),
            SwitchEvent::Deleted(_) => None,
        };
        let name = ev.event.name();
        match map.get(name) {
            Some(slot) => {
                slot.send_replace(value);
            }
            None => {
                map.insert(name.to_string(), watch::channel(value).0);
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(frame);
        true
    }

    /// Sends a non-change event (`workers`, `samples`) to `/events` watchers.
    pub fn publish_ephemeral(&self, event: &str, json: &str) {
        let _ = self.tx.send(Arc::new(Frame::ephemeral(event, json)));
    }

    /// Wakes every event stream (at shutdown, and when tokens change): each asks its liveness
    /// whether it must end. Cheaper than each stream also waiting on a shutdown signal: that
    /// would lock one shared waiter list on every event of every stream.
    pub fn wake_all(&self) {
        let _ = self.tx.send(Arc::new(Frame::Wake));
    }

    /// The live switches in `scope` and the last audit id, read at one instant (under the
    /// lock `publish` takes), for a stream to start or catch up from.
    pub fn image(&self, scope: &Scope) -> Image {
        let map = self.current.read().unwrap_or_else(|e| e.into_inner());
        let switches = match scope {
            Scope::One(name) => map
                .get(&**name)
                .and_then(|slot| slot.borrow().clone())
                .into_iter()
                .collect(),
            Scope::All => map.values().filter_map(|s| s.borrow().clone()).collect(),
        };
        Image {
            switches,
            last_audit_id: self.last_audit_id.load(Ordering::SeqCst),
        }
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
            resume_request: None,
        }
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
        let Frame::Change(c) = &*fa else {
            panic!("a change frame")
        };
        assert_eq!((c.version, c.audit_id), (2, 2));
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
