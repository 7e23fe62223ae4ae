//! Scatter/gather against real Postgres: one server holds database `all` with every row and databases `s0`, `s1`,
//! `s2` splitting the same rows by `id % 3`. Every query runs through `scatter_query` over connections to the three
//! shards and directly on `all`; the merged reply must equal the unsharded one (RowDescription names and types,
//! rows, `SELECT n`). Unordered results are compared as multisets, ORDER BY results in order.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use shardpool::backend::connect::{connect, ServerTarget};
use shardpool::backend::ServerConn;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};
use shardpool::protocol::backend::{parse_command_complete, ErrorFields};
use shardpool::protocol::framing::split_frame;
use shardpool::protocol::frontend::write_query;
use shardpool::protocol::{tag, TxStatus};
use shardpool::sharding::scatter::wire::{data_row_values, parse_row_description};
use shardpool::sharding::scatter::{scatter_query, Plan, ScatterError};
use tokio::io::AsyncWriteExt;

const SHARDS: [&str; 3] = ["s0", "s1", "s2"];

/// The test data; `{filter}` keeps a shard's share (`id % 3 = k`) or everything (`true`).
const SETUP: &str = r#"
SET ROLE app;
CREATE TABLE t (
    id int PRIMARY KEY,
    g int,
    region text,
    name text,
    amount numeric(12,3),
    n numeric,
    big bigint,
    small smallint,
    f float8,
    fv float8,
    ts timestamp,
    tz timestamptz,
    d date,
    flag bool,
    u uuid,
    c char(5),
    span interval
);
INSERT INTO t
SELECT i,
       CASE WHEN i % 11 = 0 THEN NULL ELSE i % 7 END,
       -- 'north' only on shard 0, 'south' only on shards 1 and 2, 'east' everywhere
       CASE WHEN i % 3 = 0 AND i % 2 = 0 THEN 'north' WHEN i % 3 <> 0 AND i % 2 = 0 THEN 'south' ELSE 'east' END,
       CASE WHEN i % 13 = 0 THEN NULL ELSE chr(65 + (i * 7) % 26) || chr(97 + (i * 3) % 26) || (i % 40) END,
       CASE WHEN i % 17 = 0 OR i % 7 = 5 THEN NULL ELSE ((i * 37) % 1000 - 500) / 7.0 END,
       CASE WHEN i % 3 = 0 THEN 1.0 ELSE 1.00 END * (i % 4),
       CASE WHEN i % 5 = 0 THEN 9223372036854775000 - i ELSE (i::bigint * 1000003) % 100000007 * (1 - 2 * (i % 2)) END,
       (i % 100 - 50)::smallint,
       CASE WHEN i % 19 = 0 THEN 'NaN'::float8 WHEN i % 23 = 0 THEN 'Infinity' WHEN i % 29 = 0 THEN '-Infinity'
            WHEN i % 31 = 0 THEN NULL WHEN i % 37 = 0 THEN '-0' ELSE ((i * 13) % 50) * 0.1 - 2 END,
       (i % 50) * 0.25 - 3,
       CASE WHEN i % 9 = 0 THEN NULL ELSE timestamp '1999-12-31 23:00' + ((i * 3637) % 100000) * interval '1 minute' END,
       timestamptz '2024-10-26 22:00:00+00' + ((i * 7) % 300) * interval '1 minute',
       CASE WHEN i % 41 = 0 THEN date '0044-03-15 BC' WHEN i % 43 = 0 THEN 'infinity' ELSE date '2000-02-28' + (i * 11) % 400 END,
       CASE WHEN i % 6 = 0 THEN NULL ELSE i % 4 = 0 END,
       md5(i::text)::uuid,
       chr(97 + i % 5) || CASE WHEN i % 2 = 0 THEN ' ' ELSE 'z' END,
       (i % 5) * interval '1 hour'
FROM generate_series(1, 300) i
WHERE {filter};
-- Rows on shard 0 only: shards 1 and 2 have the table but no rows.
CREATE TABLE e (id int, v numeric, w int);
INSERT INTO e SELECT i, i * 1.5, i % 2 FROM generate_series(3, 30, 3) i WHERE {filter};
"#;

struct Env {
    pg: PgServer,
    shards: Vec<ServerConn>,
    all: Box<ServerConn>,
}

async fn login(port: u16, database: &str) -> Box<ServerConn> {
    let target = ServerTarget {
        host: "127.0.0.1".into(),
        port,
        database: database.into(),
        user: "app".into(),
        password: Some("secret".into()),
        credential: None,
        tls: Default::default(),
        auth: Default::default(),
    };
    connect(&target, Duration::from_secs(10), 64)
        .await
        .unwrap_or_else(|e| panic!("connect {database}: {e}"))
}

async fn start() -> Env {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgServer::start_primary(&ServerOptions::default()).expect("postgres");
        pg.create_user("app", "secret", AuthMethod::ScramSha256)
            .unwrap();
        for (db, filter) in [
            ("all", "true"),
            ("s0", "i % 3 = 0"),
            ("s1", "i % 3 = 1"),
            ("s2", "i % 3 = 2"),
        ] {
            pg.create_database(db, "app").unwrap();
            pg.sql(db, &SETUP.replace("{filter}", filter))
                .unwrap_or_else(|e| panic!("setup {db}: {e}"));
        }
        // A table missing on shard 2, for errors from one shard.
        for db in ["all", "s0", "s1"] {
            pg.sql(db, "SET ROLE app; CREATE TABLE partial AS SELECT 1 AS x")
                .unwrap();
        }
        pg
    })
    .await
    .unwrap();
    let port = pg.port();
    let mut shards = Vec::new();
    for db in SHARDS {
        shards.push(*login(port, db).await);
    }
    let all = login(port, "all").await;
    Env { pg, shards, all }
}

/// A reply reduced to what a client sees: column names and types, rows as text, the command tag.
#[derive(Clone, Debug, PartialEq)]
struct Reply {
    columns: Vec<(String, u32, i16, i32, i16)>,
    rows: Vec<Vec<Option<String>>>,
    tag: String,
}

fn parse_reply(buf: &mut BytesMut) -> Result<Reply, ErrorFields> {
    let mut reply = Reply {
        columns: Vec::new(),
        rows: Vec::new(),
        tag: String::new(),
    };
    while let Some(frame) = split_frame(buf).unwrap() {
        match frame.tag {
            tag::ROW_DESCRIPTION => {
                reply.columns = parse_row_description(&frame)
                    .unwrap()
                    .into_iter()
                    .map(|f| {
                        let name = String::from_utf8_lossy(&f.name).into_owned();
                        (name, f.type_oid, f.type_len, f.type_mod, f.format)
                    })
                    .collect();
            }
            tag::DATA_ROW => reply.rows.push(
                data_row_values(&frame)
                    .unwrap()
                    .into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect(),
            ),
            tag::COMMAND_COMPLETE => {
                reply.tag =
                    String::from_utf8_lossy(parse_command_complete(frame.body())).into_owned()
            }
            tag::ERROR_RESPONSE => return Err(ErrorFields::parse(frame.body())),
            tag::READY_FOR_QUERY | tag::NOTICE_RESPONSE => {}
            other => panic!("unexpected message {:?}", other as char),
        }
    }
    Ok(reply)
}

/// Runs `sql` on one server and returns everything up to ReadyForQuery.
async fn direct(conn: &mut ServerConn, sql: &str) -> Result<Reply, ErrorFields> {
    let mut msg = BytesMut::new();
    write_query(&mut msg, sql);
    conn.stream.write_all(&msg).await.unwrap();
    let mut got = BytesMut::new();
    loop {
        while let Some(frame) = split_frame(&mut conn.rbuf).unwrap() {
            got.extend_from_slice(&frame.raw);
            if frame.tag == tag::READY_FOR_QUERY {
                return parse_reply(&mut got);
            }
        }
        conn.read_more().await.unwrap();
    }
}

impl Env {
    async fn scatter(&mut self, sql: &str) -> Result<Reply, ScatterError> {
        let plan = Plan::from_sql(sql)?;
        let mut servers: Vec<&mut ServerConn> = self.shards.iter_mut().collect();
        // Bytes already in the buffer (an earlier reply of the batch) must survive, success or not.
        let mut out = BytesMut::from(&b"prefix"[..]);
        let result = scatter_query(sql, &plan, &mut servers, &mut out).await;
        assert_eq!(&out[..6], b"prefix", "{sql}: earlier output was touched");
        let _ = out.split_to(6);
        let outcome = result?;
        let reply =
            parse_reply(&mut out).unwrap_or_else(|e| panic!("{sql}: error in output: {e:?}"));
        assert_eq!(reply.tag, format!("SELECT {}", outcome.rows), "{sql}");
        for s in &self.shards {
            assert_eq!(s.status, TxStatus::Idle, "{sql}: shard left busy");
        }
        Ok(reply)
    }

    /// Merged and unsharded replies, both required to succeed.
    async fn both(&mut self, sql: &str) -> (Reply, Reply) {
        let merged = self
            .scatter(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: scatter failed: {e}"));
        let expected = direct(&mut self.all, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: unsharded failed: {e:?}"));
        assert_eq!(merged.columns, expected.columns, "{sql}: RowDescription");
        assert_eq!(merged.tag, expected.tag, "{sql}: row count");
        (merged, expected)
    }

    /// The result is fully ordered: rows must match one for one.
    async fn same(&mut self, sql: &str) {
        let (merged, expected) = self.both(sql).await;
        assert_eq!(merged.rows, expected.rows, "{sql}");
    }

    /// No order is promised: rows must match as multisets.
    async fn same_set(&mut self, sql: &str) {
        let (merged, expected) = self.both(sql).await;
        assert_eq!(multiset(&merged.rows), multiset(&expected.rows), "{sql}");
    }

    /// Ordered by columns `keys` with ties: the key sequence must match exactly, whole rows as multisets.
    async fn same_keys(&mut self, sql: &str, keys: &[usize]) {
        let (merged, expected) = self.both(sql).await;
        let project = |rows: &[Vec<Option<String>>]| -> Vec<Vec<Option<String>>> {
            rows.iter()
                .map(|r| keys.iter().map(|&k| r[k].clone()).collect())
                .collect()
        };
        assert_eq!(
            project(&merged.rows),
            project(&expected.rows),
            "{sql}: key order"
        );
        assert_eq!(multiset(&merged.rows), multiset(&expected.rows), "{sql}");
    }

    async fn refused(&mut self, sql: &str, feature: &str) {
        match self.scatter(sql).await {
            Err(ScatterError::Unsupported(f)) => {
                assert!(f.contains(feature), "{sql}: refused for {f:?}")
            }
            other => panic!("{sql}: expected Unsupported({feature}), got {other:?}"),
        }
        self.all_reusable(sql).await;
    }

    /// Every shard connection answers a new query and is idle.
    async fn all_reusable(&mut self, after: &str) {
        for (i, s) in self.shards.iter_mut().enumerate() {
            assert!(!s.broken, "after {after}: shard {i} marked broken");
            let reply = direct(s, "SELECT 41 + 1").await.unwrap();
            assert_eq!(
                reply.rows,
                vec![vec![Some("42".to_owned())]],
                "after {after}: shard {i}"
            );
            assert_eq!(s.status, TxStatus::Idle);
        }
    }
}

fn multiset(rows: &[Vec<Option<String>>]) -> HashMap<Vec<Option<String>>, usize> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(r.clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn scatter_gather_matches_one_unsharded_server() {
    let mut env = start().await;
    concatenation(&mut env).await;
    order_by(&mut env).await;
    limit_offset(&mut env).await;
    aggregates(&mut env).await;
    grouped(&mut env).await;
    unsupported(&mut env).await;
    shard_errors(&mut env).await;
    drop(env.pg);
}

async fn concatenation(env: &mut Env) {
    env.same_set("SELECT * FROM t").await;
    env.same_set("SELECT id, name, g FROM t WHERE g = 3").await;
    env.same_set("SELECT id, amount, f FROM t WHERE id < 0")
        .await;
    env.same_set("SELECT * FROM e").await;
    // LIMIT without ORDER BY: any n rows are right; check the count and that they are real rows.
    let merged = env.scatter("SELECT id, name FROM t LIMIT 7").await.unwrap();
    let all = direct(&mut env.all, "SELECT id, name FROM t")
        .await
        .unwrap();
    assert_eq!(merged.rows.len(), 7);
    let every = multiset(&all.rows);
    assert!(merged.rows.iter().all(|r| every.contains_key(r)));
    let merged = env.scatter("SELECT id FROM t OFFSET 295").await.unwrap();
    assert_eq!(merged.rows.len(), 5);
    env.same_set("SELECT id FROM t LIMIT 0").await;
}

async fn order_by(env: &mut Env) {
    for sql in [
        // int
        "SELECT id, g FROM t ORDER BY g, id",
        "SELECT id, g FROM t ORDER BY g DESC, id",
        "SELECT id, g FROM t ORDER BY g NULLS FIRST, id DESC",
        "SELECT id, g FROM t ORDER BY g DESC NULLS LAST, id",
        "SELECT id, big FROM t ORDER BY big DESC, id",
        "SELECT id, small FROM t ORDER BY small, id",
        // text ("C" collation), bpchar, uuid, bool
        "SELECT id, name FROM t ORDER BY name, id",
        "SELECT id, name FROM t ORDER BY name DESC NULLS LAST, id",
        "SELECT id, c FROM t ORDER BY c DESC, id",
        "SELECT u, id FROM t ORDER BY u",
        "SELECT id, flag FROM t ORDER BY flag NULLS FIRST, id",
        // numeric
        "SELECT id, amount FROM t ORDER BY amount, id",
        "SELECT id, amount FROM t ORDER BY amount DESC, id DESC",
        "SELECT id, amount FROM t ORDER BY amount NULLS FIRST, id",
        // float with NaN, infinities and -0
        "SELECT id, f FROM t ORDER BY f, id",
        "SELECT id, f FROM t ORDER BY f DESC NULLS LAST, id",
        // date/time: BC and infinity dates, timestamptz across a DST change
        "SELECT id, ts FROM t ORDER BY ts, id",
        "SELECT id, ts FROM t ORDER BY ts DESC, id",
        "SELECT id, d FROM t ORDER BY d, id",
        "SET_TZ",
        // columns the client did not select, expressions, positions, wildcards
        "SELECT id FROM t ORDER BY amount DESC NULLS LAST, id",
        "SELECT id, name FROM t ORDER BY lower(name), id",
        "SELECT name, id FROM t ORDER BY 1 DESC, 2",
        "SELECT id, g * 2 AS double_g FROM t ORDER BY double_g, id",
        "SELECT * FROM t ORDER BY g, id",
        "SELECT *, id % 5 AS m FROM t ORDER BY m, id DESC",
    ] {
        if sql == "SET_TZ" {
            timezone_order(env).await;
            continue;
        }
        env.same(sql).await;
    }
    // Ties: the sort column must come out in the same order, rows as a multiset.
    env.same_keys("SELECT g, name FROM t ORDER BY g", &[0])
        .await;
    env.same_keys("SELECT region, id FROM t ORDER BY region DESC", &[0])
        .await;
}

/// timestamptz prints in the session's TimeZone; across the end of DST the same local time appears twice.
async fn timezone_order(env: &mut Env) {
    let set = "SET TimeZone = 'Europe/Berlin'";
    for s in env.shards.iter_mut() {
        assert!(s.simple_query(set).await.unwrap().is_none());
    }
    assert!(env.all.simple_query(set).await.unwrap().is_none());
    env.same("SELECT id, tz FROM t ORDER BY tz, id").await;
    env.same("SELECT id, tz FROM t ORDER BY tz DESC, id").await;
    env.same("SELECT min(tz), max(tz) FROM t").await;
}

async fn limit_offset(env: &mut Env) {
    for sql in [
        "SELECT id, name FROM t ORDER BY id LIMIT 10",
        "SELECT id, name FROM t ORDER BY id LIMIT 10 OFFSET 5",
        "SELECT id FROM t ORDER BY id DESC LIMIT 10 OFFSET 295",
        "SELECT id FROM t ORDER BY id OFFSET 1000",
        "SELECT id FROM t ORDER BY id LIMIT 5 OFFSET 1000",
        "SELECT id FROM t ORDER BY id LIMIT 0",
        "SELECT id FROM t ORDER BY id LIMIT 0 OFFSET 10",
        "SELECT id FROM t ORDER BY id OFFSET 290",
        "SELECT id FROM t ORDER BY id LIMIT ALL OFFSET 297",
        "SELECT id, amount FROM t ORDER BY amount DESC NULLS LAST, id LIMIT 7 OFFSET 3",
        "SELECT id FROM t ORDER BY name, id OFFSET 3 ROWS FETCH FIRST 4 ROWS ONLY",
        "SELECT id FROM t ORDER BY ts DESC, id FETCH FIRST ROW ONLY",
    ] {
        env.same(sql).await;
    }
}

async fn aggregates(env: &mut Env) {
    for sql in [
        "SELECT count(*), count(amount), sum(amount), min(amount), max(amount), avg(amount) FROM t",
        "SELECT count(*) AS n, sum(id), sum(small), sum(big), avg(id), avg(big), avg(small) FROM t",
        "SELECT min(name), max(name), min(ts), max(ts), min(d), max(d), min(c), max(c), max(big) FROM t",
        "SELECT sum(fv), avg(fv), min(f), max(f), min(fv) FROM t WHERE f IS NOT NULL",
        "SELECT sum(f), count(f) FROM t WHERE f <> 'NaN' AND f > '-Infinity'",
        // min/max of numerics equal in value but printed with different scales are not compared: which one
        // Postgres returns depends on row order.
        "SELECT sum(n), avg(n) FROM t",
        // Nothing matches: count 0 and NULLs, one row.
        "SELECT count(*), sum(amount), avg(amount), min(name), max(f) FROM t WHERE id < 0",
        // Rows on one shard only.
        "SELECT count(*), sum(v), avg(v), avg(w), max(v) FROM e",
        "SELECT count(id) FILTER (WHERE flag), avg(amount) FILTER (WHERE flag), sum(big) FILTER (WHERE g = 1) FROM t",
        "SELECT avg(amount) AS \"Mean\", pg_catalog.count(*) FROM t",
    ] {
        env.same(sql).await;
    }
}

async fn grouped(env: &mut Env) {
    for sql in [
        "SELECT g, count(*), sum(amount), avg(amount), min(name), max(ts) FROM t GROUP BY g",
        "SELECT count(*), sum(big) FROM t GROUP BY g",
        "SELECT region, count(*), avg(id), avg(fv) FROM t GROUP BY region",
        "SELECT id % 3 AS m, count(*), max(amount) FROM t GROUP BY m",
        "SELECT g, region, count(*) FROM t GROUP BY 1, 2",
        // 1.0 and 1.00 are one group
        "SELECT count(*), sum(n) FROM t GROUP BY n",
        // a group whose amounts are all NULL
        "SELECT g, sum(amount), avg(amount), count(amount) FROM t WHERE amount IS NULL OR g = 2 GROUP BY g",
        "SELECT w, count(*), sum(v), avg(v) FROM e GROUP BY w",
        "SELECT g, count(*) FROM t WHERE id < 0 GROUP BY g",
    ] {
        env.same_set(sql).await;
    }
    for sql in [
        "SELECT g, count(*), avg(amount) FROM t GROUP BY g ORDER BY g NULLS FIRST",
        "SELECT g, sum(amount) AS total FROM t GROUP BY g ORDER BY total DESC NULLS LAST, g LIMIT 3",
        "SELECT region, count(*) FROM t GROUP BY region ORDER BY count(*) DESC, region LIMIT 2 OFFSET 1",
        "SELECT g FROM t GROUP BY g ORDER BY avg(amount), g",
        "SELECT g, avg(id) FROM t GROUP BY g ORDER BY 2 DESC LIMIT 4",
        "SELECT date_trunc('month', ts) AS month, count(*) FROM t GROUP BY month ORDER BY month NULLS FIRST",
        "SELECT count(*) FROM t GROUP BY g ORDER BY g LIMIT 3 OFFSET 2",
        "SELECT region, max(f) FROM t GROUP BY region ORDER BY max(f), region",
        "SELECT g, count(*) FROM t GROUP BY g ORDER BY g LIMIT 0",
        "SELECT g, count(*) FROM t GROUP BY g ORDER BY g OFFSET 100",
    ] {
        env.same(sql).await;
    }
}

async fn unsupported(env: &mut Env) {
    for (sql, feature) in [
        ("SELECT DISTINCT g FROM t", "DISTINCT"),
        (
            "SELECT DISTINCT ON (g) g, id FROM t ORDER BY g, id",
            "DISTINCT ON",
        ),
        (
            "SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > 10",
            "HAVING",
        ),
        (
            "SELECT id, row_number() OVER (ORDER BY id) FROM t",
            "window functions",
        ),
        ("SELECT count(DISTINCT g) FROM t", "count(DISTINCT ...)"),
        (
            "SELECT string_agg(name, ',') FROM t",
            "aggregate string_agg()",
        ),
        ("SELECT id FROM t UNION SELECT id FROM e", "UNION"),
        (
            "SELECT sum(amount) / 2 FROM t",
            "expressions over aggregate results",
        ),
        (
            "SELECT * FROM t WHERE amount > (SELECT avg(amount) FROM t)",
            "a subquery with aggregate avg()",
        ),
        (
            "SELECT id FROM t LIMIT $1",
            "LIMIT/OFFSET given as a parameter",
        ),
        // Refused only once the shards describe their result.
        (
            "SELECT id, span FROM t ORDER BY span, id",
            "ORDER BY on type interval",
        ),
        ("SELECT max(span) FROM t", "max() on type interval"),
        ("SELECT avg(f::real) FROM t", "avg() over real"),
    ] {
        env.refused(sql, feature).await;
    }
    // Text under a non-C collation sorts differently on the shards than bytewise: detected, not misordered.
    let icu = env
        .pg
        .sql(
            "postgres",
            "SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'",
        )
        .unwrap();
    if icu == "1" {
        // Mixed case: ICU puts "bt1" before "Bt11", bytes put "B" before "b".
        let mixed = "CASE WHEN id % 2 = 0 THEN lower(name) ELSE name END";
        let sql = format!(
            "SELECT id FROM t WHERE name IS NOT NULL ORDER BY ({mixed}) COLLATE \"und-x-icu\""
        );
        env.refused(&sql, "collation").await;
    }
}

async fn shard_errors(env: &mut Env) {
    // Shard 2 lacks the table: its error is the result, naming it, and every connection stays usable.
    let err = env.scatter("SELECT * FROM partial").await.unwrap_err();
    match &err {
        ScatterError::Shard { shard, fields, .. } => {
            assert_eq!(*shard, 2);
            assert_eq!(fields.code(), "42P01");
        }
        other => panic!("expected a shard error, got {other:?}"),
    }
    let mut buf = BytesMut::new();
    err.write_error_response(&mut buf);
    let client = parse_reply(&mut buf).unwrap_err();
    assert_eq!(client.code, "42P01");
    env.all_reusable("missing table").await;

    // An error after rows already streamed (division by zero at id 150, on shard 0, late in its order).
    let err = env
        .scatter("SELECT id, 1 / (id - 150) FROM t ORDER BY id")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ScatterError::Shard { shard: 0, fields, .. } if fields.code() == "22012"),
        "{err:?}"
    );
    env.all_reusable("division by zero").await;
    let err = env
        .scatter("SELECT count(*), sum(1 / (id - 150)) FROM t")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ScatterError::Shard { fields, .. } if fields.code() == "22012"),
        "{err:?}"
    );
    env.all_reusable("division by zero in an aggregate").await;

    // Inside a transaction, every shard ends at ReadyForQuery with its own status.
    for s in env.shards.iter_mut() {
        assert!(s.simple_query("BEGIN").await.unwrap().is_none());
    }
    let plan = Plan::from_sql("SELECT 1 / (id - 150) FROM t").unwrap();
    let mut servers: Vec<&mut ServerConn> = env.shards.iter_mut().collect();
    let mut out = BytesMut::new();
    assert!(scatter_query(
        "SELECT 1 / (id - 150) FROM t",
        &plan,
        &mut servers,
        &mut out
    )
    .await
    .is_err());
    assert!(out.is_empty());
    let statuses: Vec<TxStatus> = env.shards.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [
            TxStatus::Failed,
            TxStatus::InTransaction,
            TxStatus::InTransaction
        ]
    );
    for s in env.shards.iter_mut() {
        assert!(s.simple_query("ROLLBACK").await.unwrap().is_none());
    }
    env.all_reusable("failed transaction").await;
    env.same("SELECT g, count(*) FROM t GROUP BY g ORDER BY g")
        .await;
}
