//! The Big Red Button desktop app: a Tauri 2 shell around the shared UI (`ui/`) and the shared
//! crates. Deliberately thin: commands delegate to `brb-client`, the tray's quick toggle and the
//! notification texts are `brb-desktop` functions tested without a display. The token stays on
//! this side; the webview only calls commands and receives events, and errors cross into it as
//! `{code, message}`.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::sync::{Arc, Mutex};

use brb_api::{AuditEntry, Series, ServerInfo, SetStateRequest, Switch, SwitchState, WorkerCounts};
use brb_client::{Client, ClientError};
use brb_desktop::{DesktopError, Forwarded, Settings, ShortcutAction};
use serde::Serialize;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
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
                message: "no control plane is configured: set BRB_URL and BRB_TOKEN, or edit the settings file".into(),
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

struct AppState {
    client: Option<Client>,
    settings: Settings,
    /// The last state of each switch seen on the event stream (for notifications and tray).
    seen: Mutex<std::collections::HashMap<String, Switch>>,
    connection: Mutex<&'static str>,
    primary: Mutex<Option<String>>,
    environment: Mutex<String>,
    tray: Mutex<Option<Tray>>,
    /// The office button listener's status text, when it runs.
    button: Mutex<Option<String>>,
}

type S<'a> = State<'a, Arc<AppState>>;

fn client(s: &AppState) -> Result<&Client, UiError> {
    s.client
        .as_ref()
        .ok_or_else(|| DesktopError::NoProfile.into())
}

#[tauri::command]
async fn brb_info(state: S<'_>) -> Result<ServerInfo, UiError> {
    let info = client(&state)?.info().await?;
    *state.primary.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.primary_switch.clone());
    *state.environment.lock().unwrap_or_else(|e| e.into_inner()) = info.environment.name.clone();
    Ok(info)
}

#[tauri::command]
async fn brb_switches(state: S<'_>) -> Result<Vec<Switch>, UiError> {
    Ok(client(&state)?.switches().await?)
}

#[tauri::command]
async fn brb_set_state(
    state: S<'_>,
    name: String,
    req: SetStateRequest,
) -> Result<Switch, UiError> {
    Ok(client(&state)?.set_state(&name, &req).await?)
}

#[tauri::command]
async fn brb_audit(
    state: S<'_>,
    limit: u32,
    switch: Option<String>,
) -> Result<Vec<AuditEntry>, UiError> {
    Ok(client(&state)?
        .audit(switch.as_deref(), limit.clamp(1, 500), None)
        .await?
        .entries)
}

#[tauri::command]
async fn brb_workers(state: S<'_>, name: String) -> Result<WorkerCounts, UiError> {
    Ok(client(&state)?.workers(&name).await?)
}

#[tauri::command]
async fn brb_series(state: S<'_>, since: i64) -> Result<Vec<Series>, UiError> {
    Ok(client(&state)?.series(None, Some(since)).await?.series)
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
    Ok(client(&state)?.ramp_control(&name, &req).await?)
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
    let outcome = brb_desktop::quick_toggle(client(state)?, &primary).await?;
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
    let info = client(state)?.info().await?;
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
    if let Ok(img) = Image::from_bytes(bytes) {
        let _ = icon.set_icon(Some(img));
    }
    let _ = icon.set_tooltip(Some(format!("Big Red Button: {text}")));
    let _ = label.set_text(text);
    let _ = toggle.set_text(action);
    let _ = app;
}

fn show_main(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

fn on_forwarded(app: &AppHandle, state: &AppState, f: Forwarded) {
    match f {
        Forwarded::Status(s) => {
            *state.connection.lock().unwrap_or_else(|e| e.into_inner()) = s;
            let _ = app.emit("brb://status", s);
            if s == "lost" {
                update_tray(app, state, None);
            }
        }
        Forwarded::Event(event, data) => {
            if event == brb_api::events::SWITCH
                && let Ok(sw) = serde_json::from_str::<Switch>(&data)
            {
                let prev = state
                    .seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sw.name.clone(), sw.clone());
                let env = state
                    .environment
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if state.settings.notifications
                    && let Some((title, body)) = brb_desktop::notification(prev.as_ref(), &sw, &env)
                    && let Err(e) = app.notification().builder().title(title).body(body).show()
                {
                    tracing::warn!(error = %e, "OS notification not shown");
                }
                if sw.primary {
                    update_tray(app, state, Some(&sw));
                }
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

fn build_tray(app: &AppHandle, state: Arc<AppState>) -> tauri::Result<()> {
    let label = MenuItem::with_id(app, "state", "Connecting…", false, None::<&str>)?;
    let toggle = MenuItem::with_id(app, "toggle", "Pause workers", true, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let sep = PredefinedMenuItem::separator(app)?;
    let menu = Menu::with_items(app, &[&label, &sep, &toggle, &open, &quit])?;
    let st = Arc::clone(&state);
    let icon = TrayIconBuilder::with_id("brb")
        .icon(Image::from_bytes(ICON_UNKNOWN)?)
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
            _ => {}
        })
        .build(app)?;
    *state.tray.lock().unwrap_or_else(|e| e.into_inner()) = Some((icon, label, toggle));
    Ok(())
}

/// The same listener as `brb button`, inside the app (when `button_listener` is on): presses
/// are recorded with source `button`, and the device's status is shown in the window.
fn start_button_listener(app: AppHandle, state: Arc<AppState>, client: Client) {
    let (tx, mut rx) = tokio::sync::watch::channel(brb_button::DeviceStatus::Searching);
    let shown = Arc::clone(&state);
    tauri::async_runtime::spawn(async move {
        let primary = match primary_name(&state).await {
            Ok(p) => p,
            Err(_) => brb_api::PRIMARY_SWITCH.to_string(),
        };
        let cfg = brb_button::Config {
            switch: primary,
            device: match &state.settings.button_serial {
                Some(port) => brb_button::DeviceSpec::Serial { port: port.clone() },
                None => brb_button::DeviceSpec::Auto,
            },
            policy: brb_button::PolicyConfig::default(),
        };
        if let Err(e) = brb_button::run_with_status(client, cfg, std::future::pending(), tx).await {
            tracing::error!(error = %e, source = "button", "button listener stopped");
        }
    });
    tauri::async_runtime::spawn(async move {
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

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
    let path = std::env::var_os("BRB_DESKTOP_SETTINGS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(Settings::default_path);
    let settings = match Settings::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brb-desktop: {e}; using defaults");
            Settings::default()
        }
    }
    .with_env(|k| std::env::var(k).ok());
    let api_client = match settings.client() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("brb-desktop: {e}");
            None
        }
    };
    let state = Arc::new(AppState {
        client: api_client,
        settings: settings.clone(),
        seen: Mutex::default(),
        connection: Mutex::new("connecting"),
        primary: Mutex::new(None),
        environment: Mutex::new(String::new()),
        tray: Mutex::new(None),
        button: Mutex::new(None),
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
                    match shortcut_state.settings.shortcut_action {
                        ShortcutAction::Show => show_main(app),
                        ShortcutAction::Pause => {
                            let (app, st) = (app.clone(), Arc::clone(&shortcut_state));
                            tauri::async_runtime::spawn(async move {
                                let res = match (primary_name(&st).await, client(&st)) {
                                    (Ok(p), Ok(c)) => brb_desktop::shortcut_pause(c, &p).await.map_err(UiError::from),
                                    (Err(e), _) | (_, Err(e)) => Err(e),
                                };
                                match res {
                                    Ok(sw) => update_tray(&app, &st, Some(&sw)),
                                    Err(e) => tracing::error!(code = %e.code, error = %e.message, source = "desktop", "shortcut pause failed"),
                                }
                            });
                        }
                    }
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
            brb_button_status
        ])
        .on_window_event(|window, event| {
            // Closing the window keeps the app in the tray: the brake stays one click away.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .setup(move |app| {
            let handle = app.handle().clone();
            if let Err(e) = build_tray(&handle, Arc::clone(&state)) {
                tracing::warn!(error = %e, "no tray icon");
            }
            if let Some(sc) = &state.settings.shortcut
                && let Err(e) = app.global_shortcut().register(sc.as_str())
            {
                tracing::warn!(shortcut = %sc, error = %e, "global shortcut not registered");
            }
            {
                use tauri_plugin_autostart::ManagerExt as _;
                let auto = app.autolaunch();
                let res = if state.settings.start_at_login {
                    auto.enable()
                } else {
                    auto.disable()
                };
                if let Err(e) = res {
                    tracing::debug!(error = %e, "start at login not changed");
                }
            }
            if state.settings.button_listener
                && let Some(c) = state.client.clone()
            {
                start_button_listener(app.handle().clone(), Arc::clone(&state), c);
            }
            if let Some(c) = state.client.clone() {
                let st = Arc::clone(&state);
                tauri::async_runtime::spawn(async move {
                    let h = handle.clone();
                    brb_desktop::forward_events(c, move |f| on_forwarded(&h, &st, f)).await;
                });
            }
            Ok(())
        })
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("brb-desktop: {e}");
        std::process::exit(1);
    }
}
