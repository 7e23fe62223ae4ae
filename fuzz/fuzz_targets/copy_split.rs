//! The COPY FROM STDIN splitter (src/sharding/copy), text and CSV: the statement reader, the row and field
//! scanners, key decoding, and batching rows into per-shard CopyData messages.
//! Input: `statement \0 control-byte data`; an empty statement picks one of a few presets by the control byte,
//! which also picks the key column, its type and how the data is cut into CopyData messages.
//! Invariants: no panic; the statement sent to the shards reads back as the same COPY (options spelled out, no
//! HEADER); the rows are the input's bytes, in order, without gaps or overlaps (header and end marker aside);
//! cutting the data into messages differently never changes the rows or the error; batches carry every row once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::sharding::copy::{CopyError, CopyStatement, HeaderLine, RowSplitter, ShardBatches};
use shardpool::sharding::key::KeyType;
use shardpool_fuzz::{chunks, split_nul};

const PRESETS: [&str; 6] = [
    "COPY t (id, v) FROM STDIN",
    "COPY t (v, k) FROM STDIN WITH (FORMAT text, DELIMITER ',', NULL 'nil')",
    "COPY t (id, note) FROM STDIN WITH (FORMAT csv, HEADER true)",
    "COPY t (note, k) FROM STDIN WITH CSV DELIMITER ';' QUOTE '''' ESCAPE '\\'",
    "COPY t (k, v) FROM STDIN WITH (FORMAT csv, FORCE_NULL (k), FORCE_NOT_NULL (v))",
    "COPY t (id, v) FROM STDIN WITH (FORMAT csv, HEADER MATCH)",
];

type Rows = Result<
    Vec<(bytes::Bytes, shardpool::sharding::key::KeyValue, u64)>,
    (&'static str, Option<u64>),
>;

fn run(mut s: RowSplitter, pieces: &[&[u8]]) -> Rows {
    let err = |e: CopyError| (e.sqlstate(), e.line());
    let mut out = Vec::new();
    for p in pieces {
        s.push(p);
        while let Some(r) = s.next_row().map_err(err)? {
            out.push((r.data, r.key, r.line));
        }
    }
    s.finish();
    while let Some(r) = s.next_row().map_err(err)? {
        out.push((r.data, r.key, r.line));
    }
    assert!(s.is_done());
    assert_eq!(s.rows(), out.len() as u64);
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let (sql, rest) = split_nul(data);
    let Some((&control, input)) = rest.split_first() else {
        return;
    };
    let sql = match std::str::from_utf8(sql) {
        Ok("") => PRESETS[usize::from(control) % PRESETS.len()],
        Ok(sql) => sql,
        Err(_) => return,
    };
    let copy = match CopyStatement::parse(sql) {
        Ok(Some(CopyStatement::Split(copy))) => copy,
        _ => return,
    };
    // What the shards run must mean the same COPY, without the header line the proxy consumed.
    let shard_sql = copy.shard_sql();
    match CopyStatement::parse(&shard_sql) {
        Ok(Some(CopyStatement::Split(again))) => {
            let mut expected = copy.options.clone();
            expected.header = HeaderLine::Absent;
            assert_eq!(
                (&again.table, &again.columns),
                (&copy.table, &copy.columns),
                "{shard_sql}"
            );
            assert_eq!(again.options, expected, "{shard_sql}");
            assert_eq!(
                again.where_clause.is_some(),
                copy.where_clause.is_some(),
                "{shard_sql}"
            );
        }
        other => panic!("{sql:?} -> shards run {shard_sql:?}, which reads as {other:?}"),
    }

    let key_type = [KeyType::Int, KeyType::Text, KeyType::Uuid][usize::from(control / 8) % 3];
    let key_index = usize::from(control / 32) % 3;
    let splitter = || {
        let columns: Vec<String> = ["id", "v", "k"].iter().map(|s| s.to_string()).collect();
        match copy.columns {
            Some(_) => RowSplitter::new(&copy, key_index, key_type),
            None => RowSplitter::for_table(&copy, &columns, &columns[key_index], key_type),
        }
        .map(|s| s.with_max_row_len(4096))
    };
    let Ok(first) = splitter() else {
        return;
    };
    let whole = run(first, &[input]);
    let sizes = [control % 5 + 1, control % 17 + 1, 64];
    let cut = run(splitter().expect("built once"), &chunks(input, &sizes));
    assert_eq!(whole, cut);
    let Ok(rows) = whole else {
        return;
    };

    // Rows are consecutive slices of the input: only a header before them and an end marker after.
    let joined: Vec<u8> = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    assert!(
        joined.is_empty() || input.windows(joined.len()).any(|w| w == &joined[..]),
        "rows are not one stretch of the input"
    );
    let lines: Vec<u64> = rows.iter().map(|r| r.2).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");

    // Batches: each row once, in its shard's order; flush at a tiny threshold to cut often.
    let shards = usize::from(control % 4) + 1;
    let mut batches = ShardBatches::new(
        shards,
        usize::from(control) % 64,
        |k: &shardpool::sharding::key::KeyValue| {
            Ok::<u16, ()>((format!("{k:?}").len() % shards) as u16)
        },
    );
    let mut sent = vec![Vec::new(); shards];
    for (data, key, line) in &rows {
        let row = shardpool::sharding::copy::CopyRow {
            data: data.clone(),
            key: key.clone(),
            line: *line,
        };
        if let Some(f) = batches.push(&row).expect("routes to an existing shard") {
            sent[usize::from(f.shard)].extend_from_slice(f.payload());
        }
    }
    for f in batches.flush_all() {
        sent[usize::from(f.shard)].extend_from_slice(f.payload());
    }
    assert_eq!(batches.total_rows(), rows.len() as u64);
    let total: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(total, rows.iter().map(|r| r.0.len()).sum::<usize>());
});
