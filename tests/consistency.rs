//! Consistency across connections against a real primary and real streaming replicas (one delayed): the
//! `shardpool.*` settings a client gives at startup, the proxy-wide and cluster-wide causal modes, monotonic reads,
//! and pipelines that mix reads and writes. Which server answered is read from `inet_server_port()`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::replicas::{reads_served, Replicated};
use common::{Backend, DB};

async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    for msg in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
            return r.get(0).unwrap_or("NULL").to_owned();
        }
    }
    panic!("no row from {sql}")
}

/// psql through the proxy, with `env` added; returns (success, stdout, stderr).
fn psql(port: u16, env: &[(&str, &str)], sql: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-d",
            DB,
        ])
        .args(sql.iter().flat_map(|s| ["-c", s]))
        .env("PGPASSWORD", "secret")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardpool_settings_from_the_startup_packet() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let base = proxy.app_url();
    let with_options = |opts: &str| {
        let encoded: String = opts
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("{base}?options={encoded}")
    };
    // In a URL, in each spelling Postgres accepts; other settings beside it still reach the server.
    for (opts, want) in [
        ("-c shardpool.consistency=eventual", "eventual"),
        (
            "-cshardpool.consistency=eventual -c work_mem=7MB",
            "eventual",
        ),
        ("--shardpool.consistency=eventual", "eventual"),
        (
            r"-c shardpool.consistency=bounded_staleness(\ 2s\ )",
            "bounded_staleness(2s)",
        ),
    ] {
        let c = common::connect(&with_options(opts)).await;
        assert_eq!(
            value(&c, "SHOW shardpool.consistency").await,
            want,
            "{opts}"
        );
        // Kept by the proxy, never sent to Postgres (which would take it as a placeholder variable).
        assert_eq!(
            value(
                &c,
                "SELECT coalesce(current_setting('shardpool.consistency', true), 'unset')"
            )
            .await,
            "unset",
            "{opts}"
        );
        if opts.contains("work_mem") {
            assert_eq!(value(&c, "SHOW work_mem").await, "7MB");
        }
        // RESET goes back to the startup value, as for Postgres' own settings; SET still works over it.
        c.batch_execute("SET shardpool.consistency = strong")
            .await
            .unwrap();
        assert_eq!(value(&c, "SHOW shardpool.consistency").await, "strong");
        c.batch_execute("RESET shardpool.consistency")
            .await
            .unwrap();
        assert_eq!(
            value(&c, "SHOW shardpool.consistency").await,
            want,
            "{opts}"
        );
    }
    // A causal token can come the same way.
    let c = common::connect(&with_options("-c shardpool.causal_token=0/3000148")).await;
    assert_eq!(value(&c, "SHOW shardpool.causal_token").await, "0/3000148");

    // Bad values and unknown names refuse the login, with Postgres' SQLSTATEs and a message that says why.
    for (opts, code, says) in [
        (
            "-c shardpool.consistency=sometimes",
            "22023",
            "unknown consistency",
        ),
        (
            "-c shardpool.causal_token=nonsense",
            "22023",
            "shardpool.causal_token",
        ),
        (
            "-c shardpool.nope=1",
            "42704",
            "unrecognized configuration parameter \"shardpool.nope\"",
        ),
        ("-c shardpool.shard=1", "0A000", "is not sharded"),
    ] {
        let e = common::try_connect(&with_options(opts))
            .await
            .err()
            .unwrap();
        assert_eq!(common::sqlstate(&e), code, "{opts}: {e}");
        let db = e.as_db_error().unwrap();
        assert_eq!(db.severity(), "FATAL", "{opts}");
        assert!(db.message().contains(says), "{opts}: {}", db.message());
    }

    // psql with PGOPTIONS, as the issue tried it.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql(
            proxy.port,
            &[(
                "PGOPTIONS",
                "-c shardpool.consistency=eventual -c work_mem=7MB",
            )],
            &["SHOW shardpool.consistency", "SHOW work_mem"],
        )
    });
    assert!(ok, "{err}");
    assert_eq!(out, "eventual\n7MB");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        psql(
            proxy.port,
            &[("PGOPTIONS", "-c shardpool.consistency=sometimes")],
            &["SELECT 1"],
        )
    });
    assert!(!ok);
    assert!(
        err.contains("invalid value for parameter \"shardpool.consistency\""),
        "{err}"
    );
    // The proxy is fine after the refusals.
    let c = proxy.connect().await;
    assert_eq!(value(&c, "SELECT 1").await, "1");
    let _ = reads_served;
    let _ = Replicated::start;
    let _ = Duration::ZERO;
}
