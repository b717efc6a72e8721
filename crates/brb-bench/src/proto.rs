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
    }
}
