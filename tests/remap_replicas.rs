//! Remap with shards that have streaming replicas, against real Postgres. The target's replica follows the target
//! physically; after the flip, reads of the moved vshards go to the target or its replica, never to the source's
//! servers, and see every write made before the cutover, from the session that wrote it and from any other: the
//! flip records where the target's WAL was once the moved rows had arrived, and a replica serves those reads only
//! once it replayed that far (the positions a session took on the source mean nothing on the target).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/remap_kit.rs"]
mod remap_kit;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::replicas::replica_rows;
use remap_kit::*;
use shardpool::sharding::remap::state::Phase;

/// The replicas replay this long after the primaries commit: long enough that a read of the target right after the
/// flip would find the rows missing on its replica, were the replica chosen.
const DELAY: Duration = Duration::from_secs(5);

async fn read_owner(c: &tokio_postgres::Client, aid: i64) -> (Option<String>, i32) {
    let row = c
        .query_one(
            "SELECT (SELECT owner FROM accounts WHERE aid = $1), inet_server_port()",
            &[&aid],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_the_flip_see_earlier_writes_and_use_the_targets_replica_once_it_has_them() {
    let s = setup_shaped(Shape {
        proxies: 1,
        replica_delay: Some(DELAY),
        ..Shape::default()
    })
    .await;
    s.load();
    let proxy = &s.proxies[0];
    common::eventually(
        Duration::from_secs(30),
        "the monitor to see every server",
        || async {
            let rows = replica_rows(proxy).await;
            rows.len() == 4
                && rows.values().all(|r| {
                    !r["lsn"].is_empty() && (r["in_recovery"] == "t" || r["in_recovery"] == "f")
                })
        },
    )
    .await;
    let source_ports = [
        i32::from(s.shards[0].pg.port()),
        i32::from(s.replicas[0].port()),
    ];
    let target_primary = i32::from(s.shards[1].pg.port());
    let target_replica = i32::from(s.replicas[1].port());
    let url = proxy.url("app", "secret", "shop");
    let moving: Vec<u32> = (0..16).collect();
    let log = Arc::new(Mutex::new(Vec::new()));

    // Copy first, then write: the write reaches the target by streaming during the catch-up, moments before the
    // flip, so the target's delayed replica cannot have it yet when the flip happens.
    let mut opts = Setup::options();
    opts.stop_after = Some(Phase::Copying);
    let mut r = s.remapper(opts, log.clone()).await;
    let row = r.start(&moving, 1).await.unwrap();
    assert_eq!(row.phase, Phase::CatchingUp);
    let writer = common::connect(&url).await;
    let aid = (8_000_000i64..).find(|a| vshard(*a) < 16).unwrap();
    writer
        .execute(
            "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'before the flip', 0)",
            &[&aid],
        )
        .await
        .unwrap();
    let (owner, port) = read_owner(&writer, aid).await;
    assert_eq!(owner.as_deref(), Some("before the flip"));
    assert!(source_ports.contains(&port), "{port}");

    r.opts.stop_after = None;
    let flipped_at = Instant::now();
    let row = r
        .start(&moving, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    let done_after = flipped_at.elapsed();
    assert!(
        done_after < DELAY,
        "the remap took {done_after:?}: the replica may have caught up, nothing would be shown"
    );

    // The writing session, a new connection in the default mode (read_proxy_writes) and one that asks for eventual
    // consistency all see the write at once: the target's replica has not replayed the drained point yet, so the
    // reads run on the target's primary.
    let fresh = common::connect(&url).await;
    let eventual = common::connect(&url).await;
    eventual
        .batch_execute("SET shardpool.consistency = 'eventual'")
        .await
        .unwrap();
    let replica_lag = replica_rows(proxy).await[&s.replicas[1].port()]["lag_ms"].clone();
    for c in [&writer, &fresh, &eventual] {
        let (owner, port) = read_owner(c, aid).await;
        assert_eq!(owner.as_deref(), Some("before the flip"));
        assert_eq!(port, target_primary, "replica lag {replica_lag} ms");
    }

    // Once the replica has replayed that far, it serves them, still with the write; the source's servers never do.
    let deadline = Instant::now() + DELAY * 4;
    let mut on_primary = 0;
    loop {
        let c = common::connect(&url).await;
        let (owner, port) = read_owner(&c, aid).await;
        assert_eq!(owner.as_deref(), Some("before the flip"), "read on {port}");
        assert!(!source_ports.contains(&port), "read on the source's {port}");
        if port == target_replica {
            break;
        }
        on_primary += 1;
        assert!(
            Instant::now() < deadline,
            "reads never went to the target's replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the writing session, in its mode, reads there too.
    let (owner, port) = read_owner(&writer, aid).await;
    assert_eq!(owner.as_deref(), Some("before the flip"));
    assert!(!source_ports.contains(&port), "{port}");
    eprintln!(
        "remap done {done_after:?} after the catch-up began; reads of the moved vshard ran on the target's primary \
         {on_primary} times before its replica (delayed {DELAY:?}) had the drained point, then on the replica"
    );
}
