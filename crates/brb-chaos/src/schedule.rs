//! The fault schedule: drawn entirely up front from the seed (ChaCha8), so that the same seed
//! and duration give the same faults at the same offsets. Client timing is real time and is not
//! reproducible; the schedule is.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// What the cluster is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Three replicas on one PostgreSQL.
    Pg,
    /// One server on SQLite, its data dir on a small disk of its own.
    Sqlite,
}

/// One fault. Replicas are numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9`, then a restart after the fault's duration.
    Kill { replica: u8 },
    /// SIGSTOP, SIGCONT after the duration.
    Stop { replica: u8 },
    /// SIGSTOP every PostgreSQL process.
    StopPg,
    /// Drop the traffic between a replica and PostgreSQL.
    PartitionPg { replica: u8 },
    /// Drop the traffic between the clients and a replica.
    PartitionClients { replica: u8 },
    /// `pg_ctl stop -m immediate`, then start again after the duration.
    PgImmediate,
    /// Move a replica's wall clock by `secs` (libfaketime); the monotonic clock is left alone.
    Skew { replica: u8, secs: i32 },
    /// Fill the server's disk (SQLite mode).
    DiskFull,
}

impl Fault {
    /// What the fault acts on: two faults on one target never overlap.
    pub fn target(&self) -> Target {
        match *self {
            Fault::Kill { replica }
            | Fault::Stop { replica }
            | Fault::PartitionPg { replica }
            | Fault::PartitionClients { replica }
            | Fault::Skew { replica, .. } => Target::Replica(replica),
            Fault::StopPg | Fault::PgImmediate => Target::Database,
            Fault::DiskFull => Target::Disk,
        }
    }

    /// A short name for the summary line.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kills",
            Fault::Stop { .. } => "pauses",
            Fault::StopPg => "pg-pauses",
            Fault::PartitionPg { .. } => "pg-partitions",
            Fault::PartitionClients { .. } => "client-partitions",
            Fault::PgImmediate => "pg-immediate",
            Fault::Skew { .. } => "skews",
            Fault::DiskFull => "disk-full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Replica(u8),
    Database,
    Disk,
}

/// A fault at `at_ms` from the start, healed `dur_ms` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub id: u32,
    pub at_ms: u64,
    pub dur_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// The last seconds of a run inject nothing, so that everything heals before the checks.
pub const HEAL_MS: u64 = 10_000;

struct Draw(ChaCha8Rng);

impl Draw {
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.0.next_u64() % (hi - lo + 1)
    }
}

/// The faults for a run of `secs` seconds: three lanes, each a fault then a gap of 0.5–3 s; at
/// most three faults at once and never two on one target; nothing starts in the last
/// [`HEAL_MS`], and everything has healed by then.
pub fn generate(seed: u64, secs: u64, mode: Mode, replicas: u8) -> Vec<FaultEvent> {
    let mut d = Draw(ChaCha8Rng::seed_from_u64(seed));
    let end = (secs * 1000).saturating_sub(HEAL_MS);
    let mut lanes = [d.range(500, 2000), d.range(500, 2000), d.range(500, 2000)];
    let mut out: Vec<FaultEvent> = Vec::new();
    loop {
        let lane = (0..lanes.len()).min_by_key(|&i| (lanes[i], i)).unwrap_or(0);
        let at = lanes[lane];
        if at >= end {
            break;
        }
        let fault = pick(&mut d, mode, replicas);
        let dur = match fault {
            Fault::Kill { .. } => d.range(0, 3000),
            Fault::PgImmediate => d.range(0, 5000),
            // Mostly short pauses of the database: a long one stalls every write.
            Fault::StopPg => d.range(1000, 10_000),
            Fault::Skew { .. } => d.range(5000, 20_000),
            Fault::DiskFull => d.range(2000, 20_000),
            // 1–20 s, mostly short, so that a run sees many faults.
            _ if d.range(0, 9) < 7 => d.range(1000, 5000),
            _ => d.range(5000, 20_000),
        };
        let dur = dur.min(end.saturating_sub(at));
        let busy = out.iter().any(|e| {
            e.fault.target() == fault.target()
                && e.at_ms < at + dur + 1
                && at < e.at_ms + e.dur_ms + 1
        });
        if !busy {
            out.push(FaultEvent {
                id: out.len() as u32,
                at_ms: at,
                dur_ms: dur,
                fault,
            });
            lanes[lane] = at + dur + d.range(500, 3000);
        } else {
            // The target is taken: try again shortly.
            lanes[lane] = at + d.range(100, 500);
        }
    }
    out.sort_by_key(|e| (e.at_ms, e.id));
    for (i, e) in out.iter_mut().enumerate() {
        e.id = i as u32;
    }
    out
}

/// How the harness's own TCP proxy (its fallback where no network namespace can be made) cuts
/// a link for a partition fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cut", rename_all = "snake_case")]
pub enum ProxyCut {
    /// Stop forwarding and hold the connections: the peers hear nothing (as with dropped
    /// packets), and what they sent arrives after the heal.
    Blackhole,
    /// Reset the open connections and every new one at once.
    Refuse,
    /// Forward each chunk `ms` late.
    Delay { ms: u64 },
}

/// The cut for fault `id` of a run with `seed`: drawn from a stream of its own, so that a seed's
/// schedule is the same whichever network the run has.
pub fn proxy_cut(seed: u64, id: u32) -> ProxyCut {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(id) + 1);
    let mut d = Draw(rng);
    match d.range(0, 3) {
        0 | 1 => ProxyCut::Blackhole,
        2 => ProxyCut::Refuse,
        _ => ProxyCut::Delay {
            ms: d.range(200, 2000),
        },
    }
}

fn pick(d: &mut Draw, mode: Mode, replicas: u8) -> Fault {
    let r = d.range(0, u64::from(replicas.max(1)) - 1) as u8;
    match mode {
        Mode::Sqlite => match d.range(0, 2) {
            0 => Fault::Kill { replica: 0 },
            1 => Fault::Stop { replica: 0 },
            _ => Fault::DiskFull,
        },
        Mode::Pg => match d.range(0, 99) {
            0..=17 => Fault::Kill { replica: r },
            18..=33 => Fault::Stop { replica: r },
            34..=49 => Fault::PartitionPg { replica: r },
            50..=64 => Fault::PartitionClients { replica: r },
            65..=72 => Fault::StopPg,
            73..=81 => Fault::PgImmediate,
            _ => Fault::Skew {
                replica: r,
                secs: if d.range(0, 1) == 0 { -300 } else { 300 },
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_byte_for_byte() {
        let a = serde_json::to_string(&generate(0x18, 600, Mode::Pg, 3)).expect("json");
        let b = serde_json::to_string(&generate(0x18, 600, Mode::Pg, 3)).expect("json");
        assert_eq!(a, b);
        let c = serde_json::to_string(&generate(0x19, 600, Mode::Pg, 3)).expect("json");
        assert_ne!(a, c);
    }

    #[test]
    fn ten_minutes_give_enough_faults_of_every_kind_and_heal_at_the_end() {
        let s = generate(7, 600, Mode::Pg, 3);
        assert!(s.len() >= 200, "{} faults", s.len());
        for name in [
            "kills",
            "pauses",
            "pg-partitions",
            "client-partitions",
            "pg-pauses",
            "pg-immediate",
            "skews",
        ] {
            assert!(s.iter().any(|e| e.fault.name() == name), "no {name}");
        }
        for e in &s {
            assert!(
                e.at_ms + e.dur_ms <= 590_000,
                "{e:?} ends in the heal period"
            );
        }
    }

    #[test]
    fn at_most_three_at_once_and_never_two_on_one_target() {
        for seed in 0..20 {
            let s = generate(seed, 300, Mode::Pg, 3);
            for a in &s {
                let at = a.at_ms;
                let active: Vec<_> = s
                    .iter()
                    .filter(|e| e.at_ms <= at && at <= e.at_ms + e.dur_ms)
                    .collect();
                assert!(active.len() <= 3, "seed {seed}: {active:?}");
                for b in &s {
                    if a.id != b.id && a.fault.target() == b.fault.target() {
                        assert!(
                            a.at_ms + a.dur_ms < b.at_ms || b.at_ms + b.dur_ms < a.at_ms,
                            "seed {seed}: {a:?} overlaps {b:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn proxy_cuts_are_reproducible_and_of_every_kind() {
        let a: Vec<ProxyCut> = (0..40).map(|id| proxy_cut(0x18, id)).collect();
        let b: Vec<ProxyCut> = (0..40).map(|id| proxy_cut(0x18, id)).collect();
        assert_eq!(a, b);
        assert!(a.contains(&ProxyCut::Blackhole));
        assert!(a.contains(&ProxyCut::Refuse));
        assert!(
            a.iter()
                .any(|c| matches!(c, ProxyCut::Delay { ms } if (200..=2000).contains(ms)))
        );
    }

    #[test]
    fn sqlite_mode_only_has_its_own_faults() {
        let s = generate(3, 120, Mode::Sqlite, 1);
        assert!(s.iter().any(|e| e.fault == Fault::DiskFull));
        assert!(s.iter().all(|e| matches!(
            e.fault,
            Fault::Kill { replica: 0 } | Fault::Stop { replica: 0 } | Fault::DiskFull
        )));
    }
}
