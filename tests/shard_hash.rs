//! The Rust port of Postgres' hash functions against a real server, in bulk: if they ever disagree, the proxy routes
//! a row to one shard while that shard's own vshard expression (row filters, ownership checks) says another.
//! Values are sent as arrays and hashes come back in one result set per type, so over half a million comparisons take seconds.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};
use shardpool::sharding::hash::{
    hash_int8_extended, hash_text_extended, hash_uuid_extended, vshard_of, vshard_sql,
};
use shardpool::sharding::key::{KeyType, KeyValue};
use tokio_postgres::{Client, NoTls};

/// Zero (the seed shardpool uses), seeds touching only the high or the low word, and extremes.
const SEEDS: &[u64] = &[0, 1, 42, 1 << 32, 0x0123_4567_89ab_cdef, 1 << 63, u64::MAX];

const VSHARDS: &[u32] = &[1, 7, 1024, 4096, u32::MAX];

const SEEDS_SQL: &str = "unnest($2::int8[]) AS s";

#[tokio::test]
async fn rust_hashes_and_vshards_equal_the_servers() {
    let started = Instant::now();
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgServer::start_primary(&ServerOptions::default()).expect("start postgres");
        pg.create_user("hasher", "", AuthMethod::Trust).unwrap();
        pg.create_database("hashdb", "hasher").unwrap();
        pg
    })
    .await
    .unwrap();
    let (client, connection) = tokio_postgres::connect(&pg.url("hasher", "", "hashdb"), NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(encoding, "UTF8", "text keys are hashed as UTF-8 bytes");

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let ints = int_values(&mut rng);
    let texts = text_values(&mut rng);
    let uuids = uuid_values(&mut rng);

    let mut counts = Vec::new();
    counts.push(("int8 x seeds", check_ints(&client, &ints).await));
    counts.push(("int8 server-made", check_server_ints(&client).await));
    counts.push(("text x seeds", check_texts(&client, &texts).await));
    counts.push(("text server-made", check_server_texts(&client).await));
    counts.push(("text collations", check_collations(&client, &texts).await));
    counts.push(("uuid x seeds", check_uuids(&client, &uuids).await));
    counts.push(("uuid server-made", check_server_uuids(&client).await));
    counts.push((
        "vshard_sql",
        check_vshard_sql(&client, &ints, &texts, &uuids).await,
    ));
    counts.push(("nulls", check_nulls(&client).await));
    counts.push(("identifiers", check_identifiers(&client).await));

    drop(client);
    let _ = driver.await;
    eprintln!("compared {counts:?} in {:?}", started.elapsed());
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// Edges (every power of two and its neighbours, int2/int4/int8 bounds) and 10,000 random values of every magnitude.
fn int_values(rng: &mut StdRng) -> Vec<i64> {
    let mut v = vec![
        0,
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        i64::MAX - 1,
        i32::MIN.into(),
        i32::MAX.into(),
        i16::MIN.into(),
        i16::MAX.into(),
        u32::MAX.into(),
        -i64::from(u32::MAX),
    ];
    for bit in 0..63 {
        let p = 1i64 << bit;
        v.extend([p, p - 1, p + 1, -p, -p - 1, -p + 1]);
    }
    for _ in 0..10_000 {
        v.push(rng.gen::<i64>() >> rng.gen_range(0..64));
    }
    for _ in 0..2_000 {
        v.push(rng.gen::<i32>().into());
        v.push(rng.gen::<i16>().into());
    }
    v
}

/// Every byte length 0..=300 many times over (so every tail length and block count), with non-ASCII bytes in every
/// position of the tail, plus long strings.
fn text_values(rng: &mut StdRng) -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "a",
        "42",
        " ",
        "'",
        "\"",
        "\\",
        "é",
        "€",
        "🦀",
        "Grüße, 世界 🦀",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for len in 0..=40 {
        v.push("x".repeat(len));
        v.push("\u{7f}".repeat(len));
        for _ in 0..150 {
            v.push(random_text(rng, len));
        }
    }
    for len in 41..=300 {
        for _ in 0..16 {
            v.push(random_text(rng, len));
        }
    }
    for _ in 0..200 {
        let len = rng.gen_range(301..10_000);
        v.push(random_text(rng, len));
    }
    v
}

/// A string of exactly `len` UTF-8 bytes, mixing 1- to 4-byte characters.
fn random_text(rng: &mut StdRng, len: usize) -> String {
    const POOL: &[char] = &[
        'a',
        'Z',
        '0',
        ' ',
        '~',
        'é',
        'ß',
        'ÿ',
        '€',
        '世',
        '\u{ffff}',
        '🦀',
        '\u{10ffff}',
    ];
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let c = POOL[rng.gen_range(0..POOL.len())];
        if s.len() + c.len_utf8() <= len {
            s.push(c);
        }
    }
    s
}

fn uuid_values(rng: &mut StdRng) -> Vec<[u8; 16]> {
    let mut v = vec![[0u8; 16], [0xff; 16], std::array::from_fn(|i| i as u8)];
    for bit in 0..128 {
        let mut u = [0u8; 16];
        u[bit / 8] = 0x80 >> (bit % 8);
        v.push(u);
        v.push(u.map(|b| !b));
    }
    for _ in 0..10_000 {
        v.push(rng.gen());
    }
    v
}

fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn parse_uuid(text: &str) -> [u8; 16] {
    match KeyType::Uuid.parse_text(text).unwrap() {
        KeyValue::Uuid(u) => u,
        other => panic!("{other:?}"),
    }
}

fn seeds_param() -> Vec<i64> {
    SEEDS.iter().map(|&s| s as i64).collect()
}

/// Every value under every seed; int4- and int2-range values are also hashed by hashint4extended and
/// hashint2extended, which the int8 fold must reproduce.
async fn check_ints(client: &Client, ints: &[i64]) -> usize {
    let sql = format!(
        "SELECT v, s, hashint8extended(v, s),
                CASE WHEN v BETWEEN -2147483648 AND 2147483647 THEN hashint4extended(v::int4, s) END,
                CASE WHEN v BETWEEN -32768 AND 32767 THEN hashint2extended(v::int2, s) END
         FROM unnest($1::int8[]) AS v, {SEEDS_SQL}"
    );
    let rows = client.query(&sql, &[&ints, &seeds_param()]).await.unwrap();
    assert_eq!(rows.len(), ints.len() * SEEDS.len());
    let (mut narrow4, mut narrow2) = (0, 0);
    for row in &rows {
        let (v, seed): (i64, i64) = (row.get(0), row.get(1));
        let want = hash_int8_extended(v, seed as u64) as i64;
        assert_eq!(row.get::<_, i64>(2), want, "hashint8extended({v}, {seed})");
        if let Some(h4) = row.get::<_, Option<i64>>(3) {
            assert_eq!(h4, want, "hashint4extended({v}, {seed})");
            narrow4 += 1;
        }
        if let Some(h2) = row.get::<_, Option<i64>>(4) {
            assert_eq!(h2, want, "hashint2extended({v}, {seed})");
            narrow2 += 1;
        }
    }
    assert!(narrow4 > 10_000 && narrow2 > 10_000, "{narrow4} {narrow2}");
    rows.len() + narrow4 + narrow2
}

/// Values the server makes itself: a dense range around zero and 64-bit pseudo-random values.
async fn check_server_ints(client: &Client) -> usize {
    let rows = client
        .query(
            "SELECT v, hashint8extended(v, 0)
             FROM (SELECT generate_series(-20000, 20000)
                   UNION ALL SELECT hashint8extended(i, 99) FROM generate_series(1, 10000) AS i) AS t(v)",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let v: i64 = row.get(0);
        assert_eq!(row.get::<_, i64>(1), hash_int8_extended(v, 0) as i64, "{v}");
    }
    rows.len()
}

async fn check_texts(client: &Client, texts: &[String]) -> usize {
    let sql = format!(
        "SELECT i, s, hashtextextended(t, s) FROM unnest($1::text[]) WITH ORDINALITY AS x(t, i), {SEEDS_SQL}"
    );
    let rows = client.query(&sql, &[&texts, &seeds_param()]).await.unwrap();
    assert_eq!(rows.len(), texts.len() * SEEDS.len());
    for row in &rows {
        let (i, seed): (i64, i64) = (row.get(0), row.get(1));
        let t = &texts[i as usize - 1];
        assert_eq!(
            row.get::<_, i64>(2),
            hash_text_extended(t.as_bytes(), seed as u64) as i64,
            "hashtextextended({t:?}, {seed}), {} bytes",
            t.len()
        );
    }
    rows.len()
}

/// md5-based strings of lengths 0..=96, some with multibyte characters appended.
async fn check_server_texts(client: &Client) -> usize {
    let rows = client
        .query(
            "SELECT t, hashtextextended(t, 0)
             FROM (SELECT substr(repeat(md5(i::text), 3), 1, i % 97)
                          || CASE WHEN i % 3 = 0 THEN 'é世🦀' ELSE '' END
                   FROM generate_series(1, 10000) AS i) AS x(t)",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let t: String = row.get(0);
        assert_eq!(
            row.get::<_, i64>(1),
            hash_text_extended(t.as_bytes(), 0) as i64,
            "{t:?}"
        );
    }
    rows.len()
}

/// Deterministic collations other than the database default (C, and libc/ICU ones when this server has them) hash
/// the bytes too, so a text key column may use them.
async fn check_collations(client: &Client, texts: &[String]) -> usize {
    let collations: Vec<String> = client
        .query(
            "(SELECT collname FROM pg_collation WHERE collname = 'C')
             UNION ALL (SELECT collname FROM pg_collation WHERE collprovider = 'c' AND collisdeterministic
                        AND collname NOT IN ('C', 'POSIX', 'default', 'ucs_basic') ORDER BY collname LIMIT 1)
             UNION ALL (SELECT collname FROM pg_collation WHERE collprovider = 'i' AND collisdeterministic
                        ORDER BY collname = 'und-x-icu' DESC, collname LIMIT 1)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sample = &texts[..2_000];
    let mut n = 0;
    for coll in &collations {
        let sql = format!(
            "SELECT i, hashtextextended(t COLLATE \"{coll}\", 0)
             FROM unnest($1::text[]) WITH ORDINALITY AS x(t, i)"
        );
        for row in client.query(&sql, &[&sample]).await.unwrap() {
            let i: i64 = row.get(0);
            let t = &sample[i as usize - 1];
            assert_eq!(
                row.get::<_, i64>(1),
                hash_text_extended(t.as_bytes(), 0) as i64,
                "{coll}: {t:?}"
            );
            n += 1;
        }
    }
    eprintln!("deterministic collations checked: {collations:?}");
    n
}

async fn check_uuids(client: &Client, uuids: &[[u8; 16]]) -> usize {
    let texts: Vec<String> = uuids.iter().map(uuid_text).collect();
    let sql = format!(
        "SELECT i, s, uuid_hash_extended(u, s)
         FROM unnest($1::text[]::uuid[]) WITH ORDINALITY AS x(u, i), {SEEDS_SQL}"
    );
    let rows = client.query(&sql, &[&texts, &seeds_param()]).await.unwrap();
    assert_eq!(rows.len(), uuids.len() * SEEDS.len());
    for row in &rows {
        let (i, seed): (i64, i64) = (row.get(0), row.get(1));
        let u = &uuids[i as usize - 1];
        assert_eq!(
            row.get::<_, i64>(2),
            hash_uuid_extended(u, seed as u64) as i64,
            "uuid_hash_extended('{}', {seed})",
            uuid_text(u)
        );
    }
    rows.len()
}

async fn check_server_uuids(client: &Client) -> usize {
    let rows = client
        .query(
            "SELECT u::text, uuid_hash_extended(u, 0) FROM (SELECT gen_random_uuid() FROM generate_series(1, 10000)) AS x(u)",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let text: String = row.get(0);
        assert_eq!(
            row.get::<_, i64>(1),
            hash_uuid_extended(&parse_uuid(&text), 0) as i64,
            "{text}"
        );
    }
    rows.len()
}

/// The server evaluating `vshard_sql` agrees with `KeyValue::vshard` for every key type and vshard count, on int2
/// and int4 columns as well, and with NULL keys mixed in (NULL in SQL, None in Rust).
async fn check_vshard_sql(
    client: &Client,
    ints: &[i64],
    texts: &[String],
    uuids: &[[u8; 16]],
) -> usize {
    let with_nulls = |n: usize| (0..n).map(|i| i % 500 != 7);
    let ints: Vec<Option<i64>> = ints
        .iter()
        .zip(with_nulls(ints.len()))
        .map(|(v, keep)| keep.then_some(*v))
        .collect();
    let texts: Vec<Option<&str>> = texts
        .iter()
        .zip(with_nulls(texts.len()))
        .map(|(t, keep)| keep.then_some(t.as_str()))
        .collect();
    let uuid_texts: Vec<Option<String>> = uuids
        .iter()
        .zip(with_nulls(uuids.len()))
        .map(|(u, keep)| keep.then(|| uuid_text(u)))
        .collect();

    let int_keys: Vec<KeyValue> = ints
        .iter()
        .map(|v| v.map_or(KeyValue::Null, KeyValue::Int))
        .collect();
    let text_keys: Vec<KeyValue> = texts
        .iter()
        .map(|t| t.map_or(KeyValue::Null, |t| KeyValue::Text(t.to_string())))
        .collect();
    let uuid_keys: Vec<KeyValue> = uuid_texts
        .iter()
        .map(|t| {
            t.as_deref()
                .map_or(KeyValue::Null, |t| KeyValue::Uuid(parse_uuid(t)))
        })
        .collect();

    let mut n = 0;
    for &vshards in VSHARDS {
        let cases: [Case; 5] = [
            (
                "SELECT k, i FROM unnest($1::int8[]) WITH ORDINALITY AS x(k, i)",
                KeyType::Int,
                &int_keys,
                &ints,
                |_| true,
            ),
            (
                "SELECT k::int4, i FROM unnest($1::int8[]) WITH ORDINALITY AS x(k, i)
                 WHERE k IS NULL OR k BETWEEN -2147483648 AND 2147483647",
                KeyType::Int,
                &int_keys,
                &ints,
                |k| !matches!(k, KeyValue::Int(v) if i32::try_from(*v).is_err()),
            ),
            (
                "SELECT k::int2, i FROM unnest($1::int8[]) WITH ORDINALITY AS x(k, i)
                 WHERE k IS NULL OR k BETWEEN -32768 AND 32767",
                KeyType::Int,
                &int_keys,
                &ints,
                |k| !matches!(k, KeyValue::Int(v) if i16::try_from(*v).is_err()),
            ),
            (
                "SELECT k, i FROM unnest($1::text[]) WITH ORDINALITY AS x(k, i)",
                KeyType::Text,
                &text_keys,
                &texts,
                |_| true,
            ),
            (
                "SELECT k, i FROM unnest($1::text[]::uuid[]) WITH ORDINALITY AS x(k, i)",
                KeyType::Uuid,
                &uuid_keys,
                &uuid_texts,
                |_| true,
            ),
        ];
        for (source, key_type, keys, param, fits) in cases {
            let sql = format!(
                "SELECT i, {} FROM ({source}) AS t(key, i)",
                vshard_sql("key", key_type, vshards)
            );
            let rows = client.query(&sql, &[param]).await.unwrap();
            let expected = keys.iter().filter(|k| fits(k)).count();
            assert_eq!(rows.len(), expected, "{sql}");
            assert!(
                expected > 2_000 && keys.contains(&KeyValue::Null),
                "{sql}: {expected}"
            );
            for row in &rows {
                let i: i64 = row.get(0);
                let key = &keys[i as usize - 1];
                let server = row.get::<_, Option<i64>>(1);
                assert_eq!(
                    server,
                    key.vshard(vshards).map(i64::from),
                    "{sql} for {key:?}"
                );
                if let (KeyValue::Int(v), Some(s)) = (key, server) {
                    assert_eq!(s, i64::from(vshard_of(hash_int8_extended(*v, 0), vshards)));
                }
            }
            n += rows.len();
        }
    }
    n
}

/// SQL producing (key, ordinal) rows, the key type, the keys by ordinal, the array parameter, which keys the SQL keeps.
type Case<'a> = (
    &'a str,
    KeyType,
    &'a [KeyValue],
    &'a (dyn tokio_postgres::types::ToSql + Sync),
    fn(&KeyValue) -> bool,
);

/// The SQL functions are strict, so a NULL key has no vshard in SQL either.
async fn check_nulls(client: &Client) -> usize {
    let row = client
        .query_one(
            "SELECT hashint8extended(NULL::int8, 0) IS NULL, hashint4extended(NULL::int4, 0) IS NULL,
                    hashint2extended(NULL::int2, 0) IS NULL, hashtextextended(NULL::text, 0) IS NULL,
                    uuid_hash_extended(NULL::uuid, 0) IS NULL, hashint8extended(1, NULL) IS NULL",
            &[],
        )
        .await
        .unwrap();
    for i in 0..row.len() {
        assert!(row.get::<_, bool>(i), "column {i} is not NULL");
    }
    for (ty, sql_type) in [
        (KeyType::Int, "int8"),
        (KeyType::Text, "text"),
        (KeyType::Uuid, "uuid"),
    ] {
        let sql = format!(
            "SELECT {} IS NULL FROM (SELECT NULL::{sql_type} AS k) AS x",
            vshard_sql("k", ty, 1024)
        );
        assert!(
            client.query_one(&sql, &[]).await.unwrap().get::<_, bool>(0),
            "{sql}"
        );
        assert_eq!(KeyValue::Null.vshard(1024), None);
    }
    row.len() + 3
}

/// `vshard_sql` quotes every name the server's `quote_ident` quotes (all keywords of this server's grammar that are
/// not unreserved, uppercase, spaces, quotes...), and the generated SQL runs with each such name as the key column.
async fn check_identifiers(client: &Client) -> usize {
    let mut names: Vec<String> = client
        .query("SELECT word FROM pg_get_keywords()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    names.extend(
        [
            "aid",
            "tenant_id",
            "_x1",
            "x$",
            "Aid",
            "AID",
            "tenant id",
            "a\"b",
            "1st",
            "grüße",
            "é",
            "a-b",
        ]
        .map(String::from),
    );
    let quoted: HashMap<String, String> = client
        .query(
            "SELECT w, quote_ident(w) FROM unnest($1::text[]) AS w",
            &[&names],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect =
        |ident: &str| format!("((hashint8extended({ident}, 0) & 9223372036854775807) % 16)");
    let mut extra_quotes = Vec::new();
    for name in &names {
        let server = &quoted[name];
        let ours = vshard_sql(name, KeyType::Int, 16);
        if ours == expect(server) {
            continue;
        }
        // Quoting a name this server leaves bare is harmless: keywords reserved only in other releases.
        assert_eq!(server, name, "{name}: we wrote {ours}");
        assert_eq!(ours, expect(&format!("\"{name}\"")));
        extra_quotes.push(name.clone());
    }
    assert!(
        extra_quotes.len() <= 13,
        "quoted needlessly: {extra_quotes:?}"
    );

    // Run the generated SQL with every name as a column: one query, one column per name.
    let columns: Vec<String> = names
        .iter()
        .map(|n| format!("5::int8 AS {}", quoted[n]))
        .collect();
    let exprs: Vec<String> = names
        .iter()
        .map(|n| vshard_sql(n, KeyType::Int, 16))
        .collect();
    let sql = format!(
        "SELECT {} FROM (SELECT {}) AS x",
        exprs.join(", "),
        columns.join(", ")
    );
    let row = client.query_one(&sql, &[]).await.unwrap();
    let want = KeyValue::Int(5).vshard(16).map(i64::from);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(row.get::<_, Option<i64>>(i), want, "{name}");
    }
    names.len()
}
