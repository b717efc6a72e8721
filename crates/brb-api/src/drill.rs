//! Fire drills: proving, on a quiet day, that every watcher of a switch hears it. A drill is a
//! new version of the switch with nothing else changed; every SDK reports at once on a new
//! version, and that report is the answer. Nothing pauses.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Source, UnacknowledgedReaders, WorkerInfo, claimed_source, claimed_source_schema};

/// `POST /api/v1/switches/{name}/drill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    /// Why (at most 1000 characters), kept in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
    /// Defaults to `api`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
}

/// A drill that started: ask for its report with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrillStarted {
    pub switch: String,
    /// The switch's version that carries the drill.
    pub version: u64,
    pub started_at: DateTime<Utc>,
}

/// One watcher that answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrillAnswer {
    pub worker_id: String,
    /// From the drill's start to the worker's first report of its version.
    pub ms: u64,
}

/// `GET /api/v1/switches/{name}/drills/{version}`: who answered, how fast, who did not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrillReport {
    pub switch: String,
    pub version: u64,
    pub started_at: DateTime<Utc>,
    /// Fastest first.
    pub answered: Vec<DrillAnswer>,
    /// Nearest-rank percentiles of `answered` (absent when no one answered).
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    /// Live workers that have not reported the drill's version yet, with their last report.
    pub missing: Vec<WorkerInfo>,
    /// Workers silent for longer than `limits.worker_stale_secs`: they cannot answer.
    pub stale: Vec<WorkerInfo>,
    /// Every live worker answered.
    pub complete: bool,
    /// OpenFeature readers cannot answer a drill (they send no reports): counted apart.
    pub unacknowledged: UnacknowledgedReaders,
}

/// The nearest-rank `p` percentile (0 < p ≤ 100) of sorted values.
pub fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(nearest_rank(&[], 50.0), None);
        assert_eq!(nearest_rank(&[7], 99.0), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(50));
        assert_eq!(nearest_rank(&v, 99.0), Some(99));
        assert_eq!(nearest_rank(&[10, 20, 30], 50.0), Some(20));
        assert_eq!(nearest_rank(&[10, 20, 30], 99.0), Some(30));
    }
}
