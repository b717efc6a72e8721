//! What the light says: what the control plane acknowledged, unless the host itself has
//! something more urgent to say (a device it cannot listen to, a press on its way or given
//! up on). Pure.

use crate::policy::Delivery;
use brb_api::{Switch, SwitchState, WorkerCounts};
use brb_protocol::ShowState;
use chrono::{DateTime, Utc};

/// The listener's view of the control plane.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlView {
    /// The switch as last acknowledged (from the event stream or a state change answer).
    pub switch: Option<Switch>,
    /// The fleet's acknowledgement, polled.
    pub workers: Option<WorkerCounts>,
    /// Whether the control plane answered recently.
    pub reachable: bool,
    /// Something a person must fix (token refused, switch missing).
    pub error: Option<String>,
}

/// What the host has to say above the control plane's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The device cannot be listened to (another protocol version, no hello): its presses
    /// are not acted on.
    pub device_problem: bool,
    /// The press outbox: sending, given up, or quiet.
    pub delivery: Delivery,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            device_problem: false,
            delivery: Delivery::Quiet,
        }
    }
}

/// The light, in order of urgency: error when presses are not acted on or one was given up
/// on; sending while a press is on its way (never "paused" before the control plane says
/// so); otherwise [`show_state`].
pub fn light(v: &ControlView, local: Local, now: DateTime<Utc>) -> ShowState {
    if local.device_problem {
        return ShowState::Error;
    }
    match local.delivery {
        Delivery::Failed => ShowState::Error,
        Delivery::Sending => ShowState::Sending,
        Delivery::Quiet => show_state(v, now),
    }
}

/// Red only once the fleet has stopped: paused and no live worker still running or draining.
/// Workers that stopped reporting (stale) cannot be waited for and do not hold the light back.
pub fn show_state(v: &ControlView, now: DateTime<Utc>) -> ShowState {
    if v.error.is_some() {
        return ShowState::Error;
    }
    let Some(s) = v.switch.as_ref().filter(|_| v.reachable) else {
        return ShowState::NoConnection;
    };
    match s.state {
        SwitchState::Paused => match &v.workers {
            // Counts of an older version may predate the pause: not proof yet.
            Some(c) if c.version >= s.version && c.running == 0 && c.draining == 0 => {
                ShowState::Paused
            }
            _ => ShowState::Draining,
        },
        SwitchState::Running => {
            if s.admitted_fraction(now) < 1.0 {
                ShowState::Ramping
            } else {
                ShowState::Running
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::Source;

    fn switch(state: SwitchState, version: u64) -> Switch {
        Switch {
            name: "workers".into(),
            description: String::new(),
            primary: true,
            state,
            version,
            changed_at: Utc::now(),
            changed_by: "t".into(),
            source: Source::Button,
            reason: None,
            ramp: None,
            resume_request: None,
        }
    }

    fn counts(version: u64, running: u32, draining: u32, paused: u32) -> WorkerCounts {
        WorkerCounts {
            switch: "workers".into(),
            version,
            total: running + draining + paused,
            running,
            draining,
            paused,
            stale: 0,
            current: None,
            changes: vec![],
            workers: vec![],
            unacknowledged: Default::default(),
        }
    }

    fn view(s: Switch, c: Option<WorkerCounts>) -> ControlView {
        ControlView {
            switch: Some(s),
            workers: c,
            reachable: true,
            error: None,
        }
    }

    #[test]
    fn red_only_when_the_fleet_has_stopped() {
        let now = Utc::now();
        let paused = switch(SwitchState::Paused, 5);
        assert_eq!(
            show_state(&view(paused.clone(), Some(counts(5, 0, 2, 3))), now),
            ShowState::Draining
        );
        assert_eq!(
            show_state(&view(paused.clone(), Some(counts(5, 1, 0, 3))), now),
            ShowState::Draining
        );
        // Counts from before the pause prove nothing.
        assert_eq!(
            show_state(&view(paused.clone(), Some(counts(4, 0, 0, 3))), now),
            ShowState::Draining
        );
        assert_eq!(
            show_state(&view(paused.clone(), None), now),
            ShowState::Draining
        );
        assert_eq!(
            show_state(&view(paused.clone(), Some(counts(5, 0, 0, 3))), now),
            ShowState::Paused
        );
        // No workers at all: nothing to wait for.
        assert_eq!(
            show_state(&view(paused, Some(counts(5, 0, 0, 0))), now),
            ShowState::Paused
        );
    }

    #[test]
    fn the_host_s_own_word_comes_first() {
        let now = Utc::now();
        let paused = view(switch(SwitchState::Paused, 5), Some(counts(5, 0, 0, 3)));
        let quiet = Local::default();
        assert_eq!(light(&paused, quiet, now), ShowState::Paused);
        let sending = Local {
            delivery: Delivery::Sending,
            ..quiet
        };
        assert_eq!(light(&paused, sending, now), ShowState::Sending);
        // Unreachable: sending still says a press is on its way, not "no connection".
        let mut gone = paused.clone();
        gone.reachable = false;
        assert_eq!(light(&gone, quiet, now), ShowState::NoConnection);
        assert_eq!(light(&gone, sending, now), ShowState::Sending);
        let failed = Local {
            delivery: Delivery::Failed,
            ..quiet
        };
        assert_eq!(light(&gone, failed, now), ShowState::Error);
        // A device that cannot be listened to outranks everything.
        let bad_device = Local {
            device_problem: true,
            ..sending
        };
        assert_eq!(light(&paused, bad_device, now), ShowState::Error);
    }

    #[test]
    fn running_ramping_unreachable_error() {
        let now = Utc::now();
        assert_eq!(
            show_state(&view(switch(SwitchState::Running, 1), None), now),
            ShowState::Running
        );
        let mut ramping = switch(SwitchState::Running, 2);
        ramping.ramp = Some(brb_api::RampSpec::preset("linear", 600).unwrap().start(now));
        assert_eq!(
            show_state(&view(ramping, None), now + chrono::Duration::seconds(60)),
            ShowState::Ramping
        );
        let mut v = view(switch(SwitchState::Paused, 1), None);
        v.reachable = false;
        assert_eq!(show_state(&v, now), ShowState::NoConnection);
        v.error = Some("token refused".into());
        assert_eq!(show_state(&v, now), ShowState::Error);
        assert_eq!(
            show_state(&ControlView::default(), now),
            ShowState::NoConnection
        );
    }
}
