//! The admin console against a real Postgres: every SHOW command answers with PgBouncer's column names (the exact
//! lists for POOLS, CLIENTS, SERVERS and STATS, as PgBouncer documents them) and with values that match what is
//! really going on; RELOAD applies a new file without dropping clients and refuses a broken one; PAUSE waits for
//! open transactions and holds new ones until RESUME. Also over the extended protocol, as drivers that always use
//! it need.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{eventually, sqlstate, Backend, TestProxy, DB};
use tokio_postgres::{Client, SimpleQueryMessage};

type Row = HashMap<String, String>;

/// PgBouncer's SHOW POOLS columns, in its order (doc/usage.md, "SHOW POOLS"), then shardpool's own at the end
/// (which server, its role, the shard), so tools that read PgBouncer's columns by position keep working.
const POOLS_COLUMNS: [&str; 20] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
    "server",
    "role",
    "shard",
];

/// PgBouncer's SHOW CLIENTS and SHOW SERVERS columns (the same list for both).
const CONN_COLUMNS: [&str; 21] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// PgBouncer's SHOW STATS columns, in the order its RowDescription sends them (src/stats.c).
const STATS_COLUMNS: [&str; 23] = [
    "database",
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_client_parse_count",
    "total_server_parse_count",
    "total_bind_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
];

const WAIT: Duration = Duration::from_secs(10);

/// Runs a console command over the simple protocol: column names in order, and rows (NULL as "").
async fn table(client: &Client, sql: &str) -> (Vec<String>, Vec<Row>) {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for msg in msgs {
        match msg {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                let mut m = HashMap::new();
                for (i, c) in row.columns().iter().enumerate() {
                    m.insert(c.name().to_owned(), row.get(i).unwrap_or("").to_owned());
                }
                rows.push(m);
            }
            _ => {}
        }
    }
    (columns, rows)
}

async fn rows(client: &Client, sql: &str) -> Vec<Row> {
    table(client, sql).await.1
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

fn num(row: &Row, col: &str) -> i64 {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{col} is not a number in {row:?}"))
}

async fn pool_row(admin: &Client) -> Row {
    rows(admin, "SHOW POOLS")
        .await
        .into_iter()
        .find(|r| r["database"] == DB && r["user"] == "app")
        .expect("a pool for appdb/app")
}

async fn admin(proxy: &TestProxy) -> Client {
    common::connect(&proxy.admin_url()).await
}

async fn config(admin: &Client) -> HashMap<String, String> {
    rows(admin, "SHOW CONFIG")
        .await
        .into_iter()
        .map(|r| (r["key"].clone(), r["value"].clone()))
        .collect()
}

fn names(cols: &[String]) -> Vec<&str> {
    cols.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_use_pgbouncer_columns_and_report_true_values() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let admin = admin(&proxy).await;

    // Client X holds an open transaction.
    let holder = common::connect(&format!("{}?application_name=holder", proxy.app_url())).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let pid = scalar(&holder, "SELECT pg_backend_pid()").await;

    let (cols, clients) = table(&admin, "SHOW CLIENTS").await;
    assert_eq!(names(&cols), CONN_COLUMNS);
    let x = clients
        .iter()
        .find(|c| c["application_name"] == "holder")
        .unwrap_or_else(|| panic!("holder not in SHOW CLIENTS: {clients:?}"));
    assert_eq!(
        (&*x["type"], &*x["user"], &*x["database"], &*x["state"]),
        ("C", "app", DB, "active"),
        "{x:?}"
    );
    assert_eq!(x["addr"], "127.0.0.1", "{x:?}");
    let x_id = x["id"].clone();
    assert!(
        !x["link"].is_empty(),
        "an active client links to its server: {x:?}"
    );

    let (cols, servers) = table(&admin, "SHOW SERVERS").await;
    assert_eq!(names(&cols), CONN_COLUMNS);
    let active: Vec<&Row> = servers.iter().filter(|s| s["state"] == "active").collect();
    assert_eq!(active.len(), 1, "exactly one server is lent: {servers:?}");
    let s = active[0];
    assert_eq!(
        s["link"], x_id,
        "the active server links to X: {s:?} / {x:?}"
    );
    assert_eq!(
        x["link"], s["id"],
        "X links to the active server: {s:?} / {x:?}"
    );
    assert_eq!(s["remote_pid"], pid, "remote_pid is X's backend pid: {s:?}");
    assert_eq!(
        (&*s["type"], &*s["user"], &*s["database"]),
        ("S", "app", DB),
        "{s:?}"
    );
    assert_eq!(s["port"], backend.pg.port().to_string(), "{s:?}");

    let (cols, _) = table(&admin, "SHOW POOLS").await;
    assert_eq!(names(&cols), POOLS_COLUMNS);
    let pool = pool_row(&admin).await;
    assert!(num(&pool, "cl_active") >= 1, "{pool:?}");
    assert_eq!(num(&pool, "cl_waiting"), 0, "{pool:?}");
    assert_eq!(num(&pool, "sv_active"), 1, "{pool:?}");
    assert_eq!(num(&pool, "sv_login"), 0, "{pool:?}");
    assert_eq!(pool["pool_mode"], "transaction", "{pool:?}");
    assert_eq!(
        (&*pool["server"], &*pool["role"], &*pool["shard"]),
        (&*format!("127.0.0.1:{}", backend.pg.port()), "primary", ""),
        "{pool:?}"
    );

    holder.batch_execute("COMMIT").await.unwrap();

    // After COMMIT the server is back in the pool, unlinked.
    let servers = rows(&admin, "SHOW SERVERS").await;
    assert!(
        servers.iter().all(|s| s["state"] != "active"),
        "{servers:?}"
    );
    let idle = servers
        .iter()
        .find(|s| s["remote_pid"] == pid)
        .unwrap_or_else(|| panic!("X's server is not idle in the pool: {servers:?}"));
    assert_eq!((&*idle["state"], &*idle["link"]), ("idle", ""), "{idle:?}");
    let x = rows(&admin, "SHOW CLIENTS")
        .await
        .into_iter()
        .find(|c| c["id"] == x_id)
        .unwrap();
    assert_eq!((&*x["state"], &*x["link"]), ("idle", ""), "{x:?}");
    let pool = pool_row(&admin).await;
    assert_eq!(num(&pool, "sv_active"), 0, "{pool:?}");
    assert_eq!(num(&pool, "sv_idle") + num(&pool, "sv_used"), 1, "{pool:?}");

    // N more transactions: SHOW STATS counts at least those (plus X's).
    const N: i64 = 25;
    for i in 0..N {
        assert_eq!(scalar(&holder, &format!("SELECT {i}")).await, i.to_string());
    }
    let (cols, stats) = table(&admin, "SHOW STATS").await;
    assert_eq!(names(&cols), STATS_COLUMNS);
    let st = stats
        .iter()
        .find(|r| r["database"] == DB)
        .unwrap_or_else(|| panic!("no stats row for {DB}: {stats:?}"));
    assert!(num(st, "total_xact_count") > N, "{st:?}");
    assert!(num(st, "total_query_count") > N, "{st:?}");
    assert!(num(st, "total_server_assignment_count") > N, "{st:?}");
    assert!(num(st, "total_received") > 0, "{st:?}");
    assert!(num(st, "total_sent") > 0, "{st:?}");
    assert!(num(st, "total_xact_time") > 0, "{st:?}");
    assert!(
        num(st, "avg_xact_time") <= num(st, "total_xact_time"),
        "{st:?}"
    );

    let (cols, config) = table(&admin, "SHOW CONFIG").await;
    assert_eq!(names(&cols), ["key", "value", "default", "changeable"]);
    let cfg: HashMap<&str, &Row> = config.iter().map(|r| (r["key"].as_str(), r)).collect();
    assert_eq!(cfg["pool_size"]["value"], "4");
    assert_eq!(cfg["pool_size"]["default"], "20");
    assert_eq!(cfg["pool_size"]["changeable"], "yes");
    assert_eq!(cfg["checkout_timeout"]["value"], "10s");
    assert_eq!(cfg["listen"]["value"], "127.0.0.1:0");
    assert_eq!(cfg["listen"]["changeable"], "no");
    assert_eq!(cfg["pool_mode"]["value"], "transaction");
    assert_eq!(cfg["admin_users"]["value"], "admin");

    let dbs = rows(&admin, "SHOW DATABASES").await;
    let db = dbs
        .iter()
        .find(|r| r["name"] == DB)
        .unwrap_or_else(|| panic!("{dbs:?}"));
    assert_eq!(db["host"], "127.0.0.1", "{db:?}");
    assert_eq!(db["port"], backend.pg.port().to_string(), "{db:?}");
    assert_eq!(db["database"], DB, "{db:?}");
    assert_eq!(num(db, "pool_size"), 4, "{db:?}");
    assert_eq!(num(db, "current_connections"), 1, "{db:?}");
    assert_eq!(num(db, "paused"), 0, "{db:?}");
    assert_eq!(db["pool_mode"], "transaction", "{db:?}");

    let users: BTreeSet<String> = rows(&admin, "SHOW USERS")
        .await
        .into_iter()
        .map(|r| r["name"].clone())
        .collect();
    let expected: BTreeSet<String> = ["app", "md5user", "trustuser", "admin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(users, expected);

    let (cols, version) = table(&admin, "SHOW VERSION").await;
    assert_eq!(names(&cols), ["version"]);
    assert_eq!(version.len(), 1);
    assert_eq!(
        version[0]["version"],
        format!("shardpool {}", env!("CARGO_PKG_VERSION"))
    );

    // Unknown commands are syntax errors, and the console carries on.
    for bad in ["SHOW NONSENSE", "FROBNICATE", "SHOW"] {
        let err = admin.simple_query(bad).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42601", "{bad}: {err}");
    }
    assert_eq!(rows(&admin, "SHOW VERSION").await.len(), 1);
}

/// A database with a replica has a pool per server; the rows differ only in shardpool's `server` and `role`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_names_the_server_of_each_row() {
    let cluster = common::replicas::Replicated::start(None, "").await;
    let proxy = cluster.proxy("").await;
    let client = proxy.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    let admin = admin(&proxy).await;
    let mut ours: Vec<(String, String, String)> = rows(&admin, "SHOW POOLS")
        .await
        .into_iter()
        .filter(|r| r["database"] == DB && r["user"] == "app")
        .map(|r| (r["server"].clone(), r["role"].clone(), r["shard"].clone()))
        .collect();
    ours.sort();
    let mut expected = vec![
        (
            format!("127.0.0.1:{}", cluster.primary_port()),
            "primary".to_owned(),
            String::new(),
        ),
        (
            format!("127.0.0.1:{}", cluster.fast.port()),
            "replica".to_owned(),
            String::new(),
        ),
    ];
    expected.sort();
    assert_eq!(ours, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_over_the_extended_protocol() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let admin = admin(&proxy).await;
    let holder = proxy.connect().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let pid = scalar(&holder, "SELECT pg_backend_pid()").await;

    // tokio-postgres always prepares: Parse/Describe/Sync, then Bind/Execute/Sync.
    let pools = admin.query("SHOW POOLS", &[]).await.unwrap();
    let cols: Vec<&str> = pools[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(cols, POOLS_COLUMNS);
    let pool = pools
        .iter()
        .find(|r| r.get::<_, &str>("database") == DB)
        .unwrap();
    assert_eq!(pool.get::<_, &str>("sv_active"), "1");
    assert_eq!(pool.get::<_, &str>("pool_mode"), "transaction");

    // Two statements prepared before either runs: each must run its own command.
    let clients_stmt = admin.prepare("SHOW CLIENTS").await.unwrap();
    let servers_stmt = admin.prepare("SHOW SERVERS").await.unwrap();
    let stats_stmt = admin.prepare("SHOW STATS").await.unwrap();
    let stats_cols: Vec<&str> = stats_stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(stats_cols, STATS_COLUMNS);
    let clients = admin.query(&clients_stmt, &[]).await.unwrap();
    assert!(!clients.is_empty());
    for c in &clients {
        assert_eq!(
            c.get::<_, &str>("type"),
            "C",
            "SHOW CLIENTS ran SHOW SERVERS"
        );
    }
    let servers = admin.query(&servers_stmt, &[]).await.unwrap();
    let active: Vec<_> = servers
        .iter()
        .filter(|s| s.get::<_, &str>("state") == "active")
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].get::<_, &str>("type"), "S");
    assert_eq!(active[0].get::<_, &str>("remote_pid"), pid);
    // Run again: a prepared statement is reusable.
    let again = admin.query(&clients_stmt, &[]).await.unwrap();
    assert_eq!(again.len(), clients.len());
    assert!(again.iter().all(|c| c.get::<_, &str>("type") == "C"));

    let version: String = admin.query_one("SHOW VERSION", &[]).await.unwrap().get(0);
    assert_eq!(version, format!("shardpool {}", env!("CARGO_PKG_VERSION")));

    let err = admin.query("SHOW NONSENSE", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42601", "{err}");
    // The error ended that exchange only; the console still answers.
    let pools = admin.query("SHOW POOLS", &[]).await.unwrap();
    assert_eq!(pools.len(), 1);
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_file_and_refuses_a_broken_one() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let admin = admin(&proxy).await;
    let before = config(&admin).await;
    assert_eq!(before["pool_size"], "4");
    assert_eq!(before["client_idle_timeout"], "0s");

    // One client idle, one inside a transaction, across the reload.
    let idle = proxy.connect().await;
    assert_eq!(scalar(&idle, "SELECT 1").await, "1");
    let in_tx = proxy.connect().await;
    in_tx
        .batch_execute("CREATE TABLE reload_t (x int)")
        .await
        .unwrap();
    in_tx
        .batch_execute("BEGIN; INSERT INTO reload_t VALUES (1)")
        .await
        .unwrap();

    std::fs::write(
        &proxy.config_path,
        backend.config_toml("pool_size = 7\nclient_idle_timeout = \"45s\""),
    )
    .unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let after = config(&admin).await;
    assert_eq!(after["pool_size"], "7");
    assert_eq!(after["client_idle_timeout"], "45s");
    let db = rows(&admin, "SHOW DATABASES")
        .await
        .into_iter()
        .find(|r| r["name"] == DB)
        .unwrap();
    assert_eq!(num(&db, "pool_size"), 7, "{db:?}");

    in_tx
        .batch_execute("INSERT INTO reload_t VALUES (2); COMMIT")
        .await
        .unwrap();
    assert!(!idle.is_closed() && !in_tx.is_closed());
    assert_eq!(scalar(&idle, "SELECT count(*) FROM reload_t").await, "2");

    // Broken files: a TOML type error and a validation error. Each RELOAD fails and says why; nothing changes.
    let broken = [
        (backend.config_toml("pool_size = \"many\""), "pool_size"),
        (
            backend.config_toml("pool_size = 0\nmin_pool_size = 9"),
            "general.pool_size",
        ),
    ];
    for (text, key) in broken {
        std::fs::write(&proxy.config_path, text).unwrap();
        let err = admin.simple_query("RELOAD").await.unwrap_err();
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(db_err.code().code(), "55000", "{err}");
        assert!(db_err.message().contains(key), "{key} not in: {err}");
        let now = config(&admin).await;
        assert_eq!(now["pool_size"], "7");
        assert_eq!(now["client_idle_timeout"], "45s");
        assert_eq!(scalar(&idle, "SELECT 40 + 2").await, "42");
        let fresh = proxy.connect().await;
        assert_eq!(scalar(&fresh, "SELECT count(*) FROM reload_t").await, "2");
    }
    assert!(!idle.is_closed() && !in_tx.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_open_transactions_and_holds_new_ones_until_resume() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let admin = admin(&proxy).await;
    let holder = proxy.connect().await;
    // Clients log in before the pause (a login needs nothing from a paused pool, but keep this about transactions).
    let waiter1 = proxy.connect().await;
    let waiter2 = proxy.connect().await;
    holder
        .batch_execute("CREATE TABLE pause_t (x int)")
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; INSERT INTO pause_t VALUES (1)")
        .await
        .unwrap();

    let pauser = common::connect(&proxy.admin_url()).await;
    let pause = tokio::spawn(async move { pauser.simple_query("PAUSE").await.map(drop) });
    eventually(WAIT, "SHOW DATABASES paused = 1", || async {
        let dbs = rows(&admin, "SHOW DATABASES").await;
        dbs.iter().any(|r| r["name"] == DB && r["paused"] == "1")
    })
    .await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction was still open"
    );

    // A transaction started while PAUSE is pending waits.
    let w1 = tokio::spawn(async move { scalar(&waiter1, "SELECT count(*) FROM pause_t").await });
    eventually(WAIT, "cl_waiting = 1", || async {
        num(&pool_row(&admin).await, "cl_waiting") == 1
    })
    .await;
    assert!(!pause.is_finished(), "PAUSE returned before COMMIT");
    assert!(!w1.is_finished(), "a transaction ran while pausing");

    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(WAIT, pause)
        .await
        .expect("PAUSE did not return after the open transaction committed")
        .unwrap()
        .unwrap();
    let pool = pool_row(&admin).await;
    assert_eq!(num(&pool, "sv_active"), 0, "{pool:?}");

    // Paused: transactions from other clients wait, visibly.
    let w2 = tokio::spawn(async move { scalar(&waiter2, "SELECT 'second'").await });
    eventually(WAIT, "cl_waiting = 2", || async {
        num(&pool_row(&admin).await, "cl_waiting") == 2
    })
    .await;
    assert!(
        !w1.is_finished() && !w2.is_finished(),
        "served while paused"
    );

    admin.simple_query("RESUME").await.unwrap();
    let got1 = tokio::time::timeout(WAIT, w1)
        .await
        .expect("waiter 1 not served after RESUME")
        .unwrap();
    assert_eq!(got1, "1", "waiter 1 sees the committed row");
    let got2 = tokio::time::timeout(WAIT, w2)
        .await
        .expect("waiter 2 not served after RESUME")
        .unwrap();
    assert_eq!(got2, "second");
    let pool = pool_row(&admin).await;
    assert_eq!(num(&pool, "cl_waiting"), 0, "{pool:?}");
    let dbs = rows(&admin, "SHOW DATABASES").await;
    assert!(dbs.iter().any(|r| r["name"] == DB && r["paused"] == "0"));

    // RESUME when not paused is refused.
    let err = admin.simple_query("RESUME").await.unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "{err}");
}
