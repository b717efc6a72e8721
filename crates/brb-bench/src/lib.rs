//! `brb bench`: how fast a press reaches every worker, measured against a real control plane.
//!
//! The coordinator ([`run`]) starts `brb server` from the same executable as a child process
//! (SQLite in a temporary data dir, or several replicas on a private PostgreSQL cluster), and
//! puts the watchers in other child processes (`brb bench-child`, [`child_main`]): this
//! machine allows 20,000 open files per process, so no single process can hold both ends of
//! ten thousand connections. Each watcher is a real SDK [`brb_client::Gate`] with its own
//! HTTP connection. The coordinator and its children talk in JSON lines over stdin/stdout and
//! time across processes with `CLOCK_MONOTONIC` ([`clock`]).
//!
//! The same run measures the baseline teams otherwise build by hand: the same number of
//! subscribers on Redis pub/sub (`redis-server` started on a loopback port, no persistence),
//! the same number of publishes, the same JSON payload decoded by each subscriber.
//!
//! This crate never links the server: it drives the `brb` binary, so it measures exactly what
//! ships.

pub mod child;
pub mod clock;
pub mod http;
pub mod proto;
pub mod report;
mod run;
pub mod soak;
pub mod stats;

use std::path::PathBuf;

pub use child::child_main;
pub use run::run;
pub use run::soak::soak;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] brb_client::ClientError),
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// `brb bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Watcher counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub watchers: Vec<usize>,
    /// Toggles per watcher count (fan-out samples = watchers × toggles).
    #[arg(long, default_value_t = 20)]
    pub toggles: usize,
    /// Sequential toggles with no watchers, for the acknowledged-toggle latency.
    #[arg(long, default_value_t = 200)]
    pub ack_toggles: usize,
    /// Client connections for the status-read throughput (0 skips it).
    #[arg(long, default_value_t = 64)]
    pub read_conns: usize,
    /// How long the status reads run, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub read_secs: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the results table as Markdown to this file (for BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Run the control plane on a private PostgreSQL cluster (needs Debian's postgresql).
    #[arg(long)]
    pub postgres: bool,
    /// Control-plane replicas (more than one needs --postgres); watchers spread over them.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Skip the Redis pub/sub baseline.
    #[arg(long)]
    pub skip_redis: bool,
    /// Skip the reconnect storm (kill -9 and restart of the control plane).
    #[arg(long)]
    pub skip_storm: bool,
    /// All watcher processes connect from 127.0.0.1. By default each one connects from its
    /// own loopback address (127.0.0.2, 127.0.0.3, ...), as workers on as many hosts would:
    /// from one address, 50,000 connections to three ports leave the kernel searching the
    /// ephemeral ports at every `connect` (BENCHMARKS.md, issue #18).
    #[arg(long)]
    pub one_source_address: bool,
    /// In the reconnect storm, kill the replicas one after another (waiting for each to
    /// die) instead of all at once.
    #[arg(long)]
    pub kill_one_by_one: bool,
    /// At most this many watchers per child process (the open-files limit is per process).
    #[arg(long, default_value_t = 8000)]
    pub per_process: usize,
    /// Pause between toggles, in milliseconds (lets the previous one settle everywhere).
    #[arg(long, default_value_t = 200)]
    pub pause_ms: u64,
    /// Soak instead: random toggles, reads and `--soak-watchers` reporting gates against one
    /// server for this many minutes; memory, files, threads and tasks must stay flat.
    #[arg(long)]
    pub soak_mins: Option<f64>,
    /// Seconds between the soak's samples.
    #[arg(long, default_value_t = 60)]
    pub soak_sample_secs: u64,
    /// SDK gates in the soak (reports and samples on: two connections each).
    #[arg(long, default_value_t = 2000)]
    pub soak_watchers: usize,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
}
