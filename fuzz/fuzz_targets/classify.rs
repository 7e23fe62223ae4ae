//! The read/write classifier (src/router/classify.rs), with the routing hints in leading comments and the
//! `SET/SHOW shardpool.*` commands read from the same text (src/router/proxy_commands.rs), on a tokio worker's
//! stack. Invariants: no panic, no stack overflow; a write is never called a read because of what follows it;
//! no more statements are counted than the text has semicolons allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::router::classify::{classify, leading_hints, Access, FunctionVolatility};
use shardpool::router::proxy_commands;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data).into_owned();
    shardpool_fuzz::on_worker_stack(move || {
        let functions = FunctionVolatility::unknown();
        let a = classify(&sql, &functions);
        // Statements end at semicolons only. (Not compared with `scan::statements`, which trims Unicode
        // whitespace while the classifier's word reader skips ASCII whitespace only: a text of vertical tabs is
        // no statement to one and an unknown statement, so a write, to the other; both are safe.)
        let semicolons = sql.matches(';').count();
        assert!(
            a.statements <= semicolons + 1,
            "{} statements, {semicolons} semicolons",
            a.statements
        );
        if a.parse_failed {
            assert_eq!(
                a.access,
                Access::Write,
                "an unparsed statement must go to the primary"
            );
        }
        if a.only_tx_control {
            assert!(a.statements > 0);
        }
        // Appending a write makes the whole text a write.
        if !sql.contains(['\'', '"', '$', '-', '/', '\\']) {
            let more = format!("{sql};\nINSERT INTO t VALUES (1)");
            assert_eq!(
                classify(&more, &functions).access,
                Access::Write,
                "{more:?}"
            );
        }
        assert_eq!(leading_hints(&sql), a.hints);
        if let Ok(Some(cmd)) = proxy_commands::parse(&sql) {
            let _ = format!("{cmd:?}");
        }
    });
});
