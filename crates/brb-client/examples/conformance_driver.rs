//! The Rust SDK's conformance driver (`sdk/conformance/PROTOCOL.md`).
//!
//! Reads one JSON command per line on stdin, answers one JSON line per command on stdout, and
//! drives [`brb_client::Gate`] through its public API only, as a worker would. Logs go to
//! stderr (`BRB_LOG` filters them, default `warn`).
//!
//! ```sh
//! cargo build -p brb-client --example conformance_driver
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use brb_client::{FailurePolicy, Gate, GateConfig, Permit, TlsOptions, Transport};
use serde_json::{Value, json};
use std::io::{BufRead, Write};

/// Pairs a monotonic instant with the wall clock once, to express the SDK's `Instant`s (its
/// connect log, `last_change`) as Unix time.
#[derive(Clone, Copy)]
struct Anchor {
    instant: Instant,
    unix_us: i64,
}

impl Anchor {
    fn now() -> Anchor {
        let instant = Instant::now();
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Anchor { instant, unix_us }
    }

    fn unix_us(&self, t: Instant) -> i64 {
        if t >= self.instant {
            self.unix_us + (t - self.instant).as_micros() as i64
        } else {
            self.unix_us - (self.instant - t).as_micros() as i64
        }
    }
}

fn unix_ms_now() -> i64 {
    Anchor::now().unix_us / 1000
}

fn ms_field(c: &Value, key: &str) -> Option<Duration> {
    c.get(key)
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
}

fn str_field(c: &Value, key: &str) -> Option<String> {
    c.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Protocol config → `GateConfig`; a missing field keeps the SDK's default.
fn gate_config(c: &Value, worker_id: Option<String>) -> Result<GateConfig> {
    let urls: Vec<String> = c
        .get("urls")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("config.urls: a list of URLs is required"))?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let switch = str_field(c, "switch").ok_or_else(|| anyhow!("config.switch is required"))?;
    // The Rust SDK takes the token as a value; where it comes from is the application's
    // business, so do what an application would: the file, or the environment.
    let token = match (str_field(c, "token"), str_field(c, "token_file")) {
        (Some(t), _) => Some(t),
        (None, Some(path)) => Some(read_token(&path)?),
        (None, None) => match (
            std::env::var("BRB_TOKEN").ok(),
            std::env::var("BRB_TOKEN_FILE").ok(),
        ) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(read_token(&path)?),
            (None, None) => None,
        },
    };
    let mut cfg = GateConfig::new(&urls, token, &switch);
    if let Some(id) = worker_id.or_else(|| str_field(c, "worker_id")) {
        cfg.worker_id = id;
    }
    if let Some(p) = str_field(c, "policy") {
        cfg.policy = match p.as_str() {
            "keep_last_known" => FailurePolicy::KeepLastKnown,
            "open" => FailurePolicy::Open,
            "closed" => FailurePolicy::Closed,
            other => bail!("unknown policy {other:?}"),
        };
    }
    if let Some(t) = str_field(c, "transport") {
        cfg.transport = match t.as_str() {
            "auto" => Transport::Auto,
            "sse" => Transport::Sse,
            "long_poll" => Transport::LongPoll,
            other => bail!("unknown transport {other:?}"),
        };
    }
    if let Some(d) = ms_field(c, "grace_ms") {
        cfg.grace = d;
    }
    if let Some(d) = ms_field(c, "report_interval_ms") {
        cfg.report_interval = d;
    }
    if let Some(d) = ms_field(c, "backoff_base_ms") {
        cfg.backoff_base = d;
    }
    if let Some(d) = ms_field(c, "backoff_cap_ms") {
        cfg.backoff_cap = d;
    }
    if let Some(d) = ms_field(c, "idle_timeout_ms") {
        cfg.idle_timeout = d;
    }
    if let Some(n) = c.get("max_concurrency").and_then(Value::as_u64) {
        cfg.max_concurrency = n as usize;
    }
    if let Some(r) = c.get("reports").and_then(Value::as_bool) {
        // `reports: false` is the benchmark's pure fan-out: no samples either (as `brb bench`).
        cfg.reports = r;
        cfg.send_samples = r;
    }
    cfg.tls = TlsOptions {
        ca_file: str_field(c, "ca_file").map(PathBuf::from),
        client_cert: str_field(c, "client_cert").map(PathBuf::from),
        client_key: str_field(c, "client_key").map(PathBuf::from),
        allow_insecure_http: false,
    };
    Ok(cfg)
}

fn read_token(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("token file {path}"))?
        .trim()
        .to_string())
}

#[derive(Default)]
struct Driver {
    gates: HashMap<String, (Gate, usize)>,
    jobs: HashMap<String, Permit>,
    fleet: Vec<Gate>,
}

impl Driver {
    fn gate(&self, cmd: &Value) -> Result<&(Gate, usize)> {
        let name = cmd.get("gate").and_then(Value::as_str).unwrap_or("");
        self.gates
            .get(name)
            .ok_or_else(|| anyhow!("no gate {name:?}"))
    }

    async fn handle(&mut self, cmd: &Value) -> Result<Value> {
        let op = cmd.get("op").and_then(Value::as_str).unwrap_or("");
        match op {
            "start" => {
                let name = str_field(cmd, "gate").ok_or_else(|| anyhow!("gate is required"))?;
                if self.gates.contains_key(&name) {
                    bail!("gate {name:?} exists");
                }
                let cfg = gate_config(cmd.get("config").unwrap_or(&Value::Null), None)?;
                let slots = cfg.max_concurrency;
                let gate = Gate::start(cfg)?;
                self.gates.insert(name, (gate, slots));
                Ok(json!({}))
            }
            "state" => {
                let (g, _) = self.gate(cmd)?;
                let anchor = Anchor::now();
                Ok(json!({
                    "open": g.is_open(),
                    "version": g.version(),
                    "connected": g.is_connected(),
                    "staleness_ms": g.staleness().map(|d| d.as_millis() as u64),
                    "status": g.status().as_str(),
                    "in_flight": g.in_flight(),
                    "processed": g.processed(),
                    "admitted_fraction": g.admitted_fraction(),
                    "connects": g.connects(),
                    "connect_times": g.connect_times().into_iter()
                        .map(|t| anchor.unix_us(t) / 1000).collect::<Vec<_>>(),
                }))
            }
            "wait_open" => {
                let (g, _) = self.gate(cmd)?;
                let timeout = ms_field(cmd, "timeout_ms").unwrap_or(Duration::from_secs(5));
                let t = Instant::now();
                let opened = tokio::time::timeout(timeout, g.wait_open()).await.is_ok();
                Ok(json!({"opened": opened, "waited_ms": t.elapsed().as_millis() as u64}))
            }
            "work" => {
                let (g, slots) = self.gate(cmd)?;
                let for_ = ms_field(cmd, "for_ms").ok_or_else(|| anyhow!("for_ms is required"))?;
                let job = ms_field(cmd, "job_ms").unwrap_or(Duration::from_millis(20));
                let deadline = tokio::time::Instant::now() + for_;
                let mut tasks = Vec::new();
                for _ in 0..*slots {
                    let g = g.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut done = Vec::new();
                        // `timeout_at` polls the future first: check the deadline itself, or
                        // a gate that admits at once would keep this loop going forever.
                        while tokio::time::Instant::now() < deadline {
                            let Ok(permit) = tokio::time::timeout_at(deadline, g.acquire()).await
                            else {
                                return done;
                            };
                            let start = unix_ms_now();
                            tokio::time::sleep(job).await;
                            let end = unix_ms_now();
                            drop(permit);
                            done.push([start, end]);
                        }
                        done
                    }));
                }
                let mut jobs = Vec::new();
                for t in tasks {
                    jobs.extend(t.await?);
                }
                jobs.sort();
                Ok(json!({"jobs": jobs}))
            }
            "begin_job" => {
                let (g, _) = self.gate(cmd)?;
                let job = str_field(cmd, "job").ok_or_else(|| anyhow!("job is required"))?;
                let permit = g.try_acquire();
                let admitted = permit.is_some();
                if let Some(p) = permit {
                    self.jobs.insert(job, p);
                }
                Ok(json!({"admitted": admitted}))
            }
            "end_job" => {
                let job = str_field(cmd, "job").unwrap_or_default();
                let permit = self
                    .jobs
                    .remove(&job)
                    .ok_or_else(|| anyhow!("no job {job:?}"))?;
                drop(permit);
                Ok(json!({}))
            }
            "stop" => {
                let name = str_field(cmd, "gate").unwrap_or_default();
                // Dropping the last clone stops the gate's tasks (and its streams).
                self.gates
                    .remove(&name)
                    .ok_or_else(|| anyhow!("no gate {name:?}"))?;
                Ok(json!({}))
            }
            "fleet_start" => {
                let count = cmd.get("count").and_then(Value::as_u64).unwrap_or(0);
                let c = cmd.get("config").unwrap_or(&Value::Null);
                let prefix = str_field(c, "worker_id").unwrap_or_else(|| "fleet".into());
                for n in 0..count {
                    let cfg = gate_config(c, Some(format!("{prefix}-{n}")))?;
                    self.fleet.push(Gate::start(cfg)?);
                }
                Ok(json!({}))
            }
            "fleet_ready" => {
                let timeout = ms_field(cmd, "timeout_ms").unwrap_or(Duration::from_secs(30));
                let deadline = tokio::time::Instant::now() + timeout;
                let mut ready = 0;
                for g in &self.fleet {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if g.ready(left).await {
                        ready += 1;
                    }
                }
                Ok(json!({"ready": ready}))
            }
            "fleet_seen" => {
                let version = cmd.get("version").and_then(Value::as_u64).unwrap_or(0);
                let timeout = ms_field(cmd, "timeout_ms").unwrap_or(Duration::from_secs(5));
                let deadline = Instant::now() + timeout;
                // Waiting only: each time comes from the SDK (`last_change`), recorded when it
                // applied the change.
                while Instant::now() < deadline && self.fleet.iter().any(|g| g.version() < version)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let anchor = Anchor::now();
                let seen: Vec<i64> = self
                    .fleet
                    .iter()
                    .filter_map(|g| g.last_change())
                    .filter(|(v, _)| *v >= version)
                    .map(|(_, t)| anchor.unix_us(t))
                    .collect();
                Ok(json!({"seen_us": seen, "missing": self.fleet.len() - seen.len()}))
            }
            "rss" => {
                let status = std::fs::read_to_string("/proc/self/status")?;
                let kb = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))?;
                Ok(json!({"rss_bytes": kb * 1024}))
            }
            other => bail!("unsupported: op {other:?}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut driver = Driver::default();
    // Commands come from a plain thread (the runtime's stdin support is not enabled in this
    // workspace, and a blocking read is all a line protocol needs).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(cmd) => {
                let id = cmd.get("id").cloned().unwrap_or(Value::Null);
                match driver.handle(&cmd).await {
                    Ok(Value::Object(mut fields)) => {
                        fields.insert("id".into(), id);
                        fields.insert("ok".into(), Value::Bool(true));
                        Value::Object(fields)
                    }
                    Ok(_) => json!({"id": id, "ok": true}),
                    Err(e) => json!({"id": id, "ok": false, "error": format!("{e:#}")}),
                }
            }
            Err(e) => json!({"id": null, "ok": false, "error": format!("not JSON: {e}")}),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}").context("writing stdout")?;
        out.flush().context("writing stdout")?;
    }
    // Stop every gate (their tasks end when the last clone drops).
    let Driver { gates, jobs, fleet } = driver;
    drop(jobs);
    drop(gates);
    drop(fleet);
    Ok(())
}
