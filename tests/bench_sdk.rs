//! `make bench-sdk`: the SDKs side by side. For each SDK of `sdk/conformance/sdks.json` whose
//! driver has the fleet commands (PROTOCOL.md), one driver process holds N watchers (gates on
//! the primary switch, SSE, no reports) against a fresh release-built `brb server`; the switch
//! is pressed M times, alternately pause and resume, and each press is timed from just before
//! the `PUT` to the instant each gate applied it (the SDK's own record, answered by
//! `fleet_seen` in Unix µs; same machine, same clock). Memory per watcher is the driver's
//! `VmRSS` after the fleet connected minus before it started, over N; and again after the
//! presses, which is what a long-lived fleet carries rather than the connection burst's peak
//! (a garbage-collected runtime's young generation, grown by the burst, shrinks later).
//!
//! ```sh
//! make bench-sdk BENCH_SDK_ARGS="--watchers 1000 --presses 20 --sdks rust,python"
//! ```
//!
//! A benchmark, not a test: it prints figures and judges nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use brb_api::{CreateTokenRequest, Role, SetStateRequest, SwitchState};
use brb_e2e::ServerProc;
use brb_e2e::sdk::{Driver, SdkSpec, load_sdks};
use serde_json::{Value, json};

struct Args {
    watchers: u64,
    presses: u64,
    sdks: Option<Vec<String>>,
    markdown: Option<String>,
    json: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        watchers: 1000,
        presses: 20,
        sdks: None,
        markdown: None,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{k} needs a value"));
        match k.as_str() {
            "--watchers" => a.watchers = val()?.parse().context("--watchers")?,
            "--presses" => a.presses = val()?.parse().context("--presses")?,
            "--sdks" => a.sdks = Some(val()?.split(',').map(str::to_string).collect()),
            "--markdown" => a.markdown = Some(val()?),
            "--json" => a.json = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "bench-sdk [--watchers 1000] [--presses 20] [--sdks rust,python] [--markdown FILE] [--json FILE]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (--help)"),
        }
    }
    if a.presses == 0 || a.watchers == 0 {
        bail!("--watchers and --presses must be at least 1");
    }
    Ok(a)
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Debug)]
enum Outcome {
    Measured {
        p50_ms: f64,
        p99_ms: f64,
        max_ms: f64,
        /// The slowest gate of each press, in order: a slow first press or a periodic stall
        /// shows here.
        press_max_ms: Vec<f64>,
        deliveries: usize,
        missing: u64,
        rss_per_watcher: f64,
        /// The same, after the last press.
        rss_per_watcher_after: f64,
        ready_secs: f64,
    },
    Unsupported(String),
}

async fn bench_one(spec: &SdkSpec, a: &Args) -> Result<Outcome> {
    tokio::task::block_in_place(|| spec.run_setup()).map_err(|e| anyhow!(e))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("brb-bench-sdk-{}-", spec.name))
        .tempdir()?;
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data)?;
    let server = tokio::task::block_in_place(|| ServerProc::start(&data, &[("BRB_LOG", "warn")]));
    let admin = server.client();
    let token = admin
        .create_token(&CreateTokenRequest {
            name: "bench-sdk".into(),
            role: Role::Viewer,
            expires_at: None,
            scope: None,
        })
        .await?
        .secret;
    let mut driver: Driver = spec
        .spawn(&dir.path().join("driver.stderr"), &BTreeMap::new())
        .map_err(|e| anyhow!(e))?;
    let t = Duration::from_secs(30);
    let before = driver.call(json!({"op": "rss"}), t).await;
    let config = json!({
        "urls": [server.url],
        "token": token,
        "switch": "workers",
        "worker_id": format!("bench-{}", spec.name),
        "transport": "sse",
        "reports": false,
    });
    let t0 = Instant::now();
    let id = driver
        .send(json!({"op": "fleet_start", "count": a.watchers, "config": config}))
        .await
        .map_err(|e| anyhow!(e))?;
    let started = driver
        .answer(id, Duration::from_secs(300))
        .await
        .map_err(|e| anyhow!(e))?;
    if started.get("ok") != Some(&Value::Bool(true)) {
        let err = started["error"].as_str().unwrap_or("").to_string();
        let _ = driver.close(Duration::from_secs(10)).await;
        if err.contains("unsupported") {
            return Ok(Outcome::Unsupported(err));
        }
        bail!("fleet_start: {started}");
    }
    let ready = driver
        .call(
            json!({"op": "fleet_ready", "timeout_ms": 120_000}),
            Duration::from_secs(180),
        )
        .await
        .map_err(|e| anyhow!(e))?;
    let ready_secs = t0.elapsed().as_secs_f64();
    if ready["ready"].as_u64() != Some(a.watchers) {
        bail!(
            "only {} of {} watchers connected: {ready}",
            ready["ready"],
            a.watchers
        );
    }
    let per_watcher = |before: &Result<Value, _>, after: &Result<Value, _>| match (before, after) {
        (Ok(b), Ok(af)) => {
            (af["rss_bytes"].as_f64().unwrap_or(0.0) - b["rss_bytes"].as_f64().unwrap_or(0.0))
                / a.watchers as f64
        }
        _ => f64::NAN,
    };
    let after = driver.call(json!({"op": "rss"}), t).await;
    let rss_per_watcher = per_watcher(&before, &after);
    let mut lat_ms = Vec::new();
    let mut press_max_ms = Vec::new();
    let mut missing = 0;
    let mut state = SwitchState::Running;
    for _ in 0..a.presses {
        state = match state {
            SwitchState::Running => SwitchState::Paused,
            SwitchState::Paused => SwitchState::Running,
        };
        let press = unix_us();
        let sw = admin
            .set_state(
                "workers",
                &SetStateRequest {
                    state,
                    reason: Some("bench-sdk".into()),
                    source: None,
                    expected_version: None,
                    ramp: None,
                    guards: Vec::new(),
                },
            )
            .await?;
        let seen = driver
            .call(
                json!({"op": "fleet_seen", "version": sw.version, "timeout_ms": 30_000}),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| anyhow!(e))?;
        missing += seen["missing"].as_u64().unwrap_or(0);
        let mut worst = f64::NAN;
        for us in seen["seen_us"].as_array().into_iter().flatten() {
            if let Some(us) = us.as_i64() {
                let ms = (us - press) as f64 / 1000.0;
                worst = if worst.is_nan() { ms } else { worst.max(ms) };
                lat_ms.push(ms);
            }
        }
        press_max_ms.push((worst * 10.0).round() / 10.0);
    }
    let end = driver.call(json!({"op": "rss"}), t).await;
    let rss_per_watcher_after = per_watcher(&before, &end);
    driver
        .close(Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!(e))?;
    drop(server);
    lat_ms.sort_by(f64::total_cmp);
    Ok(Outcome::Measured {
        p50_ms: percentile(&lat_ms, 50.0),
        p99_ms: percentile(&lat_ms, 99.0),
        max_ms: lat_ms.last().copied().unwrap_or(f64::NAN),
        press_max_ms,
        deliveries: lat_ms.len(),
        missing,
        rss_per_watcher,
        rss_per_watcher_after,
        ready_secs,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = args()?;
    let mut sdks = load_sdks(true).map_err(|e| anyhow!(e))?;
    if let Some(only) = &a.sdks {
        sdks.retain(|s| only.contains(&s.name));
        if sdks.len() != only.len() {
            bail!("--sdks {only:?}: not all of them are in sdks.json");
        }
    }
    let load_before = loadavg();
    println!(
        "bench-sdk: {} watchers per SDK, {} presses; load {load_before}; server {}",
        a.watchers,
        a.presses,
        brb_e2e::brb_bin().display()
    );
    let mut results = Vec::new();
    for spec in &sdks {
        println!("[{}] running...", spec.name);
        let r = bench_one(spec, &a)
            .await
            .with_context(|| format!("SDK {}", spec.name))?;
        println!("[{}] {r:?}", spec.name);
        results.push((spec.name.clone(), r));
    }
    let load_after = loadavg();
    let rust_p99 = results.iter().find_map(|(n, r)| match r {
        Outcome::Measured { p99_ms, .. } if n == "rust" => Some(*p99_ms),
        _ => None,
    });
    let mut md = format!(
        "{} watchers per SDK in one driver process, {} presses (alternately pause and resume), \
         `brb server` on SQLite ({}); load average before {load_before}, after {load_after}.\n\n\
         | SDK | press → paused p50 | p99 | max | deliveries (missing) | p99 vs Rust | memory per watcher (connected → after the presses) | all connected in |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        a.watchers,
        a.presses,
        brb_e2e::brb_bin().display()
    );
    let mut js = Vec::new();
    for (name, r) in &results {
        match r {
            Outcome::Measured {
                p50_ms,
                p99_ms,
                max_ms,
                press_max_ms,
                deliveries,
                missing,
                rss_per_watcher,
                rss_per_watcher_after,
                ready_secs,
            } => {
                let ratio = rust_p99
                    .map(|r| format!("{:.2}×", p99_ms / r))
                    .unwrap_or_else(|| "–".into());
                md.push_str(&format!(
                    "| {name} | {p50_ms:.1} ms | {p99_ms:.1} ms | {max_ms:.1} ms | {deliveries} ({missing}) | {ratio} | {:.1} → {:.1} KiB | {ready_secs:.1} s |\n",
                    rss_per_watcher / 1024.0,
                    rss_per_watcher_after / 1024.0
                ));
                js.push(
                    json!({"sdk": name, "p50_ms": p50_ms, "p99_ms": p99_ms, "max_ms": max_ms,
                    "press_max_ms": press_max_ms, "deliveries": deliveries, "missing": missing,
                    "rss_per_watcher_bytes": rss_per_watcher,
                    "rss_per_watcher_after_bytes": rss_per_watcher_after, "ready_secs": ready_secs}),
                );
            }
            Outcome::Unsupported(e) => {
                md.push_str(&format!(
                    "| {name} | – | – | – | – | – | – | – (driver: {e}) |\n"
                ));
                js.push(json!({"sdk": name, "unsupported": e}));
            }
        }
    }
    println!("\n{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| p.clone())?;
    }
    if let Some(p) = &a.json {
        let doc = json!({"watchers": a.watchers, "presses": a.presses,
            "load_before": load_before, "load_after": load_after, "results": js});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?).with_context(|| p.clone())?;
    }
    Ok(())
}
