//! Telling people: the outbox delivery loop and the reminders.
//!
//! A state change writes one outbox row per channel in the same transaction as the change
//! (see `brb-store`), so a committed change is never left unannounced, and the toggle never
//! waits for Slack. This loop claims due rows with a lease, sends them, and records the result;
//! failures are retried with exponential backoff and jitter for up to a day. A restart resumes
//! whatever was not delivered. Each webhook delivery carries its outbox id
//! (`X-BRB-Delivery`) so receivers can drop the rare duplicate (a crash between sending and
//! recording).
//!
//! A resume request's versions carry their own kind (filed, approved, rejected, lapsed, break
//! glass); their messages need the audit entry of the version and the request it settled,
//! read at delivery (`news`), so the outbox row stays the switch after the change.
//!
//! Replicas of different versions share one outbox during a rolling upgrade, so a row may be
//! of a kind added after this binary was built. Such a row is left for a replica that knows it:
//! the store never claims it here (never attempted, failed or dropped), the rows behind it are
//! delivered as usual, and this loop names each such kind once in a WARN.

use std::time::Duration;

use brb_api::SwitchState;
use brb_store::{Channel, NewNotification, NotificationKind, OutboxItem};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::AppState;
use crate::incident;
use crate::templates::{self, Ctx};

/// How long a claimed notification is reserved for one delivery attempt.
const LEASE: Duration = Duration::from_secs(30);
/// One attempt's time limit: a receiver that hangs does not hold up the others for long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long, stop trying and mark it failed.
const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::hours(24);
/// How often the loop looks for rows of kinds it does not know (to name them in the log).
const UNKNOWN_LOOK_EVERY: Duration = Duration::from_secs(10);

/// Kinds of outbox rows this binary cannot deliver that it has already named: each is named
/// once per process, not at every look.
#[derive(Debug, Default)]
pub(crate) struct UnknownKinds(std::collections::BTreeSet<String>);

impl UnknownKinds {
    /// Of the kinds seen now, those not named before.
    pub(crate) fn new_ones(&mut self, seen: Vec<String>) -> Vec<String> {
        seen.into_iter()
            .filter(|k| self.0.insert(k.clone()))
            .collect()
    }
}

pub fn ctx(state: &AppState) -> Ctx {
    let cfg = state.config();
    let slack = cfg.notify.slack.as_ref();
    Ctx {
        environment: cfg.environment.name.clone(),
        console_url: format!("{}/", cfg.public_url().trim_end_matches('/')),
        office_button_location: cfg.notify.office_button_location.clone(),
        here_on_pause: slack.is_some_and(|s| s.here_on_pause),
        command: slack
            .and_then(|s| s.command.clone())
            .unwrap_or_else(|| "/bigred".into()),
        interactive: slack.is_some_and(|s| s.signing_secret.is_some()),
        approval: std::iter::once(&cfg.primary.name)
            .chain(cfg.switches.iter().map(|s| &s.name))
            .filter(|n| cfg.approval_secs(n).is_some())
            .cloned()
            .collect(),
    }
}

/// What a resume request's announcement needs from the audit log: the entry of its version
/// and the request it settled (from the version before). Read at delivery, like the incident
/// tools' pause instant, so the outbox row stays the switch as it was after the change.
async fn news(state: &AppState, item: &OutboxItem) -> Result<templates::News, Failure> {
    let ev = &item.event;
    let read = |e: brb_store::StoreError| Failure::from(format!("cannot read the audit log: {e}"));
    match item.kind {
        NotificationKind::Change | NotificationKind::Reminder => Ok(templates::News::default()),
        NotificationKind::ResumeRequested => Ok(templates::News {
            entry: None,
            request: ev.resume_request.as_deref().cloned(),
        }),
        _ => {
            let entry = state
                .reads()
                .entry_of_version(&ev.name, ev.version)
                .await
                .map_err(read)?;
            let before = state
                .reads()
                .events_after_version(&ev.name, ev.version.saturating_sub(2), 1)
                .await
                .map_err(read)?;
            let request = match before.first().map(|e| &e.event) {
                Some(brb_store::SwitchEvent::Changed(prev)) if prev.version + 1 == ev.version => {
                    prev.resume_request.as_deref().cloned()
                }
                _ => None,
            };
            Ok(templates::News { entry, request })
        }
    }
}

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`: what receivers check.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a delivery attempt failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub message: String,
    /// The receiver refused the request itself (PagerDuty's 400, Grafana's 401): the same
    /// request would be refused again, so it is given up at once.
    pub permanent: bool,
    /// Wait at least this long before the next attempt (a 429's `Retry-After`).
    pub not_before: Option<Duration>,
}

impl Failure {
    pub(crate) fn permanent(message: String) -> Self {
        Failure {
            message,
            permanent: true,
            not_before: None,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            permanent: false,
            not_before: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::from(message.to_string())
    }
}

fn backoff(attempts: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(1)
        .checked_mul(1u32 << attempts.min(16))
        .unwrap_or(max)
        .min(max);
    // ±20% jitter so that retries of many notifications do not line up.
    base.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

async fn deliver(
    state: &AppState,
    http: &reqwest::Client,
    item: &OutboxItem,
) -> Result<(), Failure> {
    let ctx = ctx(state);
    let now = Utc::now();
    let cfg = state.config();
    // After a 429 without Retry-After: PagerDuty asks for minutes; the configured longest
    // wait caps it.
    let throttle_floor = Duration::from_secs(cfg.notify.retry_max_secs.clamp(1, 120));
    let name = match &item.channel {
        Channel::Slack => {
            let url = cfg
                .notify
                .slack
                .as_ref()
                .and_then(|s| s.webhook_url.as_ref())
                .ok_or("Slack is no longer configured")?;
            let news = news(state, item).await?;
            let body = templates::slack_message(item.kind, &item.event, &news, &ctx, now);
            let res = http
                .post(url.expose())
                .json(&body)
                .send()
                .await
                .map_err(|e| short_error(&e))?;
            return Ok(check(res).await?);
        }
        Channel::PagerDuty | Channel::Grafana => {
            if !item.kind.is_state_change() {
                // Reminders and resume requests are never enqueued for them
                // (`Config::reminder_channels`, the request rules); nothing to say.
                return Ok(());
            }
            let Some(phase) = incident::phase(state, item).await? else {
                return Ok(());
            };
            if matches!(phase, incident::Phase::Resume { .. }) {
                incident::wait_for_earlier(state, item).await?;
            }
            return match &item.channel {
                Channel::PagerDuty => {
                    let pd = cfg
                        .notify
                        .pagerduty
                        .as_ref()
                        .ok_or("PagerDuty is no longer configured")?;
                    incident::deliver_pagerduty(pd, http, &item.event, &ctx, phase, throttle_floor)
                        .await
                }
                _ => {
                    let g = cfg
                        .notify
                        .grafana
                        .as_ref()
                        .ok_or("Grafana is no longer configured")?;
                    incident::deliver_grafana(g, http, &item.event, &ctx, phase, throttle_floor)
                        .await
                }
            };
        }
        Channel::Webhook(name) => name,
    };
    {
        let hook = cfg
            .notify
            .webhooks
            .iter()
            .find(|w| &w.name == name)
            .ok_or_else(|| format!("webhook {name:?} is no longer configured"))?;
        let news = news(state, item).await?;
        let body = serde_json::to_vec(&templates::webhook_body(
            item.kind,
            &item.event,
            &news,
            &ctx,
            now,
        ))
        .map_err(|e| Failure::from(e.to_string()))?;
        let ts = now.timestamp();
        let mut rb = http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-brb-event", templates::webhook_event(item.kind))
            .header("x-brb-delivery", item.id.to_string())
            .header("x-brb-timestamp", ts.to_string());
        if let Some(secret) = &hook.secret {
            rb = rb.header(
                "x-brb-signature",
                webhook_signature(secret.expose(), ts, &body),
            );
        }
        let res = rb.body(body).send().await.map_err(|e| short_error(&e))?;
        Ok(check(res).await?)
    }
}

pub(crate) fn short_error(e: &reqwest::Error) -> String {
    // Never the URL: a Slack webhook URL is a secret.
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        let mut s = "request failed".to_string();
        if let Some(st) = e.status() {
            s.push_str(&format!(": HTTP {st}"));
        }
        s
    }
}

async fn check(res: reqwest::Response) -> Result<(), String> {
    let status = res.status();
    if status.is_success() {
        return Ok(());
    }
    let body = res.text().await.unwrap_or_default();
    Err(format!(
        "HTTP {}: {}",
        status.as_u16(),
        body.chars().take(200).collect::<String>()
    ))
}

/// Delivers until shutdown.
pub async fn run(state: AppState) {
    let http = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .user_agent(concat!("brb/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notification client cannot start; notifications stay queued");
            return;
        }
    };
    let mut shutdown = state.shutdown_signal();
    let mut unknown = UnknownKinds::default();
    let mut next_look = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_look {
            next_look = tokio::time::Instant::now() + UNKNOWN_LOOK_EVERY;
            match state.bookkeeping().outbox_unknown_kinds().await {
                Ok(kinds) => {
                    for kind in unknown.new_ones(kinds) {
                        tracing::warn!(%kind, "outbox rows of a kind this binary does not know \
                            (written by a newer one) are left for a replica that knows it; the \
                            rows behind them are delivered");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
            }
        }
        let now = state.bookkeeping().now().await;
        match state.bookkeeping().outbox_claim(now, LEASE, 20).await {
            Ok(items) if !items.is_empty() => {
                let results = futures_util::future::join_all(
                    items.iter().map(|it| deliver(&state, &http, it)),
                )
                .await;
                for (it, res) in items.iter().zip(results) {
                    record(&state, it, res).await;
                }
                // There may be more due right away.
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = state.notify_wakeup().notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn record(state: &AppState, it: &OutboxItem, res: Result<(), Failure>) {
    let store = state.bookkeeping();
    let now = store.now().await;
    let outcome = match &res {
        Ok(()) => {
            tracing::info!(switch = %it.event.name, channel = %it.channel, kind = %it.kind,
                version = it.event.version, attempts = it.attempts + 1, "notification delivered");
            store.outbox_delivered(it.id, now).await
        }
        Err(f) => {
            let give_up = f.permanent || now - it.created_at > GIVE_UP_AFTER;
            let next = (!give_up).then(|| {
                let max = Duration::from_secs(state.config().notify.retry_max_secs.max(1));
                let wait = backoff(it.attempts, max).max(f.not_before.unwrap_or_default());
                now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(60))
            });
            tracing::warn!(switch = %it.event.name, channel = %it.channel, kind = %it.kind,
                attempts = it.attempts + 1, error = %f.message, gave_up = give_up,
                permanent = f.permanent, "notification not delivered");
            store.outbox_failed(it.id, now, &f.message, next).await
        }
    };
    if let Err(e) = outcome {
        // The lease runs out and the notification is tried again: a duplicate at worst.
        tracing::error!(error = %e, "cannot record the delivery result");
    }
}

/// While a switch stays paused, enqueues a reminder every `remind_every` (the n-th reminder
/// of a pause has a fixed dedupe key, so restarts and replicas never send it twice). A pause
/// is named by its instant (`changed_at`), not by the version: a description edit while paused
/// bumps the version but is the same pause, and must not send reminder n again.
pub async fn reminders(state: AppState) {
    let Some(every) = state.config().remind_every() else {
        return;
    };
    let channels = state.config().reminder_channels();
    if channels.is_empty() {
        return;
    }
    let tick = Duration::from_millis(250).min(every);
    let mut shutdown = state.shutdown_signal();
    let mut sent: std::collections::HashMap<(String, i64), i64> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Utc::now();
        for sw in state.hub().list() {
            if sw.state != SwitchState::Paused || !state.config().reminds(&sw.name) {
                continue;
            }
            let n = due_reminders(sw.changed_at, now, every);
            let pause_ms = sw.changed_at.timestamp_millis();
            let key = (sw.name.clone(), pause_ms);
            if n == 0 || sent.get(&key) == Some(&n) {
                continue;
            }
            let items: Vec<NewNotification> = channels
                .iter()
                .map(|ch| NewNotification {
                    channel: ch.clone(),
                    kind: NotificationKind::Reminder,
                    event: (*sw).clone(),
                    dedupe_key: format!("remind:{}:{pause_ms}:{n}:{ch}", sw.name),
                })
                .collect();
            match state.bookkeeping().outbox_enqueue(items).await {
                Ok(added) => {
                    sent.insert(key, n);
                    if added > 0 {
                        tracing::info!(switch = %sw.name, n, "reminder queued");
                        state.notify_wakeup().notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot queue a reminder"),
            }
        }
        sent.retain(|(name, at), _| {
            state.hub().get(name).is_some_and(|s| {
                s.changed_at.timestamp_millis() == *at && s.state == SwitchState::Paused
            })
        });
    }
}

/// How many reminders are due for a pause that began at `since`.
pub fn due_reminders(since: DateTime<Utc>, now: DateTime<Utc>, every: Duration) -> i64 {
    let ms = (now - since).num_milliseconds().max(0);
    ms / (every.as_millis().max(1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unknown_kind_is_named_once() {
        let mut u = UnknownKinds::default();
        assert_eq!(u.new_ones(vec!["a".into()]), vec!["a".to_string()]);
        assert!(u.new_ones(vec!["a".into()]).is_empty(), "named before");
        assert_eq!(
            u.new_ones(vec!["a".into(), "b".into()]),
            vec!["b".to_string()]
        );
        assert!(u.new_ones(Vec::new()).is_empty());
    }

    #[test]
    fn signature_is_hmac_of_timestamp_and_body() {
        // Computed independently (Python's hmac module).
        let sig = webhook_signature("k", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "v1=1b6ad1bc9bf48c52ce01939866d5877c6cc4e87ddad27e16673cb8c4964394a3"
        );
        assert_ne!(sig, webhook_signature("k2", 1_700_000_000, br#"{"a":1}"#));
        assert_ne!(sig, webhook_signature("k", 1_700_000_001, br#"{"a":1}"#));
    }

    #[test]
    fn reminders_every_interval() {
        let t0 = Utc::now();
        let every = Duration::from_secs(900);
        assert_eq!(
            due_reminders(t0, t0 + chrono::Duration::minutes(14), every),
            0
        );
        assert_eq!(
            due_reminders(t0, t0 + chrono::Duration::minutes(15), every),
            1
        );
        assert_eq!(
            due_reminders(t0, t0 + chrono::Duration::minutes(46), every),
            3
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(300);
        assert!(backoff(0, max) <= Duration::from_millis(1200));
        assert!(backoff(3, max) >= Duration::from_millis(6400));
        assert!(backoff(30, max) <= max.mul_f64(1.2));
    }
}
