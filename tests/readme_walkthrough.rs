//! The README's first walkthrough ("Try it: press, watch the database recover, release with a
//! guard"), run as a newcomer runs it after `make run`:
//! - the server is `scripts/run.sh`, what `make run` starts after building (no display: the
//!   control plane with the demo in the foreground), with a private HOME, so the data dir and
//!   the admin token are where the README says (`~/.local/share/big-red-button`) and the CLI
//!   finds the token there by itself;
//! - the commands are the block between `<!-- recipe:first-press -->` and `<!-- /recipe -->`,
//!   typed one after the other into one bash session, as in a second terminal at the
//!   repository's root (a directory whose `target/debug/brb` is the binary under test);
//! - between commands the test waits for what the reader waits for (the database recovering
//!   after the press, the guard's first check), and checks what each command printed.
//!
//! The one liberty: the README's address, `http://127.0.0.1:7070`, is the test server's
//! ephemeral port (`BRB_LISTEN=127.0.0.1:0` for run.sh, `BRB_URL` for `brb`, the text replaced
//! in the commands for `curl`); tests bind no fixed port.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use brb_e2e::{brb_bin, poll_for};
use serde_json::Value;

const README_URL: &str = "http://127.0.0.1:7070";
/// Any one wait, on a loaded machine.
const LIMIT: Duration = Duration::from_secs(45);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commands of the block between `<!-- recipe:first-press -->` and `<!-- /recipe -->`:
/// comment and blank lines dropped, `\`-continued lines joined.
fn walkthrough() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("<!-- recipe:first-press -->")
        .expect("the walkthrough's start marker in README.md");
    let end = start
        + readme[start..]
            .find("<!-- /recipe -->")
            .expect("the walkthrough's end marker in README.md");
    let code = readme[start..end]
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1
        .split_once("```")
        .expect("the block's end")
        .0;
    let mut cmds = Vec::new();
    let mut cur = String::new();
    for line in code.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(line);
                cmds.push(std::mem::take(&mut cur));
            }
        }
    }
    assert!(cur.is_empty(), "the block ends inside a command: {cur}");
    cmds
}

/// A process killed when the test ends, whatever happens.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines a child prints, read by a thread.
fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// One bash session: a command in, what it printed and its exit status out.
struct Shell {
    _child: Kill,
    stdin: ChildStdin,
    out: Receiver<String>,
}

const DONE: &str = "__walkthrough_step_done__";

impl Shell {
    fn start(cwd: &Path, env: &[(&str, &str)]) -> Shell {
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc"])
            .current_dir(cwd)
            .env_remove("BRB_TOKEN")
            .env_remove("BRB_TOKEN_FILE")
            .env_remove("BRB_URL")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = lines(child.stdout.take().unwrap());
        let mut sh = Shell {
            _child: Kill(child),
            stdin,
            out,
        };
        // What a terminal shows: both streams.
        sh.run("exec 2>&1");
        sh
    }

    /// Runs `cmd`; returns its exit status and output.
    fn run(&mut self, cmd: &str) -> (i32, String) {
        writeln!(self.stdin, "{cmd}\nprintf '\\n{DONE} %s\\n' \"$?\"").unwrap();
        self.stdin.flush().unwrap();
        let t = Instant::now();
        let mut out = String::new();
        loop {
            match self.out.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => match line.strip_prefix(DONE) {
                    Some(code) => return (code.trim().parse().unwrap(), out),
                    None => {
                        out.push_str(&line);
                        out.push('\n');
                    }
                },
                Err(RecvTimeoutError::Timeout) => {
                    assert!(t.elapsed() < LIMIT, "{cmd:?} did not end: {out}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("bash ended during {cmd:?}: {out}"),
            }
        }
    }
}

/// The API as the test sees it, beside the walkthrough.
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    fn get(&self, path: &str) -> Value {
        self.rt.block_on(self.fetch(path))
    }

    async fn fetch(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls `f` four times a second (the demo publishes once a second) until it yields
    /// `Some`, or fails naming `what` after [`LIMIT`].
    fn until<'a, T, Fut>(&'a self, what: &str, mut f: impl FnMut(&'a Api) -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        self.rt
            .block_on(poll_for(LIMIT, Duration::from_millis(250), || f(self)))
            .unwrap_or_else(|| panic!("{what}: not within {LIMIT:?}"))
    }

    async fn db_load(&self, since: i64) -> Vec<(i64, f64)> {
        points(
            &self
                .fetch(&format!("/metrics/series?name=db_load&since={since}"))
                .await,
        )
    }
}

fn points(v: &Value) -> Vec<(i64, f64)> {
    v["series"][0]["points"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| Some((p[0].as_i64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn changed_at(sw: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(sw["changed_at"].as_str().unwrap())
        .unwrap()
        .timestamp()
}

#[test]
fn the_readme_walkthrough_works_as_written_after_make_run() {
    let cmds = walkthrough();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // The checkout the reader stands in: `target/debug/brb` is the binary under test.
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("target/debug")).unwrap();
    std::os::unix::fs::symlink(brb_bin(), checkout.join("target/debug/brb")).unwrap();

    // `make run` without a display, as on a server or in CI.
    let mut run = Command::new("bash");
    run.arg(root().join("scripts/run.sh"))
        .env("HOME", &home)
        .env("BRB_BIN", brb_bin())
        .env("BRB_LISTEN", "127.0.0.1:0")
        .env("BRB_LOG", "warn")
        .env_remove("XDG_DATA_HOME")
        .env_remove("BRB_DATA_DIR")
        .env_remove("BRB_CONFIG")
        .env_remove("BRB_ADMIN_TOKEN")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    let printed = lines(child.stdout.take().unwrap());
    let _server = Kill(child);
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.contains("  demo: ")) {
        let line = printed
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("make run's server did not start: {banner:?}"));
        banner.push(line);
    }
    println!("{}", banner.join("\n"));
    let find = |key: &str| {
        banner
            .iter()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {key:?} line: {banner:?}"))
    };
    let url = find("listening on ");
    let token_file = PathBuf::from(find("admin token: "));
    // Where the README says the token is, and where `brb` looks for it by itself.
    assert_eq!(
        token_file,
        home.join(".local/share/big-red-button/admin-token"),
        "{banner:?}"
    );
    assert!(find("demo: ").starts_with("40 workers on switch \"workers\""));
    let api = Api {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        http: reqwest::Client::new(),
        url: url.clone(),
        token: std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string(),
    };
    // The reader starts once the console shows the fleet running.
    api.until("40 demo workers running", |a| async move {
        (a.fetch("/switches/workers/workers").await["running"] == 40).then_some(())
    });

    let mut sh = Shell::start(
        &checkout,
        &[("HOME", home.to_str().unwrap()), ("BRB_URL", url.as_str())],
    );
    let mut seen = BTreeSet::new();
    for cmd in &cmds {
        let typed = cmd.replace(README_URL, &url);
        let (code, out) = sh.run(&typed);
        println!("$ {cmd}\n{out}");
        assert_eq!(code, 0, "{cmd:?} failed ({code}): {out}");
        let c = cmd.trim();
        if c.starts_with("brb pause") {
            seen.insert("pause");
            assert!(out.contains("40/40 workers acknowledged"), "{out}");
            // The reader watches the database recover before going on.
            let at = changed_at(&api.get("/switches/workers"));
            api.until("the database recovering after the press", |a| async move {
                a.db_load(at + 2)
                    .await
                    .iter()
                    .any(|p| p.1 < 5.0)
                    .then_some(())
            });
        } else if c.contains("/metrics/series?name=db_load") {
            seen.insert("recovered");
            let v: Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("not the series' JSON ({e}): {out}"));
            let pts = points(&v);
            let last = pts
                .last()
                .unwrap_or_else(|| panic!("no db_load point: {v}"));
            assert!(last.1 < 5.0, "the database has not recovered: {pts:?}");
        } else if c.starts_with("brb resume") && c.contains("--guard 'db_load < 80'") {
            seen.insert("guarded resume");
            assert!(out.contains("workers is running"), "{out}");
            let sw = api.get("/switches/workers");
            assert_eq!(sw["ramp"]["guard"]["guards"][0]["below"], 80.0, "{sw}");
            // The reader gives the guard its first check (ten seconds).
            api.until("the guard's first check", |a| async move {
                let st = a.fetch("/switches/workers/guard").await;
                (st["checks"][0]["outcome"] != "pending" && st["checks"][0]["outcome"].is_string())
                    .then_some(())
            });
        } else if c.starts_with("brb status") {
            seen.insert("status");
            assert!(
                out.contains("[guarded release at 10% (step 1/4), guard db_load < 80]"),
                "{out}"
            );
        } else if c.contains("/switches/workers/guard") {
            seen.insert("guard");
            let st: Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("not the guard's JSON ({e}): {out}"));
            let check = &st["checks"][0];
            assert_eq!(check["condition"], "db_load < 80", "{st}");
            // At 10 % the database is far from the limit: the check passed.
            assert_eq!(
                (st["phase"].as_str(), check["outcome"].as_str()),
                (Some("advancing"), Some("pass")),
                "{st}"
            );
            assert!(check["value"].as_f64().unwrap() < 80.0, "{st}");
        } else if c.starts_with("brb audit") {
            seen.insert("audit");
            assert!(out.contains("db at 100%"), "{out}");
        }
    }
    let want: BTreeSet<&str> = [
        "pause",
        "recovered",
        "guarded resume",
        "status",
        "guard",
        "audit",
    ]
    .into();
    assert_eq!(seen, want, "the walkthrough lost a step: {cmds:#?}");
}
