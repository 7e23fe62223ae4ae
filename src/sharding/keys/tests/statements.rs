//! Whole query strings and other statement kinds, parse failures, and shapes that need every shard's rows.

use super::*;

// --- whole strings, other statements ------------------------------------------------------------------------

#[test]
fn several_statements_combine() {
    let a = analyze_sql(
        "SELECT * FROM accounts WHERE aid = 1; SELECT 2; UPDATE accounts SET abalance = 0 WHERE aid = 2",
        &schema(),
    );
    let ShardAnalysis::Analyzed {
        statements,
        combined,
    } = a
    else {
        panic!()
    };
    assert_eq!(statements.len(), 3);
    assert_eq!(statements[1].target(), Target::AnyShard);
    assert_eq!(combined.kind, StatementKind::Write);
    assert_eq!(keys_of(&combined), acc(&[int(1), int(2)]));
    let a = analyze_sql(
        "SELECT * FROM accounts WHERE aid = 1; SELECT * FROM history",
        &schema(),
    );
    assert_eq!(a.combined().map(|c| c.keys.clone()), Some(Keys::None));
    let empty = analyze_sql("", &schema());
    assert_eq!(empty.combined().map(|c| c.target()), Some(Target::AnyShard));
}

#[test]
fn parse_failures_are_unroutable() {
    for sql in [
        "SELEC * FROM accounts",
        "SELECT * FROM accounts WHERE aid = ",
        "'unterminated",
    ] {
        assert!(
            matches!(
                analyze_sql(sql, &schema()),
                ShardAnalysis::Unroutable { .. }
            ),
            "{sql}"
        );
    }
}

#[test]
fn other_statement_kinds() {
    assert_eq!(one("BEGIN").kind, StatementKind::Other);
    assert_eq!(one("SET search_path = public").target(), Target::AnyShard);
    assert_eq!(
        keys("EXPLAIN SELECT * FROM accounts WHERE aid = 1"),
        acc(&[int(1)])
    );
    let s = one("CREATE INDEX ON accounts (abalance)");
    assert_eq!((s.kind, s.sharded.len()), (StatementKind::Ddl, 1));
    assert_eq!(one("DROP TABLE countries").target(), Target::AllShards);
    assert_eq!(one("TRUNCATE accounts, history").sharded.len(), 2);
    assert_eq!(
        one("ALTER TABLE settings ADD COLUMN x int").target(),
        Target::DefaultShard
    );
    let s = one("COPY accounts (aid, abalance) FROM STDIN");
    assert_eq!(
        (s.kind, s.target()),
        (StatementKind::Write, Target::Scatter)
    );
    let s = one("COPY (SELECT * FROM accounts WHERE aid = 1) TO STDOUT");
    assert_eq!((s.kind, keys_of(&s)), (StatementKind::Read, acc(&[int(1)])));
    let s = one("MERGE INTO accounts a USING history h ON h.aid = a.aid WHEN MATCHED THEN DELETE");
    assert_eq!(keys_of(&s), None);
    assert_eq!(s.cross_shard, Some(CrossShard::Unanalyzed("MERGE")));
    let s = one("SELECT * FROM accounts WHERE aid = 1 FOR UPDATE");
    assert_eq!((s.kind, keys_of(&s)), (StatementKind::Read, acc(&[int(1)])));
}

#[test]
fn functions_in_from_and_subqueries_in_expressions_are_seen() {
    let s =
        one("SELECT * FROM generate_series(1, 3) g JOIN accounts a ON a.aid = g.g WHERE a.aid = 2");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(2)]), None));
    for sql in [
        "SELECT coalesce((SELECT 1 FROM history LIMIT 1), 0) FROM accounts WHERE aid = 1",
        "SELECT * FROM accounts WHERE aid = 1 AND abalance > ALL(SELECT delta FROM history)",
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM history) THEN 1 END FROM accounts WHERE aid = 1",
        "SELECT * FROM accounts WHERE aid = 1 ORDER BY (SELECT max(delta) FROM history)",
        "SELECT count(*) FILTER (WHERE abalance IN (SELECT delta FROM history)) FROM accounts WHERE aid = 1",
    ] {
        let s = one(sql);
        assert_eq!(s.sharded.len(), 2, "{sql}");
        assert!(s.cross_shard.is_some(), "{sql}");
    }
}

#[test]
fn lateral_subqueries_correlate() {
    let s = one(
        "SELECT * FROM accounts a, LATERAL (SELECT * FROM history h WHERE h.aid = a.aid LIMIT 3) x \
         WHERE a.aid = 1",
    );
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
}

#[test]
fn huge_in_lists_stay_cheap() {
    let list: Vec<String> = (0..20_000).map(|n| n.to_string()).collect();
    let list = list.join(", ");
    let sql = format!(
        "SELECT * FROM accounts WHERE aid IN ({list}) AND aid IN ({list}) OR aid IN ({list})"
    );
    let started = std::time::Instant::now();
    let s = one(&sql);
    let Keys::Values(v) = &s.keys else { panic!() };
    assert!(v.len() >= 20_000);
    // Generous bound for a debug build on a loaded machine; quadratic work would take minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn nested_shapes_that_need_every_shards_rows_are_flagged() {
    for (sql, what) in [
        (
            "SELECT * FROM (SELECT * FROM accounts ORDER BY abalance LIMIT 10) s",
            "LIMIT or OFFSET",
        ),
        (
            "WITH x AS (SELECT * FROM accounts OFFSET 5) SELECT * FROM x",
            "LIMIT or OFFSET",
        ),
        (
            "WITH x AS (SELECT * FROM accounts) SELECT * FROM (SELECT count(*) FROM x) c",
            "an aggregate",
        ),
        (
            "SELECT * FROM (SELECT abalance, count(*) FROM accounts GROUP BY abalance) s",
            "an aggregate",
        ),
        (
            "SELECT * FROM (SELECT DISTINCT abalance FROM accounts) s",
            "DISTINCT",
        ),
        (
            "SELECT * FROM (SELECT aid, row_number() OVER (ORDER BY abalance) FROM accounts) s",
            "a window function",
        ),
        (
            "SELECT * FROM (SELECT aid FROM accounts EXCEPT SELECT 1) s",
            "UNION, INTERSECT or EXCEPT",
        ),
        (
            "SELECT * FROM ((SELECT aid FROM accounts LIMIT 1) UNION ALL SELECT 2) s",
            "LIMIT or OFFSET",
        ),
    ] {
        let s = one(sql);
        assert_eq!(keys_of(&s), None, "{sql}");
        assert_eq!(s.cross_shard, Some(CrossShard::NeedsAllRows(what)), "{sql}");
    }
    // Fine per shard: the top level (the merge's business), groups by key, correlated aggregates, pinned
    // subqueries, limits over reference tables.
    for sql in [
        "SELECT * FROM accounts ORDER BY abalance LIMIT 10",
        "SELECT count(*) FROM accounts",
        "SELECT * FROM (SELECT * FROM accounts) s ORDER BY abalance LIMIT 10",
        "WITH x AS (SELECT * FROM accounts) SELECT count(*) FROM x",
        "SELECT * FROM (SELECT aid, count(*) FROM history GROUP BY aid) s",
        "SELECT a.*, (SELECT count(*) FROM history h WHERE h.aid = a.aid) FROM accounts a",
        "SELECT * FROM accounts WHERE country IN (SELECT code FROM countries LIMIT 5)",
        "SELECT * FROM (SELECT aid FROM accounts UNION ALL SELECT 2) s",
    ] {
        assert_eq!(one(sql).cross_shard, None, "{sql}");
    }
    let s = one("SELECT * FROM (SELECT * FROM accounts WHERE aid = 1 LIMIT 1) s");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
}

#[test]
fn everyday_postgres_syntax_is_understood() {
    for sql in [
        "SELECT data -> 'a' ->> 'b', data @> '{}'::jsonb, tags[1], (rec).field FROM accounts WHERE aid = 1",
        "SELECT now() - interval '1 day', EXTRACT(year FROM ts), ts AT TIME ZONE 'UTC' FROM accounts WHERE aid = 1",
        "SELECT coalesce(x, 0), CASE WHEN x IS DISTINCT FROM y THEN 1 ELSE 2 END FROM accounts WHERE aid = 1",
        "SELECT x ~ 'a', x SIMILAR TO 'b', x ILIKE 'c%', position('a' in x), substring(x from 1 for 2) \
         FROM accounts WHERE aid = 1",
        "SELECT trim(both 'x' from y), overlay(x placing 'y' from 1), x COLLATE \"C\", ROW(1, 2), ARRAY[1, 2] \
         FROM accounts WHERE aid = 1",
        "SELECT count(*) FILTER (WHERE x > 0), string_agg(x, ',' ORDER BY x), \
         percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM accounts WHERE aid = 1",
        "SELECT x, sum(y) FROM accounts WHERE aid = 1 GROUP BY GROUPING SETS ((x), ())",
        "SELECT * FROM accounts a, unnest(a.tags) WITH ORDINALITY t(tag, n) WHERE a.aid = 1",
        "SELECT * FROM accounts WHERE aid = 1 AND x BETWEEN 1 AND 2 AND y IS NOT NULL FOR UPDATE SKIP LOCKED",
        "INSERT INTO accounts (aid, abalance) VALUES (1, 0) ON CONFLICT DO NOTHING RETURNING aid, abalance",
        "UPDATE accounts SET tags = array_append(tags, 'x') WHERE aid = 1 RETURNING *",
        "SELECT * FROM accounts WHERE aid = 1 ORDER BY x DESC NULLS LAST LIMIT 10 OFFSET 5",
        "SELECT x, lag(x) OVER (PARTITION BY y ORDER BY z) FROM accounts WHERE aid = 1",
    ] {
        let s = one(sql);
        assert_eq!(s.cross_shard, None, "{sql}");
        assert_eq!(keys_of(&s), acc(&[int(1)]), "{sql}");
    }
    let s = one("SELECT * FROM accounts WHERE aid = ANY(SELECT aid FROM history WHERE aid = 4)");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(4)]), None));
}
