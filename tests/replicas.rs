//! The scale-out path end to end: several real `brb server` processes sharing one real
//! PostgreSQL (a private cluster started by this test binary), watchers and SDK gates on them,
//! a local HTTP receiver playing Slack. Replicas are killed with SIGKILL; PostgreSQL is
//! stopped and started under them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brb_api::{SetStateRequest, SwitchState};
use brb_client::{Client, EventScope, Gate, GateConfig, StreamItem, Transport};
use brb_e2e::{ServerProc, eventually};
use brb_pgtest::PgCluster;
use futures_util::StreamExt as _;

const ADMIN: &str = "replicas-test-admin-token";

/// A loopback HTTP server that records every request body by path (Slack's role).
#[derive(Clone)]
struct Recorder {
    hits: Arc<Mutex<Vec<(String, String)>>>,
    addr: SocketAddr,
}

impl Recorder {
    async fn start() -> Recorder {
        let hits: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let h = hits.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let h = h.clone();
            async move {
                let path = req.uri().path().to_string();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                h.lock()
                    .unwrap()
                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { hits, addr }
    }

    fn count(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }
}

fn replica(dir: &Path, name: &str, db: &str, slack: Option<&str>) -> ServerProc {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut env = vec![
        ("BRB_DATABASE_URL", db),
        ("BRB_ADMIN_TOKEN", ADMIN),
        ("BRB_LOG", "info,brb_server=debug"),
    ];
    if let Some(s) = slack {
        env.push(("BRB_SLACK_WEBHOOK_URL", s));
    }
    ServerProc::start(&data, &env)
}

fn client(urls: &[&str]) -> Client {
    Client::new(urls, Some(ADMIN.to_string())).unwrap()
}

fn req(state: SwitchState) -> SetStateRequest {
    SetStateRequest {
        state,
        reason: Some("replica test".into()),
        source: None,
        expected_version: None,
        ramp: None,
        guards: Vec::new(),
    }
}

/// A watcher of one switch's SSE stream that reconnects (to the next URL of its client) with
/// `Last-Event-ID`, recording every version it receives, in order.
fn watch(c: Client, seen: Arc<Mutex<Vec<u64>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            match c
                .events(&EventScope::Switch("workers".into()), last.as_deref())
                .await
            {
                Ok(stream) => {
                    let mut stream = Box::pin(stream);
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(StreamItem::Event(ev)) if ev.event == "switch" => {
                                if let Some(id) = ev.id.clone() {
                                    seen.lock().unwrap().push(id.parse().unwrap());
                                    last = Some(id);
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
}

/// A watcher of the all-switches stream (`/events`): records `(audit id, version)` of every
/// change event.
fn watch_all(c: Client, seen: Arc<Mutex<Vec<(u64, u64)>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            if let Ok(stream) = c.events(&EventScope::All, last.as_deref()).await {
                let mut stream = Box::pin(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(StreamItem::Event(ev)) if ev.event == "switch" => {
                            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                            if let Some(id) = ev.id.clone() {
                                seen.lock()
                                    .unwrap()
                                    .push((id.parse().unwrap(), v["version"].as_u64().unwrap()));
                                last = Some(id);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn gate(urls: &[&str], id: String) -> Gate {
    let mut c = GateConfig::new(urls, Some(ADMIN.to_string()), "workers");
    c.worker_id = id;
    c.send_samples = false;
    c.transport = Transport::Sse;
    c.backoff_base = Duration::from_millis(100);
    c.backoff_cap = Duration::from_millis(500);
    c.report_interval = Duration::from_millis(500);
    Gate::start(c).unwrap()
}

async fn wait_version(seen: &Arc<Mutex<Vec<u64>>>, v: u64, within: Duration) -> bool {
    eventually(within, || seen.lock().unwrap().last() == Some(&v)).await
}

fn gapless(seen: &[u64], from: u64, to: u64) -> bool {
    seen == (from..=to).collect::<Vec<_>>().as_slice()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_brake() {
    tokio::time::timeout(Duration::from_secs(240), three_replicas_body())
        .await
        .expect("test timed out");
}

async fn three_replicas_body() {
    let db = tokio::task::spawn_blocking(|| PgCluster::shared().database("three_replicas"))
        .await
        .unwrap();
    let slack = Recorder::start().await;
    let slack_url = format!("http://{}/slack", slack.addr);
    let dir = tempfile::tempdir().unwrap();
    // Started together on an empty database: migrations and seeding must not race.
    let (a, b, c) = std::thread::scope(|s| {
        let ha = s.spawn(|| replica(dir.path(), "a", &db, Some(&slack_url)));
        let hb = s.spawn(|| replica(dir.path(), "b", &db, Some(&slack_url)));
        let hc = s.spawn(|| replica(dir.path(), "c", &db, Some(&slack_url)));
        (ha.join().unwrap(), hb.join().unwrap(), hc.join().unwrap())
    });
    let (ua, ub, uc) = (a.url.clone(), b.url.clone(), c.url.clone());
    let all = [ua.as_str(), ub.as_str(), uc.as_str()];
    for u in all {
        let s = client(&[u]).switch("workers").await.unwrap();
        assert_eq!(s.version, 1, "one primary switch, created once");
    }

    // Watchers on B and C; one watcher on A that will have to move; a long-poll on B.
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    let seen_c = Arc::new(Mutex::new(Vec::new()));
    let seen_a = Arc::new(Mutex::new(Vec::new()));
    let wb = watch(client(&[&ub]), seen_b.clone());
    let wc = watch(client(&[&uc]), seen_c.clone());
    let wa = watch(client(&[&ua, &ub, &uc]), seen_a.clone());
    let all_b = Arc::new(Mutex::new(Vec::new()));
    let all_c = Arc::new(Mutex::new(Vec::new()));
    let wab = watch_all(client(&[&ub]), all_b.clone());
    let wac = watch_all(client(&[&uc]), all_c.clone());
    for s in [&seen_a, &seen_b, &seen_c] {
        assert!(wait_version(s, 1, Duration::from_secs(10)).await);
    }
    let long_poll = {
        let cb = client(&[&ub]);
        tokio::spawn(async move {
            cb.wait_switch("workers", 1, Duration::from_secs(20))
                .await
                .unwrap()
        })
    };
    // SDK gates spread over the replicas (each starts at a random URL).
    let gates: Vec<Gate> = (0..6).map(|i| gate(&all, format!("g{i}"))).collect();
    for g in &gates {
        assert!(g.ready(Duration::from_secs(10)).await, "gate connects");
    }

    // 1. A pause through A reaches watchers on B and C.
    let t0 = Instant::now();
    let paused = client(&[&ua])
        .set_state("workers", &req(SwitchState::Paused))
        .await
        .unwrap();
    assert_eq!(paused.version, 2);
    assert!(wait_version(&seen_b, 2, Duration::from_secs(5)).await);
    let to_b = t0.elapsed();
    assert!(wait_version(&seen_c, 2, Duration::from_secs(5)).await);
    let to_c = t0.elapsed();
    eprintln!("pause through A seen on B after {to_b:?}, on C after {to_c:?}");
    assert!(to_c < Duration::from_secs(2), "propagation took {to_c:?}");
    let lp = tokio::time::timeout(Duration::from_secs(5), long_poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lp.version, lp.state),
        (2, SwitchState::Paused),
        "long-poll on B"
    );
    for g in &gates {
        assert!(
            eventually(Duration::from_secs(5), || !g.is_open() && g.version() == 2).await,
            "gate {} closes",
            g.worker_id()
        );
    }
    // Worker counts on any replica cover the workers of all replicas.
    for u in all {
        let cl = client(&[u]);
        let mut ok = false;
        for _ in 0..100 {
            let w = cl.workers("workers").await.unwrap();
            if w.total == 6 && w.paused == 6 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "replica {u} counts all six workers");
    }

    // Rotation: rotated on A without grace, the new secret works on C and the old one stops.
    let rot = client(&[&ua])
        .create_token(&brb_api::CreateTokenRequest {
            name: "rotating-bot".into(),
            role: brb_api::Role::Viewer,
            expires_at: None,
            scope: None,
        })
        .await
        .unwrap();
    let old_on_c = Client::new(&[uc.as_str()], Some(rot.secret.clone())).unwrap();
    let t = Instant::now();
    while old_on_c.switches().await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a token created on A works on C"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = client(&[&ua]).rotate_token(&rot.token.id, 0).await.unwrap();
    let new_on_c = Client::new(&[uc.as_str()], Some(rotated.secret.clone())).unwrap();
    let t = Instant::now();
    while new_on_c.switches().await.is_err() || old_on_c.switches().await.is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the rotation on A took effect on C"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Tokens: created on A, accepted on C; revoked on B, refused on C at once.
    let created = client(&[&ua])
        .create_token(&brb_api::CreateTokenRequest {
            name: "ops-bot".into(),
            role: brb_api::Role::Operator,
            expires_at: None,
            scope: None,
        })
        .await
        .unwrap();
    let ops_on_c = Client::new(&[uc.as_str()], Some(created.secret.clone())).unwrap();
    let mut accepted = false;
    for _ in 0..100 {
        if ops_on_c.switches().await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "a token created on A works on C");
    // A stream held on C with that token is cut when B revokes it.
    let mut c_stream = ops_on_c
        .events(&EventScope::Switch("workers".into()), None)
        .await
        .unwrap();
    assert!(matches!(c_stream.next().await, Some(Ok(_))));
    client(&[&ub])
        .revoke_token(&created.token.id)
        .await
        .unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match c_stream.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "revocation on B did not end the stream on C");
    let t = Instant::now();
    let mut refused = false;
    while t.elapsed() < Duration::from_secs(2) {
        if let Err(e) = ops_on_c.switches().await {
            assert_eq!(e.code(), Some(brb_api::ErrorCode::Unauthorized));
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a token revoked on B is refused on C");
    eprintln!("revocation on B effective on C after {:?}", t.elapsed());

    // 2. Concurrent toggles on all three: one gapless history, every replica agrees.
    let mut tasks = Vec::new();
    for (i, u) in all.iter().enumerate() {
        let cl = client(&[u]);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for j in 0..12 {
                let to = if (i + j) % 2 == 0 {
                    SwitchState::Running
                } else {
                    SwitchState::Paused
                };
                let s = cl.set_state("workers", &req(to)).await.unwrap();
                assert_eq!(s.state, to);
                versions.push(s.version);
            }
            versions
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // The newest acknowledged version is the newest commit: every replica converges on it.
    let newest = *acked.iter().max().unwrap();
    let audit = client(&[&ub])
        .audit(Some("workers"), 500, None)
        .await
        .unwrap();
    let mut versions: Vec<u64> = audit.entries.iter().filter_map(|e| e.version).collect();
    versions.reverse();
    assert_eq!(
        versions,
        (1..=newest).collect::<Vec<_>>(),
        "audit history is gapless and ends at the newest acknowledged version"
    );
    for (name, s) in [("a", &seen_a), ("b", &seen_b), ("c", &seen_c)] {
        assert!(
            wait_version(s, newest, Duration::from_secs(5)).await,
            "{name} reaches v{newest}"
        );
        assert!(
            gapless(&s.lock().unwrap(), 1, newest),
            "watcher on {name} saw every version once, in order: {:?}",
            s.lock().unwrap()
        );
    }
    // The all-switches streams of two replicas carry the same changes with the same ids.
    assert!(
        eventually(Duration::from_secs(5), || {
            all_b.lock().unwrap().last().map(|l| l.1) == Some(newest)
                && all_c.lock().unwrap().last().map(|l| l.1) == Some(newest)
        })
        .await
    );
    {
        let (b, c) = (all_b.lock().unwrap(), all_c.lock().unwrap());
        let changes = |v: &[(u64, u64)]| v.iter().filter(|e| e.1 >= 2).copied().collect::<Vec<_>>();
        assert_eq!(changes(&b), changes(&c), "same global order on B and C");
        assert!(
            changes(&b)
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 + 1 == w[1].1)
        );
        assert_eq!(changes(&b).len() as u64, newest - 1);
    }
    // Watchers saw v{newest}, so every hub has it: all replicas serve the same switch.
    let cur = client(&[&ua]).switch("workers").await.unwrap();
    assert_eq!(cur.version, newest);
    for u in all {
        let s = client(&[u]).switch("workers").await.unwrap();
        assert_eq!(s, cur, "replica {u} serves the same state");
    }

    // 3. expected_version conflicts are detected across replicas.
    let v = client(&[&ua]).switch("workers").await.unwrap().version;
    let flip = if cur.state == SwitchState::Paused {
        SwitchState::Running
    } else {
        SwitchState::Paused
    };
    client(&[&ub])
        .set_state("workers", &req(flip))
        .await
        .unwrap();
    let mut stale = req(cur.state);
    stale.expected_version = Some(v);
    let err = client(&[&uc])
        .set_state("workers", &stale)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(brb_api::ErrorCode::VersionConflict));

    // 4. Kill A: its watcher moves to B or C without missing a version; gates follow.
    a.kill9();
    let cl_b = client(&[&ub]);
    let before = cl_b.switch("workers").await.unwrap().version;
    let mut last = before;
    for k in 0..4 {
        let to = if k % 2 == 0 {
            SwitchState::Paused
        } else {
            SwitchState::Running
        };
        let s = client(&[&uc, &ub]).set_state("workers", &req(to)).await;
        let s = s.unwrap();
        if s.version > last {
            last = s.version;
        }
    }
    // The writes went through C: B hears of the last one a moment later.
    let mut s = cl_b.switch("workers").await.unwrap();
    for _ in 0..100 {
        if s.version == last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = cl_b.switch("workers").await.unwrap();
    }
    assert_eq!(s.version, last);
    assert!(
        wait_version(&seen_a, last, Duration::from_secs(10)).await,
        "A's watcher moved on: {:?}",
        seen_a.lock().unwrap()
    );
    assert!(
        gapless(&seen_a.lock().unwrap(), 1, last),
        "no version missed across the failover: {:?}",
        seen_a.lock().unwrap()
    );
    for g in &gates {
        assert!(
            eventually(Duration::from_secs(10), || g.version() == last
                && g.is_open() == (s.state == SwitchState::Running))
            .await,
            "gate {} follows after A died (at v{}, want v{last})",
            g.worker_id(),
            g.version()
        );
    }

    // The CLI, given the dead replica first, moves on to the next.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cli_url = format!("{ua},{ub}");
    let o = brb_e2e::cli(
        &home,
        &[("BRB_URL", &cli_url), ("BRB_TOKEN", ADMIN)],
        &["status", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["version"].as_u64(), Some(last));

    // 5. Each Slack message went out exactly once, though three replicas deliver.
    let changes = client(&[&ub])
        .audit(Some("workers"), 500, None)
        .await
        .unwrap()
        .entries
        .iter()
        .filter(|e| e.action == brb_api::AuditAction::StateChanged)
        .count();
    assert!(
        eventually(Duration::from_secs(20), || slack.count("/slack") >= changes).await,
        "every change announced: {} of {changes}",
        slack.count("/slack")
    );
    // Once the shared outbox has nothing left to deliver, no replica has a send to make: the
    // count is final.
    let outbox = format!("{ub}/api/v1/notifications");
    let http = reqwest::Client::new();
    brb_e2e::wait_for(
        Duration::from_secs(20),
        "every notification delivered",
        || async {
            let list: brb_api::NotificationList = http
                .get(&outbox)
                .bearer_auth(ADMIN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            list.notifications
                .iter()
                .all(|n| n.status == brb_api::DeliveryStatus::Delivered)
                .then_some(())
        },
    )
    .await;
    assert_eq!(slack.count("/slack"), changes, "no change announced twice");

    for w in [wa, wb, wc, wab, wac] {
        w.abort();
    }
    drop(gates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_a_database_restart() {
    tokio::time::timeout(Duration::from_secs(240), restart_body())
        .await
        .expect("test timed out");
}

async fn restart_body() {
    // Its own cluster: restarting the shared one would disturb the other test.
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let cluster = Arc::new(cluster);
    let db = cluster.database("restart");
    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), "a", &db, None);
    let b = replica(dir.path(), "b", &db, None);
    let (ua, ub) = (a.url.clone(), b.url.clone());
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    let wb = watch(client(&[&ub]), seen_b.clone());
    assert!(wait_version(&seen_b, 1, Duration::from_secs(10)).await);
    let g = gate(&[&ub], "restart-gate".into());
    assert!(g.ready(Duration::from_secs(10)).await);
    let http = reqwest::Client::new();
    let ready = |u: String| {
        let http = http.clone();
        async move {
            http.get(format!("{u}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready(ua.clone()).await, 200);

    // Database down.
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    }
    // Reads keep serving the last known state; writes fail clearly, nothing half-written.
    let s = client(&[&ua]).switch("workers").await.unwrap();
    assert_eq!((s.version, s.state), (1, SwitchState::Running));
    let err = client(&[&ua])
        .set_state("workers", &req(SwitchState::Paused))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(brb_api::ErrorCode::Unavailable), "{err}");
    assert_eq!(ready(ua.clone()).await, 503);
    assert_eq!(ready(ub.clone()).await, 503);
    assert!(g.is_open(), "the gate keeps the last known state");

    // Database back: both replicas recover on their own.
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.start_again())
            .await
            .unwrap();
    }
    let mut back = false;
    for _ in 0..200 {
        if ready(ua.clone()).await == 200 && ready(ub.clone()).await == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "replicas ready again");
    // The failed write left nothing: the next change is version 2.
    let mut paused = None;
    for _ in 0..50 {
        match client(&[&ua])
            .set_state("workers", &req(SwitchState::Paused))
            .await
        {
            Ok(s) => {
                paused = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let paused = paused.expect("writes work again");
    assert_eq!(paused.version, 2, "nothing half-written during the outage");
    // B's watchers see it: its listener reconnected (or replayed what it missed).
    assert!(
        wait_version(&seen_b, 2, Duration::from_secs(10)).await,
        "watcher on B after the restart: {:?}\nB's log:\n{}",
        seen_b.lock().unwrap(),
        b.log()
    );
    assert!(gapless(&seen_b.lock().unwrap(), 1, 2));
    assert!(eventually(Duration::from_secs(10), || !g.is_open() && g.version() == 2).await);
    let sb = client(&[&ub]).switch("workers").await.unwrap();
    assert_eq!((sb.version, sb.state), (2, SwitchState::Paused));

    // A change committed while B's listener is cut off still reaches B's watchers: B replays
    // the audit log when its listener reconnects.
    let (pg, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'brb-listener'",
        &[],
    )
    .await
    .unwrap();
    let resumed = client(&[&ua])
        .set_state("workers", &req(SwitchState::Running))
        .await
        .unwrap();
    assert_eq!(resumed.version, 3);
    assert!(
        wait_version(&seen_b, 3, Duration::from_secs(10)).await,
        "{:?}",
        seen_b.lock().unwrap()
    );
    assert!(gapless(&seen_b.lock().unwrap(), 1, 3));
    wb.abort();
    drop(g);
    drop(a);
    drop(b);
}

/// A guarded release on two replicas that both see the guarded series (samples pushed to
/// each): both evaluate every check, and each step is written once, in order, on consecutive
/// versions. Which replica writes is a race; the loser's write is refused by the store's
/// compare-and-set on the version and step (`rules.rs`: the deterministic proof is the rule test
/// `a_guarded_release_starts_held_and_advances_only_from_its_step`). Usually the other replica
/// has seen the new version before its own tick, so races are rare; the counts are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_advances_once_across_replicas() {
    tokio::time::timeout(Duration::from_secs(120), guard_replicas_body())
        .await
        .expect("test timed out");
}

async fn guard_replicas_body() {
    let db = tokio::task::spawn_blocking(|| PgCluster::shared().database("guard_replicas"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = std::thread::scope(|s| {
        let ha = s.spawn(|| replica(dir.path(), "a", &db, None));
        let hb = s.spawn(|| replica(dir.path(), "b", &db, None));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let http = reqwest::Client::new();
    let pusher = {
        let (http, urls) = (http.clone(), [a.url.clone(), b.url.clone()]);
        tokio::spawn(async move {
            loop {
                for u in &urls {
                    let _ = http
                        .post(format!("{u}/api/v1/metrics"))
                        .bearer_auth(ADMIN)
                        .json(&serde_json::json!({"samples": [{"name": "db_load", "value": 30}]}))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let ca = client(&[&a.url]);
    ca.set_state("workers", &req(SwitchState::Paused))
        .await
        .unwrap();
    let mut resume = req(SwitchState::Running);
    resume.ramp = Some(brb_api::RampSpec::parse("steps:6s").unwrap());
    resume.guards = vec![brb_api::GuardSpec::parse("db_load < 80, interval=1s").unwrap()];
    let started = ca.set_state("workers", &resume).await.unwrap();
    let cb = client(&[&b.url]);
    let mut done = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let s = cb.switch("workers").await.unwrap();
        if s.state == SwitchState::Running && s.ramp.is_none() {
            done = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pusher.abort();
    let done = done.expect("the guarded release finished");
    let audit = ca.audit(None, 100, None).await.unwrap();
    let steps: Vec<(u64, String)> = audit
        .entries
        .iter()
        .rev()
        .filter(|e| e.source == brb_api::Source::Guard)
        .map(|e| (e.version.unwrap(), e.reason.clone().unwrap_or_default()))
        .collect();
    let (la, lb) = (a.log(), b.log());
    let decided = |l: &str| l.matches("guard advances the release").count();
    let superseded = |l: &str| l.matches("guard decision superseded").count();
    println!(
        "steps: {steps:#?}\nreplica a decided {} and was superseded {}; b decided {} and was superseded {}",
        decided(&la),
        superseded(&la),
        decided(&lb),
        superseded(&lb)
    );
    // One write per step, in order, on consecutive versions: never a step twice.
    assert_eq!(steps.len(), 4, "{steps:?}");
    for (i, (v, _)) in steps.iter().enumerate() {
        assert_eq!(*v, started.version + 1 + i as u64, "{steps:?}");
    }
    assert!(
        steps[0]
            .1
            .starts_with("guarded release advanced to 25% (step 2/4)")
    );
    assert!(steps[3].1.starts_with("guarded release finished at 100%"));
    assert_eq!(done.version, started.version + 4);
    assert!(decided(&la) + decided(&lb) >= 4);
}
