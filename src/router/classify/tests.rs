use super::*;
use crate::router::consistency::Consistency;

/// A catalog like a real server's for the functions the cases use.
fn catalog() -> FunctionVolatility {
    let rows = [
        ("pg_catalog", "random", true),
        ("pg_catalog", "clock_timestamp", true),
        ("pg_catalog", "gen_random_uuid", true),
        ("pg_catalog", "pg_advisory_lock", true),
        ("pg_catalog", "set_config", true),
        ("pg_catalog", "nextval", true),
        ("pg_catalog", "txid_current", false),
        ("pg_catalog", "now", false),
        ("pg_catalog", "lower", false),
        ("pg_catalog", "upper", false),
        ("pg_catalog", "count", false),
        ("pg_catalog", "sum", false),
        ("pg_catalog", "max", false),
        ("pg_catalog", "row_number", false),
        ("pg_catalog", "generate_series", false),
        ("pg_catalog", "unnest", false),
        ("pg_catalog", "jsonb_build_object", false),
        ("pg_catalog", "array_agg", false),
        ("pg_catalog", "string_agg", false),
        ("pg_catalog", "date_trunc", false),
        ("pg_catalog", "extract", false),
        ("pg_catalog", "length", false),
        ("app", "audit_log", true),
        ("app", "price_of", false),
    ];
    FunctionVolatility::from_catalog(rows)
}

fn access(sql: &str) -> Access {
    classify(sql, &catalog()).access
}

#[track_caller]
fn assert_reads(cases: &[&str]) {
    let f = catalog();
    for sql in cases {
        let a = classify(sql, &f);
        assert_eq!(a.access, Access::Read, "{sql:?}: {}", a.reason);
        assert!(!a.parse_failed, "{sql:?} failed to parse");
    }
}

#[track_caller]
fn assert_writes(cases: &[&str]) {
    let f = catalog();
    for sql in cases {
        let a = classify(sql, &f);
        assert_eq!(a.access, Access::Write, "{sql:?}: {}", a.reason);
    }
}

#[test]
fn plain_reads() {
    assert_reads(&[
        "SELECT 1",
        "select * from users where id = $1",
        "  SELECT a, b FROM t JOIN u ON t.id = u.tid LEFT JOIN v USING (x) WHERE t.a > $1 ORDER BY 1 LIMIT 10 OFFSET 5",
        "SELECT count(*), sum(x) FROM t GROUP BY y HAVING max(z) > 3",
        "SELECT now(), lower(name), CURRENT_TIMESTAMP, coalesce(a, b), greatest(1, 2) FROM t",
        "SELECT x::text, CAST(y AS numeric(10,2)), z IS NULL, w BETWEEN 1 AND 2, v IN (1, 2) FROM t",
        "SELECT CASE WHEN a THEN 1 ELSE 2 END, EXTRACT(year FROM d), substring(s FROM 1 FOR 2) FROM t",
        "SELECT row_number() OVER (PARTITION BY a ORDER BY b ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t",
        "SELECT * FROM generate_series(1, 10) g",
        "SELECT * FROM unnest(ARRAY[1,2,3]) AS u(x)",
        "SELECT jsonb_build_object('a', 1) -> 'a', data->>'name', arr[1], arr[1:2] FROM t",
        "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)",
        "SELECT * FROM (SELECT a FROM t) s",
        "SELECT a FROM t UNION ALL SELECT b FROM u EXCEPT SELECT c FROM v",
        "(SELECT 1) UNION (SELECT 2)",
        "VALUES (1, 'a'), (2, 'b')",
        "TABLE users",
        "table ONLY app.users",
        "SELECT ARRAY(SELECT id FROM t), GROUPING(a) FROM t GROUP BY ROLLUP (a)",
        "WITH recent AS (SELECT * FROM orders WHERE ts > now() - interval '1 day') SELECT count(*) FROM recent",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
        "SELECT string_agg(name, ',' ORDER BY name) FILTER (WHERE x > 0) FROM t",
        "SELECT app.price_of(42)",
        "SELECT pg_catalog.lower('A')",
        "SELECT txt FROM t WHERE txt LIKE 'a%' ESCAPE '!' AND txt ILIKE $2",
        "SELECT * FROM t FETCH FIRST 3 ROWS ONLY",
        "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b DESC",
        "SELECT 'nextval(1); FOR UPDATE' AS s -- random()",
        "SELECT \"random\" FROM t",
        "SELECT 1 /* delete from t */",
    ]);
}

#[test]
fn session_and_cursor_commands_run_anywhere() {
    assert_reads(&[
        "SET search_path = app",
        "SET LOCAL statement_timeout = 0",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "RESET ALL",
        "SHOW server_version",
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "DEALLOCATE s1",
        "FETCH 10 FROM c",
        "CLOSE c",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "ROLLBACK WORK TO a",
        "DECLARE c CURSOR FOR SELECT * FROM t",
        "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM t",
    ]);
    let a = classify("ROLLBACK TO SAVEPOINT a", &catalog());
    assert_eq!(a.tx, TxControl::None);
    assert!(!a.only_tx_control);
}

#[test]
fn explain_and_copy() {
    assert_reads(&[
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN UPDATE t SET a = 1",
        "EXPLAIN (FORMAT JSON) DELETE FROM t",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t",
        "COPY t TO STDOUT",
        "COPY t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY (SELECT * FROM t WHERE a > 1) TO STDOUT",
    ]);
    assert_writes(&[
        "EXPLAIN ANALYZE UPDATE t SET a = 1",
        "EXPLAIN (ANALYZE) INSERT INTO t VALUES (1)",
        "EXPLAIN ANALYZE SELECT random()",
        "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
        "COPY t FROM STDIN",
        "COPY t (a) FROM STDIN WITH (FORMAT csv)",
        "COPY t TO '/tmp/x'",
        "COPY (SELECT nextval('s')) TO STDOUT",
    ]);
    assert_eq!(
        classify("EXPLAIN ANALYZE DELETE FROM t", &catalog()).reason,
        "EXPLAIN ANALYZE of a write"
    );
}

#[test]
fn row_locks_are_writes() {
    let f = catalog();
    for (sql, reason) in [
        (
            "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            "row lock (FOR UPDATE/SHARE)",
        ),
        ("SELECT * FROM t FOR SHARE", "row lock (FOR UPDATE/SHARE)"),
        (
            "SELECT * FROM t FOR UPDATE OF t SKIP LOCKED",
            "row lock (FOR UPDATE/SHARE)",
        ),
        (
            "SELECT * FROM t FOR UPDATE NOWAIT",
            "row lock (FOR UPDATE/SHARE)",
        ),
        (
            "SELECT * FROM t FOR NO KEY UPDATE",
            "row lock (FOR NO KEY UPDATE/KEY SHARE)",
        ),
        (
            "SELECT * FROM t FOR KEY SHARE",
            "row lock (FOR NO KEY UPDATE/KEY SHARE)",
        ),
        (
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "row lock (FOR UPDATE/SHARE)",
        ),
        (
            "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
            "row lock (FOR UPDATE/SHARE)",
        ),
    ] {
        let a = classify(sql, &f);
        assert_eq!((a.access, a.reason), (Access::Write, reason), "{sql}");
    }
}

#[test]
fn data_modifying_ctes_and_select_into_are_writes() {
    let f = catalog();
    for sql in [
        "WITH d AS (DELETE FROM t WHERE a < 0 RETURNING *) SELECT count(*) FROM d",
        "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
        "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u",
        "WITH a AS (SELECT 1), b AS (INSERT INTO t SELECT * FROM a RETURNING *) SELECT * FROM b",
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
    ] {
        let a = classify(sql, &f);
        assert_eq!(a.access, Access::Write, "{sql}");
        assert!(!a.parse_failed, "{sql}");
    }
    assert_eq!(
        classify("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", &f).reason,
        "data-modifying CTE"
    );
    let a = classify("SELECT * INTO new_t FROM t", &f);
    assert_eq!((a.access, a.reason), (Access::Write, "SELECT INTO"));
}

#[test]
fn sequence_and_volatile_functions_are_writes() {
    let f = catalog();
    for (sql, reason) in [
        ("SELECT nextval('s')", "sequence or transaction-id function"),
        (
            "SELECT setval('s', 10)",
            "sequence or transaction-id function",
        ),
        ("SELECT currval('s')", "sequence or transaction-id function"),
        ("SELECT lastval()", "sequence or transaction-id function"),
        (
            "SELECT txid_current()",
            "sequence or transaction-id function",
        ),
        ("SELECT random()", "volatile function"),
        ("SELECT RANDOM() * 10", "volatile function"),
        ("SELECT pg_catalog.random()", "volatile function"),
        (
            "SELECT * FROM t ORDER BY random() LIMIT 1",
            "volatile function",
        ),
        (
            "SELECT * FROM t WHERE a > (SELECT max(b) + random() FROM u)",
            "volatile function",
        ),
        (
            "SELECT * FROM t WHERE a IN (SELECT clock_timestamp())",
            "volatile function",
        ),
        (
            "SELECT EXISTS (SELECT gen_random_uuid())",
            "volatile function",
        ),
        (
            "SELECT * FROM (SELECT app.audit_log(1)) s",
            "volatile function",
        ),
        ("SELECT * FROM app.audit_log(1)", "volatile function"),
        (
            "SELECT * FROM t, LATERAL audit_log(t.id) x",
            "volatile function",
        ),
        (
            "WITH x AS (SELECT random() r) SELECT r FROM x",
            "volatile function",
        ),
        (
            "SELECT CASE WHEN a THEN random() END FROM t",
            "volatile function",
        ),
        (
            "SELECT count(*) FILTER (WHERE random() > 0.5) FROM t",
            "volatile function",
        ),
        (
            "SELECT sum(a) OVER (ORDER BY random()) FROM t",
            "volatile function",
        ),
        ("SELECT lower(upper(random()::text))", "volatile function"),
        ("SELECT ARRAY[random()]", "volatile function"),
        (
            "SELECT * FROM t WHERE id = ANY (ARRAY(SELECT random()))",
            "volatile function",
        ),
        ("SELECT pg_advisory_lock(1)", "volatile function"),
        ("SELECT set_config('a.b', 'c', false)", "volatile function"),
        (
            "SELECT * FROM generate_series(1, (random() * 10)::int)",
            "volatile function",
        ),
        ("VALUES (random())", "volatile function"),
        ("SELECT a FROM t UNION SELECT random()", "volatile function"),
        (
            "SELECT * FROM t JOIN u ON u.x = random()",
            "volatile function",
        ),
        (
            "SELECT undefined_function(1)",
            "function not in the catalog",
        ),
        (
            "SELECT other_schema.lower('x')",
            "function not in the catalog",
        ),
    ] {
        let a = classify(sql, &f);
        assert_eq!((a.access, a.reason), (Access::Write, reason), "{sql}");
        assert!(!a.parse_failed, "{sql}");
    }
}

#[test]
fn unknown_volatility_is_conservative() {
    let f = FunctionVolatility::unknown();
    assert_eq!(
        classify("SELECT lower(name), now(), count(*) FROM t", &f).access,
        Access::Read
    );
    assert_eq!(
        classify("SELECT * FROM generate_series(1, 3)", &f).access,
        Access::Read
    );
    let a = classify("SELECT my_func(1)", &f);
    assert_eq!(
        (a.access, a.reason),
        (Access::Write, "function volatility not loaded")
    );
    let f = FunctionVolatility::unknown().with_overrides(&[], &["my_func".into()]);
    assert_eq!(classify("SELECT my_func(1)", &f).access, Access::Read);
    let f = catalog().with_overrides(&["price_of".into()], &["random".into()]);
    assert_eq!(classify("SELECT app.price_of(1)", &f).access, Access::Write);
    assert_eq!(classify("SELECT random()", &f).access, Access::Read);
}

#[test]
fn first_keyword_writes() {
    assert_writes(&[
        "INSERT INTO t VALUES (1)",
        "insert into t select * from u",
        "UPDATE t SET a = a + 1",
        "DELETE FROM t",
        "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
        "TRUNCATE t",
        "CREATE TABLE x (a int)",
        "CREATE TEMP TABLE x AS SELECT 1",
        "ALTER TABLE t ADD COLUMN b int",
        "DROP TABLE t",
        "GRANT SELECT ON t TO u",
        "COMMENT ON TABLE t IS 'x'",
        "VACUUM t",
        "ANALYZE t",
        "REFRESH MATERIALIZED VIEW v",
        "LISTEN chan",
        "NOTIFY chan, 'x'",
        "UNLISTEN *",
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
        "CALL proc(1)",
        "DO $$ BEGIN PERFORM 1; END $$",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "PREPARE TRANSACTION 'gid'",
        "COMMIT PREPARED 'gid'",
        "ROLLBACK PREPARED 'gid'",
        "CHECKPOINT",
        "REINDEX TABLE t",
        "LOAD 'auto_explain'",
        "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
        "DECLARE \"C\" CURSOR FOR SELECT 1",
        "TABLE t FOR UPDATE",
        "TABLE t UNION SELECT random()",
        "; ;$x",
    ]);
    // The cheap path never needs sqlparser: even text it could not parse is classified.
    let a = classify("INSERT INTO t VALUES ((((", &catalog());
    assert_eq!((a.access, a.parse_failed), (Access::Write, false));
    assert_eq!(a.reason, "data-modifying statement");
}

#[test]
fn transaction_control() {
    let f = catalog();
    let cases = [
        ("BEGIN", TxControl::Begin { read_only: None }),
        ("begin work", TxControl::Begin { read_only: None }),
        (
            "BEGIN READ ONLY",
            TxControl::Begin {
                read_only: Some(true),
            },
        ),
        (
            "BEGIN TRANSACTION READ WRITE",
            TxControl::Begin {
                read_only: Some(false),
            },
        ),
        (
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            TxControl::Begin { read_only: None },
        ),
        (
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE",
            TxControl::Begin {
                read_only: Some(true),
            },
        ),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY NOT DEFERRABLE",
            TxControl::Begin {
                read_only: Some(true),
            },
        ),
        (
            "start transaction read write",
            TxControl::Begin {
                read_only: Some(false),
            },
        ),
        (
            "SET TRANSACTION READ ONLY",
            TxControl::SetTransaction {
                read_only: Some(true),
            },
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            TxControl::SetTransaction { read_only: None },
        ),
        (
            "set transaction isolation level read uncommitted, read write",
            TxControl::SetTransaction {
                read_only: Some(false),
            },
        ),
        (
            "SET TRANSACTION SNAPSHOT '0001'",
            TxControl::SetTransaction { read_only: None },
        ),
        ("COMMIT", TxControl::Commit),
        ("COMMIT WORK", TxControl::Commit),
        ("END", TxControl::Commit),
        ("END TRANSACTION", TxControl::Commit),
        ("COMMIT AND CHAIN", TxControl::Commit),
        ("ROLLBACK", TxControl::Rollback),
        ("ROLLBACK TRANSACTION", TxControl::Rollback),
        ("ROLLBACK AND NO CHAIN", TxControl::Rollback),
        ("ABORT", TxControl::Rollback),
        (
            "/* c */ -- d\n BEGIN /* read only */",
            TxControl::Begin { read_only: None },
        ),
    ];
    for (sql, tx) in cases {
        let a = classify(sql, &f);
        assert_eq!(a.tx, tx, "{sql}");
        assert!(a.only_tx_control, "{sql}");
        assert_eq!((a.access, a.statements), (Access::Read, 1), "{sql}");
    }
    for sql in [
        "START",
        "START foo",
        "SET TRANSACTIONS x",
        "PREPARE TRANSACTION 'x'",
    ] {
        let a = classify(sql, &f);
        assert!(!a.only_tx_control, "{sql}");
        assert_eq!(a.tx, TxControl::None, "{sql}");
    }
}

#[test]
fn multi_statement_strings() {
    let f = catalog();
    let a = classify("BEGIN READ ONLY; SELECT 1; COMMIT", &f);
    assert_eq!(
        a.tx,
        TxControl::Begin {
            read_only: Some(true)
        }
    );
    assert_eq!(
        (a.access, a.statements, a.only_tx_control),
        (Access::Read, 3, false)
    );

    let a = classify("SELECT 1; UPDATE t SET a = 1; SELECT 2", &f);
    assert_eq!(
        (a.access, a.reason, a.statements),
        (Access::Write, "data-modifying statement", 3)
    );
    assert_eq!(a.tx, TxControl::None);

    let a = classify("BEGIN; SELECT random(); COMMIT;", &f);
    assert_eq!((a.access, a.reason), (Access::Write, "volatile function"));
    assert_eq!(a.tx, TxControl::Begin { read_only: None });

    let a = classify("COMMIT; BEGIN", &f);
    assert_eq!(
        (a.tx, a.only_tx_control, a.statements),
        (TxControl::Commit, true, 2)
    );

    let a = classify("SELECT 'a;b'; SELECT $$;$$", &f);
    assert_eq!((a.access, a.statements), (Access::Read, 2));

    // After a write the rest is not parsed: the answer cannot change.
    let a = classify("DELETE FROM t; SELECT ((((", &f);
    assert_eq!(
        (a.access, a.parse_failed, a.statements),
        (Access::Write, false, 2)
    );
    let a = classify("SELECT ((((; DELETE FROM t", &f);
    assert_eq!(
        (a.access, a.parse_failed, a.reason),
        (Access::Write, true, "parse failed")
    );
}

#[test]
fn empty_and_comment_only() {
    let f = catalog();
    for sql in ["", "  ", ";", " ; ; ", "/* nothing */", "-- x"] {
        let a = classify(sql, &f);
        assert_eq!(
            (a.access, a.statements, a.only_tx_control),
            (Access::Read, 0, false),
            "{sql:?}"
        );
    }
}

#[test]
fn parse_failure_is_a_write() {
    let f = catalog();
    for sql in [
        "SELECT 1 +",
        "SELECT * FROM t WHERE",
        "SELECT (1",
        "SELECT * FROM t WHERE a = ",
        "WITH x AS SELECT 1",
        "SELECT 'unterminated",
        "COPY",
    ] {
        let a = classify(sql, &f);
        assert_eq!((a.access, a.parse_failed), (Access::Write, true), "{sql}");
    }
}

#[test]
fn hints_travel_with_the_analysis() {
    let a = classify(
        "/* shardpool.consistency=strong, shardpool.shard=2 */ SELECT 1",
        &catalog(),
    );
    assert_eq!(a.hints.consistency, Some(Consistency::Strong));
    assert_eq!(a.hints.shard, Some(2));
    assert_eq!(a.access, Access::Read);
    assert!(classify("SELECT 1", &catalog()).hints.is_empty());
}

#[test]
fn pathological_input_does_not_crash() {
    let f = catalog();
    // A long operator chain: sqlparser builds it iteratively, so the tree is as deep as the chain. Within the
    // depth bound it is analysed; beyond it, refused before a tree exists and routed as a write.
    let chain = format!("SELECT 1{}", "+1".repeat(900));
    assert_eq!(access(&chain), Access::Read);
    let deep = format!("SELECT 1{}", "+1".repeat(7_990));
    let a = classify(&deep, &f);
    assert_eq!(
        (a.access, a.reason),
        (Access::Write, "statement too deeply nested to analyse")
    );
    let too_long = format!("SELECT 1{}", "+1".repeat(8_000));
    let a = classify(&too_long, &f);
    assert_eq!(
        (a.access, a.reason),
        (Access::Write, "statement too long to analyse")
    );
    // Deep nesting: refused by the depth bound; a little less deep, sqlparser's recursion limit fails the parse.
    // Neither overflows the stack.
    let nested = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    assert_eq!(
        classify(&nested, &f).reason,
        "statement too deeply nested to analyse"
    );
    let nested = format!("SELECT {}1{}", "(".repeat(100), ")".repeat(100));
    assert!(classify(&nested, &f).parse_failed);
    let subqueries = format!("SELECT {}1{}", "(SELECT ".repeat(2_000), ")".repeat(2_000));
    assert_eq!(access(&subqueries), Access::Write);
    for sql in [
        "SELECT \u{0}",
        "SELECT '\u{1F600}'",
        "\u{1F600}",
        "SELECT $1::int[]",
        "SELECT $99999999999",
    ] {
        let _ = classify(sql, &f);
    }
}
