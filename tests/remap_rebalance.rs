//! `shardctl rebalance --by load` against real Postgres and a running shardpool: the per-vshard statement counters
//! of the instances (SHOW VSHARDS) drive the proposal, so the vshards a skewed workload hammers are the ones proposed
//! to move off their shard.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/remap_kit.rs"]
mod remap_kit;

use remap_kit::*;

async fn shardctl(args: &[&str]) -> (bool, String) {
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
    (out.status.success(), text)
}

/// `shard N: before -> after` lines of a proposal.
fn totals(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("shard "))
        .map(|l| {
            let (_, nums) = l.split_once(": ").unwrap();
            let (a, b) = nums.split_once(" -> ").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_by_load_moves_the_hot_vshards_off_the_busy_shard() {
    let s = setup(1, "", "").await;
    s.load();
    let proxy = &s.proxies[0];
    let app = common::connect(&proxy.url("app", "secret", "shop")).await;
    // Every vshard gets a little traffic; vshards 5 and 9 (shard 0) get most of it.
    let key_of = |v: u32| (1..=INITIAL).find(|a| vshard(*a) == v).unwrap();
    for v in 0..VSHARDS {
        let aid = key_of(v);
        let n = if v == 5 || v == 9 { 150 } else { 3 };
        for _ in 0..n {
            app.simple_query(&format!("SELECT balance FROM accounts WHERE aid = {aid}"))
                .await
                .unwrap();
        }
    }
    let counted: Vec<(String, String)> = proxy
        .admin("SHOW VSHARDS")
        .await
        .into_iter()
        .filter(|r| r["vshard"] == "5")
        .map(|r| (r["database"].clone(), r["queries"].clone()))
        .collect();
    // Each statement counts once (not once when routed and again when checked against its transaction's shard).
    assert_eq!(counted, vec![("shop".to_owned(), "150".to_owned())]);
    let config = proxy.config_path.to_string_lossy().into_owned();
    let admin = proxy.admin_url();
    let base = [
        "rebalance",
        "--config",
        &config,
        "--database",
        "shop",
        "--user",
        "app",
        "--shard-user",
        "postgres",
        "--by",
        "load",
        "--dry-run",
    ];

    // Without an instance to ask there is nothing to measure: a clear refusal.
    let (ok, out) = shardctl(&base).await;
    assert!(!ok, "{out}");
    assert!(out.contains("--instance"), "{out}");

    let mut args = base.to_vec();
    args.extend(["--instance", &admin, "--sample", "0s"]);
    let (ok, out) = shardctl(&args).await;
    assert!(ok, "{out}");
    assert!(out.contains("per shard (statements)"), "{out}");
    let t = totals(&out);
    assert_eq!(t.len(), 2, "{out}");
    // 2 x 150 hot statements plus 3 for each of the other 30 vshards on shard 0; 3 for each of 32 on shard 1.
    assert_eq!(t[0].0, 300 + 3 * 30, "{out}");
    assert_eq!(t[1].0, 3 * 32, "{out}");
    // The hot vshard moves; the greedy then evens out the last few statements with one cold vshard back.
    assert_eq!(t[0].1, t[1].1, "{out}");
    let moves: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("shardctl remap --database shop"))
        .collect();
    assert!(!moves.is_empty() && moves.len() <= 2, "{out}");
    assert!(
        moves[0].contains("--vshards 5 --to 1   # from shard 0, 150 statements"),
        "{out}"
    );
    // A dry run changes nothing.
    let catalog = common::connect(&s.shards[0].direct_url()).await;
    assert_eq!(placement(&catalog, &[5, 9]).await, vec![0, 0]);

    // Over a window, only what runs during it counts: nothing runs, so nothing is proposed.
    let mut args = base.to_vec();
    args.extend(["--instance", &admin, "--sample", "300ms"]);
    let (ok, out) = shardctl(&args).await;
    assert!(ok, "{out}");
    assert!(out.contains("balanced"), "{out}");
}
