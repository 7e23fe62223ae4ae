//! Shard-key extraction (src/sharding/keys) over arbitrary SQL against a small schema (hash and list maps; int,
//! text and uuid keys; a schema-qualified and a quoted table), then Bind-parameter resolution of what it found,
//! on a tokio worker's stack.
//! Invariants: no panic, no stack overflow; analysing the same text twice gives the same answer; the combined
//! analysis names every sharded table the statements do; a `Values` key list is never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::sharding::keys::{
    analyze_sql_with, bind_insert_rows, bind_keys, bind_range, Keys, ShardAnalysis,
};

/// Parameters $1..$8 as a client might bind them: text and binary, valid and not, NULL.
const PARAMS: [Option<&[u8]>; 8] = [
    Some(b"1"),
    Some(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    Some(b"tenant-7"),
    None,
    Some(b"\x00\x00\x00\x00\x00\x00\x00\x2a"),
    Some(b"-9223372036854775808"),
    Some(b"\xff\xfe"),
    Some(b""),
];

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data).into_owned();
    shardpool_fuzz::on_worker_stack(move || {
        let schema = shardpool_fuzz::schema();
        let columns = shardpool_fuzz::columns();
        let analysis = analyze_sql_with(&sql, &schema, &columns);
        assert_eq!(analysis, analyze_sql_with(&sql, &schema, &columns));
        let ShardAnalysis::Analyzed {
            statements,
            combined,
        } = &analysis
        else {
            return;
        };
        for s in statements {
            for t in &s.sharded {
                assert!(
                    combined.sharded.iter().any(|c| c.name == t.name),
                    "{t:?} lost"
                );
            }
        }
        // Text formats, then binary ones for the odd parameters.
        let text = [0i16; 8];
        let mixed = [0i16, 1, 0, 1, 1, 0, 1, 0];
        for s in statements.iter().chain([combined]) {
            if let Keys::Values(v) = &s.keys {
                assert!(!v.is_empty());
            }
            let _ = s.target();
            for formats in [&text[..], &mixed[..], &[1][..], &[][..]] {
                let _ = bind_keys(s, &PARAMS, formats);
                let _ = bind_insert_rows(s, &PARAMS, formats);
                for r in &s.ranges {
                    let _ = bind_range(&r.range, r.table.key_type, &PARAMS, formats);
                }
            }
        }
    });
});
