//! The client subcommands. Human output by default, `--json` for scripts; errors go to stderr
//! with a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use brb_api::{
    CreateSwitchRequest, CreateTokenRequest, Role, SetStateRequest, Source, Switch, SwitchState,
    UpdateSwitchRequest,
};
use brb_client::{Client, ClientError, EventScope};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use futures_util::StreamExt;

#[derive(Args)]
pub struct ChangeArgs {
    /// The switch (default: the primary one, the Big Red Button).
    switch: Option<String>,
    /// Why: recorded in the audit log and shown to everyone.
    #[arg(long, short)]
    reason: Option<String>,
    /// Refuse unless the switch is at this version (optimistic concurrency).
    #[arg(long)]
    expected_version: Option<u64>,
    /// Resume gradually: PRESET:DURATION, e.g. steps:10m (10%→25%→50%→100%) or linear:5m.
    #[arg(long, value_parser = parse_ramp)]
    ramp: Option<brb_api::RampSpec>,
    /// With a stepped --ramp: a health guard, e.g. 'db_load < 80' or
    /// 'db_load < 80, interval=10s, failures=3' (repeatable, at most 4). Each step proceeds
    /// only while every guard passes; no data holds the step; a guard failing `failures`
    /// checks in a row pauses again.
    #[arg(long = "guard", value_parser = parse_guard)]
    guards: Vec<brb_api::GuardSpec>,
    /// Seconds to wait for the workers to acknowledge (0: do not wait).
    #[arg(long, default_value_t = 10.0)]
    wait: f64,
    /// With pause: then wait until no job is in flight on any live worker, up to this long
    /// (`--wait-drained` is 60s; `--wait-drained=5m`). Exits with status 1 if they have not
    /// drained by then.
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, require_equals = true,
        default_missing_value = "60s", value_parser = parse_secs)]
    wait_drained: Option<u64>,
    /// With resume, admins only: resume a switch that needs approval without it (needs
    /// --reason; recorded and announced as BREAK GLASS).
    #[arg(long)]
    break_glass: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RampArgs {
    /// The switch (default: the primary one, the Big Red Button).
    switch: Option<String>,
    /// Why: recorded in the audit log.
    #[arg(long, short)]
    reason: Option<String>,
    /// Refuse unless the switch is at this version.
    #[arg(long)]
    expected_version: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum RampCmd {
    /// Freeze the admitted share of work where it is (for at most a day).
    Hold(RampArgs),
    /// Go on with a held release, over what was left of it.
    Continue(RampArgs),
    /// Make the rest of the release take longer: e.g. `brb ramp extend 5m`.
    Extend {
        /// How much longer: 90s, 5m, 1h.
        #[arg(value_parser = parse_secs)]
        by: u64,
        #[command(flatten)]
        a: RampArgs,
    },
    /// Stop the release: back to paused (never to running at once).
    Abort(RampArgs),
}

fn parse_ramp(s: &str) -> Result<brb_api::RampSpec, String> {
    brb_api::RampSpec::parse(s).map_err(|e| e.to_string())
}

fn parse_guard(s: &str) -> Result<brb_api::GuardSpec, String> {
    brb_api::GuardSpec::parse(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Expiry: a duration from now (30d, 12h) or an instant (2027-01-31T00:00:00Z).
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
        /// Limit the token to these switches (comma-separated).
        #[arg(long, value_delimiter = ',')]
        switches: Vec<String>,
        /// With --switches: the token may pause but never resume (an office button).
        #[arg(long, requires = "switches")]
        pause_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give a token a new secret (printed once); the old one works for the grace period.
    Rotate {
        id: String,
        /// How long the old secret keeps working: 0, 30m, 1h, up to 7d.
        #[arg(long, default_value = "1h", value_parser = parse_secs)]
        grace: u64,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: it stops working at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum SwitchCmd {
    /// Create a switch (a feature kill switch).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Change a switch's description.
    Describe { name: String, description: String },
    /// Delete a switch (not the primary one). Its audit history stays.
    Delete { name: String },
}

pub(crate) fn parse_secs(s: &str) -> Result<u64, String> {
    brb_api::parse_duration(s).ok_or_else(|| format!("{s:?}: expected e.g. 0, 30m, 1h or 7d"))
}

fn parse_expiry(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Some(secs) = brb_api::parse_duration(s) {
        return Ok(chrono::Utc::now() + chrono::Duration::seconds(secs as i64));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| format!("{s:?}: expected a duration (30d, 12h) or an RFC 3339 instant"))
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?}: expected viewer, operator or admin"))
}

pub(crate) async fn primary(client: &Client) -> Result<String> {
    let info = client.info().await.map_err(explain)?;
    Ok(info.primary_switch)
}

/// Adds a hint to the errors people hit most.
pub(crate) fn explain(e: ClientError) -> anyhow::Error {
    use brb_api::ErrorCode as C;
    let hint = match e.code() {
        Some(C::Unauthorized) => {
            "\n  hint: set BRB_TOKEN (or --token-file) to a token from `brb token create`"
        }
        Some(C::Forbidden) => "\n  hint: this needs a token with a higher role",
        _ => match e {
            ClientError::Unreachable(_) => {
                "\n  hint: is `brb server` running? BRB_URL says where it is"
            }
            _ => "",
        },
    };
    anyhow::anyhow!("{e}{hint}")
}

pub async fn status(client: &Client, switch: Option<String>, json: bool) -> Result<ExitCode> {
    let switches = match switch {
        Some(name) => vec![client.switch(&name).await.map_err(explain)?],
        None => client.switches().await.map_err(explain)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&switches)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    for s in &switches {
        println!("{}", line(s, now));
    }
    Ok(ExitCode::SUCCESS)
}

fn line(s: &Switch, now: DateTime<Utc>) -> String {
    let state = match s.state {
        SwitchState::Paused => "PAUSED ",
        SwitchState::Running => "running",
    };
    let star = if s.primary { "*" } else { " " };
    let mut out = format!(
        "{star}{:<20} {state}  v{:<4} since {} by {} via {}",
        s.name,
        s.version,
        ago(s.changed_at, now),
        s.changed_by,
        s.source
    );
    if let Some(r) = &s.reason {
        out.push_str(": ");
        out.push_str(&quoted(r));
    }
    if let Some(r) = s.ramp.as_ref().filter(|r| !r.is_over(now)) {
        if let Some(g) = &r.guard {
            let conds: Vec<String> = g.guards.iter().map(|g| g.to_string()).collect();
            out.push_str(&format!(
                " [guarded release at {:.0}% (step {}/{}), guard {}]",
                s.admitted_fraction(now) * 100.0,
                g.step + 1,
                g.steps.len(),
                conds.join(", ")
            ));
            return out;
        }
        if r.held.is_some() {
            // A hold's own end (a day) is not a plan anybody made: say it is held.
            out.push_str(&format!(
                " [release held at {:.0}%: `brb ramp continue` goes on]",
                s.admitted_fraction(now) * 100.0
            ));
            return out;
        }
        out.push_str(&format!(
            " [ramping: {:.0}% admitted, 100% in {}s]",
            s.admitted_fraction(now) * 100.0,
            (r.ends_at() - now).num_seconds().max(0)
        ));
    }
    out
}

/// Text people typed (a reason), in double quotes, as it reads: see [`printable`]. `"` and `\`
/// are escaped too, so where the text ends stays unambiguous.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_printable(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// Text from the control plane as text: every script, combining marks (Hindi's vowel signs,
/// Thai's tone marks), zero-width joiners and emoji sequences print as they are, because
/// escaping them makes a reason unreadable. Only what would act on the terminal instead of
/// being read is escaped, as `\u{..}`: control characters (ESC starts terminal escape
/// sequences; CR and LF would forge lines of output), the bidirectional embeddings, overrides
/// and isolates (U+202A–U+202E, U+2066–U+2069: they reorder the rest of the line, so a line
/// could show other words than it holds), and the line and paragraph separators. The
/// directional marks (U+200E, U+200F, U+061C) stay: right-to-left text needs them and they
/// reorder nothing beyond themselves.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_printable(&mut out, c);
    }
    out
}

fn push_printable(out: &mut String, c: char) {
    let dangerous = c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}');
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if dangerous => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        c => out.push(c),
    }
}

pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h{}m ago", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d ago", secs / 86_400),
    }
}

pub async fn change(client: &Client, to: SwitchState, a: ChangeArgs) -> Result<ExitCode> {
    let name = match a.switch {
        Some(n) => n,
        None => primary(client).await?,
    };
    let req = SetStateRequest {
        state: to,
        reason: a.reason.clone(),
        source: Some(Source::Cli),
        expected_version: a.expected_version,
        ramp: a.ramp.clone(),
        guards: a.guards.clone(),
    };
    if a.ramp.is_some() && to == SwitchState::Paused {
        bail!("--ramp applies to resume only");
    }
    if !a.guards.is_empty() && to == SwitchState::Paused {
        bail!("--guard applies to resume only");
    }
    brb_api::validate_guards(&a.guards, a.ramp.as_ref())?;
    if a.wait_drained.is_some() && to != SwitchState::Paused {
        bail!("--wait-drained applies to pause only");
    }
    if a.break_glass && to != SwitchState::Running {
        bail!("--break-glass applies to resume only");
    }
    let sent = if a.break_glass {
        crate::approval::break_glass(client, &name, a.reason.clone(), a.ramp.clone(), a.json)
            .await
            .map_err(ClientErrorOr::Other)
    } else {
        client
            .set_state(&name, &req)
            .await
            .map_err(ClientErrorOr::Client)
    };
    let s = match sent {
        Ok(s) => s,
        Err(ClientErrorOr::Other(e)) => return Err(e),
        Err(ClientErrorOr::Client(ClientError::Api {
            code: brb_api::ErrorCode::ApprovalRequired,
            ..
        })) => {
            return crate::approval::request(client, &name, a.reason, a.ramp, a.guards, a.json)
                .await;
        }
        Err(ClientErrorOr::Client(e)) => match e {
            ClientError::Api {
                code: brb_api::ErrorCode::VersionConflict,
                current: Some(cur),
                ..
            } => {
                bail!(
                    "{name} changed meanwhile: it is now {} at version {} (by {} via {}); \
                     nothing was done",
                    cur.state,
                    cur.version,
                    cur.changed_by,
                    cur.source
                )
            }
            e => return Err(explain(e)),
        },
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let verb = match s.state {
            SwitchState::Paused => "PAUSED",
            SwitchState::Running => "running",
        };
        let ramp = s
            .ramp
            .as_ref()
            .map(|r| format!(", ramping up over {}s", r.duration_secs))
            .unwrap_or_default();
        println!(
            "{} is {verb} (v{}, changed by {} via {} {}{ramp})",
            s.name,
            s.version,
            s.changed_by,
            s.source,
            ago(s.changed_at, Utc::now())
        );
    }
    if a.wait > 0.0 && a.wait.is_finite() {
        wait_for_proof(client, &s, Duration::from_secs_f64(a.wait), a.json).await?;
    }
    if let Some(secs) = a.wait_drained {
        return wait_drained(client, &s, Duration::from_secs(secs), a.json).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// A change's failure: from the server (to look at its code), or already explained.
enum ClientErrorOr {
    Client(ClientError),
    Other(anyhow::Error),
}

/// Waits until every live worker has seen the pause and none has a job in flight: the point
/// where the database's load from the workers is really gone.
async fn wait_drained(
    client: &Client,
    s: &Switch,
    timeout: Duration,
    json: bool,
) -> Result<ExitCode> {
    let start = tokio::time::Instant::now();
    loop {
        let c = client.workers(&s.name).await.map_err(explain)?;
        let live: Vec<_> = c.workers.iter().filter(|w| !w.stale).collect();
        let busy: Vec<_> = live
            .iter()
            .filter(|w| w.observed_version < s.version || w.in_flight > 0)
            .collect();
        let in_flight: u64 = live.iter().map(|w| u64::from(w.in_flight)).sum();
        let done = busy.is_empty();
        if done || start.elapsed() >= timeout {
            if json {
                let v = serde_json::json!({
                    "drained": done,
                    "in_flight": in_flight,
                    "workers": live.len(),
                    "waited_ms": start.elapsed().as_millis() as u64,
                    "not_drained": busy.iter().map(|w| serde_json::json!({
                        "worker_id": w.worker_id,
                        "in_flight": w.in_flight,
                        "observed_version": w.observed_version,
                    })).collect::<Vec<_>>(),
                });
                println!("{v}");
            } else if done {
                println!(
                    "drained · 0 jobs in flight on {} live workers after {:.1} s",
                    live.len(),
                    start.elapsed().as_secs_f64()
                );
            } else {
                let names: Vec<String> = busy
                    .iter()
                    .take(10)
                    .map(|w| {
                        if w.observed_version < s.version {
                            format!("{} (has not seen the pause)", printable(&w.worker_id))
                        } else {
                            format!("{} ({} in flight)", printable(&w.worker_id), w.in_flight)
                        }
                    })
                    .collect();
                eprintln!(
                    "brb: not drained after {:.0} s: {in_flight} jobs in flight on {} of {} \
                     workers: {}{}",
                    timeout.as_secs_f64(),
                    busy.len(),
                    live.len(),
                    names.join(", "),
                    if busy.len() > 10 { ", ..." } else { "" }
                );
            }
            return Ok(if done {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn ramp(client: &Client, cmd: RampCmd) -> Result<ExitCode> {
    use brb_api::RampAction;
    let (action, by_secs, a) = match cmd {
        RampCmd::Hold(a) => (RampAction::Hold, None, a),
        RampCmd::Continue(a) => (RampAction::Continue, None, a),
        RampCmd::Extend { by, a } => (RampAction::Extend, Some(by), a),
        RampCmd::Abort(a) => (RampAction::Abort, None, a),
    };
    let name = match a.switch {
        Some(n) => n,
        None => primary(client).await?,
    };
    let req = brb_api::RampControlRequest {
        action,
        by_secs,
        reason: a.reason,
        source: Some(Source::Cli),
        expected_version: a.expected_version,
    };
    let s = client
        .ramp_control(&name, &req)
        .await
        .map_err(|e| match e {
            ClientError::Api {
                code: brb_api::ErrorCode::NoRamp,
                ..
            } => anyhow::anyhow!(
                "{name} has no gradual release in progress; nothing was done \
                 (`brb status` shows its state)"
            ),
            e => explain(e),
        })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let what = match (&s.state, &s.ramp) {
        (SwitchState::Paused, _) => "PAUSED (release aborted)".to_string(),
        (SwitchState::Running, Some(r)) if r.held.is_some() => format!(
            "running, release held at {:.0}%",
            r.fraction_at(now) * 100.0
        ),
        (SwitchState::Running, Some(r)) => format!(
            "running, releasing: {:.0}% now, 100% in {}s",
            r.fraction_at(now) * 100.0,
            (r.ends_at() - now).num_seconds().max(0)
        ),
        (SwitchState::Running, None) => "running".to_string(),
    };
    println!(
        "{} is {what} (v{}, changed by {} via {})",
        s.name, s.version, s.changed_by, s.source
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits until every live worker has acknowledged the switch's version, and says so: the
/// proof that the press worked, not just that it was recorded.
async fn wait_for_proof(client: &Client, s: &Switch, timeout: Duration, json: bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = client.workers(&s.name).await.map_err(explain)?;
        let cur = c
            .changes
            .iter()
            .find(|ch| ch.version == s.version)
            .cloned()
            .or(c.current.clone().filter(|ch| ch.version == s.version));
        let done = cur
            .as_ref()
            .is_some_and(|ch| ch.total > 0 && ch.acknowledged == ch.total);
        let out_of_time = tokio::time::Instant::now() >= deadline;
        if c.total == 0 {
            if !json {
                println!("{} · no workers are reporting for {}", s.state, s.name);
            }
            return Ok(());
        }
        if done || out_of_time {
            let (acked, total) = cur
                .as_ref()
                .map(|ch| (ch.acknowledged, ch.total))
                .unwrap_or((0, c.total - c.stale));
            if json {
                eprintln!("{}", serde_json::to_string(&c)?);
                return Ok(());
            }
            let mut line = format!("{} · {acked}/{total} workers acknowledged", s.state);
            match cur.as_ref().and_then(|ch| ch.last_ack_ms) {
                Some(ms) if done => line.push_str(&format!(" in {ms} ms")),
                _ => line.push_str(&format!(" after {:.1} s", timeout.as_secs_f64())),
            }
            if c.draining > 0 {
                line.push_str(&format!(" ({} still draining)", c.draining));
            }
            if c.stale > 0 {
                line.push_str(&format!(" ({} stale, not counted)", c.stale));
            }
            println!("{line}");
            if !done {
                let stragglers: Vec<String> = c
                    .workers
                    .iter()
                    .filter(|w| !w.stale && w.observed_version < s.version)
                    .take(10)
                    .map(|w| {
                        // A broker adapter says why it cannot act (its broker unreachable).
                        let why = w
                            .error
                            .as_deref()
                            .map(|e| format!(": {}", printable(e)))
                            .unwrap_or_default();
                        format!(
                            "{} ({}, v{}{why})",
                            printable(&w.worker_id),
                            w.status.as_str(),
                            w.observed_version
                        )
                    })
                    .collect();
                eprintln!("brb: not acknowledged yet: {}", stragglers.join(", "));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn watch(client: &Client, switch: Option<String>, json: bool) -> Result<ExitCode> {
    let scope = match &switch {
        Some(n) => EventScope::Switch(n.clone()),
        None => EventScope::All,
    };
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        match client.events(&scope, last_id.as_deref()).await {
            Ok(stream) => {
                backoff = Duration::from_millis(250);
                let mut stream = std::pin::pin!(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(brb_client::StreamItem::Alive) => {}
                        Ok(brb_client::StreamItem::Event(ev)) => {
                            if ev.id.is_some() {
                                last_id = ev.id.clone();
                            }
                            print_event(&ev, json)?;
                        }
                        Err(e) => {
                            eprintln!("brb: {e}; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(ClientError::Unreachable(e)) => {
                eprintln!("brb: cannot reach the control plane ({e}); retrying");
            }
            Err(e) => return Err(explain(e)),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn print_event(ev: &brb_client::sse::Event, json: bool) -> Result<()> {
    if json {
        println!("{}", ev.data);
        return Ok(());
    }
    match ev.event.as_str() {
        brb_api::events::SWITCH => {
            let s: Switch = serde_json::from_str(&ev.data).context("reading a switch event")?;
            println!(
                "{} {}",
                s.changed_at.format("%Y-%m-%dT%H:%M:%SZ"),
                line(&s, Utc::now())
            );
        }
        brb_api::events::DELETED => {
            let d: brb_api::DeletedSwitch =
                serde_json::from_str(&ev.data).context("reading a deleted event")?;
            println!(
                "{} {} deleted (v{})",
                Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
                d.name,
                d.version
            );
        }
        _ => {}
    }
    Ok(())
}

pub async fn audit(
    client: &Client,
    switch: Option<String>,
    limit: u32,
    json: bool,
) -> Result<ExitCode> {
    let page = client
        .audit(switch.as_deref(), limit, None)
        .await
        .map_err(explain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &page.entries {
        let what = match (e.action, e.from, e.to) {
            (brb_api::AuditAction::StateChanged, Some(f), Some(t)) => format!("{f} -> {t}"),
            (a, _, _) => a.as_str().replace('_', " "),
        };
        println!(
            "#{:<5} {} {:<16} {:<22} v{:<4} by {} via {}{}{}{}",
            e.id,
            e.at.format("%Y-%m-%dT%H:%M:%SZ"),
            e.switch.as_deref().unwrap_or("-"),
            what,
            e.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            e.actor,
            e.source,
            e.remote_addr
                .as_deref()
                .map(|a| format!(" from {a}"))
                .unwrap_or_default(),
            e.ramp
                .as_ref()
                .filter(|_| matches!(
                    e.action,
                    brb_api::AuditAction::StateChanged | brb_api::AuditAction::RampChanged
                ))
                .map(|r| format!(" [ramp: {}]", ramp_plan(r)))
                .unwrap_or_default(),
            e.reason
                .as_deref()
                .map(|r| format!(": {}", quoted(r)))
                .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A release as the audit shows it: the plan a resume started, a guarded release's steps,
/// step and guards, or the hold it was put on.
fn ramp_plan(r: &brb_api::Ramp) -> String {
    let pct = |f: &f64| format!("{:.0}%", f * 100.0);
    if let Some(g) = &r.guard {
        let steps: Vec<String> = g.steps.iter().map(pct).collect();
        let conds: Vec<String> = g.guards.iter().map(|g| g.to_string()).collect();
        return format!(
            "guarded {} ({}s a step), at step {}/{}, guard {}",
            steps.join(" -> "),
            g.step_secs,
            g.step + 1,
            g.steps.len(),
            conds.join(", ")
        );
    }
    if let Some(h) = &r.held {
        return format!("held at {}", pct(&h.fraction));
    }
    match &r.shape {
        brb_api::RampShape::Steps { fractions } => {
            let steps: Vec<String> = fractions.iter().map(pct).collect();
            format!("{} over {}s", steps.join(" -> "), r.duration_secs)
        }
        brb_api::RampShape::Linear { from } => {
            format!("{} -> 100% linearly over {}s", pct(from), r.duration_secs)
        }
    }
}

pub async fn token(client: &Client, cmd: TokenCmd) -> Result<ExitCode> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            expires,
            switches,
            pause_only,
            json,
        } => {
            let scope = (!switches.is_empty()).then_some(brb_api::TokenScope {
                switches,
                pause_only,
            });
            let t = client
                .create_token(&CreateTokenRequest {
                    name,
                    role,
                    expires_at: expires,
                    scope,
                })
                .await
                .map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!(
                    "created token {} ({}) id {}",
                    t.token.name, t.token.role, t.token.id
                );
                println!("{}", t.secret);
                eprintln!("(the secret above is shown once; store it now)");
            }
        }
        TokenCmd::List { json } => {
            let list = client.tokens().await.map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for t in list {
                    let mut notes = Vec::new();
                    if let Some(r) = t.revoked_at {
                        notes.push(format!("REVOKED {}", r.format("%Y-%m-%d %H:%M")));
                    }
                    if let Some(e) = t.expires_at {
                        let word = if e <= chrono::Utc::now() {
                            "EXPIRED"
                        } else {
                            "expires"
                        };
                        notes.push(format!("{word} {}", e.format("%Y-%m-%d %H:%M")));
                    }
                    if let Some(sc) = &t.scope {
                        notes.push(format!(
                            "only {}{}",
                            sc.switches.join(","),
                            if sc.pause_only { " (pause only)" } else { "" }
                        ));
                    }
                    if let Some(u) = t.previous_secret_valid_until {
                        notes.push(format!("old secret until {}", u.format("%Y-%m-%d %H:%M")));
                    }
                    match (t.last_used_at, &t.last_used_addr) {
                        (Some(at), addr) => notes.push(format!(
                            "last used {}{}",
                            at.format("%Y-%m-%d %H:%M:%S"),
                            addr.as_deref()
                                .map(|a| format!(" from {a}"))
                                .unwrap_or_default()
                        )),
                        (None, _) => notes.push("never used".into()),
                    }
                    println!(
                        "{:<12} {:<24} {:<9} created {}; {}",
                        t.id,
                        t.name,
                        t.role,
                        t.created_at.format("%Y-%m-%d %H:%M"),
                        notes.join("; ")
                    );
                }
            }
        }
        TokenCmd::Rotate { id, grace, json } => {
            let t = client.rotate_token(&id, grace).await.map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!(
                    "rotated token {} ({}) id {}",
                    t.token.name, t.token.role, t.token.id
                );
                println!("{}", t.secret);
                eprintln!(
                    "(the new secret above is shown once; the old one works for {grace} s more)"
                );
            }
        }
        TokenCmd::Revoke { id } => {
            let t = client.revoke_token(&id).await.map_err(explain)?;
            println!("revoked token {} ({})", t.name, t.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn switch(client: &Client, cmd: SwitchCmd) -> Result<ExitCode> {
    match cmd {
        SwitchCmd::Create { name, description } => {
            let s = client
                .create_switch(&CreateSwitchRequest {
                    name,
                    description,
                    source: Some(Source::Cli),
                })
                .await
                .map_err(explain)?;
            println!("created switch {} (v{})", s.name, s.version);
        }
        SwitchCmd::Describe { name, description } => {
            let s = client
                .update_switch(
                    &name,
                    &UpdateSwitchRequest {
                        description,
                        source: Some(Source::Cli),
                    },
                )
                .await
                .map_err(explain)?;
            println!("updated switch {} (v{})", s.name, s.version);
        }
        SwitchCmd::Delete { name } => {
            client.delete_switch(&name).await.map_err(explain)?;
            println!("deleted switch {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_is_compact() {
        let now = Utc::now();
        assert_eq!(ago(now - chrono::Duration::seconds(5), now), "5s ago");
        assert_eq!(ago(now - chrono::Duration::minutes(45), now), "45m ago");
        assert_eq!(ago(now - chrono::Duration::minutes(90), now), "1h30m ago");
        assert_eq!(ago(now + chrono::Duration::seconds(5), now), "0s ago");
    }

    #[test]
    fn text_prints_as_text_and_only_terminal_controls_are_escaped() {
        // Hindi (vowel signs and a virama), Thai (tone marks), an emoji ZWJ sequence and an
        // RTL word with its mark: all as typed.
        for s in [
            "डेटाबेस पर बहुत ज़्यादा लोड है",
            "ฐานข้อมูลทำงานหนักเกินไป",
            "👩\u{200d}💻 on it, 👨\u{200d}👩\u{200d}👧",
            "עומס\u{200f} db",
        ] {
            assert_eq!(printable(s), s);
            assert_eq!(quoted(s), format!("\"{s}\""));
        }
        assert_eq!(
            quoted("a\u{1b}[2Jb\nc\"d\\e\u{7f}"),
            r#""a\u{1b}[2Jb\nc\"d\\e\u{7f}""#
        );
        // Bidi overrides and isolates would reorder what follows them on the line.
        assert_eq!(
            printable("ok \u{202e}gnp.exe\u{2066}x\u{2069}\u{2028}"),
            r"ok \u{202e}gnp.exe\u{2066}x\u{2069}\u{2028}"
        );
        // C1 controls too (NEL).
        assert_eq!(printable("a\u{85}b"), r"a\u{85}b");
    }
}
