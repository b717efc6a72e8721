//! The worker gate: what a background worker checks before taking a job.
//!
//! A [`Gate`] follows one switch. A background task holds an event stream open (SSE, or
//! long-poll when SSE cannot be held), and writes what it learns into atomics; the worker's
//! [`Gate::is_open`] is a single atomic load, so it can be called before every job at no cost.
//!
//! [`Gate::acquire`] is the fuller form: it waits until the switch lets work through, counts the
//! job as in flight until the returned [`Permit`] is dropped (so the gate can report `draining`
//! while jobs started before a pause finish), and applies a release ramp by duty cycle: at an
//! admitted fraction `f`, each job slot rests `duration × (1 − f) / f` after a job, so the
//! worker's throughput is `f` of normal whatever its job length, and the fleet's throughput
//! follows the ramp with no coordination beyond the switch state every gate already has.
//!
//! When the control plane cannot be reached the gate keeps the last known state
//! ([`FailurePolicy::KeepLastKnown`], the default: a pause is never silently undone by a network
//! problem), or fails open or closed after a grace period, as configured. Reconnects use
//! exponential backoff with full jitter, so a fleet does not reconnect in the same millisecond
//! after a control-plane restart (the first few attempts stay within one base period, so a
//! quick restart has the whole fleet back within about a second).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::borrow::Cow;

use brb_api::{Ramp, Sample, SampleKind, Source, Switch, SwitchState, WorkerReport, WorkerStatus};
use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::{Client, ClientError, EventScope, StreamItem};

/// What the gate does when the control plane cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Keep acting on the last state the control plane confirmed (closed if none yet).
    #[default]
    KeepLastKnown,
    /// After the grace period, let work through.
    Open,
    /// After the grace period, stop work.
    Closed,
}

/// How the gate learns about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// SSE, falling back to long-poll when SSE streams keep failing (a proxy that buffers or
    /// forbids them), retrying SSE every few minutes.
    #[default]
    Auto,
    Sse,
    LongPoll,
}

#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Control-plane base URLs (replicas); each gate starts at a random one.
    pub urls: Vec<String>,
    pub token: Option<String>,
    pub switch: String,
    pub worker_id: String,
    pub policy: FailurePolicy,
    /// How long the control plane may be unreachable before `Open`/`Closed` apply.
    pub grace: Duration,
    /// Jobs this gate admits at once (the ramp's duty cycle applies per slot).
    pub max_concurrency: usize,
    /// Heartbeat report interval (a report also goes out at once on every observed change).
    pub report_interval: Duration,
    pub transport: Transport,
    /// First reconnect delay bound; doubles per failed attempt up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A connected stream that sends nothing (not even a keep-alive) for this long is dead.
    pub idle_timeout: Duration,
    /// Send `jobs_processed` samples (a fleet-wide jobs-per-second series) once a second.
    pub send_samples: bool,
    /// CA bundle, client certificate, plain-HTTP policy.
    pub tls: crate::TlsOptions,
    /// Report to the control plane (on every change and every `report_interval`). Off only
    /// where nobody reads the acknowledgements (`brb bench` measuring pure fan-out): each
    /// reporting gate holds a second connection to the control plane.
    pub reports: bool,
    /// Bind outgoing connections to this local address (`None`: the system's choice).
    pub local_address: Option<std::net::IpAddr>,
}

impl GateConfig {
    pub fn new(urls: &[impl AsRef<str>], token: Option<String>, switch: &str) -> Self {
        GateConfig {
            urls: urls.iter().map(|u| u.as_ref().to_string()).collect(),
            token,
            switch: switch.to_string(),
            worker_id: default_worker_id(),
            policy: FailurePolicy::KeepLastKnown,
            grace: Duration::from_secs(10),
            max_concurrency: 1,
            report_interval: Duration::from_secs(5),
            transport: Transport::Auto,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(45),
            send_samples: true,
            tls: crate::TlsOptions::default(),
            reports: true,
            local_address: None,
        }
    }
}

/// `hostname-pid-random`, unique enough to tell workers apart.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// What a gate needs of a switch. A `switch` event is decoded into this rather than a whole
/// [`Switch`]: it skips the timestamp parse and most strings, on every delivery to every gate.
#[derive(Debug, serde::Deserialize)]
struct SwitchView<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    state: SwitchState,
    version: u64,
    #[serde(borrow)]
    changed_by: Cow<'a, str>,
    source: Source,
    #[serde(default)]
    ramp: Option<Ramp>,
}

impl<'a> From<&'a Switch> for SwitchView<'a> {
    fn from(s: &'a Switch) -> Self {
        SwitchView {
            name: Cow::Borrowed(&s.name),
            state: s.state,
            version: s.version,
            changed_by: Cow::Borrowed(&s.changed_by),
            source: s.source,
            ramp: s.ramp.clone(),
        }
    }
}

const KNOWN_NONE: u8 = 0;
const KNOWN_RUNNING: u8 = 1;
const KNOWN_PAUSED: u8 = 2;

struct Shared {
    cfg: GateConfig,
    /// The effective decision, read by `is_open`.
    open: AtomicBool,
    /// The last state the control plane confirmed.
    known: AtomicU8,
    version: AtomicU64,
    connected: AtomicBool,
    /// Unix ms of the last sign of life from the control plane (0: never).
    last_contact_ms: AtomicI64,
    /// Unix ms when the connection was lost (0: connected or never connected).
    lost_at_ms: AtomicI64,
    ramp: Mutex<Option<Ramp>>,
    in_flight: AtomicU32,
    processed: AtomicU64,
    /// When each job slot is free again (a slot rests after a job during a ramp).
    slots: Mutex<Vec<Instant>>,
    changed: Notify,
    report_now: Notify,
    connects: AtomicU64,
    /// Instants at which the stream (re)connected, for observing reconnect spread.
    connect_log: Mutex<Vec<Instant>>,
    /// The last version applied and when, for measuring propagation.
    last_change: Mutex<Option<(u64, Instant)>>,
    /// The latest attempts to open the event stream (at most `ATTEMPT_LOG` of them).
    attempt_log: Mutex<VecDeque<Attempt>>,
}

/// Stream attempts a gate remembers: enough to see a reconnect storm's retries, bounded so an
/// outage of days costs nothing.
const ATTEMPT_LOG: usize = 32;

/// One attempt to open the event stream, for diagnosing reconnects (`brb bench` reads them
/// to tell fast refusals from timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub started: Instant,
    /// Until the stream opened or the attempt failed (over every base it tried).
    pub took: Duration,
    pub opened: bool,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Shared {
    /// Recomputes the effective decision from what is known and how long ago. True when it
    /// changed (waiters and the reporter were woken).
    fn recompute(&self) -> bool {
        let known = self.known.load(Ordering::Acquire);
        let lost = self.lost_at_ms.load(Ordering::Acquire);
        let beyond_grace = lost != 0 && now_ms() - lost >= self.cfg.grace.as_millis() as i64;
        let open = match self.cfg.policy {
            FailurePolicy::KeepLastKnown => known == KNOWN_RUNNING,
            FailurePolicy::Open if beyond_grace => true,
            FailurePolicy::Closed if beyond_grace => false,
            _ => known == KNOWN_RUNNING,
        };
        let was = self.open.swap(open, Ordering::AcqRel);
        if was != open {
            self.changed.notify_waiters();
            self.report_now.notify_one();
        }
        was != open
    }

    fn apply(&self, s: &SwitchView<'_>) {
        if s.version < self.version.load(Ordering::Acquire) && self.known() != KNOWN_NONE {
            return; // an older event (another replica lagging): ignore
        }
        *self.ramp.lock().unwrap_or_else(|e| e.into_inner()) = s.ramp.clone();
        if self.version.swap(s.version, Ordering::AcqRel) != s.version {
            *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((s.version, Instant::now()));
        }
        let k = match s.state {
            SwitchState::Running => KNOWN_RUNNING,
            SwitchState::Paused => KNOWN_PAUSED,
        };
        let prev = self.known.swap(k, Ordering::AcqRel);
        self.contact();
        let notified = self.recompute();
        if prev == KNOWN_NONE {
            tracing::debug!(switch = %s.name, state = %s.state, version = s.version, "gate learned the state");
        } else if prev != k {
            tracing::info!(switch = %s.name, state = %s.state, version = s.version,
                changed_by = %s.changed_by, source = %s.source, "gate observed a change");
        }
        // Waiters also learn of a new version or ramp with the same decision.
        if !notified {
            self.changed.notify_waiters();
            self.report_now.notify_one();
        }
    }

    fn log_attempt(&self, started: Instant, opened: bool) {
        let mut log = self.attempt_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == ATTEMPT_LOG {
            log.pop_front();
        }
        log.push_back(Attempt {
            started,
            took: started.elapsed(),
            opened,
        });
    }

    fn known(&self) -> u8 {
        self.known.load(Ordering::Acquire)
    }

    fn contact(&self) {
        self.last_contact_ms.store(now_ms(), Ordering::Release);
    }

    fn set_connected(&self, yes: bool) {
        let was = self.connected.swap(yes, Ordering::AcqRel);
        if yes {
            self.lost_at_ms.store(0, Ordering::Release);
            if !was {
                self.connects.fetch_add(1, Ordering::Relaxed);
                self.connect_log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
            }
        } else if was || self.lost_at_ms.load(Ordering::Acquire) == 0 {
            self.lost_at_ms.store(now_ms(), Ordering::Release);
        }
        self.recompute();
    }

    fn fraction(&self) -> f64 {
        if !self.open.load(Ordering::Acquire) {
            return 0.0;
        }
        match &*self.ramp.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(r) if self.known() == KNOWN_RUNNING => r.fraction_at(Utc::now()),
            _ => 1.0,
        }
    }

    fn status(&self) -> WorkerStatus {
        if self.open.load(Ordering::Acquire) {
            WorkerStatus::Running
        } else if self.in_flight.load(Ordering::Acquire) > 0 {
            WorkerStatus::Draining
        } else {
            WorkerStatus::Paused
        }
    }

    fn report(&self) -> WorkerReport {
        WorkerReport {
            worker_id: self.cfg.worker_id.clone(),
            switch: self.cfg.switch.clone(),
            observed_version: self.version.load(Ordering::Acquire),
            status: self.status(),
            in_flight: self.in_flight.load(Ordering::Acquire),
            processed_total: self.processed.load(Ordering::Acquire),
            error: None,
        }
    }
}

/// A gate on one switch. Cheap to clone; the background tasks stop when the last clone drops.
#[derive(Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    _tasks: Arc<TaskGuard>,
}

struct TaskGuard(Vec<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A job in flight. Dropping it ends the job.
pub struct Permit {
    shared: Arc<Shared>,
    slot: usize,
    started: Instant,
    abandoned: bool,
}

impl Permit {
    /// Gives the slot back without counting a job (the worker found nothing to do).
    pub fn abandon(mut self) {
        self.abandoned = true;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let s = &self.shared;
        let free_at = if self.abandoned {
            Instant::now()
        } else {
            let took = self.started.elapsed();
            let f = s.fraction();
            // Duty cycle: at fraction f the slot rests took·(1−f)/f, so it works f of the time.
            let rest = if f > 0.0 && f < 1.0 {
                took.mul_f64((1.0 - f) / f)
            } else {
                Duration::ZERO
            };
            s.processed.fetch_add(1, Ordering::Relaxed);
            Instant::now() + rest
        };
        if let Ok(mut slots) = s.slots.lock()
            && let Some(t) = slots.get_mut(self.slot)
        {
            *t = free_at;
        }
        // An abandoned last slot drains the worker as much as a finished job does.
        let left = s.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && !s.open.load(Ordering::Acquire) {
            // Drained: say so at once.
            s.report_now.notify_one();
        }
        s.changed.notify_waiters();
    }
}

impl Gate {
    /// Starts following the switch. Must be called inside a tokio runtime.
    pub fn start(cfg: GateConfig) -> Result<Gate, ClientError> {
        if cfg.max_concurrency == 0 {
            return Err(ClientError::Config(
                "max_concurrency must be at least 1".into(),
            ));
        }
        let client =
            Client::with_local_address(&cfg.urls, cfg.token.clone(), &cfg.tls, cfg.local_address)?;
        let client = client.rotated(rand::random::<u32>() as usize);
        let now = Instant::now();
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![now; cfg.max_concurrency]),
            cfg,
            open: AtomicBool::new(false),
            known: AtomicU8::new(KNOWN_NONE),
            version: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_contact_ms: AtomicI64::new(0),
            lost_at_ms: AtomicI64::new(0),
            ramp: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            processed: AtomicU64::new(0),
            changed: Notify::new(),
            report_now: Notify::new(),
            connects: AtomicU64::new(0),
            connect_log: Mutex::new(Vec::new()),
            last_change: Mutex::new(None),
            attempt_log: Mutex::new(VecDeque::with_capacity(4)),
        });
        let mut tasks = vec![tokio::spawn(watch(Arc::clone(&shared), client.clone()))];
        if shared.cfg.reports {
            tasks.push(tokio::spawn(report(Arc::clone(&shared), client.clone())));
        }
        // Keeping the last known state does not depend on time: no clock to tick (ten
        // thousand gates ticking four times a second cost CPU on the machine they run on).
        if shared.cfg.policy != FailurePolicy::KeepLastKnown {
            tasks.push(tokio::spawn(policy_clock(Arc::clone(&shared))));
        }
        if shared.cfg.send_samples {
            tasks.push(tokio::spawn(samples(Arc::clone(&shared), client)));
        }
        Ok(Gate {
            shared,
            _tasks: Arc::new(TaskGuard(tasks)),
        })
    }

    /// Whether the switch lets work through now. One atomic load: call it before every job.
    #[inline]
    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Parks until the switch lets work through.
    pub async fn wait_open(&self) {
        loop {
            let notified = self.shared.changed.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }

    /// Takes a job slot without waiting: `None` when closed, all slots busy, or the ramp's
    /// duty cycle has the free slots resting.
    pub fn try_acquire(&self) -> Option<Permit> {
        if !self.is_open() {
            return None;
        }
        let now = Instant::now();
        let mut slots = self.shared.slots.lock().ok()?;
        let slot = slots.iter().position(|t| *t <= now)?;
        // Busy until the permit is dropped (then it gets its rest time).
        slots[slot] = now + Duration::from_secs(86_400 * 365);
        drop(slots);
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Permit {
            shared: Arc::clone(&self.shared),
            slot,
            started: now,
            abandoned: false,
        })
    }

    /// Waits until the switch is open and a slot is free (and rested, during a ramp).
    pub async fn acquire(&self) -> Permit {
        loop {
            let notified = self.shared.changed.notified();
            if let Some(p) = self.try_acquire() {
                return p;
            }
            if !self.is_open() {
                notified.await;
                continue;
            }
            // Open but no slot yet: wait for a permit to drop or the next slot to rest.
            let next = self
                .shared
                .slots
                .lock()
                .map(|s| s.iter().min().copied())
                .ok()
                .flatten();
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(10))
                .clamp(Duration::from_millis(1), Duration::from_millis(250));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The fraction of normal work admitted now: 0 when closed, the ramp's fraction while
    /// ramping, else 1.
    pub fn admitted_fraction(&self) -> f64 {
        self.shared.fraction()
    }

    /// The switch version this gate acts on (0 before first contact).
    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// How stale the gate's knowledge may be: zero while the event stream is connected (every
    /// change is pushed at once), else the time since the control plane was last heard from
    /// (`None` if it never was).
    pub fn staleness(&self) -> Option<Duration> {
        if self.is_connected() {
            return Some(Duration::ZERO);
        }
        let last = self.shared.last_contact_ms.load(Ordering::Acquire);
        (last != 0).then(|| Duration::from_millis((now_ms() - last).max(0) as u64))
    }

    pub fn status(&self) -> WorkerStatus {
        self.shared.status()
    }

    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    pub fn processed(&self) -> u64 {
        self.shared.processed.load(Ordering::Acquire)
    }

    pub fn worker_id(&self) -> &str {
        &self.shared.cfg.worker_id
    }

    /// How many times the event stream has connected.
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// When the stream connected, each time.
    pub fn connect_times(&self) -> Vec<Instant> {
        self.shared
            .connect_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The latest attempts to open the event stream, oldest first (at most 32).
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared
            .attempt_log
            .lock()
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The last version this gate applied and when it did (`is_open` answered accordingly
    /// from that instant): how `brb bench` measures propagation without waking a task.
    pub fn last_change(&self) -> Option<(u64, Instant)> {
        *self
            .shared
            .last_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the gate has heard from the control plane once (or the timeout).
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if self.shared.known() != KNOWN_NONE {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.shared.known() != KNOWN_NONE;
            }
        }
    }
}

/// Full-jitter exponential backoff: a random delay in [0, min(cap, base·2^attempt)].
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .checked_mul(1u32 << attempt.min(20))
        .unwrap_or(cap)
        .min(cap);
    ceiling.mul_f64(rand::random::<f64>())
}

/// Failed reconnects retried within `backoff_base` before the bound starts doubling.
const FLAT_ATTEMPTS: u32 = 2;

/// Consecutive SSE failures before `Auto` falls back to long-poll.
const SSE_FAILURES_BEFORE_FALLBACK: u32 = 3;
/// How long `Auto` stays on long-poll before trying SSE again.
const LONG_POLL_SPELL: Duration = Duration::from_secs(300);

async fn watch(s: Arc<Shared>, mut client: Client) {
    let scope = EventScope::Switch(s.cfg.switch.clone());
    let mut attempt: u32 = 0;
    let mut sse_failures: u32 = 0;
    let mut long_poll_until: Option<Instant> = None;
    let mut warned_unreachable = false;
    loop {
        let use_long_poll = match s.cfg.transport {
            Transport::LongPoll => true,
            Transport::Sse => false,
            Transport::Auto => long_poll_until.is_some_and(|t| Instant::now() < t),
        };
        let ok = if use_long_poll {
            long_poll(&s, &client).await
        } else {
            let last = s.version.load(Ordering::Acquire);
            let last = (s.known() != KNOWN_NONE).then(|| last.to_string());
            let started = Instant::now();
            let opened = client.events(&scope, last.as_deref()).await;
            s.log_attempt(started, opened.is_ok());
            match opened {
                Ok(stream) => {
                    let heard = read_stream(&s, stream).await;
                    if heard {
                        sse_failures = 0;
                    } else {
                        sse_failures += 1;
                    }
                    heard
                }
                Err(e) => {
                    if !matches!(e, ClientError::Unreachable(_)) {
                        // The server answered but refused the stream (a proxy, or auth).
                        sse_failures += 1;
                        tracing::warn!(switch = %s.cfg.switch, error = %e, "event stream refused");
                    } else if !warned_unreachable {
                        // Once per outage, loud enough to be seen (a wrong CA or URL would
                        // otherwise keep a worker on its last state in silence); the retries
                        // that follow stay quiet.
                        warned_unreachable = true;
                        tracing::warn!(switch = %s.cfg.switch, error = %e, "cannot reach the control plane; keeping the last known state, retrying");
                    } else {
                        tracing::debug!(switch = %s.cfg.switch, error = %e, "control plane unreachable");
                    }
                    false
                }
            }
        };
        s.set_connected(false);
        if s.cfg.transport == Transport::Auto
            && long_poll_until.is_none()
            && sse_failures >= SSE_FAILURES_BEFORE_FALLBACK
        {
            tracing::warn!(switch = %s.cfg.switch, "event stream keeps failing; falling back to long-poll");
            long_poll_until = Some(Instant::now() + LONG_POLL_SPELL);
            sse_failures = 0;
        } else if long_poll_until.is_some_and(|t| Instant::now() >= t) {
            long_poll_until = None;
        }
        attempt = if ok { 0 } else { attempt.saturating_add(1) };
        if !ok {
            // Start the next attempt at a replica drawn afresh: with one fixed order, every
            // retry of a gate whose first replica is full or hung waits on that one again
            // before moving on, and the gates refused together all pile onto the same next one.
            client = client.rotated(rand::random::<u32>() as usize);
        }
        if ok {
            warned_unreachable = false;
        }
        // The first attempts after losing a stream all retry within one base period: a
        // restarting control plane is usually back well within it, and doubling at once
        // would leave the unlucky few who came too early seconds behind the fleet.
        let delay = backoff(
            s.cfg.backoff_base,
            s.cfg.backoff_cap,
            attempt.saturating_sub(FLAT_ATTEMPTS),
        );
        tokio::time::sleep(delay).await;
    }
}

/// Reads one SSE connection until it ends. Returns whether the server sent anything on it (a
/// stream that answers 200 and then stays mute is what a buffering proxy does).
async fn read_stream(
    s: &Shared,
    stream: impl futures_util::Stream<Item = Result<StreamItem, ClientError>>,
) -> bool {
    let mut stream = std::pin::pin!(stream);
    let mut heard = false;
    // One timer for the whole connection, ticking every half `idle_timeout`: a timeout per
    // event would insert and remove a timer for every event of every gate, and even reading
    // the clock per event shows in the profile. An item only sets a flag; two ticks without
    // one (silence for at least `idle_timeout`, at most 1.5×) end the stream.
    let half = (s.cfg.idle_timeout / 2).max(Duration::from_millis(1));
    let mut silence = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut got = false;
    let mut silent_ticks = 0u8;
    loop {
        let item = tokio::select! {
            biased;
            item = stream.next() => match item {
                Some(item) => item,
                None => return heard,
            },
            _ = silence.tick() => {
                if std::mem::take(&mut got) {
                    silent_ticks = 0;
                } else {
                    silent_ticks += 1;
                    if silent_ticks >= 2 {
                        tracing::warn!(switch = %s.cfg.switch, "event stream silent too long; reconnecting");
                        return heard;
                    }
                }
                continue;
            }
        };
        got = true;
        if item.is_ok() && !heard {
            heard = true;
            s.set_connected(true);
        }
        match item {
            Ok(StreamItem::Alive) => s.contact(),
            Ok(StreamItem::Event(ev)) if ev.event == brb_api::events::SWITCH => {
                match serde_json::from_str::<SwitchView<'_>>(&ev.data) {
                    Ok(sw) => s.apply(&sw),
                    Err(e) => {
                        tracing::warn!(switch = %s.cfg.switch, error = %e, "unreadable switch event");
                    }
                }
            }
            Ok(StreamItem::Event(ev)) if ev.event == brb_api::events::DELETED => {
                tracing::error!(switch = %s.cfg.switch, "the switch was deleted; keeping the last known state");
                return heard;
            }
            Ok(StreamItem::Event(_)) => s.contact(),
            Err(e) => {
                tracing::debug!(switch = %s.cfg.switch, error = %e, "event stream broke");
                return heard;
            }
        }
    }
}

/// Long-polls until an error. Returns whether it heard from the control plane at all.
async fn long_poll(s: &Shared, client: &Client) -> bool {
    let mut heard = false;
    loop {
        let res = if s.known() == KNOWN_NONE {
            client.switch(&s.cfg.switch).await
        } else {
            let v = s.version.load(Ordering::Acquire);
            client
                .wait_switch(&s.cfg.switch, v, Duration::from_secs(25))
                .await
        };
        match res {
            Ok(sw) => {
                heard = true;
                s.set_connected(true);
                s.apply(&SwitchView::from(&sw));
            }
            Err(e) => {
                tracing::debug!(switch = %s.cfg.switch, error = %e, "long-poll failed");
                return heard;
            }
        }
    }
}

/// Reports at once on every change and every `report_interval` otherwise.
async fn report(s: Arc<Shared>, client: Client) {
    loop {
        let notified = s.report_now.notified();
        if s.known() != KNOWN_NONE {
            let r = s.report();
            if let Err(e) = client.report(&r).await {
                tracing::debug!(switch = %s.cfg.switch, error = %e, "report failed");
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(s.cfg.report_interval) => {}
        }
    }
}

/// Re-evaluates the failure policy while disconnected (the grace period runs out by itself).
async fn policy_clock(s: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250).min(s.cfg.grace)).await;
        if !s.connected.load(Ordering::Acquire) {
            s.recompute();
        }
    }
}

/// Once a second, the jobs finished since the last second: a fleet-wide counter series.
async fn samples(s: Arc<Shared>, client: Client) {
    let mut sent = s.processed.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = s.processed.load(Ordering::Relaxed);
        if now == sent {
            continue;
        }
        let sample = Sample {
            name: "sdk_jobs_processed".into(),
            value: (now - sent) as f64,
            kind: SampleKind::Counter,
            labels: Default::default(),
            ts: None,
        };
        match client.push_samples(vec![sample]).await {
            Ok(_) => sent = now,
            Err(e) => tracing::debug!(error = %e, "sending samples failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a failed attempt the next one starts at a replica drawn afresh: two replicas
    /// that take each connection and close it at once (a full replica resetting) both see
    /// attempts begin with them. With one fixed order every attempt began at the same one.
    #[tokio::test]
    async fn retries_start_at_a_replica_drawn_afresh() {
        use tokio::net::TcpListener;
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let mut urls = Vec::new();
        for i in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", l.local_addr().unwrap()));
            let tx = seen_tx.clone();
            tokio::spawn(async move {
                while let Ok((c, _)) = l.accept().await {
                    let _ = tx.send(i);
                    drop(c);
                }
            });
        }
        let mut cfg = GateConfig::new(&urls, None, "workers");
        cfg.transport = Transport::Sse;
        cfg.reports = false;
        cfg.send_samples = false;
        cfg.backoff_base = Duration::from_millis(1);
        cfg.backoff_cap = Duration::from_millis(2);
        let gate = Gate::start(cfg).unwrap();
        // Each attempt tries both replicas, one connection each, one after the other.
        let mut first_of_attempt = [0u32; 2];
        for _ in 0..24 {
            let a = seen.recv().await.unwrap();
            let b = seen.recv().await.unwrap();
            assert_ne!(a, b, "an attempt tries each replica once");
            first_of_attempt[a] += 1;
        }
        drop(gate);
        assert!(
            first_of_attempt.iter().all(|&n| n > 0),
            "24 attempts all began at the same replica: {first_of_attempt:?}"
        );
    }

    /// The gate's partial view decodes what the server sends: a whole `Switch`, with a ramp
    /// and with escaped strings (which cannot be borrowed).
    #[test]
    fn switch_view_decodes_a_serialized_switch() {
        let mut sw = Switch {
            name: "workers".into(),
            description: "Pause \"all\" workers".into(),
            primary: true,
            state: SwitchState::Running,
            version: 7,
            changed_at: Utc::now(),
            changed_by: "al\nice".into(),
            source: Source::Button,
            reason: Some("db on fire".into()),
            ramp: None,
            resume_request: None,
        };
        for ramp in [
            None,
            Some(Ramp {
                started_at: Utc::now(),
                duration_secs: 60,
                shape: brb_api::RampShape::Steps {
                    fractions: vec![0.25, 1.0],
                },
                held: None,
                guard: None,
            }),
        ] {
            sw.ramp = ramp;
            let json = serde_json::to_string(&sw).unwrap();
            let v: SwitchView<'_> = serde_json::from_str(&json).unwrap();
            assert_eq!(
                (
                    v.name.as_ref(),
                    v.state,
                    v.version,
                    v.changed_by.as_ref(),
                    v.source
                ),
                (
                    "workers",
                    SwitchState::Running,
                    7,
                    "al\nice",
                    Source::Button
                )
            );
            assert_eq!(v.ramp, sw.ramp);
        }
    }

    /// A switch event from a newer control plane (a source this build does not know, fields
    /// it has never seen) still reaches the gate: an unreadable event would leave the gate on
    /// a stale decision.
    #[test]
    fn switch_view_decodes_an_unknown_source() {
        let json = r#"{"name":"workers","description":"","primary":true,"state":"paused",
            "version":9,"changed_at":"2026-11-30T20:00:00Z","changed_by":"guard",
            "source":"sentinel","reason":"tripped","ramp":null,"drill":{"version":9}}"#;
        let v: SwitchView<'_> = serde_json::from_str(json).unwrap();
        assert_eq!(
            (v.state, v.version, v.source),
            (SwitchState::Paused, 9, Source::Other)
        );
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let d = backoff(base, cap, 0);
            assert!(d <= base);
            seen.insert(d.as_micros());
        }
        assert!(seen.len() > 50, "full jitter spreads delays");
        for attempt in [10, 20, 1000] {
            assert!(backoff(base, cap, attempt) <= cap);
        }
    }
}
