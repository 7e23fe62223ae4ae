//! Consistency across connections against a real primary and real streaming replicas (one delayed): the
//! `shardpool.*` settings a client gives at startup, the proxy-wide and cluster-wide causal modes, monotonic reads,
//! and pipelines that mix reads and writes. Which server answered is read from `inet_server_port()`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::replicas::{reads_served, replica_rows, wait_until_lagging, Replicated};
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
}

/// Reads wait as long as it takes a replica to catch up (not the default 100 ms before falling back to the primary):
/// on a loaded test machine replay can take longer, and the tests assert that replicas serve a share of the reads.
/// Correctness does not depend on it: a read that gives up goes to the primary.
const PATIENT: &str = "read_your_writes_wait = \"5s\"";

const ITEMS: &str =
    "CREATE TABLE items (id bigint PRIMARY KEY, note text); GRANT ALL ON items TO app; \
     INSERT INTO items SELECT g, 'seed' FROM generate_series(1, 100) g";

/// Reads served by the replicas (not `primary`) since `before`.
/// Runs `insert` with `id` on `writer`, then counts the rows of `table` with that id as `reader` sees them.
async fn write_then_read(
    writer: &tokio_postgres::Client,
    reader: &tokio_postgres::Client,
    insert: &str,
    table: &str,
    id: i64,
) -> usize {
    writer.execute(insert, &[&id]).await.unwrap();
    reader
        .query(&format!("SELECT id FROM {table} WHERE id = $1"), &[&id])
        .await
        .unwrap()
        .len()
}

async fn replica_reads_since(
    proxy: &common::TestProxy,
    primary: u16,
    before: &HashMap<u16, u64>,
) -> u64 {
    reads_served(proxy)
        .await
        .iter()
        .filter(|(p, _)| **p != primary)
        .map(|(p, n)| n - before.get(p).copied().unwrap_or(0))
        .sum()
}

fn pgbench(port: u16, args: &[&str]) -> String {
    common::pgbench(port, args)
}

/// The issue's cases, as a new user meets them through the default mode (read_proxy_writes) with a replica far
/// behind: every new connection reads what earlier connections committed, and replicas still serve reads. The delay
/// is longer than the test ever runs, so the delayed replica never has a write of it and can never serve one of its
/// reads correctly; with 2 s, a read that waited that long for a server (a loaded machine) was rightly served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_mode_reads_writes_made_on_other_connections() {
    let cluster = Replicated::start(
        Some(Duration::from_secs(300)),
        "GRANT ALL ON SCHEMA public TO app",
    )
    .await;
    let proxy = cluster.proxy(PATIENT).await;
    let primary = cluster.primary_port();
    let c = proxy.connect().await;
    assert_eq!(
        value(&c, "SHOW shardpool.consistency").await,
        "read_proxy_writes"
    );
    let before = reads_served(&proxy).await;

    // psql: DDL, then a new psql reads the table.
    for i in 0..5 {
        let (ok, _, err) = tokio::task::block_in_place(|| {
            psql(
                proxy.port,
                &[],
                &[&format!(
                    "CREATE TABLE t{i} (id int); INSERT INTO t{i} VALUES ({i})"
                )],
            )
        });
        assert!(ok, "{err}");
        let (ok, out, err) = tokio::task::block_in_place(|| {
            psql(proxy.port, &[], &[&format!("SELECT count(*) FROM t{i}")])
        });
        assert!(ok, "round {i}: {err}");
        assert_eq!(out, "1");
    }

    // pgbench -i, then a count from a new connection; a TPC-B run, then history holds every transaction pgbench
    // reported.
    tokio::task::block_in_place(|| pgbench(proxy.port, &["-i", "-s", "1", "-q"]));
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql(proxy.port, &[], &["SELECT count(*) FROM pgbench_accounts"])
    });
    assert!(ok, "{err}");
    assert_eq!(out, "100000");
    let report = tokio::task::block_in_place(|| {
        pgbench(proxy.port, &["-n", "-c", "4", "-j", "2", "-t", "50"])
    });
    let processed: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{report}"));
    assert_eq!(processed, 200);
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql(proxy.port, &[], &["SELECT count(*) FROM pgbench_history"])
    });
    assert!(ok, "{err}");
    assert_eq!(out, processed.to_string());

    // An application's pool: each task writes on one connection and reads on another, concurrently.
    c.batch_execute("CREATE TABLE web (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..10i64 {
        let url = proxy.app_url();
        tasks.push(tokio::spawn(async move {
            let (a, b) = (common::connect(&url).await, common::connect(&url).await);
            for round in 0..10i64 {
                let id = t * 100 + round;
                let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let n =
                    write_then_read(writer, reader, "INSERT INTO web VALUES ($1)", "web", id).await;
                assert_eq!(
                    n, 1,
                    "task {t} round {round}: a write on one connection was not read on the other"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let replica_reads = replica_reads_since(&proxy, primary, &before).await;
    assert!(
        replica_reads >= 50,
        "replicas served only {replica_reads} reads"
    );
    // The delayed replica never had the rows in time: every one of its reads would have been stale.
    let rows = replica_rows(&proxy).await;
    assert_eq!(
        rows[&cluster.slow_port()]["reads_served"]
            .parse::<u64>()
            .unwrap(),
        before[&cluster.slow_port()],
        "the delayed replica served a read"
    );
}

/// Two shardpool instances in front of the same servers, read_all_writes: a write through one instance, or
/// straight on the primary, is always read through the other; concurrent reads share their question to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_all_writes_sees_writes_made_elsewhere() {
    let cluster = Replicated::start(Some(Duration::from_secs(2)), ITEMS).await;
    let a = cluster
        .proxy(&format!("{PATIENT}\nconsistency = \"read_all_writes\""))
        .await;
    let b = cluster
        .proxy(&format!("{PATIENT}\nconsistency = \"read_all_writes\""))
        .await;
    let primary = cluster.primary_port();
    let before = reads_served(&b).await;
    let direct = common::connect(&cluster.backend.direct_url()).await;
    let (wa, rb) = (a.connect().await, b.connect().await);
    for i in 0..40i64 {
        let id = 1_000 + i;
        let writer = if i % 2 == 0 { &wa } else { &direct };
        let n = write_then_read(
            writer,
            &rb,
            "INSERT INTO items VALUES ($1, 'elsewhere')",
            "items",
            id,
        )
        .await;
        assert_eq!(n, 1, "write {i} was not read through the other instance");
    }
    assert!(replica_reads_since(&b, primary, &before).await >= 20);

    // 20 sessions reading at once: far fewer questions to the primary than reads.
    let queries = |rows: &HashMap<u16, HashMap<String, String>>| {
        rows[&primary]["position_queries"].parse::<u64>().unwrap()
    };
    let asked_before = queries(&replica_rows(&b).await);
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut i = 100_000i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                direct
                    .execute("INSERT INTO items VALUES ($1, 'churn')", &[&i])
                    .await
                    .unwrap();
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = b.app_url();
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&url).await;
            for _ in 0..20 {
                c.query("SELECT count(*) FROM items", &[]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    churn.await.unwrap();
    let asked = queries(&replica_rows(&b).await) - asked_before;
    // The question is a supervised background task, running without failures.
    let task = b
        .admin("SHOW TASKS")
        .await
        .into_iter()
        .find(|r| r["task"] == "primary position")
        .expect("no primary position task in SHOW TASKS");
    assert_eq!(
        (task["state"].as_str(), task["failures"].as_str()),
        ("running", "0")
    );
    assert!(asked > 0 && asked < 400, "{asked} questions for 400 reads");
}

/// Monotonic reads: with writes going on and a replica 1 s behind the other, a session's reads never go back in
/// time in any mode but eventual, where they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_in_time_across_replicas_with_different_lag() {
    let cluster = Replicated::start(Some(Duration::from_secs(1)), ITEMS).await;
    let proxy = cluster.proxy(PATIENT).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Writes straight on the primary: no mode forces a wait for them, so reads may use either replica.
    let churn = {
        let stop = Arc::clone(&stop);
        let direct = common::connect(&cluster.backend.direct_url()).await;
        tokio::spawn(async move {
            let mut i = 100_000i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                direct
                    .execute("INSERT INTO items VALUES ($1, 'churn')", &[&i])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    wait_until_lagging(&proxy, cluster.slow_port(), 500).await;
    let served: Arc<Mutex<HashMap<String, HashMap<u16, u64>>>> = Default::default();
    let mut went_back = HashMap::new();
    for mode in [
        "eventual",
        "bounded_staleness(5s)",
        "read_your_writes",
        "read_proxy_writes",
    ] {
        let c = proxy.connect().await;
        c.batch_execute(&format!("SET shardpool.consistency = '{mode}'"))
            .await
            .unwrap();
        let mut last = 0i64;
        let mut back = 0;
        // eventual is the control: it reads until it has gone back in time once (under heavy load a replica can
        // be banned for a while after a slow poll, and then all reads go to the other one).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for n in 0.. {
            let control = mode == "eventual";
            if (!control && n == 100)
                || (control && (back > 0 || std::time::Instant::now() > deadline))
            {
                break;
            }
            let row = c
                .query_one("SELECT max(id), inet_server_port() FROM items", &[])
                .await
                .unwrap();
            let (max, port): (i64, i32) = (row.get(0), row.get(1));
            if max < last {
                back += 1;
            }
            last = last.max(max);
            *served
                .lock()
                .unwrap()
                .entry(mode.into())
                .or_default()
                .entry(port as u16)
                .or_default() += 1;
        }
        went_back.insert(mode, back);
    }
    stop.store(true, Ordering::Relaxed);
    churn.await.unwrap();
    let served = served.lock().unwrap().clone();
    // The setup can show time going backwards: eventual alternates between the replicas.
    assert!(
        went_back["eventual"] > 0,
        "{went_back:?} {served:?} {:?}",
        replica_rows(&proxy).await
    );
    for mode in [
        "bounded_staleness(5s)",
        "read_your_writes",
        "read_proxy_writes",
    ] {
        assert_eq!(went_back[mode], 0, "{mode}: {went_back:?} {served:?}");
        // And the reads were still served by replicas.
        let on_replicas: u64 = served[mode]
            .iter()
            .filter(|(p, _)| **p != cluster.primary_port())
            .map(|(_, n)| n)
            .sum();
        assert!(on_replicas >= 50, "{mode}: {served:?}");
    }
}

/// Ports of the DataRows (each `inet_server_port()`) and whether an error came, in a raw reply.
fn ports_in(replies: &[String]) -> (Vec<u16>, bool) {
    let ports = replies
        .iter()
        .filter_map(|r| r.strip_prefix("D:[Some(\""))
        .map(|r| r.trim_end_matches("\")]").parse().unwrap())
        .collect();
    (ports, replies.iter().any(|r| r.starts_with("E:")))
}

/// A pipeline (several extended-protocol statements before Sync, each sent in its own write) that writes anywhere
/// runs on the primary as a whole, even when it starts with a read; one that only reads may use a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_writes_runs_on_the_primary() {
    let cluster = Replicated::start(None, ITEMS).await;
    let proxy = cluster.proxy(PATIENT).await;
    let primary = cluster.primary_port();
    let mut raw = common::raw::Raw::connect(proxy.port, "app", "secret", DB).await;
    let read = "SELECT inet_server_port()";
    for i in 0..10 {
        // Read, then write, one Sync.
        raw.parse("", read).await;
        raw.bind_execute("").await;
        raw.parse(
            "",
            &format!(
                "INSERT INTO items VALUES ({}, 'p') RETURNING inet_server_port()",
                5_000 + i
            ),
        )
        .await;
        raw.bind_execute("").await;
        raw.sync().await;
        let replies = raw.replies().await;
        assert_eq!(
            ports_in(&replies),
            (vec![primary, primary], false),
            "{replies:?}"
        );
    }
    // A write prepared earlier, executed by name after a read in the same batch.
    raw.parse(
        "ins",
        "INSERT INTO items VALUES (7000, 'named') RETURNING inet_server_port()",
    )
    .await;
    raw.sync().await;
    raw.replies().await;
    raw.parse("", read).await;
    raw.bind_execute("").await;
    raw.bind_execute("ins").await;
    raw.sync().await;
    let replies = raw.replies().await;
    assert_eq!(
        ports_in(&replies),
        (vec![primary, primary], false),
        "{replies:?}"
    );

    // Reads only: a replica.
    let before = reads_served(&proxy).await;
    for _ in 0..10 {
        raw.parse("", read).await;
        raw.bind_execute("").await;
        raw.parse("", "SELECT inet_server_port() FROM items WHERE id = 7000")
            .await;
        raw.bind_execute("").await;
        raw.sync().await;
        let replies = raw.replies().await;
        let (ports, error) = ports_in(&replies);
        assert!(!error, "{replies:?}");
        assert_eq!(ports.len(), 2, "{replies:?}");
        assert_eq!(ports[0], ports[1]);
    }
    assert!(replica_reads_since(&proxy, primary, &before).await >= 5);

    // Several batches in one pipeline, `[read; Sync; write; Sync; read; Sync]`: each Sync ends a transaction that is
    // routed on its own. The write batch arrives while the read runs on the replica (seen in its pg_stat_activity),
    // so it must wait for that read's ReadyForQuery and go to the primary, not follow the read onto the replica.
    let slow_read = "/* shardpool.route=replica */ SELECT inet_server_port() FROM pg_sleep(3)";
    for i in 0..2 {
        raw.parse("", slow_read).await;
        raw.bind_execute("").await;
        raw.sync().await;
        common::eventually(
            Duration::from_secs(30),
            "the read runs on the replica",
            || {
                let sql =
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM pg_sleep(3)' \
                       AND state = 'active' AND pid <> pg_backend_pid()";
                let running = tokio::task::block_in_place(|| cluster.fast.sql(DB, sql).unwrap());
                async move { running.trim() == "1" }
            },
        )
        .await;
        raw.parse(
            "",
            &format!(
                "INSERT INTO items VALUES ({}, 'pipelined') RETURNING inet_server_port()",
                8_000 + i
            ),
        )
        .await;
        raw.bind_execute("").await;
        raw.sync().await;
        raw.parse("", read).await;
        raw.bind_execute("").await;
        raw.sync().await;
        let first = raw.replies().await;
        let second = raw.replies().await;
        let third = raw.replies().await;
        assert_eq!(
            ports_in(&first),
            (vec![cluster.fast.port()], false),
            "{first:?}"
        );
        assert_eq!(ports_in(&second), (vec![primary], false), "{second:?}");
        assert!(!ports_in(&third).1, "{third:?}");
    }
    let rows = cluster
        .backend
        .sql("SELECT count(*) FROM items WHERE id BETWEEN 8000 AND 8001");
    assert_eq!(rows.trim(), "2");
}

/// psycopg and asyncpg pools (tests/python_replicated) through the default mode: each task writes on one pooled
/// connection and reads on another, with a replica 2 s behind; replicas still serve reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pools_read_writes_made_on_other_connections() {
    let python = tokio::task::spawn_blocking(common::python::python)
        .await
        .unwrap();
    let cluster = Replicated::start(
        Some(Duration::from_secs(2)),
        "CREATE TABLE web_py (id bigint PRIMARY KEY); GRANT ALL ON web_py TO app",
    )
    .await;
    let proxy = cluster.proxy(PATIENT).await;
    let before = reads_served(&proxy).await;
    let asked = |rows: HashMap<u16, HashMap<String, String>>| {
        rows[&cluster.primary_port()]["position_queries"]
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(asked(replica_rows(&proxy).await), 0);
    let out = tokio::process::Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python_replicated",
        ])
        .current_dir(common::python::repo())
        .env("SHARDPOOL_URL", proxy.app_url())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(
        text.contains("3 passed") && !text.contains("skipped"),
        "{text}"
    );
    let replica_reads = replica_reads_since(&proxy, cluster.primary_port(), &before).await;
    assert!(
        replica_reads >= 40,
        "replicas served only {replica_reads} reads"
    );
    // The asyncpg connection that chose read_all_writes in its startup parameters asked the primary's position.
    assert!(asked(replica_rows(&proxy).await) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_a_client_that_keeps_its_server_are_read_from_other_connections() {
    let cluster = Replicated::start(
        Some(Duration::from_secs(2)),
        "CREATE TABLE kept (id int); GRANT ALL ON kept TO app",
    )
    .await;
    let proxy = cluster.proxy(PATIENT).await;
    // LISTEN pins the client to its server: its transactions never release it to the pool.
    let writer = proxy.connect().await;
    writer.batch_execute("LISTEN somewhere").await.unwrap();
    for i in 1..=10i64 {
        writer
            .batch_execute(&format!("INSERT INTO kept VALUES ({i})"))
            .await
            .unwrap();
        // A new connection, with no history of its own, must see every write committed through this proxy.
        let reader = proxy.connect().await;
        assert_eq!(
            value(&reader, "SELECT count(*) FROM kept").await,
            i.to_string(),
            "round {i}"
        );
    }
}
