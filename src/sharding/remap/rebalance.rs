//! Rebalancing: measure how much each vshard holds (rows or bytes, summed over the sharded tables, counted on the
//! shards themselves) or how busy it is (statements, counted by the shardpool instances and read from their admin
//! consoles' `SHOW VSHARDS`), and propose the fewest moves that even the shards out. The proposal is a list of
//! remaps, one per source and target pair; running them is `shardctl remap`'s job.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::sharding::{MapConfig, ShardingConfig, UnknownKeys};
use crate::sharding::catalog::{key_text, Catalog};
use crate::sharding::hash::{quote_ident, vshard_expr};

use super::filter::table_sql;

/// What to even out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    Rows,
    Bytes,
    /// Statements routed to each vshard, summed over the shardpool instances.
    Load,
}

impl Measure {
    /// The unit of the totals, for the operator.
    pub fn unit(self) -> &'static str {
        match self {
            Measure::Rows => "rows",
            Measure::Bytes => "bytes",
            Measure::Load => "statements",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "--by load reads the per-vshard counters of every shardpool instance (SHOW VSHARDS): give each instance's \
         admin console with --instance URL (or --url for a single instance)"
    )]
    NoInstances,
    #[error("instance {instance}: {source}")]
    Instance {
        instance: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "instance {instance}: SHOW VSHARDS lists no vshard of database \"{database}\" (is it sharded there, with \
         its catalog loaded?)"
    )]
    NotSharded { instance: String, database: String },
    #[error("instance {instance}: SHOW VSHARDS answered without the column {column:?}")]
    Column {
        instance: String,
        column: &'static str,
    },
}

/// `host:port` of an admin console URL, for messages: the URL itself may hold a password.
fn instance_label(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                #[cfg(unix)]
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}")
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Statements per vshard of `database` counted by one instance since it started.
async fn instance_counts(url: &str, database: &str) -> Result<BTreeMap<u32, u64>, LoadError> {
    let instance = instance_label(url);
    let err = |source| LoadError::Instance {
        instance: instance.clone(),
        source,
    };
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(err)?;
    let driver = tokio::spawn(conn);
    let messages = client.simple_query("SHOW VSHARDS").await.map_err(err);
    driver.abort();
    let mut out = BTreeMap::new();
    for m in messages? {
        let tokio_postgres::SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let column = |name: &'static str| {
            row.columns()
                .iter()
                .position(|c| c.name() == name)
                .ok_or(LoadError::Column {
                    instance: instance.clone(),
                    column: name,
                })
        };
        let (db, v, q) = (column("database")?, column("vshard")?, column("queries")?);
        if row.get(db) != Some(database) {
            continue;
        }
        let vshard = row.get(v).and_then(|t| t.parse::<u32>().ok());
        let queries = row.get(q).and_then(|t| t.parse::<u64>().ok());
        if let (Some(v), Some(q)) = (vshard, queries) {
            out.insert(v, q);
        }
    }
    if out.is_empty() {
        return Err(LoadError::NotSharded {
            instance,
            database: database.to_owned(),
        });
    }
    Ok(out)
}

/// Statements per vshard of `database`, summed over the instances at `urls`: counted during `sample` (the counters
/// are read at its start and at its end), or since each instance started when `sample` is zero. A counter that went
/// down (the instance restarted meanwhile) counts from zero.
pub async fn measure_load(
    urls: &[String],
    database: &str,
    sample: Duration,
) -> Result<BTreeMap<u32, u64>, LoadError> {
    if urls.is_empty() {
        return Err(LoadError::NoInstances);
    }
    let mut start = Vec::new();
    if !sample.is_zero() {
        for url in urls {
            start.push(instance_counts(url, database).await?);
        }
        tokio::time::sleep(sample).await;
    }
    let mut total = BTreeMap::new();
    for (i, url) in urls.iter().enumerate() {
        let now = instance_counts(url, database).await?;
        for (v, n) in now {
            let before = start.get(i).and_then(|s| s.get(&v)).copied().unwrap_or(0);
            let n = if n >= before { n - before } else { n };
            *total.entry(v).or_insert(0) += n;
        }
    }
    Ok(total)
}

/// The vshard of a row, computed by the server: the hash expression, or a CASE over the range bounds or the
/// directory entries. `None` for a map the catalog does not have.
pub fn vshard_case(
    table: &crate::config::sharding::TableConfig,
    catalog: &Catalog,
    cfg: &ShardingConfig,
) -> Option<String> {
    let column = quote_ident(&table.key);
    let hash = vshard_expr(&column, table.key_type, catalog.vshards);
    if table.map == "hash" {
        return Some(hash);
    }
    let literal = |k: &crate::sharding::key::KeyValue| {
        let text = key_text(k).unwrap_or_default().replace('\'', "''");
        match k {
            crate::sharding::key::KeyValue::Int(i) => i.to_string(),
            crate::sharding::key::KeyValue::Uuid(_) => format!("'{text}'::uuid"),
            _ => format!("'{text}'"),
        }
    };
    match cfg.maps.get(&table.map)? {
        MapConfig::Range { .. } => {
            let r = catalog.ranges.get(&table.map)?;
            let col = match table.key_type {
                crate::sharding::key::KeyType::Text => format!("({column} COLLATE \"C\")"),
                _ => column.clone(),
            };
            let mut sql = String::from("CASE");
            let mut owner = r.first;
            for (bound, v) in &r.bounds {
                sql.push_str(&format!(" WHEN {col} < {} THEN {owner}", literal(bound)));
                owner = *v;
            }
            sql.push_str(&format!(" ELSE {owner} END"));
            Some(sql)
        }
        MapConfig::Directory { unknown_keys, .. } => {
            let d = catalog.directories.get(&table.map)?;
            let mut entries: Vec<(&String, &u32)> = d.entries.iter().collect();
            entries.sort();
            let mut sql = format!("CASE {column}");
            for (key, v) in entries {
                let value = table.key_type.parse_text(key).ok()?;
                sql.push_str(&format!(" WHEN {} THEN {v}", literal(&value)));
            }
            let fallback = match unknown_keys {
                UnknownKeys::Hash => hash,
                UnknownKeys::Error => "NULL".into(),
            };
            sql.push_str(&format!(" ELSE {fallback} END"));
            Some(sql)
        }
    }
}

/// Rows or bytes per vshard on one shard, over every sharded table.
pub async fn measure(
    client: &Client,
    catalog: &Catalog,
    cfg: &ShardingConfig,
    by: Measure,
) -> Result<BTreeMap<u32, u64>, tokio_postgres::Error> {
    let mut out = BTreeMap::new();
    for t in &cfg.tables {
        let Some(expr) = vshard_case(t, catalog, cfg) else {
            continue;
        };
        let amount = match by {
            Measure::Rows => "count(*)",
            Measure::Bytes => "sum(pg_column_size(r.*))",
            // Not on the shards: see `measure_load`.
            Measure::Load => return Ok(BTreeMap::new()),
        };
        let sql = format!(
            "SELECT ({expr})::int, ({amount})::bigint FROM {} r GROUP BY 1",
            table_sql(&t.name)
        );
        for row in client.query(&sql, &[]).await? {
            let (v, n): (Option<i32>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
            if let (Some(v), Some(n)) = (v, n) {
                *out.entry(v.max(0) as u32).or_insert(0) += n.max(0) as u64;
            }
        }
    }
    Ok(out)
}

/// One proposed remap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub vshards: Vec<u32>,
    pub source: u16,
    pub target: u16,
    /// Rows or bytes it moves.
    pub amount: u64,
}

/// The proposal: per-shard totals before and after, and the moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub before: Vec<u64>,
    pub after: Vec<u64>,
    pub moves: Vec<Move>,
}

/// Greedy: while some vshard of the fullest shard is smaller than the gap between the fullest and the emptiest shard,
/// move the largest such vshard there (each move narrows the gap, so it ends). Empty vshards never move.
pub fn propose(placement: &[u16], weights: &BTreeMap<u32, u64>, shards: usize) -> Proposal {
    let mut totals = vec![0u64; shards];
    let mut owner: Vec<u16> = placement.to_vec();
    for (&v, &w) in weights {
        if let Some(&s) = placement.get(v as usize) {
            if let Some(t) = totals.get_mut(usize::from(s)) {
                *t += w;
            }
        }
    }
    let before = totals.clone();
    let mut moved: BTreeMap<(u16, u16), (Vec<u32>, u64)> = BTreeMap::new();
    for _ in 0..placement.len() {
        let Some((hi, _)) = totals
            .iter()
            .enumerate()
            .max_by_key(|(i, t)| (**t, usize::MAX - i))
        else {
            break;
        };
        let Some((lo, _)) = totals.iter().enumerate().min_by_key(|(i, t)| (**t, *i)) else {
            break;
        };
        let gap = totals[hi] - totals[lo];
        let best = weights
            .iter()
            .filter(|(v, w)| {
                owner.get(**v as usize).map(|s| usize::from(*s)) == Some(hi) && **w > 0 && **w < gap
            })
            .max_by_key(|(v, w)| (**w, u32::MAX - **v));
        let Some((&v, &w)) = best else { break };
        totals[hi] -= w;
        totals[lo] += w;
        let (from, to) = (hi as u16, lo as u16);
        owner[v as usize] = to;
        let e = moved.entry((from, to)).or_default();
        e.0.push(v);
        e.1 += w;
    }
    let moves = moved
        .into_iter()
        .map(|((source, target), (mut vshards, amount))| {
            vshards.sort_unstable();
            Move {
                vshards,
                source,
                target,
                amount,
            }
        })
        .collect();
    Proposal {
        before,
        after: totals,
        moves,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_largest_vshards_that_narrow_the_gap() {
        // 8 vshards, 0-3 on shard 0, 4-7 on shard 1, shard 2 new and empty.
        let placement = [0, 0, 0, 0, 1, 1, 1, 1];
        let weights = BTreeMap::from([(0, 50), (1, 30), (2, 10), (3, 10), (4, 10), (5, 10)]);
        let p = propose(&placement, &weights, 3);
        assert_eq!(p.before, vec![100, 20, 0]);
        assert_eq!(p.after.iter().sum::<u64>(), 120);
        assert!(
            p.after.iter().max().unwrap() - p.after.iter().min().unwrap() <= 30,
            "{p:?}"
        );
        assert_eq!(p.moves[0].source, 0);
        assert!(p.moves.iter().all(|m| m.source == 0), "{p:?}");
        // Already even: nothing to do; empty vshards never move.
        let even = propose(&[0, 1], &BTreeMap::from([(0, 5), (1, 5)]), 2);
        assert!(even.moves.is_empty());
        assert!(propose(&[0, 0], &BTreeMap::new(), 2).moves.is_empty());
    }
}
