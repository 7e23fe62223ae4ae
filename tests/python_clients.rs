//! The Python client-library suite (tests/python: psycopg 3 and asyncpg, pinned in .ci/requirements.txt) run
//! through a proxy in front of a real Postgres. Real drivers exercise protocol paths (pipelining, named prepared
//! statements, COPY, cancellation) in the combinations applications actually produce.
//!
//! Python comes from $SHARDPOOL_PYTHON (CI sets it to its .venv), else `<repo>/.venv/bin/python`, else a venv this
//! test creates in `<repo>/target/pyvenv` from .ci/requirements.txt, so `cargo test` works on a fresh machine with
//! only python3 installed. The test fails (never skips) if pytest fails, runs no test, or skips any.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::python::{python, repo};
use common::Backend;

/// Counts from pytest's closing line, e.g. "41 passed, 2 skipped in 12.34s".
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    passed: u32,
    failed: u32,
    errors: u32,
    skipped: u32,
    other: u32,
}

fn summary(output: &str) -> Option<(Summary, String)> {
    let line = output
        .lines()
        .rev()
        .map(|l| l.trim().trim_matches('=').trim())
        .find(|l| {
            l.contains(" in ")
                && [" passed", " failed", " error", " skipped", "no tests ran"]
                    .iter()
                    .any(|w| l.contains(w))
        })?;
    let mut s = Summary::default();
    let counts = line.rsplit_once(" in ").map_or(line, |(c, _)| c);
    for part in counts.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        match what {
            "passed" => s.passed += n,
            "failed" => s.failed += n,
            "error" | "errors" => s.errors += n,
            "skipped" => s.skipped += n,
            "warning" | "warnings" => {}
            _ => s.other += n,
        }
    }
    Some((s, line.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_suite_passes_through_the_proxy() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let backend = Backend::start().await;
    // A small pool under many clients is the point; max_client_conn leaves room for the suite's thread fan-out.
    let proxy = backend.proxy("pool_size = 4\nmax_client_conn = 500").await;

    let mut cmd = tokio::process::Command::new(&python);
    cmd.args(["-m", "pytest", "-q", "tests/python"])
        .current_dir(repo())
        .env("SHARDPOOL_URL", proxy.app_url())
        .env("SHARDPOOL_DIRECT_URL", backend.direct_url())
        .env("SHARDPOOL_ADMIN_URL", proxy.admin_url())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20 * 60), cmd.output())
        .await
        .expect("pytest did not finish within 20 minutes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- pytest output ({}) ---\n{text}", python.display());

    let (counts, line) =
        summary(&text).unwrap_or_else(|| panic!("no pytest summary line in:\n{text}"));
    // Straight to stderr (not captured by the test harness): the suite's result shows in every run's log.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "python client suite: {line}");
    }
    assert!(
        out.status.success(),
        "pytest failed ({}): {line}",
        out.status
    );
    assert!(counts.passed > 0, "pytest ran no test: {line}");
    assert_eq!(
        (counts.failed, counts.errors, counts.skipped, counts.other),
        (0, 0, 0, 0),
        "{line}"
    );
}

#[test]
fn pytest_summary_lines_are_read() {
    let (s, _) = summary("....\n41 passed, 2 skipped in 12.34s\n").unwrap();
    assert_eq!((s.passed, s.skipped), (41, 2));
    let (s, _) = summary("===== 1 failed, 3 passed, 1 error in 0.5s =====").unwrap();
    assert_eq!((s.passed, s.failed, s.errors), (3, 1, 1));
    let (s, _) = summary("no tests ran in 0.01s").unwrap();
    assert_eq!(s, Summary::default());
    let (s, _) = summary("5 passed, 2 warnings in 1.00s").unwrap();
    assert_eq!((s.passed, s.other), (5, 0));
    assert!(summary("collected nothing").is_none());
}
