//! What a run measured, the targets judged against it, and the text, JSON and
//! Markdown renderings (the Markdown goes into BENCHMARKS.md as is).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{Spread, Summary};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub started_at: String,
    pub command: String,
    /// `release` or `debug`: figures from a debug build mean little.
    pub build: String,
    pub machine: Machine,
    /// `/proc/loadavg` before and after: other work on the machine shows here.
    pub load_before: String,
    pub load_after: String,
    pub store: String,
    pub replicas: usize,
    pub toggles: usize,
    pub open_files_limit: u64,
    pub ack: Option<Summary>,
    pub reads: Option<Reads>,
    pub runs: Vec<Run>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reads {
    pub conns: usize,
    pub secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub per_sec: f64,
}

/// One watcher count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub watchers: usize,
    pub processes: usize,
    /// Gates that never learned the state (should be 0).
    pub failed: usize,
    pub memory: Memory,
    /// Every (toggle, watcher) delivery: POST sent → gate saw the new state.
    pub fanout: Summary,
    pub cpu: Cpu,
    pub per_toggle_p99_ms: Vec<f64>,
    /// Deliveries that did not arrive within the timeout (should be 0).
    pub missing: usize,
    pub storm: Option<Storm>,
    pub redis: Option<Baseline>,
    /// Our fan-out p99 over Redis's.
    pub ratio_p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub per_watcher_kib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Storm {
    pub reconnected: usize,
    pub missing: usize,
    /// Of the missing: gates still on a stream opened before the kill (never noticed it).
    pub stale: usize,
    /// From starting the new server process to the last gate connected.
    pub all_back_ms: f64,
    /// From the new server listening to the last gate connected.
    pub after_listening_ms: f64,
    /// From the kill to the last gate connected.
    pub since_kill_ms: f64,
    pub spread: Spread,
    /// Where the time went (absent in reports from before it was measured).
    #[serde(default)]
    pub diag: Option<StormDiag>,
}

/// What a storm looked like from the servers, the kernel and the gates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormDiag {
    /// Each replica's restart: from starting the processes to it listening.
    pub listening_ms: Vec<f64>,
    /// Reconnects by time after the last replica listened, 250 ms buckets.
    pub reconnects_250ms: Vec<u64>,
    /// Open files per replica at the end, at most during the storm, and once a second.
    pub fds_end: Vec<u64>,
    pub fds_max: Vec<u64>,
    pub fds_series_1s: Vec<Vec<u64>>,
    /// System-wide TCP counters, increase over the storm.
    pub netstat: Vec<(String, i64)>,
    /// `accept failed` lines in the server log (out of file descriptors, mostly).
    pub accept_failed: u64,
    /// CPU (user + system) of the new server processes, from their start to the last reconnect.
    pub server_cpu_ms: f64,
    pub attempts: crate::proto::AttemptStats,
}

impl StormDiag {
    /// Human-readable lines (stderr and the Markdown notes).
    pub fn lines(&self) -> Vec<String> {
        let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        let a = &self.attempts;
        let mut bounds = crate::proto::TOOK_BOUNDS_MS
            .iter()
            .map(|b| format!("<{b}"))
            .collect::<Vec<_>>();
        bounds.push("more".into());
        let took = bounds
            .iter()
            .zip(&a.failed_by_took)
            .map(|(b, n)| format!("{b} ms: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let per_gate = a
            .per_gate
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            format!(
                "storm: replicas listening after {} ms; server CPU {:.0} ms",
                self.listening_ms
                    .iter()
                    .map(|m| format!("{m:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                self.server_cpu_ms
            ),
            format!(
                "storm: reconnects per 250 ms after listening: {}",
                join(&self.reconnects_250ms)
            ),
            format!(
                "storm: open files per replica at the end {} (at most {}); accept failures {}",
                join(&self.fds_end),
                join(&self.fds_max),
                self.accept_failed
            ),
            format!(
                "storm: open files each second: {}",
                self.fds_series_1s
                    .iter()
                    .map(|s| format!("[{}]", join(s)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            format!(
                "storm: TCP counters: {}",
                self.netstat
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("storm: failed stream attempts by duration: {took}"),
            format!(
                "storm: failed attempts per 250 ms after the kill: {}",
                join(&a.failed_at)
            ),
            format!("storm: gates by attempts since the kill: {per_gate}"),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub fanout: Summary,
    pub cpu: Cpu,
    pub missing: usize,
}

/// CPU time spent per delivery during the toggles (user + system, from `/proc/PID/stat`):
/// unlike latency, it hardly depends on what else the machine is doing, so it is the figure
/// to compare before and after a change on a busy machine. The server's share includes the
/// kernel's loopback delivery, which runs in the sender's context.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cpu {
    pub server_us_per_delivery: f64,
    pub watchers_us_per_delivery: f64,
}

/// One target of the issue, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub value: String,
    pub met: bool,
}

impl Report {
    /// The targets that this run measured.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let mut t = |what: &str, target: &str, value: String, met: bool| {
            out.push(Target {
                what: what.into(),
                target: target.into(),
                value,
                met,
            })
        };
        let shared = self.replicas > 1;
        for r in &self.runs {
            if r.watchers == 10_000 && !shared {
                t(
                    "fan-out p99, 10,000 watchers",
                    "≤ 100 ms",
                    format!("{:.1} ms", r.fanout.p99_ms),
                    r.fanout.p99_ms <= 100.0 && r.missing == 0,
                );
                if let Some(ratio) = r.ratio_p99 {
                    t(
                        "fan-out p99 / Redis p99, 10,000",
                        "≤ 1.0",
                        format!("{ratio:.2}"),
                        ratio <= 1.0,
                    );
                }
                if let Some(s) = &r.storm {
                    t(
                        "all 10,000 reconnected after a restart",
                        "≤ 2 s",
                        format!("{:.0} ms", s.all_back_ms),
                        s.all_back_ms <= 2000.0 && s.missing == 0,
                    );
                }
            }
            if r.watchers >= 50_000 && shared {
                t(
                    "fan-out p99, 50,000 over replicas",
                    "≤ 600 ms",
                    format!("{:.1} ms", r.fanout.p99_ms),
                    r.fanout.p99_ms <= 600.0 && r.missing == 0,
                );
            }
        }
        if let Some(a) = &self.ack
            && !self.store.starts_with("PostgreSQL")
        {
            t(
                "acknowledged toggle p50 (SQLite, synchronous=FULL)",
                "≤ 2 ms",
                format!("{:.2} ms", a.p50_ms),
                a.p50_ms <= 2.0,
            );
        }
        if let Some(r) = &self.reads {
            t(
                "authenticated status reads",
                "≥ 50,000/s",
                format!("{:.0}/s", r.per_sec),
                r.per_sec >= 50_000.0,
            );
        }
        if let Some(r) = self.runs.iter().max_by_key(|r| r.watchers) {
            t(
                &format!("server memory per idle watcher ({})", r.watchers),
                "≤ 12 KiB",
                format!("{:.1} KiB", r.memory.per_watcher_kib),
                r.memory.per_watcher_kib <= 12.0,
            );
        }
        out
    }

    /// Rows of the results table: (measure, ours, baseline).
    fn rows(&self) -> Vec<[String; 4]> {
        let mut rows = Vec::new();
        let f = |s: &Summary| {
            format!(
                "p50 {:.1} · p99 {:.1} · max {:.1} ms",
                s.p50_ms, s.p99_ms, s.max_ms
            )
        };
        if let Some(a) = &self.ack {
            rows.push([
                "acknowledged toggle (no watchers)".into(),
                format!("p50 {:.2} · p99 {:.2} ms", a.p50_ms, a.p99_ms),
                String::new(),
                format!("{} toggles", a.count),
            ]);
        }
        if let Some(r) = &self.reads {
            rows.push([
                format!("status reads, {} connections", r.conns),
                format!("{:.0}/s", r.per_sec),
                String::new(),
                format!("{} errors in {:.1} s", r.errors, r.secs),
            ]);
        }
        for r in &self.runs {
            let n = r.watchers;
            rows.push([
                format!("fan-out, {n} watchers"),
                f(&r.fanout),
                r.redis.as_ref().map(|b| f(&b.fanout)).unwrap_or_default(),
                match r.ratio_p99 {
                    Some(x) => format!("p99 ratio {x:.2}; {} missing", r.missing),
                    None => format!("{} missing", r.missing),
                },
            ]);
            rows.push([
                format!("CPU per delivery, {n}"),
                format!(
                    "server {:.1} µs · watchers {:.1} µs",
                    r.cpu.server_us_per_delivery, r.cpu.watchers_us_per_delivery
                ),
                r.redis
                    .as_ref()
                    .map(|b| {
                        format!(
                            "server {:.1} µs · watchers {:.1} µs",
                            b.cpu.server_us_per_delivery, b.cpu.watchers_us_per_delivery
                        )
                    })
                    .unwrap_or_default(),
                "user + system, /proc/PID/stat".into(),
            ]);
            rows.push([
                format!("memory per idle watcher, {n}"),
                format!("{:.1} KiB", r.memory.per_watcher_kib),
                String::new(),
                format!(
                    "RSS {} → {} KiB",
                    r.memory.rss_before_kib, r.memory.rss_after_kib
                ),
            ]);
            if let Some(s) = &r.storm {
                rows.push([
                    format!("reconnect storm, {n}"),
                    format!("all back in {:.0} ms", s.all_back_ms),
                    String::new(),
                    format!(
                        "spread {:.0} ms, max {}/10 ms, {:.0} ms after listening, {} missing",
                        s.spread.spread_ms, s.spread.max_per_10ms, s.after_listening_ms, s.missing
                    ),
                ]);
            }
        }
        rows
    }

    /// The plain-text table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "brb bench · {} build · {} · {} · load {} → {}",
            self.build, self.store, self.machine.cpu, self.load_before, self.load_after
        );
        let rows = self.rows();
        let head = ["measure", "brb", "redis pub/sub", "notes"];
        let mut w = head.map(|h| h.chars().count());
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |out: &mut String, cells: [&str; 4]| {
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                let _ = write!(out, "{c}{}  ", " ".repeat(pad));
            }
            let _ = writeln!(out);
        };
        line(&mut out, head);
        for r in &rows {
            line(&mut out, [&r[0], &r[1], &r[2], &r[3]]);
        }
        let _ = writeln!(out, "\ntargets:");
        for t in self.targets() {
            let _ = writeln!(
                out,
                "  [{}] {}: {} (target {})",
                if t.met { "met" } else { "MISSED" },
                t.what,
                t.value,
                t.target
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// The same as Markdown, for BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} · `{}` · {} build · {} · {} ({} cores, {} MiB) · load {} → {}\n",
            self.started_at,
            self.command,
            self.build,
            self.store,
            self.machine.cpu,
            self.machine.cores,
            self.machine.memory_mib,
            self.load_before,
            self.load_after
        );
        let _ = writeln!(out, "| measure | brb | Redis pub/sub | notes |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for r in self.rows() {
            let _ = writeln!(out, "| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
        }
        let _ = writeln!(out, "\n| target | wanted | measured | |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for t in self.targets() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.value,
                if t.met { "met" } else { "**missed**" }
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
        }
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        for r in &self.runs {
            if let Some(d) = r.storm.as_ref().and_then(|s| s.diag.as_ref()) {
                let _ = writeln!(out, "\nReconnect storm, {} watchers:\n", r.watchers);
                for l in d.lines() {
                    let _ = writeln!(out, "- {l}");
                }
            }
        }
        out
    }
}
