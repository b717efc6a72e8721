//! `brb server`: settings from defaults, file, environment and flags; logging; signals.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use brb_server::config::{ClientAuth, Config, LogFormat, TlsConfig};
use clap::Args;

/// `println!` that never panics: the startup lines are for people, and a closed or full stdout
/// (a daemon, a full disk) must not stop the control plane.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:7070, or BRB_LISTEN].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: the platform data dir, or BRB_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The store: a path or `sqlite:PATH` (embedded, one process), or
    /// `postgres://user:password@host:port/db` to share PostgreSQL with other replicas
    /// [default: brb.db in the data dir, or BRB_DATABASE_URL].
    #[arg(long)]
    database_url: Option<String>,
    /// TOML config file.
    #[arg(long, env = "BRB_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: human or json.
    #[arg(long)]
    log_format: Option<String>,
    /// TLS certificate chain, PEM, leaf first (with --tls-key) [or BRB_TLS_CERT]. Re-read on
    /// SIGHUP and when the file changes.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// TLS private key, PEM [or BRB_TLS_KEY].
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// CA bundle for client certificates (mutual TLS) [or BRB_TLS_CLIENT_CA].
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: `required` (default) or `optional`.
    #[arg(long, value_name = "MODE")]
    tls_client_auth: Option<String>,
    /// Also run the demo workload: bursty producers, SDK workers over real HTTP, a simulated
    /// database, publishing jobs_per_second, queue_depth and db_load.
    #[arg(long)]
    demo: bool,
    /// With --demo: jobs arrive at the demo's average rate, without its slow swell and random
    /// bursts, so that runs are reproducible (the end-to-end tests of a release use it).
    #[arg(long, requires = "demo")]
    demo_steady: bool,
}

/// `insecure_http`: the global `--insecure-http` flag (plain HTTP beyond loopback allowed).
pub async fn run(args: ServerArgs, insecure_http: bool) -> Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(u) = args.database_url {
        config.database_url = Some(brb_server::config::Secret(u));
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let prev = config.tls.take();
        config.tls = Some(TlsConfig {
            cert,
            key,
            client_ca: prev.as_ref().and_then(|t| t.client_ca.clone()),
            client_auth: prev.map(|t| t.client_auth).unwrap_or_default(),
        });
    }
    if let Some(ca) = args.tls_client_ca {
        let tls = config
            .tls
            .as_mut()
            .context("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")?;
        tls.client_ca = Some(ca);
    }
    if let Some(mode) = args.tls_client_auth {
        let tls = config
            .tls
            .as_mut()
            .context("--tls-client-auth needs TLS: give --tls-cert and --tls-key too")?;
        tls.client_auth = match mode.as_str() {
            "required" => ClientAuth::Required,
            "optional" => ClientAuth::Optional,
            other => anyhow::bail!("--tls-client-auth {other:?}: expected required or optional"),
        };
    }
    if insecure_http {
        config.insecure_http = true;
    }
    if let Some(f) = args.log_format {
        config.log_format = match f.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => anyhow::bail!("--log-format {other:?}: expected human or json"),
        };
    }
    init_tracing(config.log_format);

    let server = brb_server::Server::start(config.clone())
        .await
        .context("starting the control plane")?;
    let addr = server.local_addr();
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{}://{addr}", server.scheme()));
    // Plain stdout lines (not log records) so `make run` and people see at once where to go.
    say!(
        "Big Red Button control plane listening on {}://{addr}",
        server.scheme()
    );
    say!("  environment: {}", config.environment.name);
    say!("  data dir:    {}", config.data_dir.display());
    match config.database() {
        brb_server::config::DatabaseUrl::Sqlite(p) => {
            say!("  database:    {} (SQLite)", p.display())
        }
        brb_server::config::DatabaseUrl::Postgres(_) => {
            say!(
                "  database:    PostgreSQL (shared; replica {})",
                server.state().replica_id()
            )
        }
    }
    if std::env::var_os("BRB_ADMIN_TOKEN").is_some() {
        say!("  admin token: from BRB_ADMIN_TOKEN");
    } else if config.admin_token_path().exists() {
        say!("  admin token: {}", config.admin_token_path().display());
    }
    say!("  API:         {url}/api/v1   (OpenAPI: {url}/api/v1/openapi.json)");
    // On loopback only, the console link carries the generated admin token in the URL
    // fragment (never sent to the server, removed from the address bar by the page), so a new
    // user lands straight on the button.
    let token_file = config.admin_token_path();
    match std::fs::read_to_string(&token_file) {
        Ok(t) if addr.ip().is_loopback() && std::env::var_os("BRB_ADMIN_TOKEN").is_none() => {
            say!("  web console: {url}/#token={}", t.trim());
        }
        _ => say!("  web console: {url}/"),
    }
    if args.demo && config.tls.is_some() {
        anyhow::bail!("--demo runs its workers over plain loopback HTTP: start it without TLS");
    }
    if args.demo {
        // The demo authenticates like any external worker, with a token that exists only in
        // this process.
        let token = server
            .state()
            .tokens()
            .add_ephemeral("demo", brb_api::Role::Viewer);
        let local = if addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", addr.port())
        } else {
            format!("http://{addr}")
        };
        let mut cfg = brb_demo::DemoConfig::new(&local, &token, &config.primary.name);
        cfg.steady = args.demo_steady;
        say!(
            "  demo:        {} workers on switch {:?}; press the button and watch the graphs",
            cfg.workers,
            cfg.switch
        );
        tokio::spawn(brb_demo::run(cfg, server.state().shutdown_signal()));
    }
    server.serve(shutdown_signal()).await
}

pub(crate) fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BRB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // When the log's disk is full, a failed write must cost a log line, not the request:
        // the internal error report uses eprintln!, which panics on a write error.
        .log_internal_errors(false);
    let res = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
    if let Err(e) = res {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("brb: logging not initialised: {e}\n"),
        );
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
