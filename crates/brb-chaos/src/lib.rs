//! Chaos-run histories and the checkers that judge them (`tests/chaos.rs` records, this crate
//! decides).
//!
//! - [`history`]: what a run records, and its JSONL form.
//! - [`register`]: writes and linearizable reads (probes) of each switch, checked as a
//!   versioned compare-and-set register with the audit as the order of effective writes.
//! - [`wgl`]: the general Wing-Gong/Lowe search over the same model, the fast checker's oracle.
//! - [`weak`]: the weaker model of hub reads, watchers, gates and notifications.
//! - [`schedule`]: the seeded fault schedule.
//!
//! Pure: no I/O and no clock (checked by `tests/architecture.rs`); times are passed in.

pub mod history;
pub mod register;
pub mod schedule;
pub mod violation;
pub mod weak;
pub mod wgl;

pub use history::History;
pub use violation::Violation;

/// Everything the run's history must satisfy: the register's linearizability and the weaker
/// model, with observers converging within `converge_ns` of the heal.
pub fn check_all(h: &History, converge_ns: u64) -> Vec<Violation> {
    let mut v = register::check(h);
    v.extend(weak::check(h, converge_ns));
    v
}
