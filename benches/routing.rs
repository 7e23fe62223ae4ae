//! The routing decision's costs: classifying a statement cold (first-keyword path and sqlparser path), a cached
//! lookup (issue 5's target: under 300 ns), the cache under contention with one lock or striped locks, and the
//! per-query checks that run before classification (proxy commands, hints).
//! Run: `cargo bench --bench routing`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardpool::router::analysis_cache::{AnalysisCache, DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
use shardpool::router::classify::{classify, FunctionVolatility};
use shardpool::router::proxy_commands;

const POINT_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
const JOIN3: &str = "SELECT c.name, o.id, sum(l.qty * l.price) FROM customers c \
                     JOIN orders o ON o.customer_id = c.id JOIN order_lines l ON l.order_id = o.id \
                     WHERE c.id = $1 AND o.created_at > now() - interval '30 days' \
                     GROUP BY c.name, o.id ORDER BY o.id DESC LIMIT 20";
const UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
const BEGIN: &str = "BEGIN";

/// A catalog the size of a fresh database's pg_proc (~3,000 names), so lookups cost what they will in production.
fn catalog() -> FunctionVolatility {
    let names: Vec<String> = (0..3_000).map(|i| format!("f{i}")).collect();
    let mut rows: Vec<(&str, &str, bool)> = names
        .iter()
        .map(|n| ("pg_catalog", n.as_str(), false))
        .collect();
    rows.extend([
        ("pg_catalog", "now", false),
        ("pg_catalog", "sum", false),
        ("pg_catalog", "random", true),
    ]);
    FunctionVolatility::from_catalog(rows)
}

fn classify_cold(c: &mut Criterion) {
    let f = catalog();
    let mut g = c.benchmark_group("classify_cold");
    for (name, sql) in [
        ("point_select", POINT_SELECT),
        ("join3", JOIN3),
        ("update", UPDATE),
        ("begin", BEGIN),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(classify(black_box(sql), &f))));
    }
    // sqlparser alone (tokenize + parse, no walk), to show where the cold cost goes.
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    for (name, sql) in [
        ("parse_only_point_select", POINT_SELECT),
        ("parse_only_join3", JOIN3),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(sqlparser::parser::Parser::parse_sql(
                    &dialect,
                    black_box(sql),
                ))
            })
        });
    }
    g.finish();
}

fn cached(c: &mut Criterion) {
    let f = catalog();
    let cache = AnalysisCache::default();
    // A realistic population: the cache holds many other statements too.
    for i in 0..5_000 {
        cache.analyse(&format!("SELECT * FROM t{i} WHERE id = $1"), &f);
    }
    let mut g = c.benchmark_group("cached");
    for (name, sql) in [("point_select", POINT_SELECT), ("join3", JOIN3)] {
        cache.analyse(sql, &f);
        g.bench_function(name, |b| {
            b.iter(|| black_box(cache.analyse(black_box(sql), &f)))
        });
    }
    g.finish();
}

/// `threads` threads each doing `iters` cached lookups of their own hot statements at once; the time is per lookup
/// of one thread (wall time / iters), so perfect scaling keeps it flat as threads are added.
fn contended(
    cache: &AnalysisCache,
    f: &FunctionVolatility,
    threads: usize,
    iters: u64,
) -> Duration {
    let texts: Vec<Vec<String>> = (0..threads)
        .map(|t| {
            (0..8)
                .map(|i| format!("SELECT * FROM t{t}_{i} WHERE id = $1"))
                .collect()
        })
        .collect();
    for t in texts.iter().flatten() {
        cache.analyse(t, f);
    }
    let barrier = Barrier::new(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for mine in &texts {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    black_box(cache.analyse(&mine[i as usize % mine.len()], f));
                }
            });
        }
    });
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let f = Arc::new(catalog());
    let mut g = c.benchmark_group("cached_contended");
    for shards in [1, 16] {
        let cache = AnalysisCache::with_shards(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES, shards);
        for threads in [1, 2, 4] {
            g.bench_function(format!("{shards}_shards_{threads}_threads"), |b| {
                b.iter_custom(|iters| contended(&cache, &f, threads, iters))
            });
        }
    }
    g.finish();
}

fn pre_checks(c: &mut Criterion) {
    let mut g = c.benchmark_group("pre_checks");
    g.bench_function("proxy_command_not_ours", |b| {
        b.iter(|| black_box(proxy_commands::parse(black_box(POINT_SELECT))))
    });
    g.bench_function("proxy_command_set", |b| {
        b.iter(|| {
            black_box(proxy_commands::parse(black_box(
                "SET shardpool.consistency = bounded_staleness(500ms)",
            )))
        })
    });
    let f = FunctionVolatility::unknown();
    let hinted = "/* shardpool.consistency=strong, shardpool.shard_key=42 */ BEGIN";
    g.bench_function("classify_begin_with_hints", |b| {
        b.iter(|| black_box(classify(black_box(hinted), &f)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = classify_cold, cached, contention, pre_checks
}
criterion_main!(benches);
