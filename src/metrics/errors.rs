//! Errors clients were sent, counted by SQLSTATE class (the code's first two characters): what an operator alerts
//! on (08 connection exceptions, 53 insufficient resources, 57 operator intervention, 40 rollbacks) without one
//! series per code. Counting happens on the error path only, with one relaxed atomic add.

use std::sync::atomic::{AtomicU64, Ordering};

/// The classes of Postgres' `src/backend/utils/errcodes.txt`, sorted by byte value (binary search). Codes of any
/// other class are counted as `other`.
pub const CLASSES: [&str; 43] = [
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22", "23",
    "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42",
    "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX",
];

const OTHER: usize = CLASSES.len();

/// Per-class counters of one pool.
#[derive(Debug)]
pub struct ErrorCounts {
    counts: [AtomicU64; CLASSES.len() + 1],
}

impl Default for ErrorCounts {
    fn default() -> Self {
        ErrorCounts {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ErrorCounts {
    /// Counts one error with SQLSTATE `code` (five characters; anything malformed counts as `other`).
    pub fn count(&self, code: &str) {
        self.counts[class_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// (class, count) of every class counted at least once; `other` last.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CLASSES
            .iter()
            .copied()
            .chain(std::iter::once("other"))
            .zip(&self.counts)
            .map(|(class, c)| (class, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }
}

fn class_index(code: &str) -> usize {
    match code.as_bytes() {
        [a, b, ..] => {
            let class = [*a, *b];
            CLASSES
                .binary_search_by(|c| c.as_bytes().cmp(&class[..]))
                .unwrap_or(OTHER)
        }
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_sorted_for_the_binary_search() {
        assert!(CLASSES
            .windows(2)
            .all(|w| w[0].as_bytes() < w[1].as_bytes()));
    }

    #[test]
    fn codes_count_under_their_class() {
        let e = ErrorCounts::default();
        e.count("42P01");
        e.count("42601");
        e.count("57014");
        e.count("0A000");
        e.count("ZZ999");
        e.count("");
        e.count("é");
        let got: Vec<_> = e.nonzero().collect();
        assert_eq!(got, vec![("0A", 1), ("42", 2), ("57", 1), ("other", 3)]);
    }
}
