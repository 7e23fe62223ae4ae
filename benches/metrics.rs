//! What one `/metrics` scrape costs the proxy: rendering the page for 150 pools (10 databases with a primary and two
//! replicas each, 5 users) and their 30 servers. The servers are never contacted (pools are created empty; the
//! replication monitors' connection attempts fail in the background and cost nothing measurable here). A scrape
//! takes each pool's lock once, for the length of a snapshot: this is the time a scrape competes with the data path
//! for. Run: `cargo bench --bench metrics`.

use criterion::{criterion_group, criterion_main, Criterion};
use shardpool::config::Config;
use shardpool::context::Context;

const DATABASES: usize = 10;
const USERS: usize = 5;

fn config() -> Config {
    let mut toml = String::from("[general]\nlisten = \"127.0.0.1:0\"\n");
    for u in 0..USERS {
        toml.push_str(&format!(
            "[[users]]\nname = \"user{u}\"\npassword = \"pw{u}\"\n"
        ));
    }
    for d in 0..DATABASES {
        // Port 9 (discard): nothing listens there on a test machine, so connection attempts fail at once.
        toml.push_str(&format!(
            "[databases.db{d}]\nhost = \"127.0.0.1\"\nport = 9\n\
             replicas = [{{ host = \"127.0.0.2\", port = 9 }}, {{ host = \"127.0.0.3\", port = 9 }}]\n"
        ));
    }
    Config::from_toml(&toml).expect("bench config")
}

fn render(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let config = config();
    let ctx = Context::new(config.clone());
    for d in 0..DATABASES {
        for user in &config.users {
            ctx.pool_set(&format!("db{d}"), user).expect("pool set");
        }
    }
    let page = shardpool::metrics::render(&ctx);
    assert!(page.contains("shardpool_pool_transactions_total"));
    let pools = page
        .lines()
        .filter(|l| l.starts_with("shardpool_pool_max_servers{"))
        .count();
    assert_eq!(pools, DATABASES * USERS * 3);
    let mut group = c.benchmark_group("metrics");
    group.bench_function("render 150 pools, 30 servers", |b| {
        b.iter(|| shardpool::metrics::render(&ctx))
    });
    group.finish();
    eprintln!("page size: {} bytes", page.len());
}

criterion_group!(benches, render);
criterion_main!(benches);
