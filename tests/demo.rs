//! `shardpool demo` as a user runs it: it prints a psql URL that works (the sample table has its 100 rows), and
//! Ctrl-C (SIGINT) stops it cleanly, taking its Postgres servers and their files with it.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The demo process, killed if the test fails before it exits by itself.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What the demo printed that the test needs.
#[derive(Default)]
struct Printed {
    url: Option<String>,
    data_dir: Option<PathBuf>,
    primary_port: Option<u16>,
    replica_port: Option<u16>,
    /// The directory of the proxy's Unix socket, from the "psql -h DIR" line.
    unix_dir: Option<PathBuf>,
    metrics_url: Option<String>,
    lines: Vec<String>,
}

impl Printed {
    fn take(&mut self, line: &str) {
        self.lines.push(line.to_owned());
        // "  primary  postgres on 127.0.0.1:PORT (data in DIR)"
        if let Some(rest) = line.trim().strip_prefix("primary") {
            if let Some((_, after)) = rest.split_once("127.0.0.1:") {
                self.primary_port = after.split_whitespace().next().and_then(|p| p.parse().ok());
            }
            if let Some((_, dir)) = rest.split_once("(data in ") {
                self.data_dir = Some(PathBuf::from(dir.trim_end().trim_end_matches(')')));
            }
        }
        // "  replica  postgres on 127.0.0.1:PORT (streaming from the primary)"
        if let Some(rest) = line.trim().strip_prefix("replica") {
            if let Some((_, after)) = rest.split_once("127.0.0.1:") {
                self.replica_port = after.split_whitespace().next().and_then(|p| p.parse().ok());
            }
        }
        // "  or over the Unix socket:  PGPASSWORD=app psql -h DIR -p PORT -U app app"
        if let Some((_, rest)) = line.split_once("psql -h ") {
            self.unix_dir = rest.split_whitespace().next().map(PathBuf::from);
        }
        // "  metrics:  curl http://127.0.0.1:PORT/metrics   (...)"
        if let Some((_, url)) = line.split_once("curl http://") {
            self.metrics_url = url.split_whitespace().next().map(str::to_owned);
        }
        // "  connect:  psql postgres://app:app@127.0.0.1:PORT/app"
        // (the first such line: the console's URL comes later in the tour).
        if let Some((_, url)) = line
            .split_once("psql postgres://")
            .filter(|_| self.url.is_none())
        {
            self.url = Some(format!(
                "postgres://{}",
                url.split_whitespace().next().unwrap_or("")
            ));
        }
    }

    fn complete(&self) -> bool {
        self.url.is_some()
            && self.data_dir.is_some()
            && self.primary_port.is_some()
            && self.replica_port.is_some()
            && self.unix_dir.is_some()
            && self.metrics_url.is_some()
    }
}

/// A running demo, what it printed, and where its stderr goes.
struct Started {
    demo: Demo,
    printed: Printed,
    port: u16,
    stderr: tempfile::NamedTempFile,
}

impl Started {
    fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

/// Starts `shardpool demo` on a free port and waits until it has printed everything the tests read.
fn start_demo() -> Started {
    let port = shardpool::pgcluster::free_port();
    let http_port = shardpool::pgcluster::free_port();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(common::bin("shardpool"))
        .args(["demo", "--port", &port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = Demo(child);
    let log = || std::fs::read_to_string(stderr.path()).unwrap_or_default();

    // Read stdout on a thread (blocking pipe), line by line, until the URL shows up.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Printed::default();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !printed.complete() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => printed.take(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = demo.0.try_wait().unwrap() {
                    panic!(
                        "demo exited with {status} before printing its URL:\n{}\n{}",
                        printed.lines.join("\n"),
                        log()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "demo printed no URL within 180 s:\n{}\n{}",
                    printed.lines.join("\n"),
                    log()
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "demo closed stdout without printing its URL:\n{}\n{}",
                printed.lines.join("\n"),
                log()
            ),
        }
    }
    Started {
        demo,
        printed,
        port,
        stderr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_sample_data_and_cleans_up_on_sigint() {
    let mut started = tokio::task::block_in_place(start_demo);
    let port = started.port;
    let printed = &started.printed;
    let url = printed.url.clone().unwrap();
    let data_dir = printed.data_dir.clone().unwrap();
    let primary_port = printed.primary_port.unwrap();
    let replica_port = printed.replica_port.unwrap();
    assert!(
        url.contains(&format!("127.0.0.1:{port}/")),
        "the URL is not on --port {port}: {url}"
    );
    assert!(
        data_dir.is_dir(),
        "printed data dir {data_dir:?} does not exist"
    );

    let client = common::connect(&url).await;
    let accounts: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, 100);
    drop(client);

    // The first case, as a user tries it: DDL in one psql, a read of it in the next one. The default mode
    // (read_proxy_writes) keeps the read off replicas that have not replayed the DDL yet (one is 2 s behind).
    let psql = |sql: &str| {
        let out = Command::new(common::bin("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", &url, "-c", sql])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "psql -c {sql:?}: {err}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The same through the Unix socket line the demo printed.
    let unix_dir = printed.unix_dir.clone().unwrap();
    let socket = unix_dir.join(format!(".s.PGSQL.{port}"));
    tokio::task::block_in_place(|| {
        let out = Command::new(common::bin("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(&unix_dir)
            .args(["-p", &port.to_string(), "-U", "app", "app"])
            .args(["-c", "SELECT count(*) FROM accounts"])
            .env("PGPASSWORD", "app")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "psql -h {unix_dir:?}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");
    });
    tokio::task::block_in_place(|| {
        assert_eq!(psql("SHOW shardpool.consistency"), "read_proxy_writes");
        for i in 0..3 {
            psql(&format!("CREATE TABLE demo_t{i} (id int)"));
            assert_eq!(psql(&format!("SELECT count(*) FROM demo_t{i}")), "0");
        }
    });

    // The sharded database: its 1,000 seeded accounts, merged from both shards, and a keyed read.
    let shop = common::connect(&format!("postgres://app:app@127.0.0.1:{port}/shop")).await;
    let rows = shop
        .simple_query("SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let n = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(n.as_deref(), Some("1000"));
    let owner: String = shop
        .query_one("SELECT owner FROM accounts WHERE aid = $1", &[&42i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "user42");
    drop(shop);

    // The tour's /metrics URL answers, with the counters of what was just done.
    let metrics = printed.metrics_url.clone().unwrap();
    let (addr, path) = metrics.split_once('/').unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (status, page) = common::http::get(addr, &format!("/{path}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("shardpool_build_info{version="), "{page}");
    let shop_statements = common::http::sample(
        &page,
        "shardpool_shard_statements_total",
        &[("database", "shop")],
    );
    assert!(shop_statements.is_some_and(|n| n >= 1.0), "{page}");
    assert_eq!(common::http::get(addr, "/readyz").await.0, 200);

    kill(Pid::from_raw(started.demo.0.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = started.demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not exit within 60 s of SIGINT:\n{}",
            started.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "demo exited with {status}:\n{}",
        started.log()
    );

    // Its servers and their files are gone.
    common::eventually(
        Duration::from_secs(30),
        "the demo's data dir is removed",
        || async { !data_dir.exists() },
    )
    .await;
    common::eventually(
        Duration::from_secs(30),
        "the demo's primary and replica stop listening",
        || async {
            [primary_port, replica_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
        },
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "shardpool still listening on {port}"
    );
    assert!(!socket.exists(), "the demo left {socket:?} behind");
}

/// The scratch directories (one per Postgres server, plus the initdb template) a process created.
fn scratch_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("sp-pg-{pid}-");
    let mut roots = vec![std::env::temp_dir(), PathBuf::from("/tmp")];
    roots.dedup();
    roots
        .iter()
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(|entries| entries.filter_map(Result::ok))
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Whether `pid` is a live process: a zombie (exited, not yet reaped by an init that may never reap) is not.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_killed_with_sigkill_leaves_no_server_or_file_behind() {
    let mut started = tokio::task::block_in_place(start_demo);
    let pid = started.demo.0.id();
    let dirs = scratch_dirs_of(pid);
    // Its four servers, each with a postmaster recorded in its data directory.
    let postmasters: Vec<i32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("data/postmaster.pid")).ok())
        .filter_map(|pidfile| pidfile.lines().next().and_then(|l| l.trim().parse().ok()))
        .collect();
    assert_eq!(postmasters.len(), 4, "{dirs:?}\n{}", started.log());

    // The query that once aborted the process is now refused, and the demo lives on until killed.
    let shop = common::connect(&format!(
        "postgres://app:app@127.0.0.1:{}/shop",
        started.port
    ))
    .await;
    let deep = format!("SELECT 1{} AS x", "+1".repeat(100_000));
    let e = shop.simple_query(&deep).await.unwrap_err();
    assert_eq!(common::sqlstate(&e), "54001");
    drop(shop);

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    started.demo.0.wait().unwrap();
    common::eventually(
        Duration::from_secs(60),
        "the killed demo's postmasters to exit and its directories to be removed",
        || {
            let gone = postmasters.iter().all(|p| !running(*p)) && scratch_dirs_of(pid).is_empty();
            async move { gone }
        },
    )
    .await;
}
