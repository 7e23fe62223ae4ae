//! COPY FROM STDIN split by shard key, against real Postgres: one server holds databases `shard0` and `shard1`
//! standing in for two shards, and `whole`, which receives the client's data unsplit. A text COPY (int8 key) and a
//! CSV COPY (text key), 10,000 rows each with tabs, quotes, newlines, backslashes and multibyte text in their fields,
//! are cut into CopyData messages (random sizes; one row per message), split with `vshard % 2` and sent to the
//! shards with the statement `CopyFrom::shard_sql` renders. Then each shard's own `vshard_sql` expression must
//! agree with where every row sits, and the shards' union must equal both the generated rows and `whole`.
//! A second part feeds awkward inputs (line-ending styles, end markers, escapes, quoting corners) both ways and
//! requires the same rows or an error both ways: the splitter must find rows where the server finds them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::raw::{render, Raw};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};
use shardpool::sharding::copy::{
    CopyError, CopyFrom, CopyStatement, RowSplitter, ShardBatches, ShardFrame,
};
use shardpool::sharding::hash::vshard_sql;
use shardpool::sharding::key::{KeyType, KeyValue};
use tokio_postgres::NoTls;

const USER: &str = "copier";
const SHARDS: [&str; 2] = ["shard0", "shard1"];
const WHOLE: &str = "whole";
const VSHARDS: u32 = 64;
const ROWS: usize = 10_000;

const TABLES: &str = "CREATE TABLE accounts (id int8 PRIMARY KEY, name text, note text); \
                      CREATE TABLE tags (k text PRIMARY KEY, n int8, note text); \
                      CREATE TABLE edge (k text, v text)";

/// A row as the databases return it: key, then the other two columns as text.
type Row = (String, Option<String>, Option<String>);

#[tokio::test]
async fn copy_split_by_vshard_lands_where_each_shard_says() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgServer::start_primary(&ServerOptions::default()).expect("start postgres");
        pg.create_user(USER, "", AuthMethod::Trust).unwrap();
        for db in SHARDS.iter().chain([&WHOLE]) {
            pg.create_database(db, USER).unwrap();
        }
        pg
    })
    .await
    .unwrap();
    let port = pg.port();
    for db in SHARDS.iter().chain([&WHOLE]) {
        Raw::connect(port, USER, "", db).await.query(TABLES).await;
    }
    let mut rng = StdRng::seed_from_u64(0xC0FF_EE00);

    // Text format, int8 key, the key in the middle of a column list, random message sizes.
    let accounts = gen_rows(&mut rng, false, |rng, i| {
        let id = (i as i64 - 5_000) * 1_000_003 + rng.gen_range(0..1_000_003);
        id.to_string()
    });
    let mut text = Vec::new();
    for (id, name, note) in &accounts {
        let fields = [note, &Some(id.clone()), name].map(|f| encode_text(&mut rng, f.as_deref()));
        text.extend_from_slice(fields.join("\t").as_bytes());
        text.push(b'\n');
    }
    let chunks = random_chunks(&mut rng, &text);
    let sql = "COPY accounts (note, id, name) FROM STDIN";
    let counts = split_and_load(port, sql, None, KeyType::Int, &chunks)
        .await
        .unwrap();
    check_table(
        &pg,
        "accounts",
        "id",
        KeyType::Int,
        "id::text, name, note",
        &accounts,
        sql,
        &text,
        counts,
    )
    .await;

    // CSV with a header, text key, pgx-style one row per message, the old option syntax.
    let tags = gen_rows(&mut rng, true, |rng, i| {
        if i == 0 {
            return String::new(); // the empty string is a key, not NULL
        }
        format!("{}#{i}", awkward(rng, 4))
    });
    let mut csv: Vec<Vec<u8>> = vec![b"k,n,note\n".to_vec()];
    for (k, n, note) in &tags {
        let fields =
            [Some(k.clone()), n.clone(), note.clone()].map(|f| encode_csv(&mut rng, f.as_deref()));
        csv.push(format!("{}\n", fields.join(",")).into_bytes());
    }
    let chunks: Vec<&[u8]> = csv.iter().map(Vec::as_slice).collect();
    let sql = "COPY tags FROM STDIN WITH CSV HEADER";
    let columns = ["k", "n", "note"].map(String::from);
    let counts = split_and_load(port, sql, Some(&columns), KeyType::Text, &chunks)
        .await
        .unwrap();
    check_table(
        &pg,
        "tags",
        "k",
        KeyType::Text,
        "k, n::text, note",
        &tags,
        sql,
        &csv.concat(),
        counts,
    )
    .await;

    concatenated_copy_to_sends_one_header_per_shard(port).await;
    awkward_inputs_split_where_the_server_splits(port).await;
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// ROWS rows `(key, second, third)` with unique keys from `key`; the second column is int8 text when `int_second`
/// and awkward text otherwise, the third awkward text; both are sometimes NULL.
fn gen_rows(
    rng: &mut StdRng,
    int_second: bool,
    mut key: impl FnMut(&mut StdRng, usize) -> String,
) -> Vec<Row> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    while rows.len() < ROWS {
        let k = key(rng, rows.len());
        if !seen.insert(k.clone()) {
            continue;
        }
        let second = match rng.gen_range(0..10) {
            0 => None,
            _ if int_second => Some(rng.gen_range(i64::MIN..=i64::MAX).to_string()),
            1..=3 => Some(rng.gen_range(-99..100).to_string()),
            _ => Some(awkward(rng, 6)),
        };
        let third = (rng.gen_range(0..8) != 0).then(|| awkward(rng, 10));
        rows.push((k, second, third));
    }
    rows
}

/// Text made of the pieces COPY formats must escape or quote, and ones that look like markers.
fn awkward(rng: &mut StdRng, max_pieces: usize) -> String {
    const PIECES: &[&str] = &[
        "a", "Zz", "42", " ", "\t", "\n", "\r", "\r\n", "\\", "\\N", "\\.", "\"", "\"\"", "'", ",",
        ";", "NULL", "é", "€", "😀", "日本", "\u{7f}", "x\\ty",
    ];
    (0..rng.gen_range(0..=max_pieces))
        .map(|_| *PIECES.choose(rng).unwrap())
        .collect()
}

/// COPY text format; escapes vary (`\t` or `\011`, a letter or `\x61`) as different clients write them.
fn encode_text(rng: &mut StdRng, v: Option<&str>) -> String {
    let Some(v) = v else { return "\\N".to_string() };
    let mut out = String::new();
    for c in v.chars() {
        let octal = rng.gen_bool(0.2);
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' if octal => out.push_str("\\011"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str(if octal { "\\x0a" } else { "\\n" }),
            '\r' => out.push_str("\\r"),
            'a' if octal => out.push_str("\\x61"),
            'é' if octal => out.push_str("\\303\\251"),
            c => out.push(c),
        }
    }
    out
}

/// CSV: NULL is an empty unquoted field; a value is quoted when it must be, and sometimes when it need not be.
fn encode_csv(rng: &mut StdRng, v: Option<&str>) -> String {
    let Some(v) = v else { return String::new() };
    let must = v.is_empty() || v.contains([',', '"', '\n', '\r']) || v.starts_with("\\.");
    if must || rng.gen_bool(0.3) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Cuts `data` into messages of very different sizes, from one byte to more than psql's 8 KiB.
fn random_chunks<'a>(rng: &mut StdRng, mut data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    while !data.is_empty() {
        let max = [3, 100, 8192, 20_000][rng.gen_range(0..4)];
        let (head, tail) = data.split_at(rng.gen_range(1..=max).min(data.len()));
        chunks.push(head);
        data = tail;
    }
    chunks
}

fn parse_from(sql: &str) -> CopyFrom {
    match CopyStatement::parse(sql) {
        Ok(Some(CopyStatement::Split(f))) => f,
        other => panic!("{sql}: {other:?}"),
    }
}

/// Why a load failed: the splitter refused the data, or a shard did (its SQLSTATE).
#[derive(Debug, PartialEq)]
enum LoadError {
    Splitter(CopyError),
    Shard(String),
}

/// Splits `chunks` (the client's CopyData payloads) by `vshard % 2` and streams each shard its frames as they fill,
/// one connection and one `COPY ... FROM STDIN` per shard, as the session would. Returns each shard's `COPY n`.
async fn split_and_load(
    port: u16,
    sql: &str,
    table_columns: Option<&[String]>,
    key_type: KeyType,
    chunks: &[&[u8]],
) -> Result<[u64; 2], LoadError> {
    let copy = parse_from(sql);
    let mut splitter = match table_columns {
        Some(cols) => RowSplitter::for_table(&copy, cols, &cols[0], key_type).unwrap(),
        None => RowSplitter::new(&copy, 1, key_type).unwrap(),
    };
    let route = |k: &KeyValue| k.vshard(VSHARDS).map(|v| (v % 2) as u16).ok_or("NULL key");
    let mut batches = ShardBatches::new(2, 64 * 1024, route);
    let mut shards = Vec::new();
    for db in SHARDS {
        let mut c = Raw::connect(port, USER, "", db).await;
        c.send_query(&copy.shard_sql()).await;
        let (tag, body) = c.next().await;
        assert_eq!(tag, b'G', "{}", render(tag, &body));
        shards.push(c);
    }
    let mut send = Vec::<ShardFrame>::new();
    let mut failure = None;
    'input: for (i, chunk) in chunks.iter().enumerate() {
        splitter.push(chunk);
        if i + 1 == chunks.len() {
            splitter.finish();
        }
        loop {
            match splitter.next_row() {
                Ok(Some(row)) => send.extend(batches.push(&row).unwrap()),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break 'input;
                }
            }
        }
        for f in send.drain(..) {
            shards[usize::from(f.shard)].send(b'd', f.payload()).await;
        }
    }
    if chunks.is_empty() {
        splitter.finish();
        assert_eq!(splitter.next_row().map_err(|e| e.to_string()), Ok(None));
    }
    for f in batches.flush_all() {
        shards[usize::from(f.shard)].send(b'd', f.payload()).await;
    }
    let mut counts = [0u64; 2];
    let mut shard_error = None;
    for (i, c) in shards.iter_mut().enumerate() {
        match &failure {
            Some(_) => c.send(b'f', b"splitter refused the data\0").await,
            None => c.send(b'c', b"").await,
        }
        loop {
            let (tag, body) = c.next().await;
            match tag {
                b'C' => counts[i] = render(tag, &body)["C:COPY ".len()..].parse().unwrap(),
                b'E' => shard_error = Some(render(tag, &body)),
                b'Z' => break,
                _ => {}
            }
        }
    }
    if let Some(e) = failure {
        return Err(LoadError::Splitter(e));
    }
    if let Some(e) = shard_error {
        return Err(LoadError::Shard(e));
    }
    assert_eq!(counts.to_vec(), batches.rows_per_shard(), "{sql}");
    Ok(counts)
}

/// Runs `sql` with `data` unsplit on `db`, in 8 KiB messages as psql sends them: `COPY n` or the error's SQLSTATE.
async fn load_direct(port: u16, db: &str, sql: &str, data: &[u8]) -> Result<u64, String> {
    let mut c = Raw::connect(port, USER, "", db).await;
    c.send_query(sql).await;
    let (tag, body) = c.next().await;
    assert_eq!(tag, b'G', "{}", render(tag, &body));
    for part in data.chunks(8192) {
        c.send(b'd', part).await;
    }
    c.send(b'c', b"").await;
    let mut result = Err("no reply".to_string());
    loop {
        let (tag, body) = c.next().await;
        match tag {
            b'C' => result = Ok(render(tag, &body)["C:COPY ".len()..].parse().unwrap()),
            b'E' => result = Err(render(tag, &body)),
            b'Z' => return result,
            _ => {}
        }
    }
}

/// The rows of `query` (three text columns, the first never NULL), sorted.
async fn fetch(port: u16, db: &str, query: &str) -> Vec<Row> {
    let (client, conn) =
        tokio_postgres::connect(&format!("postgres://{USER}@127.0.0.1:{port}/{db}"), NoTls)
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let rows = client.query(query, &[]).await.unwrap();
    drop(client);
    driver.await.unwrap().unwrap();
    let mut rows: Vec<Row> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    rows.sort();
    rows
}

/// Every row on the shard its own vshard expression names; shards disjoint; union = generated rows = `whole`.
#[allow(clippy::too_many_arguments)]
async fn check_table(
    pg: &PgServer,
    table: &str,
    key: &str,
    key_type: KeyType,
    columns: &str,
    generated: &[Row],
    sql: &str,
    data: &[u8],
    counts: [u64; 2],
) {
    let port = pg.port();
    assert_eq!(
        load_direct(port, WHOLE, sql, data).await,
        Ok(ROWS as u64),
        "{table} unsplit"
    );
    assert_eq!(counts.iter().sum::<u64>(), ROWS as u64);
    assert!(
        counts.iter().all(|&n| n > ROWS as u64 / 3),
        "{table}: lopsided split {counts:?}"
    );
    let vshard = vshard_sql(key, key_type, VSHARDS);
    let mut union = BTreeMap::new();
    for (i, db) in SHARDS.iter().enumerate() {
        let misplaced = pg
            .sql(
                db,
                &format!("SELECT count(*) FROM {table} WHERE {vshard} % 2 <> {i}"),
            )
            .unwrap();
        assert_eq!(misplaced, "0", "{table} rows on {db} that belong elsewhere");
        let rows = fetch(port, db, &format!("SELECT {columns} FROM {table}")).await;
        assert_eq!(rows.len() as u64, counts[i], "{table} on {db}");
        for (k, a, b) in rows {
            assert!(
                union.insert(k, (a, b)).is_none(),
                "{table}: a key on both shards"
            );
        }
    }
    let expected: BTreeMap<_, _> = generated
        .iter()
        .map(|(k, a, b)| (k.clone(), (a.clone(), b.clone())))
        .collect();
    assert_eq!(union.len(), ROWS);
    assert!(
        union == expected,
        "{table}: the shards' union differs from the generated rows"
    );
    let mut generated = generated.to_vec();
    generated.sort();
    let whole = fetch(port, WHOLE, &format!("SELECT {columns} FROM {table}")).await;
    assert!(
        whole == generated,
        "{table}: the unsplit load differs from the generated rows"
    );
}

/// `COPY ... TO STDOUT` runs unchanged on every shard; with HEADER each sends the header as its own first CopyData
/// message and then one message per row, so the session can drop the extra headers by position.
async fn concatenated_copy_to_sends_one_header_per_shard(port: u16) {
    let sql = "COPY accounts (id, name) TO STDOUT WITH (FORMAT csv, HEADER)";
    let Ok(Some(CopyStatement::Concatenate(to))) = CopyStatement::parse(sql) else {
        panic!("{sql} is not a concatenation")
    };
    let mut total = 0;
    for db in SHARDS {
        let mut c = Raw::connect(port, USER, "", db).await;
        c.send_query(&to.sql).await;
        let mut messages = Vec::new();
        loop {
            let (tag, body) = c.next().await;
            match tag {
                b'd' => messages.push(body),
                b'Z' => break,
                b'E' => panic!("{}", render(tag, &body)),
                _ => {}
            }
        }
        assert_eq!(&messages[0][..], b"id,name\n", "{db}");
        total += messages.len() - 1;
    }
    assert_eq!(total, ROWS);
}

/// Inputs at the corners of COPY's line and field rules, each loaded unsplit into `whole.edge` and split into the
/// shards' `edge`: the same rows must arrive, or both ways must fail.
async fn awkward_inputs_split_where_the_server_splits(port: u16) {
    let cases: &[(&str, &[u8])] = &[
        (
            "COPY edge FROM STDIN",
            b"a\tb\r\nc\td\r\n\\.\r\nignored\r\n",
        ),
        ("COPY edge FROM STDIN", b"a\tb\rc\td\r"),
        ("COPY edge FROM STDIN", b"a\tb\nc\td\r\n"),
        (
            "COPY edge FROM STDIN",
            b"k\\\nnext\tv\\\n\nk2\t\\x41\\101\n",
        ),
        ("COPY edge FROM STDIN", b"x\ty\\.\nz\tw\n"),
        ("COPY edge FROM STDIN", b"x\ty\n\\."),
        ("COPY edge FROM STDIN", b"x\t\\N\n\\N\ty\n"),
        ("COPY edge FROM STDIN", b"last\tno newline"),
        ("COPY edge FROM STDIN", b"x\ty\\"),
        ("COPY edge FROM STDIN", b"\n"),
        (
            "COPY edge FROM STDIN",
            b"a\\\tb\tc\n\xc3\xa9\t\xf0\x9f\x98\x80\n",
        ),
        (
            "COPY edge FROM STDIN CSV",
            b"\"a\nb\",1\n\"c\r\n\\.\",2\n\\.\nignored\n",
        ),
        ("COPY edge FROM STDIN CSV", b"ab\"c,d\"e,f\nx\"\"y,\"\"\n"),
        ("COPY edge FROM STDIN CSV", b"\\.,x\n\\.\"a\n"),
        ("COPY edge FROM STDIN CSV", b"a,b\r\n\\.\nc,d\r\n"),
        ("COPY edge FROM STDIN CSV", b"a,\"open\nb,c\n"),
        ("COPY edge FROM STDIN CSV", b"\"\",\n"),
        ("COPY edge FROM STDIN CSV", b",x\n"),
        (
            "COPY edge FROM STDIN (FORMAT csv, QUOTE '''', ESCAPE '\\')",
            b"'a\\'b\n',1\n'c\\\\',2\n",
        ),
        (
            "COPY edge FROM STDIN (FORMAT csv, HEADER match)",
            b"k,v\n1,2\n",
        ),
        (
            "COPY edge FROM STDIN (FORMAT csv, HEADER match)",
            b"k,w\n1,2\n",
        ),
        ("COPY edge FROM STDIN (DELIMITER 'A')", b"a\\x4Ab\n"),
        ("COPY edge FROM STDIN", b"a\\000\tb\n"),
        ("COPY edge FROM STDIN", b"only one field\n"),
    ];
    let columns = ["k", "v"].map(String::from);
    for (sql, data) in cases {
        let label = format!("{sql} {:?}", String::from_utf8_lossy(data));
        for db in SHARDS.iter().chain([&WHOLE]) {
            Raw::connect(port, USER, "", db)
                .await
                .query("TRUNCATE edge")
                .await;
        }
        let direct = load_direct(port, WHOLE, sql, data).await;
        // One byte per message: the hardest cut for the splitter.
        let chunks: Vec<&[u8]> = data.chunks(1).collect();
        let split = split_and_load(port, sql, Some(&columns), KeyType::Text, &chunks).await;
        match (&direct, &split) {
            (Ok(n), Ok(counts)) => {
                assert_eq!(*n, counts.iter().sum::<u64>(), "{label}");
                let query = "SELECT k, v, NULL::text FROM edge";
                let mut union = fetch(port, SHARDS[0], query).await;
                union.extend(fetch(port, SHARDS[1], query).await);
                union.sort();
                assert_eq!(union, fetch(port, WHOLE, query).await, "{label}");
            }
            (Err(d), Err(s)) => {
                let split_code = match s {
                    LoadError::Splitter(e) => format!("E:C{}", e.sqlstate()),
                    LoadError::Shard(e) => e.clone(),
                };
                assert_eq!(*d, split_code, "{label}: both fail, with the same SQLSTATE");
            }
            // A NULL key is fine for an unsharded text column but has no shard: the one expected disagreement.
            (Ok(_), Err(LoadError::Splitter(e))) if e.sqlstate() == "23502" => {}
            _ => panic!("{label}: direct {direct:?}, split {split:?}"),
        }
        eprintln!(
            "{label}: direct {direct:?}, split {:?}",
            split.as_ref().map_err(|e| format!("{e:?}"))
        );
    }
}
