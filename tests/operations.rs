//! Operating shardpool against a real Postgres: pool sizing and fairness, the server-connection lifecycle
//! (min_pool_size, idle timeout, lifetime, health check), client timeouts, session pooling, and the real binary
//! (SIGHUP reload, check-config, graceful SIGTERM). Server-side facts are read from Postgres directly
//! (pg_stat_activity), never from the proxy's own account of them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, sqlstate, Backend, TestProxy, DB};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

const WAIT: Duration = Duration::from_secs(10);

type Row = HashMap<String, String>;

/// A client whose connection task is kept, so the error that ended the connection can be examined.
async fn connect_watched(url: &str) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    (client, tokio::spawn(conn))
}

/// The error that ended a watched connection (within `WAIT`).
async fn connection_error(
    conn: JoinHandle<Result<(), tokio_postgres::Error>>,
) -> tokio_postgres::Error {
    match tokio::time::timeout(WAIT, conn).await {
        Ok(Ok(Err(e))) => e,
        Ok(Ok(Ok(()))) => panic!("the connection ended without an error"),
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("the connection was not closed within {WAIT:?}"),
    }
}

/// The first column of the first row of a simple query.
async fn scalar(client: &Client, sql: &str) -> String {
    for msg in client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        if let SimpleQueryMessage::Row(row) = msg {
            return row.get(0).unwrap_or("").to_owned();
        }
    }
    panic!("{sql}: no row");
}

async fn backend_pid(client: &Client) -> i32 {
    scalar(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap()
}

/// Backends of user app in appdb other than the observer itself: with only proxy clients around, these are the
/// proxy's server connections.
async fn proxy_backends(observer: &Client) -> Vec<i32> {
    observer
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE usename = 'app' AND datname = $1 AND backend_type = 'client backend'
               AND pid <> pg_backend_pid() ORDER BY pid",
            &[&DB],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn pool_row(proxy: &TestProxy) -> Row {
    proxy
        .admin("SHOW POOLS")
        .await
        .into_iter()
        .find(|r| r["database"] == DB && r["user"] == "app")
        .expect("a pool for appdb/app")
}

fn num(row: &Row, col: &str) -> i64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} in {row:?}"))
}

async fn cl_waiting(proxy: &TestProxy) -> i64 {
    num(&pool_row(proxy).await, "cl_waiting")
}

// ---------------------------------------------------------------------------------------------------------------
// Pool behaviour

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_2_serves_20_busy_clients_with_never_more_than_2_server_connections() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("pool_size = 2").await;
    let observer = common::connect(&backend.direct_url()).await;
    observer
        .batch_execute("CREATE TABLE load (client int, i int, pid int)")
        .await
        .unwrap();

    // Postgres' own view, sampled all through the run.
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (stop, max_seen) = (Arc::clone(&stop), Arc::clone(&max_seen));
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = proxy_backends(&observer).await.len() as i64;
                max_seen.fetch_max(n, Ordering::Relaxed);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (observer, samples)
        })
    };

    const CLIENTS: i32 = 20;
    const TXNS: i32 = 20;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = proxy.app_url();
        tasks.push(tokio::spawn(async move {
            let mut client = common::connect(&url).await;
            let mut pids = BTreeSet::new();
            for i in 0..TXNS {
                let tx = client.transaction().await.unwrap();
                tx.execute(
                    "INSERT INTO load VALUES ($1, $2, pg_backend_pid())",
                    &[&c, &i],
                )
                .await
                .unwrap();
                let pid: i32 = tx
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                tx.commit().await.unwrap();
                pids.insert(pid);
            }
            pids
        }));
    }
    let mut client_pids = BTreeSet::new();
    for t in tasks {
        let pids = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("clients did not finish")
            .unwrap();
        client_pids.extend(pids);
    }
    stop.store(true, Ordering::Relaxed);
    let (observer, samples) = monitor.await.unwrap();

    let max = max_seen.load(Ordering::Relaxed);
    assert!(samples > 0);
    assert!(
        (1..=2).contains(&max),
        "Postgres saw {max} proxy backends at once with pool_size = 2"
    );
    let row = observer
        .query_one(
            "SELECT count(*), count(DISTINCT (client, i)), count(DISTINCT pid) FROM load",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct, pids): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        rows,
        i64::from(CLIENTS * TXNS),
        "every transaction committed once"
    );
    assert_eq!(distinct, rows);
    assert!(pids <= 2, "{pids} distinct server backends did the work");
    assert!(client_pids.len() <= 2, "{client_pids:?}");
    let pool = pool_row(&proxy).await;
    assert!(
        num(&pool, "sv_active") + num(&pool, "sv_idle") + num(&pool, "sv_used") <= 2,
        "{pool:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_first_come_first_served() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("pool_size = 1").await;
    let holder = proxy.connect().await;
    holder
        .batch_execute("CREATE SEQUENCE served_order")
        .await
        .unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // Queue three waiters in a known order: each is seen waiting before the next one starts.
    let mut waiters = Vec::new();
    for i in 1..=3i64 {
        let client = proxy.connect().await;
        waiters.push(tokio::spawn(async move {
            // nextval runs on the server only once this waiter holds the connection: it numbers the service order.
            let n: i64 = scalar(&client, "SELECT nextval('served_order')")
                .await
                .parse()
                .unwrap();
            (i, n)
        }));
        eventually(WAIT, &format!("{i} clients waiting"), || async {
            cl_waiting(&proxy).await == i
        })
        .await;
    }
    assert!(waiters.iter().all(|w| !w.is_finished()));
    holder.batch_execute("COMMIT").await.unwrap();

    let mut order = Vec::new();
    for w in waiters {
        let (i, n) = tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
        order.push((n, i));
    }
    order.sort();
    let served: Vec<i64> = order.iter().map(|(_, i)| *i).collect();
    assert_eq!(served, [1, 2, 3], "service order by nextval: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_timeout_fails_a_waiting_query_with_53300() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("pool_size = 1").await;
    // Both log in (the first login connects to the server, which on a loaded machine can take longer than the
    // short timeout under test), then the timeout is lowered by RELOAD.
    let holder = proxy.connect().await;
    let other = proxy.connect().await;
    assert_eq!(scalar(&holder, "SELECT 1").await, "1");
    std::fs::write(
        &proxy.config_path,
        backend.config_toml("pool_size = 1\ncheckout_timeout = \"300ms\""),
    )
    .unwrap();
    common::connect(&proxy.admin_url())
        .await
        .simple_query("RELOAD")
        .await
        .unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), other.simple_query("SELECT 1"))
        .await
        .expect("the checkout timeout did not fire within 5 s")
        .unwrap_err();
    let waited = started.elapsed();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "53300", "{err}");
    assert!(
        db.message().contains("300ms"),
        "the message should name the timeout: {}",
        db.message()
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // Not fatal: once the holder commits, the same client goes on.
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(scalar(&other, "SELECT 42").await, "42");
}

// ---------------------------------------------------------------------------------------------------------------
// Server connection lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_server_connections_open_with_no_clients() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("min_pool_size = 2").await;
    let observer = common::connect(&backend.direct_url()).await;

    // Pools are created on first login, as in PgBouncer: one client comes and goes.
    {
        let client = proxy.connect().await;
        assert_eq!(scalar(&client, "SELECT 1").await, "1");
    }
    eventually(WAIT, "no app clients left", || async {
        let clients = proxy.admin("SHOW CLIENTS").await;
        !clients.iter().any(|c| c["user"] == "app")
    })
    .await;
    eventually(WAIT, "2 idle server connections in Postgres", || async {
        proxy_backends(&observer).await.len() == 2
    })
    .await;
    let pool = pool_row(&proxy).await;
    assert_eq!(num(&pool, "cl_active"), 0, "{pool:?}");
    assert_eq!(num(&pool, "sv_active"), 0, "{pool:?}");
    assert_eq!(num(&pool, "sv_idle") + num(&pool, "sv_used"), 2, "{pool:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_connections_above_min_pool_size() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy("min_pool_size = 1\nserver_idle_timeout = \"500ms\"")
        .await;
    let observer = common::connect(&backend.direct_url()).await;

    // Three transactions at once: three server connections.
    let mut clients = Vec::new();
    let mut pids = BTreeSet::new();
    for _ in 0..3 {
        let c = proxy.connect().await;
        c.batch_execute("BEGIN").await.unwrap();
        pids.insert(backend_pid(&c).await);
        clients.push(c);
    }
    assert_eq!(pids.len(), 3);
    let open: BTreeSet<i32> = proxy_backends(&observer).await.into_iter().collect();
    assert!(open.is_superset(&pids), "{open:?} lacks one of {pids:?}");
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    drop(clients);

    eventually(
        WAIT,
        "idle connections above min_pool_size closed",
        || async { proxy_backends(&observer).await.len() == 1 },
    )
    .await;
    let left = proxy_backends(&observer).await;
    assert!(pids.contains(&left[0]), "{left:?} not one of {pids:?}");
    let c = proxy.connect().await;
    assert_eq!(backend_pid(&c).await, left[0], "the survivor is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_replaces_old_connections() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy("pool_size = 1\nserver_lifetime = \"500ms\"")
        .await;
    let observer = common::connect(&backend.direct_url()).await;
    let client = proxy.connect().await;
    let first = backend_pid(&client).await;

    let c = &client;
    eventually(
        WAIT,
        "a new backend pid after server_lifetime",
        || async move { backend_pid(c).await != first },
    )
    .await;
    eventually(
        WAIT,
        "the expired backend is gone from Postgres",
        || async { !proxy_backends(&observer).await.contains(&first) },
    )
    .await;
    assert!(proxy_backends(&observer).await.len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_replaces_a_server_killed_while_idle() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy("pool_size = 1\nserver_check_delay = \"0\"")
        .await;
    let observer = common::connect(&backend.direct_url()).await;
    let client = proxy.connect().await;
    let pooled = backend_pid(&client).await;

    let killed: bool = observer
        .query_one("SELECT pg_terminate_backend($1)", &[&pooled])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    eventually(WAIT, "the pooled backend is gone", || async {
        !proxy_backends(&observer).await.contains(&pooled)
    })
    .await;

    // The next transaction must not land on the dead connection.
    let replacement = backend_pid(&client).await;
    assert_ne!(replacement, pooled);
    let other = proxy.connect().await;
    assert_eq!(scalar(&other, "SELECT 'still fine'").await, "still fine");
}

// ---------------------------------------------------------------------------------------------------------------
// Client timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_disconnects_idle_clients_with_57p05() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("client_idle_timeout = \"300ms\"").await;
    let (client, conn) = connect_watched(&proxy.app_url()).await;
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
    let idle_since = Instant::now();

    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), "57P05", "{err}");
    assert!(idle_since.elapsed() >= Duration::from_millis(250));
    assert!(client.is_closed());
    assert!(client.simple_query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_disconnects_and_rolls_back() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy("idle_transaction_timeout = \"300ms\"\npool_size = 1")
        .await;
    let observer = common::connect(&backend.direct_url()).await;
    observer
        .batch_execute("CREATE TABLE itx (x int)")
        .await
        .unwrap();

    let (client, conn) = connect_watched(&proxy.app_url()).await;
    client
        .batch_execute("BEGIN; INSERT INTO itx VALUES (1)")
        .await
        .unwrap();
    let err = connection_error(conn).await;
    assert_eq!(sqlstate(&err), "25P03", "{err}");

    let visible: i64 = observer
        .query_one("SELECT count(*) FROM itx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 0, "the abandoned transaction was rolled back");
    let in_tx: i64 = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_tx, 0);

    // The only server connection is clean and serves the next client.
    let next = proxy.connect().await;
    next.batch_execute("INSERT INTO itx VALUES (2)")
        .await
        .unwrap();
    let rows: Vec<i32> = observer
        .query("SELECT x FROM itx", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, [2]);
}

// ---------------------------------------------------------------------------------------------------------------
// Session pooling

/// Temp tables named sess_tmp in the current session (pg_class also lists other sessions' temp tables).
const TEMP_TABLE_COUNT: &str =
    "SELECT count(*) FROM pg_class WHERE relname = 'sess_tmp' AND relnamespace = pg_my_temp_schema()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_from_the_database_section_owns_a_server_and_resets_it() {
    let backend = Backend::start().await;
    // [databases.appdb] is the last table in the file: a line appended lands in it.
    let toml = backend.config_toml("pool_size = 1") + "pool_mode = \"session\"\n";
    let proxy = TestProxy::start(&toml).await;
    assert_eq!(pool_row_after_login(&proxy).await["pool_mode"], "session");

    let a = proxy.connect().await;
    let pid = backend_pid(&a).await;
    a.batch_execute("CREATE TEMP TABLE sess_tmp AS SELECT 1 AS x")
        .await
        .unwrap();
    for i in 2..=4 {
        a.batch_execute(&format!("BEGIN; INSERT INTO sess_tmp VALUES ({i}); COMMIT"))
            .await
            .unwrap();
        assert_eq!(
            backend_pid(&a).await,
            pid,
            "same server across transactions"
        );
    }
    assert_eq!(scalar(&a, "SELECT sum(x) FROM sess_tmp").await, "10");

    // B waits while A owns the only server, then gets it reset.
    let b = proxy.connect().await;
    let b_task = tokio::spawn(async move {
        let pid = backend_pid(&b).await;
        let temp = scalar(&b, TEMP_TABLE_COUNT).await;
        (pid, temp)
    });
    eventually(WAIT, "B waiting for A's server", || async {
        cl_waiting(&proxy).await == 1
    })
    .await;
    assert!(
        !b_task.is_finished(),
        "B was served while A owned the server"
    );
    drop(a);
    let (b_pid, temp) = tokio::time::timeout(WAIT, b_task)
        .await
        .expect("B was not served after A left")
        .unwrap();
    assert_eq!(
        b_pid, pid,
        "B got A's server (reset and reused, not replaced)"
    );
    assert_eq!(temp, "0", "A's temp table survived into B's session");
}

/// A pool exists only after a login; log one in and out to see its row.
async fn pool_row_after_login(proxy: &TestProxy) -> Row {
    let c = proxy.connect().await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
    drop(c);
    pool_row(proxy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_from_the_user_section_keeps_each_client_on_its_server() {
    let backend = Backend::start().await;
    let toml = backend.config_toml("pool_size = 2").replacen(
        "password = \"secret\"",
        "password = \"secret\"\npool_mode = \"session\"",
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    assert_eq!(pool_row(&proxy).await["pool_mode"], "session");

    a.batch_execute("CREATE TEMP TABLE sess_tmp (x int)")
        .await
        .unwrap();
    let (pid_a, pid_b) = (backend_pid(&a).await, backend_pid(&b).await);
    assert_ne!(pid_a, pid_b);
    // Interleaved transactions: in transaction mode both would share the most recently returned server.
    for i in 0..5 {
        a.batch_execute(&format!("BEGIN; INSERT INTO sess_tmp VALUES ({i}); COMMIT"))
            .await
            .unwrap();
        assert_eq!(backend_pid(&b).await, pid_b);
        assert_eq!(backend_pid(&a).await, pid_a);
        assert_eq!(scalar(&b, TEMP_TABLE_COUNT).await, "0");
    }
    assert_eq!(scalar(&a, "SELECT count(*) FROM sess_tmp").await, "5");
}

// ---------------------------------------------------------------------------------------------------------------
// The real binary

/// A `shardpool` child process, killed if a test fails before it exits by itself.
struct ProxyProcess {
    child: Child,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

impl ProxyProcess {
    /// Starts the binary on a free port; a port taken between choosing and binding it is retried.
    async fn start(backend: &Backend, extra_general: &str) -> ProxyProcess {
        for _ in 0..3 {
            if let Some(p) = Self::try_start(backend, extra_general).await {
                return p;
            }
        }
        panic!("could not start shardpool on a free port in 3 attempts");
    }

    async fn try_start(backend: &Backend, extra_general: &str) -> Option<ProxyProcess> {
        let dir = tempfile::tempdir().unwrap();
        let port = shardpool::pgcluster::free_port();
        let config = dir.path().join("shardpool.toml");
        std::fs::write(&config, process_config(backend, port, extra_general)).unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(common::bin("shardpool"))
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut p = ProxyProcess {
            child,
            stderr,
            _dir: dir,
            config,
            port,
        };
        let url = p.admin_url();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                if p.log().contains("Address already in use") {
                    return None;
                }
                panic!("shardpool exited with {status}:\n{}", p.log());
            }
            if common::try_connect(&url).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "shardpool never accepted connections:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(p)
    }

    fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    fn admin_url(&self) -> String {
        self.url("admin", "adminpw", "shardpool")
    }

    fn app_url(&self) -> String {
        self.url("app", "secret", DB)
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn config_value(&self, key: &str) -> String {
        let admin = common::connect(&self.admin_url()).await;
        common::admin_rows(&admin, "SHOW CONFIG")
            .await
            .into_iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in SHOW CONFIG"))["value"]
            .clone()
    }

    /// Waits until the process has logged `needle` (its log is the only sign that a signal was handled).
    async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never logged:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit by itself (polling its status), up to `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "shardpool did not exit within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn process_config(backend: &Backend, port: u16, extra_general: &str) -> String {
    let extra = format!("listen = \"127.0.0.1:{port}\"\n{extra_general}");
    backend.config_toml(&extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_and_survives_a_broken_file() {
    let backend = Backend::start().await;
    let mut p = ProxyProcess::start(&backend, "").await;
    let client = common::connect(&p.app_url()).await;
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
    assert_eq!(p.config_value("pool_size").await, "4");

    std::fs::write(&p.config, process_config(&backend, p.port, "pool_size = 9")).unwrap();
    p.signal(Signal::SIGHUP);
    eventually(WAIT, "SHOW CONFIG pool_size = 9 after SIGHUP", || async {
        p.config_value("pool_size").await == "9"
    })
    .await;
    assert_eq!(
        scalar(&client, "SELECT 2").await,
        "2",
        "client survives the reload"
    );

    // A broken file: the reload fails (and says so), the process keeps serving the old config.
    std::fs::write(&p.config, "[general]\npool_size = 0\n").unwrap();
    p.signal(Signal::SIGHUP);
    p.wait_for_log("reload failed").await;
    assert!(p.log().contains("general.pool_size"), "{}", p.log());
    assert!(p.child.try_wait().unwrap().is_none(), "{}", p.log());
    assert_eq!(p.config_value("pool_size").await, "9");
    assert_eq!(scalar(&client, "SELECT 3").await, "3");

    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}:\n{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |path: &Path| {
        Command::new(common::bin("shardpool"))
            .arg("--config")
            .arg(path)
            .arg("check-config")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };

    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        r#"
        [general]
        listen = "nowhere"
        pool_size = 0
        admin_users = ["ghost"]
        checkout_timeout = "0"

        [[users]]
        name = "app"

        [databases.appdb]
        port = 0
        min_pool_size = 3
        "#,
    )
    .unwrap();
    let out = check(&broken);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "check-config accepted a broken file:\n{text}"
    );
    for key in [
        "general.listen",
        "general.pool_size",
        "general.admin_users",
        "general.checkout_timeout",
        "users[0].password",
        "databases.appdb.port",
        "databases.appdb.min_pool_size",
    ] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }

    // A syntax error names the file.
    let garbled = dir.path().join("garbled.toml");
    std::fs::write(&garbled, "[general\npool_size = 3\n").unwrap();
    let out = check(&garbled);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(text.contains("garbled.toml"), "{text}");

    // The annotated example shipped in the repository is valid.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/shardpool.toml");
    let out = check(&example);
    assert!(
        out.status.success(),
        "config/shardpool.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[general]\nadmin_users = [\"admin\"]\n[[users]]\nname = \"admin\"\npassword = \"x\"\n[databases.appdb]\nport = 5432\n",
    )
    .unwrap();
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_transactions_commit_then_exits_0() {
    let backend = Backend::start().await;
    let shutdown_timeout = Duration::from_secs(30);
    let mut p = ProxyProcess::start(&backend, "shutdown_timeout = \"30s\"").await;
    let observer = common::connect(&backend.direct_url()).await;
    observer
        .batch_execute("CREATE TABLE shut (x int)")
        .await
        .unwrap();

    let (in_tx, in_tx_conn) = connect_watched(&p.app_url()).await;
    let (idle, idle_conn) = connect_watched(&p.app_url()).await;
    assert_eq!(scalar(&idle, "SELECT 1").await, "1");
    in_tx
        .batch_execute("BEGIN; INSERT INTO shut VALUES (1)")
        .await
        .unwrap();

    p.signal(Signal::SIGTERM);
    let signalled = Instant::now();

    // The idle client is told first; by then the shutdown has begun.
    let err = connection_error(idle_conn).await;
    assert_eq!(sqlstate(&err), "57P01", "{err}");
    // New connections are refused.
    let refused = common::try_connect(&p.app_url()).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted during shutdown"
    );
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited with a transaction open"
    );

    // The open transaction finishes normally.
    in_tx
        .batch_execute("INSERT INTO shut VALUES (2); COMMIT")
        .await
        .unwrap();
    let err = connection_error(in_tx_conn).await;
    assert_eq!(sqlstate(&err), "57P01", "{err}");

    let status = p.wait_exit(shutdown_timeout).await;
    assert!(status.success(), "{status}:\n{}", p.log());
    assert!(signalled.elapsed() < shutdown_timeout);
    let committed: i64 = observer
        .query_one("SELECT count(*) FROM shut", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(committed, 2);
    // Its server connections went with it.
    eventually(WAIT, "the proxy's server connections closed", || async {
        proxy_backends(&observer).await.is_empty()
    })
    .await;
}
