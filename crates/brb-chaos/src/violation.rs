//! What the checkers report. Each variant names the smallest witness it can: the key, the
//! version and the operations involved.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum Violation {
    // --- the audit, read against the operations
    /// A version between the run's first and last has no audit entry.
    VersionGap { key: String, version: u64 },
    /// Two entries (or two operations) for one version.
    DuplicateVersion {
        key: String,
        version: u64,
        ops: Vec<Option<u64>>,
    },
    /// One operation made two versions.
    CommittedTwice { op: u64 },
    /// An audit entry no write of this run made.
    PhantomWrite {
        key: String,
        version: u64,
        op: Option<u64>,
    },
    /// The audit's state for a version is not what its operation asked for.
    AuditMismatch { key: String, version: u64, op: u64 },
    /// A write was acknowledged as a change, and no audit entry holds it.
    AckedWriteMissing { key: String, op: u64, version: u64 },
    /// A definite refusal (4xx) whose operation is in the audit.
    FailedWriteCommitted { op: u64 },
    /// The answer's version is not the one the audit gives the operation.
    WrongAck { op: u64, acked: u64, audit: u64 },
    /// A 200 that cannot be "unchanged" (another state than asked, a CAS on another version),
    /// or a 409 to a request that cannot conflict.
    BadUnchanged { op: u64 },
    /// A 409 to a CAS whose expected version was the current one.
    ConflictOnMatchingVersion { op: u64 },
    // --- the register along the chain
    /// A CAS committed on another version than it expected (the version check was skipped).
    LostUpdate {
        key: String,
        version: u64,
        op: u64,
        expected: u64,
    },
    /// A version that changed nothing.
    NoOpWritten { key: String, version: u64 },
    /// A read of a version with the other state.
    WrongValue { key: String, op: u64, version: u64 },
    /// A read of a version the chain never had.
    ReadUnknownVersion { key: String, op: u64, version: u64 },
    // --- real time
    /// A read saw `version` though a newer write had completed before the read began.
    StaleRead {
        key: String,
        op: u64,
        version: u64,
        newer_write: u64,
    },
    /// A read completed before the write of the version it saw began.
    FutureRead {
        key: String,
        op: u64,
        version: u64,
        write: Option<u64>,
    },
    /// The write of `version` completed before what must precede it began.
    WriteOrder {
        key: String,
        version: u64,
        op: u64,
        after: Option<u64>,
    },
    /// The general search ran out of budget: never a pass.
    Inconclusive { key: String },
    // --- the weaker model of hub reads, watchers, gates and notifications
    /// A hub read or a stream event of a version whose state the audit contradicts, or that the
    /// audit does not have.
    HubPhantom {
        what: String,
        key: String,
        version: u64,
    },
    /// A hub read completed before the write of the version it shows began.
    HubFuture {
        client: u32,
        key: String,
        version: u64,
    },
    /// Two hub reads of one process incarnation, one after the other, went backwards.
    HubBackwards {
        replica: u8,
        pid: u32,
        key: String,
        from: u64,
        to: u64,
    },
    /// A replica acknowledged a write of `acked`, and a later read from the same process
    /// showed an older version (read-your-writes).
    ReadYourWrites {
        client: u32,
        replica: u8,
        pid: u32,
        key: String,
        op: u64,
        acked: u64,
        saw: u64,
    },
    /// A hub read of a replica that had been healthy for a while missed a write that had
    /// completed more than the staleness bound before the read began.
    StaleBeyondBound {
        client: u32,
        replica: u8,
        key: String,
        saw: u64,
        want: u64,
        /// How long before the read began the missed write had completed.
        behind_ms: u64,
    },
    /// After the full disk was freed, no write was acknowledged within the bound.
    WritesNotResumed { freed_ms: u64, within_ms: u64 },
    /// A watcher's versions did not strictly increase, or skipped one without a resync.
    WatcherOrder {
        watcher: u32,
        key: String,
        from: u64,
        to: u64,
    },
    /// A gate's version went backwards.
    GateBackwards {
        gate: u32,
        key: String,
        from: u64,
        to: u64,
    },
    /// After the heal, an observer did not reach the final version in time.
    NotConverged {
        what: String,
        key: String,
        last: Option<u64>,
        want: u64,
        after_ms: Option<u64>,
    },
    /// A change with no notification, or a notification of no change.
    NotificationMissing { key: String, version: u64 },
    /// A notification delivered twice outside any window that allows it.
    DuplicateNotification {
        delivery: String,
        key: String,
        version: u64,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

impl Violation {
    /// The variant's name, as in the JSON (`lost_update`…).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| {
                v.get("violation")
                    .and_then(|k| k.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }
}
