//! Joins: co-located tables on their keys, outer joins, and the joins that cannot run per shard.

use super::*;

// --- joins --------------------------------------------------------------------------------------------------

#[test]
fn colocated_joins_with_a_key_on_either_table() {
    for sql in [
        "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid WHERE a.aid = 1",
        "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid WHERE h.aid = 1",
        "SELECT * FROM accounts a JOIN history h ON a.aid = h.aid AND h.aid = 1",
        "SELECT * FROM accounts a, history h WHERE a.aid = h.aid AND 1 = h.aid",
        "SELECT * FROM accounts JOIN history USING (aid) WHERE aid = 1",
        "SELECT * FROM accounts NATURAL JOIN history WHERE history.aid = 1",
        "SELECT * FROM accounts a JOIN (history h JOIN accounts b ON b.aid = h.aid) ON h.aid = a.aid WHERE a.aid = 1",
        "SELECT * FROM accounts a JOIN branches b ON b.bid = a.aid WHERE b.bid = 1",
    ] {
        let s = one(sql);
        assert_eq!(s.cross_shard, None, "{sql}");
        let Some(k) = keys_of(&s) else { panic!("{sql}") };
        assert_eq!(k.len(), 1, "{sql}");
        assert_eq!(k[0].1, int(1), "{sql}");
    }
    assert_eq!(
        keys(
            "SELECT * FROM accounts a JOIN history h ON a.aid = h.aid WHERE a.aid = 1 OR h.aid = 2"
        ),
        acc(&[int(1), int(2)])
    );
    let s =
        one("SELECT * FROM orders o JOIN invoices i ON i.tenant = o.tenant WHERE o.tenant = $1");
    assert_eq!(
        (keys_of(&s), s.cross_shard),
        (on("orders", &[KeyRef::Param(1)]), None)
    );
}

#[test]
fn outer_join_conditions_do_not_limit_the_preserved_side() {
    let s = one("SELECT * FROM accounts a LEFT JOIN history h ON h.aid = a.aid AND h.aid = 5");
    assert_eq!((keys_of(&s), s.cross_shard), (None, None));
    let s = one("SELECT * FROM accounts a LEFT JOIN history h ON h.aid = a.aid WHERE h.aid = 5");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(5)]), None));
    let s = one("SELECT * FROM accounts a FULL JOIN history h ON h.aid = a.aid WHERE a.aid = 2");
    assert_eq!((keys_of(&s), s.cross_shard), (acc(&[int(2)]), None));
}

#[test]
fn non_colocated_joins_are_flagged() {
    let s = one("SELECT * FROM accounts a JOIN history h ON h.delta = a.abalance WHERE a.aid = 1");
    assert_eq!(keys_of(&s), None);
    assert_eq!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey {
            left: "accounts".into(),
            right: "history".into()
        })
    );
    // Both pinned: the router may still run it if both keys land on one shard.
    let s = one("SELECT * FROM accounts x, accounts y WHERE x.aid = 1 AND y.aid = 2");
    assert_eq!(keys_of(&s), acc(&[int(1), int(2)]));
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::NotJoinedOnKey { .. })
    ));
    let s = one("SELECT * FROM orders o JOIN notes n ON n.tenant = o.tenant WHERE o.tenant = 'a'");
    assert_eq!(
        s.cross_shard,
        Some(CrossShard::DifferentMaps {
            left: "orders".into(),
            right: "notes".into()
        })
    );
    let s = one("SELECT * FROM accounts a JOIN sessions s ON s.id = a.aid");
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::DifferentMaps { .. })
    ));
    // Unqualified key names shared by two unjoined tables are ambiguous: no key.
    assert_eq!(
        keys("SELECT * FROM accounts a, history h WHERE aid = 1"),
        None
    );
    let s =
        one("SELECT * FROM accounts WHERE aid = 1 UNION ALL SELECT * FROM accounts WHERE aid = 2");
    assert_eq!(keys_of(&s), acc(&[int(1), int(2)]));
    assert!(s.cross_shard.is_some());
}

#[test]
fn reference_and_unsharded_tables() {
    let s = one("SELECT * FROM accounts a JOIN countries c ON c.code = a.country WHERE aid = 3");
    assert_eq!(
        (keys_of(&s), s.cross_shard, s.reads_reference),
        (acc(&[int(3)]), None, true)
    );
    let s = one("SELECT * FROM accounts a JOIN settings s ON s.k = a.country WHERE a.aid = 3");
    assert_eq!(keys_of(&s), acc(&[int(3)]));
    assert_eq!(
        s.cross_shard,
        Some(CrossShard::WithUnsharded {
            sharded: "accounts".into(),
            unsharded: "settings".into()
        })
    );
    let s = one("SELECT * FROM settings JOIN countries ON true");
    assert_eq!(
        (s.target(), s.cross_shard.clone()),
        (Target::DefaultShard, None)
    );
    assert_eq!(one("SELECT * FROM countries").target(), Target::AnyShard);
    assert_eq!(one("SELECT 1").target(), Target::AnyShard);
    assert_eq!(one("SELECT 1").kind, StatementKind::Read);
    let s = one("UPDATE countries SET name = 'x' WHERE code = 'fr'");
    assert_eq!(
        (s.kind, s.target(), s.cross_shard.clone()),
        (StatementKind::Write, Target::AllShards, None)
    );
    let s = one("INSERT INTO countries (code) SELECT country FROM accounts");
    assert!(matches!(
        s.cross_shard,
        Some(CrossShard::ReferenceWriteReads { .. })
    ));
    assert_eq!(
        one("SELECT * FROM other.settings").unsharded.as_deref(),
        Some("other.settings")
    );
    // An unqualified configuration name matches the table in any schema.
    assert_eq!(
        keys("SELECT * FROM other.orders WHERE tenant = 'a'"),
        on("orders", &[text("a")])
    );
}
