//! The child side of `brb bench` (`brb bench-child`): holds watchers (SDK gates or Redis
//! subscribers) or drives status reads, and answers the coordinator over stdin/stdout lines.
//!
//! Each watcher records when it saw each delivery, on the delivery path itself: a gate keeps
//! the instant it applied each change (`Gate::last_change`, the moment `is_open` answers
//! accordingly), a Redis subscriber reads [`mono_ns`] once it decoded the message. Collecting
//! sweeps the gates now and then (rarely while a fan-out is in flight, so as not to compete with
//! it), which delays the answer but not the timestamps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_client::{Gate, GateConfig, Transport};
use brb_resp as resp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::clock::{Anchor, mono_ns, raise_nofile};
use crate::proto::{AttemptStats, FAILED_AT_BUCKET_MS, FromChild, TOOK_BOUNDS_MS, ToChild};
use crate::{BenchError, http};

/// Watchers started together before waiting for them: more at once only overflows the
/// server's accept backlog and turns into SYN retries a second later.
const START_BATCH: usize = 250;
const POLL: Duration = Duration::from_millis(5);
/// When collecting gate timestamps: the first sweep, then the interval between sweeps.
const GATE_FIRST_SWEEP: Duration = Duration::from_millis(60);
const GATE_SWEEP: Duration = Duration::from_millis(25);
/// While waiting for gates to reconnect, the interval between sweeps (each reconnect's time
/// comes from the gate itself; sweeping every 5 ms cost the storm's watchers 1.5 % of their CPU).
const RECONNECT_SWEEP: Duration = Duration::from_millis(25);

#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<u64, Vec<u64>>>,
}

impl Recorder {
    fn record(&self, key: u64, t: u64) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(t);
    }

    fn count(&self, key: u64) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map_or(0, Vec::len)
    }

    fn take(&self, key: u64) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Child {
    gates: Vec<Gate>,
    watchers: usize,
    rec: Arc<Recorder>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Child {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs until `Quit` or the end of stdin.
pub async fn child_main() -> Result<(), BenchError> {
    raise_nofile();
    let anchor = Anchor::now();
    // Plain blocking stdin on a thread of its own (tokio's stdio would need another feature
    // of tokio for the whole workspace, for one pipe).
    let (tx, mut orders) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut child = Child::default();
    while let Some(line) = orders.recv().await {
        let order: ToChild = serde_json::from_str(&line)
            .map_err(|e| BenchError::Failed(format!("bad order {line:?}: {e}")))?;
        let answer = match order {
            ToChild::Quit => return Ok(()),
            ToChild::Gates {
                urls,
                token,
                switch,
                count,
                reports,
                local_address,
            } => {
                child
                    .start_gates(&urls, &token, &switch, count, reports, local_address)
                    .await
            }
            ToChild::Subscribers {
                addr,
                channel,
                count,
            } => child.start_subscribers(&addr, &channel, count).await,
            ToChild::Reads {
                addr,
                path,
                token,
                conns,
                secs,
            } => reads(&addr, &path, &token, conns, secs).await,
            ToChild::Collect { key, timeout_ms } => child.collect(&anchor, key, timeout_ms).await,
            ToChild::Reconnected {
                since_ns,
                timeout_ms,
            } => child.reconnected(&anchor, since_ns, timeout_ms).await,
        };
        let answer = answer.unwrap_or_else(|e| FromChild::Failed {
            message: e.to_string(),
        });
        let mut l = serde_json::to_vec(&answer)
            .map_err(|e| BenchError::Failed(format!("encoding an answer: {e}")))?;
        l.push(b'\n');
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(&l).and_then(|()| out.flush())
        })
        .await
        .map_err(|e| BenchError::Failed(format!("writing an answer: {e}")))?
        .map_err(|e| BenchError::io("writing an answer on stdout", e))?;
    }
    Ok(())
}

impl Child {
    async fn start_gates(
        &mut self,
        urls: &[String],
        token: &str,
        switch: &str,
        count: usize,
        reports: bool,
        local_address: Option<std::net::IpAddr>,
    ) -> Result<FromChild, BenchError> {
        let mut failed = 0;
        let pid = std::process::id();
        for start in (0..count).step_by(START_BATCH) {
            let mut batch = Vec::new();
            for i in start..(start + START_BATCH).min(count) {
                let mut cfg = GateConfig::new(urls, Some(token.to_string()), switch);
                cfg.worker_id = format!("bench-{pid}-{i}");
                cfg.transport = Transport::Sse;
                cfg.send_samples = reports;
                cfg.reports = reports;
                cfg.local_address = local_address;
                batch.push(Gate::start(cfg)?);
            }
            for g in &batch {
                if !g.ready(Duration::from_secs(60)).await {
                    failed += 1;
                }
            }
            self.gates.extend(batch);
        }
        self.watchers += count;
        Ok(FromChild::Ready { count, failed })
    }

    async fn start_subscribers(
        &mut self,
        addr: &str,
        channel: &str,
        count: usize,
    ) -> Result<FromChild, BenchError> {
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        for start in (0..count).step_by(START_BATCH) {
            let end = (start + START_BATCH).min(count);
            for _ in start..end {
                let (addr, channel) = (addr.to_string(), channel.to_string());
                let (rec, ready, failed) = (
                    Arc::clone(&self.rec),
                    Arc::clone(&ready),
                    Arc::clone(&failed),
                );
                self.tasks.push(tokio::spawn(async move {
                    if let Err(e) = subscriber(&addr, &channel, &rec, &ready).await {
                        tracing::warn!(error = %e, "redis subscriber failed");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while ready.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < end {
                if Instant::now() > deadline {
                    return Err(BenchError::Failed(
                        "redis subscribers did not all subscribe within 60 s".into(),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        self.watchers += count;
        Ok(FromChild::Ready {
            count,
            failed: failed.load(Ordering::SeqCst),
        })
    }

    async fn collect(
        &self,
        anchor: &Anchor,
        key: u64,
        timeout_ms: u64,
    ) -> Result<FromChild, BenchError> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        if !self.gates.is_empty() {
            // Gates record when they applied each change; reading that wakes nothing on the
            // delivery path (the Redis subscribers record inline too).
            // Sweeping thousands of gates touches thousands of cache lines in the process
            // that is receiving the fan-out: sweep rarely while it is in flight (the first
            // sweep after GATE_FIRST_SWEEP), and check the version (an atomic) before taking
            // the gate's timestamp (a lock shared with the delivery path).
            let mut pending: Vec<&Gate> = self.gates.iter().collect();
            let mut t_ns = Vec::with_capacity(pending.len());
            let mut wait = GATE_FIRST_SWEEP;
            while !pending.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(wait).await;
                wait = GATE_SWEEP;
                pending.retain(|g| {
                    if g.version() < key {
                        return true;
                    }
                    match g.last_change() {
                        Some((v, t)) if v >= key => {
                            if v == key {
                                t_ns.push(anchor.to_ns(t));
                            }
                            false
                        }
                        _ => true,
                    }
                });
            }
            return Ok(FromChild::Seen {
                key,
                missing: self.watchers.saturating_sub(t_ns.len()),
                t_ns,
            });
        }
        while self.rec.count(key) < self.watchers && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        let t_ns = self.rec.take(key);
        Ok(FromChild::Seen {
            key,
            missing: self.watchers.saturating_sub(t_ns.len()),
            t_ns,
        })
    }

    async fn reconnected(
        &self,
        anchor: &Anchor,
        since_ns: u64,
        timeout_ms: u64,
    ) -> Result<FromChild, BenchError> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut pending: Vec<&Gate> = self.gates.iter().collect();
        let mut t_ns = Vec::with_capacity(pending.len());
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|g| {
                if !g.is_connected() {
                    return true;
                }
                match g.connect_times().last().map(|t| anchor.to_ns(*t)) {
                    Some(t) if t >= since_ns => {
                        t_ns.push(t);
                        false
                    }
                    _ => true,
                }
            });
            tokio::time::sleep(RECONNECT_SWEEP).await;
        }
        let mut attempts = AttemptStats {
            failed_by_took: vec![0; TOOK_BOUNDS_MS.len() + 1],
            per_gate: vec![0; 33],
            failed_at: Vec::new(),
        };
        for g in &self.gates {
            let mut n = 0;
            for a in g.attempts() {
                let at = anchor.to_ns(a.started);
                if at < since_ns {
                    continue;
                }
                n += 1;
                if a.opened {
                    continue;
                }
                let ms = a.took.as_millis() as u64;
                let b = TOOK_BOUNDS_MS.iter().take_while(|&&x| ms >= x).count();
                attempts.failed_by_took[b] += 1;
                let i = ((at - since_ns) / 1_000_000 / FAILED_AT_BUCKET_MS) as usize;
                if attempts.failed_at.len() <= i {
                    attempts.failed_at.resize(i + 1, 0);
                }
                attempts.failed_at[i] += 1;
            }
            attempts.per_gate[n.min(32)] += 1;
        }
        Ok(FromChild::Reconnected {
            missing: pending.len(),
            stale: pending.iter().filter(|g| g.is_connected()).count(),
            t_ns,
            attempts,
        })
    }
}

/// One Redis connection subscribed to `channel`: every message's payload is a switch (the
/// same JSON our event streams carry), decoded as our gates decode theirs.
async fn subscriber(
    addr: &str,
    channel: &str,
    rec: &Recorder,
    ready: &AtomicUsize,
) -> Result<(), BenchError> {
    let mut conn = connect(addr).await?;
    conn.write_all(&resp::command(&[b"SUBSCRIBE", channel.as_bytes()]))
        .await
        .map_err(|e| BenchError::io("subscribing", e))?;
    let mut buf = Vec::with_capacity(4096);
    let mut subscribed = false;
    loop {
        let n = conn
            .read_buf(&mut buf)
            .await
            .map_err(|e| BenchError::io("reading from redis", e))?;
        if n == 0 {
            return Err(BenchError::Failed("redis closed the connection".into()));
        }
        let mut at = 0;
        while let Some((v, used)) =
            resp::parse(&buf[at..]).map_err(|e| BenchError::Failed(e.to_string()))?
        {
            at += used;
            if let Some(payload) = resp::message_payload(&v) {
                match serde_json::from_slice::<brb_api::Switch>(payload) {
                    Ok(sw) => rec.record(sw.version, mono_ns()),
                    Err(e) => tracing::warn!(error = %e, "unreadable message"),
                }
            } else if !subscribed {
                subscribed = true;
                ready.fetch_add(1, Ordering::SeqCst);
            }
        }
        buf.drain(..at);
    }
}

async fn connect(addr: &str) -> Result<TcpStream, BenchError> {
    let mut attempt = 0;
    loop {
        match TcpStream::connect(addr).await {
            Ok(c) => {
                let _ = c.set_nodelay(true);
                return Ok(c);
            }
            Err(e) if attempt >= 5 => {
                return Err(BenchError::io(format!("connecting to {addr}"), e));
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
}

async fn reads(
    addr: &str,
    path: &str,
    token: &str,
    conns: usize,
    secs: f64,
) -> Result<FromChild, BenchError> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let request: Arc<[u8]> = http::get_request(addr, path, token).into();
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(connect(addr).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for conn in streams {
        let (ok, errors, request) = (Arc::clone(&ok), Arc::clone(&errors), Arc::clone(&request));
        tasks.push(tokio::spawn(async move {
            let mut conn = conn;
            let mut buf = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                match one_read(&mut conn, &request, &mut buf).await {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => errors.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(FromChild::Reads {
        requests: ok.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
        secs: start.elapsed().as_secs_f64(),
    })
}

async fn one_read(conn: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<u16, String> {
    conn.write_all(request).await.map_err(|e| e.to_string())?;
    buf.clear();
    loop {
        if let Some((status, len, head)) = http::parse_head(buf)? {
            while buf.len() < head + len {
                if conn.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed mid-body".into());
                }
            }
            return Ok(status);
        }
        if conn.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
    }
}
