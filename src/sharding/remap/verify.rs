//! Verification before anything is deleted: for every moved table, row count and an order-independent checksum of
//! the moving rows, per vshard for hash-mapped tables (per table for range and directory maps), source against
//! target. The checksum sums the first 64 bits of each row's md5 over its `jsonb` form, which names columns, so a
//! table whose columns are ordered differently on the two shards still compares equal.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::plan::Plan;
use crate::config::sharding::ShardingConfig;
use crate::sharding::hash::{quote_ident, vshard_expr};

/// `(table, vshard or "all") -> (rows, checksum)`.
pub type Sums = BTreeMap<(String, String), (i64, String)>;

/// Sums of the moving rows on one server (inside whatever transaction `client` has open).
pub async fn sums(
    client: &Client,
    plan: &Plan,
    cfg: &ShardingConfig,
    vshards: u32,
) -> Result<Sums, tokio_postgres::Error> {
    let mut out = Sums::new();
    for t in &plan.tables {
        let group = match cfg.tables.iter().find(|c| c.name == t.name) {
            Some(c) if c.map == "hash" => {
                format!(
                    "{}::text",
                    vshard_expr(&quote_ident(&c.key), c.key_type, vshards)
                )
            }
            _ => "'all'".to_string(),
        };
        let sql = format!(
            "SELECT {group}, count(*), \
             coalesce(sum(('x' || substr(md5(to_jsonb(r.*)::text), 1, 16))::bit(64)::bigint), 0)::text \
             FROM {} r WHERE {} GROUP BY 1",
            t.sql_name, t.filter
        );
        for row in client.query(&sql, &[]).await? {
            out.insert(
                (t.name.clone(), row.try_get(0)?),
                (row.try_get(1)?, row.try_get(2)?),
            );
        }
    }
    Ok(out)
}

/// Differences between the two sides, one line each; empty when they agree.
pub fn compare(source: &Sums, target: &Sums) -> Vec<String> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&(String, String)> =
        source.keys().chain(target.keys()).collect();
    for k in keys {
        let (a, b) = (source.get(k), target.get(k));
        if a != b {
            let show = |x: Option<&(i64, String)>| {
                x.map_or("no rows".to_string(), |(n, c)| {
                    format!("{n} rows, checksum {c}")
                })
            };
            out.push(format!(
                "{} vshard {}: source {}, target {}",
                k.0,
                k.1,
                show(a),
                show(b)
            ));
        }
    }
    out
}

/// Total rows in the sums (for progress lines).
pub fn rows(s: &Sums) -> i64 {
    s.values().map(|(n, _)| n).sum()
}

/// Moving rows on one server, all tables together (progress, not verification).
pub async fn count(client: &Client, plan: &Plan) -> Result<i64, tokio_postgres::Error> {
    let mut n = 0;
    for t in &plan.tables {
        let sql = format!("SELECT count(*) FROM {} WHERE {}", t.sql_name, t.filter);
        n += client.query_one(&sql, &[]).await?.try_get::<_, i64>(0)?;
    }
    Ok(n)
}
