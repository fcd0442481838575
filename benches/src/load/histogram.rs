//! A lock-free latency histogram with bounded relative error.
//!
//! Thousands of agent tasks record into the same histogram, so recording is
//! one relaxed atomic add. Buckets are log-linear: exact below 64 µs, then
//! 32 sub-buckets per power of two, so a reported percentile is within about
//! 3 % of the true value. Memory is fixed (a few KiB) whatever the count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Values below this are their own bucket.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above [`LINEAR`] (a power of two).
const SUB_BUCKETS: u64 = 32;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// log2(LINEAR): the first octave handled by the log-linear part.
const FIRST_OCTAVE: u32 = LINEAR.trailing_zeros();
/// Octaves 6..=63 of a u64.
const OCTAVES: u64 = 64 - FIRST_OCTAVE as u64;
const BUCKETS: usize = (LINEAR + OCTAVES * SUB_BUCKETS) as usize;

/// Bucket index of `micros`.
fn bucket_of(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros(); // >= FIRST_OCTAVE
    let sub = (micros >> (octave - SUB_BITS)) & (SUB_BUCKETS - 1);
    (LINEAR + u64::from(octave - FIRST_OCTAVE) * SUB_BUCKETS + sub) as usize
}

/// The smallest value that falls in bucket `index`.
fn bucket_floor(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let octave = (index - LINEAR) / SUB_BUCKETS + u64::from(FIRST_OCTAVE);
    let sub = (index - LINEAR) % SUB_BUCKETS;
    (1u64 << octave) + (sub << (octave - u64::from(SUB_BITS)))
}

/// A representative value for bucket `index`: its midpoint.
fn bucket_value(index: usize) -> u64 {
    let floor = bucket_floor(index);
    if (index as u64) < LINEAR {
        return floor;
    }
    let next = if index + 1 < BUCKETS {
        bucket_floor(index + 1)
    } else {
        u64::MAX
    };
    floor + (next - floor) / 2
}

/// Concurrent latency recorder (microsecond resolution).
pub(crate) struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
}

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Moves everything recorded so far into a snapshot and starts empty, so
    /// each phase of a run reports only its own samples.
    pub(crate) fn take(&self) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .map(|count| count.swap(0, Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Counts of one histogram at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    counts: Vec<u64>,
}

impl Snapshot {
    /// Builds a snapshot from raw values, for tests and offline use.
    #[cfg(test)]
    fn from_values(values: impl IntoIterator<Item = Duration>) -> Self {
        let histogram = LatencyHistogram::new();
        for value in values {
            histogram.record(value);
        }
        histogram.take()
    }

    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at percentile `p` (0..=100): the smallest recorded value
    /// with at least `p` % of samples at or below it (nearest rank). `None`
    /// when empty.
    pub(crate) fn percentile(&self, p: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        // Nearest rank, at least the first sample.
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_value(index)));
            }
        }
        None
    }

    /// The largest bucket with a sample (its representative value).
    pub(crate) fn max(&self) -> Option<Duration> {
        self.counts
            .iter()
            .rposition(|count| *count > 0)
            .map(|index| Duration::from_micros(bucket_value(index)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn within(actual: Duration, expected: Duration, tolerance: f64) -> bool {
        let (a, e) = (actual.as_secs_f64(), expected.as_secs_f64());
        (a - e).abs() <= e * tolerance
    }

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        for index in 1..BUCKETS {
            assert!(bucket_floor(index) > bucket_floor(index - 1), "{index}");
            assert_eq!(bucket_of(bucket_floor(index)), index);
            assert_eq!(bucket_of(bucket_floor(index) - 1), index - 1);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        let snapshot = Snapshot::from_values((0..10).map(Duration::from_micros));
        assert_eq!(snapshot.percentile(50.0), Some(Duration::from_micros(4)));
        assert_eq!(snapshot.percentile(100.0), Some(Duration::from_micros(9)));
        assert_eq!(snapshot.percentile(0.0), Some(Duration::from_micros(0)));
    }

    #[test]
    fn percentiles_of_a_uniform_range_are_within_the_error_bound() {
        let snapshot = Snapshot::from_values((1..=1000).map(ms));
        assert_eq!(snapshot.count(), 1000);
        let p50 = snapshot.percentile(50.0).unwrap();
        let p99 = snapshot.percentile(99.0).unwrap();
        assert!(within(p50, ms(500), 0.035), "{p50:?}");
        assert!(within(p99, ms(990), 0.035), "{p99:?}");
        assert!(within(snapshot.max().unwrap(), ms(1000), 0.035));
    }

    #[test]
    fn a_tail_shows_in_p99_but_not_p50() {
        let values = std::iter::repeat_n(ms(2), 980).chain(std::iter::repeat_n(ms(300), 20));
        let snapshot = Snapshot::from_values(values);
        assert!(within(snapshot.percentile(50.0).unwrap(), ms(2), 0.035));
        assert!(within(snapshot.percentile(99.0).unwrap(), ms(300), 0.035));
    }

    #[test]
    fn take_empties_the_histogram() {
        let histogram = LatencyHistogram::new();
        histogram.record(ms(1));
        assert_eq!(histogram.take().count(), 1);
        let empty = histogram.take();
        assert_eq!(empty.count(), 0);
        assert_eq!(empty.percentile(50.0), None);
        assert_eq!(empty.max(), None);
    }
}
