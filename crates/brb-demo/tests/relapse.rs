//! The three outcomes of a release after a pause, on the demo's database model (`model.rs`:
//! the same latency curve, timeout and retry as the running demo) driven second by second by
//! the real release rules: `Ramp::fraction_at` for what the gates admit, `guard_core` for the
//! guard's checks and verdicts, `Ramp::next_guarded_step` for the store's advance. No clock:
//! a paused minute of backlog, then ten minutes of release, in milliseconds.
//!
//! - resume at once: the whole fleet hits the backlog, every query times out, the backlog only
//!   grows and the database stays overloaded (a relapse that outlives its trigger);
//! - a guarded stepped release (`steps:2m`, `db_load < 100`): the backlog drains at 25 % and
//!   50 %, full release finds it empty, the database never passes 100 %;
//! - a release too fast for the backlog (`steps:20s`) reaches 100 % with a backlog; the guard
//!   sees the overload and pauses again after three failing checks.
#![allow(clippy::unwrap_used)]

use brb_api::{GuardSpec, Ramp, RampSpec, SampleKind, Series, Source, Switch, SwitchState};
use brb_demo::DemoConfig;
use brb_demo::model::{Model, ModelConfig, Second};
use brb_server::guard_core::{GuardRun, Verdict, measure};
use chrono::{DateTime, Utc};

const PAUSED_SECS: i64 = 60;
const RELEASE_SECS: i64 = 600;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

#[derive(Debug)]
struct Outcome {
    seconds: Vec<Second>,
    /// When the guard paused again, and why.
    tripped: Option<(i64, String)>,
    finished_at: Option<i64>,
    backlog_at_resume: f64,
}

/// A minute paused, then `release` (None: at once) for ten minutes.
fn scenario(release: Option<(&str, &str)>) -> Outcome {
    let mut model = Model::new(ModelConfig::from(&DemoConfig::new("http://x", "t", "w")));
    let mut seconds = Vec::new();
    for _ in 0..PAUSED_SECS {
        seconds.push(model.second(0.0));
    }
    let backlog_at_resume = seconds.last().unwrap().queue_depth;
    let mut sw = Switch {
        name: "workers".into(),
        description: String::new(),
        primary: true,
        state: SwitchState::Running,
        version: 2,
        changed_at: t(PAUSED_SECS),
        changed_by: "alice".into(),
        source: Source::Cli,
        reason: None,
        ramp: release.map(|(ramp, guard)| {
            Ramp::guarded(
                &RampSpec::parse(ramp).unwrap(),
                vec![GuardSpec::parse(guard).unwrap()],
                t(PAUSED_SECS),
            )
            .unwrap()
        }),
        resume_request: None,
    };
    let mut run = GuardRun::new(&sw);
    let mut db_load = Series {
        name: "db_load".into(),
        labels: Default::default(),
        kind: SampleKind::Gauge,
        points: Vec::new(),
    };
    let (mut tripped, mut finished_at) = (None, None);
    for s in PAUSED_SECS..PAUSED_SECS + RELEASE_SECS {
        let sec = model.second(sw.admitted_fraction(t(s)));
        seconds.push(sec);
        db_load.points.push((s, sec.db_load));
        let Some(r) = run.as_mut() else { continue };
        let now = t(s);
        match r.on_tick(now, |g| measure(g, std::slice::from_ref(&db_load), s)) {
            Verdict::Advance { .. } => {
                sw.version += 1;
                sw.ramp = sw.ramp.as_ref().unwrap().next_guarded_step(now);
                if sw.ramp.is_none() {
                    finished_at = Some(s);
                }
                run = GuardRun::new(&sw);
            }
            Verdict::Trip { reason } => {
                sw.version += 1;
                sw.state = SwitchState::Paused;
                sw.ramp = None;
                tripped = Some((s, reason));
                run = None;
            }
            Verdict::Nothing | Verdict::Checked => {}
        }
    }
    Outcome {
        seconds,
        tripped,
        finished_at,
        backlog_at_resume,
    }
}

fn print(name: &str, o: &Outcome) {
    println!(
        "--- {name}: backlog at resume {:.0} jobs",
        o.backlog_at_resume
    );
    println!("   t  admitted  queue_depth  db_load%  jobs/s  failed/s");
    for (i, s) in o.seconds.iter().enumerate().step_by(30) {
        println!(
            "{:4}  {:7.0}%  {:11.0}  {:8.1}  {:6.0}  {:8.0}",
            i,
            s.admitted * 100.0,
            s.queue_depth,
            s.db_load,
            s.jobs_per_second,
            s.jobs_failed
        );
    }
    if let Some((at, why)) = &o.tripped {
        println!("   re-paused by the guard at t={at}: {why}");
    }
    if let Some(at) = o.finished_at {
        println!("   guarded release finished at t={at}");
    }
}

#[test]
fn resume_at_once_relapses() {
    let o = scenario(None);
    print("resume at once", &o);
    let release = &o.seconds[PAUSED_SECS as usize..];
    // The last five minutes: overloaded every second, nothing completes, the backlog grows.
    let tail = &release[release.len() - 300..];
    assert!(tail.iter().all(|s| s.db_load > 100.0), "{:?}", tail[0]);
    assert!(
        tail.iter()
            .all(|s| s.jobs_per_second == 0.0 && s.jobs_failed > 0.0)
    );
    let end = release.last().unwrap().queue_depth;
    assert!(
        end > o.backlog_at_resume * 2.0,
        "backlog {} → {end}",
        o.backlog_at_resume
    );
}

#[test]
fn a_guarded_stepped_release_recovers() {
    let o = scenario(Some(("steps:2m", "db_load < 100, interval=5s, failures=3")));
    print("guarded steps:2m, db_load < 100", &o);
    assert!(o.tripped.is_none(), "{:?}", o.tripped);
    let finished = o.finished_at.expect("the release finished");
    let release = &o.seconds[PAUSED_SECS as usize..];
    let peak = release.iter().map(|s| s.db_load).fold(0.0, f64::max);
    assert!(peak < 100.0, "peak load {peak}");
    assert!(
        release.iter().all(|s| s.jobs_failed == 0.0),
        "no query timed out"
    );
    let end = release.last().unwrap();
    assert_eq!(end.admitted, 1.0);
    assert!(end.queue_depth < 50.0 && end.db_load < 40.0, "{end:?}");
    // Four steps of 40 s, the last one watched before the end: never sooner.
    assert!(finished >= PAUSED_SECS + 160, "finished at {finished}");
}

#[test]
fn a_release_too_fast_for_the_backlog_trips_and_repauses() {
    let o = scenario(Some((
        "steps:20s",
        "db_load < 100, interval=5s, failures=3",
    )));
    print("guarded steps:20s, db_load < 100", &o);
    let (at, why) = o.tripped.clone().expect("the guard re-paused");
    assert!(
        why.starts_with("guard db_load < 100 failed 3 checks in a row at step 4/4 (100%): 166.7"),
        "{why}"
    );
    let release = &o.seconds[PAUSED_SECS as usize..];
    let full_at = release.iter().position(|s| s.admitted == 1.0).unwrap() as i64 + PAUSED_SECS;
    // Overloaded from full release until the pause: three failing checks 5 s apart, the
    // first within 5 s of the step.
    assert!(
        (10..=20).contains(&(at - full_at)),
        "full at {full_at}, re-paused at {at}"
    );
    let after = &o.seconds[(at + 1) as usize..];
    assert!(after.iter().all(|s| s.admitted == 0.0 && s.db_load == 0.0));
    assert!(o.finished_at.is_none());
}
