//! pgbench through shardpool in all three protocol modes, 200 clients over a pool of 10: every transaction must
//! succeed. This is the classic way poolers break (prepared statements across server switches, pipelined extended
//! protocol, clients outnumbering servers 20 to 1).
#![allow(clippy::unwrap_used)]

mod common;

use common::Backend;

fn processed(report: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed"))
        .unwrap_or_else(|| panic!("no processed line in:\n{report}"));
    let frac = line.rsplit(' ').next().unwrap();
    let (done, want) = frac.split_once('/').unwrap();
    (done.parse().unwrap(), want.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_protocol_modes_200_clients_over_10_servers() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("pool_size = 10").await;
    let port = proxy.port;
    tokio::task::spawn_blocking(move || {
        common::pgbench(port, &["-i", "-s", "2", "-q"]);
        for mode in ["simple", "extended", "prepared"] {
            // -t keeps the amount of work fixed, so the assertion is exact: 200 clients x 10 transactions each.
            let report = common::pgbench(port, &["-c", "200", "-j", "2", "-t", "10", "-M", mode]);
            assert_eq!(processed(&report), (2000, 2000), "mode {mode}:\n{report}");
            assert!(
                report.contains("number of failed transactions: 0 (0.000%)"),
                "mode {mode}:\n{report}"
            );
        }
        // Select-only with prepared statements exercises the statement cache hardest.
        let report = common::pgbench(
            port,
            &["-S", "-c", "200", "-j", "2", "-t", "50", "-M", "prepared"],
        );
        assert_eq!(processed(&report), (10_000, 10_000), "{report}");
    })
    .await
    .unwrap();
    let pools = proxy.admin("SHOW POOLS").await;
    let pool = pools.iter().find(|p| p["database"] == common::DB).unwrap();
    let servers: usize = pool["sv_active"].parse::<usize>().unwrap()
        + pool["sv_idle"].parse::<usize>().unwrap()
        + pool["sv_used"].parse::<usize>().unwrap();
    assert!(servers <= 10, "pool exceeded its size: {pool:?}");
}
