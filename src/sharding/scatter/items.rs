//! The select list and ORDER BY entries as planning sees them: which expressions are calls of the five mergeable
//! aggregates (and in which forms: no DISTINCT, no WITHIN GROUP), which contain no aggregate at all, and what is
//! refused (window functions, other aggregates, expressions over aggregate results); plus the output column names
//! Postgres gives unaliased expressions, which ORDER BY and GROUP BY may refer to.

use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, Ident, ObjectNamePart, SelectItem,
};

use super::scan::{self, MERGEABLE};
use super::ScatterError;

/// One select-list entry as planning sees it.
pub(super) struct Item<'a> {
    /// None for `*` and `t.*`.
    pub expr: Option<&'a Expr>,
    pub text: String,
    /// The column name Postgres gives it (FigureColname), if it is one ORDER BY could name.
    pub name: Option<String>,
    pub kind: ExprKind,
}

impl<'a> Item<'a> {
    pub fn new(item: &'a SelectItem) -> Result<Item<'a>, ScatterError> {
        let (expr, name) = match item {
            SelectItem::UnnamedExpr(e) => (Some(e), expr_name(e)),
            SelectItem::ExprWithAlias { expr, alias } => (Some(expr), Some(fold(alias))),
            SelectItem::ExprWithAliases { .. } => {
                return Err(ScatterError::unsupported("non-PostgreSQL SELECT syntax"))
            }
            SelectItem::QualifiedWildcard(..) | SelectItem::Wildcard(_) => (None, None),
        };
        let kind = match expr {
            Some(e) => classify(e)?,
            None => ExprKind::Plain,
        };
        Ok(Item {
            expr,
            text: expr.map(|e| e.to_string()).unwrap_or_default(),
            name,
            kind,
        })
    }

    pub fn is_wildcard(&self) -> bool {
        self.expr.is_none()
    }

    pub fn aggregate(&self) -> Option<&Aggregate> {
        match &self.kind {
            ExprKind::Aggregate(a) => Some(a),
            ExprKind::Plain => None,
        }
    }
}

/// Postgres folds unquoted identifiers to lower case.
pub(super) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        None => ident.value.to_lowercase(),
        Some(_) => ident.value.clone(),
    }
}

/// The output column name Postgres derives for an unaliased expression (FigureColnameInternal in
/// src/backend/parser/parse_target.c), for the cases ORDER BY and GROUP BY can refer to.
fn expr_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(id) => Some(fold(id)),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold),
        Expr::Function(f) => last_name(f),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_name(expr),
        Expr::Case { .. } => Some("case".into()),
        _ => None,
    }
}

fn last_name(f: &Function) -> Option<String> {
    match f.name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => Some(fold(id)),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// A call of one of the mergeable aggregates.
#[derive(Clone, Debug)]
pub(super) struct Aggregate {
    pub func: AggFunc,
    pub call: Box<Function>,
}

impl Aggregate {
    /// The same call with another function name (avg(x) FILTER (...) -> sum(x) FILTER (...)).
    pub fn renamed(&self, name: &str) -> Expr {
        let mut call = (*self.call).clone();
        if let Some(last) = call.name.0.last_mut() {
            *last = ObjectNamePart::Identifier(Ident::new(name));
        }
        Expr::Function(call)
    }
}

#[derive(Clone, Debug)]
pub(super) enum ExprKind {
    Plain,
    Aggregate(Aggregate),
}

/// Classifies an expression: an aggregate call shardpool can merge, an expression without aggregates, or an error
/// naming what it cannot merge.
pub(super) fn classify(expr: &Expr) -> Result<ExprKind, ScatterError> {
    let scan = scan::scan_expr(&expr.to_string())?;
    if scan.window {
        return Err(ScatterError::unsupported("window functions"));
    }
    let mut inner = expr;
    while let Expr::Nested(e) = inner {
        inner = e;
    }
    if let Expr::Function(f) = inner {
        if let Some(func) = mergeable(f)? {
            if scan.aggregates.len() > 1 {
                return Err(ScatterError::unsupported("nested aggregate calls"));
            }
            return Ok(ExprKind::Aggregate(Aggregate {
                func,
                call: Box::new(f.clone()),
            }));
        }
    }
    if let Some(other) = scan
        .aggregates
        .iter()
        .find(|n| !MERGEABLE.contains(&n.as_str()))
    {
        return Err(ScatterError::unsupported(format!("aggregate {other}()")));
    }
    if !scan.aggregates.is_empty() {
        return Err(ScatterError::unsupported(format!(
            "expressions over aggregate results ({expr})"
        )));
    }
    Ok(ExprKind::Plain)
}

/// Which mergeable aggregate `f` calls, refusing the forms whose partials do not combine.
fn mergeable(f: &Function) -> Result<Option<AggFunc>, ScatterError> {
    let Some(name) = last_name(f) else {
        return Ok(None);
    };
    let func = match name.as_str() {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        "avg" => AggFunc::Avg,
        _ => return Ok(None),
    };
    let refuse = |what: &str| Err(ScatterError::unsupported(format!("{name}({what})")));
    if f.over.is_some() {
        return Err(ScatterError::unsupported("window functions"));
    }
    if !f.within_group.is_empty() {
        return refuse("...) WITHIN GROUP (...");
    }
    if f.null_treatment.is_some() || !matches!(f.parameters, FunctionArguments::None) {
        return refuse("non-PostgreSQL syntax");
    }
    let FunctionArguments::List(list) = &f.args else {
        return refuse("non-PostgreSQL syntax");
    };
    if list.duplicate_treatment == Some(DuplicateTreatment::Distinct) {
        return refuse("DISTINCT ...");
    }
    if list
        .clauses
        .iter()
        .any(|c| !matches!(c, FunctionArgumentClause::OrderBy(_)))
    {
        return refuse("non-PostgreSQL syntax");
    }
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if func == AggFunc::Count => {}
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(_))] => {}
        _ => return refuse("with these arguments"),
    }
    Ok(Some(func))
}
