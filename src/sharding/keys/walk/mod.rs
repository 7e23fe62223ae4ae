//! The walker over sqlparser's AST: occurrences of sharded tables, the query blocks they sit in, and the
//! conditions of each block reduced to key pins. Its methods live in the sibling files by the part of the tree they
//! walk: statements, queries, FROM items, conditions, plain expressions, and blocks/units.

mod conditions;
mod from;
mod queries;
mod statements;
mod units;
mod visit;

use std::sync::Arc;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Delete, Expr, FromTable, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, Insert,
    JoinConstraint, JoinOperator, LimitClause, NamedWindowExpr, ObjectName, ObjectNamePart,
    OnConflictAction, OnInsert, OrderByKind, Query, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Update, UpdateTableFromKind,
    WindowType,
};

use super::literals::key_ref;
use super::statement::{
    add_table, Bound, CrossShard, KeyRange, KeyRef, KeyUse, Keys, RangeUse, StatementKind,
    StatementShards,
};
use super::syntax::{is_aggregate, is_inner, last_ident, single_column, strip_nested};
use crate::sharding::key::{KeyType, KeyValue};
use crate::sharding::schema::{ident_is, same_ident, TableKind};
use crate::sharding::schema::{ShardSchema, ShardedTable, TableColumns};

/// How a table name in a statement resolves.
enum Resolved {
    Sharded(Arc<ShardedTable>),
    Reference,
    Unsharded,
    Cte,
    Unknown,
}

/// An occurrence of a sharded table in some FROM list (or as a write target).
struct Inst {
    table: Arc<ShardedTable>,
    block: usize,
}

/// A query block: a SELECT, or the top of an INSERT/UPDATE/DELETE.
struct Block {
    depth: u32,
    /// Key limits this block's conditions put on each of its units, keyed by the unit's root when the block ended.
    constraints: Vec<(usize, Limit)>,
    /// What in this block needs all of its input rows at once (LIMIT, DISTINCT, a window function...): run per
    /// shard, it would see only that shard's rows.
    needs_all: Option<&'static str>,
    /// Aggregates or GROUP BY, harmless per shard only when grouped by the key.
    aggregates: bool,
    grouped_by_key: bool,
    /// Reads a derived table or CTE, whose rows may come from every shard.
    opaque_input: bool,
}

impl Block {
    fn needs_all_rows(&self) -> Option<&'static str> {
        self.needs_all
            .or((self.aggregates && !self.grouped_by_key).then_some("an aggregate"))
    }
}

/// A name visible to column references of a block: a table or alias; `inst` when it is a sharded table.
struct Item<'a> {
    name: Option<&'a Ident>,
    inst: Option<usize>,
}

struct Frame<'a> {
    block: usize,
    items: Vec<Item<'a>>,
    /// Key equalities in conjunctive position.
    ties: Vec<(usize, usize)>,
    /// Conditions that limit the block's rows (WHERE, inner-join ON), ANDed.
    conds: Vec<Cond>,
}

/// A condition reduced to what matters for keys.
enum Cond {
    True,
    Pin(usize, Vec<KeyRef>),
    Range(usize, KeyRange),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

fn and(a: Cond, b: Cond) -> Cond {
    match (a, b) {
        (Cond::True, x) | (x, Cond::True) => x,
        (Cond::And(mut v), x) => {
            v.push(x);
            Cond::And(v)
        }
        (a, b) => Cond::And(vec![a, b]),
    }
}

fn or(a: Cond, b: Cond) -> Cond {
    match (a, b) {
        (Cond::True, _) | (_, Cond::True) => Cond::True,
        (Cond::Or(mut v), x) => {
            v.push(x);
            Cond::Or(v)
        }
        (a, b) => Cond::Or(vec![a, b]),
    }
}

/// What a block's conditions limit one unit's keys to.
#[derive(Clone)]
enum Limit {
    Values(Vec<KeyRef>),
    Range(KeyRange),
}

/// What a query's output column at a given position is.
enum Projected<'a> {
    Unknown,
    /// The shard key of this occurrence.
    Key(usize),
    Expr(&'a Expr),
}

pub(super) struct Walker<'a, 's> {
    schema: &'s ShardSchema,
    /// Column order of sharded tables, for INSERT without a column list.
    columns: &'s TableColumns,
    insts: Vec<Inst>,
    parent: Vec<usize>,
    blocks: Vec<Block>,
    frames: Vec<Frame<'a>>,
    ctes: Vec<&'a Ident>,
    out: StatementShards,
    reference_written: Option<String>,
    unanalyzed: Option<&'static str>,
    /// The statement's main block (its top SELECT, or its INSERT/UPDATE/DELETE); `Some(usize::MAX)` while the top
    /// query's CTEs are walked.
    main: Option<usize>,
    /// Why two units were left apart, when that is the better explanation than "not joined on the key".
    needs_all_hint: Option<&'static str>,
}

impl<'a, 's> Walker<'a, 's> {
    pub(super) fn new(schema: &'s ShardSchema, columns: &'s TableColumns) -> Self {
        let mut w = Walker {
            schema,
            columns,
            insts: Vec::new(),
            parent: Vec::new(),
            blocks: Vec::new(),
            frames: Vec::new(),
            ctes: Vec::new(),
            out: StatementShards::default(),
            reference_written: None,
            unanalyzed: None,
            main: None,
            needs_all_hint: None,
        };
        // The statement's own frame: never closed, holds no tables, so `frame()` always has one to return.
        w.open_block();
        w
    }

    fn unanalyzed(&mut self, what: &'static str) {
        self.unanalyzed.get_or_insert(what);
    }

    /// Marks the SELECT blocks a LIMIT or set operation applies to.
    fn needs_all(&mut self, arms: &[usize], what: &'static str) {
        for &b in arms {
            self.blocks[b].needs_all.get_or_insert(what);
        }
    }

    fn wrote(&mut self) {
        self.out.kind = StatementKind::Write;
    }
}
