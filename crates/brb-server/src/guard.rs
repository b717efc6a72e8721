//! The guard evaluator: the I/O side of [`crate::guard_core`]. Four times a second it looks at
//! every switch in a guarded release, checks the guards that are due against this replica's
//! series store (pushed samples and pulled Prometheus queries), publishes the live status as
//! the ephemeral `guard` event, and commits what the rules decide:
//! * an advance is a write through the store rules that names the step it advances from, with
//!   `expected_version` of the version it read: when two replicas (or a person) race, the
//!   store's compare-and-set lets one write through and refuses the rest with a conflict, so a
//!   step is never advanced twice;
//! * a trip is an abort of the release (audit source `guard`, the reason naming the guard and
//!   the value), announced like any pause (Slack, webhooks, watchers);
//! * holding writes nothing: the stored step already is a hold.
//!
//! Every replica runs it. Pushed samples exist only on the replica that received them, so a
//! replica without them sees no data and holds: it never writes on a guess.

use std::collections::HashMap;

use brb_api::{GuardStatus, RampAction, SwitchState};
use brb_store::{Actor, GuardOp, RampControl, StateChange};
use chrono::Utc;

use crate::AppState;
use crate::commit::SetState;
use crate::error::ApiError;
use crate::guard_core::{Check, GuardRun, Verdict, measure};

/// How often the evaluator looks (checks themselves run at each guard's interval).
const TICK: std::time::Duration = std::time::Duration::from_millis(250);

fn actor() -> Actor {
    Actor {
        name: "guard".into(),
        source: brb_api::Source::Guard,
        remote_addr: None,
    }
}

pub(crate) async fn run(state: AppState) {
    let mut shutdown = state.shutdown_signal();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut runs: HashMap<String, GuardRun> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = Utc::now();
        let mut live = Vec::new();
        for sw in state.hub().list() {
            let guarded = sw.state == SwitchState::Running
                && sw.ramp.as_ref().is_some_and(|r| r.guard.is_some());
            if !guarded {
                continue;
            }
            live.push(sw.name.clone());
            let fresh = runs.get(&sw.name).is_none_or(|r| r.version() != sw.version);
            if fresh && let Some(r) = GuardRun::new(&sw) {
                // Say at once that the step waits for its first checks.
                publish(&state, r.status(now));
                runs.insert(sw.name.clone(), r);
            }
            let Some(run) = runs.get_mut(&sw.name) else {
                continue;
            };
            // Checks read complete seconds only: the current second's point may not have
            // arrived yet (a producer pushing once a second), and with `interval=1s` a window
            // ending now would hold on "no data" whenever the check ran early in a second.
            let end = now.timestamp() - 1;
            let first = run.first_point_sec();
            let verdict = run.on_tick(now, |g| {
                let since = (end - g.interval_secs as i64 + 1).max(first);
                if since > end {
                    return Check::NoData(format!("no point of {} from this step yet", g.series));
                }
                measure(g, &state.series().query(Some(&g.series), since, end), end)
            });
            if verdict == Verdict::Nothing {
                continue;
            }
            publish(&state, run.status(now));
            let change = |reason: String| StateChange {
                switch: sw.name.clone(),
                to: SwitchState::Running,
                reason: Some(reason),
                expected_version: Some(sw.version),
                ramp: None,
                control: None,
                guards: Vec::new(),
                guard_op: None,
                actor: actor(),
                notify: Vec::new(),
                approval_secs: None,
                request: None,
            };
            let result = match verdict {
                Verdict::Advance { from_step, reason } => {
                    tracing::info!(switch = %sw.name, actor = "guard", source = "guard",
                        step = from_step + 1, %reason, "guard advances the release");
                    let mut c = change(reason);
                    c.guard_op = Some(GuardOp::Advance { from_step });
                    state.commit(SetState(c)).await
                }
                Verdict::Trip { reason } => {
                    tracing::warn!(switch = %sw.name, actor = "guard", source = "guard",
                        %reason, "guard trips: pausing again");
                    let mut c = change(reason);
                    c.control = Some(RampControl {
                        action: RampAction::Abort,
                        by_secs: 0,
                    });
                    state.commit(SetState(c)).await
                }
                Verdict::Nothing | Verdict::Checked => continue,
            };
            match result {
                Ok(_) => {}
                Err(e) if superseded(&e) => {
                    // Another replica or a person changed the switch first: its new version
                    // gets a run of its own on the next tick.
                    tracing::debug!(switch = %sw.name, error = %e, "guard decision superseded");
                }
                Err(e) => {
                    tracing::warn!(switch = %sw.name, actor = "guard", source = "guard",
                        error = %e, "cannot commit the guard's decision; deciding again");
                    run.retry();
                }
            }
        }
        // A release that ended (finished, tripped, or ended by a person): keep its last status
        // only when the guard itself ended it, so the console can say why.
        runs.retain(|name, r| {
            if live.contains(name) {
                return true;
            }
            let st = r.status(now);
            if !matches!(
                st.phase,
                brb_api::GuardPhase::Tripped | brb_api::GuardPhase::Finished
            ) {
                state.guard_statuses().remove(name);
            }
            false
        });
    }
}

fn superseded(e: &ApiError) -> bool {
    matches!(
        e.code,
        brb_api::ErrorCode::VersionConflict | brb_api::ErrorCode::NoRamp
    )
}

fn publish(state: &AppState, status: GuardStatus) {
    match serde_json::to_string(&status) {
        Ok(json) => state.hub().publish_ephemeral(brb_api::events::GUARD, &json),
        Err(e) => tracing::error!(error = %e, "encoding guard status"),
    }
    state.guard_statuses().insert(status);
}

/// The last status of each switch's guarded release, for `GET /api/v1/switches/{name}/guard`.
#[derive(Default)]
pub(crate) struct GuardStatuses(std::sync::Mutex<HashMap<String, GuardStatus>>);

impl GuardStatuses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GuardStatus>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, switch: &str) -> Option<GuardStatus> {
        self.lock().get(switch).cloned()
    }

    fn insert(&self, s: GuardStatus) {
        self.lock().insert(s.switch.clone(), s);
    }

    fn remove(&self, switch: &str) {
        self.lock().remove(switch);
    }
}
