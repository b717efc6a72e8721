//! The rules of a health-guarded release, with no I/O and no clock: the evaluator
//! (`guard.rs`) passes the time and the measurements in, and commits what comes out.
//!
//! One [`GuardRun`] follows one step of a guarded release (one switch version). Each guard is
//! checked every `interval_secs`, first one interval after the step began, over the last
//! `interval_secs` complete seconds of its series ([`measure`]; the evaluator in `guard.rs`
//! leaves out the second in progress), points from the step's first two
//! seconds left out ([`GuardRun::first_point_sec`]):
//! * **Pass** resets the guard's failure count; **Fail** adds one; **NoData** does neither.
//! * The step advances once its dwell (`step_secs`) has passed and every guard's last check on
//!   this step was a pass. On the last step (100%) the same rule ends the release: the guards
//!   watch full load for one dwell first.
//! * A guard failing `failure_limit` checks in a row trips: the switch is paused again.
//! * Otherwise the step holds, which needs no write: the stored step already is a hold.
//!
//! So a guarded release never advances on a failing or missing measurement, and no data (the
//! series stopped, the Prometheus query fails) holds it where it is until data returns or a
//! person acts. The counts live in memory: a restarted evaluator starts them at zero, which
//! delays a trip by at most `failure_limit` intervals.

use brb_api::{
    GuardCheck, GuardOutcome, GuardPhase, GuardSpec, GuardStatus, RampGuard, Series, Switch,
    SwitchState,
};
use chrono::{DateTime, Duration, Utc};

/// One measurement of one guard.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Pass(f64),
    Fail(f64),
    /// Why there is no value.
    NoData(String),
}

impl Check {
    fn outcome(&self) -> GuardOutcome {
        match self {
            Check::Pass(_) => GuardOutcome::Pass,
            Check::Fail(_) => GuardOutcome::Fail,
            Check::NoData(_) => GuardOutcome::NoData,
        }
    }

    fn value(&self) -> Option<f64> {
        match self {
            Check::Pass(v) | Check::Fail(v) => Some(*v),
            Check::NoData(_) => None,
        }
    }
}

/// What the evaluator must do after a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing was due.
    Nothing,
    /// Guards were checked; the step stays (the status changed).
    Checked,
    /// Move the release on from `from_step` (to the next step, or to its end after the last);
    /// `reason` holds the passing values.
    Advance { from_step: u32, reason: String },
    /// Pause the switch again.
    Trip { reason: String },
}

#[derive(Debug, Clone)]
struct GuardState {
    spec: GuardSpec,
    next_check: DateTime<Utc>,
    last: Option<(Check, DateTime<Utc>)>,
    consecutive_failures: u32,
}

/// One step of one guarded release.
#[derive(Debug, Clone)]
pub struct GuardRun {
    switch: String,
    version: u64,
    guard: RampGuard,
    guards: Vec<GuardState>,
    phase: GuardPhase,
    reason: Option<String>,
    /// An advance or trip was handed out; nothing more until [`GuardRun::retry`].
    decided: bool,
}

/// Rounds a value for messages: 97.24 → "97.2".
fn num(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

impl GuardRun {
    /// The run for a switch's current step, or `None` when it is not in a guarded release.
    pub fn new(switch: &Switch) -> Option<GuardRun> {
        if switch.state != SwitchState::Running {
            return None;
        }
        let guard = *switch.ramp.as_ref()?.guard.clone()?;
        let guards = guard
            .guards
            .iter()
            .map(|spec| GuardState {
                spec: spec.clone(),
                next_check: guard.step_started_at
                    + Duration::seconds(spec.interval_secs.max(1) as i64),
                last: None,
                consecutive_failures: 0,
            })
            .collect();
        Some(GuardRun {
            switch: switch.name.clone(),
            version: switch.version,
            guard,
            guards,
            phase: GuardPhase::Advancing,
            reason: None,
            decided: false,
        })
    }

    /// The switch version this run follows: a new version needs a new run.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The first unix second whose points may count for this step. A point pushed without
    /// `ts` is stamped with the second it arrived in, and a pusher sends what it measured over
    /// the period before (an average of each second): a point stamped in the step's first
    /// second, or in the next, may describe the step before. Checks measure only points from
    /// here on, so a step never advances, nor a release finishes, on the previous step's load;
    /// until there is such a point a check has no data and the step holds.
    pub fn first_point_sec(&self) -> i64 {
        self.guard.step_started_at.timestamp() + 2
    }

    fn dwell_ends_at(&self) -> DateTime<Utc> {
        self.guard.step_started_at + Duration::seconds(self.guard.step_secs as i64)
    }

    fn step_label(&self) -> String {
        format!(
            "step {}/{} ({:.0}%)",
            self.guard.step + 1,
            self.guard.steps.len(),
            self.guard.fraction() * 100.0
        )
    }

    /// Checks the guards that are due at `now` with `measure` and decides.
    pub fn on_tick(
        &mut self,
        now: DateTime<Utc>,
        mut measure: impl FnMut(&GuardSpec) -> Check,
    ) -> Verdict {
        if self.decided {
            return Verdict::Nothing;
        }
        let mut checked = false;
        for g in &mut self.guards {
            if now < g.next_check {
                continue;
            }
            let c = measure(&g.spec);
            match c {
                Check::Pass(_) => g.consecutive_failures = 0,
                Check::Fail(_) => g.consecutive_failures += 1,
                Check::NoData(_) => {}
            }
            g.last = Some((c, now));
            let interval = Duration::seconds(g.spec.interval_secs.max(1) as i64);
            // A late tick (a busy machine) checks once, not once per missed interval.
            g.next_check = (g.next_check + interval).max(now + interval / 2);
            checked = true;
        }
        if let Some(g) = self
            .guards
            .iter()
            .find(|g| g.consecutive_failures >= g.spec.failure_limit)
        {
            let value = g
                .last
                .as_ref()
                .and_then(|(c, _)| c.value())
                .unwrap_or(f64::NAN);
            let limit = g
                .spec
                .limit_crossed(value)
                .map(|l| format!(" (limit {})", num(l)))
                .unwrap_or_default();
            let reason = format!(
                "guard {} failed {} checks in a row at {}: {}{limit}",
                g.spec,
                g.consecutive_failures,
                self.step_label(),
                num(value)
            );
            self.phase = GuardPhase::Tripped;
            self.reason = Some(reason.clone());
            self.decided = true;
            return Verdict::Trip { reason };
        }
        let all_pass = self.guards.iter().all(
            |g| matches!(&g.last, Some((Check::Pass(_), at)) if *at >= self.guard.step_started_at),
        );
        if all_pass && now >= self.dwell_ends_at() {
            let values: Vec<String> = self
                .guards
                .iter()
                .map(|g| {
                    let v = g.last.as_ref().and_then(|(c, _)| c.value()).unwrap_or(0.0);
                    format!("{} {}", g.spec.series, num(v))
                })
                .collect();
            let reason = format!("guard passed ({})", values.join(", "));
            self.phase = if self.guard.is_last_step() {
                GuardPhase::Finished
            } else {
                GuardPhase::Advancing
            };
            self.reason = None;
            self.decided = true;
            return Verdict::Advance {
                from_step: self.guard.step,
                reason,
            };
        }
        let holding: Vec<String> = self
            .guards
            .iter()
            .filter_map(|g| match &g.last {
                Some((Check::NoData(why), _)) => {
                    Some(format!("holding at {}: {why}", self.step_label()))
                }
                Some((Check::Fail(v), _)) => Some(format!(
                    "holding at {}: {} is {} ({} of {} failures)",
                    self.step_label(),
                    g.spec,
                    num(*v),
                    g.consecutive_failures,
                    g.spec.failure_limit
                )),
                _ => None,
            })
            .collect();
        if holding.is_empty() {
            self.phase = GuardPhase::Advancing;
            self.reason = None;
        } else {
            self.phase = GuardPhase::Holding;
            self.reason = Some(holding.join("; "));
        }
        if checked {
            Verdict::Checked
        } else {
            Verdict::Nothing
        }
    }

    /// After a decision could not be committed (the store failed): decide again.
    pub fn retry(&mut self) {
        self.decided = false;
    }

    pub fn status(&self, now: DateTime<Utc>) -> GuardStatus {
        GuardStatus {
            switch: self.switch.clone(),
            version: self.version,
            phase: self.phase,
            step: self.guard.step + 1,
            steps: self.guard.steps.len() as u32,
            fraction: self.guard.fraction(),
            dwell_ends_at: self.dwell_ends_at(),
            reason: self.reason.clone(),
            checks: self
                .guards
                .iter()
                .map(|g| GuardCheck {
                    guard: g.spec.clone(),
                    condition: g.spec.to_string(),
                    outcome: g
                        .last
                        .as_ref()
                        .map_or(GuardOutcome::Pending, |(c, _)| c.outcome()),
                    value: g.last.as_ref().and_then(|(c, _)| c.value()),
                    consecutive_failures: g.consecutive_failures,
                    detail: match &g.last {
                        Some((Check::NoData(why), _)) => Some(why.clone()),
                        _ => None,
                    },
                    checked_at: g.last.as_ref().map(|(_, at)| *at),
                })
                .collect(),
            at: now,
        }
    }
}

/// One check of `spec` at unix second `now_sec`: the mean of its series' points in the last
/// `interval_secs` seconds, `(now_sec - interval, now_sec]`. `series` are the series with the
/// guard's name (any labels).
pub fn measure(spec: &GuardSpec, series: &[Series], now_sec: i64) -> Check {
    let matching: Vec<&Series> = series
        .iter()
        .filter(|s| s.name == spec.series && (spec.labels.is_empty() || s.labels == spec.labels))
        .collect();
    let s = match matching.as_slice() {
        [] => return Check::NoData(format!("no series named {}", spec.series)),
        [one] => *one,
        many => {
            return Check::NoData(format!(
                "ambiguous: {} series named {}; name the labels",
                many.len(),
                spec.series
            ));
        }
    };
    let since = now_sec - spec.interval_secs.max(1) as i64;
    let values: Vec<f64> = s
        .points
        .iter()
        .filter(|(t, v)| *t > since && *t <= now_sec && v.is_finite())
        .map(|(_, v)| *v)
        .collect();
    if values.is_empty() {
        return Check::NoData(format!(
            "no data for {} in the last {} s",
            spec.series, spec.interval_secs
        ));
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    if spec.passes(mean) {
        Check::Pass(mean)
    } else {
        Check::Fail(mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{Ramp, RampSpec, SampleKind, Source};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn guard(s: &str) -> GuardSpec {
        GuardSpec::parse(s).unwrap()
    }

    /// A switch at the first step of `steps:90s` (30 s per step) guarded by `guards`.
    fn switch(guards: Vec<GuardSpec>) -> Switch {
        let spec = RampSpec::parse("steps:90s").unwrap();
        Switch {
            name: "workers".into(),
            description: String::new(),
            primary: true,
            state: SwitchState::Running,
            version: 5,
            changed_at: t(0),
            changed_by: "alice".into(),
            source: Source::Cli,
            reason: None,
            ramp: Some(Ramp::guarded(&spec, guards, t(0)).unwrap()),

            resume_request: None,
        }
    }

    /// The switch after the evaluator's advance at `now`.
    fn advanced(s: &Switch, now: DateTime<Utc>) -> Switch {
        let mut n = s.clone();
        n.version += 1;
        n.ramp = s.ramp.as_ref().unwrap().next_guarded_step(now);
        n
    }

    /// Ticks every second from `from` to `to` with a fixed answer per guard.
    /// A `< 80` check answering `answers` (second, value), and 0 (a pass) at other seconds.
    fn below_80(answers: &[(i64, f64)]) -> impl FnMut(&GuardSpec, i64) -> Check + '_ {
        move |_, s| {
            let v = answers.iter().find(|(at, _)| *at == s).map_or(0.0, |a| a.1);
            if v < 80.0 {
                Check::Pass(v)
            } else {
                Check::Fail(v)
            }
        }
    }

    fn run(
        r: &mut GuardRun,
        from: i64,
        to: i64,
        mut f: impl FnMut(&GuardSpec, i64) -> Check,
    ) -> Vec<(i64, Verdict)> {
        let mut out = Vec::new();
        for s in from..=to {
            let v = r.on_tick(t(s), |g| f(g, s));
            if v != Verdict::Nothing && v != Verdict::Checked {
                out.push((s, v));
            }
        }
        out
    }

    #[test]
    fn passes_advance_one_step_per_dwell() {
        let sw = switch(vec![guard("db_load < 80, interval=10s")]);
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 40, |_, _| Check::Pass(41.0));
        // Checked at 10, 20, 30: the dwell ends at 30 with a pass.
        assert_eq!(
            v,
            vec![(
                30,
                Verdict::Advance {
                    from_step: 0,
                    reason: "guard passed (db_load 41)".into()
                }
            )]
        );
        assert_eq!(r.status(t(40)).phase, GuardPhase::Advancing);
        // The next step starts its own dwell: no advance before 30 s more.
        let sw = advanced(&sw, t(30));
        let mut r = GuardRun::new(&sw).unwrap();
        assert!(run(&mut r, 30, 59, |_, _| Check::Pass(41.0)).is_empty());
        assert_eq!(
            run(&mut r, 60, 60, |_, _| Check::Pass(41.0)),
            vec![(
                60,
                Verdict::Advance {
                    from_step: 1,
                    reason: "guard passed (db_load 41)".into()
                }
            )]
        );
    }

    #[test]
    fn a_failure_resets_on_pass_but_blocks_the_advance() {
        let sw = switch(vec![guard("db_load < 80, interval=10s, failures=3")]);
        let mut r = GuardRun::new(&sw).unwrap();
        // Fail, fail, pass, fail, fail: never three in a row, never a pass at the dwell's end.
        let answers = [(10, 90.0), (20, 91.0), (30, 50.0), (40, 92.0), (50, 93.0)];
        let v = run(&mut r, 0, 55, below_80(&answers));
        // The pass at 30 coincides with the dwell's end: it advances then. Run it again
        // with the fail at 30 so the dwell ends on a failure.
        assert!(
            matches!(v.as_slice(), [(30, Verdict::Advance { .. })]),
            "{v:?}"
        );
        let mut r = GuardRun::new(&sw).unwrap();
        let answers = [(10, 50.0), (20, 90.0), (30, 91.0), (40, 50.0), (50, 90.0)];
        let v = run(&mut r, 0, 55, below_80(&answers));
        assert!(
            matches!(v.as_slice(), [(40, Verdict::Advance { .. })]),
            "{v:?}"
        );
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 35, |_, s| {
            if s == 10 {
                Check::Pass(1.0)
            } else {
                Check::Fail(95.0)
            }
        });
        assert!(v.is_empty(), "two failures hold: {v:?}");
        let st = r.status(t(35));
        assert_eq!(st.phase, GuardPhase::Holding);
        assert_eq!(st.checks[0].consecutive_failures, 2);
        assert!(
            st.reason
                .unwrap()
                .contains("db_load < 80 is 95 (2 of 3 failures)")
        );
    }

    #[test]
    fn three_consecutive_failures_trip() {
        let sw = switch(vec![guard("db_load < 80, interval=10s, failures=3")]);
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 60, |_, _| Check::Fail(97.24));
        assert_eq!(
            v,
            vec![(
                30,
                Verdict::Trip {
                    reason: "guard db_load < 80 failed 3 checks in a row at step 1/4 (10%): 97.2 (limit 80)".into()
                }
            )]
        );
        assert_eq!(r.status(t(60)).phase, GuardPhase::Tripped);
        // Decided once: a tick after cannot hand out a second pause.
        assert_eq!(r.on_tick(t(70), |_| Check::Fail(99.0)), Verdict::Nothing);
        r.retry();
        assert!(matches!(
            r.on_tick(t(80), |_| Check::Fail(99.0)),
            Verdict::Trip { .. }
        ));
    }

    #[test]
    fn no_data_holds_forever_and_never_trips() {
        let sw = switch(vec![guard("db_load < 80, interval=5s, failures=1")]);
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 3600, |_, _| {
            Check::NoData("no data for db_load in the last 5 s".into())
        });
        assert!(v.is_empty(), "{v:?}");
        let st = r.status(t(3600));
        assert_eq!(st.phase, GuardPhase::Holding);
        assert_eq!(st.checks[0].outcome, GuardOutcome::NoData);
        assert_eq!(
            st.reason.as_deref(),
            Some("holding at step 1/4 (10%): no data for db_load in the last 5 s")
        );
    }

    #[test]
    fn no_data_then_data_resumes_advancing() {
        let sw = switch(vec![guard("db_load < 80, interval=10s")]);
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 100, |_, s| {
            if s < 70 {
                Check::NoData("gone".into())
            } else {
                Check::Pass(10.0)
            }
        });
        assert!(
            matches!(v.as_slice(), [(70, Verdict::Advance { from_step: 0, .. })]),
            "{v:?}"
        );
    }

    #[test]
    fn bake_watches_one_dwell_at_full_then_finishes() {
        let mut sw = switch(vec![guard("db_load < 80, interval=10s")]);
        for at in [30, 60, 90] {
            sw = advanced(&sw, t(at));
        }
        assert_eq!(sw.ramp.as_ref().unwrap().fraction_at(t(95)), 1.0);
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 90, 130, |_, _| Check::Pass(50.0));
        assert!(
            matches!(v.as_slice(), [(120, Verdict::Advance { from_step: 3, .. })]),
            "{v:?}"
        );
        assert_eq!(r.status(t(130)).phase, GuardPhase::Finished);
    }

    #[test]
    fn trip_during_bake_repauses() {
        let mut sw = switch(vec![guard("db_load < 80, interval=5s, failures=2")]);
        for at in [30, 60, 90] {
            sw = advanced(&sw, t(at));
        }
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 90, 130, |_, s| {
            if s < 100 {
                Check::Pass(50.0)
            } else {
                Check::Fail(120.0)
            }
        });
        assert!(
            matches!(v.as_slice(), [(105, Verdict::Trip { reason })] if reason.contains("step 4/4 (100%)")),
            "{v:?}"
        );
    }

    #[test]
    fn two_guards_all_must_pass() {
        let sw = switch(vec![
            guard("db_load < 80, interval=10s"),
            guard("queue_depth < 100, interval=5s"),
        ]);
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 60, |g, s| {
            if g.series == "queue_depth" && s < 50 {
                Check::Fail(500.0)
            } else if g.series == "queue_depth" {
                Check::Pass(10.0)
            } else {
                Check::Pass(40.0)
            }
        });
        // queue_depth fails until 50 but only every 5 s with failures=3... it trips first.
        assert!(
            matches!(v.as_slice(), [(15, Verdict::Trip { .. })]),
            "{v:?}"
        );
        let mut r = GuardRun::new(&sw).unwrap();
        let v = run(&mut r, 0, 60, |g, s| match (g.series.as_str(), s) {
            ("queue_depth", s) if s < 45 => Check::NoData("quiet".into()),
            ("queue_depth", _) => Check::Pass(10.0),
            _ => Check::Pass(40.0),
        });
        assert!(
            matches!(v.as_slice(), [(45, Verdict::Advance { .. })]),
            "{v:?}"
        );
    }

    fn series(name: &str, labels: &[(&str, &str)], points: Vec<(i64, f64)>) -> Series {
        Series {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            kind: SampleKind::Gauge,
            points,
        }
    }

    #[test]
    fn ambiguous_series_is_no_data() {
        let g = guard("db_load < 80");
        let two = [
            series("db_load", &[("db", "a")], vec![(100, 1.0)]),
            series("db_load", &[("db", "b")], vec![(100, 1.0)]),
        ];
        assert!(
            matches!(measure(&g, &two, 100), Check::NoData(w) if w.contains("ambiguous: 2 series"))
        );
        let mut g = g;
        g.labels.insert("db".into(), "b".into());
        assert_eq!(measure(&g, &two, 100), Check::Pass(1.0));
        assert!(
            matches!(measure(&g, &[], 100), Check::NoData(w) if w.contains("no series named db_load"))
        );
    }

    #[test]
    fn window_mean_ignores_older_points() {
        let g = guard("db_load < 80, interval=10s");
        let s = [series(
            "db_load",
            &[],
            vec![
                (85, 1000.0),
                (90, 1000.0),
                (91, 70.0),
                (100, 90.0),
                (101, 5000.0),
            ],
        )];
        // (90, 100]: 70 and 90.
        assert_eq!(measure(&g, &s, 100), Check::Fail(80.0));
        assert!(
            matches!(measure(&g, &s, 120), Check::NoData(w) if w.contains("no data for db_load in the last 10 s"))
        );
    }

    proptest! {
        /// Whatever the measurements: never an advance unless the last check of every guard on
        /// this step passed; never two advances within one dwell; no data alone never moves it.
        #[test]
        fn never_advances_blind_or_twice_per_dwell(
            answers in proptest::collection::vec((0u8..3, 0u8..3), 1..400),
            interval_a in 1u64..12,
            interval_b in 1u64..12,
        ) {
            let a = GuardSpec { interval_secs: interval_a, ..guard("a < 50") };
            let b = GuardSpec { interval_secs: interval_b, ..guard("b < 50") };
            let mut sw = switch(vec![a, b]);
            let mut r = GuardRun::new(&sw).unwrap();
            let mut last_advance = 0i64;
            let mut last_seen: BTreeMap<String, u8> = BTreeMap::new();
            for (s, (ra, rb)) in answers.iter().enumerate() {
                let s = s as i64;
                let pick = |k: u8| match k { 0 => Check::Pass(1.0), 1 => Check::Fail(99.0), _ => Check::NoData("x".into()) };
                let v = r.on_tick(t(s), |g| {
                    let k = if g.series == "a" { *ra } else { *rb };
                    last_seen.insert(g.series.clone(), k);
                    pick(k)
                });
                match v {
                    Verdict::Advance { .. } => {
                        prop_assert!(last_seen.len() == 2 && last_seen.values().all(|k| *k == 0), "advanced on {last_seen:?}");
                        prop_assert!(s - last_advance >= 30, "advanced at {s} after {last_advance}");
                        prop_assert!(answers.iter().any(|(x, y)| *x == 0 && *y == 0));
                        last_advance = s;
                        if sw.ramp.as_ref().unwrap().guard.as_ref().unwrap().is_last_step() { break; }
                        sw = advanced(&sw, t(s));
                        r = GuardRun::new(&sw).unwrap();
                        last_seen.clear();
                    }
                    Verdict::Trip { .. } => {
                        prop_assert!(answers.iter().any(|(x, y)| *x == 1 || *y == 1));
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
}
