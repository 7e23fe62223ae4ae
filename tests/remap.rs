//! Online remap against real Postgres: two shards, the catalog on shard 0, two shardpool instances in front.
//! A quarter of the vshards moves under a keyed write load through both instances and every committed row ends up
//! exactly once on its vshard's current shard; the fence rejects direct writes on the old shard; preflight refuses
//! unsafe moves changing nothing; a remap stopped in any phase resumes, and abort leaves no replication objects.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/remap_kit.rs"]
mod remap_kit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, DB};
use rand::{Rng, SeedableRng};
use remap_kit::*;
use shardpool::sharding::catalog;
use shardpool::sharding::key::KeyValue;
use shardpool::sharding::remap::state::Phase;
use shardpool::sharding::remap::{RemapError, RemapOptions};

/// What one load client committed (and what failed).
#[derive(Default)]
struct Committed {
    accounts: BTreeMap<i64, i64>,
    orders: BTreeMap<(i64, i32), i64>,
    failures: Vec<String>,
    /// Latencies of committed operations while a remap ran, on moving and on other vshards.
    moving: Vec<Duration>,
    other: Vec<Duration>,
    /// The same before any remap started.
    baseline_other: Vec<Duration>,
    ops: u64,
}

/// What the test tells the load clients, and what they tell it.
#[derive(Default)]
struct LoadFlags {
    stop: AtomicBool,
    remapping: AtomicBool,
    /// Operations committed by all clients so far.
    ops: std::sync::atomic::AtomicU64,
}

impl LoadFlags {
    /// Waits until the clients committed `n` more operations: the load is really running (an event, not a sleep).
    async fn more_ops(&self, n: u64) {
        let target = self.ops.load(Ordering::Relaxed) + n;
        common::eventually(Duration::from_secs(60), "the load to make progress", || {
            let done = self.ops.load(Ordering::Relaxed) >= target;
            async move { done }
        })
        .await;
    }
}

/// One load client: keyed inserts, updates and deletes on the accounts it owns (`aid % clients == me`), each
/// recorded once committed. Runs until `stop`.
async fn client_load(
    url: String,
    me: i64,
    clients: i64,
    moving: BTreeSet<u32>,
    flags: Arc<LoadFlags>,
) -> Committed {
    let mut c = common::connect(&url).await;
    let mut done = Committed::default();
    for aid in (1..=INITIAL).filter(|a| a % clients == me) {
        done.accounts.insert(aid, 0);
        done.orders.insert((aid, 1), 10);
        done.orders.insert((aid, 2), 10);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(me as u64);
    let mut next = 1_000_000 + me;
    while !flags.stop.load(Ordering::Relaxed) {
        let remapping = flags.remapping.load(Ordering::Relaxed);
        let existing: Vec<i64> = done.accounts.keys().copied().collect();
        let roll = rng.gen_range(0..100);
        let aid = if roll < 20 || existing.is_empty() {
            next += clients;
            next
        } else {
            existing[rng.gen_range(0..existing.len())]
        };
        let started = Instant::now();
        let result: Result<(), tokio_postgres::Error> = async {
            if roll < 20 {
                // Statement by statement: the BEGIN is held back until the INSERT shows the shard.
                c.simple_query("BEGIN").await?;
                c.simple_query(&format!(
                    "INSERT INTO accounts (aid, owner, balance) VALUES ({aid}, 'new', 0)"
                ))
                .await?;
                c.simple_query(&format!(
                    "INSERT INTO orders (aid, id, amount) VALUES ({aid}, 1, 5)"
                ))
                .await?;
                c.simple_query("COMMIT").await.map(drop)
            } else if roll < 60 {
                let n = c
                    .execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE aid = $1",
                        &[&aid],
                    )
                    .await?;
                assert_eq!(n, 1, "update of account {aid}");
                Ok(())
            } else if roll < 75 {
                c.batch_execute(&format!(
                    "BEGIN; DELETE FROM orders WHERE aid = {aid}; DELETE FROM accounts WHERE aid = {aid}; COMMIT"
                ))
                .await
            } else {
                c.simple_query(&format!(
                    "UPDATE orders SET amount = amount + 1 WHERE aid = {aid} AND id = 1"
                ))
                .await
                .map(drop)
            }
        }
        .await;
        let took = started.elapsed();
        match result {
            Ok(()) => {
                if roll < 20 {
                    done.accounts.insert(aid, 0);
                    done.orders.insert((aid, 1), 5);
                } else if roll < 60 {
                    *done.accounts.get_mut(&aid).unwrap() += 1;
                } else if roll < 75 {
                    done.accounts.remove(&aid);
                    done.orders.retain(|(a, _), _| *a != aid);
                } else if let Some(o) = done.orders.get_mut(&(aid, 1)) {
                    *o += 1;
                }
                match (remapping, moving.contains(&vshard(aid))) {
                    (true, true) => done.moving.push(took),
                    (true, false) => done.other.push(took),
                    (false, false) => done.baseline_other.push(took),
                    (false, true) => {}
                }
                done.ops += 1;
                flags.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                done.failures.push(format!("account {aid}: {e:?}"));
                // The connection may be unusable after an error inside a transaction.
                c = common::connect(&url).await;
            }
        }
    }
    done
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Every committed row exactly once, on the shard its vshard is placed on now, with the committed values.
fn check_rows(s: &Setup, placement: &[u16], committed: &[Committed]) {
    let mut want_accounts = BTreeMap::new();
    let mut want_orders = BTreeMap::new();
    for c in committed {
        for (aid, bal) in &c.accounts {
            want_accounts.insert(aid.to_string(), bal.to_string());
        }
        for ((aid, id), amount) in &c.orders {
            want_orders.insert(format!("{aid}|{id}"), amount.to_string());
        }
    }
    let mut got_accounts = BTreeMap::new();
    let mut got_orders = BTreeMap::new();
    for (i, b) in s.shards.iter().enumerate() {
        for (k, v) in table(b, "SELECT aid, balance FROM accounts") {
            let aid: i64 = k.parse().unwrap();
            assert_eq!(
                usize::from(placement[vshard(aid) as usize]),
                i,
                "account {aid} (vshard {}) is on shard {i}",
                vshard(aid)
            );
            assert!(
                got_accounts.insert(k.clone(), v).is_none(),
                "account {k} twice"
            );
        }
        for (k, v) in table(b, "SELECT aid, id, amount FROM orders") {
            let aid: i64 = k.split('|').next().unwrap().parse().unwrap();
            assert_eq!(
                usize::from(placement[vshard(aid) as usize]),
                i,
                "order {k} is on shard {i}"
            );
            assert!(got_orders.insert(k.clone(), v).is_none(), "order {k} twice");
        }
    }
    assert_eq!(got_accounts.len(), want_accounts.len());
    assert!(
        got_accounts == want_accounts,
        "accounts differ from what the clients committed"
    );
    assert!(
        got_orders == want_orders,
        "orders differ from what the clients committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remap_under_load_moves_every_committed_row_once() {
    let s = setup(2, "", "").await;
    s.load();
    let moving: Vec<u32> = (0..16).collect();
    let flags = Arc::new(LoadFlags::default());
    let clients = 4;
    let mut load = Vec::new();
    for me in 0..clients {
        let url = s.proxies[me as usize % 2].url("app", "secret", "shop");
        load.push(tokio::spawn(client_load(
            url,
            me,
            clients,
            moving.iter().copied().collect(),
            flags.clone(),
        )));
    }
    // A baseline of the load before any remap.
    flags.more_ops(400).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let fail = |e: RemapError| -> ! { panic!("{e}\n{}", log.lock().unwrap().join("\n")) };
    flags.remapping.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let there = r.start(&moving, 1).await.unwrap_or_else(|e| fail(e));
    let took_there = started.elapsed();
    assert_eq!(there.phase, Phase::Done);
    // Moved: the old shard's fence refuses a direct write of a moved vshard, whoever sends it.
    let moved_aid = (5_000_000..).find(|a| vshard(*a) < 16).unwrap();
    let insert = "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'direct', 0)";
    let direct0 = common::connect(&s.shards[0].direct_url()).await;
    let err = direct0.execute(insert, &[&moved_aid]).await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "40001", "{err:?}");
    assert!(format!("{err:?}").contains("moved to shard 1"), "{err:?}");
    flags.more_ops(100).await;

    // And back, still under load.
    let started = Instant::now();
    let back = r.start(&moving, 0).await.unwrap_or_else(|e| fail(e));
    let took_back = started.elapsed();
    assert_eq!(back.phase, Phase::Done);
    flags.remapping.store(false, Ordering::Relaxed);
    flags.more_ops(100).await;
    flags.stop.store(true, Ordering::Relaxed);
    let mut committed = Vec::new();
    for l in load {
        committed.push(l.await.unwrap());
    }
    let failures: Vec<&String> = committed.iter().flat_map(|c| &c.failures).collect();
    assert!(failures.is_empty(), "failed transactions: {failures:?}");

    let mut catalog_client = common::connect(&s.shards[0].direct_url()).await;
    let c = catalog::load(&mut catalog_client).await.unwrap();
    for v in 0..VSHARDS {
        assert_eq!(c.shard_of(v), Some(u16::from(v >= 32)), "vshard {v}");
    }
    check_rows(&s, &c.placement, &committed);

    // Both instances route by the final placement, and SHOW REMAPS says so.
    for p in &s.proxies {
        let router = p.ctx().shard_router("shop").unwrap();
        let epoch = c.epoch;
        common::eventually(
            Duration::from_secs(10),
            "the instance to see the last move",
            || {
                let at = router.catalog().map(|c| c.epoch);
                async move { at == Some(epoch) }
            },
        )
        .await;
        let rows = p.admin("SHOW REMAPS").await;
        assert_eq!(rows[0]["remap"], back.id.to_string(), "{rows:?}");
        assert_eq!(rows[0]["phase"], "done", "{rows:?}");
        assert_eq!(rows[0]["vshards"], "0-15");
        assert_eq!(rows[1]["phase"], "done", "{rows:?}");
    }

    // Moved back: shard 1 fences those vshards now, shard 0 takes them again (its fence was narrowed).
    let direct1 = common::connect(&s.shards[1].direct_url()).await;
    let err = direct1.execute(insert, &[&moved_aid]).await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "40001", "{err:?}");
    direct0.execute(insert, &[&moved_aid]).await.unwrap();

    // Nothing left behind by either remap.
    for id in [there.id, back.id] {
        assert_eq!(r.leftovers(id).await.unwrap(), Vec::<String>::new());
    }

    let all = |f: fn(&Committed) -> &Vec<Duration>| -> Vec<Duration> {
        committed.iter().flat_map(|c| f(c).clone()).collect()
    };
    let (mut moving_lat, mut other_lat, mut base_lat) = (
        all(|c| &c.moving),
        all(|c| &c.other),
        all(|c| &c.baseline_other),
    );
    let ops: u64 = committed.iter().map(|c| c.ops).sum();
    let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
    eprintln!(
        "remap of 16/64 vshards there {took_there:?} and back {took_back:?}, {ops} operations committed, 0 failed; \
         writes to moving vshards during the remaps: p50 {} p99 {} max {} ({} ops); other vshards during the \
         remaps: p50 {} p99 {} max {} ({} ops); before the remaps: p50 {} p99 {} max {} ({} ops)\n{}",
        ms(percentile(&mut moving_lat, 0.5)),
        ms(percentile(&mut moving_lat, 0.99)),
        ms(percentile(&mut moving_lat, 1.0)),
        moving_lat.len(),
        ms(percentile(&mut other_lat, 0.5)),
        ms(percentile(&mut other_lat, 0.99)),
        ms(percentile(&mut other_lat, 1.0)),
        other_lat.len(),
        ms(percentile(&mut base_lat, 0.5)),
        ms(percentile(&mut base_lat, 0.99)),
        ms(percentile(&mut base_lat, 1.0)),
        base_lat.len(),
        log.lock().unwrap().iter().filter(|l| l.starts_with("cutover")).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_unsafe_moves_and_changes_nothing() {
    // notes: its replica identity (the primary key) lacks the shard key.
    let s = setup(
        1,
        "CREATE TABLE notes (id bigint PRIMARY KEY, aid bigint NOT NULL); ALTER TABLE notes OWNER TO app",
        "[[databases.shop.sharding.tables]]\nname = \"notes\"\nkey = \"aid\"\ntype = \"int8\"\n",
    )
    .await;
    s.load();
    // Schema mismatch: shard 1's accounts has an extra column.
    s.shards[1].sql("ALTER TABLE accounts ADD COLUMN extra int");
    // Rows already on the target in a moving vshard.
    let stray = (1..).find(|a| vshard(*a) == 3).unwrap();
    s.shards[1].sql(&format!("INSERT INTO orders VALUES ({stray}, 99, 1)"));

    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = s.remapper(Setup::options(), log).await;
    let err = r.start(&[0, 1, 2, 3], 1).await.unwrap_err();
    let RemapError::Refused(report) = &err else {
        panic!("{err}");
    };
    let text = report.render();
    assert_eq!(report.refusals.len(), 3, "{text}");
    assert!(
        text.contains(
            "table notes on shard 0 has a replica identity (id) without its shard key aid"
        ),
        "{text}"
    );
    assert!(
        text.contains("CREATE UNIQUE INDEX CONCURRENTLY notes_shardpool_ri ON notes (aid, id)"),
        "{text}"
    );
    assert!(text.contains("REPLICA IDENTITY FULL"), "{text}");
    assert!(
        text.contains("table accounts differs between shard 0 and shard 1"),
        "{text}"
    );
    assert!(
        text.contains("shard 1 already has 1 rows of the moving vshards in orders"),
        "{text}"
    );

    // Nothing was created: no remap recorded, no publication, no subscription, no slot.
    assert!(r.status().await.unwrap().is_empty());
    assert_eq!(s.shards[0].sql("SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        s.shards[0].sql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(s.shards[1].sql("SELECT count(*) FROM pg_subscription"), "0");
    // Updates of notes still work (no publication was created over it).
    s.shards[0].sql("INSERT INTO notes VALUES (1, 1); UPDATE notes SET aid = 2 WHERE id = 1");

    // Fixed as the refusals say, the same move passes preflight.
    for b in &s.shards {
        b.sql(
            "CREATE UNIQUE INDEX notes_shardpool_ri ON notes (aid, id); \
               ALTER TABLE notes REPLICA IDENTITY USING INDEX notes_shardpool_ri",
        );
    }
    s.shards[1].sql("ALTER TABLE accounts DROP COLUMN extra");
    s.shards[1].sql(&format!("DELETE FROM orders WHERE aid = {stray}"));
    let (_, report) = r.plan(&[0, 1, 2, 3], 1).await.unwrap();
    assert!(report.refusals.is_empty(), "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_remaps_resume_and_abort_leaves_nothing() {
    let s = setup(1, "", "").await;
    s.load();
    let log = Arc::new(Mutex::new(Vec::new()));
    let moving: Vec<u32> = (8..12).collect();
    let expected = s.shards[0].sql(&format!(
        "SELECT count(*) FROM accounts WHERE {} BETWEEN 8 AND 11",
        shardpool::sharding::hash::vshard_sql(
            "aid",
            shardpool::sharding::key::KeyType::Int,
            VSHARDS
        )
    ));

    // A shardctl that dies once the subscription exists, then once the copy is done: each run picks up the phase.
    for stop in [Phase::Planned, Phase::Copying] {
        let opts = RemapOptions {
            stop_after: Some(stop),
            ..Setup::options()
        };
        let mut r = s.remapper(opts, log.clone()).await;
        let row = r.start(&moving, 1).await.unwrap();
        assert!(
            row.phase > stop,
            "{:?} after stopping at {stop:?}",
            row.phase
        );
    }
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let active = r.status().await.unwrap();
    assert_eq!(active[0].phase, Phase::CatchingUp);
    assert_eq!(active[0].rows_copied.to_string(), {
        // accounts plus two orders each
        let n: i64 = expected.parse().unwrap();
        (3 * n).to_string()
    });
    // Another move is refused while this one is in progress.
    let err = r.start(&[40], 0).await.unwrap_err();
    assert!(matches!(err, RemapError::Busy { .. }), "{err}");

    // Abort: nothing left anywhere, the copied rows gone from the target, placement unchanged.
    let row = r.abort().await.unwrap();
    assert_eq!(row.phase, Phase::Aborted);
    assert_eq!(r.leftovers(row.id).await.unwrap(), Vec::<String>::new());
    assert_eq!(
        s.shards[0].sql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(s.shards[1].sql("SELECT count(*) FROM pg_subscription"), "0");
    assert_eq!(
        s.shards[1].sql(&format!(
            "SELECT count(*) FROM accounts WHERE {} BETWEEN 8 AND 11",
            shardpool::sharding::hash::vshard_sql(
                "aid",
                shardpool::sharding::key::KeyType::Int,
                VSHARDS
            )
        )),
        "0"
    );
    let mut cc = common::connect(&s.shards[0].direct_url()).await;
    let c = catalog::load(&mut cc).await.unwrap();
    assert!((8..12).all(|v| c.shard_of(v) == Some(0)));

    // After an abort the same move runs from the start, to the end; then back again.
    let row = r.start(&moving, 1).await.unwrap();
    assert_eq!(row.phase, Phase::Done);
    let row = r.start(&moving, 0).await.unwrap();
    assert_eq!(row.phase, Phase::Done);
    let c = catalog::load(&mut cc).await.unwrap();
    assert!((8..12).all(|v| c.shard_of(v) == Some(0)));
    // Moved back, shard 0 takes writes of those vshards again (its old fence was narrowed), shard 1 refuses them.
    let aid = (10_000_000..)
        .find(|a| (8..12).contains(&vshard(*a)))
        .unwrap();
    s.shards[0].sql(&format!("INSERT INTO accounts VALUES ({aid}, 'back', 0)"));
    let direct = common::connect(&s.shards[1].direct_url()).await;
    let err = direct
        .execute("INSERT INTO accounts VALUES ($1, 'stale', 0)", &[&aid])
        .await;
    assert!(err.is_err());
    let n: i64 = s.shards[0]
        .sql("SELECT count(*) FROM accounts")
        .parse()
        .unwrap();
    let m: i64 = s.shards[1]
        .sql("SELECT count(*) FROM accounts")
        .parse()
        .unwrap();
    assert_eq!(n + m, INITIAL + 1);

    // Aborting a copy onto a shard that still fences those vshards (it was the source of the move back) removes
    // the copied rows past that fence.
    let opts = RemapOptions {
        stop_after: Some(Phase::Copying),
        ..Setup::options()
    };
    let mut r = s.remapper(opts, log.clone()).await;
    let row = r.start(&moving, 1).await.unwrap();
    assert_eq!(row.phase, Phase::CatchingUp);
    let on1 = |b: &Backend| {
        b.sql(&format!(
            "SELECT count(*) FROM accounts WHERE {} BETWEEN 8 AND 11",
            shardpool::sharding::hash::vshard_sql(
                "aid",
                shardpool::sharding::key::KeyType::Int,
                VSHARDS
            )
        ))
    };
    assert_ne!(on1(&s.shards[1]), "0");
    let row = r.abort().await.unwrap();
    assert_eq!(row.phase, Phase::Aborted);
    assert_eq!(on1(&s.shards[1]), "0");
    assert_eq!(r.leftovers(row.id).await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_directory_maps_move_their_rows() {
    use shardpool::sharding::schema::TableKind;
    let s = setup(
        1,
        "CREATE TABLE events (ts bigint PRIMARY KEY, payload text); \
         CREATE TABLE tenant_rows (tenant text NOT NULL, id int NOT NULL, PRIMARY KEY (tenant, id)); \
         ALTER TABLE events OWNER TO app; ALTER TABLE tenant_rows OWNER TO app",
        "[[databases.shop.sharding.tables]]\nname = \"events\"\nkey = \"ts\"\ntype = \"int8\"\nmap = \"by_time\"\n\
         [[databases.shop.sharding.tables]]\nname = \"tenant_rows\"\nkey = \"tenant\"\ntype = \"text\"\nmap = \"tenants\"\n\
         [databases.shop.sharding.maps.by_time]\nkind = \"range\"\nkey_type = \"int8\"\nsplit_points = [1000, 2000]\n\
         [databases.shop.sharding.maps.tenants]\nkind = \"directory\"\nkey_type = \"text\"\nunknown_keys = \"hash\"\n",
    )
    .await;
    // Ranges: (-inf, 1000) -> vshard 0, [1000, 2000) -> vshard 21 (both on shard 0), [2000, +inf) -> vshard 42.
    let mut cc = common::connect(&s.shards[0].direct_url()).await;
    catalog::set_directory(&mut cc, "tenants", &KeyValue::Text("acme".into()), 5)
        .await
        .unwrap();
    catalog::set_directory(&mut cc, "tenants", &KeyValue::Text("globex".into()), 40)
        .await
        .unwrap();
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();
    common::eventually(Duration::from_secs(10), "the directory entries", || {
        let n = router
            .catalog()
            .map_or(0, |c| c.directories["tenants"].entries.len());
        async move { n >= 2 }
    })
    .await;
    let app = common::connect(&s.proxies[0].url("app", "secret", "shop")).await;
    for ts in (0..3000).step_by(10) {
        app.simple_query(&format!("INSERT INTO events VALUES ({ts}, 'e{ts}')"))
            .await
            .unwrap();
    }
    let tenants: Vec<String> = ["acme", "globex"]
        .iter()
        .map(|t| t.to_string())
        .chain((0..60).map(|i| format!("t{i}")))
        .collect();
    for t in &tenants {
        for id in 0..3 {
            app.simple_query(&format!("INSERT INTO tenant_rows VALUES ('{t}', {id})"))
                .await
                .unwrap();
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let row = r
        .start(&[5, 21], 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    let c = catalog::load(&mut cc).await.unwrap();
    assert_eq!((c.shard_of(5), c.shard_of(21)), (Some(1), Some(1)));

    // Every row once, on the shard its key's vshard is placed on now.
    let shard_of = |table: &str, key: KeyValue| {
        let Some(TableKind::Sharded(t)) = router.schema.lookup_str(table) else {
            panic!("{table}")
        };
        c.shard_of(router.vshard(&c, t, &key).unwrap()).unwrap()
    };
    let mut events = 0;
    let mut rows = 0;
    for (i, b) in s.shards.iter().enumerate() {
        for ts in b.sql("SELECT ts FROM events").lines() {
            let ts: i64 = ts.parse().unwrap();
            assert_eq!(
                usize::from(shard_of("events", KeyValue::Int(ts))),
                i,
                "event {ts}"
            );
            events += 1;
        }
        for t in b.sql("SELECT tenant FROM tenant_rows").lines() {
            assert_eq!(
                usize::from(shard_of("tenant_rows", KeyValue::Text(t.into()))),
                i,
                "tenant {t}"
            );
            rows += 1;
        }
    }
    assert_eq!(events, 300);
    assert_eq!(rows, tenants.len() * 3);
    assert_eq!(
        s.shards[1].sql("SELECT count(*) FROM events WHERE ts >= 1000 AND ts < 2000"),
        "100"
    );
    assert_eq!(
        s.shards[1].sql("SELECT count(*) FROM tenant_rows WHERE tenant = 'acme'"),
        "3"
    );
    // Through the proxy, the moved rows are where it looks for them.
    let got = common::shards::rows(&app, "SELECT count(*) FROM events WHERE ts = 1500").await;
    assert_eq!(got[0][0].as_deref(), Some("1"));
    let got = common::shards::rows(
        &app,
        "SELECT count(*) FROM tenant_rows WHERE tenant = 'acme'",
    )
    .await;
    assert_eq!(got[0][0].as_deref(), Some("3"));
    assert_eq!(r.leftovers(row.id).await.unwrap(), Vec::<String>::new());
}

/// Runs `shardctl remap ...` to completion, returning its output; panics with it on failure unless `may_fail`.
async fn shardctl(args: &[&str], may_fail: bool) -> (bool, String) {
    let out = tokio::process::Command::new(common::bin("shardctl"))
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        may_fail || out.status.success(),
        "shardctl {args:?}:\n{text}"
    );
    (out.status.success(), text)
}

/// The phase of the newest remap, read from the catalog.
async fn newest_phase(catalog: &tokio_postgres::Client) -> Option<String> {
    catalog
        .query_opt(
            "SELECT phase FROM shardpool.remaps ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardctl_killed_mid_remap_is_resumed_or_aborted() {
    let s = setup(1, "", "").await;
    s.load();
    // Enough rows in the moving vshards that the copy takes a moment.
    let expr =
        shardpool::sharding::hash::vshard_sql("g", shardpool::sharding::key::KeyType::Int, VSHARDS);
    s.shards[0].sql(&format!(
        "INSERT INTO accounts SELECT g, 'bulk', 1 FROM generate_series(100000, 400000) g WHERE {expr} < 16"
    ));
    let before: i64 = s.shards[0]
        .sql("SELECT count(*) FROM accounts")
        .parse()
        .unwrap();
    let config = s.proxies[0].config_path.to_string_lossy().into_owned();
    let base = [
        "remap",
        "--config",
        &config,
        "--database",
        "shop",
        "--user",
        "app",
        "--shard-user",
        "postgres",
    ];
    let start: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--vshards", "0-15", "--to", "1"])
        .collect();
    let catalog = common::connect(&s.shards[0].direct_url()).await;

    // --dry-run: the plan and the checks, nothing recorded.
    let dry: Vec<&str> = start.iter().copied().chain(["--dry-run"]).collect();
    let (_, out) = shardctl(&dry, false).await;
    assert!(
        out.contains("move vshards 0-15 (16 vshards) from shard 0 to shard 1"),
        "{out}"
    );
    assert!(
        out.contains("CREATE PUBLICATION shardpool_remap_0 FOR TABLE accounts WHERE"),
        "{out}"
    );
    assert!(out.contains("preflight: ok"), "{out}");
    assert_eq!(newest_phase(&catalog).await, None);

    // Killed (SIGKILL) once the copy is under way, then aborted: nothing left behind.
    let mut leftovers_checked = false;
    for then_abort in [true, false] {
        let mut child = tokio::process::Command::new(common::bin("shardctl"))
            .args(&start)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let phase = newest_phase(&catalog).await;
            if matches!(phase.as_deref(), Some(p) if p != "planned" && p != "aborted") {
                break;
            }
            assert!(Instant::now() < deadline, "phase stuck at {phase:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().await.unwrap();
        let killed_in = newest_phase(&catalog).await.unwrap();
        let abortable = !["switched", "verified", "done"].contains(&killed_in.as_str());
        if then_abort && abortable {
            let abort: Vec<&str> = std::iter::once("remap")
                .chain(["abort"])
                .chain(base[1..].iter().copied())
                .collect();
            let (_, out) = shardctl(&abort, false).await;
            assert!(out.contains("aborted"), "{out}");
            assert_eq!(newest_phase(&catalog).await.as_deref(), Some("aborted"));
            assert_eq!(
                s.shards[0].sql("SELECT count(*) FROM pg_replication_slots"),
                "0"
            );
            assert_eq!(s.shards[0].sql("SELECT count(*) FROM pg_publication"), "0");
            assert_eq!(s.shards[1].sql("SELECT count(*) FROM pg_subscription"), "0");
            assert_eq!(
                s.shards[1].sql(&format!(
                    "SELECT count(*) FROM accounts WHERE {} < 16",
                    expr.replace("(g,", "(aid,")
                )),
                "0"
            );
            leftovers_checked = true;
        } else {
            // Killed and run again: it resumes where it stopped and finishes.
            let (_, out) = shardctl(&start, false).await;
            assert!(out.contains("done"), "killed in {killed_in}:\n{out}");
        }
    }
    assert!(
        leftovers_checked,
        "the first run finished before it could be killed"
    );
    let status: Vec<&str> = std::iter::once("remap")
        .chain(["status"])
        .chain(base[1..].iter().copied())
        .collect();
    let (_, out) = shardctl(&status, false).await;
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains(": done vshards 0-15 shard 0 -> 1"),
        "{out}"
    );

    // The rows: all there, once, vshards 0-15 only on shard 1.
    let on0: i64 = s.shards[0]
        .sql("SELECT count(*) FROM accounts")
        .parse()
        .unwrap();
    let on1: i64 = s.shards[1]
        .sql("SELECT count(*) FROM accounts")
        .parse()
        .unwrap();
    let moved: i64 = s.shards[0]
        .sql(&format!(
            "SELECT count(*) FROM accounts WHERE {} < 16",
            expr.replace("(g,", "(aid,")
        ))
        .parse()
        .unwrap();
    assert_eq!(moved, 0);
    let initial_on1: i64 = (1..=INITIAL).filter(|a| vshard(*a) >= 32).count() as i64;
    assert_eq!(on0 + on1, before + initial_on1);
    assert_eq!(
        s.shards[0].sql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_dry_run_proposes_moves_off_the_skewed_shard() {
    let s = setup(1, "", "").await;
    s.load();
    // Two hot vshards on shard 0.
    let expr =
        shardpool::sharding::hash::vshard_sql("g", shardpool::sharding::key::KeyType::Int, VSHARDS);
    s.shards[0].sql(&format!(
        "INSERT INTO accounts SELECT g, 'hot', 0 FROM generate_series(100000, 160000) g WHERE {expr} IN (3, 7)"
    ));
    let config = s.proxies[0].config_path.to_string_lossy().into_owned();
    let (_, out) = shardctl(
        &[
            "rebalance",
            "--config",
            &config,
            "--database",
            "shop",
            "--user",
            "app",
            "--shard-user",
            "postgres",
            "--dry-run",
        ],
        false,
    )
    .await;
    let totals: Vec<(u64, u64)> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("shard "))
        .map(|l| {
            let (_, nums) = l.split_once(": ").unwrap();
            let (a, b) = nums.split_once(" -> ").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(totals.len(), 2, "{out}");
    let gap = |i: usize, j: usize, f: fn(&(u64, u64)) -> u64| f(&totals[i]).abs_diff(f(&totals[j]));
    assert!(totals[0].0 > totals[1].0 + 1000, "{out}");
    assert!(gap(0, 1, |t| t.1) < gap(0, 1, |t| t.0) / 2, "{out}");
    let first = out
        .lines()
        .find(|l| l.contains("shardctl remap --database shop"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(first.contains("--to 1   # from shard 0"), "{out}");
    assert!(
        first.contains("--vshards 3") || first.contains("--vshards 7"),
        "{out}"
    );
    // A dry run changes nothing.
    let catalog = common::connect(&s.shards[0].direct_url()).await;
    assert_eq!(newest_phase(&catalog).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_across_the_flip_never_writes_the_old_shard() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let s = setup(1, "", "").await;
    s.load();
    // A second instance as its own process, so it can be stopped with SIGSTOP.
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
    let mut child = tokio::process::Command::new(common::bin("shardpool"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    let catalog = common::connect(&s.shards[0].direct_url()).await;
    common::eventually(
        Duration::from_secs(30),
        "both instances to acknowledge",
        || {
            let c = &catalog;
            async move {
                c.query_one("SELECT count(*) FROM shardpool.instances", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) == 2)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let url = format!("postgres://app:secret@127.0.0.1:{port}/shop");
    let stale = common::connect(&url).await;
    let aid = (7_000_000..).find(|a| vshard(*a) < 16).unwrap();
    let insert = "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'late', 0)";
    stale.execute(insert, &[&(aid - 1)]).await.ok();

    kill(pid, Signal::SIGSTOP).unwrap();
    // The stopped instance cannot acknowledge: cutovers give up until its lease (3 s) runs out, then go ahead.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let row = r
        .start(&(0..16).collect::<Vec<_>>(), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    kill(pid, Signal::SIGCONT).unwrap();

    // Woken, it may still route by the old placement for a moment: the fence refuses that, so whatever it sends for
    // a moved vshard lands on the new shard or nowhere.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match stale.execute(insert, &[&aid]).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(common::sqlstate(&e), "40001", "{e:?}");
                refused += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the woken instance never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.shards[0].sql(&format!("SELECT count(*) FROM accounts WHERE aid = {aid}")),
        "0"
    );
    assert_eq!(
        s.shards[1].sql(&format!("SELECT count(*) FROM accounts WHERE aid = {aid}")),
        "1"
    );
    eprintln!(
        "woken instance: {refused} writes refused by the fence before it caught up\n{}",
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("cutover"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_the_cutover_keeps_the_writes_made_since() {
    let s = setup(1, "", "").await;
    s.load();
    let moving: Vec<u32> = (8..12).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    // Stop right after the cutover (verified, not cleaned up).
    let opts = RemapOptions {
        stop_after: Some(Phase::CatchingUp),
        ..Setup::options()
    };
    let mut r = s.remapper(opts, log.clone()).await;
    let row = r.start(&moving, 1).await.unwrap();
    assert_eq!(row.phase, Phase::Verified);
    // Writes after the cutover go to shard 1.
    let app = common::connect(&s.proxies[0].url("app", "secret", "shop")).await;
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();
    common::eventually(Duration::from_secs(10), "the flip", || {
        let at = router.catalog().and_then(|c| c.shard_of(8));
        async move { at == Some(1) }
    })
    .await;
    let fresh = (8_000_000..)
        .find(|a| moving.contains(&vshard(*a)))
        .unwrap();
    let old = (1..).find(|a| moving.contains(&vshard(*a))).unwrap();
    app.execute(
        "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'after', 7)",
        &[&fresh],
    )
    .await
    .unwrap();
    app.execute("UPDATE accounts SET balance = 99 WHERE aid = $1", &[&old])
        .await
        .unwrap();

    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let back = r
        .rollback()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(back.phase, Phase::Done);
    let rows = r.status().await.unwrap();
    let forward = rows.iter().find(|x| x.id == row.id).unwrap();
    assert_eq!(
        forward.error.as_deref(),
        Some(format!("rolled back by remap {}", back.id).as_str())
    );

    let mut cc = common::connect(&s.shards[0].direct_url()).await;
    let c = catalog::load(&mut cc).await.unwrap();
    assert!(moving.iter().all(|v| c.shard_of(*v) == Some(0)));
    assert_eq!(
        s.shards[0].sql(&format!("SELECT balance FROM accounts WHERE aid = {fresh}")),
        "7"
    );
    assert_eq!(
        s.shards[0].sql(&format!("SELECT balance FROM accounts WHERE aid = {old}")),
        "99"
    );
    let expr = shardpool::sharding::hash::vshard_sql(
        "aid",
        shardpool::sharding::key::KeyType::Int,
        VSHARDS,
    );
    assert_eq!(
        s.shards[1].sql(&format!(
            "SELECT count(*) FROM accounts WHERE {expr} BETWEEN 8 AND 11"
        )),
        "0"
    );
    let total: i64 = s
        .shards
        .iter()
        .map(|b| {
            b.sql("SELECT count(*) FROM accounts")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, INITIAL + 1);
    for id in [row.id, back.id] {
        assert_eq!(r.leftovers(id).await.unwrap(), Vec::<String>::new());
    }
    // Through the proxy, writes to those vshards work again, on shard 0.
    app.execute("UPDATE accounts SET balance = 100 WHERE aid = $1", &[&old])
        .await
        .unwrap();
    assert_eq!(
        s.shards[0].sql(&format!("SELECT balance FROM accounts WHERE aid = {old}")),
        "100"
    );
}

/// Benchmark, run by hand (`cargo test --release --test remap copy_throughput -- --ignored --nocapture`): how fast a
/// remap copies about a million rows, against `pg_dump --data-only | psql` of the same rows between the same servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn copy_throughput_one_million_rows() {
    let s = setup(0, "", "").await;
    let expr =
        shardpool::sharding::hash::vshard_sql("g", shardpool::sharding::key::KeyType::Int, VSHARDS);
    s.shards[0].sql(&format!(
        "INSERT INTO accounts SELECT g, 'owner ' || g, g % 1000 FROM generate_series(1, 2000000) g WHERE {expr} < 32"
    ));
    let rows: i64 = s.shards[0]
        .sql("SELECT count(*) FROM accounts")
        .parse()
        .unwrap();
    let bytes: i64 = s.shards[0]
        .sql("SELECT pg_relation_size('accounts')")
        .parse()
        .unwrap();
    let mb = bytes as f64 / 1e6;

    // pg_dump --data-only | psql into an empty copy of the table on shard 1.
    s.shards[1].sql("CREATE DATABASE dumped OWNER app");
    s.shards[1].pg.sql("dumped", SCHEMA).unwrap();
    let started = Instant::now();
    let dump = format!(
        "{} --data-only -t accounts -h 127.0.0.1 -p {} -U postgres {DB} | {} -q -h 127.0.0.1 -p {} -U postgres dumped",
        common::bin("pg_dump").display(),
        s.shards[0].pg.port(),
        common::bin("psql").display(),
        s.shards[1].pg.port()
    );
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&dump)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = started.elapsed();
    assert_eq!(
        s.shards[1]
            .pg
            .sql("dumped", "SELECT count(*) FROM accounts")
            .unwrap(),
        rows.to_string()
    );

    // The remap's copy: publication, subscription, initial sync of every moving row.
    let log = Arc::new(Mutex::new(Vec::new()));
    let opts = RemapOptions {
        stop_after: Some(Phase::Copying),
        copy_timeout: Duration::from_secs(600),
        ..Setup::options()
    };
    let mut r = s.remapper(opts, log.clone()).await;
    let started = Instant::now();
    r.start(&(0..32).collect::<Vec<_>>(), 1).await.unwrap();
    let copied = started.elapsed();
    eprintln!(
        "{rows} rows, {mb:.0} MB: remap copy {copied:.1?} ({:.0} rows/s, {:.1} MB/s); pg_dump --data-only | psql \
         {dumped:.1?} ({:.0} rows/s, {:.1} MB/s)\n{}",
        rows as f64 / copied.as_secs_f64(),
        mb / copied.as_secs_f64(),
        rows as f64 / dumped.as_secs_f64(),
        mb / dumped.as_secs_f64(),
        log.lock().unwrap().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_at_the_cutover_finishes_and_its_write_moves() {
    let s = setup(1, "", "").await;
    s.load();
    let moving: Vec<u32> = (0..16).collect();
    let aid = (1..).find(|a| vshard(*a) < 16).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    // Copied first: creating the subscription's slot waits for transactions open on the source to end.
    let opts = RemapOptions {
        stop_after: Some(Phase::Copying),
        ..Setup::options()
    };
    let mut r = s.remapper(opts, log.clone()).await;
    assert_eq!(r.start(&moving, 1).await.unwrap().phase, Phase::CatchingUp);
    // A transaction bound to shard 0 by a write to a moving vshard, left open.
    let open = common::connect(&s.proxies[0].url("app", "secret", "shop")).await;
    open.batch_execute(&format!(
        "BEGIN; UPDATE accounts SET balance = 41 WHERE aid = {aid}"
    ))
    .await
    .unwrap();
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let remap = tokio::spawn(async move {
        let row = r.start(&moving, 1).await;
        (r, row)
    });
    // The cutover's fence waits for the open transaction's lock; it commits meanwhile.
    let catalog = common::connect(&s.shards[0].direct_url()).await;
    common::eventually(Duration::from_secs(30), "the cutover to begin", || {
        let c = &catalog;
        async move { newest_phase(c).await.as_deref() == Some("cutting_over") }
    })
    .await;
    open.batch_execute(&format!(
        "UPDATE accounts SET balance = balance + 1 WHERE aid = {aid}; COMMIT"
    ))
    .await
    .unwrap();
    let (_r, row) = remap.await.unwrap();
    let row = row.unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    // The committed write moved with its row.
    assert_eq!(
        s.shards[1].sql(&format!("SELECT balance FROM accounts WHERE aid = {aid}")),
        "42"
    );
    assert_eq!(
        s.shards[0].sql(&format!("SELECT count(*) FROM accounts WHERE aid = {aid}")),
        "0"
    );
}

/// By hand (`cargo test --test remap other_vshards_latency -- --ignored --nocapture`): the latency of writes to the
/// vshards that do not move, while remaps run and while none does, in alternating windows of the same length under the
/// same load (so both see the same machine noise), for the "other vshards within 10 %" comparison in
/// docs/benchmarks.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn other_vshards_latency_with_and_without_a_remap() {
    let s = setup(2, "", "").await;
    s.load();
    let moving: Vec<u32> = (0..16).collect();
    let flags = Arc::new(LoadFlags::default());
    let clients = 4;
    let mut load = Vec::new();
    for me in 0..clients {
        let url = s.proxies[me as usize % 2].url("app", "secret", "shop");
        load.push(tokio::spawn(client_load(
            url,
            me,
            clients,
            moving.iter().copied().collect(),
            flags.clone(),
        )));
    }
    flags.more_ops(400).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let rounds: u32 = std::env::var("REMAP_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut remap_time = Duration::ZERO;
    for round in 0..rounds {
        // A window with a remap (there or back), then a window as long without one.
        let to = u16::from(round % 2 == 0);
        flags.remapping.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let row = r
            .start(&moving, to)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
        assert_eq!(row.phase, Phase::Done);
        let took = started.elapsed();
        remap_time += took;
        flags.remapping.store(false, Ordering::Relaxed);
        tokio::time::sleep(took).await;
    }
    flags.stop.store(true, Ordering::Relaxed);
    let mut committed = Vec::new();
    for l in load {
        committed.push(l.await.unwrap());
    }
    let failures: Vec<&String> = committed.iter().flat_map(|c| &c.failures).collect();
    // Reported, not asserted: the money test asserts none; here a stale-routed write refused by the fence (40001,
    // see docs/remap.md) on a loaded machine should not hide the latency numbers.
    let refused = failures.iter().filter(|f| f.contains("E40001")).count();
    let mut during: Vec<Duration> = committed.iter().flat_map(|c| c.other.clone()).collect();
    let mut without: Vec<Duration> = committed
        .iter()
        .flat_map(|c| c.baseline_other.clone())
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (d50, d99) = (
        ms(percentile(&mut during, 0.5)),
        ms(percentile(&mut during, 0.99)),
    );
    let (w50, w99) = (
        ms(percentile(&mut without, 0.5)),
        ms(percentile(&mut without, 0.99)),
    );
    eprintln!(
        "{rounds} remaps of 16/64 vshards ({remap_time:?} in all), each followed by as long without one; writes to \
         the other vshards: during the remaps p50 {d50:.1}ms p99 {d99:.1}ms ({} ops), without p50 {w50:.1}ms p99 \
         {w99:.1}ms ({} ops); p99 ratio {:.2}; failed transactions {} ({refused} refused by a fence)\n{}",
        during.len(),
        without.len(),
        d99 / w99,
        failures.len(),
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("cutover") || l.starts_with("remap"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
