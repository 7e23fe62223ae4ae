//! A sharded database for integration tests: three real Postgres shards (shard 1 with a streaming replica), the
//! catalog initialised on shard 0, and a proxy serving database `shop` over them; plus helpers to read the shards.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use super::{Backend, TestProxy, DB};
use shardpool::config::sharding::ShardingConfig;
use shardpool::pgcluster::{PgServer, ServerOptions};
use shardpool::sharding::catalog;

pub const VSHARDS: u32 = 64;
pub const SCHEMA: &str =
    "CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL, balance int NOT NULL); \
     CREATE TABLE orders (tenant text NOT NULL, id int NOT NULL, amount int NOT NULL); \
     CREATE TABLE events (ts bigint NOT NULL, payload text); \
     CREATE TABLE countries (code text PRIMARY KEY, name text); \
     ALTER TABLE accounts OWNER TO app; ALTER TABLE orders OWNER TO app; \
     ALTER TABLE events OWNER TO app; ALTER TABLE countries OWNER TO app";

pub struct Shards {
    pub backends: Vec<Backend>,
    pub _replica: PgServer,
    /// `allow_fanout_writes` in the sharding config.
    pub fanout_writes: bool,
}

pub fn sharding_toml(shards: &Shards) -> String {
    let mut s = format!(
        "vshards = {VSHARDS}\ndefault_shard = 0\nreference_tables = [\"countries\"]\n\
         [[tables]]\nname = \"accounts\"\nkey = \"aid\"\ntype = \"int8\"\nmap = \"hash\"\n\
         [[tables]]\nname = \"orders\"\nkey = \"tenant\"\ntype = \"text\"\nmap = \"tenants\"\n\
         [[tables]]\nname = \"events\"\nkey = \"ts\"\ntype = \"int8\"\nmap = \"by_time\"\n\
         [maps.tenants]\nkind = \"directory\"\nkey_type = \"text\"\nunknown_keys = \"hash\"\n\
         [maps.by_time]\nkind = \"range\"\nkey_type = \"int8\"\nsplit_points = [1000, 2000]\n"
    );
    if shards.fanout_writes {
        s = s.replace(
            "default_shard = 0\n",
            "default_shard = 0\nallow_fanout_writes = true\n",
        );
    }
    for (i, b) in shards.backends.iter().enumerate() {
        s.push_str(&format!(
            "[[shards]]\nhost = \"127.0.0.1\"\nport = {}\nserver_database = \"{DB}\"\n",
            b.pg.port()
        ));
        if i == 1 {
            s.push_str(&format!(
                "replicas = [{{ host = \"127.0.0.1\", port = {} }}]\n",
                shards._replica.port()
            ));
        }
    }
    s
}

/// The proxy config: the test users, and database `shop` sharded over the three servers.
pub fn proxy_toml(shards: &Shards) -> String {
    let base = shards.backends[0].config_toml("pool_size = 6");
    // Drop the unsharded [databases.appdb] table the harness writes, keep [general] and the users.
    let cut = base.find(&format!("[databases.{DB}]")).unwrap();
    let mut out = base[..cut].to_owned();
    out.push_str("[databases.shop]\n");
    for line in sharding_toml(shards).lines() {
        // Nest the sharding section under the database.
        let nested = if let Some(rest) = line.strip_prefix("[[") {
            format!("[[databases.shop.sharding.{rest}")
        } else if let Some(rest) = line.strip_prefix('[') {
            format!("[databases.shop.sharding.{rest}")
        } else {
            line.to_owned()
        };
        out.push_str(&nested);
        out.push('\n');
    }
    // Top-level keys of the sharding table must come before its sub-tables: put them under a header of their own.
    out.replace(
        "[databases.shop]\nvshards",
        "[databases.shop]\n[databases.shop.sharding]\nvshards",
    )
}

pub async fn start() -> (Shards, TestProxy, ShardingConfig) {
    start_with(false).await
}

/// [`start`], with `allow_fanout_writes` as given.
pub async fn start_with(fanout_writes: bool) -> (Shards, TestProxy, ShardingConfig) {
    let opts = ServerOptions::default().with("synchronous_commit", "on");
    let mut backends = Vec::new();
    for _ in 0..3 {
        let b = Backend::start_with(opts.clone()).await;
        b.sql(SCHEMA);
        backends.push(b);
    }
    let replica = tokio::task::block_in_place(|| backends[1].pg.start_replica(None).unwrap());
    let shards = Shards {
        backends,
        _replica: replica,
        fanout_writes,
    };
    let cfg: ShardingConfig = toml::from_str(&sharding_toml(&shards)).unwrap();
    // shardctl init, as a library call: the catalog lives on shard 0.
    let (mut client, conn) =
        tokio_postgres::connect(&shards.backends[0].direct_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    shards.backends[0].sql("GRANT CREATE ON DATABASE appdb TO app");
    catalog::init(&mut client, &cfg).await.unwrap();
    let proxy = TestProxy::start(&proxy_toml(&shards)).await;
    let router = proxy.ctx().shard_router("shop").unwrap();
    super::eventually(
        Duration::from_secs(30),
        "the proxy to load the catalog",
        || {
            let loaded = router.catalog().is_some();
            async move { loaded }
        },
    )
    .await;
    (shards, proxy, cfg)
}

pub fn shop_url(proxy: &TestProxy) -> String {
    proxy.url("app", "secret", "shop")
}

/// The vshards a shard owns under the initial placement.
pub fn owned(shard: usize) -> Vec<u32> {
    (0..VSHARDS)
        .filter(|v| catalog::initial_shard(*v, VSHARDS, 3) as usize == shard)
        .collect()
}

pub fn count(b: &Backend, sql: &str) -> i64 {
    b.sql(sql).trim().parse().unwrap()
}

pub async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
        }
    }
    out
}

/// Every row of `accounts` sits on the shard its vshard maps to (checked on each shard with the vshard expression),
/// each shard holds a fair share, and none is lost or doubled.
pub fn check_placement(shards: &Shards, expected_total: i64) {
    let expr = shardpool::sharding::hash::vshard_sql(
        "aid",
        shardpool::sharding::key::KeyType::Int,
        VSHARDS,
    );
    let mut total = 0;
    for (i, b) in shards.backends.iter().enumerate() {
        let mine = owned(i)
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let misplaced = count(
            b,
            &format!("SELECT count(*) FROM accounts WHERE {expr} NOT IN ({mine})"),
        );
        assert_eq!(misplaced, 0, "shard {i} holds rows of other shards");
        let n = count(b, "SELECT count(*) FROM accounts");
        assert!(n > expected_total / 10, "shard {i} has only {n} rows");
        total += n;
    }
    assert_eq!(total, expected_total);
}
