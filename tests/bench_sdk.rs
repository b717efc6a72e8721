//! `make bench-sdk`: the SDKs side by side. For each SDK of `sdk/conformance/sdks.json` whose
//! driver has the fleet commands (PROTOCOL.md), one driver process holds N watchers (gates on
//! the primary switch, SSE, no reports) against a fresh release-built `brb server`; the switch
//! is pressed M times, alternately pause and resume, and each press is timed from just before
//! the `PUT` to the instant each gate applied it (the SDK's own record, answered by
//! `fleet_seen` in Unix µs; same machine, same clock). Memory per watcher is the driver's
//! `VmRSS` after the fleet connected minus before it started, over N; and again after the
//! presses. "Before" is taken after one warm-up gate was started, seen open and stopped, so
//! that what every process pays once (the runtime's code pages and first allocations for an
//! HTTP stream) is not spread over the N; the figure from a cold baseline is printed beside it
//! (`cold`), so the fixed part stays visible. The figure after the presses is what a
//! long-lived fleet carries rather than the connection burst's peak (a garbage-collected
//! runtime's young generation, grown by the burst, shrinks later).
//!
//! ```sh
//! make bench-sdk BENCH_SDK_ARGS="--watchers 1000 --presses 20 --sdks rust,python"
//! make bench-sdk BENCH_SDK_ARGS="--rounds 5 --sdks rust,python,node"
//! ```
//!
//! `--rounds N` (default 1) repeats the whole set N times, the SDK order rotated by one each
//! round (round 2 starts with the second SDK, ...), so that no SDK always runs first, or always
//! right after the Rust row, in whatever load the machine has at that minute; each SDK's p99 is
//! compared with the Rust row of the same round, and the summary gives per SDK the median p99,
//! the median of those per-round ratios (with their range) and the median memory figures.
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
    rounds: u64,
    sdks: Option<Vec<String>>,
    markdown: Option<String>,
    json: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        watchers: 1000,
        presses: 20,
        rounds: 1,
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
            "--rounds" => a.rounds = val()?.parse().context("--rounds")?,
            "--sdks" => a.sdks = Some(val()?.split(',').map(str::to_string).collect()),
            "--markdown" => a.markdown = Some(val()?),
            "--json" => a.json = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "bench-sdk [--watchers 1000] [--presses 20] [--rounds 1] [--sdks rust,python] [--markdown FILE] [--json FILE]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (--help)"),
        }
    }
    if a.presses == 0 || a.watchers == 0 || a.rounds == 0 {
        bail!("--watchers, --presses and --rounds must be at least 1");
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
        /// After the fleet connected, from the baseline before the warm-up gate.
        rss_per_watcher_cold: f64,
        ready_secs: f64,
    },
    Unsupported(String),
}

/// The middle value (the mean of the two middle ones for an even count); NaN when empty.
fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The SDKs in the order round `round` (from 0) runs them: rotated left by `round`.
fn rotated<T: Clone>(list: &[T], round: usize) -> Vec<T> {
    if list.is_empty() {
        return Vec::new();
    }
    let k = round % list.len();
    list[k..].iter().chain(&list[..k]).cloned().collect()
}

/// One SDK's figures over the rounds: p99s, the per-round ratios to the Rust row of the same
/// round, and the memory figures.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    p99_ms: Vec<f64>,
    ratios: Vec<f64>,
    rss_connected: Vec<f64>,
    rss_after: Vec<f64>,
    rss_cold: Vec<f64>,
    deliveries: usize,
    missing: u64,
    unsupported: Option<String>,
}

/// Per SDK (in `names` order), what the rounds measured.
fn summarize(names: &[String], rounds: &[Vec<(String, Outcome)>]) -> Vec<(String, Summary)> {
    names
        .iter()
        .map(|name| {
            let mut s = Summary::default();
            for round in rounds {
                let rust = round.iter().find_map(|(n, r)| match r {
                    Outcome::Measured { p99_ms, .. } if n == "rust" => Some(*p99_ms),
                    _ => None,
                });
                for (n, r) in round.iter().filter(|(n, _)| n == name) {
                    match r {
                        Outcome::Measured {
                            p99_ms,
                            deliveries,
                            missing,
                            rss_per_watcher,
                            rss_per_watcher_after,
                            rss_per_watcher_cold,
                            ..
                        } => {
                            s.p99_ms.push(*p99_ms);
                            if let Some(r) = rust {
                                s.ratios.push(p99_ms / r);
                            }
                            s.rss_connected.push(*rss_per_watcher);
                            s.rss_after.push(*rss_per_watcher_after);
                            s.rss_cold.push(*rss_per_watcher_cold);
                            s.deliveries += deliveries;
                            s.missing += missing;
                        }
                        Outcome::Unsupported(e) => s.unsupported = Some(format!("{n}: {e}")),
                    }
                }
            }
            (name.clone(), s)
        })
        .collect()
}

fn fmt_range(v: &[f64], f: impl Fn(f64) -> String) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "–".into()
    } else {
        format!("{}–{}", f(lo), f(hi))
    }
}

async fn bench_one(spec: &SdkSpec, a: &Args) -> Result<Outcome> {
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
    let cold = driver.call(json!({"op": "rss"}), t).await;
    let config = json!({
        "urls": [server.url],
        "token": token,
        "switch": "workers",
        "worker_id": format!("bench-{}", spec.name),
        "transport": "sse",
        "reports": false,
    });
    warm_up(&mut driver, &config, t).await?;
    let before = driver.call(json!({"op": "rss"}), t).await;
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
    let rss_per_watcher_cold = per_watcher(&cold, &after);
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
        rss_per_watcher_cold,
        ready_secs,
    })
}

/// One gate started, seen open and stopped, so that the baseline already holds what the
/// process pays once for its first stream.
async fn warm_up(driver: &mut Driver, config: &Value, t: Duration) -> Result<()> {
    for cmd in [
        json!({"op": "start", "gate": "warm-up", "config": config}),
        json!({"op": "wait_open", "gate": "warm-up", "timeout_ms": 20_000}),
        json!({"op": "stop", "gate": "warm-up"}),
    ] {
        let answer = driver.call(cmd.clone(), t).await.map_err(|e| anyhow!(e))?;
        if answer.get("ok") != Some(&Value::Bool(true)) {
            bail!("warm-up {cmd}: {answer}");
        }
    }
    Ok(())
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
    // Each SDK's setup (builds) once, before any round: not in the middle of the measurements.
    for spec in &sdks {
        tokio::task::block_in_place(|| spec.run_setup())
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("SDK {}: setup", spec.name))?;
    }
    let mut rounds: Vec<Vec<(String, Outcome)>> = Vec::new();
    let mut round_loads = Vec::new();
    for round in 0..a.rounds as usize {
        let order = rotated(&sdks, round);
        let load = loadavg();
        if a.rounds > 1 {
            let names: Vec<&str> = order.iter().map(|s| s.name.as_str()).collect();
            println!(
                "round {}/{}: {}; load {load}",
                round + 1,
                a.rounds,
                names.join(", ")
            );
        }
        let mut results = Vec::new();
        for spec in &order {
            println!("[{}] running...", spec.name);
            let r = bench_one(spec, &a)
                .await
                .with_context(|| format!("SDK {}", spec.name))?;
            println!("[{}] {r:?}", spec.name);
            results.push((spec.name.clone(), r));
        }
        round_loads.push((load, loadavg()));
        rounds.push(results);
    }
    let load_after = loadavg();
    let mut md = format!(
        "{} watchers per SDK in one driver process, {} presses (alternately pause and resume), \
         `brb server` on SQLite ({}); load average before {load_before}, after {load_after}.\n\n",
        a.watchers,
        a.presses,
        brb_e2e::brb_bin().display()
    );
    let mut js_rounds = Vec::new();
    for (i, results) in rounds.iter().enumerate() {
        if a.rounds > 1 {
            let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
            md.push_str(&format!(
                "Round {} of {} ({}; load {} → {}):\n\n",
                i + 1,
                a.rounds,
                names.join(", "),
                round_loads[i].0,
                round_loads[i].1
            ));
        }
        let (table, js) = round_table(results);
        md.push_str(&table);
        md.push('\n');
        js_rounds.push(js);
    }
    let names: Vec<String> = sdks.iter().map(|s| s.name.clone()).collect();
    let summary = summarize(&names, &rounds);
    let mut js_summary = Vec::new();
    if a.rounds > 1 {
        md.push_str(&format!(
            "Over the {} rounds (each ratio is to the Rust row of the same round; memory per watcher, median and range):\n\n\
             | SDK | median p99 | median of p99 / Rust's | ratio range | memory connected | memory after the presses | memory connected, cold baseline | deliveries (missing) |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            a.rounds
        ));
        let kib = |b: f64| format!("{:.1}", b / 1024.0);
        for (name, s) in &summary {
            if let Some(e) = &s.unsupported {
                md.push_str(&format!(
                    "| {name} | – | – | – | – | – | – | – (driver: {e}) |\n"
                ));
                js_summary.push(json!({"sdk": name, "unsupported": e}));
                continue;
            }
            let ratio = median(&s.ratios);
            md.push_str(&format!(
                "| {name} | {:.1} ms | {} | {} | {} KiB ({}) | {} KiB ({}) | {} KiB ({}) | {} ({}) |\n",
                median(&s.p99_ms),
                if ratio.is_nan() {
                    "–".into()
                } else {
                    format!("{ratio:.2}×")
                },
                fmt_range(&s.ratios, |r| format!("{r:.2}×")),
                kib(median(&s.rss_connected)),
                fmt_range(&s.rss_connected, kib),
                kib(median(&s.rss_after)),
                fmt_range(&s.rss_after, kib),
                kib(median(&s.rss_cold)),
                fmt_range(&s.rss_cold, kib),
                s.deliveries,
                s.missing
            ));
            js_summary.push(json!({"sdk": name, "median_p99_ms": median(&s.p99_ms),
                "p99_ms": s.p99_ms, "median_ratio_to_rust": ratio, "ratios_to_rust": s.ratios,
                "median_rss_per_watcher_bytes": median(&s.rss_connected),
                "median_rss_per_watcher_after_bytes": median(&s.rss_after),
                "rss_per_watcher_bytes": s.rss_connected,
                "rss_per_watcher_after_bytes": s.rss_after,
                "median_rss_per_watcher_cold_bytes": median(&s.rss_cold),
                "rss_per_watcher_cold_bytes": s.rss_cold,
                "deliveries": s.deliveries, "missing": s.missing}));
        }
    }
    println!("\n{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| p.clone())?;
    }
    if let Some(p) = &a.json {
        // `results` is the first round's, as before `--rounds`.
        let doc = json!({"watchers": a.watchers, "presses": a.presses, "rounds": a.rounds,
            "load_before": load_before, "load_after": load_after,
            "results": js_rounds.first().cloned().unwrap_or_default(),
            "per_round": js_rounds, "summary": js_summary});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?).with_context(|| p.clone())?;
    }
    Ok(())
}

/// One round's table (markdown) and its rows (JSON), each ratio to the round's Rust row.
fn round_table(results: &[(String, Outcome)]) -> (String, Vec<Value>) {
    let rust_p99 = results.iter().find_map(|(n, r)| match r {
        Outcome::Measured { p99_ms, .. } if n == "rust" => Some(*p99_ms),
        _ => None,
    });
    let mut md = String::from(
        "| SDK | press → paused p50 | p99 | max | deliveries (missing) | p99 vs Rust | memory per watcher (connected → after the presses; cold) | all connected in |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut js = Vec::new();
    for (name, r) in results {
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
                rss_per_watcher_cold,
                ready_secs,
            } => {
                let ratio = rust_p99
                    .map(|r| format!("{:.2}×", p99_ms / r))
                    .unwrap_or_else(|| "–".into());
                md.push_str(&format!(
                    "| {name} | {p50_ms:.1} ms | {p99_ms:.1} ms | {max_ms:.1} ms | {deliveries} ({missing}) | {ratio} | {:.1} → {:.1} KiB; {:.1} | {ready_secs:.1} s |\n",
                    rss_per_watcher / 1024.0,
                    rss_per_watcher_after / 1024.0,
                    rss_per_watcher_cold / 1024.0
                ));
                js.push(
                    json!({"sdk": name, "p50_ms": p50_ms, "p99_ms": p99_ms, "max_ms": max_ms,
                    "press_max_ms": press_max_ms, "deliveries": deliveries, "missing": missing,
                    "rss_per_watcher_bytes": rss_per_watcher,
                    "rss_per_watcher_after_bytes": rss_per_watcher_after,
                    "rss_per_watcher_cold_bytes": rss_per_watcher_cold, "ready_secs": ready_secs}),
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
    (md, js)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(p99_ms: f64, rss: f64) -> Outcome {
        Outcome::Measured {
            p50_ms: p99_ms / 2.0,
            p99_ms,
            max_ms: p99_ms,
            press_max_ms: Vec::new(),
            deliveries: 10,
            missing: 0,
            rss_per_watcher: rss,
            rss_per_watcher_after: rss * 2.0,
            rss_per_watcher_cold: rss * 3.0,
            ready_secs: 0.1,
        }
    }

    #[test]
    fn each_round_starts_with_the_next_sdk() {
        let sdks = ["rust", "python", "node"];
        let orders: Vec<Vec<&str>> = (0..4).map(|r| rotated(&sdks, r)).collect();
        assert_eq!(
            orders,
            [
                vec!["rust", "python", "node"],
                vec!["python", "node", "rust"],
                vec!["node", "rust", "python"],
                vec!["rust", "python", "node"],
            ]
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn each_ratio_is_to_the_rust_row_of_its_own_round() {
        // Round 1: a quiet minute (Rust 10 ms); round 2: a loaded one (Rust 40 ms), Python
        // measured after it. Ratios per round: 2.0 and 1.0 (not 60 / 10 or 20 / 40).
        let rounds = vec![
            vec![
                ("rust".to_string(), measured(10.0, 100.0)),
                ("python".to_string(), measured(20.0, 30.0)),
            ],
            vec![
                ("python".to_string(), measured(40.0, 32.0)),
                ("rust".to_string(), measured(40.0, 101.0)),
            ],
            vec![
                ("rust".to_string(), measured(20.0, 102.0)),
                ("python".to_string(), measured(30.0, 31.0)),
            ],
        ];
        let names = vec!["rust".to_string(), "python".to_string()];
        let s = summarize(&names, &rounds);
        let py = &s[1].1;
        assert_eq!(s[1].0, "python");
        assert_eq!(py.ratios, vec![2.0, 1.0, 1.5]);
        assert_eq!(median(&py.ratios), 1.5);
        assert_eq!(median(&py.p99_ms), 30.0);
        assert_eq!(median(&py.rss_connected), 31.0);
        assert_eq!(median(&py.rss_after), 62.0);
        assert_eq!(median(&py.rss_cold), 93.0);
        assert_eq!((py.deliveries, py.missing), (30, 0));
        assert_eq!(s[0].1.ratios, vec![1.0, 1.0, 1.0]);
    }
}
