//! Token-level checks that need no full walk of sqlparser's expression tree (its visitor feature is not enabled):
//! which aggregate calls and window functions an expression contains outside subqueries, and whether any subquery
//! in the statement does something that gives a different answer per shard than over all rows (aggregates,
//! DISTINCT, LIMIT, grouping, set operations, window functions, recursion).
//!
//! A function call is a word followed by `(`; a subquery is a parenthesis whose first token is SELECT or WITH.
//! Aggregates are recognised by the names of PostgreSQL's built-in aggregates (pg_aggregate, PostgreSQL 15 and the
//! additions of 16 and 17); a user-defined aggregate cannot be recognised without the catalog.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::ScatterError;

/// The five aggregates scatter/gather merges.
pub(super) const MERGEABLE: [&str; 5] = ["count", "sum", "min", "max", "avg"];

/// Built-in aggregate function names (SELECT DISTINCT aggfnoid::regproc FROM pg_aggregate).
const BUILTIN_AGGREGATES: &[&str] = &[
    "any_value",
    "array_agg",
    "avg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "corr",
    "count",
    "covar_pop",
    "covar_samp",
    "cume_dist",
    "dense_rank",
    "every",
    "json_agg",
    "json_agg_strict",
    "json_arrayagg",
    "json_object_agg",
    "json_object_agg_strict",
    "json_object_agg_unique",
    "json_object_agg_unique_strict",
    "json_objectagg",
    "jsonb_agg",
    "jsonb_agg_strict",
    "jsonb_object_agg",
    "jsonb_object_agg_strict",
    "jsonb_object_agg_unique",
    "jsonb_object_agg_unique_strict",
    "max",
    "min",
    "mode",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "range_agg",
    "range_intersect_agg",
    "rank",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "sum",
    "var_pop",
    "var_samp",
    "variance",
    "xmlagg",
];

pub(super) fn is_builtin_aggregate(name: &str) -> bool {
    BUILTIN_AGGREGATES.binary_search(&name).is_ok()
}

/// What an expression contains outside its subqueries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ExprScan {
    /// Names of aggregate calls, lowercased, in order of appearance.
    pub aggregates: Vec<String>,
    pub window: bool,
}

fn tokens(sql: &str) -> Result<Vec<Token>, ScatterError> {
    let all = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| ScatterError::Parse(e.to_string()))?;
    Ok(all
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect())
}

/// A word's name as Postgres resolves it: unquoted words fold to lower case.
fn folded(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
        Token::Word(w) => Some(w.value.clone()),
        _ => None,
    }
}

fn keyword(token: &Token) -> Option<Keyword> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    }
}

/// Walks tokens tracking parentheses; `visit(index, tokens, inside_subquery)` sees every token.
fn walk(
    tokens: &[Token],
    mut visit: impl FnMut(usize, bool) -> Result<(), ScatterError>,
) -> Result<(), ScatterError> {
    // One entry per open parenthesis: whether it opened a subquery.
    let mut stack: Vec<bool> = Vec::new();
    let mut subquery_depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::LParen => {
                let opens = matches!(
                    tokens.get(i + 1).and_then(keyword),
                    Some(Keyword::SELECT | Keyword::WITH)
                );
                stack.push(opens);
                subquery_depth += usize::from(opens);
            }
            Token::RParen => {
                if stack.pop() == Some(true) {
                    subquery_depth -= 1;
                }
            }
            _ => visit(i, subquery_depth > 0)?,
        }
    }
    Ok(())
}

/// Aggregate calls and window functions of one expression (select item, ORDER BY or GROUP BY entry).
pub(super) fn scan_expr(sql: &str) -> Result<ExprScan, ScatterError> {
    let tokens = tokens(sql)?;
    let mut scan = ExprScan::default();
    walk(&tokens, |i, in_subquery| {
        if in_subquery {
            return Ok(());
        }
        if keyword(&tokens[i]) == Some(Keyword::OVER) {
            scan.window = true;
        } else if let Some(name) = function_name(&tokens, i) {
            if is_builtin_aggregate(&name) {
                scan.aggregates.push(name);
            }
        }
        Ok(())
    })?;
    Ok(scan)
}

/// The name of the function called at token `i`, if a `(` follows it.
fn function_name(tokens: &[Token], i: usize) -> Option<String> {
    if tokens.get(i + 1) != Some(&Token::LParen) {
        return None;
    }
    folded(&tokens[i])
}

/// Refuses statements with a subquery (in FROM, WHERE, a select item, a CTE) whose result over one shard's rows is
/// not that subquery's share of the result over all rows.
pub(super) fn check_subqueries(sql: &str) -> Result<(), ScatterError> {
    let tokens = tokens(sql)?;
    walk(&tokens, |i, in_subquery| {
        let kw = keyword(&tokens[i]);
        if kw == Some(Keyword::RECURSIVE) {
            return Err(ScatterError::unsupported("WITH RECURSIVE"));
        }
        if !in_subquery {
            return Ok(());
        }
        let refuse = |what: &str| Err(ScatterError::unsupported(format!("a subquery with {what}")));
        if let Some(name) = function_name(&tokens, i) {
            if is_builtin_aggregate(&name) {
                return refuse(&format!("aggregate {name}()"));
            }
        }
        match kw {
            Some(Keyword::OVER) => refuse("a window function"),
            Some(Keyword::DISTINCT) if !after_is(&tokens, i) => refuse("DISTINCT"),
            Some(Keyword::LIMIT | Keyword::OFFSET | Keyword::FETCH) => {
                refuse("LIMIT, OFFSET or FETCH")
            }
            Some(Keyword::GROUP) => refuse("GROUP BY"),
            Some(Keyword::HAVING) => refuse("HAVING"),
            Some(Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT) => {
                refuse("UNION, INTERSECT or EXCEPT")
            }
            _ => Ok(()),
        }
    })
}

/// `IS [NOT] DISTINCT FROM` is a comparison, not DISTINCT.
fn after_is(tokens: &[Token], i: usize) -> bool {
    let prev = |k: usize| {
        i.checked_sub(k)
            .and_then(|j| tokens.get(j))
            .and_then(keyword)
    };
    prev(1) == Some(Keyword::IS) || (prev(1) == Some(Keyword::NOT) && prev(2) == Some(Keyword::IS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_names_are_sorted_for_binary_search() {
        let mut sorted = BUILTIN_AGGREGATES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, BUILTIN_AGGREGATES);
        assert!(MERGEABLE.iter().all(|m| is_builtin_aggregate(m)));
    }

    #[test]
    fn expressions_report_aggregates_and_windows_outside_subqueries() {
        let s = scan_expr("coalesce(SUM(x), 0) + pg_catalog.count(*)").unwrap();
        assert_eq!(s.aggregates, ["sum", "count"]);
        assert!(!s.window);
        let s = scan_expr("row_number() OVER (PARTITION BY g)").unwrap();
        assert!(s.window);
        let s = scan_expr("(SELECT max(y) FROM u) + lower(count)").unwrap();
        assert!(s.aggregates.is_empty());
        assert!(scan_expr("\"Sum\"(x)").unwrap().aggregates.is_empty());
    }

    #[test]
    fn subqueries_that_aggregate_or_limit_are_refused() {
        let refused = [
            "SELECT * FROM t WHERE x > (SELECT avg(x) FROM t)",
            "SELECT * FROM (SELECT * FROM t LIMIT 5) s",
            "WITH c AS (SELECT DISTINCT g FROM t) SELECT * FROM c",
            "SELECT * FROM t WHERE g IN (SELECT g FROM u GROUP BY g)",
            "SELECT * FROM (SELECT x, rank() OVER (ORDER BY x) FROM t) s",
            "SELECT * FROM (SELECT x FROM t UNION SELECT x FROM u) s",
            "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r",
        ];
        for sql in refused {
            assert!(
                matches!(check_subqueries(sql), Err(ScatterError::Unsupported(_))),
                "{sql}"
            );
        }
        let allowed = [
            "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.k = t.k AND u.a IS DISTINCT FROM t.a)",
            "SELECT count(*), max(x) FROM t GROUP BY g",
            "WITH c AS (SELECT k, v FROM t WHERE v > 0) SELECT * FROM c ORDER BY k LIMIT 3",
            "SELECT * FROM (VALUES (1), (2)) v(x) JOIN t ON t.k = v.x",
        ];
        for sql in allowed {
            assert!(check_subqueries(sql).is_ok(), "{sql}");
        }
    }
}
