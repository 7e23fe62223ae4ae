//! Checks made before a remap creates anything: each refusal says what is wrong and what to do, and nothing has been
//! changed when one is reported. Notes are things the operator must know but that do not stop the move.

use tokio_postgres::Client;

use super::plan::{Plan, TableMove};

/// What preflight found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Reasons the move cannot be safe; the remap does not start while there is one.
    pub refusals: Vec<String>,
    /// Warnings worth printing (sequences, WAL retention).
    pub notes: Vec<String>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.refusals.is_empty() {
            out.push_str("preflight: ok\n");
        } else {
            out.push_str("preflight: refused (nothing was changed)\n");
            for r in &self.refusals {
                out.push_str(&format!("  - {r}\n"));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

async fn setting(client: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await?
        .try_get(0)
}

/// Runs every check; errors only when a server cannot be asked.
pub async fn check(
    plan: &Plan,
    source: &Client,
    target: &Client,
) -> Result<Report, tokio_postgres::Error> {
    let mut r = Report::default();
    let (s, t) = (plan.source, plan.target);
    servers(plan, source, target, &mut r).await?;
    for table in &plan.tables {
        let exists: bool = source
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql_name])
            .await?
            .try_get(0)?;
        if !exists {
            r.refusals.push(format!(
                "table {} does not exist on shard {s}: create it there (every sharded table exists on every shard)",
                table.name
            ));
            continue;
        }
        replica_identity(table, s, source, &mut r).await?;
        let there: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql_name])
            .await?
            .try_get(0)?;
        if !there {
            r.refusals.push(format!(
                "table {} does not exist on shard {t}: create it there with the same columns as on shard {s}",
                table.name
            ));
            continue;
        }
        columns(table, s, t, source, target, &mut r).await?;
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            table.sql_name, table.filter
        );
        let on_target: i64 = target.query_one(&sql, &[]).await?.try_get(0)?;
        if on_target > 0 {
            r.refusals.push(format!(
                "shard {t} already has {on_target} rows of the moving vshards in {}: the copy would duplicate them. \
                 Look at them (SELECT * FROM {} WHERE {}), delete them if they are leftovers, or move other vshards",
                table.name, table.sql_name, table.filter
            ));
        }
        sequences(table, s, t, source, &mut r).await?;
    }
    Ok(r)
}

/// WAL level, free slots and senders on the source; privileges and workers on the target.
async fn servers(
    plan: &Plan,
    source: &Client,
    target: &Client,
    r: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let (s, t) = (plan.source, plan.target);
    let wal_level = setting(source, "wal_level").await?;
    if wal_level != "logical" {
        r.refusals.push(format!(
            "shard {s} has wal_level = {wal_level}; logical replication needs wal_level = logical: run \
             ALTER SYSTEM SET wal_level = logical on shard {s} and restart it (its replicas too)"
        ));
    }
    let sync_workers: i64 = setting(target, "max_sync_workers_per_subscription")
        .await?
        .parse()
        .unwrap_or(2);
    // One slot and sender for the subscription, one more per table copied at once.
    let needed = 1 + sync_workers.clamp(0, plan.tables.len() as i64);
    let free_slots: i64 = source
        .query_one(
            "SELECT current_setting('max_replication_slots')::bigint - (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await?
        .try_get(0)?;
    if free_slots < needed {
        r.refusals.push(format!(
            "shard {s} has {free_slots} free replication slots and the move needs {needed}: raise \
             max_replication_slots (restart needed) or drop unused slots (SELECT * FROM pg_replication_slots)"
        ));
    }
    let free_senders: i64 = source
        .query_one(
            "SELECT current_setting('max_wal_senders')::bigint - (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await?
        .try_get(0)?;
    if free_senders < needed {
        r.refusals.push(format!(
            "shard {s} has {free_senders} free WAL senders and the move needs {needed}: raise max_wal_senders \
             (restart needed)"
        ));
    }
    let keep = setting(source, "max_slot_wal_keep_size").await?;
    if keep == "-1" {
        r.notes.push(format!(
            "shard {s} keeps WAL for the remap's slot without limit (max_slot_wal_keep_size = -1): if shard {t} \
             stops applying, WAL grows on shard {s} until the remap goes on or is aborted"
        ));
    } else {
        r.notes.push(format!(
            "shard {s} keeps at most {keep} of WAL for a slot (max_slot_wal_keep_size): if shard {t} falls that far \
             behind, the slot is invalidated and the remap must be aborted and started again"
        ));
    }
    let superuser: bool = target
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .try_get(0)?;
    if !superuser {
        r.refusals.push(format!(
            "the role remap connects to shard {t} with is not a superuser, which PostgreSQL 15 requires for \
             CREATE SUBSCRIPTION: pass --shard-user with a superuser role"
        ));
    }
    let workers: i64 = setting(target, "max_logical_replication_workers")
        .await?
        .parse()
        .unwrap_or(0);
    if workers < 1 {
        r.refusals.push(format!(
            "shard {t} has max_logical_replication_workers = {workers}: set it to at least 2 (restart needed)"
        ));
    }
    Ok(())
}

/// PostgreSQL 15 checks a publication's row filter against the replica identity on every UPDATE and DELETE of the
/// table, not when the publication is created: a key outside the identity would make all of them fail.
async fn replica_identity(
    table: &TableMove,
    s: u16,
    source: &Client,
    r: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let row = source
        .query_one(
            "SELECT c.relreplident::text, \
               coalesce((SELECT array_agg(a.attname::text) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary \
                   WHEN 'i' THEN i.indisreplident ELSE false END), '{}'), \
               coalesce((SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) \
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}') \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table.sql_name],
        )
        .await?;
    let ident: String = row.try_get(0)?;
    let cols: Vec<String> = row.try_get(1)?;
    let pk: Vec<String> = row.try_get(2)?;
    if ident == "f" || cols.contains(&table.key) {
        return Ok(());
    }
    let key = crate::sharding::hash::quote_ident(&table.key);
    let fix = if pk.is_empty() {
        format!(
            "the table has no primary key: add one that includes {key}, or run ALTER TABLE {} REPLICA IDENTITY FULL \
             (every UPDATE and DELETE then logs the whole old row)",
            table.sql_name
        )
    } else {
        let mut index_cols = vec![key.clone()];
        index_cols.extend(
            pk.iter()
                .filter(|c| **c != table.key)
                .map(|c| crate::sharding::hash::quote_ident(c)),
        );
        let index = crate::sharding::hash::quote_ident(&format!(
            "{}_shardpool_ri",
            table.name.replace('.', "_")
        ));
        format!(
            "on every shard run CREATE UNIQUE INDEX CONCURRENTLY {index} ON {} ({}); ALTER TABLE {} REPLICA \
             IDENTITY USING INDEX {index}; (or ALTER TABLE {} REPLICA IDENTITY FULL, which logs whole old rows)",
            table.sql_name,
            index_cols.join(", "),
            table.sql_name,
            table.sql_name
        )
    };
    let what = match ident.as_str() {
        "n" => "has REPLICA IDENTITY NOTHING".to_string(),
        _ if cols.is_empty() => "has no replica identity (no primary key)".to_string(),
        _ => format!("has a replica identity ({}) without", cols.join(", ")),
    };
    r.refusals.push(format!(
        "table {} on shard {s} {what} its shard key {}: while the remap's publication exists, PostgreSQL would \
         refuse every UPDATE and DELETE of it. To fix: {fix}",
        table.name, table.key
    ));
    Ok(())
}

/// The target's table must take every column the source sends, with the same type.
async fn columns(
    table: &TableMove,
    s: u16,
    t: u16,
    source: &Client,
    target: &Client,
    r: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let sql = "SELECT attname::text || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute \
               WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY 1";
    let read = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<String>, tokio_postgres::Error> {
        rows.iter().map(|row| row.try_get(0)).collect()
    };
    let on_source = read(source.query(sql, &[&table.sql_name]).await?)?;
    let on_target = read(target.query(sql, &[&table.sql_name]).await?)?;
    if on_source != on_target {
        let missing: Vec<&String> = on_source
            .iter()
            .filter(|c| !on_target.contains(c))
            .collect();
        let extra: Vec<&String> = on_target
            .iter()
            .filter(|c| !on_source.contains(c))
            .collect();
        r.refusals.push(format!(
            "table {} differs between shard {s} and shard {t}: shard {t} lacks {missing:?} and has {extra:?} that \
             shard {s} lacks; run the same DDL on both (through shardpool, DDL on a sharded table runs on every \
             shard)",
            table.name
        ));
    }
    Ok(())
}

/// Sequences are not replicated: report the columns that take values from one.
async fn sequences(
    table: &TableMove,
    s: u16,
    t: u16,
    source: &Client,
    r: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let rows = source
        .query(
            "SELECT a.attname::text FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid \
               AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
               AND (a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%') ORDER BY 1",
            &[&table.sql_name],
        )
        .await?;
    for row in rows {
        let col: String = row.try_get(0)?;
        r.notes.push(format!(
            "{}.{col} takes values from a sequence, and sequences are not replicated: the moved rows keep their \
             values, new rows of the moved vshards get values from shard {t}'s sequence. Make sure the two cannot \
             collide (e.g. SELECT setval(pg_get_serial_sequence('{}', '{col}'), <above shard {s}'s value>) on \
             shard {t}), or let the application choose the values",
            table.name,
            table.sql_name.replace('\'', "''")
        ));
    }
    Ok(())
}
