//! The desktop app's logic, kept out of the Tauri crate so it is tested without a display and
//! compiled without webkit: where the settings live and how they are protected, what the tray's
//! quick toggle does, what an OS notification says, and how control-plane events are forwarded
//! to the webview. `src-tauri` only wires these to windows, menus and plugins.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brb_api::{SetStateRequest, Source, Switch, SwitchState};
use brb_client::{Client, ClientError, EventScope, StreamItem};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub mod keychain;
pub mod probe;
pub mod profiles;
pub mod rendering;

pub use keychain::{KeychainError, OsKeychain, Secrets};

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("cannot read settings {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write settings {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("no control plane is configured")]
    NoProfile,
    /// A profile from the connect screen that cannot be saved as it is.
    #[error("{0}")]
    InvalidProfile(String),
    #[error(transparent)]
    Keychain(#[from] KeychainError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// One control plane the app can talk to.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub name: String,
    /// Base URLs (replicas).
    pub urls: Vec<String>,
    /// Only when no OS keychain was available when it was saved (see `profiles`): tokens
    /// live in the keychain, and a token found here is moved there at start-up. Never sent to
    /// the webview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The environment's colour (`#rrggbb`), shown on the tray icon and the profile switcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// A PEM bundle of extra CAs to trust (a private CA for the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) when the control plane asks for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<std::path::PathBuf>,
    /// Allow http:// to a host other than loopback (a TLS proxy on a trusted hop in front).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// Made from `BRB_URL`/`BRB_TOKEN` at start-up: never written to the settings file.
    #[serde(skip)]
    pub from_env: bool,
}

impl Profile {
    pub fn tls(&self) -> brb_client::TlsOptions {
        brb_client::TlsOptions {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            allow_insecure_http: self.insecure_http,
        }
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("urls", &self.urls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// What a global shortcut does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShortcutAction {
    /// Pause at once (an off-the-shelf USB button that types a key combination). Never resumes.
    #[default]
    Pause,
    /// Bring the window to the front.
    Show,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    pub profiles: Vec<Profile>,
    pub active: usize,
    /// e.g. `CommandOrControl+Shift+F12`; `None` disables it.
    pub shortcut: Option<String>,
    pub shortcut_action: ShortcutAction,
    pub notifications: bool,
    pub start_at_login: bool,
    /// Run the physical button listener inside the app.
    pub button_listener: bool,
    /// With the listener: the serial port of an Uno/Nano-style button; `None` looks for one
    /// (HID, Dream Cheeky, known USB serial adapters).
    pub button_serial: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            profiles: Vec::new(),
            active: 0,
            shortcut: Some("CommandOrControl+Shift+F12".into()),
            shortcut_action: ShortcutAction::Pause,
            notifications: true,
            start_at_login: false,
            button_listener: false,
            button_serial: None,
        }
    }
}

impl Settings {
    pub fn default_path() -> PathBuf {
        dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("big-red-button")
            .join("desktop.json")
    }

    /// Reads the settings; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<Settings, DesktopError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DesktopError::Read {
                path: path.into(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(DesktopError::Read {
                path: path.into(),
                message: e.to_string(),
            }),
        }
    }

    /// Writes atomically (temp file, then rename) with mode 0600: it holds tokens.
    pub fn save(&self, path: &Path) -> Result<(), DesktopError> {
        let err = |e: std::io::Error| DesktopError::Write {
            path: path.into(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        // A profile made from the environment is this run's, not the file's.
        let mut on_disk = self.clone();
        let active_name = self.active_profile().map(|p| p.name.clone());
        on_disk.profiles.retain(|p| !p.from_env);
        on_disk.active = active_name
            .and_then(|n| on_disk.profiles.iter().position(|p| p.name == n))
            .unwrap_or(0);
        let bytes = serde_json::to_vec_pretty(&on_disk).map_err(|e| DesktopError::Write {
            path: path.into(),
            message: e.to_string(),
        })?;
        {
            use std::io::Write as _;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(err)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Adds a profile from `BRB_URL` and `BRB_TOKEN`/`BRB_TOKEN_FILE` when none is configured
    /// (how `make run` and the tests point the app at a control plane).
    pub fn with_env(mut self, get: impl Fn(&str) -> Option<String>) -> Settings {
        if !self.profiles.is_empty() {
            return self;
        }
        let Some(url) = get("BRB_URL") else {
            return self;
        };
        let token = get("BRB_TOKEN").or_else(|| {
            get("BRB_TOKEN_FILE")
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_string())
        });
        self.profiles.push(Profile {
            name: "default".into(),
            urls: url.split(',').map(|u| u.trim().to_string()).collect(),
            token,
            ca_file: get("BRB_CA_FILE").map(Into::into),
            client_cert: get("BRB_CLIENT_CERT").map(Into::into),
            client_key: get("BRB_CLIENT_KEY").map(Into::into),
            insecure_http: get("BRB_INSECURE_HTTP")
                .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes")),
            color: None,
            from_env: true,
        });
        self.active = 0;
        self
    }

    /// The active profile's client, with the token from the file or else from `secrets`.
    pub fn client(&self, secrets: &dyn Secrets) -> Result<Client, DesktopError> {
        let p = self
            .profiles
            .get(self.active)
            .ok_or(DesktopError::NoProfile)?;
        let token = match &p.token {
            Some(t) => Some(t.clone()),
            None => secrets.get(&p.name)?,
        };
        Ok(Client::with_tls(&p.urls, token, &p.tls())?)
    }

    pub fn active_profile(&self) -> Option<&Profile> {
        self.profiles.get(self.active)
    }
}

/// `#rrggbb` to RGB.
pub fn parse_color(c: &str) -> Option<[u8; 3]> {
    let h = c.strip_prefix('#')?;
    if h.len() != 6 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// Paints the environment's colour as a band over the bottom third of an RGBA tray icon, so
/// that production and staging look different in the tray whatever the state colour is.
/// Returns false (and changes nothing) when the buffer does not match the size.
pub fn mark_environment(rgba: &mut [u8], width: u32, height: u32, color: [u8; 3]) -> bool {
    let (w, h) = (width as usize, height as usize);
    if rgba.len() != w * h * 4 || h == 0 {
        return false;
    }
    let from = h - h.div_ceil(3);
    for px in rgba[from * w * 4..].chunks_exact_mut(4) {
        px.copy_from_slice(&[color[0], color[1], color[2], 255]);
    }
    true
}

/// What the tray's quick toggle did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum QuickToggle {
    /// It was running: paused at once. Pausing is the safe half; one click is right.
    Paused { switch: Switch },
    /// It is paused: nothing was changed. Releasing is the dangerous half (the backlog hits
    /// the database), so the app opens the resume dialog, which defaults to a gradual release.
    AskResume { switch: Switch },
}

/// The tray's quick toggle: pauses the primary switch if it runs (recorded with source
/// `tray`); if it is paused, changes nothing and says the resume dialog must be shown. The
/// same function the tray menu calls; tested against a real control plane
/// (`tests/release_quick_paths.rs`).
pub async fn quick_toggle(client: &Client, primary: &str) -> Result<QuickToggle, DesktopError> {
    let current = client.switch(primary).await?;
    if current.state == SwitchState::Paused {
        return Ok(QuickToggle::AskResume { switch: current });
    }
    let switch = client
        .set_state(
            primary,
            &SetStateRequest {
                state: SwitchState::Paused,
                reason: Some("paused from the tray".to_string()),
                source: Some(Source::Tray),
                // Pause exactly what we saw: if someone changed it meanwhile, do not undo them.
                expected_version: Some(current.version),
                ramp: None,
                guards: Vec::new(),
            },
        )
        .await?;
    Ok(QuickToggle::Paused { switch })
}

/// The shortcut's pause: never resumes, so a stuck key cannot toggle back and forth.
pub async fn shortcut_pause(client: &Client, primary: &str) -> Result<Switch, DesktopError> {
    Ok(client
        .set_state(
            primary,
            &SetStateRequest {
                state: SwitchState::Paused,
                reason: Some("paused with the keyboard shortcut".into()),
                source: Some(Source::Desktop),
                expected_version: None,
                ramp: None,
                guards: Vec::new(),
            },
        )
        .await?)
}

/// The OS notification for a change, if it is one worth showing.
pub fn notification(
    prev: Option<&Switch>,
    new: &Switch,
    environment: &str,
) -> Option<(String, String)> {
    if prev.is_some_and(|p| p.version >= new.version || p.state == new.state) {
        return None;
    }
    prev?; // the first state seen is not a change
    let title = match new.state {
        SwitchState::Paused => format!("{}{} PAUSED", env_prefix(environment), what(new)),
        SwitchState::Running => format!("{}{} resumed", env_prefix(environment), what(new)),
    };
    Some((title, who_and_why(new)))
}

/// The notification for a shortcut press that found the switch paused already: without it a
/// press in a crisis shows nothing at all (the tray is red already), and a person cannot tell
/// a missed key from a no-op. `before` is the last state the app had seen before the press.
pub fn already_paused(
    before: Option<&Switch>,
    after: &Switch,
    environment: &str,
) -> Option<(String, String)> {
    let before = before?;
    if before.version != after.version || after.state != SwitchState::Paused {
        return None;
    }
    Some((
        format!("{}{} already PAUSED", env_prefix(environment), what(after)),
        who_and_why(after),
    ))
}

fn what(sw: &Switch) -> String {
    if sw.primary {
        "Workers".to_string()
    } else {
        format!("Switch {}", sw.name)
    }
}

/// No name known: no empty "[]" before the words that matter.
fn env_prefix(environment: &str) -> String {
    match environment.trim() {
        "" => String::new(),
        e => format!("[{e}] "),
    }
}

fn who_and_why(sw: &Switch) -> String {
    let who = match sw.source {
        // The control plane paused a guarded release again: say so, not "by guard from guard".
        brb_api::Source::Guard => "by its health guard".to_string(),
        source => format!("by {} from {source}", sw.changed_by),
    };
    format!(
        "{who}{}",
        sw.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )
}

/// What the forwarding loop reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Forwarded {
    Status(&'static str),
    /// The control plane's `GET /api/v1/info` (its environment's name, the primary switch),
    /// read before its first event stream opens, so that the first change announced already
    /// names the environment, whether or not the window has asked anything yet.
    Info(Box<brb_api::ServerInfo>),
    /// An SSE event, passed on as is: `(event name, JSON data)`.
    Event(String, String),
}

/// Words the OS notifications for one profile: the environment's name, the last state seen
/// of each switch (the first state seen is not a change).
#[derive(Debug, Default)]
pub struct Announcer {
    /// The control plane's own name for its environment, once its info has been read.
    environment: String,
    /// Until then: the profile's name, which the person gave this control plane on the connect
    /// screen. Empty for a profile made from `BRB_URL` (its name, "default", names nothing).
    profile: String,
    seen: std::collections::HashMap<String, Switch>,
}

impl Announcer {
    pub fn new(profile: Option<&Profile>) -> Announcer {
        Announcer {
            profile: profile
                .filter(|p| !p.from_env)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            ..Announcer::default()
        }
    }

    /// The name notifications put in brackets (empty: none known, no brackets).
    pub fn environment(&self) -> &str {
        if self.environment.trim().is_empty() {
            &self.profile
        } else {
            &self.environment
        }
    }

    /// The last state seen of a switch.
    pub fn last(&self, switch: &str) -> Option<&Switch> {
        self.seen.get(switch)
    }

    pub fn set_environment(&mut self, name: &str) {
        self.environment = name.to_string();
    }

    /// Takes what the forwarding loop reported; answers the notification it calls for.
    pub fn take(&mut self, f: &Forwarded) -> Option<(String, String)> {
        match f {
            Forwarded::Info(info) => {
                self.set_environment(&info.environment.name);
                None
            }
            Forwarded::Event(event, data) if event == brb_api::events::SWITCH => {
                let sw = serde_json::from_str::<Switch>(data).ok()?;
                let prev = self.seen.insert(sw.name.clone(), sw.clone());
                notification(prev.as_ref(), &sw, self.environment())
            }
            _ => None,
        }
    }
}

/// How long the all-switches stream may be silent before it counts as dead. The server sends a
/// keep-alive on it at least every 2 s, so 5 s of silence is a frozen or unreachable control
/// plane, which the window and tray must say within seconds (issue #16), not after a TCP
/// timeout.
pub const STREAM_SILENCE: Duration = Duration::from_secs(5);

/// Follows `/api/v1/events` for as long as the future is polled, reconnecting with backoff and
/// resuming from the last event id, and hands everything to `sink`.
pub async fn forward_events(client: Client, sink: impl Fn(Forwarded) + Send + Sync) {
    let mut last: Option<String> = None;
    let mut attempt = 0u32;
    let mut info_known = false;
    loop {
        sink(Forwarded::Status("connecting"));
        if !info_known {
            // Before the stream: its first change must find the environment's name known. A
            // control plane that does not answer this in time is tried again on the next
            // round; the stream is not held back for it.
            match tokio::time::timeout(STREAM_SILENCE, client.info()).await {
                Ok(Ok(info)) => {
                    info_known = true;
                    sink(Forwarded::Info(Box::new(info)));
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "control plane info unavailable"),
                Err(_) => tracing::debug!("control plane info timed out"),
            }
        }
        match client.events(&EventScope::All, last.as_deref()).await {
            Ok(stream) => {
                sink(Forwarded::Status("open"));
                attempt = 0;
                let mut stream = std::pin::pin!(stream);
                loop {
                    match tokio::time::timeout(STREAM_SILENCE, stream.next()).await {
                        Ok(Some(Ok(StreamItem::Event(ev)))) => {
                            if ev.id.is_some() {
                                last = ev.id.clone();
                            }
                            sink(Forwarded::Event(ev.event, ev.data));
                        }
                        Ok(Some(Ok(StreamItem::Alive))) => {}
                        _ => break,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "event stream unavailable"),
        }
        sink(Forwarded::Status("lost"));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(brb_client::gate::backoff(
            Duration::from_millis(500),
            Duration::from_secs(10),
            attempt,
        ))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane that answers the stream's request, sends one event and then nothing (a
    /// frozen process): the stream is declared lost after `STREAM_SILENCE` of silence.
    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_lost_after_the_silence_limit() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
                          id: 1\nevent: switch\ndata: {}\n\n",
                    )
                    .await;
                held.push(s); // never closed, never written again
            }
        });
        let client = Client::new(&[url.as_str()], None).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let start = tokio::time::Instant::now();
        let lost = std::sync::Arc::new(tokio::sync::Notify::new());
        let signal = lost.clone();
        let forward = tokio::spawn(forward_events(client, move |f| {
            if f == Forwarded::Status("lost") {
                signal.notify_one();
            }
            log.lock().unwrap().push((tokio::time::Instant::now(), f));
        }));
        lost.notified().await;
        forward.abort();
        let seen = seen.lock().unwrap();
        let event_at = seen
            .iter()
            .find(|(_, f)| matches!(f, Forwarded::Event(..)))
            .map(|(t, _)| *t)
            .expect("the first event was forwarded");
        let lost_at = seen
            .iter()
            .find(|(_, f)| *f == Forwarded::Status("lost"))
            .map(|(t, _)| *t)
            .unwrap();
        let silent = lost_at - event_at;
        assert!(
            silent >= STREAM_SILENCE && silent < STREAM_SILENCE + Duration::from_secs(1),
            "declared lost after {silent:?} of silence (started {:?} ago)",
            start.elapsed()
        );
    }

    fn sw(version: u64, state: SwitchState) -> Switch {
        Switch {
            name: "workers".into(),
            description: String::new(),
            primary: true,
            state,
            version,
            changed_at: chrono::Utc::now(),
            changed_by: "alice".into(),
            source: Source::Button,
            reason: Some("db".into()),
            ramp: None,
            resume_request: None,
        }
    }

    #[test]
    fn settings_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/desktop.json");
        let mut s = Settings::default();
        s.profiles.push(Profile {
            name: "prod".into(),
            urls: vec!["http://127.0.0.1:7070".into()],
            token: Some("brb_x_secret".into()),
            ca_file: Some("/etc/brb/ca.pem".into()),
            client_cert: None,
            client_key: None,
            insecure_http: false,
            color: Some("#b71c1c".into()),
            from_env: false,
        });
        s.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(Settings::load(&path).unwrap(), s);
        assert!(!format!("{s:?}").contains("secret"));
        assert_eq!(
            Settings::load(&dir.path().join("none.json")).unwrap(),
            Settings::default()
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Settings::load(&path).is_err());
    }

    #[test]
    fn env_fills_an_empty_profile_list() {
        let s = Settings::default().with_env(|k| match k {
            "BRB_URL" => Some("http://a:1, http://b:2".into()),
            "BRB_TOKEN" => Some("t".into()),
            _ => None,
        });
        assert_eq!(s.profiles[0].urls, vec!["http://a:1", "http://b:2"]);
        assert_eq!(s.profiles[0].token.as_deref(), Some("t"));
    }

    #[test]
    fn the_environment_colour_is_a_band_along_the_icon_bottom() {
        assert_eq!(parse_color("#B71C1C"), Some([0xb7, 0x1c, 0x1c]));
        assert_eq!(parse_color("b71c1c"), None);
        assert_eq!(parse_color("#b71c1"), None);
        assert_eq!(parse_color("#b71c1g"), None);
        let (w, h) = (4u32, 6u32);
        let mut icon = vec![9u8; (w * h * 4) as usize];
        assert!(mark_environment(&mut icon, w, h, [1, 2, 3]));
        let row = |y: u32| icon[(y * w * 4) as usize..((y + 1) * w * 4) as usize].to_vec();
        // Rows 0..4 untouched, rows 4 and 5 (the bottom third) in the colour, opaque.
        assert_eq!(row(3), vec![9u8; 16]);
        assert_eq!(row(4), [1, 2, 3, 255].repeat(4));
        assert_eq!(row(5), [1, 2, 3, 255].repeat(4));
        let mut short = vec![0u8; 10];
        assert!(!mark_environment(&mut short, w, h, [1, 2, 3]));
        assert_eq!(short, vec![0u8; 10]);
    }

    #[test]
    fn a_profile_from_the_environment_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desktop.json");
        let s = Settings::default().with_env(|k| match k {
            "BRB_URL" => Some("http://127.0.0.1:1".into()),
            "BRB_TOKEN" => Some("brb_env_secret".into()),
            _ => None,
        });
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("brb_env_secret"), "{text}");
        assert!(Settings::load(&path).unwrap().profiles.is_empty());
    }

    #[test]
    fn a_notification_names_the_environment_or_leaves_the_brackets_out() {
        let a = sw(1, SwitchState::Running);
        let b = sw(2, SwitchState::Paused);
        let (title, _) = notification(Some(&a), &b, "").unwrap();
        assert_eq!(title, "Workers PAUSED");
        let (title, _) = notification(Some(&a), &b, "  ").unwrap();
        assert_eq!(title, "Workers PAUSED");
        let event =
            |s: &Switch| Forwarded::Event("switch".into(), serde_json::to_string(s).unwrap());
        let profile = |name: &str, from_env: bool| Profile {
            name: name.into(),
            urls: vec!["http://127.0.0.1:1".into()],
            token: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure_http: false,
            color: None,
            from_env,
        };
        // Before the control plane's info: the profile's name; a profile from BRB_URL has none.
        let mut named = Announcer::new(Some(&profile("laptop-prod", false)));
        assert_eq!(
            named.take(&event(&a)),
            None,
            "the first state seen is not a change"
        );
        assert_eq!(
            named.take(&event(&b)).unwrap().0,
            "[laptop-prod] Workers PAUSED"
        );
        let mut unnamed = Announcer::new(Some(&profile("default", true)));
        unnamed.take(&event(&a));
        assert_eq!(unnamed.take(&event(&b)).unwrap().0, "Workers PAUSED");
        // Once the info is in, the control plane's own name.
        let info: brb_api::ServerInfo = serde_json::from_value(serde_json::json!({
            "server_version": "0", "environment": {"name": "production", "color": "#b71c1c"},
            "primary_switch": "workers", "caller": {"name": "alice", "role": "operator"}
        }))
        .unwrap();
        assert_eq!(unnamed.take(&Forwarded::Info(Box::new(info))), None);
        assert_eq!(
            unnamed
                .take(&event(&sw(3, SwitchState::Running)))
                .unwrap()
                .0,
            "[production] Workers resumed"
        );
    }

    #[test]
    fn notifications_only_for_changes() {
        let a = sw(1, SwitchState::Running);
        let b = sw(2, SwitchState::Paused);
        assert_eq!(notification(None, &a, "prod"), None);
        let (title, body) = notification(Some(&a), &b, "prod").unwrap();
        assert_eq!(title, "[prod] Workers PAUSED");
        assert_eq!(body, "by alice from button: db");
        assert_eq!(notification(Some(&b), &b, "prod"), None);
        let mut tripped = sw(3, SwitchState::Paused);
        tripped.changed_by = "guard".into();
        tripped.source = Source::Guard;
        tripped.reason = Some("release aborted at 50%: guard db_load < 80 failed 3 checks in a row at step 3/4 (50%): 97 (limit 80)".into());
        let mut releasing = sw(2, SwitchState::Running);
        releasing.source = Source::Cli;
        let (title, body) = notification(Some(&releasing), &tripped, "prod").unwrap();
        assert_eq!(title, "[prod] Workers PAUSED");
        assert_eq!(
            body,
            "by its health guard: release aborted at 50%: guard db_load < 80 failed 3 checks in a row at step 3/4 (50%): 97 (limit 80)"
        );
    }

    #[test]
    fn a_press_that_finds_the_switch_paused_says_so() {
        let running = sw(1, SwitchState::Running);
        let paused = sw(2, SwitchState::Paused);
        // The press paused it: the change itself is announced, not this.
        assert_eq!(already_paused(Some(&running), &paused, "prod"), None);
        // Nothing seen before the press: no claim either way.
        assert_eq!(already_paused(None, &paused, "prod"), None);
        let (title, body) = already_paused(Some(&paused), &paused, "prod").unwrap();
        assert_eq!(title, "[prod] Workers already PAUSED");
        assert_eq!(body, "by alice from button: db");
        // Another change landed in between (the answer is newer than what was seen).
        let later = sw(3, SwitchState::Paused);
        assert_eq!(already_paused(Some(&paused), &later, ""), None);
    }
}
