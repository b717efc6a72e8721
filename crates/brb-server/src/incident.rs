//! Incident tools as outbox channels: PagerDuty (Events API v2) and Grafana annotations.
//!
//! Both hear of pauses and resumes only (never reminders), through the same outbox as Slack:
//! written with the change, delivered at least once, retried with backoff. An incident is
//! named by its pause instant (the switch's `changed_at` while paused, which description edits
//! and other version bumps keep), so every replica and every retry names it alike:
//!
//! - PagerDuty: a pause sends `trigger` with `dedup_key` `brb:{env}:{switch}:{pause ms}`; the
//!   resume sends `resolve` with the same key. A repeated trigger (a retry after a lost answer)
//!   joins the open alert instead of opening another.
//! - Grafana: a pause creates an annotation at the pause instant carrying the tag
//!   `brb-pause-{switch}-{pause ms}`; the resume finds it again by that tag and sets its end
//!   (`PATCH /api/annotations/{id}` with `timeEnd`), making it a region. The tag is how the id
//!   is remembered: it survives restarts and replicas without a table of ours, and a retried
//!   create checks it first, so a lost answer never makes a second annotation.
//!
//! A resume's event waits while an older event of the same channel is still undelivered: a
//! resolve that overtook its trigger would leave an alert nobody resolves.

use std::time::Duration;

use brb_api::{Switch, SwitchState};
use brb_store::{OutboxItem, SwitchEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::AppState;
use crate::config::{GrafanaConfig, PagerDutyConfig};
use crate::notify::{Failure, short_error};
use crate::templates::{self, Ctx};

/// PagerDuty's limits on `dedup_key` and `summary` (Events API v2).
const MAX_DEDUP_KEY: usize = 255;
const MAX_SUMMARY: usize = 1024;

/// What a change means to an incident tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A pause began at this instant: open the incident.
    Pause { at: DateTime<Utc> },
    /// The pause that began at `pause_at` ended at `at`: close it.
    Resume {
        pause_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

/// The phase of a change notification, or `None` for a change that neither pauses nor
/// resumes (a release ended early while already running). A resume is named by the pause it
/// ends: the switch as it was one version earlier, from the audit log's snapshots.
pub(crate) async fn phase(state: &AppState, item: &OutboxItem) -> Result<Option<Phase>, Failure> {
    let ev = &item.event;
    if ev.state == SwitchState::Paused {
        return Ok(Some(Phase::Pause { at: ev.changed_at }));
    }
    let before = state
        .reads()
        .events_after_version(&ev.name, ev.version.saturating_sub(2), 1)
        .await
        .map_err(|e| Failure::from(format!("cannot read the switch's history: {e}")))?;
    match before.first().map(|e| &e.event) {
        Some(SwitchEvent::Changed(prev)) if prev.version + 1 == ev.version => Ok((prev.state
            == SwitchState::Paused)
            .then_some(Phase::Resume {
                pause_at: prev.changed_at,
                at: ev.changed_at,
            })),
        _ => Err(Failure::permanent(format!(
            "version {} of {:?} is not in the audit log: cannot tell which pause this resume ends",
            ev.version.saturating_sub(1),
            ev.name
        ))),
    }
}

/// Holds a resume while an older event of its channel is undelivered.
pub(crate) async fn wait_for_earlier(state: &AppState, item: &OutboxItem) -> Result<(), Failure> {
    let pending = state
        .bookkeeping()
        .outbox_pending_before(&item.channel, item.id)
        .await
        .map_err(|e| Failure::from(format!("cannot read the outbox: {e}")))?;
    if pending {
        return Err(Failure::from(
            "waiting: an earlier event of this channel (the pause) is not delivered yet"
                .to_string(),
        ));
    }
    Ok(())
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The alert's `dedup_key`: the environment, the switch and the pause instant, cut to
/// PagerDuty's 255 characters while keeping the instant (what tells two pauses apart).
pub fn pagerduty_dedup_key(environment: &str, switch: &str, pause_at: DateTime<Utc>) -> String {
    let tail = format!(":{}", millis(pause_at));
    let head: String = format!("brb:{environment}:{switch}")
        .chars()
        .take(MAX_DEDUP_KEY - tail.len())
        .collect();
    format!("{head}{tail}")
}

/// PagerDuty's summary: the Grafana annotation's line, cut to PagerDuty's limit.
fn summary(s: &Switch, ctx: &Ctx) -> String {
    let text = grafana_text(s, ctx);
    if text.chars().count() <= MAX_SUMMARY {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_SUMMARY - 1).collect();
    cut.push('…');
    cut
}

/// The Events API v2 body for a phase.
pub fn pagerduty_body(cfg: &PagerDutyConfig, s: &Switch, ctx: &Ctx, phase: Phase) -> Value {
    let (action, pause_at) = match phase {
        Phase::Pause { at } => ("trigger", at),
        Phase::Resume { pause_at, .. } => ("resolve", pause_at),
    };
    let dedup_key = pagerduty_dedup_key(&ctx.environment, &s.name, pause_at);
    if action == "resolve" {
        // A resolve needs only the key: PagerDuty applies it to the open alert.
        return json!({
            "routing_key": cfg.routing_key.expose(),
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    json!({
        "routing_key": cfg.routing_key.expose(),
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary(s, ctx),
            "source": cfg.source.clone().unwrap_or_else(|| ctx.environment.clone()),
            "severity": cfg.severity,
            "timestamp": s.changed_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "component": s.name,
            "group": "big-red-button",
            "class": "pause",
            "custom_details": {
                "switch": s.name,
                "version": s.version,
                "reason": s.reason,
                "changed_by": s.changed_by,
                "source": s.source,
                "console": ctx.console_url,
            },
        },
        "client": "Big Red Button",
        "client_url": ctx.console_url,
        "links": [{"href": ctx.console_url, "text": "Open the console"}],
    })
}

/// `Retry-After` in seconds, when the receiver gave one.
fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    res.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Sorts an answer into done, retry later, or give up. `throttle_floor` is the least wait after
/// a 429 without `Retry-After` (PagerDuty asks for a backoff of minutes, capped by the
/// configured longest wait).
async fn judge(
    res: reqwest::Response,
    what: &str,
    throttle_floor: Duration,
) -> Result<(), Failure> {
    let status = res.status();
    if status.is_success() {
        return Ok(());
    }
    let after = retry_after(&res);
    let body: String = res
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let message = format!("{what}: HTTP {}: {body}", status.as_u16());
    if status.as_u16() == 429 {
        return Err(Failure {
            message,
            permanent: false,
            not_before: Some(after.unwrap_or(throttle_floor)),
        });
    }
    if status.is_server_error() || status.as_u16() == 408 {
        return Err(Failure::from(message));
    }
    // 400 (PagerDuty: "check that the JSON is valid"), 401/403 (a refused token), 404 (a wrong
    // URL): the same request gets the same answer, so trying again only delays the truth.
    Err(Failure::permanent(message))
}

pub(crate) async fn deliver_pagerduty(
    cfg: &PagerDutyConfig,
    http: &reqwest::Client,
    s: &Switch,
    ctx: &Ctx,
    phase: Phase,
    throttle_floor: Duration,
) -> Result<(), Failure> {
    let res = http
        .post(&cfg.url)
        .json(&pagerduty_body(cfg, s, ctx, phase))
        .send()
        .await
        .map_err(|e| Failure::from(short_error(&e)))?;
    judge(res, "PagerDuty", throttle_floor).await
}

/// The tag that finds a pause's annotation again (no `:`: Grafana reads `key:value` tags).
pub fn grafana_tag(switch: &str, pause_at: DateTime<Utc>) -> String {
    format!("brb-pause-{switch}-{}", millis(pause_at))
}

fn grafana_url(cfg: &GrafanaConfig, path: &str) -> String {
    format!("{}{path}", cfg.url.trim_end_matches('/'))
}

fn grafana_text(s: &Switch, ctx: &Ctx) -> String {
    format!(
        "[{}] {} by {} from {}{}",
        ctx.environment,
        templates::title(s),
        s.changed_by,
        templates::source_label(s.source),
        s.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )
}

/// The annotation that carries `tag`, if Grafana has one.
async fn grafana_find(
    cfg: &GrafanaConfig,
    http: &reqwest::Client,
    tag: &str,
    floor: Duration,
) -> Result<Option<u64>, Failure> {
    let mut query = vec![
        ("tags", tag.to_string()),
        ("type", "annotation".to_string()),
        ("limit", "1".to_string()),
    ];
    if let Some(uid) = &cfg.dashboard_uid {
        query.push(("dashboardUID", uid.clone()));
    }
    let res = http
        .get(grafana_url(cfg, "/api/annotations"))
        .bearer_auth(cfg.token.expose())
        .query(&query)
        .send()
        .await
        .map_err(|e| Failure::from(short_error(&e)))?;
    if !res.status().is_success() {
        return judge(res, "Grafana find", floor).await.map(|()| None);
    }
    let found: Vec<Value> = res
        .json()
        .await
        .map_err(|e| Failure::from(format!("Grafana find: unreadable answer: {e}")))?;
    Ok(found.first().and_then(|a| a["id"].as_u64()))
}

async fn grafana_create(
    cfg: &GrafanaConfig,
    http: &reqwest::Client,
    body: Value,
    floor: Duration,
) -> Result<(), Failure> {
    let res = http
        .post(grafana_url(cfg, "/api/annotations"))
        .bearer_auth(cfg.token.expose())
        .json(&body)
        .send()
        .await
        .map_err(|e| Failure::from(short_error(&e)))?;
    judge(res, "Grafana create", floor).await
}

/// The create body: `time` (and `timeEnd` for a whole region) in epoch milliseconds, the
/// configured tags plus the pause's own, and the dashboard and panel when configured.
pub fn grafana_create_body(
    cfg: &GrafanaConfig,
    s: &Switch,
    pause_at: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    text: String,
) -> Value {
    let mut tags = cfg.tags.clone();
    tags.push(grafana_tag(&s.name, pause_at));
    let mut body = json!({"time": millis(pause_at), "tags": tags, "text": text});
    if let Some(end) = end {
        body["timeEnd"] = json!(millis(end));
    }
    if let Some(uid) = &cfg.dashboard_uid {
        body["dashboardUID"] = json!(uid);
    }
    if let Some(panel) = cfg.panel_id {
        body["panelId"] = json!(panel);
    }
    body
}

pub(crate) async fn deliver_grafana(
    cfg: &GrafanaConfig,
    http: &reqwest::Client,
    s: &Switch,
    ctx: &Ctx,
    phase: Phase,
    floor: Duration,
) -> Result<(), Failure> {
    match phase {
        Phase::Pause { at } => {
            let tag = grafana_tag(&s.name, at);
            // An earlier attempt may have created it and lost the answer.
            if grafana_find(cfg, http, &tag, floor).await?.is_some() {
                return Ok(());
            }
            let body = grafana_create_body(cfg, s, at, None, grafana_text(s, ctx));
            grafana_create(cfg, http, body, floor).await
        }
        Phase::Resume { pause_at, at } => {
            let tag = grafana_tag(&s.name, pause_at);
            let text = format!(
                "{} (paused {})",
                grafana_text(s, ctx),
                templates::duration_words(at - pause_at)
            );
            if let Some(id) = grafana_find(cfg, http, &tag, floor).await? {
                let res = http
                    .patch(grafana_url(cfg, &format!("/api/annotations/{id}")))
                    .bearer_auth(cfg.token.expose())
                    .json(&json!({"timeEnd": millis(at), "text": text}))
                    .send()
                    .await
                    .map_err(|e| Failure::from(short_error(&e)))?;
                // Deleted in between (by a person): fall through and draw the whole region.
                if res.status() != reqwest::StatusCode::NOT_FOUND {
                    return judge(res, "Grafana update", floor).await;
                }
            }
            // The pause's annotation never made it (Grafana refused it for good): the region
            // still belongs on the dashboards, whole.
            let body = grafana_create_body(cfg, s, pause_at, Some(at), text);
            grafana_create(cfg, http, body, floor).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keys_keep_the_instant_within_255() {
        let t = DateTime::from_timestamp_millis(1_764_531_200_123).unwrap_or_default();
        assert_eq!(
            pagerduty_dedup_key("prod", "workers", t),
            "brb:prod:workers:1764531200123"
        );
        let long = pagerduty_dedup_key(&"e".repeat(400), "workers", t);
        assert_eq!(long.chars().count(), MAX_DEDUP_KEY);
        assert!(long.ends_with(":1764531200123"), "{long}");
        assert_ne!(
            pagerduty_dedup_key("prod", "workers", t + chrono::Duration::milliseconds(1)),
            pagerduty_dedup_key("prod", "workers", t)
        );
    }

    fn switch(reason: &str) -> Switch {
        Switch {
            name: "workers".into(),
            description: String::new(),
            primary: true,
            state: SwitchState::Paused,
            version: 7,
            changed_at: DateTime::from_timestamp_millis(1_764_531_200_123).unwrap_or_default(),
            changed_by: "alice".into(),
            source: brb_api::Source::Slack,
            reason: Some(reason.into()),
            ramp: None,

            resume_request: None,
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            environment: "prod".into(),
            console_url: "https://brb.example.test/".into(),
            office_button_location: None,
            here_on_pause: false,
            command: "/bigred".into(),
            interactive: false,
            approval: Default::default(),
        }
    }

    #[test]
    fn a_long_reason_keeps_the_summary_within_1024() {
        let cfg = PagerDutyConfig {
            routing_key: crate::config::Secret("k".into()),
            url: crate::config::PAGERDUTY_EVENTS_URL.into(),
            severity: "critical".into(),
            source: None,
        };
        let s = switch(&"x".repeat(3000));
        let at = s.changed_at;
        let body = pagerduty_body(&cfg, &s, &ctx(), Phase::Pause { at });
        let summary = body["payload"]["summary"].as_str().unwrap_or_default();
        assert_eq!(summary.chars().count(), MAX_SUMMARY);
        assert!(summary.starts_with("[prod] Background workers PAUSED by alice from Slack: x"));
        assert_eq!(body["payload"]["timestamp"], "2025-11-30T19:33:20.123Z");
    }

    #[test]
    fn grafana_bodies_name_the_dashboard_and_panel_when_configured() {
        let mut cfg = GrafanaConfig {
            url: "https://grafana.example.test/".into(),
            token: crate::config::Secret("t".into()),
            tags: vec!["brb".into()],
            dashboard_uid: None,
            panel_id: None,
        };
        let s = switch("slow");
        let at = s.changed_at;
        let org = grafana_create_body(&cfg, &s, at, None, "t".into());
        assert_eq!(org.as_object().map(|o| o.len()), Some(3), "{org}");
        assert_eq!(
            org["tags"],
            json!(["brb", "brb-pause-workers-1764531200123"])
        );
        cfg.dashboard_uid = Some("abc".into());
        cfg.panel_id = Some(4);
        let end = at + chrono::Duration::minutes(12);
        let region = grafana_create_body(&cfg, &s, at, Some(end), "t".into());
        assert_eq!(region["dashboardUID"], "abc");
        assert_eq!(region["panelId"], 4);
        assert_eq!(region["time"], 1_764_531_200_123_i64);
        assert_eq!(region["timeEnd"], 1_764_531_920_123_i64);
        assert_eq!(
            grafana_url(&cfg, "/api/annotations"),
            "https://grafana.example.test/api/annotations"
        );
    }
}
