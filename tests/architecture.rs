//! The dependency rules of ARCHITECTURE.md, checked with `cargo tree` so they stay true.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The packages `cargo tree` lists for `krate`'s normal (non-dev, non-build) dependencies,
/// transitively, or only its own with `depth: Some(1)`.
fn tree(krate: &str, depth: Option<u32>) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let depth = depth.map(|d| d.to_string());
    let mut args = vec![
        "tree",
        "--offline",
        "-e",
        "normal",
        "--prefix",
        "none",
        "-f",
        "{p}",
    ];
    if let Some(d) = &depth {
        args.extend(["--depth", d]);
    }
    args.extend(["-p", krate]);
    let out = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every package `krate` depends on for normal use, transitively.
fn deps(krate: &str) -> Vec<String> {
    tree(krate, None)
}

fn assert_none(krate: &str, forbidden: &[&str]) {
    let d = deps(krate);
    assert!(
        d.iter().any(|n| n == krate),
        "cargo tree listed {krate} itself: {d:?}"
    );
    for f in forbidden {
        assert!(!d.iter().any(|n| n == f), "{krate} must not depend on {f}");
    }
}

#[test]
fn api_types_know_nothing_of_io_or_other_crates() {
    assert_none(
        "brb-api",
        &[
            "tokio",
            "reqwest",
            "axum",
            "hyper",
            "rusqlite",
            "brb-store",
            "brb-server",
            "brb-client",
        ],
    );
}

#[test]
fn chaos_checkers_know_nothing_of_io_or_product_crates() {
    assert_none(
        "brb-chaos",
        &[
            "tokio",
            "reqwest",
            "axum",
            "hyper",
            "rusqlite",
            "tokio-postgres",
            "brb-api",
            "brb-store",
            "brb-server",
            "brb-client",
        ],
    );
}

#[test]
fn resp_codec_knows_nothing_of_io_or_product_crates() {
    assert_none(
        "brb-resp",
        &["tokio", "brb-api", "brb-client", "brb-adapter", "brb-bench"],
    );
}

#[test]
fn store_knows_nothing_of_http() {
    assert_none(
        "brb-store",
        &["axum", "hyper", "reqwest", "brb-server", "brb-client"],
    );
}

#[test]
fn server_does_not_use_the_client_sdk() {
    assert_none("brb-server", &["brb-client", "brb-demo"]);
}

#[test]
fn client_sdk_has_no_server_or_database_inside() {
    assert_none(
        "brb-client",
        &[
            "brb-server",
            "brb-store",
            "axum",
            "rusqlite",
            "tokio-postgres",
        ],
    );
}

#[test]
fn test_cluster_harness_is_for_tests_and_the_benchmark_only() {
    // `brb` reaches it only through `brb-bench` (`brb bench --postgres`).
    for krate in ["brb-store", "brb-server", "brb-client"] {
        assert_none(krate, &["brb-pgtest", "tempfile"]);
    }
}

#[test]
fn benchmark_drives_the_binary_not_the_server() {
    // It measures what ships: the `brb` executable as a child process.
    assert_none(
        "brb-bench",
        &["brb-server", "brb-store", "axum", "rusqlite"],
    );
}

#[test]
fn pgtest_harness_stays_small() {
    // It starts processes; it must not pull a database driver or the product in.
    assert_none(
        "brb-pgtest",
        &["brb-store", "brb-server", "tokio", "tokio-postgres"],
    );
}

#[test]
fn desktop_logic_has_no_tauri_server_or_store() {
    assert_none(
        "brb-desktop",
        &["tauri", "brb-server", "brb-store", "rusqlite", "axum"],
    );
}

#[test]
fn only_the_app_crate_uses_tauri() {
    for krate in [
        "brb",
        "brb-server",
        "brb-client",
        "brb-api",
        "brb-store",
        "brb-console",
    ] {
        assert_none(krate, &["tauri", "wry", "webkit2gtk"]);
    }
}

#[test]
fn button_protocol_knows_nothing_of_io_or_other_crates() {
    assert_none(
        "brb-protocol",
        &[
            "tokio",
            "reqwest",
            "hidapi",
            "serialport",
            "serde",
            "brb-api",
            "brb-client",
            "brb-server",
            "brb-store",
            "brb-button",
        ],
    );
}

#[test]
fn button_listener_is_a_client_not_a_server() {
    assert_none(
        "brb-button",
        &["brb-server", "brb-store", "brb-demo", "axum", "rusqlite"],
    );
}

#[test]
fn broker_adapters_are_clients_not_servers() {
    assert_none(
        "brb-adapter",
        &[
            "brb-server",
            "brb-store",
            "brb-demo",
            "axum",
            "rusqlite",
            "tokio-postgres",
        ],
    );
}

/// Every package of the workspace, by name.
fn members() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn only_the_binary_and_the_end_to_end_tests_join_server_and_client() {
    let ms = members();
    assert!(ms.len() >= 14, "{ms:?}");
    for m in &ms {
        let d = deps(m);
        let both = d.iter().any(|n| n == "brb-server") && d.iter().any(|n| n == "brb-client");
        assert!(
            !both || m == "brb" || m == "brb-e2e",
            "{m} depends on both the server and the client SDK"
        );
    }
}

#[test]
fn no_crate_but_the_app_uses_tauri() {
    for m in members() {
        if m == "brb-desktop-app" {
            continue;
        }
        assert_none(&m, &["tauri", "wry", "webkit2gtk"]);
    }
}

/// The packages `krate` names in its own `[dependencies]`.
fn direct_deps(krate: &str) -> Vec<String> {
    tree(krate, Some(1))
}

#[test]
fn the_desktop_app_talks_to_the_control_plane_only_through_the_client_sdk() {
    for krate in ["brb-desktop-app", "brb-desktop"] {
        let direct = direct_deps(krate);
        assert!(
            direct.iter().any(|d| d == "brb-client"),
            "{krate}: {direct:?}"
        );
        for f in [
            "reqwest",
            "hyper",
            "hyper-util",
            "ureq",
            "brb-server",
            "brb-store",
        ] {
            assert!(
                !direct.iter().any(|d| d == f),
                "{krate} must reach the control plane through brb-client, not {f}"
            );
        }
    }
}

/// The part of a Rust file before its `#[cfg(test)]` module.
fn non_test_source(path: &str) -> String {
    let src = std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let code = match src.find("#[cfg(test)]") {
        Some(i) => &src[..i],
        None => &src[..],
    };
    // Comments may name what the code does not use.
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_stream_core_and_the_store_rules_do_no_io_and_read_no_clock() {
    // Their rules are tested with a fake clock and no sockets or database: that holds only
    // while they take the time and every answer from outside as arguments.
    for path in [
        "crates/brb-server/src/subscription.rs",
        "crates/brb-server/src/guard_core.rs",
        "crates/brb-store/src/rules.rs",
        "crates/brb-store/src/migrations.rs",
        "crates/brb-adapter/src/reconcile.rs",
        "crates/brb-chaos/src/history.rs",
        "crates/brb-chaos/src/register.rs",
        "crates/brb-chaos/src/schedule.rs",
        "crates/brb-chaos/src/violation.rs",
        "crates/brb-chaos/src/weak.rs",
        "crates/brb-chaos/src/wgl.rs",
        "crates/brb-resp/src/lib.rs",
    ] {
        let src = non_test_source(path);
        for f in [
            "tokio",
            "std::net",
            "std::fs",
            "std::io",
            "rusqlite",
            "tokio_postgres",
            "reqwest",
            "hyper",
            "axum",
            "Instant::now",
            "Utc::now",
            "SystemTime",
        ] {
            assert!(!src.contains(f), "{path} must not use {f}");
        }
    }
}

#[test]
fn ui_components_never_call_the_backend_directly() {
    // Only the two Backend implementations reach the network or the desktop shell, so the UI
    // cannot tell where it runs.
    let dir = format!("{}/../ui/src", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".ts") || name == "http-backend.ts" || name == "tauri-backend.ts" {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        // Comments may name what the code does not use.
        let src: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with('*'))
            .collect::<Vec<_>>()
            .join("\n");
        for f in [
            "fetch(",
            "invoke(",
            "new EventSource",
            "@tauri-apps/api",
            "XMLHttpRequest",
            "WebSocket",
        ] {
            assert!(
                !src.contains(f),
                "ui/src/{name} uses {f}: only the Backend implementations may"
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} UI files found in {dir}");
}
