//! Which shard key values a statement touches. The router parses a statement once (sqlparser, Postgres dialect), asks
//! this module for a [`ShardAnalysis`] and caches it per statement text; it then maps the key values to virtual shards
//! and shards. Prepared statements keep `$n` placeholders in the analysis and resolve them from each Bind with
//! [`bind_keys`].
//!
//! The analysis works on *units*: sets of sharded-table occurrences whose rows are tied together by an equality of
//! their shard keys (`JOIN h ON h.aid = a.aid`, a correlated `WHERE h.aid = a.aid`, `a.aid IN (SELECT h.aid ...)`).
//! Rows of one unit that combine sit on one shard, so a unit can run on every shard separately; two units cannot,
//! unless both are pinned to one shard. A unit is pinned by the WHERE (and inner-join ON) conditions of the query block
//! closest to the statement's top that contains one of its tables: conditions inside a correlated subquery restrict
//! only that subquery's rows, never the outer rows. Everything unknown errs towards "no key" (scatter for reads,
//! refusal for writes), and [`CrossShard`] says why a statement must not be split across shards: tables not joined
//! on their keys, a subquery that needs every shard's rows (LIMIT, DISTINCT, aggregates not grouped by the key), or
//! a shape this walker does not understand.
//!
//! Range conditions (`key > 5`, `key BETWEEN $1 AND $2`, ANDs of them) on integer and uuid keys give a key range per
//! unit ([`StatementShards::ranges`]), which a range map turns into the shards whose ranges overlap; `OR` with a
//! range gives nothing (scatter), and a range ANDed with equalities keeps the equalities.
//!
//! Known limits, all on the safe side: a key limited only outside a CTE or derived table is not traced into it
//! (`WITH x AS (SELECT * FROM t) SELECT * FROM x WHERE x.key = 1` scatters); ranges on text keys give no range (the
//! column's collation, not the map's byte order, decides what `>` means); user-defined aggregates are not recognised
//! as aggregates.

mod bind;
mod literals;
mod statement;
mod syntax;
#[cfg(test)]
mod tests;
mod walk;

use sqlparser::ast::Statement;

use super::schema::{ShardSchema, TableColumns};
use walk::Walker;

pub use bind::{bind_insert_rows, bind_keys, bind_range, BindError, BoundRange};
pub use statement::{
    Bound, CrossShard, KeyRange, KeyRef, KeyUse, Keys, RangeUse, StatementKind, StatementShards,
    Target,
};

/// The analysis of a query string: per statement, and combined for a simple query holding several.
#[derive(Clone, Debug, PartialEq, Eq)]
// Analyses live behind an `Arc` in the router's cache: the size of the unparsed variant is irrelevant.
#[allow(clippy::large_enum_variant)]
pub enum ShardAnalysis {
    Analyzed {
        statements: Vec<StatementShards>,
        combined: StatementShards,
    },
    /// The SQL did not parse: nothing is known about where it should run.
    Unroutable { reason: String },
    /// Too deeply nested to parse safely ([`crate::sqlparse::MAX_EXPRESSION_DEPTH`]): refused, since nothing is
    /// known about where it should run and it may well be a write.
    TooDeep,
}

impl ShardAnalysis {
    pub fn combined(&self) -> Option<&StatementShards> {
        match self {
            ShardAnalysis::Analyzed { combined, .. } => Some(combined),
            ShardAnalysis::Unroutable { .. } | ShardAnalysis::TooDeep => None,
        }
    }
}

/// Analyzes already parsed statements (the router parses once for all its decisions). Never fails: what it cannot
/// follow comes back as `Keys::None` with a [`CrossShard`] reason.
pub fn analyze(statements: &[Statement], schema: &ShardSchema) -> ShardAnalysis {
    analyze_with(statements, schema, &TableColumns::default())
}

/// [`analyze`], knowing the column order of sharded tables (for `INSERT` without a column list).
pub fn analyze_with(
    statements: &[Statement],
    schema: &ShardSchema,
    columns: &TableColumns,
) -> ShardAnalysis {
    let mut each = Vec::with_capacity(statements.len());
    let mut combined = StatementShards::default();
    for st in statements {
        let mut w = Walker::new(schema, columns);
        w.statement(st, true);
        let s = w.finish();
        combined.absorb(&s);
        each.push(s);
    }
    ShardAnalysis::Analyzed {
        statements: each,
        combined,
    }
}

/// Parses with the Postgres dialect, then [`analyze`]s.
pub fn analyze_sql(sql: &str, schema: &ShardSchema) -> ShardAnalysis {
    analyze_sql_with(sql, schema, &TableColumns::default())
}

/// [`analyze_sql`], knowing the column order of sharded tables.
pub fn analyze_sql_with(sql: &str, schema: &ShardSchema, columns: &TableColumns) -> ShardAnalysis {
    match crate::sqlparse::parse_statements(sql) {
        Ok(statements) => analyze_with(&statements, schema, columns),
        Err(crate::sqlparse::SqlParseError::TooDeep) => ShardAnalysis::TooDeep,
        Err(e) => ShardAnalysis::Unroutable {
            reason: e.to_string(),
        },
    }
}
