//! Session state under transaction pooling: settings a client makes (SET/RESET, startup options) follow that client
//! and only that client even when every client shares one server; a client that vanishes mid-transaction or
//! mid-result leaves nothing behind for the next one; session features (temp tables, session advisory locks,
//! SQL PREPARE) pin the server in the default mode and are refused with 0A000 in `session_features = "error"`.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw;

use std::time::Duration;

use common::{eventually, sqlstate, Backend, TestProxy};
use tokio::time::timeout;
use tokio_postgres::Client;

const LIMIT: Duration = Duration::from_secs(20);

/// Every test runs under this bound, so a hang fails the test instead of stalling the suite.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(std::time::Duration::from_secs(240), test)
        .await
        .expect("test did not finish within 240 s");
}

/// The settings this file plays with, as the server reports them, plus the server's backend pid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    application_name: String,
    timezone: String,
    search_path: String,
    work_mem: String,
    statement_timeout: String,
    /// Which `marker` table an unqualified name resolves to: search_path really in effect.
    marker: String,
    pid: i32,
}

impl Seen {
    fn without_pid(&self) -> Seen {
        Seen {
            pid: 0,
            ..self.clone()
        }
    }
}

async fn seen(c: &Client) -> Seen {
    let row = timeout(
        LIMIT,
        c.query_one(
            "SELECT current_setting('application_name'), current_setting('TimeZone'), \
             current_setting('search_path'), current_setting('work_mem'), current_setting('statement_timeout'), \
             (SELECT v FROM marker), pg_backend_pid()",
            &[],
        ),
    )
    .await
    .expect("query timed out")
    .unwrap();
    Seen {
        application_name: row.get(0),
        timezone: row.get(1),
        search_path: row.get(2),
        work_mem: row.get(3),
        statement_timeout: row.get(4),
        marker: row.get(5),
        pid: row.get(6),
    }
}

/// The hour of 2024-01-01 00:00 UTC in the session's time zone: the time zone really in effect.
async fn hour(c: &Client) -> String {
    c.query_one(
        "SELECT to_char(timestamptz '2024-01-01 00:00:00+00', 'HH24')",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Whether the 5M-row query of the mid-result test is still running on the server.
async fn still_running(direct: &Client) -> bool {
    // The pattern is split so this query's own text never matches it.
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%midresult' || '-marker%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    n > 0
}

async fn pool_row(proxy: &TestProxy) -> std::collections::HashMap<String, String> {
    let pools = proxy.admin("SHOW POOLS").await;
    pools
        .into_iter()
        .find(|p| p["database"] == common::DB && p["user"] == "app")
        .expect("pool for app/appdb")
}

fn num(row: &std::collections::HashMap<String, String>, col: &str) -> usize {
    row[col].parse().unwrap()
}

/// Waits until the app pool has no server lent and no client waiting.
async fn pool_settles(proxy: &TestProxy) {
    eventually(
        LIMIT,
        "SHOW POOLS: sv_active = 0, cl_waiting = 0",
        || async {
            let p = pool_row(proxy).await;
            num(&p, "sv_active") == 0 && num(&p, "cl_waiting") == 0
        },
    )
    .await;
}

async fn exec(c: &Client, sql: &str) {
    timeout(LIMIT, c.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: timed out"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// First column of every row of a simple-protocol query.
async fn simple_rows(c: &Client, sql: &str) -> Vec<String> {
    timeout(LIMIT, c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: timed out"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .collect()
}

async fn exec_err(c: &Client, sql: &str) -> String {
    let e = timeout(LIMIT, c.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: timed out"))
        .expect_err(sql);
    sqlstate(&e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_stay_with_their_client_on_a_shared_server() {
    bounded(async {
    let backend = Backend::start().await;
    let direct = common::connect(&backend.direct_url()).await;
    exec(
        &direct,
        "CREATE SCHEMA sa; CREATE TABLE public.marker (v text); INSERT INTO public.marker VALUES ('public'); \
         CREATE TABLE sa.marker (v text); INSERT INTO sa.marker VALUES ('sa')",
    )
    .await;
    // What a fresh session sees: the defaults every other client must keep seeing.
    let defaults = seen(&direct).await.without_pid();
    assert_eq!(defaults.marker, "public");
    assert_ne!(defaults.timezone, "Asia/Tokyo");

    let proxy = backend.proxy("pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    assert_eq!(seen(&b).await.without_pid(), defaults);

    // Simple and extended protocol SETs.
    exec(&a, "SET application_name = 'a'").await;
    a.execute("SET TIME ZONE 'Asia/Tokyo'", &[]).await.unwrap();
    exec(&a, "SET search_path TO sa, public").await;
    let a_values = Seen {
        application_name: "a".into(),
        timezone: "Asia/Tokyo".into(),
        search_path: "sa, public".into(),
        marker: "sa".into(),
        ..defaults.clone()
    };
    let a1 = seen(&a).await;
    assert_eq!(a1.without_pid(), a_values);
    let b1 = seen(&b).await;
    assert_eq!(
        b1.pid, a1.pid,
        "pool_size = 1: both clients share one server"
    );
    assert_eq!(
        b1.without_pid(),
        defaults,
        "B must not inherit A's settings"
    );
    for _ in 0..3 {
        assert_eq!(
            seen(&a).await.without_pid(),
            a_values,
            "A keeps its settings"
        );
        assert_eq!(seen(&b).await.without_pid(), defaults);
    }
    // A real effect of the time zone, not just the setting's text.
    assert_eq!(hour(&a).await, "09");

    // RESET one setting.
    exec(&a, "RESET TimeZone").await;
    let a_values = Seen {
        timezone: defaults.timezone.clone(),
        ..a_values
    };
    assert_eq!(seen(&a).await.without_pid(), a_values);
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.without_pid(), a_values);
    // SET ... TO DEFAULT is a reset too.
    exec(&a, "SET search_path TO DEFAULT").await;
    let a_values = Seen {
        search_path: defaults.search_path.clone(),
        marker: "public".into(),
        ..a_values
    };
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.without_pid(), a_values);

    // RESET ALL.
    exec(&a, "SET search_path TO sa; SET work_mem = '5MB'").await;
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.work_mem, "5MB");
    exec(&a, "RESET ALL").await;
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.without_pid(), defaults);

    // A SET in a transaction that rolls back is discarded (explicit ROLLBACK, and an error).
    exec(&a, "BEGIN").await;
    exec(&a, "SET work_mem = '7MB'").await;
    assert_eq!(seen(&a).await.work_mem, "7MB");
    exec(&a, "ROLLBACK").await;
    assert_eq!(seen(&a).await.without_pid(), defaults);
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(
        exec_err(&a, "BEGIN; SET work_mem = '8MB'; SELECT 1/0").await,
        "22012"
    );
    exec(&a, "ROLLBACK").await;
    assert_eq!(seen(&a).await.without_pid(), defaults);
    // A SET in a failed multi-statement implicit transaction is discarded too.
    assert_eq!(
        exec_err(&a, "SET work_mem = '6MB'; SELECT 1/0").await,
        "22012"
    );
    assert_eq!(seen(&a).await.without_pid(), defaults);
    assert_eq!(seen(&b).await.without_pid(), defaults);

    // ... and kept when it commits.
    exec(&a, "BEGIN").await;
    exec(&a, "SET work_mem = '9MB'").await;
    exec(&a, "COMMIT").await;
    let committed = Seen {
        work_mem: "9MB".into(),
        ..defaults.clone()
    };
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.without_pid(), committed);
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.without_pid(), committed);

    // SET LOCAL lasts until the end of its transaction only.
    exec(&a, "BEGIN; SET LOCAL work_mem = '11MB'").await;
    assert_eq!(seen(&a).await.work_mem, "11MB");
    exec(&a, "COMMIT").await;
    assert_eq!(seen(&a).await.without_pid(), committed);
    assert_eq!(seen(&b).await.without_pid(), defaults);

    // Startup options: seen by that client only, and what RESET returns to (as on a direct connection).
    let options = "options=-c%20statement_timeout%3D1234";
    let c = common::connect(&format!("{}?{options}", proxy.app_url())).await;
    let c_values = Seen {
        statement_timeout: "1234ms".into(),
        ..defaults.clone()
    };
    assert_eq!(seen(&c).await.without_pid(), c_values);
    assert_eq!(seen(&b).await.without_pid(), defaults);
    assert_eq!(seen(&a).await.without_pid(), committed);
    assert_eq!(seen(&c).await.without_pid(), c_values);
    let c_direct = common::connect(&format!("{}?{options}", backend.direct_url())).await;
    for conn in [&c, &c_direct] {
        exec(conn, "SET statement_timeout = 99").await;
        assert_eq!(seen(conn).await.statement_timeout, "99ms");
        exec(conn, "RESET statement_timeout").await;
        assert_eq!(seen(conn).await.statement_timeout, "1234ms");
        exec(conn, "SET statement_timeout = 99; RESET ALL").await;
        assert_eq!(seen(conn).await.statement_timeout, "1234ms");
    }
    // And the timeout really applies to C's statements, not B's.
    let e = timeout(LIMIT, c.batch_execute("SELECT pg_sleep(2)"))
        .await
        .unwrap()
        .expect_err("statement_timeout 1234ms must stop a 2 s sleep");
    assert_eq!(sqlstate(&e), "57014");
    timeout(LIMIT, b.batch_execute("SELECT pg_sleep(1.5)"))
        .await
        .unwrap()
        .expect("B has no statement_timeout");
    let final_b = seen(&b).await;
    let final_c = seen(&c).await;
    assert_eq!(final_b.pid, final_c.pid, "still one shared server");
    assert_eq!(final_b.without_pid(), defaults);
    assert_eq!(final_c.without_pid(), c_values);
    pool_settles(&proxy).await;
    })
    .await;
}

async fn advisory_locks_held(direct: &Client, key: i32) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1::int::oid AND granted",
            &[&key],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_transaction_rolls_back_and_frees_the_server() {
    bounded(async {
        let backend = Backend::start().await;
        let direct = common::connect(&backend.direct_url()).await;
        exec(&direct, "CREATE TABLE mt (x int)").await;
        let proxy = backend.proxy("pool_size = 1").await;

        // Three ways to vanish: a polite Terminate (client dropped), the socket closed with no Terminate, and the
        // socket closed with a reply still unread (the kernel then resets the connection: the proxy sees an error,
        // not an orderly end of stream).
        // And a fourth: gone while its server is still busy with a query (the proxy cancels and closes it).
        for how in ["terminate", "close", "reset", "busy"] {
            let a_pid: i32;
            if how == "busy" {
                let mut r = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
                r.query("BEGIN").await;
                r.query("INSERT INTO mt VALUES (1)").await;
                r.query("SELECT pg_advisory_xact_lock(1)").await;
                a_pid = r.query("SELECT pg_backend_pid()").await[0].parse().unwrap();
                r.send_query("SELECT pg_sleep(30)").await;
                eventually(LIMIT, "A's pg_sleep running", || async {
                    let n: i64 = direct
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE state = 'active' AND pid = $1 AND query LIKE 'SELECT pg_sleep%'",
                            &[&a_pid],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    n == 1
                })
                .await;
                drop(r);
            } else if how == "reset" {
                let mut r = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
                r.query("BEGIN").await;
                r.query("INSERT INTO mt VALUES (1)").await;
                r.query("SELECT pg_advisory_xact_lock(1)").await;
                a_pid = r.query("SELECT pg_backend_pid()").await[0].parse().unwrap();
                assert_eq!(advisory_locks_held(&direct, 1).await, 1, "A holds the lock");
                r.send_query("SELECT 'never read'").await;
                timeout(LIMIT, r.wait_for_unread_ready()).await.unwrap();
                drop(r);
            } else {
                let (a, conn) = tokio_postgres::connect(&proxy.app_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let conn_task = tokio::spawn(conn);
                exec(&a, "BEGIN; INSERT INTO mt VALUES (1)").await;
                a.query_one("SELECT pg_advisory_xact_lock(1)", &[])
                    .await
                    .unwrap();
                a_pid = a
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(advisory_locks_held(&direct, 1).await, 1, "A holds the lock");
                if how == "close" {
                    conn_task.abort();
                    assert!(conn_task.await.unwrap_err().is_cancelled());
                    drop(a);
                } else {
                    drop(a);
                    timeout(LIMIT, conn_task).await.unwrap().unwrap().unwrap();
                }
            }

            // The next client gets the single server (after the rollback): no row, no lock.
            let b = proxy.connect().await;
            let row = timeout(
                LIMIT,
                b.query_one(
                    "SELECT (SELECT count(*) FROM mt), pg_try_advisory_xact_lock(1)",
                    &[],
                ),
            )
            .await
            .expect("the other client must get the server")
            .unwrap();
            assert_eq!(
                row.get::<_, i64>(0),
                0,
                "{how}: A's insert must be rolled back"
            );
            assert!(row.get::<_, bool>(1), "{how}: A's lock must be gone");
            // A client that owed nothing when it vanished (the raw one had its last reply delivered in full) leaves a server that is merely idle in a transaction: rolled back and lent again,
            // not closed. (A tokio-postgres client may vanish with a Close/Sync of a dropped statement still
            // unanswered; then the proxy may close the server instead, which the checks above cover.)
            let b_pid: i32 = b
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            if how == "reset" {
                assert_eq!(
                    b_pid, a_pid,
                    "{how}: the single server is reused after a rollback"
                );
            }
            assert_eq!(advisory_locks_held(&direct, 1).await, 0);
            let n: i64 = direct
                .query_one("SELECT count(*) FROM mt", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0);
            pool_settles(&proxy).await;
            let p = pool_row(&proxy).await;
            assert!(num(&p, "sv_idle") + num(&p, "sv_used") <= 1, "{p:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_result_does_not_leave_a_dirty_server() {
    bounded(async {
        let backend = Backend::start().await;
        let direct = common::connect(&backend.direct_url()).await;
        let proxy = backend.proxy("pool_size = 1").await;

        let mut a = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
        let a_pid: i32 = a.query("SELECT pg_backend_pid()").await[0].parse().unwrap();
        a.send_query(
            "SELECT g, repeat('x', 200) FROM generate_series(1, 5000000) g /* midresult-marker */",
        )
        .await;
        let mut rows = 0;
        while rows < 1000 {
            let (tag, body) = timeout(LIMIT, a.next()).await.unwrap();
            match tag {
                b'D' => rows += 1,
                b'T' => {}
                other => panic!("unexpected {:?}: {body:?}", other as char),
            }
        }
        assert!(
            still_running(&direct).await,
            "the 5M-row query is still being sent"
        );
        drop(a);

        // Another client gets served within seconds and sees a clean server (right answer, nothing left over).
        let b = proxy.connect().await;
        let row = timeout(
            Duration::from_secs(10),
            b.query_one("SELECT 42::int, pg_backend_pid()", &[]),
        )
        .await
        .expect("the other client must be served within seconds")
        .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        for i in 0..5i32 {
            let r = b.query_one("SELECT $1::int", &[&i]).await.unwrap();
            assert_eq!(r.get::<_, i32>(0), i);
        }
        eventually(
            LIMIT,
            "the abandoned query is no longer running",
            || async { !still_running(&direct).await },
        )
        .await;
        // The abandoned server connection is either gone or idle (never still busy).
        let state: Vec<String> = direct
            .query(
                "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1",
                &[&a_pid],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            state.is_empty() || state == ["idle"],
            "server {a_pid} is {state:?}"
        );
        pool_settles(&proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_features_pin_the_server() {
    bounded(async {
        let backend = Backend::start().await;
        let direct = common::connect(&backend.direct_url()).await;
        let proxy = backend.proxy("pool_size = 4").await;
        let a = common::connect(&format!("{}?application_name=pinned-a", proxy.app_url())).await;
        let b = proxy.connect().await;

        // A temporary table lives on one server connection: the client that made it keeps that server.
        exec(&a, "CREATE TEMP TABLE tt (x int)").await;
        let a_pid: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        // B holds a server in a transaction. Had A's server gone back to the pool, B would have been given it (the pool
        // lends the most recently returned server first) and A's next transaction would run elsewhere.
        exec(&b, "BEGIN").await;
        let b_pid: i32 = b
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(a_pid, b_pid, "A's server stays A's");
        exec(&a, "INSERT INTO tt VALUES (1), (2)").await;
        let row = a
            .query_one("SELECT sum(x)::int, pg_backend_pid() FROM tt", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 3);
        assert_eq!(row.get::<_, i32>(1), a_pid);
        exec(&b, "COMMIT").await;
        // While A is idle its server is still lent to it.
        let clients = proxy.admin("SHOW CLIENTS").await;
        let a_row = clients
            .iter()
            .find(|c| c["application_name"] == "pinned-a")
            .expect("A in SHOW CLIENTS");
        assert!(!a_row["link"].is_empty(), "A keeps a server: {a_row:?}");
        let p = pool_row(&proxy).await;
        assert_eq!(num(&p, "sv_active"), 1, "only A's server is lent: {p:?}");

        // A session advisory lock is held across transactions, by the same session that can release it.
        let c = proxy.connect().await;
        exec(&c, "SELECT pg_advisory_lock(42)").await;
        let c_pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        for _ in 0..3 {
            exec(&b, "SELECT 1").await;
        }
        assert_eq!(advisory_locks_held(&direct, 42).await, 1);
        let free: bool = direct
            .query_one("SELECT pg_try_advisory_lock(42)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!free, "the lock is held by C's session");
        let row = c
            .query_one("SELECT pg_advisory_unlock(42), pg_backend_pid()", &[])
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "C's session still holds the lock it took"
        );
        assert_eq!(row.get::<_, i32>(1), c_pid);
        assert_eq!(advisory_locks_held(&direct, 42).await, 0);

        // SQL-level PREPARE: asserted behaviour is that in the default `session_features = "pin"` mode the statement is
        // prepared on the client's server, the client keeps that server, so EXECUTE works in later transactions, and
        // DEALLOCATE reaches the server (EXECUTE afterwards fails as on Postgres, 26000).
        let d = proxy.connect().await;
        assert_eq!(
            simple_rows(&d, "PREPARE p AS SELECT $1::int * 10; EXECUTE p(1)").await,
            ["10"]
        );
        for i in 2..5 {
            exec(&b, "SELECT 1").await;
            assert_eq!(
                simple_rows(&d, &format!("EXECUTE p({i})")).await,
                [(i * 10).to_string()]
            );
        }
        let via_extended: i32 = d.query_one("EXECUTE p(7)", &[]).await.unwrap().get(0);
        assert_eq!(via_extended, 70);
        exec(&d, "DEALLOCATE p").await;
        assert_eq!(exec_err(&d, "EXECUTE p(1)").await, "26000");

        // A pinned server is cleaned before anyone else gets it: its temp table is gone once A leaves.
        drop(a);
        drop(c);
        drop(d);
        eventually(
            LIMIT,
            "A's temp table dropped by the server reset",
            || async {
                let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_class WHERE relname = 'tt' AND relpersistence = 't'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
                n == 0
            },
        )
        .await;
        pool_settles(&proxy).await;
        let p = pool_row(&proxy).await;
        assert!(
            num(&p, "sv_idle") + num(&p, "sv_used") >= 1,
            "servers returned to the pool: {p:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_features_error_mode_refuses_with_0a000() {
    bounded(async {
        let backend = Backend::start().await;
        let direct = common::connect(&backend.direct_url()).await;
        let proxy = backend
            .proxy("pool_size = 1\nsession_features = \"error\"")
            .await;
        let x = proxy.connect().await;
        let y = proxy.connect().await;

        let refused = [
            "CREATE TEMP TABLE tt (x int)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock(1)",
            "LISTEN chan",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ];
        for sql in refused {
            // Simple protocol.
            assert_eq!(exec_err(&x, sql).await, "0A000", "{sql}");
            let one: i32 = x.query_one("SELECT 1", &[]).await.unwrap().get(0);
            assert_eq!(one, 1, "usable after {sql}");
            // Extended protocol.
            let e = timeout(LIMIT, x.query(sql, &[]))
                .await
                .unwrap()
                .expect_err(sql);
            assert_eq!(sqlstate(&e), "0A000", "{sql} (extended)");
            let two: i32 = x.query_one("SELECT 2", &[]).await.unwrap().get(0);
            assert_eq!(two, 2, "usable after extended {sql}");
            // Nothing happened on the server, and the single server is not stuck with X.
            let three: i32 = y.query_one("SELECT 3", &[]).await.unwrap().get(0);
            assert_eq!(three, 3);
        }
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "no advisory lock was taken");
        let n: i64 = direct
            .query_one("SELECT count(*) FROM pg_class WHERE relname = 'tt'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "no temp table was created");

        // Refused inside a transaction block: an error aborts the transaction, as any error does on Postgres.
        exec(&direct, "CREATE TABLE kept (x int)").await;
        exec(&x, "BEGIN; INSERT INTO kept VALUES (1)").await;
        assert_eq!(exec_err(&x, "CREATE TEMP TABLE tt (x int)").await, "0A000");
        assert_eq!(
            exec_err(&x, "INSERT INTO kept VALUES (2)").await,
            "25P02",
            "the transaction is aborted after the error"
        );
        exec(&x, "COMMIT").await; // on an aborted transaction COMMIT rolls back
        let n: i64 = direct
            .query_one("SELECT count(*) FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "nothing of the failed transaction is committed");
        let one: i32 = x.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);

        // Refused in the middle of an extended-protocol batch: the batch is one implicit transaction, so the INSERT
        // before the refused statement must be rolled back (as with any error before Sync), and nothing of it may
        // linger on the server for the next client.
        let mut r = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
        r.parse("", "INSERT INTO kept VALUES (3)").await;
        r.bind_execute("").await;
        r.parse("", "SELECT pg_advisory_lock(1)").await;
        r.bind_execute("").await;
        r.sync().await;
        let mut replies = Vec::new();
        loop {
            let (tag, body) = timeout(LIMIT, r.next()).await.unwrap();
            if tag == b'E' {
                let text = String::from_utf8_lossy(&body).into_owned();
                assert!(text.contains("C0A000"), "{text}");
            }
            replies.push(tag as char);
            if tag == b'Z' {
                assert_eq!(&body[..], b"I");
                break;
            }
        }
        assert_eq!(replies, ['1', '2', 'C', 'E', 'Z']);
        let n: i64 = direct
            .query_one("SELECT count(*) FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the INSERT of the failed batch is not committed");
        // The next client on the single server starts clean, and what it commits is only its own.
        exec(&y, "INSERT INTO kept VALUES (4)").await;
        let rows = simple_rows(&y, "SELECT string_agg(x::text, ',') FROM kept").await;
        assert_eq!(rows, ["4"]);
        let n: i64 = direct
            .query_one("SELECT count(*) FROM kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        // The raw client goes on normally too.
        assert_eq!(r.query("SELECT 'ok'").await, ["ok"]);
        pool_settles(&proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_parse_of_a_statement_that_pins_is_served() {
    // A named statement whose effect pins the server (LISTEN) adds no pending effect of its own: the session
    // must not assume it did (it once subtracted past zero and panicked).
    let backend = common::Backend::start().await;
    let proxy = backend.proxy("").await;
    let mut c = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    c.parse("listener", "LISTEN shardpool_named").await;
    c.bind_execute("listener").await;
    c.sync().await;
    let replies = tokio::time::timeout(std::time::Duration::from_secs(10), c.replies())
        .await
        .expect("no reply");
    assert_eq!(replies, ["1", "2", "C:LISTEN", "Z:I"]);
    assert_eq!(c.query("SELECT 1").await, ["1"]);
}
