//! The reconciler: what an adapter should do to its broker, and when. No I/O, no clock: the
//! switch, the broker's answers and the time are passed in, actions come out.
//!
//! Job systems lose their pause state on restart, deploy or a flushed Redis (the most common
//! complaint in their trackers), so an adapter never applies once and forgets: it applies the
//! desired state whenever it learns the switch (every event, so also every reconnect to the
//! control plane), whenever it has a new broker connection, and every `reapply` otherwise.
//! Failures are retried with a doubling backoff, so a broker that refuses is not hammered and
//! the adapter never exits over it.
//!
//! The one rule that must never break: **the desired state only ever comes from the switch.**
//! Losing the control plane changes nothing here (the last switch seen stays desired, and keeps
//! being applied, which also renews RQ's safety-net expiry), so an outage of the control plane
//! can never release a paused broker.

use std::time::{Duration, Instant};

use brb_api::{Switch, SwitchState};
use chrono::{DateTime, Utc};

/// The time, both ways: monotonic for timers, wall clock for a ramp's schedule.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}

/// What the broker should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub paused: bool,
    /// The queue-wide concurrency limit to set (BullMQ's global concurrency), when the adapter
    /// drives one; `None`: leave it alone.
    pub concurrency: Option<u32>,
}

/// The timers.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Re-apply the desired state this often when nothing else happens.
    pub reapply: Duration,
    /// During a ramp, re-compute and apply the concurrency this often.
    pub ramp_tick: Duration,
    /// First retry after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reapply: Duration::from_secs(5),
            ramp_tick: Duration::from_secs(1),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What an apply found and did, as the transport tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub target: Target,
    /// The switch version the target came from (from [`Reconciler::poll`]).
    pub version: u64,
    /// The broker's pause state was not the target's: it was set now. `None`: it already was.
    /// The words say what was done (e.g. "set rq:suspended (expires in 60 s)").
    pub changed: Option<String>,
}

/// Something to write to the control plane's audit log (only when the broker's pause state
/// actually moved: re-applying an unchanged state every few seconds records nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub applied: SwitchState,
    pub version: u64,
    pub detail: String,
}

/// How the adapter reports itself, like a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportView {
    /// The state the broker is known to have (running before anything was applied).
    pub status: SwitchState,
    /// The version that state came from: behind the switch while the broker cannot be
    /// reached, so the control plane shows the adapter as not acknowledged.
    pub observed_version: u64,
    pub error: Option<String>,
}

/// One adapter's reconciliation.
#[derive(Debug)]
pub struct Reconciler {
    timing: Timing,
    /// The queue's normal global concurrency, when the adapter ramps through it.
    max_concurrency: Option<u32>,
    desired: Option<Switch>,
    applied: Option<(Target, u64)>,
    /// When the next apply is due (`None`: nothing known to apply yet).
    due: Option<Instant>,
    /// An apply was handed out and its answer is awaited.
    in_flight: bool,
    backoff: Duration,
    error: Option<String>,
}

impl Reconciler {
    pub fn new(timing: Timing, max_concurrency: Option<u32>) -> Self {
        Reconciler {
            timing,
            max_concurrency,
            desired: None,
            applied: None,
            due: None,
            in_flight: false,
            backoff: timing.backoff_min,
            error: None,
        }
    }

    /// The switch as the control plane says it is (the first event of each stream too).
    /// Applied at once, whether or not it changed: after a reconnect the broker may have
    /// drifted while we were away.
    pub fn on_switch(&mut self, s: Switch, now: Now) {
        self.desired = Some(s);
        self.due = Some(now.mono);
    }

    /// A new connection to the broker: it may have restarted empty, so apply now.
    pub fn on_broker_connected(&mut self, now: Now) {
        if self.desired.is_some() {
            self.due = Some(now.mono);
        }
    }

    /// What the broker should look like now, from the last switch seen.
    pub fn target(&self, now: Now) -> Option<(Target, u64)> {
        let s = self.desired.as_ref()?;
        let paused = s.state == SwitchState::Paused;
        let concurrency = self.max_concurrency.map(|n| {
            let f = s.admitted_fraction(now.wall);
            if paused {
                // The pause flag holds everything; the limit is the queue's normal one, and a
                // release with a ramp lowers it before lifting the flag (see `broker.rs`).
                n
            } else {
                ((f * f64::from(n)).ceil() as u32).clamp(1, n)
            }
        });
        Some((
            Target {
                paused,
                concurrency,
            },
            s.version,
        ))
    }

    /// The apply to run now, if one is due. At most one is outstanding at a time.
    pub fn poll(&mut self, now: Now) -> Option<(Target, u64)> {
        if self.in_flight || self.due.is_none_or(|d| d > now.mono) {
            return None;
        }
        let t = self.target(now)?;
        self.in_flight = true;
        Some(t)
    }

    /// The broker did what [`poll`](Self::poll) asked. Returns what to record, if the pause
    /// state moved.
    pub fn on_applied(&mut self, a: Applied, now: Now) -> Option<Record> {
        self.in_flight = false;
        self.error = None;
        self.backoff = self.timing.backoff_min;
        self.applied = Some((a.target, a.version));
        self.due = Some(now.mono + self.next_interval(now));
        a.changed.map(|detail| Record {
            applied: if a.target.paused {
                SwitchState::Paused
            } else {
                SwitchState::Running
            },
            version: a.version,
            detail,
        })
    }

    /// The broker could not be reached or refused. Keeps what was applied, reports the error,
    /// retries after a doubling backoff.
    pub fn on_apply_failed(&mut self, error: String, now: Now) {
        self.in_flight = false;
        self.error = Some(error);
        self.due = Some(now.mono + self.backoff);
        self.backoff = (self.backoff * 2).min(self.timing.backoff_max);
    }

    fn next_interval(&self, now: Now) -> Duration {
        let ramping = self.max_concurrency.is_some()
            && self
                .desired
                .as_ref()
                .and_then(|s| s.ramp.as_ref())
                .is_some_and(|r| !r.is_over(now.wall));
        if ramping {
            self.timing.ramp_tick.min(self.timing.reapply)
        } else {
            self.timing.reapply
        }
    }

    /// When the caller should wake up next to [`poll`](Self::poll).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.in_flight { None } else { self.due }
    }

    /// The adapter as a worker report.
    pub fn report(&self) -> ReportView {
        let (status, observed_version) = match self.applied {
            Some((t, v)) if t.paused => (SwitchState::Paused, v),
            Some((_, v)) => (SwitchState::Running, v),
            None => (SwitchState::Running, 0),
        };
        ReportView {
            status,
            observed_version,
            error: self.error.clone(),
        }
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{RampSpec, Source};

    struct Clock {
        base: Instant,
        wall: DateTime<Utc>,
        at: Duration,
    }

    impl Clock {
        fn new() -> Self {
            Clock {
                base: Instant::now(),
                wall: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                at: Duration::ZERO,
            }
        }
        fn now(&self) -> Now {
            Now {
                mono: self.base + self.at,
                wall: self.wall + chrono::Duration::from_std(self.at).unwrap(),
            }
        }
        fn advance(&mut self, d: Duration) {
            self.at += d;
        }
    }

    fn sw(state: SwitchState, version: u64) -> Switch {
        Switch {
            name: "workers".into(),
            description: String::new(),
            primary: true,
            state,
            version,
            changed_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            changed_by: "alice".into(),
            source: Source::Cli,
            reason: None,
            ramp: None,
            resume_request: None,
        }
    }

    fn ok(r: &mut Reconciler, clock: &Clock, changed: bool) -> Option<Record> {
        let (target, version) = r.poll(clock.now()).expect("an apply is due");
        r.on_applied(
            Applied {
                target,
                version,
                changed: changed.then(|| "set".to_string()),
            },
            clock.now(),
        )
    }

    #[test]
    fn nothing_is_applied_before_the_switch_is_known() {
        let clock = Clock::new();
        let mut r = Reconciler::new(Timing::default(), None);
        r.on_broker_connected(clock.now());
        assert_eq!(r.poll(clock.now()), None);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.report().observed_version, 0);
    }

    #[test]
    fn applies_at_once_then_on_the_timer_and_records_only_moves() {
        let mut clock = Clock::new();
        let mut r = Reconciler::new(Timing::default(), None);
        r.on_switch(sw(SwitchState::Paused, 2), clock.now());
        let rec = ok(&mut r, &clock, true).expect("the first pause is recorded");
        assert_eq!(rec.applied, SwitchState::Paused);
        assert_eq!(rec.version, 2);
        assert_eq!(
            r.report(),
            ReportView {
                status: SwitchState::Paused,
                observed_version: 2,
                error: None
            }
        );
        // Nothing more until the timer.
        assert_eq!(r.poll(clock.now()), None);
        clock.advance(Duration::from_millis(4_999));
        assert_eq!(r.poll(clock.now()), None);
        clock.advance(Duration::from_millis(1));
        // The broker still had it: re-applied, nothing recorded.
        assert_eq!(ok(&mut r, &clock, false), None);
        // The broker had lost it (a restart, a flush): set again and recorded.
        clock.advance(Duration::from_secs(5));
        assert!(ok(&mut r, &clock, true).is_some());
    }

    #[test]
    fn a_lost_control_plane_never_releases_the_broker() {
        let mut clock = Clock::new();
        let mut r = Reconciler::new(Timing::default(), None);
        r.on_switch(sw(SwitchState::Paused, 7), clock.now());
        ok(&mut r, &clock, true);
        // The control plane goes away: no event comes any more. For an hour of timer ticks,
        // every apply is a pause (which also renews RQ's expiry).
        for _ in 0..720 {
            clock.advance(Duration::from_secs(5));
            let (t, v) = r.poll(clock.now()).expect("keeps re-applying");
            assert!(t.paused, "released while the control plane was away");
            assert_eq!(v, 7);
            r.on_applied(
                Applied {
                    target: t,
                    version: v,
                    changed: None,
                },
                clock.now(),
            );
        }
        assert_eq!(r.report().status, SwitchState::Paused);
    }

    #[test]
    fn a_reconnect_applies_at_once_even_when_nothing_changed() {
        let mut clock = Clock::new();
        let mut r = Reconciler::new(Timing::default(), None);
        r.on_switch(sw(SwitchState::Paused, 3), clock.now());
        ok(&mut r, &clock, true);
        clock.advance(Duration::from_secs(1));
        r.on_switch(sw(SwitchState::Paused, 3), clock.now());
        assert!(r.poll(clock.now()).is_some());
        r.on_apply_failed("x".into(), clock.now());
        clock.advance(Duration::from_secs(1));
        r.on_broker_connected(clock.now());
        assert!(
            r.poll(clock.now()).is_some(),
            "a new broker connection applies at once"
        );
    }

    #[test]
    fn failures_back_off_report_and_keep_the_last_applied_state() {
        let mut clock = Clock::new();
        let mut r = Reconciler::new(Timing::default(), None);
        r.on_switch(sw(SwitchState::Running, 1), clock.now());
        ok(&mut r, &clock, false);
        r.on_switch(sw(SwitchState::Paused, 2), clock.now());
        let mut waits = Vec::new();
        for _ in 0..9 {
            let start = clock.now().mono;
            let (t, _) = r.poll(clock.now()).expect("due");
            assert!(t.paused);
            r.on_apply_failed("cannot reach redis at 127.0.0.1:1".into(), clock.now());
            let wait = r.next_deadline().unwrap() - start;
            waits.push(wait.as_millis());
            assert_eq!(r.poll(clock.now()), None, "no retry before the backoff");
            clock.advance(wait);
        }
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        let rep = r.report();
        assert_eq!(rep.status, SwitchState::Running, "what the broker last had");
        assert_eq!(
            rep.observed_version, 1,
            "behind the switch: not acknowledged"
        );
        assert!(rep.error.unwrap().contains("cannot reach redis"));
        // It answers again: applied, recorded, the error cleared, the backoff reset.
        assert!(ok(&mut r, &clock, true).is_some());
        assert_eq!(r.report().error, None);
        r.on_switch(sw(SwitchState::Paused, 2), clock.now());
        r.poll(clock.now()).unwrap();
        r.on_apply_failed("again".into(), clock.now());
        assert_eq!(
            r.next_deadline().unwrap() - clock.now().mono,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn the_ramp_limits_concurrency_step_by_step() {
        let mut clock = Clock::new();
        let mut r = Reconciler::new(Timing::default(), Some(20));
        r.on_switch(sw(SwitchState::Paused, 4), clock.now());
        let (t, _) = r.poll(clock.now()).unwrap();
        assert_eq!(
            t,
            Target {
                paused: true,
                concurrency: Some(20)
            }
        );
        r.on_applied(
            Applied {
                target: t,
                version: 4,
                changed: None,
            },
            clock.now(),
        );
        let mut s = sw(SwitchState::Running, 5);
        s.ramp = Some(
            RampSpec::preset("steps", 40)
                .unwrap()
                .start(clock.now().wall),
        );
        r.on_switch(s, clock.now());
        let mut seen = Vec::new();
        for _ in 0..50 {
            if let Some((t, v)) = r.poll(clock.now()) {
                assert!(!t.paused);
                if seen.last() != t.concurrency.as_ref() {
                    seen.push(t.concurrency.unwrap());
                }
                r.on_applied(
                    Applied {
                        target: t,
                        version: v,
                        changed: None,
                    },
                    clock.now(),
                );
            }
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(seen, [2, 5, 10, 20]);
    }
}
