//! Every message text the control plane sends to people, in one place: Slack messages on a
//! change and as reminders, the slash command's answers, and the generic webhook body.
//!
//! Each message answers the questions an engineer has in a crisis: what changed, who did it,
//! from where, why, since when, where to look, and how to undo it.

use brb_api::{Source, Switch, SwitchState, WorkerCounts};
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
}

/// `action_id` of the "Resume…" button on a pause message.
pub const ACTION_RESUME: &str = "brb_resume";

/// What a "Resume…" button says about the pause it belongs to: the switch and the pause
/// instant (`changed_at` while paused), so a press on an old message never resumes a later
/// pause, and a description edit meanwhile does not make the button stale.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumeButton {
    pub switch: String,
    pub paused_at_ms: i64,
}

/// The words for the default release, as the confirm dialog shows it.
fn default_release_words() -> String {
    let r = brb_api::RampSpec::default_release();
    let steps = match &r.shape {
        brb_api::RampShape::Steps { fractions } => fractions
            .iter()
            .map(|f| format!("{}%", (f * 100.0).round()))
            .collect::<Vec<_>>()
            .join(" → "),
        _ => "linear".to_string(),
    };
    format!("{steps} over {} min", r.duration_secs / 60)
}

/// The "Resume…" button of a pause message, with Slack's confirmation dialog (the release is
/// gradual, never all at once: the confirm button says so).
pub fn resume_button(s: &Switch) -> Value {
    let value = serde_json::to_string(&ResumeButton {
        switch: s.name.clone(),
        paused_at_ms: s.changed_at.timestamp_millis(),
    })
    .unwrap_or_default();
    let title: String = format!("Resume {}?", s.name).chars().take(100).collect();
    json!({
        "type": "button",
        "action_id": ACTION_RESUME,
        "text": {"type": "plain_text", "text": "Resume…"},
        "value": value,
        "style": "primary",
        "confirm": {
            "title": {"type": "plain_text", "text": title},
            "text": {"type": "mrkdwn", "text": format!(
                "Releases the work gradually ({}), recorded under your name. Releasing \
                 everything at once is not offered here: use the console for that.",
                default_release_words())},
            "confirm": {"type": "plain_text", "text": "Resume gradually"},
            "deny": {"type": "plain_text", "text": "Cancel"},
            "style": "primary",
        },
    })
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
        out.push(resume_button(s));
        // APPROVAL HOOK (issue #17 part 3, resume approval): where a switch requires approval,
        // a pending resume request's message gets an "Approve resume" button here (its own
        // action_id, value naming the request), dispatched in `slack::interaction`. It is
        // deliberately absent until approvals exist.
    }
    out
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
    json!({
        "replace_original": true,
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": undo(s, ctx)}]},
        ],
    })
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
pub fn webhook_body(reminder: bool, s: &Switch, ctx: &Ctx, now: DateTime<Utc>) -> Value {
    let mut v = json!({
        "type": if reminder { "switch.reminder" } else { "switch.changed" },
        "environment": ctx.environment,
        "console_url": ctx.console_url,
        "switch": s,
    });
    if reminder {
        v["text"] = json!(reminder_text(s, now));
        v["paused_for_secs"] = json!((now - s.changed_at).num_seconds().max(0));
    } else {
        v["text"] = json!(format!(
            "{} by {} from {}",
            title(s),
            s.changed_by,
            source_label(s.source)
        ));
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
