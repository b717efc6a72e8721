//! The office button's host side: finds the button (USB HID or serial), turns presses into
//! pause and resume on the control plane, and keeps the button's light in step with what the
//! control plane acknowledged.
//!
//! Why it is shaped so: the decisions are pure and separate from the I/O. [`policy`] decides
//! what a press means (cooldown, arming, long hold, duplicates) and [`led`] what the light
//! says; both are unit-tested with a fake clock. The devices are blocking (hidapi,
//! serialport), so one thread owns the device and talks to the async side over channels; the
//! async side owns the control-plane connection (event stream plus a worker poll) through
//! `brb-client`. Neither side ever gives up: an unplugged button is looked for every 500 ms, a
//! lost control plane is reconnected with backoff, and the light says which is the case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brb_api::{SetStateRequest, Source, Switch, SwitchState};
use brb_client::{Client, ClientError, EventScope, StreamItem};
use brb_protocol::{DeviceMsg, HostMsg, PROTOCOL_VERSION, ShowState};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

pub mod device;
pub mod find;
pub mod led;
pub mod policy;

pub use device::{DeviceError, HidIo, Transport};
pub use find::{DeviceSpec, Finder};
pub use led::{ControlView, show_state};
pub use policy::{Decision, Policy, PolicyConfig};

/// How often an absent device is looked for (hot-plug without udev events: a button plugged
/// back in is found within this plus the open time).
pub const RESCAN: Duration = Duration::from_millis(500);
/// A device that says nothing (no heartbeat) for this long is considered gone.
pub const DEVICE_SILENCE: Duration = Duration::from_secs(5);
/// The light's state is repeated this often (the firmware's watchdog expects it).
pub const SHOW_REPEAT: Duration = Duration::from_secs(1);
/// A pause or resume that could not reach the control plane is retried for this long.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ButtonError {
    #[error("the device thread could not start: {0}")]
    Thread(String),
}

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub switch: String,
    pub device: DeviceSpec,
    pub policy: PolicyConfig,
}

/// What the device thread reports.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    Connected(String),
    Message(DeviceMsg),
    Disconnected { device: String, reason: String },
}

/// Runs one device session after another until `stop`: open, greet, relay, and on any link
/// error close and look again. Blocking; run it on its own thread.
pub fn device_loop(
    spec: DeviceSpec,
    events: mpsc::Sender<DeviceEvent>,
    show: watch::Receiver<ShowState>,
    stop: Arc<AtomicBool>,
) {
    let mut finder = Finder::new();
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        match finder.open(&spec) {
            Ok(Some(t)) => {
                last_error.clear();
                let name = t.describe();
                if events
                    .blocking_send(DeviceEvent::Connected(name.clone()))
                    .is_err()
                {
                    return;
                }
                let reason = match session(t, &events, &show, &stop) {
                    Ok(()) => return,
                    Err(e) => e.to_string(),
                };
                if events
                    .blocking_send(DeviceEvent::Disconnected {
                        device: name,
                        reason,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Say it once, not every rescan.
                let s = e.to_string();
                if s != last_error {
                    tracing::warn!(error = %s, "cannot open the button");
                    last_error = s;
                }
            }
        }
        std::thread::sleep(RESCAN);
    }
}

/// One open device until it fails (`Err`) or `stop` (`Ok`).
fn session(
    mut t: Box<dyn Transport>,
    events: &mpsc::Sender<DeviceEvent>,
    show: &watch::Receiver<ShowState>,
    stop: &AtomicBool,
) -> Result<(), DeviceError> {
    let name = t.describe();
    // A line sent before we opened the port is lost: ask for the hello and show the state at
    // once rather than waiting for the next round.
    t.send(HostMsg::Ping)?;
    let mut shown = *show.borrow();
    t.send(HostMsg::Show(shown))?;
    let mut last_show = Instant::now();
    let mut last_ping = Instant::now();
    let mut heard = Instant::now();
    let mut said_hello = false;
    while !stop.load(Ordering::Relaxed) {
        let msgs = t.recv(Duration::from_millis(50))?;
        if !msgs.is_empty() {
            heard = Instant::now();
        }
        for m in msgs {
            said_hello |= matches!(m, DeviceMsg::Hello(_));
            if events.blocking_send(DeviceEvent::Message(m)).is_err() {
                return Ok(());
            }
        }
        let want = *show.borrow();
        if want != shown || last_show.elapsed() >= SHOW_REPEAT {
            t.send(HostMsg::Show(want))?;
            shown = want;
            last_show = Instant::now();
        }
        if !said_hello && last_ping.elapsed() >= SHOW_REPEAT {
            t.send(HostMsg::Ping)?;
            last_ping = Instant::now();
        }
        if heard.elapsed() >= DEVICE_SILENCE {
            return Err(DeviceError::Gone(format!(
                "{name} (silent for {DEVICE_SILENCE:?})"
            )));
        }
    }
    Ok(())
}

/// Follows the switch on the control plane: its event stream for changes, a poll of the
/// workers' acknowledgements for the light. Never returns.
pub async fn watch_control(client: Client, switch: String, view: watch::Sender<ControlView>) {
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        match client
            .events(&EventScope::Switch(switch.clone()), last_id.as_deref())
            .await
        {
            Ok(stream) => {
                backoff = Duration::from_millis(250);
                let mut stream = std::pin::pin!(stream);
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(StreamItem::Event(e))) => {
                                if e.event == brb_api::events::SWITCH {
                                    match serde_json_switch(&e.data) {
                                        Some(s) => {
                                            last_id = e.id.clone();
                                            view.send_modify(|v| {
                                                v.switch = Some(s);
                                                v.reachable = true;
                                                v.error = None;
                                            });
                                        }
                                        None => tracing::warn!(switch = %switch, "unreadable switch event"),
                                    }
                                } else if e.event == brb_api::events::DELETED {
                                    view.send_modify(|v| v.error = Some(format!("switch {switch} was deleted")));
                                }
                            }
                            Some(Ok(StreamItem::Alive)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(switch = %switch, error = %e, "event stream broke");
                                break;
                            }
                            None => break,
                        },
                        _ = tick.tick() => {
                            if !poll_workers(&client, &switch, &view).await {
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => note_error(&switch, &view, &e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn serde_json_switch(data: &str) -> Option<Switch> {
    serde_json::from_str(data).ok()
}

/// Polls the acknowledgement counts; false when the control plane is gone (reconnect).
async fn poll_workers(client: &Client, switch: &str, view: &watch::Sender<ControlView>) -> bool {
    match client.workers(switch).await {
        Ok(c) => {
            view.send_modify(|v| {
                v.workers = Some(c);
                v.reachable = true;
            });
            true
        }
        Err(e) => {
            note_error(switch, view, &e);
            false
        }
    }
}

fn note_error(switch: &str, view: &watch::Sender<ControlView>, e: &ClientError) {
    let was = view.borrow().clone();
    match e {
        ClientError::Api {
            status: 401 | 403 | 404,
            ..
        } => {
            if was.error.is_none() {
                tracing::error!(switch = %switch, error = %e, "the control plane refuses us");
            }
            view.send_modify(|v| {
                v.reachable = true;
                v.error = Some(e.to_string());
            });
        }
        _ => {
            if was.reachable {
                tracing::warn!(switch = %switch, error = %e, "control plane unreachable");
            }
            view.send_modify(|v| v.reachable = false);
        }
    }
}

/// An action the control plane has not confirmed yet.
struct Pending {
    state: SwitchState,
    reason: String,
    until: Instant,
}

/// Where the button stands, for a UI that shows it (the desktop app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    Searching,
    Connected(String),
    Disconnected { device: String, reason: String },
}

/// The daemon: device thread, control-plane watcher, and the decisions between them, until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ButtonError> {
    run_with_status(
        client,
        cfg,
        shutdown,
        watch::channel(DeviceStatus::Searching).0,
    )
    .await
}

/// [`run`], also publishing the device's status.
pub async fn run_with_status(
    client: Client,
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
    status: watch::Sender<DeviceStatus>,
) -> Result<(), ButtonError> {
    let (view_tx, mut view_rx) = watch::channel(ControlView::default());
    let (show_tx, show_rx) = watch::channel(ShowState::NoConnection);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let stop = Arc::new(AtomicBool::new(false));

    let spec = cfg.device.clone();
    let thread_stop = stop.clone();
    let device_thread = std::thread::Builder::new()
        .name("brb-button-device".into())
        .spawn(move || device_loop(spec, ev_tx, show_rx, thread_stop))
        .map_err(|e| ButtonError::Thread(e.to_string()))?;
    let watcher = tokio::spawn(watch_control(
        client.clone(),
        cfg.switch.clone(),
        view_tx.clone(),
    ));

    // The token's name, for the logs (the audit records it server-side anyway).
    let actor = match client.info().await {
        Ok(i) => i.caller.name,
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the control plane who we are (yet)");
            "unknown".to_string()
        }
    };
    tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", device = ?cfg.device, "office button daemon started");

    let mut policy = Policy::new(cfg.policy.clone());
    let started = Instant::now();
    let mut serial = String::from("unknown");
    let mut pending: Option<Pending> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    DeviceEvent::Connected(d) => {
                        tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", device = %d, "button connected");
                        status.send_replace(DeviceStatus::Connected(d));
                    }
                    DeviceEvent::Disconnected { device, reason } => {
                        tracing::warn!(switch = %cfg.switch, actor = %actor, source = "button", device = %device, reason = %reason, "button disconnected; looking for it again");
                        status.send_replace(DeviceStatus::Disconnected { device, reason });
                    }
                    DeviceEvent::Message(m) => {
                        let now_ms = started.elapsed().as_millis() as u64;
                        let state = {
                            let v = view_rx.borrow();
                            v.switch.as_ref().filter(|_| v.reachable).map(|s| s.state)
                        };
                        let decision = match &m {
                            DeviceMsg::Hello(h) => {
                                if h.protocol != PROTOCOL_VERSION {
                                    tracing::error!(serial = %h.serial, protocol = h.protocol, "the button speaks another protocol version; its presses are ignored");
                                }
                                tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", serial = %h.serial, firmware = ?h.firmware, capabilities = h.capabilities.0, "button says hello");
                                serial = h.serial.clone();
                                policy.new_session();
                                None
                            }
                            DeviceMsg::Press { seq, armed } => Some((*seq, "press", policy.on_press(*seq, *armed, now_ms, state))),
                            DeviceMsg::Release { seq, hold_ms, armed } => Some((*seq, "release", policy.on_release(*seq, *hold_ms, *armed, state))),
                            DeviceMsg::Arming { armed } => {
                                tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", serial = %serial, armed, "arming changed");
                                None
                            }
                            DeviceMsg::Heartbeat { .. } => None,
                        };
                        let Some((seq, what, decision)) = decision else { continue };
                        let action = match decision {
                            Decision::Ignore { why } => {
                                tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", serial = %serial, seq, event = what, decision = "ignore", why, "button event ignored");
                                None
                            }
                            Decision::Pause { why } => Some((SwitchState::Paused, format!("office button {serial}: {why}"))),
                            Decision::Resume { hold_ms } => Some((SwitchState::Running, format!("office button {serial}: long hold ({hold_ms} ms)"))),
                        };
                        if let Some((state, reason)) = action {
                            tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", serial = %serial, seq, event = what, decision = %state, reason = %reason, "button decision");
                            pending = Some(Pending { state, reason, until: Instant::now() + RETRY_FOR });
                        }
                    }
                }
            }
            _ = view_rx.changed() => {}
            _ = tick.tick() => {}
        }
        // Act (or retry) on what is pending.
        if let Some(p) = pending.take() {
            pending = apply(&client, &cfg.switch, &actor, p, &view_tx).await;
        }
        let want = show_state(&view_rx.borrow_and_update(), chrono::Utc::now());
        show_tx.send_if_modified(|s| {
            let changed = *s != want;
            if changed {
                tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", light = %want, "button light");
            }
            *s = want;
            changed
        });
    }
    stop.store(true, Ordering::Relaxed);
    watcher.abort();
    // The device thread notices `stop` within one read timeout.
    let _ = tokio::task::spawn_blocking(move || device_thread.join()).await;
    Ok(())
}

/// Sends one pause or resume; returns it back if it should be retried.
async fn apply(
    client: &Client,
    switch: &str,
    actor: &str,
    p: Pending,
    view: &watch::Sender<ControlView>,
) -> Option<Pending> {
    let req = SetStateRequest {
        state: p.state,
        reason: Some(p.reason.clone()),
        source: Some(Source::Button),
        expected_version: None,
        ramp: None,
    };
    match client.set_state(switch, &req).await {
        Ok(s) => {
            tracing::info!(switch = %switch, actor = %actor, source = "button", state = %s.state, version = s.version, reason = %p.reason, "control plane acknowledged");
            view.send_modify(|v| {
                v.switch = Some(s);
                v.reachable = true;
                v.error = None;
            });
            None
        }
        Err(ClientError::Unreachable(e)) if Instant::now() < p.until => {
            tracing::warn!(switch = %switch, actor = %actor, source = "button", error = %e, reason = %p.reason, "control plane unreachable; will retry");
            view.send_modify(|v| v.reachable = false);
            Some(p)
        }
        Err(e) => {
            tracing::error!(switch = %switch, actor = %actor, source = "button", error = %e, reason = %p.reason, "the control plane did not take the change");
            None
        }
    }
}
