//! Pulls named PromQL queries from a Prometheus server into the series store, so a team's real
//! database graphs appear beside the workers' in the UI.
//!
//! Each query is fetched with the HTTP API's `query_range` at one-second steps: the last hour on
//! the first pass (so the graphs are full at once), then only what is new. A Prometheus that is
//! down or answers nonsense costs a log line, never the control plane.

use std::collections::BTreeMap;
use std::time::Duration;

use brb_api::SampleKind;
use serde::Deserialize;

use crate::AppState;
use crate::config::PrometheusConfig;
use crate::series::{RETENTION_SECS, Row};

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Matrix>,
}

#[derive(Deserialize)]
struct Matrix {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("Prometheus answered HTTP {0}")]
    Status(u16),
    #[error("unreadable answer: {0}")]
    Decode(String),
    #[error("query failed: {0}")]
    Query(String),
}

/// Turns a `query_range` answer into series rows named `name`.
fn rows(name: &str, body: &[u8]) -> Result<Vec<Row>, PromError> {
    let a: Answer = serde_json::from_slice(body).map_err(|e| PromError::Decode(e.to_string()))?;
    if a.status != "success" {
        return Err(PromError::Query(
            a.error.unwrap_or_else(|| a.status.clone()),
        ));
    }
    let data = a.data.ok_or_else(|| PromError::Decode("no data".into()))?;
    if data.result_type != "matrix" {
        return Err(PromError::Decode(format!(
            "expected a matrix, got {}",
            data.result_type
        )));
    }
    let mut out = Vec::new();
    for m in data.result {
        // The metric name label is the query's business, not the series'.
        let labels: BTreeMap<String, String> = m
            .metric
            .into_iter()
            .filter(|(k, _)| k != "__name__")
            .take(8)
            .collect();
        for (ts, v) in m.values {
            if let Ok(v) = v.parse::<f64>()
                && v.is_finite()
            {
                out.push((
                    name.to_string(),
                    labels.clone(),
                    SampleKind::Gauge,
                    ts.floor() as i64,
                    v,
                ));
            }
        }
    }
    Ok(out)
}

async fn fetch(
    http: &reqwest::Client,
    cfg: &PrometheusConfig,
    query: &str,
    start: i64,
    end: i64,
) -> Result<bytes::Bytes, PromError> {
    let url = format!("{}/api/v1/query_range", cfg.url.trim_end_matches('/'));
    let res = http
        .get(url)
        .query(&[
            ("query", query.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", "1".to_string()),
        ])
        .send()
        .await
        .map_err(|e| PromError::Http(e.to_string()))?;
    let status = res.status();
    let body = res
        .bytes()
        .await
        .map_err(|e| PromError::Http(e.to_string()))?;
    // Prometheus answers 400/422 with a JSON error body worth reading.
    if !status.is_success() && !(400..500).contains(&status.as_u16()) {
        return Err(PromError::Status(status.as_u16()));
    }
    Ok(body)
}

/// Runs until shutdown.
pub async fn run(state: AppState, cfg: PrometheusConfig) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Prometheus client cannot start");
            return;
        }
    };
    let mut shutdown = state.shutdown_signal();
    let mut next_start: Vec<i64> = vec![i64::MIN; cfg.queries.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let end = chrono::Utc::now().timestamp();
        for (i, q) in cfg.queries.iter().enumerate() {
            // At most 11,000 points per query_range request is Prometheus' limit; an hour at
            // 1 s steps is 3,600.
            let start = next_start[i].max(end - RETENTION_SECS + 1);
            let result = match fetch(&http, &cfg, &q.query, start, end).await {
                Ok(body) => rows(&q.name, &body),
                Err(e) => Err(e),
            };
            match result.and_then(|rows| {
                state
                    .series()
                    .record_all(rows)
                    .map_err(|e| PromError::Query(e.to_string()))
            }) {
                Ok(()) => next_start[i] = end + 1,
                Err(e) => {
                    tracing::warn!(query = %q.name, error = %e, "Prometheus query not recorded");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_matrix() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"up","job":"brb"},"values":[[1700000000.5,"1"],[1700000001,"NaN"],[1700000002,"0"]]}]}}"#;
        let r = rows("prom_up", body).unwrap();
        assert_eq!(r.len(), 2, "NaN dropped");
        assert_eq!(r[0].0, "prom_up");
        assert_eq!(r[0].1.get("job").map(String::as_str), Some("brb"));
        assert!(!r[0].1.contains_key("__name__"));
        assert_eq!((r[0].3, r[0].4), (1_700_000_000, 1.0));
    }

    #[test]
    fn errors_are_reported() {
        let e = rows(
            "x",
            br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("parse error"));
        assert!(rows("x", b"<html>").is_err());
        assert!(
            rows(
                "x",
                br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
            )
            .is_err()
        );
    }
}
