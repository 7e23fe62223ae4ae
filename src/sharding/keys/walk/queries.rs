//! Walking queries: CTEs, set operations, SELECT blocks and their select lists (what a query's output column is,
//! for `INSERT ... SELECT` and `key IN (SELECT ...)`).

use super::*;

impl<'a, 's> Walker<'a, 's> {
    /// Walks a query; `proj` asks what its output column at that position is.
    pub(super) fn query(&mut self, q: &'a Query, proj: Option<usize>) -> Projected<'a> {
        self.query_arms(q, proj, &mut Vec::new())
    }

    /// [`Self::query`], also collecting the SELECT blocks whose rows form the query's output (`arms`).
    pub(super) fn query_arms(
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

    pub(super) fn set_expr(
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

    pub(super) fn select(
        &mut self,
        s: &'a sqlparser::ast::Select,
        proj: Option<usize>,
    ) -> Projected<'a> {
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
    pub(super) fn select_items(
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
}
