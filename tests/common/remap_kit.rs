//! The remap tests' kit: two shards (optionally each with a streaming replica), the catalog on shard 0, shardpool
//! instances in front, and a remap driver as a superuser on the shards. Included by the remap test files with
//! `#[path]`, so the other test binaries do not compile it.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, Backend, TestProxy, DB};
use shardpool::config::sharding::ShardingConfig;
use shardpool::pgcluster::{PgServer, ServerOptions};
use shardpool::sharding::catalog;
use shardpool::sharding::key::KeyValue;
use shardpool::sharding::remap::{RemapOptions, Remapper, ShardAccess};

pub const VSHARDS: u32 = 64;
/// Accounts loaded before the remap starts.
pub const INITIAL: i64 = 2000;

pub const SCHEMA: &str = "CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL, balance int NOT NULL); \
     CREATE TABLE orders (aid bigint NOT NULL, id int NOT NULL, amount int NOT NULL, PRIMARY KEY (aid, id)); \
     ALTER TABLE accounts OWNER TO app; ALTER TABLE orders OWNER TO app";

pub fn vshard(aid: i64) -> u32 {
    KeyValue::Int(aid).vshard(VSHARDS).unwrap()
}

pub struct Setup {
    pub shards: Vec<Backend>,
    /// Each shard's streaming replica (empty without replicas).
    pub replicas: Vec<PgServer>,
    pub proxies: Vec<TestProxy>,
    pub cfg: ShardingConfig,
}

/// How the shards are built.
#[derive(Default)]
pub struct Shape<'a> {
    pub proxies: usize,
    pub extra_sql: &'a str,
    pub extra_tables: &'a str,
    /// A streaming replica per shard, replaying with this delay (`Some(ZERO)`: no delay).
    pub replica_delay: Option<Duration>,
    /// `catalog_check_interval` (default 1s); an instance's lease is three of them.
    pub check_interval: Option<&'a str>,
    /// The instances' `pool_size` (default 8).
    pub pool_size: Option<u32>,
}

pub fn sharding_toml(shards: &[Backend], replicas: &[PgServer], extra_tables: &str) -> String {
    sharding_toml_checked(shards, replicas, extra_tables, "1s")
}

fn sharding_toml_checked(
    shards: &[Backend],
    replicas: &[PgServer],
    extra_tables: &str,
    check_interval: &str,
) -> String {
    let mut s = format!(
        "[databases.shop.sharding]\nvshards = {VSHARDS}\ncatalog_check_interval = \"{check_interval}\"\n\
         [[databases.shop.sharding.tables]]\nname = \"accounts\"\nkey = \"aid\"\ntype = \"int8\"\n\
         [[databases.shop.sharding.tables]]\nname = \"orders\"\nkey = \"aid\"\ntype = \"int8\"\n{extra_tables}"
    );
    for (i, b) in shards.iter().enumerate() {
        s.push_str(&format!(
            "[[databases.shop.sharding.shards]]\nhost = \"127.0.0.1\"\nport = {}\nserver_database = \"{DB}\"\n",
            b.pg.port()
        ));
        if let Some(r) = replicas.get(i) {
            s.push_str(&format!(
                "replicas = [{{ host = \"127.0.0.1\", port = {} }}]\n",
                r.port()
            ));
        }
    }
    s
}

/// Two shards with the schema (plus `extra_sql`), the catalog initialised on shard 0, `proxies` instances.
pub async fn setup(proxies: usize, extra_sql: &str, extra_tables: &str) -> Setup {
    setup_shaped(Shape {
        proxies,
        extra_sql,
        extra_tables,
        replica_delay: None,
        check_interval: None,
        pool_size: None,
    })
    .await
}

pub async fn setup_shaped(shape: Shape<'_>) -> Setup {
    let mut shards = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        // With replicas, synchronous commit as in production: a commit is in the WAL the replicas stream when it
        // returns.
        let opts = match shape.replica_delay {
            Some(_) => ServerOptions::default().with("synchronous_commit", "on"),
            None => ServerOptions::default(),
        };
        let b = Backend::start_with(opts).await;
        b.sql(SCHEMA);
        if !shape.extra_sql.is_empty() {
            b.sql(shape.extra_sql);
        }
        if let Some(delay) = shape.replica_delay {
            let delay = (!delay.is_zero()).then_some(delay);
            let r = tokio::task::block_in_place(|| b.pg.start_replica(delay).unwrap());
            replicas.push(r);
        }
        shards.push(b);
    }
    shards[0].sql("GRANT CREATE ON DATABASE appdb TO app");
    let sharding = sharding_toml_checked(
        &shards,
        &replicas,
        shape.extra_tables,
        shape.check_interval.unwrap_or("1s"),
    );
    let full: toml::Value = toml::from_str(&sharding).unwrap();
    let cfg: ShardingConfig = full["databases"]["shop"]["sharding"]
        .clone()
        .try_into()
        .unwrap();
    let mut client = common::connect(&shards[0].direct_url()).await;
    catalog::init(&mut client, &cfg).await.unwrap();
    let pool_size = shape.pool_size.unwrap_or(8);
    let general = if replicas.is_empty() {
        format!("pool_size = {pool_size}")
    } else {
        format!("pool_size = {pool_size}\nreplica_poll_interval = \"50ms\"")
    };
    let base = shards[0].config_toml(&general);
    let cut = base.find(&format!("[databases.{DB}]")).unwrap();
    let toml = format!("{}{sharding}", &base[..cut]);
    let mut started = Vec::new();
    for _ in 0..shape.proxies {
        let proxy = TestProxy::start(&toml).await;
        let router = proxy.ctx().shard_router("shop").unwrap();
        common::eventually(Duration::from_secs(30), "the catalog to load", || {
            let loaded = router.catalog().is_some();
            async move { loaded }
        })
        .await;
        started.push(proxy);
    }
    Setup {
        shards,
        replicas,
        proxies: started,
        cfg,
    }
}

impl Setup {
    /// A remap driver as a superuser on the shards (PostgreSQL 15 needs one for CREATE SUBSCRIPTION).
    pub async fn remapper(&self, opts: RemapOptions, log: Arc<Mutex<Vec<String>>>) -> Remapper {
        let catalog = common::connect(&self.shards[0].direct_url()).await;
        let shards = self
            .shards
            .iter()
            .map(|b| {
                let mut pg = tokio_postgres::Config::new();
                pg.host("127.0.0.1")
                    .port(b.pg.port())
                    .dbname(DB)
                    .user("postgres");
                ShardAccess {
                    pg,
                    conninfo: format!(
                        "host=127.0.0.1 port={} dbname={DB} user=postgres",
                        b.pg.port()
                    ),
                }
            })
            .collect();
        Remapper {
            cfg: self.cfg.clone(),
            catalog,
            shards,
            opts,
            log: Box::new(move |l: &str| log.lock().unwrap().push(l.to_owned())),
            progress: None,
        }
    }

    /// Loads `INITIAL` accounts with two orders each, directly on the shard each belongs to.
    pub fn load(&self) {
        for (i, b) in self.shards.iter().enumerate() {
            let expr = shardpool::sharding::hash::vshard_sql(
                "g",
                shardpool::sharding::key::KeyType::Int,
                VSHARDS,
            );
            let mine = if i == 0 { "< 32" } else { ">= 32" };
            b.sql(&format!(
                "INSERT INTO accounts SELECT g, 'owner' || g, 0 FROM generate_series(1, {INITIAL}) g WHERE {expr} {mine}; \
                 INSERT INTO orders SELECT g, n, 10 FROM generate_series(1, {INITIAL}) g, generate_series(1, 2) n \
                 WHERE {expr} {mine}"
            ));
        }
    }

    pub fn options() -> RemapOptions {
        RemapOptions {
            copy_timeout: Duration::from_secs(60),
            catch_up_timeout: Duration::from_secs(60),
            ..RemapOptions::default()
        }
    }
}

/// Rows of a table on one shard, `key columns -> value`, read as the superuser.
pub fn table(b: &Backend, sql: &str) -> BTreeMap<String, String> {
    b.sql(sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once('|').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A shardpool instance as its own process (so it can be stopped with SIGSTOP), with the config of the first
/// in-process one; returns once it acknowledged the catalog in `shardpool.instances`, with the port it listens on.
pub async fn spawn_instance(s: &Setup) -> (tokio::process::Child, u16, tempfile::TempDir) {
    let port = shardpool::pgcluster::free_port();
    let toml = std::fs::read_to_string(&s.proxies[0].config_path)
        .unwrap()
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardpool.toml");
    std::fs::write(&path, toml).unwrap();
    let child = tokio::process::Command::new(common::bin("shardpool"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let catalog = common::connect(&s.shards[0].direct_url()).await;
    let want = s.proxies.len() as i64 + 1;
    common::eventually(
        Duration::from_secs(30),
        "every instance to acknowledge",
        || {
            let c = &catalog;
            async move {
                c.query_one("SELECT count(*) FROM shardpool.instances", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) == want)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    (child, port, dir)
}

/// Where each of `vshards` is placed in the catalog.
pub async fn placement(catalog: &tokio_postgres::Client, vshards: &[u32]) -> Vec<i32> {
    let v: Vec<i32> = vshards.iter().map(|&v| v as i32).collect();
    catalog
        .query(
            "SELECT shard FROM shardpool.placement WHERE vshard = ANY ($1) ORDER BY vshard",
            &[&v],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
