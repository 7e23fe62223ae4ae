//! The scatter planner (src/sharding/scatter/plan.rs): how a SELECT over every shard is rewritten for the shards
//! and merged back (ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY, DISTINCT), with LIMIT/OFFSET as `$n` parameters
//! taking fuzzed values, on a tokio worker's stack.
//! Invariants: no panic, no stack overflow; a statement rewritten for the shards is valid SQL, one SELECT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::sharding::scatter::{Plan, ScatterError};

fuzz_target!(|data: &[u8]| {
    // Values for $n: two i64 from the last 16 bytes, and NULL.
    let tail: Vec<i64> = data
        .rchunks_exact(8)
        .take(2)
        .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let sql = String::from_utf8_lossy(data).into_owned();
    shardpool_fuzz::on_worker_stack(move || {
        let plain = Plan::from_sql(&sql);
        let params =
            |n: usize| Ok::<_, ScatterError>(tail.get(n % 3).copied().filter(|_| n % 3 != 2));
        let with_params = Plan::from_sql_with_params(&sql, &params);
        for plan in [plain, with_params].into_iter().flatten() {
            let _ = format!("{plan:?}");
            if plan.is_rewritten() {
                let shard_sql = plan.shard_sql(&sql);
                let parsed = shardpool::sqlparse::parse_statements(shard_sql).unwrap_or_else(|e| {
                    panic!("shard statement {shard_sql:?} does not parse: {e}")
                });
                assert_eq!(parsed.len(), 1, "{shard_sql:?}");
                assert!(
                    matches!(parsed[0], sqlparser::ast::Statement::Query(_)),
                    "{shard_sql:?}"
                );
            }
        }
    });
});
