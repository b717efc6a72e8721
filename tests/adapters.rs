//! `brb adapter` end to end: the real `brb` binary (server, adapter, CLI) as child processes,
//! a real `redis-server` on a loopback port, and the real job systems (RQ workers from PyPI,
//! a BullMQ Worker from npm) taking jobs that record their start times.
//!
//! What must hold: a pause stops job starts and a resume restarts them; a flushed or
//! restarted Redis gets the pause back; with the control plane down the broker stays paused
//! (RQ's expiry keeps being renewed); the audit shows what the adapter did (source
//! `adapter`); the counts show the adapter like a worker, and as not acknowledged, with its
//! error, while it cannot reach its broker; BullMQ's global concurrency follows a ramp.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brb_adapter::redis::{Conn, RedisUrl, Value};
use brb_e2e::{ServerProc, brb_bin, wait_for};
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Installs a fixture through `scripts/adapter-fixtures.sh`; its last line is the path.
fn fixture(kind: &str) -> PathBuf {
    let out = Command::new(root().join("scripts/adapter-fixtures.sh"))
        .arg(kind)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/adapter-fixtures.sh");
    assert!(out.status.success(), "adapter-fixtures.sh {kind} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().expect("a path").trim())
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `redis-server` on a loopback port, without persistence: a restart comes back empty, as
/// a cache-configured Redis does.
fn redis_server(port: u16) -> Proc {
    Proc(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(["--protected-mode", "no", "--dir", "/tmp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/ensure-packages.sh test installs it)"),
    )
}

async fn redis(port: u16) -> Option<Conn> {
    Conn::open(&RedisUrl::parse(&format!("redis://127.0.0.1:{port}/0")).ok()?)
        .await
        .ok()
}

async fn cmd(port: u16, args: &[&str]) -> Option<Value> {
    let mut c = redis(port).await?;
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.call(&args).await.ok()
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn starts(file: &Path) -> Vec<f64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `rq:suspended` must stay set for `span` after `since` (each span outlasts the key's 3 s
/// expiry), and not by luck: the adapter must be seen renewing it (its time to live going back
/// up) at least twice within the span, so the check is of the renewals, not of a slow expiry.
async fn stays_suspended(port: u16, since: f64, span: Duration, what: &str) {
    let mut last_ttl = i64::MAX;
    let mut renewals = 0;
    loop {
        let ttl = match cmd(port, &["PTTL", "rq:suspended"]).await {
            Some(Value::Int(ms)) => ms,
            other => panic!("PTTL rq:suspended answered {other:?}"),
        };
        assert!(
            ttl > 0,
            "rq:suspended released {:.1} s after {what} (PTTL {ttl})",
            now_secs() - since
        );
        if ttl > last_ttl.saturating_add(200) {
            renewals += 1;
        }
        last_ttl = ttl;
        if now_secs() - since >= span.as_secs_f64() {
            assert!(
                renewals >= 2,
                "{what}: rq:suspended renewed {renewals} time(s) in {span:?}"
            );
            return;
        }
        // Poll faster than the renewals come (one a second) so each is seen.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until jobs start again after `since`.
async fn wait_starts_after(file: &Path, since: f64, n: usize, what: &str) {
    wait_for(WAIT, what, || async {
        (starts(file).iter().filter(|t| **t > since).count() >= n).then_some(())
    })
    .await;
}

/// No job may start in the `window` that follows `from` (jobs that were already being
/// taken when the pause landed are allowed before it).
async fn assert_no_starts(file: &Path, from: f64, window: Duration, what: &str) {
    tokio::time::sleep(window).await;
    let late: Vec<f64> = starts(file)
        .into_iter()
        .filter(|t| *t > from)
        .map(|t| t - from)
        .collect();
    assert!(
        late.is_empty(),
        "{what}: {} job(s) started after the pause held (seconds after: {late:?})",
        late.len()
    );
}

struct Plane {
    server: ServerProc,
    dir: tempfile::TempDir,
    adapter_token: PathBuf,
}

impl Plane {
    fn start(dir: tempfile::TempDir) -> Plane {
        let server = ServerProc::start(&dir.path().join("data"), &[]);
        let out = brb(
            &server.url,
            &server.data_dir.join("admin-token"),
            &[
                "token",
                "create",
                "adapter",
                "--role",
                "viewer",
                "--switches",
                "workers",
                "--json",
            ],
        );
        let tok: Json = serde_json::from_str(&out).expect("token json");
        let adapter_token = dir.path().join("adapter-token");
        std::fs::write(&adapter_token, tok["secret"].as_str().expect("secret")).expect("write");
        Plane {
            server,
            dir,
            adapter_token,
        }
    }

    fn admin_file(&self) -> PathBuf {
        self.server.data_dir.join("admin-token")
    }

    fn cli(&self, args: &[&str]) -> String {
        brb(&self.server.url, &self.admin_file(), args)
    }

    fn adapter(&self, args: &[&str], log: &str) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log");
        Proc(
            Command::new(brb_bin())
                .arg("adapter")
                .args(args)
                .env("BRB_URL", &self.server.url)
                .env("BRB_TOKEN_FILE", &self.adapter_token)
                .env_remove("BRB_TOKEN")
                .env("BRB_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start brb adapter"),
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The adapter as the control plane counts it.
    async fn adapter_seen(&self, id: &str) -> Option<Json> {
        let c = self.server.client();
        let counts = c.workers("workers").await.ok()?;
        let w = counts.workers.iter().find(|w| w.worker_id == id)?;
        Some(serde_json::json!({
            "status": w.status.as_str(),
            "observed_version": w.observed_version,
            "error": w.error,
            "version": counts.version,
        }))
    }

    async fn adapter_entries(&self) -> Vec<brb_api::AuditEntry> {
        let c = self.server.client();
        c.audit(Some("workers"), 100, None)
            .await
            .expect("audit")
            .entries
            .into_iter()
            .filter(|e| e.action == brb_api::AuditAction::AdapterApplied)
            .collect()
    }
}

fn brb(url: &str, token_file: &Path, args: &[&str]) -> String {
    let out = Command::new(brb_bin())
        .args(args)
        .env("BRB_URL", url)
        .env("BRB_TOKEN_FILE", token_file)
        .env_remove("BRB_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run brb");
    assert!(
        out.status.success(),
        "brb {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rq_workers_are_suspended_kept_suspended_and_resumed() {
    let python = fixture("rq");
    let plane = Plane::start(tempfile::tempdir().expect("tempdir"));
    let port = free_port();
    let mut redis_proc = Some(redis_server(port));
    wait_for(WAIT, "redis answers", || redis(port)).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let starts_file = plane.dir.path().join("rq-starts");
    let fixtures = root().join("tests/fixtures/rq-worker");
    let rq = python.with_file_name("rq");
    let worker = |n: u32| {
        Proc(
            Command::new(&rq)
                .args(["worker", "--url", &url, "--name", &format!("w{n}-{port}")])
                .args(["--worker-class", "rq.worker.SimpleWorker", "--quiet"])
                .current_dir(&fixtures)
                .env("PYTHONPATH", &fixtures)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start an RQ worker"),
        )
    };
    let _workers = [worker(1), worker(2)];
    let _producer = Proc(
        Command::new(&python)
            .arg(fixtures.join("producer.py"))
            .args([&url, starts_file.to_str().expect("utf-8 path")])
            .current_dir(&fixtures)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the producer"),
    );
    wait_starts_after(&starts_file, 0.0, 5, "RQ workers take jobs").await;

    // A short expiry, renewed every second: the renewal is what keeps RQ suspended below.
    let id = format!("adapter-rq-127.0.0.1:{port}/0");
    let _adapter = plane.adapter(
        &[
            "rq",
            "--redis",
            &url,
            "--reapply-secs",
            "1",
            "--suspend-ttl-secs",
            "3",
        ],
        "rq-adapter.log",
    );
    wait_for(WAIT, "the adapter reports itself", || {
        plane.adapter_seen(&id)
    })
    .await;

    // Pause: brb pause counts the adapter among the workers that acknowledged.
    let out = plane.cli(&["pause", "--reason", "db at 100%", "--wait", "20"]);
    assert!(out.contains("1/1 workers"), "{out}");
    let held = wait_for(WAIT, "rq:suspended is set", || async {
        matches!(
            cmd(port, &["EXISTS", "rq:suspended"]).await,
            Some(Value::Int(1))
        )
        .then(now_secs)
    })
    .await;
    // A worker between two jobs may take one more: RQ checks the key before each dequeue,
    // and sleeps a second between checks while suspended.
    assert_no_starts(
        &starts_file,
        held + 1.5,
        Duration::from_secs(4),
        "RQ suspended",
    )
    .await;
    let entries = plane.adapter_entries().await;
    let e = entries.first().expect("the adapter recorded its pause");
    assert_eq!(e.source, brb_api::Source::Adapter);
    assert_eq!(e.actor, "adapter");
    assert_eq!(e.to, Some(brb_api::SwitchState::Paused));
    assert_eq!(
        e.version, None,
        "an adapter's entry is not a switch version"
    );
    assert!(
        e.reason.as_deref().unwrap_or("").contains("rq:suspended"),
        "{e:?}"
    );

    // Flushed: the pause is back within a re-apply, and recorded again.
    cmd(port, &["FLUSHALL"]).await.expect("FLUSHALL");
    let back = wait_for(WAIT, "rq:suspended set again after FLUSHALL", || async {
        matches!(
            cmd(port, &["EXISTS", "rq:suspended"]).await,
            Some(Value::Int(1))
        )
        .then(now_secs)
    })
    .await;
    wait_for(WAIT, "the re-apply is in the audit", || async {
        (plane.adapter_entries().await.len() > entries.len()).then_some(())
    })
    .await;

    // Restarted empty: the adapter reconnects and sets it again.
    drop(redis_proc.take());
    redis_proc = Some(redis_server(port));
    wait_for(
        WAIT,
        "rq:suspended set again after a Redis restart",
        || async {
            matches!(
                cmd(port, &["EXISTS", "rq:suspended"]).await,
                Some(Value::Int(1))
            )
            .then_some(())
        },
    )
    .await;

    // The control plane hangs (stopped, its connections open but silent) for longer than a
    // report interval plus the key's 3 s expiry: calls to it must not hold up the renewals.
    signal(plane.server.child.id(), libc::SIGSTOP);
    let hung = now_secs();
    stays_suspended(
        port,
        hung,
        Duration::from_secs(10),
        "the control plane hung",
    )
    .await;
    signal(plane.server.child.id(), libc::SIGCONT);

    // The control plane dies: for longer than the key's 3 s expiry, RQ stays suspended,
    // because the adapter keeps renewing what it last applied.
    let listen = plane.server.url.trim_start_matches("http://").to_string();
    let data_dir = plane.server.data_dir.clone();
    let Plane {
        server,
        dir,
        adapter_token,
    } = plane;
    server.kill9();
    let down = now_secs();
    wait_for(
        WAIT,
        "the adapter notices the control plane is gone",
        || async {
            std::fs::read_to_string(dir.path().join("rq-adapter.log"))
                .unwrap_or_default()
                .contains("control plane unreachable")
                .then_some(())
        },
    )
    .await;
    stays_suspended(port, down, Duration::from_secs(6), "the control plane died").await;
    assert_no_starts(
        &starts_file,
        back.max(down) + 1.5,
        Duration::ZERO,
        "control plane down",
    )
    .await;

    // It comes back; resume restarts the jobs.
    let server = ServerProc::start_at(&data_dir, &listen, &[]);
    let plane = Plane {
        server,
        dir,
        adapter_token,
    };
    let resumed = now_secs();
    plane.cli(&["resume", "--wait", "20"]);
    wait_for(WAIT, "rq:suspended deleted", || async {
        matches!(
            cmd(port, &["EXISTS", "rq:suspended"]).await,
            Some(Value::Int(0))
        )
        .then_some(())
    })
    .await;
    wait_starts_after(&starts_file, resumed, 5, "jobs start again after resume").await;

    // Redis gone: a pause cannot be applied; the adapter says so, and is not acknowledged.
    drop(redis_proc.take());
    plane.cli(&["pause", "--wait", "0"]);
    // (The first report may name the connection that broke; then it cannot reconnect.)
    let seen = wait_for(
        WAIT,
        "the adapter reports it cannot reach redis",
        || async {
            let s = plane.adapter_seen(&id).await?;
            s["error"]
                .as_str()?
                .contains("cannot reach redis")
                .then_some(s)
        },
    )
    .await;
    assert!(
        seen["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot reach redis"),
        "{seen}"
    );
    assert!(
        seen["observed_version"].as_u64() < seen["version"].as_u64(),
        "not acknowledged while the broker is unreachable: {seen}"
    );
    // `brb pause` says so too: not acknowledged, and why.
    let out = Command::new(brb_bin())
        .args(["pause", "--wait", "1"])
        .env("BRB_URL", &plane.server.url)
        .env("BRB_TOKEN_FILE", plane.admin_file())
        .env_remove("BRB_TOKEN")
        .output()
        .expect("run brb pause");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("0/1 workers acknowledged"), "{stdout}");
    assert!(
        stderr.contains(&format!("not acknowledged yet: {id} (running, v"))
            && stderr.contains("cannot reach redis"),
        "{stderr}"
    );
    // Back: applied, acknowledged, the error gone.
    let _redis = redis_server(port);
    wait_for(WAIT, "acknowledged once Redis is back", || async {
        let s = plane.adapter_seen(&id).await?;
        (s["error"].is_null() && s["observed_version"] == s["version"]).then_some(())
    })
    .await;
    assert!(
        !plane.log("rq-adapter.log").contains("panicked"),
        "{}",
        plane.log("rq-adapter.log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_queue_is_paused_with_bullmqs_own_script_and_ramped_by_global_concurrency() {
    let dir = fixture("bullmq");
    let plane = Plane::start(tempfile::tempdir().expect("tempdir"));
    let port = free_port();
    let _redis = redis_server(port);
    wait_for(WAIT, "redis answers", || redis(port)).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let starts_file = plane.dir.path().join("bullmq-starts");

    // A queue that does not exist: a clear error, reported, retried; no crash.
    let missing_id = "adapter-missing";
    let missing = plane.adapter(
        &[
            "bullmq",
            "--redis",
            &url,
            "--queue",
            "nope",
            "--reapply-secs",
            "1",
            "--id",
            missing_id,
        ],
        "missing.log",
    );
    let seen = wait_for(WAIT, "the missing queue is reported", || async {
        let s = plane.adapter_seen(missing_id).await?;
        s["error"].is_string().then_some(s)
    })
    .await;
    assert!(
        seen["error"]
            .as_str()
            .unwrap_or("")
            .contains("\"nope\" not found"),
        "{seen}"
    );
    // Wrong credentials (this Redis has no password, so AUTH is refused): the same.
    let bad_url = format!("redis://:wrong@127.0.0.1:{port}/0");
    let mut bad_auth = plane.adapter(
        &[
            "bullmq",
            "--redis",
            &bad_url,
            "--queue",
            "emails",
            "--id",
            "adapter-bad-auth",
        ],
        "bad-auth.log",
    );
    let seen = wait_for(WAIT, "the refused AUTH is reported", || async {
        let s = plane.adapter_seen("adapter-bad-auth").await?;
        s["error"].is_string().then_some(s)
    })
    .await;
    let err = seen["error"].as_str().unwrap_or("");
    assert!(
        err.contains("refused AUTH") && !err.contains("wrong"),
        "{seen}"
    );
    // Neither exited: they retry with backoff.
    let mut missing = missing;
    assert!(
        missing.0.try_wait().expect("wait").is_none(),
        "the adapter exited"
    );
    assert!(
        bad_auth.0.try_wait().expect("wait").is_none(),
        "the adapter exited"
    );
    drop((missing, bad_auth));

    let _worker = Proc(
        Command::new("node")
            .arg(dir.join("worker.mjs"))
            .args([
                &port.to_string(),
                "emails",
                starts_file.to_str().expect("utf-8"),
                "4",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the BullMQ worker"),
    );
    wait_starts_after(&starts_file, 0.0, 5, "the BullMQ worker takes jobs").await;
    let id = format!("adapter-bullmq-127.0.0.1:{port}/0-bull:emails");
    let _adapter = plane.adapter(
        &[
            "bullmq",
            "--redis",
            &url,
            "--queue",
            "emails",
            "--reapply-secs",
            "1",
            "--max-concurrency",
            "4",
        ],
        "bullmq-adapter.log",
    );
    wait_for(WAIT, "the adapter reports itself", || {
        plane.adapter_seen(&id)
    })
    .await;

    let out = plane.cli(&["pause", "--reason", "db at 100%", "--wait", "20"]);
    assert!(out.contains("1/1 workers"), "{out}");
    let paused = || async {
        cmd(port, &["HGET", "bull:emails:meta", "paused"])
            .await
            .and_then(|v| v.text())
    };
    let held = wait_for(WAIT, "meta paused set", || async {
        paused().await.map(|_| now_secs())
    })
    .await;
    // Jobs already moved to active when the flag landed may still start just after it.
    assert_no_starts(
        &starts_file,
        held + 0.5,
        Duration::from_secs(3),
        "BullMQ paused",
    )
    .await;
    let entries = plane.adapter_entries().await;
    let e = entries.first().expect("recorded");
    assert_eq!(e.source, brb_api::Source::Adapter);
    assert!(
        e.reason
            .as_deref()
            .unwrap_or("")
            .contains("paused BullMQ queue bull:emails"),
        "{e:?}"
    );

    // Flushed: the queue's keys are gone (the producer recreates them); the pause is set again.
    cmd(port, &["FLUSHALL"]).await.expect("FLUSHALL");
    let again = wait_for(WAIT, "meta paused set again after FLUSHALL", || async {
        paused().await.map(|_| now_secs())
    })
    .await;
    assert_no_starts(
        &starts_file,
        again + 0.5,
        Duration::from_secs(2),
        "after FLUSHALL",
    )
    .await;

    // Resume with a ramp: the global concurrency goes 1 → 2 → 4 (10%, 25%, 50%, 100% of 4,
    // rounded up), and jobs start again.
    let resumed = now_secs();
    plane.cli(&["resume", "--ramp", "steps:6s", "--wait", "20"]);
    let mut seen = Vec::<String>::new();
    let deadline = std::time::Instant::now() + WAIT;
    while seen.last().map(String::as_str) != Some("4") {
        assert!(
            std::time::Instant::now() < deadline,
            "the ramp never reached 4: {seen:?}"
        );
        if let Some(c) = cmd(port, &["HGET", "bull:emails:meta", "concurrency"])
            .await
            .and_then(|v| v.text())
            && seen.last() != Some(&c)
        {
            seen.push(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        ["1", "2", "4"],
        "the ramp's steps as global concurrency"
    );
    assert_eq!(paused().await, None, "resumed with BullMQ's script");
    wait_starts_after(&starts_file, resumed, 5, "jobs start again after resume").await;
    assert!(!plane.log("bullmq-adapter.log").contains("panicked"));
}
