//! The expensive half of classification: a walk over sqlparser's AST of a query-like statement looking for writes
//! hidden in reads (row locks, data-modifying CTEs, SELECT INTO, volatile calls anywhere: select list, FROM
//! functions, subqueries, CTEs, window and aggregate clauses). sqlparser's `visitor` feature is not enabled, so this
//! walks the tree by hand; every node it does not understand counts as a write, so a construct added by a later
//! sqlparser (or a dialect corner) can only send a read to the primary.

use sqlparser::ast::{
    AccessExpr, CopySource, CopyTarget, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArguments, GroupByExpr, JoinConstraint, JoinOperator,
    JsonPathElem, LimitClause, ObjectName, ObjectNamePart, OrderBy, OrderByExpr, OrderByKind,
    Query, Select, SelectItem, SetExpr, Statement, Subscript, TableFactor, TableWithJoins,
    WindowFrameBound, WindowSpec, WindowType,
};

use super::volatility::FunctionVolatility;

/// `Err(reason)` as soon as a write is found; `?` then ends the walk.
type Walk = Result<(), &'static str>;

/// Verdict on one parsed statement: `Ok(read reason)` or `Err(write reason)`.
pub fn statement(stmt: &Statement, f: &FunctionVolatility) -> Result<&'static str, &'static str> {
    let w = Walker { f };
    match stmt {
        Statement::Query(q) => w.query(q).map(|()| "read-only query"),
        Statement::Explain {
            analyze,
            options,
            statement: inner,
            ..
        } => {
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        || o.name.value.eq_ignore_ascii_case("analyse")
                });
            if !analyze {
                return Ok("EXPLAIN without ANALYZE");
            }
            statement(inner, f)
                .map(|_| "EXPLAIN ANALYZE of a read")
                .map_err(|_| "EXPLAIN ANALYZE of a write")
        }
        Statement::ExplainTable { .. } => Ok("EXPLAIN"),
        Statement::Copy {
            source, to, target, ..
        } => {
            if !*to {
                return Err("COPY FROM");
            }
            if !matches!(target, CopyTarget::Stdout) {
                // Writes a file or runs a program on the server's host: keep that on the primary's.
                return Err("COPY TO a server file or program");
            }
            match source {
                CopySource::Table { .. } => Ok("COPY TO"),
                CopySource::Query(q) => w.query(q).map(|()| "COPY (query) TO"),
            }
        }
        _ => Err("not a read-only statement"),
    }
}

struct Walker<'a> {
    f: &'a FunctionVolatility,
}

impl Walker<'_> {
    fn query(&self, q: &Query) -> Walk {
        if !q.locks.is_empty() {
            return Err("row lock (FOR UPDATE/SHARE)");
        }
        if !q.pipe_operators.is_empty() || q.settings.is_some() {
            return Err("unanalysed query clause");
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.query(&cte.query)?;
            }
        }
        self.set_expr(&q.body)?;
        if let Some(order_by) = &q.order_by {
            self.order_by(order_by)?;
        }
        match &q.limit_clause {
            None => {}
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                self.opt_expr(limit.as_ref())?;
                self.opt_expr(offset.as_ref().map(|o| &o.value))?;
                self.exprs(limit_by)?;
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.expr(offset)?;
                self.expr(limit)?;
            }
        }
        self.opt_expr(q.fetch.as_ref().and_then(|f| f.quantity.as_ref()))
    }

    /// Iterative for the same reason as `expr`: `SELECT .. UNION SELECT .. UNION ..` is a left-deep chain.
    fn set_expr(&self, body: &SetExpr) -> Walk {
        let mut todo = vec![body];
        while let Some(body) = todo.pop() {
            match body {
                SetExpr::Select(s) => self.select(s)?,
                SetExpr::Query(q) => self.query(q)?,
                SetExpr::SetOperation { left, right, .. } => todo.extend([&**left, &**right]),
                SetExpr::Values(v) => v.rows.iter().try_for_each(|row| self.exprs(row))?,
                SetExpr::Insert(_)
                | SetExpr::Update(_)
                | SetExpr::Delete(_)
                | SetExpr::Merge(_) => return Err("data-modifying CTE"),
                SetExpr::Table(_) => {}
            }
        }
        Ok(())
    }

    fn select(&self, s: &Select) -> Walk {
        if s.into.is_some() {
            return Err("SELECT INTO");
        }
        if !s.lateral_views.is_empty() || !s.connect_by.is_empty() || s.top.is_some() {
            return Err("unanalysed SELECT clause");
        }
        if let Some(sqlparser::ast::Distinct::On(exprs)) = &s.distinct {
            self.exprs(exprs)?;
        }
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e)
                | SelectItem::ExprWithAlias { expr: e, .. }
                | SelectItem::ExprWithAliases { expr: e, .. } => self.expr(e)?,
                SelectItem::QualifiedWildcard(..) | SelectItem::Wildcard(_) => {}
            }
        }
        for from in &s.from {
            self.table_with_joins(from)?;
        }
        self.opt_expr(s.prewhere.as_ref())?;
        self.opt_expr(s.selection.as_ref())?;
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            self.exprs(exprs)?;
        }
        self.exprs(&s.cluster_by)?;
        self.exprs(&s.distribute_by)?;
        self.order_by_exprs(&s.sort_by)?;
        self.opt_expr(s.having.as_ref())?;
        self.opt_expr(s.qualify.as_ref())?;
        for window in &s.named_window {
            if let sqlparser::ast::NamedWindowExpr::WindowSpec(spec) = &window.1 {
                self.window_spec(spec)?;
            }
        }
        Ok(())
    }

    fn table_with_joins(&self, t: &TableWithJoins) -> Walk {
        self.table_factor(&t.relation)?;
        for join in &t.joins {
            self.table_factor(&join.relation)?;
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => c,
                JoinOperator::AsOf {
                    match_condition,
                    constraint,
                } => {
                    self.expr(match_condition)?;
                    constraint
                }
                JoinOperator::CrossApply
                | JoinOperator::OuterApply
                | JoinOperator::ArrayJoin
                | JoinOperator::LeftArrayJoin
                | JoinOperator::InnerArrayJoin => continue,
            };
            if let JoinConstraint::On(e) = constraint {
                self.expr(e)?;
            }
        }
        Ok(())
    }

    fn table_factor(&self, t: &TableFactor) -> Walk {
        match t {
            TableFactor::Table { name, args, .. } => match args {
                // `FROM generate_series(1, 3)`: sqlparser reads a set-returning call as a table with arguments.
                Some(a) => {
                    self.call(name)?;
                    self.function_args(&a.args)
                }
                None => Ok(()),
            },
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::TableFunction { expr, .. } => self.expr(expr),
            TableFactor::Function { name, args, .. } => {
                self.call(name)?;
                self.function_args(args)
            }
            TableFactor::UNNEST { array_exprs, .. } => self.exprs(array_exprs),
            TableFactor::JsonTable { json_expr, .. }
            | TableFactor::OpenJsonTable { json_expr, .. } => self.expr(json_expr),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins),
            _ => Err("unanalysed FROM item"),
        }
    }

    /// A call of `name`: primary-only or volatile functions make the statement a write.
    fn call(&self, name: &ObjectName) -> Walk {
        let mut parts = [None, None];
        let n = name.0.len();
        if n == 0 || n > 2 {
            // catalog.schema.fn, or nothing: not worth resolving.
            return Err("unanalysed function name");
        }
        for (slot, part) in parts.iter_mut().zip(&name.0) {
            match part {
                ObjectNamePart::Identifier(ident) => *slot = Some(ident.value.to_lowercase()),
                ObjectNamePart::Function(_) => return Err("unanalysed function name"),
            }
        }
        let (schema, bare) = match parts {
            [Some(bare), None] => (None, bare),
            [Some(schema), Some(bare)] => (Some(schema), bare),
            _ => return Err("unanalysed function name"),
        };
        match self.f.call(schema.as_deref(), &bare) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn function(&self, func: &Function) -> Walk {
        self.call(&func.name)?;
        self.arguments(&func.parameters)?;
        self.arguments(&func.args)?;
        self.order_by_exprs(&func.within_group)?;
        self.opt_expr(func.filter.as_deref())?;
        match &func.over {
            Some(WindowType::WindowSpec(spec)) => self.window_spec(spec),
            Some(WindowType::NamedWindow(_)) | None => Ok(()),
        }
    }

    fn arguments(&self, args: &FunctionArguments) -> Walk {
        match args {
            FunctionArguments::None => Ok(()),
            FunctionArguments::Subquery(q) => self.query(q),
            FunctionArguments::List(list) => {
                self.function_args(&list.args)?;
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::Where(e) | FunctionArgumentClause::Limit(e) => {
                            self.expr(e)?
                        }
                        FunctionArgumentClause::OrderBy(exprs) => self.order_by_exprs(exprs)?,
                        FunctionArgumentClause::IgnoreOrRespectNulls(_)
                        | FunctionArgumentClause::Separator(_)
                        | FunctionArgumentClause::JsonNullClause(_) => {}
                        _ => return Err("unanalysed function argument clause"),
                    }
                }
                Ok(())
            }
        }
    }

    fn function_args(&self, args: &[FunctionArg]) -> Walk {
        for arg in args {
            let (FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg)) = arg;
            if let FunctionArgExpr::Expr(e) = arg {
                self.expr(e)?;
            }
        }
        Ok(())
    }

    fn window_spec(&self, spec: &WindowSpec) -> Walk {
        self.exprs(&spec.partition_by)?;
        self.order_by_exprs(&spec.order_by)?;
        if let Some(frame) = &spec.window_frame {
            for bound in std::iter::once(&frame.start_bound).chain(frame.end_bound.as_ref()) {
                if let WindowFrameBound::Preceding(Some(e)) | WindowFrameBound::Following(Some(e)) =
                    bound
                {
                    self.expr(e)?;
                }
            }
        }
        Ok(())
    }

    fn order_by(&self, o: &OrderBy) -> Walk {
        match &o.kind {
            OrderByKind::All(_) => Ok(()),
            OrderByKind::Expressions(exprs) => self.order_by_exprs(exprs),
        }
    }

    fn order_by_exprs(&self, exprs: &[OrderByExpr]) -> Walk {
        exprs.iter().try_for_each(|o| self.expr(&o.expr))
    }

    fn exprs(&self, exprs: &[Expr]) -> Walk {
        exprs.iter().try_for_each(|e| self.expr(e))
    }

    fn opt_expr(&self, e: Option<&Expr>) -> Walk {
        e.map_or(Ok(()), |e| self.expr(e))
    }

    /// Iterative over expression nodes: operator chains (`a + b + ...`, `x::t::t...`) are built by sqlparser in a
    /// loop, so their depth is not bounded by its recursion limit, and recursing here could overflow the stack.
    /// Subqueries and call arguments still recurse; the parser's recursion limit bounds their nesting.
    fn expr<'e>(&self, root: &'e Expr) -> Walk {
        let mut todo: Vec<&'e Expr> = Vec::new();
        let mut cur = root;
        loop {
            self.node(cur, &mut todo)?;
            match todo.pop() {
                Some(next) => cur = next,
                None => return Ok(()),
            }
        }
    }

    /// Checks one node and queues its child expressions.
    fn node<'e>(&self, e: &'e Expr, todo: &mut Vec<&'e Expr>) -> Walk {
        match e {
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Value(_)
            | Expr::TypedString(_)
            | Expr::MatchAgainst { .. }
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..) => Ok(()),
            Expr::Function(func) => self.function(func),
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => self.query(q),
            Expr::InSubquery { expr, subquery, .. } => {
                push(todo, expr)?;
                self.query(subquery)
            }
            Expr::IsFalse(x)
            | Expr::IsNotFalse(x)
            | Expr::IsTrue(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotUnknown(x)
            | Expr::IsJson { expr: x, .. }
            | Expr::IsNormalized { expr: x, .. }
            | Expr::UnaryOp { expr: x, .. }
            | Expr::Cast { expr: x, .. }
            | Expr::Extract { expr: x, .. }
            | Expr::Ceil { expr: x, .. }
            | Expr::Floor { expr: x, .. }
            | Expr::Collate { expr: x, .. }
            | Expr::Nested(x)
            | Expr::Prefixed { value: x, .. }
            | Expr::Named { expr: x, .. }
            | Expr::OuterJoin(x)
            | Expr::Prior(x) => push(todo, x),
            Expr::Interval(i) => push(todo, &i.value),
            Expr::Lambda(l) => push(todo, &l.body),
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
            | Expr::AtTimeZone {
                timestamp: a,
                time_zone: b,
            }
            | Expr::Position { expr: a, r#in: b }
            | Expr::InUnnest {
                expr: a,
                array_expr: b,
                ..
            }
            | Expr::RLike {
                expr: a,
                pattern: b,
                ..
            } => {
                push(todo, a)?;
                push(todo, b)
            }
            Expr::MemberOf(m) => {
                push(todo, &m.value)?;
                push(todo, &m.array)
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
                push(todo, expr)?;
                push(todo, pattern)?;
                push_opt(todo, escape_char.as_deref())
            }
            Expr::InList { expr, list, .. } => {
                push(todo, expr)?;
                push_all(todo, list)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                push(todo, expr)?;
                push(todo, low)?;
                push(todo, high)
            }
            Expr::Convert { expr, styles, .. } => {
                push(todo, expr)?;
                push_all(todo, styles)
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                push(todo, expr)?;
                push_opt(todo, substring_from.as_deref())?;
                push_opt(todo, substring_for.as_deref())
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                push(todo, expr)?;
                push_opt(todo, trim_what.as_deref())?;
                push_all(todo, trim_characters.as_deref().unwrap_or_default())
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                push(todo, expr)?;
                push(todo, overlay_what)?;
                push(todo, overlay_from)?;
                push_opt(todo, overlay_for.as_deref())
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                push_opt(todo, operand.as_deref())?;
                for when in conditions {
                    push(todo, &when.condition)?;
                    push(todo, &when.result)?;
                }
                push_opt(todo, else_result.as_deref())
            }
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                sets.iter().try_for_each(|set| push_all(todo, set))
            }
            Expr::Tuple(items) | Expr::Struct { values: items, .. } => push_all(todo, items),
            Expr::Array(a) => push_all(todo, &a.elem),
            Expr::Dictionary(fields) => fields.iter().try_for_each(|f| push(todo, &f.value)),
            Expr::Map(m) => m.entries.iter().try_for_each(|entry| {
                push(todo, &entry.key)?;
                push(todo, &entry.value)
            }),
            Expr::CompoundFieldAccess { root, access_chain } => {
                push(todo, root)?;
                access_chain.iter().try_for_each(|a| self.access(a))
            }
            Expr::JsonAccess { value, path } => {
                push(todo, value)?;
                path.path.iter().try_for_each(|elem| match elem {
                    JsonPathElem::Dot { .. } => Ok(()),
                    JsonPathElem::Bracket { key } | JsonPathElem::ColonBracket { key } => {
                        push(todo, key)
                    }
                })
            }
        }
    }

    fn access(&self, a: &AccessExpr) -> Walk {
        match a {
            AccessExpr::Dot(e) | AccessExpr::Subscript(Subscript::Index { index: e }) => {
                self.expr(e)
            }
            AccessExpr::Subscript(Subscript::Slice {
                lower_bound,
                upper_bound,
                stride,
            }) => {
                self.opt_expr(lower_bound.as_ref())?;
                self.opt_expr(upper_bound.as_ref())?;
                self.opt_expr(stride.as_ref())
            }
        }
    }
}

fn push<'e>(todo: &mut Vec<&'e Expr>, e: &'e Expr) -> Walk {
    todo.push(e);
    Ok(())
}

fn push_opt<'e>(todo: &mut Vec<&'e Expr>, e: Option<&'e Expr>) -> Walk {
    todo.extend(e);
    Ok(())
}

fn push_all<'e>(todo: &mut Vec<&'e Expr>, exprs: &'e [Expr]) -> Walk {
    todo.extend(exprs);
    Ok(())
}
