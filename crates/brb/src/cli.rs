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
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
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

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?}: expected viewer, operator or admin"))
}

async fn primary(client: &Client) -> Result<String> {
    let info = client.info().await.map_err(explain)?;
    Ok(info.primary_switch)
}

/// Adds a hint to the errors people hit most.
fn explain(e: ClientError) -> anyhow::Error {
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
        out.push_str(&format!(": {r:?}"));
    }
    out
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
        reason: a.reason,
        source: Some(Source::Cli),
        expected_version: a.expected_version,
    };
    let s = match client.set_state(&name, &req).await {
        Ok(s) => s,
        Err(ClientError::Api {
            code: brb_api::ErrorCode::VersionConflict,
            current: Some(cur),
            ..
        }) => {
            bail!(
                "{name} changed meanwhile: it is now {} at version {} (by {} via {}); \
                 nothing was done",
                cur.state,
                cur.version,
                cur.changed_by,
                cur.source
            )
        }
        Err(e) => return Err(explain(e)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let verb = match s.state {
            SwitchState::Paused => "PAUSED",
            SwitchState::Running => "running",
        };
        println!(
            "{} is {verb} (v{}, changed by {} via {} {})",
            s.name,
            s.version,
            s.changed_by,
            s.source,
            ago(s.changed_at, Utc::now())
        );
    }
    Ok(ExitCode::SUCCESS)
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
                        Ok(ev) => {
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
            "#{:<5} {} {:<16} {:<22} v{:<4} by {} via {}{}{}",
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
            e.reason
                .as_deref()
                .map(|r| format!(": {r:?}"))
                .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(client: &Client, cmd: TokenCmd) -> Result<ExitCode> {
    match cmd {
        TokenCmd::Create { name, role, json } => {
            let t = client
                .create_token(&CreateTokenRequest { name, role })
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
                    println!(
                        "{:<12} {:<24} {:<9} created {}{}",
                        t.id,
                        t.name,
                        t.role,
                        t.created_at.format("%Y-%m-%d %H:%M"),
                        t.revoked_at
                            .map(|r| format!(", REVOKED {}", r.format("%Y-%m-%d %H:%M")))
                            .unwrap_or_default()
                    );
                }
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
}
