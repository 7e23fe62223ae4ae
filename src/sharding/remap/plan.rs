//! What a remap will do, worked out before anything is touched: which vshards move from which shard to which, and,
//! per sharded table, the SQL predicate selecting the rows that move. Printed by `--dry-run` and before each run.

use std::fmt::Write as _;

use crate::config::sharding::ShardingConfig;
use crate::sharding::catalog::Catalog;

use super::filter::{rows_of, table_sql, FilterError};
use super::state::replication_name;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("invalid vshard list {0:?}: use numbers and ranges, e.g. 0-15,40")]
    BadList(String),
    #[error("vshard {vshard} does not exist (the catalog has {vshards})")]
    OutOfRange { vshard: u32, vshards: u32 },
    #[error("shard {0} is not in the config")]
    UnknownShard(u16),
    #[error("every vshard given is already on shard {0}: nothing to move")]
    NothingToMove(u16),
    #[error(
        "the vshards come from several shards ({0}); one remap moves vshards of one source shard: run one remap per \
         source shard"
    )]
    SeveralSources(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// Parses `0-15,40` into sorted, distinct vshards. Bounded by `vshards`, so a huge range cannot allocate much.
pub fn parse_vshards(text: &str, vshards: u32) -> Result<Vec<u32>, PlanError> {
    let bad = || PlanError::BadList(text.to_string());
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u32>().map_err(|_| bad())?,
                b.trim().parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let v = part.parse::<u32>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        for v in [lo, hi] {
            if v >= vshards {
                return Err(PlanError::OutOfRange { vshard: v, vshards });
            }
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        return Err(bad());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Compresses sorted vshards into `0-15,40`.
pub fn format_vshards(vshards: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &v in vshards {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == v => *last = v,
            _ => runs.push((v, v)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One sharded table's part in the move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMove {
    /// As configured.
    pub name: String,
    /// As SQL (quoted parts).
    pub sql_name: String,
    pub key: String,
    /// Rows that move, with the key column unqualified (publication, verify, delete).
    pub filter: String,
    /// The same predicate on `NEW`/`OLD` rows (fence trigger).
    pub new_filter: String,
    pub old_filter: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub vshards: Vec<u32>,
    pub source: u16,
    pub target: u16,
    pub tables: Vec<TableMove>,
}

impl Plan {
    /// Works the plan out from the current catalog. `vshards` sorted and distinct (see [`parse_vshards`]).
    pub fn new(
        cfg: &ShardingConfig,
        catalog: &Catalog,
        vshards: &[u32],
        target: u16,
    ) -> Result<Plan, PlanError> {
        if usize::from(target) >= cfg.shards.len() {
            return Err(PlanError::UnknownShard(target));
        }
        let mut sources = Vec::new();
        let mut moving = Vec::new();
        for &v in vshards {
            let s = catalog.shard_of(v).ok_or(PlanError::OutOfRange {
                vshard: v,
                vshards: catalog.vshards,
            })?;
            if s == target {
                continue;
            }
            if !sources.contains(&s) {
                sources.push(s);
            }
            moving.push(v);
        }
        let source = match sources.as_slice() {
            [] => return Err(PlanError::NothingToMove(target)),
            [one] => *one,
            several => {
                let names: Vec<String> = several.iter().map(u16::to_string).collect();
                return Err(PlanError::SeveralSources(names.join(", ")));
            }
        };
        Self::with_source(cfg, catalog, moving, source, target)
    }

    /// The plan of a remap already recorded (its vshards may already be placed on the target).
    pub fn with_source(
        cfg: &ShardingConfig,
        catalog: &Catalog,
        vshards: Vec<u32>,
        source: u16,
        target: u16,
    ) -> Result<Plan, PlanError> {
        let mut tables = Vec::new();
        for t in &cfg.tables {
            let column = crate::sharding::hash::quote_ident(&t.key);
            tables.push(TableMove {
                name: t.name.clone(),
                sql_name: table_sql(&t.name),
                key: t.key.clone(),
                filter: rows_of(t, &column, &vshards, catalog, cfg)?,
                new_filter: rows_of(t, &format!("NEW.{column}"), &vshards, catalog, cfg)?,
                old_filter: rows_of(t, &format!("OLD.{column}"), &vshards, catalog, cfg)?,
            });
        }
        Ok(Plan {
            vshards,
            source,
            target,
            tables,
        })
    }

    /// The publication the source gets: the moving rows of every sharded table; inserts, updates and deletes only
    /// (a replicated TRUNCATE would ignore the row filter and empty the target's table).
    pub fn publication_sql(&self, id: i64) -> String {
        let tables: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{} WHERE ({})", t.sql_name, t.filter))
            .collect();
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}, {} WITH (publish = 'insert, update, delete')",
            replication_name(id),
            tables.join(", "),
            super::replicate::marker_table(id)
        )
    }

    /// What `--dry-run` prints: the move and the SQL each step runs.
    pub fn describe(&self, id: Option<i64>) -> String {
        let id_for_names = id.unwrap_or(0);
        let name = replication_name(id_for_names);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "move vshards {} ({} vshards) from shard {} to shard {}",
            format_vshards(&self.vshards),
            self.vshards.len(),
            self.source,
            self.target
        );
        let _ = writeln!(out, "\nrows that move, per table:");
        for t in &self.tables {
            let _ = writeln!(out, "  {}: WHERE {}", t.name, t.filter);
        }
        let _ = writeln!(
            out,
            "\nsteps{}:",
            if id.is_none() {
                " (names use the remap's id, shown here as 0)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  1. copy: on shard {}: {}",
            self.source,
            self.publication_sql(id_for_names)
        );
        let _ = writeln!(
            out,
            "     on shard {}: CREATE SUBSCRIPTION {name} CONNECTION '<shard {}>' PUBLICATION {name} WITH (copy_data = true)",
            self.target, self.source
        );
        let _ = writeln!(
            out,
            "  2. catch up: wait until every table is synchronised (pg_subscription_rel 'r') and the lag is small"
        );
        let _ = writeln!(
            out,
            "  3. cut over: hold writes to the moving vshards in every shardpool instance, fence them on shard {} \
             (trigger shardpool_fence on each table), wait until shard {} applied everything, point the vshards at \
             shard {}, wait for every instance to acknowledge, release the held writes",
            self.source, self.target, self.target
        );
        let _ = writeln!(
            out,
            "  4. verify: row count and checksum per table, shard {} against shard {}",
            self.source, self.target
        );
        let _ = writeln!(
            out,
            "  5. clean up: DROP SUBSCRIPTION {name} (and its slot), DROP PUBLICATION {name}, delete the moved rows \
             on shard {} (the fence stays)",
            self.source
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vshard_lists_parse_and_format() {
        assert_eq!(parse_vshards("0-3, 7,2", 8).unwrap(), vec![0, 1, 2, 3, 7]);
        assert_eq!(format_vshards(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert!(matches!(
            parse_vshards("0-8", 8),
            Err(PlanError::OutOfRange { vshard: 8, .. })
        ));
        for bad in ["", "a", "3-1", "1-", "-1", "1-2-3", ","] {
            assert!(parse_vshards(bad, 8).is_err(), "{bad:?}");
        }
        // A huge range is refused before anything is allocated.
        assert!(parse_vshards("0-4294967295", 8).is_err());
    }
}
