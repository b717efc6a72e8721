//! Workers and the SDK gate against a real control plane over real HTTP: fan-out to a thousand
//! gates, acknowledgements, failure policies, reconnect spread, ramps, draining, the series
//! store, the demo workload.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use brb_api::{RampShape, RampSpec, SetStateRequest, Source, SwitchState, WorkerStatus};
use brb_client::{Client, FailurePolicy, Gate, GateConfig, Transport};
use brb_e2e::{InProcess, eventually, poll_for, wait_for};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn gate_cfg(url: &str, token: &str, switch: &str, id: String) -> GateConfig {
    let mut c = GateConfig::new(&[url], Some(token.to_string()), switch);
    c.worker_id = id;
    c.send_samples = false;
    c.transport = Transport::Sse;
    c
}

async fn set(
    c: &Client,
    switch: &str,
    state: SwitchState,
    ramp: Option<RampSpec>,
) -> brb_api::Switch {
    c.set_state(
        switch,
        &SetStateRequest {
            state,
            reason: Some("test".into()),
            source: Some(Source::Api),
            expected_version: None,
            ramp,
            guards: Vec::new(),
        },
    )
    .await
    .unwrap()
}

/// Polls `g` every 2 ms until it is open (or closed, per `open`); returns when that was first
/// seen. Panics after `limit`.
async fn flips(g: &Gate, open: bool, limit: Duration) -> Instant {
    let t = Instant::now();
    while g.is_open() != open {
        assert!(
            t.elapsed() < limit,
            "gate {} never became {}",
            g.worker_id(),
            if open { "open" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_reaches_1000_gates_and_all_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let token = s
        .state
        .tokens()
        .add_ephemeral("fleet", brb_api::Role::Viewer);
    const N: usize = 1000;
    let mut gates = Vec::with_capacity(N);
    for i in 0..N {
        gates.push(Gate::start(gate_cfg(&s.url, &token, "workers", format!("w{i:04}"))).unwrap());
    }
    for g in &gates {
        assert!(
            g.ready(Duration::from_secs(30)).await,
            "gate {} connected",
            g.worker_id()
        );
    }
    assert!(gates.iter().all(|g| g.is_open()));
    let c = s.client();
    assert!(
        eventually(Duration::from_secs(20), || {
            let st = s.state.hub().get("workers").unwrap();
            s.state.workers().counts(&st, false).running == N as u32
        })
        .await,
        "all {N} reported running"
    );

    let t = Instant::now();
    let sw = set(&c, "workers", SwitchState::Paused, None).await;
    assert!(
        eventually(Duration::from_secs(10), || gates
            .iter()
            .all(|g| !g.is_open()))
        .await,
        "every gate closed"
    );
    let all_closed = t.elapsed();
    assert!(
        eventually(Duration::from_secs(20), || {
            let st = s.state.hub().get("workers").unwrap();
            s.state.workers().counts(&st, false).paused == N as u32
        })
        .await
    );
    // The count endpoint agrees, and says how long the last acknowledgement took.
    let counts = c.workers("workers").await.unwrap();
    assert_eq!(counts.total, N as u32);
    assert_eq!(counts.paused, N as u32);
    assert_eq!((counts.running, counts.draining, counts.stale), (0, 0, 0));
    let cur = counts.current.unwrap();
    assert_eq!(cur.version, sw.version);
    assert_eq!((cur.acknowledged, cur.total), (N as u32, N as u32));
    let ms = cur.last_ack_ms.expect("all acknowledged");
    println!("1000 gates closed {all_closed:?} after the press; last ack {ms} ms");
    assert!(
        gates
            .iter()
            .all(|g| g.version() == sw.version && g.status() == WorkerStatus::Paused)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_down_policies_hold_and_reconnects_are_spread() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        c.switches.push(brb_server::config::SwitchConfig {
            name: "feature".into(),
            description: String::new(),
            remind: false,
            approval: Default::default(),
        });
    })
    .await;
    let port = s.config.listen.port();
    let c = s.client();
    set(&c, "workers", SwitchState::Paused, None).await;
    let token = s
        .state
        .tokens()
        .add_ephemeral("fleet", brb_api::Role::Viewer);
    // The ephemeral token dies with the process; give the restarted server a stored one.
    let stored = c
        .create_token(&brb_api::CreateTokenRequest {
            name: "fleet-stored".into(),
            role: brb_api::Role::Viewer,
            expires_at: None,
            scope: None,
        })
        .await
        .unwrap()
        .secret;
    drop(token);

    // Long enough that a gate which ignored it would visibly fail over too early.
    let grace = Duration::from_secs(2);
    let mk = |switch: &str, policy, id: String| {
        let mut cfg = gate_cfg(&s.url, &stored, switch, id);
        cfg.policy = policy;
        cfg.grace = grace;
        cfg.backoff_base = Duration::from_millis(500);
        cfg.backoff_cap = Duration::from_secs(2);
        Gate::start(cfg).unwrap()
    };
    let keep_paused = mk(
        "workers",
        FailurePolicy::KeepLastKnown,
        "keep-paused".into(),
    );
    let open_paused = mk("workers", FailurePolicy::Open, "open-paused".into());
    let keep_running = mk(
        "feature",
        FailurePolicy::KeepLastKnown,
        "keep-running".into(),
    );
    let closed_running = mk("feature", FailurePolicy::Closed, "closed-running".into());
    let fleet: Vec<Gate> = (0..200)
        .map(|i| mk("workers", FailurePolicy::KeepLastKnown, format!("f{i}")))
        .collect();
    for g in [&keep_paused, &open_paused, &keep_running, &closed_running]
        .into_iter()
        .chain(&fleet)
    {
        assert!(g.ready(Duration::from_secs(20)).await);
    }
    assert!(!keep_paused.is_open() && !open_paused.is_open());
    assert!(keep_running.is_open() && closed_running.is_open());

    // Workers of the paused fleet keep asking for work through the whole outage: not one job
    // may be admitted while the control plane is down.
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let askers: Vec<_> = fleet
        .iter()
        .take(5)
        .map(|g| {
            let (g, admitted) = (g.clone(), admitted.clone());
            tokio::spawn(async move {
                let _permit = g.acquire().await;
                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();

    // The control plane goes away.
    let down_at = Instant::now();
    s.stop().await;
    assert!(eventually(Duration::from_secs(5), || !keep_paused.is_connected()).await);
    let keep_lost_seen = Instant::now();
    // Open fails open and Closed fails closed once the grace period has passed since they lost
    // the connection, which happened after `down_at`: never before `down_at + grace`.
    let open_at = flips(&open_paused, true, grace + Duration::from_secs(10)).await;
    let closed_at = flips(&closed_running, false, grace + Duration::from_secs(10)).await;
    for (what, at) in [("Open", open_at), ("Closed", closed_at)] {
        let after = at - down_at;
        assert!(
            after >= grace,
            "{what} failed over {after:?} after the outage began"
        );
    }
    // The grace period is over now: the gates that keep the last known state still do.
    assert!(
        !keep_paused.is_open(),
        "KeepLastKnown: a pause is not undone by an outage"
    );
    assert!(
        keep_running.is_open(),
        "KeepLastKnown: running stays running"
    );
    assert!(
        fleet.iter().all(|g| !g.is_open()),
        "no fleet gate resumed work it should not"
    );
    assert_eq!(
        admitted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a paused gate admitted a job during the outage"
    );
    for a in askers {
        a.abort();
    }
    // Staleness covers at least the time the gate has been seen disconnected (the gate counts
    // in whole milliseconds).
    let seen = keep_lost_seen.elapsed();
    let stale = keep_paused.staleness().unwrap();
    assert!(
        stale + Duration::from_millis(2) >= seen,
        "staleness is exposed: {stale:?}, disconnected for at least {seen:?}"
    );

    // It comes back on the same port with the same data.
    let before: Vec<usize> = fleet.iter().map(|g| g.connect_times().len()).collect();
    let s = InProcess::start(dir.path(), |c| {
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.switches.push(brb_server::config::SwitchConfig {
            name: "feature".into(),
            description: String::new(),
            remind: false,
            approval: Default::default(),
        });
    })
    .await;
    let back_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || fleet
            .iter()
            .all(|g| g.is_connected()))
        .await,
        "all gates reconnected"
    );
    assert!(eventually(Duration::from_secs(5), || !open_paused.is_open()).await);
    assert!(eventually(Duration::from_secs(5), || closed_running.is_open()).await);
    assert!(!keep_paused.is_open());
    // Reconnects are spread out by the jittered backoff, not simultaneous.
    let mut times: Vec<Duration> = fleet
        .iter()
        .zip(&before)
        .map(|(g, n)| g.connect_times()[*n].duration_since(back_at.min(g.connect_times()[*n])))
        .collect();
    times.sort();
    let spread = *times.last().unwrap() - times[0];
    let mut max_in_10ms = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_millis(10))
            .count();
        max_in_10ms = max_in_10ms.max(n);
    }
    println!(
        "down for {:?}; 200 reconnects spread over {spread:?}, at most {max_in_10ms} within 10 ms",
        back_at - down_at
    );
    assert!(spread > Duration::from_millis(200), "spread {spread:?}");
    assert!(
        max_in_10ms < 100,
        "{max_in_10ms} of 200 reconnected within 10 ms"
    );
    s.stop().await;
}

/// Jobs as (start, end) on the wall clock, the clock ramps are defined in.
type Jobs = std::sync::Arc<std::sync::Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>>;

/// The share of `slots` job slots busy over `[from, to]`: each job counts for the part of it
/// inside the window. The gate's duty cycle makes this the admitted fraction, whatever the
/// jobs' length.
fn utilization(jobs: &Jobs, slots: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let busy: i64 = jobs
        .lock()
        .unwrap()
        .iter()
        .map(|(a, b)| {
            ((*b).min(to) - (*a).max(from))
                .num_microseconds()
                .unwrap()
                .max(0)
        })
        .sum();
    busy as f64 / (slots as f64 * (to - from).num_microseconds().unwrap() as f64)
}

/// The ramp's mean fraction over `[from, to]` (sampled every 10 ms): what the gate should
/// admit in that window.
fn scheduled(ramp: &brb_api::Ramp, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let n = ((to - from).num_milliseconds() / 10).max(1);
    (0..n)
        .map(|i| ramp.fraction_at(from + chrono::TimeDelta::milliseconds(i * 10 + 5)))
        .sum::<f64>()
        / n as f64
}

/// Sleeps until the wall clock reads `t`: the windows of a ramp are points in its time.
async fn until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_admitted_fraction_follows_the_schedule() {
    const SLOTS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let token = s.state.tokens().add_ephemeral("w", brb_api::Role::Viewer);
    let mut cfg = gate_cfg(&s.url, &token, "workers", "ramp".into());
    cfg.max_concurrency = SLOTS;
    let gate = Gate::start(cfg).unwrap();
    assert!(gate.ready(Duration::from_secs(10)).await);
    let jobs: Jobs = Default::default();
    let waiting = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Worker tasks share the gate's slots, each job 20 ms.
    let workers: Vec<_> = (0..SLOTS)
        .map(|_| {
            let (gate, jobs, waiting) = (gate.clone(), jobs.clone(), waiting.clone());
            tokio::spawn(async move {
                loop {
                    waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let p = gate.acquire().await;
                    waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let start = Utc::now();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let end = Utc::now();
                    drop(p);
                    jobs.lock().unwrap().push((start, end));
                }
            })
        })
        .collect();
    let done = || jobs.lock().unwrap().len();
    // The baseline: how busy the slots are with everything admitted (a little short of 1: the
    // time between one job and the next). Measured over the next 200 jobs, not a fixed time.
    assert!(eventually(Duration::from_secs(10), || done() >= SLOTS).await);
    // (Computed at the end, when every job inside the window has been recorded.)
    let (base_from, n) = (Utc::now(), done());
    assert!(eventually(Duration::from_secs(30), || done() >= n + 200).await);
    let base_to = Utc::now();

    let c = s.client();
    set(&c, "workers", SwitchState::Paused, None).await;
    assert!(eventually(Duration::from_secs(5), || !gate.is_open()).await);
    // Nothing runs while paused: every worker ends up waiting in `acquire`, and stays there
    // for as long as we watch (300 ms: about ten jobs' worth of slot time each).
    assert!(
        eventually(Duration::from_secs(5), || gate.in_flight() == 0
            && waiting.load(std::sync::atomic::Ordering::SeqCst) == SLOTS)
        .await,
        "the workers did not all stop"
    );
    let parked = Utc::now();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(300) {
        assert_eq!(gate.in_flight(), 0, "a job was admitted while paused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Resume with 20% → 50% → 100% over 6 s: 20% for 3 s, 50% for 3 s, then 100%.
    let ramp = RampSpec {
        duration_secs: 6,
        shape: RampShape::Steps {
            fractions: vec![0.2, 0.5, 1.0],
        },
    };
    let resuming = Utc::now();
    let sw = set(&c, "workers", SwitchState::Running, Some(ramp)).await;
    let started_while_paused = jobs
        .lock()
        .unwrap()
        .iter()
        .filter(|(a, _)| *a > parked && *a < resuming)
        .count();
    assert_eq!(started_while_paused, 0, "jobs ran while paused");
    let ramp = sw.ramp.expect("a ramp");
    assert!(eventually(Duration::from_secs(5), || gate.is_open()).await);
    let at = |secs: f64| ramp.started_at + chrono::TimeDelta::milliseconds((secs * 1000.0) as i64);
    // Windows inside each step, half a second clear of its edges (a job's rest follows the
    // fraction at its end, so the duty cycle lags a step change by one job's cycle).
    let windows = [(0.5, 2.5), (3.5, 5.5), (6.5, 8.0)];
    until(at(1.5)).await;
    assert!((gate.admitted_fraction() - 0.2).abs() < 1e-9);
    until(at(4.5)).await;
    assert!((gate.admitted_fraction() - 0.5).abs() < 1e-9);
    until(at(6.5)).await;
    assert_eq!(gate.admitted_fraction(), 1.0);
    // Every job that overlaps the last window has ended once a job's length has passed.
    until(at(8.2)).await;
    let full = utilization(&jobs, SLOTS, base_from, base_to);
    assert!(full > 0.5, "baseline utilization {full}");
    let mut report = Vec::new();
    for (a, b) in windows {
        let (from, to) = (at(a), at(b));
        let measured = utilization(&jobs, SLOTS, from, to) / full;
        let want = scheduled(&ramp, from, to);
        report.push(format!("{a}-{b} s: {measured:.2} (schedule {want:.2})"));
        // Stated tolerance: within 0.1 of the schedule (timer granularity, 20 ms jobs).
        assert!(
            (measured - want).abs() < 0.1,
            "admitted fraction off the schedule: {report:?}"
        );
    }
    println!("baseline utilization {full:.2}; {}", report.join("; "));
    for w in workers {
        w.abort();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_reports_draining_then_paused() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let token = s.state.tokens().add_ephemeral("w", brb_api::Role::Viewer);
    let gate = Gate::start(gate_cfg(&s.url, &token, "workers", "long".into())).unwrap();
    assert!(gate.ready(Duration::from_secs(10)).await);
    let job = gate.acquire().await;
    assert_eq!(gate.in_flight(), 1);
    let c = s.client();
    set(&c, "workers", SwitchState::Paused, None).await;
    assert!(
        eventually(Duration::from_secs(5), || gate.status()
            == WorkerStatus::Draining)
        .await
    );
    let mut seen = None;
    for _ in 0..100 {
        let w = c.workers("workers").await.unwrap();
        if w.draining == 1 {
            seen = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w = seen.expect("server sees draining");
    assert_eq!(w.workers[0].in_flight, 1);
    assert!(gate.try_acquire().is_none(), "no new job while paused");
    drop(job);
    let mut paused = false;
    for _ in 0..100 {
        let w = c.workers("workers").await.unwrap();
        if w.paused == 1 && w.draining == 0 {
            paused = true;
            assert_eq!(w.workers[0].processed_total, 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(paused, "reported paused once the job finished");
    s.stop().await;
}

/// A worker that gives its last slot back unused while paused (it found no job after all) is
/// drained too, and says so at once rather than at its next report five seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_last_slot_reports_paused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let token = s.state.tokens().add_ephemeral("w", brb_api::Role::Viewer);
    let gate = Gate::start(gate_cfg(&s.url, &token, "workers", "idle".into())).unwrap();
    assert!(gate.ready(Duration::from_secs(10)).await);
    let slot = gate.acquire().await;
    let c = &s.client();
    set(c, "workers", SwitchState::Paused, None).await;
    let draining = poll_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move {
            let w = c.workers("workers").await.ok()?;
            (w.draining == 1).then_some(())
        },
    )
    .await;
    assert!(draining.is_some(), "server sees draining");
    slot.abandon();
    // Well under the five-second report interval: only an immediate report gets there.
    let paused = poll_for(
        Duration::from_secs(2),
        Duration::from_millis(20),
        || async move {
            let w = c.workers("workers").await.ok()?;
            (w.paused == 1 && w.draining == 0).then_some(w)
        },
    )
    .await
    .expect("reported paused at once after the slot was given back");
    assert_eq!(paused.workers[0].processed_total, 0, "no job was counted");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_transport_and_replica_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let token = s.state.tokens().add_ephemeral("w", brb_api::Role::Viewer);
    // The first URL is dead (nothing listens on port 1): the gate moves on to the live one.
    let mut cfg = GateConfig::new(
        &["http://127.0.0.1:1", s.url.as_str()],
        Some(token),
        "workers",
    );
    cfg.transport = Transport::LongPoll;
    cfg.send_samples = false;
    let gate = Gate::start(cfg).unwrap();
    assert!(gate.ready(Duration::from_secs(10)).await);
    assert!(gate.is_open());
    set(&s.client(), "workers", SwitchState::Paused, None).await;
    assert!(eventually(Duration::from_secs(5), || !gate.is_open()).await);
    s.stop().await;
}

/// A proxy that passes everything but refuses event streams, as some corporate proxies do.
async fn sse_blocking_proxy(upstream: String) -> String {
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            if path.contains("/events") {
                return Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::from("<html>streaming not allowed</html>"))
                    .unwrap();
            }
            let mut rb = http.request(req.method().clone(), format!("{upstream}{path}"));
            for (k, v) in req.headers() {
                if k != "host" {
                    rb = rb.header(k, v);
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let res = rb.body(body).send().await.unwrap();
            let status = res.status();
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(res.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_transport_falls_back_to_long_poll_when_sse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let proxy = sse_blocking_proxy(s.url.clone()).await;
    let token = s.state.tokens().add_ephemeral("w", brb_api::Role::Viewer);
    let mut cfg = GateConfig::new(&[proxy.as_str()], Some(token), "workers");
    cfg.transport = Transport::Auto;
    cfg.send_samples = false;
    cfg.backoff_base = Duration::from_millis(50);
    let gate = Gate::start(cfg).unwrap();
    assert!(
        gate.ready(Duration::from_secs(10)).await,
        "fell back and heard the state"
    );
    set(&s.client(), "workers", SwitchState::Paused, None).await;
    assert!(eventually(Duration::from_secs(5), || !gate.is_open()).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_store_is_bounded_and_refuses_bad_samples() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| c.limits.max_series = 50).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{}/api/v1/metrics", s.url))
            .bearer_auth(&s.admin)
            .json(&body)
            .send()
    };
    // A flood: many samples into one series, and many series names. The timestamps stay a
    // minute inside the hour: at its very edge, a second boundary passing during the flood (a
    // loaded machine) would push the oldest out of the window and the post would be refused.
    let now = chrono::Utc::now().timestamp();
    for round in 0..20 {
        let samples: Vec<Value> = (0..1000)
            .map(|i| json!({"name": "flood", "value": i, "ts": (now - 3540 + ((round * 1000 + i) % 3540)) as f64}))
            .collect();
        assert_eq!(
            post(json!({"samples": samples})).await.unwrap().status(),
            200
        );
    }
    let mut refused = 0;
    for i in 0..80 {
        let r = post(json!({"samples": [{"name": format!("s{i}"), "value": 1.0}]}))
            .await
            .unwrap();
        if r.status() == 422 {
            refused += 1;
            let v: Value = r.json().await.unwrap();
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("too many series")
            );
        }
    }
    assert_eq!(s.state.series().len(), 50, "never more series than the cap");
    assert_eq!(refused, 80 - 49);
    let series = s.client().series(Some("flood"), None).await.unwrap();
    assert!(
        series.series[0].points.len() <= 3600,
        "one slot per second of the hour"
    );
    assert_eq!(series.retention_secs, 3600);

    let bad: Vec<(Value, u16)> = vec![
        (json!({"samples": [{"name": "x", "value": "high"}]}), 422),
        (json!({"samples": [{"value": 1}]}), 422),
        (json!({"samples": [{"name": "bad name!", "value": 1}]}), 422),
        (
            json!({"samples": [{"name": "x", "value": 1, "ts": 1000.0}]}),
            422,
        ),
        (
            json!({"samples": [{"name": "x", "value": 1, "ts": (now + 3600) as f64}]}),
            422,
        ),
        (
            json!({"samples": [{"name": "flood", "value": 1, "kind": "counter"}]}),
            422,
        ),
        (
            json!({"samples": [{"name": "x", "value": 1, "kind": "histogram"}]}),
            422,
        ),
        (
            json!({"samples": [{"name": "x", "value": 1, "labels": {"k": 5}}]}),
            422,
        ),
        (
            json!({"samples": (0..1001).map(|_| json!({"name": "x", "value": 1})).collect::<Vec<_>>()}),
            422,
        ),
        (json!({"sample": []}), 422),
    ];
    for (body, status) in bad {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_value", "{body}");
    }
    let r = http
        .post(format!("{}/api/v1/metrics", s.url))
        .bearer_auth(&s.admin)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{}/api/v1/metrics", s.url))
        .json(&json!({"samples": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.stop().await;
}

async fn latest(c: &Client, name: &str) -> Vec<f64> {
    let since = chrono::Utc::now().timestamp() - 3;
    c.series(Some(name), Some(since))
        .await
        .unwrap()
        .series
        .first()
        .map(|s| s.points.iter().map(|p| p.1).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_workload_pauses_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let token = s
        .state
        .tokens()
        .add_ephemeral("demo", brb_api::Role::Viewer);
    let cfg = brb_demo::DemoConfig::new(&s.url, &token, "workers");
    let demo = tokio::spawn(brb_demo::run(cfg, s.state.shutdown_signal()));
    let c = s.client();
    // Each step waits for what the series show, with deadlines for a loaded machine: the demo
    // publishes once a second, and 40 workers share two cores with the rest of the suite.
    let limit = Duration::from_secs(30);
    // Running: jobs flow.
    wait_for(limit, "jobs_per_second > 0 while running", || async {
        latest(&c, "jobs_per_second")
            .await
            .iter()
            .any(|v| *v > 0.0)
            .then_some(())
    })
    .await;
    for name in ["queue_depth", "db_load", "jobs_per_second"] {
        assert!(!latest(&c, name).await.is_empty(), "{name} is published");
    }

    set(&c, "workers", SwitchState::Paused, None).await;
    let paused = Instant::now();
    wait_for(limit, "jobs_per_second at 0 for two seconds", || async {
        let jps = latest(&c, "jobs_per_second").await;
        (jps.len() >= 2 && jps[jps.len() - 2..].iter().all(|v| *v == 0.0)).then_some(())
    })
    .await;
    println!("jobs stopped {:?} after the pause", paused.elapsed());
    wait_for(limit, "the database resting", || async {
        (*latest(&c, "db_load").await.last()? == 0.0).then_some(())
    })
    .await;
    let q1 = *latest(&c, "queue_depth").await.last().unwrap();
    wait_for(limit, "the queue growing while paused", || async {
        let q2 = *latest(&c, "queue_depth").await.last()?;
        (q2 > q1).then_some(())
    })
    .await;

    // Released gradually: the demo's database relapses when the whole fleet meets a backlog at
    // once (brb-demo/tests/relapse.rs), a stepped release lets the work through.
    set(
        &c,
        "workers",
        SwitchState::Running,
        Some(brb_api::RampSpec::parse("steps:10m").unwrap()),
    )
    .await;
    wait_for(limit, "work resuming after the release", || async {
        latest(&c, "jobs_per_second")
            .await
            .last()
            .is_some_and(|v| *v > 0.0)
            .then_some(())
    })
    .await;
    s.state.begin_shutdown();
    let _ = demo.await;
}
