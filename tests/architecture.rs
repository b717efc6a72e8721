//! The dependency rules of ARCHITECTURE.md, checked with `cargo tree` so they stay true.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Every package `krate` depends on for normal (non-dev, non-build) use, transitively.
fn deps(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            "{p}",
            "-p",
            krate,
        ])
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
