//! Per-message costs on the forwarding path: splitting frames off a read buffer, accounting a server reply in the
//! relay queue, and scanning a query for session effects. Run: `cargo bench --bench protocol`.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardpool::frontend::relay::{Expect, Relay};
use shardpool::protocol::backend::{command_complete, data_row, ready_for_query};
use shardpool::protocol::framing::split_frame;
use shardpool::protocol::TxStatus;
use shardpool::router::session_effects::effects;

/// A result of `rows` 100-byte DataRows, as a server sends it.
fn result_set(rows: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    let value = "x".repeat(90);
    for _ in 0..rows {
        data_row(&mut buf, &[Some(value.as_str())]);
    }
    command_complete(&mut buf, "SELECT 1000");
    ready_for_query(&mut buf, TxStatus::Idle);
    buf
}

fn framing(c: &mut Criterion) {
    let template = result_set(1000);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(1002));
    g.bench_function("split_1000_datarows", |b| {
        b.iter(|| {
            let mut buf = template.clone();
            let mut n = 0;
            while let Ok(Some(f)) = split_frame(&mut buf) {
                n += f.raw.len();
            }
            black_box(n)
        })
    });
    g.bench_function("split_and_account_1000_datarows", |b| {
        b.iter(|| {
            let mut buf = template.clone();
            let mut relay = Relay::default();
            relay.push(Expect::Query { forward: true });
            let mut out = BytesMut::with_capacity(template.len());
            while let Ok(Some(f)) = split_frame(&mut buf) {
                let o = relay.on_server_message(f.tag, f.body()).unwrap_or_default();
                if o.forward {
                    out.extend_from_slice(&f.raw);
                }
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn scanning(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_effects");
    for (name, sql) in [
        (
            "point_select",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        ),
        (
            "tpcb_update",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        ),
        ("set", "SET application_name = 'worker-17'"),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(effects(black_box(sql)))));
    }
    g.finish();
}

criterion_group!(benches, framing, scanning);
criterion_main!(benches);
