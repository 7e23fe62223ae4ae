//! WAL positions: parsing Postgres' `X/Y` text, and the primary's recent positions over time, which turn "this replica
//! has replayed up to position P" into "this replica holds everything the primary held as of time T".

use std::collections::VecDeque;
use std::sync::Mutex;

/// Parses a `pg_lsn` as Postgres prints it (`16/B374D848`: high and low 32 bits in hex).
pub fn parse(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Runs of equal primary positions: `(lsn, first_seen_ms, last_seen_ms)`, oldest first. An idle primary adds no
/// entries, it only moves the newest entry's `last_seen_ms`, so the history covers long quiet periods cheaply.
#[derive(Debug, Default)]
pub struct History {
    runs: Mutex<VecDeque<(u64, u64, u64)>>,
}

/// Enough runs for several minutes of a busy primary polled every 100 ms.
const MAX_RUNS: usize = 4096;

impl History {
    pub fn record(&self, lsn: u64, now_ms: u64) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        match runs.back_mut() {
            Some(last) if last.0 == lsn => last.2 = last.2.max(now_ms),
            // A position lower than the newest is a primary that was replaced (failover): start over.
            Some(last) if last.0 > lsn => {
                runs.clear();
                runs.push_back((lsn, now_ms, now_ms));
            }
            _ => runs.push_back((lsn, now_ms, now_ms)),
        }
        while runs.len() > MAX_RUNS {
            runs.pop_front();
        }
    }

    /// The latest moment the primary was seen at a position a replica that replayed up to `replayed` already
    /// holds: the replica is at most `now - that` behind. `None` if the history does not reach back that far.
    pub fn fresh_as_of(&self, replayed: u64) -> Option<u64> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let idx = runs.partition_point(|r| r.0 <= replayed);
        (idx > 0).then(|| runs[idx - 1].2)
    }

    pub fn latest(&self) -> Option<u64> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.back().map(|r| r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_pg_lsn() {
        assert_eq!(parse("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse("0/0"), Some(0));
        assert_eq!(format(0x16_B374_D848), "16/B374D848");
        for bad in ["", "16", "/1", "1/", "x/1", "1/123456789", "1/2/3"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn staleness_is_bounded_by_the_last_time_the_primary_was_at_the_replayed_position() {
        let h = History::default();
        h.record(100, 1_000);
        h.record(100, 1_100); // idle primary: same run, seen later
        h.record(200, 1_200);
        h.record(300, 1_300);
        // A replica at 100 held everything the primary had until it was last seen at 100.
        assert_eq!(h.fresh_as_of(100), Some(1_100));
        assert_eq!(h.fresh_as_of(250), Some(1_200));
        assert_eq!(h.fresh_as_of(300), Some(1_300));
        assert_eq!(h.fresh_as_of(99), None);
        assert_eq!(h.latest(), Some(300));
    }

    #[test]
    fn a_lower_primary_position_restarts_the_history() {
        let h = History::default();
        h.record(500, 1);
        h.record(10, 2);
        assert_eq!(h.fresh_as_of(10), Some(2));
        assert_eq!(h.fresh_as_of(499), Some(2));
    }
}
