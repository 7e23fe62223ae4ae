//! The result of analysing one statement for sharding: which sharded tables it touches, which key values limit
//! them, and why it may not be split across shards. The router turns a [`StatementShards`] into a placement.

use std::sync::Arc;

use super::super::key::{KeyType, KeyValue};
use super::super::schema::ShardedTable;

/// A key value as the statement gives it: a literal, or a Bind parameter resolved per execution.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// `KeyValue::Null` matches no row (`key = NULL`); as an inserted key it has no shard.
    Literal(KeyValue),
    /// `$n`, 1-based.
    Param(usize),
}

/// A key value of one sharded table; `table` carries the map and key type that place it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUse {
    pub table: Arc<ShardedTable>,
    pub key: KeyRef,
}

impl KeyUse {
    pub fn map(&self) -> &str {
        &self.table.map
    }
    pub fn key_type(&self) -> KeyType {
        self.table.key_type
    }
}

/// One end of a key range: the bound and whether it is included.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bound {
    pub key: KeyRef,
    pub inclusive: bool,
}

/// Keys between bounds, from `key > v`, `key <= v`, `key BETWEEN a AND b` and ANDs of them. Every listed bound holds:
/// bounds that are parameters can only be compared once bound, so all are kept and the tightest wins then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub lower: Vec<Bound>,
    pub upper: Vec<Bound>,
}

impl KeyRange {
    /// Both ranges hold.
    pub fn and(mut self, other: KeyRange) -> KeyRange {
        self.lower.extend(other.lower);
        self.upper.extend(other.upper);
        self
    }
}

/// A key range of one sharded table (its unit's rows all have keys in it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeUse {
    pub table: Arc<ShardedTable>,
    pub range: KeyRange,
}

/// The key values a statement's sharded rows are limited to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Keys {
    /// No key limits some sharded table of the statement (or it has none): scatter a read, refuse a write.
    #[default]
    None,
    /// Every sharded row the statement touches has one of these keys: the statement needs exactly the shards they
    /// map to. Never empty; `Literal(Null)` entries match nothing.
    Values(Vec<KeyUse>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatementKind {
    /// Transaction control, SET, and everything else that touches no table.
    #[default]
    Other,
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, COPY FROM, or a query with a data-modifying CTE.
    Write,
    /// CREATE/ALTER/DROP/TRUNCATE of a table: runs on every shard when the table is sharded or a reference table.
    Ddl,
}

/// Why a statement is only correct on one shard. A statement flagged so must not be scattered: route it when its keys
/// all land on one shard (for `WithUnsharded`, on the default shard), otherwise refuse it with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrossShard {
    #[error("cross-shard join: {left} and {right} are joined on their shard keys but placed by different maps or key types")]
    DifferentMaps { left: String, right: String },
    #[error("cross-shard join: {left} and {right} are not joined on their shard keys")]
    NotJoinedOnKey { left: String, right: String },
    #[error("cross-shard join: sharded table {sharded} with unsharded table {unsharded}, which only the default shard holds")]
    WithUnsharded { sharded: String, unsharded: String },
    #[error("a write to reference table {reference} reads table {other}, whose rows differ between shards")]
    ReferenceWriteReads { reference: String, other: String },
    /// A subquery, derived table or CTE does something over rows of every shard that per-shard runs cannot
    /// reproduce (only the statement's own top level is the merge's business).
    #[error("{0} in a subquery over rows of every shard")]
    NeedsAllRows(&'static str),
    #[error("statement not analyzed for sharding: {0}")]
    Unanalyzed(&'static str),
}

/// The sharding view of one statement (or of a whole simple-query string, combined).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementShards {
    pub kind: StatementKind,
    /// The distinct sharded tables the statement reads or writes.
    pub sharded: Vec<Arc<ShardedTable>>,
    pub reads_reference: bool,
    /// Written reference tables must change on every shard.
    pub writes_reference: bool,
    /// The first unsharded table named (a table of neither kind: it lives on the default shard).
    pub unsharded: Option<String>,
    pub keys: Keys,
    /// The sharded table of an `INSERT ... VALUES` and the key of each of its rows, in row order (empty when any
    /// row's key is unknown, e.g. DEFAULT, or no column list and no known column order): the router splits or refuses a multi-row insert
    /// spanning shards.
    pub insert_table: Option<Arc<ShardedTable>>,
    pub insert_rows: Vec<KeyRef>,
    /// An `INSERT` without a column list into this sharded table, whose column order is not known (yet): where its
    /// key is cannot be told, so it is refused rather than treated as keyless.
    pub insert_columns_unknown: Option<String>,
    /// An inserted row has a NULL key: refuse.
    pub insert_null_key: bool,
    /// An UPDATE (or ON CONFLICT DO UPDATE) assigns the shard key: a row would have to move; refuse.
    pub changes_key: bool,
    pub cross_shard: Option<CrossShard>,
    /// With `Keys::None` only: the key range of every sharded unit, when each has one (else empty). A range map
    /// can then run the statement on just the shards whose ranges overlap. Integer and uuid keys only: text
    /// comparisons follow the column's collation, and a range map orders text by bytes.
    pub ranges: Vec<RangeUse>,
}

/// Where a statement must run, before key values are mapped to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// No table, or only reference tables read: any shard will do.
    AnyShard,
    /// Unsharded tables (alone or with reference reads).
    DefaultShard,
    /// A reference table is written: every shard.
    AllShards,
    /// The shards of these keys.
    Keys(&'a [KeyUse]),
    /// Sharded tables with no key: every shard (reads), or refuse (writes).
    Scatter,
}

impl StatementShards {
    pub fn target(&self) -> Target<'_> {
        if self.sharded.is_empty() {
            return if self.writes_reference {
                Target::AllShards
            } else if self.unsharded.is_some() {
                Target::DefaultShard
            } else {
                Target::AnyShard
            };
        }
        match &self.keys {
            Keys::Values(v) => Target::Keys(v),
            Keys::None => Target::Scatter,
        }
    }

    /// Folds a later statement of the same query string into this one.
    pub(super) fn absorb(&mut self, s: &StatementShards) {
        let rank = |k: StatementKind| match k {
            StatementKind::Other => 0,
            StatementKind::Read => 1,
            StatementKind::Ddl => 2,
            StatementKind::Write => 3,
        };
        if rank(s.kind) > rank(self.kind) {
            self.kind = s.kind;
        }
        if !s.sharded.is_empty() {
            // Ranges narrow a string only when every statement with sharded tables has them.
            if self.sharded.is_empty() || !self.ranges.is_empty() && !s.ranges.is_empty() {
                self.ranges.extend(s.ranges.iter().cloned());
            } else {
                self.ranges.clear();
            }
            self.keys = match (std::mem::take(&mut self.keys), &s.keys) {
                (_, Keys::Values(v)) if self.sharded.is_empty() => Keys::Values(v.clone()),
                (Keys::Values(mut mine), Keys::Values(v)) => {
                    mine.extend(v.iter().cloned());
                    Keys::Values(mine)
                }
                _ => Keys::None,
            };
        }
        for t in &s.sharded {
            add_table(&mut self.sharded, t);
        }
        self.reads_reference |= s.reads_reference;
        self.writes_reference |= s.writes_reference;
        if self.unsharded.is_none() {
            self.unsharded.clone_from(&s.unsharded);
        }
        if self.insert_table.is_none() {
            self.insert_table.clone_from(&s.insert_table);
            self.insert_rows.clone_from(&s.insert_rows);
        }
        if self.insert_columns_unknown.is_none() {
            self.insert_columns_unknown
                .clone_from(&s.insert_columns_unknown);
        }
        self.insert_null_key |= s.insert_null_key;
        self.changes_key |= s.changes_key;
        if self.cross_shard.is_none() {
            self.cross_shard.clone_from(&s.cross_shard);
        }
    }
}

pub(super) fn add_table(tables: &mut Vec<Arc<ShardedTable>>, t: &Arc<ShardedTable>) {
    if !tables.iter().any(|x| Arc::ptr_eq(x, t)) {
        tables.push(t.clone());
    }
}
