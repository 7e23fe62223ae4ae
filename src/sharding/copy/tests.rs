//! Splitter and batch tests on byte strings: row boundaries and keys as the server would read them, under every way
//! of cutting the input into CopyData messages.

use bytes::BytesMut;

use super::*;
use crate::protocol::framing::split_frame;
use crate::sharding::key::{KeyType, KeyValue};

fn copy_from(sql: &str) -> CopyFrom {
    match CopyStatement::parse(sql) {
        Ok(Some(CopyStatement::Split(f))) => f,
        other => panic!("{sql}: {other:?}"),
    }
}

/// (row bytes, key) for every row, or the first error.
type Rows = Result<Vec<(Vec<u8>, KeyValue)>, CopyError>;

fn run(mut s: RowSplitter, chunks: &[&[u8]]) -> Rows {
    let mut out = Vec::new();
    for chunk in chunks {
        s.push(chunk);
        while let Some(r) = s.next_row()? {
            out.push((r.data.to_vec(), r.key));
        }
    }
    s.finish();
    while let Some(r) = s.next_row()? {
        out.push((r.data.to_vec(), r.key));
    }
    assert!(s.is_done());
    Ok(out)
}

fn split(sql: &str, key: usize, ty: KeyType, input: &[u8]) -> Rows {
    run(
        RowSplitter::new(&copy_from(sql), key, ty).unwrap(),
        &[input],
    )
}

fn int(v: i64) -> KeyValue {
    KeyValue::Int(v)
}

fn text(v: &str) -> KeyValue {
    KeyValue::Text(v.to_string())
}

fn rows(v: &[(&[u8], KeyValue)]) -> Vec<(Vec<u8>, KeyValue)> {
    v.iter().map(|(b, k)| (b.to_vec(), k.clone())).collect()
}

fn code(r: Rows) -> (&'static str, Option<u64>) {
    let e = r.unwrap_err();
    (e.sqlstate(), e.line())
}

/// Inputs with every kind of corner: escapes, quotes, CRLF, CR, multibyte text, headers, end markers.
fn samples() -> Vec<(&'static str, usize, KeyType, &'static [u8])> {
    vec![
        (
            "COPY t (id, v) FROM STDIN",
            0,
            KeyType::Int,
            b"1\ta\\tb\n-2\t\\N\n3\tline\\\nbreak\n\\x34\t\\\\\n\\065\tz\n  6 \t\xc3\xa9\xe2\x82\xac\n",
        ),
        (
            "COPY t (v, k) FROM STDIN",
            1,
            KeyType::Text,
            "x\tcl\u{e9}\r\ny\t\\303\\251\r\nz\t\u{1F600}\\t\r\n\\.\r\nafter\r\n".as_bytes(),
        ),
        ("COPY t (k) FROM STDIN", 0, KeyType::Text, b"a\rb\\\rc\r\r"),
        (
            "COPY t (id, note) FROM STDIN WITH (FORMAT csv, HEADER true)",
            0,
            KeyType::Int,
            b"id,\"no\nte\"\n1,\"a,b\"\n2,\"multi\r\nline \"\"quoted\"\"\"\n\"3\",\n4,\\.\n\\.\nignored\n",
        ),
        (
            "COPY t (note, k) FROM STDIN WITH CSV DELIMITER ';' QUOTE '''' ESCAPE '\\'",
            1,
            KeyType::Text,
            b"x;'k\\'1'\r\n'a;b\r\nc';'\xce\xbb;'\r\n;plain\r\n",
        ),
        (
            "COPY t (k, v) FROM STDIN WITH (FORMAT csv)",
            0,
            KeyType::Uuid,
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,\"\"\n{A0EEBC999C0B4EF8BB6D6BB9BD380A12},x",
        ),
    ]
}

#[test]
fn every_cut_into_two_or_three_messages_gives_the_same_rows() {
    for (sql, key, ty, input) in samples() {
        let whole = split(sql, key, ty, input).unwrap();
        assert!(whole.len() >= 2, "{sql}: {whole:?}");
        let splitter = || RowSplitter::new(&copy_from(sql), key, ty).unwrap();
        for i in 0..=input.len() {
            assert_eq!(
                run(splitter(), &[&input[..i], &input[i..]]).unwrap(),
                whole,
                "{sql} cut at {i}"
            );
            for j in i..=input.len() {
                let three = run(splitter(), &[&input[..i], &input[i..j], &input[j..]]).unwrap();
                assert_eq!(three, whole, "{sql} cut at {i}, {j}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(splitter(), &bytes).unwrap(),
            whole,
            "{sql} byte by byte"
        );
    }
}

#[test]
fn text_rows_keep_their_bytes_and_decode_their_keys() {
    let (sql, key, ty, input) = samples().remove(0);
    assert_eq!(
        split(sql, key, ty, input).unwrap(),
        rows(&[
            (b"1\ta\\tb\n", int(1)),
            (b"-2\t\\N\n", int(-2)),
            (b"3\tline\\\nbreak\n", int(3)),
            (b"\\x34\t\\\\\n", int(4)),
            (b"\\065\tz\n", int(5)),
            (b"  6 \t\xc3\xa9\xe2\x82\xac\n", int(6)),
        ])
    );
}

#[test]
fn crlf_rows_multibyte_keys_and_the_end_marker() {
    let (sql, key, ty, input) = samples().remove(1);
    assert_eq!(
        split(sql, key, ty, input).unwrap(),
        rows(&[
            ("x\tcl\u{e9}\r\n".as_bytes(), text("cl\u{e9}")),
            (b"y\t\\303\\251\r\n", text("\u{e9}")),
            ("z\t\u{1F600}\\t\r\n".as_bytes(), text("\u{1F600}\t")),
        ])
    );
}

#[test]
fn carriage_return_lines_and_escaped_carriage_returns() {
    let (sql, key, ty, input) = samples().remove(2);
    assert_eq!(
        split(sql, key, ty, input).unwrap(),
        rows(&[
            (b"a\r", text("a")),
            (b"b\\\rc\r", text("b\rc")),
            (b"\r", text(""))
        ])
    );
}

#[test]
fn csv_header_quotes_and_end_marker() {
    let (sql, key, ty, input) = samples().remove(3);
    assert_eq!(
        split(sql, key, ty, input).unwrap(),
        rows(&[
            (b"1,\"a,b\"\n", int(1)),
            (b"2,\"multi\r\nline \"\"quoted\"\"\"\n", int(2)),
            (b"\"3\",\n", int(3)),
            (b"4,\\.\n", int(4)),
        ])
    );
}

#[test]
fn csv_with_custom_delimiter_quote_and_escape() {
    let (sql, key, ty, input) = samples().remove(4);
    assert_eq!(
        split(sql, key, ty, input).unwrap(),
        rows(&[
            (b"x;'k\\'1'\r\n", text("k'1")),
            (b"'a;b\r\nc';'\xce\xbb;'\r\n", text("\u{3bb};")),
            (b";plain\r\n", text("plain")),
        ])
    );
}

#[test]
fn a_last_row_without_terminator_is_a_row() {
    let (sql, key, ty, input) = samples().remove(5);
    let got = split(sql, key, ty, input).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0, b"{A0EEBC999C0B4EF8BB6D6BB9BD380A12},x");
    assert!(matches!(got[1].1, KeyValue::Uuid(u) if u[15] == 0x12));
}

#[test]
fn empty_lines_are_rows_as_the_server_reads_them() {
    // Text: one empty field (a valid text key, an invalid int); CSV: one NULL field.
    assert_eq!(
        split("COPY t (k) FROM STDIN", 0, KeyType::Text, b"\n\n").unwrap(),
        rows(&[(b"\n", text("")), (b"\n", text(""))])
    );
    assert_eq!(
        code(split("COPY t (k) FROM STDIN", 0, KeyType::Int, b"1\n\n")),
        ("22P02", Some(2))
    );
    assert_eq!(
        code(split(
            "COPY t (k) FROM STDIN CSV",
            0,
            KeyType::Text,
            b"a\n\nb\n"
        )),
        ("23502", Some(2))
    );
    assert_eq!(
        code(split("COPY t (a, k) FROM STDIN", 1, KeyType::Text, b"\n")),
        ("22P04", Some(1))
    );
}

#[test]
fn null_keys_are_refused_with_not_null_violation() {
    assert_eq!(
        code(split("COPY t (k) FROM STDIN", 0, KeyType::Int, b"1\n\\N\n")),
        ("23502", Some(2))
    );
    let custom = "COPY t (k, v) FROM STDIN WITH NULL 'nil'";
    assert_eq!(
        code(split(custom, 0, KeyType::Text, b"nil\tx\n")),
        ("23502", Some(1))
    );
    assert_eq!(
        split(custom, 0, KeyType::Text, b"\\N\tx\n").unwrap(),
        rows(&[(b"\\N\tx\n", text("N"))]),
        "\\N is only a NULL when it is the marker"
    );
    let e = split("COPY t (k) FROM STDIN", 0, KeyType::Int, b"\\N\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "null value in column \"k\" violates not-null constraint"
    );
}

#[test]
fn force_null_and_force_not_null_apply_to_the_key() {
    let forced_null = "COPY t (k, v) FROM STDIN (FORMAT csv, FORCE_NULL (k))";
    assert_eq!(
        code(split(forced_null, 0, KeyType::Text, b"\"\",x\n")),
        ("23502", Some(1))
    );
    let not_null = "COPY t (k, v) FROM STDIN (FORMAT csv, NULL 'NA', FORCE_NOT_NULL (k))";
    assert_eq!(
        split(not_null, 0, KeyType::Text, b"NA,x\n").unwrap(),
        rows(&[(b"NA,x\n", text("NA"))])
    );
    let other_column = "COPY t (k, v) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (v))";
    assert_eq!(
        code(split(other_column, 0, KeyType::Text, b",x\n")),
        ("23502", Some(1))
    );
}

#[test]
fn bad_keys_report_type_line_and_sqlstate() {
    let e = split("COPY t (k) FROM STDIN", 0, KeyType::Int, b"1\n2\nx3\n").unwrap_err();
    assert_eq!((e.sqlstate(), e.line()), ("22P02", Some(3)));
    assert_eq!(
        e.to_string(),
        "invalid input syntax for type bigint: \"x3\""
    );
    assert_eq!(
        code(split(
            "COPY t (k) FROM STDIN",
            0,
            KeyType::Uuid,
            b"not-a-uuid\n"
        )),
        ("22P02", Some(1))
    );
    assert_eq!(
        code(split(
            "COPY t (k) FROM STDIN",
            0,
            KeyType::Text,
            b"\xff\xfe\n"
        )),
        ("22021", Some(1))
    );
    assert_eq!(
        code(split(
            "COPY t (k) FROM STDIN",
            0,
            KeyType::Text,
            b"a\\000b\n"
        )),
        ("22021", Some(1))
    );
    let default = "COPY t (k) FROM STDIN (FORMAT csv, DEFAULT 'D')";
    assert_eq!(
        code(split(default, 0, KeyType::Int, b"1\nD\n")),
        ("0A000", Some(2))
    );
}

#[test]
fn malformed_data_is_bad_copy_file_format() {
    let csv = "COPY t (k, v) FROM STDIN CSV";
    assert_eq!(
        code(split(
            csv,
            0,
            KeyType::Int,
            b"1,ok\n2,\"never closed\n3,x\n"
        )),
        ("22P04", Some(2))
    );
    assert_eq!(
        code(split(csv, 1, KeyType::Int, b"\"a\n")),
        ("22P04", Some(1)),
        "unterminated at CopyDone"
    );
    assert_eq!(
        code(split(csv, 0, KeyType::Int, b"1,a\r\n2,b\n")),
        ("22P04", Some(2))
    );
    assert_eq!(
        code(split(
            "COPY t (a, b, k) FROM STDIN",
            2,
            KeyType::Int,
            b"1\t2\n"
        )),
        ("22P04", Some(1))
    );
    assert_eq!(
        code(split(
            "COPY t (k) FROM STDIN",
            0,
            KeyType::Int,
            b"1\n\\.x\n"
        )),
        ("22P04", Some(2))
    );
    assert_eq!(
        code(split("COPY t (k) FROM STDIN", 0, KeyType::Int, b"1\n\\.")),
        ("22P04", Some(2))
    );
}

#[test]
fn data_after_the_end_marker_is_ignored_even_in_later_messages() {
    let copy = copy_from("COPY t (k) FROM STDIN");
    let s = RowSplitter::new(&copy, 0, KeyType::Int).unwrap();
    assert_eq!(
        run(s, &[b"1\n", b"\\.\n3\n", b"garbage \"\n"]).unwrap(),
        rows(&[(b"1\n", int(1))])
    );
    let s = RowSplitter::new(&copy, 0, KeyType::Int).unwrap();
    assert_eq!(
        run(s, &[b"1\n2", b"\\.\n3\n"]).unwrap(),
        rows(&[(b"1\n", int(1)), (b"2", int(2))]),
        "data before \\. on its line is the last row"
    );
}

#[test]
fn header_match_checks_names_once_and_is_never_forwarded() {
    let sql = "COPY t (id, \"Name\") FROM STDIN (FORMAT csv, HEADER match)";
    assert_eq!(
        split(sql, 0, KeyType::Int, b"id,Name\n7,x\n").unwrap(),
        rows(&[(b"7,x\n", int(7))])
    );
    let e = split(sql, 0, KeyType::Int, b"id,name\n7,x\n").unwrap_err();
    assert_eq!(
        (e.sqlstate(), e.to_string().as_str()),
        (
            "22P04",
            "column name mismatch in header line field 2: got \"name\", expected \"Name\""
        )
    );
    assert_eq!(
        code(split(sql, 0, KeyType::Int, b"id\n7,x\n")),
        ("22P04", Some(1))
    );
    assert_eq!(
        code(split(sql, 0, KeyType::Int, b"id,\n7,x\n")),
        ("22P04", Some(1))
    );
    // Without a column list the table's columns are needed.
    let bare = copy_from("COPY t FROM STDIN (FORMAT csv, HEADER match)");
    assert_eq!(
        RowSplitter::new(&bare, 0, KeyType::Int)
            .err()
            .map(|e| e.sqlstate()),
        Some("0A000")
    );
    let cols = ["id".to_string(), "Name".to_string()];
    let s = RowSplitter::for_table(&bare, &cols, "id", KeyType::Int).unwrap();
    assert_eq!(
        run(s, &[b"id,Name\n", b"8,y\n"]).unwrap(),
        rows(&[(b"8,y\n", int(8))])
    );
    // A header alone, or nothing at all, gives no rows.
    assert_eq!(split(sql, 0, KeyType::Int, b"id,Name\n").unwrap(), vec![]);
    assert_eq!(split(sql, 0, KeyType::Int, b"").unwrap(), vec![]);
}

#[test]
fn the_key_column_is_found_by_name_or_refused() {
    let copy = copy_from("COPY t (a, b) FROM STDIN");
    let table = ["k".to_string(), "a".to_string(), "b".to_string()];
    let e = RowSplitter::for_table(&copy, &table, "k", KeyType::Int)
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), "0A000", "{e}");
    assert!(RowSplitter::new(&copy, 2, KeyType::Int).is_err());
    let bare = copy_from("COPY t FROM STDIN");
    let s = RowSplitter::for_table(&bare, &table, "b", KeyType::Int).unwrap();
    assert_eq!(
        run(s, &[b"x\ty\t42\n"]).unwrap(),
        rows(&[(b"x\ty\t42\n", int(42))])
    );
}

#[test]
fn a_row_larger_than_the_limit_is_refused_before_it_is_all_buffered() {
    let copy = copy_from("COPY t (k) FROM STDIN");
    let mut s = RowSplitter::new(&copy, 0, KeyType::Text)
        .unwrap()
        .with_max_row_len(16);
    s.push(b"short\n");
    assert!(s.next_row().unwrap().is_some());
    s.push(&[b'x'; 10]);
    assert_eq!(s.next_row().unwrap(), None);
    s.push(&[b'x'; 10]);
    assert_eq!(s.next_row().map_err(|e| e.sqlstate()), Err("54000"));
}

#[test]
fn rows_count_and_line_numbers_skip_the_header() {
    let copy = copy_from("COPY t (k) FROM STDIN (HEADER)");
    let mut s = RowSplitter::new(&copy, 0, KeyType::Int).unwrap();
    s.push(b"k\n1\n2\n");
    let lines: Vec<u64> = std::iter::from_fn(|| s.next_row().unwrap())
        .map(|r| r.line)
        .collect();
    assert_eq!((lines, s.rows()), (vec![2, 3], 2));
}

fn route_mod(n: u16) -> impl FnMut(&KeyValue) -> Result<u16, String> {
    move |k: &KeyValue| match k {
        KeyValue::Int(v) => Ok((v.rem_euclid(i64::from(n))) as u16),
        other => Err(format!("unroutable {other:?}")),
    }
}

fn row(line: &str, key: i64) -> CopyRow {
    CopyRow {
        data: bytes::Bytes::copy_from_slice(line.as_bytes()),
        key: KeyValue::Int(key),
        line: 1,
    }
}

#[test]
fn batches_group_rows_per_shard_in_valid_copydata_frames() {
    let mut b = ShardBatches::new(3, 1 << 20, route_mod(3));
    for i in 0..10 {
        assert_eq!(b.push(&row(&format!("{i}\tv\n"), i)).unwrap(), None);
    }
    let frames = b.flush_all();
    assert_eq!(
        frames.iter().map(|f| (f.shard, f.rows)).collect::<Vec<_>>(),
        vec![(0, 4), (1, 3), (2, 3)]
    );
    let mut wire = BytesMut::new();
    for f in &frames {
        wire.extend_from_slice(&f.frame);
    }
    for want in [
        "0\tv\n3\tv\n6\tv\n9\tv\n",
        "1\tv\n4\tv\n7\tv\n",
        "2\tv\n5\tv\n8\tv\n",
    ] {
        let frame = split_frame(&mut wire).unwrap().unwrap();
        assert_eq!((frame.tag, frame.body()), (b'd', want.as_bytes()));
    }
    assert!(wire.is_empty());
    assert_eq!(
        (b.rows_per_shard(), b.total_rows()),
        (&[4u64, 3, 3][..], 10)
    );
    assert!(b.flush_all().is_empty());
}

#[test]
fn batches_flush_at_the_threshold_and_keep_order() {
    let mut b = ShardBatches::new(2, 64, route_mod(2));
    let mut sent: Vec<Vec<u8>> = vec![Vec::new(), Vec::new()];
    let mut frames = 0;
    for i in 0..1000 {
        if let Some(f) = b
            .push(&row(
                &format!("{i}\t{}\n", "x".repeat((i % 50) as usize)),
                i,
            ))
            .unwrap()
        {
            assert!(
                f.payload().len() >= 64 && f.payload().len() < 64 + 60,
                "{}",
                f.payload().len()
            );
            sent[usize::from(f.shard)].extend_from_slice(f.payload());
            frames += 1;
        }
    }
    for f in b.flush_all() {
        assert!(f.payload().len() < 64);
        sent[usize::from(f.shard)].extend_from_slice(f.payload());
    }
    assert!(frames > 100);
    for (shard, got) in sent.iter().enumerate() {
        let want: String = (0..1000)
            .filter(|i| i % 2 == shard as i64)
            .map(|i| format!("{i}\t{}\n", "x".repeat((i % 50) as usize)))
            .collect();
        assert_eq!(String::from_utf8_lossy(got), want);
    }
}

#[test]
fn batches_report_router_failures() {
    let mut b = ShardBatches::new(2, 1024, route_mod(3));
    assert_eq!(
        b.push(&row("5\n", 5)),
        Err(BatchError::NoSuchShard {
            shard: 2,
            shards: 2
        })
    );
    let text_row = CopyRow {
        data: bytes::Bytes::from_static(b"a\n"),
        key: KeyValue::Text("a".into()),
        line: 1,
    };
    assert!(matches!(b.push(&text_row), Err(BatchError::Route(m)) if m.contains("unroutable")));
    assert_eq!(b.total_rows(), 0);
}

#[test]
fn split_and_batch_end_to_end_by_vshard() {
    let copy = copy_from("COPY t (id, name) FROM STDIN WITH CSV HEADER");
    let mut s = RowSplitter::new(&copy, 0, KeyType::Int).unwrap();
    let mut b = ShardBatches::new(2, 32, |k: &KeyValue| {
        k.vshard(64).map(|v| (v % 2) as u16).ok_or("null")
    });
    let mut input = String::from("id,name\n");
    for i in 0..200 {
        input.push_str(&format!("{i},\"n,{i}\"\n"));
    }
    let mut per_shard: Vec<String> = vec![String::new(), String::new()];
    for chunk in input.as_bytes().chunks(37) {
        s.push(chunk);
        while let Some(r) = s.next_row().unwrap() {
            if let Some(f) = b.push(&r).unwrap() {
                per_shard[usize::from(f.shard)].push_str(std::str::from_utf8(f.payload()).unwrap());
            }
        }
    }
    s.finish();
    assert_eq!(s.next_row().unwrap(), None);
    for f in b.flush_all() {
        per_shard[usize::from(f.shard)].push_str(std::str::from_utf8(f.payload()).unwrap());
    }
    assert_eq!(b.total_rows(), 200);
    for (shard, text) in per_shard.iter().enumerate() {
        for line in text.lines() {
            let id: i64 = line.split(',').next().unwrap().parse().unwrap();
            assert_eq!(
                KeyValue::Int(id).vshard(64).unwrap() % 2,
                shard as u32,
                "{line}"
            );
        }
    }
    assert_eq!(
        per_shard.iter().map(|t| t.lines().count()).sum::<usize>(),
        200
    );
}
