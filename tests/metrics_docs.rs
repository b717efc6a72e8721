//! The README's metrics section against the real thing: every series its table names is on a
//! real scrape of `brb server`, the scrape passes `promtool check metrics`, and the example
//! alert rules fire (and only fire) when they should, evaluated by `promtool test rules`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use brb_e2e::ServerProc;
use serde_json::json;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// The text between `start` and `end` in the README.
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let i = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} in README.md"));
    let j = i + text[i..]
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} after {start:?} in README.md"));
    &text[i..j]
}

fn promtool() -> &'static str {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is needed (Debian package prometheus; make test installs it)"
    );
    "promtool"
}

#[tokio::test]
async fn every_documented_series_is_scraped_and_the_page_is_valid() {
    let readme = readme();
    let table = section(
        &readme,
        "### Alerts from your Prometheus",
        "<!-- alerts:example -->",
    );
    let names: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `brb_"))
        .map(|l| &l[..l.find(['{', '`']).unwrap()])
        .collect();
    assert!(names.len() >= 10, "{names:?}");

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/workers/report", server.url))
        .bearer_auth(&admin)
        .json(
            &json!({"worker_id": "w1", "switch": "workers", "observed_version": 1,
            "status": "running", "in_flight": 0, "processed_total": 0}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in &names {
        assert!(
            page.contains(&format!("# TYPE brb_{name} ")),
            "brb_{name} is in the README but not on /metrics:\n{page}"
        );
    }
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &page).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} check metrics < '{}'",
            promtool(),
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Input series for two replicas (`instance` a and b), which report the same switch gauges.
const TESTS: &str = r#"
rule_files: [alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # workers: paused at unix time 0 (the test's clock starts there), never released.
      - {series: 'brb_switch_paused{switch="workers",instance="a"}', values: '1x120'}
      - {series: 'brb_switch_paused{switch="workers",instance="b"}', values: '1x120'}
      - {series: 'brb_switch_state_since_seconds{switch="workers",instance="a"}', values: '0x120'}
      - {series: 'brb_switch_state_since_seconds{switch="workers",instance="b"}', values: '0x120'}
      # kill-search: running, changed at minute 30.
      - {series: 'brb_switch_paused{switch="kill-search",instance="a"}', values: '0x120'}
      - {series: 'brb_switch_state_since_seconds{switch="kill-search",instance="a"}', values: '1800x120'}
      # workers: 3 live workers, 1 acknowledged, 5 stale (not counted as live).
      - {series: 'brb_switch_workers{switch="workers",status="running",instance="a"}', values: '2x120'}
      - {series: 'brb_switch_workers{switch="workers",status="paused",instance="a"}', values: '1x120'}
      - {series: 'brb_switch_workers{switch="workers",status="draining",instance="a"}', values: '0x120'}
      - {series: 'brb_switch_workers{switch="workers",status="stale",instance="a"}', values: '0x3 5x120'}
      - {series: 'brb_switch_workers_acknowledged{switch="workers",instance="a"}', values: '1x120'}
      # kill-search: every live worker acknowledged.
      - {series: 'brb_switch_workers{switch="kill-search",status="running",instance="a"}', values: '4x120'}
      - {series: 'brb_switch_workers{switch="kill-search",status="paused",instance="a"}', values: '0x120'}
      - {series: 'brb_switch_workers{switch="kill-search",status="draining",instance="a"}', values: '0x120'}
      - {series: 'brb_switch_workers{switch="kill-search",status="stale",instance="a"}', values: '0x120'}
      - {series: 'brb_switch_workers_acknowledged{switch="kill-search",instance="a"}', values: '4x120'}
    alert_rule_test:
      - {eval_time: 59m, alertname: BrakePulledForAnHour, exp_alerts: []}
      - eval_time: 61m
        alertname: BrakePulledForAnHour
        exp_alerts:
          - exp_labels: {severity: warning, switch: workers}
            exp_annotations: {summary: "workers has been paused for more than an hour"}
      - {eval_time: 1m, alertname: WorkersNotAcknowledging, exp_alerts: []}
      - eval_time: 3m
        alertname: WorkersNotAcknowledging
        exp_alerts:
          - exp_labels: {severity: critical, switch: workers}
            exp_annotations: {summary: "2 workers of workers have not acted on its last change"}
      - {eval_time: 6m, alertname: WorkersStale, exp_alerts: []}
      - eval_time: 10m
        alertname: WorkersStale
        exp_alerts:
          - exp_labels: {switch: workers}
            exp_annotations: {summary: "5 workers of workers stopped reporting"}
"#;

#[test]
fn the_example_alert_rules_fire_when_they_should() {
    let readme = readme();
    let block = section(&readme, "<!-- alerts:example -->", "<!-- /alerts -->");
    let rules = block
        .split_once("```yaml\n")
        .expect("a ```yaml block")
        .1
        .split_once("```")
        .unwrap()
        .0;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    std::fs::write(dir.path().join("tests.yml"), TESTS).unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules", "tests.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
