//! The connection cap: past `[abuse] max_connections` a new connection is reset at once (its
//! client moves on to another replica) instead of waiting in an accept queue; below it again,
//! connections are served.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends a health check on a fresh connection; the first bytes of the answer, or nothing when
/// the server closed or reset the connection without answering.
async fn ask(addr: &str) -> Vec<u8> {
    let Ok(mut c) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let _ = c
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        // Reset: what a connection past the cap gets.
        Ok(Err(_)) => Vec::new(),
        Err(_) => panic!("no answer and no reset within 5 s: the connection was left waiting"),
    }
}

#[tokio::test]
async fn past_the_cap_a_connection_is_reset_at_once_and_served_again_below_it() {
    let server = common::TestServer::start_with(|c| c.abuse.max_connections = 2).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    assert!(ask(&addr).await.starts_with(b"HTTP/1.1 200"));

    // Two idle connections hold the two places (the header-read timeout is 10 s).
    let held = [
        TcpStream::connect(&addr).await.unwrap(),
        TcpStream::connect(&addr).await.unwrap(),
    ];
    // The server counts them once it accepted them: wait until a third is turned away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ask(&addr).await;
        if answer.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a third connection was still served: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    // One place free again: served.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ask(&addr).await.starts_with(b"HTTP/1.1 200") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not served after the held connections closed"
        );
    }
    server.stop().await;
}
