//! What the host does with a device's messages (docs/protocol.md, "What the host does").
//! Pure: messages, the switch state and a millisecond clock in, decisions out, so every rule is
//! unit-tested with a fake clock, without a device or a server.
//!
//! Three layers, each with one job:
//! - [`Policy`]: what one press or release means (cooldown, arming, long hold, repeats).
//! - [`Session`]: whether the device may be listened to at all (it said hello, in a protocol
//!   version this host speaks) and under which serial its presses are recorded.
//! - [`Outbox`]: what becomes of a change the control plane has not acknowledged yet: retried
//!   for a bounded time, then given up on, visibly.

use std::collections::VecDeque;
use std::time::Duration;

use brb_api::SwitchState;
use brb_protocol::{DeviceMsg, Hello, PROTOCOL_VERSION};

/// Presses that arrive before the device said hello are held this long for its hello; a
/// device that has not said hello this long after it was opened is reported (log and light).
/// Three of the host's once-a-second pings.
pub const HELLO_WAIT: Duration = Duration::from_secs(3);
/// A change is tried for at most this long after the press that asked for it.
pub const SEND_FOR: Duration = Duration::from_secs(10);
/// Pause between two attempts to send a change.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How long the light says "error" after a change was given up on, unless the switch reaches
/// the state it asked for first or the button is pressed again.
pub const FAILED_SHOW: Duration = Duration::from_secs(30);
/// Most presses and releases held while waiting for a hello; older ones are dropped (loudly).
const MAX_HELD: usize = 8;

/// Why [`Policy`] ignores a press or release that repeats the previous one's `seq`.
pub const REPEATED_SEQ: &str = "repeats the sequence number of the previous one";

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How presses are turned into pause and resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// A release after at least this long a hold, of a press that began while the switch was
    /// paused, resumes. `None`: the button never resumes (resume from the CLI or the app).
    pub long_hold: Option<Duration>,
    /// Presses within this time of the last accepted press count as that same press.
    pub cooldown: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            long_hold: Some(Duration::from_secs(2)),
            cooldown: Duration::from_millis(1500),
        }
    }
}

/// What to do about one device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Pause { why: &'static str },
    Resume { hold_ms: u32 },
    Ignore { why: &'static str },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u16,
    began_paused: bool,
}

/// The policy's memory of one device session (reset when the device says hello: it may have
/// rebooted and restarted its sequence numbers).
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    last_press_seq: Option<u16>,
    last_release_seq: Option<u16>,
    last_accepted_ms: Option<u64>,
    pending: Option<Pending>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy {
            cfg,
            last_press_seq: None,
            last_release_seq: None,
            last_accepted_ms: None,
            pending: None,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// A new device session: forget sequence numbers (not the cooldown, which protects the
    /// control plane whatever the device does).
    pub fn new_session(&mut self) {
        self.last_press_seq = None;
        self.last_release_seq = None;
        self.pending = None;
    }

    /// The button went down. `switch`: the control plane's last acknowledged state, `None`
    /// when unknown (unreachable): then a press still tries to pause. The press's own `armed`
    /// decides, never an earlier `arming` message: it is the device's state at the instant of
    /// the press, sent with it, while an `arming` message can be lost or late.
    pub fn on_press(
        &mut self,
        seq: u16,
        armed: bool,
        now_ms: u64,
        switch: Option<SwitchState>,
    ) -> Decision {
        if self.last_press_seq == Some(seq) {
            // The protocol never retransmits, and a restarted device says hello (which starts
            // a new session): the same seq can only be the same press, seen twice.
            return Decision::Ignore { why: REPEATED_SEQ };
        }
        self.last_press_seq = Some(seq);
        self.pending = None;
        if !armed {
            return Decision::Ignore {
                why: "disarmed: the cover is closed or the key is off",
            };
        }
        if let Some(last) = self.last_accepted_ms
            && now_ms.saturating_sub(last) < self.cfg.cooldown.as_millis() as u64
        {
            return Decision::Ignore {
                why: "within the cooldown of the previous press",
            };
        }
        self.last_accepted_ms = Some(now_ms);
        let began_paused = switch == Some(SwitchState::Paused);
        self.pending = Some(Pending { seq, began_paused });
        if began_paused {
            Decision::Ignore {
                why: "already paused (hold to resume)",
            }
        } else {
            Decision::Pause { why: "short press" }
        }
    }

    /// The button came up after `hold_ms`, as the device measured it: the host's clock does not
    /// decide a long hold (the link's latency and buffering are not the person's hold).
    pub fn on_release(
        &mut self,
        seq: u16,
        hold_ms: u32,
        armed: bool,
        switch: Option<SwitchState>,
    ) -> Decision {
        if self.last_release_seq == Some(seq) {
            return Decision::Ignore { why: REPEATED_SEQ };
        }
        self.last_release_seq = Some(seq);
        let Some(p) = self.pending.take().filter(|p| p.seq == seq) else {
            return Decision::Ignore {
                why: "release of a press that was not accepted",
            };
        };
        let Some(long) = self.cfg.long_hold else {
            return Decision::Ignore {
                why: "resume from the button is disabled",
            };
        };
        if u128::from(hold_ms) < long.as_millis() {
            return Decision::Ignore { why: "short press" };
        }
        if !p.began_paused || switch != Some(SwitchState::Paused) {
            // Holding the button to pause must not resume on release.
            return Decision::Ignore {
                why: "long hold, but the switch was not paused when it began",
            };
        }
        if !armed {
            return Decision::Ignore {
                why: "disarmed: the cover is closed or the key is off",
            };
        }
        Decision::Resume { hold_ms }
    }
}

// ---------------------------------------------------------------------------------------------
// Session: may the device be listened to, and who is it?

/// Who is at the other end of the link, as far as the host knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// No device open.
    Absent,
    /// Opened at `since_ms`; no hello on this connection yet.
    Waiting { since_ms: u64 },
    /// Said hello in this host's protocol version.
    Greeted { serial: String },
    /// Said hello in another protocol version: nothing it sends is acted on.
    Unsupported { serial: String, protocol: u8 },
}

/// How loud a note is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

/// A press or a release, as the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// `"press"` or `"release"`.
    pub kind: &'static str,
    pub seq: u16,
}

/// A press or a release: what waits for a hello and what the [`Policy`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Press { seq: u16, armed: bool },
    Release { seq: u16, hold_ms: u32, armed: bool },
}

impl Input {
    fn of(m: &DeviceMsg) -> Option<Input> {
        match *m {
            DeviceMsg::Press { seq, armed } => Some(Input::Press { seq, armed }),
            DeviceMsg::Release {
                seq,
                hold_ms,
                armed,
            } => Some(Input::Release {
                seq,
                hold_ms,
                armed,
            }),
            DeviceMsg::Hello(_) | DeviceMsg::Arming { .. } | DeviceMsg::Heartbeat { .. } => None,
        }
    }

    fn event(self) -> Event {
        match self {
            Input::Press { seq, .. } => Event { kind: "press", seq },
            Input::Release { seq, .. } => Event {
                kind: "release",
                seq,
            },
        }
    }
}

/// What the daemon must do, or say, about a device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ask the control plane for `state`; `reason` goes into the audit.
    Act {
        event: Event,
        serial: String,
        state: SwitchState,
        reason: String,
    },
    /// Not acted on, and why.
    Ignored {
        event: Event,
        serial: Option<String>,
        why: String,
        severity: Severity,
    },
    /// Kept until the device says hello (at most [`HELLO_WAIT`]).
    Held { event: Event },
    /// The device said hello; `supported`: in this host's protocol version.
    Hello { hello: Hello, supported: bool },
    /// The arming input changed (reported, never a gate: see [`Policy::on_press`]).
    Arming { serial: Option<String>, armed: bool },
}

/// The host's memory of the device on the current link: its greeting, the presses waiting for
/// it, and the press [`Policy`].
#[derive(Debug, Clone)]
pub struct Session {
    policy: Policy,
    greeting: Greeting,
    held: VecDeque<(Input, u64)>,
}

impl Session {
    pub fn new(cfg: PolicyConfig) -> Self {
        Session {
            policy: Policy::new(cfg),
            greeting: Greeting::Absent,
            held: VecDeque::new(),
        }
    }

    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The serial presses are recorded under, once the device said hello.
    pub fn serial(&self) -> Option<&str> {
        match &self.greeting {
            Greeting::Greeted { serial } | Greeting::Unsupported { serial, .. } => Some(serial),
            Greeting::Absent | Greeting::Waiting { .. } => None,
        }
    }

    /// A device was opened: whoever was there before is forgotten (a replugged cable may bring
    /// another button, or the same one restarted), until it says hello.
    pub fn connected(&mut self, now_ms: u64) -> Vec<Outcome> {
        let out = self.drop_held("the device went away before it said hello");
        self.greeting = Greeting::Waiting { since_ms: now_ms };
        self.policy.new_session();
        out
    }

    /// The device went away.
    pub fn disconnected(&mut self) -> Vec<Outcome> {
        let out = self.drop_held("the device went away before it said hello");
        self.greeting = Greeting::Absent;
        self.policy.new_session();
        out
    }

    /// One message from the device, received at `now_ms`. `switch`: the control plane's last
    /// acknowledged state, `None` when unknown.
    pub fn on_message(
        &mut self,
        msg: &DeviceMsg,
        now_ms: u64,
        switch: Option<SwitchState>,
    ) -> Vec<Outcome> {
        match msg {
            DeviceMsg::Hello(h) => self.hello(h, switch),
            DeviceMsg::Press { .. } | DeviceMsg::Release { .. } => {
                let Some(input) = Input::of(msg) else {
                    return Vec::new();
                };
                let event = input.event();
                match &self.greeting {
                    Greeting::Greeted { .. } => vec![self.decide(input, now_ms, switch)],
                    Greeting::Unsupported { serial, protocol } => vec![Outcome::Ignored {
                        event,
                        serial: Some(serial.clone()),
                        why: unsupported(*protocol),
                        severity: Severity::Error,
                    }],
                    Greeting::Waiting { .. } | Greeting::Absent => {
                        // Which protocol these bytes are in is not known yet: keep them until
                        // the hello says.
                        let mut out = Vec::new();
                        if self.held.len() == MAX_HELD
                            && let Some((old, _)) = self.held.pop_front()
                        {
                            out.push(Outcome::Ignored {
                                event: old.event(),
                                serial: None,
                                why: format!(
                                    "more than {MAX_HELD} presses and releases before a hello"
                                ),
                                severity: Severity::Error,
                            });
                        }
                        self.held.push_back((input, now_ms));
                        out.push(Outcome::Held { event });
                        out
                    }
                }
            }
            DeviceMsg::Arming { armed } => vec![Outcome::Arming {
                serial: self.serial().map(str::to_string),
                armed: *armed,
            }],
            DeviceMsg::Heartbeat { .. } => Vec::new(),
        }
    }

    /// Time passes: held presses whose device has not said hello in time are dropped.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Some(&(input, at)) = self.held.front()
            && now_ms.saturating_sub(at) >= ms(HELLO_WAIT)
        {
            self.held.pop_front();
            out.push(Outcome::Ignored {
                event: input.event(),
                serial: None,
                why: format!(
                    "the device did not say hello within {HELLO_WAIT:?}, so what it sends cannot be trusted"
                ),
                severity: Severity::Error,
            });
        }
        out
    }

    /// Something about the device a person must fix, for the log and the light (error).
    pub fn device_problem(&self, now_ms: u64) -> Option<String> {
        match &self.greeting {
            Greeting::Unsupported { protocol, .. } => Some(unsupported(*protocol)),
            Greeting::Waiting { since_ms }
                if now_ms.saturating_sub(*since_ms) >= ms(HELLO_WAIT) =>
            {
                Some(format!(
                    "the device has not said hello within {HELLO_WAIT:?}; its presses are not acted on"
                ))
            }
            _ => None,
        }
    }

    fn hello(&mut self, h: &Hello, switch: Option<SwitchState>) -> Vec<Outcome> {
        let supported = h.protocol == PROTOCOL_VERSION;
        // A hello starts a new session either way: a device restarts its sequence numbers at
        // boot, and a hello is what it says then.
        self.policy.new_session();
        let mut out = vec![Outcome::Hello {
            hello: h.clone(),
            supported,
        }];
        if supported {
            self.greeting = Greeting::Greeted {
                serial: h.serial.clone(),
            };
            // Held presses came over this same link, so this hello names their device.
            let held: Vec<_> = self.held.drain(..).collect();
            for (input, at) in held {
                out.push(self.decide(input, at, switch));
            }
        } else {
            self.greeting = Greeting::Unsupported {
                serial: h.serial.clone(),
                protocol: h.protocol,
            };
            out.extend(self.drop_held(&unsupported(h.protocol)));
        }
        out
    }

    fn drop_held(&mut self, why: &str) -> Vec<Outcome> {
        self.held
            .drain(..)
            .map(|(input, _)| Outcome::Ignored {
                event: input.event(),
                serial: None,
                why: why.to_string(),
                severity: Severity::Error,
            })
            .collect()
    }

    /// A press or release of a greeted device, through the [`Policy`].
    fn decide(&mut self, input: Input, at_ms: u64, switch: Option<SwitchState>) -> Outcome {
        let serial = self.serial().unwrap_or("unknown").to_string();
        let event = input.event();
        let decision = match input {
            Input::Press { seq, armed } => self.policy.on_press(seq, armed, at_ms, switch),
            Input::Release {
                seq,
                hold_ms,
                armed,
            } => self.policy.on_release(seq, hold_ms, armed, switch),
        };
        match decision {
            Decision::Pause { why } => Outcome::Act {
                event,
                reason: format!("office button {serial}: {why}"),
                serial,
                state: SwitchState::Paused,
            },
            Decision::Resume { hold_ms } => Outcome::Act {
                event,
                reason: format!("office button {serial}: long hold ({hold_ms} ms)"),
                serial,
                state: SwitchState::Running,
            },
            Decision::Ignore { why } => Outcome::Ignored {
                event,
                serial: Some(serial),
                why: why.to_string(),
                severity: if why == REPEATED_SEQ {
                    Severity::Warn
                } else {
                    Severity::Info
                },
            },
        }
    }
}

fn unsupported(protocol: u8) -> String {
    format!("the device speaks protocol {protocol}; this host speaks only {PROTOCOL_VERSION}")
}

// ---------------------------------------------------------------------------------------------
// Outbox: a change on its way to the control plane.

/// One try at sending a change, to be made by the daemon and answered with
/// [`Outbox::on_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: u64,
    pub state: SwitchState,
    pub reason: String,
    /// The attempt must be cut at this time (the change's [`SEND_FOR`] bound).
    pub deadline_ms: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The control plane committed it.
    Acknowledged,
    /// Unreachable, no answer in time, overloaded (429) or unavailable (5xx): worth retrying.
    Transient(String),
    /// The control plane answered no (token refused, out of scope, switch missing): final.
    Refused(String),
}

/// What the log says about a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Delivered {
        reason: String,
        attempts: u32,
        after_ms: u64,
    },
    Retrying {
        reason: String,
        error: String,
        attempts: u32,
    },
    GaveUp {
        state: SwitchState,
        reason: String,
        attempts: u32,
        after_ms: u64,
        error: String,
    },
    Refused {
        state: SwitchState,
        reason: String,
        error: String,
    },
    /// The answer to an attempt for a change a newer press replaced.
    Superseded { reason: String, acknowledged: bool },
}

/// What the outbox does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Wait,
    Attempt(Attempt),
    GaveUp(Report),
}

/// What the light must say for the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing on its way, nothing failed lately: the control plane's state.
    Quiet,
    /// A change is on its way.
    Sending,
    /// A change was given up on.
    Failed,
}

#[derive(Debug, Clone)]
struct Change {
    id: u64,
    state: SwitchState,
    reason: String,
    since_ms: u64,
    next_ms: u64,
    attempts: u32,
    error: String,
}

impl Change {
    fn deadline(&self) -> u64 {
        self.since_ms.saturating_add(ms(SEND_FOR))
    }
}

/// The one change (the newest) not yet acknowledged, tried for at most [`SEND_FOR`] after its
/// press, one attempt at a time.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    next_id: u64,
    current: Option<Change>,
    /// The attempt under way: its change's id and reason.
    in_flight: Option<(u64, String)>,
    /// The state a given-up change asked for, and when it was given up.
    failed: Option<(SwitchState, u64)>,
}

impl Outbox {
    /// A new change. It replaces an unsent older one (returned, for the log): the newest press
    /// is what the person wants now, and its bound starts now.
    pub fn submit(&mut self, state: SwitchState, reason: String, now_ms: u64) -> Option<String> {
        self.failed = None;
        self.next_id += 1;
        let old = self.current.replace(Change {
            id: self.next_id,
            state,
            reason,
            since_ms: now_ms,
            next_ms: now_ms,
            attempts: 0,
            error: String::new(),
        });
        old.map(|c| c.reason)
    }

    /// The next attempt to make, if one is due; or the change given up on, when its time is
    /// over.
    pub fn poll(&mut self, now_ms: u64) -> Step {
        if self.in_flight.is_some() {
            return Step::Wait;
        }
        let Some(deadline) = self.current.as_ref().map(Change::deadline) else {
            return Step::Wait;
        };
        if now_ms >= deadline
            && let Some(c) = self.current.take()
        {
            return Step::GaveUp(self.give_up(c, now_ms));
        }
        match self.current.as_mut() {
            Some(c) if now_ms >= c.next_ms => {
                c.attempts += 1;
                self.in_flight = Some((c.id, c.reason.clone()));
                Step::Attempt(Attempt {
                    id: c.id,
                    state: c.state,
                    reason: c.reason.clone(),
                    deadline_ms: deadline,
                })
            }
            _ => Step::Wait,
        }
    }

    /// The end of attempt `id`.
    pub fn on_result(&mut self, id: u64, result: AttemptResult, now_ms: u64) -> Report {
        let flying = self.in_flight.take_if(|(i, _)| *i == id);
        let Some(c) = self.current.as_mut().filter(|c| c.id == id) else {
            return Report::Superseded {
                reason: flying.map(|(_, r)| r).unwrap_or_default(),
                acknowledged: result == AttemptResult::Acknowledged,
            };
        };
        match result {
            AttemptResult::Acknowledged => {
                let report = Report::Delivered {
                    reason: c.reason.clone(),
                    attempts: c.attempts,
                    after_ms: now_ms.saturating_sub(c.since_ms),
                };
                self.current = None;
                report
            }
            AttemptResult::Refused(error) => {
                let report = Report::Refused {
                    state: c.state,
                    reason: c.reason.clone(),
                    error,
                };
                self.failed = Some((c.state, now_ms));
                self.current = None;
                report
            }
            AttemptResult::Transient(error) => {
                c.error = error.clone();
                if now_ms < c.deadline() {
                    c.next_ms = now_ms.saturating_add(ms(RETRY_EVERY));
                    return Report::Retrying {
                        reason: c.reason.clone(),
                        error,
                        attempts: c.attempts,
                    };
                }
                match self.current.take() {
                    Some(c) => self.give_up(c, now_ms),
                    None => Report::Superseded {
                        reason: String::new(),
                        acknowledged: false,
                    },
                }
            }
        }
    }

    /// What the light says for the outbox. `switch`: the control plane's acknowledged state
    /// (`None` when unreachable): a failure stops showing once the switch is where the failed
    /// change wanted it, whoever put it there.
    pub fn delivery(&mut self, now_ms: u64, switch: Option<SwitchState>) -> Delivery {
        if self.current.is_some() {
            return Delivery::Sending;
        }
        match self.failed {
            Some((state, at))
                if now_ms.saturating_sub(at) < ms(FAILED_SHOW) && switch != Some(state) =>
            {
                Delivery::Failed
            }
            Some(_) => {
                self.failed = None;
                Delivery::Quiet
            }
            None => Delivery::Quiet,
        }
    }

    fn give_up(&mut self, c: Change, now_ms: u64) -> Report {
        self.failed = Some((c.state, now_ms));
        Report::GaveUp {
            state: c.state,
            reason: c.reason,
            attempts: c.attempts,
            after_ms: now_ms.saturating_sub(c.since_ms),
            error: if c.error.is_empty() {
                "no attempt finished in time".into()
            } else {
                c.error
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SwitchState::{Paused, Running};

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default())
    }

    #[test]
    fn short_press_pauses_and_its_release_does_nothing() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, true, 0, Some(Running)),
            Decision::Pause { .. }
        ));
        assert!(matches!(
            p.on_release(1, 150, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn long_hold_resumes_only_when_it_began_paused() {
        let mut p = policy();
        // Holding while running: pause on press, nothing on release.
        assert!(matches!(
            p.on_press(1, true, 0, Some(Running)),
            Decision::Pause { .. }
        ));
        assert!(matches!(
            p.on_release(1, 3000, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
        // A later hold while paused resumes.
        assert!(matches!(
            p.on_press(2, true, 10_000, Some(Paused)),
            Decision::Ignore { .. }
        ));
        assert_eq!(
            p.on_release(2, 2000, true, Some(Paused)),
            Decision::Resume { hold_ms: 2000 }
        );
        // One millisecond short is not a long hold.
        p.on_press(3, true, 20_000, Some(Paused));
        assert!(matches!(
            p.on_release(3, 1999, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn resume_can_be_disabled() {
        let mut p = Policy::new(PolicyConfig {
            long_hold: None,
            ..PolicyConfig::default()
        });
        p.on_press(1, true, 0, Some(Paused));
        assert!(matches!(
            p.on_release(1, 60_000, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn disarmed_presses_are_ignored() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, false, 0, Some(Running)),
            Decision::Ignore { .. }
        ));
        // And the ignored press does not start a cooldown.
        assert!(matches!(
            p.on_press(2, true, 10, Some(Running)),
            Decision::Pause { .. }
        ));
        // Disarmed during a resume hold: no resume.
        p.on_press(3, true, 10_000, Some(Paused));
        assert!(matches!(
            p.on_release(3, 2500, false, Some(Paused)),
            Decision::Ignore { .. }
        ));
    }

    #[test]
    fn presses_within_the_cooldown_are_one_press() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, true, 1000, Some(Running)),
            Decision::Pause { .. }
        ));
        p.on_release(1, 80, true, Some(Running));
        assert!(matches!(
            p.on_press(2, true, 1400, Some(Running)),
            Decision::Ignore { .. }
        ));
        // Its release is not a resume even if held long.
        assert!(matches!(
            p.on_release(2, 5000, true, Some(Paused)),
            Decision::Ignore { .. }
        ));
        assert!(matches!(
            p.on_press(3, true, 2600, Some(Running)),
            Decision::Pause { .. }
        ));
    }

    #[test]
    fn duplicate_sequence_numbers_are_dropped_until_a_new_session() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(7, true, 0, Some(Running)),
            Decision::Pause { .. }
        ));
        assert_eq!(
            p.on_press(7, true, 10_000, Some(Running)),
            Decision::Ignore { why: REPEATED_SEQ }
        );
        // The device rebooted (hello): seq 7 may come again and is a real press.
        p.new_session();
        assert!(matches!(
            p.on_press(7, true, 20_000, Some(Running)),
            Decision::Pause { .. }
        ));
    }

    #[test]
    fn unknown_state_still_tries_to_pause() {
        let mut p = policy();
        assert!(matches!(
            p.on_press(1, true, 0, None),
            Decision::Pause { .. }
        ));
    }

    // -----------------------------------------------------------------------------------------
    // Session

    fn hello(protocol: u8, serial: &str) -> DeviceMsg {
        DeviceMsg::Hello(Hello {
            protocol,
            firmware: [1, 0, 0],
            capabilities: brb_protocol::Capabilities(0x0b),
            serial: serial.into(),
        })
    }

    fn press(seq: u16) -> DeviceMsg {
        DeviceMsg::Press { seq, armed: true }
    }

    fn release(seq: u16, hold_ms: u32) -> DeviceMsg {
        DeviceMsg::Release {
            seq,
            hold_ms,
            armed: true,
        }
    }

    fn session() -> Session {
        Session::new(PolicyConfig::default())
    }

    /// The reasons of the changes the outcomes ask for.
    fn acts(out: &[Outcome]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Outcome::Act { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn errors(out: &[Outcome]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Outcome::Ignored {
                    why,
                    severity: Severity::Error,
                    ..
                } => Some(why.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_device_in_another_protocol_is_not_acted_on_from_boot() {
        let mut s = session();
        s.connected(0);
        let out = s.on_message(&hello(2, "V2-0001"), 10, Some(Running));
        assert_eq!(
            out,
            vec![Outcome::Hello {
                hello: Hello {
                    protocol: 2,
                    firmware: [1, 0, 0],
                    capabilities: brb_protocol::Capabilities(0x0b),
                    serial: "V2-0001".into()
                },
                supported: false
            }]
        );
        for (i, m) in [press(1), release(1, 3000), press(2)].iter().enumerate() {
            let out = s.on_message(m, 100 + 5000 * i as u64, Some(Running));
            assert!(acts(&out).is_empty(), "{out:?}");
            let e = errors(&out);
            assert_eq!(e.len(), 1, "{out:?}");
            assert!(e[0].contains("protocol 2"), "{e:?}");
        }
        assert!(s.device_problem(20_000).unwrap().contains("protocol 2"));
        // Hello in this host's protocol: listened to again.
        s.on_message(&hello(PROTOCOL_VERSION, "V1-0001"), 20_000, Some(Running));
        assert_eq!(s.device_problem(20_000), None);
        assert_eq!(
            acts(&s.on_message(&press(3), 20_100, Some(Running))),
            vec!["office button V1-0001: short press"]
        );
    }

    #[test]
    fn a_re_hello_in_another_protocol_mid_session_stops_presses() {
        let mut s = session();
        s.connected(0);
        s.on_message(&hello(1, "BRB-0001"), 10, Some(Running));
        assert_eq!(acts(&s.on_message(&press(1), 100, Some(Running))).len(), 1);
        s.on_message(&hello(2, "BRB-0001"), 5_000, Some(Paused));
        assert!(s.device_problem(5_000).is_some());
        // Not a pause, not a resume (it began paused and is held long).
        let out = s.on_message(&press(2), 10_000, Some(Running));
        assert!(acts(&out).is_empty() && errors(&out).len() == 1, "{out:?}");
        s.on_message(&press(3), 20_000, Some(Paused));
        let out = s.on_message(&release(3, 5000), 25_000, Some(Paused));
        assert!(acts(&out).is_empty() && errors(&out).len() == 1, "{out:?}");
    }

    #[test]
    fn presses_before_a_hello_wait_for_it_and_take_its_serial() {
        let mut s = session();
        s.connected(0);
        s.on_message(&hello(1, "OLD-0001"), 10, Some(Running));
        assert_eq!(s.serial(), Some("OLD-0001"));
        // Replugged: whoever is there now is not OLD-0001 until it says so.
        s.disconnected();
        s.connected(10_000);
        assert_eq!(s.serial(), None);
        let out = s.on_message(&press(1), 10_100, Some(Running));
        assert_eq!(
            out,
            vec![Outcome::Held {
                event: Event {
                    kind: "press",
                    seq: 1
                }
            }]
        );
        // Within the wait, nothing is dropped; then the hello names the device.
        assert!(s.tick(10_100 + ms(HELLO_WAIT) - 1).is_empty());
        let out = s.on_message(&hello(1, "NEW-0002"), 11_000, Some(Running));
        assert_eq!(acts(&out), vec!["office button NEW-0002: short press"]);
        // The held press started the cooldown at its own arrival, not at the hello.
        assert!(acts(&s.on_message(&press(2), 11_500, Some(Running))).is_empty());
        assert_eq!(
            acts(&s.on_message(&press(3), 11_600, Some(Running))).len(),
            1
        );
    }

    #[test]
    fn presses_before_a_hello_that_never_comes_are_dropped_loudly() {
        let mut s = session();
        s.connected(0);
        assert_eq!(s.device_problem(ms(HELLO_WAIT) - 1), None);
        assert!(s.device_problem(ms(HELLO_WAIT)).is_some());
        s.on_message(&press(1), 5_000, None);
        assert!(s.tick(5_000 + ms(HELLO_WAIT) - 1).is_empty());
        let out = s.tick(5_000 + ms(HELLO_WAIT));
        assert_eq!(errors(&out).len(), 1, "{out:?}");
        assert!(acts(&out).is_empty());
        // A hello after that does not bring it back: it is late and was reported dropped.
        let out = s.on_message(&hello(1, "LATE-1"), 9_000, None);
        assert!(acts(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn held_presses_are_dropped_by_an_unsupported_hello_or_an_unplug() {
        let mut s = session();
        s.connected(0);
        s.on_message(&press(1), 100, None);
        let out = s.on_message(&hello(9, "X"), 200, None);
        assert!(acts(&out).is_empty());
        assert!(errors(&out)[0].contains("protocol 9"), "{out:?}");

        let mut s = session();
        s.connected(0);
        s.on_message(&press(1), 100, None);
        assert_eq!(errors(&s.disconnected()).len(), 1);
        s.connected(1_000);
        assert!(acts(&s.on_message(&hello(1, "B"), 1_100, None)).is_empty());
    }

    #[test]
    fn what_is_held_is_bounded() {
        let mut s = session();
        s.connected(0);
        let mut dropped = 0;
        for i in 0..(MAX_HELD as u16 + 3) {
            dropped += errors(&s.on_message(&press(i + 1), u64::from(i), None)).len();
        }
        assert_eq!(dropped, 3);
        // The newest are kept: the last press is among them.
        let out = s.on_message(&hello(1, "B"), 50, None);
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, Outcome::Ignored { .. } | Outcome::Act { .. }))
                .count(),
            MAX_HELD
        );
    }

    #[test]
    fn the_press_s_own_armed_flag_decides_not_the_arming_message() {
        let mut s = session();
        s.connected(0);
        s.on_message(&hello(1, "B"), 0, Some(Running));
        // A stale "disarmed" report does not stop an armed press...
        s.on_message(&DeviceMsg::Arming { armed: false }, 10, Some(Running));
        assert_eq!(acts(&s.on_message(&press(1), 20, Some(Running))).len(), 1);
        // ...and a stale "armed" report does not make a disarmed press count.
        s.on_message(&DeviceMsg::Arming { armed: true }, 5_000, Some(Running));
        let out = s.on_message(
            &DeviceMsg::Press {
                seq: 2,
                armed: false,
            },
            5_010,
            Some(Running),
        );
        assert!(acts(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn the_device_s_hold_ms_decides_a_long_hold_not_the_host_s_clock() {
        let mut s = session();
        s.connected(0);
        s.on_message(&hello(1, "B"), 0, Some(Paused));
        // Press and release arrive 10 ms apart (a stalled link), the device held it 2.5 s.
        s.on_message(&press(1), 1_000, Some(Paused));
        assert_eq!(
            acts(&s.on_message(&release(1, 2500), 1_010, Some(Paused))),
            vec!["office button B: long hold (2500 ms)"]
        );
        // Arriving 9 s apart, but the device says 1 s: not a long hold.
        s.on_message(&press(2), 10_000, Some(Paused));
        assert!(acts(&s.on_message(&release(2, 1000), 19_000, Some(Paused))).is_empty());
    }

    #[test]
    fn a_repeated_seq_is_the_same_press_and_is_logged_as_a_warning() {
        let mut s = session();
        s.connected(0);
        s.on_message(&hello(1, "B"), 0, Some(Running));
        assert_eq!(acts(&s.on_message(&press(5), 10, Some(Running))).len(), 1);
        let out = s.on_message(&press(5), 60_000, Some(Running));
        assert!(
            matches!(
                &out[..],
                [Outcome::Ignored {
                    severity: Severity::Warn,
                    why,
                    ..
                }] if why == REPEATED_SEQ
            ),
            "{out:?}"
        );
        // The device restarted (hello): seq 5 is a new press.
        s.on_message(&hello(1, "B"), 61_000, Some(Running));
        assert_eq!(
            acts(&s.on_message(&press(5), 62_000, Some(Running))).len(),
            1
        );
    }

    // -----------------------------------------------------------------------------------------
    // Outbox

    fn attempt(step: Step) -> Attempt {
        match step {
            Step::Attempt(a) => a,
            other => panic!("expected an attempt, got {other:?}"),
        }
    }

    #[test]
    fn a_reachable_control_plane_takes_the_change_at_once() {
        let mut o = Outbox::default();
        assert_eq!(o.delivery(0, Some(Running)), Delivery::Quiet);
        o.submit(Paused, "office button B: short press".into(), 1_000);
        assert_eq!(o.delivery(1_000, Some(Running)), Delivery::Sending);
        let a = attempt(o.poll(1_000));
        assert_eq!(a.deadline_ms, 1_000 + ms(SEND_FOR));
        // One attempt at a time.
        assert_eq!(o.poll(1_001), Step::Wait);
        assert!(matches!(
            o.on_result(a.id, AttemptResult::Acknowledged, 1_040),
            Report::Delivered {
                attempts: 1,
                after_ms: 40,
                ..
            }
        ));
        assert_eq!(o.delivery(1_040, Some(Paused)), Delivery::Quiet);
        assert_eq!(o.poll(2_000), Step::Wait);
    }

    #[test]
    fn an_unreachable_control_plane_is_retried_for_a_bounded_time_then_given_up_visibly() {
        let mut o = Outbox::default();
        o.submit(Paused, "office button B: short press".into(), 0);
        let mut t = 0;
        let mut attempts = 0;
        let gave_up = loop {
            match o.poll(t) {
                Step::Attempt(a) => {
                    attempts += 1;
                    assert!(t < ms(SEND_FOR), "an attempt started at {t} ms");
                    assert_eq!(a.deadline_ms, ms(SEND_FOR));
                    assert_eq!(o.delivery(t, None), Delivery::Sending);
                    // Connection refused after 30 ms.
                    t += 30;
                    let r = o.on_result(a.id, AttemptResult::Transient("refused".into()), t);
                    if let Report::GaveUp { .. } = r {
                        break r;
                    }
                    assert!(matches!(r, Report::Retrying { .. }), "{r:?}");
                }
                Step::GaveUp(r) => break r,
                Step::Wait => assert_eq!(o.delivery(t, None), Delivery::Sending),
            }
            t += 10;
        };
        assert!(
            matches!(gave_up, Report::GaveUp { state: Paused, .. }),
            "{gave_up:?}"
        );
        assert!(
            t >= ms(SEND_FOR) && t < ms(SEND_FOR) + 100,
            "gave up at {t}"
        );
        // Every RETRY_EVERY, within the bound.
        let expected = ms(SEND_FOR) / (ms(RETRY_EVERY) + 30);
        assert!(
            attempts >= expected && attempts <= expected + 1,
            "{attempts}"
        );
        // Then: error on the light, for FAILED_SHOW, and nothing more is sent.
        assert_eq!(o.delivery(t, None), Delivery::Failed);
        assert_eq!(o.poll(t + 1_000), Step::Wait);
        assert_eq!(
            o.delivery(t + ms(FAILED_SHOW) - 1, Some(Running)),
            Delivery::Failed
        );
        assert_eq!(
            o.delivery(t + ms(FAILED_SHOW), Some(Running)),
            Delivery::Quiet
        );
    }

    #[test]
    fn an_attempt_that_ends_after_the_bound_is_not_retried() {
        let mut o = Outbox::default();
        o.submit(Paused, "p".into(), 0);
        let a = attempt(o.poll(0));
        // The daemon cut it at its deadline.
        let r = o.on_result(
            a.id,
            AttemptResult::Transient("no answer".into()),
            a.deadline_ms,
        );
        assert!(matches!(r, Report::GaveUp { attempts: 1, .. }), "{r:?}");
        assert_eq!(o.delivery(a.deadline_ms, None), Delivery::Failed);
    }

    #[test]
    fn a_failure_stops_showing_when_the_switch_gets_there_or_the_button_is_pressed_again() {
        let mut o = Outbox::default();
        o.submit(Paused, "p".into(), 0);
        let a = attempt(o.poll(0));
        o.on_result(a.id, AttemptResult::Refused("403".into()), 10);
        assert_eq!(o.delivery(20, Some(Running)), Delivery::Failed);
        // Someone paused from the CLI: the light shows the truth again.
        assert_eq!(o.delivery(30, Some(Paused)), Delivery::Quiet);
        assert_eq!(o.delivery(40, Some(Running)), Delivery::Quiet);

        o.submit(Paused, "p".into(), 100);
        let a = attempt(o.poll(100));
        o.on_result(a.id, AttemptResult::Refused("403".into()), 110);
        assert_eq!(o.delivery(120, None), Delivery::Failed);
        o.submit(Paused, "again".into(), 200);
        assert_eq!(o.delivery(200, None), Delivery::Sending);
    }

    #[test]
    fn a_refusal_is_final() {
        let mut o = Outbox::default();
        o.submit(Running, "office button B: long hold (2500 ms)".into(), 0);
        let a = attempt(o.poll(0));
        let r = o.on_result(a.id, AttemptResult::Refused("out of scope".into()), 5);
        assert!(matches!(r, Report::Refused { state: Running, .. }), "{r:?}");
        assert_eq!(o.poll(1_000), Step::Wait);
        assert_eq!(o.delivery(1_000, Some(Paused)), Delivery::Failed);
    }

    #[test]
    fn a_newer_press_replaces_an_unacknowledged_change() {
        let mut o = Outbox::default();
        o.submit(Paused, "first".into(), 0);
        let first = attempt(o.poll(0));
        assert_eq!(
            o.submit(Paused, "second".into(), 8_000),
            Some("first".to_string())
        );
        // The first attempt is still under way: no second one in parallel.
        assert_eq!(o.poll(8_000), Step::Wait);
        assert_eq!(
            o.on_result(first.id, AttemptResult::Transient("x".into()), 8_100),
            Report::Superseded {
                reason: "first".into(),
                acknowledged: false
            }
        );
        // The second's bound starts at its own press.
        let second = attempt(o.poll(8_100));
        assert_eq!(second.reason, "second");
        assert_eq!(second.deadline_ms, 8_000 + ms(SEND_FOR));
    }
}
