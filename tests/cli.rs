//! The `brb` command line against a real control plane.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use brb_e2e::{ServerProc, brb_bin, cli};

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let token_file = dir.path().join("data/admin-token");
    let tf = token_file.to_str().unwrap();
    let env = [("BRB_URL", server.url.as_str()), ("BRB_TOKEN_FILE", tf)];

    // status
    let o = cli(&home, &env, &["status"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("workers") && out.contains("running"), "{out}");

    // watch in the background: one line per change
    let mut watch = Command::new(brb_bin())
        .args(["watch", "workers"])
        .env("BRB_URL", &server.url)
        .env("BRB_TOKEN_FILE", tf)
        .env_remove("BRB_TOKEN")
        .env("HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("workers") && first.contains("v1"), "{first}");

    // pause with a reason
    let o = cli(&home, &env, &["pause", "--reason", "db on fire"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("workers is PAUSED (v2"), "{out}");
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.contains("PAUSED") && line.contains("db on fire"),
        "watch: {line}"
    );

    // A reader that went away (`brb status --json | grep -q paused`) ends the command quietly
    // (141, as a shell reports SIGPIPE), not with a panic on stderr.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(brb_bin())
        .args(["status", "--json"])
        .env("BRB_URL", &server.url)
        .env("BRB_TOKEN_FILE", tf)
        .env_remove("BRB_TOKEN")
        .env("HOME", &home)
        .stdout(writer)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // status --json is machine readable
    let o = cli(&home, &env, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["state"], "paused");
    assert_eq!(v[0]["source"], "cli");

    // resume, and the watcher sees it
    let o = cli(&home, &env, &["resume", "workers"]);
    assert!(o.status.success());
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.contains("running") && line.contains("v3"),
        "watch: {line}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // audit
    let o = cli(&home, &env, &["audit", "--limit", "5"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("running -> paused") && out.contains("db on fire"),
        "{out}"
    );
    assert!(out.contains("via cli"), "{out}");

    // tokens: create prints the secret once; list never does
    let o = cli(
        &home,
        &env,
        &[
            "token",
            "create",
            "viewer-bot",
            "--role",
            "viewer",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let created: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let o = cli(&home, &env, &["token", "list"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("viewer-bot") && !out.contains(&secret),
        "{out}"
    );

    // a viewer cannot pause: non-zero exit, clear message
    let o = cli(
        &home,
        &[("BRB_URL", server.url.as_str()), ("BRB_TOKEN", &secret)],
        &["pause"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("forbidden") && err.contains("operator"),
        "{err}"
    );

    // revoke it: now it is refused
    let o = cli(&home, &env, &["token", "revoke", &id]);
    assert!(o.status.success());
    let o = cli(
        &home,
        &[("BRB_URL", server.url.as_str()), ("BRB_TOKEN", &secret)],
        &["status"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("revoked") && err.contains("hint"), "{err}");

    // switches
    let o = cli(
        &home,
        &env,
        &["switch", "create", "kill-search", "--description", "Search"],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let o = cli(
        &home,
        &env,
        &["pause", "kill-search", "-r", "search is slow"],
    );
    assert!(o.status.success());
    let o = cli(&home, &env, &["status", "kill-search"]);
    assert!(text(&o).0.contains("PAUSED"));
    let o = cli(&home, &env, &["switch", "delete", "workers"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("primary switch cannot be deleted"));

    // a stale --expected-version is refused and explained
    let o = cli(&home, &env, &["resume", "--expected-version", "1"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("changed meanwhile"), "{err}");
}

#[test]
fn cli_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    // nothing listens on port 1
    let o = cli(
        &home,
        &[("BRB_URL", "http://127.0.0.1:1"), ("BRB_TOKEN", "x")],
        &["status"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("cannot reach the control plane"), "{err}");

    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let o = cli(&home, &[("BRB_URL", server.url.as_str())], &["status"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("missing Authorization") && err.contains("BRB_TOKEN"),
        "{err}"
    );

    let o = cli(
        &home,
        &[
            ("BRB_URL", server.url.as_str()),
            ("BRB_TOKEN", "brb_nope_nope"),
        ],
        &["status"],
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unknown token"));

    let o = cli(&home, &[("BRB_URL", "not a url")], &["status"]);
    assert!(!o.status.success());

    // the token is never taken from argv
    let o = cli(&home, &[], &["status", "--token", "x"]);
    assert!(!o.status.success());
}

#[test]
fn sigterm_shuts_down_gracefully_with_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let tf = dir.path().join("data/admin-token");
    let mut watch = Command::new(brb_bin())
        .args(["watch"])
        .env("BRB_URL", &server.url)
        .env("BRB_TOKEN_FILE", &tf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert!(lines.next().unwrap().unwrap().contains("workers"));
    let (status, took) = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn example_worker_obeys_the_button() {
    let bin = brb_bin().parent().unwrap().join("examples").join("worker");
    assert!(
        bin.exists(),
        "{} missing: `cargo build -p brb-client --examples` (make test does)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let token = server.admin_token();
    let mut worker = Command::new(bin)
        .env("BRB_URL", &server.url)
        .env("BRB_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = worker.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200))
                && l.contains(needle)
            {
                return true;
            }
        }
        false
    };
    assert!(wait_for("open: true, admitting 100%"));
    let home = dir.path().join("home");
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN", token.as_str()),
    ];
    let o = cli(&home, &env, &["pause", "--reason", "example"]);
    let (out, _) = text(&o);
    assert!(out.contains("1/1 workers acknowledged"), "{out}");
    assert!(wait_for("open: false"));
    let o = cli(&home, &env, &["resume", "--ramp", "linear:60s"]);
    assert!(o.status.success());
    assert!(wait_for("open: true, admitting"));
    let _ = worker.kill();
    let _ = worker.wait();
}
