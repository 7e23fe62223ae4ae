//! Plain expressions, walked only for what they hide: subqueries, aggregates and window functions.

use super::*;

impl<'a, 's> Walker<'a, 's> {
    pub(super) fn visit(&mut self, e: &'a Expr) {
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

    pub(super) fn function(&mut self, f: &'a Function) {
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

    pub(super) fn window(&mut self, spec: &'a sqlparser::ast::WindowSpec) {
        for x in &spec.partition_by {
            self.visit(x);
        }
        for o in &spec.order_by {
            self.visit(&o.expr);
        }
    }

    pub(super) fn arguments(&mut self, args: &'a FunctionArguments) {
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

    pub(super) fn function_args(&mut self, args: &'a [FunctionArg]) {
        for a in args {
            let (FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg)) = a;
            if let FunctionArgExpr::Expr(x) = arg {
                self.visit(x);
            }
        }
    }
}
