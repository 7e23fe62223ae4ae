//! Read/write splitting against a real primary and two real streaming replicas, one of them delayed by
//! `recovery_min_apply_delay = 2s`. Which server ran a statement is read from `inet_server_port()` inside it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestProxy};
use shardpool::pgcluster::{PgServer, ServerOptions};

struct Cluster {
    backend: Backend,
    fast: PgServer,
    slow: Option<PgServer>,
}

impl Cluster {
    /// A primary with `synchronous_commit = on` (as in production: a commit is in the WAL the replicas stream
    /// when it returns), a replica, and optionally a replica delayed by `delay`.
    async fn start(delay: Option<Duration>) -> Cluster {
        let opts = ServerOptions::default().with("synchronous_commit", "on");
        let backend = Backend::start_with(opts).await;
        backend.sql(
            "CREATE TABLE items (id bigint PRIMARY KEY, note text); \
             CREATE SEQUENCE item_ids; \
             CREATE FUNCTION port_volatile() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT inet_server_port()'; \
             CREATE VIEW next_ids AS SELECT nextval('item_ids') AS n, inet_server_port() AS port; \
             GRANT ALL ON items, item_ids, next_ids TO app; \
             INSERT INTO items SELECT g, 'seed' FROM generate_series(1, 100) g",
        );
        let (fast, slow) = tokio::task::block_in_place(|| {
            let fast = backend.pg.start_replica(None).unwrap();
            let slow = delay.map(|d| backend.pg.start_replica(Some(d)).unwrap());
            (fast, slow)
        });
        Cluster {
            backend,
            fast,
            slow,
        }
    }

    fn primary_port(&self) -> u16 {
        self.backend.pg.port()
    }

    fn slow_port(&self) -> u16 {
        self.slow.as_ref().map(|s| s.port()).unwrap_or(0)
    }

    async fn proxy(&self, database_lines: &str) -> TestProxy {
        let mut replicas = vec![format!("{{ port = {} }}", self.fast.port())];
        if let Some(slow) = &self.slow {
            replicas.push(format!("{{ port = {} }}", slow.port()));
        }
        let toml = format!(
            "{}\nreplicas = [{}]\n{database_lines}\n",
            self.backend
                .config_toml("pool_size = 10\nreplica_poll_interval = \"50ms\""),
            replicas.join(", ")
        );
        TestProxy::start(&toml).await
    }
}

async fn port_of(client: &tokio_postgres::Client, sql: &str) -> u16 {
    let row = client.query_one(sql, &[]).await.unwrap();
    let port: i32 = row.get(0);
    port as u16
}

/// Runs `sql` through the simple protocol and returns the first column of the first row.
async fn simple_value(client: &tokio_postgres::Client, sql: &str) -> String {
    for msg in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
            return r.get(0).unwrap().to_owned();
        }
    }
    panic!("no row from {sql}")
}

/// Keeps the primary writing, so the delayed replica stays ~2 s behind; stops when dropped.
struct Churn(Arc<AtomicBool>);

impl Churn {
    fn start(url: String) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            let c = common::connect(&url).await;
            let mut i = 1_000_000i64;
            while !flag.load(Ordering::Relaxed) {
                i += 1;
                c.execute("INSERT INTO items VALUES ($1, 'churn')", &[&i])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Churn(stop)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn replica_rows(proxy: &TestProxy) -> HashMap<u16, HashMap<String, String>> {
    proxy
        .admin("SHOW REPLICAS")
        .await
        .into_iter()
        .map(|r| (r["port"].parse().unwrap(), r))
        .collect()
}

/// Waits until the monitor reports the delayed replica more than `ms` behind.
async fn wait_until_lagging(proxy: &TestProxy, port: u16, ms: u64) {
    common::eventually(
        Duration::from_secs(30),
        "the delayed replica to lag",
        || async {
            let rows = replica_rows(proxy).await;
            rows.get(&port)
                .and_then(|r| r.get("lag_ms"))
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|lag| lag > ms)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_modes_against_real_replicas() {
    let cluster = Cluster::start(Some(Duration::from_secs(2))).await;
    // Reads wait up to 1 s for a replica (not 100 ms), for a loaded machine: the checks below are about where reads
    // go, not how fast replicas are. Less than the delayed replica's 2 s, so it still never has a row in time.
    let proxy = cluster
        .proxy("consistency = \"read_your_writes\"\nread_your_writes_wait = \"1s\"")
        .await;
    let primary = cluster.primary_port();
    let fast = cluster.fast.port();
    let slow = cluster.slow_port();

    // The monitor sees every server in its role.
    common::eventually(
        Duration::from_secs(20),
        "monitor to poll every server",
        || async {
            let rows = replica_rows(&proxy).await;
            rows.len() == 3
                && rows[&primary]["role"] == "primary"
                && rows[&fast]["in_recovery"] == "t"
                && rows[&slow]["in_recovery"] == "t"
        },
    )
    .await;

    // Writes, and reads that hide a write, run on the primary.
    let c = proxy.connect().await;
    let ins = c
        .query_one(
            "INSERT INTO items VALUES (5001, 'w') RETURNING inet_server_port()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ins.get::<_, i32>(0) as u16, primary);
    for sql in [
        "SELECT inet_server_port() FROM items WHERE id = 1 FOR UPDATE",
        "SELECT inet_server_port() FROM items WHERE id = 1 FOR SHARE",
        "SELECT inet_server_port() FROM items WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT port_volatile()",
        "SELECT inet_server_port() + 0 * nextval('item_ids')::int",
        "WITH d AS (DELETE FROM items WHERE id = -1 RETURNING id) SELECT inet_server_port() FROM (SELECT 1) x",
    ] {
        assert_eq!(port_of(&c, sql).await, primary, "{sql}");
    }
    // A write hidden where classification cannot see it (a view calling nextval) is refused by the replica
    // (25006) before the client saw anything, and re-run on the primary.
    let row = c
        .query_one("SELECT n, port FROM next_ids", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1) as u16, primary);
    // A read-write transaction runs on the primary; a read-only one may use a replica.
    assert_eq!(
        simple_value(&c, "BEGIN; SELECT inet_server_port(); COMMIT").await,
        primary.to_string()
    );
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, primary);
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert_ne!(port_of(&c, "SELECT inet_server_port()").await, primary);
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET TRANSACTION READ ONLY").await.unwrap();
    assert_ne!(port_of(&c, "SELECT inet_server_port()").await, primary);
    c.batch_execute("COMMIT").await.unwrap();
    // An empty transaction needs no server, and a statement after it is routed afresh.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    // A hint overrides the classification.
    assert_eq!(
        simple_value(
            &c,
            "/* shardpool.route=primary */ SELECT inet_server_port()"
        )
        .await,
        primary.to_string()
    );
    // SHOW shardpool.route explains without running.
    let route = c
        .simple_query("SHOW shardpool.route SELECT * FROM items FOR UPDATE")
        .await
        .unwrap();
    let row = route
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get("route"), Some("primary"));
    assert_eq!(row.get("access"), Some("write"));

    // read_your_writes: 200 rounds of insert-then-read from 20 concurrent sessions always see their row, and
    // most reads are still served by replicas.
    let served: Arc<std::sync::Mutex<HashMap<u16, u64>>> = Default::default();
    let mut tasks = Vec::new();
    for s in 0..20i64 {
        let url = proxy.app_url();
        let served = Arc::clone(&served);
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&url).await;
            for round in 0..10i64 {
                let id = 10_000 + s * 100 + round;
                c.execute("INSERT INTO items VALUES ($1, 'ryw')", &[&id])
                    .await
                    .unwrap();
                let rows = c
                    .query(
                        "SELECT id, inet_server_port() FROM items WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    rows.len(),
                    1,
                    "session {s} round {round} did not read its own write"
                );
                let port: i32 = rows[0].get(1);
                *served.lock().unwrap().entry(port as u16).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let served = served.lock().unwrap().clone();
    let replica_reads =
        served.get(&fast).copied().unwrap_or(0) + served.get(&slow).copied().unwrap_or(0);
    assert_eq!(served.values().sum::<u64>(), 200);
    assert!(
        replica_reads > 100,
        "most read-your-writes reads should be served by replicas: {served:?}"
    );
    // The delayed replica never had the row in time, so it served none of them.
    assert_eq!(served.get(&slow), None, "{served:?}");

    // The causal token carries the guarantee to another connection.
    let writer = proxy.connect().await;
    for i in 0..20i64 {
        let id = 50_000 + i;
        writer
            .execute("INSERT INTO items VALUES ($1, 'token')", &[&id])
            .await
            .unwrap();
        let token = simple_value(&writer, "SHOW shardpool.causal_token").await;
        let reader = proxy.connect().await;
        reader
            .batch_execute(&format!("SET shardpool.causal_token = '{token}'"))
            .await
            .unwrap();
        let n = reader
            .query("SELECT id FROM items WHERE id = $1", &[&id])
            .await
            .unwrap()
            .len();
        assert_eq!(n, 1, "causal token {token} did not carry the write");
    }

    // eventual: the delayed replica does serve stale reads (so the checks above could fail).
    let _churn = Churn::start(cluster.backend.direct_url());
    wait_until_lagging(&proxy, slow, 1000).await;
    let c = proxy.connect().await;
    c.batch_execute("SET shardpool.consistency = eventual")
        .await
        .unwrap();
    assert_eq!(
        simple_value(&c, "SHOW shardpool.consistency").await,
        "eventual"
    );
    let mut stale_from_slow = 0;
    for i in 0..40i64 {
        let id = 60_000 + i;
        c.execute("INSERT INTO items VALUES ($1, 'eventual')", &[&id])
            .await
            .unwrap();
        let row = c
            .query_one(
                "SELECT inet_server_port(), EXISTS (SELECT 1 FROM items WHERE id = $1)",
                &[&id],
            )
            .await
            .unwrap();
        let (port, found): (i32, bool) = (row.get(0), row.get(1));
        if port as u16 == slow && !found {
            stale_from_slow += 1;
        }
    }
    assert!(
        stale_from_slow > 0,
        "eventual never read from the delayed replica"
    );

    // bounded_staleness(500ms): the delayed replica (2 s behind under this load) serves nothing.
    c.batch_execute("SET shardpool.consistency = 'bounded_staleness(500ms)'")
        .await
        .unwrap();
    let before = replica_rows(&proxy).await[&slow]["reads_served"]
        .parse::<u64>()
        .unwrap();
    let mut ports = HashMap::<u16, u64>::new();
    for _ in 0..100 {
        *ports
            .entry(port_of(&c, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    assert_eq!(ports.get(&slow), None, "{ports:?}");
    assert!(ports.get(&fast).copied().unwrap_or(0) > 0, "{ports:?}");
    let after = replica_rows(&proxy).await[&slow]["reads_served"]
        .parse::<u64>()
        .unwrap();
    assert_eq!(before, after);

    // strong: everything on the primary.
    c.batch_execute("SET shardpool.consistency = strong")
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(port_of(&c, "SELECT inet_server_port()").await, primary);
    }
    // Unknown shardpool settings and bad values are errors with the right SQLSTATE.
    let e = c
        .batch_execute("SET shardpool.consistency = sometimes")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "22023");
    let e = c
        .batch_execute("SET shardpool.causal_token = 'nonsense'")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "22023");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_load_fails_no_reads() {
    let mut cluster = Cluster::start(None).await;
    let second = tokio::task::block_in_place(|| cluster.backend.pg.start_replica(None).unwrap());
    cluster.slow = Some(second);
    let proxy = cluster.proxy("consistency = \"eventual\"").await;
    let victim = cluster.fast.port();
    common::eventually(
        Duration::from_secs(20),
        "monitor to see the replicas",
        || async {
            let rows = replica_rows(&proxy).await;
            rows.get(&victim).is_some_and(|r| r["in_recovery"] == "t")
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = proxy.app_url();
        let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&url).await;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = c.query("SELECT count(*) FROM items", &[]).await {
                    // The first failure is the answer; a closed connection would fail again at once, forever.
                    reads.fetch_add(1_000_000, Ordering::Relaxed);
                    return Some(format!("{e:?}"));
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            None
        }));
    }
    let wait_reads = |n: u64| {
        let reads = Arc::clone(&reads);
        async move {
            common::eventually(Duration::from_secs(30), "reads to flow", || {
                let reads = Arc::clone(&reads);
                async move { reads.load(Ordering::Relaxed) >= n }
            })
            .await
        }
    };
    wait_reads(500).await;
    let served_before = replica_rows(&proxy).await[&victim]["reads_served"]
        .parse::<u64>()
        .unwrap();
    assert!(
        served_before > 0,
        "the victim served no reads before the kill"
    );
    tokio::task::block_in_place(|| cluster.fast.kill().unwrap());
    let after_kill = reads.load(Ordering::Relaxed);
    wait_reads(after_kill + 1000).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let failure = t.await.unwrap();
        assert!(failure.is_none(), "a client read failed: {failure:?}");
    }
    let rows = replica_rows(&proxy).await;
    assert_eq!(rows[&victim]["banned"], "t", "{rows:?}");
}
