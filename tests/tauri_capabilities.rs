//! The desktop app's webview gets only what the UI uses (issue: minimal Tauri capabilities).
//!
//! Three lists must agree: the commands registered in `src-tauri/src/main.rs`, the commands
//! declared to Tauri's ACL in `src-tauri/build.rs` (which makes each one need a permission), and
//! the `allow-…` permissions in `src-tauri/capabilities/`. Every granted command must be one the
//! UI calls (the tray toggle is the one documented exception), every event permission must match
//! a `listen` in the UI, and no plugin permission (filesystem, shell, HTTP, notification, shortcut,
//! autostart…) may be granted to the webview at all: those plugins are driven from Rust.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Identifiers shaped like the app's commands (`brb_…`) between `start` and the next `end`.
fn commands_between(text: &str, start: &str, end: &str) -> BTreeSet<String> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let rest = &text[from + start.len()..];
    let body = &rest[..rest.find(end).unwrap()];
    body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("brb_"))
        .map(str::to_string)
        .collect()
}

/// Every `"brb_…"` string literal in the UI's Tauri backend: the commands the UI invokes.
fn ui_commands() -> BTreeSet<String> {
    let ts = read("ui/src/tauri-backend.ts");
    ts.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("brb_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

fn capability_permissions() -> (BTreeSet<String>, Vec<serde_json::Value>) {
    let dir = root().join("src-tauri/capabilities");
    let mut perms = BTreeSet::new();
    let mut caps = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cap: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in cap["permissions"].as_array().unwrap() {
            // Object form ({identifier, allow}) would carry scopes; we use none.
            perms.insert(p.as_str().expect("permission without scope").to_string());
        }
        caps.push(cap);
    }
    (perms, caps)
}

#[test]
fn registered_declared_and_granted_commands_agree() {
    let main_rs = read("src-tauri/src/main.rs");
    let registered = commands_between(&main_rs, "generate_handler![", "]");
    let build_rs = read("src-tauri/build.rs");
    let declared = commands_between(&build_rs, "const COMMANDS", "];");
    let (perms, _) = capability_permissions();
    let granted: BTreeSet<String> = perms
        .iter()
        .filter_map(|p| p.strip_prefix("allow-"))
        .map(|p| p.replace('-', "_"))
        .collect();
    assert!(!registered.is_empty());
    assert_eq!(registered, declared, "main.rs handler vs build.rs COMMANDS");
    assert_eq!(
        declared, granted,
        "build.rs COMMANDS vs capability allow-… permissions"
    );
}

#[test]
fn every_granted_command_is_used_by_the_ui() {
    let (perms, _) = capability_permissions();
    let used = ui_commands();
    assert!(used.contains("brb_set_state"), "UI scan found {used:?}");
    for p in perms.iter().filter_map(|p| p.strip_prefix("allow-")) {
        let cmd = p.replace('-', "_");
        // The tray's action: callable from the window too, with no power beyond brb_set_state.
        if cmd == "brb_tray_toggle" {
            continue;
        }
        assert!(
            used.contains(&cmd),
            "{cmd} is granted but the UI never calls it"
        );
    }
}

#[test]
fn no_plugin_or_core_permission_beyond_event_listening() {
    let (perms, caps) = capability_permissions();
    let ui = read("ui/src/tauri-backend.ts");
    for p in &perms {
        if p.starts_with("allow-") {
            continue; // the app's own commands, checked above
        }
        assert!(
            p == "core:event:allow-listen" || p == "core:event:allow-unlisten",
            "unexpected permission {p}: plugins are driven from Rust, not the webview"
        );
    }
    assert!(
        ui.contains("listen<"),
        "event permissions granted but the UI never listens"
    );
    for cap in caps {
        assert_eq!(cap["windows"], serde_json::json!(["main"]));
        assert!(
            cap.get("remote").is_none(),
            "no remote origin may reach the IPC"
        );
        assert!(cap.get("webviews").is_none());
    }
}

#[test]
fn desktop_csp_is_strict() {
    let conf: serde_json::Value = serde_json::from_str(&read("src-tauri/tauri.conf.json")).unwrap();
    let security = &conf["app"]["security"];
    let csp = security["csp"]
        .as_str()
        .expect("tauri.conf.json sets a CSP");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        security
            .get("dangerousDisableAssetCspModification")
            .is_none()
    );
    assert!(
        conf["app"]
            .get("withGlobalTauri")
            .is_none_or(|v| v == false)
    );
}
