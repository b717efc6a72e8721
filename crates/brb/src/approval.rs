//! `brb approve`, `brb reject`, `brb requests`, and what `brb resume` does on a switch whose
//! resumes need a second operator (files the request) or with `--break-glass`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use brb_api::{
    BreakGlassRequest, CreateResumeRequest, DecideResumeRequest, ResumeRequest, Source, Switch,
};
use brb_client::Client;
use chrono::Utc;
use clap::Args;

use crate::cli::{explain, primary};

#[derive(Args)]
pub struct DecideArgs {
    /// The switch (default: the primary one, the Big Red Button).
    switch: Option<String>,
    /// The request's id (default: the switch's open request).
    #[arg(long)]
    id: Option<u64>,
    /// Your words, kept in the audit log.
    #[arg(long, short)]
    reason: Option<String>,
    #[arg(long)]
    json: bool,
}

fn describe(r: &ResumeRequest) -> String {
    let ramp = match &r.ramp {
        Some(s) => format!("gradually over {}s", s.duration_secs),
        None => "all at once".to_string(),
    };
    let left = (r.expires_at - Utc::now()).num_seconds().max(0);
    format!(
        "request {} by {} ({ramp}): {:?}; expires {} (in {left}s)",
        r.id,
        r.requested_by,
        r.reason,
        r.expires_at.format("%H:%M:%S UTC")
    )
}

/// `brb resume` on a switch that needs approval: files the request instead and says so.
pub async fn request(
    client: &Client,
    name: &str,
    reason: Option<String>,
    ramp: Option<brb_api::RampSpec>,
    guards: Vec<brb_api::GuardSpec>,
    json: bool,
) -> Result<ExitCode> {
    let reason = reason.unwrap_or_else(|| "asked with `brb resume` (no reason given)".into());
    let s = client
        .request_resume(
            name,
            &CreateResumeRequest {
                reason,
                ramp,
                guards,
                source: Some(Source::Cli),
            },
        )
        .await
        .map_err(explain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if let Some(r) = &s.resume_request {
        println!(
            "{name} needs another operator's approval to resume: {}. It stays PAUSED until \
             someone else runs `brb approve {name}`.",
            describe(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `brb resume --break-glass`: an admin resumes without approval.
pub async fn break_glass(
    client: &Client,
    name: &str,
    reason: Option<String>,
    ramp: Option<brb_api::RampSpec>,
    json: bool,
) -> Result<Switch> {
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        bail!("--break-glass needs --reason: say why the approval is skipped");
    };
    let s = client
        .break_glass(
            name,
            &BreakGlassRequest {
                reason,
                ramp,
                source: Some(Source::Cli),
            },
        )
        .await
        .map_err(explain)?;
    if !json {
        eprintln!(
            "brb: BREAK GLASS: {name} resumed without approval; this is recorded and announced"
        );
    }
    Ok(s)
}

/// `brb approve` / `brb reject`.
pub async fn decide(client: &Client, a: DecideArgs, approve: bool) -> Result<ExitCode> {
    let name = match a.switch {
        Some(n) => n,
        None => primary(client).await?,
    };
    let id = match a.id {
        Some(id) => id,
        None => match client.switch(&name).await.map_err(explain)?.resume_request {
            Some(r) => r.id,
            None => bail!("{name} has no open resume request (`brb requests` lists them)"),
        },
    };
    let s = client
        .decide_resume(
            &name,
            id,
            approve,
            &DecideResumeRequest {
                reason: a.reason,
                source: Some(Source::Cli),
            },
        )
        .await
        .map_err(explain)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if approve {
        let ramp = s
            .ramp
            .as_ref()
            .map(|r| format!(", ramping up over {}s", r.duration_secs))
            .unwrap_or_default();
        println!(
            "{name} is {} (v{}{ramp}): {}",
            s.state,
            s.version,
            s.reason.unwrap_or_default()
        );
    } else {
        println!(
            "{name} stays {} (v{}): request {id} rejected",
            s.state, s.version
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `brb requests`: the open resume requests.
pub async fn list(client: &Client, json: bool) -> Result<ExitCode> {
    let l = client.resume_requests().await.map_err(explain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(ExitCode::SUCCESS);
    }
    if l.requests.is_empty() {
        println!("no open resume requests");
    }
    for p in &l.requests {
        println!("{:<20} {}", p.switch, describe(&p.request));
    }
    Ok(ExitCode::SUCCESS)
}
