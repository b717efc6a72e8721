//! The office button end to end without hardware: the real ATmega328P firmware running in
//! simavr (firmware/sim/brb-sim.c bridges its UART to a pty and drives its pins), the real
//! `brb button --serial` daemon, the real control plane.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brb_api::{CreateTokenRequest, Role, Source, SwitchState};
use brb_e2e::{ServerProc, brb_bin};
use brb_protocol::line;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the Uno firmware and the harness (about a second when up to date).
fn build_firmware() {
    let mut child = Command::new("make")
        .args(["-C", "firmware", "sim"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("make (run `scripts/ensure-packages.sh firmware` first)");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(st.success(), "make -C firmware sim failed:\n{err}");
            return;
        }
        assert!(Instant::now() < deadline, "firmware build timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The simulated button.
struct Sim {
    child: Child,
    stdin: ChildStdin,
    leds: Arc<Mutex<Vec<(bool, Instant)>>>,
}

impl Sim {
    fn start(link: &Path) -> Sim {
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
        let leds = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = leds.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(());
                } else if let Some(rest) = line.strip_prefix("led ") {
                    l.lock()
                        .unwrap()
                        .push((rest.starts_with('1'), Instant::now()));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the simulator did not start");
        Sim { child, stdin, leds }
    }

    fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn press_for(&mut self, d: Duration) {
        self.cmd("press");
        std::thread::sleep(d);
        self.cmd("release");
    }

    /// Fraction of `window` (ending now) the LED was on, and the number of changes in it.
    fn led_stats(&self, window: Duration) -> (f64, usize) {
        let leds = self.leds.lock().unwrap();
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

    /// Waits until the light shows `want`, judged over the pattern's period.
    fn wait_light(&self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = match want {
                // Solid for 1.5 s: longer than any blinking pattern stays on.
                "paused" => self.led_stats(Duration::from_millis(1500)) == (1.0, 0),
                // Dark for 2.3 s: longer than the no-connection flash period.
                "running" => self.led_stats(Duration::from_millis(2300)) == (0.0, 0),
                // Short flashes: on about 5% of the time.
                "no-connection" => {
                    let (f, c) = self.led_stats(Duration::from_millis(4100));
                    c >= 2 && f > 0.0 && f < 0.15
                }
                other => panic!("no classifier for {other}"),
            };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the light did not show {want} within {timeout:?}: {:?}",
                self.led_stats(Duration::from_millis(2300))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `brb button` as a child process, its log in a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(url: &str, token: &str, port: &Path, log: PathBuf) -> Daemon {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(brb_bin())
            .args(["button", "--serial"])
            .arg(port)
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

async fn wait_state(c: &brb_client::Client, want: SwitchState, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = c.switch("workers").await
            && s.state == want
        {
            return s.version;
        }
        assert!(Instant::now() < deadline, "workers did not become {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn button_against_simulated_firmware() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("the scenario timed out");
}

async fn scenario() {
    tokio::task::spawn_blocking(build_firmware).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let admin =
        brb_client::Client::new(&[server.url.as_str()], Some(server.admin_token())).unwrap();
    // The daemon runs with its own operator token, so the audit names it.
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

    let link = dir.path().join("button-tty");
    let mut sim = Sim::start(&link);
    // Before any host speaks, the firmware's watchdog shows "no connection".
    sim.wait_light("no-connection", Duration::from_secs(8));
    let mut daemon = Daemon::start(&server.url, &token, &link, dir.path().join("button.log"));
    sim.wait_light("running", Duration::from_secs(10));

    // A short press pauses; the audit says who, from where, which button.
    sim.press_for(Duration::from_millis(150));
    let v = wait_state(&admin, SwitchState::Paused, Duration::from_secs(5)).await;
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
    sim.wait_light("paused", Duration::from_secs(5));

    // Disarmed (cover closed): a long hold does nothing.
    sim.cmd("disarm");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.press_for(Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Paused, v),
        "disarmed press acted"
    );
    assert!(daemon.log().contains("disarmed"), "{}", daemon.log());
    sim.cmd("arm");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Garbage both ways: noise, a press with a bad CRC, a well-framed press with a bad field,
    // nonsense to the firmware. Nothing happens, nothing crashes.
    let mut bad_value = line::encode(&[0x02, 0x09, 0x00, 0x07]);
    bad_value.pop(); // the harness adds the newline
    let bad_value = String::from_utf8(bad_value).unwrap();
    sim.cmd("garbage-host \u{1}\u{7f}junk$$$$0201000");
    sim.cmd("garbage-host $02090001FFFF");
    sim.cmd(&format!("garbage-host {bad_value}"));
    sim.cmd("garbage-host $0201zz01");
    sim.cmd("garbage-dev $8100FFFF");
    sim.cmd("garbage-dev \u{1}$81zz$$$");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.assert_alive();
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        (s.state, s.version),
        (SwitchState::Paused, v),
        "garbage acted"
    );
    sim.wait_light("paused", Duration::from_secs(3));
    assert!(
        daemon.log().contains("dropped a bad frame"),
        "{}",
        daemon.log()
    );

    // A long hold resumes.
    sim.press_for(Duration::from_millis(3500));
    wait_state(&admin, SwitchState::Running, Duration::from_secs(5)).await;
    let audit = admin.audit(Some("workers"), 1, None).await.unwrap();
    let reason = audit.entries[0].reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("office button BRB-0001: long hold ("),
        "{reason}"
    );
    assert_eq!(audit.entries[0].source, Source::Button);
    sim.wait_light("running", Duration::from_secs(5));

    // Unplug: the pty goes away. Plug back in: found again within two seconds.
    drop(sim);
    let _ = std::fs::remove_file(&link);
    // A change made while the cable is out: the light must show it once plugged back in.
    let unplugged = admin
        .set_state(
            "workers",
            &brb_api::SetStateRequest {
                state: SwitchState::Paused,
                reason: Some("paused while the button was unplugged".into()),
                source: None,
                expected_version: None,
                ramp: None,
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.assert_alive();
    let connects = daemon.log().matches("button connected").count();
    let mut sim = Sim::start(&link);
    let plugged = Instant::now();
    loop {
        if daemon.log().matches("button connected").count() > connects {
            break;
        }
        assert!(
            plugged.elapsed() < Duration::from_millis(2000),
            "replugged button not found within 2 s:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Resynced to the change made while unplugged, and no phantom press on replug.
    sim.wait_light("paused", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = admin.switch("workers").await.unwrap();
    assert_eq!(
        s.version, unplugged.version,
        "the replug acted on the switch"
    );
    let last = admin.audit(Some("workers"), 1, None).await.unwrap();
    assert_eq!(
        last.entries[0].source,
        Source::Api,
        "a phantom button entry"
    );
    let resumed = admin
        .set_state(
            "workers",
            &brb_api::SetStateRequest {
                state: SwitchState::Running,
                reason: None,
                source: None,
                expected_version: None,
                ramp: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(resumed.state, SwitchState::Running);
    sim.wait_light("running", Duration::from_secs(5));
    sim.press_for(Duration::from_millis(150));
    wait_state(&admin, SwitchState::Paused, Duration::from_secs(5)).await;
    sim.wait_light("paused", Duration::from_secs(5));

    // The control plane goes away: the light says so, the daemon stays.
    let listen = server.url.trim_start_matches("http://").to_string();
    server.kill9();
    sim.wait_light("no-connection", Duration::from_secs(10));
    daemon.assert_alive();

    // It comes back (same address, same data): the daemon reconnects by itself, the light
    // shows the real state again, and the button works.
    let server = ServerProc::start_at(&dir.path().join("data"), &listen, &[]);
    let admin =
        brb_client::Client::new(&[server.url.as_str()], Some(server.admin_token())).unwrap();
    sim.wait_light("paused", Duration::from_secs(20));
    sim.press_for(Duration::from_millis(3500));
    wait_state(&admin, SwitchState::Running, Duration::from_secs(5)).await;
    sim.wait_light("running", Duration::from_secs(5));
    daemon.assert_alive();
}
