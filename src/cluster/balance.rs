//! Choosing a server for a transaction: the writable one for writes, and for reads one of the replicas that meets
//! the client's consistency requirement, spread by weight.

use std::sync::atomic::Ordering;

use super::{Cluster, Member};
use crate::config::LoadBalance;

/// What a read needs from a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Any healthy replica (eventual consistency).
    Any,
    /// Has replayed at least this WAL position (the client's last write, or a causal token).
    AtLeast(u64),
    /// Is at most this many milliseconds behind the primary.
    WithinMs(u64),
    /// Has replayed what the primary holds when the read starts (`read_all_writes`): the session asks the primary's
    /// position first and turns this into `AtLeast`; as such, no replica qualifies.
    CaughtUpWithPrimary,
}

/// What a read routed to the replicas needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadNeed {
    pub freshness: Freshness,
    /// Monotonic reads: the session must not read older data than it already read (every mode but `eventual`).
    pub monotonic: bool,
}

/// Monotonic reads: what a replica must have replayed, besides its mode's need, to serve a session's next read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    pub lsn: u64,
    /// A member exempt from `lsn`: the one the session last read from, whose replay cannot have gone back.
    pub except: Option<usize>,
    /// What every replica must have replayed, no member exempt: where this shard was when the vshards a remap moved
    /// onto it had all their rows (0: none). See `remap::state::read_floor`.
    pub moved_in: u64,
}

impl Cluster {
    /// The member that takes writes: the configured primary unless it reports being in recovery, then a member that
    /// says it is not (a promoted replica). `None`: no server may take writes now.
    pub fn writer(&self) -> Option<usize> {
        if self.members[0].writable() {
            return Some(0);
        }
        self.members.iter().position(|m| m.writable())
    }

    fn eligible(
        &self,
        i: usize,
        m: &Member,
        need: Freshness,
        floor: Floor,
        writer: Option<usize>,
    ) -> bool {
        if Some(i) == writer {
            // The writer is always fresh; it serves reads in the balance only when configured to.
            return self.settings.read_from_primary && m.weight.load(Ordering::Relaxed) > 0;
        }
        if !m.is_replica() || self.is_banned(m) || m.weight.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let known = m.recovery() != super::Recovery::Unknown;
        if floor.except != Some(i)
            && floor.lsn > 0
            && !(known && m.lsn.load(Ordering::Relaxed) >= floor.lsn)
        {
            return false;
        }
        if floor.moved_in > 0 && !(known && m.lsn.load(Ordering::Relaxed) >= floor.moved_in) {
            return false;
        }
        match need {
            Freshness::Any => true,
            Freshness::AtLeast(lsn) => {
                m.recovery() != super::Recovery::Unknown && m.lsn.load(Ordering::Relaxed) >= lsn
            }
            Freshness::WithinMs(max) => self.staleness_ms(m).is_some_and(|s| s <= max),
            Freshness::CaughtUpWithPrimary => false,
        }
    }

    /// A member for a read, or `None` when no replica (nor the primary, if it takes reads) qualifies.
    pub fn pick_reader(&self, need: Freshness, floor: Floor, exclude: &[usize]) -> Option<usize> {
        let writer = self.writer();
        let mut candidates = [0usize; 32];
        let mut n = 0;
        for (i, m) in self.members.iter().enumerate() {
            if n < candidates.len()
                && !exclude.contains(&i)
                && self.eligible(i, m, need, floor, writer)
            {
                candidates[n] = i;
                n += 1;
            }
        }
        let candidates = &candidates[..n];
        match candidates {
            [] => None,
            [only] => Some(*only),
            _ => Some(match self.settings.load_balance {
                LoadBalance::RoundRobin => self.weighted_round_robin(candidates),
                LoadBalance::LeastOutstanding => self.least_outstanding(candidates),
            }),
        }
    }

    /// Each candidate gets a run of `weight` consecutive turns out of every `sum(weights)`.
    fn weighted_round_robin(&self, candidates: &[usize]) -> usize {
        let weight = |i: usize| self.members[i].weight.load(Ordering::Relaxed).max(1);
        let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
        let mut turn = self.rr.fetch_add(1, Ordering::Relaxed) % total;
        for &i in candidates {
            let w = weight(i);
            if turn < w {
                return i;
            }
            turn -= w;
        }
        candidates[0]
    }

    /// Fewest transactions in flight per unit of weight; ties go round robin so idle replicas share the load.
    fn least_outstanding(&self, candidates: &[usize]) -> usize {
        let start = self.rr.fetch_add(1, Ordering::Relaxed) as usize % candidates.len();
        let load = |i: usize| {
            let m = &self.members[i];
            (
                m.outstanding.load(Ordering::Relaxed) as u64,
                m.weight.load(Ordering::Relaxed).max(1),
            )
        };
        let mut best = candidates[start];
        for k in 1..candidates.len() {
            let i = candidates[(start + k) % candidates.len()];
            let (o, w) = load(i);
            let (bo, bw) = load(best);
            if o * bw < bo * w {
                best = i;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Recovery;
    use crate::config::Config;
    use std::sync::Arc;

    fn cluster(extra: &str) -> Arc<Cluster> {
        let config = Config::from_toml(&format!(
            r#"
            [[users]]
            name = "u"
            password = "p"
            [databases.d]
            port = 5000
            replicas = [{{ port = 5001 }}, {{ port = 5002, weight = 3 }}]
            {extra}
            "#
        ))
        .unwrap();
        let c = Cluster::new("d", None, &config.databases["d"], &config.general, None);
        c.members[0].set_recovery(Recovery::NotInRecovery);
        for m in &c.members[1..] {
            m.set_recovery(Recovery::InRecovery);
        }
        c
    }

    fn shares(c: &Cluster, need: Freshness, n: usize) -> [usize; 3] {
        let mut out = [0; 3];
        for _ in 0..n {
            out[c.pick_reader(need, Floor::default(), &[]).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_follows_the_weights_exactly() {
        let c = cluster("");
        assert_eq!(shares(&c, Freshness::Any, 400), [0, 100, 300]);
    }

    #[test]
    fn the_primary_reads_only_when_asked_to() {
        let c = cluster("read_from_primary = true");
        assert_eq!(shares(&c, Freshness::Any, 500), [100, 100, 300]);
    }

    #[test]
    fn read_your_writes_needs_the_replayed_position() {
        let c = cluster("");
        c.members[1].lsn.store(100, Ordering::Relaxed);
        c.members[2].lsn.store(50, Ordering::Relaxed);
        assert_eq!(shares(&c, Freshness::AtLeast(80), 10), [0, 10, 0]);
        assert_eq!(
            c.pick_reader(Freshness::AtLeast(101), Floor::default(), &[]),
            None
        );
        // Excluded (it just failed this read) or banned: not chosen.
        assert_eq!(
            c.pick_reader(Freshness::AtLeast(80), Floor::default(), &[1]),
            None
        );
        c.ban(&c.members[1], "test");
        assert_eq!(
            c.pick_reader(Freshness::AtLeast(80), Floor::default(), &[]),
            None
        );
    }

    #[test]
    fn monotonic_reads_need_the_floor_except_on_the_last_replica_read() {
        let c = cluster("");
        c.members[1].lsn.store(100, Ordering::Relaxed);
        c.members[2].lsn.store(50, Ordering::Relaxed);
        let floor = Floor {
            lsn: 80,
            except: None,
            moved_in: 0,
        };
        assert_eq!(c.pick_reader(Freshness::Any, floor, &[]), Some(1));
        // Not known yet how far the last read's replica (2) had got: only it qualifies.
        let floor = Floor {
            lsn: u64::MAX,
            except: Some(2),
            moved_in: 0,
        };
        assert_eq!(shares_with(&c, Freshness::Any, floor, 10), [0, 0, 10]);
        // The primary's position is asked first; as such nothing qualifies.
        assert_eq!(
            c.pick_reader(Freshness::CaughtUpWithPrimary, Floor::default(), &[]),
            None
        );
    }

    #[test]
    fn a_remap_floor_binds_every_replica_even_the_last_one_read() {
        let c = cluster("");
        c.members[1].lsn.store(100, Ordering::Relaxed);
        c.members[2].lsn.store(50, Ordering::Relaxed);
        let floor = Floor {
            lsn: 0,
            except: Some(2),
            moved_in: 80,
        };
        assert_eq!(shares_with(&c, Freshness::Any, floor, 10), [0, 10, 0]);
        let floor = Floor {
            moved_in: 120,
            ..floor
        };
        assert_eq!(c.pick_reader(Freshness::Any, floor, &[]), None);
    }

    fn shares_with(c: &Cluster, need: Freshness, floor: Floor, n: usize) -> [usize; 3] {
        let mut out = [0; 3];
        for _ in 0..n {
            out[c.pick_reader(need, floor, &[]).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn bounded_staleness_uses_the_age_of_what_a_replica_holds() {
        let c = cluster("");
        let now = c.clock.now_ms();
        c.members[1].fresh_as_of_ms.store(now, Ordering::Relaxed);
        // The clock starts at 1 s: fresh as of 1 ms is about 1 s stale.
        c.members[2].fresh_as_of_ms.store(1, Ordering::Relaxed);
        assert_eq!(shares(&c, Freshness::WithinMs(500), 10), [0, 10, 0]);
        // Never polled: unknown staleness is not within any bound.
        c.members[1].fresh_as_of_ms.store(0, Ordering::Relaxed);
        assert_eq!(
            c.pick_reader(Freshness::WithinMs(500), Floor::default(), &[]),
            None
        );
    }

    #[test]
    fn a_promoted_replica_gets_no_reads_and_a_demoted_primary_no_writes() {
        let c = cluster("");
        c.members[2].set_recovery(Recovery::NotInRecovery);
        assert_eq!(shares(&c, Freshness::Any, 10), [0, 10, 0]);
        assert_eq!(c.writer(), Some(0));
        c.members[0].set_recovery(Recovery::InRecovery);
        assert_eq!(c.writer(), Some(2));
        c.members[2].set_recovery(Recovery::InRecovery);
        assert_eq!(c.writer(), None);
    }

    #[test]
    fn least_outstanding_prefers_the_idlest_per_weight() {
        let c = cluster("load_balance = \"least_outstanding\"");
        c.members[1].outstanding.store(1, Ordering::Relaxed);
        c.members[2].outstanding.store(2, Ordering::Relaxed);
        // 2 in flight over weight 3 beats 1 over weight 1.
        assert_eq!(shares(&c, Freshness::Any, 5), [0, 0, 5]);
    }
}
