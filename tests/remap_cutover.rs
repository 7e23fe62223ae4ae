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
