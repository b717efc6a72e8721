//! The soak (`brb bench --soak-mins N`, `make soak`): what it samples, how a series is judged
//! flat, and which log lines are explained. Pure code; the run itself is in `run/soak.rs`.
//!
//! A leak shows as a slope, not as a level: so each series (server RSS, open files, threads,
//! the runtime's live tasks, the watcher process's RSS) gets an ordinary least-squares slope
//! and a Theil–Sen slope (the median of all pairwise slopes: one allocator step or GC-like
//! jump moves it little), per hour, after a warm-up. The verdict uses Theil–Sen.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One sample, taken every `--soak-sample-secs` (60 by default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakSample {
    /// Minutes since the workload started.
    pub t_min: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// `brb_runtime_alive_tasks` from the server's `/metrics`.
    pub alive_tasks: u64,
    /// The watcher process (2,000 SDK gates).
    pub watcher_rss_kib: u64,
    pub toggles: u64,
    pub reads: u64,
}

/// One series, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slope {
    pub metric: String,
    pub start: f64,
    pub end: f64,
    pub mean: f64,
    pub ols_per_h: f64,
    pub theil_sen_per_h: f64,
    /// Largest Theil–Sen slope per hour that passes.
    pub limit_per_h: f64,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    pub started_at: String,
    pub command: String,
    pub build: String,
    pub load_before: String,
    pub load_after: String,
    pub minutes: f64,
    pub watchers: usize,
    /// Samples before this many minutes are warm-up (allocator arenas, caches) and not judged.
    pub warmup_min: f64,
    pub samples: Vec<SoakSample>,
    pub slopes: Vec<Slope>,
    pub toggles: u64,
    pub toggle_errors: u64,
    pub reads: u64,
    pub read_errors: u64,
    /// Gates that had not learned the final state at the end (should be 0).
    pub gates_behind: usize,
    /// WARN/ERROR lines in the server log that the allowlist explains, by reason.
    pub explained: Vec<(String, usize)>,
    /// Lines it does not explain: each one fails the soak.
    pub unexplained: Vec<String>,
    pub passed: bool,
}

/// Ordinary least-squares slope of `ys` over `xs` (0 with fewer than two distinct xs).
pub fn ols(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return 0.0;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for i in 0..n {
        sxy += (xs[i] - mx) * (ys[i] - my);
        sxx += (xs[i] - mx) * (xs[i] - mx);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Theil–Sen slope: the median of the slopes between every pair of points with distinct xs
/// (0 when there is no such pair).
pub fn theil_sen(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    let mut slopes = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let dx = xs[j] - xs[i];
            if dx != 0.0 {
                slopes.push((ys[j] - ys[i]) / dx);
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_by(f64::total_cmp);
    let m = slopes.len() / 2;
    if slopes.len() % 2 == 1 {
        slopes[m]
    } else {
        (slopes[m - 1] + slopes[m]) / 2.0
    }
}

/// Judges one series (`t` in minutes): slopes per hour; it passes when the Theil–Sen slope is
/// at most `max(relative × mean, absolute)` per hour.
pub fn judge(metric: &str, t_min: &[f64], ys: &[f64], relative: f64, absolute: f64) -> Slope {
    let hours: Vec<f64> = t_min.iter().map(|m| m / 60.0).collect();
    let mean = if ys.is_empty() {
        0.0
    } else {
        ys.iter().sum::<f64>() / ys.len() as f64
    };
    let ts = theil_sen(&hours, ys);
    let limit = (relative * mean).max(absolute);
    Slope {
        metric: metric.into(),
        start: ys.first().copied().unwrap_or(0.0),
        end: ys.last().copied().unwrap_or(0.0),
        mean,
        ols_per_h: ols(&hours, ys),
        theil_sen_per_h: ts,
        limit_per_h: limit,
        passed: ts <= limit,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("soak log allowlist, line {line}: {message}")]
pub struct AllowlistError {
    pub line: usize,
    pub message: String,
}

/// WARN/ERROR log lines the soak expects, each with why (`crates/brb-bench/soak-log-allow.txt`:
/// `regex ## reason` per line; `#` starts a comment line).
pub struct Allowlist {
    rules: Vec<(regex::Regex, String)>,
}

impl Allowlist {
    pub fn parse(text: &str) -> Result<Allowlist, AllowlistError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |message: String| AllowlistError {
                line: i + 1,
                message,
            };
            let (pattern, reason) = l
                .split_once(" ## ")
                .ok_or_else(|| err("expected `regex ## reason`".into()))?;
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(err("a pattern needs its reason".into()));
            }
            let re = regex::Regex::new(pattern.trim()).map_err(|e| err(e.to_string()))?;
            rules.push((re, reason.to_string()));
        }
        Ok(Allowlist { rules })
    }

    /// The reason that explains `line`, if one does.
    pub fn explain(&self, line: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(re, _)| re.is_match(line))
            .map(|(_, why)| why.as_str())
    }

    /// Sorts the WARN/ERROR lines of `log` into explained (count per reason) and not.
    pub fn check<'a>(&self, log: &'a str) -> (Vec<(String, usize)>, Vec<&'a str>) {
        let mut explained: Vec<(String, usize)> = Vec::new();
        let mut unexplained = Vec::new();
        for l in log.lines().filter(|l| is_warn_or_error(l)) {
            match self.explain(l) {
                Some(why) => match explained.iter_mut().find(|(w, _)| w == why) {
                    Some((_, n)) => *n += 1,
                    None => explained.push((why.to_string(), 1)),
                },
                None => unexplained.push(l),
            }
        }
        (explained, unexplained)
    }
}

/// A tracing line at WARN or ERROR (the level is a word of its own after the timestamp).
fn is_warn_or_error(line: &str) -> bool {
    line.split_whitespace()
        .take(3)
        .any(|w| w.contains("WARN") || w.contains("ERROR"))
}

impl SoakReport {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Soak {} · `{}` · {} build · {:.0} min, {} gates (reports and samples on) · load {} → {}\n",
            self.started_at,
            self.command,
            self.build,
            self.minutes,
            self.watchers,
            self.load_before,
            self.load_after
        );
        let _ = writeln!(
            out,
            "| metric | start | end | OLS / h | Theil–Sen / h | limit / h | verdict |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
        for s in &self.slopes {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:+.1} | {:+.1} | {:.1} | {} |",
                s.metric,
                s.start,
                s.end,
                s.ols_per_h,
                s.theil_sen_per_h,
                s.limit_per_h,
                if s.passed { "flat" } else { "**growing**" }
            );
        }
        let _ = writeln!(
            out,
            "\nSlopes from minute {:.0} on (warm-up before). {} toggles ({} errors), {} reads \
             ({} errors), {} gates behind at the end.",
            self.warmup_min,
            self.toggles,
            self.toggle_errors,
            self.reads,
            self.read_errors,
            self.gates_behind
        );
        let _ = writeln!(out, "\nServer log, WARN and ERROR lines:\n");
        if self.explained.is_empty() && self.unexplained.is_empty() {
            let _ = writeln!(out, "- none");
        }
        for (why, n) in &self.explained {
            let _ = writeln!(out, "- {n} × explained: {why}");
        }
        for l in &self.unexplained {
            let _ = writeln!(out, "- **unexplained**: `{l}`");
        }
        let _ = writeln!(
            out,
            "\nVerdict: {}",
            if self.passed { "passed" } else { "**failed**" }
        );
        let _ = writeln!(
            out,
            "\n| minute | RSS KiB | open files | threads | tasks | watcher RSS KiB |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
        for s in &self.samples {
            let _ = writeln!(
                out,
                "| {:.1} | {} | {} | {} | {} | {} |",
                s.t_min, s.rss_kib, s.fds, s.threads, s.alive_tasks, s.watcher_rss_kib
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_of_a_line_are_its_slope() {
        let xs = [0.0, 1.0, 2.0, 3.0, 4.0];
        let ys: Vec<f64> = xs.iter().map(|x| 3.0 * x + 7.0).collect();
        assert!((ols(&xs, &ys) - 3.0).abs() < 1e-9);
        assert!((theil_sen(&xs, &ys) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn theil_sen_ignores_one_step_that_ols_follows() {
        // Flat at 100 with one outlier at the end (an allocator step): OLS tilts, the median
        // of pairwise slopes stays 0.
        let xs: Vec<f64> = (0..11).map(f64::from).collect();
        let mut ys = vec![100.0; 11];
        ys[10] = 200.0;
        assert_eq!(theil_sen(&xs, &ys), 0.0);
        assert!(ols(&xs, &ys) > 3.0);
    }

    #[test]
    fn theil_sen_takes_the_middle_of_an_even_count() {
        // Pairs: (0,1) slope 1, (0,2) slope 2, (1,2) slope 3: median 2. Four points: six
        // slopes, the mean of the middle two.
        assert_eq!(theil_sen(&[0.0, 1.0, 2.0], &[0.0, 1.0, 4.0]), 2.0);
        let s = theil_sen(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 4.0, 9.0]);
        // slopes 1, 2, 3, 3, 4, 5 → (3 + 3) / 2
        assert_eq!(s, 3.0);
    }

    #[test]
    fn degenerate_series_have_no_slope() {
        assert_eq!(ols(&[], &[]), 0.0);
        assert_eq!(theil_sen(&[1.0], &[5.0]), 0.0);
        assert_eq!(ols(&[2.0, 2.0], &[1.0, 9.0]), 0.0);
        assert_eq!(theil_sen(&[2.0, 2.0], &[1.0, 9.0]), 0.0);
    }

    #[test]
    fn judge_works_per_hour_against_the_larger_limit() {
        // Minutes 0..=30, +1 per minute: 60 per hour.
        let t: Vec<f64> = (0..=30).map(f64::from).collect();
        let y: Vec<f64> = t.iter().map(|m| 1000.0 + m).collect();
        let s = judge("fds", &t, &y, 0.01, 16.0);
        assert!((s.theil_sen_per_h - 60.0).abs() < 1e-9);
        assert_eq!(s.limit_per_h, 16.0);
        assert!(!s.passed);
        // 2 % of a mean near 1015 is 20.3: still below 60.
        assert!(!judge("fds", &t, &y, 0.02, 16.0).passed);
        // 10 % of the mean is above it.
        assert!(judge("fds", &t, &y, 0.10, 16.0).passed);
        let flat = judge("threads", &t, &vec![9.0; t.len()], 0.01, 16.0);
        assert!(flat.passed);
        assert_eq!(flat.theil_sen_per_h, 0.0);
    }

    #[test]
    fn the_allowlist_explains_matching_warnings_and_nothing_else() {
        let allow = Allowlist::parse(
            "# comment\n\
             \n\
             accept failed.*Too many open files ## the storm reaches the file limit\n\
             event stream refused ## a token revoked on purpose\n",
        )
        .unwrap();
        let log = "2026-11-30T22:00:00Z  WARN brb_server::net: accept failed error=Too many open files (os error 24)\n\
                   2026-11-30T22:00:01Z  INFO brb_server: listening on http://127.0.0.1:1\n\
                   2026-11-30T22:00:02Z ERROR brb_server::store: disk I/O error\n\
                   2026-11-30T22:00:03Z  WARN brb_server::net: accept failed error=Too many open files (os error 24)\n";
        let (explained, unexplained) = allow.check(log);
        assert_eq!(
            explained,
            vec![("the storm reaches the file limit".to_string(), 2)]
        );
        // The INFO line is not judged; the ERROR line is not explained.
        assert_eq!(unexplained.len(), 1);
        assert!(unexplained[0].contains("disk I/O error"));
        assert_eq!(
            allow.explain("WARN event stream refused"),
            Some("a token revoked on purpose")
        );
    }

    #[test]
    fn an_allowlist_rule_needs_a_valid_pattern_and_a_reason() {
        let e = Allowlist::parse("ok ## fine\nno reason here\n")
            .err()
            .unwrap();
        assert_eq!(e.line, 2);
        let e = Allowlist::parse("x ##  \n").err().unwrap();
        assert!(e.message.contains("reason"), "{}", e.message);
        let e = Allowlist::parse("(unclosed ## why\n").err().unwrap();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn the_shipped_allowlist_parses() {
        Allowlist::parse(include_str!("../soak-log-allow.txt")).unwrap();
    }
}
