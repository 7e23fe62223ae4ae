//! The cutover's pause bound against real Postgres: `--max-pause` covers the whole pause, including the wait for
//! every live instance to acknowledge the flip. An instance stopped (SIGSTOP) between the drain and the flip, whose
//! lease outlives the pause, makes the cutover undo the flip and resume writes on the source; nothing is lost, and the
//! remap completes when run again.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/remap_kit.rs"]
mod remap_kit;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use remap_kit::*;
use shardpool::sharding::remap::cutover::CutoverError;
use shardpool::sharding::remap::state::Phase;
use shardpool::sharding::remap::{Progress, RemapError};

/// What the writer through the in-process instance committed.
#[derive(Default)]
struct Written {
    committed: Vec<i64>,
    /// Writes the fence refused (40001), retried.
    refused: u64,
    failures: Vec<String>,
}

/// Inserts accounts of the moving vshards one by one through `url` until `stop`, retrying refusals.
async fn writer(url: String, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) -> Written {
    let c = common::connect(&url).await;
    let mut done = Written::default();
    let mut aids = (5_000_000i64..).filter(|a| vshard(*a) < 16);
    let mut aid = aids.next().unwrap();
    while !stop.load(Ordering::Relaxed) {
        match c
            .execute(
                "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'writer', 0)",
                &[&aid],
            )
            .await
        {
            Ok(_) => {
                done.committed.push(aid);
                ops.fetch_add(1, Ordering::Relaxed);
                aid = aids.next().unwrap();
            }
            Err(e) if common::sqlstate(&e) == "40001" => done.refused += 1,
            Err(e) => {
                done.failures.push(format!("{aid}: {e:?}"));
                aid = aids.next().unwrap();
                if done.failures.len() >= 20 {
                    // Something is wrong for good: the test fails on these; no need to pile up more.
                    break;
                }
            }
        }
    }
    done
}

async fn more_ops(ops: &AtomicU64, n: u64) {
    let target = ops.load(Ordering::Relaxed) + n;
    common::eventually(Duration::from_secs(30), "the writer to commit", || {
        let done = ops.load(Ordering::Relaxed) >= target;
        async move { done }
    })
    .await;
}

fn count(b: &common::Backend, aid: i64) -> String {
    b.sql(&format!("SELECT count(*) FROM accounts WHERE aid = {aid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_during_the_flip_makes_the_cutover_resume_on_the_source() {
    // Leases of 6 s (three 2 s check intervals): longer than the pause allowed, whatever the machine's load.
    let s = setup_shaped(Shape {
        proxies: 1,
        check_interval: Some("2s"),
        ..Shape::default()
    })
    .await;
    s.load();
    let (mut child, port, _dir) = spawn_instance(&s).await;
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    let catalog = common::connect(&s.shards[0].direct_url()).await;
    let moving: Vec<u32> = (0..16).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(writer(
        s.proxies[0].url("app", "secret", "shop"),
        stop.clone(),
        ops.clone(),
    ));
    more_ops(&ops, 20).await;

    // The instance is stopped once it held writes (the freeze was acknowledged, the source drained) and before it
    // can see the flip. Its lease outlives --max-pause, so the cutover may not wait for it.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut opts = Setup::options();
    opts.max_pause = Duration::from_secs(3);
    opts.cutover_attempts = 1;
    let mut r = s.remapper(opts, log.clone()).await;
    let steps = Arc::new(Mutex::new(Vec::new()));
    let seen = steps.clone();
    r.progress = Some(Box::new(move |p: &Progress<'_>| {
        if let Progress::Step(step) = p {
            if *step == "cutover: drain" {
                kill(pid, Signal::SIGSTOP).unwrap();
            }
            seen.lock().unwrap().push(step.to_string());
        }
    }));
    let started = Instant::now();
    let err = r.start(&moving, 1).await.unwrap_err();
    let text = format!(
        "{}\n{}",
        log.lock().unwrap().join("\n"),
        steps.lock().unwrap().join("\n")
    );
    match &err {
        RemapError::Cutover(CutoverError::PauseExceeded { step, .. }) => {
            assert!(
                step.contains("acknowledge the new placement"),
                "{step}\n{text}"
            )
        }
        other => panic!("{other}\n{text}"),
    }
    assert_eq!(
        steps.lock().unwrap()[..],
        [
            "cutover: freeze",
            "cutover: freeze acknowledged",
            "cutover: fence",
            "cutover: drain",
            "cutover: flip",
            "cutover: flip undone, writes resume on the source"
        ],
        "{text}"
    );

    // Back as before the cutover: placement on the source, no freeze, no recorded drained point.
    assert_eq!(placement(&catalog, &moving).await, vec![0; 16]);
    let row = catalog
        .query_one(
            "SELECT phase, frozen, drained_lsn IS NULL, fenced FROM shardpool.remaps ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), Phase::CatchingUp.as_str());
    assert!(!row.get::<_, bool>(1));
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Vec<i32>>(3), Vec::<i32>::new());

    // Writes resume on the source: the writer goes on, and what it commits now lands on shard 0.
    more_ops(&ops, 20).await;
    let since = ops.load(Ordering::Relaxed);
    more_ops(&ops, 1).await;
    let direct = (6_000_000i64..).find(|a| vshard(*a) < 16).unwrap();
    // The fence is disarmed: a direct write on the source goes through (and replicates to the target).
    s.shards[0].sql(&format!(
        "INSERT INTO accounts (aid, owner, balance) VALUES ({direct}, 'direct', 0)"
    ));
    eprintln!(
        "cutover undone after {:?} ({since} writes committed so far)\n{text}",
        started.elapsed()
    );

    // Woken, the stopped instance writes to the source too (it still routes there, or learns it again).
    kill(pid, Signal::SIGCONT).unwrap();
    let woken = (6_500_000i64..).find(|a| vshard(*a) < 16).unwrap();
    let stale = common::connect(&format!("postgres://app:secret@127.0.0.1:{port}/shop")).await;
    stale
        .execute(
            "INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'woken', 0)",
            &[&woken],
        )
        .await
        .unwrap();
    assert_eq!(count(&s.shards[0], woken), "1");

    // Run again at a quieter moment: the remap completes, and every committed row is on the target exactly once.
    r.opts.cutover_attempts = 5;
    r.progress = None;
    let row = r
        .start(&moving, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    more_ops(&ops, 20).await;
    stop.store(true, Ordering::Relaxed);
    let written = load.await.unwrap();
    assert_eq!(written.failures, Vec::<String>::new());
    let mut all = written.committed.clone();
    all.extend([direct, woken]);
    let list = all
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        s.shards[0].sql(&format!(
            "SELECT count(*) FROM accounts WHERE aid IN ({list})"
        )),
        "0"
    );
    assert_eq!(
        s.shards[1].sql(&format!(
            "SELECT count(*), count(DISTINCT aid) FROM accounts WHERE aid IN ({list})"
        )),
        format!("{0}|{0}", all.len())
    );
    eprintln!(
        "{} writes committed, {} refused by the fence and retried",
        written.committed.len(),
        written.refused
    );
    child.kill().await.unwrap();
}

/// Clients of `s`'s first instance waiting for a server of shard 0's pool.
fn waiting_on_shard_0(s: &Setup) -> usize {
    let ctx = s.proxies[0].ctx();
    let user = ctx.user("app").unwrap();
    ctx.shard_pool_set("shop", &user, 0).unwrap().pools[0]
        .stats
        .waiting
        .load(Ordering::Relaxed)
}

/// Writes routed to the source before this instance saw the freeze, whose server came only after the whole remap
/// (they waited for the source's only server): they are placed again by the catalog that moved their vshard and go
/// to the target, instead of to the source's fence. Clients see no error: not for a simple query, a prepared
/// statement's execution, nor an INSERT after a BEGIN the proxy answered itself (whose COMMIT then goes to the target
/// too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_vshard_moved_while_they_waited_for_a_server_go_to_the_target() {
    let s = setup_shaped(Shape {
        proxies: 1,
        pool_size: Some(1),
        ..Shape::default()
    })
    .await;
    s.load();
    let url = s.proxies[0].url("app", "secret", "shop");
    let moving: Vec<u32> = (0..16).collect();
    let mut aids = (7_000_000i64..).filter(|a| vshard(*a) < 16);
    let (simple, prepared, begun) = (
        aids.next().unwrap(),
        aids.next().unwrap(),
        aids.next().unwrap(),
    );
    let staying = (1..).find(|a| (16..32).contains(&vshard(*a))).unwrap();

    let c1 = common::connect(&url).await;
    // Prepared (described on a shard) before the holder takes shard 0's only server.
    let c2 = common::connect(&url).await;
    let insert = c2
        .prepare("INSERT INTO accounts (aid, owner, balance) VALUES ($1, 'prepared', 0)")
        .await
        .unwrap();
    // The holder keeps shard 0's only server in an open read transaction (no lock the fence waits for).
    let holder = common::connect(&url).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let owner = holder
        .simple_query(&format!("SELECT owner FROM accounts WHERE aid = {staying}"))
        .await
        .unwrap();
    let rows = owner
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1, "the staying account");

    let c3 = common::connect(&url).await;
    c3.batch_execute("BEGIN").await.unwrap();
    let w1 = tokio::spawn(async move {
        c1.batch_execute(&format!(
            "INSERT INTO accounts (aid, owner, balance) VALUES ({simple}, 'simple', 0)"
        ))
        .await
    });
    let w2 = tokio::spawn(async move { c2.execute(&insert, &[&prepared]).await.map(drop) });
    let w3 = tokio::spawn(async move {
        c3.batch_execute(&format!(
            "INSERT INTO accounts (aid, owner, balance) VALUES ({begun}, 'begun', 0)"
        ))
        .await?;
        c3.batch_execute("COMMIT").await
    });
    common::eventually(
        Duration::from_secs(30),
        "three writes waiting for shard 0's server",
        || {
            let n = waiting_on_shard_0(&s);
            async move { n == 3 }
        },
    )
    .await;

    // The whole remap runs while they wait: the fence stays on the source after it.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let row = r
        .start(&moving, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    assert_eq!(waiting_on_shard_0(&s), 3, "the writes waited throughout");

    holder.batch_execute("COMMIT").await.unwrap();
    for (name, w) in [("simple", w1), ("prepared", w2), ("begun", w3)] {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap_or_else(|_| panic!("the {name} write hangs"))
            .unwrap()
            .unwrap_or_else(|e| panic!("the {name} write failed: {e:?}"));
    }
    for aid in [simple, prepared, begun] {
        assert_eq!(count(&s.shards[0], aid), "0", "account {aid} on the source");
        assert_eq!(count(&s.shards[1], aid), "1", "account {aid} on the target");
    }
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();
    assert_eq!(router.holds.fence_retried.load(Ordering::Relaxed), 0);
}

/// Runs a remap of `moving` to shard 1 whose driver dies right after installing the fence (as seen from the catalog
/// and the shards: nothing after that step runs), with the freeze on and `max_pause` recorded for the instances.
async fn die_after_the_fence(
    s: &Setup,
    moving: &[u32],
    max_pause: Duration,
    log: &Arc<Mutex<Vec<String>>>,
) {
    let mut opts = Setup::options();
    opts.max_pause = max_pause;
    opts.cutover_attempts = 1;
    let mut dying = s.remapper(opts, log.clone()).await;
    dying.progress = Some(Box::new(|p: &Progress<'_>| {
        if let Progress::Step(step) = p {
            assert_ne!(*step, "cutover: fence", "shardctl dies here");
        }
    }));
    let there = moving.to_vec();
    let died = tokio::spawn(async move { dying.start(&there, 1).await.map(|_| ()) })
        .await
        .expect_err("the driver died at the fence");
    assert!(died.is_panic());
}

/// `shardctl` dies right after installing the fence, with the freeze on: the instance holds a write to a moving
/// vshard for the remap's pause, then sends it to the source as the catalog says, where the fence refuses it. Its
/// client has seen nothing, so the proxy waits for the catalog to change and routes it again; the remap, run again,
/// lifts the freeze (or flips): the write commits, and ends up on the target exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_fence_refused_unseen_is_routed_again_when_the_remap_resumes() {
    let s = setup_shaped(Shape {
        proxies: 1,
        ..Shape::default()
    })
    .await;
    s.load();
    let url = s.proxies[0].url("app", "secret", "shop");
    let moving: Vec<u32> = (0..16).collect();
    let aid = (8_000_000i64..).find(|a| vshard(*a) < 16).unwrap();
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();

    let log = Arc::new(Mutex::new(Vec::new()));
    die_after_the_fence(&s, &moving, Duration::from_secs(1), &log).await;
    let fenced = s.shards[0].sql(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shardpool_fence_%' AND NOT tgisinternal",
    );
    assert_ne!(fenced, "0", "the fence is armed");

    let c = common::connect(&url).await;
    let write = tokio::spawn(async move {
        c.batch_execute(&format!(
            "INSERT INTO accounts (aid, owner, balance) VALUES ({aid}, 'fenced', 0)"
        ))
        .await
    });
    common::eventually(
        Duration::from_secs(30),
        "the fence to refuse the write",
        || {
            let n = router.holds.fence_retried.load(Ordering::Relaxed);
            async move { n >= 1 }
        },
    )
    .await;

    let moving: Vec<u32> = (0..16).collect();
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    r.opts.cutover_attempts = 5;
    let row = r
        .start(&moving, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .expect("the write hangs")
        .unwrap()
        .unwrap_or_else(|e| panic!("the fenced write failed: {e:?}"));
    assert_eq!(count(&s.shards[0], aid), "0");
    assert_eq!(count(&s.shards[1], aid), "1");
}

/// `shardctl` dies after each phase and after each step of the cutover (as seen from the catalog and the shards:
/// nothing after that point runs), under a write load through the proxy; run again (and, after a death past the
/// flip, `cleanup --force`, see docs/remap.md), the remap always ends done, with every committed write on its
/// vshard's shard exactly once, nothing left behind, and no write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardctl_dying_after_any_phase_or_cutover_step_is_resumed_to_the_end() {
    let s = setup(1, "", "").await;
    s.load();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(writer(
        s.proxies[0].url("app", "secret", "shop"),
        stop.clone(),
        ops.clone(),
    ));
    more_ops(&ops, 20).await;
    let moving: Vec<u32> = (0..16).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let phases = [Phase::Planned, Phase::Copying, Phase::CatchingUp];
    let steps = [
        "cutover: freeze",
        "cutover: freeze acknowledged",
        "cutover: fence",
        "cutover: drain",
        "cutover: flip",
        "cutover: flip acknowledged",
        "cutover: release",
    ];
    let deaths = phases
        .iter()
        .map(|p| (Some(*p), None))
        .chain(steps.iter().map(|s| (None, Some(*s))));
    for (round, (phase, step)) in deaths.enumerate() {
        // There and back: even rounds move the vshards to shard 1, odd ones back to shard 0.
        let to = u16::from(round % 2 == 0);
        let mut opts = Setup::options();
        opts.stop_after = phase;
        let mut dying = s.remapper(opts, log.clone()).await;
        if let Some(step) = step {
            dying.progress = Some(Box::new(move |p: &Progress<'_>| {
                if let Progress::Step(seen) = p {
                    assert_ne!(*seen, step, "shardctl dies here");
                }
            }));
        }
        let there = moving.clone();
        let died =
            tokio::spawn(async move { dying.start(&there, to).await.map(|r| r.phase) }).await;
        let what = format!("died after {phase:?} {step:?}");
        eprintln!("round {round}: {what}");
        match (&died, step) {
            (Err(e), Some(_)) => assert!(e.is_panic(), "{what}: {e}"),
            (Ok(Ok(p)), None) => assert_ne!(*p, Phase::Done, "{what}: stopped too late"),
            _ => panic!("{what}: {died:?}\n{}", log.lock().unwrap().join("\n")),
        }
        let mut r = s.remapper(Setup::options(), log.clone()).await;
        let flipped = step.is_some_and(|s| steps[4..].contains(&s));
        let row = match r.start(&moving, to).await {
            // Died after the flip: the snapshot taken at the drained point died with it, and the writes released
            // to the target since make the source differ. As documented, the operator checks the differences and
            // forces the cleanup; the rows' end state is checked below.
            Err(RemapError::Mismatch(_)) if flipped => r
                .cleanup(true)
                .await
                .unwrap_or_else(|e| panic!("{what}, then cleaned up: {e}")),
            other => other.unwrap_or_else(|e| {
                panic!(
                    "{what}, then resumed: {e}\n{}",
                    log.lock().unwrap().join("\n")
                )
            }),
        };
        assert_eq!(row.phase, Phase::Done, "{what}");
        assert_eq!(
            r.leftovers(row.id).await.unwrap(),
            Vec::<String>::new(),
            "{what}"
        );
        assert_eq!(
            placement(&r.catalog, &moving).await,
            vec![i32::from(to); 16],
            "{what}"
        );
        more_ops(&ops, 5).await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = load.await.unwrap();
    assert_eq!(written.failures, Vec::<String>::new());
    // Ten rounds: the vshards are back on shard 0, with every committed write once.
    let aids = written.committed.clone();
    let on = |shard: usize| {
        let url = s.shards[shard].direct_url();
        let aids = aids.clone();
        async move {
            let c = common::connect(&url).await;
            let row = c
                .query_one(
                    "SELECT count(*), count(DISTINCT aid) FROM accounts WHERE aid = ANY($1)",
                    &[&aids],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    assert_eq!(on(1).await, (0, 0));
    let n = written.committed.len() as i64;
    assert_eq!(on(0).await, (n, n));
    eprintln!(
        "{} writes committed across 10 deaths and resumptions, {} refused by a fence and retried by the client",
        written.committed.len(),
        written.refused
    );
}

/// Writes whose vshards are known only from the rows (`COPY ... FROM STDIN` into a sharded table) or from
/// `shardpool.shard_key` are held during a cutover too, not sent to the fence: with `shardctl` dead after installing
/// the fence (freeze on), both wait; aborting the remap lifts the freeze, both then commit, and the remap run again
/// moves their rows to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_shard_key_writes_are_held_during_a_cutover() {
    let s = setup(1, "", "").await;
    s.load();
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();
    let moving: Vec<u32> = (0..16).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    // The instances hold for as long as the remap recorded: long enough for this test to act on a loaded machine.
    die_after_the_fence(&s, &moving, Duration::from_secs(20), &log).await;
    common::eventually(
        Duration::from_secs(30),
        "the instance to see the freeze",
        || {
            let frozen = router
                .catalog()
                .is_some_and(|c| !c.freeze.vshards.is_empty());
            async move { frozen }
        },
    )
    .await;
    let held_before = router.holds.held.load(Ordering::Relaxed);

    let copied: Vec<i64> = (9_000_000i64..)
        .filter(|a| vshard(*a) < 16)
        .take(20)
        .chain((9_100_000i64..).filter(|a| vshard(*a) >= 16).take(20))
        .collect();
    let rows: String = copied.iter().map(|a| format!("{a}\tcopied\t0\n")).collect();
    let port = s.proxies[0].port;
    let copy = tokio::spawn(async move {
        let mut raw = common::raw::Raw::connect(port, "app", "secret", "shop").await;
        raw.copy_in(
            "COPY accounts (aid, owner, balance) FROM STDIN",
            rows.as_bytes(),
            100,
        )
        .await
    });
    let keyed = (9_200_000i64..).find(|a| vshard(*a) < 16).unwrap();
    s.shards[0].sql(&format!(
        "SET session_replication_role = replica; INSERT INTO accounts VALUES ({keyed}, 'keyed', 0)"
    ));
    let c = common::connect(&s.proxies[0].url("app", "secret", "shop")).await;
    let hinted = tokio::spawn(async move {
        c.batch_execute(&format!(
            "/* shardpool.shard_key={keyed} */ UPDATE accounts SET balance = balance + 1 WHERE owner = 'keyed'"
        ))
        .await
    });
    common::eventually(Duration::from_secs(30), "both writes to be held", || {
        let held = router.holds.held.load(Ordering::Relaxed) - held_before;
        async move { held >= 2 }
    })
    .await;
    assert!(!copy.is_finished() && !hinted.is_finished());

    // Aborted (rather than resumed, whose next cutover could freeze again while the released COPY starts): the
    // freeze lifts, both go to the source and commit; the remap run afterwards moves their rows.
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    let row = r
        .abort()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Aborted);
    let tag = tokio::time::timeout(Duration::from_secs(30), copy)
        .await
        .expect("the COPY hangs")
        .unwrap();
    assert!(tag.contains("COPY 40"), "{tag}");
    tokio::time::timeout(Duration::from_secs(30), hinted)
        .await
        .expect("the hinted write hangs")
        .unwrap()
        .unwrap_or_else(|e| panic!("the hinted write failed: {e:?}"));
    let row = r
        .start(&moving, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.lock().unwrap().join("\n")));
    assert_eq!(row.phase, Phase::Done);
    for aid in &copied[..20] {
        assert_eq!(count(&s.shards[0], *aid), "0", "copied {aid} on the source");
        assert_eq!(count(&s.shards[1], *aid), "1", "copied {aid} on the target");
    }
    assert_eq!(
        s.shards[1].sql(&format!("SELECT balance FROM accounts WHERE aid = {keyed}")),
        "1"
    );
    assert_eq!(count(&s.shards[0], keyed), "0");
}

/// A write placed by a range of a range map (no single key) is held during a cutover like a keyed one, not sent to
/// the fence: with `shardctl` dead after the fence, an UPDATE over a moving range waits; the abort lifts the freeze
/// and it commits on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_placed_writes_are_held_during_a_cutover() {
    let s = setup(
        1,
        "CREATE TABLE events (ts bigint PRIMARY KEY, payload text); ALTER TABLE events OWNER TO app",
        "[[databases.shop.sharding.tables]]\nname = \"events\"\nkey = \"ts\"\ntype = \"int8\"\nmap = \"by_time\"\n\
         [databases.shop.sharding.maps.by_time]\nkind = \"range\"\nkey_type = \"int8\"\nsplit_points = [1000, 2000]\n",
    )
    .await;
    // [1000, 2000) is vshard 21, on shard 0.
    let url = s.proxies[0].url("app", "secret", "shop");
    let app = common::connect(&url).await;
    for ts in (1000..1100).step_by(10) {
        app.simple_query(&format!("INSERT INTO events VALUES ({ts}, 'e')"))
            .await
            .unwrap();
    }
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    die_after_the_fence(&s, &[21], Duration::from_secs(20), &log).await;
    common::eventually(
        Duration::from_secs(30),
        "the instance to see the freeze",
        || {
            let frozen = router.catalog().is_some_and(|c| c.freeze.contains(21));
            async move { frozen }
        },
    )
    .await;
    let held_before = router.holds.held.load(Ordering::Relaxed);
    let update = tokio::spawn(async move {
        app.execute(
            "UPDATE events SET payload = 'held' WHERE ts >= $1 AND ts < $2",
            &[&1000i64, &1100i64],
        )
        .await
    });
    common::eventually(
        Duration::from_secs(30),
        "the range write to be held",
        || {
            let held = router.holds.held.load(Ordering::Relaxed) - held_before;
            async move { held >= 1 }
        },
    )
    .await;
    assert!(!update.is_finished());
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    assert_eq!(r.abort().await.unwrap().phase, Phase::Aborted);
    let n = tokio::time::timeout(Duration::from_secs(30), update)
        .await
        .expect("the range write hangs")
        .unwrap()
        .unwrap_or_else(|e| panic!("the range write failed: {e:?}"));
    assert_eq!(n, 10);
    assert_eq!(router.holds.fence_retried.load(Ordering::Relaxed), 0);
    assert_eq!(
        s.shards[0].sql("SELECT count(*) FROM events WHERE payload = 'held'"),
        "10"
    );
}

/// The fence retry is bounded: with `shardctl` dead after the fence and nobody running the remap again, a write
/// held for the remap's pause and then refused is routed again 3 times (each waiting for a catalog change that does
/// not come), and then its client gets the fence's 40001, which it may retry once the remap is run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_fence_keeps_refusing_reaches_its_client_as_40001() {
    let s = setup(1, "", "").await;
    s.load();
    let moving: Vec<u32> = (0..16).collect();
    let aid = (8_500_000i64..).find(|a| vshard(*a) < 16).unwrap();
    let router = s.proxies[0].ctx().shard_router("shop").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    die_after_the_fence(&s, &moving, Duration::from_secs(1), &log).await;
    let c = common::connect(&s.proxies[0].url("app", "secret", "shop")).await;
    let err = c
        .batch_execute(&format!(
            "INSERT INTO accounts (aid, owner, balance) VALUES ({aid}, 'refused', 0)"
        ))
        .await
        .expect_err("the fence refuses it for good");
    assert_eq!(common::sqlstate(&err), "40001", "{err:?}");
    assert_eq!(router.holds.fence_retried.load(Ordering::Relaxed), 3);
    assert_eq!(count(&s.shards[0], aid), "0");
    assert_eq!(count(&s.shards[1], aid), "0");
    // The same connection is usable, and the write goes through once the remap is run again.
    let mut r = s.remapper(Setup::options(), log.clone()).await;
    assert_eq!(r.start(&moving, 1).await.unwrap().phase, Phase::Done);
    c.batch_execute(&format!(
        "INSERT INTO accounts (aid, owner, balance) VALUES ({aid}, 'retried', 0)"
    ))
    .await
    .unwrap();
    assert_eq!(count(&s.shards[1], aid), "1");
}
