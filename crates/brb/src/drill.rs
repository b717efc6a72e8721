//! `brb drill`: a fire drill on a quiet day. Asks every watcher of a switch to answer (a new
//! version with nothing changed), waits until all live workers did or the timeout passes, and
//! prints who answered, how fast, who did not (with their last report) and who is stale.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use brb_api::{DrillReport, DrillRequest, Source};
use brb_client::Client;
use chrono::Utc;
use clap::Args;

use crate::cli::{explain, primary};

#[derive(Args)]
pub struct DrillArgs {
    /// The switch (default: the primary one, the Big Red Button).
    switch: Option<String>,
    /// How long to wait for every live worker to answer: 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_secs)]
    timeout: u64,
    /// Why: recorded in the audit log.
    #[arg(long, short)]
    reason: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Exit status when some live worker did not answer in time.
const NOT_EVERYONE: u8 = 3;

pub async fn run(client: &Client, a: DrillArgs) -> Result<ExitCode> {
    let name = match a.switch {
        Some(n) => n,
        None => primary(client).await?,
    };
    let started = client
        .drill(
            &name,
            &DrillRequest {
                reason: a.reason,
                source: Some(Source::Cli),
            },
        )
        .await
        .map_err(explain)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout);
    let report = loop {
        let r = client
            .drill_report(&name, started.version)
            .await
            .map_err(explain)?;
        if (r.complete && !r.answered.is_empty()) || tokio::time::Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_EVERYONE)
    })
}

fn print(r: &DrillReport) {
    let live = r.answered.len() + r.missing.len();
    let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    println!(
        "drill of {} (v{}): {}/{live} live workers answered · p50 {} · p99 {} · max {}; nothing paused",
        r.switch,
        r.version,
        r.answered.len(),
        ms(r.p50_ms),
        ms(r.p99_ms),
        ms(r.max_ms)
    );
    let now = Utc::now();
    for w in &r.missing {
        println!(
            "  NO ANSWER  {} (last report {}s ago: {} at v{}{})",
            w.worker_id,
            (now - w.last_seen).num_seconds().max(0),
            w.status.as_str(),
            w.observed_version,
            w.error
                .as_deref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        );
    }
    for w in &r.stale {
        println!(
            "  STALE      {} (silent for {}s)",
            w.worker_id,
            (now - w.last_seen).num_seconds().max(0)
        );
    }
    if r.unacknowledged.readers > 0 {
        println!(
            "  {} OpenFeature readers cannot answer drills (they send no reports)",
            r.unacknowledged.readers
        );
    }
}
