//! A real control plane on an ephemeral loopback port with a temporary data dir.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use brb_api::Role;
use brb_server::{AppState, Config, Server};
use serde_json::{Value, json};

pub struct TestServer {
    pub url: String,
    pub admin: String,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub http: reqwest::Client,
}

pub fn config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    // These suites send bursts of changes and of forged tokens on purpose; the limits are
    // tested on their own (limits.rs unit tests, tests/tokens.rs end to end).
    c.abuse.changes_per_sec = 1e6;
    c.abuse.changes_burst = 1e6;
    c.abuse.auth_failures_burst = 1e6;
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let server = Server::start(cfg.clone()).await.unwrap();
        let url = format!("http://{}", server.local_addr());
        let state = server.state().clone();
        let admin = std::fs::read_to_string(cfg.admin_token_path())
            .unwrap()
            .trim()
            .to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        TestServer {
            url,
            admin,
            state,
            dir,
            stop: Some(tx),
            task: Some(task),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Graceful shutdown; returns how long it took.
    pub async fn stop(mut self) -> Duration {
        let t = std::time::Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("graceful shutdown finished")
                .unwrap()
                .unwrap();
        }
        t.elapsed()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub async fn token(&self, name: &str, role: Role) -> String {
        let r = self
            .http
            .post(self.api("/tokens"))
            .bearer_auth(&self.admin)
            .json(&json!({"name": name, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn set(&self, token: &str, switch: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.api(&format!("/switches/{switch}/state")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.api(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads SSE events from a response until `n` events arrived (or the timeout).
pub async fn read_events(
    res: reqwest::Response,
    n: usize,
    timeout: Duration,
) -> Vec<brb_client::sse::Event> {
    read_events_named(res, None, n, timeout).await
}

/// Like [`read_events`], keeping only events named `name` (when given): the all-switches
/// stream also carries ephemeral `workers`/`samples` events whenever the background tick
/// lands between changes, which depends on the machine's load.
pub async fn read_events_named(
    res: reqwest::Response,
    name: Option<&str>,
    n: usize,
    timeout: Duration,
) -> Vec<brb_client::sse::Event> {
    use futures_util::StreamExt;
    let mut parser = brb_client::sse::Parser::new();
    let mut out = Vec::new();
    let mut stream = res.bytes_stream();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => out.extend(
                parser
                    .feed(&chunk)
                    .unwrap()
                    .into_iter()
                    .filter(|e| name.is_none_or(|n| e.event == n)),
            ),
            _ => break,
        }
    }
    out
}

/// Long-polls waiting in the server right now (its `brb_watchers{kind="long_poll"}` gauge).
pub fn long_polls(state: &AppState) -> i64 {
    state
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("brb_watchers{kind=\"long_poll\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the long-poll gauge")
}
