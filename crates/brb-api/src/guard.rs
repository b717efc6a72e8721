//! Health-guarded release. A resume with a stepped ramp may carry guards: conditions on series
//! the control plane has (pushed samples or a Prometheus query), such as `db_load < 80`. The
//! release then advances one step only when its dwell has passed and every guard's last check
//! passed; it holds while a guard has no data; it pauses again when a guard fails
//! `failure_limit` checks in a row.
//!
//! Gates need nothing new for this: each guarded step is stored as a held ramp (the shape
//! [`Ramp::hold`] writes), which every SDK already evaluates. The control plane advances it by
//! writing the next step, so if the control plane stops, gates stay on the current step: a
//! guarded release never proceeds blind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ramp::{MAX_RAMP_SECS, Ramp, RampHeld, RampShape, RampSpec, parse_duration};

/// Most guards on one release.
pub const MAX_GUARDS: usize = 4;
/// Default seconds between checks (and the window a check averages over).
pub const DEFAULT_GUARD_INTERVAL_SECS: u64 = 10;
/// Default failing checks in a row that re-pause.
pub const DEFAULT_GUARD_FAILURE_LIMIT: u32 = 3;
/// Longest check interval.
pub const MAX_GUARD_INTERVAL_SECS: u64 = 300;
/// Largest failure limit.
pub const MAX_GUARD_FAILURE_LIMIT: u32 = 20;

/// A condition on one series, checked every `interval_secs` over the last `interval_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// A series name as `GET /api/v1/metrics/series` lists it (pushed, or a
    /// `[[prometheus.queries]]` name).
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9_:.-]+$")]
    pub series: String,
    /// The exact label set of the series; empty: the one series with that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A check passes only when the value is below this (strictly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// A check passes only when the value is above this (strictly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Seconds between checks, and the window each check averages over (1 to 300, default 10).
    #[serde(default = "default_interval", deserialize_with = "crate::ints::u64")]
    #[schema(minimum = 1, maximum = 300)]
    pub interval_secs: u64,
    /// Failing checks in a row that pause the switch again (1 to 20, default 3).
    #[serde(
        default = "default_failure_limit",
        deserialize_with = "crate::ints::u32"
    )]
    #[schema(minimum = 1, maximum = 20)]
    pub failure_limit: u32,
}

fn default_interval() -> u64 {
    DEFAULT_GUARD_INTERVAL_SECS
}

fn default_failure_limit() -> u32 {
    DEFAULT_GUARD_FAILURE_LIMIT
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardError {
    #[error(
        "cannot read guard {0:?}: expected e.g. 'db_load < 80', 'free_mb > 500' or \
         'db_load < 80, interval=10s, failures=3'"
    )]
    Syntax(String),
    #[error("guard series name {0:?} must be 1 to 100 of A-Z a-z 0-9 _ : . -")]
    Series(String),
    #[error("guard on {0}: needs a limit (below and/or above), finite numbers")]
    Limit(String),
    #[error("guard on {0}: above ({1}) must be smaller than below ({2})")]
    EmptyRange(String, f64, f64),
    #[error("guard on {0}: interval must be 1 to {MAX_GUARD_INTERVAL_SECS} seconds")]
    Interval(String),
    #[error("guard on {0}: failure limit must be 1 to {MAX_GUARD_FAILURE_LIMIT}")]
    FailureLimit(String),
    #[error("at most {MAX_GUARDS} guards per release")]
    TooMany,
    #[error("a guard needs a stepped ramp (e.g. steps:10m); a {0} ramp has no steps to hold")]
    NeedsSteps(&'static str),
    #[error("a guard needs a ramp: resume with e.g. --ramp steps:10m")]
    NeedsRamp,
}

impl GuardSpec {
    /// Reads the CLI and Slack form: `SERIES < LIMIT`, `SERIES > LIMIT` or `LOW < SERIES <
    /// HIGH`, optionally followed by `, interval=10s, failures=3`.
    pub fn parse(s: &str) -> Result<Self, GuardError> {
        let syntax = || GuardError::Syntax(s.to_string());
        let mut parts = s.split(',');
        let cond = parts.next().unwrap_or_default().trim();
        let num = |t: &str| t.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let pieces: Vec<&str> = cond.split('<').collect();
        let (series, below, above) = match pieces.as_slice() {
            [name, limit] if !cond.contains('>') => {
                (name.trim(), Some(num(limit).ok_or_else(syntax)?), None)
            }
            [low, name, high] => (
                name.trim(),
                Some(num(high).ok_or_else(syntax)?),
                Some(num(low).ok_or_else(syntax)?),
            ),
            [one] => match one.split('>').collect::<Vec<_>>().as_slice() {
                [name, limit] => (name.trim(), None, Some(num(limit).ok_or_else(syntax)?)),
                _ => return Err(syntax()),
            },
            _ => return Err(syntax()),
        };
        let mut spec = GuardSpec {
            series: series.to_string(),
            labels: BTreeMap::new(),
            below,
            above,
            interval_secs: DEFAULT_GUARD_INTERVAL_SECS,
            failure_limit: DEFAULT_GUARD_FAILURE_LIMIT,
        };
        for opt in parts {
            let (k, v) = opt.split_once('=').ok_or_else(syntax)?;
            match k.trim() {
                "interval" => spec.interval_secs = parse_duration(v).ok_or_else(syntax)?,
                "failures" => spec.failure_limit = v.trim().parse().map_err(|_| syntax())?,
                _ => return Err(syntax()),
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), GuardError> {
        let name_ok = !self.series.is_empty()
            && self.series.len() <= crate::MAX_SERIES_NAME
            && self
                .series
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_:.-".contains(c));
        if !name_ok {
            return Err(GuardError::Series(self.series.clone()));
        }
        let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
        if (self.below.is_none() && self.above.is_none())
            || !finite(self.below)
            || !finite(self.above)
        {
            return Err(GuardError::Limit(self.series.clone()));
        }
        if let (Some(b), Some(a)) = (self.below, self.above)
            && a >= b
        {
            return Err(GuardError::EmptyRange(self.series.clone(), a, b));
        }
        if self.interval_secs == 0 || self.interval_secs > MAX_GUARD_INTERVAL_SECS {
            return Err(GuardError::Interval(self.series.clone()));
        }
        if self.failure_limit == 0 || self.failure_limit > MAX_GUARD_FAILURE_LIMIT {
            return Err(GuardError::FailureLimit(self.series.clone()));
        }
        Ok(())
    }

    /// Whether a measured value passes.
    pub fn passes(&self, value: f64) -> bool {
        self.below.is_none_or(|b| value < b) && self.above.is_none_or(|a| value > a)
    }

    /// The limit a failing value crossed, for messages: `80` for `db_load < 80`.
    pub fn limit_crossed(&self, value: f64) -> Option<f64> {
        match (self.below, self.above) {
            (Some(b), _) if value >= b => Some(b),
            (_, Some(a)) if value <= a => Some(a),
            _ => None,
        }
    }
}

impl std::fmt::Display for GuardSpec {
    /// The condition as the CLI takes it: `db_load < 80`, `5 < free < 90`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut name = self.series.clone();
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            name = format!("{name}{{{}}}", l.join(","));
        }
        match (self.above, self.below) {
            (Some(a), Some(b)) => write!(f, "{a} < {name} < {b}"),
            (None, Some(b)) => write!(f, "{name} < {b}"),
            (Some(a), None) => write!(f, "{name} > {a}"),
            (None, None) => f.write_str(&name),
        }
    }
}

/// Checks a release's guards: how many, each valid, and that the ramp is stepped.
pub fn validate_guards(guards: &[GuardSpec], ramp: Option<&RampSpec>) -> Result<(), GuardError> {
    if guards.is_empty() {
        return Ok(());
    }
    if guards.len() > MAX_GUARDS {
        return Err(GuardError::TooMany);
    }
    for g in guards {
        g.validate()?;
    }
    match ramp.map(|r| &r.shape) {
        None => Err(GuardError::NeedsRamp),
        Some(RampShape::Linear { .. }) => Err(GuardError::NeedsSteps("linear")),
        Some(RampShape::Steps { .. }) => Ok(()),
    }
}

/// A guarded release in progress, carried by its ramp ([`Ramp::guard`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RampGuard {
    pub guards: Vec<GuardSpec>,
    /// The release's fractions, the last one 1.
    pub steps: Vec<f64>,
    /// Index into `steps` of the fraction admitted now.
    pub step: u32,
    /// Least time on each step; on the last one (100%), how long the guards keep watching
    /// before the release ends.
    pub step_secs: u64,
    pub step_started_at: DateTime<Utc>,
}

impl RampGuard {
    pub fn fraction(&self) -> f64 {
        self.steps.get(self.step as usize).copied().unwrap_or(1.0)
    }

    pub fn is_last_step(&self) -> bool {
        self.step as usize + 1 >= self.steps.len()
    }
}

impl Ramp {
    /// The first step of a guarded release: step 0 held until the control plane sees the
    /// guards pass. A release that does not end at 100% gets a last step of 100%, so a
    /// guarded release always ends fully released.
    pub fn guarded(
        spec: &RampSpec,
        guards: Vec<GuardSpec>,
        now: DateTime<Utc>,
    ) -> Result<Ramp, GuardError> {
        let RampShape::Steps { fractions } = &spec.shape else {
            return Err(GuardError::NeedsSteps("linear"));
        };
        let mut steps = fractions.clone();
        if steps.last().is_some_and(|l| *l < 1.0) {
            steps.push(1.0);
        }
        let step_secs = (spec.duration_secs / (fractions.len().max(2) as u64 - 1)).max(1);
        Ok(Ramp::guarded_step(
            RampGuard {
                guards,
                steps,
                step: 0,
                step_secs,
                step_started_at: now,
            },
            now,
        ))
    }

    /// The ramp gates evaluate for `guard`'s current step: a hold at its fraction.
    pub fn guarded_step(mut guard: RampGuard, now: DateTime<Utc>) -> Ramp {
        guard.step_started_at = now;
        let k = guard.step as usize;
        let fraction = guard.fraction();
        let rest: Vec<f64> = match guard.steps.get(k..) {
            Some(r) if r.len() >= 2 => r.to_vec(),
            _ => vec![fraction, 1.0],
        };
        let steps_left = guard.steps.len().saturating_sub(k + 1) as u64;
        Ramp {
            started_at: now,
            duration_secs: MAX_RAMP_SECS,
            shape: RampShape::Steps {
                fractions: vec![fraction, 1.0],
            },
            held: Some(RampHeld {
                fraction,
                since: now,
                remaining_secs: (guard.step_secs * steps_left).clamp(1, MAX_RAMP_SECS),
                then: RampShape::Steps { fractions: rest },
            }),
            guard: Some(Box::new(guard)),
        }
    }

    /// The next step of a guarded release, or `None` when it is on its last step (the
    /// release ends) or not guarded.
    pub fn next_guarded_step(&self, now: DateTime<Utc>) -> Option<Ramp> {
        let g = self.guard.as_ref()?;
        if g.is_last_step() {
            return None;
        }
        let mut next = (**g).clone();
        next.step += 1;
        Some(Ramp::guarded_step(next, now))
    }
}

/// What a guarded release is doing, as `GET /api/v1/switches/{name}/guard` and the `guard`
/// event tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardPhase {
    /// Every guard passes: the next step comes when the dwell ends.
    Advancing,
    /// A guard has no data or failed (below its limit of failures): the step holds.
    Holding,
    /// A guard failed too often: the switch was paused again.
    Tripped,
    /// The release reached 100% and the guards kept passing: done.
    Finished,
}

/// The last check of one guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardOutcome {
    /// Not checked yet on this step.
    Pending,
    Pass,
    Fail,
    /// No point in the window, or the series is missing or ambiguous.
    NoData,
}

/// One guard's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuardCheck {
    pub guard: GuardSpec,
    /// The condition as text, e.g. `db_load < 80`.
    pub condition: String,
    pub outcome: GuardOutcome,
    /// The last measured value (mean over the window), when there was one.
    pub value: Option<f64>,
    /// Failing checks in a row (a pass resets; no data neither counts nor resets).
    pub consecutive_failures: u32,
    /// Why there is no data, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
}

/// Data of `GET /api/v1/switches/{name}/guard` and of the `guard` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuardStatus {
    pub switch: String,
    /// The switch version this status is about.
    pub version: u64,
    pub phase: GuardPhase,
    /// 1-based step admitted now, of `steps`.
    pub step: u32,
    pub steps: u32,
    pub fraction: f64,
    /// When this step's dwell ends (the earliest the next step can come).
    pub dwell_ends_at: DateTime<Utc>,
    /// Why the release holds or was paused, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checks: Vec<GuardCheck>,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn parses_the_cli_form() {
        let g = GuardSpec::parse("db_load < 80").unwrap();
        assert_eq!(
            (g.series.as_str(), g.below, g.above),
            ("db_load", Some(80.0), None)
        );
        assert_eq!((g.interval_secs, g.failure_limit), (10, 3));
        assert_eq!(g.to_string(), "db_load < 80");
        let g = GuardSpec::parse("free_mb>512.5, interval=30s, failures=5").unwrap();
        assert_eq!((g.below, g.above), (None, Some(512.5)));
        assert_eq!((g.interval_secs, g.failure_limit), (30, 5));
        assert_eq!(g.to_string(), "free_mb > 512.5");
        let g = GuardSpec::parse("0.1 < ratio < 0.8").unwrap();
        assert_eq!((g.below, g.above), (Some(0.8), Some(0.1)));
        assert_eq!(g.to_string(), "0.1 < ratio < 0.8");
        assert!(g.passes(0.5) && !g.passes(0.8) && !g.passes(0.1));
    }

    #[test]
    fn refuses_bad_guards_with_what_is_wrong() {
        for bad in [
            "db_load",
            "db_load < x",
            "< 80",
            "db_load = 80",
            "a < b < c",
            "x < 1, nope=2",
        ] {
            let e = GuardSpec::parse(bad).unwrap_err();
            assert!(
                matches!(e, GuardError::Syntax(_) | GuardError::Series(_)),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            GuardSpec::parse("9 < x < 1").unwrap_err(),
            GuardError::EmptyRange("x".into(), 9.0, 1.0)
        );
        assert!(matches!(
            GuardSpec::parse("x < 1, interval=0s").unwrap_err(),
            GuardError::Interval(_)
        ));
        assert!(matches!(
            GuardSpec::parse("x < 1, failures=0").unwrap_err(),
            GuardError::FailureLimit(_)
        ));
        assert!(matches!(
            GuardSpec::parse("x y < 1").unwrap_err(),
            GuardError::Series(_)
        ));
        let g = GuardSpec::parse("x < 1").unwrap();
        let linear = RampSpec::parse("linear:5m").unwrap();
        let e = validate_guards(std::slice::from_ref(&g), Some(&linear)).unwrap_err();
        assert!(e.to_string().contains("stepped ramp"), "{e}");
        assert_eq!(
            validate_guards(std::slice::from_ref(&g), None),
            Err(GuardError::NeedsRamp)
        );
        assert_eq!(
            validate_guards(
                &vec![g.clone(); 5],
                Some(&RampSpec::parse("steps:5m").unwrap())
            ),
            Err(GuardError::TooMany)
        );
    }

    #[test]
    fn a_guarded_step_is_a_hold_every_gate_understands() {
        let spec = RampSpec::parse("steps:9m").unwrap();
        let g = GuardSpec::parse("db_load < 80").unwrap();
        let r = Ramp::guarded(&spec, vec![g], t0()).unwrap();
        let guard = r.guard.clone().unwrap();
        assert_eq!(guard.step_secs, 180);
        assert_eq!(guard.steps, vec![0.1, 0.25, 0.5, 1.0]);
        // A gate that knows nothing of guards stays on the first step for a day.
        let later = t0() + chrono::Duration::seconds(3600);
        assert_eq!(r.fraction_at(later), 0.1);
        let json = serde_json::to_string(&r).unwrap();
        let back: Ramp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let s1 = r.next_guarded_step(later).unwrap();
        assert_eq!(s1.fraction_at(later), 0.25);
        assert_eq!(s1.guard.as_ref().unwrap().step_started_at, later);
        let s3 = s1
            .next_guarded_step(later)
            .unwrap()
            .next_guarded_step(later)
            .unwrap();
        assert_eq!(s3.fraction_at(later), 1.0);
        assert!(
            s3.next_guarded_step(later).is_none(),
            "the last step ends the release"
        );
        // An ordinary ramp is not guarded.
        assert!(spec.start(t0()).next_guarded_step(later).is_none());
        assert!(
            !json.is_empty()
                && !serde_json::to_string(&RampSpec::parse("steps:1m").unwrap().start(t0()))
                    .unwrap()
                    .contains("guard")
        );
    }
}
