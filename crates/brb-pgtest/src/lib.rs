//! A private PostgreSQL cluster for tests: `initdb` into a temporary directory, `postgres` on a
//! free loopback port, trust authentication, no dependence on a system service.
//!
//! Tests run as root in CI and `initdb`/`postgres` refuse root, so as root the binaries run as
//! the `postgres` user (created by Debian's packages) through `setpriv`, in a directory that
//! user owns. Each test asks for its own database ([`PgCluster::database`]).
//!
//! Cleanup does not rely on destructors alone: a cluster shared through a `static` is never
//! dropped, and a test binary may be killed. So each cluster has a watchdog shell that waits
//! for the test process to end, then stops the server and removes the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct PgCluster {
    bin: PathBuf,
    /// The temporary directory; `None` once handed to the watchdog (shared clusters).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// `Some(user)` when the binaries must run as another user (we are root).
    run_as: Option<String>,
    /// The address it listens on and clients connect to.
    host: String,
    /// A command prefix for the server binaries (e.g. `ip netns exec NS`).
    wrap: Vec<String>,
}

/// Where and how a cluster of its own runs ([`PgCluster::start_with`]).
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The address to listen on (and the host of its URLs).
    pub host: String,
    /// `None`: a free loopback port.
    pub port: Option<u16>,
    /// A prefix for the server binaries, e.g. `["ip", "netns", "exec", "NS"]` to run it in a
    /// network namespace.
    pub wrap: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            host: "127.0.0.1".into(),
            port: None,
            wrap: Vec::new(),
        }
    }
}

/// Where the PostgreSQL server binaries are: `$BRB_PG_BIN`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin` (Debian's layout, not on PATH).
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BRB_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if let Some((_, b)) = found.pop() {
        return Ok(b);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    Err(
        "PostgreSQL server binaries not found (initdb); run `make test-deps` \
         (scripts/ensure-packages.sh postgres) or set BRB_PG_BIN"
            .into(),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgCluster {
    /// One cluster per test binary, started on first use.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut c = PgCluster::start();
            // Statics are never dropped: the watchdog removes the directory instead.
            if let Some(d) = c.dir.take() {
                let _ = d.keep();
            }
            c
        })
    }

    /// A cluster of its own (for tests that restart it), stopped and removed on drop.
    pub fn start() -> PgCluster {
        Self::start_with(PgOptions::default())
    }

    /// A cluster of its own with [`PgOptions`].
    pub fn start_with(opts: PgOptions) -> PgCluster {
        let bin = bin_dir().unwrap_or_else(|e| panic!("{e}"));
        let run_as = is_root().then(|| "postgres".to_string());
        // As root, under /tmp: the postgres user must be able to reach the directory, and a
        // TMPDIR inside root's home would not let it.
        let parent = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("brb-pg-")
            .tempdir_in(parent)
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        if let Some(user) = &run_as {
            let st = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(&root)
                .status()
                .expect("chown");
            assert!(st.success(), "chown of the cluster directory to {user}");
        }
        let c = PgCluster {
            bin,
            dir: Some(dir),
            root,
            data,
            port: opts.port.unwrap_or_else(free_port),
            run_as,
            host: opts.host,
            wrap: opts.wrap,
        };
        let out = c
            .cmd("initdb")
            .arg("-D")
            .arg(&c.data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if c.host != "127.0.0.1" {
            // initdb trusts loopback only; a private network (namespaces) needs its clients too.
            use std::io::Write as _;
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(c.data.join("pg_hba.conf"))
                .expect("pg_hba.conf");
            writeln!(hba, "host all all 0.0.0.0/0 trust").expect("write pg_hba.conf");
        }
        c.spawn_watchdog();
        // The port was free a moment ago; on a busy machine (thousands of client sockets take
        // ephemeral ports) another socket may have taken it since. Try a few fresh ones.
        let mut c = c;
        for attempt in 1.. {
            match c.try_start_server() {
                Ok(()) => break,
                Err(e)
                    if attempt < 5
                        && opts.port.is_none()
                        && e.contains("Address already in use") =>
                {
                    c.port = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        c
    }

    /// A command for one of the server binaries, as the right user.
    fn cmd(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = match self.wrap.split_first() {
                    Some((first, rest)) => {
                        let mut c = Command::new(first);
                        c.args(rest).arg("setpriv");
                        c
                    }
                    None => Command::new("setpriv"),
                };
                c.arg(format!("--reuid={user}"))
                    .arg(format!("--regid={user}"))
                    .arg("--init-groups")
                    .arg(exe);
                c
            }
            None => match self.wrap.split_first() {
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg(exe);
                    c
                }
                None => Command::new(exe),
            },
        };
        cmd.stdin(Stdio::null()).current_dir(&self.root);
        cmd
    }

    fn spawn_watchdog(&self) {
        let pg_ctl = self.cmd_line("pg_ctl");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {pg_ctl} stop -D '{data}' -m immediate >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            data = self.data.display(),
            root = self.root.display(),
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster watchdog");
        // It normally outlives this process; reap it if it ever ends first.
        std::thread::spawn(move || child.wait());
    }

    fn cmd_line(&self, name: &str) -> String {
        let exe = self.bin.join(name).display().to_string();
        match &self.run_as {
            Some(u) => format!("setpriv --reuid={u} --regid={u} --init-groups '{exe}'"),
            None => format!("'{exe}'"),
        }
    }

    fn start_server(&self) {
        if let Err(e) = self.try_start_server() {
            panic!("{e}");
        }
    }

    fn try_start_server(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -c listen_addresses={} -c unix_socket_directories='{}' \
             -c max_connections=300 -c fsync=off -c synchronous_commit=on",
            self.port,
            self.host,
            self.root.display()
        );
        // fsync=off: the tests stop and restart the server process, never the machine, so the
        // page cache keeps every commit; it saves a lot of time on a shared disk.
        let out = self
            .cmd("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(opts)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run pg_ctl start");
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        ))
    }

    /// Stops the server (fast shutdown: sessions are cut, commits are kept).
    pub fn stop(&self) {
        let out = self
            .cmd("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Immediate shutdown: every server process exits at once, without a checkpoint, as in a
    /// crash; the next start runs crash recovery.
    pub fn stop_immediate(&self) -> Result<(), String> {
        let out = self
            .cmd("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "60"])
            .output()
            .map_err(|e| format!("run pg_ctl stop: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop -m immediate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Whether a server runs on the data directory (`pg_ctl status`).
    pub fn running(&self) -> bool {
        self.cmd("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Starts it again, as [`PgCluster::start_again`], reporting a failure instead of panicking.
    pub fn try_start_again(&self) -> Result<(), String> {
        self.try_start_server()
    }

    /// Starts it again on the same port, after [`PgCluster::stop`].
    pub fn start_again(&self) {
        self.start_server();
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Creates a fresh database and returns its URL.
    pub fn database(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{}_{}_{}",
            prefix
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
                .to_lowercase(),
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(self.bin.join("createdb"))
                .args(["-h", &self.host, "-p", &self.port.to_string(), "-U"])
                .arg("postgres")
                .arg(&name)
                .stdin(Stdio::null())
                .output()
                .expect("run createdb");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "createdb {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@{}:{}/{db}", self.host, self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // `dir` (when still owned) removes the directory as it drops.
    }
}
