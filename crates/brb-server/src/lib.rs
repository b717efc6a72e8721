//! The Big Red Button control plane.
//!
//! It owns every switch's state and is shaped around one promise: a change the caller was told
//! about is committed, audited and on its way to every watcher. So the write path is short and
//! strictly ordered (auth → one store transaction → publish to the hub → answer), and
//! everything else (reads, event streams, long-polls) is served from the hub's in-memory image
//! without touching the database.
//!
//! Several replicas may share one PostgreSQL store: then each replica's hub also receives the
//! changes committed through the others (`propagate.rs`), always in the store's commit order,
//! and serves them the same way.
//!
//! [`app`] builds the router from an [`AppState`] and is tested in process; [`Server`] binds a
//! real listener and runs it (`brb server` is a thin wrapper over it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use brb_api::{ErrorCode, Role, Source};
use brb_store::{Actor, DatabaseUrl, FeedEvent, Store};
use tokio::sync::watch;

mod approval;
pub mod auth;
mod commit;
pub mod config;
mod drill;
pub mod error;
mod fanout;
mod guard;
pub mod guard_core;
pub mod hub;
pub mod incident;
mod limits;
pub mod metrics;
mod net;
mod notify;
pub mod ofrep;
pub mod openapi;
mod prom;
mod propagate;
mod routes;
pub mod series;
pub mod slack;
mod sse;
pub mod subscription;
pub mod templates;
pub mod tls;
pub mod workers;

pub use auth::Caller;
pub use config::Config;
pub use error::{ApiError, ApiResult};
pub use notify::webhook_signature as notify_signature;

use auth::TokenBook;
use hub::Hub;
use metrics::Metrics;

/// Shared by every request handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The only way to write the store (`commit.rs`).
    writer: commit::Writer,
    reads: commit::Reads,
    bookkeeping: commit::Bookkeeping,
    hub: Arc<Hub>,
    tokens: TokenBook,
    metrics: Arc<Metrics>,
    workers: workers::Workers,
    series: series::SeriesStore,
    /// Wakes the notification loop after a commit.
    notify_wakeup: tokio::sync::Notify,
    config: Config,
    shutdown: watch::Sender<bool>,
    /// The same as a plain flag: every event stream checks it on every wake-up, and the watch
    /// channel's read lock, shared by ten thousand streams, is a contended cache line.
    shutting_down: std::sync::atomic::AtomicBool,
    /// The fan-out writer threads for plain-TCP switch streams, started with the first stream.
    fanout: std::sync::OnceLock<Option<fanout::Fanout>>,
    /// The store's change feed when several replicas share it (PostgreSQL); taken by the
    /// propagation task. `None` for SQLite, where this process makes every change.
    feed: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<FeedEvent>>>,
    /// Whether other processes write to the store too.
    shared: bool,
    /// Asks the propagation task to catch up (a local publish could not read back).
    resync: tokio::sync::Notify,
    /// This process among the replicas (for the shared worker picture).
    replica_id: String,
    limits: limits::Limiter,
    guard_statuses: guard::GuardStatuses,
}

impl AppState {
    /// Loads switches and tokens from the store into memory. `env_admin_token` is the value of
    /// `BRB_ADMIN_TOKEN`, if set.
    pub async fn new(
        store: Arc<dyn Store>,
        config: Config,
        env_admin_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        // Subscribe before loading, and read the audit position before the switches: a change
        // committed meanwhile by another replica is then both in the image and replayed by
        // the first catch-up (the hub drops the duplicate), never in neither.
        let feed = store.feed();
        let shared = feed.is_some();
        let (writer, reads, bookkeeping) = commit::Writer::new(store);
        writer.seed(&config).await?;
        let last_audit_id = reads
            .last_audit_id()
            .await
            .context("reading the audit log")?;
        let hub = Hub::new();
        hub.load(
            reads.list_switches().await.context("reading switches")?,
            last_audit_id,
        );
        let tokens = TokenBook::new(env_admin_token);
        tokens.load(&reads.list_tokens().await.context("reading tokens")?);
        let config_abuse = config.abuse.clone();
        Ok(AppState {
            inner: Arc::new(Inner {
                writer,
                reads,
                bookkeeping,
                hub: Arc::new(hub),
                tokens,
                metrics: Arc::new(Metrics::default()),
                workers: workers::Workers::new(
                    std::time::Duration::from_secs(config.limits.worker_stale_secs),
                    std::time::Duration::from_secs(config.limits.worker_forget_secs),
                ),
                series: series::SeriesStore::new(config.limits.max_series),
                notify_wakeup: tokio::sync::Notify::new(),
                config,
                shutdown: watch::channel(false).0,
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                fanout: std::sync::OnceLock::new(),
                feed: std::sync::Mutex::new(feed),
                shared,
                resync: tokio::sync::Notify::new(),
                replica_id: format!("{:016x}", rand::random::<u64>()),
                limits: limits::Limiter::new(&config_abuse),
                guard_statuses: guard::GuardStatuses::default(),
            }),
        })
    }

    /// The store, read-only: writes go through [`AppState::commit`] (`commit.rs`).
    pub fn reads(&self) -> &commit::Reads {
        &self.inner.reads
    }

    pub(crate) fn bookkeeping(&self) -> &commit::Bookkeeping {
        &self.inner.bookkeeping
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn limits(&self) -> &limits::Limiter {
        &self.inner.limits
    }

    /// Writes the token uses noted since the last call (last-used time and address).
    pub async fn flush_token_uses(&self) {
        let uses = self.tokens().take_uses();
        if let Err(e) = self.bookkeeping().touch_tokens(uses).await {
            tracing::warn!(error = %e, "cannot record token last-use times");
        }
    }

    pub fn tokens(&self) -> &TokenBook {
        &self.inner.tokens
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn workers(&self) -> &workers::Workers {
        &self.inner.workers
    }

    pub fn series(&self) -> &series::SeriesStore {
        &self.inner.series
    }

    /// The live state of each guarded release, as this replica's evaluator last saw it.
    pub(crate) fn guard_statuses(&self) -> &guard::GuardStatuses {
        &self.inner.guard_statuses
    }

    pub fn notify_wakeup(&self) -> &tokio::sync::Notify {
        &self.inner.notify_wakeup
    }

    /// Whether other replicas share the store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Starts the periodic work: worker-count events (at most ten a second per switch), the
    /// stale-worker sweep and the once-a-second `samples` event. Ends at shutdown.
    /// Wakes every event stream when the token table changes (here or on another replica) and
    /// when a token expires or a rotation grace ends, so each stream re-checks its lease.
    pub fn spawn_token_watch(&self) {
        let state = self.clone();
        tokio::spawn(async move {
            let mut changes = state.tokens().changes();
            let mut shutdown = state.shutdown_signal();
            loop {
                let next = state.tokens().next_deadline(chrono::Utc::now());
                let sleep = async {
                    match next {
                        Some(t) => {
                            let left = (t - chrono::Utc::now()).to_std().unwrap_or_default();
                            // A hair late, so the deadline has passed when streams look.
                            tokio::time::sleep(left + std::time::Duration::from_millis(5)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = sleep => {}
                    _ = shutdown.changed() => return,
                }
                state.hub().wake_all();
            }
        });
    }

    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut shutdown = state.shutdown_signal();
            let mut fast = tokio::time::interval(std::time::Duration::from_millis(100));
            fast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_tick_sec = chrono::Utc::now().timestamp();
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = fast.tick() => {}
                }
                let now = chrono::Utc::now();
                if now.timestamp() != last_tick_sec {
                    last_tick_sec = now.timestamp();
                    if last_tick_sec % 5 == 0 {
                        // Off the hot path: a write at most every 5 s, whatever the traffic.
                        let s = state.clone();
                        tokio::spawn(async move { s.flush_token_uses().await });
                    }
                    state.workers().sweep(now);
                    state.record_fleet_series(last_tick_sec);
                    state.publish_samples(last_tick_sec - 1);
                }
                state.publish_worker_counts();
            }
        })
    }

    fn publish_worker_counts(&self) {
        for name in self.workers().take_dirty() {
            let Some(sw) = self.hub().get(&name) else {
                continue;
            };
            let counts = self.workers().counts(&sw, false);
            match serde_json::to_string(&counts) {
                Ok(json) => self
                    .hub()
                    .publish_ephemeral(brb_api::events::WORKERS, &json),
                Err(e) => tracing::error!(error = %e, "encoding worker counts"),
            }
        }
    }

    /// The fleet as series: in-flight jobs and paused workers per switch, from the reports.
    fn record_fleet_series(&self, sec: i64) {
        let mut rows = Vec::new();
        for sw in self.hub().list() {
            let c = self.workers().counts(&sw, true);
            if c.total == 0 {
                continue;
            }
            let labels: std::collections::BTreeMap<String, String> =
                [("switch".to_string(), sw.name.clone())].into();
            let in_flight: u32 = c
                .workers
                .iter()
                .filter(|w| !w.stale)
                .map(|w| w.in_flight)
                .sum();
            for (name, v) in [
                ("fleet_in_flight", f64::from(in_flight)),
                ("fleet_paused", f64::from(c.paused)),
                ("fleet_running", f64::from(c.running)),
            ] {
                rows.push((
                    name.to_string(),
                    labels.clone(),
                    brb_api::SampleKind::Gauge,
                    sec,
                    v,
                ));
            }
        }
        if !rows.is_empty()
            && let Err(e) = self.series().record_all(rows)
        {
            tracing::warn!(error = %e, "recording fleet series");
        }
    }

    fn publish_samples(&self, sec: i64) {
        let values = self.series().tick(sec);
        if values.is_empty() {
            return;
        }
        let tick = brb_api::SampleTick { ts: sec, values };
        match serde_json::to_string(&tick) {
            Ok(json) => self
                .hub()
                .publish_ephemeral(brb_api::events::SAMPLES, &json),
            Err(e) => tracing::error!(error = %e, "encoding samples"),
        }
    }

    /// Becomes `true` when the server starts shutting down: streams end, long-polls answer.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub fn begin_shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.shutdown.send_replace(true);
        // Event streams check `is_shutting_down` whenever they wake; this wakes them all.
        self.hub().wake_all();
    }

    /// The fan-out writer threads (`fanout.rs`), started on first use; `None` if they could not
    /// be started (streams then keep a task each, as over TLS).
    pub(crate) fn fanout(&self) -> Option<&fanout::Fanout> {
        self.inner
            .fanout
            .get_or_init(|| match fanout::Fanout::start(&self.inner.hub) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the fan-out writer threads");
                    None
                }
            })
            .as_ref()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Builds the actor for a change made by `caller`.
pub fn actor(caller: &Caller, source: Option<Source>) -> Actor {
    Actor {
        name: caller.name.clone(),
        source: source.unwrap_or(Source::Api),
        remote_addr: caller.origin(),
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> axum::Router {
    routes::router(state.clone())
        .layer(axum::middleware::from_fn_with_state(state, track))
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
}

/// Marks an answer `connection: close` when its request's body was not read to the end (a
/// 401 before the body was looked at, a 413 for a body too large). Hyper will not read a body
/// nobody wanted, so it closes the connection after such an answer; without saying so, a
/// client that reuses the connection writes its next request into a closed socket (a broken
/// pipe, and a lost request, on the client's side).
async fn close_if_body_unread(req: Request, next: Next) -> Response {
    use axum::http::header;
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|b| {
        axum::body::Body::new(ReadToEnd {
            inner: b,
            read: Arc::clone(&read),
        })
    });
    let mut res = next.run(req).await;
    if !read.load(std::sync::atomic::Ordering::Acquire) {
        res.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// A request body that notes when it was read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl axum::body::HttpBody for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = r {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    axum::response::IntoResponse::into_response(ApiError::new(
        ErrorCode::Internal,
        "internal error",
    ))
}

/// Times every request for the latency histogram. The labels are the route's template, not
/// the path, and the metrics reduce the method to a fixed set: see `metrics.rs`.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let res = next.run(req).await;
    state.metrics().observe_request(
        method.as_str(),
        route.as_ref().map(MatchedPath::as_str),
        res.status().as_u16(),
        start.elapsed(),
    );
    res
}

/// A bound, ready-to-run control plane.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    addr: SocketAddr,
    tls: Option<Arc<tls::Tls>>,
}

impl Server {
    /// Opens the data dir and the database (`config.database_url`: the embedded SQLite file
    /// by default, or PostgreSQL shared with other replicas), seeds the primary switch, makes
    /// sure an admin token exists, and binds the listener (port 0 picks a free port).
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let url = config.database();
        let store = brb_store::open(&url).await.with_context(|| match &url {
            DatabaseUrl::Sqlite(p) => format!("opening the database {}", p.display()),
            DatabaseUrl::Postgres(_) => "connecting to PostgreSQL (BRB_DATABASE_URL)".to_string(),
        })?;
        Self::start_with_store(store, config).await
    }

    pub async fn start_with_store(store: Arc<dyn Store>, config: Config) -> anyhow::Result<Server> {
        config.check_listen()?;
        let tls = match config.tls.clone() {
            Some(t) => Some(tls::Tls::load(t).context("loading the TLS certificate")?),
            None => None,
        };
        if tls.is_none() && !config.listen.ip().is_loopback() {
            // check_listen passed, so --insecure-http was given: say it loudly, every start.
            tracing::warn!(listen = %config.listen,
                "INSECURE: serving plain HTTP beyond loopback (--insecure-http). Tokens and \
                 presses cross the network in clear text unless a TLS-terminating proxy on a \
                 trusted hop sits in front. Configure [tls] to fix this.");
        }
        let env_admin = std::env::var("BRB_ADMIN_TOKEN").ok();
        let state = AppState::new(store, config.clone(), env_admin.as_deref()).await?;
        bootstrap_admin_token(&state).await?;
        let listener =
            bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        state.spawn_background();
        state.spawn_token_watch();
        propagate::spawn(&state);
        tokio::spawn(notify::run(state.clone()));
        tokio::spawn(notify::reminders(state.clone()));
        tokio::spawn(guard::run(state.clone()));
        tokio::spawn(approval::sweep(state.clone()));
        if let Some(p) = config.prometheus.clone() {
            tracing::info!(url = %p.url, queries = p.queries.len(), "pulling Prometheus queries");
            tokio::spawn(prom::run(state.clone(), p));
        }
        if let Some(t) = &tls {
            t.spawn_watcher();
        }
        Ok(Server {
            listener,
            state,
            addr,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// `https` when TLS is configured.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` completes, then stops accepting, ends event streams, lets
    /// in-flight requests (and so in-flight writes) finish, and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let router = app(self.state);
        let abuse = &state.config().abuse;
        let settings = net::ConnSettings {
            header_read_timeout: Duration::from_secs(abuse.header_read_timeout_secs),
            max_header_bytes: abuse.max_header_bytes,
            max_connections: net::connection_cap(abuse.max_connections, net::open_files_limit()),
        };
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: closing event streams, finishing writes");
            state.begin_shutdown();
        };
        net::serve(self.listener, router, self.tls, settings, signal).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// A listener with a deep accept backlog: after a restart thousands of workers reconnect at
/// once, and tokio's default of 1024 drops SYNs and turns a half-second storm into many
/// seconds.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(16_384)
}

/// When no token exists and `BRB_ADMIN_TOKEN` is unset, mints an admin token and writes it to
/// `DATA_DIR/admin-token` (mode 0600), so a fresh install is usable and the secret never
/// appears in a log.
async fn bootstrap_admin_token(state: &AppState) -> anyhow::Result<()> {
    let path = state.config().admin_token_path();
    if state.tokens().has_env_admin() {
        tracing::info!("admin token taken from BRB_ADMIN_TOKEN");
        return Ok(());
    }
    let tokens = state.reads().list_tokens().await?;
    if tokens.iter().any(|t| t.revoked_at.is_none()) {
        if path.exists() {
            tracing::info!(path = %path.display(), "admin token file");
        }
        return Ok(());
    }
    let new = auth::mint("admin", Role::Admin);
    write_secret_file(&path, &new.secret)
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    let create = commit::CreateToken {
        record: new.record.clone(),
        actor: Actor::system(),
    };
    match state.commit(create).await {
        Ok(_) => {}
        // Replicas starting together on an empty database: another one minted it first.
        Err(e) if e.code == ErrorCode::AlreadyExists => {
            let _ = std::fs::remove_file(&path);
            tracing::info!("another replica created the admin token; use its token file");
            return Ok(());
        }
        Err(e) => return Err(anyhow::anyhow!(e.message)).context("storing the admin token"),
    }
    tracing::info!(path = %path.display(), "created an admin token; it is in this file");
    Ok(())
}

fn write_secret_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
