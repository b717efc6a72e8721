//! Prometheus text exposition, hand-rolled: a few counters, gauges and one latency histogram do
//! not justify a metrics framework, and atomics keep the request path free of locks except for
//! the per-route histogram map (read-mostly).
//!
//! `/metrics` answers without a token, so nothing a client sends may become a label value: the
//! request histogram is labelled by the method (the standard ones by name, any other as
//! `other`), the matched route *template* (`unmatched` when no route matched) and the status
//! the server chose. Its size is then fixed by the router, whatever arrives.
//!
//! The per-switch gauges (`brb_switch_*`) are computed at scrape time from the hub's image and
//! the workers' reports ([`render`]), so they are never older than the scrape and cost nothing
//! between scrapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_api::{Switch, SwitchState, WorkerCounts};
use chrono::{DateTime, Utc};

/// The methods counted under their own name; any other is counted as `other`.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// The route label of a request no route matched (unknown paths, probes, junk).
pub const UNMATCHED: &str = "unmatched";

fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    toggles: Mutex<BTreeMap<(String, &'static str), u64>>,
    sse_watchers: AtomicI64,
    long_polls: AtomicI64,
    auth_failures: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, String, u16), Histogram>>,
}

/// Decrements its gauge when the watcher goes away, however it goes.
pub struct GaugeGuard {
    metrics: Arc<Metrics>,
    sse: bool,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        let g = if self.sse {
            &self.metrics.sse_watchers
        } else {
            &self.metrics.long_polls
        };
        g.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn toggle(&self, switch: &str, to: brb_api::SwitchState) {
        let mut m = self.toggles.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((switch.to_string(), to.as_str())).or_default() += 1;
    }

    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sse_watcher(self: &Arc<Self>) -> GaugeGuard {
        self.sse_watchers.fetch_add(1, Ordering::Relaxed);
        GaugeGuard {
            metrics: Arc::clone(self),
            sse: true,
        }
    }

    pub fn long_poll(self: &Arc<Self>) -> GaugeGuard {
        self.long_polls.fetch_add(1, Ordering::Relaxed);
        GaugeGuard {
            metrics: Arc::clone(self),
            sse: false,
        }
    }

    pub fn sse_watchers(&self) -> i64 {
        self.sse_watchers.load(Ordering::Relaxed)
    }

    /// Counts one answered request. `route` is the matched route's template (`None`: no route
    /// matched); `method` is whatever the client sent, reduced to a fixed set here.
    pub fn observe_request(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let key = (
            method_label(method),
            route.unwrap_or(UNMATCHED).to_string(),
            status,
        );
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let h = m.entry(key).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP brb_toggles_total State changes committed, by switch and new state.\n",
        );
        out.push_str("# TYPE brb_toggles_total counter\n");
        for ((switch, to), n) in self
            .toggles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "brb_toggles_total{{switch=\"{}\",to=\"{to}\"}} {n}",
                escape(switch)
            );
        }
        out.push_str("# HELP brb_watchers Connected watchers, by kind.\n");
        out.push_str("# TYPE brb_watchers gauge\n");
        let _ = writeln!(
            out,
            "brb_watchers{{kind=\"sse\"}} {}",
            self.sse_watchers.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "brb_watchers{{kind=\"long_poll\"}} {}",
            self.long_polls.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP brb_auth_failures_total Requests refused for a missing or bad token.\n",
        );
        out.push_str("# TYPE brb_auth_failures_total counter\n");
        let _ = writeln!(
            out,
            "brb_auth_failures_total {}",
            self.auth_failures.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP brb_http_request_duration_seconds Time to the response head, by route.\n",
        );
        out.push_str("# TYPE brb_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "brb_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "brb_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "brb_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "brb_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out
    }
}

/// The whole exposition: the process's counters, then every switch's gauges, computed now.
pub fn render(state: &crate::AppState) -> String {
    let mut out = state.metrics().render();
    let rows: Vec<(std::sync::Arc<Switch>, WorkerCounts)> = state
        .hub()
        .list()
        .into_iter()
        .map(|s| {
            let c = state.workers().counts(&s, false);
            (s, c)
        })
        .collect();
    render_switches(&mut out, &rows, Utc::now());
    render_runtime(&mut out);
    out
}

/// The async runtime's own gauges: a task count that only grows is a leak (the soak,
/// `brb bench --soak-mins`, checks its slope).
fn render_runtime(out: &mut String) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let m = rt.metrics();
    let _ = writeln!(
        out,
        "# HELP brb_runtime_alive_tasks Tasks alive in the server's async runtime.\n\
         # TYPE brb_runtime_alive_tasks gauge\nbrb_runtime_alive_tasks {}",
        m.num_alive_tasks()
    );
    let _ = writeln!(
        out,
        "# HELP brb_runtime_global_queue_depth Tasks waiting in the runtime's global queue.\n\
         # TYPE brb_runtime_global_queue_depth gauge\nbrb_runtime_global_queue_depth {}",
        m.global_queue_depth()
    );
}

/// Per-switch gauges, for alerts such as "paused for more than an hour" or "workers not
/// acknowledging".
fn render_switches(
    out: &mut String,
    rows: &[(std::sync::Arc<Switch>, WorkerCounts)],
    now: DateTime<Utc>,
) {
    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 value: &dyn Fn(&Switch, &WorkerCounts) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (s, c) in rows {
            let _ = writeln!(
                out,
                "{name}{{switch=\"{}\"}} {}",
                escape(&s.name),
                value(s, c)
            );
        }
    };
    gauge(
        out,
        "brb_switch_paused",
        "1 while the switch is paused, else 0.",
        &|s, _| f64::from(u8::from(s.state == SwitchState::Paused)),
    );
    gauge(
        out,
        "brb_switch_version",
        "The switch's version: one more with every change.",
        &|s, _| s.version as f64,
    );
    gauge(
        out,
        "brb_switch_state_since_seconds",
        "Unix time of the switch's last change of state (or of its creation).",
        &|s, _| s.changed_at.timestamp_millis() as f64 / 1000.0,
    );
    gauge(
        out,
        "brb_switch_ramp_fraction",
        "Fraction of normal work the switch admits now: 0 paused, 1 running, between while a release ramps up.",
        &|s, _| s.admitted_fraction(now),
    );
    gauge(
        out,
        "brb_switch_workers_acknowledged",
        "Live (not stale) workers that have acted on the switch's current version.",
        &|_, c| f64::from(c.current.as_ref().map_or(0, |a| a.acknowledged)),
    );
    out.push_str("# HELP brb_switch_workers Workers reporting on the switch, by what they do (stale: silent too long).\n");
    out.push_str("# TYPE brb_switch_workers gauge\n");
    for (s, c) in rows {
        for (status, n) in [
            ("running", c.running),
            ("draining", c.draining),
            ("paused", c.paused),
            ("stale", c.stale),
        ] {
            let _ = writeln!(
                out,
                "brb_switch_workers{{switch=\"{}\",status=\"{status}\"}} {n}",
                escape(&s.name)
            );
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Arc::new(Metrics::default());
        m.toggle("workers", brb_api::SwitchState::Paused);
        m.toggle("workers", brb_api::SwitchState::Paused);
        let _g = m.sse_watcher();
        m.observe_request(
            "GET",
            Some("/api/v1/switches"),
            200,
            Duration::from_micros(800),
        );
        let text = m.render();
        assert!(text.contains("brb_toggles_total{switch=\"workers\",to=\"paused\"} 2"));
        assert!(text.contains("brb_watchers{kind=\"sse\"} 1"));
        assert!(text.contains(
            "brb_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/switches\",status=\"200\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "brb_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/switches\",status=\"200\",le=\"0.0005\"} 0"
        ));
        drop(_g);
        assert!(m.render().contains("brb_watchers{kind=\"sse\"} 0"));
    }

    #[tokio::test]
    async fn the_runtime_gauge_counts_the_tasks_alive() {
        let alive = || {
            let mut out = String::new();
            render_runtime(&mut out);
            out.lines()
                .find_map(|l| l.strip_prefix("brb_runtime_alive_tasks "))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap()
        };
        let before = alive();
        let (stop, stopped) = tokio::sync::watch::channel(());
        let parked: Vec<_> = (0..3)
            .map(|_| {
                let mut s = stopped.clone();
                tokio::spawn(async move {
                    let _ = s.changed().await;
                })
            })
            .collect();
        assert_eq!(alive(), before + 3);
        drop(stop);
        for t in parked {
            t.await.unwrap();
        }
        assert_eq!(alive(), before);
    }
}
