//! The demo's queue and database as a deterministic fluid model: a latency curve, a timeout and
//! retry, a fleet, stepped in tenths of a second with no clock and no randomness of its own. The
//! running demo (`brb server --demo`) is this model stepped in step with the wall clock, its
//! arrivals from the demo's producers and its fleet's admitted fraction read from the 40 real
//! gates ([`crate::run`]); the tests step it as fast as they like, so an hour of demo runs in
//! milliseconds and proves the three outcomes of a release (at once: relapse; guarded:
//! recovers; too fast: the guard re-pauses) and prints the curves (`tests/relapse.rs`).
//!
//! Nothing in it depends on how fast the machine runs it: a query's latency, a timeout and the
//! queue's work are counted in simulated time, from what the fleet admits, never from how many
//! jobs a busy CPU managed to execute.
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
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Second {
    /// The fleet's admitted fraction, averaged over the second.
    pub admitted: f64,
    pub queue_depth: f64,
    /// Percent of capacity, averaged over the second.
    pub db_load: f64,
    pub jobs_per_second: f64,
    /// Queries that timed out (their jobs went back to the queue).
    pub jobs_failed: f64,
    /// The average query time over the tenths with queries running (a timed-out query counts
    /// as the timeout).
    pub db_latency_ms: f64,
    /// Tenths of the second with queries running: none, no latency to publish.
    pub busy_tenths: u32,
}

/// One tenth of a second of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tenth {
    pub admitted: f64,
    /// Queries running at once.
    pub active: f64,
    pub latency_secs: f64,
    pub done: f64,
    pub failed: f64,
}

impl Second {
    /// Adds one of its ten tenths (`cfg`: the model's, for capacity and timeout).
    pub fn add(&mut self, t: &Tenth, cfg: &ModelConfig) {
        let n = f64::from(STEPS_PER_SEC);
        self.admitted += t.admitted / n;
        self.db_load += t.active / cfg.db_capacity * 100.0 / n;
        self.jobs_per_second += t.done;
        self.jobs_failed += t.failed;
        if t.active > 0.0 {
            let ms = t.latency_secs.min(cfg.job_timeout_secs) * 1000.0;
            let n = f64::from(self.busy_tenths);
            self.db_latency_ms = (self.db_latency_ms * n + ms) / (n + 1.0);
            self.busy_tenths += 1;
        }
    }
}

pub struct Model {
    cfg: ModelConfig,
    queue: f64,
}

/// Tenths of a second per second: the model's step.
pub const STEPS_PER_SEC: u32 = 10;
const DT: f64 = 1.0 / STEPS_PER_SEC as f64;

impl Model {
    pub fn new(cfg: ModelConfig) -> Model {
        Model { cfg, queue: 0.0 }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Jobs waiting.
    pub fn queue(&self) -> f64 {
        self.queue
    }

    /// Advances a tenth of a second: `arrivals` jobs join the queue, then `admitted` of the
    /// fleet (0: paused) works on it.
    pub fn tenth(&mut self, admitted: f64, arrivals: f64) -> Tenth {
        let c = &self.cfg;
        self.queue += arrivals;
        let slots = c.workers * admitted.clamp(0.0, 1.0);
        // The queue's work spread over the step, at the idle latency.
        let active = slots.min(self.queue * c.base_latency_secs / DT);
        let latency = c.base_latency_secs * latency_factor(active / c.db_capacity);
        let mut t = Tenth {
            admitted,
            active,
            latency_secs: latency,
            done: 0.0,
            failed: 0.0,
        };
        if latency > c.job_timeout_secs {
            // Every query times out; its job is retried, so the queue keeps it.
            t.failed = active / c.job_timeout_secs * DT;
        } else if active > 0.0 {
            t.done = (active / latency * DT).min(self.queue);
            self.queue -= t.done;
        }
        t
    }

    /// Advances one second with `admitted` of the fleet working (0: paused) and arrivals at
    /// exactly the average rate.
    pub fn second(&mut self, admitted: f64) -> Second {
        let mut out = Second::default();
        for _ in 0..STEPS_PER_SEC {
            let t = self.tenth(admitted, self.cfg.arrival_rate * DT);
            out.add(&t, &self.cfg);
        }
        // The exact fraction, not a sum of tenths: the curves and tests compare it.
        out.admitted = admitted;
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
