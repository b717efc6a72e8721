//! The Prometheus pull against a real Prometheus (Debian's `prometheus`) that scrapes the
//! control plane's own `/metrics`.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use brb_e2e::InProcess;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Prom(std::process::Child);

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_queries_become_series() {
    let bin = which("prometheus").expect(
        "the prometheus binary is needed (Debian package prometheus; make test installs it)",
    );
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    // The control plane first (Prometheus scrapes it), pulling from Prometheus.
    let s = InProcess::start(&dir.path().join("brb"), |c| {
        c.prometheus = Some(brb_server::config::PrometheusConfig {
            url: format!("http://127.0.0.1:{prom_port}"),
            interval_secs: 1,
            queries: vec![
                brb_server::config::PromQuery {
                    name: "prom_up".into(),
                    query: "up{job=\"brb\"}".into(),
                },
                brb_server::config::PromQuery {
                    name: "prom_bad".into(),
                    query: "this is not promql(".into(),
                },
            ],
        });
    })
    .await;
    let target = s.url.trim_start_matches("http://").to_string();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: brb\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Prom(
        Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let c = s.client();
    let mut got = None;
    for _ in 0..60 {
        let list = c.series(Some("prom_up"), None).await.unwrap();
        if let Some(series) = list.series.first()
            && !series.points.is_empty()
        {
            got = Some(series.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let series = got.unwrap_or_else(|| {
        panic!(
            "no prom_up series; prometheus log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        )
    });
    assert_eq!(series.labels.get("job").map(String::as_str), Some("brb"));
    assert!(series.points.iter().all(|p| p.1 == 1.0), "{series:?}");
    // The broken query recorded nothing and broke nothing.
    assert!(
        c.series(Some("prom_bad"), None)
            .await
            .unwrap()
            .series
            .is_empty()
    );
    s.stop().await;
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
