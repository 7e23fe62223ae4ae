//! What `shardctl remap` prints: one line per phase when its output is not a terminal (what scripts and log files
//! get), and a live block redrawn in place (phase, a bar per table with rows and bytes, lag) on a terminal, run here
//! under `script` to give it one.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/remap_kit.rs"]
mod remap_kit;

use remap_kit::*;

fn args<'a>(config: &'a str, vshards: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "remap",
        "--config",
        config,
        "--database",
        "shop",
        "--user",
        "app",
        "--shard-user",
        "postgres",
        "--vshards",
        vshards,
        "--to",
        to,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardctl_prints_phase_lines_to_a_pipe_and_bars_on_a_terminal() {
    let s = setup(1, "", "").await;
    s.load();
    let config = s.proxies[0].config_path.to_string_lossy().into_owned();
    let shardctl = common::bin("shardctl");

    let out = tokio::process::Command::new(&shardctl)
        .args(args(&config, "0-7", "1"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains('\x1b'), "{text}");
    // One line per phase, in order.
    let phases: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("remap 1: "))
        .collect();
    assert_eq!(
        phases,
        [
            "remap 1: copying",
            "remap 1: catching_up",
            "remap 1: verified",
            "remap 1: done",
            "remap 1: done"
        ],
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("cutover: vshards 0-7 now on shard 1")),
        "{text}"
    );

    // On a terminal: the same moves back, with the block drawn and redrawn in place.
    let command = std::iter::once(shardctl.to_string_lossy().into_owned())
        .chain(args(&config, "0-7", "0").iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\x1b[2Kremap 2 | phase copying"), "{text:?}");
    assert!(
        text.contains("\x1b[2Kremap 2 | phase catching_up"),
        "{text:?}"
    );
    // Redrawn in place: the cursor goes back up over the block before a log line or a new state.
    assert!(text.contains("F\x1b[J"), "{text:?}");
    // A bar per table copied, with its rows and bytes.
    let full = format!("[{}]  done, ", "#".repeat(24));
    for table in ["accounts", "orders"] {
        assert!(
            text.lines().any(|l| l.contains(&format!("  {table}"))
                && l.contains(&full)
                && l.contains(" rows, ")),
            "{text:?}"
        );
    }
    assert!(text.contains("replication lag: "), "{text:?}");
    // The log lines are there too, and the end.
    assert!(
        text.contains("remap 2 done: vshards 0-7 are on shard 0"),
        "{text:?}"
    );
    assert!(text.contains("remap 2: done"), "{text:?}");
}
