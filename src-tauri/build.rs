//! Declares the app's own commands to Tauri's ACL, so that each one needs an explicit
//! `allow-…` permission in `capabilities/`. Without this list every registered command would be
//! callable from the webview by default; with it, the capability file is the whole truth of what
//! the UI may do (tests/tauri_capabilities.rs checks the three lists agree).

/// Must match `tauri::generate_handler!` in src/main.rs and `capabilities/default.json`.
const COMMANDS: &[&str] = &[
    "brb_info",
    "brb_switches",
    "brb_set_state",
    "brb_audit",
    "brb_workers",
    "brb_series",
    "brb_connection",
    "brb_tray_toggle",
    "brb_button_status",
    "brb_ramp",
    "brb_profiles",
    "brb_test_connection",
    "brb_save_profile",
    "brb_use_profile",
    "brb_delete_profile",
    "brb_painted",
    "brb_request_resume",
    "brb_decide_resume",
    "brb_break_glass",
    "brb_drill",
    "brb_drill_report",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri build script failed");
}
