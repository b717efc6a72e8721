//! The Big Red Button desktop app: a Tauri 2 shell around the shared UI (`ui/`) and the shared
//! crates. Deliberately thin: commands delegate to `brb-client`, the tray's quick toggle and the
//! notification texts are `brb-desktop` functions tested without a display. The token stays on
//! this side; the webview only calls commands and receives events, and errors cross into it as
//! `{code, message}`.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::sync::{Arc, Mutex};

use brb_api::{AuditEntry, Series, ServerInfo, SetStateRequest, Switch, SwitchState, WorkerCounts};
use brb_client::{Client, ClientError};
use brb_desktop::profiles::{Migration, ProfileDraft, ProfileView, TokenPlace};
use brb_desktop::{DesktopError, Forwarded, OsKeychain, Settings, ShortcutAction};
use serde::Serialize;
use tauri::async_runtime::JoinHandle;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Emitter, Manager, State, WindowEvent};
use tauri_plugin_global_shortcut::{GlobalShortcutExt, ShortcutState};
use tauri_plugin_notification::NotificationExt;

/// An error as the UI sees it: a code to branch on and words for people.
#[derive(Debug, Serialize)]
struct UiError {
    code: String,
    message: String,
    current: Option<Box<Switch>>,
}

impl From<ClientError> for UiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api {
                code,
                message,
                current,
                ..
            } => UiError {
                code: code.as_str().to_string(),
                message,
                current,
            },
            ClientError::Unreachable(m) => UiError {
                code: "unreachable".into(),
                message: m,
                current: None,
            },
            other => UiError {
                code: "protocol".into(),
                message: other.to_string(),
                current: None,
            },
        }
    }
}

impl From<DesktopError> for UiError {
    fn from(e: DesktopError) -> Self {
        match e {
            DesktopError::Client(c) => c.into(),
            DesktopError::NoProfile => UiError {
                code: "not_configured".into(),
                message: "no control plane is configured yet".into(),
                current: None,
            },
            DesktopError::InvalidProfile(m) => UiError {
                code: "invalid_profile".into(),
                message: m,
                current: None,
            },
            DesktopError::Keychain(k) => UiError {
                code: "keychain".into(),
                message: k.to_string(),
                current: None,
            },
            other => UiError {
                code: "settings".into(),
                message: other.to_string(),
                current: None,
            },
        }
    }
}

/// The tray icon and the two menu items whose text follows the state.
type Tray = (TrayIcon, MenuItem<tauri::Wry>, MenuItem<tauri::Wry>);

/// Where the active profile's client stands: the keychain is read after the window is up,
/// so commands wait for it instead of failing.
#[derive(Clone)]
enum Conn {
    Starting,
    Ready(Client),
    NotConfigured,
    Failed(UiErrorCopy),
}

#[derive(Clone)]
struct UiErrorCopy {
    code: String,
    message: String,
}

struct AppState {
    conn: tokio::sync::watch::Sender<Conn>,
    /// As in the file, plus a profile made from `BRB_URL` for this run; tokens only where no
    /// keychain was available.
    settings: Mutex<Settings>,
    settings_path: std::path::PathBuf,
    /// Why tokens are kept in the settings file, when they are.
    keychain_problem: Mutex<Option<String>>,
    /// The active profile's event forwarding and button listener, stopped on a switch.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The active profile's environment name and the last state of each switch seen on the
    /// event stream: what notifications say.
    announcer: Mutex<brb_desktop::Announcer>,
    connection: Mutex<&'static str>,
    primary: Mutex<Option<String>>,
    tray: Mutex<Option<Tray>>,
    /// The state and environment colour the tray icon was last given. Setting the same icon
    /// again is not free: each `set_icon` writes a new file, names it to the panel and deletes
    /// the old one, so a panel reading the old name finds nothing.
    tray_icon_shown: Mutex<Option<(&'static str, Option<String>)>>,
    /// The office button listener's status text, when it runs.
    button: Mutex<Option<String>>,
    /// Milliseconds from process start to the first frame the webview reported painted.
    first_paint_ms: Mutex<Option<u64>>,
    /// Bumped by each activation: a slower, older one (two quick switches) must not win.
    generation: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type S<'a> = State<'a, Arc<AppState>>;

async fn client(s: &AppState) -> Result<Client, UiError> {
    let mut rx = s.conn.subscribe();
    let conn = rx
        .wait_for(|c| !matches!(c, Conn::Starting))
        .await
        .map(|c| c.clone())
        .unwrap_or(Conn::NotConfigured);
    match conn {
        Conn::Ready(c) => Ok(c),
        Conn::Failed(e) => Err(UiError {
            code: e.code,
            message: e.message,
            current: None,
        }),
        Conn::Starting | Conn::NotConfigured => Err(DesktopError::NoProfile.into()),
    }
}

#[tauri::command]
async fn brb_info(state: S<'_>) -> Result<ServerInfo, UiError> {
    let info = client(&state).await?.info().await?;
    *lock(&state.primary) = Some(info.primary_switch.clone());
    lock(&state.announcer).set_environment(&info.environment.name);
    Ok(info)
}

#[tauri::command]
async fn brb_switches(state: S<'_>) -> Result<Vec<Switch>, UiError> {
    Ok(client(&state).await?.switches().await?)
}

#[tauri::command]
async fn brb_set_state(
    state: S<'_>,
    name: String,
    req: SetStateRequest,
) -> Result<Switch, UiError> {
    Ok(client(&state).await?.set_state(&name, &req).await?)
}

#[tauri::command]
async fn brb_audit(
    state: S<'_>,
    limit: u32,
    switch: Option<String>,
) -> Result<Vec<AuditEntry>, UiError> {
    Ok(client(&state)
        .await?
        .audit(switch.as_deref(), limit.clamp(1, 500), None)
        .await?
        .entries)
}

#[tauri::command]
async fn brb_workers(state: S<'_>, name: String) -> Result<WorkerCounts, UiError> {
    Ok(client(&state).await?.workers(&name).await?)
}

#[tauri::command]
async fn brb_series(state: S<'_>, since: i64) -> Result<Vec<Series>, UiError> {
    Ok(client(&state)
        .await?
        .series(None, Some(since))
        .await?
        .series)
}

#[tauri::command]
fn brb_connection(state: S<'_>) -> &'static str {
    *state.connection.lock().unwrap_or_else(|e| e.into_inner())
}

#[tauri::command]
async fn brb_ramp(
    state: S<'_>,
    name: String,
    req: brb_api::RampControlRequest,
) -> Result<Switch, UiError> {
    Ok(client(&state).await?.ramp_control(&name, &req).await?)
}

/// The approval and drill commands: one call on the active profile's client about switch
/// `name`, its answer or its error in the UI's words. An error (a refusal, no answer) is also
/// logged with the switch and what was asked: these are decisions people make from this app,
/// and the window shows only the last error.
async fn on_switch<T>(
    state: &AppState,
    action: &'static str,
    name: &str,
    call: impl AsyncFnOnce(Client) -> Result<T, ClientError>,
) -> Result<T, UiError> {
    let answer = call(client(state).await?).await.map_err(UiError::from);
    if let Err(e) = &answer {
        tracing::warn!(switch = name, action, code = %e.code, error = %e.message, source = "desktop", "not done");
    }
    answer
}

/// Files a resume request on a switch whose resumes need a second operator.
#[tauri::command]
async fn brb_request_resume(
    state: S<'_>,
    name: String,
    req: brb_api::CreateResumeRequest,
) -> Result<Switch, UiError> {
    on_switch(&state, "request resume", &name, async |c| {
        c.request_resume(&name, &req).await
    })
    .await
}

/// Approves (`approve`) or rejects another operator's resume request (the requester's own
/// rejection is a withdrawal).
#[tauri::command]
async fn brb_decide_resume(
    state: S<'_>,
    name: String,
    id: u64,
    approve: bool,
    req: brb_api::DecideResumeRequest,
) -> Result<Switch, UiError> {
    let action = if approve {
        "approve resume"
    } else {
        "reject resume"
    };
    on_switch(&state, action, &name, async |c| {
        c.decide_resume(&name, id, approve, &req).await
    })
    .await
}

/// An admin's resume without approval (the control plane refuses anyone else).
#[tauri::command]
async fn brb_break_glass(
    state: S<'_>,
    name: String,
    req: brb_api::BreakGlassRequest,
) -> Result<Switch, UiError> {
    on_switch(&state, "break glass", &name, async |c| {
        c.break_glass(&name, &req).await
    })
    .await
}

/// Starts a fire drill: a new version with nothing changed; nothing pauses.
#[tauri::command]
async fn brb_drill(
    state: S<'_>,
    name: String,
    req: brb_api::DrillRequest,
) -> Result<brb_api::DrillStarted, UiError> {
    on_switch(&state, "start drill", &name, async |c| {
        c.drill(&name, &req).await
    })
    .await
}

/// Who answered the drill started as `version`, how fast, who did not, who is stale.
#[tauri::command]
async fn brb_drill_report(
    state: S<'_>,
    name: String,
    version: u64,
) -> Result<brb_api::DrillReport, UiError> {
    on_switch(&state, "read drill report", &name, async |c| {
        c.drill_report(&name, version).await
    })
    .await
}

/// What the tray menu's toggle item does (and what a test calls through the webview).
#[tauri::command]
async fn brb_tray_toggle(
    app: AppHandle,
    state: S<'_>,
) -> Result<brb_desktop::QuickToggle, UiError> {
    tray_toggle(&app, &state).await
}

/// Pauses at once; a paused switch is never released from here: the window comes up with
/// the resume dialog (gradual by default), and the person chooses there.
async fn tray_toggle(
    app: &AppHandle,
    state: &AppState,
) -> Result<brb_desktop::QuickToggle, UiError> {
    let primary = primary_name(state).await?;
    let outcome = brb_desktop::quick_toggle(&client(state).await?, &primary).await?;
    match &outcome {
        brb_desktop::QuickToggle::Paused { switch } => update_tray(app, state, Some(switch)),
        brb_desktop::QuickToggle::AskResume { switch } => {
            update_tray(app, state, Some(switch));
            show_main(app);
            let _ = app.emit("brb://ask-resume", ());
        }
    }
    Ok(outcome)
}

async fn primary_name(state: &AppState) -> Result<String, UiError> {
    if let Some(p) = state
        .primary
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return Ok(p);
    }
    let info = client(state).await?.info().await?;
    *state.primary.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.primary_switch.clone());
    Ok(info.primary_switch)
}

const ICON_PAUSED: &[u8] = include_bytes!("../icons/tray-paused.png");
const ICON_RUNNING: &[u8] = include_bytes!("../icons/tray-running.png");
const ICON_UNKNOWN: &[u8] = include_bytes!("../icons/tray-unknown.png");

/// The tray follows the primary switch: red when paused, green when running, grey when the
/// control plane cannot be reached; the menu says the state and offers the opposite action.
fn update_tray(app: &AppHandle, state: &AppState, sw: Option<&Switch>) {
    let tray = state.tray.lock().unwrap_or_else(|e| e.into_inner());
    let Some((icon, label, toggle)) = tray.as_ref() else {
        return;
    };
    let (bytes, text, action) = match sw.map(|s| s.state) {
        Some(SwitchState::Paused) => (ICON_PAUSED, "Workers PAUSED", "Resume workers…"),
        Some(SwitchState::Running) => (ICON_RUNNING, "Workers running", "Pause workers"),
        None => (ICON_UNKNOWN, "Control plane unreachable", "Pause workers"),
    };
    let shown = Some((text, active_color(state)));
    let mut last = lock(&state.tray_icon_shown);
    if *last != shown
        && let Ok(img) = environment_icon(bytes, state)
        && icon.set_icon(Some(img)).is_ok()
    {
        *last = shown;
    }
    drop(last);
    let profile = lock(&state.settings)
        .active_profile()
        .map(|p| format!(" ({})", p.name))
        .unwrap_or_default();
    let _ = icon.set_tooltip(Some(format!("Big Red Button{profile}: {text}")));
    let _ = label.set_text(text);
    let _ = toggle.set_text(action);
    let _ = app;
}

/// The state icon with the active profile's environment colour along its bottom.
fn environment_icon(bytes: &[u8], state: &AppState) -> tauri::Result<Image<'static>> {
    let img = Image::from_bytes(bytes)?;
    let (w, h) = (img.width(), img.height());
    let mut rgba = img.rgba().to_vec();
    if let Some(c) = active_color(state)
        .as_deref()
        .and_then(brb_desktop::parse_color)
    {
        brb_desktop::mark_environment(&mut rgba, w, h, c);
    }
    Ok(Image::new_owned(rgba, w, h))
}

/// The active profile's environment colour, as written in the settings.
fn active_color(state: &AppState) -> Option<String> {
    lock(&state.settings)
        .active_profile()
        .and_then(|p| p.color.clone())
}

fn show_main(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

fn on_forwarded(app: &AppHandle, state: &AppState, f: Forwarded) {
    // The info comes before the stream's first event: a change names its environment even
    // before the window has asked anything.
    let announce = lock(&state.announcer).take(&f);
    match f {
        Forwarded::Status(s) => {
            *state.connection.lock().unwrap_or_else(|e| e.into_inner()) = s;
            let _ = app.emit("brb://status", s);
            if s == "lost" {
                update_tray(app, state, None);
            }
        }
        Forwarded::Info(info) => {
            *lock(&state.primary) = Some(info.primary_switch.clone());
        }
        Forwarded::Event(event, data) => {
            if lock(&state.settings).notifications
                && let Some((title, body)) = announce
                && let Err(e) = app.notification().builder().title(title).body(body).show()
            {
                tracing::warn!(error = %e, "OS notification not shown");
            }
            if event == brb_api::events::SWITCH
                && let Ok(sw) = serde_json::from_str::<Switch>(&data)
                && sw.primary
            {
                update_tray(app, state, Some(&sw));
            }
            #[derive(Serialize, Clone)]
            struct Payload {
                event: String,
                data: String,
            }
            let _ = app.emit("brb://event", Payload { event, data });
        }
    }
}

/// The tray menu: the state, the quick toggle, the profiles (a check item each), Open, Quit.
fn tray_menu(
    app: &AppHandle,
    settings: &Settings,
) -> tauri::Result<(Menu<tauri::Wry>, MenuItem<tauri::Wry>, MenuItem<tauri::Wry>)> {
    let label = MenuItem::with_id(app, "state", "Connecting…", false, None::<&str>)?;
    let toggle = MenuItem::with_id(app, "toggle", "Pause workers", true, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let sep = PredefinedMenuItem::separator(app)?;
    let sep2 = PredefinedMenuItem::separator(app)?;
    let items = settings
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            CheckMenuItem::with_id(
                app,
                format!("profile:{}", p.name),
                &p.name,
                true,
                i == settings.active,
                None::<&str>,
            )
        })
        .collect::<tauri::Result<Vec<_>>>()?;
    let refs: Vec<&dyn tauri::menu::IsMenuItem<tauri::Wry>> = items
        .iter()
        .map(|i| i as &dyn tauri::menu::IsMenuItem<tauri::Wry>)
        .collect();
    let profiles =
        Submenu::with_id_and_items(app, "profiles", "Profile", !items.is_empty(), &refs)?;
    let menu = Menu::with_items(
        app,
        &[&label, &sep, &toggle, &sep2, &profiles, &open, &quit],
    )?;
    Ok((menu, label, toggle))
}

/// After a profile change: the menu lists the profiles again, the icon shows the new
/// environment's colour and "connecting" until the new control plane answers.
fn refresh_tray(app: &AppHandle, state: &AppState) {
    let settings = lock(&state.settings).clone();
    {
        let mut tray = lock(&state.tray);
        let Some((icon, label, toggle)) = tray.as_mut() else {
            return;
        };
        match tray_menu(app, &settings) {
            Ok((menu, l, t)) => {
                let _ = icon.set_menu(Some(menu));
                *label = l;
                *toggle = t;
            }
            Err(e) => tracing::warn!(error = %e, "tray menu not rebuilt"),
        }
    }
    update_tray(app, state, None);
}

fn build_tray(app: &AppHandle, state: Arc<AppState>) -> tauri::Result<()> {
    let (menu, label, toggle) = tray_menu(app, &lock(&state.settings))?;
    let st = Arc::clone(&state);
    let icon = TrayIconBuilder::with_id("brb")
        .icon(environment_icon(ICON_UNKNOWN, &state)?)
        .tooltip("Big Red Button")
        .menu(&menu)
        .on_menu_event(move |app, event| match event.id.as_ref() {
            "toggle" => {
                let (app, st) = (app.clone(), Arc::clone(&st));
                tauri::async_runtime::spawn(async move {
                    if let Err(e) = tray_toggle(&app, &st).await {
                        tracing::error!(code = %e.code, error = %e.message, source = "tray", "tray toggle failed");
                        let _ = app
                            .notification()
                            .builder()
                            .title("Big Red Button: not done")
                            .body(e.message)
                            .show();
                    }
                });
            }
            "open" => show_main(app),
            "quit" => app.exit(0),
            id => {
                if let Some(name) = id.strip_prefix("profile:")
                    && let Err(e) = switch_profile(app, &st, name)
                {
                    tracing::error!(code = %e.code, error = %e.message, source = "tray", "profile not switched");
                }
            }
        })
        .build(app)?;
    *lock(&state.tray_icon_shown) = Some(("Control plane unreachable", active_color(&state)));
    *lock(&state.tray) = Some((icon, label, toggle));
    Ok(())
}

/// The same listener as `brb button`, inside the app (when `button_listener` is on): presses
/// are recorded with source `button`, and the device's status is shown in the window.
fn start_button_listener(app: AppHandle, state: Arc<AppState>, client: Client) {
    let (tx, mut rx) = tokio::sync::watch::channel(brb_button::DeviceStatus::Searching);
    let shown = Arc::clone(&state);
    let tasks = Arc::clone(&state);
    let listener = tauri::async_runtime::spawn(async move {
        let primary = match primary_name(&state).await {
            Ok(p) => p,
            Err(_) => brb_api::PRIMARY_SWITCH.to_string(),
        };
        let cfg = brb_button::Config {
            switch: primary,
            device: match lock(&state.settings).button_serial.clone() {
                Some(port) => brb_button::DeviceSpec::Serial { port },
                None => brb_button::DeviceSpec::Auto,
            },
            policy: brb_button::PolicyConfig::default(),
        };
        if let Err(e) = brb_button::run_with_status(client, cfg, std::future::pending(), tx).await {
            tracing::error!(error = %e, source = "button", "button listener stopped");
        }
    });
    let status = tauri::async_runtime::spawn(async move {
        loop {
            let text = match &*rx.borrow_and_update() {
                brb_button::DeviceStatus::Searching => "Office button: looking for it…".to_string(),
                brb_button::DeviceStatus::Connected(d) => format!("Office button: connected ({d})"),
                brb_button::DeviceStatus::Disconnected { device, reason } => {
                    format!("Office button: {device} disconnected ({reason}); looking for it again")
                }
            };
            *shown.button.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
            let _ = app.emit("brb://button", text);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    lock(&tasks.tasks).extend([listener, status]);
}

/// The office button's status text (`None` when the listener is off).
#[tauri::command]
fn brb_button_status(state: S<'_>) -> Option<String> {
    state
        .button
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Milliseconds since this process started: from the kernel's start time where there is one
/// (so the figure includes the dynamic loader and everything before `main`), else since `main`.
fn since_process_start(main_started: std::time::Instant) -> u64 {
    #[cfg(target_os = "linux")]
    {
        // Field 22 of /proc/self/stat is the start time in clock ticks since boot; USER_HZ is
        // 100 on every Linux architecture we ship to.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        let start_ticks = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(19))
            .and_then(|t| t.parse::<f64>().ok());
        let up = uptime
            .split_whitespace()
            .next()
            .and_then(|u| u.parse::<f64>().ok());
        if let (Some(t), Some(u)) = (start_ticks, up) {
            return ((u - t / 100.0) * 1000.0).max(0.0) as u64;
        }
    }
    main_started.elapsed().as_millis() as u64
}

static MAIN_STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Whether the hidden-at-start window has been shown (at its page's first load, or later).
static SHOWN_AT_START: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The webview calls this once its first frame ("connecting…" or the connect screen) is on
/// screen; the figure is logged and answered (the start-up e2e prints it). `page_ms` is the
/// page's own clock at that frame (ms since its navigation began): the log splits the figure
/// into the time before the page and the page's own.
#[tauri::command]
fn brb_painted(state: S<'_>, page_ms: Option<f64>) -> u64 {
    let mut first = lock(&state.first_paint_ms);
    if let Some(ms) = *first {
        return ms;
    }
    let ms = since_process_start(*MAIN_STARTED.get_or_init(std::time::Instant::now));
    tracing::info!(
        ms,
        page_ms = page_ms.map(|p| p.round() as u64),
        "first frame painted"
    );
    *first = Some(ms);
    ms
}

/// The connect screen's and the switcher's picture of the profiles.
#[derive(Serialize)]
struct ProfilesAnswer {
    profiles: Vec<ProfileView>,
    /// Why tokens stay in the settings file, when no OS keychain is available.
    keychain_problem: Option<String>,
    /// Where the settings file is (shown in the fallback notice).
    settings_path: String,
}

fn profiles_answer(state: &AppState) -> ProfilesAnswer {
    let problem = lock(&state.keychain_problem).clone();
    ProfilesAnswer {
        profiles: brb_desktop::profiles::view(&lock(&state.settings), problem.as_deref()),
        keychain_problem: problem,
        settings_path: state.settings_path.display().to_string(),
    }
}

/// Answers once the start-up work (keychain migration, client) is done, so that what it says
/// about the keychain is what happened; the first frame is already on screen by then.
#[tauri::command]
async fn brb_profiles(state: S<'_>) -> Result<ProfilesAnswer, UiError> {
    let mut rx = state.conn.subscribe();
    let _ = rx.wait_for(|c| !matches!(c, Conn::Starting)).await;
    Ok(profiles_answer(&state))
}

/// "Test connection": every URL of the draft, step by step (nothing is saved). An empty token
/// while editing tests with the saved one.
#[tauri::command]
async fn brb_test_connection(
    state: S<'_>,
    draft: ProfileDraft,
    replacing: Option<String>,
) -> Result<Vec<brb_desktop::probe::ProbeReport>, UiError> {
    let settings = lock(&state.settings).clone();
    let profile = brb_desktop::profiles::validate(&draft, &settings, replacing.as_deref())?;
    let token = match draft
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(t) => Some(t.to_string()),
        None => {
            let old =
                replacing.and_then(|r| settings.profiles.iter().find(|p| p.name == r).cloned());
            match old {
                Some(p) if p.token.is_some() => p.token,
                Some(p) => tauri::async_runtime::spawn_blocking(move || {
                    brb_desktop::Secrets::get(&OsKeychain, &p.name).map_err(DesktopError::from)
                })
                .await
                .map_err(|e| UiError {
                    code: "internal".into(),
                    message: e.to_string(),
                    current: None,
                })??,
                None => None,
            }
        }
    };
    Ok(brb_desktop::probe::probe_all(&profile.urls, token.as_deref(), &profile.tls()).await)
}

/// Saves a profile from the connect screen (token to the keychain, else the file), makes it
/// the active one and connects to it.
#[tauri::command]
async fn brb_save_profile(
    app: AppHandle,
    state: S<'_>,
    draft: ProfileDraft,
    replacing: Option<String>,
) -> Result<TokenPlace, UiError> {
    let st = Arc::clone(state.inner());
    let saved = tauri::async_runtime::spawn_blocking(move || {
        let settings = lock(&st.settings).clone();
        brb_desktop::profiles::save_profile(
            &settings,
            &st.settings_path,
            &OsKeychain,
            &draft,
            replacing.as_deref(),
        )
    })
    .await
    .map_err(|e| UiError {
        code: "internal".into(),
        message: e.to_string(),
        current: None,
    })??;
    tracing::info!(profile = ?saved.settings.active_profile().map(|p| &p.name), token = ?saved.token, source = "desktop", "profile saved");
    if let TokenPlace::File { reason } = &saved.token {
        *lock(&state.keychain_problem) = Some(reason.clone());
    }
    *lock(&state.settings) = saved.settings;
    activate(&app, &state);
    Ok(saved.token)
}

/// Switches to another profile (the window's switcher and the tray's Profile menu).
#[tauri::command]
fn brb_use_profile(app: AppHandle, state: S<'_>, name: String) -> Result<(), UiError> {
    switch_profile(&app, &state, &name)
}

/// Deletes a profile from the connect screen: from the settings file, then its token from the
/// keychain. Deleting the active profile connects to the first one left (or shows the connect
/// screen). Answers why the token is still in the keychain, when it could not be removed.
#[tauri::command]
async fn brb_delete_profile(
    app: AppHandle,
    state: S<'_>,
    name: String,
) -> Result<Option<String>, UiError> {
    let st = Arc::clone(state.inner());
    let who = name.clone();
    let deleted = tauri::async_runtime::spawn_blocking(move || {
        let settings = lock(&st.settings).clone();
        brb_desktop::profiles::delete_profile(&settings, &st.settings_path, &OsKeychain, &who)
    })
    .await
    .map_err(|e| UiError {
        code: "internal".into(),
        message: e.to_string(),
        current: None,
    })??;
    match &deleted.keychain_left {
        None => {
            tracing::info!(profile = %name, source = "desktop", "profile deleted with its keychain entry")
        }
        Some(e) => {
            tracing::warn!(profile = %name, error = %e, source = "desktop", "profile deleted; its keychain entry was not removed")
        }
    }
    *lock(&state.settings) = deleted.settings;
    if deleted.was_active {
        activate(&app, &state);
        // The window starts again on the profile now active (none: the connect screen).
        let active = lock(&state.settings)
            .active_profile()
            .map(|p| p.name.clone());
        let _ = app.emit("brb://profile", active.unwrap_or_default());
    } else {
        // Still connected to the same control plane: the menu loses the profile, the icon
        // keeps the state it showed.
        refresh_tray(&app, &state);
        let primary = lock(&state.primary).clone();
        let last = primary.and_then(|p| lock(&state.announcer).last(&p).cloned());
        if *lock(&state.connection) == "open"
            && let Some(sw) = last
        {
            update_tray(&app, &state, Some(&sw));
        }
    }
    Ok(deleted.keychain_left)
}

fn switch_profile(app: &AppHandle, state: &Arc<AppState>, name: &str) -> Result<(), UiError> {
    let next = {
        let settings = lock(&state.settings);
        brb_desktop::profiles::use_profile(&settings, &state.settings_path, name)?
    };
    tracing::info!(profile = name, source = "desktop", "profile switched");
    *lock(&state.settings) = next;
    activate(app, state);
    // The window reloads and starts again on the new control plane.
    let _ = app.emit("brb://profile", name);
    Ok(())
}

/// Connects to the active profile: stops what followed the previous one, then (off the UI
/// thread: the keychain is a D-Bus round trip) moves file tokens to the keychain, builds the
/// client, and starts the event forwarding and the button listener.
fn activate(app: &AppHandle, state: &Arc<AppState>) {
    use std::sync::atomic::Ordering;
    let generation = state.generation.fetch_add(1, Ordering::SeqCst) + 1;
    for t in lock(&state.tasks).drain(..) {
        t.abort();
    }
    state.conn.send_replace(Conn::Starting);
    *lock(&state.primary) = None;
    let announcer = brb_desktop::Announcer::new(lock(&state.settings).active_profile());
    *lock(&state.announcer) = announcer;
    *lock(&state.connection) = "connecting";
    refresh_tray(app, state);
    let (app, st) = (app.clone(), Arc::clone(state));
    tauri::async_runtime::spawn(async move {
        let worker = Arc::clone(&st);
        let built = tauri::async_runtime::spawn_blocking(move || {
            let settings = lock(&worker.settings).clone();
            match brb_desktop::profiles::migrate_tokens(&settings, &worker.settings_path, &OsKeychain) {
                Ok((next, Migration::Moved(names))) => {
                    tracing::info!(profiles = ?names, source = "desktop", "tokens moved from the settings file to the OS keychain");
                    *lock(&worker.keychain_problem) = None;
                    *lock(&worker.settings) = next;
                }
                Ok((_, Migration::KeptInFile { reason })) => {
                    tracing::warn!(error = %reason, source = "desktop", "no OS keychain: tokens stay in the settings file (0600)");
                    *lock(&worker.keychain_problem) = Some(reason);
                }
                Ok((_, Migration::Nothing)) => {}
                Err(e) => {
                    tracing::error!(error = %e, source = "desktop", "tokens not moved to the keychain; the settings file is unchanged");
                }
            }
            let settings = lock(&worker.settings).clone();
            settings.client(&OsKeychain)
        })
        .await;
        let conn = match built {
            Ok(Ok(c)) => Conn::Ready(c),
            Ok(Err(DesktopError::NoProfile)) => Conn::NotConfigured,
            Ok(Err(e)) => {
                let e = UiError::from(e);
                Conn::Failed(UiErrorCopy {
                    code: e.code,
                    message: e.message,
                })
            }
            Err(e) => Conn::Failed(UiErrorCopy {
                code: "internal".into(),
                message: e.to_string(),
            }),
        };
        if st.generation.load(Ordering::SeqCst) != generation {
            return; // another profile was chosen meanwhile; its activation reports
        }
        if let Conn::Ready(c) = &conn {
            let (h, fw) = (app.clone(), Arc::clone(&st));
            let c2 = c.clone();
            let forward = tauri::async_runtime::spawn(async move {
                brb_desktop::forward_events(c2, move |f| on_forwarded(&h, &fw, f)).await;
            });
            lock(&st.tasks).push(forward);
            if lock(&st.settings).button_listener {
                start_button_listener(app.clone(), Arc::clone(&st), c.clone());
            }
        }
        st.conn.send_replace(conn);
        refresh_tray(&app, &st);
    });
}

/// Where there is no GPU, WebKit and GDK paint without OpenGL (`brb_desktop::rendering`: on
/// Mesa's software GL, compositing costs the first frame ~150 ms of CPU). Answers why, for the
/// log.
#[allow(unsafe_code)]
fn paint_without_gl_where_no_gpu() -> Option<&'static str> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let plan = brb_desktop::rendering::without_gpu(
        std::env::var_os("WEBKIT_DISABLE_COMPOSITING_MODE").as_deref(),
        std::env::var_os("GDK_GL").as_deref(),
        std::path::Path::new("/dev/dri"),
    )?;
    for (k, v) in &plan.set {
        // SAFETY: called first in `main`, before any thread exists: nothing can read the
        // environment while it changes (why `set_var` is unsafe). GTK and WebKit read it
        // later, on this thread, and the WebKit processes inherit it.
        unsafe { std::env::set_var(k, v) };
    }
    Some(plan.why)
}

fn main() {
    MAIN_STARTED.get_or_init(std::time::Instant::now);
    let rendering = paint_without_gl_where_no_gpu();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
    let started = *MAIN_STARTED.get_or_init(std::time::Instant::now);
    tracing::debug!(ms = since_process_start(started), "start-up: main");
    if let Some(why) = rendering {
        tracing::info!(
            source = "desktop",
            "{why}: WEBKIT_DISABLE_COMPOSITING_MODE=1 (GDK_GL=disable unless set)"
        );
    }
    let path = std::env::var_os("BRB_DESKTOP_SETTINGS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(Settings::default_path);
    // One small local file; the keychain and the network wait until the window is up.
    let settings = match Settings::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brb-desktop: {e}; using defaults");
            Settings::default()
        }
    }
    .with_env(|k| std::env::var(k).ok());
    let (conn, _) = tokio::sync::watch::channel(Conn::Starting);
    let state = Arc::new(AppState {
        conn,
        settings: Mutex::new(settings.clone()),
        settings_path: path,
        keychain_problem: Mutex::new(None),
        tasks: Mutex::default(),
        announcer: Mutex::new(brb_desktop::Announcer::new(settings.active_profile())),
        connection: Mutex::new("connecting"),
        primary: Mutex::new(None),
        tray: Mutex::new(None),
        tray_icon_shown: Mutex::new(None),
        button: Mutex::new(None),
        first_paint_ms: Mutex::new(None),
        generation: std::sync::atomic::AtomicU64::new(0),
    });

    let shortcut_state = Arc::clone(&state);
    let result = tauri::Builder::default()
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| show_main(app)))
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .plugin(
            tauri_plugin_global_shortcut::Builder::new()
                .with_handler(move |app, _shortcut, event| {
                    if event.state() != ShortcutState::Pressed {
                        return;
                    }
                    let action = lock(&shortcut_state.settings).shortcut_action;
                    match action {
                        ShortcutAction::Show => show_main(app),
                        ShortcutAction::Pause => {
                            let (app, st) = (app.clone(), Arc::clone(&shortcut_state));
                            tauri::async_runtime::spawn(async move {
                                let res = match (primary_name(&st).await, client(&st).await) {
                                    (Ok(p), Ok(c)) => {
                                        let before = lock(&st.announcer).last(&p).cloned();
                                        brb_desktop::shortcut_pause(&c, &p).await.map_err(UiError::from).map(|sw| (before, sw))
                                    }
                                    (Err(e), _) | (_, Err(e)) => Err(e),
                                };
                                match res {
                                    Ok((before, sw)) => {
                                        let notice = brb_desktop::already_paused(before.as_ref(), &sw, lock(&st.announcer).environment());
                                        if lock(&st.settings).notifications
                                            && let Some((title, body)) = notice
                                            && let Err(e) = app.notification().builder().title(title).body(body).show()
                                        {
                                            tracing::warn!(error = %e, "OS notification not shown");
                                        }
                                        update_tray(&app, &st, Some(&sw))
                                    }
                                    Err(e) => tracing::error!(code = %e.code, error = %e.message, source = "desktop", "shortcut pause failed"),
                                }
                            });
                        }
                    }
                })
                .build(),
        )
        // Registered last: its set-up runs after GTK's and the other plugins' (the log's split).
        .plugin(
            tauri::plugin::Builder::<tauri::Wry, ()>::new("start-up-mark")
                .setup(move |_, _| {
                    tracing::debug!(ms = since_process_start(started), "start-up: GTK and plugins set up");
                    Ok(())
                })
                .build(),
        )
        .manage(Arc::clone(&state))
        .invoke_handler(tauri::generate_handler![
            brb_info,
            brb_switches,
            brb_set_state,
            brb_audit,
            brb_workers,
            brb_series,
            brb_connection,
            brb_tray_toggle,
            brb_ramp,
            brb_button_status,
            brb_profiles,
            brb_test_connection,
            brb_save_profile,
            brb_use_profile,
            brb_delete_profile,
            brb_painted,
            brb_request_resume,
            brb_decide_resume,
            brb_break_glass,
            brb_drill,
            brb_drill_report
        ])
        .on_window_event(|window, event| {
            // Closing the window keeps the app in the tray: the brake stays one click away.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .on_page_load(move |webview, page| {
            // Once per load: the start-up log's split between the webview and the page.
            tracing::debug!(ms = since_process_start(started), event = ?page.event(), "start-up: page load");
            // The window is made hidden and shown once its page has loaded: a window exposed
            // earlier makes WebKit's UI thread wait (up to 500 ms) for a web process still
            // starting, and the page's own requests, served on that thread, wait behind it
            // (BENCHMARKS.md, "Desktop start-up"). Only the first load: a reload must not pop
            // up a window the user closed to the tray.
            if page.event() == tauri::webview::PageLoadEvent::Finished
                && !SHOWN_AT_START.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let _ = webview.window().show();
            }
        })
        .setup(move |app| {
            tracing::debug!(ms = since_process_start(started), "start-up: window set up");
            let handle = app.handle().clone();
            // Should the page never begin to load, the window still comes up.
            let late = handle.clone();
            tauri::async_runtime::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                if !SHOWN_AT_START.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::warn!("the page had not loaded within 3 s; showing the window anyway");
                    show_main(&late);
                }
            });
            if let Err(e) = build_tray(&handle, Arc::clone(&state)) {
                tracing::warn!(error = %e, "no tray icon");
            }
            let shortcut = settings.shortcut.clone();
            if let Some(sc) = &shortcut
                && let Err(e) = app.global_shortcut().register(sc.as_str())
            {
                tracing::warn!(shortcut = %sc, error = %e, "global shortcut not registered");
            }
            {
                use tauri_plugin_autostart::ManagerExt as _;
                let auto = app.autolaunch();
                let res = if settings.start_at_login {
                    auto.enable()
                } else {
                    auto.disable()
                };
                if let Err(e) = res {
                    tracing::debug!(error = %e, "start at login not changed");
                }
            }
            activate(&handle, &state);
            tracing::debug!(ms = since_process_start(started), "start-up: tray, shortcut and autostart set up");
            Ok(())
        })
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("brb-desktop: {e}");
        std::process::exit(1);
    }
}
