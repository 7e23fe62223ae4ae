//! From a SELECT to a [`Plan`]: the SQL every shard runs and how their replies merge into the reply one server
//! holding all rows would give.
//!
//! - No ORDER BY and no aggregate: concatenation. LIMIT n stays on the shards; OFFSET m becomes LIMIT n+m there
//!   and the merge skips m rows.
//! - ORDER BY: every shard sorts, the merge is a k-way merge comparing the sort columns as Postgres does (see
//!   [`super::value`]). A sort expression that is not a client column is appended to the shard query as a hidden
//!   column, stripped from merged rows. NULLs default to last for ASC and first for DESC, as in Postgres.
//! - GROUP BY or count/sum/min/max/avg: shards return one partial row per group (avg becomes sum and count), the
//!   merge combines rows with equal group keys, then applies ORDER BY and LIMIT/OFFSET itself; shards get neither.
//!
//! Everything else is refused with [`ScatterError::Unsupported`] naming the feature (DISTINCT, DISTINCT ON, HAVING,
//! window functions, set operations, other aggregates, aggregates with DISTINCT, expressions over aggregate results,
//! subqueries that aggregate or limit, FOR UPDATE, LIMIT given as a parameter...).
//!
//! Unchanged statements are sent as the client wrote them; rewritten ones are printed by sqlparser.

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, Ident, LimitClause, OrderByExpr, OrderByKind, OrderBySort, Query,
    Select, SelectItem, SetExpr, Statement, Value,
};

use sqlparser::tokenizer::{Token, Whitespace};

use super::items::{classify, fold, ExprKind, Item};
use super::scan;
use super::ScatterError;

/// How shards' replies merge, and what each shard runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The shard statement when it differs from the client's.
    rewritten: Option<String>,
    pub kind: PlanKind,
    /// Columns every shard returns after the client's columns (sort keys, partial aggregates).
    pub hidden: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanKind {
    /// Rows pass through shard after shard.
    Concat { window: Window },
    /// Every shard returns rows sorted by `keys`; a k-way merge keeps them sorted.
    Sorted { keys: Vec<SortKey>, window: Window },
    /// Shards return partial aggregates per group. `columns` lists the merged columns, the client's `visible`
    /// ones first; `order` sorts merged rows before `window` applies.
    Aggregate {
        columns: Vec<MergedColumn>,
        visible: usize,
        order: Vec<SortKey>,
        window: Window,
    },
}

/// OFFSET and LIMIT of the merged result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub offset: u64,
    pub limit: Option<u64>,
}

/// A column of the merged row: one of the client's, or the n-th hidden one after them. Hidden columns are
/// addressed from the end because a `*` before them makes the client's column count known only at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnRef {
    Output(usize),
    Hidden(usize),
}

impl ColumnRef {
    pub fn index(self, visible: usize) -> usize {
        match self {
            ColumnRef::Output(i) => i,
            ColumnRef::Hidden(j) => visible + j,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortKey {
    pub column: ColumnRef,
    pub descending: bool,
    pub nulls_first: bool,
}

/// How one merged column of an aggregate query is computed from shard columns (indexes into the shard's row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergedColumn {
    /// Part of the group identity.
    Group(usize),
    /// Determined by the group (an expression over group keys): taken from the first shard reporting the group.
    Value(usize),
    Count(usize),
    Sum(usize),
    Min(usize),
    Max(usize),
    Avg {
        sum: usize,
        count: usize,
    },
}

impl Plan {
    /// Plans one SELECT statement.
    pub fn from_sql(sql: &str) -> Result<Plan, ScatterError> {
        Plan::from_sql_with(sql, None)
    }

    /// Plans one SELECT statement of the extended protocol: LIMIT and OFFSET may then be `$n` parameters, whose
    /// values (from the Bind) decide the merge window. The shard statement keeps them as parameters.
    pub fn from_sql_with_params(sql: &str, params: ParamInt<'_>) -> Result<Plan, ScatterError> {
        Plan::from_sql_with(sql, Some(params))
    }

    fn from_sql_with(sql: &str, params: Option<ParamInt<'_>>) -> Result<Plan, ScatterError> {
        let mut statements = crate::sqlparse::parse_statements(sql)
            .map_err(|e| ScatterError::Parse(e.to_string()))?;
        if statements.len() != 1 {
            return Err(ScatterError::unsupported(format!(
                "{} statements in one query",
                statements.len()
            )));
        }
        match statements.pop() {
            Some(Statement::Query(query)) => Plan::plan_query(&query, params),
            _ => Err(ScatterError::unsupported("statements other than SELECT")),
        }
    }

    /// Plans a parsed SELECT; the caller keeps the text for [`Plan::shard_sql`].
    pub fn from_query(query: &Query) -> Result<Plan, ScatterError> {
        Plan::plan_query(query, None)
    }

    fn plan_query(query: &Query, params: Option<ParamInt<'_>>) -> Result<Plan, ScatterError> {
        check_query_clauses(query)?;
        let select = body_select(query)?;
        check_select_clauses(select)?;
        scan::check_subqueries(&query.to_string())?;
        let (window, by_params) = window(query, params)?;
        let order = order_by(query)?;
        let items = select
            .projection
            .iter()
            .map(Item::new)
            .collect::<Result<Vec<_>, _>>()?;
        let group_by = group_by(select)?;
        let mut aggregated = !group_by.is_empty() || items.iter().any(|i| i.aggregate().is_some());
        for ob in &order {
            aggregated |= matches!(classify(&ob.expr)?, ExprKind::Aggregate(_));
        }
        if aggregated {
            super::aggregate::plan(query, &items, group_by, &order, window)
        } else {
            rows_plan(query, &items, &order, window, by_params)
        }
    }

    /// What each shard runs: the client's text, or the rewritten statement.
    pub fn shard_sql<'a>(&'a self, client_sql: &'a str) -> &'a str {
        self.rewritten.as_deref().unwrap_or(client_sql)
    }

    pub fn is_rewritten(&self) -> bool {
        self.rewritten.is_some()
    }

    pub(super) fn new(rewritten: Option<String>, kind: PlanKind, hidden: usize) -> Plan {
        Plan {
            rewritten,
            kind,
            hidden,
        }
    }
}

fn check_query_clauses(query: &Query) -> Result<(), ScatterError> {
    if let Some(with) = &query.with {
        if with.recursive {
            return Err(ScatterError::unsupported("WITH RECURSIVE"));
        }
        for cte in &with.cte_tables {
            if matches!(
                *cte.query.body,
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            ) {
                return Err(ScatterError::unsupported(
                    "data-modifying statements in WITH",
                ));
            }
        }
    }
    if !query.locks.is_empty() {
        return Err(ScatterError::unsupported("SELECT ... FOR UPDATE/SHARE"));
    }
    if query.for_clause.is_some()
        || query.settings.is_some()
        || query.format_clause.is_some()
        || !query.pipe_operators.is_empty()
    {
        return Err(ScatterError::unsupported("non-PostgreSQL query syntax"));
    }
    Ok(())
}

fn body_select(query: &Query) -> Result<&Select, ScatterError> {
    match &*query.body {
        SetExpr::Select(select) => Ok(select),
        SetExpr::SetOperation { op, .. } => Err(ScatterError::unsupported(op.to_string())),
        SetExpr::Query(_) => Err(ScatterError::unsupported("a parenthesized query")),
        SetExpr::Values(_) => Err(ScatterError::unsupported("VALUES")),
        SetExpr::Table(_) => Err(ScatterError::unsupported("TABLE (write SELECT * FROM ...)")),
        _ => Err(ScatterError::unsupported("statements other than SELECT")),
    }
}

fn check_select_clauses(select: &Select) -> Result<(), ScatterError> {
    match &select.distinct {
        Some(Distinct::Distinct) => return Err(ScatterError::unsupported("DISTINCT")),
        Some(Distinct::On(_)) => return Err(ScatterError::unsupported("DISTINCT ON")),
        _ => {}
    }
    if select.into.is_some() {
        return Err(ScatterError::unsupported("SELECT INTO"));
    }
    if select.having.is_some() {
        return Err(ScatterError::unsupported("HAVING"));
    }
    if !select.named_window.is_empty() {
        return Err(ScatterError::unsupported("window functions"));
    }
    if select.top.is_some()
        || !select.lateral_views.is_empty()
        || select.prewhere.is_some()
        || !select.connect_by.is_empty()
        || !select.cluster_by.is_empty()
        || !select.distribute_by.is_empty()
        || !select.sort_by.is_empty()
        || select.qualify.is_some()
        || select.value_table_mode.is_some()
        || select.exclude.is_some()
        || select.select_modifiers.is_some()
    {
        return Err(ScatterError::unsupported("non-PostgreSQL SELECT syntax"));
    }
    Ok(())
}

fn group_by(select: &Select) -> Result<&[Expr], ScatterError> {
    match &select.group_by {
        GroupByExpr::All(_) => Err(ScatterError::unsupported("GROUP BY ALL")),
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() {
                return Err(ScatterError::unsupported("GROUP BY ... WITH ROLLUP/CUBE"));
            }
            if exprs
                .iter()
                .any(|e| matches!(e, Expr::GroupingSets(_) | Expr::Cube(_) | Expr::Rollup(_)))
            {
                return Err(ScatterError::unsupported("GROUPING SETS, ROLLUP and CUBE"));
            }
            Ok(exprs)
        }
    }
}

fn order_by(query: &Query) -> Result<Vec<&OrderByExpr>, ScatterError> {
    let Some(order_by) = &query.order_by else {
        return Ok(Vec::new());
    };
    if order_by.interpolate.is_some() {
        return Err(ScatterError::unsupported("ORDER BY ... INTERPOLATE"));
    }
    match &order_by.kind {
        OrderByKind::All(_) => Err(ScatterError::unsupported("ORDER BY ALL")),
        OrderByKind::Expressions(exprs) => {
            if exprs.iter().any(|e| e.with_fill.is_some()) {
                return Err(ScatterError::unsupported("ORDER BY ... WITH FILL"));
            }
            Ok(exprs.iter().collect())
        }
    }
}

/// ASC/DESC and NULLS FIRST/LAST with Postgres' defaults (NULLs are larger than any value).
pub(super) fn direction(ob: &OrderByExpr) -> Result<(bool, bool), ScatterError> {
    let descending = match &ob.options.sort {
        None | Some(OrderBySort::Asc) => false,
        Some(OrderBySort::Desc) => true,
        Some(OrderBySort::Using(_)) => return Err(ScatterError::unsupported("ORDER BY ... USING")),
    };
    Ok((descending, ob.options.nulls_first.unwrap_or(descending)))
}

/// The value of parameter `$n` (1-based) read as an integer (`None`: SQL NULL), for LIMIT/OFFSET parameters.
pub type ParamInt<'a> = &'a dyn Fn(usize) -> Result<Option<i64>, ScatterError>;

/// The merged window, and whether LIMIT or OFFSET was given as a parameter (the shard limit must then stay one).
fn window(query: &Query, params: Option<ParamInt<'_>>) -> Result<(Window, bool), ScatterError> {
    let mut w = Window::default();
    let mut by_params = false;
    match &query.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(ScatterError::unsupported("LIMIT ... BY"));
            }
            if let Some(limit) = limit {
                by_params |= is_placeholder(limit);
                w.limit = constant(limit, params, "LIMIT")?;
            }
            if let Some(offset) = offset {
                by_params |= is_placeholder(&offset.value);
                w.offset = constant(&offset.value, params, "OFFSET")?.unwrap_or(0);
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => {
            return Err(ScatterError::unsupported("LIMIT offset, count"))
        }
    }
    if let Some(fetch) = &query.fetch {
        if fetch.with_ties {
            return Err(ScatterError::unsupported("FETCH ... WITH TIES"));
        }
        if fetch.percent {
            return Err(ScatterError::unsupported("FETCH ... PERCENT"));
        }
        if fetch.quantity.as_ref().is_some_and(is_placeholder) {
            return Err(ScatterError::unsupported(
                "FETCH FIRST given as a parameter",
            ));
        }
        w.limit = match &fetch.quantity {
            Some(q) => constant(q, None, "FETCH")?,
            None => Some(1),
        };
    }
    Ok((w, by_params))
}

fn is_placeholder(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(v) if matches!(v.value, Value::Placeholder(_)))
}

/// A LIMIT/OFFSET operand: a non-negative integer, or NULL (no limit / no offset); a `$n` parameter when its value
/// is known (with Postgres' errors for negative values).
fn constant(
    expr: &Expr,
    params: Option<ParamInt<'_>>,
    clause: &str,
) -> Result<Option<u64>, ScatterError> {
    let Expr::Value(v) = expr else {
        return Err(ScatterError::unsupported(
            "LIMIT/OFFSET that is not an integer constant",
        ));
    };
    match &v.value {
        Value::Null => Ok(None),
        Value::Number(n, _) => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .map(Some)
            .ok_or_else(|| ScatterError::unsupported(format!("LIMIT/OFFSET {n}"))),
        Value::Placeholder(p) => {
            let n = p
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n >= 1);
            match (params, n) {
                (Some(params), Some(n)) => match params(n)? {
                    None => Ok(None),
                    Some(v) if v < 0 => Err(ScatterError::Data {
                        code: if clause == "OFFSET" { "2201X" } else { "2201W" },
                        message: format!("{clause} must not be negative"),
                    }),
                    Some(v) => Ok(Some(v as u64)),
                },
                _ => Err(ScatterError::unsupported(format!(
                    "LIMIT/OFFSET given as a parameter ({p})"
                ))),
            }
        }
        _ => Err(ScatterError::unsupported(
            "LIMIT/OFFSET that is not an integer constant",
        )),
    }
}

/// What each shard must return for the merged window: the first offset+limit rows (LIMIT 0 stays 0).
pub(super) fn set_shard_limit(query: &mut Query, window: Window) {
    query.fetch = None;
    let total = window
        .limit
        .and_then(|n| {
            if n == 0 {
                Some(0)
            } else {
                n.checked_add(window.offset)
            }
        })
        .filter(|t| *t <= i64::MAX as u64);
    query.limit_clause = total.map(|t| LimitClause::LimitOffset {
        limit: Some(Expr::value(Value::Number(t.to_string(), false))),
        offset: None,
        limit_by: Vec::new(),
    });
}

/// LIMIT l OFFSET o where either is a `$n` parameter: each shard returns the first l+o rows, computed by the shard
/// from the same parameters (never written into the SQL). A NULL limit stays NULL, i.e. no limit, as in Postgres.
fn set_shard_limit_params(query: &mut Query) -> Result<(), ScatterError> {
    let Some(LimitClause::LimitOffset { limit, offset, .. }) = &query.limit_clause else {
        return Ok(());
    };
    let Some(limit) = limit else {
        // OFFSET alone: the shards return every row.
        query.limit_clause = None;
        return Ok(());
    };
    let offset = offset
        .as_ref()
        .map_or_else(|| "0".to_owned(), |o| o.value.to_string());
    let text = format!("({limit})::bigint + ({offset})::bigint");
    let expr =
        crate::sqlparse::parse_expr(&text).map_err(|e| ScatterError::Parse(e.to_string()))?;
    query.limit_clause = Some(LimitClause::LimitOffset {
        limit: Some(expr),
        offset: None,
        limit_by: Vec::new(),
    });
    Ok(())
}

/// The text of a rewritten shard statement, refused unless it reads back as exactly `query`. sqlparser prints
/// nested prefix operators without a space: `- -x` comes out as `--x`, a comment that cuts off the rest of the
/// one-line statement, so the shards got a syntax error for valid SQL, or worse, for `SELECT - -a FROM t OFFSET 1`,
/// the valid statement `SELECT`: one empty row per shard. `~ ~x` comes out as the operator `~~`. Found by
/// fuzz/fuzz_targets/scatter_plan.rs.
pub(super) fn render(query: &Query) -> Result<String, ScatterError> {
    let sql = query.to_string();
    let faithful = crate::sqlparse::tokenize(&sql).is_ok_and(|tokens| {
        let comment = tokens.iter().any(|t| {
            matches!(
                t.token,
                Token::Whitespace(
                    Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)
                )
            )
        });
        !comment
            && matches!(crate::sqlparse::parse_tokens(tokens).as_deref(),
                Ok([Statement::Query(again)]) if **again == *query)
    });
    if faithful {
        Ok(sql)
    } else {
        Err(ScatterError::unsupported(
            "an expression shardpool cannot print back unchanged for the shards (such as `- -x`; write `-(-x)`)",
        ))
    }
}

/// Appends hidden columns to the shard query's select list.
pub(super) fn append_hidden(query: &mut Query, hidden: &[Expr]) {
    if let SetExpr::Select(select) = &mut *query.body {
        for (j, expr) in hidden.iter().enumerate() {
            select.projection.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::new(format!("__shardpool_{j}")),
            });
        }
    }
}

/// Index of `expr` among `hidden`, adding it if new.
pub(super) fn push_hidden(hidden: &mut Vec<Expr>, expr: &Expr) -> usize {
    let text = expr.to_string();
    if let Some(j) = hidden.iter().position(|h| h.to_string() == text) {
        return j;
    }
    hidden.push(expr.clone());
    hidden.len() - 1
}

/// Plans a query without aggregation: concatenation, or a k-way merge when it has ORDER BY.
fn rows_plan(
    query: &Query,
    items: &[Item],
    order: &[&OrderByExpr],
    window: Window,
    by_params: bool,
) -> Result<Plan, ScatterError> {
    let mut hidden = Vec::new();
    let mut keys = Vec::with_capacity(order.len());
    for ob in order {
        let (descending, nulls_first) = direction(ob)?;
        keys.push(SortKey {
            column: row_sort_column(&ob.expr, items, &mut hidden),
            descending,
            nulls_first,
        });
    }
    let rewritten = if hidden.is_empty() && window.offset == 0 {
        None
    } else {
        let mut q = query.clone();
        append_hidden(&mut q, &hidden);
        if !by_params {
            set_shard_limit(&mut q, window);
        } else if window.offset > 0 {
            set_shard_limit_params(&mut q)?;
        }
        Some(render(&q)?)
    };
    let kind = if keys.is_empty() {
        PlanKind::Concat { window }
    } else {
        PlanKind::Sorted { keys, window }
    };
    Ok(Plan::new(rewritten, kind, hidden.len()))
}

/// The merged column an ORDER BY entry of a non-aggregate query sorts on. The shard query keeps its ORDER BY, so
/// Postgres on each shard resolves (and rejects) it as usual; here it is enough to find an equal column.
fn row_sort_column(expr: &Expr, items: &[Item], hidden: &mut Vec<Expr>) -> ColumnRef {
    if let Some(k) = position(expr) {
        return ColumnRef::Output(k.saturating_sub(1));
    }
    // An unqualified name refers to an output column first (SQL92 rule), then to an input column; any other
    // expression matches a select item only if it is the same expression.
    let by_name = match expr {
        Expr::Identifier(id) => {
            let name = fold(id);
            items
                .iter()
                .position(|i| i.name.as_deref() == Some(name.as_str()))
        }
        _ => None,
    };
    let text = expr.to_string();
    let target = by_name.or_else(|| {
        items
            .iter()
            .position(|i| i.expr.is_some() && i.text == text)
    });
    match target {
        // Columns after a `*` have no index known before the shard describes its result: sort on a copy.
        Some(i) if items[..i].iter().all(|it| !it.is_wildcard()) => ColumnRef::Output(i),
        Some(i) => ColumnRef::Hidden(push_hidden(hidden, items[i].expr.unwrap_or(expr))),
        None => ColumnRef::Hidden(push_hidden(hidden, expr)),
    }
}

/// `ORDER BY 2` / `GROUP BY 1`: a positive integer literal.
pub(super) fn position(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok().filter(|k| *k >= 1),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sql: &str) -> Plan {
        Plan::from_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn refused(sql: &str) -> String {
        match Plan::from_sql(sql) {
            Err(ScatterError::Unsupported(feature)) => feature,
            other => panic!("{sql}: expected Unsupported, got {other:?}"),
        }
    }

    fn key(column: ColumnRef, descending: bool, nulls_first: bool) -> SortKey {
        SortKey {
            column,
            descending,
            nulls_first,
        }
    }

    #[test]
    fn plain_selects_concatenate_unchanged() {
        let sql = "SELECT id, name FROM accounts WHERE balance > 0 LIMIT 10";
        let p = plan(sql);
        assert_eq!(
            p.kind,
            PlanKind::Concat {
                window: Window {
                    offset: 0,
                    limit: Some(10)
                }
            }
        );
        assert_eq!(p.shard_sql(sql), sql);
        assert_eq!(p.hidden, 0);
    }

    #[test]
    fn offset_becomes_a_larger_limit_on_shards() {
        let p = plan("SELECT id FROM t ORDER BY id LIMIT 10 OFFSET 5");
        assert_eq!(p.shard_sql(""), "SELECT id FROM t ORDER BY id LIMIT 15");
        assert_eq!(
            p.kind,
            PlanKind::Sorted {
                keys: vec![key(ColumnRef::Output(0), false, false)],
                window: Window {
                    offset: 5,
                    limit: Some(10)
                },
            }
        );
        let p = plan("SELECT id FROM t OFFSET 3 ROWS FETCH FIRST 2 ROWS ONLY");
        assert_eq!(p.shard_sql(""), "SELECT id FROM t LIMIT 5");
        let p = plan("SELECT id FROM t LIMIT 0 OFFSET 4");
        assert_eq!(p.shard_sql(""), "SELECT id FROM t LIMIT 0");
        let p = plan("SELECT id FROM t OFFSET 4");
        assert_eq!(p.shard_sql(""), "SELECT id FROM t");
        assert_eq!(
            p.kind,
            PlanKind::Concat {
                window: Window {
                    offset: 4,
                    limit: None
                }
            }
        );
        let p = plan("SELECT id FROM t LIMIT ALL");
        assert_eq!(
            p.kind,
            PlanKind::Concat {
                window: Window::default()
            }
        );
    }

    #[test]
    fn limit_and_offset_parameters_set_the_window_and_stay_parameters() {
        let values = |n: usize| -> Result<Option<i64>, ScatterError> {
            Ok(match n {
                2 => Some(10),
                3 => Some(5),
                4 => None,
                _ => Some(-1),
            })
        };
        let sql = "SELECT id FROM t WHERE v > $1 ORDER BY id LIMIT $2 OFFSET $3";
        let p = Plan::from_sql_with_params(sql, &values).unwrap();
        assert_eq!(
            p.shard_sql(sql),
            "SELECT id FROM t WHERE v > $1 ORDER BY id LIMIT ($2)::BIGINT + ($3)::BIGINT"
        );
        let PlanKind::Sorted { window, .. } = p.kind else {
            panic!("{:?}", p.kind)
        };
        assert_eq!(
            window,
            Window {
                offset: 5,
                limit: Some(10)
            }
        );
        // Without an offset the statement goes as written; a NULL limit is no limit.
        let sql = "SELECT id FROM t LIMIT $4";
        let p = Plan::from_sql_with_params(sql, &values).unwrap();
        assert_eq!(p.shard_sql(sql), sql);
        assert_eq!(
            p.kind,
            PlanKind::Concat {
                window: Window::default()
            }
        );
        match Plan::from_sql_with_params("SELECT id FROM t LIMIT $1", &values) {
            Err(ScatterError::Data { code, .. }) => assert_eq!(code, "2201W"),
            other => panic!("{other:?}"),
        }
        // The simple protocol has no values for them.
        assert_eq!(
            refused("SELECT id FROM t LIMIT $2"),
            "LIMIT/OFFSET given as a parameter ($2)"
        );
    }

    #[test]
    fn order_by_resolves_positions_names_and_expressions() {
        let p = plan("SELECT a, b AS bee, c + 1 FROM t ORDER BY 3 DESC, bee NULLS FIRST, a, c + 1 ASC NULLS LAST");
        assert!(!p.is_rewritten());
        let PlanKind::Sorted { keys, .. } = p.kind else {
            panic!()
        };
        assert_eq!(
            keys,
            vec![
                key(ColumnRef::Output(2), true, true),
                key(ColumnRef::Output(1), false, true),
                key(ColumnRef::Output(0), false, false),
                key(ColumnRef::Output(2), false, false),
            ]
        );
    }

    #[test]
    fn sort_expressions_outside_the_select_list_become_hidden_columns() {
        let p = plan("SELECT a FROM t ORDER BY lower(b) DESC, t.c, lower(b) LIMIT 3 OFFSET 1");
        assert_eq!(p.hidden, 2);
        assert_eq!(
            p.shard_sql(""),
            "SELECT a, lower(b) AS __shardpool_0, t.c AS __shardpool_1 FROM t ORDER BY lower(b) DESC, t.c, lower(b) LIMIT 4"
        );
        let PlanKind::Sorted { keys, .. } = p.kind else {
            panic!()
        };
        assert_eq!(keys[0], key(ColumnRef::Hidden(0), true, true));
        assert_eq!(keys[1], key(ColumnRef::Hidden(1), false, false));
        assert_eq!(keys[2], key(ColumnRef::Hidden(0), false, false));
    }

    #[test]
    fn columns_after_a_wildcard_are_sorted_on_a_copy() {
        let p = plan("SELECT *, a + 1 AS x FROM t ORDER BY x, 1");
        assert_eq!(
            p.shard_sql(""),
            "SELECT *, a + 1 AS x, a + 1 AS __shardpool_0 FROM t ORDER BY x, 1"
        );
        let PlanKind::Sorted { keys, .. } = p.kind else {
            panic!()
        };
        assert_eq!(keys[0].column, ColumnRef::Hidden(0));
        assert_eq!(keys[1].column, ColumnRef::Output(0));
    }

    #[test]
    fn a_rewrite_sqlparser_cannot_print_back_is_refused_not_sent() {
        // Found by fuzz/fuzz_targets/scatter_plan.rs: `- -1` printed as `--1` commented out the rest of the shards'
        // statement.
        for sql in [
            "SELECT a FROM t WHERE a > - -1 ORDER BY b LIMIT 5",
            "SELECT a FROM t ORDER BY ~ ~ a OFFSET 2",
            "SELECT count(*) FROM t WHERE a = - -1 GROUP BY b",
            "SELECT - -a FROM t OFFSET 1",
        ] {
            assert!(refused(sql).contains("print back unchanged"), "{sql}");
        }
        // Written with parentheses, the same statements plan, and what the shards get reads back as the statement.
        for sql in [
            "SELECT a FROM t WHERE a > -(-1) ORDER BY b LIMIT 5",
            "SELECT count(*) FROM t WHERE a = -(-1) GROUP BY b",
        ] {
            let p = plan(sql);
            assert!(p.is_rewritten(), "{sql}");
            assert!(!p.shard_sql(sql).contains("--"), "{}", p.shard_sql(sql));
        }
    }

    #[test]
    fn unsupported_shapes_name_the_feature() {
        let cases = [
            ("SELECT DISTINCT a FROM t", "DISTINCT"),
            (
                "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a",
                "DISTINCT ON",
            ),
            (
                "SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > 1",
                "HAVING",
            ),
            (
                "SELECT a, row_number() OVER (ORDER BY a) FROM t",
                "window functions",
            ),
            (
                "SELECT a FROM t ORDER BY rank() OVER (ORDER BY a)",
                "window functions",
            ),
            ("SELECT count(DISTINCT a) FROM t", "count(DISTINCT ...)"),
            ("SELECT string_agg(a, ',') FROM t", "aggregate string_agg()"),
            ("SELECT stddev(a) FROM t GROUP BY g", "aggregate stddev()"),
            ("SELECT a FROM t UNION SELECT a FROM u", "UNION"),
            ("SELECT a FROM t EXCEPT SELECT a FROM u", "EXCEPT"),
            (
                "SELECT a FROM t LIMIT $1",
                "LIMIT/OFFSET given as a parameter ($1)",
            ),
            (
                "SELECT a FROM t OFFSET 2 + 3",
                "LIMIT/OFFSET that is not an integer constant",
            ),
            (
                "SELECT a FROM t FETCH FIRST 3 ROWS WITH TIES",
                "FETCH ... WITH TIES",
            ),
            ("SELECT a FROM t FOR UPDATE", "SELECT ... FOR UPDATE/SHARE"),
            ("SELECT a INTO new_t FROM t", "SELECT INTO"),
            (
                "SELECT sum(a) * 2 FROM t",
                "expressions over aggregate results (sum(a) * 2)",
            ),
            (
                "SELECT * FROM t WHERE a > (SELECT avg(a) FROM t)",
                "a subquery with aggregate avg()",
            ),
            (
                "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r",
                "WITH RECURSIVE",
            ),
            ("SELECT a FROM t ORDER BY a USING <", "ORDER BY ... USING"),
            ("SELECT 1; SELECT 2", "2 statements in one query"),
            ("INSERT INTO t VALUES (1)", "statements other than SELECT"),
            ("VALUES (1)", "VALUES"),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                "data-modifying statements in WITH",
            ),
            (
                "WITH u AS (SELECT a FROM t UNION ALL SELECT a FROM v) SELECT * FROM u",
                "a subquery with UNION, INTERSECT or EXCEPT",
            ),
            (
                "SELECT g, count(*) FROM t GROUP BY ROLLUP (g)",
                "GROUPING SETS, ROLLUP and CUBE",
            ),
        ];
        for (sql, feature) in cases {
            assert_eq!(refused(sql), feature, "{sql}");
        }
    }
}
