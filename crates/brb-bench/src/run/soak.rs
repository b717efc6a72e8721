//! `brb bench --soak-mins N`: one SQLite server, `--soak-watchers` SDK gates that report and
//! send samples, random toggles (half of them conditional) every 0.5–5 s and status reads,
//! for N minutes; the server's RSS, open files, threads and live tasks and the watcher
//! process's RSS sampled every `--soak-sample-secs`; slopes and the log judged at the end
//! (`crate::soak`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;
use crate::soak::{Allowlist, SoakReport, SoakSample, judge};

/// The allowlist shipped with the binary (`crates/brb-bench/soak-log-allow.txt`).
const ALLOWLIST: &str = include_str!("../../soak-log-allow.txt");

#[derive(Default)]
struct Counts {
    toggles: AtomicU64,
    toggle_errors: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
}

pub async fn soak(args: BenchArgs) -> Result<SoakReport> {
    let minutes = args.soak_mins.unwrap_or(60.0);
    if minutes.is_nan() || minutes <= 0.0 || args.soak_sample_secs == 0 {
        return Err(BenchError::Failed(
            "--soak-mins and --soak-sample-secs must be above 0".into(),
        ));
    }
    let allow = Allowlist::parse(ALLOWLIST).map_err(|e| BenchError::Failed(e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("finding our executable", e))?;
    raise_nofile();
    let tmp = tempfile::Builder::new()
        .prefix("brb-soak-")
        .tempdir()
        .map_err(|e| BenchError::io("creating a temporary directory", e))?;
    let load_before = loadavg();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let one = BenchArgs {
        postgres: false,
        replicas: 1,
        ..args.clone()
    };
    let mut fleet = Fleet::start(&exe, &one, tmp.path()).await?;
    eprintln!(
        "brb bench: soak for {minutes} min against {} with {} gates",
        fleet.urls[0], args.soak_watchers
    );
    let mut children = spawn_children(&exe, tmp.path(), &[args.soak_watchers], "soak").await?;
    let failed = ready(
        &mut children,
        vec![ToChild::Gates {
            urls: fleet.urls.clone(),
            token: fleet.viewer_token.clone(),
            switch: PRIMARY_SWITCH.into(),
            count: args.soak_watchers,
            reports: true,
            local_address: None,
        }],
    )
    .await?;
    if failed > 0 {
        return Err(BenchError::Failed(format!(
            "{failed} gates never learned the state"
        )));
    }

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = tokio::spawn(toggles(
        fleet.admin.clone(),
        Arc::clone(&counts),
        Arc::clone(&stop),
    ));
    let reader = tokio::spawn(reads(
        Client::new(&fleet.urls, Some(fleet.viewer_token.clone()))?,
        Arc::clone(&counts),
        Arc::clone(&stop),
    ));

    let server_pid = fleet.servers[0].child.id().unwrap_or(0);
    let watcher_pid = children[0].child.id().unwrap_or(0);
    let metrics_url = format!("{}/metrics", fleet.urls[0]);
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(minutes * 60.0);
    let every = Duration::from_secs(args.soak_sample_secs);
    let mut samples = Vec::new();
    let mut next = t0;
    loop {
        let alive_tasks = alive_tasks(&http, &metrics_url).await;
        let s = SoakSample {
            t_min: t0.elapsed().as_secs_f64() / 60.0,
            rss_kib: status_field(server_pid, "VmRSS:"),
            fds: open_fds(server_pid),
            threads: status_field(server_pid, "Threads:"),
            alive_tasks,
            watcher_rss_kib: status_field(watcher_pid, "VmRSS:"),
            toggles: counts.toggles.load(Ordering::Relaxed),
            reads: counts.reads.load(Ordering::Relaxed),
        };
        eprintln!(
            "brb bench:   soak {:5.1} min: RSS {} KiB, {} files, {} threads, {} tasks, watchers {} KiB, {} toggles",
            s.t_min, s.rss_kib, s.fds, s.threads, s.alive_tasks, s.watcher_rss_kib, s.toggles
        );
        samples.push(s);
        next += every;
        if next > end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = toggler.await;
    let _ = reader.await;

    // Every gate must end on the final state: a leak that drops streams shows here too.
    let last = fleet.admin.switch(PRIMARY_SWITCH).await?;
    let gates_behind = match ask_all(
        &mut children,
        vec![ToChild::Collect {
            key: last.version,
            timeout_ms: 10_000,
        }],
        Duration::from_secs(30),
    )
    .await?
    .pop()
    {
        Some(FromChild::Seen { missing, .. }) => missing,
        Some(other) => return Err(unexpected(&other)),
        None => 0,
    };
    for c in children {
        c.quit().await;
    }
    fleet.stop().await;

    let warmup_min = (minutes / 6.0).min(10.0);
    let judged: Vec<&SoakSample> = samples.iter().filter(|s| s.t_min >= warmup_min).collect();
    let t: Vec<f64> = judged.iter().map(|s| s.t_min).collect();
    let series = |f: fn(&SoakSample) -> u64| judged.iter().map(|s| f(s) as f64).collect::<Vec<_>>();
    // RSS: 2 % of its mean or 4 MiB per hour; counts: 1 % or 16 per hour.
    let slopes = vec![
        judge("server RSS (KiB)", &t, &series(|s| s.rss_kib), 0.02, 4096.0),
        judge("server open files", &t, &series(|s| s.fds), 0.01, 16.0),
        judge("server threads", &t, &series(|s| s.threads), 0.01, 16.0),
        judge(
            "server live tasks",
            &t,
            &series(|s| s.alive_tasks),
            0.01,
            16.0,
        ),
        judge(
            "watcher process RSS (KiB)",
            &t,
            &series(|s| s.watcher_rss_kib),
            0.02,
            4096.0,
        ),
    ];
    let log = std::fs::read_to_string(&fleet.log).unwrap_or_default();
    let (explained, unexplained) = allow.check(&log);
    let unexplained: Vec<String> = unexplained.into_iter().map(str::to_string).collect();
    let passed = slopes.iter().all(|s| s.passed)
        && unexplained.is_empty()
        && gates_behind == 0
        && counts.toggle_errors.load(Ordering::Relaxed) == 0
        && judged.len() >= 2;
    Ok(SoakReport {
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        load_before,
        load_after: loadavg(),
        minutes,
        watchers: args.soak_watchers,
        warmup_min,
        samples,
        slopes,
        toggles: counts.toggles.load(Ordering::Relaxed),
        toggle_errors: counts.toggle_errors.load(Ordering::Relaxed),
        reads: counts.reads.load(Ordering::Relaxed),
        read_errors: counts.read_errors.load(Ordering::Relaxed),
        gates_behind,
        explained,
        unexplained,
        passed,
    })
}

/// A toggle every 0.5–5 s: half conditional on the version just read, half plain.
async fn toggles(admin: Client, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let wait = Duration::from_millis(500 + rand::random::<u64>() % 4500);
        tokio::time::sleep(wait).await;
        let res = async {
            let cur = admin.switch(PRIMARY_SWITCH).await?;
            let mut body = serde_json::json!({
                "state": flip(cur.state),
                "reason": "soak",
            });
            if rand::random::<bool>() {
                body["expected_version"] = cur.version.into();
            }
            let req: brb_api::SetStateRequest =
                serde_json::from_value(body).map_err(|e| BenchError::Failed(e.to_string()))?;
            admin.set_state(PRIMARY_SWITCH, &req).await?;
            Ok::<_, BenchError>(())
        }
        .await;
        match res {
            Ok(()) => counts.toggles.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("brb bench:   soak toggle failed: {e}");
                counts.toggle_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Status reads, ten a second.
async fn reads(viewer: Client, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match viewer.switch(PRIMARY_SWITCH).await {
            Ok(_) => counts.reads.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.read_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A numeric field of `/proc/PID/status` (`VmRSS:` in KiB, `Threads:`), 0 when unreadable.
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `brb_runtime_alive_tasks` from the server's metrics page (0 when unreadable).
async fn alive_tasks(http: &reqwest::Client, url: &str) -> u64 {
    let Ok(r) = http.get(url).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("brb_runtime_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
