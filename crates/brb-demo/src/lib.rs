//! The demo workload that `brb server --demo` (and so `make run`) starts, so a new user sees
//! the whole story on one laptop: press the button and watch the database breathe.
//!
//! - **Producers** add jobs to a queue in bursts (a slow swell plus random spikes; `steady`,
//!   `brb server --demo --demo-steady`, keeps them at the average rate for reproducible runs).
//! - **Workers** are 40 real SDK gates ([`brb_client::Gate`]), each with its own event stream
//!   and reports over real HTTP, exactly as an external worker's: they acknowledge pauses and
//!   show in the console's fleet. What the fleet works on is what the gates admit
//!   ([`Gate::admitted_fraction`]: 0 while paused, the ramp's step while ramping, the same
//!   fraction `Gate::acquire`'s duty cycle lets through), read every tenth of a second; it is
//!   the only input that lets work reach the database, so pausing the switch really stops work.
//! - **The database** is simulated ([`model`]): each query holds a connection for a latency
//!   that grows steeply once concurrency passes its capacity, so a full fleet drowns it and a
//!   ramped release does not.
//! - **Timeouts and retries** make the overload outlive its trigger (a metastable failure, the
//!   story the product comes from): a query that would take longer than `job_timeout` holds its
//!   connection that long, fails, and its job goes back to the queue to be retried. With the
//!   whole fleet on a backlog every query times out: nothing completes, the backlog only grows,
//!   and the database stays overloaded until someone pauses. Released gradually, the backlog
//!   drains at a concurrency the database can take, and full release finds it empty.
//!
//! The queue and the database run in simulated time, stepped a tenth of a second at a time in
//! step with the wall clock (a late wake-up runs the tenths it missed): a busy machine changes
//! how late the demo publishes, never what it publishes. (Jobs as tasks that sleep their
//! latency would tie the database to the machine: on a loaded one, late wake-ups hold
//! connections longer and fewer jobs get done, and the same release overloads the database on
//! one machine and not on another.)
//!
//! Once a simulated second the demo publishes `jobs_per_second`, `jobs_failed` (timed out,
//! retried), `queue_depth`, `db_load` (percent of capacity) and `db_latency_ms` (the average
//! query time) through the metrics API, each stamped with the second it describes. It lives in its
//! own crate because it is a client of the control plane, not part of it.

use std::time::Duration;

use brb_api::{Sample, SampleKind};
use brb_client::{Client, Gate, GateConfig, Permit};
use tokio::sync::{mpsc, watch};

use model::{Model, ModelConfig, STEPS_PER_SEC, Second};

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

/// How far the simulation may fall behind the wall clock before it skips ahead instead of
/// catching up (a process stopped for minutes): the series accept a minute ahead and an hour
/// back, and a demo that was stopped resumes from now.
const MAX_BEHIND: Duration = Duration::from_secs(60);

/// Runs until `shutdown` turns true.
pub async fn run(cfg: DemoConfig, mut shutdown: watch::Receiver<bool>) {
    let client = match Client::new(&[cfg.url.as_str()], Some(cfg.token.clone())) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "demo cannot start");
            return;
        }
    };
    let mut gates = Vec::new();
    for i in 0..cfg.workers {
        let mut gc = GateConfig::new(&[cfg.url.as_str()], Some(cfg.token.clone()), &cfg.switch);
        gc.worker_id = format!("demo-worker-{i:02}");
        // The demo publishes its own jobs_per_second; the SDK's per-gate samples would be
        // forty extra requests a second for the same information.
        gc.send_samples = false;
        gc.report_interval = Duration::from_secs(3);
        match Gate::start(gc) {
            Ok(gate) => gates.push(gate),
            Err(e) => tracing::error!(error = %e, "demo worker cannot start"),
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = [
        tokio::spawn(publish(client, rx)),
        tokio::spawn(simulate(cfg.clone(), gates, tx)),
    ];
    tracing::info!(workers = cfg.workers, switch = %cfg.switch, "demo workload running");
    let _ = shutdown.wait_for(|s| *s).await;
    for t in tasks {
        t.abort();
    }
}

/// A small deterministic generator (xorshift64*) for the arrivals' jitter and bursts: a
/// simulation is a function of its seed and of what the fleet admitted, tenth by tenth, so two
/// runs of it agree however late their ticks came.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The producers' arrivals, a tenth of a second at a time.
struct Arrivals {
    rate: f64,
    steady: bool,
    burst_until: f64,
    /// Fractions of a job carry over to the next tenth, so the average rate holds.
    carry: f64,
    rng: Rng,
}

impl Arrivals {
    fn new(cfg: &DemoConfig, seed: u64) -> Arrivals {
        Arrivals {
            rate: cfg.arrival_rate,
            steady: cfg.steady,
            burst_until: f64::NEG_INFINITY,
            carry: 0.0,
            rng: Rng::new(seed),
        }
    }

    /// Whole jobs arriving in the tenth that starts `t` simulated seconds in.
    fn tenth(&mut self, t: f64) -> f64 {
        let dt = 1.0 / f64::from(STEPS_PER_SEC);
        let mut rate = self.rate;
        if !self.steady {
            // A slow swell (period ~2 min) between 60% and 140% of the average rate...
            rate *= 1.0 + 0.4 * (t / 20.0).sin();
            // ...with a rare burst of 2.5× traffic for five seconds (about one a minute).
            if t >= self.burst_until && self.rng.next_f64() < 0.02 * dt {
                self.burst_until = t + 5.0;
            }
            if t < self.burst_until {
                rate *= 2.5;
            }
        }
        let jitter = 0.8 + 0.4 * self.rng.next_f64();
        self.carry += rate * dt * jitter;
        let n = self.carry.floor();
        self.carry -= n;
        n
    }
}

/// The simulation without a clock: the queue and the database, advanced to the tenths due.
struct Sim {
    model: Model,
    arrivals: Arrivals,
    /// Tenths run since the start.
    tenths: u64,
    /// The second being filled.
    second: Second,
    /// The unix second the simulation's first second is.
    first_sec: i64,
    /// Queries running in the last tenth run.
    active: f64,
}

impl Sim {
    fn new(cfg: &DemoConfig, seed: u64, first_sec: i64) -> Sim {
        Sim {
            model: Model::new(ModelConfig::from(cfg)),
            arrivals: Arrivals::new(cfg, seed),
            tenths: 0,
            second: Second::default(),
            first_sec,
            active: 0.0,
        }
    }

    /// Runs the tenths up to `due` (counted from the start) with `admitted` of the fleet
    /// working, and returns the seconds that finished, each with its unix second. A late
    /// caller runs more tenths at once, and gets what an early one would have.
    fn run_until(&mut self, due: u64, admitted: f64) -> Vec<(i64, Second)> {
        let per_sec = u64::from(STEPS_PER_SEC);
        let behind = due.saturating_sub(self.tenths);
        if behind > MAX_BEHIND.as_secs() * per_sec {
            // Skip whole seconds, so the second being filled stays aligned.
            let skip = (behind / per_sec) * per_sec;
            tracing::warn!(
                skipped_secs = skip / per_sec,
                "the demo fell behind the clock; its simulation skips ahead"
            );
            self.tenths += skip;
        }
        let mut done = Vec::new();
        while self.tenths < due {
            let t = self.tenths as f64 / f64::from(STEPS_PER_SEC);
            let arriving = self.arrivals.tenth(t);
            let tenth = self.model.tenth(admitted, arriving);
            self.active = tenth.active;
            self.second.add(&tenth, self.model.config());
            self.tenths += 1;
            if self.tenths.is_multiple_of(per_sec) {
                self.second.queue_depth = self.model.queue();
                let sec = self.first_sec + (self.tenths / per_sec) as i64 - 1;
                done.push((sec, std::mem::take(&mut self.second)));
            }
        }
        done
    }
}

/// Steps the simulation in step with the wall clock and hands each finished second to `out`.
async fn simulate(cfg: DemoConfig, gates: Vec<Gate>, out: mpsc::UnboundedSender<Vec<Sample>>) {
    // Wait for the fleet: a backlog built while the gates connect would meet the whole fleet
    // at once and tip the database.
    let waiting = tokio::time::Instant::now();
    while gates.iter().any(|g| g.version() == 0) && waiting.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Start on a whole second, so that each simulated second is one second of the series.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    tokio::time::sleep(
        Duration::from_secs(1).saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos()))),
    )
    .await;
    let start = tokio::time::Instant::now();
    let mut sim = Sim::new(&cfg, rand::random(), now.as_secs() as i64 + 1);
    let step = Duration::from_secs(1) / STEPS_PER_SEC;
    let workers = cfg.workers.max(1) as f64;
    let mut held: Vec<Option<Permit>> = gates.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let due = (start.elapsed().as_nanos() / step.as_nanos()) as u64;
        // What the fleet admits now, for every tenth this tick runs.
        let admitted = gates.iter().map(Gate::admitted_fraction).sum::<f64>() / workers;
        for (sec, second) in sim.run_until(due, admitted) {
            if out.send(samples(sec, &second)).is_err() {
                return;
            }
        }
        hold(&gates, &mut held, sim.active);
    }
}

/// The queries the simulated database runs, held as the fleet's jobs in flight: the first `n`
/// gates each hold a slot (a demo worker runs one job at a time). The console's "Jobs in
/// flight" and a pause's "draining" then come from the SDK's reports, as for any worker. A
/// slot is given back unused (`abandon`): the model counts the jobs done, and an abandoned
/// slot takes no rest from a ramp's duty cycle, which the model already applies.
fn hold(gates: &[Gate], held: &mut [Option<Permit>], active: f64) {
    let n = (active.round().max(0.0) as usize).min(gates.len());
    for (i, (gate, slot)) in gates.iter().zip(held.iter_mut()).enumerate() {
        if i < n {
            if slot.is_none() {
                *slot = gate.try_acquire();
            }
        } else if let Some(p) = slot.take() {
            p.abandon();
        }
    }
}

/// One simulated second as samples, stamped with the unix second it describes.
fn samples(sec: i64, s: &Second) -> Vec<Sample> {
    let one = |v: f64| (v * 10.0).round() / 10.0;
    let mut out = vec![
        sample("queue_depth", SampleKind::Gauge, s.queue_depth.round(), sec),
        sample("db_load", SampleKind::Gauge, one(s.db_load), sec),
        sample(
            "jobs_per_second",
            SampleKind::Counter,
            one(s.jobs_per_second),
            sec,
        ),
        sample("jobs_failed", SampleKind::Counter, one(s.jobs_failed), sec),
    ];
    // Latency is of queries: a second without any has none.
    if s.busy_tenths > 0 {
        out.push(sample(
            "db_latency_ms",
            SampleKind::Gauge,
            one(s.db_latency_ms),
            sec,
        ));
    }
    out
}

async fn publish(client: Client, mut rx: mpsc::UnboundedReceiver<Vec<Sample>>) {
    while let Some(samples) = rx.recv().await {
        if let Err(e) = client.push_samples(samples).await {
            tracing::warn!(error = %e, "demo could not publish samples");
        }
    }
}

fn sample(name: &str, kind: SampleKind, value: f64, sec: i64) -> Sample {
    Sample {
        name: name.into(),
        value,
        kind,
        labels: Default::default(),
        ts: Some(sec as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_keep_the_average_rate_in_whole_jobs() {
        let cfg = DemoConfig {
            steady: true,
            ..DemoConfig::new("http://x", "t", "w")
        };
        let mut a = Arrivals::new(&cfg, 7);
        let tenths: Vec<f64> = (0..600).map(|i| a.tenth(f64::from(i) / 10.0)).collect();
        assert!(tenths.iter().all(|n| n.fract() == 0.0), "whole jobs");
        let per_sec = tenths.iter().sum::<f64>() / 60.0;
        assert!((per_sec - 220.0).abs() < 10.0, "{per_sec} jobs/s");
    }

    /// What a loaded machine does to the demo: its ticks come late and irregularly. The
    /// seconds it publishes are the same as on an idle machine's punctual ticks.
    #[test]
    fn late_ticks_change_nothing_the_simulation_publishes() {
        let cfg = DemoConfig::new("http://x", "t", "w");
        // What the fleet admits over two minutes: running, paused, released at once.
        let admitted = |tenth: u64| match tenth {
            0..300 => 1.0,
            300..900 => 0.0,
            _ => 1.0,
        };
        let mut punctual = Sim::new(&cfg, 42, 1_800_000_000);
        let on_time: Vec<(i64, Second)> = (1..=1200)
            .flat_map(|due| punctual.run_until(due, admitted(due - 1)))
            .collect();
        // Late by up to 0.9 s at a time; the admitted fraction changes at whole seconds, where
        // a tick lands in both runs.
        let mut busy = Sim::new(&cfg, 42, 1_800_000_000);
        let mut late = Vec::new();
        let mut due = 0;
        for jump in [3u64, 7, 1, 9, 10, 2, 8].iter().cycle() {
            let next = (due + jump).min(1200);
            let next = if next / 10 != due / 10 {
                next / 10 * 10
            } else {
                next
            };
            let next = next.max(due + 1);
            late.extend(busy.run_until(next, admitted(due)));
            due = next;
            if due == 1200 {
                break;
            }
        }
        assert_eq!(on_time.len(), 120);
        assert_eq!(late, on_time);
        // And the story is there: recovering while paused, a relapse after.
        assert!(on_time[60].1.db_load < 5.0, "{:?}", on_time[60]);
        assert!(on_time[119].1.db_load > 160.0, "{:?}", on_time[119]);
    }

    #[test]
    fn a_second_is_stamped_with_the_second_it_describes() {
        let s = Second {
            admitted: 1.0,
            queue_depth: 12.4,
            db_load: 166.66,
            jobs_per_second: 0.0,
            jobs_failed: 500.0,
            db_latency_ms: 80.0,
            busy_tenths: 10,
        };
        let out = samples(1_800_000_000, &s);
        assert!(out.iter().all(|x| x.ts == Some(1_800_000_000.0)));
        let v = |n: &str| out.iter().find(|x| x.name == n).map(|x| x.value);
        assert_eq!(v("db_load"), Some(166.7));
        assert_eq!(v("queue_depth"), Some(12.0));
        let idle = samples(1, &Second::default());
        assert_eq!(idle.iter().find(|x| x.name == "db_latency_ms"), None);
    }
}
