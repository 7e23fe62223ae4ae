//! The HTTP listener (`http_listen`) as Prometheus, a load balancer and a hostile client see it: `/metrics` moves with
//! a pgbench run and passes `promtool check metrics`, `/readyz` follows the primary going away and coming back and
//! a shutdown, and malformed, oversize or slow requests are refused without holding up anyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{get, request, sample};
use common::{Backend, TestProxy, DB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HTTP: &str = "http_listen = \"127.0.0.1:0\"";

fn http_addr(proxy: &TestProxy) -> SocketAddr {
    proxy.proxy.as_ref().unwrap().http.as_ref().unwrap().addr
}

fn processed(report: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed"))
        .unwrap_or_else(|| panic!("no processed line in:\n{report}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A sample of the app user's pool on the test database (summed over states when `state` is not given).
fn pool_value(page: &str, name: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("database", DB), ("user", "app")];
    labels.extend_from_slice(extra);
    sample(page, name, &labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_a_pgbench_run() {
    let backend = Backend::start().await;
    // 8 clients over 2 servers: some checkouts wait, so the histogram has more than its first bucket to show.
    let proxy = backend.proxy(&format!("{HTTP}\npool_size = 2")).await;
    let addr = http_addr(&proxy);
    let port = proxy.port;
    tokio::task::spawn_blocking(move || common::pgbench(port, &["-i", "-s", "1", "-q"]))
        .await
        .unwrap();

    let (status, before) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let xacts_before = pool_value(&before, "shardpool_pool_transactions_total", &[]);
    let queries_before = pool_value(&before, "shardpool_pool_queries_total", &[]);
    let received_before = pool_value(&before, "shardpool_pool_received_bytes_total", &[]);
    let sent_before = pool_value(&before, "shardpool_pool_sent_bytes_total", &[]);
    let waits_before = pool_value(&before, "shardpool_pool_wait_seconds_count", &[]);

    let bench = tokio::task::spawn_blocking(move || {
        common::pgbench(
            port,
            &["-S", "-c", "8", "-j", "2", "-T", "3", "-M", "prepared"],
        )
    });
    // Scrape in a loop while pgbench runs: counters only go up, and the clients show.
    let mut scrapes = 0;
    let mut last = xacts_before;
    let mut most_clients = 0.0f64;
    let mut moved_mid_run = false;
    while !bench.is_finished() {
        let (status, page) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let xacts = pool_value(&page, "shardpool_pool_transactions_total", &[]);
        assert!(
            xacts >= last,
            "transactions_total went down: {last} -> {xacts}"
        );
        moved_mid_run |= xacts > xacts_before && !bench.is_finished();
        last = xacts;
        most_clients = most_clients.max(pool_value(&page, "shardpool_pool_clients", &[]));
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = bench.await.unwrap();
    let done = processed(&report) as f64;
    assert!(done > 0.0, "{report}");
    assert!(scrapes >= 2, "only {scrapes} scrapes during a 3 s run");
    assert!(
        moved_mid_run,
        "no scrape saw transactions move while pgbench ran"
    );
    assert_eq!(most_clients, 8.0, "pgbench's 8 clients never showed");

    let (_, after) = get(addr, "/metrics").await;
    let grew = |name: &str, before: f64| pool_value(&after, name, &[]) - before;
    let xacts = grew("shardpool_pool_transactions_total", xacts_before);
    assert!(
        xacts >= done,
        "transactions_total grew by {xacts}, pgbench did {done}"
    );
    assert!(grew("shardpool_pool_queries_total", queries_before) >= done);
    // Every select-only transaction sends at least a Bind/Execute/Sync and gets a DataRow back.
    assert!(grew("shardpool_pool_received_bytes_total", received_before) >= done * 20.0);
    assert!(grew("shardpool_pool_sent_bytes_total", sent_before) >= done * 20.0);
    // Each transaction borrowed a server once: one observation each.
    assert!(grew("shardpool_pool_wait_seconds_count", waits_before) >= done);
    // The histogram is cumulative and ends with the count.
    let buckets: Vec<f64> = after
        .lines()
        .filter(|l| {
            l.starts_with("shardpool_pool_wait_seconds_bucket{") && l.contains("user=\"app\"")
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 13, "{after}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        *buckets.last().unwrap(),
        pool_value(&after, "shardpool_pool_wait_seconds_count", &[])
    );
    // Idle again: nobody waits, nobody is linked.
    assert_eq!(
        pool_value(&after, "shardpool_pool_clients", &[("state", "waiting")]),
        0.0
    );
    assert!(pool_value(&after, "shardpool_pool_servers", &[]) <= 2.0);

    // Errors are counted by SQLSTATE class.
    let client = proxy.connect().await;
    for _ in 0..2 {
        assert_eq!(
            common::sqlstate(
                &client
                    .simple_query("SELECT * FROM no_such_table")
                    .await
                    .unwrap_err()
            ),
            "42P01"
        );
    }
    assert_eq!(
        common::sqlstate(&client.simple_query("SELECT 1/0").await.unwrap_err()),
        "22012"
    );
    let (_, page) = get(addr, "/metrics").await;
    assert_eq!(
        pool_value(&page, "shardpool_errors_total", &[("class", "42")]),
        2.0
    );
    assert_eq!(
        pool_value(&page, "shardpool_errors_total", &[("class", "22")]),
        1.0
    );
    // The process and the supervisor report too.
    assert!(sample(&page, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(sample(&page, "process_open_fds", &[]).unwrap() >= 3.0);
    assert!(sample(&page, "shardpool_uptime_seconds", &[]).unwrap() > 0.0);
    assert_eq!(
        sample(
            &page,
            "shardpool_task_runs_total",
            &[("task", "http listener")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &page,
            "shardpool_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // The listener is a supervised task like the others.
    let tasks = proxy.admin("SHOW TASKS").await;
    assert!(
        tasks.iter().any(|t| t["task"] == "http listener"
            && t["name"] == addr.to_string()
            && t["state"] == "running"),
        "{tasks:?}"
    );
}

/// Polls `/readyz` until its status is `want`; returns the body.
async fn readyz_becomes(addr: SocketAddr, want: u16, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(addr, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became {want} ({what}); last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_primary_and_shutdown() {
    let mut backend = Backend::start().await;
    let mut proxy = backend.proxy(HTTP).await;
    let addr = http_addr(&proxy);
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(readyz_becomes(addr, 200, "primary up").await, "ready\n");

    tokio::task::block_in_place(|| backend.pg.stop().unwrap());
    let body = readyz_becomes(addr, 503, "primary stopped").await;
    assert!(body.contains("database appdb"), "{body}");
    // Alive all the same.
    assert_eq!(get(addr, "/healthz").await.0, 200);

    tokio::task::block_in_place(|| backend.pg.restart().unwrap());
    readyz_becomes(addr, 200, "primary restarted").await;
    // Clients get through again too.
    let client = proxy.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);

    // A graceful shutdown: not ready from its first moment, while the listener still answers.
    let running = proxy.proxy.take().unwrap();
    running.ctx.begin_shutdown();
    assert_eq!(
        get(addr, "/readyz").await,
        (503, "not ready: shutting down\n".to_owned())
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
    running.shutdown().await;
    // Gone with the proxy.
    common::eventually(
        Duration::from_secs(10),
        "the HTTP listener to close",
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
}

/// Sends `bytes` on a fresh connection, then reads the response (the listener closes after answering).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("no response within 30 s")
        .unwrap();
    common::http::parse_response(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_oversize_and_slow_requests_are_refused_without_affecting_others() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy(&format!("{HTTP}\nhttp_request_timeout = \"1s\""))
        .await;
    let addr = http_addr(&proxy);

    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, "/metrics/").await.0, 404);
    let (status, _) = request(addr, "POST", "/metrics").await;
    assert_eq!(status, 405);
    // 405 says what is allowed; HEAD has the headers of GET and no body.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"DELETE /healthz HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("\r\nAllow: GET, HEAD\r\n"), "{out}");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("Content-Length: 3\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\n"), "HEAD got a body: {out:?}");
    // A query string is not part of the path.
    assert_eq!(get(addr, "/healthz?probe=1").await.0, 200);

    // Not HTTP at all (a TLS ClientHello, a Postgres startup packet): 400, and the listener carries on.
    assert_eq!(
        raw_exchange(
            addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
        )
        .await
        .0,
        400
    );
    assert_eq!(
        raw_exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n").await.0,
        505
    );

    // A head that never ends within 8 KiB: 431, while it is still being sent.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() < 16 * 1024 {
        big.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The listener answers after 8 KiB and may close before the rest is written: a failed write is expected.
    let _ = s.write_all(&big).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text:?}");

    // Slow clients (a few bytes, then silence) hold nothing up: scrapes and probes are answered meanwhile, and
    // each slow one gets 408 once http_request_timeout has passed.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        slow.push(s);
    }
    for _ in 0..5 {
        let (status, page) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(page.contains("shardpool_build_info"));
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }
    for mut s in slow {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("a slow request was never answered")
            .unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "408 came before http_request_timeout"
    );
    // The proxy itself never noticed.
    let client = proxy.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
}

/// `promtool` from Debian's `prometheus` package. CI sets CI_REQUIRE_PROMTOOL=1, so a missing one fails there
/// instead of skipping the check.
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "CI_REQUIRE_PROMTOOL=1 but promtool is not on PATH (Debian package prometheus)"
        );
        eprintln!("promtool not on PATH: metrics format check skipped");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_proxy_with_replicas_exposes_valid_metrics() {
    let (shards, _plain, _cfg) = common::shards::start().await;
    let toml =
        common::shards::proxy_toml(&shards).replacen("[general]", &format!("[general]\n{HTTP}"), 1);
    let proxy = TestProxy::start(&toml).await;
    let addr = http_addr(&proxy);
    readyz_becomes(addr, 200, "catalog loaded, three shards up").await;
    // Some keyed traffic, so shard and vshard counters have something to show.
    let shop = common::connect(&common::shards::shop_url(&proxy)).await;
    for aid in 0..40i64 {
        shop.execute(
            "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'o', 1)",
            &[&aid],
        )
        .await
        .unwrap();
    }
    for _ in 0..5 {
        shop.query("SELECT * FROM accounts WHERE aid = 7", &[])
            .await
            .unwrap();
    }
    let router = proxy.ctx().shard_router("shop").unwrap();
    let epoch = router.catalog().unwrap().epoch;
    // The replica of shard 1 shows once the monitor has polled it.
    let page = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, page) = get(addr, "/metrics").await;
            if page.contains("shardpool_server_lag_bytes{database=\"shop\",shard=\"1\"") {
                break page;
            }
            assert!(
                Instant::now() < deadline,
                "no replica lag for shard 1:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(
        sample(&page, "shardpool_catalog_epoch", &[("database", "shop")]),
        Some(epoch as f64)
    );
    assert_eq!(
        sample(&page, "shardpool_catalog_loaded", &[("database", "shop")]),
        Some(1.0)
    );
    let statements = sample(
        &page,
        "shardpool_shard_statements_total",
        &[("database", "shop")],
    )
    .unwrap();
    assert!(statements >= 40.0, "{statements}");
    assert_eq!(
        sample(&page, "shardpool_shard_vshards", &[("database", "shop")]),
        Some(f64::from(common::shards::VSHARDS))
    );
    // The hottest vshards, hottest first: the one aid 7 lives on leads, and at most 10 are listed.
    let hot: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("shardpool_vshard_statements_total{"))
        .collect();
    assert!(
        !hot.is_empty() && hot.len() <= shardpool::metrics::TOP_VSHARDS,
        "{hot:?}"
    );
    let hottest: f64 = hot[0].rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(hottest >= 6.0, "{hot:?}");
    // One series per server (a busy machine may have a poll time out and a replica banned: its value is not
    // asserted).
    let banned = page
        .lines()
        .filter(|l| l.starts_with("shardpool_server_banned{database=\"shop\""))
        .count();
    assert_eq!(banned, 4, "{page}");
    assert_eq!(
        sample(&page, "shardpool_server_writer", &[("database", "shop")]),
        Some(3.0)
    );

    // A statement that fails on every shard is one error to its client, and counts once: a scatter read (simple
    // and extended protocol) and DDL run everywhere.
    let errors = |page: &str, class: &str| {
        sample(
            page,
            "shardpool_errors_total",
            &[("database", "shop"), ("class", class)],
        )
        .unwrap_or(0.0)
    };
    let (before_42, before_22) = (errors(&page, "42"), errors(&page, "22"));
    let failed = shop
        .simple_query("SELECT no_such_column FROM accounts")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&failed), "42703", "{failed}");
    let failed = shop
        .simple_query("CREATE TABLE accounts (x int)")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&failed), "42P07", "{failed}");
    // Prepared on one shard, executed on all three (each holds some of the 40 accounts, so each divides by zero).
    let failed = shop
        .query(
            "SELECT $1::int / (balance - balance) FROM accounts",
            &[&1i32],
        )
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&failed), "22012", "{failed}");
    // Failed logins have no pool: counted by reason.
    let wrong = common::try_connect(&proxy.url("app", "wrong", "shop")).await;
    assert_eq!(common::sqlstate(&wrong.unwrap_err()), "28P01");
    let nodb = common::try_connect(&proxy.url("app", "secret", "no_such_db")).await;
    assert_eq!(common::sqlstate(&nodb.unwrap_err()), "3D000");
    let (_, page) = get(addr, "/metrics").await;
    assert_eq!(errors(&page, "42") - before_42, 2.0, "{page}");
    assert_eq!(errors(&page, "22") - before_22, 1.0, "{page}");
    let login_failures = |reason: &str| {
        sample(
            &page,
            "shardpool_client_login_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(login_failures("password"), Some(1.0));
    assert_eq!(login_failures("unknown_database"), Some(1.0));
    assert_eq!(login_failures("timeout"), Some(0.0));
    assert_eq!(
        sample(&page, "shardpool_cancel_requests_total", &[]),
        Some(0.0)
    );

    let Some(promtool) = promtool() else { return };
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{page}"
    );
}
