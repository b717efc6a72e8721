//! Server settings: built-in defaults, then the TOML file, then `BRB_*` environment variables,
//! then command-line flags (applied by the binary), each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use brb_store::DatabaseUrl;

/// Everything `brb server` needs to start. Secrets (the admin token) are not part of it: they
/// are read from the environment where they are used, so a `Debug` print can never leak one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the database and the generated admin token live.
    pub data_dir: PathBuf,
    /// The store: unset for the embedded SQLite file in `data_dir`; a path or `sqlite:PATH`
    /// for another file; `postgres://user:password@host:port/db` for PostgreSQL shared by
    /// several replicas (`BRB_DATABASE_URL`, `--database-url`). A secret: it may hold a
    /// password.
    pub database_url: Option<Secret>,
    /// Base URL people reach the web console at (used in links); defaults to `http://{listen}`.
    pub public_url: Option<String>,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    pub environment: EnvironmentConfig,
    /// The Big Red Button itself.
    pub primary: PrimaryConfig,
    /// Further switches (feature kill switches) created on start when missing.
    pub switches: Vec<SwitchConfig>,
    pub limits: Limits,
    /// Optional: PromQL queries pulled into the utilization series.
    pub prometheus: Option<PrometheusConfig>,
    /// Slack, webhooks, reminders.
    pub notify: NotifyConfig,
    /// HTTPS (and optionally client certificates). Required to listen beyond loopback.
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP on a non-loopback address anyway (`--insecure-http`,
    /// `BRB_INSECURE_HTTP=1`): only behind a TLS-terminating proxy on a trusted hop.
    pub insecure_http: bool,
    /// Rate limits and caps against abuse.
    pub abuse: AbuseConfig,
}

/// `[tls]`: PEM files, re-read on SIGHUP and whenever they change on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first (`BRB_TLS_CERT`, `--tls-cert`).
    pub cert: PathBuf,
    /// Private key: PKCS#8, PKCS#1 or SEC1 (`BRB_TLS_KEY`, `--tls-key`).
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (`BRB_TLS_CLIENT_CA`,
    /// `--tls-client-ca`). Enables mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` (default; a handshake without a valid client certificate
    /// fails) or `optional` (verified when presented). Tokens are checked either way.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// `[abuse]`: limits that keep one misbehaving client (or attacker) from hurting the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbuseConfig {
    /// State changes per second allowed per token, sustained.
    pub changes_per_sec: f64,
    /// Burst of state changes allowed per token (and per address) above the sustained rate.
    pub changes_burst: f64,
    /// Failed authentications allowed per address before further requests from it get 429.
    pub auth_failures_burst: f64,
    /// Sustained failed authentications per address per second (the refill rate).
    pub auth_failures_per_sec: f64,
    /// Open event streams (SSE and long-polls) allowed per token.
    pub max_streams_per_token: usize,
    /// Seconds a client may take to send a request's headers (slowloris guard; streams that
    /// are already answering are not affected).
    pub header_read_timeout_secs: u64,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Open connections at most; one more is reset at once, so its client tries another
    /// replica instead of waiting in an accept queue the server can no longer drain. 0: the
    /// open-files limit less a reserve for the database, logs and the data dir.
    pub max_connections: usize,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            changes_per_sec: 5.0,
            changes_burst: 30.0,
            auth_failures_burst: 20.0,
            auth_failures_per_sec: 0.5,
            // A fleet often shares one worker token: the cap is about runaway clients.
            max_streams_per_token: 50_000,
            header_read_timeout_secs: 10,
            // hyper's read buffer is capped by this too: 8 KiB keeps an idle stream near 12 KiB
            // (BENCHMARKS.md, "Memory per idle watcher").
            max_header_bytes: 8 * 1024,
            max_connections: 0,
        }
    }
}

/// A secret setting: never printed by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Where the office button is, for the chat bot ("next to the coffee machine, 3rd floor").
    pub office_button_location: Option<String>,
    /// How often a reminder goes out while a switch stays paused, e.g. `15m`.
    pub remind_every: String,
    pub slack: Option<SlackConfig>,
    pub webhooks: Vec<WebhookConfig>,
    /// PagerDuty Events API v2: an alert on pause, resolved on resume.
    pub pagerduty: Option<PagerDutyConfig>,
    /// Grafana annotations: a region from pause to resume on dashboards.
    pub grafana: Option<GrafanaConfig>,
    /// Longest wait between delivery attempts, in seconds.
    pub retry_max_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            office_button_location: None,
            retry_max_secs: 300,
            remind_every: "15m".into(),
            slack: None,
            webhooks: Vec::new(),
            pagerduty: None,
            grafana: None,
        }
    }
}

/// The public Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// `[notify.pagerduty]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration key of an "Events API v2" integration on a PagerDuty service
    /// (`BRB_PAGERDUTY_ROUTING_KEY`, which lets the file leave it out).
    #[serde(default)]
    pub routing_key: Secret,
    /// Where events go; the public endpoint unless a proxy (or a test) sits in between.
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    /// `critical`, `error`, `warning` or `info`.
    #[serde(default = "default_pagerduty_severity")]
    pub severity: String,
    /// The alert's `source` (default: the environment name).
    #[serde(default)]
    pub source: Option<String>,
}

fn default_pagerduty_url() -> String {
    PAGERDUTY_EVENTS_URL.into()
}

fn default_pagerduty_severity() -> String {
    "critical".into()
}

/// `[notify.grafana]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrafanaConfig {
    /// Grafana's base URL, e.g. `https://grafana.example.com`.
    pub url: String,
    /// A service-account token with `annotations:read`, `annotations:create` and
    /// `annotations:write` (`BRB_GRAFANA_TOKEN`, which lets the file leave it out).
    #[serde(default)]
    pub token: Secret,
    /// Tags on every annotation (dashboards show organization annotations by tag).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Put the annotation on this dashboard instead of the organization.
    #[serde(default)]
    pub dashboard_uid: Option<String>,
    /// With `dashboard_uid`: only on this panel.
    #[serde(default)]
    pub panel_id: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Incoming webhook URL (`BRB_SLACK_WEBHOOK_URL`).
    pub webhook_url: Option<Secret>,
    /// Add `<!here>` to pause messages.
    pub here_on_pause: bool,
    /// Signing secret of the Slack app, for the slash command (`BRB_SLACK_SIGNING_SECRET`).
    pub signing_secret: Option<Secret>,
    /// Slack user id → the name recorded as actor. Only these users may pause and resume
    /// from Slack; everyone may ask for the status.
    pub operators: std::collections::BTreeMap<String, String>,
    /// The slash command's name, for help texts.
    pub command: Option<String>,
    /// After a pause or resume from Slack, how long to wait for every worker to acknowledge
    /// before the follow-up lists the ones that have not (default 10).
    pub follow_up_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    /// HMAC-SHA256 key for the `X-BRB-Signature` header.
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus server, e.g. `http://prometheus:9090`.
    pub url: String,
    /// Seconds between pulls.
    #[serde(default = "default_prom_interval")]
    pub interval_secs: u64,
    pub queries: Vec<PromQuery>,
}

fn default_prom_interval() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromQuery {
    /// The series name it appears under.
    pub name: String,
    /// PromQL.
    pub query: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvironmentConfig {
    pub name: String,
    pub color: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimaryConfig {
    pub name: String,
    pub description: String,
    /// Remind while paused (default on for the primary switch).
    pub remind: bool,
    /// The series that measures the work waiting behind this switch (the backlog a release
    /// lets loose), shown in the console's resume dialog. Default `queue_depth`, the name the
    /// demo workload and the examples push.
    pub backlog_series: String,
    /// Whether a resume needs a second operator (`[primary.approval]`).
    pub approval: ApprovalConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Remind while paused (default off for feature switches).
    #[serde(default)]
    pub remind: bool,
    /// Whether a resume needs a second operator (`[switches.approval]`).
    #[serde(default)]
    pub approval: ApprovalConfig,
}

/// `[primary.approval]` / `[switches.approval]`: a resume needs another operator's approval.
/// Pausing never does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// Approvals a resume needs: 0 (off, the default) or 1.
    pub resume: u8,
    /// How long a resume request stays open: 1s to 24h (default 15m).
    pub expire: String,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            resume: 0,
            expire: "15m".into(),
        }
    }
}

impl ApprovalConfig {
    fn check(&self, what: &str) -> Result<(), ConfigError> {
        if self.resume > 1 {
            return Err(ConfigError::Invalid(format!(
                "{what}.approval.resume: 0 or 1 (more than one approver is not supported yet)"
            )));
        }
        match brb_api::parse_duration(&self.expire) {
            Some(s) if (1..=86_400).contains(&s) => Ok(()),
            _ => Err(ConfigError::Invalid(format!(
                "{what}.approval.expire: a duration from 1s to 24h, not {:?}",
                self.expire
            ))),
        }
    }

    /// How long a request stays open, when resumes need approval.
    fn secs(&self) -> Option<u64> {
        (self.resume > 0).then(|| brb_api::parse_duration(&self.expire).unwrap_or(900))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Seconds between SSE keep-alive comments.
    pub keepalive_secs: u64,
    /// Longest `wait=` a long-poll may ask for.
    pub max_long_poll_secs: u64,
    /// A worker with no report for this long counts as stale.
    pub worker_stale_secs: u64,
    /// A worker with no report for this long is forgotten.
    pub worker_forget_secs: u64,
    /// Most utilization series kept (each takes 28 KiB).
    pub max_series: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: default_data_dir(),
            database_url: None,
            public_url: None,
            log_format: LogFormat::Human,
            environment: EnvironmentConfig::default(),
            primary: PrimaryConfig::default(),
            switches: Vec::new(),
            limits: Limits::default(),
            prometheus: None,
            notify: NotifyConfig::default(),
            tls: None,
            insecure_http: false,
            abuse: AbuseConfig::default(),
        }
    }
}

impl Default for EnvironmentConfig {
    fn default() -> Self {
        EnvironmentConfig {
            name: "local".into(),
            color: "#455a64".into(),
        }
    }
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        PrimaryConfig {
            name: brb_api::PRIMARY_SWITCH.into(),
            description: "Pause all background workers".into(),
            remind: true,
            backlog_series: "queue_depth".into(),
            approval: ApprovalConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            keepalive_secs: 15,
            max_long_poll_secs: 60,
            worker_stale_secs: 15,
            worker_forget_secs: 300,
            max_series: 256,
        }
    }
}

/// The platform's data directory (`~/.local/share/big-red-button` on Linux).
/// A deliberately broken build for `tests/chaos.rs`, which must see its checker catch it:
/// `BRB_CHAOS_BUG=skip_version_check` makes `PUT …/state` ignore a positive `expected_version`. Read once,
/// here only, and only in debug builds: a release build has no such switch at all.
pub fn chaos_bug() -> Option<&'static str> {
    #[cfg(debug_assertions)]
    {
        static BUG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        BUG.get_or_init(|| std::env::var("BRB_CHAOS_BUG").ok())
            .as_deref()
    }
    #[cfg(not(debug_assertions))]
    {
        None
    }
}

pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("big-red-button")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var} is invalid: {message}")]
    Env { var: &'static str, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text, path)?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies `BRB_*` overrides; `get` is the environment (a closure so tests need not mutate
    /// the process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("BRB_LISTEN") {
            self.listen = v.parse().map_err(|e| ConfigError::Env {
                var: "BRB_LISTEN",
                message: format!("{v:?} is not an address:port ({e})"),
            })?;
        }
        if let Some(v) = get("BRB_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("BRB_DATABASE_URL").filter(|v| !v.is_empty()) {
            self.database_url = Some(Secret(v));
        }
        if let Some(v) = get("BRB_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = get("BRB_ENVIRONMENT") {
            self.environment.name = v;
        }
        if let Some(v) = get("BRB_ENVIRONMENT_COLOR") {
            self.environment.color = v;
        }
        if let Some(v) = get("BRB_SLACK_WEBHOOK_URL") {
            self.notify
                .slack
                .get_or_insert_with(Default::default)
                .webhook_url = Some(Secret(v));
        }
        if let Some(v) = get("BRB_SLACK_SIGNING_SECRET") {
            self.notify
                .slack
                .get_or_insert_with(Default::default)
                .signing_secret = Some(Secret(v));
        }
        if let Some(v) = get("BRB_PAGERDUTY_ROUTING_KEY").filter(|v| !v.is_empty()) {
            match self.notify.pagerduty.as_mut() {
                Some(p) => p.routing_key = Secret(v),
                None => {
                    self.notify.pagerduty = Some(PagerDutyConfig {
                        routing_key: Secret(v),
                        url: default_pagerduty_url(),
                        severity: default_pagerduty_severity(),
                        source: None,
                    })
                }
            }
        }
        if let Some(v) = get("BRB_GRAFANA_TOKEN").filter(|v| !v.is_empty()) {
            match self.notify.grafana.as_mut() {
                Some(g) => g.token = Secret(v),
                None => {
                    return Err(ConfigError::Env {
                        var: "BRB_GRAFANA_TOKEN",
                        message: "set [notify.grafana] url in the config file too".into(),
                    });
                }
            }
        }
        if let Some(v) = get("BRB_OFFICE_BUTTON_LOCATION") {
            self.notify.office_button_location = Some(v);
        }
        if let Some(v) = get("BRB_REMIND_EVERY") {
            self.notify.remind_every = v;
        }
        match (get("BRB_TLS_CERT"), get("BRB_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                let prev = self.tls.take();
                self.tls = Some(TlsConfig {
                    cert: cert.into(),
                    key: key.into(),
                    client_ca: prev.as_ref().and_then(|t| t.client_ca.clone()),
                    client_auth: prev.map(|t| t.client_auth).unwrap_or_default(),
                });
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Env {
                    var: "BRB_TLS_CERT",
                    message: "BRB_TLS_CERT and BRB_TLS_KEY go together".into(),
                });
            }
        }
        if let Some(v) = get("BRB_TLS_CLIENT_CA") {
            match self.tls.as_mut() {
                Some(t) => t.client_ca = Some(v.into()),
                None => {
                    return Err(ConfigError::Env {
                        var: "BRB_TLS_CLIENT_CA",
                        message: "client certificates need TLS: set BRB_TLS_CERT and BRB_TLS_KEY"
                            .into(),
                    });
                }
            }
        }
        for (var, slot) in [
            ("BRB_CHANGES_PER_SEC", &mut self.abuse.changes_per_sec),
            ("BRB_CHANGES_BURST", &mut self.abuse.changes_burst),
            (
                "BRB_AUTH_FAILURES_BURST",
                &mut self.abuse.auth_failures_burst,
            ),
        ] {
            if let Some(v) = get(var) {
                *slot = v.parse().map_err(|_| ConfigError::Env {
                    var,
                    message: format!("{v:?}: expected a number"),
                })?;
            }
        }
        if let Some(v) = get("BRB_INSECURE_HTTP") {
            self.insecure_http = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("BRB_LOG_FORMAT") {
            self.log_format = match v.as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        var: "BRB_LOG_FORMAT",
                        message: format!("{v:?}: expected human or json"),
                    });
                }
            };
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        brb_api::validate_switch_name(&self.primary.name)
            .map_err(|e| ConfigError::Invalid(format!("primary.name: {e}")))?;
        self.primary.approval.check("primary")?;
        for s in &self.switches {
            brb_api::validate_switch_name(&s.name)
                .map_err(|e| ConfigError::Invalid(format!("switch {:?}: {e}", s.name)))?;
            s.approval.check(&format!("switch {:?}", s.name))?;
            if s.name == self.primary.name {
                return Err(ConfigError::Invalid(format!(
                    "switch {:?} is the primary switch; describe it under [primary]",
                    s.name
                )));
            }
        }
        if self.remind_every().is_none() {
            return Err(ConfigError::Invalid(format!(
                "notify.remind_every {:?}: expected e.g. 15m, 90s or 1h",
                self.notify.remind_every
            )));
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.notify.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "webhook {:?}: url must be http(s)",
                    w.name
                )));
            }
            if brb_api::validate_switch_name(&w.name).is_err() || !names.insert(&w.name) {
                return Err(ConfigError::Invalid(format!(
                    "webhook name {:?} must be unique and [a-z0-9_-]",
                    w.name
                )));
            }
        }
        self.validate_incident_tools()?;
        if let Some(p) = &self.prometheus {
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "prometheus.url {:?} must be an http(s) URL",
                    p.url
                )));
            }
            for q in &p.queries {
                let ok = !q.name.is_empty()
                    && q.name.len() <= brb_api::MAX_SERIES_NAME
                    && q.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:.-".contains(c));
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "prometheus query name {:?} must be [A-Za-z0-9_:.-]",
                        q.name
                    )));
                }
            }
        }
        if self.limits.keepalive_secs == 0 || self.limits.keepalive_secs > 15 {
            return Err(ConfigError::Invalid(
                "limits.keepalive_secs must be between 1 and 15".into(),
            ));
        }
        if self.limits.worker_stale_secs == 0
            || self.limits.worker_forget_secs < self.limits.worker_stale_secs
        {
            return Err(ConfigError::Invalid(
                "limits.worker_forget_secs must be at least limits.worker_stale_secs (> 0)".into(),
            ));
        }
        if self.limits.max_series == 0 || self.limits.max_series > 10_000 {
            return Err(ConfigError::Invalid(
                "limits.max_series must be between 1 and 10000".into(),
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_body_bytes must be at least 1024".into(),
            ));
        }
        let a = &self.abuse;
        let sane = a.changes_per_sec > 0.0
            && a.changes_burst >= 1.0
            && a.auth_failures_per_sec > 0.0
            && a.auth_failures_burst >= 1.0;
        if !sane {
            return Err(ConfigError::Invalid(
                "abuse: rates must be > 0 and bursts at least 1".into(),
            ));
        }
        if a.max_streams_per_token == 0 || a.header_read_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "abuse.max_streams_per_token and abuse.header_read_timeout_secs must be > 0".into(),
            ));
        }
        if a.max_header_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "abuse.max_header_bytes must be at least 8192".into(),
            ));
        }
        Ok(())
    }

    fn validate_incident_tools(&self) -> Result<(), ConfigError> {
        let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if let Some(p) = &self.notify.pagerduty {
            if p.routing_key.expose().trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "notify.pagerduty.routing_key is empty: copy the integration key of an \
                     \"Events API v2\" integration (or set BRB_PAGERDUTY_ROUTING_KEY)"
                        .into(),
                ));
            }
            if !http(&p.url) {
                return Err(ConfigError::Invalid(format!(
                    "notify.pagerduty.url {:?} must be an http(s) URL",
                    p.url
                )));
            }
            if !["critical", "error", "warning", "info"].contains(&p.severity.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "notify.pagerduty.severity {:?}: expected critical, error, warning or info",
                    p.severity
                )));
            }
            if p.source.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(ConfigError::Invalid(
                    "notify.pagerduty.source is empty: leave it out to use the environment name"
                        .into(),
                ));
            }
        }
        if let Some(g) = &self.notify.grafana {
            if !http(&g.url) {
                return Err(ConfigError::Invalid(format!(
                    "notify.grafana.url {:?} must be an http(s) URL (Grafana's base URL)",
                    g.url
                )));
            }
            if g.token.expose().trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "notify.grafana.token is empty: create a service-account token with the \
                     annotations permissions (or set BRB_GRAFANA_TOKEN)"
                        .into(),
                ));
            }
            if let Some(t) = g.tags.iter().find(|t| t.trim().is_empty() || t.len() > 100) {
                return Err(ConfigError::Invalid(format!(
                    "notify.grafana.tags: {t:?} must be 1 to 100 characters"
                )));
            }
            if g.panel_id.is_some() && g.dashboard_uid.is_none() {
                return Err(ConfigError::Invalid(
                    "notify.grafana.panel_id needs notify.grafana.dashboard_uid (a panel lives \
                     on a dashboard)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Plain HTTP beyond loopback would hand every token and every press to anyone on the
    /// network path: refused unless TLS is configured or `insecure_http` says a proxy does it.
    pub fn check_listen(&self) -> Result<(), ConfigError> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure_http {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without TLS: tokens and presses would cross the \
                 network in clear text. Set [tls] cert and key (--tls-cert/--tls-key), or pass \
                 --insecure-http if a TLS-terminating proxy on a trusted hop sits in front",
                self.listen
            )));
        }
        Ok(())
    }

    /// The reminder interval, or `None` when the setting is unreadable (or zero).
    pub fn remind_every(&self) -> Option<std::time::Duration> {
        brb_api::parse_duration(&self.notify.remind_every)
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs)
    }

    /// `Some(seconds a request stays open)` when resuming `switch` needs a second operator.
    pub fn approval_secs(&self, switch: &str) -> Option<u64> {
        if switch == self.primary.name {
            return self.primary.approval.secs();
        }
        self.switches
            .iter()
            .find(|s| s.name == switch)
            .and_then(|s| s.approval.secs())
    }

    /// Whether reminders go out for this switch while it is paused.
    pub fn reminds(&self, switch: &str) -> bool {
        if switch == self.primary.name {
            return self.primary.remind;
        }
        self.switches.iter().any(|s| s.name == switch && s.remind)
    }

    /// The channels reminders go to: the chat-like ones. Incident tools (PagerDuty, Grafana)
    /// hear of pauses and resumes only; a reminder would page someone again.
    pub fn reminder_channels(&self) -> Vec<brb_store::Channel> {
        self.channels()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    brb_store::Channel::Slack | brb_store::Channel::Webhook(_)
                )
            })
            .collect()
    }

    /// The notification channels configured: `slack`, `webhook:<name>`, `pagerduty` and
    /// `grafana`.
    pub fn channels(&self) -> Vec<brb_store::Channel> {
        let mut out = Vec::new();
        if self
            .notify
            .slack
            .as_ref()
            .is_some_and(|s| s.webhook_url.is_some())
        {
            out.push(brb_store::Channel::Slack);
        }
        for w in &self.notify.webhooks {
            out.push(brb_store::Channel::Webhook(w.name.clone()));
        }
        if self.notify.pagerduty.is_some() {
            out.push(brb_store::Channel::PagerDuty);
        }
        if self.notify.grafana.is_some() {
            out.push(brb_store::Channel::Grafana);
        }
        out
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("brb.db")
    }

    /// Which store to open: `database_url` if set, else the SQLite file in the data dir.
    pub fn database(&self) -> brb_store::DatabaseUrl {
        match &self.database_url {
            Some(u) => brb_store::DatabaseUrl::parse(u.expose()),
            None => brb_store::DatabaseUrl::Sqlite(self.db_path()),
        }
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tls_from_environment_and_the_listen_rule() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "BRB_TLS_CERT" => Some("/etc/brb/cert.pem".into()),
            "BRB_TLS_KEY" => Some("/etc/brb/key.pem".into()),
            "BRB_TLS_CLIENT_CA" => Some("/etc/brb/clients.pem".into()),
            _ => None,
        })
        .unwrap();
        let t = c.tls.clone().unwrap();
        assert_eq!(t.client_ca, Some(PathBuf::from("/etc/brb/clients.pem")));
        assert_eq!(t.client_auth, ClientAuth::Required);
        let mut half = Config::default();
        let e = half
            .apply_env(|k| (k == "BRB_TLS_CERT").then(|| "/x.pem".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("BRB_TLS_KEY"), "{e}");

        let mut open = Config {
            listen: "0.0.0.0:7070".parse().unwrap(),
            ..Config::default()
        };
        let e = open.check_listen().unwrap_err();
        assert!(e.to_string().contains("without TLS"), "{e}");
        open.insecure_http = true;
        assert!(open.check_listen().is_ok());
        open.insecure_http = false;
        open.tls = Some(t);
        assert!(open.check_listen().is_ok());
        assert!(
            Config::default().check_listen().is_ok(),
            "loopback needs no TLS"
        );
        let parsed = Config::from_toml(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\nclient_auth = \"optional\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(parsed.tls.unwrap().client_auth, ClientAuth::Optional);
    }

    use super::*;

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.primary.name, "workers");
        c.validate().unwrap();
    }

    #[test]
    fn file_then_env() {
        let mut c = Config::from_toml(
            r##"
listen = "127.0.0.1:9000"
[environment]
name = "production"
color = "#d32f2f"
[[switches]]
name = "search-indexing"
description = "Reindex search"
"##,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.environment.name, "production");
        assert_eq!(c.switches[0].name, "search-indexing");
        assert_eq!(
            c.database(),
            brb_store::DatabaseUrl::Sqlite(c.data_dir.join("brb.db"))
        );
        c.apply_env(|k| {
            (k == "BRB_DATABASE_URL").then(|| "postgres://brb:pw@db:5432/brb".to_string())
        })
        .unwrap();
        assert_eq!(
            c.database(),
            brb_store::DatabaseUrl::Postgres("postgres://brb:pw@db:5432/brb".into())
        );
        assert!(
            !format!("{c:?}").contains("pw@"),
            "the URL's password is never printed"
        );
        c.database_url = Some(Secret("sqlite:/var/lib/brb/x.db".into()));
        assert_eq!(
            c.database(),
            brb_store::DatabaseUrl::Sqlite("/var/lib/brb/x.db".into())
        );
        c.apply_env(|k| (k == "BRB_LISTEN").then(|| "127.0.0.1:9100".to_string()))
            .unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.environment.name, "production", "env did not set it");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::from_toml("lisen = \"x\"", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let mut c = Config::default();
        let e = c
            .apply_env(|k| (k == "BRB_LISTEN").then(|| "nope".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("BRB_LISTEN"), "{e}");
        c.switches.push(SwitchConfig {
            name: "Bad Name".into(),
            description: String::new(),
            remind: false,
            approval: Default::default(),
        });
        assert!(c.validate().is_err());
    }
}

#[cfg(test)]
mod notify_tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = Config::from_toml(
            r#"
[notify.slack]
webhook_url = "https://hooks.example/T000/B000/XXXXSECRET"
signing_secret = "s3cr3t"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("XXXXSECRET") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
        assert_eq!(c.channels(), vec![brb_store::Channel::Slack]);
    }

    #[test]
    fn reminders_default_on_for_primary_only() {
        let mut c = Config::default();
        c.switches.push(SwitchConfig {
            name: "search".into(),
            description: String::new(),
            remind: false,
            approval: Default::default(),
        });
        assert!(c.reminds("workers"));
        assert!(!c.reminds("search"));
        assert_eq!(c.remind_every(), Some(std::time::Duration::from_secs(900)));
        c.notify.remind_every = "soon".into();
        assert!(c.validate().is_err());
    }

    fn incident_config(extra: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(extra, Path::new("t.toml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn incident_tools_default_and_never_print_their_secrets() {
        let c = incident_config(
            r#"
[notify.pagerduty]
routing_key = "R0UTINGKEYSECRET"

[notify.grafana]
url = "https://grafana.example.test"
token = "glsa_T0KENSECRET"
tags = ["brb", "prod"]
"#,
        )
        .unwrap();
        let p = c.notify.pagerduty.as_ref().unwrap();
        assert_eq!(p.url, PAGERDUTY_EVENTS_URL);
        assert_eq!(p.severity, "critical");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("R0UTINGKEYSECRET") && !dbg.contains("T0KENSECRET"),
            "{dbg}"
        );
        assert_eq!(
            c.channels(),
            vec![brb_store::Channel::PagerDuty, brb_store::Channel::Grafana]
        );
        assert!(
            c.reminder_channels().is_empty(),
            "reminders never page anyone"
        );
    }

    #[test]
    fn incident_tool_mistakes_are_named() {
        let cases = [
            (
                "[notify.pagerduty]\nrouting_key = \"\"\n",
                "routing_key is empty",
            ),
            (
                "[notify.pagerduty]\nrouting_key = \"k\"\nseverity = \"high\"\n",
                "expected critical, error, warning or info",
            ),
            (
                "[notify.pagerduty]\nrouting_key = \"k\"\nurl = \"events.example\"\n",
                "notify.pagerduty.url",
            ),
            (
                "[notify.grafana]\nurl = \"grafana:3000\"\ntoken = \"t\"\n",
                "Grafana's base URL",
            ),
            (
                "[notify.grafana]\nurl = \"http://g\"\ntoken = \" \"\n",
                "notify.grafana.token is empty",
            ),
            (
                "[notify.grafana]\nurl = \"http://g\"\ntoken = \"t\"\ntags = [\"\"]\n",
                "notify.grafana.tags",
            ),
            (
                "[notify.grafana]\nurl = \"http://g\"\ntoken = \"t\"\npanel_id = 2\n",
                "needs notify.grafana.dashboard_uid",
            ),
        ];
        for (text, want) in cases {
            let e = incident_config(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // A secret left out of the file (and not in the environment) is named too.
        let e = incident_config("[notify.grafana]\nurl = \"http://g\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("BRB_GRAFANA_TOKEN"), "{e}");
        let e = incident_config("[notify.pagerduty]\nseverity = \"info\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("BRB_PAGERDUTY_ROUTING_KEY"), "{e}");
    }

    #[test]
    fn incident_tool_secrets_from_the_environment() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "BRB_PAGERDUTY_ROUTING_KEY").then(|| "envkey".to_string()))
            .unwrap();
        assert_eq!(
            c.notify.pagerduty.as_ref().unwrap().routing_key.expose(),
            "envkey"
        );
        let e = Config::default()
            .apply_env(|k| (k == "BRB_GRAFANA_TOKEN").then(|| "t".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[notify.grafana] url"), "{e}");
    }

    proptest::proptest! {
        // The `config` fuzz target's property (make fuzz), in make test: any text is a config
        // or an error, never a panic.
        #[test]
        fn any_text_parses_or_errors(text in "\\PC{0,300}") {
            if let Ok(c) = Config::from_toml(&text, Path::new("p.toml")) {
                let _ = c.validate();
            }
        }

        #[test]
        fn toml_shaped_text_parses_or_errors(
            key in "(listen|data_dir|log_format|public_url|limits\\.max_series|notify\\.remind_every)",
            value in "(\"[ -~]{0,30}\"|[0-9]{1,6}|true|\\[\\])",
        ) {
            let text = format!("{key} = {value}\n");
            if let Ok(c) = Config::from_toml(&text, Path::new("p.toml")) {
                let _ = c.validate();
            }
        }
    }
}
