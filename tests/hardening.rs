//! Regression tests for input that once took the proxy down or let one client see another's work, each reproduced
//! against real Postgres before it was fixed: a 100,000-term expression that overflowed a worker's stack and
//! aborted the process, a non-ASCII comment that panicked a sharded session, and a Flush-ended batch whose server
//! (with the batch's implicit transaction open) was lent to another client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::raw::{render, Raw};
use common::shards::{shop_url, start};
use common::{sqlstate, Backend, DB};
use tokio_postgres::SimpleQueryMessage;

fn chain(terms: usize) -> String {
    let mut s = String::with_capacity(terms * 2 + 16);
    s.push_str("SELECT 1");
    for _ in 1..terms {
        s.push_str("+1");
    }
    s.push_str(" AS x");
    s
}

async fn first_value(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", &sql[..sql.len().min(80)]))
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_expressions_and_non_ascii_text_on_a_sharded_database() {
    let (shards, proxy, _cfg) = start().await;
    let c = common::connect(&shop_url(&proxy)).await;
    c.batch_execute("INSERT INTO accounts (aid, owner, balance) VALUES (5, 'café', 10)")
        .await
        .unwrap();

    // 100,000 terms (200 KB): refused with Postgres' own SQLSTATE for it, and the process and session live on.
    let deep = chain(100_000);
    let e = c.simple_query(&deep).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54001", "{e}");
    // The same depth in a keyed write, a UNION chain, a scatter read and over the extended protocol.
    let where_chain = format!(
        "UPDATE accounts SET balance = 1 WHERE aid = 5 AND {}",
        "aid = 5 OR ".repeat(50_000) + "true"
    );
    let e = c.simple_query(&where_chain).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54001", "{e}");
    let unions = format!(
        "SELECT aid FROM accounts{}",
        " UNION SELECT 1, 2".repeat(60_000)
    );
    let e = c.simple_query(&unions).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54001", "{e}");
    let e = c.query(deep.as_str(), &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54001", "{e}");
    // Just under the bound, the statement runs and is answered correctly (the walkers fit in a debug build's
    // worker stack at that depth).
    assert_eq!(first_value(&c, &chain(900)).await, "900");
    let sum = format!(
        "SELECT count(*) FROM accounts WHERE aid = 5 AND balance = {}",
        chain(800)
            .trim_start_matches("SELECT ")
            .trim_end_matches(" AS x")
    );
    assert_eq!(first_value(&c, &sum).await, "0");
    // The proxy still serves: this session and a new one.
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
    let other = common::connect(&shop_url(&proxy)).await;
    assert_eq!(first_value(&other, "SELECT 2").await, "2");

    // Non-ASCII in comments, literals and identifiers: routed by key as usual.
    for sql in [
        "/* ñ */ SELECT count(*) FROM accounts WHERE aid = 5",
        "/* ñ */SELECT count(*) FROM accounts WHERE aid = 5",
        "/*ñ*/ SELECT count(*) FROM accounts WHERE aid = 5",
        "-- 日本語\nSELECT count(*) FROM accounts WHERE aid = 5",
        "SELECT count(*) AS café FROM accounts WHERE aid = 5 AND owner = 'café'",
    ] {
        assert_eq!(first_value(&c, sql).await, "1", "{sql}");
    }
    let n = c
        .query_one(
            "/* ñ */ SELECT count(*) FROM accounts WHERE aid = $1",
            &[&5i64],
        )
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 1);
    assert_eq!(
        first_value(&c, "/* ñ */ SELECT count(*) FROM accounts").await,
        "1",
        "scatter read"
    );

    // A multi-shard batch that never ends is bounded like a message: past max_message_size the client is told
    // (54000) and disconnected, instead of buffering for ever.
    let toml = common::shards::proxy_toml(&shards).replacen(
        "pool_size = 6",
        "pool_size = 6\nmax_message_size = 65536",
        1,
    );
    let small = common::TestProxy::start(&toml).await;
    let mut raw = Raw::connect(small.port, "app", "secret", "shop").await;
    raw.parse("", "SELECT count(*) FROM accounts").await;
    raw.bind_execute("").await;
    let describe = [b'P', 0];
    let mut flood = Vec::new();
    for _ in 0..20_000 {
        flood.push(b'D');
        flood.extend_from_slice(&6i32.to_be_bytes());
        flood.extend_from_slice(&describe);
    }
    raw.send_raw(&flood).await;
    let (tag, body) = tokio::time::timeout(Duration::from_secs(30), raw.next())
        .await
        .expect("the proxy kept waiting for the end of an unbounded batch");
    assert_eq!(render(tag, &body), "E:C54000");
    drop(shards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_expressions_on_a_database_with_replicas() {
    let b = Backend::start().await;
    let replica = tokio::task::block_in_place(|| b.pg.start_replica(None).unwrap());
    let toml = format!(
        "{}\nreplicas = [{{ port = {} }}]\n",
        b.config_toml("pool_size = 2"),
        replica.port()
    );
    let proxy = common::TestProxy::start(&toml).await;
    let c = proxy.connect().await;
    // Too deep for the classifier to parse: it is not analysed and goes to the primary, whose Postgres answers
    // (it computes 2,000 terms and refuses 100,000 with its own 54001); the proxy's workers are never at risk.
    assert_eq!(first_value(&c, &chain(2_000)).await, "2000");
    let e = c.simple_query(&chain(100_000)).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54001", "{e}");
    // Within the bound it is classified as usual: a read, answered correctly.
    assert_eq!(first_value(&c, &chain(900)).await, "900");
    // ...and how it is classified: a read within the bound, a write (not analysed) beyond it.
    let access = |sql: String| {
        let c = &c;
        async move {
            let rows = c
                .simple_query(&format!("SHOW shardpool.route {sql}"))
                .await
                .unwrap();
            rows.iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get("access").map(str::to_owned),
                    _ => None,
                })
                .unwrap()
        }
    };
    assert_eq!(access(chain(900)).await, "read");
    assert_eq!(access(chain(2_000)).await, "write");
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_batch_keeps_its_server_until_sync() {
    let b = Backend::start().await;
    b.sql("CREATE TABLE t (id int); ALTER TABLE t OWNER TO app");
    let proxy = b.proxy("pool_size = 1").await;

    // A: an INSERT over the extended protocol, ended by Flush instead of Sync.
    let mut a = Raw::connect(proxy.port, "app", "secret", DB).await;
    a.parse("", "INSERT INTO t VALUES (1)").await;
    a.bind_execute("").await;
    a.send(b'H', b"").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (tag, body) = a.next().await;
        got.push(render(tag, &body));
    }
    assert_eq!(got, ["1", "2", "C:INSERT 0 1"]);

    // B must wait for the one server rather than be lent it mid-batch.
    let b_client = common::connect(&proxy.app_url()).await;
    let reader = tokio::spawn(async move {
        let row = b_client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    });
    common::eventually(Duration::from_secs(10), "B to queue for the server", || {
        let proxy = &proxy;
        async move {
            proxy
                .admin("SHOW POOLS")
                .await
                .iter()
                .any(|p| p["database"] == DB && p["cl_waiting"] == "1")
        }
    })
    .await;

    // Cursor-style fetching in the same batch: a row-limited Execute and Flush keep the portal across round trips.
    a.parse("", "SELECT g FROM generate_series(1, 10) g").await;
    let mut bind = vec![0u8, 0];
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    a.send(b'B', &bind).await;
    let execute_3 = [0u8, 0, 0, 0, 3];
    a.send(b'E', &execute_3).await;
    a.send(b'H', b"").await;
    let mut rows = Vec::new();
    for _ in 0..2 {
        loop {
            let (tag, body) = a.next().await;
            match tag {
                b'D' => rows.push(common::raw::data_row(&body)[0].clone().unwrap()),
                b's' => break,
                b'1' | b'2' => {}
                other => panic!("unexpected {}", render(other, &body)),
            }
        }
        a.send(b'E', &execute_3).await;
        a.send(b'H', b"").await;
    }
    // The second chunk was fetched after B queued: the portal survived on A's server.
    assert_eq!(rows, ["1", "2", "3", "4", "5", "6"]);
    assert!(
        !reader.is_finished(),
        "B got a server while A's batch was open"
    );

    // A hangs up without a Sync: Postgres would abort its batch, so must the proxy (never commit it or pass it on).
    drop(a);
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("B served once A left")
        .unwrap();
    assert_eq!(seen, 0, "B saw A's uncommitted row");
    assert_eq!(b.sql("SELECT count(*) FROM t").trim(), "0");

    // The same batch ended by Sync after its Flush commits, as direct Postgres does.
    let mut a = Raw::connect(proxy.port, "app", "secret", DB).await;
    a.parse("", "INSERT INTO t VALUES (2)").await;
    a.bind_execute("").await;
    a.send(b'H', b"").await;
    for _ in 0..3 {
        a.next().await;
    }
    a.sync().await;
    let tail = a.replies().await;
    assert_eq!(tail, ["Z:I"]);
    let c = common::connect(&proxy.app_url()).await;
    assert_eq!(first_value(&c, "SELECT count(*) FROM t").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_flush_meets_the_idle_transaction_timeout() {
    let b = Backend::start().await;
    b.sql("CREATE TABLE t (id int); ALTER TABLE t OWNER TO app");
    let proxy = b
        .proxy("pool_size = 1\nidle_transaction_timeout = \"300ms\"")
        .await;
    let mut a = Raw::connect(proxy.port, "app", "secret", DB).await;
    a.parse("", "INSERT INTO t VALUES (1)").await;
    a.bind_execute("").await;
    a.send(b'H', b"").await;
    for _ in 0..3 {
        a.next().await;
    }
    // Silent with the batch open: thrown out with Postgres' idle-in-transaction SQLSTATE, the row never committed.
    let (tag, body) = a.next().await;
    assert_eq!(tag, b'E');
    assert!(
        render(tag, &body).contains("25P03"),
        "{}",
        render(tag, &body)
    );
    let c = common::connect(&proxy.app_url()).await;
    assert_eq!(first_value(&c, "SELECT count(*) FROM t").await, "0");
}

/// SHOW TASKS rows as (task, name) -> (state, failures, last_error).
async fn task_rows(
    proxy: &common::TestProxy,
) -> std::collections::HashMap<(String, String), (String, u64, String)> {
    proxy
        .admin("SHOW TASKS")
        .await
        .into_iter()
        .map(|r| {
            (
                (r["task"].clone(), r["name"].clone()),
                (
                    r["state"].clone(),
                    r["failures"].parse().unwrap(),
                    r["last_error"].clone(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_catalog_is_refused_and_shown_while_routing_goes_on() {
    let (shards, proxy, _cfg) = start().await;
    let catalog = &shards.backends[0];
    let c = common::connect(&shop_url(&proxy)).await;

    // Every background task is listed, running, with no failure.
    let tasks = task_rows(&proxy).await;
    for kind in [
        "catalog follower",
        "column reader",
        "replica monitor",
        "pool janitor",
        "catalog reload",
    ] {
        assert!(
            tasks.keys().any(|(k, _)| k == kind),
            "{kind} missing from {tasks:?}"
        );
    }
    assert!(
        tasks.values().all(|(_, failures, _)| *failures == 0),
        "{tasks:?}"
    );

    let expr = shardpool::sharding::hash::vshard_sql(
        "aid",
        shardpool::sharding::key::KeyType::Int,
        common::shards::VSHARDS,
    );
    let vshard: u32 = catalog
        .sql(&format!("SELECT {expr} FROM (SELECT 7::bigint AS aid) t"))
        .trim()
        .parse()
        .unwrap();
    let owner_of_7 = (0..shards.backends.len())
        .find(|i| common::shards::owned(*i).contains(&vshard))
        .unwrap();
    let bump = |sql: &str| {
        catalog.sql(&format!(
            "{sql}; UPDATE shardpool.epoch SET epoch = epoch + 1; \
             SELECT pg_notify('shardpool_catalog', (SELECT epoch FROM shardpool.epoch)::text)"
        ))
    };
    // A negative vshard count (it once aborted the process) and a column of another type (it once panicked the
    // follower): both refused, counted and shown, while keyed statements keep their shard.
    for (corrupt, expect) in [
        (
            "ALTER TABLE shardpool.epoch DROP CONSTRAINT epoch_vshards_check; \
             UPDATE shardpool.epoch SET vshards = -1",
            "-1 vshards",
        ),
        (
            "UPDATE shardpool.epoch SET vshards = 64; \
             ALTER TABLE shardpool.placement DROP CONSTRAINT placement_shard_check; \
             ALTER TABLE shardpool.placement ALTER COLUMN shard TYPE text",
            "column shard",
        ),
    ] {
        let before = task_rows(&proxy).await[&("catalog reload".to_owned(), "shop".to_owned())].1;
        bump(corrupt);
        common::eventually(Duration::from_secs(20), "the reload to fail", || {
            let proxy = &proxy;
            async move {
                let rows = task_rows(proxy).await;
                let (state, failures, error) =
                    &rows[&("catalog reload".to_owned(), "shop".to_owned())];
                state == "failing" && *failures > before && error.contains(expect)
            }
        })
        .await;
        c.batch_execute("INSERT INTO accounts (aid, owner, balance) VALUES (7, 'x', 1)")
            .await
            .unwrap();
        let counts: Vec<i64> = shards
            .backends
            .iter()
            .map(|b| common::shards::count(b, "SELECT count(*) FROM accounts WHERE aid = 7"))
            .collect();
        let mut expected = vec![0i64; shards.backends.len()];
        expected[owner_of_7] = 1;
        assert_eq!(counts, expected, "routed by the last good snapshot");
        c.batch_execute("DELETE FROM accounts WHERE aid = 7")
            .await
            .unwrap();
    }

    // Repaired: the next reload succeeds and the state clears.
    bump("ALTER TABLE shardpool.placement ALTER COLUMN shard TYPE integer USING shard::integer");
    common::eventually(Duration::from_secs(20), "the reload to succeed", || {
        let proxy = &proxy;
        async move {
            task_rows(proxy).await[&("catalog reload".to_owned(), "shop".to_owned())].0 == "ok"
        }
    })
    .await;
    // Nothing ever had to restart.
    let tasks = task_rows(&proxy).await;
    assert!(
        tasks
            .iter()
            .filter(|((k, _), _)| k != "catalog reload")
            .all(|(_, (_, failures, _))| *failures == 0),
        "{tasks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_known_to_one_user_are_not_taken_as_prepared_for_another() {
    let b = Backend::start().await;
    // Schema USAGE is checked when a statement is parsed (table privileges only when it runs).
    b.sql(
        "CREATE SCHEMA hidden AUTHORIZATION app; CREATE TABLE hidden.secret_t (v int); \
         ALTER TABLE hidden.secret_t OWNER TO app",
    );
    let proxy = b.proxy("pool_size = 2").await;

    // `app` may read the table: its Parse succeeds on a server and the text becomes known to app's pool.
    let mut app = Raw::connect(proxy.port, "app", "secret", DB).await;
    app.parse("s1", "SELECT v FROM hidden.secret_t").await;
    app.sync().await;
    assert_eq!(app.replies().await, ["1", "Z:I"]);
    // A second Parse of the same text by app is answered without a server: known to its pool.
    let mut app2 = Raw::connect(proxy.port, "app", "secret", DB).await;
    app2.parse("mine", "SELECT v FROM hidden.secret_t").await;
    app2.sync().await;
    assert_eq!(app2.replies().await, ["1", "Z:I"]);

    // `trustuser` may not: its Parse of the very same text must reach a server and fail there, as on Postgres.
    let mut other = Raw::connect(proxy.port, "trustuser", "", DB).await;
    other.parse("s1", "SELECT v FROM hidden.secret_t").await;
    other.sync().await;
    assert_eq!(other.replies().await, ["E:C42501", "Z:I"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_made_by_select_into_and_do_blocks_never_reaches_another_client() {
    let b = Backend::start().await;
    let proxy = b.proxy("pool_size = 5").await;
    let observer = proxy.connect().await;
    // (statement that leaves session state, a probe answering "t" when the state is on the probing session)
    let probes = [
        (
            "SELECT 1 AS x INTO TEMP leak_t",
            "SELECT to_regclass('pg_temp.leak_t') IS NOT NULL",
        ),
        (
            "DO $$ BEGIN PERFORM pg_advisory_lock(42); END $$",
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
        (
            "DO $$ BEGIN SET work_mem = '9MB'; END $$",
            "SELECT current_setting('work_mem') = '9MB'",
        ),
    ];
    let mut holders = Vec::new();
    for (effect, probe) in probes {
        let a = proxy.connect().await;
        a.batch_execute(effect).await.unwrap();
        // The client that made it keeps it (its server is kept for it) ...
        assert_eq!(first_value(&a, probe).await, "t", "{effect}");
        // ... and nobody else ever sees it, whichever server they get.
        for _ in 0..5 {
            assert_eq!(first_value(&observer, probe).await, "f", "{effect}");
        }
        holders.push(a);
    }
}

/// `set_config(name, value, false)` is not followed (its arguments may be expressions, and drivers call it on every
/// connection, so it does not pin either): the server it ran on is reset before another client gets it. Found by the
/// `session` fuzz target's settings check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_made_by_set_config_never_reach_another_client() {
    let b = Backend::start().await;
    // One server: the next client gets the very server set_config ran on.
    let proxy = b.proxy("pool_size = 1").await;
    let observer = proxy.connect().await;
    let default = first_value(&observer, "SELECT current_setting('work_mem')").await;
    assert_ne!(default, "7MB");
    let a = proxy.connect().await;
    for sql in [
        "SELECT set_config('work_mem', '7MB', false)",
        "SELECT set_config('work' || '_mem', '7' || 'MB', false), set_config('fuzz.x', 'left', false)",
    ] {
        assert_eq!(first_value(&a, sql).await, "7MB");
        assert_eq!(
            first_value(&observer, "SELECT current_setting('work_mem')").await,
            default,
            "{sql}"
        );
        assert_eq!(
            first_value(&observer, "SELECT coalesce(current_setting('fuzz.x', true), '')").await,
            "",
            "{sql}"
        );
    }
    // A client's own SETs are still carried over the reset.
    observer
        .batch_execute("SET work_mem = '5MB'")
        .await
        .unwrap();
    assert_eq!(
        first_value(&a, "SELECT set_config('work_mem', '7MB', false)").await,
        "7MB"
    );
    assert_eq!(
        first_value(&observer, "SELECT current_setting('work_mem')").await,
        "5MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_statement_that_pins_the_server_is_prepared_without_a_panic() {
    let b = Backend::start().await;
    let proxy = b.proxy("pool_size = 2").await;
    let c = proxy.connect().await;
    // A named Parse whose statement keeps session state (here a session advisory lock) once underflowed the
    // session's pending-effects count and panicked it.
    let s = c.prepare("SELECT pg_advisory_lock(7)").await.unwrap();
    c.query(&s, &[]).await.unwrap();
    assert_eq!(
        first_value(
            &c,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        .await,
        "1"
    );
}
