//! `brb adapter rq|bullmq`: keeps a job system's own pause state equal to a switch. Parses
//! flags and hands over to `brb-adapter`.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use brb_adapter::{AdapterConfig, Broker, RedisUrl, Timing};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum AdapterCmd {
    /// RQ: `rq suspend`/`rq resume` on a Redis database (the key `rq:suspended`, with an
    /// expiry the adapter renews while paused).
    Rq {
        #[command(flatten)]
        common: Common,
        /// The expiry of `rq:suspended`, renewed at every re-apply: if the adapter dies, RQ
        /// resumes by itself after this long rather than staying suspended with nobody to
        /// release it. Must be longer than --reapply-secs.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        suspend_ttl_secs: u64,
    },
    /// BullMQ: the queue's global pause (as `queue.pause()`/`resume()`), and a ramp through
    /// its global concurrency (as `queue.setGlobalConcurrency(n)`) when --max-concurrency says
    /// what full speed is.
    Bullmq {
        #[command(flatten)]
        common: Common,
        /// The queue's name.
        #[arg(long)]
        queue: String,
        /// BullMQ's key prefix.
        #[arg(long, default_value = "bull")]
        prefix: String,
        /// The queue's normal global concurrency: after a release with a ramp, the adapter
        /// sets the queue's global concurrency to this share of it, step by step. Without
        /// it, the adapter never touches the queue's concurrency.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_concurrency: Option<u32>,
    },
}

#[derive(Args)]
pub struct Common {
    /// The broker: redis://[user:password@]host[:port][/db]. A password is better put in
    /// BRB_ADAPTER_REDIS than on the command line.
    #[arg(long, env = "BRB_ADAPTER_REDIS", value_name = "URL")]
    redis: String,
    /// The switch to follow.
    #[arg(long, default_value = brb_api::PRIMARY_SWITCH)]
    switch: String,
    /// Re-apply the switch's state this often even when nothing changed (a broker restarted
    /// or flushed gets its pause back within this time).
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    reapply_secs: u64,
    /// How the adapter reports itself (default: adapter-KIND-HOST:PORT/DB[-PREFIX:QUEUE]).
    #[arg(long)]
    id: Option<String>,
}

pub async fn run(client: brb_client::Client, cmd: AdapterCmd) -> Result<()> {
    super::server::init_tracing(brb_server::config::LogFormat::Human);
    let (common, broker, max_concurrency) = match cmd {
        AdapterCmd::Rq {
            common,
            suspend_ttl_secs,
        } => {
            if suspend_ttl_secs <= common.reapply_secs {
                bail!(
                    "--suspend-ttl-secs ({suspend_ttl_secs}) must be longer than --reapply-secs \
                     ({}), or the suspension would lapse between renewals",
                    common.reapply_secs
                );
            }
            (
                common,
                Broker::Rq {
                    ttl_secs: suspend_ttl_secs,
                },
                None,
            )
        }
        AdapterCmd::Bullmq {
            common,
            queue,
            prefix,
            max_concurrency,
        } => {
            if queue.is_empty() || queue.contains(':') {
                bail!("--queue must be a BullMQ queue name (not empty, no ':')");
            }
            (
                common,
                Broker::BullMq {
                    prefix,
                    queue,
                    seen: false,
                },
                max_concurrency,
            )
        }
    };
    let redis = RedisUrl::parse(&common.redis).context("--redis")?;
    let id = common
        .id
        .unwrap_or_else(|| AdapterConfig::default_id(&redis, &broker));
    if id.is_empty() || id.chars().count() > brb_api::MAX_WORKER_ID {
        bail!("--id must be 1 to {} characters", brb_api::MAX_WORKER_ID);
    }
    let cfg = AdapterConfig {
        client,
        switch: common.switch,
        redis,
        broker,
        timing: Timing {
            reapply: Duration::from_secs(common.reapply_secs),
            ..Timing::default()
        },
        max_concurrency,
        id,
    };
    tokio::select! {
        () = brb_adapter::run(cfg) => Ok(()),
        () = super::server::shutdown_signal() => Ok(()),
    }
}
