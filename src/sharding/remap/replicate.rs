//! Copy and catch-up with PostgreSQL's own logical replication: a publication on the source whose row filters select
//! the moving rows, a subscription on the target that copies them (`copy_data`) and then applies every later change.
//! Every object is named after the remap (`shardpool_remap_<id>`), so a run that died is found again, and creating
//! is "create unless it exists".

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::plan::Plan;
use super::state::replication_name;

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the subscription on shard {shard} reports errors ({what}); its server log says why")]
    Failing { shard: u16, what: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("the replication slot {0} on the source is gone or invalidated (WAL removed?): abort the remap and start it again")]
    SlotLost(String),
}

/// A one-column table on both shards, published without a filter: a row inserted into it on the source shows up
/// on the target once the target applied every transaction that committed before it (changes are applied in commit
/// order). Faster than waiting for the slot's confirmed position, which the target reports only now and then when
/// nothing else flows.
pub fn marker_table(id: i64) -> String {
    format!("shardpool_fence.remap_{id}_marker")
}

/// Creates the marker table on one shard.
pub async fn ensure_marker(client: &Client, id: i64) -> Result<(), ReplicateError> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS shardpool_fence; \
             CREATE TABLE IF NOT EXISTS {} (token bigint PRIMARY KEY)",
            marker_table(id)
        ))
        .await?;
    Ok(())
}

/// Inserts a fresh marker on the source; returns its token for [`marker_applied`].
pub async fn send_marker(source: &Client, id: i64) -> Result<i64, ReplicateError> {
    Ok(source
        .query_one(
            &format!(
                "INSERT INTO {} SELECT coalesce(max(token), 0) + 1 FROM {} RETURNING token",
                marker_table(id),
                marker_table(id)
            ),
            &[],
        )
        .await?
        .try_get(0)?)
}

/// Whether the target has applied the marker `token` (and so everything committed before it on the source).
pub async fn marker_applied(target: &Client, id: i64, token: i64) -> Result<bool, ReplicateError> {
    Ok(target
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE token = $1)",
                marker_table(id)
            ),
            &[&token],
        )
        .await?
        .try_get(0)?)
}

/// Quotes a string literal (standard_conforming_strings is on since PostgreSQL 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub async fn ensure_publication(
    source: &Client,
    plan: &Plan,
    id: i64,
) -> Result<bool, ReplicateError> {
    let name = replication_name(id);
    let exists: bool = source
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await?
        .try_get(0)?;
    if !exists {
        ensure_marker(source, id).await?;
        source.batch_execute(&plan.publication_sql(id)).await?;
    }
    Ok(!exists)
}

/// Creates the subscription (and its slot on the source) unless it exists. A slot left by a run that died between
/// creating it and committing the subscription is dropped first.
pub async fn ensure_subscription(
    source: &Client,
    target: &Client,
    id: i64,
    conninfo: &str,
) -> Result<bool, ReplicateError> {
    let name = replication_name(id);
    let exists: bool = target
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&name],
        )
        .await?
        .try_get(0)?;
    if exists {
        return Ok(false);
    }
    ensure_marker(target, id).await?;
    drop_slot(source, &name).await?;
    target
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {name} CONNECTION {} PUBLICATION {name} \
             WITH (copy_data = true, slot_name = {}, synchronous_commit = 'off')",
            literal(conninfo),
            literal(&name)
        ))
        .await?;
    Ok(true)
}

/// Tables of the subscription not yet synchronised, and all of them.
pub async fn sync_state(target: &Client, id: i64) -> Result<(i64, i64), ReplicateError> {
    let row = target
        .query_one(
            "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r'), count(*) FROM pg_subscription_rel r \
             JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
            &[&replication_name(id)],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Errors the subscription's workers hit so far (a duplicate key on the target, say).
async fn errors(target: &Client, id: i64, shard: u16) -> Result<(), ReplicateError> {
    let row = target
        .query_opt(
            "SELECT apply_error_count, sync_error_count FROM pg_stat_subscription_stats WHERE subname = $1",
            &[&replication_name(id)],
        )
        .await?;
    if let Some(row) = row {
        let (apply, sync): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if apply + sync > 0 {
            return Err(ReplicateError::Failing {
                shard,
                what: format!("{apply} apply errors, {sync} copy errors"),
            });
        }
    }
    Ok(())
}

/// Waits until every table has been copied and is being streamed (`pg_subscription_rel` state 'r').
pub async fn wait_synced(
    target: &Client,
    id: i64,
    tables: usize,
    shard: u16,
    timeout: Duration,
    mut progress: impl FnMut(i64, i64, &[TableCopy]),
) -> Result<(), ReplicateError> {
    let deadline = Instant::now() + timeout;
    let mut copies: Vec<TableCopy> = Vec::new();
    loop {
        let (pending, total) = sync_state(target, id).await?;
        copy_status(target, id, &mut copies).await?;
        progress(total - pending, total, &copies);
        if pending == 0 && total >= tables as i64 {
            return Ok(());
        }
        errors(target, id, shard).await?;
        if Instant::now() >= deadline {
            return Err(ReplicateError::Timeout(
                timeout,
                format!("the initial copy ({pending} of {total} tables left)"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One table's initial copy, as the target reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCopy {
    /// The table on the target (`schema.table` outside `public`).
    pub table: String,
    /// Rows and bytes the copy processed so far (the most seen: the counters vanish when a table's copy ends).
    pub rows: u64,
    pub bytes: u64,
    /// The copy of this table is over (synchronised, or applying changes).
    pub done: bool,
}

/// Updates `copies` from the target's `pg_stat_progress_copy` (the table synchronisation workers' COPY) and
/// `pg_subscription_rel`. The fence's marker table is not listed.
pub async fn copy_status(
    target: &Client,
    id: i64,
    copies: &mut Vec<TableCopy>,
) -> Result<(), ReplicateError> {
    let rows = target
        .query(
            "SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text ELSE n.nspname || '.' || c.relname END, \
                    r.srsubstate::text IN ('s', 'r'), \
                    p.tuples_processed, p.bytes_processed \
             FROM pg_subscription s \
             JOIN pg_subscription_rel r ON r.srsubid = s.oid \
             JOIN pg_class c ON c.oid = r.srrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_stat_progress_copy p ON p.relid = r.srrelid AND p.datname = current_database() \
             WHERE s.subname = $1 AND n.nspname <> 'shardpool_fence' \
             ORDER BY 1",
            &[&replication_name(id)],
        )
        .await?;
    for row in rows {
        let table: String = row.try_get(0)?;
        let done: bool = row.try_get(1)?;
        let tuples = row.try_get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64;
        let bytes = row.try_get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64;
        match copies.iter_mut().find(|c| c.table == table) {
            Some(c) => {
                c.rows = c.rows.max(tuples);
                c.bytes = c.bytes.max(bytes);
                c.done = done;
            }
            None => copies.push(TableCopy {
                table,
                rows: tuples,
                bytes,
                done,
            }),
        }
    }
    Ok(())
}

/// Bytes of WAL the source wrote that the target has not confirmed.
pub async fn lag(source: &Client, id: i64) -> Result<i64, ReplicateError> {
    let name = replication_name(id);
    let row = source
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, wal_status \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?
        .ok_or_else(|| ReplicateError::SlotLost(name.clone()))?;
    let status: Option<String> = row.try_get(1)?;
    if status.as_deref() == Some("lost") {
        return Err(ReplicateError::SlotLost(name));
    }
    Ok(row.try_get::<_, Option<i64>>(0)?.unwrap_or(i64::MAX))
}

/// Waits until the lag is at most `max_bytes`.
pub async fn wait_caught_up(
    source: &Client,
    target: &Client,
    id: i64,
    shard: u16,
    max_bytes: i64,
    timeout: Duration,
    mut progress: impl FnMut(i64),
) -> Result<(), ReplicateError> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = lag(source, id).await?;
        progress(l);
        if l <= max_bytes {
            return Ok(());
        }
        errors(target, id, shard).await?;
        if Instant::now() >= deadline {
            return Err(ReplicateError::Timeout(
                timeout,
                format!("the target to catch up ({l} bytes behind)"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The source's current WAL position, as text.
pub async fn current_lsn(source: &Client) -> Result<String, ReplicateError> {
    Ok(source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .try_get(0)?)
}

/// Whether the target has applied (and confirmed) everything up to `lsn`.
pub async fn applied(source: &Client, id: i64, lsn: &str) -> Result<bool, ReplicateError> {
    let name = replication_name(id);
    let row = source
        .query_opt(
            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&name, &lsn],
        )
        .await?
        .ok_or_else(|| ReplicateError::SlotLost(name))?;
    Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(false))
}

/// Drops a replication slot of this name on `server` if there is one, ending the WAL sender that holds it.
pub async fn drop_slot(server: &Client, name: &str) -> Result<(), ReplicateError> {
    for _ in 0..100 {
        let row = server
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        let Some(row) = row else { return Ok(()) };
        match row.try_get::<_, Option<i32>>(0)? {
            Some(pid) => {
                server
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => {
                // Another session may take or drop it meanwhile: go round again on failure.
                if server
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
    }
    Err(ReplicateError::Timeout(
        Duration::from_secs(2),
        format!("replication slot {name} to be released"),
    ))
}

/// Removes the subscription, its slots and the publication, whatever state they are in: used by cleanup (after the
/// move) and abort (at any point). The subscription goes first, so nothing the source does afterwards replicates.
pub async fn drop_all(source: &Client, target: &Client, id: i64) -> Result<(), ReplicateError> {
    let name = replication_name(id);
    let sub = target
        .query_opt(
            "SELECT oid::bigint FROM pg_subscription WHERE subname = $1",
            &[&name],
        )
        .await?;
    if let Some(row) = sub {
        let oid: i64 = row.try_get(0)?;
        // Detach the slot first: DROP SUBSCRIPTION then works even when the source cannot be reached, and the
        // slots are dropped below from the source's side.
        target
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {name} DISABLE; ALTER SUBSCRIPTION {name} SET (slot_name = NONE); \
                 DROP SUBSCRIPTION {name}"
            ))
            .await?;
        // Table-copy slots a copy in progress may have left: pg_<suboid>_sync_<relid>_<sysid>.
        let sync = source
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1",
                &[&format!("pg_{oid}_sync_%")],
            )
            .await?;
        for row in sync {
            let slot: String = row.try_get(0)?;
            drop_slot(source, &slot).await?;
        }
    }
    drop_slot(source, &name).await?;
    source
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {name}; DROP TABLE IF EXISTS {}",
            marker_table(id)
        ))
        .await?;
    target
        .batch_execute(&format!("DROP TABLE IF EXISTS {}", marker_table(id)))
        .await?;
    Ok(())
}

/// Replication objects of remap `id` still present (`(what, name)`): empty after cleanup or abort.
pub async fn leftovers(
    source: &Client,
    target: &Client,
    id: i64,
) -> Result<Vec<String>, ReplicateError> {
    let name = replication_name(id);
    let mut out = Vec::new();
    for (client, sql, what) in [
        (
            source,
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE 'pg_%_sync_%'",
            "slot",
        ),
        (
            source,
            "SELECT pubname::text FROM pg_publication WHERE pubname = $1",
            "publication",
        ),
        (
            target,
            "SELECT subname::text FROM pg_subscription WHERE subname = $1",
            "subscription",
        ),
    ] {
        for row in client.query(sql, &[&name]).await? {
            let n: String = row.try_get(0)?;
            out.push(format!("{what} {n}"));
        }
    }
    Ok(out)
}
