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

criterion_group!(benches, hashing);
criterion_main!(benches);
