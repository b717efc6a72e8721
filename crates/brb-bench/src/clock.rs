//! One clock for several processes, and the open-files limit.
//!
//! The coordinator takes a timestamp just before it sends a toggle; each watcher process takes
//! one when a gate sees the change. All processes run on the same machine, so both read
//! `CLOCK_MONOTONIC` (`clock_gettime(2)`), which is one system-wide clock since boot: the
//! difference of two readings from different processes is a true duration. `std::time::Instant`
//! reads the same clock on Linux but hides its value; where the SDK hands us an `Instant`
//! (reconnect times), [`Anchor`] converts it through a pair of readings taken together.

use std::time::Instant;

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// A reading of `Instant` and `CLOCK_MONOTONIC` taken together.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    instant: Instant,
    ns: u64,
}

impl Anchor {
    pub fn now() -> Anchor {
        Anchor {
            instant: Instant::now(),
            ns: mono_ns(),
        }
    }

    /// `t` as `CLOCK_MONOTONIC` nanoseconds.
    pub fn to_ns(&self, t: Instant) -> u64 {
        if t >= self.instant {
            self.ns + (t - self.instant).as_nanos() as u64
        } else {
            self.ns.saturating_sub((self.instant - t).as_nanos() as u64)
        }
    }
}

/// Raises the soft limit on open files to the hard limit (children inherit it). The machine's
/// hard limit is what it is: a process that needs more connections than that must be split.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.maximum.is_some() && l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "could not raise the open-files limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_anchored() {
        let a = Anchor::now();
        let t0 = mono_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let later = Instant::now();
        let t1 = mono_ns();
        assert!(t1 - t0 >= 5_000_000);
        let conv = a.to_ns(later);
        // The converted Instant falls between the readings taken around it (1 ms slack for
        // the two clocks read a few nanoseconds apart in the anchor).
        assert!(
            conv + 1_000_000 >= t0 && conv <= t1 + 1_000_000,
            "{t0} {conv} {t1}"
        );
    }
}
