//! What a chaos run records: operations with their invoke and complete times and outcomes, hub
//! reads, watcher and gate observations, webhook deliveries, and the audit read at the end.
//!
//! Times are nanoseconds on the recorder's own monotonic clock (the test process), never a
//! server's timestamp: a skewed replica must not be able to move a point of the history.

use serde::{Deserialize, Serialize};

/// A switch's state, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum St {
    Running,
    Paused,
}

impl St {
    pub fn flip(self) -> St {
        match self {
            St::Running => St::Paused,
            St::Paused => St::Running,
        }
    }
}

/// One request of the register's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OpKind {
    /// `PUT …/state` with `expected_version`.
    Cas { expected: u64, to: St },
    /// `PUT …/state` without it.
    Put { to: St },
    /// `PUT …/state` with `expected_version: 0`: always a 409 carrying the switch as read under
    /// the write lock, which makes it a linearizable read (versions start at 1).
    Probe,
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// 200: the switch after the request (changed, or unchanged when it already had that state).
    Ok { version: u64, state: St },
    /// 409 `version_conflict`, with the switch as it was.
    Conflict { version: u64, state: St },
    /// A definite refusal (a 4xx other than 409): nothing was committed.
    Fail { status: u16, code: String },
    /// A timeout, a reset, a 5xx: it may or may not have committed.
    Unknown { why: String },
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    pub client: u32,
    pub key: String,
    #[serde(flatten)]
    pub kind: OpKind,
    /// Which replica answered (index).
    pub replica: u8,
    /// The process incarnation (pid) that answered, when the recorder knows it did not change
    /// around the request: read-your-writes is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub inv: u64,
    /// `None` for [`Outcome::Unknown`]: the operation may take effect at any later time.
    pub ret: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Op {
    /// The latest point the operation can take effect: its completion, or never-ending.
    pub fn end(&self) -> u64 {
        match self.outcome {
            Outcome::Unknown { .. } => u64::MAX,
            _ => self.ret.unwrap_or(u64::MAX),
        }
    }

    pub fn target(&self) -> Option<St> {
        match self.kind {
            OpKind::Cas { to, .. } | OpKind::Put { to } => Some(to),
            OpKind::Probe => None,
        }
    }
}

/// One row of the audit for a switch change, read at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub key: String,
    pub version: u64,
    pub to: St,
    /// The operation named by the row's reason (`chaos:<seed>:<op id>`); `None` when the reason
    /// names no operation of this run.
    pub op: Option<u64>,
}

/// A switch as it was before the run's first operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initial {
    pub key: String,
    pub version: u64,
    pub state: St,
}

/// A `GET` answered by a replica's in-memory hub (the weaker model: it may be stale).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRead {
    pub client: u32,
    pub key: String,
    pub replica: u8,
    /// The process incarnation (pid) that answered: a restarted replica may start lower.
    pub pid: u32,
    pub inv: u64,
    pub ret: u64,
    pub version: u64,
    pub state: St,
}

/// A change event a raw SSE watcher received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub watcher: u32,
    pub key: String,
    pub t: u64,
    pub version: u64,
    pub state: St,
    /// The first event on a stream opened with `Last-Event-ID`.
    pub resumed: bool,
    /// The server said the history it would need is gone (a `resync`): the next event may jump.
    pub resync: bool,
}

/// A version an SDK gate reported (sampled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateObs {
    pub gate: u32,
    pub key: String,
    pub t: u64,
    pub version: u64,
}

/// One webhook delivery the test's receiver got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub t: u64,
    /// The outbox row's id (`x-brb-delivery`).
    pub delivery: String,
    pub key: String,
    pub version: u64,
}

/// A window in which a duplicate delivery is allowed (a fault hit a replica that may have
/// claimed an outbox row: delivery is at-least-once by design).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub from: u64,
    pub to: u64,
}

/// Everything a run recorded, as the checkers take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub initial: Vec<Initial>,
    pub ops: Vec<Op>,
    pub audit: Vec<AuditRow>,
    pub hub_reads: Vec<HubRead>,
    pub watch: Vec<WatchEvent>,
    pub gates: Vec<GateObs>,
    pub deliveries: Vec<Delivery>,
    /// Where duplicate deliveries are allowed.
    pub redelivery_windows: Vec<Window>,
    /// When the last fault healed; the convergence bound is measured from here.
    pub healed_at: Option<u64>,
    /// When faults kept a replica (or the database, and so every replica) from following the
    /// store: the bounded-staleness and read-your-writes checks excuse reads near them.
    #[serde(default)]
    pub outages: Vec<Outage>,
    /// When a replica that may hold the global write lock in an open transaction was stopped
    /// or cut off: every replica's writes, and the catch-up reads queued behind them, may wait.
    #[serde(default)]
    pub stalls: Vec<Window>,
    /// When the server's disk was full (SQLite variant): writes must resume once it is freed.
    #[serde(default)]
    pub disk_full: Vec<Window>,
}

/// A fault that kept `replica` (`None`: the database, hence every replica) from following the
/// store between `from` and `to`: killed, stopped, cut off from the database, or the database
/// itself stopped or restarting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    pub replica: Option<u8>,
    pub from: u64,
    pub to: u64,
}

impl Outage {
    /// Whether it touches `replica` anywhere in `[from, to]`.
    pub fn hits(&self, replica: u8, from: u64, to: u64) -> bool {
        self.replica.is_none_or(|r| r == replica) && self.from <= to && from <= self.to
    }
}

/// The `reason` a chaos write carries, so that the audit names the operation that made each
/// version.
pub fn reason(seed: u64, op: u64) -> String {
    format!("chaos:{seed:#x}:{op}")
}

/// The operation a reason names, when it is one of this seed's.
pub fn op_of_reason(seed: u64, reason: &str) -> Option<u64> {
    let rest = reason.strip_prefix(&format!("chaos:{seed:#x}:"))?;
    rest.parse().ok()
}

/// Errors reading a JSONL file.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct JsonlError {
    pub line: usize,
    #[source]
    pub source: serde_json::Error,
}

/// One JSON value per line.
pub fn to_jsonl<T: Serialize>(items: &[T]) -> String {
    let mut out = String::new();
    for it in items {
        // Serialising these plain structs cannot fail (no maps with non-string keys).
        if let Ok(s) = serde_json::to_string(it) {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// Parses one JSON value per non-empty line.
pub fn from_jsonl<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>, JsonlError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| JsonlError {
                line: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_through_jsonl() {
        let ops = vec![
            Op {
                id: 17,
                client: 2,
                key: "workers".into(),
                kind: OpKind::Cas {
                    expected: 41,
                    to: St::Paused,
                },
                replica: 1,
                pid: Some(4711),
                inv: 10,
                ret: Some(20),
                outcome: Outcome::Ok {
                    version: 42,
                    state: St::Paused,
                },
            },
            Op {
                id: 18,
                client: 2,
                key: "workers".into(),
                kind: OpKind::Probe,
                replica: 0,
                pid: None,
                inv: 30,
                ret: None,
                outcome: Outcome::Unknown {
                    why: "timeout".into(),
                },
            },
        ];
        let text = to_jsonl(&ops);
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.contains(r#""kind":"cas","expected":41,"to":"paused""#),
            "{text}"
        );
        assert!(text.contains(r#""outcome":"ok","version":42"#), "{text}");
        let back: Vec<Op> = from_jsonl(&text).expect("parse");
        assert_eq!(back, ops);
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = from_jsonl::<Op>("\n{\"id\":1}\n").expect_err("incomplete op");
        assert_eq!(err.line, 2);
    }

    #[test]
    fn reasons_name_their_operation_for_this_seed_only() {
        let r = reason(0x18, 7);
        assert_eq!(r, "chaos:0x18:7");
        assert_eq!(op_of_reason(0x18, &r), Some(7));
        assert_eq!(op_of_reason(0x19, &r), None);
        assert_eq!(op_of_reason(0x18, "operator"), None);
    }
}
