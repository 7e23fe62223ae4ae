//! CTEs, derived tables, correlated subqueries and `key IN (SELECT ...)` semi-joins.

use super::*;

// --- subqueries and CTEs ------------------------------------------------------------------------------------

#[test]
fn ctes_and_derived_tables_bind_the_key() {
    assert_eq!(
        keys("WITH x AS (SELECT * FROM accounts WHERE aid = 5) SELECT * FROM x"),
        acc(&[int(5)])
    );
    assert_eq!(
        keys("SELECT * FROM (SELECT * FROM accounts WHERE aid = 5) s WHERE s.abalance > 0"),
        acc(&[int(5)])
    );
    assert_eq!(
        keys("WITH x AS (SELECT aid FROM accounts WHERE aid = $1), y AS (SELECT * FROM x) SELECT * FROM y"),
        acc(&[KeyRef::Param(1)])
    );
    // A CTE name shadows a sharded table of the same name.
    let s = one("WITH accounts AS (SELECT 1 AS aid) SELECT * FROM accounts WHERE aid = 1");
    assert!(s.sharded.is_empty());
    assert_eq!(s.target(), Target::AnyShard);
    // Known limit: a key limited only outside the CTE is not traced into it.
    assert_eq!(
        keys("WITH x AS (SELECT * FROM accounts) SELECT * FROM x WHERE x.aid = 5"),
        None
    );
    // Data-modifying CTE.
    let s = one("WITH d AS (DELETE FROM accounts WHERE aid = 1 RETURNING *) SELECT * FROM d");
    assert_eq!(
        (s.kind, keys_of(&s)),
        (StatementKind::Write, acc(&[int(1)]))
    );
}

#[test]
fn correlated_subqueries_on_the_key_are_colocated() {
    let s = one("SELECT * FROM accounts a WHERE a.aid = 1 AND EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid)");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
    // Inner conditions limit only the inner rows.
    let s = one(
        "SELECT * FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid AND h.aid = 5)",
    );
    assert_eq!((keys_of(&s), s.cross_shard), (None, None));
    // An inner block tying two outer tables does not co-locate them.
    let s = one(
        "SELECT * FROM accounts a, history b WHERE a.aid = 1 AND b.aid = 2 AND \
         NOT EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid AND h.aid = b.aid)",
    );
    assert_eq!(
        keys_of(&s),
        Some(vec![
            ("accounts".into(), int(1)),
            ("history".into(), int(2))
        ])
    );
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey { .. })
    ));
    // Uncorrelated subqueries over sharded tables read every shard.
    let s = one("SELECT a.*, (SELECT count(*) FROM history) FROM accounts a WHERE aid = 1");
    assert_eq!(keys_of(&s), None);
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey { .. })
    ));
}

#[test]
fn key_in_subquery_is_a_semi_join() {
    let s = one("SELECT * FROM accounts WHERE aid IN (SELECT aid FROM history WHERE aid = 9)");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(9)]), None));
    let s =
        one("SELECT * FROM accounts WHERE aid IN (SELECT h.aid FROM history h WHERE h.delta > 0)");
    assert_eq!((keys_of(&s), s.cross_shard), (None, None));
    let s = one("SELECT * FROM accounts WHERE aid = (SELECT aid FROM history WHERE aid = 3)");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(3)]), None));
    let s = one("SELECT * FROM accounts WHERE aid NOT IN (SELECT aid FROM history WHERE aid = 3)");
    assert_eq!((keys_of(&s), s.cross_shard), (None, None));
    // Not rows by key: an aggregate, a LIMIT, another column.
    for sql in [
        "SELECT * FROM accounts WHERE aid = (SELECT max(aid) FROM history)",
        "SELECT * FROM accounts WHERE aid IN (SELECT aid FROM history ORDER BY delta LIMIT 1)",
        "SELECT * FROM accounts WHERE aid IN (SELECT delta FROM history)",
    ] {
        let s = one(sql);
        assert_eq!(keys_of(&s), None, "{sql}");
        assert!(
            matches!(s.cross_shard, Some(CrossShard::NotJoinedOnKey { .. })),
            "{sql}"
        );
    }
}
