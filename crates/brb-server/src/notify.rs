//! Telling people: the outbox delivery loop and the reminders.
//!
//! A state change writes one outbox row per channel in the same transaction as the change
//! (see `brb-store`), so a committed change is never left unannounced, and the toggle never
//! waits for Slack. This loop claims due rows with a lease, sends them, and records the result;
//! failures are retried with exponential backoff and jitter for up to a day. A restart resumes
//! whatever was not delivered. Each webhook delivery carries its outbox id
//! (`X-BRB-Delivery`) so receivers can drop the rare duplicate (a crash between sending and
//! recording).

use std::time::Duration;

use brb_api::SwitchState;
use brb_store::{Channel, NewNotification, NotificationKind, OutboxItem};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::AppState;
use crate::templates::{self, Ctx};

/// How long a claimed notification is reserved for one delivery attempt.
const LEASE: Duration = Duration::from_secs(30);
/// One attempt's time limit: a receiver that hangs does not hold up the others for long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long, stop trying and mark it failed.
const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::hours(24);

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
) -> Result<(), String> {
    let ctx = ctx(state);
    let now = Utc::now();
    let cfg = state.config();
    let reminder = item.kind == NotificationKind::Reminder;
    let name = match &item.channel {
        Channel::Slack => {
            let url = cfg
                .notify
                .slack
                .as_ref()
                .and_then(|s| s.webhook_url.as_ref())
                .ok_or("Slack is no longer configured")?;
            let body = if reminder {
                templates::slack_reminder(&item.event, &ctx, now)
            } else {
                templates::slack_change(&item.event, &ctx)
            };
            let res = http
                .post(url.expose())
                .json(&body)
                .send()
                .await
                .map_err(|e| short_error(&e))?;
            return check(res).await;
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
        let body = serde_json::to_vec(&templates::webhook_body(reminder, &item.event, &ctx, now))
            .map_err(|e| e.to_string())?;
        let ts = now.timestamp();
        let mut rb = http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header(
                "x-brb-event",
                if reminder {
                    "switch.reminder"
                } else {
                    "switch.changed"
                },
            )
            .header("x-brb-delivery", item.id.to_string())
            .header("x-brb-timestamp", ts.to_string());
        if let Some(secret) = &hook.secret {
            rb = rb.header(
                "x-brb-signature",
                webhook_signature(secret.expose(), ts, &body),
            );
        }
        let res = rb.body(body).send().await.map_err(|e| short_error(&e))?;
        check(res).await
    }
}

fn short_error(e: &reqwest::Error) -> String {
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
    loop {
        let now = Utc::now();
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

async fn record(state: &AppState, it: &OutboxItem, res: Result<(), String>) {
    let now = Utc::now();
    let store = state.bookkeeping();
    let outcome = match &res {
        Ok(()) => {
            tracing::info!(switch = %it.event.name, channel = %it.channel, kind = %it.kind,
                version = it.event.version, attempts = it.attempts + 1, "notification delivered");
            store.outbox_delivered(it.id, now).await
        }
        Err(e) => {
            let give_up = now - it.created_at > GIVE_UP_AFTER;
            let next = (!give_up).then(|| {
                let max = Duration::from_secs(state.config().notify.retry_max_secs.max(1));
                now + chrono::Duration::from_std(backoff(it.attempts, max))
                    .unwrap_or(chrono::Duration::seconds(60))
            });
            tracing::warn!(switch = %it.event.name, channel = %it.channel, kind = %it.kind,
                attempts = it.attempts + 1, error = %e, gave_up = give_up,
                "notification not delivered");
            store.outbox_failed(it.id, now, e, next).await
        }
    };
    if let Err(e) = outcome {
        // The lease runs out and the notification is tried again: a duplicate at worst.
        tracing::error!(error = %e, "cannot record the delivery result");
    }
}

/// While a switch stays paused, enqueues a reminder every `remind_every` (the n-th reminder
/// of a pause has a fixed dedupe key, so restarts and replicas never send it twice).
pub async fn reminders(state: AppState) {
    let Some(every) = state.config().remind_every() else {
        return;
    };
    let channels = state.config().channels();
    if channels.is_empty() {
        return;
    }
    let tick = Duration::from_millis(250).min(every);
    let mut shutdown = state.shutdown_signal();
    let mut sent: std::collections::HashMap<(String, u64), i64> = Default::default();
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
            let key = (sw.name.clone(), sw.version);
            if n == 0 || sent.get(&key) == Some(&n) {
                continue;
            }
            let items: Vec<NewNotification> = channels
                .iter()
                .map(|ch| NewNotification {
                    channel: ch.clone(),
                    kind: NotificationKind::Reminder,
                    event: (*sw).clone(),
                    // Keyed by the pause (its instant), not the version: drills, resume
                    // requests and description edits bump the version while paused, and
                    // reminder n must still go out once.
                    dedupe_key: format!(
                        "remind:{}:{}:{n}:{ch}",
                        sw.name,
                        sw.changed_at.timestamp_micros()
                    ),
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
        sent.retain(|(name, v), _| {
            state
                .hub()
                .get(name)
                .is_some_and(|s| s.version == *v && s.state == SwitchState::Paused)
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
