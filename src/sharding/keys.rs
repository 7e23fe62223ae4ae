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
//! Known limits, all on the safe side: a key limited only outside a CTE or derived table is not traced into it
//! (`WITH x AS (SELECT * FROM t) SELECT * FROM x WHERE x.key = 1` scatters); range conditions (`key > 5`) give no key
//! for any map; user-defined aggregates are not recognised as aggregates.

use std::sync::Arc;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, CastKind, DataType, Delete, Expr, FromTable,
    Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr,
    Ident, Insert, JoinConstraint, JoinOperator, LimitClause, NamedWindowExpr, ObjectName,
    ObjectNamePart, OnConflictAction, OnInsert, OrderByKind, Query, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UnaryOperator, Update, UpdateTableFromKind, Value, WindowType,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::key::{KeyError, KeyType, KeyValue};
use super::schema::{ident_is, same_ident, ShardSchema, ShardedTable, TableKind};

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
    /// row's key is unknown, e.g. DEFAULT or no column list): the router splits or refuses a multi-row insert
    /// spanning shards.
    pub insert_table: Option<Arc<ShardedTable>>,
    pub insert_rows: Vec<KeyRef>,
    /// An inserted row has a NULL key: refuse.
    pub insert_null_key: bool,
    /// An UPDATE (or ON CONFLICT DO UPDATE) assigns the shard key: a row would have to move; refuse.
    pub changes_key: bool,
    pub cross_shard: Option<CrossShard>,
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
    fn absorb(&mut self, s: &StatementShards) {
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
        self.insert_null_key |= s.insert_null_key;
        self.changes_key |= s.changes_key;
        if self.cross_shard.is_none() {
            self.cross_shard.clone_from(&s.cross_shard);
        }
    }
}

fn add_table(tables: &mut Vec<Arc<ShardedTable>>, t: &Arc<ShardedTable>) {
    if !tables.iter().any(|x| Arc::ptr_eq(x, t)) {
        tables.push(t.clone());
    }
}

/// The analysis of a query string: per statement, and combined for a simple query holding several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardAnalysis {
    Analyzed {
        statements: Vec<StatementShards>,
        combined: StatementShards,
    },
    /// The SQL did not parse: nothing is known about where it should run.
    Unroutable { reason: String },
}

impl ShardAnalysis {
    pub fn combined(&self) -> Option<&StatementShards> {
        match self {
            ShardAnalysis::Analyzed { combined, .. } => Some(combined),
            ShardAnalysis::Unroutable { .. } => None,
        }
    }
}

/// Analyzes already parsed statements (the router parses once for all its decisions). Never fails: what it cannot
/// follow comes back as `Keys::None` with a [`CrossShard`] reason.
pub fn analyze(statements: &[Statement], schema: &ShardSchema) -> ShardAnalysis {
    let mut each = Vec::with_capacity(statements.len());
    let mut combined = StatementShards::default();
    for st in statements {
        let mut w = Walker::new(schema);
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
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => analyze(&statements, schema),
        Err(e) => ShardAnalysis::Unroutable {
            reason: e.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The walker.

/// An occurrence of a sharded table in some FROM list (or as a write target).
struct Inst {
    table: Arc<ShardedTable>,
    block: usize,
}

/// A query block: a SELECT, or the top of an INSERT/UPDATE/DELETE.
struct Block {
    depth: u32,
    /// Key limits this block's conditions put on each of its units, keyed by the unit's root when the block ended.
    constraints: Vec<(usize, Vec<KeyRef>)>,
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

/// What a query's output column at a given position is.
enum Projected<'a> {
    Unknown,
    /// The shard key of this occurrence.
    Key(usize),
    Expr(&'a Expr),
}

struct Walker<'a, 's> {
    schema: &'s ShardSchema,
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
    fn new(schema: &'s ShardSchema) -> Self {
        let mut w = Walker {
            schema,
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

    // --- statements -------------------------------------------------------------------------------------------

    fn statement(&mut self, st: &'a Statement, top: bool) {
        match st {
            Statement::Query(q) => {
                if top {
                    self.out.kind = StatementKind::Read;
                }
                self.query(q, None);
            }
            Statement::Insert(i) => self.insert(i),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            Statement::Merge(m) => {
                self.wrote();
                self.unanalyzed("MERGE");
                self.open_block();
                self.table_factor(&m.table, false);
                self.table_factor(&m.source, false);
                self.visit(&m.on);
                self.close_block();
            }
            Statement::Explain { statement, .. } => self.statement(statement, top),
            Statement::Copy { source, to, .. } => {
                if *to {
                    self.out.kind = StatementKind::Read;
                } else {
                    self.wrote();
                }
                match source {
                    sqlparser::ast::CopySource::Table { table_name, .. } => {
                        self.open_block();
                        self.write_target(table_name, !*to);
                        self.close_block();
                    }
                    sqlparser::ast::CopySource::Query(q) => {
                        self.query(q, None);
                    }
                }
            }
            Statement::Truncate(t) => {
                self.ddl(t.table_names.iter().map(|t| &t.name));
            }
            Statement::CreateTable(c) => self.ddl(std::iter::once(&c.name)),
            Statement::AlterTable(a) => self.ddl(std::iter::once(&a.name)),
            Statement::CreateIndex(c) => self.ddl(std::iter::once(&c.table_name)),
            Statement::Drop {
                object_type: sqlparser::ast::ObjectType::Table,
                names,
                ..
            } => self.ddl(names.iter()),
            _ => {}
        }
    }

    /// DDL names tables without touching rows: record what they are, no keys.
    fn ddl(&mut self, names: impl Iterator<Item = &'a ObjectName>) {
        self.out.kind = StatementKind::Ddl;
        for name in names {
            match self.resolve(name) {
                Resolved::Sharded(t) => add_table(&mut self.out.sharded, &t),
                Resolved::Reference => self.out.writes_reference = true,
                Resolved::Unsharded | Resolved::Cte => self.note_unsharded(name),
                Resolved::Unknown => self.unanalyzed("table name"),
            }
        }
    }

    fn insert(&mut self, ins: &'a Insert) {
        self.wrote();
        self.open_main_block();
        let TableObject::TableName(name) = &ins.table else {
            self.unanalyzed("INSERT target");
            self.close_block();
            return;
        };
        let target = self.write_target(name, true);
        let key_pos = target.and_then(|i| {
            let key = &self.insts[i].table.key;
            ins.columns
                .iter()
                .position(|c| last_ident(c).is_some_and(|id| ident_is(id, key)))
        });
        let mut rows: Option<Vec<KeyRef>> = None;
        if let Some(src) = &ins.source {
            match (&*src.body, &src.with) {
                (SetExpr::Values(values), None) => {
                    let ty = target.map(|i| self.insts[i].table.key_type);
                    let mut keys = Some(Vec::with_capacity(values.rows.len()));
                    for row in &values.rows {
                        let k = match (key_pos, ty) {
                            (Some(p), Some(ty)) => row.content.get(p).and_then(|e| key_ref(e, ty)),
                            _ => None,
                        };
                        match (&mut keys, k) {
                            (Some(v), Some(k)) => v.push(k),
                            _ => keys = None,
                        }
                        for e in &row.content {
                            self.visit(e);
                        }
                    }
                    rows = keys;
                }
                _ => {
                    let p = self.query(src, key_pos);
                    if let Some(t) = target {
                        let pin = self.projected_keys(p, t);
                        self.frame().conds.push(pin);
                    }
                }
            }
        }
        if let (Some(t), Some(rows)) = (target, rows) {
            if !rows.is_empty() {
                self.out.insert_null_key |= rows.contains(&KeyRef::Literal(KeyValue::Null));
                // One target per statement: a second INSERT (in a CTE) keeps only the first one's rows.
                if self.out.insert_table.is_none() {
                    self.out.insert_table = Some(self.insts[t].table.clone());
                    self.out.insert_rows.clone_from(&rows);
                }
                self.frame().conds.push(Cond::Pin(t, rows));
            }
        }
        // ON CONFLICT and RETURNING see the target.
        let alias = ins.table_alias.as_ref().map(|a| &a.alias);
        self.frame().items.push(Item {
            name: alias.or_else(|| last_ident(name)),
            inst: target,
        });
        match &ins.on {
            Some(OnInsert::OnConflict(oc)) => {
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    self.assignments(&du.assignments, target);
                    if let Some(e) = &du.selection {
                        self.visit(e);
                    }
                }
            }
            Some(OnInsert::DuplicateKeyUpdate(a)) => self.assignments(a, target),
            Some(_) => self.unanalyzed("INSERT ... ON"),
            None => {}
        }
        self.select_items(ins.returning.iter().flatten(), None);
        self.close_block();
    }

    /// The pin an `INSERT ... SELECT` puts on its target, from the SELECT's key column; ties their units.
    fn projected_keys(&mut self, p: Projected<'a>, target: usize) -> Cond {
        match p {
            Projected::Key(y) => {
                // Read the SELECT's own limits before its unit joins the target's.
                let keys = self.constraint_of(y);
                // Rows computed over every shard's rows (a window, a global DISTINCT) are not rows by key: the
                // SELECT stays its own unit, so the statement can only run where both are pinned to one shard.
                match self.blocks[self.insts[y].block].needs_all_rows() {
                    Some(what) => {
                        self.needs_all_hint.get_or_insert(what);
                    }
                    None => self.attach(y, target),
                }
                match keys {
                    Some(keys)
                        if self.insts[y]
                            .table
                            .colocated_with(&self.insts[target].table) =>
                    {
                        Cond::Pin(target, keys)
                    }
                    _ => Cond::True,
                }
            }
            Projected::Expr(e) => match key_ref(e, self.insts[target].table.key_type) {
                Some(k) => Cond::Pin(target, vec![k]),
                None => Cond::True,
            },
            Projected::Unknown => Cond::True,
        }
    }

    fn update(&mut self, u: &'a Update) {
        self.wrote();
        self.open_main_block();
        let target = match &u.table.relation {
            TableFactor::Table { name, alias, .. } => {
                let t = self.write_target(name, true);
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name).or_else(|| last_ident(name)),
                    inst: t,
                });
                t
            }
            _ => {
                self.unanalyzed("UPDATE target");
                None
            }
        };
        self.joins(&u.table.joins, 0, true);
        if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
            &u.from
        {
            for twj in from {
                self.table_with_joins(twj, true);
            }
        }
        self.assignments(&u.assignments, target);
        if let Some(w) = &u.selection {
            let c = self.cond(w, true);
            self.frame().conds.push(c);
        }
        self.select_items(u.returning.iter().flatten(), None);
        if u.limit.is_some() || !u.order_by.is_empty() {
            self.unanalyzed("UPDATE ... LIMIT");
        }
        self.close_block();
    }

    fn delete(&mut self, d: &'a Delete) {
        self.wrote();
        self.open_main_block();
        if !d.tables.is_empty() || d.limit.is_some() || !d.order_by.is_empty() {
            self.unanalyzed("multi-table DELETE");
        }
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
        for (n, twj) in from.iter().enumerate() {
            match (&twj.relation, n) {
                (TableFactor::Table { name, alias, .. }, 0) => {
                    let alias = alias.as_ref().map(|a| &a.name);
                    let t = self.write_target(name, true);
                    self.frame().items.push(Item {
                        name: alias.or_else(|| last_ident(name)),
                        inst: t,
                    });
                    self.joins(&twj.joins, 0, true);
                }
                _ => self.table_with_joins(twj, true),
            }
        }
        for twj in d.using.iter().flatten() {
            self.table_with_joins(twj, true);
        }
        if let Some(w) = &d.selection {
            let c = self.cond(w, true);
            self.frame().conds.push(c);
        }
        self.select_items(d.returning.iter().flatten(), None);
        self.close_block();
    }

    /// SET targets: assigning the key of a sharded target moves rows between shards.
    fn assignments(&mut self, assignments: &'a [Assignment], target: Option<usize>) {
        for a in assignments {
            if let Some(t) = target {
                let key = &self.insts[t].table.key;
                let hits = |n: &ObjectName| last_ident(n).is_some_and(|id| ident_is(id, key));
                self.out.changes_key |= match &a.target {
                    AssignmentTarget::ColumnName(n) => hits(n),
                    AssignmentTarget::Tuple(ns) => ns.iter().any(hits),
                };
            }
            self.visit(&a.value);
        }
    }

    // --- queries ----------------------------------------------------------------------------------------------

    /// Walks a query; `proj` asks what its output column at that position is.
    fn query(&mut self, q: &'a Query, proj: Option<usize>) -> Projected<'a> {
        self.query_arms(q, proj, &mut Vec::new())
    }

    /// [`Self::query`], also collecting the SELECT blocks whose rows form the query's output (`arms`).
    fn query_arms(
        &mut self,
        q: &'a Query,
        proj: Option<usize>,
        arms: &mut Vec<usize>,
    ) -> Projected<'a> {
        let mark = self.ctes.len();
        let top = self.main.is_none();
        if top {
            self.main = Some(usize::MAX);
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                if with.recursive {
                    self.ctes.push(&cte.alias.name);
                }
                self.query(&cte.query, None);
                if !with.recursive {
                    self.ctes.push(&cte.alias.name);
                }
            }
        }
        if top {
            self.main = Some(self.blocks.len());
        }
        let mut body = Vec::new();
        let mut p = self.set_expr(&q.body, proj, &mut body);
        if let Some(ob) = &q.order_by {
            if let OrderByKind::Expressions(v) = &ob.kind {
                for o in v {
                    self.visit(&o.expr);
                }
            }
        }
        match &q.limit_clause {
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                for e in limit
                    .iter()
                    .chain(offset.iter().map(|o| &o.value))
                    .chain(limit_by)
                {
                    self.visit(e);
                }
                self.needs_all(&body, "LIMIT or OFFSET");
                p = Projected::Unknown;
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.visit(offset);
                self.visit(limit);
                self.needs_all(&body, "LIMIT or OFFSET");
                p = Projected::Unknown;
            }
            None => {}
        }
        if let Some(f) = &q.fetch {
            if let Some(e) = &f.quantity {
                self.visit(e);
            }
            // A per-shard LIMIT keeps different rows than a global one: the output is no longer "rows by key".
            self.needs_all(&body, "LIMIT or OFFSET");
            p = Projected::Unknown;
        }
        if !q.pipe_operators.is_empty() || q.for_clause.is_some() {
            self.unanalyzed("query clause");
        }
        self.ctes.truncate(mark);
        arms.extend(body);
        p
    }

    fn set_expr(
        &mut self,
        body: &'a SetExpr,
        proj: Option<usize>,
        arms: &mut Vec<usize>,
    ) -> Projected<'a> {
        match body {
            SetExpr::Select(s) => {
                arms.push(self.blocks.len());
                self.select(s, proj)
            }
            SetExpr::Query(q) => self.query_arms(q, proj, arms),
            SetExpr::SetOperation {
                left,
                right,
                op,
                set_quantifier,
            } => {
                let mut mine = Vec::new();
                self.set_expr(left, None, &mut mine);
                self.set_expr(right, None, &mut mine);
                let all = matches!(
                    set_quantifier,
                    sqlparser::ast::SetQuantifier::All | sqlparser::ast::SetQuantifier::AllByName
                );
                if !(all && *op == sqlparser::ast::SetOperator::Union) {
                    self.needs_all(&mine, "UNION, INTERSECT or EXCEPT");
                }
                arms.extend(mine);
                Projected::Unknown
            }
            SetExpr::Values(v) => {
                for row in &v.rows {
                    for e in &row.content {
                        self.visit(e);
                    }
                }
                Projected::Unknown
            }
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => {
                self.statement(st, false);
                Projected::Unknown
            }
            SetExpr::Table(_) => {
                self.unanalyzed("TABLE");
                Projected::Unknown
            }
        }
    }

    fn select(&mut self, s: &'a sqlparser::ast::Select, proj: Option<usize>) -> Projected<'a> {
        self.open_block();
        for twj in &s.from {
            self.table_with_joins(twj, true);
        }
        if let Some(w) = &s.selection {
            let c = self.cond(w, true);
            self.frame().conds.push(c);
        }
        let p = self.select_items(s.projection.iter(), proj);
        let b = self.frame().block;
        match &s.group_by {
            GroupByExpr::Expressions(v, _) => {
                for e in v {
                    self.visit(e);
                }
                if !v.is_empty() {
                    self.blocks[b].aggregates = true;
                    self.blocks[b].grouped_by_key = v.iter().any(|e| self.key_column(e).is_some());
                }
            }
            GroupByExpr::All(_) => self.blocks[b].aggregates = true,
        }
        if s.having.is_some() {
            self.blocks[b].aggregates = true;
        }
        if s.distinct.is_some() {
            self.blocks[b].needs_all.get_or_insert("DISTINCT");
        }
        for e in s
            .having
            .iter()
            .chain(&s.qualify)
            .chain(&s.cluster_by)
            .chain(&s.distribute_by)
        {
            self.visit(e);
        }
        for o in &s.sort_by {
            self.visit(&o.expr);
        }
        if let Some(sqlparser::ast::Distinct::On(v)) = &s.distinct {
            for e in v {
                self.visit(e);
            }
        }
        for w in &s.named_window {
            if let NamedWindowExpr::WindowSpec(spec) = &w.1 {
                self.window(spec);
            }
        }
        if s.into.is_some() {
            self.wrote();
            self.unanalyzed("SELECT INTO");
        }
        if !s.lateral_views.is_empty() || s.prewhere.is_some() || !s.connect_by.is_empty() {
            self.unanalyzed("SELECT clause");
        }
        self.close_block();
        p
    }

    /// Walks select-list items; returns what item `proj` is.
    fn select_items(
        &mut self,
        items: impl Iterator<Item = &'a SelectItem>,
        proj: Option<usize>,
    ) -> Projected<'a> {
        let mut p = Projected::Unknown;
        let mut shifted = false;
        for (n, item) in items.enumerate() {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                SelectItem::ExprWithAliases { expr, .. } => {
                    self.visit(expr);
                    continue;
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    shifted = true;
                    if let SelectItemQualifiedWildcardKind::Expr(e) = kind {
                        self.visit(e);
                    }
                    continue;
                }
                SelectItem::Wildcard(_) => {
                    shifted = true;
                    continue;
                }
            };
            if Some(n) == proj && !shifted {
                p = match self.key_column(e) {
                    Some(i) => Projected::Key(i),
                    None => Projected::Expr(e),
                };
            }
            self.visit(e);
        }
        p
    }

    fn table_with_joins(&mut self, twj: &'a TableWithJoins, pins_ok: bool) {
        let pins_ok = pins_ok && twj.joins.iter().all(|j| is_inner(&j.join_operator));
        let start = self.frame().items.len();
        self.table_factor(&twj.relation, pins_ok);
        self.joins(&twj.joins, start, pins_ok);
    }

    /// Joins after a first relation whose items start at `start` in the current frame.
    fn joins(&mut self, joins: &'a [sqlparser::ast::Join], start: usize, pins_ok: bool) {
        let pins_ok = pins_ok && joins.iter().all(|j| is_inner(&j.join_operator));
        for j in joins {
            let right = self.frame().items.len();
            self.table_factor(&j.relation, pins_ok);
            let constraint = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => c,
                _ => {
                    self.unanalyzed("join kind");
                    continue;
                }
            };
            match constraint {
                // Key equalities in ON tie rows whatever the join kind (unmatched rows are NULL-extended, not fetched
                // from elsewhere); other conditions only limit rows of an inner join.
                JoinConstraint::On(e) => {
                    let c = self.cond(e, true);
                    if pins_ok {
                        self.frame().conds.push(c);
                    }
                }
                JoinConstraint::Using(cols) => {
                    for col in cols {
                        if let Some(col) = last_ident(col) {
                            self.tie_common(start, right, Some(col));
                        }
                    }
                }
                JoinConstraint::Natural => self.tie_common(start, right, None),
                JoinConstraint::None => {}
            }
        }
    }

    /// USING (col) / NATURAL: ties sharded tables on both sides whose key is that (or a shared) column name.
    fn tie_common(&mut self, start: usize, right: usize, col: Option<&Ident>) {
        let f = self.frames.len() - 1;
        let key_of = |w: &Self, i: usize| -> Option<usize> {
            let inst = w.frames[f].items[i].inst?;
            let key = &w.insts[inst].table.key;
            match col {
                Some(c) if !ident_is(c, key) => None,
                _ => Some(inst),
            }
        };
        let end = self.frames[f].items.len();
        for r in right..end {
            let Some(y) = key_of(self, r) else { continue };
            for l in start..right {
                let Some(x) = key_of(self, l) else { continue };
                if self.insts[x].table.key == self.insts[y].table.key {
                    self.frames[f].ties.push((x, y));
                }
            }
        }
    }

    fn table_factor(&mut self, tf: &'a TableFactor, pins_ok: bool) {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let alias = alias.as_ref().map(|a| &a.name);
                if let Some(args) = args {
                    self.function_args(&args.args);
                    self.frame().items.push(Item {
                        name: alias,
                        inst: None,
                    });
                    return;
                }
                let inst = match self.resolve(name) {
                    Resolved::Sharded(t) => Some(self.new_inst(t)),
                    Resolved::Reference => {
                        self.out.reads_reference = true;
                        None
                    }
                    Resolved::Unsharded => {
                        self.note_unsharded(name);
                        None
                    }
                    Resolved::Cte => {
                        let b = self.frame().block;
                        self.blocks[b].opaque_input = true;
                        None
                    }
                    Resolved::Unknown => {
                        self.unanalyzed("table name");
                        None
                    }
                };
                self.frame().items.push(Item {
                    name: alias.or_else(|| last_ident(name)),
                    inst,
                });
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                self.query(subquery, None);
                let b = self.frame().block;
                self.blocks[b].opaque_input = true;
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::Function { args, alias, .. } => {
                self.function_args(args);
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::TableFunction { expr, alias } => {
                self.visit(expr);
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    self.visit(e);
                }
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    self.unanalyzed("aliased join");
                }
                self.table_with_joins(table_with_joins, pins_ok);
            }
            _ => self.unanalyzed("FROM item"),
        }
    }

    /// Registers the target of a write (or COPY); returns its occurrence when sharded.
    fn write_target(&mut self, name: &'a ObjectName, writes: bool) -> Option<usize> {
        match self.resolve(name) {
            Resolved::Sharded(t) => Some(self.new_inst(t)),
            Resolved::Reference => {
                if writes {
                    self.out.writes_reference = true;
                    if self.reference_written.is_none() {
                        self.reference_written = Some(name.to_string());
                    }
                } else {
                    self.out.reads_reference = true;
                }
                None
            }
            Resolved::Unsharded => {
                self.note_unsharded(name);
                None
            }
            Resolved::Cte | Resolved::Unknown => {
                self.unanalyzed("write target");
                None
            }
        }
    }

    fn resolve(&self, name: &'a ObjectName) -> Resolved {
        let mut parts = name.0.iter().rev();
        let Some(ObjectNamePart::Identifier(last)) = parts.next() else {
            return Resolved::Unknown;
        };
        let ns = match parts.next() {
            Some(ObjectNamePart::Identifier(ns)) => Some(ns),
            Some(_) => return Resolved::Unknown,
            None => {
                if self.ctes.iter().any(|c| same_ident(c, last)) {
                    return Resolved::Cte;
                }
                None
            }
        };
        match self.schema.lookup(ns, last) {
            Some(TableKind::Sharded(t)) => Resolved::Sharded(t.clone()),
            Some(TableKind::Reference) => Resolved::Reference,
            None => Resolved::Unsharded,
        }
    }

    fn note_unsharded(&mut self, name: &ObjectName) {
        if self.out.unsharded.is_none() {
            self.out.unsharded = Some(name.to_string());
        }
    }

    // --- conditions -------------------------------------------------------------------------------------------

    /// Reduces a condition to key pins; `conj` says whether it is in a conjunctive position of its block (where a
    /// key equality ties two tables' rows).
    fn cond(&mut self, e: &'a Expr, conj: bool) -> Cond {
        match e {
            Expr::Nested(inner) => self.cond(inner, conj),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                let l = self.cond(left, conj);
                let r = self.cond(right, conj);
                and(l, r)
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Or,
                right,
            } => {
                let l = self.cond(left, false);
                let r = self.cond(right, false);
                or(l, r)
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            }
            | Expr::IsNotDistinctFrom(left, right) => self.equality(left, right, conj),
            Expr::InList {
                expr,
                list,
                negated: false,
            } => self.in_list(expr, list),
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => match strip_nested(right) {
                Expr::Array(a) => self.in_list(left, &a.elem),
                Expr::Subquery(q) => {
                    let x = self.key_column(left);
                    if x.is_none() {
                        self.visit(left);
                    }
                    self.key_subquery(x, q, true)
                }
                _ => {
                    self.visit(left);
                    self.visit(right);
                    Cond::True
                }
            },
            Expr::InSubquery {
                expr,
                subquery,
                negated,
            } => {
                let x = self.key_column(expr);
                if x.is_none() {
                    self.visit(expr);
                }
                self.key_subquery(x, subquery, !*negated)
            }
            _ => {
                self.visit(e);
                Cond::True
            }
        }
    }

    fn equality(&mut self, l: &'a Expr, r: &'a Expr, conj: bool) -> Cond {
        match (self.key_column(l), self.key_column(r)) {
            (Some(x), Some(y)) => {
                if conj {
                    self.frame().ties.push((x, y));
                }
                Cond::True
            }
            (Some(x), None) => self.key_equals(x, r),
            (None, Some(y)) => self.key_equals(y, l),
            (None, None) => {
                self.visit(l);
                self.visit(r);
                Cond::True
            }
        }
    }

    /// `key = other`.
    fn key_equals(&mut self, x: usize, other: &'a Expr) -> Cond {
        if let Some(k) = key_ref(other, self.insts[x].table.key_type) {
            return Cond::Pin(x, vec![k]);
        }
        match strip_nested(other) {
            Expr::Subquery(q) => self.key_subquery(Some(x), q, true),
            _ => {
                self.visit(other);
                Cond::True
            }
        }
    }

    fn in_list(&mut self, expr: &'a Expr, list: &'a [Expr]) -> Cond {
        if let Some(x) = self.key_column(expr) {
            let ty = self.insts[x].table.key_type;
            let keys: Option<Vec<KeyRef>> = list.iter().map(|e| key_ref(e, ty)).collect();
            if let Some(keys) = keys.filter(|k| !k.is_empty()) {
                return Cond::Pin(x, keys);
            }
        } else {
            self.visit(expr);
        }
        for e in list {
            self.visit(e);
        }
        Cond::True
    }

    /// `key IN (SELECT k ...)` / `key = (SELECT k ...)`: when the subquery outputs a co-located key, its rows for a
    /// given outer row sit on that row's shard (a semi-join on the key), and its key pins become the outer key's.
    fn key_subquery(&mut self, x: Option<usize>, q: &'a Query, pins: bool) -> Cond {
        let p = self.query(q, Some(0));
        let (Some(x), Projected::Key(y)) = (x, p) else {
            return Cond::True;
        };
        if !single_column(q) {
            return Cond::True;
        }
        let keys = self.constraint_of(y);
        self.attach(y, x);
        match keys {
            Some(keys) if pins && self.insts[y].table.colocated_with(&self.insts[x].table) => {
                Cond::Pin(x, keys)
            }
            _ => Cond::True,
        }
    }

    /// The sharded-table occurrence whose shard key this expression is, if it is a bare key column.
    fn key_column(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Nested(inner) => self.key_column(inner),
            // Unqualified: the one sharded table of the innermost block with a key of that name (several count as
            // one when already tied by key equality, as `JOIN ... USING (key)` merges them into one column).
            Expr::Identifier(col) => {
                let f = self.frames.last()?;
                let mut found = None;
                for inst in f.items.iter().filter_map(|it| it.inst) {
                    if !ident_is(col, &self.insts[inst].table.key) {
                        continue;
                    }
                    match found {
                        None => found = Some(inst),
                        Some(first)
                            if f.ties.contains(&(first, inst))
                                || f.ties.contains(&(inst, first)) => {}
                        Some(_) => return None,
                    }
                }
                found
            }
            // Qualified: the innermost table or alias of that name decides.
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let col = &parts[parts.len() - 1];
                let qual = &parts[parts.len() - 2];
                for f in self.frames.iter().rev() {
                    if let Some(it) = f
                        .items
                        .iter()
                        .find(|it| it.name.is_some_and(|n| same_ident(n, qual)))
                    {
                        let inst = it.inst?;
                        return ident_is(col, &self.insts[inst].table.key).then_some(inst);
                    }
                }
                None
            }
            _ => None,
        }
    }

    // --- expressions: only looking for subqueries -------------------------------------------------------------

    fn visit(&mut self, e: &'a Expr) {
        match e {
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Value(_)
            | Expr::TypedString(_)
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..) => {}
            Expr::IsFalse(x)
            | Expr::IsNotFalse(x)
            | Expr::IsTrue(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotUnknown(x)
            | Expr::Nested(x)
            | Expr::UnaryOp { expr: x, .. }
            | Expr::Cast { expr: x, .. }
            | Expr::Extract { expr: x, .. }
            | Expr::Ceil { expr: x, .. }
            | Expr::Floor { expr: x, .. }
            | Expr::Collate { expr: x, .. }
            | Expr::Prefixed { value: x, .. }
            | Expr::IsJson { expr: x, .. }
            | Expr::IsNormalized { expr: x, .. }
            | Expr::JsonAccess { value: x, .. }
            | Expr::Named { expr: x, .. } => self.visit(x),
            Expr::IsDistinctFrom(a, b)
            | Expr::IsNotDistinctFrom(a, b)
            | Expr::BinaryOp {
                left: a, right: b, ..
            }
            | Expr::AnyOp {
                left: a, right: b, ..
            }
            | Expr::AllOp {
                left: a, right: b, ..
            }
            | Expr::InUnnest {
                expr: a,
                array_expr: b,
                ..
            }
            | Expr::AtTimeZone {
                timestamp: a,
                time_zone: b,
            }
            | Expr::Position { expr: a, r#in: b }
            | Expr::RLike {
                expr: a,
                pattern: b,
                ..
            } => {
                self.visit(a);
                self.visit(b);
            }
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                self.visit(expr);
                self.visit(pattern);
                if let Some(x) = escape_char {
                    self.visit(x);
                }
            }
            Expr::InList { expr, list, .. } => {
                self.visit(expr);
                for x in list {
                    self.visit(x);
                }
            }
            Expr::InSubquery { expr, subquery, .. } => {
                self.visit(expr);
                self.query(subquery, None);
            }
            Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => {
                self.query(subquery, None);
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.visit(expr);
                self.visit(low);
                self.visit(high);
            }
            Expr::Convert { expr, styles, .. } => {
                self.visit(expr);
                for x in styles {
                    self.visit(x);
                }
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.visit(expr);
                for x in substring_from.iter().chain(substring_for) {
                    self.visit(x);
                }
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                self.visit(expr);
                if let Some(x) = trim_what {
                    self.visit(x);
                }
                for x in trim_characters.iter().flatten() {
                    self.visit(x);
                }
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                self.visit(expr);
                self.visit(overlay_what);
                self.visit(overlay_from);
                if let Some(x) = overlay_for {
                    self.visit(x);
                }
            }
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                for x in operand.iter().chain(else_result) {
                    self.visit(x);
                }
                for w in conditions {
                    self.visit(&w.condition);
                    self.visit(&w.result);
                }
            }
            Expr::GroupingSets(v) | Expr::Cube(v) | Expr::Rollup(v) => {
                for x in v.iter().flatten() {
                    self.visit(x);
                }
            }
            Expr::Tuple(v) => {
                for x in v {
                    self.visit(x);
                }
            }
            Expr::Array(a) => {
                for x in &a.elem {
                    self.visit(x);
                }
            }
            Expr::Interval(i) => self.visit(&i.value),
            Expr::CompoundFieldAccess { root, access_chain } => {
                self.visit(root);
                for a in access_chain {
                    match a {
                        sqlparser::ast::AccessExpr::Dot(x) => self.visit(x),
                        sqlparser::ast::AccessExpr::Subscript(
                            sqlparser::ast::Subscript::Index { index },
                        ) => self.visit(index),
                        sqlparser::ast::AccessExpr::Subscript(
                            sqlparser::ast::Subscript::Slice {
                                lower_bound,
                                upper_bound,
                                stride,
                            },
                        ) => {
                            for x in lower_bound.iter().chain(upper_bound).chain(stride) {
                                self.visit(x);
                            }
                        }
                    }
                }
            }
            _ => self.unanalyzed("expression"),
        }
    }

    fn function(&mut self, f: &'a Function) {
        let b = self.frame().block;
        if f.over.is_some() {
            self.blocks[b].needs_all.get_or_insert("a window function");
        } else if f.filter.is_some() || !f.within_group.is_empty() || is_aggregate(&f.name) {
            self.blocks[b].aggregates = true;
        }
        self.arguments(&f.parameters);
        self.arguments(&f.args);
        for o in &f.within_group {
            self.visit(&o.expr);
        }
        if let Some(x) = &f.filter {
            self.visit(x);
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.window(spec);
        }
    }

    fn window(&mut self, spec: &'a sqlparser::ast::WindowSpec) {
        for x in &spec.partition_by {
            self.visit(x);
        }
        for o in &spec.order_by {
            self.visit(&o.expr);
        }
    }

    fn arguments(&mut self, args: &'a FunctionArguments) {
        match args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                self.query(q, None);
            }
            FunctionArguments::List(l) => {
                self.function_args(&l.args);
                for c in &l.clauses {
                    match c {
                        FunctionArgumentClause::Where(x) | FunctionArgumentClause::Limit(x) => {
                            self.visit(x)
                        }
                        FunctionArgumentClause::OrderBy(v) => {
                            for o in v {
                                self.visit(&o.expr);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn function_args(&mut self, args: &'a [FunctionArg]) {
        for a in args {
            let (FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg)) = a;
            if let FunctionArgExpr::Expr(x) = arg {
                self.visit(x);
            }
        }
    }

    // --- blocks and units -------------------------------------------------------------------------------------

    fn frame(&mut self) -> &mut Frame<'a> {
        let n = self.frames.len();
        &mut self.frames[n.saturating_sub(1)]
    }

    fn open_block(&mut self) -> usize {
        let depth = self
            .frames
            .last()
            .map_or(0, |f| self.blocks[f.block].depth + 1);
        let b = self.blocks.len();
        self.blocks.push(Block {
            depth,
            constraints: Vec::new(),
            needs_all: None,
            aggregates: false,
            grouped_by_key: false,
            opaque_input: false,
        });
        self.frames.push(Frame {
            block: b,
            items: Vec::new(),
            ties: Vec::new(),
            conds: Vec::new(),
        });
        b
    }

    /// Opens the block of a data-modifying statement, which is the main one unless it sits in the top query's CTEs.
    fn open_main_block(&mut self) -> usize {
        let b = self.open_block();
        if self.main.is_none() {
            self.main = Some(b);
        }
        b
    }

    fn new_inst(&mut self, table: Arc<ShardedTable>) -> usize {
        add_table(&mut self.out.sharded, &table);
        let block = self.frames.last().map_or(0, |f| f.block);
        let i = self.insts.len();
        self.insts.push(Inst { table, block });
        self.parent.push(i);
        i
    }

    /// Ends a block: ties its own tables, records what its conditions pin, then attaches its units to the outer
    /// tables they are tied to. Attaching comes last, and a unit attaches once, so a subquery never ties two outer
    /// tables to each other (under NOT EXISTS that would be wrong).
    fn close_block(&mut self) {
        if self.frames.len() <= 1 {
            return;
        }
        let Some(f) = self.frames.pop() else { return };
        let b = f.block;
        for &(x, y) in &f.ties {
            if self.insts[x].block == b && self.insts[y].block == b {
                let (rx, ry) = (self.find(x), self.find(y));
                if rx != ry {
                    self.parent[ry] = rx;
                }
            }
        }
        let cond = match f.conds.len() {
            0 => Cond::True,
            1 => f.conds.into_iter().next().unwrap_or(Cond::True),
            _ => Cond::And(f.conds),
        };
        let constraints = self.eval(cond);
        self.blocks[b].constraints = constraints;
        for &(x, y) in &f.ties {
            match (self.insts[x].block == b, self.insts[y].block == b) {
                (true, false) => self.attach(x, y),
                (false, true) => self.attach(y, x),
                _ => {}
            }
        }
    }

    /// Makes the unit of `inner` (a table of a finished inner block) part of the unit of `outer`.
    fn attach(&mut self, inner: usize, outer: usize) {
        let r = self.find(inner);
        if self.insts[r].block != self.insts[inner].block {
            return; // already attached
        }
        let o = self.find(outer);
        if o != r {
            self.parent[r] = o;
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn constraint_of(&mut self, i: usize) -> Option<Vec<KeyRef>> {
        let r = self.find(i);
        let b = self.insts[i].block;
        let found = self.blocks[b]
            .constraints
            .iter()
            .position(|(u, _)| *u == r)?;
        Some(self.blocks[b].constraints[found].1.clone())
    }

    fn eval(&mut self, c: Cond) -> Vec<(usize, Vec<KeyRef>)> {
        match c {
            Cond::True => Vec::new(),
            Cond::Pin(i, keys) => vec![(self.find(i), keys)],
            Cond::And(cs) => {
                let mut acc: Vec<(usize, Vec<KeyRef>)> = Vec::new();
                for c in cs {
                    for (u, keys) in self.eval(c) {
                        match acc.iter_mut().find(|(v, _)| *v == u) {
                            Some((_, mine)) => *mine = intersect(std::mem::take(mine), keys),
                            None => acc.push((u, keys)),
                        }
                    }
                }
                acc
            }
            Cond::Or(cs) => {
                let mut it = cs.into_iter();
                let mut acc = it.next().map(|c| self.eval(c)).unwrap_or_default();
                for c in it {
                    let next = self.eval(c);
                    acc.retain_mut(|(u, mine)| match next.iter().find(|(v, _)| v == u) {
                        Some((_, theirs)) => {
                            // Duplicates are harmless (the router dedupes shards); skip them only when cheap.
                            let dedupe = mine.len() * theirs.len() <= QUADRATIC_LIMIT;
                            for k in theirs {
                                if !dedupe || !mine.contains(k) {
                                    mine.push(k.clone());
                                }
                            }
                            true
                        }
                        None => false,
                    });
                }
                acc
            }
        }
    }

    fn finish(mut self) -> StatementShards {
        // (root, first occurrence) per unit, in the order tables appear.
        let mut units: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.insts.len() {
            let r = self.find(i);
            if !units.iter().any(|&(u, _)| u == r) {
                units.push((r, i));
            }
        }
        let mut values = Vec::new();
        let mut pinned = true;
        let mut root_blocks = Vec::with_capacity(units.len());
        let mut cross = self.unanalyzed.map(CrossShard::Unanalyzed);
        for &(u, first) in &units {
            // The unit's outermost block decides its keys (inner blocks only limit their own rows).
            let mut top = first;
            for i in 0..self.insts.len() {
                if self.find(i) != u {
                    continue;
                }
                if self.blocks[self.insts[i].block].depth < self.blocks[self.insts[top].block].depth
                {
                    top = i;
                }
                if cross.is_none() && !self.insts[i].table.colocated_with(&self.insts[first].table)
                {
                    cross = Some(CrossShard::DifferentMaps {
                        left: self.insts[first].table.name.clone(),
                        right: self.insts[i].table.name.clone(),
                    });
                }
            }
            root_blocks.push(self.insts[top].block);
            match self.constraint_of(top) {
                Some(keys) => values.extend(keys.into_iter().map(|key| KeyUse {
                    table: self.insts[first].table.clone(),
                    key,
                })),
                None => pinned = false,
            }
        }
        // One keyless unit runs on every shard: each block other than the main one must then work on per-shard rows.
        if let (None, false, [_]) = (&cross, pinned, units.as_slice()) {
            let root = root_blocks.first().copied();
            for (b, block) in self.blocks.iter().enumerate() {
                if Some(b) == self.main || !(Some(b) == root || block.opaque_input) {
                    continue;
                }
                if let Some(what) = block.needs_all_rows() {
                    cross = Some(CrossShard::NeedsAllRows(what));
                    break;
                }
            }
        }
        if cross.is_none() && units.len() > 1 {
            cross = Some(match self.needs_all_hint {
                Some(what) => CrossShard::NeedsAllRows(what),
                None => CrossShard::NotJoinedOnKey {
                    left: self.insts[units[0].1].table.name.clone(),
                    right: self.insts[units[1].1].table.name.clone(),
                },
            });
        }
        if let (None, Some(unsharded), Some(&(_, u))) = (&cross, &self.out.unsharded, units.first())
        {
            cross = Some(CrossShard::WithUnsharded {
                sharded: self.insts[u].table.name.clone(),
                unsharded: unsharded.clone(),
            });
        }
        if let (None, Some(reference)) = (&cross, &self.reference_written) {
            let other = units
                .first()
                .map(|&(_, u)| self.insts[u].table.name.clone())
                .or_else(|| self.out.unsharded.clone());
            if let Some(other) = other {
                cross = Some(CrossShard::ReferenceWriteReads {
                    reference: reference.clone(),
                    other,
                });
            }
        }
        self.out.keys = if pinned && !units.is_empty() && self.unanalyzed.is_none() {
            Keys::Values(values)
        } else {
            Keys::None
        };
        self.out.cross_shard = cross;
        self.out
    }
}

enum Resolved {
    Sharded(Arc<ShardedTable>),
    Reference,
    Unsharded,
    Cte,
    Unknown,
}

/// Postgres' built-in aggregates (pg_aggregate), by name: a user-defined one goes unnoticed and reads as a plain
/// function.
fn is_aggregate(name: &ObjectName) -> bool {
    const AGGREGATES: &[&str] = &[
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "bit_and",
        "bit_or",
        "bit_xor",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "json_agg_strict",
        "jsonb_agg_strict",
        "json_objectagg",
        "json_arrayagg",
        "xmlagg",
        "range_agg",
        "range_intersect_agg",
        "any_value",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "corr",
        "covar_pop",
        "covar_samp",
        "regr_avgx",
        "regr_avgy",
        "regr_count",
        "regr_intercept",
        "regr_r2",
        "regr_slope",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "mode",
        "percentile_cont",
        "percentile_disc",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
    ];
    last_ident(name).is_some_and(|id| AGGREGATES.iter().any(|a| ident_is(id, a)))
}

fn is_inner(op: &JoinOperator) -> bool {
    matches!(
        op,
        JoinOperator::Join(_)
            | JoinOperator::Inner(_)
            | JoinOperator::CrossJoin(_)
            | JoinOperator::StraightJoin(_)
    )
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id),
        ObjectNamePart::Function(_) => None,
    }
}

fn strip_nested(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// A subquery whose rows are "rows by key": a plain single-column SELECT (no set operation, no LIMIT).
fn single_column(q: &Query) -> bool {
    match &*q.body {
        SetExpr::Select(s) => s.projection.len() == 1,
        SetExpr::Query(q) => single_column(q),
        _ => false,
    }
}

const QUADRATIC_LIMIT: usize = 4096;

/// Two conditions on one unit both hold: keep the values both allow when both are literals; otherwise either side
/// is a correct (wider) answer, so keep the narrower.
fn intersect(a: Vec<KeyRef>, b: Vec<KeyRef>) -> Vec<KeyRef> {
    let literal = |v: &[KeyRef]| v.iter().all(|k| matches!(k, KeyRef::Literal(_)));
    // Quadratic, so only for lists of ordinary size: a hostile `IN` of thousands stays linear.
    if a.len() * b.len() <= QUADRATIC_LIMIT && literal(&a) && literal(&b) {
        let both: Vec<KeyRef> = a.into_iter().filter(|k| b.contains(k)).collect();
        if both.is_empty() {
            return vec![KeyRef::Literal(KeyValue::Null)];
        }
        return both;
    }
    if b.len() < a.len() {
        b
    } else {
        a
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Literals.

/// The key value an expression compared with (or inserted into) a key of type `ty` stands for. Only literals,
/// parameters, and casts to the key's own type (`'42'::bigint`, `$1::int8`, `uuid '…'`) qualify: anything else may
/// compare differently from the key's type (`key = 1.5`, `key = '42'::text`) and routes as "no key".
fn key_ref(e: &Expr, ty: KeyType) -> Option<KeyRef> {
    match e {
        Expr::Nested(inner) => key_ref(inner, ty),
        Expr::Value(v) => value_ref(&v.value, ty),
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match (&**expr, ty) {
            (Expr::Value(v), KeyType::Int) => match &v.value {
                Value::Number(n, _) => {
                    let parsed = if *op == UnaryOperator::Minus {
                        format!("-{n}").parse::<i64>()
                    } else {
                        n.parse::<i64>()
                    };
                    parsed.ok().map(|n| KeyRef::Literal(KeyValue::Int(n)))
                }
                _ => None,
            },
            _ => None,
        },
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            format: None,
        } if cast_type(data_type) == Some(ty) => key_ref(expr, ty),
        Expr::TypedString(ts) if cast_type(&ts.data_type) == Some(ty) => match &ts.value.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                ty.parse_text(s).ok().map(KeyRef::Literal)
            }
            _ => None,
        },
        _ => None,
    }
}

fn value_ref(v: &Value, ty: KeyType) -> Option<KeyRef> {
    let text = |s: &str| ty.parse_text(s).ok().map(KeyRef::Literal);
    match v {
        Value::Number(n, _) if ty == KeyType::Int => n
            .parse::<i64>()
            .ok()
            .map(|n| KeyRef::Literal(KeyValue::Int(n))),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s) => text(s),
        Value::DollarQuotedString(d) => text(&d.value),
        Value::Null => Some(KeyRef::Literal(KeyValue::Null)),
        Value::Placeholder(p) => p
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .map(KeyRef::Param),
        _ => None,
    }
}

/// The key type a cast produces, when it is one whose values compare like the key's.
fn cast_type(dt: &DataType) -> Option<KeyType> {
    match dt {
        DataType::Int2(_)
        | DataType::Int4(_)
        | DataType::Int8(_)
        | DataType::SmallInt(_)
        | DataType::Int(_)
        | DataType::Integer(_)
        | DataType::BigInt(_) => Some(KeyType::Int),
        // varchar(n) truncates on an explicit cast: `'abcd'::varchar(3)` is 'abc'. Only unbounded ones qualify.
        DataType::Text
        | DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::CharVarying(None) => Some(KeyType::Text),
        DataType::Uuid => Some(KeyType::Uuid),
        DataType::Custom(name, mods) if mods.is_empty() => {
            let id = last_ident(name)?;
            ["int2", "int4", "int8"]
                .iter()
                .any(|n| ident_is(id, n))
                .then_some(KeyType::Int)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Bind parameters.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    #[error("bind message supplies {given} parameters, but the statement uses ${wanted}")]
    MissingParam { wanted: usize, given: usize },
    #[error("bind message has {formats} parameter formats but {params} parameters")]
    FormatCount { formats: usize, params: usize },
    #[error("unsupported format code: {0}")]
    BadFormat(i16),
    #[error("incorrect binary data format in bind parameter {param}")]
    BadBinary { param: usize },
    #[error("invalid byte sequence for encoding \"UTF8\" in bind parameter {param}")]
    BadUtf8 { param: usize },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Resolves the statement's key values with one Bind's parameters (values as sent, `None` for NULL; format codes
/// as sent). Returns nothing for `Keys::None`.
pub fn bind_keys(
    analysis: &StatementShards,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<Vec<(Arc<ShardedTable>, KeyValue)>, BindError> {
    let Keys::Values(keys) = &analysis.keys else {
        return Ok(Vec::new());
    };
    keys.iter()
        .map(|k| {
            Ok((
                k.table.clone(),
                resolve(&k.key, k.key_type(), params, formats)?,
            ))
        })
        .collect()
}

/// Resolves `insert_rows`, the keys of each row going into `insert_table`.
pub fn bind_insert_rows(
    analysis: &StatementShards,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<Vec<KeyValue>, BindError> {
    let Some(ty) = analysis.insert_table.as_ref().map(|t| t.key_type) else {
        return Ok(Vec::new());
    };
    analysis
        .insert_rows
        .iter()
        .map(|k| resolve(k, ty, params, formats))
        .collect()
}

fn resolve(
    key: &KeyRef,
    ty: KeyType,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<KeyValue, BindError> {
    let n = match key {
        KeyRef::Literal(v) => return Ok(v.clone()),
        KeyRef::Param(n) => *n,
    };
    let Some(value) = params.get(n - 1) else {
        return Err(BindError::MissingParam {
            wanted: n,
            given: params.len(),
        });
    };
    // Postgres' rule (bind in postgres.c): no codes = all text, one code = for all, else one per parameter.
    let format = match formats.len() {
        0 => 0,
        1 => formats[0],
        m if m == params.len() => formats[n - 1],
        m => {
            return Err(BindError::FormatCount {
                formats: m,
                params: params.len(),
            })
        }
    };
    let Some(bytes) = value else {
        return Ok(KeyValue::Null);
    };
    let utf8 = || std::str::from_utf8(bytes).map_err(|_| BindError::BadUtf8 { param: n });
    match format {
        0 => Ok(ty.parse_text(utf8()?)?),
        1 => match ty {
            KeyType::Int => match bytes.len() {
                2 => Ok(KeyValue::Int(
                    i16::from_be_bytes([bytes[0], bytes[1]]).into(),
                )),
                4 => Ok(KeyValue::Int(
                    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into(),
                )),
                8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(bytes);
                    Ok(KeyValue::Int(i64::from_be_bytes(b)))
                }
                _ => Err(BindError::BadBinary { param: n }),
            },
            KeyType::Uuid => {
                let b: [u8; 16] = (*bytes)
                    .try_into()
                    .map_err(|_| BindError::BadBinary { param: n })?;
                Ok(KeyValue::Uuid(b))
            }
            KeyType::Text => Ok(KeyValue::Text(utf8()?.to_string())),
        },
        f => Err(BindError::BadFormat(f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> ShardSchema {
        let t = |name: &str, key: &str, key_type, map: &str| ShardedTable {
            name: name.into(),
            key: key.into(),
            key_type,
            map: map.into(),
        };
        ShardSchema::new(
            vec![
                t("accounts", "aid", KeyType::Int, "hash"),
                t("history", "aid", KeyType::Int, "hash"),
                t("branches", "bid", KeyType::Int, "hash"),
                t("sessions", "id", KeyType::Uuid, "hash"),
                t("orders", "tenant", KeyType::Text, "tenants"),
                t("invoices", "tenant", KeyType::Text, "tenants"),
                t("notes", "tenant", KeyType::Text, "hash"),
                t("\"Users\"", "\"UserId\"", KeyType::Text, "hash"),
            ],
            &["countries".into()],
        )
        .unwrap()
    }

    fn one(sql: &str) -> StatementShards {
        match analyze_sql(sql, &schema()) {
            ShardAnalysis::Analyzed {
                mut statements,
                combined,
            } => {
                assert_eq!(statements.len(), 1, "{sql}");
                let s = statements.remove(0);
                assert_eq!(s, combined);
                s
            }
            ShardAnalysis::Unroutable { reason } => panic!("{sql}: {reason}"),
        }
    }

    /// The keys as (table, key), `None` for `Keys::None`.
    fn keys_of(s: &StatementShards) -> Option<Vec<(String, KeyRef)>> {
        match &s.keys {
            Keys::None => None,
            Keys::Values(v) => Some(
                v.iter()
                    .map(|k| (k.table.name.clone(), k.key.clone()))
                    .collect(),
            ),
        }
    }

    fn keys(sql: &str) -> Option<Vec<(String, KeyRef)>> {
        keys_of(&one(sql))
    }

    fn int(n: i64) -> KeyRef {
        KeyRef::Literal(KeyValue::Int(n))
    }
    fn text(s: &str) -> KeyRef {
        KeyRef::Literal(KeyValue::Text(s.into()))
    }
    fn null() -> KeyRef {
        KeyRef::Literal(KeyValue::Null)
    }
    fn on(table: &str, keys: &[KeyRef]) -> Option<Vec<(String, KeyRef)>> {
        Some(
            keys.iter()
                .map(|k| (table.to_string(), k.clone()))
                .collect(),
        )
    }
    fn acc(keys: &[KeyRef]) -> Option<Vec<(String, KeyRef)>> {
        on("accounts", keys)
    }

    // --- single table -------------------------------------------------------------------------------------------

    #[test]
    fn equality_either_side() {
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = 1"), acc(&[int(1)]));
        assert_eq!(keys("SELECT * FROM accounts WHERE 1 = aid"), acc(&[int(1)]));
        assert_eq!(
            keys("SELECT * FROM accounts WHERE ((aid) = (5))"),
            acc(&[int(5)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = -7"),
            acc(&[int(-7)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = -9223372036854775808"),
            acc(&[int(i64::MIN)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = 1 IS NOT DISTINCT FROM true"),
            None
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid IS NOT DISTINCT FROM 3"),
            acc(&[int(3)])
        );
    }

    #[test]
    fn in_lists_and_any_arrays() {
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid IN (1, 2, $3)"),
            acc(&[int(1), int(2), KeyRef::Param(3)])
        );
        assert_eq!(keys("SELECT * FROM accounts WHERE aid NOT IN (1, 2)"), None);
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid IN (1, abalance)"),
            None
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = ANY(ARRAY[4, 5])"),
            acc(&[int(4), int(5)])
        );
        // An array parameter is one value holding many keys: not resolvable here.
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = ANY($1)"), None);
    }

    #[test]
    fn and_pins_with_any_key_conjunct_and_intersects_literals() {
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = 1 AND abalance > 0"),
            acc(&[int(1)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE abalance > 0 AND aid = $1"),
            acc(&[KeyRef::Param(1)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid IN (1, 2) AND aid IN (2, 3)"),
            acc(&[int(2)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = 1 AND aid = 2"),
            acc(&[null()])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid IN (1, 2) AND aid = $1"),
            acc(&[KeyRef::Param(1)])
        );
    }

    #[test]
    fn or_unions_key_equalities_only() {
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = 1 OR aid = 2"),
            acc(&[int(1), int(2)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = $1 OR aid IN ($2, 1) OR aid = 1"),
            acc(&[KeyRef::Param(1), KeyRef::Param(2), int(1)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = 1 OR abalance = 2"),
            None
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE (aid = 1 OR aid = 2) AND abalance = 0"),
            acc(&[int(1), int(2)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE (aid = 1 AND abalance = 0) OR (aid = 2 AND abalance = 1)"),
            acc(&[int(1), int(2)])
        );
    }

    #[test]
    fn casts_to_the_key_type_are_transparent() {
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = '42'::bigint"),
            acc(&[int(42)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = $1::int8"),
            acc(&[KeyRef::Param(1)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = CAST($2 AS integer)"),
            acc(&[KeyRef::Param(2)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = '7'"),
            acc(&[int(7)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = '5'::int4::int8"),
            acc(&[int(5)])
        );
        // Casts to other types compare differently (or fail in Postgres): no key.
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = '42'::text"), None);
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = 42::numeric"), None);
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = $1::text"), None);
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = 1.5"), None);
        assert_eq!(keys("SELECT * FROM accounts WHERE aid = 'x'"), None);
        // The key itself cast is no longer the key column.
        assert_eq!(keys("SELECT * FROM accounts WHERE aid::text = '42'"), None);
    }

    #[test]
    fn adversarial_shapes_have_no_key() {
        for sql in [
            "SELECT * FROM accounts WHERE abs(aid) = 1",
            "SELECT * FROM accounts WHERE aid = abalance",
            "SELECT * FROM accounts WHERE aid > 5",
            "SELECT * FROM accounts WHERE aid <> 1",
            "SELECT * FROM accounts WHERE aid BETWEEN 1 AND 1",
            "SELECT * FROM accounts WHERE NOT (aid = 1)",
            "SELECT * FROM accounts WHERE aid IS NULL",
            "SELECT * FROM accounts WHERE aid + 0 = 1",
            "SELECT * FROM accounts WHERE aid = 1 OR true",
            "SELECT * FROM accounts WHERE CASE WHEN aid = 1 THEN true END",
            "SELECT * FROM accounts",
            "SELECT * FROM accounts WHERE aid = $0",
            "SELECT * FROM accounts WHERE aid = $99999999999999999999999",
        ] {
            let s = one(sql);
            assert_eq!(keys_of(&s), None, "{sql}");
            assert_eq!(s.cross_shard, None, "{sql}");
            assert_eq!(s.target(), Target::Scatter, "{sql}");
        }
    }

    #[test]
    fn null_matches_nothing() {
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid = NULL"),
            acc(&[null()])
        );
        assert_eq!(
            keys("SELECT * FROM accounts WHERE aid IN (1, NULL)"),
            acc(&[int(1), null()])
        );
    }

    #[test]
    fn comments_case_and_quoting() {
        assert_eq!(
            keys("/* shardpool */ SELECT * -- why\n FROM accounts WHERE aid = 3 /* end */"),
            acc(&[int(3)])
        );
        assert_eq!(keys("SELECT * FROM ACCOUNTS WHERE AID = 4"), acc(&[int(4)]));
        assert_eq!(
            keys("select * from Public.Accounts a where A.Aid = 4"),
            acc(&[int(4)])
        );
        assert_eq!(
            keys("SELECT * FROM \"accounts\" WHERE \"aid\" = 4"),
            acc(&[int(4)])
        );
        // "AID" quoted is another column; "Accounts" quoted another table.
        assert_eq!(keys("SELECT * FROM accounts WHERE \"AID\" = 4"), None);
        assert!(one("SELECT * FROM \"Accounts\" WHERE aid = 4")
            .sharded
            .is_empty());
        assert_eq!(
            keys("SELECT * FROM \"Users\" u WHERE u.\"UserId\" = 'Ann'"),
            on("Users", &[text("Ann")])
        );
        assert_eq!(
            one("SELECT * FROM users WHERE userid = 'Ann'")
                .unsharded
                .as_deref(),
            Some("users")
        );
    }

    #[test]
    fn aliases_resolve_and_hide_the_table_name() {
        assert_eq!(
            keys("SELECT * FROM accounts a WHERE a.aid = 1"),
            acc(&[int(1)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts AS a WHERE a.aid = 1"),
            acc(&[int(1)])
        );
        assert_eq!(
            keys("SELECT * FROM public.accounts WHERE public.accounts.aid = 1"),
            acc(&[int(1)])
        );
        assert_eq!(
            keys("SELECT * FROM accounts \"A\" WHERE \"A\".aid = 1"),
            acc(&[int(1)])
        );
        assert_eq!(keys("SELECT * FROM accounts \"A\" WHERE a.aid = 1"), None);
        assert_eq!(keys("SELECT * FROM accounts a WHERE b.aid = 1"), None);
    }

    #[test]
    fn text_and_uuid_keys() {
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let want = KeyType::Uuid.parse_text(u).unwrap();
        for sql in [
            format!("SELECT * FROM sessions WHERE id = '{u}'"),
            format!("SELECT * FROM sessions WHERE id = uuid '{u}'"),
            format!("SELECT * FROM sessions WHERE id = '{u}'::uuid"),
        ] {
            assert_eq!(
                keys(&sql),
                on("sessions", &[KeyRef::Literal(want.clone())]),
                "{sql}"
            );
        }
        assert_eq!(keys("SELECT * FROM sessions WHERE id = 'nope'"), None);
        assert_eq!(
            keys("SELECT * FROM sessions WHERE id = $1::uuid"),
            on("sessions", &[KeyRef::Param(1)])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = 'acme'"),
            on("orders", &[text("acme")])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = E'a\\nb'"),
            on("orders", &[text("a\nb")])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = 'it''s'"),
            on("orders", &[text("it's")])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = $$q$$"),
            on("orders", &[text("q")])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = 'x'::varchar"),
            on("orders", &[text("x")])
        );
        assert_eq!(keys("SELECT * FROM orders WHERE tenant = 42"), None);
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = 'abcd'::varchar(3)"),
            None
        );
        assert_eq!(keys("SELECT * FROM orders WHERE tenant = N'x'"), None);
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = U&'\\0041'"),
            on("orders", &[text("A")])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = E'\\x41\\101'"),
            on("orders", &[text("AA")])
        );
        assert_eq!(
            keys("SELECT * FROM orders WHERE tenant = 'x'::char(3)"),
            None
        );
        let s = one("SELECT * FROM orders WHERE tenant = 'acme'");
        let Keys::Values(v) = &s.keys else { panic!() };
        assert_eq!((v[0].map(), v[0].key_type()), ("tenants", KeyType::Text));
    }

    // --- writes -------------------------------------------------------------------------------------------------

    #[test]
    fn insert_values_reports_each_row() {
        let s = one("INSERT INTO accounts (aid, abalance) VALUES (1, 0)");
        assert_eq!(s.kind, StatementKind::Write);
        assert_eq!(
            s.insert_table.as_ref().map(|t| t.name.as_str()),
            Some("accounts")
        );
        assert_eq!(keys_of(&s), acc(&[int(1)]));
        assert_eq!(s.insert_rows, vec![int(1)]);
        let s = one("INSERT INTO accounts (abalance, aid) VALUES (0, 1), (0, 2), (5, $1), (0, 1)");
        assert_eq!(
            s.insert_rows,
            vec![int(1), int(2), KeyRef::Param(1), int(1)]
        );
        assert_eq!(
            keys_of(&s),
            acc(&[int(1), int(2), KeyRef::Param(1), int(1)])
        );
        assert!(!s.insert_null_key);
        let s = one("INSERT INTO accounts (aid, abalance) VALUES ($1::int8, $2) RETURNING aid");
        assert_eq!(s.insert_rows, vec![KeyRef::Param(1)]);
    }

    #[test]
    fn insert_with_null_or_unknown_keys() {
        let s = one("INSERT INTO accounts (abalance, aid) VALUES (0, 1), (0, NULL)");
        assert!(s.insert_null_key);
        assert_eq!(s.insert_rows, vec![int(1), null()]);
        for sql in [
            "INSERT INTO accounts VALUES (1, 0)",
            "INSERT INTO accounts (aid) VALUES (DEFAULT)",
            "INSERT INTO accounts (abalance) VALUES (0)",
            "INSERT INTO accounts (aid) VALUES (1), (nextval('s'))",
            "INSERT INTO accounts DEFAULT VALUES",
        ] {
            let s = one(sql);
            assert_eq!(keys_of(&s), None, "{sql}");
            assert!(s.insert_rows.is_empty(), "{sql}");
            assert_eq!(s.target(), Target::Scatter, "{sql}");
        }
    }

    #[test]
    fn insert_select_needs_the_select_to_pin_the_key() {
        let s =
            one("INSERT INTO accounts (aid, abalance) SELECT aid, 0 FROM history WHERE aid = 5");
        assert_eq!(keys_of(&s), acc(&[int(5)]));
        assert_eq!(s.cross_shard, None);
        assert!(s.insert_rows.is_empty());
        // Same map and type: rows land where their source rows are.
        let s =
            one("INSERT INTO accounts (aid, abalance) SELECT bid, 0 FROM branches WHERE bid = $1");
        assert_eq!(keys_of(&s), acc(&[KeyRef::Param(1)]));
        // Keyless but co-located: a fan-out would be correct.
        let s = one("INSERT INTO accounts (aid, abalance) SELECT aid, 0 FROM history");
        assert_eq!((keys_of(&s), s.cross_shard), (None, None));
        // The key comes from a non-key column: rows move between shards.
        let s =
            one("INSERT INTO accounts (aid, abalance) SELECT delta, 0 FROM history WHERE aid = 1");
        assert_eq!(keys_of(&s), None);
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey { .. })
        ));
        assert_eq!(
            keys("INSERT INTO accounts (aid, abalance) SELECT 7, 0 FROM countries"),
            acc(&[int(7)])
        );
        assert_eq!(
            keys("INSERT INTO accounts (abalance, aid) SELECT 0, $2"),
            acc(&[KeyRef::Param(2)])
        );
        assert_eq!(
            keys("INSERT INTO accounts SELECT * FROM history WHERE aid = 1"),
            None
        );
        // Windows and global DISTINCT are computed over every shard's rows.
        let s = one(
            "INSERT INTO accounts (aid, abalance) SELECT aid, row_number() OVER () FROM history",
        );
        assert_eq!(keys_of(&s), None);
        assert_eq!(
            s.cross_shard,
            Some(CrossShard::NeedsAllRows("a window function"))
        );
        let s = one(
            "INSERT INTO accounts (aid, abalance) SELECT aid, count(*) FROM history GROUP BY aid",
        );
        assert_eq!((keys_of(&s), s.cross_shard), (None, None));
        assert_eq!(
            keys("INSERT INTO accounts (aid, abalance) SELECT aid, 0 FROM history WHERE aid = 5 LIMIT 1"),
            None
        );
    }

    #[test]
    fn update_and_delete_by_key() {
        let s = one("UPDATE accounts SET abalance = abalance + $2 WHERE aid = $1");
        assert_eq!(
            (s.kind, keys_of(&s), s.changes_key),
            (StatementKind::Write, acc(&[KeyRef::Param(1)]), false)
        );
        assert_eq!(
            keys("UPDATE accounts a SET abalance = 0 WHERE a.aid IN (1, 2)"),
            acc(&[int(1), int(2)])
        );
        assert_eq!(
            keys("DELETE FROM accounts WHERE aid IN ($1, $2)"),
            acc(&[KeyRef::Param(1), KeyRef::Param(2)])
        );
        assert_eq!(
            keys("DELETE FROM accounts AS a WHERE a.aid = 3 RETURNING *"),
            acc(&[int(3)])
        );
        let s = one("DELETE FROM accounts WHERE abalance < 0");
        assert_eq!(
            (s.kind, keys_of(&s), s.target()),
            (StatementKind::Write, None, Target::Scatter)
        );
        // UPDATE ... FROM a co-located table, and DELETE ... USING.
        let s = one("UPDATE accounts a SET abalance = h.delta FROM history h WHERE h.aid = a.aid AND a.aid = 8");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(8)]), None));
        let s = one("DELETE FROM accounts a USING history h WHERE h.aid = a.aid AND h.aid = 9");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(9)]), None));
    }

    #[test]
    fn writes_with_subqueries() {
        let s = one(
            "UPDATE accounts SET abalance = (SELECT sum(delta) FROM history WHERE history.aid = accounts.aid) \
             WHERE aid = 1",
        );
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
        // Keyless but co-located: refused as a keyless write unless fan-out is allowed, and then correct.
        let s = one("DELETE FROM accounts WHERE aid IN (SELECT aid FROM history WHERE delta < 0)");
        assert_eq!(
            (s.kind, keys_of(&s), s.cross_shard),
            (StatementKind::Write, None, None)
        );
        let s =
            one("UPDATE accounts SET abalance = (SELECT max(delta) FROM history) WHERE aid = 1");
        assert_eq!(keys_of(&s), None);
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey { .. })
        ));
        let s = one(
            "INSERT INTO accounts (aid, abalance) VALUES (1, (SELECT max(delta) FROM history))",
        );
        assert_eq!(s.insert_rows, vec![int(1)]);
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey { .. })
        ));
    }

    #[test]
    fn updates_that_move_rows_are_flagged() {
        assert!(one("UPDATE accounts SET aid = 2 WHERE aid = 1").changes_key);
        assert!(one("UPDATE accounts SET abalance = 0, AID = aid + 1 WHERE aid = 1").changes_key);
        assert!(one("UPDATE accounts SET (abalance, aid) = (0, 2) WHERE aid = 1").changes_key);
        assert!(
            one("INSERT INTO accounts (aid, abalance) VALUES (1, 0) ON CONFLICT (aid) DO UPDATE SET aid = excluded.aid + 1")
                .changes_key
        );
        let s = one("INSERT INTO accounts (aid, abalance) VALUES (1, 0) ON CONFLICT (aid) DO UPDATE SET abalance = 1");
        assert!(!s.changes_key);
        assert_eq!(keys_of(&s), acc(&[int(1)]));
        // Assigning a column named like another table's key is fine.
        assert!(!one("UPDATE branches SET aid = 2 WHERE bid = 1").changes_key);
    }

    // --- subqueries and CTEs ------------------------------------------------------------------------------------

    #[test]
    fn ctes_and_derived_tables_bind_the_key() {
        assert_eq!(
            keys("WITH x AS (SELECT * FROM accounts WHERE aid = 5) SELECT * FROM x"),
            acc(&[int(5)])
        );
        assert_eq!(
            keys("SELECT * FROM (SELECT * FROM accounts WHERE aid = 5) s WHERE s.abalance > 0"),
            acc(&[int(5)])
        );
        assert_eq!(
            keys("WITH x AS (SELECT aid FROM accounts WHERE aid = $1), y AS (SELECT * FROM x) SELECT * FROM y"),
            acc(&[KeyRef::Param(1)])
        );
        // A CTE name shadows a sharded table of the same name.
        let s = one("WITH accounts AS (SELECT 1 AS aid) SELECT * FROM accounts WHERE aid = 1");
        assert!(s.sharded.is_empty());
        assert_eq!(s.target(), Target::AnyShard);
        // Known limit: a key limited only outside the CTE is not traced into it.
        assert_eq!(
            keys("WITH x AS (SELECT * FROM accounts) SELECT * FROM x WHERE x.aid = 5"),
            None
        );
        // Data-modifying CTE.
        let s = one("WITH d AS (DELETE FROM accounts WHERE aid = 1 RETURNING *) SELECT * FROM d");
        assert_eq!(
            (s.kind, keys_of(&s)),
            (StatementKind::Write, acc(&[int(1)]))
        );
    }

    #[test]
    fn correlated_subqueries_on_the_key_are_colocated() {
        let s = one("SELECT * FROM accounts a WHERE a.aid = 1 AND EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid)");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
        // Inner conditions limit only the inner rows.
        let s = one(
            "SELECT * FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid AND h.aid = 5)",
        );
        assert_eq!((keys_of(&s), s.cross_shard), (None, None));
        // An inner block tying two outer tables does not co-locate them.
        let s = one(
            "SELECT * FROM accounts a, history b WHERE a.aid = 1 AND b.aid = 2 AND \
             NOT EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid AND h.aid = b.aid)",
        );
        assert_eq!(
            keys_of(&s),
            Some(vec![
                ("accounts".into(), int(1)),
                ("history".into(), int(2))
            ])
        );
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey { .. })
        ));
        // Uncorrelated subqueries over sharded tables read every shard.
        let s = one("SELECT a.*, (SELECT count(*) FROM history) FROM accounts a WHERE aid = 1");
        assert_eq!(keys_of(&s), None);
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey { .. })
        ));
    }

    #[test]
    fn key_in_subquery_is_a_semi_join() {
        let s = one("SELECT * FROM accounts WHERE aid IN (SELECT aid FROM history WHERE aid = 9)");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(9)]), None));
        let s = one(
            "SELECT * FROM accounts WHERE aid IN (SELECT h.aid FROM history h WHERE h.delta > 0)",
        );
        assert_eq!((keys_of(&s), s.cross_shard), (None, None));
        let s = one("SELECT * FROM accounts WHERE aid = (SELECT aid FROM history WHERE aid = 3)");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(3)]), None));
        let s =
            one("SELECT * FROM accounts WHERE aid NOT IN (SELECT aid FROM history WHERE aid = 3)");
        assert_eq!((keys_of(&s), s.cross_shard), (None, None));
        // Not rows by key: an aggregate, a LIMIT, another column.
        for sql in [
            "SELECT * FROM accounts WHERE aid = (SELECT max(aid) FROM history)",
            "SELECT * FROM accounts WHERE aid IN (SELECT aid FROM history ORDER BY delta LIMIT 1)",
            "SELECT * FROM accounts WHERE aid IN (SELECT delta FROM history)",
        ] {
            let s = one(sql);
            assert_eq!(keys_of(&s), None, "{sql}");
            assert!(
                matches!(s.cross_shard, Some(CrossShard::NotJoinedOnKey { .. })),
                "{sql}"
            );
        }
    }

    // --- joins --------------------------------------------------------------------------------------------------

    #[test]
    fn colocated_joins_with_a_key_on_either_table() {
        for sql in [
            "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid WHERE a.aid = 1",
            "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid WHERE h.aid = 1",
            "SELECT * FROM accounts a JOIN history h ON a.aid = h.aid AND h.aid = 1",
            "SELECT * FROM accounts a, history h WHERE a.aid = h.aid AND 1 = h.aid",
            "SELECT * FROM accounts JOIN history USING (aid) WHERE aid = 1",
            "SELECT * FROM accounts NATURAL JOIN history WHERE history.aid = 1",
            "SELECT * FROM accounts a JOIN (history h JOIN accounts b ON b.aid = h.aid) ON h.aid = a.aid WHERE a.aid = 1",
            "SELECT * FROM accounts a JOIN branches b ON b.bid = a.aid WHERE b.bid = 1",
        ] {
            let s = one(sql);
            assert_eq!(s.cross_shard, None, "{sql}");
            let Some(k) = keys_of(&s) else { panic!("{sql}") };
            assert_eq!(k.len(), 1, "{sql}");
            assert_eq!(k[0].1, int(1), "{sql}");
        }
        assert_eq!(
            keys("SELECT * FROM accounts a JOIN history h ON a.aid = h.aid WHERE a.aid = 1 OR h.aid = 2"),
            acc(&[int(1), int(2)])
        );
        let s = one(
            "SELECT * FROM orders o JOIN invoices i ON i.tenant = o.tenant WHERE o.tenant = $1",
        );
        assert_eq!(
            (keys_of(&s), s.cross_shard),
            (on("orders", &[KeyRef::Param(1)]), None)
        );
    }

    #[test]
    fn outer_join_conditions_do_not_limit_the_preserved_side() {
        let s = one("SELECT * FROM accounts a LEFT JOIN history h ON h.aid = a.aid AND h.aid = 5");
        assert_eq!((keys_of(&s), s.cross_shard), (None, None));
        let s =
            one("SELECT * FROM accounts a LEFT JOIN history h ON h.aid = a.aid WHERE h.aid = 5");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(5)]), None));
        let s =
            one("SELECT * FROM accounts a FULL JOIN history h ON h.aid = a.aid WHERE a.aid = 2");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(2)]), None));
    }

    #[test]
    fn non_colocated_joins_are_flagged() {
        let s =
            one("SELECT * FROM accounts a JOIN history h ON h.delta = a.abalance WHERE a.aid = 1");
        assert_eq!(keys_of(&s), None);
        assert_eq!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey {
                left: "accounts".into(),
                right: "history".into()
            })
        );
        // Both pinned: the router may still run it if both keys land on one shard.
        let s = one("SELECT * FROM accounts x, accounts y WHERE x.aid = 1 AND y.aid = 2");
        assert_eq!(keys_of(&s), acc(&[int(1), int(2)]));
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::NotJoinedOnKey { .. })
        ));
        let s =
            one("SELECT * FROM orders o JOIN notes n ON n.tenant = o.tenant WHERE o.tenant = 'a'");
        assert_eq!(
            s.cross_shard,
            Some(CrossShard::DifferentMaps {
                left: "orders".into(),
                right: "notes".into()
            })
        );
        let s = one("SELECT * FROM accounts a JOIN sessions s ON s.id = a.aid");
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::DifferentMaps { .. })
        ));
        // Unqualified key names shared by two unjoined tables are ambiguous: no key.
        assert_eq!(
            keys("SELECT * FROM accounts a, history h WHERE aid = 1"),
            None
        );
        let s = one(
            "SELECT * FROM accounts WHERE aid = 1 UNION ALL SELECT * FROM accounts WHERE aid = 2",
        );
        assert_eq!(keys_of(&s), acc(&[int(1), int(2)]));
        assert!(s.cross_shard.is_some());
    }

    #[test]
    fn reference_and_unsharded_tables() {
        let s =
            one("SELECT * FROM accounts a JOIN countries c ON c.code = a.country WHERE aid = 3");
        assert_eq!(
            (keys_of(&s), s.cross_shard, s.reads_reference),
            (acc(&[int(3)]), None, true)
        );
        let s = one("SELECT * FROM accounts a JOIN settings s ON s.k = a.country WHERE a.aid = 3");
        assert_eq!(keys_of(&s), acc(&[int(3)]));
        assert_eq!(
            s.cross_shard,
            Some(CrossShard::WithUnsharded {
                sharded: "accounts".into(),
                unsharded: "settings".into()
            })
        );
        let s = one("SELECT * FROM settings JOIN countries ON true");
        assert_eq!(
            (s.target(), s.cross_shard.clone()),
            (Target::DefaultShard, None)
        );
        assert_eq!(one("SELECT * FROM countries").target(), Target::AnyShard);
        assert_eq!(one("SELECT 1").target(), Target::AnyShard);
        assert_eq!(one("SELECT 1").kind, StatementKind::Read);
        let s = one("UPDATE countries SET name = 'x' WHERE code = 'fr'");
        assert_eq!(
            (s.kind, s.target(), s.cross_shard.clone()),
            (StatementKind::Write, Target::AllShards, None)
        );
        let s = one("INSERT INTO countries (code) SELECT country FROM accounts");
        assert!(matches!(
            s.cross_shard,
            Some(CrossShard::ReferenceWriteReads { .. })
        ));
        assert_eq!(
            one("SELECT * FROM other.settings").unsharded.as_deref(),
            Some("other.settings")
        );
        // An unqualified configuration name matches the table in any schema.
        assert_eq!(
            keys("SELECT * FROM other.orders WHERE tenant = 'a'"),
            on("orders", &[text("a")])
        );
    }

    // --- whole strings, other statements ------------------------------------------------------------------------

    #[test]
    fn several_statements_combine() {
        let a = analyze_sql(
            "SELECT * FROM accounts WHERE aid = 1; SELECT 2; UPDATE accounts SET abalance = 0 WHERE aid = 2",
            &schema(),
        );
        let ShardAnalysis::Analyzed {
            statements,
            combined,
        } = a
        else {
            panic!()
        };
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[1].target(), Target::AnyShard);
        assert_eq!(combined.kind, StatementKind::Write);
        assert_eq!(keys_of(&combined), acc(&[int(1), int(2)]));
        let a = analyze_sql(
            "SELECT * FROM accounts WHERE aid = 1; SELECT * FROM history",
            &schema(),
        );
        assert_eq!(a.combined().map(|c| c.keys.clone()), Some(Keys::None));
        let empty = analyze_sql("", &schema());
        assert_eq!(empty.combined().map(|c| c.target()), Some(Target::AnyShard));
    }

    #[test]
    fn parse_failures_are_unroutable() {
        for sql in [
            "SELEC * FROM accounts",
            "SELECT * FROM accounts WHERE aid = ",
            "'unterminated",
        ] {
            assert!(
                matches!(
                    analyze_sql(sql, &schema()),
                    ShardAnalysis::Unroutable { .. }
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn other_statement_kinds() {
        assert_eq!(one("BEGIN").kind, StatementKind::Other);
        assert_eq!(one("SET search_path = public").target(), Target::AnyShard);
        assert_eq!(
            keys("EXPLAIN SELECT * FROM accounts WHERE aid = 1"),
            acc(&[int(1)])
        );
        let s = one("CREATE INDEX ON accounts (abalance)");
        assert_eq!((s.kind, s.sharded.len()), (StatementKind::Ddl, 1));
        assert_eq!(one("DROP TABLE countries").target(), Target::AllShards);
        assert_eq!(one("TRUNCATE accounts, history").sharded.len(), 2);
        assert_eq!(
            one("ALTER TABLE settings ADD COLUMN x int").target(),
            Target::DefaultShard
        );
        let s = one("COPY accounts (aid, abalance) FROM STDIN");
        assert_eq!(
            (s.kind, s.target()),
            (StatementKind::Write, Target::Scatter)
        );
        let s = one("COPY (SELECT * FROM accounts WHERE aid = 1) TO STDOUT");
        assert_eq!((s.kind, keys_of(&s)), (StatementKind::Read, acc(&[int(1)])));
        let s =
            one("MERGE INTO accounts a USING history h ON h.aid = a.aid WHEN MATCHED THEN DELETE");
        assert_eq!(keys_of(&s), None);
        assert_eq!(s.cross_shard, Some(CrossShard::Unanalyzed("MERGE")));
        let s = one("SELECT * FROM accounts WHERE aid = 1 FOR UPDATE");
        assert_eq!((s.kind, keys_of(&s)), (StatementKind::Read, acc(&[int(1)])));
    }

    #[test]
    fn functions_in_from_and_subqueries_in_expressions_are_seen() {
        let s = one(
            "SELECT * FROM generate_series(1, 3) g JOIN accounts a ON a.aid = g.g WHERE a.aid = 2",
        );
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(2)]), None));
        for sql in [
            "SELECT coalesce((SELECT 1 FROM history LIMIT 1), 0) FROM accounts WHERE aid = 1",
            "SELECT * FROM accounts WHERE aid = 1 AND abalance > ALL(SELECT delta FROM history)",
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM history) THEN 1 END FROM accounts WHERE aid = 1",
            "SELECT * FROM accounts WHERE aid = 1 ORDER BY (SELECT max(delta) FROM history)",
            "SELECT count(*) FILTER (WHERE abalance IN (SELECT delta FROM history)) FROM accounts WHERE aid = 1",
        ] {
            let s = one(sql);
            assert_eq!(s.sharded.len(), 2, "{sql}");
            assert!(s.cross_shard.is_some(), "{sql}");
        }
    }

    #[test]
    fn lateral_subqueries_correlate() {
        let s = one(
            "SELECT * FROM accounts a, LATERAL (SELECT * FROM history h WHERE h.aid = a.aid LIMIT 3) x \
             WHERE a.aid = 1",
        );
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
    }

    #[test]
    fn huge_in_lists_stay_cheap() {
        let list: Vec<String> = (0..20_000).map(|n| n.to_string()).collect();
        let list = list.join(", ");
        let sql = format!(
            "SELECT * FROM accounts WHERE aid IN ({list}) AND aid IN ({list}) OR aid IN ({list})"
        );
        let started = std::time::Instant::now();
        let s = one(&sql);
        let Keys::Values(v) = &s.keys else { panic!() };
        assert!(v.len() >= 20_000);
        // Generous bound for a debug build on a loaded machine; quadratic work would take minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn nested_shapes_that_need_every_shards_rows_are_flagged() {
        for (sql, what) in [
            (
                "SELECT * FROM (SELECT * FROM accounts ORDER BY abalance LIMIT 10) s",
                "LIMIT or OFFSET",
            ),
            (
                "WITH x AS (SELECT * FROM accounts OFFSET 5) SELECT * FROM x",
                "LIMIT or OFFSET",
            ),
            (
                "WITH x AS (SELECT * FROM accounts) SELECT * FROM (SELECT count(*) FROM x) c",
                "an aggregate",
            ),
            (
                "SELECT * FROM (SELECT abalance, count(*) FROM accounts GROUP BY abalance) s",
                "an aggregate",
            ),
            (
                "SELECT * FROM (SELECT DISTINCT abalance FROM accounts) s",
                "DISTINCT",
            ),
            (
                "SELECT * FROM (SELECT aid, row_number() OVER (ORDER BY abalance) FROM accounts) s",
                "a window function",
            ),
            (
                "SELECT * FROM (SELECT aid FROM accounts EXCEPT SELECT 1) s",
                "UNION, INTERSECT or EXCEPT",
            ),
            (
                "SELECT * FROM ((SELECT aid FROM accounts LIMIT 1) UNION ALL SELECT 2) s",
                "LIMIT or OFFSET",
            ),
        ] {
            let s = one(sql);
            assert_eq!(keys_of(&s), None, "{sql}");
            assert_eq!(s.cross_shard, Some(CrossShard::NeedsAllRows(what)), "{sql}");
        }
        // Fine per shard: the top level (the merge's business), groups by key, correlated aggregates, pinned
        // subqueries, limits over reference tables.
        for sql in [
            "SELECT * FROM accounts ORDER BY abalance LIMIT 10",
            "SELECT count(*) FROM accounts",
            "SELECT * FROM (SELECT * FROM accounts) s ORDER BY abalance LIMIT 10",
            "WITH x AS (SELECT * FROM accounts) SELECT count(*) FROM x",
            "SELECT * FROM (SELECT aid, count(*) FROM history GROUP BY aid) s",
            "SELECT a.*, (SELECT count(*) FROM history h WHERE h.aid = a.aid) FROM accounts a",
            "SELECT * FROM accounts WHERE country IN (SELECT code FROM countries LIMIT 5)",
            "SELECT * FROM (SELECT aid FROM accounts UNION ALL SELECT 2) s",
        ] {
            assert_eq!(one(sql).cross_shard, None, "{sql}");
        }
        let s = one("SELECT * FROM (SELECT * FROM accounts WHERE aid = 1 LIMIT 1) s");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
    }

    #[test]
    fn everyday_postgres_syntax_is_understood() {
        for sql in [
            "SELECT data -> 'a' ->> 'b', data @> '{}'::jsonb, tags[1], (rec).field FROM accounts WHERE aid = 1",
            "SELECT now() - interval '1 day', EXTRACT(year FROM ts), ts AT TIME ZONE 'UTC' FROM accounts WHERE aid = 1",
            "SELECT coalesce(x, 0), CASE WHEN x IS DISTINCT FROM y THEN 1 ELSE 2 END FROM accounts WHERE aid = 1",
            "SELECT x ~ 'a', x SIMILAR TO 'b', x ILIKE 'c%', position('a' in x), substring(x from 1 for 2) \
             FROM accounts WHERE aid = 1",
            "SELECT trim(both 'x' from y), overlay(x placing 'y' from 1), x COLLATE \"C\", ROW(1, 2), ARRAY[1, 2] \
             FROM accounts WHERE aid = 1",
            "SELECT count(*) FILTER (WHERE x > 0), string_agg(x, ',' ORDER BY x), \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM accounts WHERE aid = 1",
            "SELECT x, sum(y) FROM accounts WHERE aid = 1 GROUP BY GROUPING SETS ((x), ())",
            "SELECT * FROM accounts a, unnest(a.tags) WITH ORDINALITY t(tag, n) WHERE a.aid = 1",
            "SELECT * FROM accounts WHERE aid = 1 AND x BETWEEN 1 AND 2 AND y IS NOT NULL FOR UPDATE SKIP LOCKED",
            "INSERT INTO accounts (aid, abalance) VALUES (1, 0) ON CONFLICT DO NOTHING RETURNING aid, abalance",
            "UPDATE accounts SET tags = array_append(tags, 'x') WHERE aid = 1 RETURNING *",
            "SELECT * FROM accounts WHERE aid = 1 ORDER BY x DESC NULLS LAST LIMIT 10 OFFSET 5",
            "SELECT x, lag(x) OVER (PARTITION BY y ORDER BY z) FROM accounts WHERE aid = 1",
        ] {
            let s = one(sql);
            assert_eq!(s.cross_shard, None, "{sql}");
            assert_eq!(keys_of(&s), acc(&[int(1)]), "{sql}");
        }
        let s =
            one("SELECT * FROM accounts WHERE aid = ANY(SELECT aid FROM history WHERE aid = 4)");
        assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(4)]), None));
    }

    // --- binding ------------------------------------------------------------------------------------------------

    fn bound(
        sql: &str,
        params: &[Option<&[u8]>],
        formats: &[i16],
    ) -> Result<Vec<KeyValue>, BindError> {
        Ok(bind_keys(&one(sql), params, formats)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    #[test]
    fn binds_text_parameters() {
        let q = "SELECT * FROM accounts WHERE aid IN ($1, $2, 7)";
        assert_eq!(
            bound(q, &[Some(b"42"), Some(b"-3")], &[]),
            Ok(vec![KeyValue::Int(42), KeyValue::Int(-3), KeyValue::Int(7)])
        );
        assert_eq!(
            bound(q, &[None, Some(b"1")], &[0]),
            Ok(vec![KeyValue::Null, KeyValue::Int(1), KeyValue::Int(7)])
        );
        assert!(matches!(
            bound(q, &[Some(b"x"), Some(b"1")], &[]),
            Err(BindError::Key(_))
        ));
        assert_eq!(
            bound(q, &[Some(b"1")], &[]),
            Err(BindError::MissingParam {
                wanted: 2,
                given: 1
            })
        );
        assert_eq!(
            bound(
                "SELECT * FROM orders WHERE tenant = $1",
                &[Some("zoë".as_bytes())],
                &[]
            ),
            Ok(vec![KeyValue::Text("zoë".into())])
        );
        assert_eq!(
            bound(
                "SELECT * FROM orders WHERE tenant = $1",
                &[Some(&[0xff])],
                &[]
            ),
            Err(BindError::BadUtf8 { param: 1 })
        );
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(
            bound(
                "SELECT * FROM sessions WHERE id = $1",
                &[Some(u.as_bytes())],
                &[]
            ),
            Ok(vec![KeyType::Uuid.parse_text(u).unwrap()])
        );
        assert_eq!(
            bound("SELECT * FROM accounts", &[Some(b"1")], &[]),
            Ok(vec![])
        );
    }

    #[test]
    fn binds_binary_parameters_by_length() {
        let q = "SELECT * FROM accounts WHERE aid = $1";
        for (bytes, want) in [
            (&(-2i16).to_be_bytes()[..], -2i64),
            (&70000i32.to_be_bytes()[..], 70000),
            (&(-5_000_000_000i64).to_be_bytes()[..], -5_000_000_000),
        ] {
            assert_eq!(
                bound(q, &[Some(bytes)], &[1]),
                Ok(vec![KeyValue::Int(want)])
            );
        }
        assert_eq!(
            bound(q, &[Some(&[1, 2, 3])], &[1]),
            Err(BindError::BadBinary { param: 1 })
        );
        assert_eq!(bound(q, &[Some(b"1")], &[2]), Err(BindError::BadFormat(2)));
        let uuid = [7u8; 16];
        assert_eq!(
            bound("SELECT * FROM sessions WHERE id = $1", &[Some(&uuid)], &[1]),
            Ok(vec![KeyValue::Uuid(uuid)])
        );
        assert_eq!(
            bound(
                "SELECT * FROM sessions WHERE id = $1",
                &[Some(&uuid[..15])],
                &[1]
            ),
            Err(BindError::BadBinary { param: 1 })
        );
        assert_eq!(
            bound(
                "SELECT * FROM orders WHERE tenant = $1",
                &[Some(b"acme")],
                &[1]
            ),
            Ok(vec![KeyValue::Text("acme".into())])
        );
    }

    #[test]
    fn format_codes_follow_postgres_rules() {
        let q = "SELECT * FROM accounts WHERE aid IN ($1, $2)";
        let bin = 9i64.to_be_bytes();
        // One code per parameter.
        assert_eq!(
            bound(q, &[Some(b"8"), Some(&bin)], &[0, 1]),
            Ok(vec![KeyValue::Int(8), KeyValue::Int(9)])
        );
        // One code for all.
        assert_eq!(
            bound(q, &[Some(&bin), Some(&bin)], &[1]),
            Ok(vec![KeyValue::Int(9), KeyValue::Int(9)])
        );
        assert_eq!(
            bound(q, &[Some(b"8"), Some(b"9"), Some(b"0")], &[0, 0]),
            Err(BindError::FormatCount {
                formats: 2,
                params: 3
            })
        );
    }

    #[test]
    fn binds_insert_rows() {
        let s = one("INSERT INTO accounts (aid, abalance) VALUES ($1, 0), (5, 0), ($2, 0)");
        assert_eq!(
            bind_insert_rows(&s, &[Some(b"1"), None], &[]),
            Ok(vec![KeyValue::Int(1), KeyValue::Int(5), KeyValue::Null])
        );
    }
}
