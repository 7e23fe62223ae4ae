//! Each client's named prepared statements are bounded by `max_prepared_statements_per_client`: one name more gets
//! SQLSTATE 54000 on its Parse, in line with the batch it came in, and the session goes on with the statements it
//! has. Against real Postgres, through tokio-postgres (which names every statement it prepares) and raw protocol
//! messages, on a plain and on a sharded database.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw::Raw;
use common::{sqlstate, Backend, DB};

const LIMIT: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_past_the_per_client_limit_fails_with_54000_and_the_session_goes_on() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy(&format!("max_prepared_statements_per_client = {LIMIT}"))
        .await;
    let client = proxy.connect().await;
    let mut kept = Vec::new();
    for i in 0..LIMIT {
        kept.push(
            client
                .prepare(&format!("SELECT {i}::int + $1"))
                .await
                .unwrap(),
        );
    }
    let e = client.prepare("SELECT 99::int + $1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("max_prepared_statements_per_client"), "{msg}");
    // Every statement the client holds still runs, and so does unprepared SQL.
    for (i, s) in kept.iter().enumerate() {
        let v: i32 = client.query_one(s, &[&1i32]).await.unwrap().get(0);
        assert_eq!(v, i as i32 + 1);
    }
    let rows = client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    // Closing one makes room for another (tokio-postgres closes a statement when it is dropped).
    drop(kept.pop());
    let s = client.prepare("SELECT 42::int + $1").await.unwrap();
    let v: i32 = client.query_one(&s, &[&0i32]).await.unwrap().get(0);
    assert_eq!(v, 42);
    // Other clients have their own allowance.
    let other = proxy.connect().await;
    for i in 0..LIMIT {
        other
            .prepare(&format!("SELECT {i}::int + $1"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refused_parse_fails_its_batch_in_line_and_redefinitions_are_allowed() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy(&format!("max_prepared_statements_per_client = {LIMIT}"))
        .await;
    let mut raw = Raw::connect(proxy.port, "app", "secret", DB).await;
    for i in 0..LIMIT {
        raw.parse(&format!("s{i}"), &format!("SELECT {i}")).await;
        raw.sync().await;
        assert_eq!(raw.replies().await, ["1", "Z:I"]);
    }
    // Redefining a name it holds is no new statement.
    raw.parse("s0", "SELECT 0").await;
    raw.sync().await;
    assert_eq!(raw.replies().await, ["1", "Z:I"]);
    // One more: the Parse fails, the rest of the batch is skipped up to the Sync, as after any failed Parse.
    raw.parse("s_extra", "SELECT 7").await;
    raw.bind_execute("s_extra").await;
    raw.sync().await;
    assert_eq!(raw.replies().await, ["E:C54000", "Z:I"]);
    raw.bind_execute("s3").await;
    raw.sync().await;
    assert_eq!(
        raw.replies().await,
        ["2", "D:[Some(\"3\")]", "C:SELECT 1", "Z:I"]
    );
    raw.close_statement("s1").await;
    raw.parse("s_extra", "SELECT 7").await;
    raw.bind_execute("s_extra").await;
    raw.sync().await;
    assert_eq!(
        raw.replies().await,
        ["3", "1", "2", "D:[Some(\"7\")]", "C:SELECT 1", "Z:I"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_for_multi_shard_statements() {
    let (_shards, proxy, _cfg) = common::shards::start().await;
    let toml = std::fs::read_to_string(&proxy.config_path).unwrap();
    drop(proxy);
    let toml = toml.replacen(
        "[general]",
        &format!("[general]\nmax_prepared_statements_per_client = {LIMIT}"),
        1,
    );
    let proxy = common::TestProxy::start(&toml).await;
    let router = proxy.ctx().shard_router("shop").unwrap();
    common::eventually(
        std::time::Duration::from_secs(30),
        "the proxy to load the catalog",
        || {
            let loaded = router.catalog().is_some();
            async move { loaded }
        },
    )
    .await;
    let client = common::connect(&common::shards::shop_url(&proxy)).await;
    let mut kept = Vec::new();
    for i in 0..LIMIT {
        // Keyless reads of a sharded table: each runs on every shard.
        let s = client
            .prepare(&format!(
                "SELECT count(*) AS n{i} FROM accounts WHERE balance > $1"
            ))
            .await
            .unwrap();
        let n: i64 = client.query_one(&s, &[&0i32]).await.unwrap().get(0);
        assert_eq!(n, 0);
        kept.push(s);
    }
    let e = client
        .prepare("SELECT count(*) FROM accounts WHERE balance < $1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e}");
    // tokio-postgres reports the error before the batch's ReadyForQuery has reached it, and a multi-shard Bind
    // pipelined behind a batch still in progress is refused (sharding.md, "Not built yet"): a round trip first.
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
    let n: i64 = client.query_one(&kept[2], &[&0i32]).await.unwrap().get(0);
    assert_eq!(n, 0);
}
