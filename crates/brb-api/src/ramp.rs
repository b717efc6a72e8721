//! Gradual release. A resume may carry a ramp: the fraction of normal work admitted grows from
//! a small start to 100% over a duration, so a fleet released after a pause does not hit the
//! database with the whole backlog at once.
//!
//! The ramp is part of the switch state (with the instant it started), and every gate computes
//! the current fraction locally with [`Ramp::fraction_at`]: no extra round trips, and every
//! gate agrees because they all evaluate the same pure function of the same data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest ramp accepted: a day.
pub const MAX_RAMP_SECS: u64 = 86_400;
/// Most steps in a stepped ramp.
pub const MAX_RAMP_STEPS: usize = 20;

/// The shape of a ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RampShape {
    /// From `from` (e.g. 0.05) straight up to 1.0 at the end.
    Linear {
        #[schema(exclusive_minimum = 0, maximum = 1)]
        from: f64,
    },
    /// Holds each fraction for an equal share of the duration; the last one is reached at the
    /// end (e.g. `[0.1, 0.25, 0.5, 1.0]` over 9 minutes: 10% at 0, 25% at 3 min, 50% at 6 min,
    /// 100% at 9 min).
    Steps {
        /// 2 to 20 fractions in (0, 1], none smaller than the one before.
        #[schema(schema_with = step_fractions_schema)]
        fractions: Vec<f64>,
    },
}

/// 2 to 20 fractions, each in (0, 1]. That they must not decrease is not expressible here; the
/// server says so with 422.
fn step_fractions_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0.0))
                .maximum(Some(1.0)),
        )
        .min_items(Some(2))
        .max_items(Some(MAX_RAMP_STEPS))
        .build()
}

/// What a resume request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RampSpec {
    /// 1 to 86400 (a day).
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(deserialize_with = "crate::ints::u64")]
    pub duration_secs: u64,
    #[serde(flatten)]
    pub shape: RampShape,
}

/// A ramp in progress, as carried by the switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ramp {
    pub started_at: DateTime<Utc>,
    pub duration_secs: u64,
    #[serde(flatten)]
    pub shape: RampShape,
    /// Set while the release is held ([`Ramp::hold`]). The shape above then keeps the held
    /// fraction for up to [`MAX_RAMP_SECS`], so every gate (in every SDK) computes the held
    /// fraction from `started_at`, `duration_secs` and the shape alone; this field says it is a
    /// hold and what the release continues with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<RampHeld>,
    /// Set on a health-guarded release (`crate::RampGuard`): the ramp is then the hold of
    /// its current step, and the control plane writes the next step when the guards allow.
    /// Gates ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Box<crate::guard::RampGuard>>,
}

/// A held release: the fraction it was held at and the rest of the plan, to continue with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RampHeld {
    /// The admitted fraction, frozen.
    pub fraction: f64,
    pub since: DateTime<Utc>,
    /// What was left of the release when it was held: continued from `fraction` over this.
    pub remaining_secs: u64,
    /// The rest of the plan, starting at `fraction`.
    pub then: RampShape,
}

/// What can be done to a release in progress (`POST /api/v1/switches/{name}/ramp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RampAction {
    /// Freeze the admitted fraction where it is (for at most a day).
    Hold,
    /// Continue a held release from the held fraction over what was left of it.
    Continue,
    /// Lengthen the rest of the release by `by_secs` (a held release continues, slower).
    Extend,
    /// Stop the release: back to paused. Never to running: an abort is pressed because the
    /// release is hurting, and releasing everything at once would hurt more.
    Abort,
}

impl RampAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RampAction::Hold => "hold",
            RampAction::Continue => "continue",
            RampAction::Extend => "extend",
            RampAction::Abort => "abort",
        }
    }
}

impl std::fmt::Display for RampAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RampError {
    #[error("ramp duration must be between 1 and {MAX_RAMP_SECS} seconds")]
    Duration,
    #[error("ramp fractions must be numbers in (0, 1]")]
    Fraction,
    #[error("ramp steps must not decrease")]
    Decreasing,
    #[error("a stepped ramp needs 2 to {MAX_RAMP_STEPS} steps")]
    StepCount,
    #[error("unknown ramp preset {0:?}: expected steps or linear")]
    Preset(String),
    #[error("cannot read ramp {0:?}: expected e.g. steps:10m, linear:5m or linear:90s")]
    Syntax(String),
    #[error("extending by {by_secs} s would make the release longer than {MAX_RAMP_SECS} s")]
    TooLong { by_secs: u64 },
}

impl RampSpec {
    /// The presets offered by the CLI and the UI: `steps` (10% → 25% → 50% → 100%) and
    /// `linear` (5% → 100%).
    pub fn preset(name: &str, duration_secs: u64) -> Result<Self, RampError> {
        let shape = match name {
            "steps" => RampShape::Steps {
                fractions: vec![0.1, 0.25, 0.5, 1.0],
            },
            "linear" => RampShape::Linear { from: 0.05 },
            other => return Err(RampError::Preset(other.to_string())),
        };
        let spec = RampSpec {
            duration_secs,
            shape,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The release that quick paths (Slack's plain `resume`, the tray) and the console's
    /// resume dialog default to: 10% → 25% → 50% → 100% over ten minutes.
    pub fn default_release() -> Self {
        RampSpec {
            duration_secs: 600,
            shape: RampShape::Steps {
                fractions: vec![0.1, 0.25, 0.5, 1.0],
            },
        }
    }

    /// Parses `PRESET:DURATION` with a duration like `90s`, `10m` or `1h`.
    pub fn parse(s: &str) -> Result<Self, RampError> {
        let (name, dur) = s
            .split_once(':')
            .ok_or_else(|| RampError::Syntax(s.to_string()))?;
        let secs = parse_duration(dur).ok_or_else(|| RampError::Syntax(s.to_string()))?;
        Self::preset(name, secs)
    }

    pub fn validate(&self) -> Result<(), RampError> {
        if self.duration_secs == 0 || self.duration_secs > MAX_RAMP_SECS {
            return Err(RampError::Duration);
        }
        let ok = |f: f64| f.is_finite() && f > 0.0 && f <= 1.0;
        match &self.shape {
            RampShape::Linear { from } => {
                if !ok(*from) {
                    return Err(RampError::Fraction);
                }
            }
            RampShape::Steps { fractions } => {
                if fractions.len() < 2 || fractions.len() > MAX_RAMP_STEPS {
                    return Err(RampError::StepCount);
                }
                if !fractions.iter().all(|f| ok(*f)) {
                    return Err(RampError::Fraction);
                }
                if fractions.windows(2).any(|w| w[1] < w[0]) {
                    return Err(RampError::Decreasing);
                }
            }
        }
        Ok(())
    }

    pub fn start(self, at: DateTime<Utc>) -> Ramp {
        Ramp {
            started_at: at,
            duration_secs: self.duration_secs,
            shape: self.shape,
            held: None,
            guard: None,
        }
    }
}

/// Parses `90s`, `10m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86_400),
        c if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Ramp {
    /// The fraction of normal work admitted at `now`: in (0, 1], and exactly 1 once the ramp
    /// is over. Before the start (clock skew between a gate and the server) it is the first
    /// fraction.
    pub fn fraction_at(&self, now: DateTime<Utc>) -> f64 {
        let elapsed = (now - self.started_at).num_milliseconds().max(0) as f64 / 1000.0;
        let total = self.duration_secs.max(1) as f64;
        if elapsed >= total {
            return 1.0;
        }
        let f = match &self.shape {
            RampShape::Linear { from } => from + (1.0 - from) * (elapsed / total),
            RampShape::Steps { fractions } => {
                let n = fractions.len();
                if n < 2 {
                    return 1.0;
                }
                let step = total / (n - 1) as f64;
                let i = ((elapsed / step).floor() as usize).min(n - 1);
                fractions[i]
            }
        };
        f.clamp(0.0, 1.0)
    }

    pub fn ends_at(&self) -> DateTime<Utc> {
        self.started_at + chrono::Duration::seconds(self.duration_secs as i64)
    }

    pub fn is_over(&self, now: DateTime<Utc>) -> bool {
        now >= self.ends_at()
    }

    /// Whole seconds left at `now` (at least 1, so a plan rebased on it is a valid ramp).
    fn secs_left(&self, now: DateTime<Utc>) -> u64 {
        let ms = (self.ends_at() - now).num_milliseconds().max(0) as u64;
        ms.div_ceil(1000).max(1)
    }

    /// The rest of the plan as a shape that starts at the fraction admitted at `now`, and
    /// the seconds it had left. A stepped ramp restarts its current step: the rest is then
    /// spread evenly, so nothing is ever admitted sooner than the original plan would have.
    fn rest(&self, now: DateTime<Utc>) -> (RampShape, u64) {
        if let Some(h) = &self.held {
            return (h.then.clone(), h.remaining_secs);
        }
        let shape = match &self.shape {
            RampShape::Linear { .. } => RampShape::Linear {
                from: self.fraction_at(now),
            },
            RampShape::Steps { fractions } if fractions.len() >= 2 => {
                let n = fractions.len();
                let total = self.duration_secs.max(1) as f64;
                let elapsed = (now - self.started_at).num_milliseconds().max(0) as f64 / 1000.0;
                // At most the step before the last, so the rest keeps two fractions.
                let i = ((elapsed / (total / (n - 1) as f64)).floor() as usize).min(n - 2);
                RampShape::Steps {
                    fractions: fractions[i..].to_vec(),
                }
            }
            RampShape::Steps { fractions } => RampShape::Steps {
                fractions: fractions.clone(),
            },
        };
        (shape, self.secs_left(now))
    }

    /// Freezes the admitted fraction at `now`. The result is a stepped ramp `[f, 1.0]` over
    /// [`MAX_RAMP_SECS`]: gates that know nothing of holds still admit `f` (for a day at
    /// most, after which the release completes as any ramp does). Holding a held ramp
    /// changes nothing.
    pub fn hold(&self, now: DateTime<Utc>) -> Ramp {
        if self.held.is_some() {
            return self.clone();
        }
        let fraction = self.fraction_at(now);
        let (then, remaining_secs) = self.rest(now);
        Ramp {
            started_at: now,
            duration_secs: MAX_RAMP_SECS,
            shape: RampShape::Steps {
                fractions: vec![fraction, 1.0],
            },
            held: Some(RampHeld {
                fraction,
                since: now,
                remaining_secs,
                then,
            }),
            guard: None,
        }
    }

    /// Lengthens the rest of the release by `by_secs` (0: as planned), starting at `now` from
    /// the fraction admitted now; a held ramp continues from where it was held.
    pub fn extend(&self, now: DateTime<Utc>, by_secs: u64) -> Result<Ramp, RampError> {
        let (shape, left) = self.rest(now);
        let duration_secs = left
            .checked_add(by_secs)
            .filter(|d| *d <= MAX_RAMP_SECS)
            .ok_or(RampError::TooLong { by_secs })?;
        Ok(Ramp {
            started_at: now,
            duration_secs,
            shape,
            held: None,
            guard: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn at(s: f64) -> DateTime<Utc> {
        t0() + chrono::Duration::milliseconds((s * 1000.0) as i64)
    }

    #[test]
    fn steps_hold_each_fraction_for_an_equal_share() {
        let r = RampSpec::preset("steps", 90).unwrap().start(t0());
        assert_eq!(r.fraction_at(at(-5.0)), 0.1, "clock skew: the first step");
        assert_eq!(r.fraction_at(at(0.0)), 0.1);
        assert_eq!(r.fraction_at(at(29.9)), 0.1);
        assert_eq!(r.fraction_at(at(30.0)), 0.25);
        assert_eq!(r.fraction_at(at(60.0)), 0.5);
        assert_eq!(r.fraction_at(at(89.9)), 0.5);
        assert_eq!(r.fraction_at(at(90.0)), 1.0);
        assert_eq!(r.fraction_at(at(1e6)), 1.0);
        assert!(r.is_over(at(90.0)));
    }

    #[test]
    fn linear_climbs_straight() {
        let r = RampSpec {
            duration_secs: 100,
            shape: RampShape::Linear { from: 0.0 + 0.2 },
        }
        .start(t0());
        assert!((r.fraction_at(at(0.0)) - 0.2).abs() < 1e-9);
        assert!((r.fraction_at(at(50.0)) - 0.6).abs() < 1e-9);
        assert!((r.fraction_at(at(99.0)) - 0.992).abs() < 1e-9);
        assert_eq!(r.fraction_at(at(100.0)), 1.0);
    }

    #[test]
    fn parse_and_validate() {
        assert_eq!(RampSpec::parse("steps:10m").unwrap().duration_secs, 600);
        assert_eq!(RampSpec::parse("linear:90s").unwrap().duration_secs, 90);
        assert_eq!(RampSpec::parse("linear:2h").unwrap().duration_secs, 7200);
        assert!(RampSpec::parse("steps").is_err());
        assert!(RampSpec::parse("wave:10m").is_err());
        assert!(RampSpec::parse("steps:0s").is_err());
        assert!(RampSpec::parse("steps:99999999999999999999h").is_err());
        let bad = |shape| RampSpec {
            duration_secs: 10,
            shape,
        };
        assert_eq!(
            bad(RampShape::Steps {
                fractions: vec![0.5, 0.2]
            })
            .validate(),
            Err(RampError::Decreasing)
        );
        assert_eq!(
            bad(RampShape::Steps {
                fractions: vec![0.5, f64::NAN]
            })
            .validate(),
            Err(RampError::Fraction)
        );
        assert_eq!(
            bad(RampShape::Linear { from: 0.0 }).validate(),
            Err(RampError::Fraction)
        );
        assert_eq!(
            bad(RampShape::Steps {
                fractions: vec![1.0]
            })
            .validate(),
            Err(RampError::StepCount)
        );
    }

    #[test]
    fn hold_freezes_the_fraction_for_every_gate() {
        let r = RampSpec::preset("steps", 90).unwrap().start(t0());
        let h = r.hold(at(40.0));
        // Any gate evaluating the shape alone admits the held fraction, long after the
        // original ramp would have ended.
        assert_eq!(h.fraction_at(at(40.0)), 0.25);
        assert_eq!(h.fraction_at(at(90.0)), 0.25);
        assert_eq!(h.fraction_at(at(40.0 + MAX_RAMP_SECS as f64 - 1.0)), 0.25);
        let held = h.held.clone().unwrap();
        assert_eq!(held.fraction, 0.25);
        assert_eq!(held.remaining_secs, 50);
        assert_eq!(
            held.then,
            RampShape::Steps {
                fractions: vec![0.25, 0.5, 1.0]
            }
        );
        assert_eq!(h.hold(at(500.0)), h, "holding a hold changes nothing");
        // Continuing an hour later picks up where it was held, over what was left.
        let c = h.extend(at(3640.0), 0).unwrap();
        assert!(c.held.is_none());
        assert_eq!(c.duration_secs, 50);
        assert_eq!(c.fraction_at(at(3640.0)), 0.25);
        assert_eq!(c.fraction_at(at(3665.0)), 0.5);
        assert_eq!(c.fraction_at(at(3690.0)), 1.0);
    }

    #[test]
    fn extend_lengthens_the_rest_and_never_admits_more_sooner() {
        let r = RampSpec::preset("steps", 90).unwrap().start(t0());
        // 10 s into the 25% step, 50 s left: 60 s more spreads 0.25, 0.5, 1.0 over 110 s.
        let e = r.extend(at(40.0), 60).unwrap();
        assert_eq!(e.duration_secs, 110);
        assert_eq!(e.fraction_at(at(40.0)), 0.25);
        assert_eq!(e.fraction_at(at(94.9)), 0.25);
        assert_eq!(e.fraction_at(at(95.0)), 0.5);
        assert_eq!(e.fraction_at(at(150.0)), 1.0);
        for s in 40..200 {
            assert!(e.fraction_at(at(s as f64)) <= r.fraction_at(at(s as f64)).max(0.25));
        }
        let lin = RampSpec::preset("linear", 100).unwrap().start(t0());
        let e = lin.extend(at(50.0), 50).unwrap();
        assert!((e.fraction_at(at(50.0)) - lin.fraction_at(at(50.0))).abs() < 1e-9);
        assert_eq!(e.duration_secs, 100);
        assert_eq!(e.fraction_at(at(150.0)), 1.0);
        assert_eq!(
            r.extend(at(40.0), MAX_RAMP_SECS),
            Err(RampError::TooLong {
                by_secs: MAX_RAMP_SECS
            })
        );
        assert!(r.extend(at(40.0), u64::MAX).is_err());
    }

    #[test]
    fn wire_format() {
        let spec: RampSpec =
            serde_json::from_str(r#"{"kind":"steps","fractions":[0.1,1.0],"duration_secs":60}"#)
                .unwrap();
        assert_eq!(spec.duration_secs, 60);
        let r = spec.start(t0());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "steps");
        assert_eq!(v["duration_secs"], 60);
        assert!(v["started_at"].is_string());
        let back: Ramp = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
