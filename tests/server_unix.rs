//! Servers reached over their Unix sockets (a host that is a directory, as in libpq): pooling with tokio-postgres and
//! psql clients, every server-side authentication method over the socket (a cleartext password included, which a
//! local socket protects), cancel requests, SHOW SERVERS, the replication monitor, `/readyz`, and a sharded database
//! whose catalog connections go over the sockets too.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{connect, eventually, hba, replicas::replica_rows, sqlstate, Backend, TestProxy, DB};
use shardpool::config::sharding::ShardingConfig;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(15);

/// The harness's config with the server reached through its socket directory, plus `pwuser` and `general` lines.
fn unix_toml(backend: &Backend, general: &str) -> String {
    let dir = hba::socket_dir(&backend.pg);
    let toml = backend
        .config_toml(general)
        .replace("host = \"127.0.0.1\"", &format!("host = \"{dir}\""));
    format!("{toml}\n[[users]]\nname = \"pwuser\"\npassword = \"pwpw\"\n")
}

/// Over the socket, `app` must use SCRAM, `md5user` md5 and `pwuser` a cleartext password (the harness trusts
/// every local connection otherwise, which would prove nothing about the proxy's login).
fn demand_passwords_locally(backend: &Backend) {
    backend
        .pg
        .sql("postgres", "CREATE ROLE pwuser LOGIN PASSWORD 'pwpw'")
        .unwrap();
    hba::prepend(
        &backend.pg,
        &[
            "local all app scram-sha-256",
            "local all md5user md5",
            "local all pwuser password",
        ],
    );
}

async fn over_socket(client: &tokio_postgres::Client) -> (bool, String) {
    let row = client
        .query_one("SELECT inet_server_addr() IS NULL, current_user::text", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooling_through_a_unix_socket_server() {
    let backend = Backend::start().await;
    demand_passwords_locally(&backend);
    // require has no effect on a socket: TLS is never attempted there (the server has ssl = off anyway).
    let proxy = TestProxy::start(&unix_toml(
        &backend,
        "pool_size = 2\nserver_tls_mode = \"require\"",
    ))
    .await;

    for (user, password) in [("app", "secret"), ("md5user", "md5pw"), ("pwuser", "pwpw")] {
        let client = timeout(STEP, connect(&proxy.url(user, password, DB)))
            .await
            .expect("login hung");
        assert_eq!(over_socket(&client).await, (true, user.to_owned()));
    }

    // Eight clients share the two server connections, each transaction seeing its own writes.
    backend.sql("CREATE TABLE t (client int, n int); GRANT ALL ON t TO app");
    let mut tasks = Vec::new();
    for c in 0..8 {
        let url = proxy.app_url();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            for n in 0..20 {
                client
                    .execute("INSERT INTO t VALUES ($1, $2)", &[&c, &n])
                    .await
                    .unwrap();
            }
            let row = client
                .query_one("SELECT count(*) FROM t WHERE client = $1", &[&c])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }));
    }
    for t in tasks {
        assert_eq!(timeout(STEP, t).await.unwrap().unwrap(), 20);
    }
    assert_eq!(backend.sql("SELECT count(*) FROM t"), "160");
    let servers = proxy.admin("SHOW SERVERS").await;
    let dir = hba::socket_dir(&backend.pg);
    assert!(!servers.is_empty());
    assert!(
        servers
            .iter()
            .all(|s| s["addr"] == dir && s["port"] == backend.pg.port().to_string()),
        "{servers:?}"
    );
    assert!(
        servers.len() <= 2 + 2,
        "pool_size 2 for app, plus md5user/pwuser: {servers:?}"
    );

    // psql, as a user would run it.
    let port = proxy.port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::bin("psql"))
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "-d",
                DB,
            ])
            .args(["-c", "SELECT inet_server_addr() IS NULL, count(*) FROM t"])
            .env("PGPASSWORD", "secret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t|160");

    // A cancel goes to the server's socket too.
    let client = connect(&proxy.app_url()).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    let pg = &backend.pg;
    eventually(STEP, "the sleep to run on the server", || async {
        pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
        )
        .unwrap()
            == "1"
    })
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = timeout(STEP, sleeper)
        .await
        .expect("cancel did not arrive")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_monitor_and_reads_work_over_unix_sockets() {
    let r = common::replicas::Replicated::start(
        None,
        "CREATE TABLE r (x int); INSERT INTO r VALUES (7); GRANT ALL ON r TO app",
    )
    .await;
    let (primary_dir, replica_dir) = (hba::socket_dir(&r.backend.pg), hba::socket_dir(&r.fast));
    hba::prepend(&r.backend.pg, &["local all app scram-sha-256"]);
    hba::prepend(&r.fast, &["local all app scram-sha-256"]);
    let toml = format!(
        "{}\nreplicas = [{{ host = \"{replica_dir}\", port = {} }}]\nconsistency = \"eventual\"\n",
        r.backend
            .config_toml("pool_size = 4\nreplica_poll_interval = \"50ms\"")
            .replace("host = \"127.0.0.1\"", &format!("host = \"{primary_dir}\"")),
        r.fast.port()
    );
    let proxy = TestProxy::start(&toml).await;
    // The monitor logs in over both sockets and sees each server in its role.
    eventually(
        Duration::from_secs(20),
        "the monitor to poll both servers",
        || async {
            let rows = replica_rows(&proxy).await;
            rows.len() == 2
                && rows
                    .values()
                    .all(|row| !row["lsn"].is_empty() && row["lsn"] != "0/0")
                && rows
                    .get(&r.fast.port())
                    .is_some_and(|row| row["in_recovery"] == "t")
        },
    )
    .await;
    // Reads go to the replica (eventual consistency), through its socket.
    let client = connect(&proxy.app_url()).await;
    eventually(STEP, "a read served by the replica", || async {
        let row = client
            .query_one(
                // cluster_name: empty on the primary, the replica's name on it (pg_is_in_recovery() is volatile,
                // which would send the read to the primary).
                "SELECT inet_server_addr() IS NULL, current_setting('cluster_name'), (SELECT x FROM r)",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "a server reached over TCP");
        assert_eq!(row.get::<_, i32>(2), 7);
        !row.get::<_, String>(1).is_empty()
    })
    .await;
}

/// Nests a top-level sharding config under `[databases.<db>.sharding]`.
fn nest(sharding: &str, db: &str) -> String {
    let mut out = format!("[databases.{db}.sharding]\n");
    for line in sharding.lines() {
        if let Some(rest) = line.strip_prefix("[[") {
            out.push_str(&format!("[[databases.{db}.sharding.{rest}\n"));
        } else if let Some(rest) = line.strip_prefix('[') {
            out.push_str(&format!("[databases.{db}.sharding.{rest}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_database_over_unix_sockets() {
    let mut backends = Vec::new();
    for _ in 0..2 {
        let b = Backend::start().await;
        b.sql("CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL); ALTER TABLE accounts OWNER TO app");
        backends.push(b);
    }
    backends[0].sql("GRANT CREATE ON DATABASE appdb TO app");
    let mut sharding = "vshards = 16\ndefault_shard = 0\n\
        [[tables]]\nname = \"accounts\"\nkey = \"aid\"\ntype = \"int8\"\nmap = \"hash\"\n"
        .to_owned();
    for b in &backends {
        hba::prepend(&b.pg, &["local all app scram-sha-256"]);
        sharding.push_str(&format!(
            "[[shards]]\nhost = \"{}\"\nport = {}\nserver_database = \"{DB}\"\n",
            hba::socket_dir(&b.pg),
            b.pg.port()
        ));
    }
    // shardctl init's library call, itself over shard 0's socket (the catalog's default place).
    let cfg: ShardingConfig = toml::from_str(&sharding).unwrap();
    let target = cfg.catalog_target("shop").unwrap();
    let pg = shardpool::sharding::catalog::connect_config(&target, "app", Some("secret"), "test");
    let (mut client, conn) = pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    shardpool::sharding::catalog::init(&mut client, &cfg)
        .await
        .unwrap();

    let base = backends[0].config_toml("pool_size = 4");
    let cut = base.find(&format!("[databases.{DB}]")).unwrap();
    let toml = format!("{}\n{}", &base[..cut], nest(&sharding, "shop"));
    let proxy = TestProxy::start(&toml).await;
    let router = proxy.ctx().shard_router("shop").unwrap();
    eventually(
        Duration::from_secs(30),
        "the catalog to load over the socket",
        || {
            let loaded = router.catalog().is_some();
            async move { loaded }
        },
    )
    .await;

    let client = connect(&proxy.url("app", "secret", "shop")).await;
    for aid in 0..40i64 {
        client
            .execute("INSERT INTO accounts VALUES ($1, 'o')", &[&aid])
            .await
            .unwrap();
    }
    let counts: Vec<i64> = backends
        .iter()
        .map(|b| b.sql("SELECT count(*) FROM accounts").parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<i64>(), 40, "{counts:?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "both shards hold rows: {counts:?}"
    );
    let row = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 40);
}

/// `/readyz` without monitor credentials (every user logs in by trust here, so no password to log in with) only
/// checks that the writer accepts connections, and must open that connection as the pool does: over the socket
/// the host names, not as a TCP address made of the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reaches_a_unix_socket_writer_without_credentials() {
    let mut backend = Backend::start().await;
    let dir = hba::socket_dir(&backend.pg);
    let toml = format!(
        "[general]\nlisten = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
         [[users]]\nname = \"trustuser\"\nauth = \"trust\"\n\
         [databases.{DB}]\nhost = \"{dir}\"\nport = {}\n",
        backend.pg.port()
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.as_ref().unwrap().http.as_ref().unwrap().addr;
    let readyz_becomes = |want: u16| async move {
        let mut last = (0, String::new());
        for _ in 0..300 {
            last = common::http::get(addr, "/readyz").await;
            if last.0 == want {
                return last.1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz never became {want}; last: {last:?}");
    };
    assert_eq!(readyz_becomes(200).await, "ready\n");
    // The check is real: with the server gone the socket refuses, and the reason names it.
    tokio::task::block_in_place(|| backend.pg.stop().unwrap());
    let body = readyz_becomes(503).await;
    assert!(
        body.contains(&format!("writer {dir}:{} not reachable", backend.pg.port())),
        "{body}"
    );
    tokio::task::block_in_place(|| backend.pg.restart().unwrap());
    assert_eq!(readyz_becomes(200).await, "ready\n");
    // Clients get through the same way.
    let client = connect(&proxy.url("trustuser", "", DB)).await;
    assert_eq!(over_socket(&client).await, (true, "trustuser".to_owned()));
}
