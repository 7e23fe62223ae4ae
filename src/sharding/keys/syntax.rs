//! Small questions about sqlparser nodes that the walker asks everywhere.

use sqlparser::ast::{Expr, Ident, JoinOperator, ObjectName, ObjectNamePart, Query, SetExpr};

use super::super::schema::ident_is;

/// Postgres' built-in aggregates (pg_aggregate), by name: a user-defined one goes unnoticed and reads as a plain
/// function.
pub(super) fn is_aggregate(name: &ObjectName) -> bool {
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

pub(super) fn is_inner(op: &JoinOperator) -> bool {
    matches!(
        op,
        JoinOperator::Join(_)
            | JoinOperator::Inner(_)
            | JoinOperator::CrossJoin(_)
            | JoinOperator::StraightJoin(_)
    )
}

pub(super) fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id),
        ObjectNamePart::Function(_) => None,
    }
}

pub(super) fn strip_nested(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// A subquery whose rows are "rows by key": a plain single-column SELECT (no set operation, no LIMIT).
pub(super) fn single_column(q: &Query) -> bool {
    match &*q.body {
        SetExpr::Select(s) => s.projection.len() == 1,
        SetExpr::Query(q) => single_column(q),
        _ => false,
    }
}
