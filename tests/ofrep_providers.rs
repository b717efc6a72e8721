//! OpenFeature's own OFREP providers, real and unmodified, installed pinned from the package
//! registries by `scripts/ofrep-providers.sh`, against the real `brb server` binary: Python's
//! `openfeature-provider-ofrep` on `openfeature-sdk`, and Node's `@openfeature/ofrep-provider`
//! on `@openfeature/server-sdk`. Each runs in a small driver program (`tests/ofrep-python/
//! driver.py`, `tests/ofrep-node/driver.mjs`) that evaluates what it is told on stdin through
//! the provider and prints what the OpenFeature client returned.
//!
//! The browser provider, `@openfeature/ofrep-web-provider` on `@openfeature/web-sdk`, caches the
//! bulk answer and follows the event stream it names; it runs in Debian's Chromium
//! (`tests/ofrep-web/web.mjs`), with polling off, so a change can reach it only by the stream.
//!
//! `examples/ofrep-python/worker.py`, the README's example, runs here too.
//!
//! Both providers are server-side: they ask the control plane at every evaluation (no cache,
//! no polling), so the first evaluation after `brb pause` has returned must already be `false`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use brb_e2e::{ServerProc, cli};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
    /// The browser provider, in Chromium.
    Web,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the install script once per language and test process; returns its last line (the
/// interpreter, or the driver's directory).
fn install(lang: Lang) -> String {
    static DONE: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    let arg = match lang {
        Lang::Python => "python",
        Lang::Node => "node",
        Lang::Web => "web",
    };
    let done = DONE.get_or_init(|| Mutex::new(Vec::new()));
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, out)) = done.iter().find(|(l, _)| l == arg) {
        return out.clone();
    }
    let o = Command::new(root().join("scripts/ofrep-providers.sh"))
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scripts/ofrep-providers.sh {arg} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    done.push((arg.to_string(), out.clone()));
    out
}

struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    name: String,
}

impl Driver {
    fn start(lang: Lang, url: &str) -> Driver {
        let installed = install(lang);
        let mut cmd = match lang {
            Lang::Python => {
                let mut c = Command::new(&installed);
                c.arg(root().join("tests/ofrep-python/driver.py"));
                c
            }
            Lang::Node => {
                let mut c = Command::new("node");
                c.arg("driver.mjs").current_dir(&installed);
                c
            }
            Lang::Web => panic!("the web provider has its own harness (Browser)"),
        };
        let mut child = cmd
            .env("BRB_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut d = Driver {
            child,
            stdin,
            lines: rx,
            name: String::new(),
        };
        let ready = d.answer();
        assert_eq!(ready["ready"], true, "{ready}");
        d.name = format!("{} on {}", ready["provider"], ready["sdk"]).replace('"', "");
        eprintln!("ofrep {lang:?}: {}", d.name);
        d
    }

    fn answer(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the driver did not answer within 30 s"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Evaluates a boolean flag through the provider, as an application would.
    fn eval(&mut self, flag: &str, default: bool, token: &str, auth: &str) -> Value {
        let cmd = json!({"op": "eval", "flag": flag, "default": default, "token": token,
                         "auth": auth});
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.answer()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn set_state(http: &reqwest::Client, url: &str, token: &str, state: &str) {
    let r = http
        .put(format!("{url}/api/v1/switches/workers/state"))
        .bearer_auth(token)
        .json(&json!({"state": state}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn brb(home: &Path, url: &str, admin: &str, args: &[&str]) {
    let o = cli(home, &[("BRB_URL", url), ("BRB_TOKEN", admin)], args);
    assert!(
        o.status.success(),
        "brb {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ms(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, max {:.1} ms over {}",
        v[v.len() / 2],
        v[v.len() - 1],
        v.len()
    )
}

async fn scenario(lang: Lang) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let url = server.url.clone();
    let admin = server.admin_token();
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{url}/api/v1{p}");
    let app = post(
        &http,
        api("/tokens"),
        &admin,
        json!({"name": "ofrep-app", "role": "viewer"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    post(&http, api("/switches"), &admin, json!({"name": "emails"})).await;
    let mailer = post(
        &http,
        api("/tokens"),
        &admin,
        json!({"name": "mailer", "role": "viewer", "scope": {"switches": ["emails"]}}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();

    let mut d = Driver::start(lang, &url);

    // Running: true, with the switch's facts as flag metadata.
    let v = d.eval("workers", false, &app, "bearer");
    assert_eq!(v["value"], true, "{v}");
    assert_eq!(v["variant"], "running");
    assert_eq!(v["reason"], "STATIC");
    assert_eq!(v["error_code"], Value::Null);
    assert_eq!(v["metadata"]["primary"], true);
    assert_eq!(v["metadata"]["ramp_fraction"], 1.0);
    let version = v["metadata"]["version"].as_u64().unwrap();

    // `brb pause` returns once the pause is committed: the next evaluation is false.
    brb(
        &home,
        &url,
        &admin,
        &["pause", "--reason", "db at 100%", "--wait", "0"],
    );
    let t = Instant::now();
    let v = d.eval("workers", true, &app, "bearer");
    let after_pause = t.elapsed();
    assert_eq!(v["value"], false, "{v}");
    assert_eq!(v["variant"], "paused");
    assert_eq!(v["metadata"]["version"], version + 1);
    assert_eq!(v["metadata"]["change_reason"], "db at 100%");
    assert_eq!(v["metadata"]["ramp_fraction"], 0.0);

    // A gradual release: allowed (true), variant ramping, the admitted share in metadata.
    brb(
        &home,
        &url,
        &admin,
        &["resume", "--ramp", "steps:10m", "--wait", "0"],
    );
    let v = d.eval("workers", false, &app, "bearer");
    assert_eq!(v["value"], true, "{v}");
    assert_eq!(v["variant"], "ramping");
    assert_eq!(v["metadata"]["ramp_fraction"], 0.1);
    assert!(v["metadata"]["ramp_ends_at"].is_string(), "{v}");
    brb(&home, &url, &admin, &["resume", "--wait", "0"]);
    let v = d.eval("workers", false, &app, "api-key");
    assert_eq!(
        (v["value"].clone(), v["variant"].clone()),
        (json!(true), json!("running")),
        "the same token in X-API-Key: {v}"
    );

    // An unknown switch: the code default, with FLAG_NOT_FOUND.
    for default in [true, false] {
        let v = d.eval("no-such-switch", default, &app, "bearer");
        assert_eq!(v["value"], default, "{v}");
        assert_eq!(v["error_code"], "FLAG_NOT_FOUND");
        assert_eq!(v["reason"], "ERROR");
    }
    // A bad token: the provider's error, and the code default.
    let v = d.eval("workers", true, "brb_0000000000_nope", "bearer");
    assert_eq!(v["value"], true, "{v}");
    assert_eq!(v["error_code"], "GENERAL");
    assert_eq!(v["reason"], "ERROR");
    if let Lang::Python = lang {
        assert_eq!(v["error_message"], "unauthorized");
    }
    // A scoped token: its switch, and an error (403) for the others.
    let v = d.eval("emails", false, &mailer, "bearer");
    assert_eq!(v["value"], true, "{v}");
    let v = d.eval("workers", true, &mailer, "bearer");
    assert_eq!(
        (v["value"].clone(), v["error_code"].clone()),
        (json!(true), json!("GENERAL")),
        "{v}"
    );

    // Figures: from a committed change to what the application is told.
    let mut lat = Vec::new();
    let mut evals = Vec::new();
    for _ in 0..10 {
        for (state, want) in [("paused", false), ("running", true)] {
            set_state(&http, &url, &admin, state).await;
            let t = Instant::now();
            let v = d.eval("workers", !want, &app, "bearer");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            evals.push(v["ms"].as_f64().unwrap());
            assert_eq!(v["value"], want, "{state}: {v}");
        }
    }
    eprintln!(
        "ofrep {lang:?}: first evaluation after brb pause returned: false in {:.1} ms; \
         committed change -> evaluation answer: {}; evaluation in the provider: {}",
        after_pause.as_secs_f64() * 1000.0,
        ms(lat),
        ms(evals)
    );

    // The control plane counts this process apart: one reader (one token, address and
    // User-Agent; the 403s were not answered a value), not a worker.
    let c: Value = http
        .get(api("/switches/workers/workers"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["total"], 0, "{c}");
    assert_eq!(c["unacknowledged"]["readers"], 1, "{c}");
    assert_eq!(c["unacknowledged"]["served_current"], 1, "{c}");
    drop(d);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_provider_follows_the_switch() {
    scenario(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_provider_follows_the_switch() {
    scenario(Lang::Node).await;
}

/// The example worker takes no job while paused, and works once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_takes_no_job_while_paused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let admin = server.admin_token();
    brb(&home, &server.url, &admin, &["pause", "--wait", "0"]);
    let python = install(Lang::Python);
    let mut child = Command::new(python)
        .arg(root().join("examples/ofrep-python/worker.py"))
        .env("BRB_URL", &server.url)
        .env("BRB_TOKEN_FILE", server.data_dir.join("admin-token"))
        .env("MAX_JOBS", "2")
        .env_remove("BRB_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first, "workers is paused: taking no job");
    brb(&home, &server.url, &admin, &["resume", "--wait", "0"]);
    let rest: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert_eq!(rest, ["job 1 done", "job 2 done"]);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the example did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

/// The browser provider in Chromium, reporting what the page's OpenFeature client sees.
struct Browser {
    child: Child,
    lines: Receiver<String>,
    bulk_requests: u64,
    stream_opened: bool,
}

impl Browser {
    fn start(url: &str, token: &str) -> Browser {
        let dir = install(Lang::Web);
        let mut child = Command::new("node")
            .arg("web.mjs")
            .current_dir(dir)
            .env("BRB_URL", url)
            .env("BRB_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Browser {
            child,
            lines: rx,
            bulk_requests: 0,
            stream_opened: false,
        }
    }

    /// Reads one line: a report of the page's client (`ready` or `changed`) is returned, a
    /// request seen is noted.
    fn line(&mut self) -> Option<Value> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the browser printed nothing within 30 s"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(n) = v["bulk"].as_u64() {
            self.bulk_requests = n;
            None
        } else if v["stream"] == "open" {
            self.stream_opened = true;
            None
        } else {
            Some(v)
        }
    }

    /// Waits for the next report of the page's client.
    fn report(&mut self) -> Value {
        loop {
            if let Some(v) = self.line() {
                return v;
            }
        }
    }

    /// Waits until the page has made `n` bulk requests.
    fn bulk_requests_reach(&mut self, n: u64) {
        while self.bulk_requests < n {
            if let Some(v) = self.line() {
                panic!("an unexpected report while waiting for bulk request {n}: {v}");
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin closes the browser.
        drop(self.child.stdin.take());
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser provider is told of each change by the event stream and fetches the bulk answer
/// then, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_provider_follows_the_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let url = server.url.clone();
    let admin = server.admin_token();
    let http = reqwest::Client::new();
    let app = post(
        &http,
        format!("{url}/api/v1/tokens"),
        &admin,
        json!({"name": "web-app", "role": "viewer"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();

    let mut b = Browser::start(&url, &app);
    let v = b.report();
    assert_eq!(
        (
            v["why"].as_str(),
            v["value"].as_bool(),
            v["variant"].as_str()
        ),
        (Some("ready"), Some(true), Some("running")),
        "{v}"
    );
    // The stream's first event asks for one fetch at once (answered 304): then it is live.
    b.bulk_requests_reach(2);
    assert!(b.stream_opened, "the page opened the OFREP event stream");

    brb(
        &home,
        &url,
        &admin,
        &["pause", "--reason", "db at 100%", "--wait", "0"],
    );
    let t = Instant::now();
    let v = b.report();
    let after_pause = t.elapsed();
    assert_eq!(
        (
            v["why"].as_str(),
            v["value"].as_bool(),
            v["variant"].as_str()
        ),
        (Some("changed"), Some(false), Some("paused")),
        "{v}"
    );

    let mut lat = Vec::new();
    let mut changes = 1;
    for i in 0..5 {
        for (state, want) in [("running", true), ("paused", false)] {
            set_state(&http, &url, &admin, state).await;
            let t = Instant::now();
            let v = b.report();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            changes += 1;
            assert_eq!(v["value"].as_bool(), Some(want), "cycle {i} {state}: {v}");
        }
    }
    // Polling is off: every fetch after the first two was asked for by the stream.
    b.bulk_requests_reach(2 + changes);
    assert_eq!(b.bulk_requests, 2 + changes, "no fetch without an event");
    eprintln!(
        "ofrep Web: brb pause returned -> the page's flag false in {:.1} ms; committed change \
         -> the page told (event, refetch, ConfigurationChanged): {}",
        after_pause.as_secs_f64() * 1000.0,
        ms(lat)
    );
    let c: Value = http
        .get(format!("{url}/api/v1/switches/workers/workers"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["total"], 0, "{c}");
    assert_eq!(c["unacknowledged"]["readers"], 1, "{c}");
}
