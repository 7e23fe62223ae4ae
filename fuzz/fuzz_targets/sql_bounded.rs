//! Arbitrary SQL through the one bounded parse (src/sqlparse.rs) and then through every walker of client SQL that
//! runs on it in the proxy: the classifier, the shard-key walker, the scatter planner, the session-effects scanner
//! and the COPY reader, all on a tokio worker's 2 MiB stack, as in the proxy. A tree too deep for that stack, from
//! the parse, a walk or the tree's `Drop`, aborts this target as it would abort the proxy.
//! Invariants: no panic, no stack overflow; no tree deeper than `MAX_EXPRESSION_DEPTH` is ever built; a text
//! refused as too deep is refused by every entry point, and none of them reports it as a syntax error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::router::classify::{classify, FunctionVolatility};
use shardpool::sharding::copy::CopyStatement;
use shardpool::sharding::keys::{analyze_sql, analyze_with, ShardAnalysis};
use shardpool::sharding::scatter::Plan;
use shardpool::sqlparse::{parse_expr, parse_statements, SqlParseError, MAX_EXPRESSION_DEPTH};
use sqlparser::ast::Statement;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data).into_owned();
    shardpool_fuzz::on_worker_stack(move || {
        let schema = shardpool_fuzz::schema();
        let parsed = parse_statements(&sql);
        match &parsed {
            Ok(statements) => {
                let depth = shardpool_fuzz::tree_depth(statements);
                assert!(
                    depth <= MAX_EXPRESSION_DEPTH,
                    "a tree {depth} deep was built"
                );
                let _ = analyze_with(statements, &schema, &Default::default());
                for s in statements {
                    if let Statement::Query(q) = s {
                        let _ = Plan::from_query(q);
                    }
                }
            }
            Err(SqlParseError::TooDeep) => {
                assert_eq!(analyze_sql(&sql, &schema), ShardAnalysis::TooDeep);
            }
            Err(SqlParseError::Syntax(_)) => {}
        }
        let _ = classify(&sql, &FunctionVolatility::unknown());
        let _ = Plan::from_sql(&sql);
        let _ = shardpool::router::session_effects::effects(&sql);
        let _ = CopyStatement::parse(&sql);
        if let Ok(e) = parse_expr(&sql) {
            let depth = shardpool_fuzz::tree_depth([&e]);
            assert!(
                depth <= MAX_EXPRESSION_DEPTH,
                "an expression {depth} deep was built"
            );
        }
    });
});
