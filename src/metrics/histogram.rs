//! The pool wait-time histogram: fixed buckets of relaxed atomic counters, so a checkout records its wait with one
//! uncontended add and no lock, and a scrape reads the counts without stopping anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds. From "served at once" (an idle server was there: the common case,
/// under 0.5 ms) to the default `checkout_timeout` of 120 s.
pub const BOUNDS_US: [u64; 12] = [
    500,
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    120_000_000,
];

/// Observations per bucket (not cumulative); the last slot counts waits beyond the largest bound.
#[derive(Debug, Default)]
pub struct WaitHistogram {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
}

impl WaitHistogram {
    /// A checkout served without waiting (an idle server was at hand).
    #[inline]
    pub fn observe_immediate(&self) {
        self.counts[0].fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket as Prometheus wants them (`le` = each bound, then `+Inf` = the total).
    pub fn cumulative(&self) -> [u64; BOUNDS_US.len() + 1] {
        let mut out = [0u64; BOUNDS_US.len() + 1];
        let mut total = 0u64;
        for (o, c) in out.iter_mut().zip(&self.counts) {
            total = total.saturating_add(c.load(Ordering::Relaxed));
            *o = total;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = WaitHistogram::default();
        h.observe_immediate();
        h.observe(Duration::from_micros(500)); // exactly on a bound: le="0.0005"
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_millis(200));
        h.observe(Duration::from_secs(1000));
        let c = h.cumulative();
        assert_eq!(c[0], 2);
        assert_eq!(c[1], 3);
        assert_eq!(c[5], 3); // le=0.1
        assert_eq!(c[6], 4); // le=0.5
        assert_eq!(c[BOUNDS_US.len() - 1], 4);
        assert_eq!(c[BOUNDS_US.len()], 5);
    }

    #[test]
    fn bounds_increase() {
        assert!(BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }
}
