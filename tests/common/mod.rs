//! Shared harness for the integration tests: a throwaway real Postgres (never a mock) with users for each
//! authentication method, and a shardpool proxy running in-process on a free port in front of it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod hba;
pub mod http;
pub mod raw;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shardpool::app::Proxy;
use shardpool::config::Config;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};

pub const DB: &str = "appdb";

/// A Postgres server prepared for proxy tests:
/// - `app`/`secret`: SCRAM on the server, SCRAM to the proxy (owner of `appdb`)
/// - `md5user`/`md5pw`: md5 on the server and to the proxy
/// - `trustuser`: trust on the server and to the proxy
/// - `admin`/`adminpw`: the proxy's admin console only
pub struct Backend {
    pub pg: PgServer,
}

impl Backend {
    pub async fn start() -> Backend {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(opts: ServerOptions) -> Backend {
        let pg = tokio::task::spawn_blocking(move || {
            let pg = PgServer::start_primary(&opts).expect("start postgres");
            pg.create_user("app", "secret", AuthMethod::ScramSha256)
                .unwrap();
            pg.create_user("md5user", "md5pw", AuthMethod::Md5).unwrap();
            pg.create_user("trustuser", "", AuthMethod::Trust).unwrap();
            pg.create_database(DB, "app").unwrap();
            pg.sql(DB, "GRANT ALL ON SCHEMA public TO md5user, trustuser")
                .unwrap();
            pg
        })
        .await
        .unwrap();
        Backend { pg }
    }

    pub fn direct_url(&self) -> String {
        self.pg.url("app", "secret", DB)
    }

    /// SQL as superuser, directly on the server.
    pub fn sql(&self, sql: &str) -> String {
        self.pg.sql(DB, sql).unwrap()
    }

    /// A config for a proxy in front of this server; `extra_general` lines go into [general].
    pub fn config_toml(&self, extra_general: &str) -> String {
        // Defaults for tests; a key given in `extra_general` replaces the default line.
        let defaults = [
            "listen = \"127.0.0.1:0\"",
            "admin_users = [\"admin\"]",
            "pool_size = 4",
            "checkout_timeout = \"10s\"",
        ];
        let overridden = |line: &str| {
            let key = line.split('=').next().unwrap_or("").trim();
            extra_general
                .lines()
                .any(|l| l.split('=').next().unwrap_or("").trim() == key)
        };
        let general: Vec<&str> = defaults
            .iter()
            .copied()
            .filter(|l| !overridden(l))
            .collect();
        let general = general.join("\n");
        format!(
            r#"
            [general]
            {general}
            {extra_general}

            [[users]]
            name = "app"
            password = "secret"

            [[users]]
            name = "md5user"
            password = "md5pw"
            auth = "md5"

            [[users]]
            name = "trustuser"
            auth = "trust"

            [[users]]
            name = "admin"
            password = "adminpw"

            [databases.{DB}]
            host = "127.0.0.1"
            port = {port}
            "#,
            port = self.pg.port()
        )
    }

    pub async fn proxy(&self, extra_general: &str) -> TestProxy {
        TestProxy::start(&self.config_toml(extra_general)).await
    }
}

pub struct TestProxy {
    pub proxy: Option<Proxy>,
    pub port: u16,
    /// Where the config lives, so tests can edit it and RELOAD.
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(toml: &str) -> TestProxy {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("shardpool.toml");
        std::fs::write(&config_path, toml).unwrap();
        let config = Config::load(&config_path).unwrap();
        let proxy = Proxy::start(config, Some(config_path.clone()))
            .await
            .unwrap();
        let port = proxy.addr.port();
        TestProxy {
            proxy: Some(proxy),
            port,
            config_path,
            _dir: dir,
        }
    }

    pub fn ctx(&self) -> &std::sync::Arc<shardpool::context::Context> {
        &self.proxy.as_ref().unwrap().ctx
    }

    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        if password.is_empty() {
            format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
        } else {
            format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
        }
    }

    pub fn app_url(&self) -> String {
        self.url("app", "secret", DB)
    }

    pub fn admin_url(&self) -> String {
        self.url("admin", "adminpw", "shardpool")
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.app_url()).await
    }

    /// Runs an admin console command and returns rows as column-name -> value maps.
    pub async fn admin(&self, sql: &str) -> Vec<std::collections::HashMap<String, String>> {
        admin_rows(&connect(&self.admin_url()).await, sql).await
    }
}

/// Logs to the test's output when RUST_LOG is set (e.g. RUST_LOG=shardpool=trace cargo test ...).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn admin_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let mut out = Vec::new();
    for msg in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
            let mut m = std::collections::HashMap::new();
            for (i, c) in row.columns().iter().enumerate() {
                m.insert(c.name().to_owned(), row.get(i).unwrap_or("").to_owned());
            }
            out.push(m);
        }
    }
    out
}

/// Polls `cond` until it holds or `timeout` passes: for conditions with no event to wait on (server-side state).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQLSTATE of a tokio-postgres error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// Path of a built binary of this package (for tests that run `shardpool` or need pgbench).
pub fn bin(name: &str) -> PathBuf {
    match name {
        "shardpool" => PathBuf::from(env!("CARGO_BIN_EXE_shardpool")),
        "shardctl" => PathBuf::from(env!("CARGO_BIN_EXE_shardctl")),
        other => shardpool::pgcluster::PgBinaries::locate()
            .unwrap()
            .tool(other),
    }
}

/// Runs pgbench against the proxy as `app` on the test database; fails the test if pgbench fails. Returns its output.
pub fn pgbench(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"])
        .args(args)
        .arg(DB)
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}
pub mod python;
pub mod replicas;
pub mod shards;
