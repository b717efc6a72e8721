//! The outcomes of a release after a pause, on the real demo: `brb server --demo` as a child
//! process (40 SDK gates over HTTP, the simulated database whose queries time out after 80 ms
//! and are retried), pressed and released with the `brb` CLI as a person would, watched through
//! the demo's own series (`db_load`, `queue_depth`, `jobs_per_second`, `jobs_failed`) and the
//! guard's live status:
//! - (a) a pause: the database recovers, `db_load` falls to 0 (from its everyday load, and
//!   from an overload) while the backlog waits in the queue;
//! - (b) resume at once onto the backlog: a relapse, the whole fleet on the backlog, every
//!   query timing out, nothing done, the load over 100 % for as long as it is watched, until
//!   someone presses again;
//! - (c) a guarded stepped release, `--guard 'db_load < 80'`: the backlog drains while the
//!   steps advance, each step only on a passing check under 80 %, the load never reaches
//!   100 % and no query times out. Where a backlog is left at 50 % the load is 83.3 % (20 of
//!   the database's 24) until it drains; a failing check there holds the step, which the test
//!   prints but does not count on;
//! - (d) a release too fast for its backlog: full release meets the backlog, every query times
//!   out and the backlog grows, so nothing the guard waits for can undo it; the guard pauses
//!   the switch again (audit source `guard`, the reason naming the guard, the step and the
//!   value the demo published), and the database recovers as from any pause.
//!
//! Every wait is for what the series or the switch show, never a fixed time. The demo runs at
//! its real speed (`make run`'s); releases use steps of a few seconds and guards checked every
//! second or two, so each outcome takes seconds. `--demo-steady` turns off the demo's slow
//! swell and random bursts of traffic (a 5 s burst lands anywhere, and in a step of a release
//! it changes what that step sees); the jitter of arrivals stays. The demo's queue and database
//! run in simulated time from what the gates admit (`brb-demo`), so a loaded machine delays
//! what the test sees but does not change it: the loads above are the model's, on any machine.
//! One demo runs at a time: forty gates with their streams and reports are load enough.
//!
//! With `BRB_GUARD_CURVES=DIR` each outcome's series are written to `DIR/e2e-<outcome>.csv`
//! (`make guard-curves` writes them to `docs/guard-curves/`).
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use brb_e2e::{Api, ServerProc, poll_for};
use serde_json::Value;

/// The longest any one wait may take on a loaded machine; each normally takes seconds.
const LIMIT: Duration = Duration::from_secs(45);
/// How often a wait looks: four times a second, as the demo publishes once a second.
const POLL: Duration = Duration::from_millis(250);
/// The database has recovered when its load is under this (percent of capacity).
const RECOVERED: f64 = 5.0;
const SERIES: [&str; 4] = ["db_load", "queue_depth", "jobs_per_second", "jobs_failed"];

static ONE_DEMO: Mutex<()> = Mutex::new(());

fn one_demo() -> MutexGuard<'static, ()> {
    ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn now_sec() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One `brb server --demo --demo-steady`, its admin token, and a home for the CLI.
struct Demo {
    dir: tempfile::TempDir,
    server: ServerProc,
    api: Api,
    token: String,
    /// Unix second the demo's workers were all running: the CSV's zero.
    started: i64,
}

impl Demo {
    async fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let server = ServerProc::start_args(&data, &["--demo", "--demo-steady"], &[]);
        let api = Api::new(&server);
        let token = server.admin_token();
        let mut demo = Demo {
            dir,
            server,
            api,
            token,
            started: 0,
        };
        // Running: the whole fleet connected and jobs being done.
        let since = now_sec();
        demo.until("40 demo workers running and jobs done", |d| async move {
            let (_, c) = d.get("/switches/workers/workers").await;
            let done = d.points("jobs_per_second", since).await;
            (c["running"] == 40 && done.iter().any(|p| p.1 > 0.0)).then_some(())
        })
        .await;
        demo.started = now_sec();
        demo
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.api.call("GET", path, &self.token, None).await
    }

    /// `name`'s points from unix second `since` on.
    async fn points(&self, name: &str, since: i64) -> Vec<(i64, f64)> {
        let (s, v) = self
            .get(&format!("/metrics/series?name={name}&since={since}"))
            .await;
        assert_eq!(s, 200, "{v}");
        v["series"][0]["points"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| Some((p[0].as_i64()?, p[1].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn switch(&self) -> Value {
        let (s, v) = self.get("/switches/workers").await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls `f` (four times a second: the demo publishes once a second) until it yields
    /// `Some`, or fails naming `what` after [`LIMIT`].
    async fn until<'a, T, F, Fut>(&'a self, what: &str, mut f: F) -> T
    where
        F: FnMut(&'a Demo) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        poll_for(LIMIT, POLL, || f(self)).await.unwrap_or_else(|| {
            panic!(
                "{what}: not within {LIMIT:?}; the server's log:\n{}",
                self.server.log()
            )
        })
    }

    /// Runs the `brb` CLI as a person at this machine would (the URL and the admin token in
    /// the environment); it must succeed. Returns what it printed.
    async fn brb(&self, args: &[&str]) -> String {
        let home = self.dir.path().join("home");
        let (url, token) = (self.server.url.clone(), self.token.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            brb_e2e::cli(
                &home,
                &[("BRB_URL", url.as_str()), ("BRB_TOKEN", token.as_str())],
                &args,
            )
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "brb failed: {text}");
        text
    }

    /// `brb pause`, then waits until the database has recovered: a `db_load` point under
    /// [`RECOVERED`] from a whole second after the pause. Returns the pause's unix second and
    /// how long the recovery took.
    async fn pause_and_recover(&self, why: &str) -> (i64, Duration) {
        let out = self.brb(&["pause", "--reason", why]).await;
        assert!(out.contains("40/40 workers acknowledged"), "{out}");
        let t = Instant::now();
        let at = changed_at(&self.switch().await);
        let load = self
            .until("the database recovering after the pause", |d| async move {
                let pts = d.points("db_load", at + 2).await;
                pts.iter().find(|p| p.1 < RECOVERED).copied()
            })
            .await;
        println!("paused ({why}): db_load {} at +{} s", load.1, load.0 - at);
        (at, t.elapsed())
    }

    /// Waits until the queue holds at least `jobs`: the backlog a release meets. Returns it.
    async fn backlog(&self, jobs: f64, since: i64) -> f64 {
        self.until("the backlog growing while paused", |d| async move {
            let q = d.points("queue_depth", since).await.last()?.1;
            (q >= jobs).then_some(q)
        })
        .await
    }

    /// The four series from `since` on, by second.
    async fn table(&self, since: i64) -> BTreeMap<i64, [Option<f64>; 4]> {
        let mut rows: BTreeMap<i64, [Option<f64>; 4]> = BTreeMap::new();
        for (i, name) in SERIES.iter().enumerate() {
            for (t, v) in self.points(name, since).await {
                rows.entry(t).or_default()[i] = Some(v);
            }
        }
        rows
    }

    /// With `BRB_GUARD_CURVES=DIR`: the series since the demo started, as `e2e-<name>.csv`.
    async fn write_curves(&self, name: &str) {
        let Some(dir) = std::env::var_os("BRB_GUARD_CURVES").map(PathBuf::from) else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        let mut csv = format!("t,{}\n", SERIES.join(","));
        for (t, row) in self.table(self.started).await {
            let cells: Vec<String> = row
                .iter()
                .map(|v| v.map(|v| v.to_string()).unwrap_or_default())
                .collect();
            csv.push_str(&format!("{},{}\n", t - self.started, cells.join(",")));
        }
        let path = dir.join(format!("e2e-{name}.csv"));
        std::fs::write(&path, csv).unwrap();
        println!("wrote {}", path.display());
    }
}

fn changed_at(sw: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(sw["changed_at"].as_str().unwrap())
        .unwrap()
        .timestamp()
}

fn print_rows(rows: &BTreeMap<i64, [Option<f64>; 4]>, zero: i64) {
    println!("  t   {}", SERIES.join("  "));
    for (t, r) in rows {
        let cells: Vec<String> = r
            .iter()
            .map(|v| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()))
            .collect();
        println!("  {:>3} {}", t - zero, cells.join("  "));
    }
}

/// (a) and (b): the pause lets the database recover; resuming everything at once onto the
/// backlog overloads it again and it stays overloaded (nothing completes, every query times
/// out) until the next press, after which it recovers again.
#[test]
fn a_pause_recovers_and_resuming_at_once_relapses() {
    let _one = one_demo();
    runtime().block_on(async {
        let demo = Demo::start().await;
        let before = demo.points("db_load", demo.started - 5).await;
        assert!(
            before.iter().all(|p| p.1 < 100.0),
            "the demo runs under capacity before anything happens: {before:?}"
        );
        let (paused_at, took) = demo.pause_and_recover("db at 100%").await;
        println!("recovered {took:?} after the pause");
        let backlog = demo.backlog(RELAPSE_BACKLOG, paused_at).await;

        let out = demo.brb(&["resume", "--reason", "all at once"]).await;
        assert!(out.contains("40/40 workers acknowledged"), "{out}");
        let resumed_at = changed_at(&demo.switch().await);
        // The relapse: from the first whole second after the resume, the load stays over 100 %
        // for RELAPSE_SECS seconds in a row.
        let overloaded = demo
            .until(
                "the relapse, db_load over 100 % second after second",
                |d| async move {
                    let pts = d.points("db_load", resumed_at + 2).await;
                    if let Some(p) = pts.iter().find(|p| p.1 <= 100.0) {
                        panic!(
                            "db_load {} at +{} s after resuming at once: no relapse ({pts:?})",
                            p.1,
                            p.0 - resumed_at
                        );
                    }
                    (pts.len() >= RELAPSE_SECS).then_some(pts)
                },
            )
            .await;
        let last = overloaded.last().unwrap().0;
        let rows = demo.table(resumed_at + 2).await;
        println!("resumed at once onto {backlog} jobs:");
        print_rows(&rows, resumed_at);
        let in_relapse = |i: usize| {
            rows.range(..=last)
                .filter_map(move |(_, r)| r[i])
                .collect::<Vec<f64>>()
        };
        let failed: f64 = in_relapse(3).iter().sum();
        let done: f64 = in_relapse(2).iter().sum();
        // Nearly every query times out and its job goes back to the queue: the backlog grows.
        assert!(
            failed > 20.0 * RELAPSE_SECS as f64,
            "timeouts: {failed} in {RELAPSE_SECS} s"
        );
        assert!(done < failed / 10.0, "done {done}, timed out {failed}");
        let queue = in_relapse(1);
        assert!(
            queue.last().unwrap() > &backlog,
            "the backlog grows during the relapse: {backlog} → {queue:?}"
        );

        // Pressing again: the database recovers from the overload, as from the first press.
        let (_, took) = demo.pause_and_recover("relapse").await;
        println!("recovered from the relapse {took:?} after the second press");
        demo.write_curves("relapse").await;
    });
}

/// Jobs waiting when the switch is resumed at once. Any backlog that keeps the whole fleet busy
/// tips the database; a few seconds of arrivals is plenty.
const RELAPSE_BACKLOG: f64 = 600.0;
/// Seconds in a row over 100 % that count as a relapse rather than a spike.
const RELAPSE_SECS: usize = 6;

/// What the guard said while a release ran: each distinct (phase, step, reason) of
/// `GET /switches/workers/guard`, in order.
/// (Shared, not `&mut`: a wait's closure looks on each poll.)
#[derive(Default)]
struct GuardLog(RefCell<Vec<Value>>);

impl GuardLog {
    async fn look(&self, demo: &Demo) {
        let (s, st) = demo.get("/switches/workers/guard").await;
        if s != 200 {
            return;
        }
        let key = |v: &Value| (v["phase"].clone(), v["step"].clone(), v["reason"].clone());
        let mut seen = self.0.borrow_mut();
        if seen.last().map(key) != Some(key(&st)) {
            println!(
                "  guard: {} step {} {}",
                st["phase"],
                st["step"],
                st["reason"].as_str().unwrap_or("")
            );
            seen.push(st);
        }
    }

    fn seen(self) -> Vec<Value> {
        self.0.into_inner()
    }
}

/// Jobs waiting when the guarded release starts: enough to relapse at once (test (b) resumes
/// onto twice as many), and the 10 % step adds more (it serves less than arrives).
const GUARDED_BACKLOG: f64 = 300.0;
/// Steps of 4 s: 25 % and 50 % drain what waits before 100 %.
const GUARDED_RAMP: &str = "steps:12s";
/// Checked every 2 s instead of 10, so five failures in a row (10 s over the limit, as the
/// default three checks of 10 s are 30 s) pause again.
const GUARDED_GUARD: &str = "db_load < 80, interval=2s, failures=5";

/// (c) A guarded stepped release after a pause: the steps advance only on a passing check
/// under 80 %, and the release ends with the backlog drained, never at 100 % load, no query
/// timed out.
#[test]
fn a_guarded_release_drains_the_backlog_without_a_relapse() {
    let _one = one_demo();
    runtime().block_on(async {
        let demo = Demo::start().await;
        let (paused_at, _) = demo.pause_and_recover("db at 100%").await;
        let backlog = demo.backlog(GUARDED_BACKLOG, paused_at).await;
        let out = demo
            .brb(&[
                "resume",
                "--ramp",
                GUARDED_RAMP,
                "--guard",
                GUARDED_GUARD,
                "--reason",
                "db recovered",
            ])
            .await;
        println!("{out}");
        let sw = demo.switch().await;
        assert_eq!(
            sw["ramp"]["guard"]["guards"][0]["series"], "db_load",
            "{sw}"
        );
        let resumed_at = changed_at(&sw);
        let log = GuardLog::default();
        let last = RefCell::new(Value::Null);
        let done = poll_for(LIMIT, POLL, || async {
            log.look(&demo).await;
            let sw = demo.switch().await;
            if sw["state"] == "paused" {
                panic!(
                    "the guarded release was paused again: {}\nseries:\n{:?}",
                    sw["reason"],
                    demo.table(resumed_at).await
                );
            }
            let ended = sw["state"] == "running" && sw["ramp"].is_null();
            *last.borrow_mut() = sw.clone();
            ended.then_some(sw)
        })
        .await
        .unwrap_or_else(|| panic!("the guarded release did not end: {}", last.borrow()));
        let finished_at = changed_at(&done);
        assert_eq!(done["changed_by"], "guard", "{done}");
        // Watch full release a little longer: the database stays well.
        demo.until("three seconds of full release", |d| async move {
            let pts = d.points("db_load", finished_at).await;
            (pts.last()?.0 >= finished_at + 3).then_some(())
        })
        .await;
        let rows = demo.table(resumed_at).await;
        println!(
            "guarded release ({GUARDED_RAMP}, {GUARDED_GUARD}) onto {backlog} jobs, finished \
             after {} s:",
            finished_at - resumed_at
        );
        print_rows(&rows, resumed_at);
        let col = |i: usize| rows.values().filter_map(move |r| r[i]);
        let peak = col(0).fold(0.0, f64::max);
        assert!(
            peak < 100.0,
            "db_load reached {peak} during the guarded release"
        );
        let failed: f64 = col(3).sum();
        assert_eq!(failed, 0.0, "queries timed out during the guarded release");
        let left = col(1).next_back().unwrap();
        assert!(left < 100.0, "the backlog is drained: {left} jobs left");

        // Every step the guard took, with the value it saw, under the limit.
        let (_, audit) = demo.get("/audit?limit=20").await;
        let steps: Vec<String> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .filter(|e| e["action"] == "ramp_changed" && e["source"] == "guard")
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        println!("steps: {steps:#?}");
        assert_eq!(steps.len(), 4, "{steps:?}");
        for s in &steps {
            let v: f64 = s
                .split("guard passed (db_load ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in {s:?}"));
            assert!(v < 80.0, "{s}");
        }
        // Where the load neared the limit, a failing check held the step (if it did).
        let seen = log.seen();
        let holds: Vec<&Value> = seen.iter().filter(|s| s["phase"] == "holding").collect();
        println!("held {} time(s)", holds.len());
        demo.write_curves("guarded").await;
    });
}

/// Jobs waiting when the too-fast release starts: far more than its 10 %, 25 % and 50 % steps
/// drain (each lasts until a check on points from its third second on passes, 4 to 6 s; 10 %
/// serves less than arrives, 25 % drains ~180 jobs a second, 50 % ~430: ~2,800 in 5 s a step,
/// still under 6,000 at 10 s a step), so full release meets a backlog. There the whole fleet
/// times out and the backlog grows: it cannot drain while the guard counts its failing checks,
/// however slowly a loaded machine runs them.
const TRIP_BACKLOG: f64 = 6000.0;
const TRIP_RAMP: &str = "steps:3s";
/// Under 100: the 50 % step's 83.3 % passes, full release's 166.7 % fails.
const TRIP_GUARD: &str = "db_load < 100, interval=2s";

/// (d) A release too fast for its backlog: at full release the load passes the guard's limit
/// and stays there, and after three failing checks the guard pauses the switch again, saying
/// which guard, at which step, and the value, which is the demo's own `db_load`; the database
/// then recovers.
#[test]
fn a_release_too_fast_for_the_backlog_is_paused_again_by_its_guard() {
    let _one = one_demo();
    runtime().block_on(async {
        let demo = Demo::start().await;
        let (paused_at, _) = demo.pause_and_recover("db at 100%").await;
        let backlog = demo.backlog(TRIP_BACKLOG, paused_at).await;
        demo.brb(&[
            "resume",
            "--ramp",
            TRIP_RAMP,
            "--guard",
            TRIP_GUARD,
            "--reason",
            "in a hurry",
        ])
        .await;
        let resumed_at = changed_at(&demo.switch().await);
        let log = GuardLog::default();
        let last = RefCell::new(Value::Null);
        let tripped = poll_for(LIMIT, POLL, || async {
            log.look(&demo).await;
            let sw = demo.switch().await;
            if sw["state"] == "running" && sw["ramp"].is_null() {
                print_rows(&demo.table(resumed_at).await, resumed_at);
                panic!("the release ended without the guard pausing: {sw}");
            }
            let paused = sw["state"] == "paused";
            *last.borrow_mut() = sw.clone();
            paused.then_some(sw)
        })
        .await
        .unwrap_or_else(|| panic!("the guard did not pause: {}", last.borrow()));
        log.look(&demo).await;
        let tripped_at = changed_at(&tripped);
        let rows = demo.table(resumed_at).await;
        println!("release {TRIP_RAMP} ({TRIP_GUARD}) onto {backlog} jobs:");
        print_rows(&rows, resumed_at);
        assert_eq!(tripped["source"], "guard", "{tripped}");
        assert_eq!(tripped["changed_by"], "guard", "{tripped}");
        let reason = tripped["reason"].as_str().unwrap();
        println!("paused by the guard: {reason}");
        // "… guard db_load < 100 failed 3 checks in a row at step 4/4 (100%): 166.7 (limit 100)"
        let (_, value) = reason
            .split_once("guard db_load < 100 failed 3 checks in a row at step 4/4 (100%): ")
            .unwrap_or_else(|| panic!("{reason}"));
        let value: f64 = value
            .strip_suffix(" (limit 100)")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{reason}"));
        assert!(value >= 100.0, "{reason}");
        // The value is the demo's: the mean of its db_load points in the check's window (the
        // last seconds before the pause), so it lies within their range.
        let near: Vec<f64> = rows
            .range(tripped_at - 3..=tripped_at)
            .filter_map(|(_, r)| r[0])
            .collect();
        let lo = near.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = near.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            !near.is_empty() && (lo - 0.05..=hi + 0.05).contains(&value),
            "{value} is not a mean of the demo's db_load before the pause: {near:?}"
        );
        let (_, audit) = demo.get("/audit?limit=5").await;
        let entry = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "state_changed" && e["to"] == "paused")
            .cloned()
            .unwrap();
        assert_eq!(
            (
                entry["source"].as_str(),
                entry["actor"].as_str(),
                entry["reason"].as_str()
            ),
            (Some("guard"), Some("guard"), Some(reason)),
            "{entry}"
        );
        assert_eq!(log.seen().last().unwrap()["phase"], "tripped");
        // The guard's pause works as a press does: the database recovers.
        let load = demo
            .until(
                "the database recovering after the guard's pause",
                |d| async move {
                    let pts = d.points("db_load", tripped_at + 2).await;
                    pts.iter().find(|p| p.1 < RECOVERED).copied()
                },
            )
            .await;
        println!(
            "recovered: db_load {} at +{} s",
            load.1,
            load.0 - tripped_at
        );
        demo.write_curves("trip").await;
    });
}
