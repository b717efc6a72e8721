//! Jepsen-style: three real `brb server` replicas on a private PostgreSQL, each in its own
//! network namespace, while faults from a seeded schedule hit them (kill -9 and restart,
//! SIGSTOP/SIGCONT of a replica or of PostgreSQL, partitions with nftables, PostgreSQL immediate
//! shutdown, ±5 min clock skew through libfaketime). Operators, readers, raw SSE watchers, SDK
//! gates and a webhook receiver record what they did and saw; `brb_chaos` checks the history:
//! writes and probes linearizable as a versioned compare-and-set register, hub reads and
//! watchers against the documented weaker model (read-your-writes, bounded staleness), one
//! notification per change.
//!
//! Where no network namespace can be made (or with `BRB_CHAOS_NO_NETNS=1`), everything runs on
//! loopback and the partitions go through a fault-injecting TCP proxy of the test's own
//! (`brb_e2e::proxy`: one per client → replica and replica → PostgreSQL link; a partition
//! holds the traffic, resets it, or delays it).
//!
//! The SQLite variant (`BRB_CHAOS_VARIANT=sqlite`, `make chaos VARIANT=sqlite`): one server on
//! SQLite whose data dir is a 32 MiB ext4 disk of the test's own (a loop device), the same
//! clients and checker, and the faults that apply: the disk filled to the last byte and freed,
//! SIGSTOP/SIGCONT, kill -9 and restart. Writes refused while the disk is full must be 503s
//! that changed nothing, and writes must be acknowledged again within 5 s of the free.
//!
//! A killed replica is started again when its fault heals, and the heal ends once it answers
//! `/healthz`. A start that fails while a fault keeps servers from starting (PostgreSQL stopped
//! or shut down, another replica holding the write lock, the SQLite disk full) waits for the
//! heal and tries again; a start that fails with no such fault in effect fails the run.
//!
//! One `#[test]`, its runs in sequence (never two clusters at once on a shared machine):
//! 1. the run: seed `BRB_CHAOS_SEED` (default 0x18), `BRB_CHAOS_SECS` seconds (default 60);
//!    `make chaos SEED=… CHAOS_SECS=…` reproduces a schedule;
//! 2. a deliberately broken build (`BRB_CHAOS_BUG=skip_version_check`, debug builds only) for
//!    20 s: the checker must report the lost updates;
//! 3. without `BRB_CHAOS_VARIANT` (as in `make test`), the SQLite variant for 20 s.
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
    self, AuditRow, Delivery, GateObs, History, HubRead, Initial, Op, OpKind, Outage, Outcome, St,
    WatchEvent, Window,
};
use brb_chaos::schedule::{self, Fault, FaultEvent, Mode, ProxyCut};
use brb_client::{Client, EventScope, Gate, GateConfig, StreamItem, Transport};
use brb_e2e::ServerProc;
use brb_e2e::disk::Disk;
use brb_e2e::netns::{self, CLIENT_ADDR, PG_ADDR, Topology, replica_addr};
use brb_e2e::proxy::{Cut, Proxy};
use brb_pgtest::{PgCluster, PgOptions};
use futures_util::StreamExt as _;
use serde::Serialize;

const ADMIN: &str = "chaos-test-admin-token";
const KEYS: [&str; 2] = ["workers", "chaos2"];
const PORT: u16 = 7070;
/// After the heal, every watcher and gate reaches the final version within this.
const CONVERGE: Duration = Duration::from_secs(5);
/// The outbox lease: a delivery may be repeated within it after a fault hit its claimant.
const LEASE: Duration = Duration::from_secs(30);
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// The SQLite variant's disk: big enough for a 10-minute run's audit, small enough to fill fast.
const DISK_MIB: u32 = 32;

/// The recorder's clock: nanoseconds since the run began, monotonic, the test process's own.
#[derive(Clone, Copy)]
struct Clock(Instant);
impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// How the nodes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetMode {
    /// One network namespace per node, partitions with nftables.
    Netns,
    /// Loopback, partitions through the test's own TCP proxies.
    Proxy,
    /// Loopback, no partitions (the SQLite variant: one node).
    Loopback,
}

impl NetMode {
    fn name(self) -> &'static str {
        match self {
            NetMode::Netns => "netns",
            NetMode::Proxy => "proxy",
            NetMode::Loopback => "loopback",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct RunSpec {
    seed: u64,
    secs: u64,
    bug: Option<&'static str>,
    mode: Mode,
    net: NetMode,
}

impl RunSpec {
    fn replicas(&self) -> u8 {
        match self.mode {
            Mode::Pg => 3,
            Mode::Sqlite => 1,
        }
    }
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
    /// Writes refused with 503 ("nothing was changed").
    refused_503: usize,
    disk_fulls: usize,
}

#[test]
fn chaos_histories_are_linearizable_and_a_broken_build_is_caught() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: run `scripts/ensure-packages.sh test` (libfaketime)"
    );
    let env = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
    let seed = env("BRB_CHAOS_SEED")
        .map(|s| parse_seed(&s))
        .unwrap_or(0x18);
    let secs = env("BRB_CHAOS_SECS")
        .map(|s| s.parse().expect("BRB_CHAOS_SECS: seconds"))
        .unwrap_or(60);
    let variant = env("BRB_CHAOS_VARIANT");
    let net = if env("BRB_CHAOS_NO_NETNS").is_some_and(|v| v != "0") {
        println!("chaos: BRB_CHAOS_NO_NETNS is set: partitions go through the test's TCP proxy");
        NetMode::Proxy
    } else {
        match netns::available() {
            Ok(()) => NetMode::Netns,
            Err(e) => {
                println!(
                    "chaos: no network namespaces here ({e}): partitions go through the test's TCP proxy"
                );
                NetMode::Proxy
            }
        }
    };

    match variant.as_deref() {
        Some("sqlite") => sqlite_run(seed, secs),
        Some("pg") | None => {
            pg_runs(seed, secs, net);
            if variant.is_none() {
                sqlite_run(0x18, 20);
            }
        }
        Some(o) => panic!("BRB_CHAOS_VARIANT={o}: pg or sqlite"),
    }
}

fn pg_runs(seed: u64, secs: u64, net: NetMode) {
    let r = run(RunSpec {
        seed,
        secs,
        bug: None,
        mode: Mode::Pg,
        net,
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
        mode: Mode::Pg,
        net,
    });
    println!("broken build: {}", b.summary);
    let kinds: Vec<String> = b.violations.iter().map(|v| v.kind()).collect();
    assert!(
        kinds.iter().any(|k| k == "lost_update"),
        "the checker did not catch the skipped version check: {kinds:?}"
    );
}

/// One server on SQLite on a small disk of its own, which the faults fill and free.
fn sqlite_run(seed: u64, secs: u64) {
    let r = run(RunSpec {
        seed,
        secs,
        bug: None,
        mode: Mode::Sqlite,
        net: NetMode::Loopback,
    });
    println!("{}", r.summary);
    if !r.violations.is_empty() {
        panic!(
            "{} violations, first: {}",
            r.violations.len(),
            r.violations[0]
        );
    }
    // The disk did fill under the server: some write was refused because of it.
    if r.disk_fulls > 0 {
        assert!(
            r.refused_503 > 0,
            "{} full-disk faults and not one write refused: the fault did not bite",
            r.disk_fulls
        );
    }
}

fn parse_seed(s: &str) -> u64 {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).expect("BRB_CHAOS_SEED: hex"),
        None => s.parse().expect("BRB_CHAOS_SEED: a number"),
    }
}

/// One run: builds the network on this thread, the cluster and the clients on a thread inside
/// the clients' namespace (with namespaces), and tears everything down even when that thread
/// panics.
fn run(spec: RunSpec) -> Report {
    println!(
        "chaos: seed={:#x} secs={} mode={} net={}{}",
        spec.seed,
        spec.secs,
        match spec.mode {
            Mode::Pg => "pg",
            Mode::Sqlite => "sqlite",
        },
        spec.net.name(),
        spec.bug.map(|b| format!(" bug={b}")).unwrap_or_default()
    );
    let topo =
        (spec.net == NetMode::Netns).then(|| Arc::new(Mutex::new(Topology::new(spec.replicas()))));
    let t2 = topo.clone();
    let res = std::thread::spawn(move || {
        if let Some(t) = &t2 {
            t.lock()
                .unwrap()
                .enter("cl")
                .expect("enter the clients' namespace");
        }
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

/// How the clients and the replicas are wired.
enum Net {
    Netns(Arc<Mutex<Topology>>),
    /// Per replica: the clients' way in, and its way to PostgreSQL.
    Proxy {
        clients: Vec<Proxy>,
        pg: Vec<Proxy>,
    },
    Loopback,
}

/// The cluster: the database (PostgreSQL, or SQLite on its own disk), the replicas, and the
/// fault actions.
struct Cluster {
    spec: RunSpec,
    net: Net,
    pg: Option<PgCluster>,
    /// Each replica's `BRB_DATABASE_URL` (through its proxy in proxy mode); none on SQLite.
    db: Vec<String>,
    dir: PathBuf,
    data: Vec<PathBuf>,
    /// Where replica `i` listens, and where the clients reach it.
    listen: Vec<String>,
    urls: Arc<Vec<String>>,
    config: PathBuf,
    procs: Vec<Mutex<Option<ServerProc>>>,
    pids: Vec<AtomicU32>,
    /// The SQLite variant's disk; dropped (unmounted) after the processes are gone.
    disk: Option<Disk>,
    /// The faults in effect that keep servers from starting; `healed` is signalled on each
    /// heal, which a failed restart waits for.
    blockers: Mutex<Blockers>,
    healed: Condvar,
}

/// Faults in effect that keep a server from starting, and how many such faults have begun or
/// healed so far: its database stopped or shut down; another replica stopped or cut off from
/// the database, which may hold the global write lock in an open transaction (a start seeds its
/// switches under that lock); its disk full (SQLite).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Blockers {
    active: u32,
    begun: u64,
    healed: u64,
}

/// Waits until the server just started answers `/healthz` on its own address (not through a
/// proxy, which a client partition may hold); an error if it exits or stays silent first.
fn serving(p: &mut ServerProc, listen: &str) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let limit = Duration::from_secs(30);
    let t = Instant::now();
    let healthy = || -> bool {
        let Ok(addr) = listen.parse::<SocketAddr>() else {
            return false;
        };
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = String::new();
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: chaos\r\n\r\n")
            .is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.split_whitespace().nth(1) == Some("200")
    };
    loop {
        if healthy() {
            return Ok(());
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            return Err(format!(
                "it exited ({st}) before answering; its log:\n{}",
                p.log()
            ));
        }
        if t.elapsed() > limit {
            let _ = p.child.kill();
            return Err(format!(
                "it did not answer /healthz within {limit:?}; its log:\n{}",
                p.log()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port for a server that must come back on the same address after a kill or
/// a shutdown: below the ephemeral range, so that no outgoing connection (a run makes
/// thousands) can take it while the server is down.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = low.saturating_sub(10_000).max(1);
    // Spread by process, so that two runs at once rarely try the same ports.
    let start = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst));
    (0..span)
        .map(|k| (10_000 + (start.wrapping_add(k) % span)) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap_or_else(|| panic!("no free loopback port below {low}"))
}

impl Cluster {
    fn n(&self) -> u8 {
        self.spec.replicas()
    }

    fn skew_file(&self, i: u8) -> PathBuf {
        self.dir.join(format!("skew-r{i}"))
    }

    fn topo(&self) -> Option<&Arc<Mutex<Topology>>> {
        match &self.net {
            Net::Netns(t) => Some(t),
            _ => None,
        }
    }

    /// Starts replica `i` and waits until it answers `/healthz`. A server cannot start while
    /// its database is stopped or shut down or another replica holds the write lock, and may
    /// not while its disk is full; the schedule allows all of these at that moment
    /// ([`Blockers`]). A start that fails while such a fault is in effect (or while one begins
    /// or heals) waits for the heal, then tries again; one that fails with none in effect is a
    /// failure of the run, with the server's log.
    fn start(&self, i: u8) {
        let data = &self.data[i as usize];
        std::fs::create_dir_all(data).unwrap();
        let wrap = self
            .topo()
            .map(|t| t.lock().unwrap().wrap(&format!("r{i}")))
            .unwrap_or_default();
        let skew = self.skew_file(i);
        if !skew.exists() {
            std::fs::write(&skew, "+0\n").unwrap();
        }
        let skew = skew.display().to_string();
        let config = self.config.display().to_string();
        let mut env: Vec<(&str, &str)> = vec![
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
        if let Some(db) = self.db.get(i as usize) {
            env.push(("BRB_DATABASE_URL", db));
        }
        if let Some(b) = self.spec.bug {
            env.push(("BRB_CHAOS_BUG", b));
        }
        let listen = &self.listen[i as usize];
        loop {
            let before = self.blockers();
            let started = ServerProc::try_start_wrapped(&wrap, data, listen, &env)
                .and_then(|mut p| serving(&mut p, listen).map(|()| p));
            match started {
                Ok(p) => {
                    self.pids[i as usize].store(p.child.id(), Ordering::SeqCst);
                    *self.procs[i as usize].lock().unwrap() = Some(p);
                    return;
                }
                Err(e) => {
                    let after = self.blockers();
                    assert!(
                        before.active > 0 || after != before,
                        "replica r{i} did not start, and no fault of the schedule kept it from \
                         starting: {e}"
                    );
                    // The server's last word (its log ends the error) says which fault it was.
                    let last = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                    println!(
                        "chaos: replica r{i} did not start while {} fault(s) could keep servers \
                         from starting ({last}); it tries again after the next heal",
                        after.active.max(1)
                    );
                    self.wait_heal(i, after);
                }
            }
        }
    }

    fn blockers(&self) -> Blockers {
        *self.blockers.lock().unwrap()
    }

    /// A fault that keeps servers from starting begins (before it acts) or has healed.
    fn block(&self, on: bool) {
        let mut b = self.blockers.lock().unwrap();
        if on {
            b.active += 1;
            b.begun += 1;
        } else {
            b.active = b.active.saturating_sub(1);
            b.healed += 1;
            self.healed.notify_all();
        }
    }

    /// After a start failed with `seen`: waits until none of those faults is in effect, or one
    /// of them has healed (which one kept the start from succeeding is not known; other lanes
    /// of the schedule may keep other such faults going the whole time).
    fn wait_heal(&self, i: u8, seen: Blockers) {
        // Such faults last at most 20 s (schedule.rs), a PostgreSQL restart under load longer.
        let limit = Duration::from_secs(120);
        let (guard, wait) = self
            .healed
            .wait_timeout_while(self.blockers.lock().unwrap(), limit, |b| {
                b.active > 0 && b.healed == seen.healed
            })
            .unwrap();
        drop(guard);
        assert!(
            !wait.timed_out(),
            "replica r{i}: no fault that could keep it from starting healed within {limit:?}"
        );
    }

    /// Whether PostgreSQL accepts connections (`pg_isready`: not while it starts or recovers).
    fn pg_accepting(&self, pg: &PgCluster) -> bool {
        let Ok(bin) = brb_pgtest::bin_dir() else {
            return false;
        };
        let host = if self.topo().is_some() {
            PG_ADDR
        } else {
            "127.0.0.1"
        };
        std::process::Command::new(bin.join("pg_isready"))
            .args(["-h", host, "-p", &pg.port.to_string(), "-t", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
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

    /// Every PostgreSQL process: the namespace's, or the postmaster and its children.
    fn pg_pids(&self) -> Vec<i32> {
        if let Some(t) = self.topo() {
            return netns::pids(&t.lock().unwrap().ns("pg"));
        }
        let Some(pg) = &self.pg else {
            return Vec::new();
        };
        let pm = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        let Some(pm) = pm else {
            return Vec::new();
        };
        let mut out = vec![pm];
        if let Ok(kids) = std::fs::read_to_string(format!("/proc/{pm}/task/{pm}/children")) {
            out.extend(
                kids.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        out
    }

    fn signal_pg(&self, sig: libc::c_int) {
        // The postmaster first on stop (no new backends), last on continue.
        let mut pids = self.pg_pids();
        if sig == libc::SIGCONT {
            pids.reverse();
        }
        for pid in pids {
            brb_e2e::signal(pid, sig);
        }
    }

    fn cut(&self, a: &str, b: &str, proxy: Option<&Proxy>, how: ProxyCut) -> String {
        match (&self.net, proxy) {
            (Net::Netns(t), _) => t
                .lock()
                .unwrap()
                .cut(a, b)
                .err()
                .unwrap_or_else(|| "cut".into()),
            (_, Some(p)) => {
                p.set(match how {
                    ProxyCut::Blackhole => Cut::Blackhole,
                    ProxyCut::Refuse => Cut::Refuse,
                    ProxyCut::Delay { ms } => Cut::Delay(Duration::from_millis(ms)),
                });
                format!("proxy {how:?}")
            }
            _ => "no link to cut".into(),
        }
    }

    fn mend(&self, a: &str, b: &str, proxy: Option<&Proxy>) {
        match (&self.net, proxy) {
            (Net::Netns(t), _) => {
                let _ = t.lock().unwrap().heal(a, b);
            }
            (_, Some(p)) => p.set(Cut::Pass),
            _ => {}
        }
    }

    fn proxies(&self, replica: u8) -> (Option<&Proxy>, Option<&Proxy>) {
        match &self.net {
            Net::Proxy { clients, pg } => (clients.get(replica as usize), pg.get(replica as usize)),
            _ => (None, None),
        }
    }

    /// Applies a fault; returns a note for the log.
    fn apply(&self, ev: &FaultEvent) -> String {
        let how = schedule::proxy_cut(self.spec.seed, ev.id);
        match ev.fault {
            Fault::Kill { replica } => {
                self.kill(replica);
                "killed".into()
            }
            Fault::Stop { replica } => {
                self.block(true);
                self.signal_replica(replica, libc::SIGSTOP);
                "stopped".into()
            }
            Fault::StopPg => {
                self.block(true);
                self.signal_pg(libc::SIGSTOP);
                "stopped".into()
            }
            Fault::PartitionPg { replica } => {
                self.block(true);
                self.cut(
                    &replica_addr(replica),
                    PG_ADDR,
                    self.proxies(replica).1,
                    how,
                )
            }
            Fault::PartitionClients { replica } => self.cut(
                CLIENT_ADDR,
                &replica_addr(replica),
                self.proxies(replica).0,
                how,
            ),
            Fault::PgImmediate => {
                self.block(true);
                match self.pg.as_ref().map(|pg| pg.stop_immediate()) {
                    Some(Ok(())) => "pg_ctl stop -m immediate".into(),
                    Some(Err(e)) => e,
                    None => "no PostgreSQL".into(),
                }
            }
            Fault::Skew { replica, secs } => {
                std::fs::write(self.skew_file(replica), format!("{secs:+}\n")).unwrap();
                format!("clock {secs:+} s")
            }
            Fault::DiskFull => match &self.disk {
                Some(d) => {
                    self.block(true);
                    let t = Instant::now();
                    let f = d.fill();
                    format!(
                        "filled ({} bytes in {} ms)",
                        std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
                        t.elapsed().as_millis()
                    )
                }
                None => "no disk of its own".into(),
            },
        }
    }

    fn heal(&self, f: Fault) {
        match f {
            Fault::Kill { replica } => self.start(replica),
            Fault::Stop { replica } => {
                self.signal_replica(replica, libc::SIGCONT);
                self.block(false);
            }
            Fault::StopPg => {
                self.signal_pg(libc::SIGCONT);
                self.block(false);
            }
            Fault::PartitionPg { replica } => {
                self.mend(&replica_addr(replica), PG_ADDR, self.proxies(replica).1);
                self.block(false);
            }
            Fault::PartitionClients { replica } => {
                self.mend(CLIENT_ADDR, &replica_addr(replica), self.proxies(replica).0)
            }
            Fault::PgImmediate => {
                let Some(pg) = &self.pg else {
                    self.block(false);
                    return;
                };
                // `pg_ctl start -w` returns once the server accepts connections. One that timed
                // out under load may still be coming up: wait for it to accept, rather than
                // start a second one on the same directory.
                if let Err(e) = pg.try_start_again() {
                    assert!(pg.running(), "PostgreSQL did not start again: {e}");
                }
                let limit = Duration::from_secs(120);
                let t = Instant::now();
                while !self.pg_accepting(pg) {
                    assert!(
                        t.elapsed() < limit,
                        "PostgreSQL did not accept connections within {limit:?} of its restart"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.block(false);
            }
            Fault::Skew { replica, .. } => {
                std::fs::write(self.skew_file(replica), "+0\n").unwrap();
            }
            Fault::DiskFull => {
                if let Some(d) = &self.disk {
                    d.free();
                    self.block(false);
                }
            }
        }
    }

    /// Nothing left cut after the schedule.
    fn heal_all(&self) {
        match &self.net {
            Net::Netns(t) => {
                let _ = t.lock().unwrap().heal_all();
            }
            Net::Proxy { clients, pg } => {
                for p in clients.iter().chain(pg) {
                    p.set(Cut::Pass);
                }
            }
            Net::Loopback => {}
        }
        if let Some(d) = &self.disk {
            d.free();
        }
    }

    fn logs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(pg) = &self.pg {
            out.push(("postgres.log".to_string(), pg.log()));
        }
        for i in 0..self.n() {
            let log =
                self.data[i as usize].with_extension(format!("stderr-{}.log", std::process::id()));
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
        for i in 0..self.n() {
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
/// `definite_503`: a 503 saying "nothing was changed" is a refusal (SQLite: one process, the
/// transaction rolled back); with PostgreSQL a 503 may hide a commit whose answer was lost.
async fn do_op(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    kind: OpKind,
    reason: &str,
    definite_503: bool,
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
        .put(format!("{base}/api/v1/switches/{key}/state"))
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
        503 if definite_503
            && serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .is_some_and(|m| m.contains("nothing was changed")) =>
        {
            Outcome::Fail {
                status,
                code: "unavailable".into(),
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
    cl: Arc<Cluster>,
) {
    let http = http(Duration::from_secs(5));
    let definite_503 = cl.spec.mode == Mode::Sqlite;
    let mut rng = Lcg(seed ^ (u64::from(client) << 32));
    let mut seen = initial;
    while !stop.load(Ordering::SeqCst) {
        let key = KEYS[rng.next(2) as usize];
        let replica = rng.next(u64::from(cl.n())) as u8;
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
        let pid = cl.pids[replica as usize].load(Ordering::SeqCst);
        let inv = clock.ns();
        let outcome = do_op(
            &http,
            &cl.urls[replica as usize],
            key,
            kind,
            &history::reason(seed, id),
            definite_503,
        )
        .await;
        let ret = clock.ns();
        // Attributed to one incarnation only when no restart happened around it.
        let pid =
            (pid != 0 && cl.pids[replica as usize].load(Ordering::SeqCst) == pid).then_some(pid);
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
            pid,
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
        let replica = rng.next(u64::from(cl.n())) as u8;
        let pid = cl.pids[replica as usize].load(Ordering::SeqCst);
        let inv = clock.ns();
        let res = http
            .get(format!(
                "{}/api/v1/switches/{key}",
                cl.urls[replica as usize]
            ))
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
    all: Arc<Vec<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let urls = rotated(&all, first);
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

/// The replicas' URLs starting with `first`.
fn rotated(all: &[String], first: u8) -> Vec<String> {
    let n = all.len();
    (0..n)
        .map(|k| all[(first as usize + k) % n].clone())
        .collect()
}

fn gate(n: u32, key: &'static str, first: u8, all: &[String]) -> Gate {
    let urls = rotated(all, first);
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
async fn receiver(clock: Clock, rec: Arc<Rec>, host: &str) -> SocketAddr {
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
    let listener = tokio::net::TcpListener::bind(format!("{host}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn cluster_run(spec: RunSpec, topo: Option<Arc<Mutex<Topology>>>) -> Report {
    let clock = Clock(Instant::now());
    let rec = Arc::new(Rec::default());
    let dir = tempfile::tempdir().unwrap();
    let n = spec.replicas();
    let host = match spec.net {
        NetMode::Netns => CLIENT_ADDR,
        _ => "127.0.0.1",
    };
    let hook = receiver(clock, rec.clone(), host).await;
    let config = dir.path().join("brb.toml");
    std::fs::write(
        &config,
        format!("[[notify.webhooks]]\nname = \"chaos\"\nurl = \"http://{hook}/hook\"\n"),
    )
    .unwrap();
    let mut pg = None;
    let mut db = Vec::new();
    let mut disk = None;
    let mut data: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("r{i}"))).collect();
    let listen: Vec<String>;
    let net = match spec.mode {
        Mode::Sqlite => {
            // The data dir is the mount itself, so the server's log (next to it) stays off
            // the disk that fills.
            let d = Disk::new(&dir.path().join("disk"), DISK_MIB).unwrap_or_else(|e| {
                panic!("the SQLite variant mounts a disk of its own (root, loop devices): {e}")
            });
            data = vec![d.dir().to_path_buf()];
            disk = Some(d);
            listen = vec![format!("127.0.0.1:{}", free_port())];
            Net::Loopback
        }
        Mode::Pg => {
            let opts = match &topo {
                Some(t) => PgOptions {
                    host: PG_ADDR.into(),
                    port: Some(5432),
                    wrap: t.lock().unwrap().wrap("pg"),
                },
                None => PgOptions {
                    port: Some(free_port()),
                    ..PgOptions::default()
                },
            };
            let cluster = blocking(move || PgCluster::start_with(opts)).await;
            let url = tokio::task::block_in_place(|| cluster.database("chaos"));
            let net = match &topo {
                Some(t) => {
                    db = vec![url; n as usize];
                    listen = (0..n)
                        .map(|i| format!("{}:{PORT}", replica_addr(i)))
                        .collect();
                    Net::Netns(t.clone())
                }
                None => {
                    // Each replica reaches PostgreSQL through a proxy of its own, and the
                    // clients reach each replica through another.
                    let pg_addr: SocketAddr =
                        format!("127.0.0.1:{}", cluster.port).parse().unwrap();
                    let mut pg_proxies = Vec::new();
                    let mut client_proxies = Vec::new();
                    let mut l = Vec::new();
                    for _ in 0..n {
                        let pp = Proxy::start(pg_addr).await.unwrap();
                        db.push(url.replace(
                            &format!("127.0.0.1:{}", cluster.port),
                            &pp.addr().to_string(),
                        ));
                        pg_proxies.push(pp);
                        let addr: SocketAddr =
                            format!("127.0.0.1:{}", free_port()).parse().unwrap();
                        client_proxies.push(Proxy::start(addr).await.unwrap());
                        l.push(addr.to_string());
                    }
                    listen = l;
                    Net::Proxy {
                        clients: client_proxies,
                        pg: pg_proxies,
                    }
                }
            };
            pg = Some(cluster);
            net
        }
    };
    let urls: Vec<String> = match &net {
        Net::Proxy { clients, .. } => clients
            .iter()
            .map(|p| format!("http://{}", p.addr()))
            .collect(),
        _ => listen.iter().map(|l| format!("http://{l}")).collect(),
    };
    let cl = Arc::new(Cluster {
        spec,
        net,
        pg,
        db,
        dir: dir.path().to_path_buf(),
        data,
        listen,
        urls: Arc::new(urls),
        config,
        procs: (0..n).map(|_| Mutex::new(None)).collect(),
        pids: (0..n).map(|_| AtomicU32::new(0)).collect(),
        disk,
        blockers: Mutex::default(),
        healed: Condvar::new(),
    });
    // Started together on an empty database: migrations and seeding must not race.
    let starts: Vec<_> = (0..n)
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
        .post(format!("{}/api/v1/switches", cl.urls[0]))
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
            .get(format!("{}/api/v1/switches/{key}", cl.urls[0]))
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
            let reps = u32::from(cl.n());
            watchers.push(watcher(
                n,
                key,
                (n % reps) as u8,
                clock,
                rec.clone(),
                cl.urls.clone(),
            ));
            gates.push((n, key, gate(n, key, ((n + 1) % reps) as u8, &cl.urls)));
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
    let schedule = schedule::generate(spec.seed, spec.secs, spec.mode, cl.n());
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
            cl.clone(),
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
            let note = blocking(move || c2.apply(&ev)).await;
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
    // A heal that overran the schedule (a slow restart) still gets its clients afterwards:
    // writes must resume after a free, and the checker can only see that while they run.
    let tail = Duration::from_nanos(healed_ns) + Duration::from_secs(6);
    let run_end = Duration::from_nanos(start_ns) + Duration::from_secs(spec.secs);
    if tail > run_end {
        tokio::time::sleep(tail.saturating_sub(Duration::from_nanos(clock.ns()))).await;
    }
    {
        // Belt and braces: nothing left cut after the schedule.
        cl.heal_all();
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    // The audit, read through a replica once everything has healed.
    let audit = read_audit(&setup, &cl.urls[0], spec.seed, &initial).await;
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
    // What kept a replica from following the store (partitions of a client link do not: the
    // replica still hears the database). A replica stopped or cut off from the database may
    // hold the global write lock in an open transaction: every replica's writes, and the
    // catch-up reads queued behind them, then wait for it (a stall). A killed replica's
    // connections close at once and release it.
    let outages: Vec<Outage> = applied
        .iter()
        .filter_map(|a| {
            let replica = match a.fault {
                Fault::Kill { replica }
                | Fault::Stop { replica }
                | Fault::PartitionPg { replica } => Some(replica),
                Fault::StopPg | Fault::PgImmediate => None,
                Fault::PartitionClients { .. } | Fault::Skew { .. } | Fault::DiskFull => {
                    return None;
                }
            };
            Some(Outage {
                replica,
                from: a.applied_ns,
                to: a.healed_ns,
            })
        })
        .collect();
    let stalls: Vec<Window> = applied
        .iter()
        .filter(|a| matches!(a.fault, Fault::Stop { .. } | Fault::PartitionPg { .. }))
        .map(|a| Window {
            from: a.applied_ns,
            to: a.healed_ns,
        })
        .collect();
    let disk_full: Vec<Window> = applied
        .iter()
        .filter(|a| a.fault == Fault::DiskFull)
        .map(|a| Window {
            from: a.applied_ns,
            to: a.healed_ns,
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
        outages,
        stalls,
        disk_full,
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
        println!("chaos: reproduce the schedule with `{}`", repro(&spec));
        for v in violations.iter().take(20) {
            println!("chaos: violation {v}");
        }
    }
    drop(cl);
    Report {
        violations,
        summary,
        refused_503: h
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Fail { status: 503, .. }))
            .count(),
        disk_fulls: applied
            .iter()
            .filter(|a| a.fault == Fault::DiskFull)
            .count(),
    }
}

async fn read_audit(
    http: &reqwest::Client,
    base: &str,
    seed: u64,
    initial: &[Initial],
) -> Vec<AuditRow> {
    let mut rows = Vec::new();
    for init in initial {
        let mut before: Option<u64> = None;
        'pages: loop {
            let mut url = format!("{base}/api/v1/audit?switch={}&limit=500", init.key);
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
    let refused_503 = count(|o| matches!(o, Outcome::Fail { status: 503, .. }));
    let cov = brb_chaos::weak::coverage(h);
    format!(
        "chaos: seed={:#x} mode={} net={} {} s, {} faults ({}), {} ops checked ({} ok, {} conflict, {} fail ({refused_503} of them 503 \"nothing was changed\"), {} unknown of which {} committed), {} changes, {} hub reads ({} held to read-your-writes, {} to bounded staleness), {} disk frees held to resumed writes, {} watcher events, {} gate observations, {} webhook deliveries; observers converged: {converged}, all changes notified: {delivered}; {} violations",
        spec.seed,
        match spec.mode {
            Mode::Pg => "pg",
            Mode::Sqlite => "sqlite",
        },
        spec.net.name(),
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
        cov.read_your_writes,
        cov.bounded_staleness,
        cov.disk_frees,
        h.watch.len(),
        h.gates.len(),
        h.deliveries.len(),
        violations.len(),
    )
}

/// The command that runs the same schedule again.
fn repro(spec: &RunSpec) -> String {
    format!(
        "make chaos SEED={:#x} CHAOS_SECS={} VARIANT={}{}",
        spec.seed,
        spec.secs,
        match spec.mode {
            Mode::Pg => "pg",
            Mode::Sqlite => "sqlite",
        },
        if spec.net == NetMode::Proxy {
            " NO_NETNS=1"
        } else {
            ""
        }
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
        "seed{:#x}-{stamp}-{}-{}{}",
        spec.seed,
        match spec.mode {
            Mode::Pg => "pg",
            Mode::Sqlite => "sqlite",
        },
        spec.net.name(),
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
    w("outages.jsonl", history::to_jsonl(&h.outages));
    w("stalls.jsonl", history::to_jsonl(&h.stalls));
    w("disk_full.jsonl", history::to_jsonl(&h.disk_full));
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
            "#!/bin/sh\n# The same fault schedule (client timing is real time and differs).\n{}\n",
            repro(spec)
        ),
    );
    for (name, text) in logs {
        w(name, text.clone());
    }
    dir
}
