//! Utilization series for the graphs: fixed-size rings at one-second resolution.
//!
//! Memory is bounded by construction: each series is one ring of [`RETENTION_SECS`] `f64`
//! slots (28.1 KiB) and there are at most `max_series` of them (default 256, so at most about
//! 7 MiB), whatever the rate or volume of samples. A sample for a new series beyond the cap is
//! refused rather than evicting someone's graph.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use brb_api::{SampleKind, Series, TickValue};

/// One hour of one-second slots.
pub const RETENTION_SECS: i64 = 3600;

/// Bytes one series ring takes (the documented memory bound is `max_series` times this).
pub const BYTES_PER_SERIES: usize = RETENTION_SECS as usize * std::mem::size_of::<f64>();

type Key = (String, BTreeMap<String, String>);

/// One validated sample: name, labels, kind, unix second, value.
pub type Row = (String, BTreeMap<String, String>, SampleKind, i64, f64);

struct Ring {
    kind: SampleKind,
    /// `NAN` marks a second without data.
    slots: Box<[f64]>,
    /// The newest second written; slots for seconds after it are stale and cleared on write.
    newest: i64,
}

impl Ring {
    fn new(kind: SampleKind) -> Self {
        Ring {
            kind,
            slots: vec![f64::NAN; RETENTION_SECS as usize].into_boxed_slice(),
            newest: i64::MIN,
        }
    }

    fn idx(sec: i64) -> usize {
        sec.rem_euclid(RETENTION_SECS) as usize
    }

    fn record(&mut self, sec: i64, value: f64) {
        if self.newest != i64::MIN && sec > self.newest {
            // Clear the slots between the previous newest and this second: they hold data from
            // an hour ago.
            let gap = (sec - self.newest).min(RETENTION_SECS);
            for s in (sec - gap + 1)..=sec {
                self.slots[Self::idx(s)] = f64::NAN;
            }
        }
        if self.newest == i64::MIN || sec > self.newest {
            self.newest = sec;
        }
        let slot = &mut self.slots[Self::idx(sec)];
        *slot = match self.kind {
            SampleKind::Gauge => value,
            SampleKind::Counter => {
                if slot.is_nan() {
                    value
                } else {
                    *slot + value
                }
            }
        };
    }

    fn get(&self, sec: i64) -> Option<f64> {
        if self.newest == i64::MIN || sec > self.newest || sec <= self.newest - RETENTION_SECS {
            return None;
        }
        let v = self.slots[Self::idx(sec)];
        (!v.is_nan()).then_some(v)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SeriesError {
    #[error("too many series (the limit is {0}); reuse names and labels")]
    TooMany(usize),
    #[error("series {0:?} was declared a {1:?} and cannot take {2:?} samples")]
    KindMismatch(String, SampleKind, SampleKind),
}

pub struct SeriesStore {
    rings: Mutex<HashMap<Key, Ring>>,
    max_series: usize,
}

impl SeriesStore {
    pub fn new(max_series: usize) -> Self {
        SeriesStore {
            rings: Mutex::new(HashMap::new()),
            max_series,
        }
    }

    pub fn max_series(&self) -> usize {
        self.max_series
    }

    pub fn len(&self) -> usize {
        self.rings.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records validated samples: `(name, labels, kind, unix second, value)`. All or nothing.
    pub fn record_all(&self, samples: Vec<Row>) -> Result<(), SeriesError> {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        // Check first so that a refused batch writes nothing.
        let mut new_keys = 0;
        for (name, labels, kind, _, _) in &samples {
            match rings.get(&(name.clone(), labels.clone())) {
                Some(r) if r.kind != *kind => {
                    return Err(SeriesError::KindMismatch(name.clone(), r.kind, *kind));
                }
                Some(_) => {}
                None => new_keys += 1,
            }
        }
        if rings.len() + new_keys > self.max_series {
            // Duplicates within the batch may have inflated new_keys; count exactly.
            let mut fresh: Vec<Key> = samples
                .iter()
                .map(|(n, l, ..)| (n.clone(), l.clone()))
                .filter(|k| !rings.contains_key(k))
                .collect();
            fresh.sort();
            fresh.dedup();
            if rings.len() + fresh.len() > self.max_series {
                return Err(SeriesError::TooMany(self.max_series));
            }
        }
        for (name, labels, kind, sec, value) in samples {
            rings
                .entry((name, labels))
                .or_insert_with(|| Ring::new(kind))
                .record(sec, value);
        }
        Ok(())
    }

    /// Series named `name` (every label set), or all series when `name` is `None`, with their
    /// points from `since` (unix seconds) up to `until` inclusive.
    pub fn query(&self, name: Option<&str>, since: i64, until: i64) -> Vec<Series> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let since = since.max(until - RETENTION_SECS + 1);
        let mut out: Vec<Series> = rings
            .iter()
            .filter(|((n, _), _)| name.is_none_or(|want| n == want))
            .map(|((n, labels), ring)| Series {
                name: n.clone(),
                labels: labels.clone(),
                kind: ring.kind,
                points: (since..=until)
                    .filter_map(|s| ring.get(s).map(|v| (s, v)))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        out
    }

    /// Every series' value for one second (those that have one).
    pub fn tick(&self, sec: i64) -> Vec<TickValue> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<TickValue> = rings
            .iter()
            .filter_map(|((n, labels), ring)| {
                ring.get(sec).map(|value| TickValue {
                    name: n.clone(),
                    labels: labels.clone(),
                    value,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, kind: SampleKind, sec: i64, v: f64) -> Vec<Row> {
        vec![(name.into(), BTreeMap::new(), kind, sec, v)]
    }

    #[test]
    fn gauges_keep_the_last_value_counters_add_up() {
        let s = SeriesStore::new(10);
        s.record_all(one("q", SampleKind::Gauge, 100, 1.0)).unwrap();
        s.record_all(one("q", SampleKind::Gauge, 100, 5.0)).unwrap();
        s.record_all(one("jobs", SampleKind::Counter, 100, 2.0))
            .unwrap();
        s.record_all(one("jobs", SampleKind::Counter, 100, 3.0))
            .unwrap();
        s.record_all(one("jobs", SampleKind::Counter, 102, 1.0))
            .unwrap();
        let q = s.query(Some("q"), 0, 200);
        assert_eq!(q[0].points, vec![(100, 5.0)]);
        let j = s.query(Some("jobs"), 0, 200);
        assert_eq!(j[0].points, vec![(100, 5.0), (102, 1.0)]);
        assert_eq!(s.tick(100).len(), 2);
        assert_eq!(s.tick(101).len(), 0);
    }

    #[test]
    fn ring_forgets_what_is_older_than_an_hour() {
        let s = SeriesStore::new(10);
        s.record_all(one("q", SampleKind::Gauge, 10, 1.0)).unwrap();
        s.record_all(one("q", SampleKind::Gauge, 10 + RETENTION_SECS, 2.0))
            .unwrap();
        let pts = &s.query(Some("q"), 0, 10 + RETENTION_SECS)[0].points;
        assert_eq!(pts, &vec![(10 + RETENTION_SECS, 2.0)]);
        // A write far in the future clears everything in between.
        s.record_all(one("q", SampleKind::Gauge, 10 + 5 * RETENTION_SECS, 3.0))
            .unwrap();
        let pts = &s.query(Some("q"), 0, 10 + 5 * RETENTION_SECS)[0].points;
        assert_eq!(pts.len(), 1);
    }

    #[test]
    fn series_cap_refuses_new_names_and_writes_nothing() {
        let s = SeriesStore::new(2);
        s.record_all(one("a", SampleKind::Gauge, 1, 1.0)).unwrap();
        s.record_all(one("b", SampleKind::Gauge, 1, 1.0)).unwrap();
        let batch = vec![
            ("a".to_string(), BTreeMap::new(), SampleKind::Gauge, 2, 9.0),
            ("c".to_string(), BTreeMap::new(), SampleKind::Gauge, 2, 1.0),
        ];
        assert_eq!(s.record_all(batch), Err(SeriesError::TooMany(2)));
        assert!(s.query(Some("a"), 0, 10)[0].points.iter().all(|p| p.0 != 2));
        assert_eq!(s.len(), 2);
        assert!(matches!(
            s.record_all(one("a", SampleKind::Counter, 3, 1.0)),
            Err(SeriesError::KindMismatch(..))
        ));
    }
}
