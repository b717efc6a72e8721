//! What workers tell the control plane, and what it makes of it: how many workers obey a
//! switch, and how long the last one took to acknowledge a change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::SwitchState;

/// Longest accepted worker id.
pub const MAX_WORKER_ID: usize = 128;

/// What a worker is doing about its switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Taking jobs.
    Running,
    /// Paused, but jobs started before the pause are still in flight.
    Draining,
    /// Paused, nothing in flight.
    Paused,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Running => "running",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Paused => "paused",
        }
    }
}

/// `POST /api/v1/workers/report`: sent by each worker's gate at once when it observes a change
/// (or finishes draining), and every few seconds otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerReport {
    /// 1 to 128 characters, none of them control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub worker_id: String,
    pub switch: String,
    /// The switch version the worker acts on.
    #[serde(deserialize_with = "crate::ints::u64")]
    pub observed_version: u64,
    pub status: WorkerStatus,
    #[serde(deserialize_with = "crate::ints::u32")]
    pub in_flight: u32,
    #[serde(deserialize_with = "crate::ints::u64")]
    pub processed_total: u64,
    /// Why the worker cannot act on the switch, when it cannot (a broker adapter that cannot
    /// reach its broker). At most 500 characters; absent when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 500)]
    pub error: Option<String>,
}

/// Longest accepted `detail` of an adapter action, and `error` of a report, in characters.
pub const MAX_ADAPTER_DETAIL: usize = 500;

/// `POST /api/v1/adapters/actions`: a broker adapter (`brb adapter`) says what it just applied
/// to its broker. Recorded in the audit log with source `adapter` and the token's name; it
/// changes no switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterAction {
    /// The adapter, as it reports itself (its `worker_id`): 1 to 128 printable characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub adapter_id: String,
    pub switch: String,
    /// The state the broker now has.
    pub applied: SwitchState,
    /// The switch version that state comes from.
    #[serde(deserialize_with = "crate::ints::u64")]
    pub observed_version: u64,
    /// What was done, in words (at most 500 characters, not only white space).
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    pub detail: String,
}

/// One worker as the control plane last heard of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    pub worker_id: String,
    pub status: WorkerStatus,
    pub observed_version: u64,
    pub in_flight: u32,
    pub processed_total: u64,
    pub last_seen: DateTime<Utc>,
    /// No report for longer than the stale threshold.
    pub stale: bool,
    /// Network address the last report came from.
    pub remote_addr: Option<String>,
    /// The worker's own word on why it cannot act, from its last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How one change was acknowledged by the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeAck {
    pub version: u64,
    pub state: SwitchState,
    pub changed_at: DateTime<Utc>,
    /// Live (non-stale) workers that have observed this version or a later one.
    pub acknowledged: u32,
    /// Live workers.
    pub total: u32,
    /// Milliseconds from the change to the last live worker's acknowledgement, once all have
    /// acknowledged.
    pub last_ack_ms: Option<u64>,
}

/// `GET /api/v1/switches/{name}/workers`, and the data of the `workers` SSE event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerCounts {
    pub switch: String,
    /// The switch's current version.
    pub version: u64,
    /// Every worker known (running + draining + paused + stale).
    pub total: u32,
    pub running: u32,
    pub draining: u32,
    pub paused: u32,
    pub stale: u32,
    /// The current version's acknowledgement.
    pub current: Option<ChangeAck>,
    /// Recent changes, newest first.
    pub changes: Vec<ChangeAck>,
    /// Every known worker, `[]` when none is. Always empty in `workers` SSE events: they carry
    /// the counts only, and `GET /api/v1/switches/{name}/workers` has the list.
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// Readers that do not report (OpenFeature providers over OFREP), counted apart: they are
    /// not in `total` and never acknowledge anything.
    #[serde(default)]
    pub unacknowledged: UnacknowledgedReaders,
}

/// OFREP readers of a switch seen by this replica in the last `window_secs` seconds. A reader
/// is a distinct (token, client address, `User-Agent`) triple: OFREP providers send nothing
/// that names their process, so several processes behind one address with one token and the
/// same library count once. `readers` is a lower bound on the processes that read the switch,
/// not a count of processes that obey it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnacknowledgedReaders {
    pub window_secs: u64,
    pub readers: u32,
    /// Of those, how many were last answered with the switch's current version. What a reader
    /// was told, not what it did.
    pub served_current: u32,
}
