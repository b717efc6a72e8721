//! The demo's queue and database as a deterministic fluid model: the same latency curve, the
//! same timeout and retry, the same fleet, stepped in tenths of a second with no clock and no
//! randomness (arrivals at their average rate). It runs an hour of demo in milliseconds, so
//! the tests can prove the three outcomes of a release (at once: relapse; guarded: recovers;
//! too fast: the guard re-pauses) and print the curves (`tests/relapse.rs`).
//!
//! Concurrency follows the SDK's duty cycle: at admitted fraction `f` each of the `workers`
//! slots works `f` of the time, so at most `workers × f` queries run at once, fewer when the
//! queue has less work than that.

use crate::DemoConfig;

/// How much slower a query is at `load` (concurrent queries / capacity): flat up to half of
/// capacity, then climbing steeply.
pub fn latency_factor(load: f64) -> f64 {
    1.0 + 2.0 * (load - 0.5).max(0.0).powi(2)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub workers: f64,
    pub db_capacity: f64,
    pub base_latency_secs: f64,
    pub job_timeout_secs: f64,
    pub arrival_rate: f64,
}

impl From<&DemoConfig> for ModelConfig {
    fn from(c: &DemoConfig) -> Self {
        ModelConfig {
            workers: c.workers as f64,
            db_capacity: c.db_capacity,
            base_latency_secs: c.base_latency.as_secs_f64(),
            job_timeout_secs: c.job_timeout.as_secs_f64(),
            arrival_rate: c.arrival_rate,
        }
    }
}

/// One second of the model, as the demo publishes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    pub admitted: f64,
    pub queue_depth: f64,
    /// Percent of capacity, averaged over the second.
    pub db_load: f64,
    pub jobs_per_second: f64,
    /// Queries that timed out (their jobs went back to the queue).
    pub jobs_failed: f64,
    pub db_latency_ms: f64,
}

pub struct Model {
    cfg: ModelConfig,
    queue: f64,
}

const STEPS_PER_SEC: u32 = 10;

impl Model {
    pub fn new(cfg: ModelConfig) -> Model {
        Model { cfg, queue: 0.0 }
    }

    /// Advances one second with `admitted` of the fleet working (0: paused).
    pub fn second(&mut self, admitted: f64) -> Second {
        let c = &self.cfg;
        let dt = 1.0 / f64::from(STEPS_PER_SEC);
        let mut out = Second {
            admitted,
            queue_depth: 0.0,
            db_load: 0.0,
            jobs_per_second: 0.0,
            jobs_failed: 0.0,
            db_latency_ms: 0.0,
        };
        for _ in 0..STEPS_PER_SEC {
            self.queue += c.arrival_rate * dt;
            let slots = c.workers * admitted.clamp(0.0, 1.0);
            // The queue's work spread over the step, at the idle latency.
            let active = slots.min(self.queue * c.base_latency_secs / dt);
            let latency = c.base_latency_secs * latency_factor(active / c.db_capacity);
            if latency > c.job_timeout_secs {
                // Every query times out; its job is retried, so the queue keeps it.
                out.jobs_failed += active / c.job_timeout_secs * dt;
            } else if active > 0.0 {
                let done = (active / latency * dt).min(self.queue);
                self.queue -= done;
                out.jobs_per_second += done;
            }
            out.db_load += active / c.db_capacity * 100.0 / f64::from(STEPS_PER_SEC);
            out.db_latency_ms = out
                .db_latency_ms
                .max(latency.min(c.job_timeout_secs) * 1000.0);
        }
        out.queue_depth = self.queue;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::new(ModelConfig::from(&DemoConfig::new("http://x", "t", "w")))
    }

    #[test]
    fn a_light_load_is_served_as_it_comes() {
        let mut m = model();
        let s = (0..30).map(|_| m.second(1.0)).last().unwrap();
        assert!(s.queue_depth < 25.0, "{s:?}");
        assert!((s.jobs_per_second - 220.0).abs() < 1.0, "{s:?}");
        assert!(s.db_load < 30.0 && s.jobs_failed == 0.0, "{s:?}");
    }

    #[test]
    fn the_whole_fleet_on_a_backlog_times_out_and_never_recovers() {
        let mut m = model();
        for _ in 0..60 {
            m.second(0.0);
        }
        let backlog = m.queue;
        let last = (0..600).map(|_| m.second(1.0)).last().unwrap();
        assert_eq!(last.jobs_per_second, 0.0, "{last:?}");
        assert!(last.db_load > 160.0 && last.jobs_failed > 400.0, "{last:?}");
        assert!(last.queue_depth > backlog + 600.0 * 219.0, "{last:?}");
    }
}
