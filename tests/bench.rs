//! `brb bench` end to end at a tiny size: a real `brb server` child, two watcher processes,
//! a real `redis-server` baseline, the reconnect storm, the JSON and Markdown reports. The
//! figures at this size mean nothing; this proves the harness measures what it says.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use brb_e2e::brb_bin;
use serde_json::Value;

#[test]
fn bench_runs_end_to_end_and_reports_every_measure() {
    let redis = Command::new("redis-server").arg("--version").output();
    assert!(
        redis.is_ok_and(|o| o.status.success()),
        "redis-server is needed for the baseline: scripts/ensure-packages.sh bench (make test-deps)"
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let md = dir.path().join("bench.md");
    let out = Command::new(brb_bin())
        .args([
            "bench",
            "--watchers",
            "50",
            "--toggles",
            "3",
            "--ack-toggles",
            // More than the default change-rate burst: the bench must lift the server's limit.
            "40",
            "--read-conns",
            "4",
            "--read-secs",
            "0.5",
            // Two watcher processes even at this size, so the split is exercised.
            "--per-process",
            "30",
            "--pause-ms",
            "20",
            "--json",
        ])
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .env_remove("BRB_URL")
        .env_remove("BRB_TOKEN")
        .env_remove("BRB_DATABASE_URL")
        .env_remove("BRB_ADMIN_TOKEN")
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "brb bench failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("fan-out, 50 watchers"), "{stdout}");
    assert!(stdout.contains("targets:"), "{stdout}");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["ack"]["count"], 40, "{r:#}");
    assert!(r["ack"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(r["reads"]["requests"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["reads"]["errors"], 0, "{r:#}");
    let run = &r["runs"][0];
    assert_eq!(run["watchers"], 50);
    assert_eq!(run["processes"], 2);
    assert_eq!(run["failed"], 0, "{run:#}");
    assert_eq!(run["missing"], 0, "{run:#}");
    // Every watcher saw every toggle, each after the request was sent.
    assert_eq!(run["fanout"]["count"], 150, "{run:#}");
    let p50 = run["fanout"]["p50_ms"].as_f64().unwrap();
    let max = run["fanout"]["max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max && max < 10_000.0, "{run:#}");
    assert!(run["memory"]["rss_after_kib"].as_u64().unwrap() > 0);
    assert_eq!(run["storm"]["reconnected"], 50, "{run:#}");
    assert_eq!(run["storm"]["missing"], 0, "{run:#}");
    assert!(run["storm"]["all_back_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(run["redis"]["fanout"]["count"], 150, "{run:#}");
    assert_eq!(run["redis"]["missing"], 0, "{run:#}");
    assert!(run["ratio_p99"].as_f64().unwrap() > 0.0);

    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("| fan-out, 50 watchers |"), "{md}");
    assert!(md.contains("| target | wanted | measured |"), "{md}");
}
