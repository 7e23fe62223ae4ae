//! Sharding through the proxy against three real shards (separate Postgres servers; shard 1 has a streaming
//! replica): rows inserted through shardpool sit exactly on the shard their vshard maps to (checked on each shard
//! with Postgres' own hash functions), range and directory maps route as the catalog says (also after a directory
//! change), keyless reads are merged equal to the same query on one database holding all rows, and what cannot be
//! done correctly gets a clear error.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::shards::{check_placement, count, rows, shop_url, start, VSHARDS};
use common::TestProxy;
use shardpool::sharding::catalog;
use shardpool::sharding::key::KeyValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_their_vshards_shard_and_scatter_matches_one_database() {
    let (shards, proxy, _cfg) = start().await;
    let c = common::connect(&shop_url(&proxy)).await;

    // 10,000 rows: simple-protocol literals, extended-protocol parameters, and COPY (text with a column list, CSV
    // with a header and none).
    for aid in 0..3_400i64 {
        let key = aid * 7919 - 20_000_000;
        c.batch_execute(&format!(
            "INSERT INTO accounts (aid, owner, balance) VALUES ({key}, 'owner{}', {})",
            aid % 37,
            aid % 1000
        ))
        .await
        .unwrap();
    }
    let insert = c
        .prepare("INSERT INTO accounts (aid, owner, balance) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    for aid in 3_400..6_700i64 {
        let key = aid * 7919 - 20_000_000;
        let owner = format!("owner{}", aid % 37);
        let balance = (aid % 1000) as i32;
        c.execute(&insert, &[&key, &owner, &balance]).await.unwrap();
    }
    let mut raw = common::raw::Raw::connect(proxy.port, "app", "secret", "shop").await;
    let text: String = (6_700..8_350i64)
        .map(|aid| {
            format!(
                "{}\towner{}\t{}\n",
                aid * 7919 - 20_000_000,
                aid % 37,
                aid % 1000
            )
        })
        .collect();
    let tag = raw
        .copy_in(
            "COPY accounts (aid, owner, balance) FROM STDIN",
            text.as_bytes(),
            1000,
        )
        .await;
    assert!(tag.contains("COPY 1650"), "{tag}");
    let mut csv = String::from("aid,owner,balance\n");
    for aid in 8_350..10_000i64 {
        csv.push_str(&format!(
            "{},\"owner{}\",{}\n",
            aid * 7919 - 20_000_000,
            aid % 37,
            aid % 1000
        ));
    }
    let tag = raw
        .copy_in(
            "COPY accounts FROM STDIN WITH (FORMAT csv, HEADER true)",
            csv.as_bytes(),
            777,
        )
        .await;
    assert!(tag.contains("COPY 1650"), "{tag}");
    let out = raw.copy_out("COPY accounts TO STDOUT").await;
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 10_000);
    check_placement(&shards, 10_000);

    // Point reads by key (simple and extended) find the row on its shard.
    let key = 1234 * 7919 - 20_000_000i64;
    let r = c
        .query_one(
            "SELECT owner, balance FROM accounts WHERE aid = $1",
            &[&key],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "owner13");
    assert_eq!(
        rows(
            &c,
            &format!("SELECT balance FROM accounts WHERE aid = {key}")
        )
        .await,
        vec![vec![Some("234".to_owned())]]
    );

    // Scatter/gather equals the same query on one database holding every row.
    let all = &shards.backends[0];
    all.pg.create_database("everything", "app").unwrap();
    all.pg
        .sql(
            "everything",
            "CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL, balance int NOT NULL); \
             INSERT INTO accounts SELECT g * 7919 - 20000000, 'owner' || (g % 37), g % 1000 \
             FROM generate_series(0, 9999) g; GRANT ALL ON accounts TO app",
        )
        .unwrap();
    let everything = common::connect(&all.pg.url("app", "secret", "everything")).await;
    for sql in [
        "SELECT count(*), sum(balance), min(aid), max(aid) FROM accounts",
        "SELECT avg(balance) FROM accounts",
        "SELECT aid, balance FROM accounts ORDER BY balance DESC, aid LIMIT 10 OFFSET 5",
        "SELECT owner, count(*), sum(balance), max(aid) FROM accounts GROUP BY owner ORDER BY owner",
        "SELECT owner, avg(balance) FROM accounts GROUP BY owner ORDER BY 2 DESC, 1 LIMIT 3",
        "SELECT count(*) FROM accounts WHERE balance < 10",
    ] {
        assert_eq!(rows(&c, sql).await, rows(&everything, sql).await, "{sql}");
    }
    // Plain concatenation: same multiset.
    let mut sharded: Vec<_> = rows(&c, "SELECT aid FROM accounts WHERE balance = 7").await;
    let mut single: Vec<_> = rows(&everything, "SELECT aid FROM accounts WHERE balance = 7").await;
    sharded.sort();
    single.sort();
    assert_eq!(sharded, single);

    // What the merge cannot do correctly is refused with the feature's name, never answered wrongly.
    let e = c
        .batch_execute("SELECT DISTINCT owner FROM accounts")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    let msg = e.as_db_error().unwrap().message().to_lowercase();
    assert!(msg.contains("distinct"), "{msg}");
    // A keyless write is refused unless fan-out writes are allowed.
    let e = c
        .batch_execute("UPDATE accounts SET balance = 0")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    // A transaction is bound to the shard of its first keyed statement.
    let (k1, k2) = keys_on_different_shards();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!(
        "UPDATE accounts SET balance = 1 WHERE aid = {}",
        k1.0
    ))
    .await
    .unwrap();
    let e = c
        .batch_execute(&format!(
            "UPDATE accounts SET balance = 1 WHERE aid = {}",
            k2.0
        ))
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(
        msg.contains(&format!("shard {}", k1.1)) && msg.contains(&format!("shard {}", k2.1)),
        "{msg}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();

    // DDL on a sharded table runs on every shard; reference-table writes too.
    c.batch_execute("ALTER TABLE accounts ADD COLUMN note text")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO countries VALUES ('fr', 'France')")
        .await
        .unwrap();
    for b in &shards.backends {
        assert_eq!(
            count(
                b,
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_name = 'accounts' AND column_name = 'note'"
            ),
            1
        );
        assert_eq!(count(b, "SELECT count(*) FROM countries"), 1);
    }

    // The console shows the shards and per-vshard counters; shardctl says where a key goes.
    let shard_rows = proxy.admin("SHOW SHARDS").await;
    assert_eq!(shard_rows.len(), 3);
    let held: usize = shard_rows
        .iter()
        .map(|r| r["vshards"].parse::<usize>().unwrap())
        .sum();
    assert_eq!(held, VSHARDS as usize);
    // SHOW POOLS tells the pools of `shop` apart by shard, server and role (shard 1 has a replica).
    let mut pools: Vec<(String, String, String)> = proxy
        .admin("SHOW POOLS")
        .await
        .into_iter()
        .filter(|r| r["database"] == "shop" && r["user"] == "app")
        .map(|r| (r["shard"].clone(), r["server"].clone(), r["role"].clone()))
        .collect();
    pools.sort();
    let at = |port: u16| format!("127.0.0.1:{port}");
    let mut expected = vec![
        (
            "0".into(),
            at(shards.backends[0].pg.port()),
            "primary".into(),
        ),
        (
            "1".into(),
            at(shards.backends[1].pg.port()),
            "primary".into(),
        ),
        ("1".into(), at(shards._replica.port()), "replica".into()),
        (
            "2".into(),
            at(shards.backends[2].pg.port()),
            "primary".into(),
        ),
    ];
    expected.sort();
    assert_eq!(pools, expected);
    let vshard_rows = proxy.admin("SHOW VSHARDS").await;
    assert_eq!(vshard_rows.len(), VSHARDS as usize);
    let writes: u64 = vshard_rows
        .iter()
        .map(|r| r["writes"].parse::<u64>().unwrap())
        .sum();
    assert!(writes >= 10_000, "{writes}");
    let (k, shard) = keys_on_different_shards().0;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardctl"))
        .args([
            "route",
            "accounts",
            &k.to_string(),
            "--database",
            "shop",
            "--user",
            "app",
        ])
        .arg("--config")
        .arg(&proxy.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let vshard = KeyValue::Int(k).vshard(VSHARDS).unwrap();
    assert!(
        text.contains(&format!("vshard {vshard} -> shard {shard}")),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two keys whose hash places them on different shards (initial placement), with their shards.
fn keys_on_different_shards() -> ((i64, u16), (i64, u16)) {
    let shard_of = |k: i64| {
        let v = KeyValue::Int(k).vshard(VSHARDS).unwrap();
        catalog::initial_shard(v, VSHARDS, 3)
    };
    let first = (1i64, shard_of(1));
    let other = (2..1000).find(|k| shard_of(*k) != first.1).unwrap();
    (first, (other, shard_of(other)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_directory_maps_route_as_the_catalog_says() {
    let (shards, proxy, _cfg) = start().await;
    let c = common::connect(&shop_url(&proxy)).await;
    let router = proxy.ctx().shard_router("shop").unwrap();
    let catalog_now = router.catalog().unwrap();

    // Range map: (-inf, 1000), [1000, 2000), [2000, +inf): each range its own vshard.
    for ts in [-5i64, 999, 1000, 1999, 2000, 1_000_000] {
        c.execute("INSERT INTO events (ts, payload) VALUES ($1, 'x')", &[&ts])
            .await
            .unwrap();
    }
    for ts in [-5i64, 999, 1000, 1999, 2000, 1_000_000] {
        let v = catalog_now
            .range_vshard("by_time", &KeyValue::Int(ts))
            .unwrap();
        let shard = catalog_now.shard_of(v).unwrap() as usize;
        assert_eq!(
            count(
                &shards.backends[shard],
                &format!("SELECT count(*) FROM events WHERE ts = {ts}")
            ),
            1,
            "ts {ts} not on shard {shard}"
        );
    }
    let placed: BTreeSet<usize> = [-5i64, 1000, 2000]
        .iter()
        .map(|ts| {
            let v = catalog_now
                .range_vshard("by_time", &KeyValue::Int(*ts))
                .unwrap();
            catalog_now.shard_of(v).unwrap() as usize
        })
        .collect();
    assert!(placed.len() > 1, "the three ranges all sit on one shard");

    // Directory map: a tenant without an entry is placed by hash; an entry moves it, and routing follows.
    c.batch_execute("INSERT INTO orders (tenant, id, amount) VALUES ('acme', 1, 10)")
        .await
        .unwrap();
    let hashed = KeyValue::Text("acme".into()).vshard(VSHARDS).unwrap();
    let before = catalog_now.shard_of(hashed).unwrap() as usize;
    assert_eq!(
        count(
            &shards.backends[before],
            "SELECT count(*) FROM orders WHERE tenant = 'acme'"
        ),
        1
    );
    let target_vshard = (0..VSHARDS)
        .find(|v| catalog_now.shard_of(*v).unwrap() as usize != before)
        .unwrap();
    let target = catalog_now.shard_of(target_vshard).unwrap() as usize;
    let (mut client, conn) =
        tokio_postgres::connect(&shards.backends[0].direct_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let epoch = catalog::set_directory(
        &mut client,
        "tenants",
        &KeyValue::Text("acme".into()),
        target_vshard,
    )
    .await
    .unwrap();
    common::eventually(
        Duration::from_secs(20),
        "the directory change to reach the proxy",
        || {
            let seen = router.catalog().unwrap().epoch >= epoch;
            async move { seen }
        },
    )
    .await;
    c.batch_execute("INSERT INTO orders (tenant, id, amount) VALUES ('acme', 2, 20)")
        .await
        .unwrap();
    assert_eq!(
        count(
            &shards.backends[target],
            "SELECT count(*) FROM orders WHERE tenant = 'acme' AND id = 2"
        ),
        1
    );
    // Reads follow the directory too.
    assert_eq!(
        rows(&c, "SELECT id FROM orders WHERE tenant = 'acme'").await,
        vec![vec![Some("2".to_owned())]]
    );

    // Two instances share the catalog: a placement change is followed by both, and both route alike.
    let second = TestProxy::start(&std::fs::read_to_string(&proxy.config_path).unwrap()).await;
    let router2 = second.ctx().shard_router("shop").unwrap();
    common::eventually(
        Duration::from_secs(30),
        "the second instance to load the catalog",
        || {
            let loaded = router2.catalog().is_some();
            async move { loaded }
        },
    )
    .await;
    let key = 77i64;
    let v = KeyValue::Int(key).vshard(VSHARDS).unwrap();
    let from = router.catalog().unwrap().shard_of(v).unwrap();
    let to = (from + 1) % 3;
    let epoch = catalog::move_vshard(&mut client, v, to).await.unwrap();
    for r in [&router, &router2] {
        common::eventually(
            Duration::from_secs(20),
            "both instances to follow the move",
            || {
                let seen = r.catalog().unwrap().epoch >= epoch;
                async move { seen }
            },
        )
        .await;
        assert_eq!(r.catalog().unwrap().shard_of(v), Some(to));
    }
    let c2 = common::connect(&shop_url(&second)).await;
    c2.execute(
        "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'moved', 1)",
        &[&key],
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &shards.backends[to as usize],
            &format!("SELECT count(*) FROM accounts WHERE aid = {key}")
        ),
        1
    );
    assert_eq!(
        rows(&c, &format!("SELECT owner FROM accounts WHERE aid = {key}")).await,
        vec![vec![Some("moved".to_owned())]]
    );
}
