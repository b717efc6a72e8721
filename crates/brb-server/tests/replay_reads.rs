//! Streams that resume from the same point share one read of the store: after a restart
//! during which a switch changed, every watcher asks for the same replay at once, and each
//! read would queue for one of the pool's few database connections.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use brb_api::Role;
use serde_json::json;

fn replay_reads(state: &brb_server::AppState) -> u64 {
    state
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("brb_stream_replay_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("brb_stream_replay_reads_total in /metrics")
}

/// Opens a switch stream resuming after `last` and returns the ids and states of its first
/// `n` switch events.
async fn resume(
    server: &common::TestServer,
    token: &str,
    last: u64,
    n: usize,
) -> Vec<(Option<String>, String)> {
    let res = server
        .http
        .get(server.api("/switches/workers/events"))
        .bearer_auth(token)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    common::read_events_named(res, Some("switch"), n, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            (e.id, v["state"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn streams_resuming_from_the_same_point_share_one_read_of_the_store() {
    let server = common::TestServer::start().await;
    let viewer = server.token("w", Role::Viewer).await;
    let (status, _) = server
        .set(&server.admin, "workers", json!({"state": "paused"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .set(&server.admin, "workers", json!({"state": "running"}))
        .await;
    assert_eq!(status, 200);
    let before = replay_reads(&server.state);

    // A hundred watchers that last saw version 1 come back at once: each gets versions 2 and 3.
    let opens = (0..100).map(|_| resume(&server, &viewer, 1, 2));
    for got in futures_util::future::join_all(opens).await {
        assert_eq!(
            got,
            vec![
                (Some("2".to_string()), "paused".to_string()),
                (Some("3".to_string()), "running".to_string()),
            ]
        );
    }
    assert_eq!(
        replay_reads(&server.state) - before,
        1,
        "a hundred streams resuming after version 1 read the store once"
    );

    // Later, the same replay again costs nothing; another one costs one read.
    assert_eq!(resume(&server, &viewer, 1, 2).await.len(), 2);
    assert_eq!(replay_reads(&server.state) - before, 1);
    assert_eq!(
        resume(&server, &viewer, 2, 1).await,
        vec![(Some("3".to_string()), "running".to_string())]
    );
    assert_eq!(replay_reads(&server.state) - before, 2);

    // A change moves the hub on: a replay asked for after it is read afresh and sees it.
    let (status, _) = server
        .set(&server.admin, "workers", json!({"state": "paused"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        resume(&server, &viewer, 2, 2).await,
        vec![
            (Some("3".to_string()), "running".to_string()),
            (Some("4".to_string()), "paused".to_string()),
        ]
    );
    assert_eq!(replay_reads(&server.state) - before, 3);
}
