//! Every message text the control plane sends to people, in one place: Slack messages on a
//! change and as reminders, on a resume request's life (filed, approved, rejected, lapsed,
//! overridden by break glass), the slash command's answers, and the generic webhook body.
//!
//! Each message answers the questions an engineer has in a crisis: what changed, who did it,
//! from where, why, since when, where to look, and how to undo it.

use brb_api::{AuditEntry, ResumeRequest, Source, Switch, SwitchState, WorkerCounts};
use brb_store::NotificationKind;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// What every template needs besides the switch.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub environment: String,
    /// The web console's URL (links).
    pub console_url: String,
    pub office_button_location: Option<String>,
    pub here_on_pause: bool,
    /// The slash command's name, e.g. `/bigred`.
    pub command: String,
    /// Slack delivers button presses to us (a signing secret is configured): pause messages
    /// carry a "Resume…" button. Without it a press would go nowhere, so there is none.
    pub interactive: bool,
    /// The switches whose resumes need another operator's approval: their pause messages
    /// carry "Approve resume" and "Reject", and "Resume…" files a request.
    pub approval: std::collections::BTreeSet<String>,
}

/// What a resume request's announcement needs besides the switch, read from the audit log
/// at delivery time (`notify.rs`): the entry of the announced version (who rejected, what
/// lapsed), and the request the version settled (from the version before).
#[derive(Debug, Clone, Default)]
pub struct News {
    pub entry: Option<AuditEntry>,
    /// The request filed (for `resume_requested`), or the one approved, rejected, lapsed or
    /// dropped by break glass.
    pub request: Option<ResumeRequest>,
}

/// `action_id` of the "Resume…" button on a pause message.
pub const ACTION_RESUME: &str = "brb_resume";
/// `action_id` of "Approve resume" (pause messages and request announcements of switches that
/// need approval).
pub const ACTION_APPROVE: &str = "brb_approve";
/// `action_id` of "Reject" next to it.
pub const ACTION_REJECT: &str = "brb_reject";

/// What "Approve resume" and "Reject" say: the switch, the pause they belong to, and the
/// request when the message announces one. A pause message's buttons name no request: a press
/// decides the request open at that moment, if it was filed during that pause.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecideButton {
    pub switch: String,
    pub paused_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
}

/// What a "Resume…" button says about the pause it belongs to: the switch and the pause
/// instant (`changed_at` while paused), so a press on an old message never resumes a later
/// pause, and a description edit meanwhile does not make the button stale.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumeButton {
    pub switch: String,
    pub paused_at_ms: i64,
}

/// A stepped ramp's steps as people read them ("10% → 50% → 100%"); `None` for other shapes.
fn steps_words(shape: &brb_api::RampShape) -> Option<String> {
    match shape {
        brb_api::RampShape::Steps { fractions } => Some(
            fractions
                .iter()
                .map(|f| format!("{}%", (f * 100.0).round()))
                .collect::<Vec<_>>()
                .join(" → "),
        ),
        _ => None,
    }
}

/// The words for the default release, as the confirm dialog shows it.
fn default_release_words() -> String {
    let r = brb_api::RampSpec::default_release();
    let steps = steps_words(&r.shape).unwrap_or_else(|| "linear".to_string());
    format!("{steps} over {} min", r.duration_secs / 60)
}

/// Slack's limits on a confirm dialog: title 100 characters, text 300.
fn cut(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut c: String = text.chars().take(max - 1).collect();
    c.push('…');
    c
}

/// A Slack button pressed back to `/api/v1/slack/interactions`: `action_id` says which,
/// `value` which pause (and request), behind Slack's confirmation dialog `confirm`.
fn button(action_id: &str, text: &str, value: &str, style: &str, confirm: Value) -> Value {
    json!({
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text},
        "value": value,
        "style": style,
        "confirm": confirm,
    })
}

/// Slack's confirmation dialog of a button.
fn confirm(title: String, text: String, yes: &str, style: &str) -> Value {
    json!({
        "title": {"type": "plain_text", "text": cut(title, 100)},
        "text": {"type": "mrkdwn", "text": cut(text, 300)},
        "confirm": {"type": "plain_text", "text": yes},
        "deny": {"type": "plain_text", "text": "Cancel"},
        "style": style,
    })
}

/// The "Resume…" button of a pause message, with Slack's confirmation dialog (the release is
/// gradual, never all at once: the confirm button says so). Where the switch needs approval,
/// the press files a request for that release instead, and the dialog says so.
pub fn resume_button(s: &Switch, approval: bool) -> Value {
    let value = serde_json::to_string(&ResumeButton {
        switch: s.name.clone(),
        paused_at_ms: s.changed_at.timestamp_millis(),
    })
    .unwrap_or_default();
    let dialog = if approval {
        confirm(
            format!("Ask to resume {}?", s.name),
            format!(
                "Resuming `{}` needs another operator's approval: this files a request under \
                 your name to release the work gradually ({}). Nothing resumes until someone \
                 else approves it.",
                s.name,
                default_release_words()
            ),
            "Request resume",
            "primary",
        )
    } else {
        confirm(
            format!("Resume {}?", s.name),
            format!(
                "Releases the work gradually ({}), recorded under your name. Releasing \
                 everything at once is not offered here: use the console for that.",
                default_release_words()
            ),
            "Resume gradually",
            "primary",
        )
    };
    button(ACTION_RESUME, "Resume…", &value, "primary", dialog)
}

/// How a requested release reads: "gradually (10% → 100% over 10 min), guard db_load < 80".
pub fn release_words(ramp: Option<&brb_api::RampSpec>, guards: &[brb_api::GuardSpec]) -> String {
    let mut w = match ramp {
        None => "all at once".to_string(),
        Some(r) => {
            let how = steps_words(&r.shape).unwrap_or_else(|| "linearly".to_string());
            format!(
                "gradually ({how} over {})",
                duration_words(chrono::Duration::seconds(r.duration_secs as i64))
            )
        }
    };
    if !guards.is_empty() {
        let g: Vec<String> = guards.iter().map(|g| g.to_string()).collect();
        w.push_str(&format!(", guarded by {}", g.join(" and ")));
    }
    w
}

/// "Approve resume" and "Reject" for the pause `s` is in, naming `request` when known.
pub fn decide_buttons(s: &Switch, request: Option<&ResumeRequest>) -> [Value; 2] {
    let value = serde_json::to_string(&DecideButton {
        switch: s.name.clone(),
        paused_at_ms: s.changed_at.timestamp_millis(),
        request_id: request.map(|r| r.id),
    })
    .unwrap_or_default();
    let what = match request {
        Some(r) => format!(
            "Resumes `{}` as {} asked: {}. Recorded under your name; you cannot approve your \
             own request.",
            s.name,
            r.requested_by,
            release_words(r.ramp.as_ref(), &r.guards)
        ),
        None => format!(
            "Resumes `{}` as its open resume request asks (another operator's: you cannot \
             approve your own). Recorded under your name.",
            s.name
        ),
    };
    [
        button(
            ACTION_APPROVE,
            "Approve resume",
            &value,
            "primary",
            confirm(
                format!("Approve resuming {}?", s.name),
                what,
                "Approve resume",
                "primary",
            ),
        ),
        button(
            ACTION_REJECT,
            "Reject",
            &value,
            "danger",
            confirm(
                format!("Reject the request to resume {}?", s.name),
                format!(
                    "`{}` stays paused; the request is dropped, recorded under your name.",
                    s.name
                ),
                "Reject",
                "danger",
            ),
        ),
    ]
}

const RED: &str = "#d32f2f";
const GREEN: &str = "#2e7d32";

/// How people call each source.
pub fn source_label(s: Source) -> &'static str {
    match s {
        Source::Desktop => "the desktop app",
        Source::Tray => "the tray menu",
        Source::Button => "the office button",
        Source::Cli => "the CLI",
        Source::Slack => "Slack",
        Source::Web => "the web console",
        Source::Api => "the API",
        Source::System => "the control plane",
        Source::Adapter => "a broker adapter",
        Source::Guard => "a health guard",
        Source::Other => "an unknown source",
    }
}

pub fn duration_words(d: chrono::Duration) -> String {
    let mins = d.num_minutes().max(0);
    match mins {
        0 => format!("{} s", d.num_seconds().max(0)),
        1..=59 => format!("{mins} min"),
        _ => format!("{} h {} min", mins / 60, mins % 60),
    }
}

pub fn title(s: &Switch) -> String {
    let what = if s.primary {
        "Background workers".to_string()
    } else {
        format!("Switch `{}`", s.name)
    };
    match s.state {
        SwitchState::Paused => format!("{what} PAUSED"),
        SwitchState::Running => match &s.ramp {
            Some(r) => format!("{what} resuming gradually (over {} s)", r.duration_secs),
            None => format!("{what} resumed"),
        },
    }
}

fn undo(s: &Switch, ctx: &Ctx) -> String {
    match s.state {
        SwitchState::Paused => format!(
            "To resume gradually: `brb resume {} --ramp steps:10m`, `{} resume`, or the console.",
            s.name, ctx.command
        ),
        SwitchState::Running => format!(
            "To pause again: `brb pause {} --reason ...`, `{} pause <reason>`, or the button.",
            s.name, ctx.command
        ),
    }
}

fn fields(s: &Switch) -> Vec<Value> {
    let mut f = vec![
        json!({"type": "mrkdwn", "text": format!("*Switch*\n`{}` — {}", s.name, s.description)}),
        json!({"type": "mrkdwn", "text": format!("*State*\n{}", s.state)}),
        json!({"type": "mrkdwn", "text": format!("*By*\n{}", s.changed_by)}),
        json!({"type": "mrkdwn", "text": format!("*From*\n{}", source_label(s.source))}),
        json!({"type": "mrkdwn", "text": format!("*Since*\n<!date^{}^{{date_short_pretty}} {{time_secs}}|{}>",
            s.changed_at.timestamp(), s.changed_at.format("%Y-%m-%d %H:%M:%S UTC"))}),
    ];
    f.push(json!({"type": "mrkdwn", "text": format!("*Reason*\n{}",
        s.reason.as_deref().unwrap_or("(none given)"))}));
    f
}

/// The Slack message for a state change: red for paused, green for resumed.
pub fn slack_change(s: &Switch, ctx: &Ctx) -> Value {
    let color = match s.state {
        SwitchState::Paused => RED,
        SwitchState::Running => GREEN,
    };
    let mut text = format!(
        "[{}] {} by {} from {}{}",
        ctx.environment,
        title(s),
        s.changed_by,
        source_label(s.source),
        s.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    if s.state == SwitchState::Paused && ctx.here_on_pause {
        text = format!("<!here> {text}");
    }
    json!({
        "text": text,
        "attachments": [{
            "color": color,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text",
                    "text": format!("[{}] {}", ctx.environment, title(s))}},
                {"type": "section", "fields": fields(s)},
                {"type": "actions", "elements": actions(s, ctx)},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": undo(s, ctx)}]},
            ]
        }]
    })
}

/// The buttons under a change message.
fn actions(s: &Switch, ctx: &Ctx) -> Vec<Value> {
    let mut out = vec![json!({"type": "button",
        "text": {"type": "plain_text", "text": "Open the console"},
        "url": ctx.console_url})];
    if s.state == SwitchState::Paused && ctx.interactive {
        let approval = ctx.approval.contains(&s.name);
        out.push(resume_button(s, approval));
        // Where resumes need approval, the pause message also decides the request filed
        // during this pause (dispatched in `slack::interaction`).
        if approval {
            out.extend(decide_buttons(s, s.resume_request.as_deref()));
        }
    }
    out
}

const AMBER: &str = "#f9a825";

/// A resume request filed: who, why, which release and guards, until when; with "Approve
/// resume" and "Reject" when Slack can deliver presses.
pub fn slack_request(s: &Switch, r: &ResumeRequest, ctx: &Ctx) -> Value {
    let release = release_words(r.ramp.as_ref(), &r.guards);
    let text = format!(
        "[{}] {} asks to resume `{}` {release}: {}. Another operator must approve it before {}.",
        ctx.environment,
        r.requested_by,
        s.name,
        r.reason,
        r.expires_at.format("%H:%M:%S UTC")
    );
    let mut actions: Vec<Value> = Vec::new();
    if ctx.interactive {
        actions.extend(decide_buttons(s, Some(r)));
    }
    actions.push(json!({"type": "button",
        "text": {"type": "plain_text", "text": "Open the console"},
        "url": ctx.console_url}));
    json!({
        "text": text,
        "attachments": [{
            "color": AMBER,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text",
                    "text": format!("[{}] Resume requested: {}", ctx.environment, s.name)}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": format!("*Switch*\n`{}` — {}", s.name, s.description)},
                    {"type": "mrkdwn", "text": format!("*Requested by*\n{} from {}",
                        r.requested_by, source_label(r.source))},
                    {"type": "mrkdwn", "text": format!("*Release*\n{release}")},
                    {"type": "mrkdwn", "text": format!("*Expires*\n<!date^{}^{{time_secs}}|{}>",
                        r.expires_at.timestamp(), r.expires_at.format("%Y-%m-%d %H:%M:%S UTC"))},
                    {"type": "mrkdwn", "text": format!("*Reason*\n{}", r.reason)},
                ]},
                {"type": "actions", "elements": actions},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "Another operator approves with `brb approve {}`, the console or the button; \
                     anyone rejects with `brb reject {}`. {} cannot approve their own request.",
                    s.name, s.name, r.requested_by)}]},
            ]
        }]
    })
}

/// A request rejected or lapsed: the switch stays paused. The audit entry's reason names the
/// request, its requester and who rejected it (or when it lapsed).
pub fn slack_request_closed(s: &Switch, entry: &AuditEntry, ctx: &Ctx) -> Value {
    let what = entry.reason.clone().unwrap_or_default();
    let text = format!("[{}] `{}` stays paused: {what}.", ctx.environment, s.name);
    json!({
        "text": text,
        "attachments": [{
            "color": RED,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": format!("{} <{}|Open the console>", undo(s, ctx), ctx.console_url)}]},
            ]
        }]
    })
}

/// An approved request's resume: the change message, headed by who approved whose request.
pub fn slack_approved(s: &Switch, r: Option<&ResumeRequest>, ctx: &Ctx) -> Value {
    let mut v = slack_change(s, ctx);
    let who = match r {
        Some(r) => format!(
            "approved by {} (requested by {})",
            s.changed_by, r.requested_by
        ),
        None => format!("approved by {}", s.changed_by),
    };
    v["text"] = json!(format!("[{}] Resume {who}: {}", ctx.environment, title(s)));
    v["attachments"][0]["blocks"][0]["text"]["text"] =
        json!(format!("[{}] Resume {who}", ctx.environment));
    v
}

/// Break glass: the resume message, loud (always `@here`, red, the words BREAK GLASS first),
/// since it skipped the second operator.
pub fn slack_break_glass(s: &Switch, dropped: Option<&ResumeRequest>, ctx: &Ctx) -> Value {
    let mut v = slack_change(s, ctx);
    let mut text = format!(
        "<!here> :rotating_light: [{}] BREAK GLASS: {} by {} WITHOUT APPROVAL{}",
        ctx.environment,
        title(s),
        s.changed_by,
        s.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    if let Some(r) = dropped {
        text.push_str(&format!(
            "; the open request {} by {} was dropped",
            r.id, r.requested_by
        ));
    }
    v["text"] = json!(text);
    v["attachments"][0]["color"] = json!(RED);
    v["attachments"][0]["blocks"][0]["text"]["text"] = json!(format!(
        ":rotating_light: [{}] BREAK GLASS: {} without approval",
        ctx.environment, s.name
    ));
    v
}

/// The Slack message of an outbox notification.
pub fn slack_message(
    kind: NotificationKind,
    s: &Switch,
    news: &News,
    ctx: &Ctx,
    now: DateTime<Utc>,
) -> Value {
    match kind {
        NotificationKind::Reminder => slack_reminder(s, ctx, now),
        NotificationKind::Change => slack_change(s, ctx),
        NotificationKind::ResumeApproved => slack_approved(s, news.request.as_ref(), ctx),
        NotificationKind::BreakGlass => slack_break_glass(s, news.request.as_ref(), ctx),
        NotificationKind::ResumeRequested => match &news.request {
            Some(r) => slack_request(s, r, ctx),
            None => slack_change(s, ctx),
        },
        NotificationKind::ResumeRejected | NotificationKind::ResumeExpired => match &news.entry {
            Some(e) => slack_request_closed(s, e, ctx),
            None => slack_change(s, ctx),
        },
    }
}

/// The webhook event name (`X-BRB-Event` and the body's `type`). An approval and break glass
/// are resumes, so they stay `switch.changed` (a receiver that follows the state sees every
/// change) and say how in `approval`.
pub fn webhook_event(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Reminder => "switch.reminder",
        NotificationKind::ResumeRequested => "switch.resume_requested",
        NotificationKind::ResumeRejected => "switch.resume_rejected",
        NotificationKind::ResumeExpired => "switch.resume_expired",
        NotificationKind::Change
        | NotificationKind::ResumeApproved
        | NotificationKind::BreakGlass => "switch.changed",
    }
}

/// What the pause message becomes after a press on "Resume…" (sent through the press's
/// `response_url` with `replace_original`): the outcome, and no button left to press.
pub fn slack_pressed(s: &Switch, changed: bool, ctx: &Ctx) -> Value {
    let text = if changed {
        format!(
            "[{}] {} by {} from Slack (the Resume… button)",
            ctx.environment,
            title(s),
            s.changed_by
        )
    } else {
        format!(
            "[{}] `{}` was already {} (nothing changed).",
            ctx.environment, s.name, s.state
        )
    };
    replacing(text, s, ctx)
}

/// What a message becomes after a press decided its pause: `text`, and how to undo it; no
/// button left to press.
fn replacing(text: String, s: &Switch, ctx: &Ctx) -> Value {
    json!({
        "replace_original": true,
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": undo(s, ctx)}]},
        ],
    })
}

/// The answer to "Approve resume" (the message becomes the outcome, its buttons gone: the
/// pause is over) or "Reject" (only the presser sees it; the message keeps its buttons, and
/// the channel hears of the rejection through the outbox).
pub fn slack_decided(s: &Switch, r: &ResumeRequest, approved: bool, ctx: &Ctx) -> Value {
    if !approved {
        return slack_ephemeral(format!(
            "You rejected request {} by {}: `{}` stays paused.",
            r.id, r.requested_by, s.name
        ));
    }
    let text = format!(
        "[{}] Resume approved by {} (requested by {}): {}",
        ctx.environment,
        s.changed_by,
        r.requested_by,
        title(s)
    );
    replacing(text, s, ctx)
}

/// An answer only the presser sees, leaving the message as it is.
pub fn slack_ephemeral(text: String) -> Value {
    json!({"response_type": "ephemeral", "replace_original": false, "text": text})
}

/// The reminder while a switch stays paused: "Workers paused for 45 min by alice — reason".
pub fn reminder_text(s: &Switch, now: DateTime<Utc>) -> String {
    let what = if s.primary {
        "Workers".to_string()
    } else {
        format!("Switch {}", s.name)
    };
    format!(
        "{what} paused for {} by {}{}",
        duration_words(now - s.changed_at),
        s.changed_by,
        s.reason
            .as_deref()
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    )
}

pub fn slack_reminder(s: &Switch, ctx: &Ctx, now: DateTime<Utc>) -> Value {
    let text = format!("[{}] Reminder: {}", ctx.environment, reminder_text(s, now));
    json!({
        "text": text,
        "attachments": [{
            "color": RED,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": format!(":hourglass: {text}")}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": format!("{} <{}|Open the console>", undo(s, ctx), ctx.console_url)}]},
            ]
        }]
    })
}

/// The generic webhook body: the change as data.
pub fn webhook_body(
    kind: NotificationKind,
    s: &Switch,
    news: &News,
    ctx: &Ctx,
    now: DateTime<Utc>,
) -> Value {
    let mut v = json!({
        "type": webhook_event(kind),
        "environment": ctx.environment,
        "console_url": ctx.console_url,
        "switch": s,
    });
    let changed = format!(
        "{} by {} from {}",
        title(s),
        s.changed_by,
        source_label(s.source)
    );
    let entry_reason = || {
        news.entry
            .as_ref()
            .and_then(|e| e.reason.clone())
            .unwrap_or_default()
    };
    match kind {
        NotificationKind::Reminder => {
            v["text"] = json!(reminder_text(s, now));
            v["paused_for_secs"] = json!((now - s.changed_at).num_seconds().max(0));
        }
        NotificationKind::Change => v["text"] = json!(changed),
        NotificationKind::ResumeRequested => {
            if let Some(r) = &news.request {
                v["text"] = json!(format!(
                    "{} asks to resume {} {}: {} (expires {})",
                    r.requested_by,
                    s.name,
                    release_words(r.ramp.as_ref(), &r.guards),
                    r.reason,
                    r.expires_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
            v["request"] = json!(news.request);
        }
        NotificationKind::ResumeRejected => {
            v["text"] = json!(entry_reason());
            v["request"] = json!(news.request);
            v["rejected_by"] = json!(news.entry.as_ref().map(|e| e.actor.clone()));
        }
        NotificationKind::ResumeExpired => {
            v["text"] = json!(entry_reason());
            v["request"] = json!(news.request);
        }
        NotificationKind::ResumeApproved => {
            v["text"] = json!(format!("resume approved: {changed}"));
            v["approval"] = json!({
                "outcome": "approved",
                "approved_by": s.changed_by,
                "request": news.request,
            });
        }
        NotificationKind::BreakGlass => {
            v["text"] = json!(format!("BREAK GLASS, resumed without approval: {changed}"));
            v["approval"] = json!({
                "outcome": "break_glass",
                "by": s.changed_by,
                "dropped_request": news.request,
            });
        }
    }
    v
}

fn where_is_the_button(ctx: &Ctx) -> String {
    let mut s = format!(
        "*Where is the button?*\n• Web console: {}\n• Desktop app: the big toggle, or the tray icon's menu (Pause / Resume)\n• Terminal: `brb pause --reason ...` / `brb resume`\n• Here: `{} pause <reason>` / `{} resume`",
        ctx.console_url, ctx.command, ctx.command
    );
    if let Some(loc) = &ctx.office_button_location {
        s.push_str(&format!("\n• Office button: {loc}"));
    }
    s
}

/// `/bigred` or `/bigred status`.
pub fn slash_status(
    switches: &[Switch],
    counts: &WorkerCounts,
    ctx: &Ctx,
    now: DateTime<Utc>,
) -> Value {
    let mut lines = Vec::new();
    for s in switches {
        let mark = match s.state {
            SwitchState::Paused => ":red_circle:",
            SwitchState::Running => ":large_green_circle:",
        };
        let mut l = format!(
            "{mark} `{}` is *{}* since {} ago (by {} from {}){}",
            s.name,
            s.state,
            duration_words(now - s.changed_at),
            s.changed_by,
            source_label(s.source),
            s.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        if s.primary {
            l.push_str(&format!(
                "\n      workers: {} running, {} draining, {} paused{}",
                counts.running,
                counts.draining,
                counts.paused,
                if counts.stale > 0 {
                    format!(", {} stale", counts.stale)
                } else {
                    String::new()
                }
            ));
        }
        lines.push(l);
    }
    let text = format!(
        "[{}] Big Red Button status\n{}\n\n{}",
        ctx.environment,
        lines.join("\n"),
        where_is_the_button(ctx)
    );
    json!({
        "response_type": "ephemeral",
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn",
                "text": format!("*[{}] Big Red Button*\n{}", ctx.environment, lines.join("\n"))}},
            {"type": "section", "text": {"type": "mrkdwn", "text": where_is_the_button(ctx)}},
        ]
    })
}

/// The answer to a pause or resume from Slack, visible to the channel.
pub fn slash_changed(s: &Switch, changed: bool, ctx: &Ctx) -> Value {
    let text = if changed {
        format!(
            "{} by {} from Slack{}",
            title(s),
            s.changed_by,
            s.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )
    } else {
        format!("`{}` was already {} (nothing changed).", s.name, s.state)
    };
    json!({
        "response_type": "in_channel",
        "text": format!("[{}] {text}\n{}", ctx.environment, undo(s, ctx)),
    })
}

/// The follow-up to a pause or resume from Slack: the fleet's acknowledgement ("40/40 workers
/// paused in 85 ms"), or after `waited_secs` the workers that have not acknowledged yet.
pub fn slash_follow_up(s: &Switch, c: &WorkerCounts, done: bool, waited_secs: u64) -> String {
    let ack = c.current.as_ref().filter(|a| a.version == s.version);
    let (acked, total) = ack.map(|a| (a.acknowledged, a.total)).unwrap_or((0, 0));
    let word = match s.state {
        SwitchState::Paused => "paused",
        SwitchState::Running if s.ramp.is_some() => "resuming gradually",
        SwitchState::Running => "running",
    };
    let stale = if c.stale > 0 {
        format!(" ({} stale, not counted)", c.stale)
    } else {
        String::new()
    };
    if done {
        let ms = ack
            .and_then(|a| a.last_ack_ms)
            .map(|ms| format!(" in {ms} ms"))
            .unwrap_or_default();
        let draining = if c.draining > 0 {
            format!(", {} still finishing jobs in flight", c.draining)
        } else {
            String::new()
        };
        return format!(
            "`{}` v{}: {acked}/{total} workers {word}{ms}{draining}{stale}.",
            s.name, s.version
        );
    }
    if total == 0 {
        return format!(
            "`{}` v{}: no worker reports for this switch, so nothing confirms it after              {waited_secs} s{stale}.",
            s.name, s.version
        );
    }
    let late: Vec<String> = c
        .workers
        .iter()
        .filter(|w| !w.stale && w.observed_version < s.version)
        .map(|w| {
            format!(
                "`{}` (still {}, v{})",
                w.worker_id,
                w.status.as_str(),
                w.observed_version
            )
        })
        .collect();
    let more = if late.len() > 10 {
        format!(" and {} more", late.len() - 10)
    } else {
        String::new()
    };
    format!(
        ":warning: `{}` v{}: after {waited_secs} s only {acked}/{total} workers {word}{stale}. \
         Not acknowledged: {}{more}.",
        s.name,
        s.version,
        late.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    )
}

/// The follow-up when the switch changed again before the fleet acknowledged.
pub fn slash_superseded(s: &Switch, cur: &Switch) -> String {
    format!(
        "`{}` v{} was superseded by v{} ({} by {} from {}) before every worker acknowledged it.",
        s.name,
        s.version,
        cur.version,
        cur.state,
        cur.changed_by,
        source_label(cur.source)
    )
}

pub fn slash_refusal(user: &str, ctx: &Ctx) -> Value {
    json!({
        "response_type": "ephemeral",
        "text": format!(
            "Sorry @{user}, you are not on the list of people who can press the Big Red Button from Slack. \
             Nothing was changed. Ask an on-call engineer, or use the console: {}",
            ctx.console_url
        ),
    })
}

pub fn slash_help(ctx: &Ctx) -> Value {
    json!({
        "response_type": "ephemeral",
        "text": format!(
            "`{c}` or `{c} status`: where things stand and where the button is\n\
             `{c} pause <reason>`: pause every background worker\n\
             `{c} resume [steps:10m|linear:5m|now]`: release gradually (10% → 100% over \
             10 min unless said otherwise; `now` releases everything at once)\n\
             `{c} resume steps:10m --guard db_load < 80`: each step only while the guard \
             holds; it pauses again if the guard keeps failing",
            c = ctx.command
        ),
    })
}

pub fn slash_error(message: &str) -> Value {
    json!({"response_type": "ephemeral", "text": format!("That did not work: {message}. Nothing was changed.")})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            interactive: false,
            environment: "production".into(),
            console_url: "https://brb.example.com/".into(),
            office_button_location: Some("next to the coffee machine".into()),
            here_on_pause: true,
            command: "/bigred".into(),
            approval: Default::default(),
        }
    }

    fn sw(state: SwitchState) -> Switch {
        Switch {
            name: "workers".into(),
            description: "Pause all background workers".into(),
            primary: true,
            state,
            version: 7,
            changed_at: Utc::now() - chrono::Duration::minutes(45),
            changed_by: "alice".into(),
            source: Source::Button,
            reason: Some("db on fire".into()),
            ramp: None,
            resume_request: None,
        }
    }

    #[test]
    fn pause_message_has_everything() {
        let v = slack_change(&sw(SwitchState::Paused), &ctx());
        let text = v.to_string();
        for needle in [
            "<!here>",
            "PAUSED",
            "alice",
            "the office button",
            "db on fire",
            "https://brb.example.com/",
            "brb resume workers",
            RED,
            "production",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
        let v = slack_change(&sw(SwitchState::Running), &ctx());
        assert!(v.to_string().contains(GREEN));
        assert!(!v["text"].as_str().unwrap().contains("<!here>"));
    }

    #[test]
    fn reminder_reads_naturally() {
        let s = sw(SwitchState::Paused);
        assert_eq!(
            reminder_text(&s, s.changed_at + chrono::Duration::minutes(45)),
            "Workers paused for 45 min by alice — db on fire"
        );
    }
}
