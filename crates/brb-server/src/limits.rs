//! Rate limits: token buckets per token and per address for state changes, per address for
//! failed authentication.
//!
//! Why these and not a general request limit: reads are cheap (memory) and workers are many;
//! what hurts is a flood of changes (each one a durable write, a broadcast to every watcher and
//! a chat message) and a flood of bad tokens (noise, log volume, someone probing). A request
//! with a valid token is never refused for its address's failures, so one broken script behind
//! the office NAT cannot lock out the on-call engineer beside it; with 256-bit secrets the
//! failure limit is about load, not about guessing.
//!
//! Memory is bounded: each map holds at most `MAX_KEYS` buckets; when full, buckets that have
//! refilled (idle keys) are dropped first, then the map is cleared rather than grown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::AbuseConfig;

const MAX_KEYS: usize = 65_536;

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Buckets {
    rate: f64,
    burst: f64,
    map: HashMap<String, Bucket>,
}

impl Buckets {
    fn new(rate: f64, burst: f64) -> Self {
        Buckets {
            rate,
            burst,
            map: HashMap::new(),
        }
    }

    /// Takes one token for `key`; `Err(seconds until one is available)` when empty.
    fn take(&mut self, key: &str, now: Instant) -> Result<(), u64> {
        if !self.map.contains_key(key) && self.map.len() >= MAX_KEYS {
            let (rate, burst) = (self.rate, self.burst);
            self.map
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
            if self.map.len() >= MAX_KEYS {
                self.map.clear();
            }
        }
        let b = self.map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil() as u64)
        }
    }
}

pub struct Limiter {
    changes: Mutex<Buckets>,
    auth_failures: Mutex<Buckets>,
}

impl Limiter {
    pub fn new(cfg: &AbuseConfig) -> Self {
        Limiter {
            changes: Mutex::new(Buckets::new(cfg.changes_per_sec, cfg.changes_burst)),
            auth_failures: Mutex::new(Buckets::new(
                cfg.auth_failures_per_sec,
                cfg.auth_failures_burst,
            )),
        }
    }

    /// One state change by `token` (its id or name) from `addr`. Both budgets must allow it.
    /// `Some(seconds)` to wait when refused.
    pub fn change(&self, token: &str, addr: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let mut b = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(wait) = b.take(&format!("t:{token}"), now) {
            return Some(wait);
        }
        if let Some(ip) = addr
            && let Err(wait) = b.take(&format!("a:{ip}"), now)
        {
            return Some(wait);
        }
        None
    }

    /// Records a failed authentication from `addr`. `Some(seconds)` once the address is over
    /// its budget: the caller then answers 429 instead of 401.
    pub fn auth_failure(&self, addr: IpAddr) -> Option<u64> {
        let mut b = self.auth_failures.lock().unwrap_or_else(|e| e.into_inner());
        b.take(&addr.to_string(), Instant::now()).err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let mut b = Buckets::new(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take("k", t0).is_ok());
        }
        assert_eq!(b.take("k", t0), Err(1));
        // Half a second at 2/s gives one token back.
        assert!(b.take("k", t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take("k", t0 + Duration::from_millis(500)).is_err());
        // Other keys are independent.
        assert!(b.take("other", t0).is_ok());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take("k", later).is_ok());
        }
        assert!(b.take("k", later).is_err());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut b = Buckets::new(1.0, 2.0);
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            let _ = b.take(&format!("k{i}"), t0);
        }
        assert!(b.map.len() <= MAX_KEYS);
    }

    #[test]
    fn changes_are_limited_per_token_and_per_address() {
        let cfg = AbuseConfig {
            changes_per_sec: 0.001,
            changes_burst: 2.0,
            ..AbuseConfig::default()
        };
        let l = Limiter::new(&cfg);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.change("t1", Some(a)).is_none());
        assert!(l.change("t1", Some(b)).is_none());
        assert!(
            l.change("t1", Some(b)).is_some(),
            "token t1 spent its burst"
        );
        assert!(l.change("t2", Some(a)).is_none());
        assert!(
            l.change("t3", Some(a)).is_some(),
            "address a spent its burst"
        );
        assert!(l.change("t4", None).is_none());
    }

    #[test]
    fn auth_failures_lock_an_address_out_only_after_the_burst() {
        let cfg = AbuseConfig {
            auth_failures_burst: 3.0,
            auth_failures_per_sec: 0.001,
            ..AbuseConfig::default()
        };
        let l = Limiter::new(&cfg);
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..3 {
            assert!(l.auth_failure(a).is_none());
        }
        let wait = l.auth_failure(a).unwrap();
        assert!(wait >= 1);
        assert!(l.auth_failure("192.0.2.10".parse().unwrap()).is_none());
    }
}
