//! Jepsen-style: three real `brb server` replicas on a private PostgreSQL, each in its own
//! network namespace, while faults from a seeded schedule hit them (kill -9 and restart,
//! SIGSTOP/SIGCONT of a replica or of PostgreSQL, partitions with nftables, PostgreSQL immediate
//! shutdown, ±5 min clock skew through libfaketime). Operators, readers, raw SSE watchers, SDK
//! gates and a webhook receiver record what they did and saw; `brb_chaos` checks the history:
//! writes and probes linearizable as a versioned compare-and-set register, hub reads and
//! watchers against the documented weaker model, one notification per change.
//!
//! One `#[test]`, its runs in sequence (never two clusters at once on a shared machine):
//! 1. the run: seed `BRB_CHAOS_SEED` (default 0x18), `BRB_CHAOS_SECS` seconds (default 60);
//!    `make chaos SEED=… CHAOS_SECS=…` reproduces a schedule;
//! 2. a deliberately broken build (`BRB_CHAOS_BUG=skip_version_check`, debug builds only) for
//!    20 s: the checker must report the lost updates.
//!
//! On a violation the history, the fault schedule, the seed and the logs go to
//! `target/chaos/seed<hex>-<time>/` (also on a pass with `CHAOS_KEEP=1`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use brb_chaos::history::{
    self, AuditRow, Delivery, GateObs, History, HubRead, Initial, Op, OpKind, Outcome, St,
    WatchEvent, Window,
};
use brb_chaos::schedule::{self, Fault, FaultEvent, Mode};
use brb_client::{Client, EventScope, Gate, GateConfig, StreamItem, Transport};
use brb_e2e::ServerProc;
use brb_e2e::netns::{self, CLIENT_ADDR, PG_ADDR, Topology, replica_addr};
use brb_pgtest::{PgCluster, PgOptions};
use futures_util::StreamExt as _;
use serde::Serialize;

const ADMIN: &str = "chaos-test-admin-token";
const KEYS: [&str; 2] = ["workers", "chaos2"];
const REPLICAS: u8 = 3;
const PORT: u16 = 7070;
/// After the heal, every watcher and gate reaches the final version within this.
const CONVERGE: Duration = Duration::from_secs(5);
/// The outbox lease: a delivery may be repeated within it after a fault hit its claimant.
const LEASE: Duration = Duration::from_secs(30);
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The recorder's clock: nanoseconds since the run began, monotonic, the test process's own.
#[derive(Clone, Copy)]
struct Clock(Instant);
impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Clone, Copy, Debug)]
struct RunSpec {
    seed: u64,
    secs: u64,
    bug: Option<&'static str>,
}

/// What a fault did, when.
#[derive(Debug, Clone, Serialize)]
struct Applied {
    id: u32,
    #[serde(flatten)]
    fault: Fault,
    applied_ns: u64,
    healed_ns: u64,
    note: String,
}

struct Report {
    violations: Vec<brb_chaos::Violation>,
    summary: String,
}

#[test]
fn chaos_histories_are_linearizable_and_a_broken_build_is_caught() {
    if let Err(e) = netns::available() {
        panic!("the chaos test needs network namespaces and nftables (run as root): {e}");
    }
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: run `scripts/ensure-packages.sh test` (libfaketime)"
    );
    let seed = std::env::var("BRB_CHAOS_SEED")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_seed(&s))
        .unwrap_or(0x18);
    let secs = std::env::var("BRB_CHAOS_SECS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse().expect("BRB_CHAOS_SECS: seconds"))
        .unwrap_or(60);

    let r = run(RunSpec {
        seed,
        secs,
        bug: None,
    });
    println!("{}", r.summary);
    if !r.violations.is_empty() {
        panic!(
            "{} violations, first: {}",
            r.violations.len(),
            r.violations[0]
        );
    }

    // The same harness on a build that skips the version check must fail.
    let b = run(RunSpec {
        seed: seed ^ 0xb06,
        secs: 20,
        bug: Some("skip_version_check"),
    });
    println!("broken build: {}", b.summary);
    let kinds: Vec<String> = b.violations.iter().map(|v| v.kind()).collect();
    assert!(
        kinds.iter().any(|k| k == "lost_update"),
        "the checker did not catch the skipped version check: {kinds:?}"
    );
}

fn parse_seed(s: &str) -> u64 {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).expect("BRB_CHAOS_SEED: hex"),
        None => s.parse().expect("BRB_CHAOS_SEED: a number"),
    }
}

/// One run: builds the network on this thread, the cluster and the clients on a thread inside
/// the clients' namespace, and tears everything down even when that thread panics.
fn run(spec: RunSpec) -> Report {
    println!(
        "chaos: seed={:#x} secs={} mode=pg net=netns{}",
        spec.seed,
        spec.secs,
        spec.bug.map(|b| format!(" bug={b}")).unwrap_or_default()
    );
    let topo = Arc::new(Mutex::new(Topology::new(REPLICAS)));
    let t2 = topo.clone();
    let res = std::thread::spawn(move || {
        t2.lock()
            .unwrap()
            .enter("cl")
            .expect("enter the clients' namespace");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(spec.secs + 240), cluster_run(spec, t2))
                .await
                .expect("the chaos run hung")
        })
    })
    .join();
    drop(topo);
    match res {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The cluster: PostgreSQL and the replicas, each in its namespace, and the fault actions.
struct Cluster {
    topo: Arc<Mutex<Topology>>,
    pg: PgCluster,
    db: String,
    dir: PathBuf,
    config: PathBuf,
    bug: Option<&'static str>,
    procs: Vec<Mutex<Option<ServerProc>>>,
    pids: Vec<AtomicU32>,
    /// Whether a fault on the database (stopped, or shut down) is in effect, and how many have
    /// begun; `database_up` is signalled on each heal. A replica restart waits for it.
    database: Mutex<DatabaseFaults>,
    database_up: Condvar,
}

#[derive(Default)]
struct DatabaseFaults {
    down: bool,
    begun: u64,
}

impl Cluster {
    fn url(i: u8) -> String {
        format!("http://{}:{PORT}", replica_addr(i))
    }

    fn skew_file(&self, i: u8) -> PathBuf {
        self.dir.join(format!("skew-r{i}"))
    }

    /// Starts replica `i`. A replica cannot start while its database is stopped or shut down,
    /// which the schedule allows at that moment: the start waits for that fault's heal.
    fn start(&self, i: u8) {
        let data = self.dir.join(format!("r{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let wrap = self.topo.lock().unwrap().wrap(&format!("r{i}"));
        let skew = self.skew_file(i);
        if !skew.exists() {
            std::fs::write(&skew, "+0\n").unwrap();
        }
        let skew = skew.display().to_string();
        let config = self.config.display().to_string();
        let mut env: Vec<(&str, &str)> = vec![
            ("BRB_DATABASE_URL", &self.db),
            ("BRB_ADMIN_TOKEN", ADMIN),
            ("BRB_INSECURE_HTTP", "1"),
            ("BRB_CONFIG", &config),
            ("BRB_LOG", "info"),
            ("LD_PRELOAD", FAKETIME_LIB),
            ("FAKETIME_TIMESTAMP_FILE", &skew),
            // Re-read the offset every second; monotonic time stays real, as under NTP skew.
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        if let Some(b) = self.bug {
            env.push(("BRB_CHAOS_BUG", b));
        }
        let listen = format!("{}:{PORT}", replica_addr(i));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let begun = self.wait_database_up(deadline, i);
            match ServerProc::try_start_wrapped(&wrap, &data, &listen, &env) {
                Ok(p) => {
                    self.pids[i as usize].store(p.child.id(), Ordering::SeqCst);
                    *self.procs[i as usize].lock().unwrap() = Some(p);
                    return;
                }
                // A database fault began during the attempt: wait for its heal, then again.
                Err(_) if self.database.lock().unwrap().begun != begun => {}
                // Its own partition from the database cannot be in effect (one fault at a time
                // per replica), so nothing the schedule did explains this.
                Err(e) => panic!("replica r{i} did not start while its database was up: {e}"),
            }
        }
    }

    /// Waits until no database fault is in effect; returns how many had begun by then.
    fn wait_database_up(&self, deadline: Instant, i: u8) -> u64 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (d, wait) = self
            .database_up
            .wait_timeout_while(self.database.lock().unwrap(), left, |d| d.down)
            .unwrap();
        assert!(
            !wait.timed_out(),
            "replica r{i}: its database was still down after 90 s"
        );
        d.begun
    }

    /// Whether PostgreSQL accepts connections (`pg_isready`: not while it starts or recovers).
    fn pg_accepting(&self) -> bool {
        let Ok(bin) = brb_pgtest::bin_dir() else {
            return false;
        };
        std::process::Command::new(bin.join("pg_isready"))
            .args(["-h", PG_ADDR, "-p", &self.pg.port.to_string(), "-t", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Marks a database fault as begun (before it acts) or healed (once the database answers
    /// again).
    fn database_down(&self, down: bool) {
        let mut d = self.database.lock().unwrap();
        d.down = down;
        if down {
            d.begun += 1;
        } else {
            self.database_up.notify_all();
        }
    }

    fn kill(&self, i: u8) {
        if let Some(p) = self.procs[i as usize].lock().unwrap().take() {
            p.kill9();
        }
        self.pids[i as usize].store(0, Ordering::SeqCst);
    }

    fn signal_replica(&self, i: u8, sig: libc::c_int) {
        let pid = self.pids[i as usize].load(Ordering::SeqCst);
        if pid != 0 {
            brb_e2e::signal(pid as i32, sig);
        }
    }

    fn signal_pg(&self, sig: libc::c_int) {
        let ns = self.topo.lock().unwrap().ns("pg");
        for pid in netns::pids(&ns) {
            brb_e2e::signal(pid, sig);
        }
    }

    /// Applies a fault; returns a note for the log.
    fn apply(&self, f: Fault) -> String {
        match f {
            Fault::Kill { replica } => {
                self.kill(replica);
                "killed".into()
            }
            Fault::Stop { replica } => {
                self.signal_replica(replica, libc::SIGSTOP);
                "stopped".into()
            }
            Fault::StopPg => {
                self.database_down(true);
                self.signal_pg(libc::SIGSTOP);
                "stopped".into()
            }
            Fault::PartitionPg { replica } => self
                .topo
                .lock()
                .unwrap()
                .cut(&replica_addr(replica), PG_ADDR)
                .err()
                .unwrap_or_else(|| "cut".into()),
            Fault::PartitionClients { replica } => self
                .topo
                .lock()
                .unwrap()
                .cut(CLIENT_ADDR, &replica_addr(replica))
                .err()
                .unwrap_or_else(|| "cut".into()),
            Fault::PgImmediate => {
                self.database_down(true);
                match self.pg.stop_immediate() {
                    Ok(()) => "pg_ctl stop -m immediate".into(),
                    Err(e) => e,
                }
            }
            Fault::Skew { replica, secs } => {
                std::fs::write(self.skew_file(replica), format!("{secs:+}\n")).unwrap();
                format!("clock {secs:+} s")
            }
            Fault::DiskFull => "not in pg mode".into(),
        }
    }

    fn heal(&self, f: Fault) {
        match f {
            Fault::Kill { replica } => self.start(replica),
            Fault::Stop { replica } => self.signal_replica(replica, libc::SIGCONT),
            Fault::StopPg => {
                self.signal_pg(libc::SIGCONT);
                self.database_down(false);
            }
            Fault::PartitionPg { replica } => {
                let _ = self
                    .topo
                    .lock()
                    .unwrap()
                    .heal(&replica_addr(replica), PG_ADDR);
            }
            Fault::PartitionClients { replica } => {
                let _ = self
                    .topo
                    .lock()
                    .unwrap()
                    .heal(CLIENT_ADDR, &replica_addr(replica));
            }
            Fault::PgImmediate => {
                // `pg_ctl start -w` returns once the server accepts connections. One that timed
                // out under load may still be coming up: wait for it, rather than start a
                // second one on the same directory.
                if let Err(e) = self.pg.try_start_again() {
                    assert!(self.pg.running(), "PostgreSQL did not start again: {e}");
                }
                let deadline = Instant::now() + Duration::from_secs(120);
                while !self.pg_accepting() {
                    assert!(
                        Instant::now() < deadline,
                        "PostgreSQL did not accept connections within 120 s of its restart"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.database_down(false);
            }
            Fault::Skew { replica, .. } => {
                std::fs::write(self.skew_file(replica), "+0\n").unwrap();
            }
            Fault::DiskFull => {}
        }
    }

    fn logs(&self) -> Vec<(String, String)> {
        let mut out = vec![("postgres.log".to_string(), self.pg.log())];
        for i in 0..REPLICAS {
            let data = self.dir.join(format!("r{i}"));
            let log = data.with_extension(format!("stderr-{}.log", std::process::id()));
            out.push((
                format!("r{i}.log"),
                std::fs::read_to_string(log).unwrap_or_default(),
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nothing may stay stopped: a stopped process survives SIGKILL until continued.
        self.signal_pg(libc::SIGCONT);
        for i in 0..REPLICAS {
            self.signal_replica(i, libc::SIGCONT);
            self.kill(i);
        }
    }
}

/// Everything the clients record.
#[derive(Default)]
struct Rec {
    ops: Mutex<Vec<Op>>,
    hub: Mutex<Vec<HubRead>>,
    watch: Mutex<Vec<WatchEvent>>,
    gates: Mutex<Vec<GateObs>>,
    deliveries: Mutex<Vec<Delivery>>,
}

fn http(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(1))
        // A fresh connection per request: a request is sent exactly once, to one replica.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[derive(serde::Deserialize)]
struct SwitchView {
    version: u64,
    state: St,
}

/// One operation: one plain request to exactly one replica, its outcome as the client saw it.
async fn do_op(
    http: &reqwest::Client,
    replica: u8,
    key: &str,
    kind: OpKind,
    reason: &str,
) -> Outcome {
    let (state, expected) = match kind {
        OpKind::Cas { expected, to } => (to, Some(expected)),
        OpKind::Put { to } => (to, None),
        OpKind::Probe => (St::Running, Some(0)),
    };
    let mut body = serde_json::json!({ "state": state, "reason": reason });
    if let Some(e) = expected {
        body["expected_version"] = e.into();
    }
    let res = http
        .put(format!(
            "{}/api/v1/switches/{key}/state",
            Cluster::url(replica)
        ))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await;
    let res = match res {
        Ok(r) => r,
        // Not connected: nothing was sent.
        Err(e) if e.is_connect() => {
            return Outcome::Fail {
                status: 0,
                code: "connect".into(),
            };
        }
        Err(e) => {
            return Outcome::Unknown {
                why: if e.is_timeout() {
                    "timeout".into()
                } else {
                    e.to_string()
                },
            };
        }
    };
    let status = res.status().as_u16();
    let text = match res.text().await {
        Ok(t) => t,
        Err(e) => {
            return Outcome::Unknown {
                why: format!("body: {e}"),
            };
        }
    };
    match status {
        200 => match serde_json::from_str::<SwitchView>(&text) {
            Ok(s) => Outcome::Ok {
                version: s.version,
                state: s.state,
            },
            Err(e) => Outcome::Unknown {
                why: format!("200 body: {e}"),
            },
        },
        409 => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let code = v["error"]["code"].as_str().unwrap_or("").to_string();
            match serde_json::from_value::<SwitchView>(v["error"]["current"].clone()) {
                Ok(s) if code == "version_conflict" => Outcome::Conflict {
                    version: s.version,
                    state: s.state,
                },
                _ => Outcome::Fail { status, code },
            }
        }
        // 503 may have committed (README); every 5xx is unknown.
        500.. => Outcome::Unknown {
            why: format!("{status}"),
        },
        _ => Outcome::Fail {
            status,
            code: serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_default(),
        },
    }
}

/// A small deterministic generator per client task (client timing is not reproducible anyway).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[allow(clippy::too_many_arguments)]
async fn operator(
    client: u32,
    seed: u64,
    clock: Clock,
    rec: Arc<Rec>,
    ids: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    initial: HashMap<String, u64>,
) {
    let http = http(Duration::from_secs(5));
    let mut rng = Lcg(seed ^ (u64::from(client) << 32));
    let mut seen = initial;
    while !stop.load(Ordering::SeqCst) {
        let key = KEYS[rng.next(2) as usize];
        let replica = rng.next(u64::from(REPLICAS)) as u8;
        let to = if rng.next(2) == 0 {
            St::Paused
        } else {
            St::Running
        };
        let kind = match rng.next(10) {
            0..6 => OpKind::Cas {
                expected: seen[key],
                to,
            },
            6..9 => OpKind::Put { to },
            _ => OpKind::Probe,
        };
        let id = ids.fetch_add(1, Ordering::SeqCst);
        let inv = clock.ns();
        let outcome = do_op(&http, replica, key, kind, &history::reason(seed, id)).await;
        let ret = clock.ns();
        if let Outcome::Ok { version, .. } | Outcome::Conflict { version, .. } = outcome {
            let s = seen.get_mut(key).unwrap();
            *s = (*s).max(version);
        }
        let unknown = matches!(outcome, Outcome::Unknown { .. });
        rec.ops.lock().unwrap().push(Op {
            id,
            client,
            key: key.into(),
            kind,
            replica,
            inv,
            ret: (!unknown).then_some(ret),
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(rng.next(50))).await;
    }
}

async fn reader(client: u32, clock: Clock, rec: Arc<Rec>, cl: Arc<Cluster>, stop: Arc<AtomicBool>) {
    let http = http(Duration::from_secs(3));
    let mut rng = Lcg(u64::from(client) * 7919);
    while !stop.load(Ordering::SeqCst) {
        let key = KEYS[rng.next(2) as usize];
        let replica = rng.next(u64::from(REPLICAS)) as u8;
        let pid = cl.pids[replica as usize].load(Ordering::SeqCst);
        let inv = clock.ns();
        let res = http
            .get(format!("{}/api/v1/switches/{key}", Cluster::url(replica)))
            .bearer_auth(ADMIN)
            .send()
            .await;
        let s = match res {
            Ok(r) if r.status().is_success() => r.json::<SwitchView>().await.ok(),
            // A read with no answer constrains nothing.
            _ => None,
        };
        let ret = clock.ns();
        // Attributed to one incarnation only when no restart happened around it.
        if let Some(s) = s
            && pid != 0
            && cl.pids[replica as usize].load(Ordering::SeqCst) == pid
        {
            rec.hub.lock().unwrap().push(HubRead {
                client,
                key: key.into(),
                replica,
                pid,
                inv,
                ret,
                version: s.version,
                state: s.state,
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.next(20))).await;
    }
}

/// A raw SSE watcher of one switch: reconnects (to its next replica) with `Last-Event-ID` and
/// records every change event.
fn watcher(
    watcher: u32,
    key: &'static str,
    first: u8,
    clock: Clock,
    rec: Arc<Rec>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let urls: Vec<String> = (0..REPLICAS)
            .map(|k| Cluster::url((first + k) % REPLICAS))
            .collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let c = Client::with_tls(&refs, Some(ADMIN.to_string()), &insecure()).unwrap();
        let mut last: Option<String> = None;
        loop {
            let resumed = last.is_some();
            if let Ok(stream) = c
                .events(&EventScope::Switch(key.into()), last.as_deref())
                .await
            {
                let mut stream = Box::pin(stream);
                let mut first_event = true;
                let mut resync = false;
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(StreamItem::Event(ev)) if ev.event == "resync" => resync = true,
                        Ok(StreamItem::Event(ev)) if ev.event == "switch" => {
                            let Ok(s) = serde_json::from_str::<SwitchView>(&ev.data) else {
                                continue;
                            };
                            rec.watch.lock().unwrap().push(WatchEvent {
                                watcher,
                                key: key.into(),
                                t: clock.ns(),
                                version: s.version,
                                state: s.state,
                                resumed: resumed && first_event,
                                resync,
                            });
                            first_event = false;
                            resync = false;
                            if let Some(id) = ev.id.clone() {
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

/// Plain HTTP to the replicas' private addresses (the servers run with `--insecure-http`).
fn insecure() -> brb_client::TlsOptions {
    brb_client::TlsOptions {
        allow_insecure_http: true,
        ..Default::default()
    }
}

fn gate(n: u32, key: &'static str, first: u8) -> Gate {
    let urls: Vec<String> = (0..REPLICAS)
        .map(|k| Cluster::url((first + k) % REPLICAS))
        .collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut c = GateConfig::new(&refs, Some(ADMIN.to_string()), key);
    c.worker_id = format!("chaos-gate-{n}");
    c.send_samples = false;
    c.transport = Transport::Sse;
    c.tls = insecure();
    c.backoff_base = Duration::from_millis(100);
    c.backoff_cap = Duration::from_millis(500);
    c.report_interval = Duration::from_millis(1000);
    Gate::start(c).unwrap()
}

/// The webhook receiver (in the clients' namespace): every `switch.changed` delivery.
async fn receiver(clock: Clock, rec: Arc<Rec>) -> SocketAddr {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let rec = rec.clone();
        async move {
            let t = clock.ns();
            let h = req.headers();
            let event = h
                .get("x-brb-event")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let delivery = h
                .get("x-brb-delivery")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if event == "switch.changed"
                && let (Some(key), Some(version)) = (
                    v["switch"]["name"].as_str(),
                    v["switch"]["version"].as_u64(),
                )
            {
                rec.deliveries.lock().unwrap().push(Delivery {
                    t,
                    delivery,
                    key: key.into(),
                    version,
                });
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind(format!("{CLIENT_ADDR}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn cluster_run(spec: RunSpec, topo: Arc<Mutex<Topology>>) -> Report {
    let clock = Clock(Instant::now());
    let rec = Arc::new(Rec::default());
    let dir = tempfile::tempdir().unwrap();
    let hook = receiver(clock, rec.clone()).await;
    let config = dir.path().join("brb.toml");
    std::fs::write(
        &config,
        format!("[[notify.webhooks]]\nname = \"chaos\"\nurl = \"http://{hook}/hook\"\n"),
    )
    .unwrap();
    let pg_wrap = topo.lock().unwrap().wrap("pg");
    let pg = blocking(move || {
        PgCluster::start_with(PgOptions {
            host: PG_ADDR.into(),
            port: Some(5432),
            wrap: pg_wrap,
        })
    })
    .await;
    let db = tokio::task::block_in_place(|| pg.database("chaos"));
    let cl = Arc::new(Cluster {
        topo: topo.clone(),
        pg,
        db,
        dir: dir.path().to_path_buf(),
        config,
        bug: spec.bug,
        procs: (0..REPLICAS).map(|_| Mutex::new(None)).collect(),
        pids: (0..REPLICAS).map(|_| AtomicU32::new(0)).collect(),
        database: Mutex::default(),
        database_up: Condvar::new(),
    });
    // Started together on an empty database: migrations and seeding must not race.
    let starts: Vec<_> = (0..REPLICAS)
        .map(|i| {
            let cl = cl.clone();
            tokio::task::spawn_blocking(move || cl.start(i))
        })
        .collect();
    for s in starts {
        s.await.unwrap();
    }
    let setup = http(Duration::from_secs(10));
    let res = setup
        .post(format!("{}/api/v1/switches", Cluster::url(0)))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "name": KEYS[1], "description": "chaos" }))
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "create {}: {}",
        KEYS[1],
        res.status()
    );
    let mut initial = Vec::new();
    for key in KEYS {
        let s: SwitchView = setup
            .get(format!("{}/api/v1/switches/{key}", Cluster::url(0)))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        initial.push(Initial {
            key: key.into(),
            version: s.version,
            state: s.state,
        });
    }

    // Observers: two raw watchers and two gates per switch, on different first replicas.
    let mut watchers = Vec::new();
    let mut gates: Vec<(u32, &'static str, Gate)> = Vec::new();
    for (k, key) in KEYS.iter().enumerate() {
        for j in 0..2u32 {
            let n = k as u32 * 2 + j;
            watchers.push(watcher(n, key, (n % 3) as u8, clock, rec.clone()));
            gates.push((n, key, gate(n, key, ((n + 1) % 3) as u8)));
        }
    }
    let stop_gates = Arc::new(AtomicBool::new(false));
    let sampler = {
        let rec = rec.clone();
        let stop = stop_gates.clone();
        let gates: Vec<(u32, &'static str, Gate)> = gates.clone();
        tokio::spawn(async move {
            let mut last: HashMap<u32, u64> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                for (n, key, g) in &gates {
                    let v = g.version();
                    if v > 0 && last.insert(*n, v) != Some(v) {
                        rec.gates.lock().unwrap().push(GateObs {
                            gate: *n,
                            key: (*key).into(),
                            t: clock.ns(),
                            version: v,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The workload and the faults.
    let schedule = schedule::generate(spec.seed, spec.secs, Mode::Pg, REPLICAS);
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(1));
    let init_versions: HashMap<String, u64> =
        initial.iter().map(|i| (i.key.clone(), i.version)).collect();
    let mut tasks = Vec::new();
    for c in 0..4 {
        tasks.push(tokio::spawn(operator(
            c,
            spec.seed,
            clock,
            rec.clone(),
            ids.clone(),
            stop.clone(),
            init_versions.clone(),
        )));
    }
    for c in 0..2 {
        tasks.push(tokio::spawn(reader(
            100 + c,
            clock,
            rec.clone(),
            cl.clone(),
            stop.clone(),
        )));
    }
    let start_ns = clock.ns();
    let applied: Arc<Mutex<Vec<Applied>>> = Arc::default();
    // One fault at a time per target, also when a heal (a restart under load) overruns the
    // schedule: the next fault on that target then starts late (faults.jsonl has the times).
    let targets: Arc<Mutex<HashMap<schedule::Target, Arc<tokio::sync::Mutex<()>>>>> =
        Arc::default();
    let mut fault_tasks = Vec::new();
    for ev in schedule.clone() {
        let cl = cl.clone();
        let applied = applied.clone();
        let lock = targets
            .lock()
            .unwrap()
            .entry(ev.fault.target())
            .or_default()
            .clone();
        fault_tasks.push(tokio::spawn(async move {
            let at = Duration::from_nanos(start_ns) + Duration::from_millis(ev.at_ms);
            tokio::time::sleep(at.saturating_sub(Duration::from_nanos(clock.ns()))).await;
            let _busy = lock.lock().await;
            let applied_ns = clock.ns();
            let c2 = cl.clone();
            let note = blocking(move || c2.apply(ev.fault)).await;
            tokio::time::sleep(Duration::from_millis(ev.dur_ms)).await;
            let c2 = cl.clone();
            blocking(move || c2.heal(ev.fault)).await;
            applied.lock().unwrap().push(Applied {
                id: ev.id,
                fault: ev.fault,
                applied_ns,
                healed_ns: clock.ns(),
                note,
            });
        }));
    }
    tokio::time::sleep(
        Duration::from_secs(spec.secs).saturating_sub(Duration::from_nanos(clock.ns() - start_ns)),
    )
    .await;
    for t in fault_tasks {
        t.await.unwrap();
    }
    let healed_ns = clock.ns();
    {
        // Belt and braces: nothing left cut after the schedule.
        let _ = topo.lock().unwrap().heal_all();
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    // The audit, read through a replica once everything has healed.
    let audit = read_audit(&setup, spec.seed, &initial).await;
    // Wait (a condition, bounded) for every observer to reach the final version and for every
    // change's notification; the checker then judges how long it took.
    let finals: HashMap<String, u64> = initial
        .iter()
        .map(|i| {
            let v = audit
                .iter()
                .filter(|r| r.key == i.key)
                .map(|r| r.version)
                .max()
                .unwrap_or(i.version);
            (i.key.clone(), v)
        })
        .collect();
    let converged = brb_e2e::eventually(CONVERGE * 4, || {
        let w = rec.watch.lock().unwrap();
        let g = rec.gates.lock().unwrap();
        (0..4u32).all(|n| {
            let key = KEYS[(n / 2) as usize];
            w.iter().any(|e| e.watcher == n && e.version >= finals[key])
                && g.iter().any(|e| e.gate == n && e.version >= finals[key])
        })
    })
    .await;
    let changes: usize = audit.len();
    let delivered = brb_e2e::eventually(LEASE * 2, || {
        let d = rec.deliveries.lock().unwrap();
        audit
            .iter()
            .all(|r| d.iter().any(|x| x.key == r.key && x.version == r.version))
    })
    .await;
    stop_gates.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    for w in watchers {
        w.abort();
    }
    drop(gates);

    let applied = std::mem::take(&mut *applied.lock().unwrap());
    let windows: Vec<Window> = applied
        .iter()
        .filter(|a| !matches!(a.fault, Fault::Skew { .. }))
        .map(|a| Window {
            from: a.applied_ns,
            to: a.healed_ns + LEASE.as_nanos() as u64,
        })
        .collect();
    let mut ops = std::mem::take(&mut *rec.ops.lock().unwrap());
    ops.sort_by_key(|o| o.id);
    let h = History {
        initial,
        ops,
        audit,
        hub_reads: std::mem::take(&mut *rec.hub.lock().unwrap()),
        watch: std::mem::take(&mut *rec.watch.lock().unwrap()),
        gates: std::mem::take(&mut *rec.gates.lock().unwrap()),
        deliveries: std::mem::take(&mut *rec.deliveries.lock().unwrap()),
        redelivery_windows: windows,
        healed_at: Some(healed_ns),
    };
    let violations = brb_chaos::check_all(&h, CONVERGE.as_nanos() as u64);
    let summary = summary(
        &spec,
        &schedule,
        &applied,
        &h,
        &violations,
        converged,
        delivered,
        changes,
    );
    if !violations.is_empty() || std::env::var_os("CHAOS_KEEP").is_some() {
        let dir = write_artifacts(
            &spec,
            &schedule,
            &applied,
            &h,
            &violations,
            &summary,
            &cl.logs(),
        );
        println!("chaos: artifacts in {}", dir.display());
        println!(
            "chaos: reproduce the schedule with `make chaos SEED={:#x} CHAOS_SECS={}`",
            spec.seed, spec.secs
        );
        for v in violations.iter().take(20) {
            println!("chaos: violation {v}");
        }
    }
    drop(cl);
    Report {
        violations,
        summary,
    }
}

async fn read_audit(http: &reqwest::Client, seed: u64, initial: &[Initial]) -> Vec<AuditRow> {
    let mut rows = Vec::new();
    for init in initial {
        let mut before: Option<u64> = None;
        'pages: loop {
            let mut url = format!(
                "{}/api/v1/audit?switch={}&limit=500",
                Cluster::url(0),
                init.key
            );
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: brb_api::AuditPage = http
                .get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for e in &page.entries {
                let (Some(version), Some(to)) = (e.version, e.to) else {
                    continue;
                };
                if e.action != brb_api::AuditAction::StateChanged {
                    continue;
                }
                if version <= init.version {
                    break 'pages;
                }
                rows.push(AuditRow {
                    key: init.key.clone(),
                    version,
                    to: match to {
                        brb_api::SwitchState::Running => St::Running,
                        brb_api::SwitchState::Paused => St::Paused,
                    },
                    op: e
                        .reason
                        .as_deref()
                        .and_then(|r| history::op_of_reason(seed, r)),
                });
            }
            match page.next_before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
    }
    rows.sort_by_key(|r| (r.key.clone(), r.version));
    rows
}

#[allow(clippy::too_many_arguments)]
fn summary(
    spec: &RunSpec,
    schedule: &[FaultEvent],
    applied: &[Applied],
    h: &History,
    violations: &[brb_chaos::Violation],
    converged: bool,
    delivered: bool,
    changes: usize,
) -> String {
    let mut by_kind: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in schedule {
        *by_kind.entry(e.fault.name()).or_default() += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let count = |f: fn(&Outcome) -> bool| h.ops.iter().filter(|o| f(&o.outcome)).count();
    let unknown = count(|o| matches!(o, Outcome::Unknown { .. }));
    let unknown_committed = h
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown { .. }))
        .filter(|o| h.audit.iter().any(|r| r.op == Some(o.id)))
        .count();
    format!(
        "chaos: seed={:#x} {} s, {} faults ({}), {} ops checked ({} ok, {} conflict, {} fail, {} unknown of which {} committed), {} changes, {} hub reads, {} watcher events, {} gate observations, {} webhook deliveries; observers converged: {converged}, all changes notified: {delivered}; {} violations",
        spec.seed,
        spec.secs,
        applied.len(),
        kinds.join(", "),
        h.ops.len(),
        count(|o| matches!(o, Outcome::Ok { .. })),
        count(|o| matches!(o, Outcome::Conflict { .. })),
        count(|o| matches!(o, Outcome::Fail { .. })),
        unknown,
        unknown_committed,
        changes,
        h.hub_reads.len(),
        h.watch.len(),
        h.gates.len(),
        h.deliveries.len(),
        violations.len(),
    )
}

fn write_artifacts(
    spec: &RunSpec,
    schedule: &[FaultEvent],
    applied: &[Applied],
    h: &History,
    violations: &[brb_chaos::Violation],
    summary: &str,
    logs: &[(String, String)],
) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = target.join("chaos").join(format!(
        "seed{:#x}-{stamp}{}",
        spec.seed,
        spec.bug.map(|b| format!("-{b}")).unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let w = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    w("seed", format!("{:#x}\n", spec.seed));
    w(
        "schedule.json",
        serde_json::to_string_pretty(schedule).unwrap(),
    );
    w("faults.jsonl", history::to_jsonl(applied));
    w("history.jsonl", history::to_jsonl(&h.ops));
    w("initial.jsonl", history::to_jsonl(&h.initial));
    w("audit.jsonl", history::to_jsonl(&h.audit));
    w("hub_reads.jsonl", history::to_jsonl(&h.hub_reads));
    w("watch.jsonl", history::to_jsonl(&h.watch));
    w("gates.jsonl", history::to_jsonl(&h.gates));
    w("notifications.jsonl", history::to_jsonl(&h.deliveries));
    w(
        "violations.txt",
        violations.iter().map(|v| format!("{v}\n")).collect(),
    );
    w("summary.txt", format!("{summary}\n"));
    w(
        "repro.sh",
        format!(
            "#!/bin/sh\n# The same fault schedule (client timing is real time and differs).\nmake chaos SEED={:#x} CHAOS_SECS={}\n",
            spec.seed, spec.secs
        ),
    );
    for (name, text) in logs {
        w(name, text.clone());
    }
    dir
}
