//! Integers in requests, read as the OpenAPI document states them.
//!
//! The document derives `integer` with format `int64` (or `int32`) and minimum 0 from our
//! `u64` (`u32`) fields. Two gaps between that and serde's defaults are closed here: JSON
//! Schema counts `5.0` as an integer, so it is accepted as 5; and a value above the format's
//! maximum is refused, as the document promises (the stores keep versions and ids as signed
//! 64-bit integers anyway, so nothing larger can exist).

use std::fmt;

use serde::Deserializer;
use serde::de::{Error, Visitor};

struct Whole(u64);

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number from 0 to {}", self.0)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
        if v <= self.0 {
            Ok(v)
        } else {
            Err(E::custom(format!("{v} is more than {}", self.0)))
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{v} is negative"))),
        }
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
        // Above 2^53 a float holds no exact integer: only smaller ones are taken.
        if v.is_finite() && v.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&v) {
            self.visit_u64(v as u64)
        } else {
            Err(E::custom(format!(
                "{v} is not a whole number from 0 to {}",
                self.0
            )))
        }
    }
}

struct OptWhole(u64);

impl<'de> Visitor<'de> for OptWhole {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "null or a whole number from 0 to {}", self.0)
    }

    fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_u64(Whole(self.0)).map(Some)
    }
}

const INT64_MAX: u64 = i64::MAX as u64;
const INT32_MAX: u64 = i32::MAX as u64;

/// A `u64` field (OpenAPI: int64, minimum 0).
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_u64(Whole(INT64_MAX))
}

/// An optional `u64` field or query parameter (OpenAPI: int64, minimum 0).
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptWhole(INT64_MAX))
}

/// A `u32` field (OpenAPI: int32, minimum 0).
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_u64(Whole(INT32_MAX))?;
    u32::try_from(v).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::u64")]
        a: u64,
        #[serde(default, deserialize_with = "super::opt_u64")]
        b: Option<u64>,
        #[serde(default, deserialize_with = "super::u32")]
        c: u32,
    }

    fn read(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_in_every_spelling_within_the_documented_range() {
        let t = read(r#"{"a": 5.0, "b": 7, "c": 2147483647}"#).unwrap();
        assert_eq!((t.a, t.b, t.c), (5, Some(7), u32::MAX / 2));
        let t = read(r#"{"a": 9223372036854775807, "b": null}"#).unwrap();
        assert_eq!((t.a, t.b), (i64::MAX as u64, None));
        for bad in [
            r#"{"a": 9223372036854775808}"#,
            r#"{"a": 1.5}"#,
            r#"{"a": -1}"#,
            r#"{"a": 1, "b": -2.0}"#,
            r#"{"a": 1, "c": 2147483648}"#,
            r#"{"a": "1"}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}
