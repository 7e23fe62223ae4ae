//! INSERT rows, INSERT ... SELECT, UPDATE and DELETE by key, and writes that would move a row.

use super::*;

// --- writes -------------------------------------------------------------------------------------------------

#[test]
fn insert_values_reports_each_row() {
    let s = one("INSERT INTO accounts (aid, abalance) VALUES (1, 0)");
    assert_eq!(s.kind, StatementKind::Write);
    assert_eq!(
        s.insert_table.as_ref().map(|t| t.name.as_str()),
        Some("accounts")
    );
    assert_eq!(keys_of(&s), acc(&[int(1)]));
    assert_eq!(s.insert_rows, vec![int(1)]);
    let s = one("INSERT INTO accounts (abalance, aid) VALUES (0, 1), (0, 2), (5, $1), (0, 1)");
    assert_eq!(
        s.insert_rows,
        vec![int(1), int(2), KeyRef::Param(1), int(1)]
    );
    assert_eq!(
        keys_of(&s),
        acc(&[int(1), int(2), KeyRef::Param(1), int(1)])
    );
    assert!(!s.insert_null_key);
    let s = one("INSERT INTO accounts (aid, abalance) VALUES ($1::int8, $2) RETURNING aid");
    assert_eq!(s.insert_rows, vec![KeyRef::Param(1)]);
}

#[test]
fn insert_with_null_or_unknown_keys() {
    let s = one("INSERT INTO accounts (abalance, aid) VALUES (0, 1), (0, NULL)");
    assert!(s.insert_null_key);
    assert_eq!(s.insert_rows, vec![int(1), null()]);
    for sql in [
        "INSERT INTO accounts VALUES (1, 0)",
        "INSERT INTO accounts (aid) VALUES (DEFAULT)",
        "INSERT INTO accounts (abalance) VALUES (0)",
        "INSERT INTO accounts (aid) VALUES (1), (nextval('s'))",
        "INSERT INTO accounts DEFAULT VALUES",
    ] {
        let s = one(sql);
        assert_eq!(keys_of(&s), None, "{sql}");
        assert!(s.insert_rows.is_empty(), "{sql}");
        assert_eq!(s.target(), Target::Scatter, "{sql}");
    }
}

#[test]
fn insert_select_needs_the_select_to_pin_the_key() {
    let s = one("INSERT INTO accounts (aid, abalance) SELECT aid, 0 FROM history WHERE aid = 5");
    assert_eq!(keys_of(&s), acc(&[int(5)]));
    assert_eq!(s.cross_shard, None);
    assert!(s.insert_rows.is_empty());
    // Same map and type: rows land where their source rows are.
    let s = one("INSERT INTO accounts (aid, abalance) SELECT bid, 0 FROM branches WHERE bid = $1");
    assert_eq!(keys_of(&s), acc(&[KeyRef::Param(1)]));
    // Keyless but co-located: a fan-out would be correct.
    let s = one("INSERT INTO accounts (aid, abalance) SELECT aid, 0 FROM history");
    assert_eq!((keys_of(&s), s.cross_shard), (None, None));
    // The key comes from a non-key column: rows move between shards.
    let s = one("INSERT INTO accounts (aid, abalance) SELECT delta, 0 FROM history WHERE aid = 1");
    assert_eq!(keys_of(&s), None);
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey { .. })
    ));
    assert_eq!(
        keys("INSERT INTO accounts (aid, abalance) SELECT 7, 0 FROM countries"),
        acc(&[int(7)])
    );
    assert_eq!(
        keys("INSERT INTO accounts (abalance, aid) SELECT 0, $2"),
        acc(&[KeyRef::Param(2)])
    );
    assert_eq!(
        keys("INSERT INTO accounts SELECT * FROM history WHERE aid = 1"),
        None
    );
    // Windows and global DISTINCT are computed over every shard's rows.
    let s =
        one("INSERT INTO accounts (aid, abalance) SELECT aid, row_number() OVER () FROM history");
    assert_eq!(keys_of(&s), None);
    assert_eq!(
        s.cross_shard,
        Some(CrossShard::NeedsAllRows("a window function"))
    );
    let s =
        one("INSERT INTO accounts (aid, abalance) SELECT aid, count(*) FROM history GROUP BY aid");
    assert_eq!((keys_of(&s), s.cross_shard), (None, None));
    assert_eq!(
        keys(
            "INSERT INTO accounts (aid, abalance) SELECT aid, 0 FROM history WHERE aid = 5 LIMIT 1"
        ),
        None
    );
}

#[test]
fn update_and_delete_by_key() {
    let s = one("UPDATE accounts SET abalance = abalance + $2 WHERE aid = $1");
    assert_eq!(
        (s.kind, keys_of(&s), s.changes_key),
        (StatementKind::Write, acc(&[KeyRef::Param(1)]), false)
    );
    assert_eq!(
        keys("UPDATE accounts a SET abalance = 0 WHERE a.aid IN (1, 2)"),
        acc(&[int(1), int(2)])
    );
    assert_eq!(
        keys("DELETE FROM accounts WHERE aid IN ($1, $2)"),
        acc(&[KeyRef::Param(1), KeyRef::Param(2)])
    );
    assert_eq!(
        keys("DELETE FROM accounts AS a WHERE a.aid = 3 RETURNING *"),
        acc(&[int(3)])
    );
    let s = one("DELETE FROM accounts WHERE abalance < 0");
    assert_eq!(
        (s.kind, keys_of(&s), s.target()),
        (StatementKind::Write, None, Target::Scatter)
    );
    // UPDATE ... FROM a co-located table, and DELETE ... USING.
    let s = one(
        "UPDATE accounts a SET abalance = h.delta FROM history h WHERE h.aid = a.aid AND a.aid = 8",
    );
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(8)]), None));
    let s = one("DELETE FROM accounts a USING history h WHERE h.aid = a.aid AND h.aid = 9");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(9)]), None));
}

#[test]
fn writes_with_subqueries() {
    let s = one(
        "UPDATE accounts SET abalance = (SELECT sum(delta) FROM history WHERE history.aid = accounts.aid) \
         WHERE aid = 1",
    );
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(1)]), None));
    // Keyless but co-located: refused as a keyless write unless fan-out is allowed, and then correct.
    let s = one("DELETE FROM accounts WHERE aid IN (SELECT aid FROM history WHERE delta < 0)");
    assert_eq!(
        (s.kind, keys_of(&s), s.cross_shard),
        (StatementKind::Write, None, None)
    );
    let s = one("UPDATE accounts SET abalance = (SELECT max(delta) FROM history) WHERE aid = 1");
    assert_eq!(keys_of(&s), None);
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey { .. })
    ));
    let s =
        one("INSERT INTO accounts (aid, abalance) VALUES (1, (SELECT max(delta) FROM history))");
    assert_eq!(s.insert_rows, vec![int(1)]);
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey { .. })
    ));
}

#[test]
fn updates_that_move_rows_are_flagged() {
    assert!(one("UPDATE accounts SET aid = 2 WHERE aid = 1").changes_key);
    assert!(one("UPDATE accounts SET abalance = 0, AID = aid + 1 WHERE aid = 1").changes_key);
    assert!(one("UPDATE accounts SET (abalance, aid) = (0, 2) WHERE aid = 1").changes_key);
    assert!(
        one("INSERT INTO accounts (aid, abalance) VALUES (1, 0) ON CONFLICT (aid) DO UPDATE SET aid = excluded.aid + 1")
            .changes_key
    );
    let s = one("INSERT INTO accounts (aid, abalance) VALUES (1, 0) ON CONFLICT (aid) DO UPDATE SET abalance = 1");
    assert!(!s.changes_key);
    assert_eq!(keys_of(&s), acc(&[int(1)]));
    // Assigning a column named like another table's key is fine.
    assert!(!one("UPDATE branches SET aid = 2 WHERE bid = 1").changes_key);
}
