//! The office button end to end without hardware, against the real `brb button --serial`
//! daemon and the real control plane:
//!
//! - the real ATmega328P firmware running in simavr (firmware/sim/brb-sim.c bridges its UART
//!   to a pty and drives its pins), whose light the test watches;
//! - a device written from docs/protocol.md alone, on a pty, for what the real firmware never
//!   says: a hello in another protocol version at boot, a replug without a hello, a device
//!   that never says hello. The test reads every `show` the daemon sends it.
//!
//! Nothing here sleeps for a fixed time: every step waits for what it expects (a light
//! pattern, a log line, a frame, a state), with a deadline.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brb_api::{CreateTokenRequest, Role, SetStateRequest, Source, SwitchState};
use brb_e2e::{ServerProc, brb_bin};
use brb_protocol::{Capabilities, DeviceMsg, Hello, HostMsg, ShowState, line};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the Uno firmware and the harness (about a second when up to date).
async fn build_firmware() {
    let out = tokio::process::Command::new("make")
        .args(["-C", "firmware", "sim"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("firmware build timed out")
        .expect("make (run `scripts/ensure-packages.sh firmware` first)");
    assert!(
        out.status.success(),
        "make -C firmware sim failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How long a wait may really take for a `timeout` the test names. Every wait here is for
/// something that must happen (a log line, a light, a frame, a state), so a passing run never
/// waits its deadline out; but on a loaded 2-core machine the firmware (simulated, throttled to
/// real time) and the daemon fall behind, and a tight deadline fails for the wrong reason.
/// Bounds that are the behaviour under test are checked from timestamps, not from these.
fn patience(timeout: Duration) -> Duration {
    timeout * 4
}

/// Polls `f` every 50 ms until it gives something or `timeout` (with patience) passes.
async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = patience(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated firmware

#[derive(Default)]
struct SimOut {
    leds: Vec<(bool, Instant)>,
    released: usize,
}

/// The simulated button.
struct Sim {
    child: Child,
    stdin: std::process::ChildStdin,
    out: Arc<Mutex<SimOut>>,
}

impl Sim {
    async fn start(link: &Path) -> Sim {
        let r = root();
        let mut child = Command::new(r.join("firmware/build/sim/brb-sim"))
            .arg(r.join("firmware/build/uno/brb-button.elf"))
            .arg(link)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(SimOut::default()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let o = out.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                } else if let Some(rest) = line.strip_prefix("led ") {
                    o.lock()
                        .unwrap()
                        .leds
                        .push((rest.starts_with('1'), Instant::now()));
                } else if line.starts_with("released ") {
                    o.lock().unwrap().released += 1;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("the simulator did not start")
            .unwrap();
        Sim { child, stdin, out }
    }

    fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Holds the button for `ms` of simulated time and waits until it is released.
    async fn hold(&mut self, ms: u64) {
        let before = self.out.lock().unwrap().released;
        self.cmd(&format!("hold {ms}"));
        let out = self.out.clone();
        until(
            "the simulator releasing the button",
            Duration::from_millis(ms + 5000),
            || (out.lock().unwrap().released > before).then_some(()),
        )
        .await;
    }

    /// Fraction of `window` (ending now) the LED was on, and the number of changes in it.
    fn led_stats(&self, window: Duration) -> (f64, usize) {
        let out = self.out.lock().unwrap();
        let leds = &out.leds;
        let now = Instant::now();
        let start = now - window;
        let mut level = leds
            .iter()
            .rev()
            .find(|(_, t)| *t <= start)
            .map(|(l, _)| *l)
            .unwrap_or(false);
        let mut at = start;
        let mut on = Duration::ZERO;
        let mut changes = 0;
        for &(l, t) in leds.iter().filter(|(_, t)| *t > start) {
            if level {
                on += t - at;
            }
            if l != level {
                changes += 1;
            }
            level = l;
            at = t;
        }
        if level {
            on += now - at;
        }
        (on.as_secs_f64() / window.as_secs_f64(), changes)
    }

    /// Whether the light shows `want` now, judged over the pattern's period.
    fn shows(&self, want: ShowState) -> bool {
        match want {
            // Solid for 1.5 s: longer than any blinking pattern stays on.
            ShowState::Paused => self.led_stats(Duration::from_millis(1500)) == (1.0, 0),
            // Dark for 2.3 s: longer than the no-connection flash period.
            ShowState::Running => self.led_stats(Duration::from_millis(2300)) == (0.0, 0),
            // Short flashes: on about 5% of the time.
            ShowState::NoConnection => {
                let (f, c) = self.led_stats(Duration::from_millis(4100));
                c >= 2 && f > 0.0 && f < 0.15
            }
            // Two 100 ms flashes a second: on 20% of the time, four changes a second.
            ShowState::Error => {
                let (f, c) = self.led_stats(Duration::from_millis(2000));
                c >= 6 && f > 0.1 && f < 0.3
            }
            // On with a 250 ms gap every second: on 75% of the time.
            ShowState::Sending => {
                let (f, c) = self.led_stats(Duration::from_millis(2200));
                c >= 3 && f > 0.6 && f < 0.9
            }
            other => panic!("no classifier for {other}"),
        }
    }

    /// Waits until the light shows `want`.
    async fn wait_light(&self, want: ShowState, timeout: Duration) {
        let timeout = patience(timeout);
        let deadline = Instant::now() + timeout;
        while !self.shows(want) {
            assert!(
                Instant::now() < deadline,
                "the light did not show {want} within {timeout:?}: {:?}",
                self.led_stats(Duration::from_millis(2300))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// `brb button` as a child process, its log in a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(url: &str, token: &str, port: &Path, log: PathBuf, extra: &[&str]) -> Daemon {
        let f = File::create(&log).unwrap();
        let child = Command::new(brb_bin())
            .args(["button", "--serial"])
            .arg(port)
            .args(extra)
            .env("BRB_URL", url)
            .env("BRB_TOKEN", token)
            .env_remove("BRB_TOKEN_FILE")
            .env("BRB_LOG", "info,brb_button=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines containing every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until at least `n` log lines contain every one of `parts`; returns the `n`th.
    async fn wait_lines(&self, parts: &[&str], n: usize, timeout: Duration) -> String {
        let what = format!("{n} daemon log line(s) with {parts:?}");
        let timeout = patience(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.lines_with(parts);
            if found.len() >= n {
                return found[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn count(&self, parts: &[&str]) -> usize {
        self.lines_with(parts).len()
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "brb button exited:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the switch is `want`; on a timeout the failure shows the daemon's log, the only
/// account of what the host decided.
async fn wait_state(
    c: &brb_client::Client,
    want: SwitchState,
    timeout: Duration,
    daemon: &Daemon,
) -> u64 {
    let timeout = patience(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = c.switch("workers").await
            && s.state == want
        {
            return s.version;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not become {want}; the daemon's log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set(c: &brb_client::Client, state: SwitchState, reason: &str) -> u64 {
    c.set_state(
        "workers",
        &SetStateRequest {
            state,
            reason: Some(reason.into()),
            source: None,
            expected_version: None,
            ramp: None,
            guards: Vec::new(),
        },
    )
    .await
    .unwrap()
    .version
}

/// A server, its admin client and an operator token for the daemon (so the audit names it).
async fn control_plane(dir: &Path) -> (ServerProc, brb_client::Client, String) {
    let server = ServerProc::start(&dir.join("data"), &[]);
    let admin =
        brb_client::Client::new(&[server.url.as_str()], Some(server.admin_token())).unwrap();
    let token = admin
        .create_token(&CreateTokenRequest {
            name: "office-button".into(),
            role: Role::Operator,
            expires_at: None,
            scope: None,
        })
        .await
        .unwrap()
        .secret;
    (server, admin, token)
}

/// The `after_ms` figure of a "gave up" log line.
fn after_ms(line: &str) -> u64 {
    let at = line
        .find("after_ms=")
        .expect("after_ms in the gave-up line")
        + 9;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn hello_line(protocol: u8, serial: &str) -> String {
    let m = DeviceMsg::Hello(Hello {
        protocol,
        firmware: [0, 1, 0],
        capabilities: Capabilities(0x0b),
        serial: serial.into(),
    });
    let mut l = line::encode(&m.encode());
    l.pop(); // the harness adds the newline
    String::from_utf8(l).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn button_against_simulated_firmware() {
    tokio::time::timeout(Duration::from_secs(300), firmware_scenario())
        .await
        .expect("the scenario timed out");
}

async fn firmware_scenario() {
    build_firmware().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, token) = control_plane(dir.path()).await;

    let link = dir.path().join("button-tty");
    let mut sim = Sim::start(&link).await;
    // Before any host speaks, the firmware's watchdog shows "no connection".
    sim.wait_light(ShowState::NoConnection, Duration::from_secs(8))
        .await;
    let mut daemon = Daemon::start(
        &server.url,
        &token,
        &link,
        dir.path().join("button.log"),
        &[],
    );
    sim.wait_light(ShowState::Running, Duration::from_secs(10))
        .await;

    // A short press pauses; the audit says who, from where, which button.
    sim.hold(150).await;
    let v = wait_state(&admin, SwitchState::Paused, Duration::from_secs(5), &daemon).await;
    let audit = admin.audit(Some("workers"), 1, None).await.unwrap();
    let e = &audit.entries[0];
    assert_eq!(e.version, Some(v));
    assert_eq!(e.source, Source::Button);
    assert_eq!(e.actor, "office-button");
    assert_eq!(
        e.reason.as_deref(),
        Some("office button BRB-0001: short press")
    );
    // No workers report, so nothing drains: red at once.
    sim.wait_light(ShowState::Paused, Duration::from_secs(5))
        .await;

    // Disarmed (cover closed): a long hold does nothing.
    sim.cmd("disarm");
    daemon
        .wait_lines(
            &["arming changed", "armed=false"],
            1,
            Duration::from_secs(5),
        )
        .await;
    let ignored = daemon.count(&["button event ignored"]);
    sim.hold(2500).await;
    // Its press and its release, both ignored.
    daemon
        .wait_lines(
            &["button event ignored"],
            ignored + 2,
            Duration::from_secs(5),
        )
        .await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Paused, v),
        "disarmed press acted"
    );
    assert!(daemon.log().contains("disarmed"), "{}", daemon.log());
    sim.cmd("arm");
    daemon
        .wait_lines(&["arming changed", "armed=true"], 1, Duration::from_secs(5))
        .await;

    // Garbage both ways: noise, a press with a bad CRC, a well-framed press with a bad field,
    // nonsense to the firmware. Nothing happens, nothing crashes.
    let mut bad_value = line::encode(&[0x02, 0x09, 0x00, 0x07]);
    bad_value.pop(); // the harness adds the newline
    let bad_value = String::from_utf8(bad_value).unwrap();
    let bad = daemon.count(&["dropped a bad frame"]);
    sim.cmd("garbage-host \u{1}\u{7f}junk$$$$0201000");
    sim.cmd("garbage-host $02090001FFFF");
    sim.cmd(&format!("garbage-host {bad_value}"));
    sim.cmd("garbage-host $0201zz01");
    sim.cmd("garbage-dev $8100FFFF");
    sim.cmd("garbage-dev \u{1}$81zz$$$");
    // The four bad frames to the host are counted; the firmware, fed its garbage after them,
    // still speaks: two more heartbeats.
    daemon
        .wait_lines(&["dropped a bad frame"], bad + 4, Duration::from_secs(5))
        .await;
    let beats = daemon.count(&["from the button", "msg=heartbeat"]);
    daemon
        .wait_lines(
            &["from the button", "msg=heartbeat"],
            beats + 2,
            Duration::from_secs(5),
        )
        .await;
    daemon.assert_alive();
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Paused, v),
        "garbage acted"
    );
    sim.wait_light(ShowState::Paused, Duration::from_secs(3))
        .await;

    // The device says hello in a protocol version the host does not speak (mid-session): the
    // light says error, and a long hold that would resume does nothing.
    sim.cmd(&format!("garbage-host {}", hello_line(2, "BRB-0001")));
    daemon
        .wait_lines(&["speaks protocol 2"], 1, Duration::from_secs(5))
        .await;
    sim.wait_light(ShowState::Error, Duration::from_secs(5))
        .await;
    let not_acted = daemon.count(&["NOT acted on"]);
    let releases = daemon.count(&["event=\"release\""]);
    sim.hold(3500).await;
    daemon
        .wait_lines(&["event=\"release\""], releases + 1, Duration::from_secs(5))
        .await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Paused, v),
        "a press from a device in another protocol version acted:\n{}",
        daemon.log()
    );
    // Its press and its release, each logged as an error.
    assert_eq!(
        daemon.count(&["NOT acted on"]),
        not_acted + 2,
        "{}",
        daemon.log()
    );
    // Back in protocol 1: listened to again.
    let hellos = daemon.count(&["button says hello"]);
    sim.cmd(&format!("garbage-host {}", hello_line(1, "BRB-0001")));
    daemon
        .wait_lines(&["button says hello"], hellos + 1, Duration::from_secs(5))
        .await;
    sim.wait_light(ShowState::Paused, Duration::from_secs(5))
        .await;

    // A long hold resumes.
    sim.hold(3500).await;
    wait_state(
        &admin,
        SwitchState::Running,
        Duration::from_secs(5),
        &daemon,
    )
    .await;
    let audit = admin.audit(Some("workers"), 1, None).await.unwrap();
    let reason = audit.entries[0].reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("office button BRB-0001: long hold ("),
        "{reason}"
    );
    assert_eq!(audit.entries[0].source, Source::Button);
    sim.wait_light(ShowState::Running, Duration::from_secs(5))
        .await;

    // Unplug: the pty goes away. Plug back in: found again within two seconds.
    let disconnects = daemon.count(&["button disconnected"]);
    drop(sim);
    let _ = std::fs::remove_file(&link);
    // A change made while the cable is out: the light must show it once plugged back in.
    let unplugged = set(
        &admin,
        SwitchState::Paused,
        "paused while the button was unplugged",
    )
    .await;
    daemon
        .wait_lines(
            &["button disconnected"],
            disconnects + 1,
            Duration::from_secs(10),
        )
        .await;
    daemon.assert_alive();
    let connects = daemon.count(&["button connected"]);
    let hellos = daemon.count(&["button says hello"]);
    let mut sim = Sim::start(&link).await;
    daemon
        .wait_lines(
            &["button connected"],
            connects + 1,
            Duration::from_millis(2000),
        )
        .await;
    // Resynced to the change made while unplugged, and no phantom press on replug: the new
    // session's hello and two heartbeats go by, and nothing acts.
    sim.wait_light(ShowState::Paused, Duration::from_secs(5))
        .await;
    daemon
        .wait_lines(&["button says hello"], hellos + 1, Duration::from_secs(5))
        .await;
    let beats = daemon.count(&["from the button", "msg=heartbeat"]);
    daemon
        .wait_lines(
            &["from the button", "msg=heartbeat"],
            beats + 2,
            Duration::from_secs(5),
        )
        .await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(s.version, unplugged, "the replug acted on the switch");
    let last = admin.audit(Some("workers"), 1, None).await.unwrap();
    assert_eq!(
        last.entries[0].source,
        Source::Api,
        "a phantom button entry"
    );
    set(&admin, SwitchState::Running, "resumed by the test").await;
    sim.wait_light(ShowState::Running, Duration::from_secs(5))
        .await;
    sim.hold(150).await;
    wait_state(&admin, SwitchState::Paused, Duration::from_secs(5), &daemon).await;
    sim.wait_light(ShowState::Paused, Duration::from_secs(5))
        .await;

    // The control plane goes away: the light says so, the daemon stays.
    let before_outage = set(&admin, SwitchState::Running, "resumed by the test").await;
    sim.wait_light(ShowState::Running, Duration::from_secs(5))
        .await;
    let listen = server.url.trim_start_matches("http://").to_string();
    server.kill9();
    sim.wait_light(ShowState::NoConnection, Duration::from_secs(10))
        .await;
    daemon.assert_alive();
    // A press while it is gone: "sending" while the daemon tries, then "error" when it gives
    // up (after 10 s), never a late pause.
    sim.hold(150).await;
    sim.wait_light(ShowState::Sending, Duration::from_secs(5))
        .await;
    let gave_up = daemon
        .wait_lines(&["gave up"], 1, Duration::from_secs(15))
        .await;
    let after = after_ms(&gave_up);
    assert!((10_000..11_000).contains(&after), "{gave_up}");
    sim.wait_light(ShowState::Error, Duration::from_secs(5))
        .await;

    // It comes back (same address, same data): the daemon reconnects by itself and the
    // button works; the press given up on never lands.
    let server = ServerProc::start_at(&dir.path().join("data"), &listen, &[]);
    let admin =
        brb_client::Client::new(&[server.url.as_str()], Some(server.admin_token())).unwrap();
    sim.hold(150).await;
    let v = wait_state(
        &admin,
        SwitchState::Paused,
        Duration::from_secs(10),
        &daemon,
    )
    .await;
    assert_eq!(
        v,
        before_outage + 1,
        "the press given up on landed after all"
    );
    sim.wait_light(ShowState::Paused, Duration::from_secs(20))
        .await;
    sim.hold(3500).await;
    wait_state(
        &admin,
        SwitchState::Running,
        Duration::from_secs(5),
        &daemon,
    )
    .await;
    sim.wait_light(ShowState::Running, Duration::from_secs(5))
        .await;
    daemon.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// A device written from docs/protocol.md, on a pty

/// A pty pair: the master (the device's end) non-blocking, the slave raw (no echo, no line
/// discipline) and kept open by us, so the master does not see a hang-up between two opens
/// by the daemon. Both close-on-exec: a process spawned meanwhile (the daemon, a server) must
/// not keep the pty open after an unplug. Returns the master, the slave and the slave's path.
#[allow(unsafe_code)]
fn open_pty() -> (OwnedFd, File, PathBuf) {
    // SAFETY: plain libc calls on a descriptor this function owns; buffers are sized and
    // NUL-terminated as ptsname_r requires; every return value is checked.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::grantpt(fd), 0, "grantpt");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let path = PathBuf::from(
            std::ffi::CStr::from_ptr(name.as_ptr())
                .to_str()
                .unwrap()
                .to_string(),
        );
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .unwrap();
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
        (master, slave, path)
    }
}

/// `f` registered with tokio's reactor, so the device's reads and writes can be awaited.
#[allow(unsafe_code)]
fn watch_fd(f: File) -> AsyncFd<File> {
    // SAFETY: the `File` owns its descriptor and moves into the `AsyncFd`, so the descriptor
    // stays open, and the same, for as long as the `AsyncFd` lives.
    unsafe { AsyncFd::register(f) }.unwrap()
}

/// One plugged-in device: what it is sent is recorded, what it says is up to the test
/// (except a heartbeat every second, which keeps the daemon from calling it gone).
struct DocDevice {
    master: Arc<AsyncFd<File>>,
    heard: Arc<Mutex<Vec<HostMsg>>>,
    news: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    link: PathBuf,
    _slave: File,
}

impl DocDevice {
    /// Plugs a device in at `link`. It says nothing until told to (no boot hello: as if its
    /// boot hello was sent before the daemon opened the port).
    fn plug(link: &Path) -> DocDevice {
        let (master, slave, path) = open_pty();
        let master = Arc::new(watch_fd(File::from(master)));
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&path, link).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let news = Arc::new(Notify::new());
        let reader = {
            let (master, heard, news) = (master.clone(), heard.clone(), news.clone());
            tokio::spawn(async move {
                let mut decoder = line::Decoder::new();
                let mut buf = [0u8; 256];
                loop {
                    let Ok(mut ready) = master.readable().await else {
                        return;
                    };
                    match ready.try_io(|fd| fd.get_ref().read(&mut buf)) {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => {
                            let msgs: Vec<HostMsg> = decoder
                                .feed(&buf[..n])
                                .into_iter()
                                .filter_map(Result::ok)
                                .filter_map(|b| HostMsg::decode(&b).ok())
                                .collect();
                            heard.lock().unwrap().extend(msgs);
                            news.notify_waiters();
                        }
                        Err(_would_block) => {}
                    }
                }
            })
        };
        let heartbeat = {
            let (master, heard) = (master.clone(), heard.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    let shown = heard
                        .lock()
                        .unwrap()
                        .iter()
                        .rev()
                        .find_map(|m| match m {
                            HostMsg::Show(s) => Some(*s),
                            HostMsg::Ping => None,
                        })
                        .unwrap_or(ShowState::NoConnection);
                    let m = DeviceMsg::Heartbeat {
                        uptime_ms: u32::try_from(started.elapsed().as_millis()).unwrap(),
                        shown,
                        armed: true,
                    };
                    write_all(&master, &line::encode(&m.encode())).await;
                }
            })
        };
        DocDevice {
            master,
            heard,
            news,
            tasks: vec![reader, heartbeat],
            link: link.to_path_buf(),
            _slave: slave,
        }
    }

    async fn say(&self, m: DeviceMsg) {
        write_all(&self.master, &line::encode(&m.encode())).await;
    }

    async fn hello(&self, protocol: u8, serial: &str) {
        self.say(DeviceMsg::Hello(Hello {
            protocol,
            firmware: [1, 0, 0],
            capabilities: Capabilities(Capabilities::LED | Capabilities::SERIAL),
            serial: serial.into(),
        }))
        .await;
    }

    async fn press(&self, seq: u16) {
        self.say(DeviceMsg::Press { seq, armed: true }).await;
    }

    async fn release(&self, seq: u16, hold_ms: u32) {
        self.say(DeviceMsg::Release {
            seq,
            hold_ms,
            armed: true,
        })
        .await;
    }

    fn heard(&self) -> Vec<HostMsg> {
        self.heard.lock().unwrap().clone()
    }

    /// The state the daemon last told the light to show.
    fn last_show(&self) -> Option<ShowState> {
        self.heard().iter().rev().find_map(|m| match m {
            HostMsg::Show(s) => Some(*s),
            HostMsg::Ping => None,
        })
    }

    /// Waits until `f` holds for what the daemon has sent so far.
    async fn wait_heard(&self, what: &str, timeout: Duration, f: impl Fn(&[HostMsg]) -> bool) {
        let timeout = patience(timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let news = self.news.notified();
            if f(&self.heard()) {
                return;
            }
            if tokio::time::timeout_at(deadline, news).await.is_err() {
                panic!(
                    "{what}: not sent by the daemon within {timeout:?}; it sent {:?}",
                    self.heard()
                );
            }
        }
    }

    async fn wait_show(&self, want: ShowState, timeout: Duration) {
        self.wait_heard(&format!("show {want}"), timeout, |_| {
            self.last_show() == Some(want)
        })
        .await;
    }

    /// Unplugs the device: both ends of the pty close, its name goes away.
    fn unplug(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.link);
        // The tasks hold clones of the master; they drop them as they are aborted.
    }
}

async fn write_all(fd: &AsyncFd<File>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let mut ready = fd.writable().await.unwrap();
        match ready.try_io(|f| f.get_ref().write(bytes)) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => panic!("writing to the pty: {e}"),
            Err(_would_block) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn button_written_from_the_docs() {
    tokio::time::timeout(Duration::from_secs(180), docs_scenario())
        .await
        .expect("the scenario timed out");
}

async fn docs_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, token) = control_plane(dir.path()).await;
    let v0 = admin.switch("workers").await.unwrap().version;
    let link = dir.path().join("doc-tty");

    // Boot in protocol 2: nothing it sends is acted on, from the first press.
    let dev = DocDevice::plug(&link);
    // No cooldown: the presses below are seconds apart at most, and each must count.
    let daemon = Daemon::start(
        &server.url,
        &token,
        &link,
        dir.path().join("doc-button.log"),
        &["--cooldown", "0ms"],
    );
    dev.wait_heard("a ping", Duration::from_secs(10), |h| {
        h.contains(&HostMsg::Ping)
    })
    .await;
    dev.hello(2, "V2-0001").await;
    dev.press(1).await;
    dev.release(1, 150).await;
    daemon
        .wait_lines(&["seq=1", "event=\"release\""], 1, Duration::from_secs(5))
        .await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Running, v0),
        "a press from a device speaking protocol 2 acted:\n{}",
        daemon.log()
    );
    assert_eq!(
        daemon.count(&["NOT acted on", "protocol 2", "event=\"press\""]),
        1,
        "{}",
        daemon.log()
    );
    dev.wait_show(ShowState::Error, Duration::from_secs(5))
        .await;

    // Hello in protocol 1: listened to, under its own serial.
    dev.hello(1, "DOC-0001").await;
    dev.wait_show(ShowState::Running, Duration::from_secs(5))
        .await;
    dev.press(2).await;
    let v = wait_state(&admin, SwitchState::Paused, Duration::from_secs(5), &daemon).await;
    let e = &admin.audit(Some("workers"), 1, None).await.unwrap().entries[0];
    assert_eq!(
        (e.version, e.reason.as_deref()),
        (Some(v), Some("office button DOC-0001: short press"))
    );
    set(&admin, SwitchState::Running, "resumed by the test").await;
    dev.wait_show(ShowState::Running, Duration::from_secs(5))
        .await;

    // Mid-session hello in protocol 2: ignored again, the light says error.
    dev.hello(2, "DOC-0001").await;
    dev.wait_show(ShowState::Error, Duration::from_secs(5))
        .await;
    dev.press(3).await;
    dev.release(3, 150).await;
    daemon
        .wait_lines(&["seq=3", "event=\"release\""], 1, Duration::from_secs(5))
        .await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Running, v + 1),
        "a press after a protocol-2 hello acted:\n{}",
        daemon.log()
    );

    // Replugged, another device that presses before its hello: the press waits for the hello
    // and is recorded under the new serial, never the previous device's.
    dev.unplug();
    daemon
        .wait_lines(&["button disconnected"], 1, Duration::from_secs(10))
        .await;
    let dev = DocDevice::plug(&link);
    dev.wait_heard("a ping", Duration::from_secs(10), |h| {
        h.contains(&HostMsg::Ping)
    })
    .await;
    dev.press(1).await;
    daemon
        .wait_lines(
            &["held until the device says hello"],
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(admin.switch("workers").await.unwrap().version, v + 1);
    dev.hello(1, "DOC-0002").await;
    let v = wait_state(&admin, SwitchState::Paused, Duration::from_secs(5), &daemon).await;
    let e = &admin.audit(Some("workers"), 1, None).await.unwrap().entries[0];
    assert_eq!(
        (e.version, e.reason.as_deref()),
        (Some(v), Some("office button DOC-0002: short press")),
        "{}",
        daemon.log()
    );
    set(&admin, SwitchState::Running, "resumed by the test").await;
    dev.wait_show(ShowState::Running, Duration::from_secs(5))
        .await;

    // Replugged, a device that never says hello: its press is dropped, loudly, and the light
    // says error.
    dev.unplug();
    daemon
        .wait_lines(&["button disconnected"], 2, Duration::from_secs(10))
        .await;
    let dev = DocDevice::plug(&link);
    dev.wait_heard("a ping", Duration::from_secs(10), |h| {
        h.contains(&HostMsg::Ping)
    })
    .await;
    dev.press(1).await;
    daemon
        .wait_lines(&["did not say hello"], 1, Duration::from_secs(10))
        .await;
    dev.wait_show(ShowState::Error, Duration::from_secs(5))
        .await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!((s.state, s.version), (SwitchState::Running, v + 1));
    assert!(
        daemon.count(&["has not said hello"]) >= 1,
        "{}",
        daemon.log()
    );

    // The same device says hello at last, then the control plane goes away. A press: the
    // daemon says "sending" while it tries, "error" when it gives up (10 s), and the press
    // never lands later.
    dev.hello(1, "DOC-0003").await;
    dev.wait_show(ShowState::Running, Duration::from_secs(5))
        .await;
    let listen = server.url.trim_start_matches("http://").to_string();
    server.kill9();
    dev.wait_show(ShowState::NoConnection, Duration::from_secs(10))
        .await;
    let pressed = Instant::now();
    dev.press(2).await;
    dev.wait_show(ShowState::Sending, Duration::from_secs(2))
        .await;
    dev.wait_show(ShowState::Error, Duration::from_secs(15))
        .await;
    let waited = pressed.elapsed();
    assert!(
        waited >= Duration::from_millis(9_500) && waited < Duration::from_secs(12),
        "error shown {waited:?} after the press"
    );
    let gave_up = daemon
        .wait_lines(&["gave up"], 1, Duration::from_secs(5))
        .await;
    assert!((10_000..11_000).contains(&after_ms(&gave_up)), "{gave_up}");

    let server = ServerProc::start_at(&dir.path().join("data"), &listen, &[]);
    let admin =
        brb_client::Client::new(&[server.url.as_str()], Some(server.admin_token())).unwrap();
    dev.press(3).await;
    let v2 = wait_state(
        &admin,
        SwitchState::Paused,
        Duration::from_secs(10),
        &daemon,
    )
    .await;
    assert_eq!(v2, v + 2, "the press given up on landed after all");
    let e = &admin.audit(Some("workers"), 1, None).await.unwrap().entries[0];
    assert_eq!(
        e.reason.as_deref(),
        Some("office button DOC-0003: short press")
    );
    dev.unplug();
}
