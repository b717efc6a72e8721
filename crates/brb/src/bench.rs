//! `brb bench`: runs the benchmark (crate `brb-bench`), prints the table, writes the files.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

pub async fn run(args: brb_bench::BenchArgs) -> Result<ExitCode> {
    if args.soak_mins.is_some() {
        return soak(args).await;
    }
    let report = brb_bench::run(args.clone())
        .await
        .context("running the benchmark")?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `brb bench --soak-mins N`: fails (exit 1) when a series grows or the log has an
/// unexplained warning.
async fn soak(args: brb_bench::BenchArgs) -> Result<ExitCode> {
    let report = brb_bench::soak(args.clone())
        .await
        .context("running the soak")?;
    let md = report.markdown();
    print!("{md}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The hidden `brb bench-child`: watchers or readers for a running `brb bench`.
pub async fn child() -> Result<ExitCode> {
    brb_bench::child_main().await.context("bench child")?;
    Ok(ExitCode::SUCCESS)
}
