//! What "paused" means in each job system, over a Redis connection: check, then set only what
//! differs, and say what was done.

use crate::reconcile::Target;
use crate::redis::{Conn, RedisError, Value};

/// BullMQ's own pause/resume script (see the file's header).
const BULLMQ_PAUSE: &str = include_str!("scripts/bullmq-pause-7.lua");

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(
        "BullMQ queue {queue:?} not found under prefix {prefix:?} (no {prefix}:{queue}:meta or \
         {prefix}:{queue}:id key in this database): check --queue, --prefix and the database"
    )]
    QueueMissing { prefix: String, queue: String },
    #[error("unexpected answer from redis to {0}")]
    Unexpected(&'static str),
}

/// A job system's pause, on one Redis database.
#[derive(Debug, Clone)]
pub enum Broker {
    /// RQ: `rq suspend` / `rq resume`, the key `rq:suspended`. Every RQ worker on the database
    /// checks it before each dequeue. Set with an expiry (`ttl_secs`) that each re-apply
    /// renews, so an adapter that dies leaves RQ running again after the expiry rather than
    /// suspended forever with nobody to release it.
    Rq { ttl_secs: u64 },
    /// BullMQ: the queue's global pause (meta field `paused`, set by BullMQ's own script, as
    /// `queue.pause()`/`resume()` do) and its global concurrency (meta field `concurrency`,
    /// as `queue.setGlobalConcurrency(n)` does) for a ramp.
    BullMq {
        prefix: String,
        queue: String,
        /// Once this adapter has seen the queue, its keys vanishing means a flush or an empty
        /// restart: the pause is set again rather than refused.
        seen: bool,
    },
}

/// RQ's key (rq.suspension.WORKERS_SUSPENDED).
pub const RQ_SUSPENDED: &str = "rq:suspended";

impl Broker {
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Rq { .. } => "rq",
            Broker::BullMq { .. } => "bullmq",
        }
    }

    /// Brings the broker to `target`. `Ok(Some(words))` when its pause state was not the
    /// target's and was set now; `Ok(None)` when it already was (an expiry renewed or a
    /// concurrency moved is not a change of state).
    pub async fn apply(
        &mut self,
        c: &mut Conn,
        target: Target,
    ) -> Result<Option<String>, BrokerError> {
        match self {
            Broker::Rq { ttl_secs } => rq_apply(c, target.paused, *ttl_secs).await,
            Broker::BullMq {
                prefix,
                queue,
                seen,
            } => bullmq_apply(c, prefix, queue, seen, target).await,
        }
    }
}

async fn rq_apply(c: &mut Conn, paused: bool, ttl: u64) -> Result<Option<String>, BrokerError> {
    if paused {
        // `rq suspend --duration N` is SET then EXPIRE; one SET ... EX ... GET does both and
        // says whether the key was there.
        let before = c
            .call(&[
                b"SET",
                RQ_SUSPENDED.as_bytes(),
                b"1",
                b"EX",
                ttl.to_string().as_bytes(),
                b"GET",
            ])
            .await?;
        Ok(matches!(before, Value::Bulk(None))
            .then(|| format!("suspended RQ: set {RQ_SUSPENDED} (expires in {ttl} s, renewed)")))
    } else {
        match c.call(&[b"DEL", RQ_SUSPENDED.as_bytes()]).await? {
            Value::Int(0) => Ok(None),
            Value::Int(_) => Ok(Some(format!("resumed RQ: deleted {RQ_SUSPENDED}"))),
            _ => Err(BrokerError::Unexpected("DEL")),
        }
    }
}

async fn bullmq_apply(
    c: &mut Conn,
    prefix: &str,
    queue: &str,
    seen: &mut bool,
    target: Target,
) -> Result<Option<String>, BrokerError> {
    let key = |k: &str| format!("{prefix}:{queue}:{k}");
    let meta = key("meta");
    let exists = c
        .call(&[b"EXISTS", meta.as_bytes(), key("id").as_bytes()])
        .await?;
    let missing = matches!(exists, Value::Int(0));
    if missing && !*seen {
        return Err(BrokerError::QueueMissing {
            prefix: prefix.to_string(),
            queue: queue.to_string(),
        });
    }
    *seen = true;
    let paused = c
        .call(&[b"HGET", meta.as_bytes(), b"paused"])
        .await?
        .text()
        .is_some();
    // On a release the limit goes down before the flag goes up, so no worker ever sees the
    // queue open at more than the ramp's first step.
    if !target.paused {
        set_concurrency(c, &meta, queue, target.concurrency).await?;
    }
    let mut done = None;
    if paused != target.paused {
        // The keys and arguments of BullMQ's `pauseArgs`: wait/paused swap places with the
        // direction. A resume moves at most 7,000 jobs of a legacy paused list per call and
        // says how many remain; BullMQ calls it again until none does, and so do we.
        let (src, dst) = if target.paused {
            ("wait", "paused")
        } else {
            ("paused", "wait")
        };
        let keys = [
            key(src),
            key(dst),
            meta.clone(),
            key("prioritized"),
            key("events"),
            key("delayed"),
            key("marker"),
        ];
        let word = if target.paused { "paused" } else { "resumed" };
        let mut emit = "1";
        loop {
            let mut args: Vec<&[u8]> = vec![b"EVAL", BULLMQ_PAUSE.as_bytes(), b"7"];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            args.push(word.as_bytes());
            args.push(emit.as_bytes());
            let left = c.call(&args).await?;
            emit = "0";
            match left {
                Value::Int(n) if n > 0 && !target.paused => continue,
                Value::Int(_) => break,
                _ => return Err(BrokerError::Unexpected("the BullMQ pause script")),
            }
        }
        done = Some(if missing {
            format!("{word} BullMQ queue {prefix}:{queue} again (its keys were gone: flushed?)")
        } else {
            format!("{word} BullMQ queue {prefix}:{queue}")
        });
    }
    if target.paused {
        set_concurrency(c, &meta, queue, target.concurrency).await?;
    }
    Ok(done)
}

/// `queue.setGlobalConcurrency(n)`: the meta field `concurrency`, written only when it differs.
async fn set_concurrency(
    c: &mut Conn,
    meta: &str,
    queue: &str,
    concurrency: Option<u32>,
) -> Result<(), BrokerError> {
    let Some(n) = concurrency else {
        return Ok(());
    };
    let now = c
        .call(&[b"HGET", meta.as_bytes(), b"concurrency"])
        .await?
        .text();
    if now.as_deref() != Some(n.to_string().as_str()) {
        c.call(&[
            b"HSET",
            meta.as_bytes(),
            b"concurrency",
            n.to_string().as_bytes(),
        ])
        .await?;
        tracing::info!(queue = %queue, concurrency = n, "global concurrency set");
    }
    Ok(())
}
