//! `runtime = "thread_per_core"`: two single-threaded runtimes, each accepting on its own `SO_REUSEPORT` listener,
//! sharing one pool. Servers far fewer than clients make servers change core on most checkouts (and be
//! re-registered with the borrowing core's runtime), so every pgbench mode must still complete every transaction, the
//! pool must stay within its size, and a graceful shutdown must end the sessions on every core.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Backend;

const TPC: &str = "runtime = \"thread_per_core\"\nworkers = 2\npool_size = 4";

fn processed(report: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed"))
        .unwrap_or_else(|| panic!("no processed line in:\n{report}"));
    let frac = line.rsplit(' ').next().unwrap();
    let (done, want) = frac.split_once('/').unwrap();
    (done.parse().unwrap(), want.parse().unwrap())
}

// The test's own runtime is single-threaded, like the binary's core 0 in this mode.
#[tokio::test]
async fn pgbench_all_modes_100_clients_over_4_servers_on_2_cores() {
    let backend = Backend::start().await;
    let proxy = backend.proxy(TPC).await;
    let port = proxy.port;
    tokio::task::spawn_blocking(move || {
        common::pgbench(port, &["-i", "-s", "1", "-q"]);
        for mode in ["simple", "extended", "prepared"] {
            let report = common::pgbench(port, &["-c", "100", "-j", "2", "-t", "10", "-M", mode]);
            assert_eq!(processed(&report), (1000, 1000), "mode {mode}:\n{report}");
            assert!(
                report.contains("number of failed transactions: 0 (0.000%)"),
                "mode {mode}:\n{report}"
            );
        }
        let report = common::pgbench(
            port,
            &["-S", "-c", "20", "-j", "2", "-t", "200", "-M", "prepared"],
        );
        assert_eq!(processed(&report), (4000, 4000), "{report}");
    })
    .await
    .unwrap();
    let pools = proxy.admin("SHOW POOLS").await;
    let pool = pools.iter().find(|p| p["database"] == common::DB).unwrap();
    let servers: usize = ["sv_active", "sv_idle", "sv_used"]
        .iter()
        .map(|c| pool[*c].parse::<usize>().unwrap())
        .sum();
    assert!(servers <= 4, "pool exceeded its size: {pool:?}");
    let config = proxy.admin("SHOW CONFIG").await;
    let runtime = config.iter().find(|r| r["key"] == "runtime").unwrap();
    assert_eq!(runtime["value"], "thread_per_core");
}

#[tokio::test]
async fn shutdown_ends_idle_sessions_on_every_core() {
    let backend = Backend::start().await;
    let mut proxy = backend.proxy(TPC).await;
    // Enough connections that both listeners get some (the kernel spreads them by a hash of the client's port).
    let mut clients = Vec::new();
    for i in 0..16i32 {
        let c = proxy.connect().await;
        let row = c.query_one("SELECT $1::int4 + 1", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        clients.push(c);
    }
    let cut = tokio::time::timeout(
        Duration::from_secs(30),
        proxy.proxy.take().unwrap().shutdown(),
    )
    .await
    .expect("shutdown finished");
    assert_eq!(cut, 0, "idle sessions are closed, not cut off");
    for c in &clients {
        assert!(c.simple_query("SELECT 1").await.is_err());
    }
}

// Servers reached over their Unix socket move between cores too (a `UnixStream` is re-registered like a TCP one).
#[tokio::test]
async fn servers_over_a_unix_socket_move_between_cores() {
    let backend = Backend::start().await;
    let dir = common::hba::socket_dir(&backend.pg);
    let toml = backend
        .config_toml("runtime = \"thread_per_core\"\nworkers = 2\npool_size = 2")
        .replace("host = \"127.0.0.1\"", &format!("host = \"{dir}\""));
    let proxy = common::TestProxy::start(&toml).await;
    let port = proxy.port;
    tokio::task::spawn_blocking(move || {
        common::pgbench(port, &["-i", "-s", "1", "-q"]);
        let report = common::pgbench(port, &["-c", "20", "-j", "2", "-t", "20", "-M", "simple"]);
        assert_eq!(processed(&report), (400, 400), "{report}");
        assert!(
            report.contains("number of failed transactions: 0 (0.000%)"),
            "{report}"
        );
    })
    .await
    .unwrap();
    let servers = proxy.admin("SHOW SERVERS").await;
    assert!(!servers.is_empty());
    assert!(servers.len() <= 2, "{servers:?}");
}
