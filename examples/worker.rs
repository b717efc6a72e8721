//! A background worker that obeys the Big Red Button.
//!
//! Run the control plane (`make run`), then:
//!
//! ```sh
//! BRB_TOKEN=$(cat ~/.local/share/big-red-button/admin-token) \
//!   cargo run -p brb-client --example worker
//! ```
//!
//! and press the button (`brb pause`): the worker stops taking jobs within milliseconds,
//! finishes the one in flight, and reports `paused`; `brb resume --ramp steps:2m` brings it
//! back gradually.

use std::time::Duration;

use brb_client::{Gate, GateConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("BRB_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let token = std::env::var("BRB_TOKEN").ok();
    let mut cfg = GateConfig::new(&[url.as_str()], token, "workers");
    // Up to four jobs at once; a ramp throttles each slot by duty cycle.
    cfg.max_concurrency = 4;
    let gate = Gate::start(cfg)?;
    if !gate.ready(Duration::from_secs(10)).await {
        eprintln!("cannot reach the control plane at {url}; keeping the brake on until it answers");
    }
    println!("worker {} started", gate.worker_id());
    tokio::spawn(show_changes(gate.clone()));
    loop {
        // Waits while the switch is paused; counts the job as in flight until dropped.
        let permit = gate.acquire().await;
        tokio::spawn(async move {
            process_one_job().await;
            drop(permit);
        });
    }
}

/// Prints the gate's decision whenever it changes.
async fn show_changes(gate: Gate) {
    let mut last = None;
    loop {
        let state = (gate.is_open(), (gate.admitted_fraction() * 100.0).round());
        if last != Some(state) {
            println!("open: {}, admitting {}% of normal work", state.0, state.1);
            last = Some(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn process_one_job() {
    // Stand-in for real work: a database write, an email, a webhook...
    tokio::time::sleep(Duration::from_millis(200)).await;
}
