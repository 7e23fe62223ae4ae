//! The extended query protocol through shardpool with a small pool and several clients, so that consecutive
//! transactions of one client really run on different servers: prepared statements (renamed and prepared lazily on
//! whichever server a client gets), pipelining (with errors in the middle, compared with Postgres itself), Close and
//! re-prepare, result-type changes under prepared statements, COPY both ways, a large streamed result, and the
//! asynchronous messages (NoticeResponse, NotificationResponse).
//!
//! tokio-postgres drives most of it. Its row and COPY-out streams need the `futures` traits, which this package does
//! not depend on, so results that must be read as a stream (COPY TO STDOUT, a 500k-row result) are read with a
//! minimal wire-protocol client (`raw`, SCRAM login included) against the proxy and against Postgres alike.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::{eventually, sqlstate, Backend, TestProxy};
use tokio::time::timeout;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

const LIMIT: Duration = Duration::from_secs(30);

/// Every test runs under this bound, so a hang fails the test instead of stalling the suite.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(std::time::Duration::from_secs(240), test)
        .await
        .expect("test did not finish within 240 s");
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls every future, in order, until all are done (`futures::future::join_all` without the dependency). Polling in
/// order matters: tokio-postgres sends a request when its future is first polled, so this pipelines them in order.
async fn join_all<F: Future + Unpin>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs = futs;
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match Pin::new(&mut *f).poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

async fn pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn pool_row(proxy: &TestProxy) -> std::collections::HashMap<String, String> {
    proxy
        .admin("SHOW POOLS")
        .await
        .into_iter()
        .find(|p| p["database"] == common::DB && p["user"] == "app")
        .expect("pool for app/appdb")
}

fn num(row: &std::collections::HashMap<String, String>, col: &str) -> usize {
    row[col].parse().unwrap()
}

async fn sv_active_becomes(proxy: &TestProxy, n: usize) {
    eventually(LIMIT, &format!("SHOW POOLS: sv_active = {n}"), || async {
        num(&pool_row(proxy).await, "sv_active") == n
    })
    .await;
}

/// A client whose connection task hands over notices and notifications (`Connection::poll_message`).
async fn connect_with_messages(
    url: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    (client, rx)
}

/// Background load: clients running their own prepared statements until told to stop, checking every result.
fn background_load(
    clients: Vec<Client>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                // Client 0 prepares the very text the main client uses: the server-side statement is shared.
                let same = c
                    .prepare("SELECT $1::int + 1, pg_backend_pid()")
                    .await
                    .unwrap();
                let own = c
                    .prepare(&format!("SELECT $1::int * {}", k + 2))
                    .await
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = n as i32;
                    if k == 0 {
                        let r = c.query_one(&same, &[&i]).await.unwrap();
                        assert_eq!(r.get::<_, i32>(0), i + 1);
                    }
                    let r = c.query_one(&own, &[&i]).await.unwrap();
                    assert_eq!(r.get::<_, i32>(0), i * (k as i32 + 2));
                    n += 1;
                }
                n
            })
        })
        .collect()
}

async fn stop_load(stop: &AtomicBool, load: Vec<tokio::task::JoinHandle<u64>>) {
    stop.store(true, Ordering::Relaxed);
    for h in load {
        let n = timeout(LIMIT, h).await.unwrap().unwrap();
        assert!(n > 0, "a background client never got to run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_work_across_server_switches() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(proxy.connect().await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let load = background_load(others, &stop);

        let x = proxy.connect().await;
        let add = x
            .prepare("SELECT $1::int + 1, pg_backend_pid()")
            .await
            .unwrap();
        let concat = x
            .prepare("SELECT $1::text || '-' || $2::text")
            .await
            .unwrap();
        // Two more clients that, at one point, each hold one of the two servers in a transaction and let go of one
        // at a time: X's next transaction then has to run on that one. This makes sure X uses both servers,
        // whatever the background load does.
        let (h1, h2) = (proxy.connect().await, proxy.connect().await);
        let mut pids = BTreeSet::new();
        for i in 0..200i32 {
            let forced = match i {
                100 => {
                    h1.batch_execute("BEGIN").await.unwrap();
                    h2.batch_execute("BEGIN").await.unwrap();
                    h1.batch_execute("COMMIT").await.unwrap();
                    Some(&h2)
                }
                101 => {
                    h1.batch_execute("BEGIN").await.unwrap();
                    h2.batch_execute("COMMIT").await.unwrap();
                    Some(&h1)
                }
                _ => None,
            };
            let held = match forced {
                Some(h) => Some(pid(h).await),
                None => None,
            };
            let row = timeout(LIMIT, x.query_one(&add, &[&i]))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), i + 1);
            if let Some(held) = held {
                assert_ne!(
                    row.get::<_, i32>(1),
                    held,
                    "X ran on the server it could get"
                );
            }
            if i == 101 {
                h1.batch_execute("COMMIT").await.unwrap();
            }
            pids.insert(row.get::<_, i32>(1));
            if i % 7 == 0 {
                let s = i.to_string();
                let row = x.query_one(&concat, &[&s, &"x"]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("{i}-x"));
            }
        }
        stop_load(&stop, load).await;
        assert!(
            pids.len() >= 2,
            "the client's transactions all ran on one server ({pids:?}): nothing was tested"
        );
        sv_active_becomes(&proxy, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_come_back_in_order() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = background_load(vec![proxy.connect().await, proxy.connect().await], &stop);
        let c = proxy.connect().await;

        // One prepared statement, 100 executions in flight at once.
        let double = c.prepare("SELECT $1::int * 2").await.unwrap();
        let futs: Vec<BoxFut<'_, i32>> = (0..100i32)
            .map(|i| {
                let (c, double) = (&c, &double);
                Box::pin(async move { c.query_one(double, &[&i]).await.unwrap().get::<_, i32>(0) })
                    as BoxFut<'_, i32>
            })
            .collect();
        let got = timeout(LIMIT, join_all(futs)).await.unwrap();
        assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>());

        // Unprepared texts (each a Parse/Describe/Sync, then Bind/Execute/Sync, then Close), simple queries and
        // prepared statements, all interleaved.
        let futs: Vec<BoxFut<'_, String>> = (0..60i32)
            .map(|i| {
                let (c, double) = (&c, &double);
                let f: BoxFut<'_, String> = match i % 3 {
                    0 => Box::pin(async move {
                        let s = format!("t{i}");
                        let r = c
                            .query_one("SELECT $1::int + 1000, $2::text", &[&i, &s])
                            .await
                            .unwrap();
                        format!("{}:{}", r.get::<_, i32>(0), r.get::<_, String>(1))
                    }),
                    1 => Box::pin(async move {
                        let msgs = c
                            .simple_query(&format!("SELECT {i} AS v; SELECT 'second'"))
                            .await
                            .unwrap();
                        msgs.iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => {
                                    Some(r.get(0).unwrap().to_owned())
                                }
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    }),
                    _ => Box::pin(async move {
                        c.query_one(double, &[&i])
                            .await
                            .unwrap()
                            .get::<_, i32>(0)
                            .to_string()
                    }),
                };
                f
            })
            .collect();
        let got = timeout(LIMIT, join_all(futs)).await.unwrap();
        let want: Vec<String> = (0..60)
            .map(|i| match i % 3 {
                0 => format!("{}:t{i}", i + 1000),
                1 => format!("{i},second"),
                _ => (i * 2).to_string(),
            })
            .collect();
        assert_eq!(got, want);

        // A pipeline inside a transaction runs in order on one server: each count sees exactly the inserts before it.
        c.batch_execute("CREATE TABLE pl (i int); BEGIN")
            .await
            .unwrap();
        let insert = c.prepare("INSERT INTO pl VALUES ($1)").await.unwrap();
        let count = c.prepare("SELECT count(*)::int FROM pl").await.unwrap();
        let futs: Vec<BoxFut<'_, i32>> = (0..40i32)
            .map(|i| {
                let (c, insert, count) = (&c, &insert, &count);
                let f: BoxFut<'_, i32> = if i % 2 == 0 {
                    Box::pin(async move { c.execute(insert, &[&i]).await.unwrap() as i32 })
                } else {
                    Box::pin(async move { c.query_one(count, &[]).await.unwrap().get::<_, i32>(0) })
                };
                f
            })
            .collect();
        let got = timeout(LIMIT, join_all(futs)).await.unwrap();
        let want: Vec<i32> = (0..40)
            .map(|i| if i % 2 == 0 { 1 } else { (i + 1) / 2 })
            .collect();
        assert_eq!(got, want);
        c.batch_execute("COMMIT").await.unwrap();
        stop_load(&stop, load).await;
    })
    .await;
}

/// Runs the same pipeline (prepared and unprepared statements, with errors in the middle) and returns each
/// statement's outcome: its value or its SQLSTATE.
async fn error_pipeline(c: &Client, in_transaction: bool) -> Vec<Result<i32, String>> {
    let div = c.prepare("SELECT $1::int / $2::int").await.unwrap();
    if in_transaction {
        c.batch_execute("BEGIN").await.unwrap();
    }
    fn prepared<'a>(
        c: &'a Client,
        s: &'a Statement,
        a: i32,
        b: i32,
    ) -> BoxFut<'a, Result<i32, String>> {
        Box::pin(async move {
            c.query_one(s, &[&a, &b])
                .await
                .map(|r| r.get::<_, i32>(0))
                .map_err(|e| sqlstate(&e))
        })
    }
    fn text<'a>(c: &'a Client, sql: &'static str) -> BoxFut<'a, Result<i32, String>> {
        Box::pin(async move {
            c.query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i32>(0))
                .map_err(|e| sqlstate(&e))
        })
    }
    let calls = vec![
        prepared(c, &div, 10, 2),
        prepared(c, &div, 1, 0),
        prepared(c, &div, 9, 3),
        text(c, "SELECT 1/0"),
        text(c, "SELEC 1"),
        text(c, "SELECT 7"),
        text(c, "SELEC 1"),
        prepared(c, &div, 8, 4),
        text(c, "SELECT 1/0"),
        text(c, "SELECT 8"),
    ];
    let out = timeout(LIMIT, join_all(calls)).await.unwrap();
    if in_transaction {
        let e = c.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e), "25P02", "the transaction is aborted");
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    let after: i32 = c.query_one("SELECT 42", &[]).await.unwrap().get(0);
    assert_eq!(after, 42, "usable after the failed pipeline");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_a_pipeline_behave_as_on_postgres() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = background_load(vec![proxy.connect().await], &stop);
        let direct = common::connect(&backend.direct_url()).await;
        let via_proxy = proxy.connect().await;

        for in_transaction in [false, true] {
            let want = error_pipeline(&direct, in_transaction).await;
            // Sanity of the reference itself: the failing statement gets 22012.
            assert_eq!(want[1], Err("22012".to_owned()));
            if !in_transaction {
                assert_eq!(want[0], Ok(5));
                assert_eq!(want[2], Ok(3));
            } else {
                // Statements after the error fail with 25P02, except that a syntax error is still reported as such
                // (Postgres parses before it checks the transaction state).
                assert_eq!(want[2], Err("25P02".to_owned()));
                assert_eq!(want[4], Err("42601".to_owned()));
            }
            for round in 0..3 {
                let got = error_pipeline(&via_proxy, in_transaction).await;
                assert_eq!(
                    got, want,
                    "in_transaction={in_transaction} round {round}: proxy differs from Postgres"
                );
            }
        }
        stop_load(&stop, load).await;
        sv_active_becomes(&proxy, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_reprepare_and_shared_statement_text() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = background_load(vec![proxy.connect().await, proxy.connect().await], &stop);
        let a = proxy.connect().await;
        let b = proxy.connect().await;
        const TEXT: &str = "SELECT $1::int * 3, pg_backend_pid()";

        // Dropping a Statement sends Close; preparing the same text again works, again and again.
        for round in 0..20i32 {
            let s = a.prepare(TEXT).await.unwrap();
            let r = a.query_one(&s, &[&round]).await.unwrap();
            assert_eq!(r.get::<_, i32>(0), round * 3);
            drop(s);
        }

        // Two clients prepare the same text: each works, across servers, and one closing it does not affect the other.
        let sa = a.prepare(TEXT).await.unwrap();
        let sb = b.prepare(TEXT).await.unwrap();
        let mut pids = BTreeSet::new();
        for i in 0..50i32 {
            // Every other round A holds its server in a transaction, so B's statement runs on the other one.
            if i % 2 == 0 {
                a.batch_execute("BEGIN").await.unwrap();
            }
            let ra = a.query_one(&sa, &[&i]).await.unwrap();
            let rb = b.query_one(&sb, &[&(i + 1)]).await.unwrap();
            if i % 2 == 0 {
                a.batch_execute("COMMIT").await.unwrap();
                assert_ne!(ra.get::<_, i32>(1), rb.get::<_, i32>(1));
            }
            assert_eq!(ra.get::<_, i32>(0), i * 3);
            assert_eq!(rb.get::<_, i32>(0), (i + 1) * 3);
            pids.insert(ra.get::<_, i32>(1));
            pids.insert(rb.get::<_, i32>(1));
        }
        assert!(pids.len() >= 2, "no server switch happened: {pids:?}");
        drop(sa);
        for i in 0..30i32 {
            let rb = b.query_one(&sb, &[&i]).await.unwrap();
            assert_eq!(
                rb.get::<_, i32>(0),
                i * 3,
                "B's statement survives A's Close"
            );
            let ra = a.query_one("SELECT $1::int - 1", &[&i]).await.unwrap();
            assert_eq!(ra.get::<_, i32>(0), i - 1);
        }
        let sa = a.prepare(TEXT).await.unwrap();
        let ra = a.query_one(&sa, &[&5i32]).await.unwrap();
        assert_eq!(ra.get::<_, i32>(0), 15);
        stop_load(&stop, load).await;

        // A client statement name reused after Close, and DEALLOCATE of a protocol-level statement, byte for byte as
        // Postgres answers them.
        let script = |port: u16| async move {
            let mut r = raw::Raw::connect(port, "app", "secret", common::DB).await;
            let mut out = Vec::new();
            r.parse("stmt", "SELECT 'first'").await;
            r.bind_execute("stmt").await;
            r.sync().await;
            out.extend(r.replies().await);
            r.close_statement("stmt").await;
            r.sync().await;
            out.extend(r.replies().await);
            r.parse("stmt", "SELECT 'second'").await;
            r.bind_execute("stmt").await;
            r.sync().await;
            out.extend(r.replies().await);
            r.send_query("DEALLOCATE stmt").await;
            out.extend(r.replies().await);
            r.bind_execute("stmt").await;
            r.sync().await;
            out.extend(r.replies().await);
            r.parse("stmt", "SELECT 'third'").await;
            r.bind_execute("stmt").await;
            r.sync().await;
            out.extend(r.replies().await);
            out
        };
        let want = script(backend.pg.port()).await;
        assert!(want.iter().any(|m| m.contains("C26000")), "{want:?}");
        assert!(want.iter().any(|m| m.contains("second")), "{want:?}");
        let got = script(proxy.port).await;
        assert_eq!(got, want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_no_longer_prepares_fails_with_the_real_error_on_every_server() {
    bounded(async {
        let backend = Backend::start().await;
        let direct_admin = common::connect(&backend.direct_url()).await;
        direct_admin
            .batch_execute("CREATE TABLE gone (a int)")
            .await
            .unwrap();
        let direct = common::connect(&backend.direct_url()).await;
        let old = direct.prepare("SELECT a FROM gone").await.unwrap();

        let proxy = backend.proxy("pool_size = 2").await;
        let a = proxy.connect().await;
        let b = proxy.connect().await;
        a.batch_execute("BEGIN").await.unwrap();
        let s = a.prepare("SELECT a FROM gone").await.unwrap();
        let prepared_on = pid(&a).await;
        a.batch_execute("COMMIT").await.unwrap();
        direct_admin.batch_execute("DROP TABLE gone").await.unwrap();

        // Postgres: executing the statement now fails with 42P01.
        let e = direct.query(&old, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42P01");

        // B holds the server where A prepared the statement, so A runs on the other one, where shardpool must prepare
        // it first (and that fails).
        b.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            pid(&b).await,
            prepared_on,
            "B got the server A just returned"
        );
        for round in 0..2 {
            let e = a.query(&s, &[]).await.unwrap_err();
            assert_eq!(sqlstate(&e), "42P01", "round {round}, lazily prepared: {e}");
            assert_ne!(pid(&a).await, prepared_on);
        }
        b.batch_execute("COMMIT").await.unwrap();
        // On any server, including the one holding the statement.
        a.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("BEGIN").await.unwrap();
        for c in [&a, &b] {
            let s = c.prepare("SELECT 1 FROM pg_class LIMIT 1").await.unwrap();
            assert_eq!(c.query(&s, &[]).await.unwrap().len(), 1);
        }
        let e = a.query(&s, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42P01");
        a.batch_execute("ROLLBACK").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        for _ in 0..4 {
            let e = a.query(&s, &[]).await.unwrap_err();
            assert_eq!(sqlstate(&e), "42P01");
            let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1);
        }
        sv_active_becomes(&proxy, 0).await;
    })
    .await;
}

/// Table `t (a, b)` with one row (1, 2); two proxy clients on a pool of two, each with `SELECT * FROM t` prepared and
/// executed on its own server (so both pooled servers hold the statement); then `t` gains a column `c` (3).
async fn both_servers_hold_a_statement_whose_result_type_changes(
    backend: &Backend,
    proxy: &TestProxy,
) -> (Client, Client, Statement, Statement) {
    let direct = common::connect(&backend.direct_url()).await;
    direct
        .batch_execute("CREATE TABLE t (a int, b int); INSERT INTO t VALUES (1, 2)")
        .await
        .unwrap();
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    let sa = a.prepare("SELECT * FROM t").await.unwrap();
    let sb = b.prepare("SELECT * FROM t").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let ra = a.query(&sa, &[]).await.unwrap();
    let rb = b.query(&sb, &[]).await.unwrap();
    assert_eq!((ra[0].len(), rb[0].len()), (2, 2));
    assert_ne!(
        pid(&a).await,
        pid(&b).await,
        "both servers hold the statement"
    );
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    direct
        .batch_execute("ALTER TABLE t ADD COLUMN c int DEFAULT 3")
        .await
        .unwrap();
    (a, b, sa, sb)
}

/// Prepares `SELECT * FROM t` afresh on both pooled servers (two clients in concurrent transactions) and checks each
/// sees the new column.
async fn fresh_prepare_on_both_servers(a: &Client, b: &Client) {
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    assert_ne!(pid(a).await, pid(b).await);
    for (who, c) in [("a", a), ("b", b)] {
        let fresh = c
            .prepare("SELECT * FROM t")
            .await
            .unwrap_or_else(|e| panic!("client {who}: fresh prepare after the ALTER: {e:?}"));
        assert_eq!(fresh.columns().len(), 3, "client {who}");
        let rows = c.query(&fresh, &[]).await.unwrap();
        let row = &rows[0];
        assert_eq!(
            (
                row.get::<_, i32>(0),
                row.get::<_, i32>(1),
                row.get::<_, i32>(2)
            ),
            (1, 2, 3),
            "client {who}"
        );
    }
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
}

/// What Postgres itself does (the reference for the tests below): a statement prepared before `ALTER TABLE ... ADD
/// COLUMN` fails with 0A000 "cached plan must not change result type" on every later execution, not just once; a
/// fresh prepare of the same text, before or after those errors, sees the new column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_type_change_on_postgres_itself() {
    bounded(async {
        let backend = Backend::start().await;
        let admin = common::connect(&backend.direct_url()).await;
        admin
            .batch_execute("CREATE TABLE t (a int, b int); INSERT INTO t VALUES (1, 2)")
            .await
            .unwrap();
        let direct = common::connect(&backend.direct_url()).await;
        let old = direct.prepare("SELECT * FROM t").await.unwrap();
        assert_eq!(direct.query(&old, &[]).await.unwrap()[0].len(), 2);
        admin
            .batch_execute("ALTER TABLE t ADD COLUMN c int DEFAULT 3")
            .await
            .unwrap();
        let fresh = direct.prepare("SELECT * FROM t").await.unwrap();
        assert_eq!(
            fresh.columns().len(),
            3,
            "fresh prepare right after the ALTER"
        );
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(
                direct
                    .query(&old, &[])
                    .await
                    .map(|r| r.len())
                    .map_err(|e| sqlstate(&e)),
            );
        }
        assert_eq!(outcomes, vec![Err("0A000".to_owned()); 3]);
        let fresh = direct.prepare("SELECT * FROM t").await.unwrap();
        let rows = direct.query(&fresh, &[]).await.unwrap();
        assert_eq!(rows[0].len(), 3);
    })
    .await;
}

/// Through the proxy: the first execution of the old statement fails as on Postgres, and a fresh prepare of the same
/// text afterwards sees the new column on every server, including the one that never reported the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_type_change_then_fresh_prepare_works_on_every_server() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let (a, b, sa, _sb) =
            both_servers_hold_a_statement_whose_result_type_changes(&backend, &proxy).await;
        // The old statement and the next transaction's BEGIN pipelined: the BEGIN reaches the proxy before the error
        // does, so the new transaction runs on the server that reported the change without it being lent again.
        let mut outcomes = timeout(
            LIMIT,
            join_all(vec![
                Box::pin(async { a.query(&sa, &[]).await.map(|_| ()) })
                    as BoxFut<'_, Result<(), tokio_postgres::Error>>,
                Box::pin(a.batch_execute("BEGIN")),
            ]),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.map_err(|e| sqlstate(&e)));
        assert_eq!(
            outcomes.next(),
            Some(Err("0A000".to_owned())),
            "as on Postgres"
        );
        assert_eq!(outcomes.next(), Some(Ok(())));
        b.batch_execute("BEGIN").await.unwrap();
        assert_ne!(pid(&a).await, pid(&b).await);
        for (who, c) in [("a", &a), ("b", &b)] {
            let fresh = c
                .prepare("SELECT * FROM t")
                .await
                .unwrap_or_else(|e| panic!("client {who}: fresh prepare after the error: {e:?}"));
            assert_eq!(fresh.columns().len(), 3, "client {who}");
            let rows = c.query(&fresh, &[]).await.unwrap();
            assert_eq!(rows[0].get::<_, i32>(2), 3, "client {who}");
        }
        a.batch_execute("COMMIT").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        fresh_prepare_on_both_servers(&a, &b).await;
        // And again later, from new clients too.
        let c = proxy.connect().await;
        let d = proxy.connect().await;
        fresh_prepare_on_both_servers(&c, &d).await;
    })
    .await;
}

/// Through the proxy, the old statement keeps being executed: no worse than Postgres, which fails it with 0A000
/// every time. Every failure must be that 0A000, and any rows returned must be what the client's statement
/// describes (two int columns).
///
/// KNOWN BUG (fails at the time of writing): after the first 0A000 shardpool treats every statement prepared before
/// as stale and, at the next execution, closes and prepares the old statement again from its text, which now yields
/// three columns while the client was told two (tokio-postgres: "DataRow field count does not match the number of
/// columns"; a client decoding by position could misread a changed column silently). Postgres keeps failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limitation (docs/compatibility.md): once another client refreshed the shared server-side copy, a \
            statement described before the DDL is not detected; run with --ignored to see it"]
async fn result_type_change_old_statement_is_no_worse_than_on_postgres() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let (a, b, sa, sb) =
            both_servers_hold_a_statement_whose_result_type_changes(&backend, &proxy).await;
        let mut errors = 0;
        for round in 0..4 {
            for (who, c, s) in [("a", &a, &sa), ("b", &b, &sb)] {
                match c.query(s, &[]).await {
                    Err(e) => {
                        assert_eq!(sqlstate(&e), "0A000", "client {who} round {round}: {e:?}");
                        errors += 1;
                    }
                    Ok(rows) => {
                        let row = &rows[0];
                        assert_eq!(
                            (rows.len(), row.get::<_, i32>(0), row.get::<_, i32>(1)),
                            (1, 1, 2),
                            "client {who} round {round}"
                        );
                    }
                }
            }
        }
        assert!(errors >= 1, "the change of result type must be reported");
    })
    .await;
}

/// Through the proxy: a fresh prepare right after the ALTER (before anyone executed the old statement) works on every
/// server, as it does on Postgres.
///
/// KNOWN BUG (fails at the time of writing): a client's Parse of a text the server already holds is answered without
/// parsing again, so the Describe that follows runs against the server's stale statement and fails with 0A000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_type_change_fresh_prepare_right_after_the_change_works() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let (a, b, _sa, _sb) =
            both_servers_hold_a_statement_whose_result_type_changes(&backend, &proxy).await;
        fresh_prepare_on_both_servers(&a, &b).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_copy_out_round_trip() {
    bounded(async {
    let backend = Backend::start().await;
    let direct = common::connect(&backend.direct_url()).await;
    direct
        .batch_execute(
            "CREATE TABLE src (id int PRIMARY KEY, t text); CREATE TABLE ref (id int PRIMARY KEY, t text); \
             CREATE TABLE dst (id int PRIMARY KEY, t text)",
        )
        .await
        .unwrap();
    let proxy = backend.proxy("pool_size = 2").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(vec![proxy.connect().await], &stop);
    let c = proxy.connect().await;

    // Awkward text on purpose: COPY escapes, a NULL, multibyte characters, long values.
    let value = |i: i32| -> Option<String> {
        match i % 5 {
            0 => None,
            1 => Some(format!("tab\there\nnewline \\ backslash {i}")),
            2 => Some(format!("ünïcødé ✓ {i}")),
            3 => Some("x".repeat((i % 997) as usize)),
            _ => Some(i.to_string()),
        }
    };
    // COPY FROM STDIN through the proxy (binary, with tokio-postgres' writer), and the same rows directly.
    for (client, table) in [(&c, "src"), (&direct, "ref")] {
        let sink = client
            .copy_in(&format!("COPY {table} (id, t) FROM STDIN (FORMAT binary)"))
            .await
            .unwrap();
        let writer =
            tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT]);
        let mut writer = std::pin::pin!(writer);
        for i in 1..=10_000i32 {
            let v = value(i);
            writer.as_mut().write(&[&i, &v]).await.unwrap();
        }
        let n = timeout(LIMIT, writer.finish()).await.unwrap().unwrap();
        assert_eq!(n, 10_000, "{table}");
    }
    let diff: i64 = direct
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM ref) x) \
                  + (SELECT count(*) FROM (SELECT * FROM ref EXCEPT SELECT * FROM src) y) \
                  + abs((SELECT count(*) FROM src) - 10000)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        diff, 0,
        "COPY IN through the proxy stored exactly the rows sent"
    );

    // COPY TO STDOUT through the proxy: byte for byte what Postgres sends, in text and binary.
    for format in ["text", "binary"] {
        let sql = format!("COPY (SELECT * FROM src ORDER BY id) TO STDOUT (FORMAT {format})");
        let mut via = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
        let mut dir = raw::Raw::connect(backend.pg.port(), "app", "secret", common::DB).await;
        let got = timeout(LIMIT, via.copy_out(&sql)).await.unwrap();
        let want = timeout(LIMIT, dir.copy_out(&sql)).await.unwrap();
        assert!(
            got == want,
            "{format}: COPY OUT differs ({} vs {} bytes)",
            got.len(),
            want.len()
        );
        if format == "text" {
            let text = String::from_utf8(got.clone()).unwrap();
            assert_eq!(text.lines().count(), 10_000);
            assert!(
                text.starts_with("1\ttab\\there\\nnewline \\\\ backslash 1\n"),
                "{}",
                &text[..60]
            );
            assert!(text.contains("\n5\t\\N\n"));
            // And back in through the proxy with COPY FROM STDIN (text), in chunks that cut rows anywhere.
            let n = timeout(LIMIT, via.copy_in("COPY dst FROM STDIN", &got, 7_919))
                .await
                .unwrap();
            assert_eq!(n, "COPY 10000");
        }
        assert_eq!(via.query("SELECT 'usable'").await, ["usable"]);
    }
    let diff: i64 = direct
        .query_one(
            "SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM dst) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let n: i64 = direct
        .query_one("SELECT count(*) FROM dst", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (diff, n),
        (0, 10_000),
        "round trip through COPY OUT and COPY IN"
    );

    // A COPY FROM STDIN the client aborts (CopyFail) fails as on Postgres and leaves the connection usable.
    for port in [proxy.port, backend.pg.port()] {
        let mut r = raw::Raw::connect(port, "app", "secret", common::DB).await;
        let replies = timeout(
            LIMIT,
            r.copy_fail("COPY dst FROM STDIN", b"20001\tpartial\n"),
        )
        .await
        .unwrap();
        assert!(replies.iter().any(|m| m.contains("C57014")), "{replies:?}");
        assert_eq!(r.query("SELECT count(*) FROM dst").await, ["10000"]);
    }
    stop_load(&stop, load).await;
    sv_active_becomes(&proxy, 0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_result_streams_through_and_the_server_comes_back() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = background_load(vec![proxy.connect().await], &stop);

        // 500k rows of ~45 bytes, read as a stream by a raw client (nothing buffered on the client side).
        let mut r = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
        r.send_query("SELECT g, md5(g::text) FROM generate_series(1, 500000) g")
            .await;
        let (mut count, mut sum) = (0u64, 0u64);
        let mut first_md5 = None;
        let tag = timeout(Duration::from_secs(120), async {
            loop {
                let (tag, body) = r.next().await;
                match tag {
                    b'D' => {
                        let cols = raw::data_row(&body);
                        let g: u64 = cols[0].as_deref().unwrap().parse().unwrap();
                        count += 1;
                        sum += g;
                        if g == 1 {
                            first_md5 = cols[1].clone();
                        }
                    }
                    b'T' => {}
                    b'C' => return String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
                    other => panic!("unexpected {:?}", other as char),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(tag, "SELECT 500000");
        assert_eq!(count, 500_000);
        assert_eq!(sum, 500_000 * 500_001 / 2);
        assert_eq!(
            first_md5.as_deref(),
            Some("c4ca4238a0b923820dcc509a6f75849b")
        );
        let (z, _) = r.next().await;
        assert_eq!(z, b'Z');

        // The same through tokio-postgres in portal chunks (Execute with a row limit, PortalSuspended between them).
        let mut c = proxy.connect().await;
        let tx = c.transaction().await.unwrap();
        let portal = tx
            .bind("SELECT g::bigint FROM generate_series(1, 500000) g", &[])
            .await
            .unwrap();
        let (mut count, mut sum) = (0i64, 0i64);
        loop {
            let rows = timeout(LIMIT, tx.query_portal(&portal, 50_000))
                .await
                .unwrap()
                .unwrap();
            for row in &rows {
                sum += row.get::<_, i64>(0);
            }
            count += rows.len() as i64;
            if rows.len() < 50_000 {
                break;
            }
        }
        tx.commit().await.unwrap();
        assert_eq!((count, sum), (500_000, 500_000 * 500_001 / 2));

        stop_load(&stop, load).await;
        // Every server is back in the pool once the results are delivered.
        sv_active_becomes(&proxy, 0).await;
        assert_eq!(r.query("SELECT 'after'").await, ["after"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_client() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let (c, mut messages) = connect_with_messages(&proxy.app_url()).await;

        c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 1; END $$")
            .await
            .unwrap();
        c.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 2; END $$", &[])
            .await
            .unwrap();
        // A notice in the middle of a result, from a function called per row.
        c.batch_execute(
            "CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN IF i = 3 THEN RAISE NOTICE 'row %', i; END IF; RETURN i; END $$",
        )
        .await
        .unwrap();
        let rows = c
            .query("SELECT noisy(g) FROM generate_series(1, 5) g", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
        let mut got = Vec::new();
        for _ in 0..3 {
            match timeout(LIMIT, messages.recv()).await.unwrap().unwrap() {
                AsyncMessage::Notice(n) => {
                    got.push((n.severity().to_owned(), n.message().to_owned()))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            got,
            [
                ("NOTICE".to_owned(), "hello 1".to_owned()),
                ("NOTICE".to_owned(), "hello 2".to_owned()),
                ("NOTICE".to_owned(), "row 3".to_owned()),
            ]
        );
        assert!(messages.try_recv().is_err(), "no other message");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_pins_the_listener_and_delivers() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let (listener, mut messages) =
            connect_with_messages(&format!("{}?application_name=listener", proxy.app_url())).await;
        let notifier = proxy.connect().await;

        listener.batch_execute("LISTEN chan").await.unwrap();
        let listener_pid = pid(&listener).await;
        // The notifier's transactions run on the other server while the listener sits idle on its own.
        notifier.batch_execute("NOTIFY chan, 'p1'").await.unwrap();
        notifier
            .query_one("SELECT pg_notify('chan', 'p2')", &[])
            .await
            .unwrap();
        notifier
            .batch_execute("BEGIN; NOTIFY chan, 'p3'; NOTIFY other, 'ignored'; COMMIT")
            .await
            .unwrap();
        notifier
            .batch_execute("BEGIN; NOTIFY chan, 'rolled back'; ROLLBACK")
            .await
            .unwrap();
        let notifier_pid = pid(&notifier).await;
        assert_ne!(notifier_pid, listener_pid);
        let mut got = Vec::new();
        for _ in 0..3 {
            match timeout(LIMIT, messages.recv()).await.unwrap().unwrap() {
                AsyncMessage::Notification(n) => {
                    assert_eq!(n.channel(), "chan");
                    assert_eq!(n.process_id(), notifier_pid);
                    got.push(n.payload().to_owned());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, ["p1", "p2", "p3"]);

        // While the listener is idle, its server stays lent to it.
        let clients = proxy.admin("SHOW CLIENTS").await;
        let l = clients
            .iter()
            .find(|c| c["application_name"] == "listener")
            .expect("listener in SHOW CLIENTS");
        assert!(!l["link"].is_empty(), "listener keeps its server: {l:?}");
        sv_active_becomes(&proxy, 1).await;
        let p = pool_row(&proxy).await;
        assert_eq!(num(&p, "sv_active"), 1, "{p:?}");

        // Still delivered later, and the listener's own queries run on its server.
        notifier.batch_execute("NOTIFY chan, 'p4'").await.unwrap();
        match timeout(LIMIT, messages.recv()).await.unwrap().unwrap() {
            AsyncMessage::Notification(n) => assert_eq!(n.payload(), "p4"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(pid(&listener).await, listener_pid);
        assert!(
            messages.try_recv().is_err(),
            "nothing from the rolled-back NOTIFY"
        );

        // Once the listener leaves, its server is cleaned (UNLISTEN by the reset) and returned.
        drop(listener);
        sv_active_becomes(&proxy, 0).await;
        let direct = common::connect(&backend.direct_url()).await;
        eventually(LIMIT, "no backend listening any more", || async {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'idle' \
                 AND query ILIKE 'LISTEN%'",
                    &[&listener_pid],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await;
    })
    .await;
}
