//! Prometheus text exposition, hand-rolled: a few counters, gauges and one latency histogram do
//! not justify a metrics framework, and atomics keep the request path free of locks except for
//! the per-route histogram map (read-mostly).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
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

    pub fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let h = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
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
        m.observe_request("GET", "/api/v1/switches", 200, Duration::from_micros(800));
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
}
