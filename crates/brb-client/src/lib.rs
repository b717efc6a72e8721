//! Talking to the Big Red Button control plane from Rust.
//!
//! [`Client`] is a typed wrapper over the HTTP API (the same `brb-api` types the server uses),
//! shared by the CLI, the desktop app and the button daemon. [`sse`] is the event-stream parser,
//! kept free of I/O so it can be fuzzed and property-tested. The worker gate of the SDK
//! builds on both.
//!
//! Several base URLs may be given (control-plane replicas): a request that cannot reach one
//! (connection refused, timeout) is tried on the next; an answer from the server, even an
//! error, is final.

use std::time::Duration;

use brb_api::{
    ApiErrorBody, AuditPage, CreateSwitchRequest, CreateTokenRequest, CreatedToken, ErrorCode,
    ServerInfo, SetStateRequest, Switch, SwitchList, TokenInfo, TokenList, UpdateSwitchRequest,
};
use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod chunked;
mod direct;
pub mod gate;
pub mod sse;

pub use gate::{Attempt, FailurePolicy, Gate, GateConfig, Permit, Transport};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        /// With `version_conflict`: the switch as it is now.
        current: Option<Box<Switch>>,
    },
    /// No control plane could be reached.
    #[error("cannot reach the control plane: {0}")]
    Unreachable(String),
    /// The server answered something that is not our API (wrong URL, proxy page...).
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("invalid client setting: {0}")]
    Config(String),
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How long an event-stream request may wait for the answer's headers.
const STREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an event stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Event(sse::Event),
    /// Bytes arrived that completed no event (a keep-alive): the connection is alive.
    Alive,
}

/// Which event stream to open.
#[derive(Debug, Clone)]
pub enum EventScope {
    Switch(String),
    All,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For event streams: no overall timeout, TCP keep-alive on.
    stream_http: reqwest::Client,
    bases: Vec<String>,
    token: Option<String>,
    /// The local address outgoing connections are bound to (`None`: the system's choice).
    local_address: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the client does TLS. Certificates are always verified, against the operating system's
/// store plus `ca_file`; there is no switch to skip verification, and no fallback from
/// `https://` to `http://` (redirects are not followed either).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM bundle of extra CA certificates to trust (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS, with `client_key`.
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<std::path::PathBuf>,
    /// Allow `http://` URLs to hosts other than loopback. Only for a control plane behind a
    /// TLS-terminating proxy on a trusted hop (the server's `--insecure-http`).
    pub allow_insecure_http: bool,
}

impl TlsOptions {
    /// The bytes of the files these options name, read now (a rotated CA file or
    /// certificate is picked up by the next client built).
    fn material(&self) -> Result<TlsMaterial> {
        let ca_pem = match &self.ca_file {
            Some(ca) => Some(
                std::fs::read(ca)
                    .map_err(|e| ClientError::Config(format!("CA file {}: {e}", ca.display())))?,
            ),
            None => None,
        };
        let identity_pem = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    ClientError::Config(format!("client certificate {}: {e}", cert.display()))
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| {
                    ClientError::Config(format!("client key {}: {e}", key.display()))
                })?);
                Some(pem)
            }
            (None, None) => None,
            _ => {
                return Err(ClientError::Config(
                    "a client certificate needs both the certificate and the key".into(),
                ));
            }
        };
        Ok(TlsMaterial {
            ca_pem,
            identity_pem,
        })
    }

    /// The rustls settings for these options: built once per process for each distinct
    /// material, then shared (see [`TLS_CONFIGS`]).
    fn client_config(&self) -> Result<rustls::ClientConfig> {
        let m = self.material()?;
        let mut kept = TLS_CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = kept.iter().find(|(k, _)| *k == m) {
            return Ok(c.clone());
        }
        let c = self.build_config(&m)?;
        if kept.len() == TLS_CONFIGS_KEPT {
            kept.remove(0);
        }
        kept.push((m, c.clone()));
        Ok(c)
    }

    /// What reqwest builds for `use_rustls_tls()` (ring unless the application installed
    /// another provider; TLS 1.2 and 1.3; the system's CAs plus `ca_file`; ALPN HTTP/1.1).
    fn build_config(&self, m: &TlsMaterial) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        // Native stores often hold a few certificates rustls cannot parse: skip those.
        roots.add_parsable_certificates(native_roots().iter().cloned());
        if let (Some(pem), Some(ca)) = (&m.ca_pem, &self.ca_file) {
            let bad = |e: &dyn std::fmt::Display| {
                ClientError::Config(format!("CA file {}: {e}", ca.display()))
            };
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"no PEM certificate in it"));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(&e))?;
            }
        }
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| ClientError::Config(format!("TLS settings: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &m.identity_pem {
            Some(pem) => {
                let bad = |e: &dyn std::fmt::Display| {
                    ClientError::Config(format!("client certificate/key: {e}"))
                };
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad(&e))?;
                if certs.is_empty() {
                    return Err(bad(&"no PEM certificate in the certificate file"));
                }
                let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(&e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The contents of the files a [`TlsOptions`] names.
#[derive(PartialEq, Eq)]
struct TlsMaterial {
    ca_pem: Option<Vec<u8>>,
    /// Certificate chain and key, concatenated.
    identity_pem: Option<Vec<u8>>,
}

/// TLS settings already built in this process, by material. reqwest builds its own for every
/// client, reading and decoding every file of the system's CA directory: about 4.5 ms of CPU
/// per client, two per [`Client`], so 50,000 gates took 228 s of two cores to start
/// (BENCHMARKS.md, issue #18). A `ClientConfig` is immutable and clones share it, so clients
/// built from one behave as if each had built its own (each still has its own connections).
static TLS_CONFIGS: std::sync::Mutex<Vec<(TlsMaterial, rustls::ClientConfig)>> =
    std::sync::Mutex::new(Vec::new());
/// Distinct materials kept (a process rotating its CA file would otherwise keep every one).
const TLS_CONFIGS_KEPT: usize = 4;

/// The operating system's CA certificates, read once per process: a CA installed while the
/// process runs is trusted from its next start, as with any client built at start-up.
fn native_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::debug!(error = %e, "reading the system's CA certificates");
        }
        loaded.certs
    })
}

/// Plain HTTP is for loopback (or explicitly allowed): anything else would send the token in
/// clear text.
fn check_scheme(base: &str, tls: &TlsOptions) -> Result<()> {
    if base.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = base.strip_prefix("http://") else {
        return Err(ClientError::Config(format!(
            "{base:?} is not an http:// or https:// URL"
        )));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once('@') {
        Some((_, h)) => h,
        None => authority,
    };
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || tls.allow_insecure_http {
        Ok(())
    } else {
        Err(ClientError::Config(format!(
            "{base:?}: refusing plain HTTP to a host that is not loopback (the token would \
             cross the network in clear text); use https://, or allow it explicitly \
             (--insecure-http / allow_insecure_http) when a TLS proxy on a trusted hop is in \
             front"
        )))
    }
}

impl Client {
    /// `urls`: one or more control-plane base URLs, e.g. `http://127.0.0.1:7070`, with
    /// default TLS options (system CAs; plain HTTP only to loopback).
    pub fn new<S: AsRef<str>>(urls: &[S], token: Option<String>) -> Result<Self> {
        Self::with_tls(urls, token, &TlsOptions::default())
    }

    pub fn with_tls<S: AsRef<str>>(
        urls: &[S],
        token: Option<String>,
        tls: &TlsOptions,
    ) -> Result<Self> {
        Self::with_local_address(urls, token, tls, None)
    }

    /// As [`Client::with_tls`], with every connection bound to `local_address` (a host with
    /// several addresses; `brb bench` gives each of its watcher processes its own loopback
    /// address, as workers on different hosts would have).
    pub fn with_local_address<S: AsRef<str>>(
        urls: &[S],
        token: Option<String>,
        tls: &TlsOptions,
        local_address: Option<std::net::IpAddr>,
    ) -> Result<Self> {
        let bases: Vec<String> = urls
            .iter()
            .map(|u| u.as_ref().trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::Config("no control-plane URL given".into()));
        }
        for b in &bases {
            check_scheme(b, tls)?;
        }
        let tls_config = tls.client_config()?;
        let builder = || {
            reqwest::Client::builder()
                .use_preconfigured_tls(tls_config.clone())
                .redirect(reqwest::redirect::Policy::none())
                .local_address(local_address)
        };
        let http = builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(90))
            // The server closes idle keep-alive connections after its header-read timeout
            // (10 s by default): drop them first rather than race it.
            .pool_idle_timeout(Duration::from_secs(8))
            .user_agent(concat!("brb-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let stream_http = builder()
            .connect_timeout(Duration::from_secs(3))
            .tcp_keepalive(Duration::from_secs(15))
            .user_agent(concat!("brb-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            http,
            stream_http,
            bases,
            token,
            local_address,
        })
    }

    pub fn base_urls(&self) -> &[String] {
        &self.bases
    }

    /// The same client, trying the base URLs starting from the `n`th: spreads many workers
    /// over several replicas.
    pub fn rotated(&self, n: usize) -> Client {
        let mut c = self.clone();
        let len = c.bases.len();
        c.bases.rotate_left(n % len);
        c
    }

    /// Tells the control plane what this worker does; answers with the switch as it is now.
    pub async fn report(&self, r: &brb_api::WorkerReport) -> Result<Switch> {
        self.call(Method::POST, "/workers/report", Some(r)).await
    }

    /// A broker adapter records what it applied to its broker (audit source `adapter`).
    pub async fn adapter_action(&self, a: &brb_api::AdapterAction) -> Result<brb_api::AuditEntry> {
        self.call(Method::POST, "/adapters/actions", Some(a)).await
    }

    /// The fleet's acknowledgement of a switch.
    pub async fn workers(&self, switch: &str) -> Result<brb_api::WorkerCounts> {
        self.call::<_, ()>(
            Method::GET,
            &format!("/switches/{}/workers", enc(switch)),
            None,
        )
        .await
    }

    /// Sends utilization samples.
    pub async fn push_samples(&self, samples: Vec<brb_api::Sample>) -> Result<usize> {
        let a: brb_api::Accepted = self
            .call(
                Method::POST,
                "/metrics",
                Some(&brb_api::SampleBatch { samples }),
            )
            .await?;
        Ok(a.accepted)
    }

    /// Series from `since` (unix seconds); `name` `None` means all.
    pub async fn series(
        &self,
        name: Option<&str>,
        since: Option<i64>,
    ) -> Result<brb_api::SeriesList> {
        let mut q = "/metrics/series?".to_string();
        if let Some(n) = name {
            q.push_str(&format!("name={}&", enc(n)));
        }
        if let Some(s) = since {
            q.push_str(&format!("since={s}"));
        }
        self.call::<_, ()>(Method::GET, q.trim_end_matches(['&', '?']), None)
            .await
    }

    fn request(
        &self,
        http: &reqwest::Client,
        method: Method,
        base: &str,
        path: &str,
    ) -> RequestBuilder {
        let rb = http.request(method, format!("{base}{}{path}", brb_api::API_PREFIX));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends to each base in turn until one answers.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(String, Response)> {
        let mut last_err = String::new();
        for base in &self.bases {
            let mut rb = self.request(&self.http, method.clone(), base, path);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            match rb.send().await {
                Ok(res) => return Ok((base.clone(), res)),
                Err(e) => {
                    tracing::debug!(url = %base, error = %e, "control plane unreachable; trying next");
                    last_err = format!("{base}: {}", describe(&e));
                }
            }
        }
        Err(ClientError::Unreachable(last_err))
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let (base, res) = self.send(method, path, body).await?;
        decode(&base, res).await
    }

    pub async fn info(&self) -> Result<ServerInfo> {
        self.call::<_, ()>(Method::GET, "/info", None).await
    }

    pub async fn switches(&self) -> Result<Vec<Switch>> {
        let l: SwitchList = self.call::<_, ()>(Method::GET, "/switches", None).await?;
        Ok(l.switches)
    }

    pub async fn switch(&self, name: &str) -> Result<Switch> {
        self.call::<_, ()>(Method::GET, &format!("/switches/{}", enc(name)), None)
            .await
    }

    /// Long-poll: answers when the version passes `after_version`, or after `wait`.
    pub async fn wait_switch(
        &self,
        name: &str,
        after_version: u64,
        wait: Duration,
    ) -> Result<Switch> {
        let path = format!(
            "/switches/{}?after_version={after_version}&wait={}",
            enc(name),
            wait.as_secs()
        );
        self.call::<_, ()>(Method::GET, &path, None).await
    }

    pub async fn set_state(&self, name: &str, req: &SetStateRequest) -> Result<Switch> {
        self.call(
            Method::PUT,
            &format!("/switches/{}/state", enc(name)),
            Some(req),
        )
        .await
    }

    /// Holds, continues, extends or aborts the release in progress.
    pub async fn ramp_control(
        &self,
        name: &str,
        req: &brb_api::RampControlRequest,
    ) -> Result<Switch> {
        self.call(
            Method::POST,
            &format!("/switches/{}/ramp", enc(name)),
            Some(req),
        )
        .await
    }

    pub async fn create_switch(&self, req: &CreateSwitchRequest) -> Result<Switch> {
        self.call(Method::POST, "/switches", Some(req)).await
    }

    pub async fn update_switch(&self, name: &str, req: &UpdateSwitchRequest) -> Result<Switch> {
        self.call(
            Method::PATCH,
            &format!("/switches/{}", enc(name)),
            Some(req),
        )
        .await
    }

    pub async fn delete_switch(&self, name: &str) -> Result<()> {
        let (base, res) = self
            .send::<()>(Method::DELETE, &format!("/switches/{}", enc(name)), None)
            .await?;
        if res.status() == StatusCode::NO_CONTENT {
            return Ok(());
        }
        decode::<serde_json::Value>(&base, res).await.map(|_| ())
    }

    pub async fn audit(
        &self,
        switch: Option<&str>,
        limit: u32,
        before: Option<u64>,
    ) -> Result<AuditPage> {
        let mut q = format!("/audit?limit={limit}");
        if let Some(s) = switch {
            q.push_str(&format!("&switch={}", enc(s)));
        }
        if let Some(b) = before {
            q.push_str(&format!("&before={b}"));
        }
        self.call::<_, ()>(Method::GET, &q, None).await
    }

    pub async fn create_token(&self, req: &CreateTokenRequest) -> Result<CreatedToken> {
        self.call(Method::POST, "/tokens", Some(req)).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let l: TokenList = self.call::<_, ()>(Method::GET, "/tokens", None).await?;
        Ok(l.tokens)
    }

    /// A new secret for token `id`; the old one keeps working for `grace_secs`.
    pub async fn rotate_token(&self, id: &str, grace_secs: u64) -> Result<CreatedToken> {
        self.call(
            Method::POST,
            &format!("/tokens/{}/rotate", enc(id)),
            Some(&brb_api::RotateTokenRequest { grace_secs }),
        )
        .await
    }

    /// Files a request to resume a switch whose resumes need a second operator.
    pub async fn request_resume(
        &self,
        name: &str,
        req: &brb_api::CreateResumeRequest,
    ) -> Result<Switch> {
        self.call(
            Method::POST,
            &format!("/switches/{}/resume-requests", enc(name)),
            Some(req),
        )
        .await
    }

    /// Approves (`approve`) or rejects a resume request.
    pub async fn decide_resume(
        &self,
        name: &str,
        id: u64,
        approve: bool,
        req: &brb_api::DecideResumeRequest,
    ) -> Result<Switch> {
        let verb = if approve { "approve" } else { "reject" };
        self.call(
            Method::POST,
            &format!("/switches/{}/resume-requests/{id}/{verb}", enc(name)),
            Some(req),
        )
        .await
    }

    /// An admin's resume without approval.
    pub async fn break_glass(
        &self,
        name: &str,
        req: &brb_api::BreakGlassRequest,
    ) -> Result<Switch> {
        self.call(
            Method::POST,
            &format!("/switches/{}/break-glass", enc(name)),
            Some(req),
        )
        .await
    }

    /// Starts a fire drill on a switch.
    pub async fn drill(
        &self,
        name: &str,
        req: &brb_api::DrillRequest,
    ) -> Result<brb_api::DrillStarted> {
        self.call(
            Method::POST,
            &format!("/switches/{}/drill", enc(name)),
            Some(req),
        )
        .await
    }

    /// Who answered the drill at `version` so far.
    pub async fn drill_report(&self, name: &str, version: u64) -> Result<brb_api::DrillReport> {
        self.call::<_, ()>(
            Method::GET,
            &format!("/switches/{}/drills/{version}", enc(name)),
            None,
        )
        .await
    }

    /// The open resume requests this token may see.
    pub async fn resume_requests(&self) -> Result<brb_api::ResumeRequestList> {
        self.call::<_, ()>(Method::GET, "/resume-requests", None)
            .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        self.call::<_, ()>(Method::DELETE, &format!("/tokens/{}", enc(id)), None)
            .await
    }

    /// Opens one event stream (no reconnecting: callers decide their own retry policy and
    /// pass the last id they saw). Tries each base until one accepts.
    pub async fn events(
        &self,
        scope: &EventScope,
        last_event_id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<StreamItem>> + Send + 'static + use<>> {
        let path = match scope {
            EventScope::Switch(name) => format!("/switches/{}/events", enc(name)),
            EventScope::All => "/events".to_string(),
        };
        let mut last_err = String::new();
        for base in &self.bases {
            // Plain HTTP without a proxy: read in the caller's task (see `direct.rs`).
            if let Some(t) = direct::target(base) {
                let full = format!("{}{path}", brb_api::API_PREFIX);
                let opened = tokio::time::timeout(
                    STREAM_ANSWER_TIMEOUT,
                    direct::open(
                        &t,
                        &full,
                        self.token.as_deref(),
                        last_event_id,
                        self.local_address,
                    ),
                )
                .await;
                match opened {
                    Ok(Ok(direct::Opened::Stream(s))) => {
                        // Boxed so that the stream stays `Unpin`, as callers may rely on.
                        let stream =
                            Box::pin(futures_util::stream::unfold(s, |mut s| async move {
                                let item = s.next_item().await?;
                                Some((item, s))
                            }));
                        return Ok(futures_util::future::Either::Left(stream));
                    }
                    Ok(Ok(direct::Opened::Refused(status, body))) => {
                        return Err(error_from(base, status, &body));
                    }
                    Ok(Err(e @ ClientError::Config(_))) => return Err(e),
                    // An unreachable peer's message already says so; wrapping its Display
                    // again would read "cannot reach the control plane: cannot reach...".
                    Ok(Err(ClientError::Unreachable(m))) => {
                        last_err = m;
                        continue;
                    }
                    Ok(Err(e)) => {
                        last_err = e.to_string();
                        continue;
                    }
                    Err(_) => {
                        last_err = no_stream_answer(base);
                        continue;
                    }
                }
            }
            let mut rb = self
                .request(&self.stream_http, Method::GET, base, &path)
                .header("accept", "text/event-stream");
            if let Some(id) = last_event_id {
                rb = rb.header("last-event-id", id);
            }
            // No overall timeout on a stream, but its answer must start: a server that took
            // the connection into its accept queue and never accepted it (out of file
            // descriptors) would otherwise hold the watcher forever.
            let res = match tokio::time::timeout(STREAM_ANSWER_TIMEOUT, rb.send()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    last_err = format!("{base}: {}", describe(&e));
                    continue;
                }
                Err(_) => {
                    last_err = no_stream_answer(base);
                    continue;
                }
            };
            if !res.status().is_success() {
                return Err(decode::<serde_json::Value>(base, res)
                    .await
                    .err()
                    .unwrap_or_else(|| ClientError::Protocol {
                        url: base.clone(),
                        message: "event stream refused".into(),
                    }));
            }
            let mut parser = sse::Parser::new();
            let url = base.clone();
            let stream = res.bytes_stream().flat_map(move |chunk| {
                let items: Vec<Result<StreamItem>> = match chunk {
                    Ok(bytes) => match parser.feed(&bytes) {
                        // Bytes but no event: a keep-alive comment, proof the line is alive.
                        Ok(evs) if evs.is_empty() => vec![Ok(StreamItem::Alive)],
                        Ok(evs) => evs.into_iter().map(|e| Ok(StreamItem::Event(e))).collect(),
                        Err(e) => vec![Err(ClientError::Protocol {
                            url: url.clone(),
                            message: e.to_string(),
                        })],
                    },
                    Err(e) => vec![Err(ClientError::Unreachable(format!(
                        "event stream from {url} broke: {}",
                        describe(&e)
                    )))],
                };
                futures_util::stream::iter(items)
            });
            return Ok(futures_util::future::Either::Right(stream));
        }
        Err(ClientError::Unreachable(last_err))
    }
}

fn no_stream_answer(base: &str) -> String {
    format!(
        "{base}: no answer to the event-stream request within {}s",
        STREAM_ANSWER_TIMEOUT.as_secs()
    )
}

/// Percent-encodes a path segment (switch names are restricted, but ids and user input are not
/// trusted to be).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    if s.contains("UnknownIssuer") || s.contains("certificate") && s.contains("invalid peer") {
        s.push_str(
            " (the server's TLS certificate is not trusted: give the CA that signed it with \
             --ca-file / BRB_CA_FILE, or TlsOptions::ca_file in the SDK)",
        );
    } else if s.contains("CertificateRequired") || s.contains("certificate required") {
        s.push_str(
            " (the server requires a client certificate: --client-cert/--client-key, or \
             TlsOptions::client_cert/client_key in the SDK)",
        );
    }
    s
}

async fn decode<T: DeserializeOwned>(base: &str, res: Response) -> Result<T> {
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| {
        ClientError::Unreachable(format!("{base}: reading the answer: {}", describe(&e)))
    })?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: base.to_string(),
            message: format!("HTTP {status} with an unreadable body: {e}"),
        });
    }
    Err(error_from(base, status.as_u16(), &bytes))
}

/// The error an answer with a non-success status stands for: the API's `{code, message}`
/// when the body is one, else the status and the start of the body.
fn error_from(base: &str, status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiErrorBody>(bytes) {
        Ok(b) => ClientError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
            current: b.error.current,
        },
        Err(_) => ClientError::Protocol {
            url: base.to_string(),
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let d = TlsOptions::default();
        for ok in [
            "http://127.0.0.1:7070",
            "http://localhost:7070/x",
            "http://[::1]:7070",
            "https://brb.example.com",
            "https://10.0.0.5:7070",
        ] {
            assert!(check_scheme(ok, &d).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:7070",
            "http://brb.example.com",
            "http://127.0.0.1.evil.example",
            "http://user@10.0.0.5",
        ] {
            let e = check_scheme(bad, &d).unwrap_err();
            assert!(e.to_string().contains("refusing plain HTTP"), "{bad}: {e}");
        }
        let allow = TlsOptions {
            allow_insecure_http: true,
            ..TlsOptions::default()
        };
        assert!(check_scheme("http://10.0.0.5:7070", &allow).is_ok());
        assert!(Client::new(&["http://10.0.0.5:7070"], None).is_err());
    }

    #[test]
    fn a_missing_ca_file_or_half_an_identity_is_a_config_error() {
        let missing = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let e = Client::with_tls(&["https://127.0.0.1:1"], None, &missing).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let half = TlsOptions {
            client_cert: Some("/tmp/x.pem".into()),
            ..TlsOptions::default()
        };
        let e = Client::with_tls(&["https://127.0.0.1:1"], None, &half).unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
    }

    use super::*;

    /// A self-signed CA certificate, as PEM.
    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    /// Clients built with the same TLS material share one TLS setup (reading the system's
    /// CA store per client cost ~4.5 ms each, two per `Client`); a CA file whose contents
    /// changed gets a setup of its own, so a rotated CA is trusted by the next client built.
    #[test]
    fn clients_with_the_same_tls_material_share_one_tls_setup() {
        let same = |a: &rustls::ClientConfig, b: &rustls::ClientConfig| {
            std::sync::Arc::ptr_eq(&a.client_auth_cert_resolver, &b.client_auth_cert_resolver)
        };
        let d = TlsOptions::default();
        let (a, b) = (d.client_config().unwrap(), d.client_config().unwrap());
        assert!(
            same(&a, &b),
            "two clients with default options built two TLS setups"
        );
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem("one")).unwrap();
        let with_ca = TlsOptions {
            ca_file: Some(ca.clone()),
            ..TlsOptions::default()
        };
        let c1 = with_ca.client_config().unwrap();
        assert!(
            !same(&a, &c1),
            "a CA file must not reuse the setup without it"
        );
        assert!(same(&c1, &with_ca.client_config().unwrap()));
        std::fs::write(&ca, ca_pem("two")).unwrap();
        let c2 = with_ca.client_config().unwrap();
        assert!(!same(&c1, &c2), "a changed CA file must get its own setup");
        // Still clients that work: one built on the shared setup.
        Client::with_tls(&["https://127.0.0.1:1"], None, &with_ca).unwrap();
        // A client certificate: a setup that presents it.
        let leaf = rcgen::generate_simple_self_signed(vec!["worker".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, leaf.cert.pem()).unwrap();
        std::fs::write(&key, leaf.signing_key.serialize_pem()).unwrap();
        let mtls = TlsOptions {
            client_cert: Some(cert),
            client_key: Some(key.clone()),
            ..TlsOptions::default()
        };
        let m = mtls.client_config().unwrap();
        assert!(
            m.client_auth_cert_resolver.has_certs() && !a.client_auth_cert_resolver.has_certs()
        );
        std::fs::write(&key, "no key here\n").unwrap();
        let e = mtls.client_config().unwrap_err();
        assert!(e.to_string().contains("client certificate/key"), "{e}");
        // A file with no certificate in it stays an error, however often asked.
        std::fs::write(&ca, "not a certificate\n").unwrap();
        for _ in 0..2 {
            let e = with_ca.client_config().unwrap_err();
            assert!(e.to_string().contains("no PEM certificate"), "{e}");
        }
    }

    /// A client with a local address connects from it: the event stream read directly and
    /// the requests that go through reqwest both arrive from 127.0.0.2.
    #[tokio::test]
    async fn connections_come_from_the_local_address_asked_for() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, mut peers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, peer)) = l.accept().await {
                let _ = tx.send(peer.ip());
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let local: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let c =
            Client::with_local_address(&[url.as_str()], None, &TlsOptions::default(), Some(local))
                .unwrap();
        let _ = c.events(&EventScope::All, None).await;
        assert_eq!(peers.recv().await, Some(local), "the direct event stream");
        let _ = c.info().await;
        assert_eq!(peers.recv().await, Some(local), "a request through reqwest");
        let plain = Client::new(&[url.as_str()], None).unwrap();
        let _ = plain.events(&EventScope::All, None).await;
        assert_eq!(
            peers.recv().await,
            Some("127.0.0.1".parse().unwrap()),
            "without one, the system's choice"
        );
    }

    #[test]
    fn rejects_bad_urls_and_redacts_token() {
        assert!(Client::new::<&str>(&[], None).is_err());
        assert!(Client::new(&["ftp://x"], None).is_err());
        let c = Client::new(&["http://127.0.0.1:1/"], Some("brb_x_secret".into())).unwrap();
        assert_eq!(c.base_urls(), &["http://127.0.0.1:1".to_string()]);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(enc("workers"), "workers");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn unreachable_is_reported_as_such() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let c = Client::new(&["http://127.0.0.1:1"], None).unwrap();
        let e = c.switches().await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
    }

    #[tokio::test]
    async fn an_event_stream_never_answered_gives_up_and_tries_the_next_url() {
        // A listener that never accepts: the kernel completes the handshake and queues the
        // connection, the request is sent, no answer ever comes (a server out of files).
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", mute.local_addr().unwrap());
        let c = Client::new(&[url.as_str(), "http://127.0.0.1:1"], None).unwrap();
        let t = std::time::Instant::now();
        let e = c
            .events(&EventScope::All, None)
            .await
            .err()
            .expect("no stream from a mute server");
        assert!(t.elapsed() >= STREAM_ANSWER_TIMEOUT);
        assert!(t.elapsed() < STREAM_ANSWER_TIMEOUT * 2);
        // Both URLs were tried; the last error is the refused one.
        assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1:"), "{e}");
        drop(mute);
    }
}
