//! Lines between the coordinator and its child processes: one JSON object per line, on the
//! child's stdin (orders) and stdout (answers). Timestamps are `CLOCK_MONOTONIC` nanoseconds.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToChild {
    /// Start `count` SDK gates on `switch`; answer `Ready` once each has learned the state.
    Gates {
        urls: Vec<String>,
        token: String,
        switch: String,
        count: usize,
        /// Gates report and send samples (the soak); off for pure fan-out.
        #[serde(default)]
        reports: bool,
        /// The local address the gates connect from (each watcher process its own, as
        /// workers on different hosts); `None`: the system's choice.
        #[serde(default)]
        local_address: Option<std::net::IpAddr>,
    },
    /// Open `count` Redis connections subscribed to `channel`; answer `Ready`.
    Subscribers {
        addr: String,
        channel: String,
        count: usize,
    },
    /// Authenticated keep-alive GETs over `conns` connections for `secs`; answer `Reads`.
    Reads {
        addr: String,
        path: String,
        token: String,
        conns: usize,
        secs: f64,
    },
    /// When every watcher saw delivery `key` (a switch version, or a Redis message's
    /// version), or after `timeout_ms`: answer `Seen`.
    Collect {
        key: u64,
        timeout_ms: u64,
    },
    /// When every gate connected again after `since_ns`, or after `timeout_ms`: answer
    /// `Reconnected`.
    Reconnected {
        since_ns: u64,
        timeout_ms: u64,
    },
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum FromChild {
    Ready {
        count: usize,
        failed: usize,
    },
    /// When each watcher saw the delivery; `missing` did not within the timeout.
    Seen {
        key: u64,
        t_ns: Vec<u64>,
        missing: usize,
    },
    Reconnected {
        t_ns: Vec<u64>,
        missing: usize,
        /// Of the missing: gates that still count themselves connected on a stream opened
        /// before the kill (they never noticed it).
        stale: usize,
        /// The gates' attempts to open their stream since `since_ns`.
        #[serde(default)]
        attempts: AttemptStats,
    },
    Reads {
        requests: u64,
        errors: u64,
        secs: f64,
    },
    Failed {
        message: String,
    },
}

/// Bounds (ms, exclusive) of the `failed_by_took` buckets; the last bucket is everything longer.
/// 3.5 s sits above the SDK's connect timeout (3 s), 10.5 s above its answer timeout (10 s).
pub const TOOK_BOUNDS_MS: [u64; 5] = [10, 100, 1000, 3500, 10_500];
/// Width of the `failed_at` buckets.
pub const FAILED_AT_BUCKET_MS: u64 = 250;

/// Stream attempts of a child's gates during a reconnect storm, aggregated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptStats {
    /// Attempts that failed, by how long they took (buckets of [`TOOK_BOUNDS_MS`]).
    pub failed_by_took: Vec<u64>,
    /// `per_gate[k]`: gates that made k attempts (the last index: that many or more).
    pub per_gate: Vec<u64>,
    /// Failed attempts by when they started after `since_ns`, in [`FAILED_AT_BUCKET_MS`].
    pub failed_at: Vec<u64>,
}

impl AttemptStats {
    /// Adds another child's figures.
    pub fn merge(&mut self, o: &AttemptStats) {
        add_into(&mut self.failed_by_took, &o.failed_by_took);
        add_into(&mut self.per_gate, &o.per_gate);
        add_into(&mut self.failed_at, &o.failed_at);
    }
}

fn add_into(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let l = serde_json::to_string(&ToChild::Collect {
            key: 3,
            timeout_ms: 10,
        })
        .unwrap();
        assert_eq!(l, r#"{"op":"collect","key":3,"timeout_ms":10}"#);
        let back: FromChild =
            serde_json::from_str(r#"{"ev":"seen","key":3,"t_ns":[1,2],"missing":0}"#).unwrap();
        assert!(matches!(
            back,
            FromChild::Seen {
                key: 3,
                missing: 0,
                ..
            }
        ));
        // A coordinator of before the local address talks to a child of after, and back.
        let old =
            r#"{"op":"gates","urls":["http://127.0.0.1:1"],"token":"t","switch":"w","count":2}"#;
        assert!(matches!(
            serde_json::from_str::<ToChild>(old).unwrap(),
            ToChild::Gates {
                local_address: None,
                ..
            }
        ));
        let new = r#"{"op":"gates","urls":[],"token":"t","switch":"w","count":2,"local_address":"127.0.0.9"}"#;
        assert!(matches!(
            serde_json::from_str::<ToChild>(new).unwrap(),
            ToChild::Gates {
                local_address: Some(a),
                ..
            } if a.to_string() == "127.0.0.9"
        ));
    }
}
