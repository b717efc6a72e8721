//! Utilization series: samples in, one-second series out.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Longest series name.
pub const MAX_SERIES_NAME: usize = 100;
/// Most samples in one `POST /api/v1/metrics`.
pub const MAX_SAMPLES_PER_POST: usize = 1000;

/// How samples falling in the same second combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleKind {
    /// The last value in the second wins (queue depth, load, latency).
    #[default]
    Gauge,
    /// Values in the same second add up (jobs processed: the series is then per second).
    Counter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9_:.-]+$")]
    pub name: String,
    pub value: f64,
    #[serde(default)]
    pub kind: SampleKind,
    /// At most 8; names like series names (at most 64 characters), values at most 128
    /// printable characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
    /// Unix time in seconds (fractions allowed); default: when the server receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<f64>,
}

fn labels_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64))
                .pattern(Some("^[A-Za-z0-9_:.-]+$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(128))
                .pattern(Some("^[^\\u0000-\\u001f\\u007f-\\u009f]*$"))
                .into(),
        )))
        .max_properties(Some(8))
        .build()
}

/// `POST /api/v1/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleBatch {
    /// At most 1000 per request.
    #[schema(max_items = 1000)]
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
}

/// One series at one-second resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub kind: SampleKind,
    /// `[unix_second, value]`, oldest first; seconds without data are left out.
    pub points: Vec<(i64, f64)>,
}

/// `GET /api/v1/metrics/series`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesList {
    pub series: Vec<Series>,
    /// Seconds each series keeps.
    pub retention_secs: u64,
}

/// Data of the `samples` SSE event: each series' value for one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SampleTick {
    pub ts: i64,
    pub values: Vec<TickValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TickValue {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}
