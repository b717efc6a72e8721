//! "Test connection" on the connect screen: for each URL of a profile, which step failed —
//! the URL itself, the name lookup, the TCP connection, TLS, the token (401), the token's
//! rights (403), or a server that is not a Big Red Button control plane — so the person fixing
//! it knows whether to look at the address, the network, the CA file or the token.

use std::time::Duration;

use brb_api::Role;
use brb_client::{Client, ClientError, TlsOptions};
use serde::Serialize;

/// The step a probe stopped at (`ok` when none failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStep {
    /// The URL or the TLS files are unusable (checked before any network traffic).
    Settings,
    Dns,
    Connect,
    Tls,
    Unauthorized,
    Forbidden,
    WrongServer,
    Ok,
}

/// What one URL answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    pub url: String,
    pub step: ProbeStep,
    /// Words for people: what failed and what to check, or who the token is.
    pub message: String,
    /// On success: the server's environment name and colour (to prefill the profile).
    pub environment: Option<brb_api::Environment>,
    pub role: Option<Role>,
}

const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn report(url: &str, step: ProbeStep, message: String) -> ProbeReport {
    ProbeReport {
        url: url.to_string(),
        step,
        message,
        environment: None,
        role: None,
    }
}

/// Probes every URL (replicas are probed one by one: each must work on its own).
pub async fn probe_all(urls: &[String], token: Option<&str>, tls: &TlsOptions) -> Vec<ProbeReport> {
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        out.push(probe(u, token, tls).await);
    }
    out
}

/// Walks the steps in order and stops at the first that fails.
pub async fn probe(url: &str, token: Option<&str>, tls: &TlsOptions) -> ProbeReport {
    let url = url.trim().trim_end_matches('/');
    let parsed = match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        Ok(u) => {
            return report(
                url,
                ProbeStep::Settings,
                format!(
                    "\"{url}\" is not an http:// or https:// address with a host (scheme {})",
                    u.scheme()
                ),
            );
        }
        Err(e) => {
            return report(
                url,
                ProbeStep::Settings,
                format!("\"{url}\" is not a URL: {e}"),
            );
        }
    };
    let client = match Client::with_tls(&[url], token.map(str::to_string), tls) {
        Ok(c) => c,
        Err(e) => return report(url, ProbeStep::Settings, e.to_string()),
    };
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return report(
                    url,
                    ProbeStep::Dns,
                    format!("the name {host} does not resolve: {e}"),
                );
            }
            Err(_) => {
                return report(
                    url,
                    ProbeStep::Dns,
                    format!(
                        "looking up {host} took more than {} s",
                        DNS_TIMEOUT.as_secs()
                    ),
                );
            }
        };
    let mut last = format!("{host} resolves to no address");
    let mut connected = false;
    for a in &addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => {
                connected = true;
                break;
            }
            Ok(Err(e)) => last = format!("cannot connect to {a}: {e}"),
            Err(_) => last = format!("no answer from {a} within {} s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    if !connected {
        return report(url, ProbeStep::Connect, last);
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, client.info()).await {
        Err(_) => report(
            url,
            ProbeStep::WrongServer,
            format!(
                "{url} accepted the connection but did not answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            ),
        ),
        Ok(Ok(info)) => {
            let role = info.caller.role;
            let can = if role == Role::Viewer {
                "can watch but NOT pause (viewer): ask for an operator token"
            } else {
                "can pause and resume"
            };
            ProbeReport {
                url: url.to_string(),
                step: ProbeStep::Ok,
                message: format!(
                    "connected: {} control plane {}, token \"{}\" ({}) {can}",
                    info.environment.name,
                    info.server_version,
                    info.caller.name,
                    role.as_str()
                ),
                environment: Some(info.environment),
                role: Some(role),
            }
        }
        Ok(Err(ClientError::Api {
            status: 401,
            message,
            ..
        })) => report(
            url,
            ProbeStep::Unauthorized,
            format!("the token was refused (401): {message}"),
        ),
        Ok(Err(ClientError::Api {
            status: 403,
            message,
            ..
        })) => report(
            url,
            ProbeStep::Forbidden,
            format!("the token is valid but not allowed here (403): {message}"),
        ),
        Ok(Err(e @ (ClientError::Api { .. } | ClientError::Protocol { .. }))) => report(
            url,
            ProbeStep::WrongServer,
            format!("this is not a Big Red Button control plane: {e}"),
        ),
        // TCP worked, so a failure before any answer on https is the handshake (an unknown
        // CA, a wrong name, a client certificate the server wants).
        Ok(Err(e)) if parsed.scheme() == "https" => report(
            url,
            ProbeStep::Tls,
            format!("the TLS handshake failed (check the CA file and the host name): {e}"),
        ),
        Ok(Err(e)) => report(
            url,
            ProbeStep::WrongServer,
            format!("the server accepted the connection but gave no usable answer: {e}"),
        ),
    }
}
