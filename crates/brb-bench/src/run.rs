//! The coordinator: starts the control plane, the watcher processes and Redis, runs each
//! measurement in turn, and assembles the [`Report`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use brb_api::{PRIMARY_SWITCH, Switch, SwitchState};
use brb_client::Client;
use brb_resp as resp;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::clock::{mono_ns, raise_nofile};
use crate::proto::{AttemptStats, FromChild, ToChild};
use crate::report::{Baseline, Cpu, Machine, Memory, Reads, Report, Run, Storm, StormDiag};
use crate::stats::{spread, summarize};
use crate::{BenchArgs, BenchError};

type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Redis is one process, so its subscribers are bounded by the open-files limit too.
const REDIS_MAX_SUBSCRIBERS: usize = 18_000;
const COLLECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs every measurement `args` asks for.
pub(crate) mod soak;

pub async fn run(args: BenchArgs) -> Result<Report> {
    if args.replicas > 1 && !args.postgres {
        return Err(BenchError::Failed(
            "--replicas above 1 needs --postgres (replicas share PostgreSQL)".into(),
        ));
    }
    if args.replicas == 0 || args.per_process == 0 {
        return Err(BenchError::Failed(
            "--replicas and --per-process must be at least 1".into(),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::io("finding our executable", e))?;
    let open_files_limit = raise_nofile();
    let tmp = tempfile::Builder::new()
        .prefix("brb-bench-")
        .tempdir()
        .map_err(|e| BenchError::io("creating a temporary directory", e))?;
    let mut notes = Vec::new();
    let load_before = loadavg();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let redis = if args.skip_redis {
        None
    } else {
        Some(Redis::start(&args.redis_server, tmp.path()).await?)
    };

    let mut fleet = Fleet::start(&exe, &args, tmp.path()).await?;
    eprintln!(
        "brb bench: control plane at {} ({})",
        fleet.urls.join(", "),
        fleet.store
    );

    let ack = if args.ack_toggles > 0 {
        eprintln!("brb bench: {} acknowledged toggles…", args.ack_toggles);
        Some(ack_latency(&fleet.admin, args.ack_toggles).await?)
    } else {
        None
    };

    let reads = if args.read_conns > 0 {
        eprintln!(
            "brb bench: status reads over {} connections for {} s…",
            args.read_conns, args.read_secs
        );
        Some(status_reads(&exe, &fleet, &args, tmp.path()).await?)
    } else {
        None
    };

    let mut runs = Vec::new();
    for &n in &args.watchers {
        eprintln!("brb bench: {n} watchers…");
        let mut run = fanout(&exe, &mut fleet, n, &args, tmp.path()).await?;
        if let Some(r) = &redis {
            if n > REDIS_MAX_SUBSCRIBERS {
                notes.push(format!(
                    "no Redis baseline at {n}: one redis-server holds at most \
                     {REDIS_MAX_SUBSCRIBERS} subscribers under this machine's open-files limit"
                ));
            } else {
                eprintln!("brb bench: {n} Redis subscribers…");
                let payload = fleet.admin.switch(PRIMARY_SWITCH).await?;
                let b = r.fanout(&exe, n, &args, tmp.path(), payload).await?;
                run.ratio_p99 =
                    (b.fanout.p99_ms > 0.0).then(|| run.fanout.p99_ms / b.fanout.p99_ms);
                run.redis = Some(b);
            }
        }
        runs.push(run);
    }
    fleet.stop().await;
    drop(redis);

    if cfg!(debug_assertions) {
        notes.push("debug build: build with `cargo build --release -p brb` for figures".into());
    }
    notes.push(
        "gates run with reports and samples off (the benchmark reads no acknowledgements) and \
         the SDK's default reconnect backoff (full jitter, 1 s base)"
            .into(),
    );
    if args.postgres {
        notes.push(
            "the private PostgreSQL cluster runs with fsync=off (test cluster settings)".into(),
        );
    }
    Ok(Report {
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        machine: machine(),
        load_before,
        load_after: loadavg(),
        store: fleet.store.clone(),
        replicas: args.replicas,
        toggles: args.toggles,
        open_files_limit,
        ack,
        reads,
        runs,
        notes,
    })
}

fn set_state(state: SwitchState) -> Result<brb_api::SetStateRequest> {
    // Built from JSON so fields added to the request later keep their defaults here.
    serde_json::from_value(serde_json::json!({ "state": state, "reason": "brb bench" }))
        .map_err(|e| BenchError::Failed(format!("building a state change: {e}")))
}

fn flip(s: SwitchState) -> SwitchState {
    match s {
        SwitchState::Running => SwitchState::Paused,
        SwitchState::Paused => SwitchState::Running,
    }
}

async fn ack_latency(admin: &Client, n: usize) -> Result<crate::stats::Summary> {
    let mut state = admin.switch(PRIMARY_SWITCH).await?.state;
    let mut ns = Vec::with_capacity(n);
    for i in 0..n + 5 {
        state = flip(state);
        let req = set_state(state)?;
        let t = Instant::now();
        admin.set_state(PRIMARY_SWITCH, &req).await?;
        // The first few warm up the connection and the page cache.
        if i >= 5 {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(summarize(&mut ns))
}

async fn status_reads(exe: &Path, fleet: &Fleet, args: &BenchArgs, dir: &Path) -> Result<Reads> {
    let mut c = ChildProc::spawn(exe, dir, "reads").await?;
    let path = format!("{}/switches/{}", brb_api::API_PREFIX, PRIMARY_SWITCH);
    let ans = c
        .ask(
            &ToChild::Reads {
                addr: fleet.servers[0].listen.to_string(),
                path,
                token: fleet.viewer_token.clone(),
                conns: args.read_conns,
                secs: args.read_secs,
            },
            Duration::from_secs_f64(args.read_secs + 60.0),
        )
        .await?;
    c.quit().await;
    match ans {
        FromChild::Reads {
            requests,
            errors,
            secs,
        } => Ok(Reads {
            conns: args.read_conns,
            secs,
            requests,
            errors,
            per_sec: requests as f64 / secs.max(1e-9),
        }),
        other => Err(unexpected(&other)),
    }
}

/// Splits `n` watchers over as few processes as the per-process cap allows, evenly.
fn split(n: usize, per_process: usize) -> Vec<usize> {
    let procs = n.div_ceil(per_process).max(1);
    (0..procs)
        .map(|i| n / procs + usize::from(i < n % procs))
        .collect()
}

async fn spawn_children(
    exe: &Path,
    dir: &Path,
    counts: &[usize],
    what: &str,
) -> Result<Vec<ChildProc>> {
    let mut out = Vec::new();
    for i in 0..counts.len() {
        out.push(ChildProc::spawn(exe, dir, &format!("{what}-{i}")).await?);
    }
    Ok(out)
}

/// Sends one order to every child, then reads every answer (they work in parallel).
async fn ask_all(
    children: &mut [ChildProc],
    orders: Vec<ToChild>,
    timeout: Duration,
) -> Result<Vec<FromChild>> {
    for (c, o) in children.iter_mut().zip(&orders) {
        c.send(o).await?;
    }
    let mut out = Vec::new();
    for c in children.iter_mut() {
        out.push(c.recv(timeout).await?);
    }
    Ok(out)
}

async fn ready(children: &mut [ChildProc], orders: Vec<ToChild>) -> Result<usize> {
    let mut failed = 0;
    for a in ask_all(children, orders, Duration::from_secs(600)).await? {
        match a {
            FromChild::Ready { failed: f, .. } => failed += f,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(failed)
}

/// Collects delivery `key` from every child: latencies from `t0`, and how many are missing.
async fn collect(children: &mut [ChildProc], key: u64, t0: u64) -> Result<(Vec<u64>, usize)> {
    let n = children.len();
    let orders = vec![
        ToChild::Collect {
            key,
            timeout_ms: COLLECT_TIMEOUT.as_millis() as u64,
        };
        n
    ];
    let mut lat = Vec::new();
    let mut missing = 0;
    for a in ask_all(children, orders, COLLECT_TIMEOUT + Duration::from_secs(30)).await? {
        match a {
            FromChild::Seen {
                t_ns, missing: m, ..
            } => {
                lat.extend(t_ns.iter().map(|t| t.saturating_sub(t0)));
                missing += m;
            }
            other => return Err(unexpected(&other)),
        }
    }
    Ok((lat, missing))
}

async fn fanout(
    exe: &Path,
    fleet: &mut Fleet,
    n: usize,
    args: &BenchArgs,
    dir: &Path,
) -> Result<Run> {
    // A fresh control plane for each count, so its memory baseline holds no earlier watchers.
    fleet.restart(false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = fleet.rss_kib();
    let counts = split(n, args.per_process);
    let mut children = spawn_children(exe, dir, &counts, &format!("gates-{n}")).await?;
    let orders = counts
        .iter()
        .enumerate()
        .map(|(i, &count)| ToChild::Gates {
            urls: fleet.urls.clone(),
            token: fleet.viewer_token.clone(),
            switch: PRIMARY_SWITCH.into(),
            count,
            reports: false,
            local_address: (!args.one_source_address).then(|| source_address(i)),
        })
        .collect();
    let t = Instant::now();
    let failed = ready(&mut children, orders).await?;
    eprintln!(
        "brb bench:   {n} gates connected in {:.1} s ({failed} failed)",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = fleet.rss_kib();

    let mut state = fleet.admin.switch(PRIMARY_SWITCH).await?.state;
    let cpu0 = (fleet.cpu_us(), children_cpu_us(&children));
    let mut all = Vec::new();
    let mut per_toggle_p99_ms = Vec::new();
    let mut missing = 0;
    for _ in 0..args.toggles {
        state = flip(state);
        let req = set_state(state)?;
        let t0 = mono_ns();
        let sw = fleet.admin.set_state(PRIMARY_SWITCH, &req).await?;
        let (mut lat, m) = collect(&mut children, sw.version, t0).await?;
        missing += m;
        per_toggle_p99_ms.push(summarize(&mut lat).p99_ms);
        all.extend(lat);
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
    let deliveries = all.len().max(1) as f64;
    let cpu = Cpu {
        server_us_per_delivery: fleet.cpu_us().saturating_sub(cpu0.0) as f64 / deliveries,
        watchers_us_per_delivery: children_cpu_us(&children).saturating_sub(cpu0.1) as f64
            / deliveries,
    };
    let fanout = summarize(&mut all);
    eprintln!(
        "brb bench:   fan-out p50 {:.1} p99 {:.1} max {:.1} ms ({missing} missing)",
        fanout.p50_ms, fanout.p99_ms, fanout.max_ms
    );

    let storm = if args.skip_storm {
        None
    } else {
        Some(storm(fleet, &mut children, args.kill_one_by_one).await?)
    };
    for c in children {
        c.quit().await;
    }
    Ok(Run {
        watchers: n,
        processes: counts.len(),
        failed,
        memory: Memory {
            rss_before_kib,
            rss_after_kib,
            per_watcher_kib: rss_after_kib.saturating_sub(rss_before_kib) as f64 / n.max(1) as f64,
        },
        fanout,
        cpu,
        per_toggle_p99_ms,
        missing,
        storm,
        redis: None,
        ratio_p99: None,
    })
}

/// `kill -9` of every control-plane process with the gates connected, a restart on the same
/// addresses, and the time until every gate is connected again.
async fn storm(
    fleet: &mut Fleet,
    children: &mut [ChildProc],
    kill_one_by_one: bool,
) -> Result<Storm> {
    let net0 = netstat();
    let accept_failed0 = count_in_log(&fleet.log, "accept failed");
    let t_kill = mono_ns();
    fleet.kill9(kill_one_by_one).await;
    let t_restart = mono_ns();
    let listening_ns = fleet.start_again().await?;
    let t_listening = mono_ns();
    let pids: Vec<u32> = fleet.servers.iter().filter_map(|s| s.child.id()).collect();
    let sampler = FdSampler::start(pids.clone());
    let orders = vec![
        ToChild::Reconnected {
            since_ns: t_kill,
            timeout_ms: 60_000,
        };
        children.len()
    ];
    let mut t_ns = Vec::new();
    let mut missing = 0;
    let mut stale = 0;
    let mut attempts = AttemptStats::default();
    for a in ask_all(children, orders, Duration::from_secs(120)).await? {
        match a {
            FromChild::Reconnected {
                t_ns: t,
                missing: m,
                stale: st,
                attempts: at,
            } => {
                t_ns.extend(t);
                missing += m;
                stale += st;
                attempts.merge(&at);
            }
            other => return Err(unexpected(&other)),
        }
    }
    let (fds_max, fds_series) = sampler.stop().await;
    let last = t_ns.iter().copied().max().unwrap_or(t_listening);
    let ms = |from: u64| last.saturating_sub(from) as f64 / 1e6;
    let mut reconnects_250ms = Vec::new();
    for &t in &t_ns {
        let i = (t.saturating_sub(t_listening) / 250_000_000) as usize;
        if reconnects_250ms.len() <= i {
            reconnects_250ms.resize(i + 1, 0);
        }
        reconnects_250ms[i] += 1;
    }
    let net1 = netstat();
    let diag = StormDiag {
        listening_ms: listening_ns
            .iter()
            .map(|&t| t.saturating_sub(t_restart) as f64 / 1e6)
            .collect(),
        reconnects_250ms,
        fds_end: pids.iter().map(|&p| open_fds(p)).collect(),
        fds_max,
        fds_series_1s: fds_series,
        netstat: NETSTAT_KEYS
            .iter()
            .map(|k| {
                let d = net1.get(*k).copied().unwrap_or(0) - net0.get(*k).copied().unwrap_or(0);
                (k.to_string(), d)
            })
            .collect(),
        accept_failed: count_in_log(&fleet.log, "accept failed").saturating_sub(accept_failed0),
        server_cpu_ms: pids.iter().map(|&p| cpu_us(Some(p))).sum::<u64>() as f64 / 1e3,
        attempts,
    };
    let s = Storm {
        reconnected: t_ns.len(),
        missing,
        stale,
        all_back_ms: ms(t_restart),
        after_listening_ms: ms(t_listening),
        since_kill_ms: ms(t_kill),
        spread: spread(&t_ns),
        diag: Some(diag),
    };
    eprintln!(
        "brb bench:   reconnect storm: all back {:.0} ms after restart ({missing} missing, \
         {stale} of them on a stream from before the kill)",
        s.all_back_ms
    );
    if let Some(d) = &s.diag {
        for l in d.lines() {
            eprintln!("brb bench:     {l}");
        }
    }
    Ok(s)
}

/// The loopback address watcher process `i` connects from: 127.0.0.2 onwards (Linux
/// answers on all of 127.0.0.0/8).
fn source_address(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 0, (2 + i / 250) as u8, (2 + i % 250) as u8).into()
}

/// TCP counters (`/proc/net/netstat`, `/proc/net/snmp`) that show a listen queue overflowing
/// or SYNs retransmitted. System-wide: other traffic on the machine counts too (little, next
/// to a storm's).
const NETSTAT_KEYS: [&str; 8] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "SyncookiesSent",
    "TCPSynRetrans",
    "TCPTimeouts",
    "AttemptFails",
    "EstabResets",
];

fn netstat() -> std::collections::HashMap<String, i64> {
    let mut out = std::collections::HashMap::new();
    for f in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // Pairs of lines: names, then values, both starting with the same "Prefix:".
        for pair in lines.chunks(2) {
            if let [names, values] = pair {
                for (n, v) in names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .skip(1)
                {
                    if let Ok(v) = v.parse() {
                        out.insert(n.to_string(), v);
                    }
                }
            }
        }
    }
    out
}

fn count_in_log(log: &Path, needle: &str) -> u64 {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| l.contains(needle)).count() as u64)
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Counts each server's open files every second while a storm runs (the peak shows a replica
/// at its open-files limit).
struct FdSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(Vec<u64>, Vec<Vec<u64>>)>,
}

impl FdSampler {
    fn start(pids: Vec<u32>) -> FdSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut max = vec![0; pids.len()];
            let mut series = vec![Vec::new(); pids.len()];
            // Once a second: listing 20,000 descriptors of three processes four times a
            // second took 2 s of CPU from the storm it measures (perf, BENCHMARKS.md).
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                for (i, &p) in pids.iter().enumerate() {
                    let c = open_fds(p);
                    max[i] = max[i].max(c);
                    series[i].push(c);
                }
            }
            (max, series)
        });
        FdSampler { stop, task }
    }

    async fn stop(self) -> (Vec<u64>, Vec<Vec<u64>>) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

fn unexpected(a: &FromChild) -> BenchError {
    match a {
        FromChild::Failed { message } => {
            BenchError::Failed(format!("a bench child failed: {message}"))
        }
        other => BenchError::Failed(format!("unexpected answer from a bench child: {other:?}")),
    }
}

/// A `brb bench-child` process.
struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl ChildProc {
    async fn spawn(exe: &Path, dir: &Path, name: &str) -> Result<ChildProc> {
        let log = dir.join(format!("child-{name}.log"));
        let stderr =
            std::fs::File::create(&log).map_err(|e| BenchError::io("creating a log file", e))?;
        let mut child = Command::new(exe)
            .arg("bench-child")
            .env("BRB_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {} bench-child", exe.display()), e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Failed("bench child without pipes".into()));
        };
        Ok(ChildProc {
            child,
            stdin,
            out: BufReader::new(stdout).lines(),
            log,
        })
    }

    async fn send(&mut self, order: &ToChild) -> Result<()> {
        let mut l = serde_json::to_vec(order).map_err(|e| BenchError::Failed(e.to_string()))?;
        l.push(b'\n');
        self.stdin.write_all(&l).await.map_err(|e| {
            BenchError::io(
                format!("ordering a bench child (log {})", self.log.display()),
                e,
            )
        })
    }

    async fn recv(&mut self, timeout: Duration) -> Result<FromChild> {
        let line = tokio::time::timeout(timeout, self.out.next_line())
            .await
            .map_err(|_| {
                BenchError::Failed(format!("a bench child did not answer within {timeout:?}"))
            })?
            .map_err(|e| BenchError::io("reading a bench child", e))?;
        let Some(line) = line else {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            return Err(BenchError::Failed(format!(
                "a bench child exited; its log:\n{log}"
            )));
        };
        serde_json::from_str(&line)
            .map_err(|e| BenchError::Failed(format!("bad answer from a bench child {line:?}: {e}")))
    }

    async fn ask(&mut self, order: &ToChild, timeout: Duration) -> Result<FromChild> {
        self.send(order).await?;
        self.recv(timeout).await
    }

    async fn quit(mut self) {
        let _ = self.send(&ToChild::Quit).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One `brb server` process.
struct ServerProc {
    child: Child,
    listen: SocketAddr,
}

impl ServerProc {
    async fn start(
        exe: &Path,
        listen: &str,
        data_dir: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<ServerProc> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| BenchError::io("opening the server log", e))?;
        let mut cmd = Command::new(exe);
        cmd.args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env_remove("BRB_CONFIG")
            .env_remove("BRB_DATABASE_URL")
            .env_remove("BRB_ADMIN_TOKEN")
            .env("BRB_LOG", "warn")
            // The benchmark toggles as fast as the server commits; the abuse limits (5 changes
            // a second per token by default) would measure themselves instead.
            .env("BRB_CHANGES_PER_SEC", "1000000")
            .env("BRB_CHANGES_BURST", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {} server", exe.display()), e))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(BenchError::Failed("server without stdout".into()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(rest) = l.split("listening on http://").nth(1) {
                    return rest.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = found else {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(BenchError::Failed(format!(
                "brb server did not start; its log:\n{log}"
            )));
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProc {
            child,
            listen: addr,
        })
    }

    fn rss_kib(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    async fn terminate(&mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The control plane: one SQLite server, or replicas on PostgreSQL.
struct Fleet {
    exe: PathBuf,
    servers: Vec<ServerProc>,
    data_dirs: Vec<PathBuf>,
    env: Vec<(String, String)>,
    log: PathBuf,
    urls: Vec<String>,
    admin: Client,
    viewer_token: String,
    store: String,
    _pg: Option<brb_pgtest::PgCluster>,
}

impl Fleet {
    async fn start(exe: &Path, args: &BenchArgs, dir: &Path) -> Result<Fleet> {
        let log = dir.join("server.log");
        let mut env = Vec::new();
        let mut pg = None;
        let admin_token = if args.postgres {
            let cluster = tokio::task::spawn_blocking(|| {
                std::panic::catch_unwind(|| {
                    let c = brb_pgtest::PgCluster::start();
                    let url = c.database("bench");
                    (c, url)
                })
            })
            .await
            .map_err(|e| BenchError::Failed(format!("starting PostgreSQL: {e}")))?
            .map_err(|_| BenchError::Failed("starting PostgreSQL failed (see above)".into()))?;
            env.push(("BRB_DATABASE_URL".to_string(), cluster.1));
            pg = Some(cluster.0);
            let t = format!("bench-admin-{:032x}", rand::random::<u128>());
            env.push(("BRB_ADMIN_TOKEN".to_string(), t.clone()));
            Some(t)
        } else {
            None
        };
        let mut servers = Vec::new();
        let mut data_dirs = Vec::new();
        for i in 0..args.replicas {
            let d = dir.join(format!("data-{i}"));
            servers.push(ServerProc::start(exe, "127.0.0.1:0", &d, &env, &log).await?);
            data_dirs.push(d);
        }
        let admin_token = match admin_token {
            Some(t) => t,
            None => std::fs::read_to_string(data_dirs[0].join("admin-token"))
                .map_err(|e| BenchError::io("reading the admin token", e))?
                .trim()
                .to_string(),
        };
        let urls: Vec<String> = servers
            .iter()
            .map(|s| format!("http://{}", s.listen))
            .collect();
        let admin = Client::new(&urls[..1], Some(admin_token))?;
        // Watchers and readers use a viewer token, as workers should.
        let req: brb_api::CreateTokenRequest =
            serde_json::from_value(serde_json::json!({ "name": "bench-viewer", "role": "viewer" }))
                .map_err(|e| BenchError::Failed(e.to_string()))?;
        let viewer_token = admin.create_token(&req).await?.secret;
        let store = if args.postgres {
            format!("PostgreSQL, {} replica(s)", args.replicas)
        } else {
            "SQLite (WAL, synchronous=FULL)".into()
        };
        Ok(Fleet {
            exe: exe.to_path_buf(),
            servers,
            data_dirs,
            env,
            log,
            urls,
            admin,
            viewer_token,
            store,
            _pg: pg,
        })
    }

    fn rss_kib(&self) -> u64 {
        self.servers.iter().map(ServerProc::rss_kib).sum()
    }

    fn cpu_us(&self) -> u64 {
        self.servers.iter().map(|s| cpu_us(s.child.id())).sum()
    }

    /// `kill -9` of every replica. All at once by default, as a fleet restart or a host
    /// failure does it: a process with 16,000 connections takes a second or more to die, and
    /// killed one after another the watchers of the first moved to the others and were cut
    /// off again.
    async fn kill9(&mut self, one_by_one: bool) {
        if one_by_one {
            for s in &mut self.servers {
                let _ = s.child.kill().await;
            }
            return;
        }
        for s in &mut self.servers {
            let _ = s.child.start_kill();
        }
        for s in &mut self.servers {
            let _ = s.child.wait().await;
        }
    }

    /// Starts every server again on its address (after `kill9` or `terminate`), all at once:
    /// started one after another, the first one up would take every watcher's next attempt.
    /// Returns when each one was listening (`CLOCK_MONOTONIC` ns).
    async fn start_again(&mut self) -> Result<Vec<u64>> {
        let mut starting = Vec::new();
        for (s, d) in self.servers.iter().zip(&self.data_dirs) {
            let (exe, listen, dir) = (self.exe.clone(), s.listen.to_string(), d.clone());
            let (env, log) = (self.env.clone(), self.log.clone());
            starting.push(tokio::spawn(async move {
                let s = ServerProc::start(&exe, &listen, &dir, &env, &log).await;
                s.map(|s| (s, mono_ns()))
            }));
        }
        let mut listening = Vec::new();
        for (i, t) in starting.into_iter().enumerate() {
            let (s, at) = t
                .await
                .map_err(|e| BenchError::Failed(format!("starting a server: {e}")))??;
            self.servers[i] = s;
            listening.push(at);
        }
        Ok(listening)
    }

    /// A clean restart (SIGTERM, then start on the same addresses), or after `kill -9`.
    async fn restart(&mut self, kill: bool) -> Result<()> {
        if kill {
            self.kill9(false).await;
        } else {
            for s in &mut self.servers {
                s.terminate().await;
            }
        }
        self.start_again().await.map(drop)
    }

    async fn stop(&mut self) {
        for s in &mut self.servers {
            s.terminate().await;
        }
    }
}

/// A private `redis-server`: loopback, a temporary directory, no persistence.
struct Redis {
    child: Child,
    addr: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Redis {
    async fn start(bin: &Path, dir: &Path) -> Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BenchError::io("finding a free port", e))?
            .port();
        let rdir = dir.join("redis");
        std::fs::create_dir_all(&rdir).map_err(|e| BenchError::io("creating the redis dir", e))?;
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--maxclients",
                "19000",
                "--tcp-backlog",
                "4096",
                "--loglevel",
                "warning",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no", "--dir"])
            .arg(&rdir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::io(
                    format!(
                        "starting {} (install Debian's redis-server: \
                         scripts/ensure-packages.sh bench; or pass --skip-redis)",
                        bin.display()
                    ),
                    e,
                )
            })?;
        let addr = format!("127.0.0.1:{port}");
        let r = Redis { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = TcpStream::connect(&r.addr).await
                && matches!(
                    command(&mut c, &[b"PING"]).await,
                    Ok(resp::Value::Simple(_))
                )
            {
                return Ok(r);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(
                    "redis-server did not answer PING within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fanout(
        &self,
        exe: &Path,
        n: usize,
        args: &BenchArgs,
        dir: &Path,
        mut payload: Switch,
    ) -> Result<Baseline> {
        const CHANNEL: &str = "brb-bench";
        let counts = split(n, args.per_process);
        let mut children = spawn_children(exe, dir, &counts, &format!("redis-{n}")).await?;
        let orders = counts
            .iter()
            .map(|&count| ToChild::Subscribers {
                addr: self.addr.clone(),
                channel: CHANNEL.into(),
                count,
            })
            .collect();
        let failed = ready(&mut children, orders).await?;
        if failed > 0 {
            return Err(BenchError::Failed(format!(
                "{failed} redis subscribers failed"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut publisher = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| BenchError::io("connecting to redis", e))?;
        let _ = publisher.set_nodelay(true);
        let cpu0 = (cpu_us(self.child.id()), children_cpu_us(&children));
        let mut all = Vec::new();
        let mut missing = 0;
        for k in 0..args.toggles {
            // The same JSON a gate decodes, with a version per message as the key.
            payload.version = 1_000_000 + k as u64;
            payload.state = flip(payload.state);
            let body =
                serde_json::to_vec(&payload).map_err(|e| BenchError::Failed(e.to_string()))?;
            let t0 = mono_ns();
            match command(&mut publisher, &[b"PUBLISH", CHANNEL.as_bytes(), &body]).await? {
                resp::Value::Int(_) => {}
                other => return Err(BenchError::Failed(format!("PUBLISH answered {other:?}"))),
            }
            let (lat, m) = collect(&mut children, payload.version, t0).await?;
            all.extend(lat);
            missing += m;
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
        let deliveries = all.len().max(1) as f64;
        let cpu = Cpu {
            server_us_per_delivery: cpu_us(self.child.id()).saturating_sub(cpu0.0) as f64
                / deliveries,
            watchers_us_per_delivery: children_cpu_us(&children).saturating_sub(cpu0.1) as f64
                / deliveries,
        };
        for c in children {
            c.quit().await;
        }
        let fanout = summarize(&mut all);
        eprintln!(
            "brb bench:   redis fan-out p50 {:.1} p99 {:.1} max {:.1} ms ({missing} missing)",
            fanout.p50_ms, fanout.p99_ms, fanout.max_ms
        );
        Ok(Baseline {
            fanout,
            cpu,
            missing,
        })
    }
}

/// Sends one command and reads one reply.
async fn command(c: &mut TcpStream, args: &[&[u8]]) -> Result<resp::Value> {
    c.write_all(&resp::command(args))
        .await
        .map_err(|e| BenchError::io("writing to redis", e))?;
    let mut buf = Vec::with_capacity(64);
    loop {
        if let Some((v, _)) = resp::parse(&buf).map_err(|e| BenchError::Failed(e.to_string()))? {
            return Ok(v);
        }
        if c.read_buf(&mut buf)
            .await
            .map_err(|e| BenchError::io("reading from redis", e))?
            == 0
        {
            return Err(BenchError::Failed("redis closed the connection".into()));
        }
    }
}

/// CPU time (user + system) a process used so far, in microseconds (`/proc/PID/stat`).
fn cpu_us(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) end with ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000
}

fn children_cpu_us(children: &[ChildProc]) -> u64 {
    children.iter().map(|c| cpu_us(c.child.id())).sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default();
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024;
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_mib,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_processes_under_the_cap_and_even() {
        assert_eq!(split(10_000, 8000), vec![5000, 5000]);
        assert_eq!(split(50, 8000), vec![50]);
        assert_eq!(
            split(50_000, 8000),
            vec![7143, 7143, 7143, 7143, 7143, 7143, 7142]
        );
        assert_eq!(split(8000, 8000), vec![8000]);
        assert_eq!(split(0, 8000), vec![0]);
        assert!(split(123_457, 8000).iter().all(|&c| c <= 8000));
        assert_eq!(split(123_457, 8000).iter().sum::<usize>(), 123_457);
    }

    /// Each watcher process gets a loopback address of its own (a shared one puts every
    /// process's connections in the same ephemeral-port search), never 127.0.0.1 (the servers'
    /// and the one-address method's) nor a network or broadcast-looking .0/.255.
    #[test]
    fn watcher_processes_connect_from_distinct_loopback_addresses() {
        let addrs: Vec<_> = (0..1000).map(source_address).collect();
        let distinct: std::collections::HashSet<_> = addrs.iter().collect();
        assert_eq!(distinct.len(), addrs.len());
        for a in &addrs {
            let std::net::IpAddr::V4(v4) = a else {
                panic!("{a} is not IPv4");
            };
            let o = v4.octets();
            assert!(
                v4.is_loopback() && *v4 != std::net::Ipv4Addr::LOCALHOST,
                "{a}"
            );
            assert!(o[3] != 0 && o[3] != 255, "{a}");
        }
    }
}
