//! Query cancellation through shardpool: a client's CancelRequest (sent to the proxy with the key the proxy gave it)
//! must cancel exactly that client's running query on whichever server runs it, nothing else; a wrong key or a
//! cancel of an idle client must cancel nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw;

use std::time::{Duration, Instant};

use common::{eventually, sqlstate, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_postgres::NoTls;

const LIMIT: Duration = Duration::from_secs(20);

/// Every test runs under this bound, so a hang fails the test instead of stalling the suite.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(std::time::Duration::from_secs(240), test)
        .await
        .expect("test did not finish within 240 s");
}

/// Whether a query whose text contains `marker` is running (state active) on the server, seen directly.
async fn running(direct: &tokio_postgres::Client, marker: &str) -> bool {
    // The pattern is split so this query's own text never matches it.
    let (head, tail) = marker.split_at(marker.len() / 2);
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%' || $1 || $2 || '%'",
            &[&head, &tail],
        )
        .await
        .unwrap()
        .get(0);
    n > 0
}

/// Sends a raw CancelRequest (16 bytes: length 16, code 80877102, pid, secret) and waits until the proxy has
/// handled it and closed the connection, so the caller knows the request was fully processed.
async fn raw_cancel(port: u16, pid: i32, secret: i32) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut pkt = Vec::with_capacity(16);
    pkt.extend_from_slice(&16i32.to_be_bytes());
    pkt.extend_from_slice(&80_877_102i32.to_be_bytes());
    pkt.extend_from_slice(&pid.to_be_bytes());
    pkt.extend_from_slice(&secret.to_be_bytes());
    s.write_all(&pkt).await.unwrap();
    let mut rest = Vec::new();
    let n = timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("proxy did not close the cancel connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "a CancelRequest gets no reply, got {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_only_the_cancelled_query() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let direct = common::connect(&backend.direct_url()).await;
        let victim = std::sync::Arc::new(proxy.connect().await);
        let bystander = std::sync::Arc::new(proxy.connect().await);

        let v = victim.clone();
        let long = tokio::spawn(async move {
            let r = v
                .simple_query("SELECT pg_sleep(30) /* victim-sleep */")
                .await;
            (r, Instant::now())
        });
        eventually(LIMIT, "victim's pg_sleep(30) running", || {
            running(&direct, "victim-sleep")
        })
        .await;
        let b = bystander.clone();
        let short = tokio::spawn(async move {
            b.query_one("SELECT pg_sleep(2) /* bystander-sleep */, 7::int", &[])
                .await
                .map(|r| r.get::<_, i32>(1))
        });
        eventually(LIMIT, "bystander's pg_sleep(2) running", || {
            running(&direct, "bystander-sleep")
        })
        .await;

        let cancelled_at = Instant::now();
        victim.cancel_token().cancel_query(NoTls).await.unwrap();
        let (result, ended) = timeout(LIMIT, long).await.unwrap().unwrap();
        let err = result.expect_err("the cancelled pg_sleep(30) must fail");
        assert_eq!(sqlstate(&err), "57014", "{err}");
        let took = ended.duration_since(cancelled_at);
        assert!(
            took < Duration::from_secs(5),
            "cancel took {took:?} to take effect"
        );

        // The other client's query on the other server was not touched.
        let seven = timeout(LIMIT, short).await.unwrap().unwrap();
        assert_eq!(seven.unwrap(), 7, "the bystander's query must complete");

        // The cancelled client goes on normally, and nothing is left running.
        let row = timeout(LIMIT, victim.query_one("SELECT 41 + 1", &[]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        assert!(!running(&direct, "victim-sleep").await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_a_wrong_key_cancels_nothing() {
    bounded(async {
        let backend = Backend::start().await;
        let proxy = backend.proxy("pool_size = 2").await;
        let direct = common::connect(&backend.direct_url()).await;
        let mut client = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
        let (pid, secret) = client.key;

        // A 2-second query, with CancelRequests carrying wrong keys (right pid with a wrong secret, a wrong pid with the
        // right secret, all zeros) sent while it runs: it must complete normally.
        let mut q = b"SELECT pg_sleep(2) /* wrongkey-sleep */, 'done'".to_vec();
        q.push(0);
        client.send(b'Q', &q).await;
        eventually(LIMIT, "pg_sleep(2) running", || {
            running(&direct, "wrongkey-sleep")
        })
        .await;
        raw_cancel(proxy.port, pid, secret.wrapping_add(1)).await;
        raw_cancel(proxy.port, pid ^ 0x5a5a, secret).await;
        raw_cancel(proxy.port, 0, 0).await;
        assert!(
            running(&direct, "wrongkey-sleep").await,
            "the cancel requests must have been handled while the query ran"
        );
        let mut got = Vec::new();
        loop {
            let (tag, body) = timeout(LIMIT, client.next()).await.unwrap();
            assert_ne!(tag, b'E', "a wrong-key cancel stopped the query: {body:?}");
            if tag == b'D' {
                got.push(body);
            }
            if tag == b'Z' {
                break;
            }
        }
        assert_eq!(got.len(), 1, "one row");
        assert!(got[0].ends_with(b"done"), "{:?}", got[0]);

        // The right key does cancel a query of this client: the wrong keys above were aimed at the right client.
        let mut q = b"SELECT pg_sleep(30) /* rightkey-sleep */".to_vec();
        q.push(0);
        client.send(b'Q', &q).await;
        eventually(LIMIT, "pg_sleep(30) running", || {
            running(&direct, "rightkey-sleep")
        })
        .await;
        // The right key does cancel it: the test above was aiming at the right client.
        raw_cancel(proxy.port, pid, secret).await;
        let code = timeout(Duration::from_secs(5), async {
            loop {
                let (tag, body) = client.next().await;
                if tag == b'E' {
                    return String::from_utf8_lossy(&body).into_owned();
                }
            }
        })
        .await
        .expect("the right key must cancel within 5 s");
        assert!(code.contains("C57014"), "error was {code:?}");
        let (tag, _) = timeout(LIMIT, client.next()).await.unwrap();
        assert_eq!(tag, b'Z');
        assert_eq!(client.query("SELECT 5").await, vec!["5"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_idle_client_is_harmless() {
    bounded(async {
        let backend = Backend::start().await;
        // One server: the idle client's last server is the very one the other client's query runs on.
        let proxy = backend.proxy("pool_size = 1").await;
        let direct = common::connect(&backend.direct_url()).await;
        let mut idle = raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
        let idle_pid = idle.query("SELECT pg_backend_pid()").await;
        let (pid, secret) = idle.key;

        let busy = std::sync::Arc::new(proxy.connect().await);
        let b = busy.clone();
        let sleeping = tokio::spawn(async move {
            b.query_one(
                "SELECT pg_sleep(3) /* idlecancel-sleep */, pg_backend_pid()",
                &[],
            )
            .await
            .map(|r| r.get::<_, i32>(1))
        });
        eventually(LIMIT, "other client's pg_sleep(3) running", || {
            running(&direct, "idlecancel-sleep")
        })
        .await;
        raw_cancel(proxy.port, pid, secret).await;
        assert!(
            running(&direct, "idlecancel-sleep").await,
            "the cancel request must have been handled while the other query ran"
        );
        // Also through tokio-postgres' own cancel path, for a tokio-postgres client that is idle.
        let idle2 = proxy.connect().await;
        idle2.cancel_token().cancel_query(NoTls).await.unwrap();

        let busy_pid = timeout(LIMIT, sleeping)
            .await
            .unwrap()
            .unwrap()
            .expect("the other client's query must not be cancelled");
        assert_eq!(
            vec![busy_pid.to_string()],
            idle_pid,
            "both clients were served by the single server"
        );
        assert_eq!(idle.query("SELECT 'still fine'").await, vec!["still fine"]);
        let row = idle2.query_one("SELECT 3", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 3);
    })
    .await;
}

/// A TCP relay in front of `target` that forwards every connection at once, except CancelRequests: each is
/// reported on the returned channel as it arrives and held until the gate is opened (a slow path for cancels only, as
/// over a congested network, with the test deciding when it ends).
async fn cancel_holding_relay(
    target: u16,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (gate, opened) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (arrived_tx, mut opened) = (arrived_tx.clone(), opened.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if client.read_exact(&mut head).await.is_err() {
                    return;
                }
                if head == [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e] {
                    let _ = arrived_tx.send(());
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                }
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                if server.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (port, arrived, gate)
}

/// The SHOW POOLS row of the test database and user.
async fn pool_row(proxy: &common::TestProxy) -> std::collections::HashMap<String, String> {
    proxy
        .admin("SHOW POOLS")
        .await
        .into_iter()
        .find(|r| r["database"] == common::DB && r["user"] == "app")
        .unwrap()
}

/// A cancel for A's query that is still on its way when the query ends must not reach B's query on the same server.
/// Every step waits for an event (locks the test holds, the relay's report, SHOW POOLS), so the order is the same
/// under any load: A's query is blocked, its cancel is held in the relay, B queues for the only server, A's query
/// ends, and only then is the cancel let through; B's query is blocked while the cancel arrives, so a server handed
/// to B before its cancel was delivered would see B's query cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_reaches_the_next_clients_query() {
    bounded(async {
        let backend = Backend::start().await;
        let (relay, mut arrived, gate) = cancel_holding_relay(backend.pg.port()).await;
        let toml = backend.config_toml("pool_size = 1").replace(
            &format!("port = {}", backend.pg.port()),
            &format!("port = {relay}"),
        );
        let proxy = common::TestProxy::start(&toml).await;
        let a = proxy.connect().await;
        let b = proxy.connect().await;
        assert_eq!(
            a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
        // The test holds the locks A's and B's queries wait for.
        let direct = common::connect(&backend.direct_url()).await;
        direct
            .batch_execute("SELECT pg_advisory_lock(42), pg_advisory_lock(43)")
            .await
            .unwrap();

        // A's query waits for lock 42 on the only server.
        let cancel = a.cancel_token();
        let a_query =
            tokio::spawn(async move { a.simple_query("SELECT pg_advisory_xact_lock(42)").await });
        eventually(LIMIT, "A's query to wait for its lock", || {
            running(&direct, "pg_advisory_xact_lock(42)")
        })
        .await;
        // B queues for that server.
        let b_query =
            tokio::spawn(async move { b.simple_query("SELECT pg_advisory_xact_lock(43)").await });
        eventually(LIMIT, "B to wait for the server", || async {
            pool_row(&proxy).await["cl_waiting"] == "1"
        })
        .await;
        // A's cancel reaches the proxy, which forwards it; the relay holds it on its way to Postgres.
        let cancelling = tokio::spawn(async move { cancel.cancel_query(NoTls).await });
        timeout(LIMIT, arrived.recv())
            .await
            .expect("the cancel never reached the relay")
            .unwrap();
        // A's query ends before its cancel arrives.
        direct
            .batch_execute("SELECT pg_advisory_unlock(42)")
            .await
            .unwrap();
        let a_result = a_query.await.unwrap();
        assert!(a_result.is_ok(), "{a_result:?}");
        // The server A released waits for the cancel instead of going to B.
        eventually(
            LIMIT,
            "the released server to wait for the cancel",
            || async {
                let row = pool_row(&proxy).await;
                row["sv_being_canceled"] == "1" && row["cl_waiting"] == "1"
            },
        )
        .await;
        assert!(!b_query.is_finished());
        // The cancel arrives at an idle server (it cancels nothing); then B gets the server.
        gate.send_replace(true);
        cancelling.await.unwrap().unwrap();
        eventually(LIMIT, "B's query to wait for its lock", || {
            running(&direct, "pg_advisory_xact_lock(43)")
        })
        .await;
        direct
            .batch_execute("SELECT pg_advisory_unlock(43)")
            .await
            .unwrap();
        // B's query is B's: a cancel meant for A's finished query must not interrupt it.
        if let Err(e) = b_query.await.unwrap() {
            panic!("B's query was interrupted: {} ({e})", sqlstate(&e));
        }
        assert_eq!(pool_row(&proxy).await["sv_being_canceled"], "0");
    })
    .await;
}
