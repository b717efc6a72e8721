//! The office button's host side: finds the button (USB HID or serial), turns presses into
//! pause and resume on the control plane, and keeps the button's light in step with what the
//! control plane acknowledged.
//!
//! Why it is shaped so: the decisions are pure and separate from the I/O. [`policy`] decides
//! whether the device may be listened to (hello, protocol version), what a press means
//! (cooldown, arming, long hold, repeats) and what becomes of a change not yet acknowledged;
//! [`led`] decides what the light says; all of it is unit-tested with a fake clock. The rules
//! are those of docs/protocol.md, "What the host does". The devices are blocking (hidapi,
//! serialport), so one thread owns the device and talks to the async side over channels; the
//! async side owns the control-plane connection (event stream plus a worker poll) through
//! `brb-client`, and sends changes one attempt at a time without ever blocking its loop. The
//! connections are never given up on: an unplugged button is looked for every 500 ms, a lost
//! control plane is reconnected with backoff, and the light says which is the case. A press
//! is: it is tried for [`policy::SEND_FOR`], with the light showing "sending", then given up
//! on with an error on the light and in the log, so that it never lands minutes later
//! unseen.

use std::future::Future;
use std::pin::Pin;
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
pub use led::{ControlView, Local, light, show_state};
pub use policy::{
    AttemptResult, Decision, Delivery, Outbox, Outcome, Policy, PolicyConfig, Report, Session,
    Severity, Step,
};

/// How often an absent device is looked for (hot-plug without udev events: a button plugged
/// back in is found within this plus the open time).
pub const RESCAN: Duration = Duration::from_millis(500);
/// A device that says nothing (no heartbeat) for this long is considered gone.
pub const DEVICE_SILENCE: Duration = Duration::from_secs(5);
/// The light's state is repeated this often (the firmware's watchdog expects it).
pub const SHOW_REPEAT: Duration = Duration::from_secs(1);

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

/// One attempt at a change, under way: its id in the [`Outbox`] and how it ended.
type InFlight = Pin<Box<dyn Future<Output = (u64, Result<Switch, AttemptResult>)> + Send>>;

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
    let log = Log {
        switch: &cfg.switch,
        actor: &actor,
    };

    let mut session = Session::new(cfg.policy.clone());
    let mut outbox = Outbox::default();
    let mut in_flight: Option<InFlight> = None;
    let mut device_problem: Option<String> = None;
    let started = tokio::time::Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                let switch_state = acknowledged_state(&view_rx.borrow());
                let outcomes = match ev {
                    DeviceEvent::Connected(d) => {
                        tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", device = %d, "button connected");
                        status.send_replace(DeviceStatus::Connected(d));
                        session.connected(now_ms())
                    }
                    DeviceEvent::Disconnected { device, reason } => {
                        tracing::warn!(switch = %cfg.switch, actor = %actor, source = "button", device = %device, reason = %reason, "button disconnected; looking for it again");
                        status.send_replace(DeviceStatus::Disconnected { device, reason });
                        session.disconnected()
                    }
                    DeviceEvent::Message(m) => {
                        tracing::debug!(switch = %cfg.switch, source = "button", msg = %m, "from the button");
                        session.on_message(&m, now_ms(), switch_state)
                    }
                };
                for o in outcomes {
                    log.outcome(&o);
                    if let Outcome::Act { state, reason, .. } = o
                        && let Some(old) = outbox.submit(state, reason.clone(), now_ms())
                    {
                        tracing::warn!(switch = %cfg.switch, actor = %actor, source = "button", replaced = %old, reason = %reason, "a newer press replaces a change not yet acknowledged");
                    }
                }
            }
            _ = view_rx.changed() => {}
            done = async {
                match in_flight.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                in_flight = None;
                let (id, result) = done;
                let result = match result {
                    Ok(s) => {
                        tracing::info!(switch = %cfg.switch, actor = %actor, source = "button", state = %s.state, version = s.version, "control plane acknowledged");
                        view_tx.send_modify(|v| {
                            // The event stream may already have brought a newer version.
                            if v.switch.as_ref().is_none_or(|c| c.version <= s.version) {
                                v.switch = Some(s);
                            }
                            v.reachable = true;
                            v.error = None;
                        });
                        AttemptResult::Acknowledged
                    }
                    Err(r) => r,
                };
                log.report(&outbox.on_result(id, result, now_ms()));
            }
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for o in session.tick(now) {
            log.outcome(&o);
        }
        if in_flight.is_none() {
            match outbox.poll(now) {
                Step::Attempt(a) => {
                    let deadline = started + Duration::from_millis(a.deadline_ms);
                    in_flight = Some(Box::pin(attempt(
                        client.clone(),
                        cfg.switch.clone(),
                        a,
                        deadline,
                    )));
                }
                Step::GaveUp(r) => log.report(&r),
                Step::Wait => {}
            }
        }
        let problem = session.device_problem(now);
        if problem != device_problem {
            if let Some(p) = &problem {
                tracing::error!(switch = %cfg.switch, actor = %actor, source = "button", serial = %session.serial().unwrap_or("none"), problem = %p, "the button cannot be listened to; its light shows error");
            }
            device_problem = problem;
        }
        let local = Local {
            device_problem: device_problem.is_some(),
            delivery: outbox.delivery(now, acknowledged_state(&view_rx.borrow())),
        };
        let want = led::light(&view_rx.borrow_and_update(), local, chrono::Utc::now());
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

/// The switch state the control plane last acknowledged, `None` when unknown or unreachable.
fn acknowledged_state(v: &ControlView) -> Option<SwitchState> {
    v.switch.as_ref().filter(|_| v.reachable).map(|s| s.state)
}

/// One try at a change, cut at `deadline` (the change's bound): an answer that comes later is
/// not waited for.
async fn attempt(
    client: Client,
    switch: String,
    a: policy::Attempt,
    deadline: tokio::time::Instant,
) -> (u64, Result<Switch, AttemptResult>) {
    let req = SetStateRequest {
        state: a.state,
        reason: Some(a.reason),
        source: Some(Source::Button),
        expected_version: None,
        ramp: None,
        guards: Vec::new(),
    };
    let result = match tokio::time::timeout_at(deadline, client.set_state(&switch, &req)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(AttemptResult::Transient(
            "no answer before the time limit".into(),
        )),
    };
    (a.id, result)
}

/// Whether a failed attempt is worth retrying.
fn classify(e: &ClientError) -> AttemptResult {
    match e {
        ClientError::Unreachable(_) | ClientError::Protocol { .. } => {
            AttemptResult::Transient(e.to_string())
        }
        ClientError::Api { status, .. } if *status == 429 || *status >= 500 => {
            AttemptResult::Transient(e.to_string())
        }
        ClientError::Api { .. } | ClientError::Config(_) => AttemptResult::Refused(e.to_string()),
    }
}

/// The daemon's log lines about presses and changes, with the fields every line carries.
struct Log<'a> {
    switch: &'a str,
    actor: &'a str,
}

impl Log<'_> {
    fn outcome(&self, o: &Outcome) {
        let (switch, actor) = (self.switch, self.actor);
        match o {
            Outcome::Act {
                event,
                serial,
                state,
                reason,
            } => {
                tracing::info!(switch = %switch, actor = %actor, source = "button", serial = %serial, seq = event.seq, event = event.kind, decision = %state, reason = %reason, "button decision");
            }
            Outcome::Ignored {
                event,
                serial,
                why,
                severity,
            } => {
                let serial = serial.as_deref().unwrap_or("none (no hello)");
                match severity {
                    Severity::Info => {
                        tracing::info!(switch = %switch, actor = %actor, source = "button", serial = %serial, seq = event.seq, event = event.kind, decision = "ignore", why = %why, "button event ignored")
                    }
                    Severity::Warn => {
                        tracing::warn!(switch = %switch, actor = %actor, source = "button", serial = %serial, seq = event.seq, event = event.kind, decision = "ignore", why = %why, "button event ignored")
                    }
                    Severity::Error => {
                        tracing::error!(switch = %switch, actor = %actor, source = "button", serial = %serial, seq = event.seq, event = event.kind, decision = "ignore", why = %why, "button event NOT acted on")
                    }
                }
            }
            Outcome::Held { event } => {
                tracing::info!(switch = %switch, actor = %actor, source = "button", seq = event.seq, event = event.kind, "button event held until the device says hello");
            }
            Outcome::Hello { hello, supported } => {
                if *supported {
                    tracing::info!(switch = %switch, actor = %actor, source = "button", serial = %hello.serial, protocol = hello.protocol, firmware = ?hello.firmware, capabilities = hello.capabilities.0, "button says hello");
                } else {
                    tracing::error!(switch = %switch, actor = %actor, source = "button", serial = %hello.serial, protocol = hello.protocol, host_protocol = PROTOCOL_VERSION, firmware = ?hello.firmware, "the button speaks protocol {}, this host only {}: its presses are ignored until it says hello in protocol {}", hello.protocol, PROTOCOL_VERSION, PROTOCOL_VERSION);
                }
            }
            Outcome::Arming { serial, armed } => {
                tracing::info!(switch = %switch, actor = %actor, source = "button", serial = %serial.as_deref().unwrap_or("none (no hello)"), armed, "arming changed");
            }
        }
    }

    fn report(&self, r: &Report) {
        let (switch, actor) = (self.switch, self.actor);
        match r {
            Report::Delivered {
                reason,
                attempts,
                after_ms,
            } => {
                tracing::info!(switch = %switch, actor = %actor, source = "button", reason = %reason, attempts, after_ms, "change delivered");
            }
            Report::Retrying {
                reason,
                error,
                attempts,
            } => {
                // The first failure is news; the rest repeat it until the bound.
                if *attempts == 1 {
                    tracing::warn!(switch = %switch, actor = %actor, source = "button", reason = %reason, error = %error, limit = ?policy::SEND_FOR, "control plane unreachable; retrying, the light shows sending");
                } else {
                    tracing::debug!(switch = %switch, actor = %actor, source = "button", reason = %reason, error = %error, attempts, "retrying");
                }
            }
            Report::GaveUp {
                state,
                reason,
                attempts,
                after_ms,
                error,
            } => {
                tracing::error!(switch = %switch, actor = %actor, source = "button", state = %state, reason = %reason, attempts, after_ms, error = %error, "gave up: the change was NOT made; the light shows error");
            }
            Report::Refused {
                state,
                reason,
                error,
            } => {
                tracing::error!(switch = %switch, actor = %actor, source = "button", state = %state, reason = %reason, error = %error, "the control plane refused the change; the light shows error");
            }
            Report::Superseded {
                reason,
                acknowledged,
            } => {
                tracing::info!(switch = %switch, actor = %actor, source = "button", reason = %reason, acknowledged, "an attempt for a replaced change ended");
            }
        }
    }
}
