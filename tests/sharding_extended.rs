//! Statements for several shards over the extended protocol, against three real shards, with tokio-postgres as the
//! client (it sends Parse/Describe/Sync to prepare, then Bind/Execute/Sync, and asks for binary results): DDL and
//! reference-table writes reach every shard, scatter reads with parameters equal the same query on one database
//! holding every row (compared byte for byte, binary format included), COPY through Parse/Bind/Execute splits rows
//! by key, and every failure (a shard refusing DDL, a refused shape, a client's CopyFail, a shard failing at COPY
//! start) leaves the session usable and no partial COPY behind.
#![allow(clippy::unwrap_used)]

mod common;

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::types::{FromSql, ToSql, Type};

use common::shards::{check_placement, count, shop_url, start, start_with, Shards};

/// A column's value exactly as the server sent it (binary format), whatever its type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Wire(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Wire {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Column names and types, then every row's values as sent.
async fn wire(
    c: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> (Vec<String>, Vec<Vec<Wire>>) {
    let rows = c
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = rows
        .first()
        .map(|r| {
            r.columns()
                .iter()
                .map(|c| format!("{} {}", c.name(), c.type_()))
                .collect()
        })
        .unwrap_or_default();
    let values = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Wire>(i)).collect())
        .collect();
    (columns, values)
}

fn account_line(g: i64) -> String {
    format!("{}\towner{}\t{}\n", g * 7919 - 20_000_000, g % 37, g % 1000)
}

/// Rows `0..n` of accounts through tokio-postgres `copy_in` (Parse/Bind/Execute/Sync, CopyData..., CopyDone, Sync).
async fn copy_accounts(c: &tokio_postgres::Client, n: i64) -> u64 {
    let sink = c
        .copy_in("COPY accounts (aid, owner, balance) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for g in 0..n {
        chunk.push_str(&account_line(g));
        if chunk.len() > 8_000 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    sink.finish().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_runs_on_every_shard_and_merges_like_one_database() {
    let (shards, proxy, _cfg) = start().await;
    let c = common::connect(&shop_url(&proxy)).await;

    // DDL over the extended protocol reaches every shard.
    c.execute("DROP TABLE orders", &[]).await.unwrap();
    c.execute(
        "CREATE TABLE orders (tenant text NOT NULL, id int NOT NULL, amount int NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    c.execute("ALTER TABLE accounts ADD COLUMN note text", &[])
        .await
        .unwrap();
    for b in &shards.backends {
        assert_eq!(count(b, "SELECT count(*) FROM orders"), 0);
        assert_eq!(
            count(
                b,
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_name = 'accounts' AND column_name = 'note'"
            ),
            1
        );
    }
    // A reference-table write with parameters: on every shard, counted once.
    let n = c
        .execute(
            "INSERT INTO countries (code, name) VALUES ($1, $2)",
            &[&"fr", &"France"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    for b in &shards.backends {
        assert_eq!(
            count(b, "SELECT count(*) FROM countries WHERE name = 'France'"),
            1
        );
    }

    // COPY FROM STDIN through Parse/Bind/Execute: every row on its vshard's shard; COPY TO STDOUT concatenates.
    assert_eq!(copy_accounts(&c, 3_000).await, 3_000);
    check_placement(&shards, 3_000);
    let out = c.copy_out("COPY accounts TO STDOUT").await.unwrap();
    futures_util::pin_mut!(out);
    let mut lines = 0;
    while let Some(chunk) = out.next().await {
        lines += chunk.unwrap().iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines, 3_000);

    // Scatter reads with parameters equal the same statement on one database holding every row, byte for byte.
    let all = &shards.backends[0];
    all.pg.create_database("everything", "app").unwrap();
    all.pg
        .sql(
            "everything",
            "CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL, balance int NOT NULL, note text); \
             INSERT INTO accounts SELECT g * 7919 - 20000000, 'owner' || (g % 37), g % 1000 \
             FROM generate_series(0, 2999) g; GRANT ALL ON accounts TO app",
        )
        .unwrap();
    let one = common::connect(&all.pg.url("app", "secret", "everything")).await;
    let cases: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = vec![
        (
            "SELECT aid, owner, balance FROM accounts WHERE balance > $1 ORDER BY balance DESC, aid LIMIT $2",
            vec![&500i32, &25i64],
        ),
        (
            "SELECT aid, balance FROM accounts WHERE owner = $1 ORDER BY aid LIMIT $2 OFFSET $3",
            vec![&"owner7", &10i64, &5i64],
        ),
        (
            "SELECT owner FROM accounts ORDER BY owner, aid DESC LIMIT 7 OFFSET $1",
            vec![&40i64],
        ),
        (
            "SELECT count(*), sum(balance), min(aid), max(aid), avg(balance) FROM accounts WHERE balance < $1",
            vec![&300i32],
        ),
        (
            "SELECT owner, count(*), sum(balance), avg(balance) FROM accounts WHERE aid > $1 \
             GROUP BY owner ORDER BY owner LIMIT $2",
            vec![&-19_000_000i64, &5i64],
        ),
        (
            "SELECT owner, max(balance) FROM accounts GROUP BY owner ORDER BY 2 DESC, 1 LIMIT $1 OFFSET $2",
            vec![&3i64, &2i64],
        ),
    ];
    for (sql, params) in &cases {
        let sharded = wire(&c, sql, params).await;
        assert!(!sharded.1.is_empty(), "{sql}");
        assert_eq!(sharded, wire(&one, sql, params).await, "{sql}");
    }
    // Parse, Bind, Describe portal, Execute and Sync in one batch (tokio-postgres `query_typed`).
    let sql = "SELECT owner, sum(balance), avg(balance) FROM accounts WHERE balance > $1 \
               GROUP BY owner ORDER BY 2 DESC LIMIT $2";
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(&100i32, Type::INT4), (&4i64, Type::INT8)];
    let got = c.query_typed(sql, &params).await.unwrap();
    let want = one.query_typed(sql, &params).await.unwrap();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want) {
        let g: Vec<Wire> = (0..3).map(|i| g.get(i)).collect();
        let w: Vec<Wire> = (0..3).map(|i| w.get(i)).collect();
        assert_eq!(g, w, "{sql}");
    }

    // Concatenation passes binary columns through: the same multiset of rows.
    let sql = "SELECT aid, owner FROM accounts WHERE balance = $1";
    let (cols, mut sharded) = wire(&c, sql, &[&7i32]).await;
    let (one_cols, mut single) = wire(&one, sql, &[&7i32]).await;
    sharded.sort();
    single.sort();
    assert_eq!((cols, sharded), (one_cols, single));

    // A batch arriving in pieces is collected whole before it runs; text results here (the merge's own format).
    let sql =
        "SELECT owner, count(*), avg(balance) FROM accounts GROUP BY owner ORDER BY owner LIMIT 3";
    let mut raw = common::raw::Raw::connect(proxy.port, "app", "secret", "shop").await;
    raw.parse("", sql).await;
    tokio::task::yield_now().await;
    raw.bind_execute("").await;
    tokio::task::yield_now().await;
    raw.sync().await;
    let mut expected = vec!["1".to_owned(), "2".to_owned()];
    for r in common::shards::rows(&one, sql).await {
        expected.push(format!("D:{r:?}"));
    }
    expected.extend(["C:SELECT 3".to_owned(), "Z:I".to_owned()]);
    assert_eq!(raw.replies().await, expected);

    // A named Parse of a known text is answered by shardpool itself; the batch then starts with the Describe, and
    // still fans out as a whole.
    let sql = "SELECT count(*), max(owner) FROM accounts";
    raw.parse("q1", sql).await;
    raw.sync().await;
    assert_eq!(raw.replies().await, vec!["1", "Z:I"]);
    raw.parse("q2", sql).await;
    raw.send(b'D', b"Sq2\0").await;
    raw.bind_execute("q2").await;
    raw.sync().await;
    let mut expected = vec!["1", "t", "T", "2"]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    for r in common::shards::rows(&one, sql).await {
        expected.push(format!("D:{r:?}"));
    }
    expected.extend(["C:SELECT 1".to_owned(), "Z:I".to_owned()]);
    assert_eq!(raw.replies().await, expected);

    // A prepared statement is prepared on one shard and fans out at each execution.
    let st = c
        .prepare("SELECT count(*), sum(balance) FROM accounts WHERE balance >= $1")
        .await
        .unwrap();
    let st_one = one
        .prepare("SELECT count(*), sum(balance) FROM accounts WHERE balance >= $1")
        .await
        .unwrap();
    for min in [0i32, 250, 999, 5_000] {
        let got = c.query_one(&st, &[&min]).await.unwrap();
        let want = one.query_one(&st_one, &[&min]).await.unwrap();
        assert_eq!(got.get::<_, i64>(0), want.get::<_, i64>(0), "min {min}");
        assert_eq!(
            got.get::<_, Wire>(1),
            want.get::<_, Wire>(1),
            "sum for min {min}"
        );
    }

    // Refusals name the reason, and the session goes on.
    let e = c
        .query(
            "SELECT DISTINCT owner FROM accounts WHERE balance > $1",
            &[&1i32],
        )
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    assert!(
        e.as_db_error().unwrap().message().contains("DISTINCT"),
        "{e}"
    );
    let e = c
        .query(
            "SELECT aid, current_date AS today FROM accounts ORDER BY aid LIMIT $1",
            &[&3i64],
        )
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("binary") && msg.contains("today"), "{msg}");
    let e = c
        .execute("UPDATE accounts SET balance = $1", &[&0i32])
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    // Statements for every shard cannot join a transaction.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .query("SELECT count(*) FROM accounts WHERE balance > $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    c.batch_execute("ROLLBACK").await.unwrap();

    // DDL failing on one shard: the error names it and the shards that applied the statement.
    shards.backends[2].sql("CREATE INDEX accounts_owner ON accounts (owner)");
    let e = c
        .execute("CREATE INDEX accounts_owner ON accounts (owner)", &[])
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42P07", "{db:?}");
    assert_eq!(
        db.detail(),
        Some("failed on shards 2; ran on shards 0, 1"),
        "{db:?}"
    );
    for b in &shards.backends {
        assert_eq!(
            count(
                b,
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'accounts_owner'"
            ),
            1
        );
    }

    // After every error above the session still answers, with the right numbers.
    let total: i64 = c
        .query_one("SELECT count(*) FROM accounts WHERE aid > $1", &[&i64::MIN])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_errors_leave_no_rows_and_a_usable_session() {
    let (shards, proxy, _cfg) = start_with(true).await;
    let c = common::connect(&shop_url(&proxy)).await;
    let totals = |shards: &Shards| -> Vec<i64> {
        shards
            .backends
            .iter()
            .map(|b| count(b, "SELECT count(*) FROM accounts"))
            .collect()
    };

    // The client gives up mid-COPY (CopyFail), over both protocols: 57014 as Postgres says it, nothing loaded.
    let mut raw = common::raw::Raw::connect(proxy.port, "app", "secret", "shop").await;
    let data: String = (0..2_000).map(account_line).collect();
    let replies = raw
        .copy_fail(
            "COPY accounts (aid, owner, balance) FROM STDIN",
            data.as_bytes(),
        )
        .await;
    assert_eq!(replies, vec!["E:C57014", "Z:I"], "{replies:?}");
    assert_eq!(totals(&shards), vec![0, 0, 0]);
    // Extended: Parse, Bind, Execute, Sync (ignored during COPY), data, CopyFail, Sync.
    raw.parse("", "COPY accounts (aid, owner, balance) FROM STDIN")
        .await;
    raw.bind_execute("").await;
    raw.sync().await;
    for expected in [b'1', b'2', b'G'] {
        let (tag, body) = raw.next().await;
        assert_eq!(tag, expected, "{}", common::raw::render(tag, &body));
    }
    raw.send(b'd', data.as_bytes()).await;
    raw.send(b'f', b"client gave up\0").await;
    raw.sync().await;
    assert_eq!(raw.replies().await, vec!["E:C57014", "Z:I"]);
    assert_eq!(totals(&shards), vec![0, 0, 0]);
    // The same connection then loads rows over the extended protocol, with one ReadyForQuery at the final Sync.
    raw.parse("", "COPY accounts (aid, owner, balance) FROM STDIN")
        .await;
    raw.bind_execute("").await;
    raw.sync().await;
    for expected in [b'1', b'2', b'G'] {
        let (tag, body) = raw.next().await;
        assert_eq!(tag, expected, "{}", common::raw::render(tag, &body));
    }
    raw.send(b'd', data.as_bytes()).await;
    raw.send(b'c', b"").await;
    raw.sync().await;
    assert_eq!(raw.replies().await, vec!["C:COPY 2000", "Z:I"]);
    assert_eq!(raw.query("SELECT 41 + 1").await, vec!["42"]);
    check_placement(&shards, 2_000);
    // tokio-postgres dropping its sink unfinished sends CopyFail: nothing more is loaded, the client goes on.
    {
        let sink = c
            .copy_in::<_, bytes::Bytes>("COPY accounts (aid, owner, balance) FROM STDIN")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.feed(bytes::Bytes::from(
            (5_000..6_000).map(account_line).collect::<String>(),
        ))
        .await
        .unwrap();
        sink.flush().await.unwrap();
    }
    assert_eq!(
        c.query_one(
            "SELECT count(*) FROM accounts WHERE balance >= $1",
            &[&0i32]
        )
        .await
        .unwrap()
        .get::<_, i64>(0),
        2_000
    );
    let before = totals(&shards);

    // A shard failing at COPY start (the table missing there): the error names the shard, and the shards whose COPY
    // had started keep nothing.
    shards.backends[2].sql("ALTER TABLE accounts RENAME TO accounts_away");
    // (Over a raw connection: tokio-postgres answers a COPY failing at Execute with CopyFail and a second Sync, whose
    // extra ReadyForQuery it then rejects and closes the connection; it does exactly that against Postgres itself.)
    raw.parse("", "COPY accounts (aid, owner, balance) FROM STDIN")
        .await;
    raw.bind_execute("").await;
    raw.sync().await;
    let replies = raw.replies().await;
    assert_eq!(replies, vec!["1", "2", "E:C42P01", "Z:I"], "{replies:?}");
    raw.send_query("COPY accounts (aid, owner, balance) FROM STDIN")
        .await;
    let (tag, body) = raw.next().await;
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("C42P01") && text.contains("on shard 2"),
        "{text}"
    );
    assert_eq!(raw.replies().await, vec!["Z:I"]);
    assert_eq!(raw.query("SELECT 41 + 1").await, vec!["42"]);
    shards.backends[2].sql("ALTER TABLE accounts_away RENAME TO accounts");
    assert_eq!(totals(&shards), before);
    // A shard failing on its data (a duplicate key on one shard only): every shard's rows are rolled back.
    let duplicate = 17i64; // already loaded above
    let mut fresh: String = (10_000..10_500).map(account_line).collect();
    fresh.push_str(&account_line(duplicate));
    let sink = c
        .copy_in("COPY accounts (aid, owner, balance) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(fresh)).await.unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(common::sqlstate(&e), "23505", "{e}");
    assert_eq!(totals(&shards), before);
    assert_eq!(copy_accounts_range(&c, 10_000..10_500).await, 500);
    let after: i64 = totals(&shards).iter().sum();
    assert_eq!(after, 2_500);

    // Keyless writes (allowed in this config) over the extended protocol: every shard, counts summed, returned
    // rows from every shard.
    let n = c
        .execute(
            "UPDATE accounts SET balance = balance + $1 WHERE balance >= $2",
            &[&1i32, &0i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 2_500);
    let low: i64 = shards
        .backends
        .iter()
        .map(|b| count(b, "SELECT count(*) FROM accounts WHERE balance < 50"))
        .sum();
    let returned = c
        .query(
            "UPDATE accounts SET balance = balance WHERE balance < $1 RETURNING aid",
            &[&50i32],
        )
        .await
        .unwrap();
    assert!(low > 0);
    assert_eq!(returned.len() as i64, low);
}

async fn copy_accounts_range(c: &tokio_postgres::Client, range: std::ops::Range<i64>) -> u64 {
    let sink = c
        .copy_in("COPY accounts (aid, owner, balance) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let data: String = range.map(account_line).collect();
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    sink.finish().await.unwrap()
}
