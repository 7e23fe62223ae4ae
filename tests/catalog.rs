//! The sharding catalog against a real Postgres: `init` creates the expected placement and ranges and is idempotent,
//! every change bumps the epoch, followers see changes through NOTIFY, through the periodic check when no NOTIFY
//! came, and after losing their connection; `shardctl init`/`map`/`directory set` work on a real server.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shardpool::config::sharding::ShardingConfig;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};
use shardpool::sharding::catalog::{self, initial_range_vshard, initial_shard, CatalogError};
use shardpool::sharding::follow::{CatalogFollower, FollowOptions};
use shardpool::sharding::key::{KeyType, KeyValue};
use tokio::sync::watch;

const DB: &str = "shop";

/// A server with role `app`/`secret` owning database `shop`, where the catalog goes.
fn start_server() -> PgServer {
    let pg = PgServer::start_primary(&ServerOptions::default()).unwrap();
    pg.create_user("app", "secret", AuthMethod::ScramSha256)
        .unwrap();
    pg.create_database(DB, "app").unwrap();
    pg
}

async fn server() -> PgServer {
    tokio::task::spawn_blocking(start_server).await.unwrap()
}

async fn connect(pg: &PgServer) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&pg.url("app", "secret", DB), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
}

fn pg_config(pg: &PgServer) -> tokio_postgres::Config {
    pg.url("app", "secret", DB).parse().unwrap()
}

/// Shard 0 is the test server (and so the catalog); the others are never connected to by the catalog code.
fn sharding_toml(pg: &PgServer, vshards: u32, maps: &str) -> String {
    format!(
        r#"
        vshards = {vshards}
        [[shards]]
        host = "127.0.0.1"
        port = {port}
        [[shards]]
        host = "127.0.0.1"
        port = 1
        [[shards]]
        host = "127.0.0.1"
        port = 2
        [[tables]]
        name = "accounts"
        key = "aid"
        type = "int8"
        {maps}
        "#,
        port = pg.port()
    )
}

const MAPS: &str = r#"
    [maps.tenants]
    kind = "directory"
    key_type = "text"
    [maps.devices]
    kind = "directory"
    key_type = "uuid"
    [maps.days]
    kind = "range"
    key_type = "int4"
    split_points = [100, 200, 300]
"#;

fn config(pg: &PgServer, vshards: u32, maps: &str) -> ShardingConfig {
    toml::from_str(&sharding_toml(pg, vshards, maps)).unwrap()
}

/// Waits (bounded) until the follower's epoch reaches `epoch`: an event, not a sleep.
async fn until_epoch(epochs: &mut watch::Receiver<i64>, epoch: i64) {
    tokio::time::timeout(Duration::from_secs(20), epochs.wait_for(|&e| e >= epoch))
        .await
        .unwrap_or_else(|_| panic!("the follower did not reach epoch {epoch}"))
        .unwrap();
}

fn opts(check_interval: Duration) -> FollowOptions {
    FollowOptions {
        check_interval,
        ..FollowOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_creates_even_placement_and_is_idempotent() {
    let pg = server().await;
    let mut client = connect(&pg).await;
    let cfg = config(&pg, 64, MAPS);

    let first = catalog::init(&mut client, &cfg).await.unwrap();
    assert!(first.created);
    assert_eq!(first.epoch, 1);
    assert_eq!(first.added_maps, vec!["days", "devices", "tenants"]);

    let c = catalog::load(&mut client).await.unwrap();
    assert_eq!((c.epoch, c.vshards), (1, 64));
    let expected: Vec<u16> = (0..64).map(|v| initial_shard(v, 64, 3)).collect();
    assert_eq!(c.placement, expected);
    assert_eq!(
        c.placement_runs(),
        vec![(0, 21, 0), (22, 42, 1), (43, 63, 2)]
    );
    assert!(
        c.check_against(&cfg).is_empty(),
        "{:?}",
        c.check_against(&cfg)
    );
    // Four ranges spread over the space: vshards 0, 16, 32, 48.
    let day = |d| c.range_vshard("days", &KeyValue::Int(d)).unwrap();
    assert_eq!(
        [
            day(i64::MIN),
            day(99),
            day(100),
            day(250),
            day(300),
            day(i64::MAX)
        ],
        [0, 0, 16, 32, 48, 48]
    );
    assert_eq!(initial_range_vshard(3, 4, 64), 48);
    assert_eq!(c.directories["tenants"].key_type, KeyType::Text);
    assert!(c.directories["tenants"].entries.is_empty());

    // Again with the same config: nothing changes, not even the epoch.
    let again = catalog::init(&mut client, &cfg).await.unwrap();
    assert_eq!((again.created, again.epoch), (false, 1));
    assert!(again.added_maps.is_empty());

    // A placement change is kept by a later init (the catalog is the truth after init)...
    let epoch = catalog::move_vshard(&mut client, 0, 2).await.unwrap();
    assert_eq!(epoch, 2);
    // ...which adds a map new in the config.
    let grown = config(
        &pg,
        64,
        &format!(
            "{MAPS}\n[maps.regions]\nkind = \"range\"\nkey_type = \"text\"\nsplit_points = [\"m\"]"
        ),
    );
    let added = catalog::init(&mut client, &grown).await.unwrap();
    assert_eq!((added.created, added.epoch), (false, 3));
    assert_eq!(added.added_maps, vec!["regions"]);
    let c = catalog::load(&mut client).await.unwrap();
    assert_eq!(c.shard_of(0), Some(2));
    let region = |r: &str| {
        c.range_vshard("regions", &KeyValue::Text(r.into()))
            .unwrap()
    };
    assert_eq!((region("a"), region("m"), region("z")), (0, 32, 32));

    // Refusals leave the catalog as it was.
    let err = catalog::init(&mut client, &config(&pg, 128, MAPS))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::VshardsMismatch {
                catalog: 64,
                config: 128
            }
        ),
        "{err}"
    );
    let retyped = MAPS.replace("key_type = \"text\"", "key_type = \"int8\"");
    let err = catalog::init(&mut client, &config(&pg, 64, &retyped))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::MapMismatch { ref map, .. } if map == "tenants"),
        "{err}"
    );
    let mut invalid = cfg.clone();
    invalid.shards.clear();
    let err = catalog::init(&mut client, &invalid).await.unwrap_err();
    assert!(matches!(err, CatalogError::InvalidConfig(_)), "{err}");
    assert_eq!(catalog::epoch(&client).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_before_init_says_so() {
    let pg = server().await;
    let mut client = connect(&pg).await;
    assert!(matches!(
        catalog::load(&mut client).await,
        Err(CatalogError::NotInitialised)
    ));
    assert!(matches!(
        catalog::move_vshard(&mut client, 0, 1).await,
        Err(CatalogError::NotInitialised)
    ));
    assert!(matches!(
        CatalogFollower::start(pg_config(&pg), FollowOptions::default()).await,
        Err(CatalogError::NotInitialised)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_entries_are_typed_and_checked() {
    let pg = server().await;
    let mut client = connect(&pg).await;
    catalog::init(&mut client, &config(&pg, 64, MAPS))
        .await
        .unwrap();

    let acme = KeyValue::Text("acme".into());
    assert_eq!(
        catalog::set_directory(&mut client, "tenants", &acme, 40)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        catalog::set_directory(&mut client, "tenants", &acme, 41)
            .await
            .unwrap(),
        3
    );
    let device = KeyType::Uuid
        .parse_text("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}")
        .unwrap();
    assert_eq!(
        catalog::set_directory(&mut client, "devices", &device, 7)
            .await
            .unwrap(),
        4
    );
    // Stored in Postgres' own output form, so SQL on the catalog agrees with routing.
    let stored = pg
        .sql(
            DB,
            "SELECT key FROM shardpool.directory WHERE map = 'devices'",
        )
        .unwrap();
    assert_eq!(stored, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");

    // First writer wins for keys placed by the `unknown_keys = "hash"` policy.
    let globex = KeyValue::Text("globex".into());
    assert_eq!(
        catalog::record_directory(&mut client, "tenants", &globex, 9)
            .await
            .unwrap(),
        (9, Some(5))
    );
    assert_eq!(
        catalog::record_directory(&mut client, "tenants", &globex, 10)
            .await
            .unwrap(),
        (9, None)
    );

    for (map, key, vshard) in [
        ("nowhere", acme.clone(), 1),
        ("days", KeyValue::Int(1), 1),
        ("tenants", KeyValue::Int(1), 1),
        ("tenants", KeyValue::Null, 1),
        ("tenants", acme.clone(), 64),
    ] {
        let err = catalog::set_directory(&mut client, map, &key, vshard)
            .await
            .unwrap_err();
        let expected = match map {
            "nowhere" => matches!(err, CatalogError::UnknownMap(_)),
            "days" => matches!(err, CatalogError::WrongMapKind { .. }),
            _ => matches!(
                err,
                CatalogError::KeyTypeMismatch { .. }
                    | CatalogError::NullKey
                    | CatalogError::VshardOutOfRange {
                        vshard: 64,
                        vshards: 64
                    }
            ),
        };
        assert!(expected, "{map} {key:?} {vshard}: {err}");
    }
    // Failed changes do not bump the epoch.
    assert_eq!(catalog::epoch(&client).await.unwrap(), 5);

    let c = catalog::load(&mut client).await.unwrap();
    assert_eq!(c.directory_vshard("tenants", &acme), Ok(Some(41)));
    assert_eq!(c.directory_vshard("tenants", &globex), Ok(Some(9)));
    assert_eq!(
        c.directory_vshard("tenants", &KeyValue::Text("initech".into())),
        Ok(None)
    );
    let respelled = KeyType::Uuid
        .parse_text("a0eebc999c0b4ef8bb6d6bb9bd380a11")
        .unwrap();
    assert_eq!(c.directory_vshard("devices", &respelled), Ok(Some(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_sees_changes_through_notify() {
    let pg = server().await;
    let mut client = connect(&pg).await;
    catalog::init(&mut client, &config(&pg, 64, MAPS))
        .await
        .unwrap();
    // With an hour between checks, only a notification can bring the change in time.
    let follower = CatalogFollower::start(pg_config(&pg), opts(Duration::from_secs(3600)))
        .await
        .unwrap();
    let mut epochs = follower.epochs();
    assert_eq!(follower.current().epoch, 1);
    assert_eq!(follower.current().shard_of(5), Some(0));

    let epoch = catalog::move_vshard(&mut client, 5, 2).await.unwrap();
    assert_eq!(epoch, 2);
    until_epoch(&mut epochs, epoch).await;
    let seen = follower.current();
    assert_eq!((seen.epoch, seen.shard_of(5)), (2, Some(2)));

    let acme = KeyValue::Text("acme".into());
    let epoch = catalog::set_directory(&mut client, "tenants", &acme, 33)
        .await
        .unwrap();
    until_epoch(&mut epochs, epoch).await;
    assert_eq!(
        follower.current().directory_vshard("tenants", &acme),
        Ok(Some(33))
    );

    // A burst of changes: the follower ends on the newest, however many reloads it needed.
    let mut last = 0;
    for v in 10..20 {
        last = catalog::move_vshard(&mut client, v, 1).await.unwrap();
    }
    until_epoch(&mut epochs, last).await;
    let seen = follower.current();
    assert_eq!(seen.epoch, last);
    assert!((10..20).all(|v| seen.shard_of(v) == Some(1)));
    assert!(
        follower
            .stats()
            .notified
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    assert_eq!(
        follower
            .stats()
            .checked
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Shutdown ends the task and closes its connection.
    follower.shutdown().await;
    let listeners = || {
        pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shardpool catalog follower'",
        )
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while listeners() != "0" {
        // The backend exits asynchronously after the client hangs up; there is no event to wait on.
        assert!(
            Instant::now() < deadline,
            "the follower's connection outlived shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_falls_back_to_the_periodic_check() {
    let pg = server().await;
    let mut client = connect(&pg).await;
    catalog::init(&mut client, &config(&pg, 64, MAPS))
        .await
        .unwrap();
    let follower = CatalogFollower::start(pg_config(&pg), opts(Duration::from_millis(100)))
        .await
        .unwrap();
    let mut epochs = follower.epochs();

    // A change made behind the catalog functions' back: no NOTIFY is sent.
    pg.sql(
        DB,
        "BEGIN; UPDATE shardpool.placement SET shard = 1 WHERE vshard = 0; \
         UPDATE shardpool.epoch SET epoch = epoch + 1; COMMIT",
    )
    .unwrap();
    until_epoch(&mut epochs, 2).await;
    assert_eq!(follower.current().shard_of(0), Some(1));
    let stats = follower.stats();
    assert_eq!(stats.notified.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(stats.checked.load(std::sync::atomic::Ordering::Relaxed), 1);
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reconnects_and_catches_up() {
    let pg = server().await;
    let mut client = connect(&pg).await;
    catalog::init(&mut client, &config(&pg, 64, MAPS))
        .await
        .unwrap();
    let follower = CatalogFollower::start(pg_config(&pg), opts(Duration::from_secs(3600)))
        .await
        .unwrap();
    let mut epochs = follower.epochs();

    // Kill the LISTEN connection and wait until its backend is gone, so the change below cannot reach the
    // follower through it.
    let killed = pg
        .sql(
            "postgres",
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity \
             WHERE application_name = 'shardpool catalog follower'",
        )
        .unwrap();
    assert_eq!(killed, "t");
    let epoch = catalog::move_vshard(&mut client, 63, 0).await.unwrap();
    until_epoch(&mut epochs, epoch).await;
    assert_eq!(follower.current().shard_of(63), Some(0));
    assert!(
        follower
            .stats()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    follower.shutdown().await;
}

/// Runs the shardctl binary; returns stdout, or panics with everything it printed.
fn shardctl(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shardctl"))
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--database", DB, "--user", "app"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "shardctl {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Moves a sharding section's tables under `prefix`, as they appear in a whole config file.
fn nest(section: &str, prefix: &str) -> String {
    section
        .lines()
        .map(|line| {
            let body = line.trim_start();
            if let Some(rest) = body.strip_prefix("[[") {
                format!("[[{prefix}{rest}")
            } else if let Some(rest) = body.strip_prefix('[') {
                format!("[{prefix}{rest}")
            } else {
                body.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shardctl_init_map_and_directory_set() {
    let pg = start_server();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardpool.toml");
    let sharding = nest(&sharding_toml(&pg, 4096, MAPS), "databases.shop.sharding.");
    let toml = format!(
        r#"
        [general]
        listen = "127.0.0.1:0"
        [[users]]
        name = "app"
        password = "secret"
        [[users]]
        name = "other"
        password = "x"
        [databases.shop]
        port = {port}
        [databases.shop.sharding]
        {sharding}
        "#,
        port = pg.port()
    );
    std::fs::write(&path, toml).unwrap();

    let out = shardctl(&path, &["init"]);
    assert!(out.contains("created the catalog"), "{out}");
    assert!(out.contains("4096 vshards on 3 shards, epoch 1"), "{out}");
    let out = shardctl(&path, &["init"]);
    assert!(out.contains("already exists"), "{out}");
    assert_eq!(
        pg.sql(DB, "SELECT epoch FROM shardpool.epoch").unwrap(),
        "1"
    );

    let out = shardctl(&path, &["directory", "set", "tenants", "acme", "2000"]);
    assert_eq!(out.trim(), "tenants: acme → vshard 2000, epoch 2");
    let out = shardctl(&path, &["map"]);
    let shard0 = format!("shard 0 (127.0.0.1:{}): 1366 vshards", pg.port());
    for line in [
        "epoch 2, 4096 vshards",
        "     0-1365 → shard 0",
        "  1366-2730 → shard 1",
        "  2731-4095 → shard 2",
        &shard0,
        "shard 2 (127.0.0.1:2): 1365 vshards",
        "tenants: directory of text keys, 1 entries",
        "days: range of bigint keys",
        "from -inf → vshard 0 (shard 0)",
        "from 300 → vshard 3072 (shard 2)",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("disagree"), "{out}");

    // Errors are reported, not panics: a key of the wrong type, and --user missing with two users.
    let bad = Command::new(env!("CARGO_BIN_EXE_shardctl"))
        .args(["directory", "set", "days", "1", "1", "--config"])
        .arg(&path)
        .args(["--database", DB, "--user", "app"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a directory"));
    let no_user = Command::new(env!("CARGO_BIN_EXE_shardctl"))
        .args(["map", "--config"])
        .arg(&path)
        .args(["--database", DB])
        .env_remove("SHARDCTL_USER")
        .output()
        .unwrap();
    assert!(!no_user.status.success());
    assert!(String::from_utf8_lossy(&no_user.stderr).contains("--user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardctl_admin_verbs_still_work() {
    let backend = common::Backend::start().await;
    let proxy = backend.proxy("").await;
    let url = proxy.admin_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_shardctl"))
            .args(["--url", &url, "show", "version"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("version="), "{stdout}");
}
