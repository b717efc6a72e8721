//! Helpers for end-to-end tests: the real `brb` binary as a child process, on a loopback port,
//! with a temporary data dir.
//!
//! The binary is `target/debug/brb` (built by `make test` before the tests run), or `$BRB_BIN`.

pub mod calls;
pub mod disk;
pub mod netns;
pub mod proxy;
pub mod sdk;

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

/// Path of the `brb` binary under test.
pub fn brb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BRB_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("brb");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p brb` first (make test does)",
        bin.display()
    );
    bin
}

/// A `brb server` child process.
pub struct ServerProc {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
}

impl ServerProc {
    /// Starts `brb server` on an ephemeral port and waits until it prints where it listens.
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> ServerProc {
        Self::start_at(data_dir, "127.0.0.1:0", extra_env)
    }

    /// Starts `brb server` listening on `listen` (e.g. the port of a server that was killed).
    pub fn start_at(data_dir: &Path, listen: &str, extra_env: &[(&str, &str)]) -> ServerProc {
        Self::start_wrapped(&[], data_dir, listen, extra_env)
    }

    /// As [`ServerProc::start_at`], with a command prefix that execs the server in the end
    /// (`ip netns exec NS`, `env LD_PRELOAD=…`), so that the child's pid is still `brb`'s.
    pub fn start_wrapped(
        wrap: &[String],
        data_dir: &Path,
        listen: &str,
        extra_env: &[(&str, &str)],
    ) -> ServerProc {
        Self::try_start_wrapped(wrap, data_dir, listen, extra_env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`ServerProc::start`], with more arguments after `brb server` (e.g. `--demo`).
    pub fn start_args(data_dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> ServerProc {
        Self::try_start_args(&[], args, data_dir, "127.0.0.1:0", extra_env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`ServerProc::start_wrapped`]; a server that exits or stays silent is an error, not
    /// a panic (a restart under faults may find its database unreachable and try again).
    pub fn try_start_wrapped(
        wrap: &[String],
        data_dir: &Path,
        listen: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<ServerProc, String> {
        Self::try_start_args(wrap, &[], data_dir, listen, extra_env)
    }

    fn try_start_args(
        wrap: &[String],
        args: &[&str],
        data_dir: &Path,
        listen: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<ServerProc, String> {
        let stderr_log = data_dir.with_extension(format!("stderr-{}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .expect("stderr log");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(brb_bin());
                c
            }
            None => Command::new(brb_bin()),
        };
        cmd.args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("BRB_ADMIN_TOKEN")
            .env_remove("BRB_CONFIG")
            .env("BRB_LOG", "info")
            // Most suites storm the switch on purpose; the limits have their own test
            // (tests/tokens.rs), which sets these back.
            .env("BRB_CHANGES_PER_SEC", "100000")
            .env("BRB_CHANGES_BURST", "100000")
            .env("BRB_AUTH_FAILURES_BURST", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn brb server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                    sent = true;
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "brb server did not start; its log:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                ));
            }
        };
        Ok(ServerProc {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            stderr_log,
        })
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("admin-token file")
            .trim()
            .to_string()
    }

    /// An SDK client with the admin token.
    pub fn client(&self) -> brb_client::Client {
        brb_client::Client::new(&[self.url.as_str()], Some(self.admin_token())).expect("client")
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long it took.
    pub fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id() as libc::pid_t;
        let rc = unsafe_kill(pid, libc::SIGTERM);
        assert_eq!(rc, 0, "kill(SIGTERM)");
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return (st, t.elapsed());
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("server did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `pid`; false when there is no such process.
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    unsafe_kill(pid, sig) == 0
}

/// Moves the calling thread into the network namespace `f` refers to (`/run/netns/NAME`).
#[allow(unsafe_code)]
pub fn setns_net(f: &std::fs::File) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns(2) takes a valid open descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("setns: {}", std::io::Error::last_os_error()))
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: libc::pid_t, sig: libc::c_int) -> libc::c_int {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) }
}

/// Runs the `brb` CLI with a clean environment (no token, no URL, a private HOME so the
/// default admin-token file of a developer's machine is never picked up).
pub fn cli(home: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(brb_bin());
    cmd.args(args)
        .env_remove("BRB_TOKEN")
        .env_remove("BRB_TOKEN_FILE")
        .env_remove("BRB_URL")
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run brb")
}

/// A control plane running inside the test process, on a loopback port.
pub struct InProcess {
    pub url: String,
    pub admin: String,
    pub state: brb_server::AppState,
    pub config: brb_server::Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl InProcess {
    pub async fn start(data_dir: &Path, tweak: impl FnOnce(&mut brb_server::Config)) -> InProcess {
        let mut config = brb_server::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data_dir.to_path_buf(),
            ..brb_server::Config::default()
        };
        config.abuse.changes_per_sec = 100_000.0;
        config.abuse.changes_burst = 100_000.0;
        tweak(&mut config);
        let server = brb_server::Server::start(config.clone())
            .await
            .expect("server starts");
        let addr = server.local_addr();
        config.listen = addr;
        let state = server.state().clone();
        let admin = std::fs::read_to_string(config.admin_token_path())
            .expect("admin token")
            .trim()
            .to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async move {
                    let _ = rx.await;
                })
                .await
                .map_err(|e| format!("{e:#}"))
        });
        InProcess {
            url: format!("http://{addr}"),
            admin,
            state,
            config,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops it (streams end, the port is released).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub fn client(&self) -> brb_client::Client {
        brb_client::Client::new(&[self.url.as_str()], Some(self.admin.clone())).expect("client")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns whether it became true.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the async `f` every 20 ms until it yields `Some` or `timeout` passes; panics naming
/// `what` then. For conditions that need a request to observe (a status, a counter).
pub async fn wait_for<T, Fut>(timeout: Duration, what: &str, f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    poll_for(timeout, Duration::from_millis(20), f)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {timeout:?}"))
}

/// Polls the async `f` every `every` until it yields `Some`; `None` once `timeout` has passed.
/// For a caller that polls slower than [`wait_for`] (a series published once a second, where
/// faster only loads the machine) or says more when it gives up (a server's log).
pub async fn poll_for<T, Fut>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// One value of the control plane's Prometheus text at `url` (e.g.
/// `brb_watchers{kind="long_poll"}`), `None` when the line is missing.
pub async fn metric(http: &reqwest::Client, url: &str, series: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_in(&text, series)
}

/// `series`'s value in a Prometheus text exposition.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// How an event stream went on: an event, a clean end (the HTTP body's terminating chunk),
/// or a cut (the connection broke off without it).
#[derive(Debug)]
pub enum SseNext {
    Event(brb_client::sse::Event),
    End,
    Cut(String),
}

/// An event stream read over plain HTTP and parsed with the SDK's SSE parser, so that a test
/// can tell one event from another, and a stream that ended from one that merely went quiet.
pub struct SseStream {
    body: Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: brb_client::sse::Parser,
    queued: VecDeque<brb_client::sse::Event>,
    done: bool,
}

impl SseStream {
    pub fn new(res: reqwest::Response) -> SseStream {
        SseStream {
            body: Box::pin(res.bytes_stream()),
            parser: brb_client::sse::Parser::new(),
            queued: VecDeque::new(),
            done: false,
        }
    }

    /// The next event or how the stream stopped; `None` when `limit` passes first.
    pub async fn next_within(&mut self, limit: Duration) -> Option<SseNext> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return Some(SseNext::Event(ev));
            }
            if self.done {
                return Some(SseNext::End);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) => self.done = true,
                Ok(Some(Err(e))) => return Some(SseNext::Cut(format!("{e:?}"))),
                Ok(Some(Ok(chunk))) => self
                    .queued
                    .extend(self.parser.feed(&chunk).expect("well-formed SSE")),
            }
        }
    }

    /// Waits for the first event `pred` accepts (skipping others); panics when the stream
    /// stops or `limit` passes first.
    pub async fn wait_event(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&brb_client::sse::Event) -> bool,
    ) -> brb_client::sse::Event {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .next_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(SseNext::Event(ev)) if pred(&ev) => return ev,
                Some(SseNext::Event(_)) => {}
                Some(stop) => panic!("stream stopped before {what}: {stop:?}"),
                None => panic!("no {what} within {limit:?}"),
            }
        }
    }

    /// Waits until the stream ends with its terminating chunk; returns the events that came
    /// first. Panics if the connection is cut instead, or the stream is still open after `limit`.
    pub async fn wait_end(&mut self, limit: Duration) -> Vec<brb_client::sse::Event> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            match self
                .next_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(SseNext::Event(ev)) => seen.push(ev),
                Some(SseNext::End) => return seen,
                Some(SseNext::Cut(e)) => panic!("stream cut instead of ended: {e}"),
                None => panic!("stream still open after {limit:?} (saw {seen:?})"),
            }
        }
    }
}

/// The JSON API of one server as a test calls it: every answer as (status, JSON body), a body
/// that is not JSON as `Value::Null`, so that a test asserts on what came back rather than
/// failing inside the helper.
pub struct Api {
    pub http: reqwest::Client,
    /// `…/api/v1`, without a trailing slash.
    pub base: String,
}

impl Api {
    pub fn new(server: &ServerProc) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1", server.url),
        }
    }

    /// `method` as in the HTTP request line ("GET", "PUT"…).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (s, v, _) = self.call_with_headers(method, path, token, body).await;
        (s, v)
    }

    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb.send().await.expect("the server answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let v = res
            .json::<serde_json::Value>()
            .await
            .unwrap_or(serde_json::Value::Null);
        (status, v, headers)
    }
}
