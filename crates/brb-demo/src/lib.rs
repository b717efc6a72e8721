//! The demo workload that `brb server --demo` (and so `make run`) starts, so a new user sees
//! the whole story on one laptop: press the button and watch the database breathe.
//!
//! - **Producers** add jobs to a queue in bursts (a slow swell plus random spikes; `steady`,
//!   `brb server --demo --demo-steady`, keeps them at the average rate for reproducible runs).
//! - **Workers** take jobs through the real SDK: each one is a [`brb_client::Gate`] with its
//!   own event stream and reports over real HTTP, exactly as an external worker would. They
//!   are the only code path that touches the queue, so pausing the switch really stops work.
//! - **The database** is simulated: each job holds a connection for a latency that grows
//!   steeply once concurrency passes its capacity, so a full fleet drowns it and a ramped
//!   release does not.
//! - **Timeouts and retries** make the overload outlive its trigger (a metastable failure, the
//!   story the product comes from): a job whose query would take longer than `job_timeout`
//!   holds its connection that long, fails, and goes back to the queue to be retried. With the
//!   whole fleet on a backlog every job times out: nothing completes, the backlog only grows,
//!   and the database stays overloaded until someone pauses. Released gradually, the backlog
//!   drains at a concurrency the database can take, and full release finds it empty.
//!
//! Once a second the demo publishes `jobs_per_second`, `jobs_failed` (timed out, retried),
//! `queue_depth`, `db_load` (percent of capacity) and `db_latency_ms` through the metrics API.
//! It lives in its own crate because it is a client of the control plane, not part of it.
//! [`model`] is the same database as a deterministic fluid model, for tests and the README's
//! curves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use brb_api::{Sample, SampleKind};
use brb_client::{Client, Gate, GateConfig};
use tokio::sync::watch;

pub mod model;

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub url: String,
    pub token: String,
    pub switch: String,
    /// Worker gates (each with its own connection).
    pub workers: usize,
    /// Concurrent jobs the simulated database takes at 100% load.
    pub db_capacity: f64,
    /// Job latency on an idle database.
    pub base_latency: Duration,
    /// Average jobs produced per second.
    pub arrival_rate: f64,
    /// A query slower than this fails after holding its connection this long, and its job
    /// goes back to the queue (the producer retries it).
    pub job_timeout: Duration,
    /// Arrivals at the average rate (with their jitter): no slow swell, no random bursts. For
    /// runs that must be reproducible (`brb server --demo --demo-steady`, the end-to-end tests
    /// of a release): the swell's phase depends on when the demo started and a burst lands
    /// anywhere, and either changes what a step of a release sees.
    pub steady: bool,
}

impl DemoConfig {
    pub fn new(url: &str, token: &str, switch: &str) -> Self {
        DemoConfig {
            url: url.to_string(),
            token: token.to_string(),
            switch: switch.to_string(),
            workers: 40,
            db_capacity: 24.0,
            base_latency: Duration::from_millis(25),
            arrival_rate: 220.0,
            // Tips only at 38 or more queries at once (93 ms with all 40): a burst of 2.5× the
            // average rate is served at about 30, the whole fleet on a backlog is not.
            job_timeout: Duration::from_millis(80),
            steady: false,
        }
    }
}

/// Shared counters of the simulation.
#[derive(Default)]
pub struct Sim {
    pub queue: AtomicU64,
    pub active: AtomicUsize,
    pub done: AtomicU64,
    /// Jobs that timed out and were queued again.
    pub failed: AtomicU64,
    /// Workers whose gate has answered once: the producer waits for the fleet, since a backlog
    /// built while the gates connect would meet the whole fleet at once and tip the database.
    ready: AtomicUsize,
    /// Sum of job latencies in µs since the last publish, and how many.
    lat_sum_us: AtomicU64,
    lat_n: AtomicU64,
}

impl Sim {
    fn take_job(&self) -> bool {
        self.queue
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_sub(1))
            .is_ok()
    }

    /// Latency of a job started now: flat up to half of capacity, then climbing steeply, so
    /// that past capacity more concurrency buys less throughput (about 650 jobs/s at best,
    /// 430 with all 40 workers piling in).
    pub fn latency(&self, cfg: &DemoConfig) -> Duration {
        let active = self.active.load(Ordering::Acquire) as f64;
        cfg.base_latency
            .mul_f64(model::latency_factor(active / cfg.db_capacity))
    }
}

/// Runs until `shutdown` turns true. Returns the simulation's counters for inspection.
pub async fn run(cfg: DemoConfig, mut shutdown: watch::Receiver<bool>) -> Arc<Sim> {
    let sim = Arc::new(Sim::default());
    let client = match Client::new(&[cfg.url.as_str()], Some(cfg.token.clone())) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "demo cannot start");
            return sim;
        }
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(produce(cfg.clone(), Arc::clone(&sim))));
    for i in 0..cfg.workers {
        let mut gc = GateConfig::new(&[cfg.url.as_str()], Some(cfg.token.clone()), &cfg.switch);
        gc.worker_id = format!("demo-worker-{i:02}");
        // The demo publishes its own jobs_per_second; the SDK's per-gate samples would be
        // forty extra requests a second for the same information.
        gc.send_samples = false;
        gc.report_interval = Duration::from_secs(3);
        match Gate::start(gc) {
            Ok(gate) => tasks.push(tokio::spawn(work(cfg.clone(), gate, Arc::clone(&sim)))),
            Err(e) => tracing::error!(error = %e, "demo worker cannot start"),
        }
    }
    tasks.push(tokio::spawn(publish(cfg.clone(), client, Arc::clone(&sim))));
    tracing::info!(workers = cfg.workers, switch = %cfg.switch, "demo workload running");
    let _ = shutdown.wait_for(|s| *s).await;
    for t in tasks {
        t.abort();
    }
    sim
}

async fn produce(cfg: DemoConfig, sim: Arc<Sim>) {
    // Jobs arrive every 10 ms, not in 100 ms batches: a batch would be taken by that many idle
    // workers at the same instant, a spike of concurrency no real arrival process makes.
    let tick = Duration::from_millis(10);
    let waiting = tokio::time::Instant::now();
    while sim.ready.load(Ordering::Acquire) < cfg.workers
        && waiting.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = tokio::time::Instant::now();
    let mut last = start;
    let mut carry = 0.0;
    let mut burst_until = f64::NEG_INFINITY;
    loop {
        tokio::time::sleep(tick).await;
        let now = tokio::time::Instant::now();
        // Jobs for the time that really passed, not for the tick asked for: a busy machine
        // wakes this loop late, and counting ticks would lower the arrival rate with its load.
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let t = now.duration_since(start).as_secs_f64();
        let mut rate = cfg.arrival_rate;
        if !cfg.steady {
            // A slow swell (period ~2 min) between 60% and 140% of the average rate...
            rate *= 1.0 + 0.4 * (t / 20.0).sin();
            // ...with a rare burst of 2.5× traffic for five seconds (about one a minute).
            if t >= burst_until && rand::random::<f64>() < 0.02 * dt {
                burst_until = t + 5.0;
            }
            if t < burst_until {
                rate *= 2.5;
            }
        }
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        // Fractions of a job carry over to the next tick, so the average rate holds.
        carry += rate * dt * jitter;
        let n = carry.floor();
        carry -= n;
        sim.queue.fetch_add(n as u64, Ordering::AcqRel);
    }
}

async fn work(cfg: DemoConfig, gate: Gate, sim: Arc<Sim>) {
    let mut first = true;
    loop {
        let permit = gate.acquire().await;
        if std::mem::take(&mut first) {
            sim.ready.fetch_add(1, Ordering::AcqRel);
        }
        if !sim.take_job() {
            permit.abandon();
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        sim.active.fetch_add(1, Ordering::AcqRel);
        let lat = sim.latency(&cfg);
        if lat > cfg.job_timeout {
            // The query times out: the connection was held all along, the job is retried.
            tokio::time::sleep(cfg.job_timeout).await;
            sim.active.fetch_sub(1, Ordering::AcqRel);
            sim.failed.fetch_add(1, Ordering::AcqRel);
            sim.queue.fetch_add(1, Ordering::AcqRel);
            drop(permit);
            continue;
        }
        tokio::time::sleep(lat).await;
        sim.active.fetch_sub(1, Ordering::AcqRel);
        sim.done.fetch_add(1, Ordering::AcqRel);
        sim.lat_sum_us
            .fetch_add(lat.as_micros() as u64, Ordering::Relaxed);
        sim.lat_n.fetch_add(1, Ordering::Relaxed);
        drop(permit);
    }
}

async fn publish(cfg: DemoConfig, client: Client, sim: Arc<Sim>) {
    let mut done_sent = sim.done.load(Ordering::Acquire);
    let mut failed_sent = sim.failed.load(Ordering::Acquire);
    let mut load_sum = 0.0;
    let mut load_n = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        load_sum += sim.active.load(Ordering::Acquire) as f64 / cfg.db_capacity * 100.0;
        load_n += 1;
        if load_n < 10 {
            continue;
        }
        let done = sim.done.load(Ordering::Acquire);
        let failed = sim.failed.load(Ordering::Acquire);
        let lat_n = sim.lat_n.swap(0, Ordering::AcqRel);
        let lat_sum = sim.lat_sum_us.swap(0, Ordering::AcqRel);
        let mut samples = vec![
            gauge("queue_depth", sim.queue.load(Ordering::Acquire) as f64),
            gauge(
                "db_load",
                (load_sum / f64::from(load_n) * 10.0).round() / 10.0,
            ),
            Sample {
                name: "jobs_per_second".into(),
                value: (done - done_sent) as f64,
                kind: SampleKind::Counter,
                labels: Default::default(),
                ts: None,
            },
            Sample {
                name: "jobs_failed".into(),
                value: (failed - failed_sent) as f64,
                kind: SampleKind::Counter,
                labels: Default::default(),
                ts: None,
            },
        ];
        if lat_n > 0 {
            samples.push(gauge(
                "db_latency_ms",
                (lat_sum as f64 / lat_n as f64 / 100.0).round() / 10.0,
            ));
        }
        load_sum = 0.0;
        load_n = 0;
        match client.push_samples(samples).await {
            Ok(_) => (done_sent, failed_sent) = (done, failed),
            Err(e) => tracing::warn!(error = %e, "demo could not publish samples"),
        }
    }
}

fn gauge(name: &str, value: f64) -> Sample {
    Sample {
        name: name.into(),
        value,
        kind: SampleKind::Gauge,
        labels: Default::default(),
        ts: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_climbs_past_half_capacity() {
        let cfg = DemoConfig::new("http://x", "t", "workers");
        let sim = Sim::default();
        let idle = sim.latency(&cfg);
        sim.active.store(12, Ordering::Release);
        assert_eq!(sim.latency(&cfg), idle, "flat up to half capacity");
        sim.active.store(40, Ordering::Release);
        assert!(sim.latency(&cfg) > idle * 3, "drowning past capacity");
    }

    #[test]
    fn queue_never_goes_negative() {
        let sim = Sim::default();
        assert!(!sim.take_job());
        sim.queue.store(1, Ordering::Release);
        assert!(sim.take_job());
        assert!(!sim.take_job());
    }
}
