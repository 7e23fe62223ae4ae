//! Planning of aggregate queries (GROUP BY, count/sum/min/max/avg): which shard column feeds each merged column,
//! which columns form the group identity, and the shard statement, which drops ORDER BY and LIMIT/OFFSET (they
//! apply to merged groups), turns `avg(x)` into `sum(x)` plus a hidden `count(x)`, and appends hidden columns for
//! GROUP BY and ORDER BY expressions the client did not select.
//!
//! Group identity: every GROUP BY expression is a shard column (a select item, or a hidden copy). Other plain select
//! items are determined by the group (Postgres checks that), so they are taken from the first shard reporting the
//! group. A bare name in GROUP BY is matched to a selected column of that name, then to an output alias; Postgres
//! prefers an input column over an alias, which differs only for a table column named like an alias of another
//! expression.

use sqlparser::ast::{Expr, Ident, OrderByExpr, Query, SelectItem, SetExpr};

use super::items::{classify, fold, AggFunc, Aggregate, ExprKind, Item};
use super::plan::{
    append_hidden, direction, position, push_hidden, render, ColumnRef, MergedColumn, Plan,
    PlanKind, SortKey, Window,
};
use super::ScatterError;

struct Builder<'a> {
    items: &'a [Item<'a>],
    /// Expressions appended to the shard's select list.
    hidden_exprs: Vec<Expr>,
    /// Merged columns: the client's first, then hidden ones (with the text they were made from, for reuse).
    columns: Vec<MergedColumn>,
    hidden_columns: Vec<(String, MergedColumn)>,
    /// Select items whose shard expression differs from the client's (avg -> sum).
    replaced: Vec<(usize, Expr)>,
}

pub(super) fn plan(
    query: &Query,
    items: &[Item],
    group_by: &[Expr],
    order: &[&OrderByExpr],
    window: Window,
) -> Result<Plan, ScatterError> {
    if items.iter().any(Item::is_wildcard) {
        return Err(ScatterError::unsupported("* in an aggregate query"));
    }
    let mut b = Builder {
        items,
        hidden_exprs: Vec::new(),
        columns: Vec::with_capacity(items.len()),
        hidden_columns: Vec::new(),
        replaced: Vec::new(),
    };
    for (i, item) in items.iter().enumerate() {
        let column = match &item.kind {
            ExprKind::Plain => MergedColumn::Value(i),
            ExprKind::Aggregate(agg) => b.aggregate(agg, Some(i)),
        };
        b.columns.push(column);
    }
    for g in group_by {
        b.group(g)?;
    }
    let mut keys = Vec::with_capacity(order.len());
    for ob in order {
        let (descending, nulls_first) = direction(ob)?;
        keys.push(SortKey {
            column: b.sort_column(&ob.expr)?,
            descending,
            nulls_first,
        });
    }

    let changed = !b.replaced.is_empty()
        || !b.hidden_exprs.is_empty()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some();
    let rewritten = if changed {
        let mut q = query.clone();
        q.order_by = None;
        q.limit_clause = None;
        q.fetch = None;
        if let SetExpr::Select(select) = &mut *q.body {
            for (i, expr) in &b.replaced {
                let alias = match &select.projection[*i] {
                    SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                    _ => Ident::new("avg"),
                };
                select.projection[*i] = SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias,
                };
            }
        }
        append_hidden(&mut q, &b.hidden_exprs);
        Some(render(&q)?)
    } else {
        None
    };
    let visible = items.len();
    let mut columns = b.columns;
    columns.extend(b.hidden_columns.into_iter().map(|(_, c)| c));
    Ok(Plan::new(
        rewritten,
        PlanKind::Aggregate {
            columns,
            visible,
            order: keys,
            window,
        },
        b.hidden_exprs.len(),
    ))
}

impl Builder<'_> {
    /// Shard column of a hidden expression.
    fn hidden(&mut self, expr: &Expr) -> usize {
        self.items.len() + push_hidden(&mut self.hidden_exprs, expr)
    }

    /// The merged column of an aggregate call; `item` is its select-list position when the client selected it.
    fn aggregate(&mut self, agg: &Aggregate, item: Option<usize>) -> MergedColumn {
        let make: fn(usize) -> MergedColumn = match agg.func {
            AggFunc::Count => MergedColumn::Count,
            AggFunc::Sum => MergedColumn::Sum,
            AggFunc::Min => MergedColumn::Min,
            AggFunc::Max => MergedColumn::Max,
            AggFunc::Avg => return self.avg(agg, item),
        };
        make(item.unwrap_or_else(|| self.hidden(&Expr::Function((*agg.call).clone()))))
    }

    /// avg(x) is merged from sum(x) (in the item's place when selected) and a hidden count(x).
    fn avg(&mut self, agg: &Aggregate, item: Option<usize>) -> MergedColumn {
        let sum = match item {
            Some(i) => {
                self.replaced.push((i, agg.renamed("sum")));
                i
            }
            None => self.hidden(&agg.renamed("sum")),
        };
        let count = self.hidden(&agg.renamed("count"));
        MergedColumn::Avg { sum, count }
    }

    /// Makes a GROUP BY expression part of the group identity.
    fn group(&mut self, expr: &Expr) -> Result<(), ScatterError> {
        let target = if let Some(k) = position(expr) {
            if k > self.items.len() {
                return Err(ScatterError::unsupported(format!(
                    "GROUP BY position {k} is not in select list"
                )));
            }
            Some(k - 1)
        } else {
            let text = expr.to_string();
            let same_expr = self.items.iter().position(|i| i.text == text);
            let alias = match expr {
                Expr::Identifier(id) => {
                    let name = fold(id);
                    let is_column =
                        |i: &&Item| matches!(i.expr, Some(Expr::Identifier(c)) if fold(c) == name);
                    self.items.iter().position(|i| is_column(&i)).or_else(|| {
                        self.items
                            .iter()
                            .position(|i| i.name.as_deref() == Some(name.as_str()))
                    })
                }
                _ => None,
            };
            same_expr.or(alias)
        };
        match target {
            Some(i) if self.items[i].aggregate().is_some() => {
                Err(ScatterError::unsupported("GROUP BY an aggregate"))
            }
            Some(i) => {
                self.columns[i] = MergedColumn::Group(i);
                Ok(())
            }
            None => {
                let col = self.hidden(expr);
                self.hidden_columns
                    .push((expr.to_string(), MergedColumn::Group(col)));
                Ok(())
            }
        }
    }

    /// The merged column an ORDER BY entry sorts on, adding a hidden one when the client did not select it.
    fn sort_column(&mut self, expr: &Expr) -> Result<ColumnRef, ScatterError> {
        let visible = self.items.len();
        if let Some(k) = position(expr) {
            if k > visible {
                return Err(ScatterError::unsupported(format!(
                    "ORDER BY position {k} is not in select list"
                )));
            }
            return Ok(ColumnRef::Output(k - 1));
        }
        if let Expr::Identifier(id) = expr {
            let name = fold(id);
            let named: Vec<usize> = (0..visible)
                .filter(|&i| self.items[i].name.as_deref() == Some(name.as_str()))
                .collect();
            if let Some(&first) = named.first() {
                if named
                    .iter()
                    .any(|&i| self.items[i].text != self.items[first].text)
                {
                    return Err(ScatterError::unsupported(format!(
                        "ORDER BY \"{name}\" is ambiguous"
                    )));
                }
                return Ok(ColumnRef::Output(first));
            }
        }
        let text = expr.to_string();
        if let Some(i) = self.items.iter().position(|i| i.text == text) {
            return Ok(ColumnRef::Output(i));
        }
        if let Some(j) = self.hidden_columns.iter().position(|(t, _)| *t == text) {
            return Ok(ColumnRef::Hidden(j));
        }
        let column = match classify(expr)? {
            ExprKind::Aggregate(agg) => self.aggregate(&agg, None),
            ExprKind::Plain => MergedColumn::Value(self.hidden(expr)),
        };
        self.hidden_columns.push((text, column));
        Ok(ColumnRef::Hidden(self.hidden_columns.len() - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sql: &str) -> Plan {
        Plan::from_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn parts(p: &Plan) -> (&[MergedColumn], usize, &[SortKey], Window) {
        match &p.kind {
            PlanKind::Aggregate {
                columns,
                visible,
                order,
                window,
            } => (columns, *visible, order, *window),
            other => panic!("not an aggregate plan: {other:?}"),
        }
    }

    #[test]
    fn plain_aggregates_run_unchanged_on_shards() {
        let sql = "SELECT g, count(*), sum(v), min(v), max(v) FROM t GROUP BY g";
        let p = plan(sql);
        assert_eq!(p.shard_sql(sql), sql);
        let (columns, visible, order, _) = parts(&p);
        assert_eq!(visible, 5);
        assert!(order.is_empty());
        assert_eq!(
            columns,
            [
                MergedColumn::Group(0),
                MergedColumn::Count(1),
                MergedColumn::Sum(2),
                MergedColumn::Min(3),
                MergedColumn::Max(4),
            ]
        );
    }

    #[test]
    fn avg_becomes_sum_and_a_hidden_count() {
        let p = plan("SELECT avg(v), avg(w) FILTER (WHERE w > 0) AS \"Mean W\" FROM t");
        assert_eq!(
            p.shard_sql(""),
            "SELECT sum(v) AS avg, sum(w) FILTER (WHERE w > 0) AS \"Mean W\", count(v) AS __shardpool_0, \
             count(w) FILTER (WHERE w > 0) AS __shardpool_1 FROM t"
        );
        let (columns, ..) = parts(&p);
        assert_eq!(
            columns,
            [
                MergedColumn::Avg { sum: 0, count: 2 },
                MergedColumn::Avg { sum: 1, count: 3 }
            ]
        );
    }

    #[test]
    fn group_keys_resolve_by_position_name_alias_or_hidden_copy() {
        let p = plan("SELECT date_trunc('day', ts) AS day, count(*) FROM t GROUP BY day");
        assert_eq!(parts(&p).0[0], MergedColumn::Group(0));
        let p = plan("SELECT g, count(*) FROM t GROUP BY 1");
        assert_eq!(parts(&p).0[0], MergedColumn::Group(0));
        let p = plan("SELECT count(*) FROM t GROUP BY g, h");
        assert_eq!(
            p.shard_sql(""),
            "SELECT count(*), g AS __shardpool_0, h AS __shardpool_1 FROM t GROUP BY g, h"
        );
        let (columns, visible, ..) = parts(&p);
        assert_eq!(visible, 1);
        assert_eq!(
            columns,
            [
                MergedColumn::Count(0),
                MergedColumn::Group(1),
                MergedColumn::Group(2)
            ]
        );
        // A plain item that is not a group key is a value determined by the group.
        let p = plan("SELECT id, name, count(*) FROM t GROUP BY id");
        assert_eq!(parts(&p).0[1], MergedColumn::Value(1));
    }

    #[test]
    fn order_and_limit_move_from_shards_to_the_merge() {
        let p = plan("SELECT g, sum(v) AS total FROM t GROUP BY g ORDER BY total DESC, count(*), g LIMIT 5 OFFSET 2");
        assert_eq!(
            p.shard_sql(""),
            "SELECT g, sum(v) AS total, count(*) AS __shardpool_0 FROM t GROUP BY g"
        );
        let (columns, visible, order, window) = parts(&p);
        assert_eq!(
            window,
            Window {
                offset: 2,
                limit: Some(5)
            }
        );
        assert_eq!(columns[visible], MergedColumn::Count(2));
        let cols: Vec<ColumnRef> = order.iter().map(|k| k.column).collect();
        assert_eq!(
            cols,
            [
                ColumnRef::Output(1),
                ColumnRef::Hidden(0),
                ColumnRef::Output(0)
            ]
        );
        assert!(order[0].descending && order[0].nulls_first);
        let p = plan("SELECT g FROM t GROUP BY g ORDER BY avg(v)");
        assert_eq!(
            p.shard_sql(""),
            "SELECT g, sum(v) AS __shardpool_0, count(v) AS __shardpool_1 FROM t GROUP BY g"
        );
        assert_eq!(parts(&p).0[1], MergedColumn::Avg { sum: 1, count: 2 });
    }

    #[test]
    fn unmergeable_aggregate_shapes_are_refused() {
        for (sql, feature) in [
            (
                "SELECT *, count(*) FROM t GROUP BY id",
                "* in an aggregate query",
            ),
            (
                "SELECT g, count(*) FROM t GROUP BY g ORDER BY sum(v) / count(*)",
                "expressions over aggregate results (sum(v) / count(*))",
            ),
            (
                "SELECT g, count(*) FROM t GROUP BY 5",
                "GROUP BY position 5 is not in select list",
            ),
            (
                "SELECT max(v) FROM t ORDER BY 2",
                "ORDER BY position 2 is not in select list",
            ),
            ("SELECT sum(DISTINCT v) FROM t", "sum(DISTINCT ...)"),
            (
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM t",
                "aggregate percentile_cont()",
            ),
        ] {
            match Plan::from_sql(sql) {
                Err(ScatterError::Unsupported(f)) => assert_eq!(f, feature, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}
