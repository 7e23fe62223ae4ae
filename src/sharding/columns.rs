//! Reads the column order of sharded tables from the default shard, for `INSERT INTO t VALUES (...)` and
//! `INSERT INTO t SELECT ...` without a column list: Postgres assigns such values to the table's columns in `attnum`
//! order (dropped columns skipped), so the shard key's position is a fact of the database, not of the SQL. The
//! router reads it when its catalog first loads, at every catalog reload and every `catalog_check_interval`, and
//! refuses such INSERTs (0A000) while a table's order is unknown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::supervisor::Tasks;
use tokio_postgres::{Client, NoTls};

use super::schema::{ShardedTable, TableColumns};

/// `pg_attribute` in `attnum` order, as Postgres matches a column-less INSERT's values to columns (generated columns
/// included: such an INSERT must write DEFAULT there, but the position still counts).
const COLUMNS_SQL: &str = "SELECT attname::text FROM pg_catalog.pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum";

/// The column order of every table in `tables` that the default shard has and whose key column it has; the others
/// are left unknown and come back as problems to log.
pub async fn load<'t>(
    client: &Client,
    tables: impl Iterator<Item = &'t ShardedTable>,
) -> Result<(TableColumns, Vec<String>), tokio_postgres::Error> {
    let mut by_table = HashMap::new();
    let mut problems = Vec::new();
    for table in tables {
        let rows = client.query(COLUMNS_SQL, &[&quoted(&table.name)]).await?;
        let columns: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if columns.is_empty() {
            problems.push(format!(
                "table {} not found on the default shard",
                table.name
            ));
        } else if !columns.contains(&table.key) {
            problems.push(format!(
                "table {} on the default shard has no column {}",
                table.name, table.key
            ));
        } else {
            by_table.insert(table.name.clone(), columns);
        }
    }
    Ok((TableColumns::new(by_table), problems))
}

/// Reads the column order of `tables` from the server `pg` names now, after every epoch change and every `period`,
/// handing each result to `install` (which returns false once nobody needs it: the task then ends, as it does when
/// the epoch sender goes away).
pub fn follow(
    pg: tokio_postgres::Config,
    tables: Vec<ShardedTable>,
    period: Duration,
    epochs: watch::Receiver<i64>,
    install: impl Fn(TableColumns) -> bool + Send + Sync + 'static,
    tasks: &Arc<Tasks>,
    database: &str,
) {
    let install = Arc::new(install);
    let tables = Arc::new(tables);
    tasks.spawn("column reader", database, move || {
        let (pg, tables, mut epochs, install) = (
            pg.clone(),
            Arc::clone(&tables),
            epochs.clone(),
            Arc::clone(&install),
        );
        async move {
        let mut client: Option<Client> = None;
        loop {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = match pg.connect(NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        Some(c)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read column order from the default shard");
                        None
                    }
                };
            }
            if let Some(c) = &client {
                match load(c, tables.iter()).await {
                    Ok((columns, problems)) => {
                        for p in problems {
                            tracing::warn!(problem = %p, "INSERT without a column list cannot be routed");
                        }
                        if !install(columns) {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading column order failed"),
                }
            }
            tokio::select! {
                changed = epochs.changed() => if changed.is_err() { return Ok(()) },
                _ = tokio::time::sleep(period) => {}
            }
        }
        }
    });
}

/// A resolved table name (`t` or `s.t`, as `ShardSchema` stores it) quoted for `to_regclass`, so case and special
/// characters survive.
fn quoted(name: &str) -> String {
    let q = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", q(schema), q(table)),
        None => q(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_regclass() {
        assert_eq!(quoted("accounts"), "\"accounts\"");
        assert_eq!(quoted("sales.Orders"), "\"sales\".\"Orders\"");
        assert_eq!(quoted("we\"ird"), "\"we\"\"ird\"");
    }
}
