//! Two shardpool instances in front of one Postgres, as behind a load balancer: a client's CancelRequest that lands
//! on the instance not running its query is forwarded (once) to the instance that issued the key, over TCP or a
//! Unix socket, and cancels exactly that query. A wrong key, a key of a peer not in `[peers]`, or a request already
//! forwarded once cancels nothing, and never loops however `[peers]` is set. Each request is counted once, by what
//! became of it, where it arrived (SHOW LISTS, `/metrics`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{eventually, sqlstate, Backend, TestProxy, DB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_postgres::NoTls;

const LIMIT: Duration = Duration::from_secs(20);

/// Bits 30..17 of a shardpool cancel key's pid name its instance; bit 16 marks a forwarded request.
const ID_SHIFT: u32 = 17;
const FORWARDED: i32 = 1 << 16;

async fn bounded(test: impl std::future::Future<Output = ()>) {
    timeout(Duration::from_secs(240), test)
        .await
        .expect("test did not finish within 240 s");
}

/// Whether a query whose text contains `marker` is running on the server, seen directly.
async fn running(direct: &tokio_postgres::Client, marker: &str) -> bool {
    // Split, so this query's own text never matches.
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

/// Sends a raw CancelRequest to `port` and waits until the instance there has handled it and closed the
/// connection: when this returns, whatever the request was going to do (forwarding included) is done.
async fn raw_cancel(port: u16, pid: i32, secret: i32) -> Duration {
    let started = Instant::now();
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
        .expect("the instance did not close the cancel connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "a CancelRequest gets no reply, got {rest:?}");
    started.elapsed()
}

/// The config of instance `peer_id` in front of `backend`, with `peers` as its `[peers]` table.
fn instance_toml(backend: &Backend, peer_id: u16, extra: &str, peers: &str) -> String {
    format!(
        "{}\n[peers]\n{peers}\n",
        backend.config_toml(&format!("pool_size = 2\npeer_id = {peer_id}\n{extra}"))
    )
}

/// The cancel counters of SHOW LISTS that are not zero, as (name, value).
async fn cancel_counters(proxy: &TestProxy) -> Vec<(String, u64)> {
    let mut got: Vec<(String, u64)> = proxy
        .admin("SHOW LISTS")
        .await
        .into_iter()
        .filter(|r| r["list"].starts_with("cancel_") && r["items"] != "0")
        .map(|r| (r["list"].clone(), r["items"].parse().unwrap()))
        .collect();
    got.sort();
    got
}

fn counters(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = expected.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    v.sort();
    v
}

async fn reload(proxy: &TestProxy, toml: &str) {
    std::fs::write(&proxy.config_path, toml).unwrap();
    let admin = common::connect(&proxy.admin_url()).await;
    admin.simple_query("RELOAD").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_instance_cancels_the_query() {
    bounded(async {
        let backend = Backend::start().await;
        let a = TestProxy::start(&instance_toml(&backend, 1, "", "")).await;
        let b = TestProxy::start(&instance_toml(
            &backend,
            2,
            "",
            &format!("1 = \"127.0.0.1:{}\"", a.port),
        ))
        .await;
        let direct = common::connect(&backend.direct_url()).await;
        let client = std::sync::Arc::new(a.connect().await);
        let c = client.clone();
        let long = tokio::spawn(async move {
            let r = c
                .simple_query("SELECT pg_sleep(30) /* peer-victim */")
                .await;
            (r, Instant::now())
        });
        eventually(LIMIT, "the victim's pg_sleep(30) running", || {
            running(&direct, "peer-victim")
        })
        .await;

        // tokio-postgres' own cancel, sent over a connection to B instead of the instance the client is on.
        let sent = Instant::now();
        let to_b = TcpStream::connect(("127.0.0.1", b.port)).await.unwrap();
        client
            .cancel_token()
            .cancel_query_raw(to_b, NoTls)
            .await
            .unwrap();
        let (result, ended) = timeout(LIMIT, long).await.unwrap().unwrap();
        let err = result.expect_err("the query was not cancelled");
        assert_eq!(sqlstate(&err), "57014", "{err}");
        assert!(
            ended - sent < Duration::from_secs(10),
            "cancelled only after {:?}",
            ended - sent
        );
        // The client is fine afterwards, on A.
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_key_is_forwarded_and_only_once() {
    bounded(async {
        let backend = Backend::start().await;
        let a_dir = tempfile::tempdir().unwrap();
        let a = TestProxy::start(&instance_toml(
            &backend,
            1,
            &format!(
                "unix_socket_dir = \"{}\"\nhttp_listen = \"127.0.0.1:0\"",
                a_dir.path().display()
            ),
            "",
        ))
        .await;
        let a_tcp = format!("1 = \"127.0.0.1:{}\"", a.port);
        let b_toml = |peers: &str| instance_toml(&backend, 2, "", peers);
        let b = TestProxy::start(&b_toml(&a_tcp)).await;
        let direct = common::connect(&backend.direct_url()).await;

        let mut victim = Raw::connect(a.port, "app", "secret", DB).await;
        let (pid, secret) = victim.key;
        assert!(pid > 0, "{pid}");
        assert_eq!(pid >> ID_SHIFT, 1, "A's keys carry its peer id: {pid:#x}");
        assert_eq!(pid & FORWARDED, 0, "{pid:#x}");
        let other = Raw::connect(b.port, "app", "secret", DB).await;
        assert_eq!(
            other.key.0 >> ID_SHIFT,
            2,
            "B's keys carry its: {:#x}",
            other.key.0
        );

        victim
            .send_query("SELECT pg_sleep(30) /* raw-peer-victim */")
            .await;
        eventually(LIMIT, "the victim's pg_sleep(30) running", || {
            running(&direct, "raw-peer-victim")
        })
        .await;

        // Each request below is fully handled (forwarded or dropped) once B closes its connection.
        // A wrong secret: forwarded to A, which has no such key.
        raw_cancel(b.port, pid, secret.wrapping_add(1)).await;
        // The key's instance bits changed to a peer B does not know: dropped at B.
        raw_cancel(b.port, (pid & 0xffff) | (77 << ID_SHIFT), secret).await;
        // The right key, but marked as already forwarded: B is not its owner, so B drops it rather than pass it on.
        raw_cancel(b.port, pid | FORWARDED, secret).await;
        // A misconfigured [peers] sending peer 1's cancels back to B itself: one hop, then dropped, promptly.
        reload(&b, &b_toml(&format!("1 = \"127.0.0.1:{}\"", b.port))).await;
        let took = raw_cancel(b.port, pid, secret).await;
        assert!(
            took < Duration::from_secs(5),
            "a looping cancel took {took:?}"
        );
        assert!(
            running(&direct, "raw-peer-victim").await,
            "a wrong, unknown, re-forwarded or looping cancel stopped the query"
        );
        // A peer that cannot be reached: the request is lost, and counted as such.
        reload(&b, &b_toml("1 = \"127.0.0.1:1\"")).await;
        raw_cancel(b.port, pid, secret).await;
        assert!(running(&direct, "raw-peer-victim").await);

        // Through A's Unix socket this time (peers are re-read at RELOAD): the right key cancels the query.
        let a_socket = a_dir.path().join(format!(".s.PGSQL.{}", a.port));
        reload(&b, &b_toml(&format!("1 = \"{}\"", a_socket.display()))).await;
        raw_cancel(b.port, pid, secret).await;
        let replies = timeout(LIMIT, victim.replies()).await.unwrap();
        assert!(
            replies.iter().any(|r| r == "E:C57014"),
            "expected query_canceled: {replies:?}"
        );
        assert_eq!(victim.query("SELECT 7").await, vec!["7"]);

        // Each request counted once where it arrived. B: the wrong secret, the loop's first hop and the socket one
        // forwarded; the unknown peer (from the client), the flagged request and the loop's second hop (from a
        // peer) dropped; the unreachable peer failed. A: the wrong secret unknown, the right one acted on.
        assert_eq!(
            cancel_counters(&b).await,
            counters(&[
                ("cancel_forwarded_total", 3),
                ("cancel_dropped_total", 3),
                ("cancel_forward_failed_total", 1),
                ("cancel_from_peers_total", 2),
            ])
        );
        assert_eq!(
            cancel_counters(&a).await,
            counters(&[
                ("cancel_local_total", 1),
                ("cancel_unknown_total", 1),
                ("cancel_from_peers_total", 2),
            ])
        );
        let http = a.proxy.as_ref().unwrap().http.as_ref().unwrap().addr;
        let (_, page) = common::http::get(http, "/metrics").await;
        for (source, outcome, n) in [
            ("peer", "local", 1.0),
            ("peer", "unknown", 1.0),
            ("client", "local", 0.0),
            ("client", "forwarded", 0.0),
        ] {
            assert_eq!(
                common::http::sample(
                    &page,
                    "shardpool_cancel_requests_total",
                    &[("source", source), ("outcome", outcome)]
                ),
                Some(n),
                "{source} {outcome}:\n{page}"
            );
        }
    })
    .await;
}
