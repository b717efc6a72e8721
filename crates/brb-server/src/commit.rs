//! The one write path: every change of switches and tokens goes through [`AppState::commit`].
//!
//! The promise "a watcher always ends at the committed state" holds only if nothing commits
//! without publishing: a change written to the store but not to the hub leaves every stream
//! and long-poll of this process on the old state, with nothing to correct it. That used to be
//! kept by convention (take the lock, write, publish) in every handler. Here it is kept by
//! types: the store can be written only through this module ([`Writer`] keeps it private), an
//! operation ([`Op`]) says what it committed, and `commit` publishes it (to the hub, or to the
//! token book) under the same lock, so changes are broadcast in commit order. Handlers read
//! through [`Reads`], which has no write methods; the background loops' own records (the
//! notification outbox, token last-use times, the shared worker picture) go through
//! [`Bookkeeping`], which cannot touch switches or tokens.

use std::future::Future;
use std::sync::Arc;

use brb_api::{AuditEntry, DeletedSwitch, Switch};
use brb_store::{
    Actor, AuditQuery, NewNotification, OutboxItem, SetOutcome, StateChange, Store, StoreError,
    StoredEvent, SwitchEvent, TokenRecord, TokenUse,
};
use chrono::{DateTime, Utc};

use crate::error::{ApiError, ApiResult};
use crate::{AppState, Config};

/// The store's write side and the lock that orders commit + publish.
pub(crate) struct Writer {
    store: Arc<dyn Store>,
    lock: tokio::sync::Mutex<()>,
}

impl Writer {
    pub(crate) fn new(store: Arc<dyn Store>) -> (Writer, Reads, Bookkeeping) {
        (
            Writer {
                store: Arc::clone(&store),
                lock: tokio::sync::Mutex::new(()),
            },
            Reads(Arc::clone(&store)),
            Bookkeeping(store),
        )
    }

    /// Creates the primary switch and the configured ones if missing. At start, before the
    /// hub exists (it is then loaded from the store, so there is nothing to publish).
    pub(crate) async fn seed(&self, config: &Config) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.store
            .ensure_switch(
                &config.primary.name,
                &config.primary.description,
                true,
                Actor::system(),
            )
            .await
            .context("creating the primary switch")?;
        for s in &config.switches {
            self.store
                .ensure_switch(&s.name, &s.description, false, Actor::system())
                .await
                .with_context(|| format!("creating switch {:?} from the config", s.name))?;
        }
        Ok(())
    }
}

/// What an operation committed, to publish.
pub(crate) enum Publish {
    /// A switch change: to the hub (and every watcher), then the notifier.
    Change(StoredEvent),
    /// A token row: to the token book (streams re-check their leases).
    Token(TokenRecord),
    /// Nothing was written.
    Nothing,
}

/// One write. `run` is its transaction (the store commits before it returns); what it says
/// to publish is published by [`AppState::commit`] under the write lock.
pub(crate) trait Op: Send {
    type Out: Send;

    fn run(
        self,
        store: &dyn Store,
        config: &Config,
    ) -> impl Future<Output = ApiResult<(Self::Out, Publish)>> + Send;

    /// After the commit was published and the lock released.
    fn after(_out: &Self::Out, _state: &AppState) {}
}

impl AppState {
    /// Commits `op` and publishes what it committed, in commit order: the only way to change
    /// a switch or a token.
    pub(crate) async fn commit<O: Op>(&self, op: O) -> ApiResult<O::Out> {
        let w = &self.inner.writer;
        let _g = w.lock.lock().await;
        let (out, publish) = op.run(&*w.store, self.config()).await?;
        match publish {
            Publish::Change(ev) => {
                self.publish_committed(ev).await;
                drop(_g);
                self.notify_wakeup().notify_one();
            }
            Publish::Token(rec) => self.tokens().upsert(&rec),
            Publish::Nothing => {}
        }
        O::after(&out, self);
        Ok(out)
    }

    /// Publishes a change this process just committed; the caller holds the write lock.
    ///
    /// Alone on the store (SQLite), the change is the next one, published as is. With
    /// replicas, other changes may have committed just before it that this replica has not
    /// heard of yet, so it publishes everything after what the hub has, read back from the
    /// store in audit-id (commit) order, which includes this change. If that read fails the
    /// change is still committed and acknowledged; the propagation task catches up when the
    /// store answers again.
    async fn publish_committed(&self, ev: StoredEvent) {
        if !self.is_shared() {
            self.apply(ev);
            return;
        }
        if let Err(e) = self.catch_up_locked().await {
            tracing::warn!(error = %e, switch = %ev.event.name(), version = ev.event.version(),
                "committed, but cannot read the change back yet; will catch up");
            crate::propagate::request_catch_up(self);
        }
    }

    /// Publishes one committed change to the hub, with its side effects (acknowledgement
    /// timing for state changes). Returns false if the hub already had it.
    fn apply(&self, ev: StoredEvent) -> bool {
        let prev = self.hub().get(ev.event.name());
        let changed = match &ev.event {
            SwitchEvent::Changed(s) => Some(s.clone()),
            SwitchEvent::Deleted(_) => None,
        };
        if !self.hub().publish(ev) {
            return false;
        }
        // A state change (or a ramp ended) of an existing switch starts acknowledgement
        // timing; creations, description edits and resume requests do not. A version with
        // nothing else changed is a fire drill (the only write that changes nothing but the
        // version): every replica records who answers it, in its shared worker records, so
        // any replica can report the drill. The replica that started it times it from the
        // drill's start; the others from when they heard of it, until the report reads the
        // start from the audit log.
        if let (Some(s), Some(p)) = (changed, prev) {
            if p.state != s.state || p.ramp != s.ramp {
                self.workers().on_change(&s);
            } else if s.version == p.version + 1
                && *p
                    == (Switch {
                        version: p.version,
                        ..s.clone()
                    })
            {
                self.workers().on_drill(&s, Utc::now());
            }
        }
        true
    }

    /// Reads every change after what the hub has (committed by any replica) and publishes
    /// them in order. Takes the write lock, so it interleaves correctly with local writes.
    pub(crate) async fn catch_up(&self) -> Result<usize, StoreError> {
        let _g = self.inner.writer.lock.lock().await;
        self.catch_up_locked().await
    }

    async fn catch_up_locked(&self) -> Result<usize, StoreError> {
        const BATCH: u32 = 1000;
        let mut published = 0;
        loop {
            let events = self
                .inner
                .writer
                .store
                .events_after_id(self.hub().last_audit_id(), BATCH)
                .await?;
            let n = events.len();
            for ev in events {
                let (name, version) = (ev.event.name().to_string(), ev.event.version());
                if self.apply(ev) {
                    published += 1;
                    tracing::debug!(switch = %name, version, "published a committed change");
                }
            }
            if n < BATCH as usize {
                return Ok(published);
            }
        }
    }
}

/// A state change (pause, resume, ramp), or an operation on a resume request, or a drill.
/// Out: the switch, and whether its state or release changed (false for a no-op, and for the
/// versions that change neither: requests, rejections, lapses, drills).
pub(crate) struct SetState(pub StateChange);

impl Op for SetState {
    type Out = (Switch, bool);

    async fn run(self, store: &dyn Store, config: &Config) -> ApiResult<((Switch, bool), Publish)> {
        let mut change = self.0;
        change.approval_secs = config.approval_secs(&change.switch);
        // A hold or an extension keeps the switch running: the messages announce pauses and
        // resumes, so these are recorded in the audit log only. An abort is a pause.
        change.notify = match change.control {
            Some(c) if c.action != brb_api::RampAction::Abort => Vec::new(),
            // A guard's step is recorded in the audit log only, like a hold.
            _ if change.guard_op.is_some() => Vec::new(),
            _ => config.channels(),
        };
        if let Some(r) = &change.reason
            && r.chars().count() > brb_api::MAX_REASON_CHARS
        {
            return Err(ApiError::invalid(format!(
                "reason must be at most {} characters",
                brb_api::MAX_REASON_CHARS
            )));
        }
        if let Some(ramp) = &change.ramp {
            if change.to != brb_api::SwitchState::Running {
                return Err(ApiError::invalid(
                    "a ramp applies only to a resume (state running)",
                ));
            }
            ramp.validate()
                .map_err(|e| ApiError::invalid(format!("ramp: {e}")))?;
        }
        if !change.guards.is_empty() && change.to != brb_api::SwitchState::Running {
            return Err(ApiError::invalid(
                "guards apply only to a resume (state running)",
            ));
        }
        brb_api::validate_guards(&change.guards, change.ramp.as_ref())
            .map_err(|e| ApiError::invalid(format!("guards: {e}")))?;
        let (actor, reason) = (change.actor.clone(), change.reason.clone());
        let control = change.control;
        let switch = change.switch.clone();
        match store.set_state(change).await {
            Ok(SetOutcome::Changed { switch: s, entry }) => {
                // Out's flag says the state or the release changed: a resume request, its
                // rejection or lapse, and a drill are versions of their own that change neither,
                // and must not start acknowledgement timing or count as toggles.
                let moved = matches!(
                    entry.action,
                    brb_api::AuditAction::StateChanged | brb_api::AuditAction::RampChanged
                );
                tracing::info!(
                    switch = %s.name,
                    actor = %actor.name,
                    source = %actor.source,
                    remote = ?actor.remote_addr,
                    from = ?entry.from,
                    to = %s.state,
                    version = s.version,
                    reason = ?reason,
                    ramp_action = ?control.map(|c| c.action),
                    "state changed"
                );
                let ev = StoredEvent {
                    audit_id: entry.id,
                    event: SwitchEvent::Changed(s.clone()),
                };
                Ok(((s, moved), Publish::Change(ev)))
            }
            Ok(SetOutcome::Unchanged(s)) => {
                tracing::debug!(switch = %s.name, actor = %actor.name, source = %actor.source,
                    state = %s.state, "state already set; nothing to do");
                Ok(((s, false), Publish::Nothing))
            }
            Err(e) => {
                tracing::warn!(switch = %switch, actor = %actor.name, source = %actor.source,
                    error = %e, "state change refused");
                Err(e.into())
            }
        }
    }

    fn after((s, changed): &(Switch, bool), state: &AppState) {
        if *changed {
            // Idempotent: publishing may have started the timing already.
            state.workers().on_change(s);
            state.metrics().toggle(&s.name, s.state);
        }
    }
}

/// What a broker adapter applied, recorded in the audit log. No switch changes, so there is
/// nothing to publish: the entry has no version and event streams never carry it.
pub(crate) struct RecordAdapterAction(pub brb_store::AdapterRecord);

impl Op for RecordAdapterAction {
    type Out = AuditEntry;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(AuditEntry, Publish)> {
        let r = self.0;
        let (switch, applied, actor) = (r.switch.clone(), r.applied, r.actor.clone());
        let entry = store.record_adapter_action(r).await?;
        tracing::info!(switch = %switch, actor = %actor.name, source = %actor.source,
            applied = %applied, reason = ?entry.reason, "adapter action recorded");
        Ok((entry, Publish::Nothing))
    }
}

/// The committed switch and its audit entry, to publish.
fn switch_change(s: Switch, entry: &AuditEntry) -> (Switch, Publish) {
    let ev = StoredEvent {
        audit_id: entry.id,
        event: SwitchEvent::Changed(s.clone()),
    };
    (s, Publish::Change(ev))
}

pub(crate) struct CreateSwitch {
    pub name: String,
    pub description: String,
    pub actor: Actor,
}

impl Op for CreateSwitch {
    type Out = Switch;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(Switch, Publish)> {
        let (s, entry) = store
            .create_switch(&self.name, &self.description, self.actor.clone())
            .await?;
        tracing::info!(switch = %s.name, actor = %self.actor.name, source = %self.actor.source,
            "switch created");
        Ok(switch_change(s, &entry))
    }
}

pub(crate) struct UpdateDescription {
    pub name: String,
    pub description: String,
    pub actor: Actor,
}

impl Op for UpdateDescription {
    type Out = Switch;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(Switch, Publish)> {
        let (s, entry) = store
            .update_description(&self.name, &self.description, self.actor.clone())
            .await?;
        tracing::info!(switch = %s.name, actor = %self.actor.name, source = %self.actor.source,
            "switch description updated");
        Ok(switch_change(s, &entry))
    }
}

pub(crate) struct DeleteSwitch {
    pub name: String,
    pub actor: Actor,
}

impl Op for DeleteSwitch {
    type Out = DeletedSwitch;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(DeletedSwitch, Publish)> {
        let entry = store.delete_switch(&self.name, self.actor.clone()).await?;
        let deleted = DeletedSwitch {
            name: self.name,
            version: entry.version.unwrap_or_default(),
        };
        tracing::info!(switch = %deleted.name, actor = %self.actor.name,
            source = %self.actor.source, "switch deleted");
        let ev = StoredEvent {
            audit_id: entry.id,
            event: SwitchEvent::Deleted(deleted.clone()),
        };
        Ok((deleted, Publish::Change(ev)))
    }
}

pub(crate) struct CreateToken {
    pub record: TokenRecord,
    pub actor: Actor,
}

impl Op for CreateToken {
    type Out = TokenRecord;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(TokenRecord, Publish)> {
        store
            .create_token(self.record.clone(), self.actor.clone())
            .await?;
        tracing::info!(token = %self.record.name, role = %self.record.role,
            actor = %self.actor.name, source = %self.actor.source, "token created");
        Ok((self.record.clone(), Publish::Token(self.record)))
    }
}

pub(crate) struct RevokeToken {
    pub id: String,
    pub actor: Actor,
}

impl Op for RevokeToken {
    type Out = TokenRecord;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(TokenRecord, Publish)> {
        let (rec, _) = store.revoke_token(&self.id, self.actor.clone()).await?;
        tracing::info!(token = %rec.name, actor = %self.actor.name, source = %self.actor.source,
            "token revoked");
        Ok((rec.clone(), Publish::Token(rec)))
    }
}

pub(crate) struct RotateToken {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub grace_until: DateTime<Utc>,
    pub actor: Actor,
}

impl Op for RotateToken {
    type Out = TokenRecord;

    async fn run(self, store: &dyn Store, _: &Config) -> ApiResult<(TokenRecord, Publish)> {
        let (rec, _) = store
            .rotate_token(
                &self.id,
                self.secret_hash,
                self.grace_until,
                self.actor.clone(),
            )
            .await?;
        tracing::info!(token = %rec.name, grace_until = %self.grace_until,
            actor = %self.actor.name, source = %self.actor.source, "token rotated");
        Ok((rec.clone(), Publish::Token(rec)))
    }
}

/// The store, for reading. Handlers and streams get this; it has no write methods.
pub struct Reads(Arc<dyn Store>);

impl Reads {
    pub async fn get_switch(&self, name: &str) -> Result<Option<Switch>, StoreError> {
        self.0.get_switch(name).await
    }

    pub async fn list_switches(&self) -> Result<Vec<Switch>, StoreError> {
        self.0.list_switches().await
    }

    pub async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.0.audit(q).await
    }

    pub async fn events_after_version(
        &self,
        switch: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.0.events_after_version(switch, after, limit).await
    }

    /// The audit entry that made `version` of `switch` (what it was, who, when).
    pub async fn entry_of_version(
        &self,
        switch: &str,
        version: u64,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let entries = self
            .0
            .switch_history_after(switch, version.saturating_sub(1), 1)
            .await?;
        Ok(entries
            .into_iter()
            .next()
            .filter(|e| e.version == Some(version)))
    }

    pub async fn events_after_id(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.0.events_after_id(after, limit).await
    }

    pub async fn last_audit_id(&self) -> Result<u64, StoreError> {
        self.0.last_audit_id().await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.0.list_tokens().await
    }

    pub async fn outbox_recent(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        self.0.outbox_recent(limit).await
    }

    pub async fn workers_shared(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.0.workers_shared(since).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}

/// The background loops' own records: notification delivery, token last-use times, the
/// shared worker picture. None of them changes a switch or a token.
pub(crate) struct Bookkeeping(Arc<dyn Store>);

impl Bookkeeping {
    /// The store's clock, for leases and due times: on PostgreSQL the database's, so that a
    /// replica whose wall clock is off neither steals another's lease nor postpones a
    /// notification (tests/skew.rs). This process's clock when the
    /// store cannot answer (what is computed from it then fails at the store anyway).
    pub(crate) async fn now(&self) -> DateTime<Utc> {
        match self.0.now().await {
            Ok(t) => t,
            Err(_) => Utc::now(),
        }
    }

    pub(crate) async fn touch_tokens(&self, uses: Vec<TokenUse>) -> Result<(), StoreError> {
        self.0.touch_tokens(uses).await
    }

    pub(crate) async fn outbox_enqueue(
        &self,
        items: Vec<NewNotification>,
    ) -> Result<usize, StoreError> {
        self.0.outbox_enqueue(items).await
    }

    pub(crate) async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.0.outbox_claim(now, lease, limit).await
    }

    pub(crate) async fn outbox_unknown_kinds(&self) -> Result<Vec<String>, StoreError> {
        self.0.outbox_unknown_kinds().await
    }

    pub(crate) async fn outbox_delivered(
        &self,
        id: u64,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.0.outbox_delivered(id, at).await
    }

    pub(crate) async fn outbox_failed(
        &self,
        id: u64,
        at: DateTime<Utc>,
        error: &str,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.0.outbox_failed(id, at, error, next).await
    }

    pub(crate) async fn outbox_pending_before(
        &self,
        channel: &brb_store::Channel,
        id: u64,
    ) -> Result<bool, StoreError> {
        self.0.outbox_pending_before(channel, id).await
    }

    pub(crate) async fn workers_share(
        &self,
        replica: &str,
        doc: String,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.0.workers_share(replica, doc, at).await
    }
}
