//! The write rules, once for both backends, with no I/O.
//!
//! A backend's write is three steps: read the rows the rule needs (under its write lock),
//! ask the rule what to write, apply that. The rules decide everything that is not SQL: which
//! errors (`AlreadyExists`, `SwitchNotFound`, `Protected`, version conflicts), the next
//! version, what the row looks like afterwards, the audit entry and its snapshot, and the
//! notifications to enqueue. The backends only read and apply ([`SwitchWrite`],
//! [`TokenWrite`]), the same way for every kind of change: an insert of a new row, or an
//! update of the whole row guarded by the version it was read at, which must hit exactly one
//! row ([`one_row`]). So SQLite and PostgreSQL cannot drift apart on what a change means.

use brb_api::{AuditAction, DeletedSwitch, Switch, SwitchState};
use chrono::{DateTime, Utc};

use crate::{
    Actor, Channel, GuardOp, NotificationKind, PreviousSecret, RampControl, Result, StateChange,
    StoreError, SwitchEvent, SwitchOp, TokenPolicy, TokenRecord,
};

/// A switch row as read under the write lock: the switch and whether it is marked deleted.
pub(crate) type Row = Option<(Switch, bool)>;

/// What a switch change writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SwitchWrite {
    /// The row afterwards.
    pub switch: Switch,
    pub deleted: bool,
    /// `None`: insert a new row. `Some(v)`: update the row that is at version `v`.
    pub replaces: Option<u64>,
    pub action: AuditAction,
    pub from: Option<SwitchState>,
    pub to: Option<SwitchState>,
    pub reason: Option<String>,
    pub actor: Actor,
    pub at: DateTime<Utc>,
    /// Notifications of this change, written in its transaction.
    pub notify: Vec<Channel>,
    /// What those notifications say.
    pub kind: NotificationKind,
}

impl SwitchWrite {
    /// What watchers are told: the switch after the change, or its deletion.
    pub fn event(&self) -> SwitchEvent {
        if self.deleted {
            SwitchEvent::Deleted(DeletedSwitch {
                name: self.switch.name.clone(),
                version: self.switch.version,
            })
        } else {
            SwitchEvent::Changed(self.switch.clone())
        }
    }

    pub fn resume_request_json(&self) -> Result<Option<String>> {
        self.switch
            .resume_request
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Internal(format!("encode resume request: {e}")))
    }

    pub fn ramp_json(&self) -> Result<Option<String>> {
        self.switch
            .ramp
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Internal(format!("encode ramp: {e}")))
    }

    /// The notification payload (the switch right after the change).
    pub fn notification_event(&self) -> Result<String> {
        serde_json::to_string(&self.switch)
            .map_err(|e| StoreError::Internal(format!("encode event: {e}")))
    }
}

/// What a token change writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenWrite {
    /// The row afterwards (last-use columns are not written).
    pub token: TokenRecord,
    pub insert: bool,
    pub action: AuditAction,
    pub reason: String,
    pub actor: Actor,
    pub at: DateTime<Utc>,
}

/// An audit entry about to be appended, as both backends write it.
pub(crate) struct NewAudit<'a> {
    pub action: AuditAction,
    pub switch: Option<&'a str>,
    pub from: Option<SwitchState>,
    pub to: Option<SwitchState>,
    pub version: Option<u64>,
    pub actor: &'a Actor,
    pub reason: Option<&'a str>,
    pub at: DateTime<Utc>,
    /// The switch right after the change (token entries have none).
    pub snapshot: Option<SwitchEvent>,
}

impl SwitchWrite {
    pub fn audit(&self) -> NewAudit<'_> {
        NewAudit {
            action: self.action,
            switch: Some(&self.switch.name),
            from: self.from,
            to: self.to,
            version: Some(self.switch.version),
            actor: &self.actor,
            reason: self.reason.as_deref(),
            at: self.at,
            snapshot: Some(self.event()),
        }
    }
}

impl TokenWrite {
    pub fn audit(&self) -> NewAudit<'_> {
        NewAudit {
            action: self.action,
            switch: None,
            from: None,
            to: None,
            version: None,
            actor: &self.actor,
            reason: Some(&self.reason),
            at: self.at,
            snapshot: None,
        }
    }
}

/// What an adapter's record appends: an audit entry about a live switch, with no version and
/// no snapshot (the switch did not change, so no watcher must see it).
pub(crate) fn adapter_action<'a>(
    row: Row,
    record: &'a crate::AdapterRecord,
    now: DateTime<Utc>,
) -> Result<NewAudit<'a>> {
    live(row, &record.switch)?;
    Ok(NewAudit {
        action: AuditAction::AdapterApplied,
        switch: Some(&record.switch),
        from: None,
        to: Some(record.applied),
        version: None,
        actor: &record.actor,
        reason: Some(&record.reason),
        at: stored(now),
        snapshot: None,
    })
}

/// An update guarded by the version it was read at must change exactly one row; anything else
/// means the row moved under the write lock, and the transaction must not commit.
pub(crate) fn one_row(n: u64, what: &str) -> Result<()> {
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "{what} changed under the write lock ({n} rows matched)"
        )))
    }
}

/// The outbox key of a change's notification on one channel: one per change and channel,
/// whoever writes it.
pub(crate) fn change_key(audit_id: u64, channel: &Channel) -> String {
    format!("change:{audit_id}:{channel}")
}

/// `t` at the precision the backends store (microseconds), so what a write returns equals
/// what a later read gives.
pub(crate) fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn live(row: Row, name: &str) -> Result<Switch> {
    match row {
        Some((s, false)) => Ok(s),
        _ => Err(StoreError::SwitchNotFound(name.to_string())),
    }
}

/// A new switch, or a deleted one revived: a revived switch continues its version sequence,
/// so a watcher's `Last-Event-ID` never points into a reused range.
pub(crate) fn create(
    row: Row,
    name: &str,
    description: &str,
    primary: bool,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<SwitchWrite> {
    let now = stored(now);
    let (version, replaces) = match row {
        Some((_, false)) => return Err(StoreError::AlreadyExists(format!("switch {name:?}"))),
        Some((prev, true)) => (prev.version + 1, Some(prev.version)),
        None => (1, None),
    };
    Ok(SwitchWrite {
        switch: Switch {
            name: name.to_string(),
            description: description.to_string(),
            primary,
            state: SwitchState::Running,
            version,
            changed_at: now,
            changed_by: actor.name.clone(),
            source: actor.source,
            reason: None,
            ramp: None,
            resume_request: None,
        },
        deleted: false,
        replaces,
        action: AuditAction::SwitchCreated,
        from: None,
        to: Some(SwitchState::Running),
        reason: None,
        actor: actor.clone(),
        at: now,
        notify: Vec::new(),
        kind: NotificationKind::Change,
    })
}

/// Seeding (the primary switch, switches from the config): create unless a live switch has
/// the name, and never a second primary (`primary_taken`: a live primary switch exists).
pub(crate) fn ensure(
    row: Row,
    primary_taken: bool,
    name: &str,
    description: &str,
    primary: bool,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Option<SwitchWrite>> {
    if matches!(row, Some((_, false))) || (primary && primary_taken) {
        return Ok(None);
    }
    create(row, name, description, primary, actor, now).map(Some)
}

/// A new description: a version of its own (watchers see it), the state untouched.
pub(crate) fn describe(
    row: Row,
    name: &str,
    description: &str,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<SwitchWrite> {
    let now = stored(now);
    let cur = live(row, name)?;
    let mut switch = cur.clone();
    switch.description = description.to_string();
    switch.version = cur.version + 1;
    Ok(SwitchWrite {
        switch,
        deleted: false,
        replaces: Some(cur.version),
        action: AuditAction::SwitchUpdated,
        from: Some(cur.state),
        to: Some(cur.state),
        reason: None,
        actor: actor.clone(),
        at: now,
        notify: Vec::new(),
        kind: NotificationKind::Change,
    })
}

/// Deletion keeps the row (marked deleted, at the next version); the primary is protected.
pub(crate) fn delete(
    row: Row,
    name: &str,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<SwitchWrite> {
    let now = stored(now);
    let cur = live(row, name)?;
    if cur.primary {
        return Err(StoreError::Protected);
    }
    let mut switch = cur.clone();
    switch.version = cur.version + 1;
    Ok(SwitchWrite {
        switch,
        deleted: true,
        replaces: Some(cur.version),
        action: AuditAction::SwitchDeleted,
        from: Some(cur.state),
        to: None,
        reason: None,
        actor: actor.clone(),
        at: now,
        notify: Vec::new(),
        kind: NotificationKind::Change,
    })
}

/// What a state change does, decided on the committed row.
#[derive(Debug, PartialEq)]
pub(crate) enum StateDecision {
    /// The switch already has that state: nothing is written.
    Unchanged(Switch),
    Write(SwitchWrite),
}

/// A state change: refused on a stale `expected_version`; nothing when the switch already has
/// the state (unless a resume without a ramp ends a ramp in progress); a resume may start a
/// ramp, a pause ends any.
pub(crate) fn set_state(
    row: Row,
    change: &StateChange,
    now: DateTime<Utc>,
) -> Result<StateDecision> {
    let now = stored(now);
    let cur = live(row, &change.switch)?;
    if let Some(expected) = change.expected_version
        && expected != cur.version
    {
        return Err(StoreError::Conflict {
            current: Box::new(cur),
        });
    }
    if let Some(op) = &change.request {
        return resume_request(cur, change, op, now);
    }
    if let Some(control) = change.control {
        return ramp_control(cur, change, control, now);
    }
    if let Some(op) = change.guard_op {
        return guard_step(cur, change, op, now);
    }
    // Only leaving a pause needs a second person; a pause never does.
    if change.to == SwitchState::Running
        && cur.state == SwitchState::Paused
        && change.approval_secs.is_some()
    {
        return Err(StoreError::ApprovalRequired(cur.name));
    }
    let ramping = cur.ramp.as_ref().is_some_and(|r| !r.is_over(now));
    let ends_ramp = change.to == SwitchState::Running && change.ramp.is_none() && ramping;
    if cur.state == change.to && !ends_ramp {
        return Ok(StateDecision::Unchanged(cur));
    }
    let ramp = match (change.to, &change.ramp) {
        (SwitchState::Running, Some(r)) if !change.guards.is_empty() => Some(
            brb_api::Ramp::guarded(r, change.guards.clone(), now)
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
        ),
        (SwitchState::Running, r) => r.clone().map(|r| r.start(now)),
        (SwitchState::Paused, _) => None,
    };
    let switch = Switch {
        state: change.to,
        version: cur.version + 1,
        changed_at: now,
        changed_by: change.actor.name.clone(),
        source: change.actor.source,
        reason: change.reason.clone(),
        ramp,
        // A state change settles any request: a resume did what it asked for.
        resume_request: None,
        ..cur.clone()
    };
    Ok(StateDecision::Write(SwitchWrite {
        switch,
        deleted: false,
        replaces: Some(cur.version),
        action: AuditAction::StateChanged,
        from: Some(cur.state),
        to: Some(change.to),
        reason: change.reason.clone(),
        actor: change.actor.clone(),
        at: now,
        notify: change.notify.clone(),
        kind: NotificationKind::Change,
    }))
}

/// A hold, continue, extend or abort of the release in progress: refused when none is in
/// progress (paused, running without a ramp, or a ramp that has ended). Holding a held
/// release and continuing one that is not held change nothing. An abort pauses (a state
/// change, announced like any pause); the others keep the switch running with a new ramp,
/// recorded as `ramp_changed` with what was done in the audit reason.
fn ramp_control(
    cur: Switch,
    change: &StateChange,
    control: RampControl,
    now: DateTime<Utc>,
) -> Result<StateDecision> {
    use brb_api::RampAction;
    let ramp = match &cur.ramp {
        Some(r) if cur.state == SwitchState::Running && !r.is_over(now) => r.clone(),
        _ => return Err(StoreError::NoRamp(cur.name)),
    };
    let pct = |f: f64| format!("{:.0}%", f * 100.0);
    let (to, new_ramp, what, action) = match control.action {
        RampAction::Abort => (
            SwitchState::Paused,
            None,
            format!("release aborted at {}", pct(ramp.fraction_at(now))),
            AuditAction::StateChanged,
        ),
        RampAction::Hold if ramp.held.is_some() && ramp.guard.is_none() => {
            return Ok(StateDecision::Unchanged(cur));
        }
        RampAction::Hold => {
            // A guarded step is already a hold: holding it by hand takes the guard off, so
            // nothing advances it until a person continues.
            let held = match ramp.guard {
                Some(_) => brb_api::Ramp {
                    guard: None,
                    ..ramp.clone()
                },
                None => ramp.hold(now),
            };
            let what = format!("release held at {}", pct(ramp.fraction_at(now)));
            (
                SwitchState::Running,
                Some(held),
                what,
                AuditAction::RampChanged,
            )
        }
        RampAction::Continue if ramp.held.is_none() => {
            return Ok(StateDecision::Unchanged(cur));
        }
        RampAction::Continue | RampAction::Extend => {
            let by = match control.action {
                RampAction::Extend => control.by_secs,
                _ => 0,
            };
            if control.action == RampAction::Extend && by == 0 {
                return Err(StoreError::Invalid(
                    "extend needs by_secs: how many seconds longer the release takes".into(),
                ));
            }
            let next = ramp
                .extend(now, by)
                .map_err(|e| StoreError::Invalid(format!("ramp: {e}")))?;
            let what = match control.action {
                RampAction::Extend => format!(
                    "release extended by {by} s: {} to 100% over {} s",
                    pct(next.fraction_at(now)),
                    next.duration_secs
                ),
                _ => format!(
                    "release continued from {} over {} s",
                    pct(next.fraction_at(now)),
                    next.duration_secs
                ),
            };
            (
                SwitchState::Running,
                Some(next),
                what,
                AuditAction::RampChanged,
            )
        }
    };
    let reason = Some(match &change.reason {
        Some(r) => format!("{what}: {r}"),
        None => what,
    });
    let switch = Switch {
        state: to,
        version: cur.version + 1,
        changed_at: now,
        changed_by: change.actor.name.clone(),
        source: change.actor.source,
        reason: reason.clone(),
        ramp: new_ramp,
        ..cur.clone()
    };
    Ok(StateDecision::Write(SwitchWrite {
        switch,
        deleted: false,
        replaces: Some(cur.version),
        action,
        from: Some(cur.state),
        to: Some(to),
        reason,
        actor: change.actor.clone(),
        at: now,
        notify: change.notify.clone(),
        kind: NotificationKind::Change,
    }))
}

/// The guard evaluator moving a guarded release on: the next step (held, like every guarded
/// step), or after the last one the end of the release. Refused with `NoRamp` when no guarded
/// release is in progress and with a conflict when it is no longer at `from_step`.
fn guard_step(
    cur: Switch,
    change: &StateChange,
    op: GuardOp,
    now: DateTime<Utc>,
) -> Result<StateDecision> {
    let GuardOp::Advance { from_step } = op;
    let guard = match &cur.ramp {
        Some(r) if cur.state == SwitchState::Running => match &r.guard {
            Some(g) => g,
            None => return Err(StoreError::NoRamp(cur.name)),
        },
        _ => return Err(StoreError::NoRamp(cur.name)),
    };
    if guard.step != from_step {
        return Err(StoreError::Conflict {
            current: Box::new(cur),
        });
    }
    let new_ramp = cur.ramp.as_ref().and_then(|r| r.next_guarded_step(now));
    let what = match &new_ramp {
        Some(r) => format!(
            "guarded release advanced to {:.0}% (step {}/{})",
            r.fraction_at(now) * 100.0,
            from_step + 2,
            guard.steps.len()
        ),
        None => "guarded release finished at 100%".to_string(),
    };
    let reason = Some(match &change.reason {
        Some(r) => format!("{what}: {r}"),
        None => what,
    });
    let switch = Switch {
        version: cur.version + 1,
        changed_at: now,
        changed_by: change.actor.name.clone(),
        source: change.actor.source,
        reason: reason.clone(),
        ramp: new_ramp,
        ..cur.clone()
    };
    Ok(StateDecision::Write(SwitchWrite {
        switch,
        deleted: false,
        replaces: Some(cur.version),
        action: AuditAction::RampChanged,
        from: Some(cur.state),
        to: Some(cur.state),
        reason,
        actor: change.actor.clone(),
        at: now,
        notify: Vec::new(),
        kind: NotificationKind::Change,
    }))
}

/// The open request with this id, or `NoRequest`.
fn open_request(cur: &Switch, id: u64) -> Result<Box<brb_api::ResumeRequest>> {
    match &cur.resume_request {
        Some(r) if r.id == id => Ok(r.clone()),
        Some(r) => Err(StoreError::NoRequest(format!(
            "{:?} has no open resume request {id} (the open one is {})",
            cur.name, r.id
        ))),
        None => Err(StoreError::NoRequest(format!(
            "{:?} has no open resume request",
            cur.name
        ))),
    }
}

/// A resume request's life: filed by one operator on a paused switch that needs approval,
/// replaced only by its own requester (or once it lapsed), approved only by someone else
/// before it lapses (the switch then resumes as asked), rejected by anyone, lapsed by the
/// sweeper. Break glass resumes without approval. Each is a version of its own; only the
/// approval and break glass change the state. Each is announced with its own kind: the
/// request, the rejection and the lapse to the chat channels only (the switch stays paused),
/// the approval and break glass everywhere (they are resumes). A drill is announced nowhere.
fn resume_request(
    cur: Switch,
    change: &StateChange,
    op: &SwitchOp,
    now: DateTime<Utc>,
) -> Result<StateDecision> {
    let actor = &change.actor;
    let says = |r: &Option<String>| {
        r.as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    };
    // Requests, rejections and lapses are told to the chat channels (Slack, webhooks): people
    // must see them to approve in time. Incident tools hear of pauses and resumes only.
    let chat: Vec<Channel> = change
        .notify
        .iter()
        .filter(|c| c.is_chat())
        .cloned()
        .collect();
    // The switch with its request replaced, at the next version; the state untouched.
    let mark = |request: Option<Box<brb_api::ResumeRequest>>,
                action: AuditAction,
                reason: String,
                kind: Option<NotificationKind>| {
        let switch = Switch {
            version: cur.version + 1,
            resume_request: request,
            ..cur.clone()
        };
        StateDecision::Write(SwitchWrite {
            switch,
            deleted: false,
            replaces: Some(cur.version),
            action,
            from: Some(cur.state),
            to: Some(cur.state),
            reason: Some(reason),
            actor: actor.clone(),
            at: now,
            notify: if kind.is_some() {
                chat.clone()
            } else {
                Vec::new()
            },
            kind: kind.unwrap_or(NotificationKind::Change),
        })
    };
    // The switch resumed, the request settled; with guards, as a guarded release. Announced on
    // every channel (a resume closes the incident), as `kind`.
    let resume = |ramp: Option<brb_api::RampSpec>,
                  guards: Vec<brb_api::GuardSpec>,
                  reason: String,
                  kind: NotificationKind|
     -> Result<StateDecision> {
        let ramp = match ramp {
            Some(r) if !guards.is_empty() => Some(
                brb_api::Ramp::guarded(&r, guards, now)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?,
            ),
            r => r.map(|r| r.start(now)),
        };
        let switch = Switch {
            state: SwitchState::Running,
            version: cur.version + 1,
            changed_at: now,
            changed_by: actor.name.clone(),
            source: actor.source,
            reason: Some(reason.clone()),
            ramp,
            resume_request: None,
            ..cur.clone()
        };
        Ok(StateDecision::Write(SwitchWrite {
            switch,
            deleted: false,
            replaces: Some(cur.version),
            action: AuditAction::StateChanged,
            from: Some(cur.state),
            to: Some(SwitchState::Running),
            reason: Some(reason),
            actor: actor.clone(),
            at: now,
            notify: change.notify.clone(),
            kind,
        }))
    };
    match op {
        SwitchOp::Request { guards } => {
            let Some(secs) = change.approval_secs else {
                return Err(StoreError::NoRequest(format!(
                    "{:?} needs no approval to resume: resume it",
                    cur.name
                )));
            };
            if cur.state != SwitchState::Paused {
                return Err(StoreError::NoRequest(format!(
                    "{:?} is not paused: there is nothing to resume",
                    cur.name
                )));
            }
            let why = says(&change.reason)
                .ok_or_else(|| StoreError::Invalid("a resume request needs a reason".into()))?;
            if let Some(open) = &cur.resume_request
                && open.requested_by != actor.name
                && now < open.expires_at
            {
                return Err(StoreError::RequestPending {
                    switch: cur.name.clone(),
                    by: open.requested_by.clone(),
                    id: open.id,
                });
            }
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            let request = brb_api::ResumeRequest {
                id: cur.version + 1,
                requested_by: actor.name.clone(),
                source: actor.source,
                requested_at: now,
                expires_at: now
                    + chrono::TimeDelta::try_seconds(secs).unwrap_or(chrono::TimeDelta::MAX),
                reason: why.clone(),
                ramp: change.ramp.clone(),
                guards: guards.clone(),
            };
            let what = match &request.ramp {
                Some(r) => format!(
                    "resume requested (gradually over {} s): {why}",
                    r.duration_secs
                ),
                None => format!("resume requested (all at once): {why}"),
            };
            Ok(mark(
                Some(Box::new(request)),
                AuditAction::ResumeRequested,
                what,
                Some(NotificationKind::ResumeRequested),
            ))
        }
        SwitchOp::Approve { id } => {
            let r = open_request(&cur, *id)?;
            if now >= r.expires_at {
                return Err(StoreError::RequestExpired {
                    switch: cur.name.clone(),
                    id: r.id,
                    expired_at: r.expires_at,
                });
            }
            if r.requested_by == actor.name {
                return Err(StoreError::SelfApproval(actor.name.clone()));
            }
            let mut reason = format!(
                "approved by {}; requested by {}: {}",
                actor.name, r.requested_by, r.reason
            );
            if let Some(more) = says(&change.reason) {
                reason = format!("{reason} ({more})");
            }
            resume(r.ramp, r.guards, reason, NotificationKind::ResumeApproved)
        }
        SwitchOp::Reject { id } => {
            let r = open_request(&cur, *id)?;
            let mut reason = format!(
                "resume request {} by {} rejected by {}",
                r.id, r.requested_by, actor.name
            );
            if let Some(more) = says(&change.reason) {
                reason = format!("{reason}: {more}");
            }
            Ok(mark(
                None,
                AuditAction::ResumeRejected,
                reason,
                Some(NotificationKind::ResumeRejected),
            ))
        }
        SwitchOp::Expire { id } => {
            let r = open_request(&cur, *id)?;
            if now < r.expires_at {
                return Err(StoreError::NoRequest(format!(
                    "resume request {} on {:?} has not lapsed yet",
                    r.id, cur.name
                )));
            }
            let reason = format!(
                "resume request {} by {} lapsed unapproved at {}",
                r.id,
                r.requested_by,
                r.expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            Ok(mark(
                None,
                AuditAction::ResumeExpired,
                reason,
                Some(NotificationKind::ResumeExpired),
            ))
        }
        SwitchOp::Drill => {
            let what = match says(&change.reason) {
                Some(r) => format!("fire drill: {r}"),
                None => "fire drill".to_string(),
            };
            Ok(mark(
                cur.resume_request.clone(),
                AuditAction::DrillStarted,
                what,
                None,
            ))
        }
        SwitchOp::BreakGlass => {
            let why = says(&change.reason)
                .ok_or_else(|| StoreError::Invalid("breaking the glass needs a reason".into()))?;
            if cur.state == SwitchState::Running {
                return Ok(StateDecision::Unchanged(cur));
            }
            resume(
                change.ramp.clone(),
                change.guards.clone(),
                format!("BREAK GLASS by {}, without approval: {why}", actor.name),
                NotificationKind::BreakGlass,
            )
        }
    }
}

/// A new token; `name_taken`: a live token already has its name.
pub(crate) fn create_token(
    name_taken: bool,
    token: &TokenRecord,
    actor: &Actor,
) -> Result<TokenWrite> {
    if name_taken {
        return Err(StoreError::AlreadyExists(format!("token {:?}", token.name)));
    }
    Ok(TokenWrite {
        token: token.clone(),
        insert: true,
        action: AuditAction::TokenCreated,
        reason: format!("{} ({})", token.name, token.role),
        actor: actor.clone(),
        at: token.created_at,
    })
}

/// Revocation takes effect at once; revoking a revoked token records the attempt and keeps
/// the first revocation time.
pub(crate) fn revoke_token(
    row: Option<TokenRecord>,
    id: &str,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<TokenWrite> {
    let now = stored(now);
    let Some(mut token) = row else {
        return Err(StoreError::TokenNotFound(id.to_string()));
    };
    token.revoked_at.get_or_insert(now);
    Ok(TokenWrite {
        reason: format!("{} ({})", token.name, token.role),
        token,
        insert: false,
        action: AuditAction::TokenRevoked,
        actor: actor.clone(),
        at: now,
    })
}

/// A new secret for a live token; the old one stays valid until `grace_until` (unless that is
/// already past). The audit text names the token and the grace, never a hash.
pub(crate) fn rotate_token(
    row: Option<TokenRecord>,
    id: &str,
    new_secret_hash: Vec<u8>,
    grace_until: DateTime<Utc>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<TokenWrite> {
    let now = stored(now);
    let Some(mut token) = row.filter(|t| t.revoked_at.is_none()) else {
        return Err(StoreError::TokenNotFound(id.to_string()));
    };
    let mut policy: TokenPolicy = token.policy.clone();
    policy.previous = (grace_until > now).then(|| PreviousSecret {
        secret_hash: token
            .secret_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        valid_until: grace_until,
    });
    let reason = format!(
        "{} ({}); old secret valid until {}",
        token.name,
        token.role,
        grace_until.format("%Y-%m-%dT%H:%M:%SZ")
    );
    token.policy = policy;
    token.secret_hash = new_secret_hash;
    Ok(TokenWrite {
        token,
        insert: false,
        action: AuditAction::TokenRotated,
        reason,
        actor: actor.clone(),
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{RampSpec, Role, Source};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn alice() -> Actor {
        Actor {
            name: "alice".into(),
            source: Source::Cli,
            remote_addr: None,
        }
    }

    fn sw(version: u64, state: SwitchState, primary: bool) -> Switch {
        Switch {
            name: "s".into(),
            description: "d".into(),
            primary,
            state,
            version,
            changed_at: t(0),
            changed_by: "bob".into(),
            source: Source::Api,
            reason: Some("old".into()),
            ramp: None,
            resume_request: None,
        }
    }

    fn change(to: SwitchState) -> StateChange {
        StateChange {
            switch: "s".into(),
            to,
            reason: Some("why".into()),
            expected_version: None,
            ramp: None,
            control: None,
            guards: Vec::new(),
            guard_op: None,
            actor: alice(),
            notify: vec![Channel::Slack, Channel::Webhook("ops".into())],
            approval_secs: None,
            request: None,
        }
    }

    #[test]
    fn create_inserts_at_one_revives_after_the_last_version_and_refuses_a_live_name() {
        let w = create(None, "s", "d", false, &alice(), t(1)).unwrap();
        assert_eq!((w.switch.version, w.replaces, w.deleted), (1, None, false));
        assert_eq!(w.switch.state, SwitchState::Running);
        let w = create(
            Some((sw(7, SwitchState::Paused, false), true)),
            "s",
            "d2",
            false,
            &alice(),
            t(1),
        )
        .unwrap();
        assert_eq!((w.switch.version, w.replaces), (8, Some(7)));
        assert_eq!(
            (w.switch.state, w.switch.reason.as_deref()),
            (SwitchState::Running, None)
        );
        assert!(matches!(
            create(
                Some((sw(1, SwitchState::Running, false), false)),
                "s",
                "d",
                false,
                &alice(),
                t(1)
            ),
            Err(StoreError::AlreadyExists(_))
        ));
    }

    #[test]
    fn ensure_never_makes_a_second_primary_or_touches_a_live_switch() {
        assert!(
            ensure(None, true, "s", "d", true, &alice(), t(0))
                .unwrap()
                .is_none()
        );
        assert!(
            ensure(None, true, "s", "d", false, &alice(), t(0))
                .unwrap()
                .is_some()
        );
        let live = Some((sw(3, SwitchState::Paused, false), false));
        assert!(
            ensure(live, false, "s", "d", false, &alice(), t(0))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_change_is_the_next_version_of_the_row_it_read() {
        let cur = Some((sw(4, SwitchState::Running, false), false));
        let d = describe(cur.clone(), "s", "new", &alice(), t(2)).unwrap();
        assert_eq!((d.switch.version, d.replaces), (5, Some(4)));
        assert_eq!(
            d.switch.changed_by, "bob",
            "a description edit is not a state change"
        );
        let x = delete(cur.clone(), "s", &alice(), t(2)).unwrap();
        assert_eq!(
            (x.switch.version, x.replaces, x.deleted),
            (5, Some(4), true)
        );
        assert!(matches!(x.event(), SwitchEvent::Deleted(d) if d.version == 5));
        let StateDecision::Write(w) = set_state(cur, &change(SwitchState::Paused), t(2)).unwrap()
        else {
            panic!("a pause of a running switch writes")
        };
        assert_eq!((w.switch.version, w.replaces), (5, Some(4)));
        assert_eq!(w.switch.changed_by, "alice");
        assert_eq!(w.notify.len(), 2);
        assert!(matches!(w.audit().snapshot, Some(SwitchEvent::Changed(s)) if s.version == 5));
    }

    #[test]
    fn missing_deleted_and_primary_switches_are_refused() {
        let gone = Some((sw(4, SwitchState::Running, false), true));
        for row in [None, gone] {
            assert!(matches!(
                describe(row.clone(), "s", "x", &alice(), t(0)),
                Err(StoreError::SwitchNotFound(_))
            ));
            assert!(matches!(
                delete(row.clone(), "s", &alice(), t(0)),
                Err(StoreError::SwitchNotFound(_))
            ));
            assert!(matches!(
                set_state(row, &change(SwitchState::Paused), t(0)),
                Err(StoreError::SwitchNotFound(_))
            ));
        }
        let primary = Some((sw(1, SwitchState::Running, true), false));
        assert!(matches!(
            delete(primary, "s", &alice(), t(0)),
            Err(StoreError::Protected)
        ));
    }

    #[test]
    fn state_changes_respect_expected_version_idempotence_and_ramps() {
        let cur = Some((sw(4, SwitchState::Running, false), false));
        let mut stale = change(SwitchState::Paused);
        stale.expected_version = Some(3);
        assert!(
            matches!(set_state(cur.clone(), &stale, t(0)), Err(StoreError::Conflict { current }) if current.version == 4)
        );
        assert!(matches!(
            set_state(cur, &change(SwitchState::Running), t(0)).unwrap(),
            StateDecision::Unchanged(s) if s.version == 4
        ));
        // A resume with a ramp starts it; a plain resume during the ramp ends it; a pause
        // ends it too.
        let paused = Some((sw(4, SwitchState::Paused, false), false));
        let mut ramped = change(SwitchState::Running);
        ramped.ramp = Some(RampSpec::parse("linear:10m").unwrap());
        let StateDecision::Write(w) = set_state(paused, &ramped, t(0)).unwrap() else {
            panic!("resume writes")
        };
        assert!(w.switch.ramp.is_some());
        assert!(w.ramp_json().unwrap().is_some());
        let ramping = Some((w.switch.clone(), false));
        let StateDecision::Write(w2) =
            set_state(ramping.clone(), &change(SwitchState::Running), t(60)).unwrap()
        else {
            panic!("a plain resume ends a ramp in progress")
        };
        assert!(w2.switch.ramp.is_none());
        assert!(
            matches!(
                set_state(ramping, &change(SwitchState::Running), t(3600)).unwrap(),
                StateDecision::Unchanged(_)
            ),
            "a finished ramp needs no write"
        );
    }

    fn control(action: brb_api::RampAction, by_secs: u64) -> StateChange {
        let mut c = change(SwitchState::Running);
        c.reason = None;
        c.control = Some(RampControl { action, by_secs });
        c
    }

    #[test]
    fn a_guarded_release_starts_held_and_advances_only_from_its_step() {
        let write =
            |row: Switch, c: &StateChange, at: i64| match set_state(Some((row, false)), c, t(at)) {
                Ok(StateDecision::Write(w)) => w,
                other => panic!("expected a write, got {other:?}"),
            };
        let mut resume = change(SwitchState::Running);
        resume.ramp = Some(RampSpec::parse("steps:90s").unwrap());
        resume.guards = vec![brb_api::GuardSpec::parse("db_load < 80").unwrap()];
        let w = write(sw(3, SwitchState::Paused, false), &resume, 0);
        let r = w.switch.ramp.clone().unwrap();
        assert_eq!(r.guard.as_ref().unwrap().step, 0);
        // Held at the first step, for every gate, long after the plan's 90 s.
        assert_eq!(r.fraction_at(t(3000)), 0.1);
        assert_eq!(w.notify.len(), 2, "the resume is announced");

        let mut adv = change(SwitchState::Running);
        adv.reason = Some("db_load 41.0 < 80".into());
        adv.guard_op = Some(GuardOp::Advance { from_step: 0 });
        adv.expected_version = Some(4);
        let a = write(w.switch.clone(), &adv, 40);
        assert_eq!(a.action, AuditAction::RampChanged);
        assert!(a.notify.is_empty(), "a step is recorded, not announced");
        assert_eq!(a.switch.ramp.as_ref().unwrap().fraction_at(t(3000)), 0.25);
        assert!(
            a.reason
                .as_deref()
                .unwrap()
                .contains("25% (step 2/4): db_load 41.0 < 80"),
            "{:?}",
            a.reason
        );
        // A second evaluator (another replica) still at step 0 cannot advance it again.
        adv.expected_version = None;
        assert!(matches!(
            set_state(Some((a.switch.clone(), false)), &adv, t(41)),
            Err(StoreError::Conflict { .. })
        ));
        // Last step, then the end of the release.
        let mut at = a.switch;
        for from in 1..=3 {
            adv.guard_op = Some(GuardOp::Advance { from_step: from });
            at = write(at, &adv, 40 + i64::from(from)).switch;
        }
        assert_eq!((at.state, at.ramp.clone()), (SwitchState::Running, None));
        assert!(matches!(
            set_state(Some((at, false)), &adv, t(50)),
            Err(StoreError::NoRamp(_))
        ));
        // A guard needs a stepped ramp.
        resume.ramp = Some(RampSpec::parse("linear:90s").unwrap());
        assert!(matches!(
            set_state(
                Some((sw(3, SwitchState::Paused, false), false)),
                &resume,
                t(0)
            ),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn a_release_can_be_held_continued_extended_and_aborted_to_paused() {
        use brb_api::RampAction::{Abort, Continue, Extend, Hold};
        let write =
            |row: Switch, c: &StateChange, at: i64| match set_state(Some((row, false)), c, t(at)) {
                Ok(StateDecision::Write(w)) => w,
                other => panic!("expected a write, got {other:?}"),
            };
        let mut ramping = sw(4, SwitchState::Running, false);
        ramping.ramp = Some(RampSpec::parse("steps:90s").unwrap().start(t(0)));

        // Hold at 25% (40 s into 90 s): the switch stays running, its gates admit 25% an
        // hour later, and the audit says what was done.
        let held = write(ramping.clone(), &control(Hold, 0), 40);
        assert_eq!(held.action, AuditAction::RampChanged);
        assert_eq!(held.switch.state, SwitchState::Running);
        assert_eq!(held.switch.version, 5);
        assert_eq!(held.reason.as_deref(), Some("release held at 25%"));
        assert_eq!(held.switch.admitted_fraction(t(3640)), 0.25);
        assert!(matches!(
            set_state(Some((held.switch.clone(), false)), &control(Hold, 0), t(50)).unwrap(),
            StateDecision::Unchanged(_)
        ));
        assert!(matches!(
            set_state(Some((ramping.clone(), false)), &control(Continue, 0), t(50)).unwrap(),
            StateDecision::Unchanged(_)
        ));

        // Continue an hour later: from 25% over the 50 s that were left.
        let cont = write(held.switch.clone(), &control(Continue, 0), 3640);
        assert_eq!(cont.switch.admitted_fraction(t(3640)), 0.25);
        assert_eq!(cont.switch.admitted_fraction(t(3690)), 1.0);

        // Extend by 60 s: 25% → 50% → 100% over 110 s; a zero or too long extension is
        // refused and writes nothing.
        let mut c = control(Extend, 60);
        c.reason = Some("db still hot".into());
        let ext = write(ramping.clone(), &c, 40);
        assert_eq!(ext.switch.ramp.as_ref().unwrap().duration_secs, 110);
        assert_eq!(ext.switch.admitted_fraction(t(94)), 0.25);
        assert_eq!(ext.switch.admitted_fraction(t(95)), 0.5);
        assert!(ext.reason.as_deref().unwrap().ends_with(": db still hot"));
        for bad in [0, brb_api::MAX_RAMP_SECS] {
            assert!(matches!(
                set_state(Some((ramping.clone(), false)), &control(Extend, bad), t(40)),
                Err(StoreError::Invalid(_))
            ));
        }

        // Abort: back to paused (a state change), never to running.
        let ab = write(ramping.clone(), &control(Abort, 0), 40);
        assert_eq!(ab.action, AuditAction::StateChanged);
        assert_eq!(
            (ab.from, ab.to),
            (Some(SwitchState::Running), Some(SwitchState::Paused))
        );
        assert_eq!(ab.switch.ramp, None);
        assert_eq!(ab.switch.admitted_fraction(t(40)), 0.0);
        assert_eq!(ab.reason.as_deref(), Some("release aborted at 25%"));

        // Nothing to control: paused, running at once, or the ramp has ended.
        let done = t(90);
        for (row, at) in [
            (sw(4, SwitchState::Paused, false), t(0)),
            (sw(4, SwitchState::Running, false), t(0)),
            (ramping.clone(), done),
        ] {
            for a in [Hold, Continue, Extend, Abort] {
                assert!(matches!(
                    set_state(Some((row.clone(), false)), &control(a, 5), at),
                    Err(StoreError::NoRamp(_))
                ));
            }
        }
    }

    fn token(revoked: bool) -> TokenRecord {
        TokenRecord {
            id: "abc".into(),
            name: "ci".into(),
            role: Role::Operator,
            secret_hash: vec![0xab, 0x01],
            created_at: t(0),
            revoked_at: revoked.then(|| t(5)),
            policy: TokenPolicy::default(),
            last_used_at: None,
            last_used_addr: None,
        }
    }

    #[test]
    fn token_rules() {
        assert!(matches!(
            create_token(true, &token(false), &alice()),
            Err(StoreError::AlreadyExists(_))
        ));
        let w = create_token(false, &token(false), &alice()).unwrap();
        assert!(w.insert);
        assert_eq!(w.reason, "ci (operator)");
        // Revoking twice keeps the first time.
        let r = revoke_token(Some(token(true)), "abc", &alice(), t(9)).unwrap();
        assert_eq!(r.token.revoked_at, Some(t(5)));
        let r = revoke_token(Some(token(false)), "abc", &alice(), t(9)).unwrap();
        assert_eq!(r.token.revoked_at, Some(t(9)));
        assert!(matches!(
            revoke_token(None, "abc", &alice(), t(9)),
            Err(StoreError::TokenNotFound(_))
        ));
        // Rotation keeps the old hash for the grace period, and never for a past one.
        let w = rotate_token(Some(token(false)), "abc", vec![1], t(100), &alice(), t(10)).unwrap();
        assert_eq!(w.token.secret_hash, vec![1]);
        let prev = w.token.policy.previous.unwrap();
        assert_eq!(
            (prev.secret_hash.as_str(), prev.valid_until),
            ("ab01", t(100))
        );
        assert!(!w.reason.contains("ab01"), "no hash in the audit text");
        let w = rotate_token(Some(token(false)), "abc", vec![1], t(5), &alice(), t(10)).unwrap();
        assert!(w.token.policy.previous.is_none());
        assert!(matches!(
            rotate_token(Some(token(true)), "abc", vec![1], t(100), &alice(), t(10)),
            Err(StoreError::TokenNotFound(_))
        ));
    }

    #[test]
    fn guarded_updates_must_hit_one_row() {
        assert!(one_row(1, "switch").is_ok());
        assert!(one_row(0, "switch").is_err());
        assert!(one_row(2, "switch").is_err());
    }

    fn bob() -> Actor {
        Actor {
            name: "bob".into(),
            source: Source::Web,
            remote_addr: None,
        }
    }

    /// A change on a switch whose resumes need approval (requests lapse after 900 s).
    fn guarded(by: Actor, op: Option<SwitchOp>, to: SwitchState) -> StateChange {
        let mut c = change(to);
        c.actor = by;
        c.approval_secs = Some(900);
        c.request = op;
        c
    }

    fn decide(row: &Switch, c: &StateChange, at: i64) -> Result<StateDecision> {
        set_state(Some((row.clone(), false)), c, t(at))
    }

    fn written(d: Result<StateDecision>) -> SwitchWrite {
        match d {
            Ok(StateDecision::Write(w)) => w,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    /// Paused at version 3, with alice's request (ramp steps:10m, one guard) filed at t(10).
    fn requested() -> Switch {
        let mut c = guarded(
            alice(),
            Some(SwitchOp::Request {
                guards: vec![brb_api::GuardSpec::parse("db_load < 80").unwrap()],
            }),
            SwitchState::Running,
        );
        c.ramp = Some(RampSpec::parse("steps:10m").unwrap());
        c.reason = Some("  backlog drained  ".into());
        c.notify.push(Channel::PagerDuty);
        let w = written(decide(&sw(3, SwitchState::Paused, true), &c, 10));
        assert_eq!(w.action, AuditAction::ResumeRequested);
        assert_eq!(
            w.switch.state,
            SwitchState::Paused,
            "a request resumes nothing"
        );
        assert_eq!(w.switch.changed_at, t(0), "the pause instant stays");
        assert_eq!(w.kind, NotificationKind::ResumeRequested);
        assert_eq!(
            w.notify,
            vec![Channel::Slack, Channel::Webhook("ops".into())],
            "told to the chat channels, not to incident tools"
        );
        w.switch
    }

    #[test]
    fn a_pause_never_needs_approval_and_a_paused_switch_needs_it_to_resume() {
        let running = sw(3, SwitchState::Running, true);
        let w = written(decide(
            &running,
            &guarded(alice(), None, SwitchState::Paused),
            1,
        ));
        assert_eq!(w.switch.state, SwitchState::Paused);
        let paused = w.switch;
        assert!(matches!(
            decide(&paused, &guarded(alice(), None, SwitchState::Running), 2),
            Err(StoreError::ApprovalRequired(_))
        ));
        // A pause of a paused switch with a request open changes nothing (and keeps it).
        let r = requested();
        assert!(matches!(
            decide(&r, &guarded(bob(), None, SwitchState::Paused), 20),
            Ok(StateDecision::Unchanged(_))
        ));
        // Without approval configured, a resume is a resume.
        let w = written(decide(&paused, &change(SwitchState::Running), 3));
        assert_eq!(w.switch.state, SwitchState::Running);
    }

    #[test]
    fn a_request_is_recorded_with_who_why_ramp_guards_and_its_deadline() {
        let s = requested();
        let r = s.resume_request.expect("a request");
        assert_eq!((r.id, s.version), (4, 4));
        assert_eq!(r.requested_by, "alice");
        assert_eq!(r.reason, "backlog drained");
        assert_eq!(r.requested_at, t(10));
        assert_eq!(r.expires_at, t(910));
        assert_eq!(r.ramp, Some(RampSpec::parse("steps:10m").unwrap()));
        assert_eq!(r.guards.len(), 1);
    }

    #[test]
    fn only_another_operator_approves_and_only_in_time() {
        let s = requested();
        let approve =
            |by: Actor, id: u64| guarded(by, Some(SwitchOp::Approve { id }), SwitchState::Running);
        assert!(matches!(
            decide(&s, &approve(alice(), 4), 20),
            Err(StoreError::SelfApproval(n)) if n == "alice"
        ));
        assert!(matches!(
            decide(&s, &approve(bob(), 3), 20),
            Err(StoreError::NoRequest(_))
        ));
        assert!(matches!(
            decide(&s, &approve(bob(), 4), 910),
            Err(StoreError::RequestExpired { id: 4, .. })
        ));
        let w = written(decide(&s, &approve(bob(), 4), 909));
        assert_eq!(w.action, AuditAction::StateChanged);
        assert_eq!(w.switch.state, SwitchState::Running);
        assert_eq!(w.switch.changed_by, "bob");
        assert_eq!(w.switch.resume_request, None);
        // The requested ramp, guarded by the requested guard: a guarded release from now.
        let ramp = w.switch.ramp.as_ref().expect("the requested ramp");
        let guard = ramp.guard.as_ref().expect("the request's guard applies");
        assert_eq!(ramp.started_at, t(909));
        assert_eq!(
            guard.guards,
            vec![brb_api::GuardSpec::parse("db_load < 80").unwrap()]
        );
        assert_eq!(
            w.reason.as_deref(),
            Some("approved by bob; requested by alice: backlog drained (why)")
        );
        assert_eq!(w.notify.len(), 2, "an approval is announced like a resume");
        assert_eq!(w.kind, NotificationKind::ResumeApproved);
    }

    #[test]
    fn someone_elses_open_request_blocks_a_new_one_the_requester_replaces_theirs() {
        let s = requested();
        let mut by_bob = guarded(
            bob(),
            Some(SwitchOp::Request { guards: vec![] }),
            SwitchState::Running,
        );
        by_bob.reason = Some("me too".into());
        assert!(matches!(
            decide(&s, &by_bob, 20),
            Err(StoreError::RequestPending { id: 4, .. })
        ));
        // Once it lapsed, anyone may file.
        assert_eq!(
            written(decide(&s, &by_bob, 910))
                .switch
                .resume_request
                .unwrap()
                .requested_by,
            "bob"
        );
        let mut again = by_bob.clone();
        again.actor = alice();
        again.reason = Some("sooner".into());
        let w = written(decide(&s, &again, 30));
        let r = w.switch.resume_request.unwrap();
        assert_eq!((r.id, r.reason.as_str(), r.ramp), (5, "sooner", None));
        // No reason, no request; not paused or no approval configured: nothing to request.
        let mut mute = again.clone();
        mute.reason = Some("  ".into());
        assert!(matches!(decide(&s, &mute, 30), Err(StoreError::Invalid(_))));
        assert!(matches!(
            decide(&sw(3, SwitchState::Running, true), &again, 30),
            Err(StoreError::NoRequest(_))
        ));
        let mut off = again.clone();
        off.approval_secs = None;
        assert!(matches!(
            decide(&s, &off, 30),
            Err(StoreError::NoRequest(_))
        ));
    }

    #[test]
    fn reject_and_expire_clear_the_request_and_keep_the_pause() {
        let s = requested();
        let w = written(decide(
            &s,
            &guarded(
                bob(),
                Some(SwitchOp::Reject { id: 4 }),
                SwitchState::Running,
            ),
            20,
        ));
        assert_eq!(
            (w.action, w.switch.state, w.switch.resume_request.clone()),
            (AuditAction::ResumeRejected, SwitchState::Paused, None)
        );
        assert_eq!(
            (w.kind, w.notify.len()),
            (NotificationKind::ResumeRejected, 2)
        );
        let then = guarded(
            bob(),
            Some(SwitchOp::Approve { id: 4 }),
            SwitchState::Running,
        );
        assert!(matches!(
            decide(&w.switch, &then, 21),
            Err(StoreError::NoRequest(_))
        ));
        let expire = guarded(
            Actor::system(),
            Some(SwitchOp::Expire { id: 4 }),
            SwitchState::Running,
        );
        assert!(
            matches!(decide(&s, &expire, 909), Err(StoreError::NoRequest(_))),
            "not yet"
        );
        let w = written(decide(&s, &expire, 910));
        assert_eq!(
            (w.action, w.switch.resume_request.clone()),
            (AuditAction::ResumeExpired, None)
        );
        assert_eq!(
            (w.kind, w.notify.len()),
            (NotificationKind::ResumeExpired, 2)
        );
        // The lapse is announced by the one write that clears the request: a second sweeper
        // (another replica, a late tick) reading the cleared switch is refused, so it writes
        // no second announcement.
        assert!(matches!(
            decide(&w.switch, &expire, 911),
            Err(StoreError::NoRequest(_))
        ));
    }

    #[test]
    fn a_drill_is_a_new_version_that_changes_nothing_else() {
        let mut ramping = sw(3, SwitchState::Running, true);
        ramping.ramp = Some(RampSpec::parse("steps:10m").unwrap().start(t(5)));
        for row in [ramping, requested(), sw(3, SwitchState::Paused, false)] {
            let mut c = change(SwitchState::Running);
            c.request = Some(SwitchOp::Drill);
            let w = written(decide(&row, &c, 50));
            assert_eq!(w.action, AuditAction::DrillStarted);
            assert_eq!(
                w.switch,
                Switch {
                    version: row.version + 1,
                    ..row.clone()
                }
            );
            assert!(w.notify.is_empty(), "a drill pages no one");
            assert_eq!(w.reason.as_deref(), Some("fire drill: why"));
        }
    }

    #[test]
    fn break_glass_resumes_without_approval_says_so_and_needs_a_reason() {
        let s = requested();
        let mut c = guarded(bob(), Some(SwitchOp::BreakGlass), SwitchState::Running);
        c.reason = None;
        assert!(matches!(decide(&s, &c, 20), Err(StoreError::Invalid(_))));
        c.reason = Some("customers down".into());
        let w = written(decide(&s, &c, 20));
        assert_eq!(
            (w.switch.state, w.switch.resume_request.clone()),
            (SwitchState::Running, None)
        );
        assert_eq!(
            w.reason.as_deref(),
            Some("BREAK GLASS by bob, without approval: customers down")
        );
        assert_eq!(w.notify.len(), 2);
        assert_eq!(w.kind, NotificationKind::BreakGlass);
    }
}
