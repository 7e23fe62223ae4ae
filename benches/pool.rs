//! Pool checkout/release under contention: 1,000 tasks taking turns on 20 real server connections (a throwaway
//! Postgres started by `pgcluster`; the connections are made once, before measuring). What is measured is the pool's
//! own cost per checkout + checkin pair, with waiters queued FIFO. Run: `cargo bench --bench pool`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardpool::backend::pool::{PauseGate, PoolConfig};
use shardpool::backend::{Pool, ServerTarget};
use shardpool::config::{PoolMode, PoolSettings};
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};

const TASKS: usize = 1_000;
const SERVERS: usize = 20;

fn checkout_release(c: &mut Criterion) {
    let pg = PgServer::start_primary(&ServerOptions::default()).expect("start postgres");
    pg.create_user("bench", "bench", AuthMethod::ScramSha256)
        .expect("create user");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = Pool::new(
        "postgres".into(),
        "bench".into(),
        ServerTarget {
            host: pg.host().to_owned(),
            port: pg.port(),
            database: "postgres".into(),
            user: "bench".into(),
            password: Some("bench".into()),
            credential: None,
            tls: Default::default(),
            auth: Default::default(),
        },
        PoolConfig {
            settings: PoolSettings {
                mode: PoolMode::Transaction,
                size: SERVERS,
                min_size: 0,
            },
            checkout_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: None,
            lifetime: None,
            // Never health-check during the measurement: only the pool's own bookkeeping is timed.
            check_delay: Duration::from_secs(3600),
            check_query: String::new(),
            reset_query: "DISCARD ALL".into(),
            statement_capacity: 16,
        },
        Arc::new(PauseGate::default()),
        &Arc::default(),
    );
    // Warm up: open all 20 connections.
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..SERVERS {
            held.push(pool.checkout().await.expect("checkout"));
        }
        for s in held {
            pool.checkin(s);
        }
    });

    let mut g = c.benchmark_group("pool");
    g.throughput(Throughput::Elements(TASKS as u64));
    g.sample_size(30);
    g.bench_function("1000_tasks_on_20_servers", |b| {
        b.iter_custom(|iters| {
            let pool = Arc::clone(&pool);
            rt.block_on(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = Vec::with_capacity(TASKS);
                    for _ in 0..TASKS {
                        let pool = Arc::clone(&pool);
                        tasks.push(tokio::spawn(async move {
                            let s = pool.checkout().await.expect("checkout");
                            tokio::task::yield_now().await;
                            pool.checkin(s);
                        }));
                    }
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    drop(pool);
    drop(pg);
}

criterion_group!(benches, checkout_release);
criterion_main!(benches);
