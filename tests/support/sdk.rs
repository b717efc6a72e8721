//! The SDKs' conformance drivers, as the conformance suite (`tests/conformance.rs`) and the SDK
//! benchmark (`bench_sdk.rs`) start and talk to them.
//!
//! `sdk/conformance/sdks.json` lists the SDKs: how to prepare each driver (`setup`), how to
//! start it (`command`, `cwd`, `env`), and optionally other commands for the benchmark
//! (`bench`, e.g. a release build). A driver speaks `sdk/conformance/PROTOCOL.md`: one JSON
//! command per line on stdin, one JSON answer per line on stdout, logs on stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The repository's root (the e2e crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Cargo's target directory, as the tests were built into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// How to prepare and start one SDK's driver.
#[derive(Debug, Clone)]
pub struct SdkSpec {
    pub name: String,
    pub setup: Vec<Vec<String>>,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
}

/// Expands `${root}`, `${target}` and `${cargo}` in a sdks.json string.
fn expand(s: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    s.replace("${root}", &repo_root().display().to_string())
        .replace("${target}", &target_dir().display().to_string())
        .replace("${cargo}", &cargo)
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: expected a list of strings"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(expand)
                .ok_or_else(|| format!("{what}: {s} is not a string"))
        })
        .collect()
}

fn commands(v: Option<&Value>, what: &str) -> Result<Vec<Vec<String>>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, c)| strings(c, &format!("{what}[{i}]")))
            .collect(),
        Some(_) => Err(format!("{what}: expected a list of commands")),
    }
}

/// `sdk/conformance/sdks.json`; `bench` picks each SDK's `bench` overrides where it has them.
pub fn load_sdks(bench: bool) -> Result<Vec<SdkSpec>, String> {
    let path = repo_root().join("sdk/conformance/sdks.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let list = doc
        .get("sdks")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: no \"sdks\" list", path.display()))?;
    let mut out = Vec::new();
    for entry in list {
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{}: an SDK without a name", path.display()))?
            .to_string();
        let what = |k: &str| format!("sdks.json {name}.{k}");
        let over = if bench { entry.get("bench") } else { None };
        let pick = |k: &str| over.and_then(|o| o.get(k)).or_else(|| entry.get(k));
        let command = strings(
            pick("command").ok_or_else(|| what("command") + ": missing")?,
            &what("command"),
        )?;
        if command.is_empty() {
            return Err(what("command") + ": empty");
        }
        let cwd = pick("cwd")
            .and_then(Value::as_str)
            .map(|c| repo_root().join(expand(c)))
            .unwrap_or_else(repo_root);
        let mut env = BTreeMap::new();
        for src in [entry.get("env"), over.and_then(|o| o.get("env"))]
            .into_iter()
            .flatten()
        {
            for (k, v) in src
                .as_object()
                .ok_or_else(|| what("env") + ": not an object")?
            {
                let v = v
                    .as_str()
                    .ok_or_else(|| what("env") + ": values are strings")?;
                env.insert(k.clone(), expand(v));
            }
        }
        out.push(SdkSpec {
            setup: commands(pick("setup"), &what("setup"))?,
            name,
            command,
            cwd,
            env,
        });
    }
    Ok(out)
}

/// One SDK's entry, or why not.
pub fn sdk(name: &str, bench: bool) -> Result<SdkSpec, String> {
    load_sdks(bench)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("sdk/conformance/sdks.json has no SDK named {name:?}"))
}

impl SdkSpec {
    /// Runs the setup commands (building the driver), each to completion.
    pub fn run_setup(&self) -> Result<(), String> {
        for cmd in &self.setup {
            let out = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .current_dir(&self.cwd)
                .envs(&self.env)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("[{}] setup {cmd:?}: cannot run: {e}", self.name))?;
            if !out.status.success() {
                return Err(format!(
                    "[{}] setup {cmd:?} failed ({}):\n{}{}",
                    self.name,
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    /// Starts the driver; its stderr goes to `stderr_log`.
    pub fn spawn(
        &self,
        stderr_log: &Path,
        extra_env: &BTreeMap<String, String>,
    ) -> Result<Driver, String> {
        let stderr = std::fs::File::create(stderr_log)
            .map_err(|e| format!("{}: {e}", stderr_log.display()))?;
        let program = if self.command[0].contains('/') && !Path::new(&self.command[0]).is_absolute()
        {
            self.cwd.join(&self.command[0])
        } else {
            PathBuf::from(&self.command[0])
        };
        let mut cmd = Command::new(program);
        cmd.args(&self.command[1..])
            .current_dir(&self.cwd)
            // A driver learns everything from its commands, nothing from the developer's shell.
            .env_remove("BRB_TOKEN")
            .env_remove("BRB_TOKEN_FILE")
            .env_remove("BRB_URL")
            .envs(&self.env)
            .envs(extra_env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("[{}] cannot start {:?}: {e}", self.name, self.command))?;
        let stdin = child.stdin.take().ok_or("driver stdin")?;
        let stdout = child.stdout.take().ok_or("driver stdout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Driver {
            name: self.name.clone(),
            child,
            stdin: Some(stdin),
            lines: rx,
            next_id: 1,
            stderr_log: stderr_log.to_path_buf(),
        })
    }
}

/// A running driver process.
pub struct Driver {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    next_id: u64,
    pub stderr_log: PathBuf,
}

impl Driver {
    /// Sends a command (an `id` is added); returns the id to wait for.
    pub async fn send(&mut self, mut cmd: Value) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        cmd.as_object_mut()
            .ok_or("a command must be a JSON object")?
            .insert("id".into(), json!(id));
        let mut line = cmd.to_string();
        line.push('\n');
        let stdin = self.stdin.as_mut().ok_or("the driver's stdin is closed")?;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("writing to the driver: {e}"))?;
        stdin
            .flush()
            .await
            .map_err(|e| format!("writing to the driver: {e}"))?;
        Ok(id)
    }

    /// The answer to command `id` (answers come in order), within `timeout`.
    pub async fn answer(&mut self, id: u64, timeout: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(format!(
                        "the driver exited ({}) before answering command {id}",
                        status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "still running".into())
                    ));
                }
                Err(_) => {
                    return Err(format!("no answer to command {id} within {timeout:?}"));
                }
            };
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| format!("the driver printed a line that is not JSON ({e}): {line}"))?;
            match v.get("id").and_then(Value::as_u64) {
                Some(got) if got == id => return Ok(v),
                Some(got) if got < id => continue, // an answer to a command given up on
                _ => return Err(format!("answer out of order (waiting for {id}): {line}")),
            }
        }
    }

    /// Sends and waits; `Err` for no answer or `ok: false`.
    pub async fn call(&mut self, cmd: Value, timeout: Duration) -> Result<Value, String> {
        let op = cmd.get("op").cloned().unwrap_or(Value::Null);
        let id = self.send(cmd).await?;
        let v = self.answer(id, timeout).await?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v)
        } else {
            Err(format!("{op} answered {v}"))
        }
    }

    /// Closes stdin and waits for the exit (protocol: exit 0 once stdin closes).
    pub async fn close(&mut self, timeout: Duration) -> Result<(), String> {
        drop(self.stdin.take());
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(st)) if st.success() => Ok(()),
            Ok(Ok(st)) => Err(format!("the driver exited with {st} after stdin closed")),
            Ok(Err(e)) => Err(format!("waiting for the driver: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "the driver did not exit within {timeout:?} of stdin closing"
                ))
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}
