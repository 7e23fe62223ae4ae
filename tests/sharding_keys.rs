//! Shard keys the SQL does not spell out as `key = v`, through the proxy against three real shards: INSERTs without
//! a column list (the key's position comes from the table's column order, read from the default shard), range
//! predicates on a range-mapped table (only the overlapping shards are asked, checked with a table whose contents
//! differ per shard), and directory keys placed by hash (recorded in the catalog, then routed by a second instance
//! that would refuse unknown keys). The routing decisions themselves are also checked without servers.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestProxy, DB};
use shardpool::config::sharding::ShardingConfig;
use shardpool::sharding::catalog::{self, initial_shard, Catalog, RangeMap};
use shardpool::sharding::key::{KeyType, KeyValue};
use shardpool::sharding::router::{Placement, ShardRouter};

/// Six vshards over three shards: the three ranges of `by_time` (vshards 0, 2, 4) start on shards 0, 1 and 2.
const VSHARDS: u32 = 6;
/// `events` has a dropped column before its key: column-less INSERTs must skip it, as Postgres does.
const SCHEMA: &str = "CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL, balance int NOT NULL); \
     CREATE TABLE orders (id int NOT NULL, tenant text NOT NULL, amount int NOT NULL); \
     CREATE TABLE events (junk int, payload text, ts bigint NOT NULL); \
     ALTER TABLE events DROP COLUMN junk; \
     ALTER TABLE accounts OWNER TO app; ALTER TABLE orders OWNER TO app; ALTER TABLE events OWNER TO app";

/// The sharding section; `prefix` is "" for a bare `ShardingConfig`, or the path under which a proxy config nests it.
fn sharding_toml(prefix: &str, ports: &[u16], unknown_keys: &str) -> String {
    let head = if prefix.is_empty() {
        String::new()
    } else {
        format!("[{}]\n", prefix.trim_end_matches('.'))
    };
    let mut s = format!(
        "{head}vshards = {VSHARDS}\ndefault_shard = 0\n\
         [[{prefix}tables]]\nname = \"accounts\"\nkey = \"aid\"\ntype = \"int8\"\n\
         [[{prefix}tables]]\nname = \"orders\"\nkey = \"tenant\"\ntype = \"text\"\nmap = \"tenants\"\n\
         [[{prefix}tables]]\nname = \"events\"\nkey = \"ts\"\ntype = \"int8\"\nmap = \"by_time\"\n\
         [[{prefix}tables]]\nname = \"ghosts\"\nkey = \"id\"\ntype = \"int8\"\n\
         [{prefix}maps.tenants]\nkind = \"directory\"\nkey_type = \"text\"\nunknown_keys = \"{unknown_keys}\"\n\
         [{prefix}maps.by_time]\nkind = \"range\"\nkey_type = \"int8\"\nsplit_points = [1000, 2000]\n"
    );
    for port in ports {
        s.push_str(&format!(
            "[[{prefix}shards]]\nhost = \"127.0.0.1\"\nport = {port}\nserver_database = \"{DB}\"\n"
        ));
    }
    s
}

struct Cluster {
    backends: Vec<Backend>,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut backends = Vec::new();
        for _ in 0..3 {
            let b = Backend::start().await;
            b.sql(SCHEMA);
            backends.push(b);
        }
        let cfg: ShardingConfig =
            toml::from_str(&sharding_toml("", &ports(&backends), "hash")).unwrap();
        let (mut client, conn) =
            tokio_postgres::connect(&backends[0].direct_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        backends[0].sql("GRANT CREATE ON DATABASE appdb TO app");
        catalog::init(&mut client, &cfg).await.unwrap();
        Cluster { backends }
    }

    /// A proxy for database `shop`, with the catalog and the column order of the tables loaded.
    async fn proxy(&self, unknown_keys: &str) -> (TestProxy, Arc<ShardRouter>) {
        let base = self.backends[0].config_toml("pool_size = 4");
        let cut = base.find(&format!("[databases.{DB}]")).unwrap();
        let mut toml = base[..cut].to_owned();
        toml.push_str(&sharding_toml(
            "databases.shop.sharding.",
            &ports(&self.backends),
            unknown_keys,
        ));
        let proxy = TestProxy::start(&toml).await;
        let router = proxy.ctx().shard_router("shop").unwrap();
        let r = Arc::clone(&router);
        // Loading is server-side work with no event to wait on from here.
        common::eventually(
            Duration::from_secs(30),
            "the catalog and column order to load",
            move || {
                let ready = r.catalog().is_some() && r.key_position("events").is_some();
                async move { ready }
            },
        )
        .await;
        (proxy, router)
    }

    fn shard_of(&self, key: &KeyValue) -> usize {
        initial_shard(key.vshard(VSHARDS).unwrap(), VSHARDS, 3) as usize
    }
}

fn ports(backends: &[Backend]) -> Vec<u16> {
    backends.iter().map(|b| b.pg.port()).collect()
}

async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push(r.get(0).unwrap_or("NULL").to_owned());
        }
    }
    out
}

fn lines(b: &Backend, sql: &str) -> Vec<String> {
    b.sql(sql)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn refused(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let e = client.simple_query(sql).await.unwrap_err();
    let db = e.as_db_error().unwrap();
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columnless_inserts_land_by_the_tables_column_order() {
    let cluster = Cluster::start().await;
    let (proxy, router) = cluster.proxy("hash").await;
    assert_eq!(router.key_position("orders"), Some(1));
    assert_eq!(
        router.key_position("events"),
        Some(1),
        "the dropped column is skipped"
    );
    let client = common::connect(&proxy.url("app", "secret", "shop")).await;

    for aid in 1..=30i64 {
        client
            .simple_query(&format!("INSERT INTO accounts VALUES ({aid}, 'o{aid}', 0)"))
            .await
            .unwrap();
    }
    // Extended protocol, the key a parameter at its column's position.
    client
        .execute(
            "INSERT INTO accounts VALUES ($1, $2, $3)",
            &[&31i64, &"p", &0i32],
        )
        .await
        .unwrap();
    // INSERT ... SELECT without a column list: the SELECT's first output is the key.
    client
        .simple_query("INSERT INTO accounts SELECT 32, 'sel', 1")
        .await
        .unwrap();
    let mut seen = 0;
    for (shard, b) in cluster.backends.iter().enumerate() {
        for aid in lines(b, "SELECT aid FROM accounts") {
            let aid: i64 = aid.parse().unwrap();
            assert_eq!(
                cluster.shard_of(&KeyValue::Int(aid)),
                shard,
                "aid {aid} on shard {shard}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 32);

    // The key is not the first column: orders (id, tenant, amount), events (payload, ts).
    client
        .simple_query("INSERT INTO orders VALUES (1, 'acme', 10)")
        .await
        .unwrap();
    let acme = cluster.shard_of(&KeyValue::Text("acme".into()));
    assert_eq!(
        lines(
            &cluster.backends[acme],
            "SELECT id FROM orders WHERE tenant = 'acme'"
        ),
        ["1"]
    );
    client
        .simple_query("INSERT INTO events VALUES ('late', 2500), ('later', 9000)")
        .await
        .unwrap();
    assert_eq!(
        lines(&cluster.backends[2], "SELECT count(*) FROM events"),
        ["2"]
    );
    assert_eq!(
        lines(&cluster.backends[0], "SELECT count(*) FROM events"),
        ["0"]
    );

    // Rows on several shards: refused as for a column-listed INSERT, naming the shards; nothing is written.
    let (code, message) = refused(&client, "INSERT INTO events VALUES ('a', 5), ('b', 2500)").await;
    assert_eq!(code, "0A000");
    assert!(message.contains("shards 0, 2"), "{message}");
    assert_eq!(
        lines(&cluster.backends[0], "SELECT count(*) FROM events"),
        ["0"]
    );

    // A sharded table the default shard does not have: its column order is unknown, so the INSERT is refused
    // by shardpool (not sent anywhere as keyless).
    let (code, message) = refused(&client, "INSERT INTO ghosts VALUES (1)").await;
    assert_eq!(code, "0A000");
    assert!(message.contains("column order"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_predicates_reach_only_the_overlapping_shards() {
    let cluster = Cluster::start().await;
    // Each shard holds the same keys with its own name: a shard asked shows up in the answer.
    for (i, b) in cluster.backends.iter().enumerate() {
        b.sql(&format!(
            "INSERT INTO events (payload, ts) VALUES ('shard {i}', 10), ('shard {i}', 1500), ('shard {i}', 2500)"
        ));
        b.sql(&format!("INSERT INTO accounts VALUES ({i}, 'x', 0)"));
    }
    let (proxy, _router) = cluster.proxy("hash").await;
    let client = common::connect(&proxy.url("app", "secret", "shop")).await;
    let q = |cond: &str| format!("SELECT payload FROM events WHERE {cond} ORDER BY payload");

    assert_eq!(rows(&client, &q("ts BETWEEN 0 AND 999")).await, ["shard 0"]);
    assert_eq!(
        rows(&client, &q("ts >= 1000 AND ts < 2000")).await,
        ["shard 1"]
    );
    assert_eq!(
        rows(&client, &q("1000 <= ts AND ts < 2000 AND ts > 5")).await,
        ["shard 1"]
    );
    assert_eq!(rows(&client, &q("ts > 1500")).await, ["shard 1", "shard 2"]);
    assert_eq!(
        rows(&client, &q("ts <= 1000 AND ts > 10")).await,
        Vec::<String>::new()
    );
    // OR is not narrowed: every shard is asked (each answers with its own rows).
    assert_eq!(
        rows(&client, &q("ts < 1000 OR ts > 2000")).await,
        ["shard 0", "shard 0", "shard 1", "shard 1", "shard 2", "shard 2"]
    );

    // Bind parameters: the prepare runs anywhere, the execution on the one overlapping shard.
    let got: Vec<String> = client
        .query(
            "SELECT payload FROM events WHERE ts >= $1 AND ts < $2",
            &[&2000i64, &i64::MAX],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, ["shard 2"]);

    // A hash map cannot narrow a range: all shards answer (over the simple protocol).
    assert_eq!(
        rows(&client, "SELECT count(*) FROM accounts WHERE aid >= 0").await,
        ["3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_directory_keys_are_recorded_and_routed_alike_by_another_instance() {
    let cluster = Cluster::start().await;
    let (proxy, router) = cluster.proxy("hash").await;
    let client = common::connect(&proxy.url("app", "secret", "shop")).await;
    let mut epochs = router.catalog_epochs().unwrap();
    client
        .simple_query("INSERT INTO orders (id, tenant, amount) VALUES (7, 'newco', 1)")
        .await
        .unwrap();
    let hashed = KeyValue::Text("newco".into()).vshard(VSHARDS).unwrap();
    let shard = initial_shard(hashed, VSHARDS, 3) as usize;
    assert_eq!(
        lines(&cluster.backends[shard], "SELECT id FROM orders"),
        ["7"]
    );

    // The recorder commits the entry with a NOTIFY; wait for this instance's catalog to change, then look.
    let (catalog_db, conn) =
        tokio_postgres::connect(&cluster.backends[0].direct_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let recorded: i32 = loop {
        let row = catalog_db
            .query_opt(
                "SELECT vshard FROM shardpool.directory WHERE map = 'tenants' AND key = 'newco'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        let changed = tokio::time::timeout_at(deadline, epochs.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "the key was not recorded in time"
        );
    };
    assert_eq!(recorded as u32, hashed, "recorded where the row went");
    let local = router.catalog().unwrap();
    let entry = local
        .directory_vshard("tenants", &KeyValue::Text("newco".into()))
        .unwrap();
    assert_eq!(entry, Some(hashed));

    // A second instance that refuses keys without an entry routes this one by its entry, to the row.
    let (proxy2, router2) = cluster.proxy("error").await;
    assert_eq!(
        router2.catalog().unwrap().epoch,
        router.catalog().unwrap().epoch
    );
    let client2 = common::connect(&proxy2.url("app", "secret", "shop")).await;
    assert_eq!(
        rows(&client2, "SELECT id FROM orders WHERE tenant = 'newco'").await,
        ["7"]
    );
    let (code, _) = refused(&client2, "SELECT id FROM orders WHERE tenant = 'nobody'").await;
    assert_eq!(code, "22023");
    // Reads of unknown keys record nothing.
    rows(&client, "SELECT id FROM orders WHERE tenant = 'reader'").await;
    assert_eq!(
        catalog_db
            .query_one(
                "SELECT count(*) FROM shardpool.directory WHERE key = 'reader'",
                &[]
            )
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}

// --- routing decisions, no servers --------------------------------------------------------------------------

fn offline_router() -> Arc<ShardRouter> {
    let cfg: ShardingConfig = toml::from_str(&sharding_toml("", &[1, 2, 3], "hash")).unwrap();
    let router = ShardRouter::new("shop", &cfg).unwrap();
    router.install_catalog(Catalog {
        epoch: 1,
        vshards: VSHARDS,
        placement: (0..VSHARDS).map(|v| initial_shard(v, VSHARDS, 3)).collect(),
        directories: Default::default(),
        ranges: [(
            "by_time".to_string(),
            RangeMap {
                key_type: KeyType::Int,
                first: 0,
                bounds: vec![(KeyValue::Int(1000), 2), (KeyValue::Int(2000), 4)],
            },
        )]
        .into(),
        freeze: Default::default(),
        remaps: Default::default(),
    });
    router
}

fn place(
    router: &ShardRouter,
    sql: &str,
    params: Option<&[Option<&[u8]>]>,
) -> Result<Placement, String> {
    let a = router.analysis(sql);
    let stmt = a.combined().unwrap();
    router
        .place(stmt, params.map(|p| (p, &[][..])))
        .map_err(|e| format!("{}: {}", e.code, e.message))
}

#[test]
fn range_placement_narrows_range_maps_only() {
    let r = offline_router();
    let one = |shard| Ok(Placement::One { shard, keyed: true });
    assert_eq!(
        place(&r, "SELECT * FROM events WHERE ts < 1000", None),
        one(0)
    );
    assert_eq!(
        place(&r, "SELECT * FROM events WHERE ts >= 2000", None),
        one(2)
    );
    assert_eq!(
        place(&r, "SELECT * FROM events WHERE ts >= 999", None),
        Ok(Placement::Scatter(vec![0, 1, 2]))
    );
    assert_eq!(
        place(
            &r,
            "SELECT * FROM events WHERE ts BETWEEN 1000 AND 2000",
            None
        ),
        Ok(Placement::Scatter(vec![1, 2]))
    );
    // Writes: one shard is a keyed write; several stay keyless writes (refused by default).
    assert_eq!(
        place(&r, "DELETE FROM events WHERE ts > 1000 AND ts < 1999", None),
        one(1)
    );
    assert!(place(&r, "DELETE FROM events WHERE ts > 0", None)
        .unwrap_err()
        .contains("no shard key"));
    // Parameters: a prepare goes anywhere, an execution where its bounds say.
    assert_eq!(
        place(&r, "SELECT * FROM events WHERE ts > $1", None),
        Ok(Placement::One {
            shard: 0,
            keyed: false
        })
    );
    assert_eq!(
        place(
            &r,
            "SELECT * FROM events WHERE ts > $1",
            Some(&[Some(b"2000")])
        ),
        one(2)
    );
    assert_eq!(
        place(
            &r,
            "SELECT * FROM events WHERE ts > $1 AND ts <= $2",
            Some(&[Some(b"-5"), Some(b"1000")])
        ),
        Ok(Placement::Scatter(vec![0, 1]))
    );
    // A NULL bound matches nothing.
    assert_eq!(
        place(&r, "SELECT * FROM events WHERE ts > $1", Some(&[None])),
        Ok(Placement::One {
            shard: 0,
            keyed: false
        })
    );
    // A hash map scatters a range; so does OR.
    assert_eq!(
        place(&r, "SELECT * FROM accounts WHERE aid > 5 AND aid < 7", None),
        Ok(Placement::Scatter(vec![0, 1, 2]))
    );
    assert_eq!(
        place(&r, "SELECT * FROM events WHERE ts < 10 OR ts > 3000", None),
        Ok(Placement::Scatter(vec![0, 1, 2]))
    );
}

#[test]
fn columnless_inserts_wait_for_the_column_order() {
    let r = offline_router();
    let err = place(&r, "INSERT INTO events VALUES ('x', 5)", None).unwrap_err();
    assert!(err.contains("column order"), "{err}");
    r.set_columns(shardpool::sharding::schema::TableColumns::new(
        [(
            "events".to_string(),
            vec!["payload".to_string(), "ts".to_string()],
        )]
        .into(),
    ));
    // The cached refusal was made under the old column order: it is not reused.
    assert_eq!(
        place(&r, "INSERT INTO events VALUES ('x', 5)", None),
        Ok(Placement::One {
            shard: 0,
            keyed: true
        })
    );
    assert_eq!(
        place(
            &r,
            "INSERT INTO events VALUES ('x', $1)",
            Some(&[Some(b"2500")])
        ),
        Ok(Placement::One {
            shard: 2,
            keyed: true
        })
    );
    let err = place(&r, "INSERT INTO events VALUES ('x', 5), ('y', 1500)", None).unwrap_err();
    assert!(err.contains("shards 0, 1"), "{err}");
}

/// `shardpool.shard` and `shardpool.shard_key`, as session settings and as leading comment hints: what SQL cannot
/// say (a statement without tables, a keyless read that should stay on one tenant's shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_and_shard_key_settings_and_hints_route_what_sql_cannot_say() {
    let cluster = Cluster::start().await;
    // One account per shard, each on the shard its key hashes to, so a keyless count shows which shards answered.
    let keys: Vec<i64> = (0..3)
        .map(|s| {
            (1..)
                .find(|k| cluster.shard_of(&KeyValue::Int(*k)) == s)
                .unwrap()
        })
        .collect();
    for (s, k) in keys.iter().enumerate() {
        cluster.backends[s].sql(&format!("INSERT INTO accounts VALUES ({k}, 'x', 0)"));
    }
    let (proxy, _router) = cluster.proxy("hash").await;
    let client = common::connect(&proxy.url("app", "secret", "shop")).await;
    let port_of = |s: usize| cluster.backends[s].pg.port().to_string();
    let port = "SELECT current_setting('port')";

    // A statement without tables runs on the default shard unless told otherwise.
    assert_eq!(rows(&client, port).await, [port_of(0)]);
    client
        .simple_query("SET shardpool.shard = 2")
        .await
        .unwrap();
    assert_eq!(rows(&client, "SHOW shardpool.shard").await, ["2"]);
    assert_eq!(rows(&client, port).await, [port_of(2)]);
    // A forced shard beats the statement's own keys.
    assert_eq!(
        rows(
            &client,
            &format!("SELECT count(*) FROM accounts WHERE aid = {}", keys[0])
        )
        .await,
        ["0"]
    );
    // The hint beats the session setting, for its statement only.
    assert_eq!(
        rows(&client, &format!("/* shardpool.shard=1 */ {port}")).await,
        [port_of(1)]
    );
    assert_eq!(rows(&client, port).await, [port_of(2)]);
    client.simple_query("RESET shardpool.shard").await.unwrap();
    assert_eq!(rows(&client, "SHOW shardpool.shard").await, [""]);
    assert_eq!(rows(&client, port).await, [port_of(0)]);
    assert_eq!(refused(&client, "SET shardpool.shard = 3").await.0, "22023");
    assert_eq!(
        refused(&client, "/* shardpool.shard=7 */ SELECT 1").await.0,
        "22023"
    );

    // A session shard key: keyless statements go where that key lives, instead of scattering.
    assert_eq!(rows(&client, "SELECT count(*) FROM accounts").await, ["3"]);
    client
        .simple_query(&format!("SET shardpool.shard_key = {}", keys[1]))
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "SHOW shardpool.shard_key").await,
        [keys[1].to_string()]
    );
    assert_eq!(rows(&client, "SELECT count(*) FROM accounts").await, ["1"]);
    assert_eq!(rows(&client, port).await, [port_of(1)]);
    // Keys the statement names win over the session's.
    assert_eq!(
        rows(
            &client,
            &format!("SELECT owner FROM accounts WHERE aid = {}", keys[2])
        )
        .await,
        ["x"]
    );
    // The hint's key beats the session's.
    assert_eq!(
        rows(
            &client,
            &format!("/* shardpool.shard_key={} */ {port}", keys[2])
        )
        .await,
        [port_of(2)]
    );
    // A transaction is bound to the shard its first statement's key chose.
    client.simple_query("BEGIN").await.unwrap();
    assert_eq!(rows(&client, port).await, [port_of(1)]);
    let (code, message) = refused(
        &client,
        &format!("/* shardpool.shard_key={} */ {port}", keys[0]),
    )
    .await;
    assert_eq!(code, "0A000", "{message}");
    client.simple_query("ROLLBACK").await.unwrap();
    // A key that is not of the table's key type is refused, not guessed.
    client
        .simple_query("SET shardpool.shard_key = 'not a number'")
        .await
        .unwrap();
    assert_eq!(
        refused(&client, "SELECT count(*) FROM accounts").await.0,
        "22023"
    );
    // Tables whose maps put the key on different shards: refused, not split. `events` is range-mapped (1000–1999
    // is its vshard 2, on shard 1); pick a key that `accounts`' hash puts elsewhere.
    let k = (1000..2000i64)
        .find(|k| cluster.shard_of(&KeyValue::Int(*k)) != 1)
        .unwrap();
    client
        .simple_query(&format!("SET shardpool.shard_key = {k}"))
        .await
        .unwrap();
    let (code, message) = refused(&client, "SELECT count(*) FROM accounts, events").await;
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("two shards"), "{message}");
    client
        .simple_query("RESET shardpool.shard_key")
        .await
        .unwrap();
    assert_eq!(rows(&client, "SELECT count(*) FROM accounts").await, ["3"]);
}
