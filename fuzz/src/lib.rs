//! Helpers shared by the fuzz targets in `fuzz_targets/`: the sharded schema the SQL targets analyse against, a
//! runner that gives a check the stack a tokio worker has, and a depth gauge for the trees sqlparse lets through.
//! See docs/reliability.md for how to run the targets and what they found.

use std::ops::ControlFlow;

use shardpool::sharding::key::KeyType;
use shardpool::sharding::schema::{ShardSchema, ShardedTable, TableColumns};
use sqlparser::ast::{Expr, Query, Visit, Visitor};

/// tokio's default worker stack, the stack every client's SQL is analysed on in the proxy.
pub const WORKER_STACK: usize = 2 * 1024 * 1024;

/// Runs `check` on a fresh thread with a tokio worker's stack, so that a recursion the proxy could not survive
/// crashes the fuzzer too (libFuzzer's own thread has 8 MiB). A panic on that thread aborts the process through
/// libfuzzer-sys' panic hook, which libFuzzer reports as a crash.
pub fn on_worker_stack<F: FnOnce() + Send + 'static>(check: F) {
    let handle = std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(check)
        .expect("spawn a checking thread");
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The schema the key-extraction unit tests use: hash and list maps, int, text and uuid keys, a quoted name.
pub fn schema() -> ShardSchema {
    let t = |name: &str, key: &str, key_type, map: &str| ShardedTable {
        name: name.into(),
        key: key.into(),
        key_type,
        map: map.into(),
    };
    ShardSchema::new(
        vec![
            t("accounts", "aid", KeyType::Int, "hash"),
            t("history", "aid", KeyType::Int, "hash"),
            t("branches", "bid", KeyType::Int, "hash"),
            t("sessions", "id", KeyType::Uuid, "hash"),
            t("orders", "tenant", KeyType::Text, "tenants"),
            t("invoices", "tenant", KeyType::Text, "tenants"),
            t("public.notes", "tenant", KeyType::Text, "hash"),
            t("\"Users\"", "\"UserId\"", KeyType::Text, "hash"),
        ],
        &["countries".into()],
    )
    .expect("a valid schema")
}

/// Column orders for `INSERT` without a column list.
pub fn columns() -> TableColumns {
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    TableColumns::new(
        [
            (
                "accounts".to_string(),
                cols(&["aid", "bid", "abalance", "filler"]),
            ),
            (
                "history".to_string(),
                cols(&["tid", "bid", "aid", "delta", "mtime"]),
            ),
            ("orders".to_string(), cols(&["id", "tenant", "total"])),
            ("sessions".to_string(), cols(&["id", "data"])),
        ]
        .into_iter()
        .collect(),
    )
}

/// The deepest nesting of expressions and queries in `nodes` (statements or expressions; a `Query` inside an
/// expression counts as a level, as do the expressions inside it).
pub fn tree_depth<'a, T: Visit + 'a>(nodes: impl IntoIterator<Item = &'a T>) -> usize {
    #[derive(Default)]
    struct Gauge {
        now: usize,
        max: usize,
    }
    impl Gauge {
        fn enter(&mut self) -> ControlFlow<()> {
            self.now += 1;
            self.max = self.max.max(self.now);
            ControlFlow::Continue(())
        }
        fn leave(&mut self) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    impl Visitor for Gauge {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.leave()
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.leave()
        }
    }
    let mut gauge = Gauge::default();
    for n in nodes {
        let _ = n.visit(&mut gauge);
    }
    gauge.max
}

/// Splits `data` at its first NUL: (before, after); no NUL gives (data, empty).
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Cuts `data` into chunks whose sizes cycle through `sizes` (each at least 1), as a network might deliver it.
pub fn chunks<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .map_or(rest.len(), |&s| usize::from(s).max(1));
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}
