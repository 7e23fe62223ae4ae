//! Cost of placing one key: hash (Postgres' lookup3 port) plus `vshard_of`, per key type. Routing does this once per
//! routed statement or COPY row, so the target is well under 50 ns. Run: `cargo bench --bench sharding`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardpool::sharding::hash::{
    hash_int8_extended, hash_text_extended, hash_uuid_extended, vshard_of,
};
use shardpool::sharding::key::KeyValue;

/// Passed through `black_box` so the modulo is a real division, as with a vshard count read from config.
const VSHARDS: u32 = 4096;

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("vshard");
    g.bench_function("int8", |b| {
        b.iter(|| {
            vshard_of(
                hash_int8_extended(black_box(1_234_567_890_123), 0),
                black_box(VSHARDS),
            )
        })
    });
    let text = b"tenant-000012345";
    assert_eq!(text.len(), 16);
    g.bench_function("text_16_bytes", |b| {
        b.iter(|| vshard_of(hash_text_extended(black_box(text), 0), black_box(VSHARDS)))
    });
    let uuid = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    g.bench_function("uuid", |b| {
        b.iter(|| vshard_of(hash_uuid_extended(black_box(&uuid), 0), black_box(VSHARDS)))
    });
    let key = KeyValue::Text("tenant-000012345".to_string());
    g.bench_function("key_value_text_16_bytes", |b| {
        b.iter(|| black_box(&key).vshard(black_box(VSHARDS)))
    });
    g.finish();
}

/// The whole routing decision for a keyed statement: analysis (parse + key extraction; cached by text after the
/// first time) and placement (key -> vshard -> shard through the catalog).
fn routing_decision(c: &mut Criterion) {
    use shardpool::config::sharding::ShardingConfig;
    use shardpool::sharding::catalog::{initial_shard, Catalog};
    use shardpool::sharding::keys::analyze_sql;
    use shardpool::sharding::router::ShardRouter;

    let cfg: ShardingConfig = toml::from_str(
        "vshards = 4096\n[[shards]]\nhost = \"a\"\nport = 1\n[[shards]]\nhost = \"b\"\nport = 1\n\
         [[tables]]\nname = \"pgbench_accounts\"\nkey = \"aid\"\ntype = \"int4\"\nmap = \"hash\"\n",
    )
    .expect("config");
    let router = ShardRouter::new("bench", &cfg).expect("router");
    router.install_catalog(Catalog {
        epoch: 1,
        vshards: 4096,
        placement: (0..4096).map(|v| initial_shard(v, 4096, 2)).collect(),
        directories: Default::default(),
        ranges: Default::default(),
        freeze: Default::default(),
        remaps: Default::default(),
    });
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213";
    let mut g = c.benchmark_group("shard_routing");
    g.bench_function("cached_analysis_and_placement", |b| {
        b.iter(|| {
            let a = router.analysis(black_box(sql));
            let stmt = a.combined().expect("analysed");
            router.place(stmt, None).expect("placed")
        })
    });
    g.bench_function("uncached_parse_analysis_and_placement", |b| {
        b.iter(|| {
            let a = analyze_sql(black_box(sql), &router.schema);
            let stmt = a.combined().expect("analysed");
            router.place(stmt, None).expect("placed")
        })
    });
    // A prepared statement executed with a Bind parameter (binary int4), as pgbench -M prepared does.
    let prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let value = 48213i32.to_be_bytes();
    let params: [Option<&[u8]>; 1] = [Some(&value)];
    let formats = [1i16];
    g.bench_function("cached_with_bind_parameter", |b| {
        b.iter(|| {
            let a = router.analysis(black_box(prepared));
            let stmt = a.combined().expect("analysed");
            router
                .place(stmt, Some((&params[..], &formats[..])))
                .expect("placed")
        })
    });
    // The cached decision while other threads make it too: what the analysis cache's lock striping is for.
    g.bench_function("cached_4_threads_contended", |b| {
        b.iter_custom(|iters| {
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let router = std::sync::Arc::clone(&router);
                    std::thread::spawn(move || {
                        let texts: Vec<String> = (0..64)
                            .map(|i| {
                                format!(
                                    "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
                                    i * 4 + t
                                )
                            })
                            .collect();
                        let start = std::time::Instant::now();
                        for i in 0..iters {
                            let a = router.analysis(black_box(&texts[i as usize % texts.len()]));
                            let stmt = a.combined().expect("analysed");
                            black_box(router.place(stmt, None).expect("placed"));
                        }
                        start.elapsed()
                    })
                })
                .collect();
            let total: std::time::Duration =
                threads.into_iter().map(|h| h.join().expect("thread")).sum();
            total / 4
        })
    });
    g.finish();
}

criterion_group!(benches, hashing, routing_decision);
criterion_main!(benches);
