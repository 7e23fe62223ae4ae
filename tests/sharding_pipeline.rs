//! Pipelines on a sharded database (three real shards): a client that sends several batches before reading the
//! replies (`[statement for key A; Sync; statement for key B; Sync]`) has each batch after a Sync routed on its own,
//! to its key's shard, with the results in order; a batch for the shard already attached joins it without a wait.
//! Which shard answered is read from `inet_server_port()`. A batch inside a transaction (after BEGIN, or behind a
//! Flush) still cannot move to another shard. Clients: a raw wire client sending the whole pipeline in one write,
//! tokio-postgres (queries joined into one pipeline) and psycopg's pipeline mode.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};

use common::raw::Raw;
use common::shards::{shop_url, start, Shards};
use common::TestProxy;

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// Parse (unnamed) of `sql`, Bind without parameters, Execute, then `end` (Sync or Flush).
fn batch(out: &mut BytesMut, sql: &str, end: u8) {
    let mut parse = Vec::new();
    parse.push(0);
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    message(out, b'P', &parse);
    message(out, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
    message(out, b'E', &[0, 0, 0, 0, 0]);
    message(out, end, &[]);
}

fn query(out: &mut BytesMut, sql: &str) {
    let mut q = sql.as_bytes().to_vec();
    q.push(0);
    message(out, b'Q', &q);
}

fn read_sql(key: i64) -> String {
    format!("SELECT inet_server_port(), count(*) FROM accounts WHERE aid = {key}")
}

/// The first column of each DataRow in rendered replies.
fn first_columns(replies: &[String]) -> Vec<String> {
    replies
        .iter()
        .filter_map(|r| r.strip_prefix("D:[Some(\""))
        .map(|r| r.split('"').next().unwrap().to_owned())
        .collect()
}

/// Two keys of each shard, found by writing rows through the proxy (one statement at a time) and reading back
/// which shard holds them: shard index -> keys, and each shard's port.
async fn keys_by_shard(shards: &Shards, proxy: &TestProxy) -> (Vec<Vec<i64>>, Vec<u16>) {
    let c = common::connect(&shop_url(proxy)).await;
    for k in 1..=40i64 {
        c.execute(
            "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'seed', 0)",
            &[&k],
        )
        .await
        .unwrap();
    }
    let mut keys = Vec::new();
    for b in &shards.backends {
        let held: Vec<i64> = b
            .sql("SELECT aid FROM accounts ORDER BY aid")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert!(held.len() >= 2, "a shard holds fewer than 2 of 40 keys");
        keys.push(held);
    }
    let ports = shards.backends.iter().map(|b| b.pg.port()).collect();
    (keys, ports)
}

/// Transactions the proxy ran on a shard's primary (released servers), for telling a held batch from one that
/// joined the server attached before it.
fn xacts(proxy: &TestProxy, shard: u16) -> u64 {
    let ctx = proxy.ctx();
    let user = ctx.user("app").unwrap();
    let set = ctx.shard_pool_set("shop", &user, shard).unwrap();
    set.pools[0].stats.xact_count.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_of_a_pipeline_runs_on_its_keys_shard() {
    let (shards, proxy, _cfg) = start().await;
    let (keys, ports) = keys_by_shard(&shards, &proxy).await;
    let (a, b) = (keys[0][0], keys[2][0]);
    let (port_a, port_b) = (ports[0].to_string(), ports[2].to_string());
    let mut raw = Raw::connect(proxy.port, "app", "secret", "shop").await;

    // [read A; Sync; read B; Sync; write B; Sync; read B; Sync; read A; Sync] in one write: each batch on its
    // key's shard, in order, and the read after the write sees it (its batch starts after the write's Sync).
    let new_key = keys[2][1] + 1_000_000;
    let mut p = BytesMut::new();
    batch(&mut p, &read_sql(a), b'S');
    batch(&mut p, &read_sql(b), b'S');
    // A write whose key is not known until it is routed: the key's shard is found the same way.
    let write = format!(
        "INSERT INTO accounts (aid, owner, balance) VALUES ({new_key}, 'piped', 1) RETURNING inet_server_port()"
    );
    batch(&mut p, &write, b'S');
    batch(&mut p, &read_sql(new_key), b'S');
    batch(&mut p, &read_sql(a), b'S');
    let before = (xacts(&proxy, 0), xacts(&proxy, 2));
    raw.send_raw(&p).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let replies = raw.replies().await;
        assert!(
            replies.last() == Some(&"Z:I".to_owned())
                && !replies.iter().any(|r| r.starts_with("E:")),
            "{replies:?}"
        );
        got.push(first_columns(&replies));
    }
    let new_port = shards
        .backends
        .iter()
        .find(|s| {
            s.sql(&format!(
                "SELECT count(*) FROM accounts WHERE aid = {new_key}"
            ))
            .trim()
                == "1"
        })
        .map(|s| s.pg.port().to_string())
        .expect("the pipelined write is on no shard");
    assert_eq!(
        got,
        vec![
            vec![port_a.clone()],
            vec![port_b.clone()],
            vec![new_port.clone()],
            vec![new_port.clone()],
            vec![port_a.clone()],
        ]
    );
    // Each shard switch was a transaction of its own (the batch waited for the server before it to be released).
    let after = (xacts(&proxy, 0), xacts(&proxy, 2));
    assert!(after.0 - before.0 >= 2, "{before:?} -> {after:?}");
    assert!(after.1 - before.1 >= 1, "{before:?} -> {after:?}");

    // A read-only pipeline on one shard keeps its depth: its five batches join the server attached for the first,
    // which is released once, after the last.
    let before = xacts(&proxy, 0);
    let mut p = BytesMut::new();
    for i in 0..5 {
        batch(&mut p, &read_sql(keys[0][i % 2]), b'S');
    }
    raw.send_raw(&p).await;
    for _ in 0..5 {
        let replies = raw.replies().await;
        assert_eq!(first_columns(&replies), vec![port_a.clone()], "{replies:?}");
    }
    assert_eq!(xacts(&proxy, 0) - before, 1);

    // A statement for every shard pipelined between two keyed reads: the merged count, between the two.
    let total: i64 = shards
        .backends
        .iter()
        .map(|s| common::shards::count(s, "SELECT count(*) FROM accounts"))
        .sum();
    let mut p = BytesMut::new();
    batch(&mut p, &read_sql(a), b'S');
    batch(&mut p, "SELECT count(*) FROM accounts", b'S');
    batch(&mut p, &read_sql(b), b'S');
    raw.send_raw(&p).await;
    assert_eq!(first_columns(&raw.replies().await), vec![port_a.clone()]);
    assert_eq!(first_columns(&raw.replies().await), vec![total.to_string()]);
    assert_eq!(first_columns(&raw.replies().await), vec![port_b.clone()]);

    // COPY over the extended protocol with its data after the Execute and no Sync before it (the client waits for
    // CopyInResponse): the lookahead that places a Parse by its Bind does not wait for a Sync.
    let mut p = BytesMut::new();
    let mut parse = vec![0];
    parse.extend_from_slice(b"COPY accounts (aid, owner, balance) FROM STDIN\0\0\0");
    message(&mut p, b'P', &parse);
    message(&mut p, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
    message(&mut p, b'E', &[0, 0, 0, 0, 0]);
    raw.send_raw(&p).await;
    let copy_in = async {
        loop {
            let (tag, _) = raw.next().await;
            assert!(tag != b'E' && tag != b'Z', "{}", tag as char);
            if tag == b'G' {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), copy_in)
        .await
        .expect("no CopyInResponse without a Sync");
    let mut p = BytesMut::new();
    message(
        &mut p,
        b'd',
        format!("{}\tcopied\t0\n", new_key + 1).as_bytes(),
    );
    message(&mut p, b'c', &[]);
    message(&mut p, b'S', &[]);
    raw.send_raw(&p).await;
    assert_eq!(raw.replies().await, vec!["C:COPY 1", "Z:I"]);

    // Simple queries pipelined the same way.
    let mut p = BytesMut::new();
    query(&mut p, &read_sql(b));
    query(&mut p, &read_sql(a));
    raw.send_raw(&p).await;
    assert_eq!(first_columns(&raw.replies().await), vec![port_b.clone()]);
    assert_eq!(first_columns(&raw.replies().await), vec![port_a.clone()]);

    // A BEGIN pipelined behind a statement on the default shard does not bind its transaction there: the statement
    // after it chooses, as without a pipeline.
    let mut p = BytesMut::new();
    query(&mut p, &read_sql(a));
    query(&mut p, "BEGIN");
    query(&mut p, &read_sql(b));
    query(&mut p, "COMMIT");
    raw.send_raw(&p).await;
    assert_eq!(first_columns(&raw.replies().await), vec![port_a.clone()]);
    assert_eq!(raw.replies().await, vec!["C:BEGIN", "Z:T"]);
    let inside = raw.replies().await;
    assert_eq!(first_columns(&inside), vec![port_b.clone()], "{inside:?}");
    assert_eq!(inside.last().unwrap(), "Z:T");
    assert_eq!(raw.replies().await, vec!["C:COMMIT", "Z:I"]);

    // Inside a transaction the next batch is part of it: another shard is still refused (0A000), and the
    // transaction goes on where it was.
    let mut p = BytesMut::new();
    query(&mut p, "BEGIN");
    query(&mut p, &read_sql(a));
    query(&mut p, &read_sql(b));
    query(&mut p, "ROLLBACK");
    raw.send_raw(&p).await;
    assert_eq!(raw.replies().await, vec!["C:BEGIN", "Z:T"]);
    let first = raw.replies().await;
    assert_eq!(first_columns(&first), vec![port_a.clone()], "{first:?}");
    assert_eq!(first.last().unwrap(), "Z:T");
    assert_eq!(raw.replies().await, vec!["E:C0A000", "Z:E"]);
    assert_eq!(raw.replies().await, vec!["C:ROLLBACK", "Z:I"]);
    // A batch ended by Flush is still open: the statement after it is in the same implicit transaction.
    let mut p = BytesMut::new();
    batch(&mut p, &read_sql(a), b'H');
    batch(&mut p, &read_sql(b), b'S');
    raw.send_raw(&p).await;
    let replies = raw.replies().await;
    assert_eq!(first_columns(&replies), vec![port_a.clone()], "{replies:?}");
    assert!(replies.contains(&"E:C0A000".to_owned()), "{replies:?}");
    // And the session is usable afterwards.
    let mut p = BytesMut::new();
    batch(&mut p, &read_sql(b), b'S');
    raw.send_raw(&p).await;
    assert_eq!(first_columns(&raw.replies().await), vec![port_b]);
}

/// tokio-postgres sends the requests of futures polled together as one pipeline: Bind/Execute/Sync for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_pipelines_reach_each_keys_shard() {
    let (shards, proxy, _cfg) = start().await;
    let (keys, ports) = keys_by_shard(&shards, &proxy).await;
    let c = common::connect(&shop_url(&proxy)).await;
    let read = c
        .prepare("SELECT inet_server_port(), count(*) FROM accounts WHERE aid = $1")
        .await
        .unwrap();
    let write = c
        .prepare(
            "UPDATE accounts SET balance = balance + 1 WHERE aid = $1 RETURNING inet_server_port()",
        )
        .await
        .unwrap();
    // Shard 1 has a replica: its reads may be answered there. Shards 0 and 2 have only their primary.
    let port_of = |port: i32| -> usize {
        let port = u16::try_from(port).unwrap();
        ports.iter().position(|p| *p == port).unwrap_or(1)
    };
    for round in 0..20 {
        let order: Vec<(usize, i64)> = (0..6)
            .map(|i| {
                let shard = (i + round) % 3;
                (shard, keys[shard][i % 2])
            })
            .collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
            order.iter().map(|(_, k)| [k as _]).collect();
        let q = |i: usize| c.query_one(&read, &params[i]);
        // Polled together, so tokio-postgres writes the six Bind/Execute/Sync batches before reading any reply.
        let got = tokio::join!(q(0), q(1), q(2), q(3), q(4), q(5));
        let got = [got.0, got.1, got.2, got.3, got.4, got.5];
        for ((shard, key), row) in order.iter().zip(got) {
            let row = row.unwrap_or_else(|e| panic!("round {round}, key {key}: {e}"));
            assert_eq!(port_of(row.get(0)), *shard, "round {round}, key {key}");
            assert_eq!(row.get::<_, i64>(1), 1);
        }
        // A write pipelined after reads of other shards, then a read of the written row: each on the key's shard.
        let (k0, k2) = (keys[0][round % 2], keys[2][round % 2]);
        let (r0, w2, r2) = futures_util::future::join3(
            c.query_one(&read, &[&k0]),
            c.query_one(&write, &[&k2]),
            c.query_one(
                "SELECT balance, inet_server_port() FROM accounts WHERE aid = $1",
                &[&k2],
            ),
        )
        .await;
        assert_eq!(port_of(r0.unwrap().get(0)), 0);
        assert_eq!(port_of(w2.unwrap().get(0)), 2);
        let r2 = r2.unwrap();
        assert_eq!(port_of(r2.get(1)), 2);
        assert!(r2.get::<_, i32>(0) >= 1);
    }
    // Every write landed, once each.
    let bumped = shards.backends[2]
        .sql(&format!(
            "SELECT balance FROM accounts WHERE aid IN ({}, {}) ORDER BY aid",
            keys[2][0], keys[2][1]
        ))
        .lines()
        .map(|l| l.trim().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(bumped, vec!["10", "10"]);
}

/// psycopg's pipeline mode (libpq's), with a Sync between statements for different shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipeline_mode_reaches_each_keys_shard() {
    let python = tokio::task::spawn_blocking(common::python::python)
        .await
        .unwrap();
    let (shards, proxy, _cfg) = start().await;
    let (keys, ports) = keys_by_shard(&shards, &proxy).await;
    let script = r#"
import json, sys
import psycopg
url, keys = sys.argv[1], json.loads(sys.argv[2])
out = []
with psycopg.connect(url, autocommit=True) as conn:
    with conn.pipeline() as p:
        curs = []
        for i in range(3):
            for shard in (0, 2, 0, 2):
                cur = conn.cursor()
                cur.execute("SELECT inet_server_port(), %s::int FROM accounts WHERE aid = %s", (shard, keys[shard][i % 2]))
                curs.append(cur)
                p.sync()
            cur = conn.cursor()
            cur.execute("UPDATE accounts SET balance = balance + 1 WHERE aid = %s RETURNING inet_server_port(), 2", (keys[2][0],))
            curs.append(cur)
            p.sync()
    for cur in curs:
        out.append(list(cur.fetchone()))
print(json.dumps(out))
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, &shop_url(&proxy)])
        .arg(format!("{keys:?}"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(u16, usize)> = stdout
        .trim()
        .trim_start_matches("[[")
        .trim_end_matches("]]")
        .split("], [")
        .map(|r| {
            let (port, shard) = r.split_once(", ").unwrap();
            (port.parse().unwrap(), shard.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 15, "{stdout}");
    for (port, shard) in rows {
        assert_eq!(port, ports[shard], "{stdout}");
    }
    assert_eq!(
        shards.backends[2]
            .sql(&format!(
                "SELECT balance FROM accounts WHERE aid = {}",
                keys[2][0]
            ))
            .trim(),
        "3"
    );
}
