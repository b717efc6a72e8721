//! `brb`: the control plane (`brb server`) and the command line for people and scripts.
//!
//! Deliberately thin: argument parsing, output formatting and exit codes live here; everything
//! else is `brb-server` and `brb-client`. Tokens are read from `BRB_TOKEN` or a file, never
//! from argv, where any user on the machine could read them in the process list.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

/// `println!` for this binary's output: when whoever reads it went away (`brb status --json |
/// grep -q paused`, `| head`), the command ends quietly with 141 (128 + SIGPIPE, what a shell
/// reports for a tool killed by it) instead of panicking as std's `println!` does. Rust ignores
/// SIGPIPE, and restoring it would let a closed socket kill `brb server`. Defined before the
/// modules so that theirs is this one.
macro_rules! println {
    () => {
        $crate::stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

/// One line to stdout; see `println!` above.
fn stdout_line(line: std::fmt::Arguments) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        panic!("failed printing to stdout: {e}");
    }
}

mod adapter;
mod approval;
mod bench;
mod button;
mod cli;
mod drill;
mod server;

#[derive(Parser)]
#[command(
    name = "brb",
    version,
    about = "Big Red Button: pause every background worker with one press"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the control plane is and who we are.
#[derive(Args, Clone)]
pub struct Conn {
    /// Control-plane URL(s), comma-separated for replicas.
    #[arg(
        long,
        env = "BRB_URL",
        global = true,
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
    /// File holding the API token (default: $BRB_TOKEN, else the local server's admin-token
    /// file when it exists and is readable).
    #[arg(long, env = "BRB_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM bundle of CA certificates to trust besides the system's (a private CA).
    #[arg(long, env = "BRB_CA_FILE", global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a control plane that asks for mutual TLS.
    #[arg(long, env = "BRB_CLIENT_CERT", global = true, value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "BRB_CLIENT_KEY", global = true, value_name = "PEM")]
    pub client_key: Option<PathBuf>,
    /// Allow http:// to a host other than loopback (only behind a TLS-terminating proxy).
    #[arg(long = "insecure-http", env = "BRB_INSECURE_HTTP", global = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_http: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane.
    Server(server::ServerArgs),
    /// Show the switches.
    Status {
        /// Only this switch.
        switch: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pull the brake: pause a switch (default: the primary one).
    Pause(cli::ChangeArgs),
    /// Release the brake: resume a switch (default: the primary one).
    Resume(cli::ChangeArgs),
    /// Fire drill: ask every watcher of a switch to answer, pausing nothing; report who
    /// answered and how fast, who did not (exit 3), who is stale.
    Drill(drill::DrillArgs),
    /// Approve another operator's request to resume (switches that need approval).
    Approve(approval::DecideArgs),
    /// Reject a request to resume: the switch stays paused.
    Reject(approval::DecideArgs),
    /// List the open requests to resume.
    Requests {
        #[arg(long)]
        json: bool,
    },
    /// Hold, continue, extend or abort a gradual release in progress.
    #[command(subcommand)]
    Ramp(cli::RampCmd),
    /// Print one line per change as it happens (Ctrl-C to stop).
    Watch {
        /// Only this switch (default: all).
        switch: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log, newest first.
    Audit {
        #[arg(long)]
        switch: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(cli::TokenCmd),
    /// Manage switches (admin).
    #[command(subcommand)]
    Switch(cli::SwitchCmd),
    /// Run the office button daemon: presses pause, the light shows the fleet's state.
    Button(button::ButtonArgs),
    /// Run a broker adapter: keep a job system's own pause (RQ, BullMQ) equal to a switch,
    /// for workers that run no SDK. Needs a token that reads the switch (a viewer token).
    #[command(subcommand)]
    Adapter(adapter::AdapterCmd),
    /// Measure the control plane: fan-out to N gates, acknowledged toggles, status reads,
    /// memory per watcher, a reconnect storm, and Redis pub/sub as a baseline (release build).
    Bench(brb_bench::BenchArgs),
    /// Watchers or readers for a running `brb bench` (orders on stdin, answers on stdout).
    #[command(hide = true)]
    BenchChild,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Server(args) => server::run(args, cli.conn.insecure_http)
            .await
            .map(|()| ExitCode::SUCCESS),
        Cmd::Status { switch, json } => cli::status(&connect(&cli.conn)?, switch, json).await,
        Cmd::Pause(a) => cli::change(&connect(&cli.conn)?, brb_api::SwitchState::Paused, a).await,
        Cmd::Resume(a) => cli::change(&connect(&cli.conn)?, brb_api::SwitchState::Running, a).await,
        Cmd::Ramp(r) => cli::ramp(&connect(&cli.conn)?, r).await,
        Cmd::Drill(a) => drill::run(&connect(&cli.conn)?, a).await,
        Cmd::Approve(a) => approval::decide(&connect(&cli.conn)?, a, true).await,
        Cmd::Reject(a) => approval::decide(&connect(&cli.conn)?, a, false).await,
        Cmd::Requests { json } => approval::list(&connect(&cli.conn)?, json).await,
        Cmd::Watch { switch, json } => cli::watch(&connect(&cli.conn)?, switch, json).await,
        Cmd::Audit {
            switch,
            limit,
            json,
        } => cli::audit(&connect(&cli.conn)?, switch, limit, json).await,
        Cmd::Token(t) => cli::token(&connect(&cli.conn)?, t).await,
        Cmd::Switch(s) => cli::switch(&connect(&cli.conn)?, s).await,
        Cmd::Button(b) => button::run(connect(&cli.conn)?, b)
            .await
            .map(|()| ExitCode::SUCCESS),
        Cmd::Adapter(a) => adapter::run(connect(&cli.conn)?, a)
            .await
            .map(|()| ExitCode::SUCCESS),
        Cmd::Bench(a) => bench::run(a).await,
        Cmd::BenchChild => bench::child().await,
    }
}

fn connect(conn: &Conn) -> Result<brb_client::Client> {
    let urls: Vec<&str> = conn.url.split(',').map(str::trim).collect();
    let token = token(conn)?;
    let tls = brb_client::TlsOptions {
        ca_file: conn.ca_file.clone(),
        client_cert: conn.client_cert.clone(),
        client_key: conn.client_key.clone(),
        allow_insecure_http: conn.insecure_http,
    };
    brb_client::Client::with_tls(&urls, token, &tls).context("configuring the client")
}

/// `--token-file`, else `BRB_TOKEN`, else the default local admin-token file (so that on the
/// machine running `make run` the CLI just works).
fn token(conn: &Conn) -> Result<Option<String>> {
    if let Some(path) = &conn.token_file {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let t = t.trim().to_string();
        if t.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        return Ok(Some(t));
    }
    if let Ok(t) = std::env::var("BRB_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(Some(t));
        }
    }
    let local = brb_server::config::default_data_dir().join("admin-token");
    Ok(std::fs::read_to_string(local)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}
