//! Range conditions on the key: what they limit, and where they must not (OR, NOT, text keys, inner blocks).

use super::*;

fn b(key: KeyRef, inclusive: bool) -> Bound {
    Bound { key, inclusive }
}

/// The ranges as (table, lower bounds, upper bounds).
fn ranges(sql: &str) -> Vec<(String, Vec<Bound>, Vec<Bound>)> {
    let s = one(sql);
    s.ranges
        .iter()
        .map(|r| {
            (
                r.table.name.clone(),
                r.range.lower.clone(),
                r.range.upper.clone(),
            )
        })
        .collect()
}

fn acc_range(lower: Vec<Bound>, upper: Vec<Bound>) -> Vec<(String, Vec<Bound>, Vec<Bound>)> {
    vec![("accounts".into(), lower, upper)]
}

#[test]
fn comparisons_and_between_give_ranges() {
    assert_eq!(
        ranges("SELECT * FROM accounts WHERE aid > 5"),
        acc_range(vec![b(int(5), false)], vec![])
    );
    assert_eq!(
        ranges("SELECT * FROM accounts WHERE 5 < aid"),
        acc_range(vec![b(int(5), false)], vec![])
    );
    assert_eq!(
        ranges("SELECT * FROM accounts WHERE 10 >= aid"),
        acc_range(vec![], vec![b(int(10), true)])
    );
    assert_eq!(
        ranges("SELECT * FROM accounts WHERE aid <= -3"),
        acc_range(vec![], vec![b(int(-3), true)])
    );
    assert_eq!(
        ranges("SELECT * FROM accounts WHERE aid BETWEEN 1 AND '10'"),
        acc_range(vec![b(int(1), true)], vec![b(int(10), true)])
    );
    assert_eq!(
        ranges("DELETE FROM accounts WHERE aid >= $1 AND aid < $2::int8"),
        acc_range(
            vec![b(KeyRef::Param(1), true)],
            vec![b(KeyRef::Param(2), false)]
        )
    );
    // Every bound of an AND is kept: parameters can only be compared once bound.
    assert_eq!(
        ranges("SELECT * FROM accounts WHERE aid > 1 AND abalance > 0 AND (aid < 10 AND aid > $1)"),
        acc_range(
            vec![b(int(1), false), b(KeyRef::Param(1), false)],
            vec![b(int(10), false)]
        )
    );
    let s = one("SELECT * FROM accounts WHERE aid > 5");
    assert_eq!(keys_of(&s), None);
    assert_eq!(s.target(), Target::Scatter);
}

#[test]
fn uuid_keys_range_and_text_keys_do_not() {
    let s = one(
        "SELECT * FROM sessions WHERE id >= 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AND id < $1",
    );
    assert_eq!(s.ranges.len(), 1);
    assert_eq!(s.ranges[0].range.lower.len(), 1);
    // Text comparisons follow the column's collation, not the map's byte order.
    assert!(ranges("SELECT * FROM notes WHERE tenant > 'a'").is_empty());
    assert!(ranges("SELECT * FROM notes WHERE tenant BETWEEN 'a' AND 'b'").is_empty());
}

#[test]
fn equalities_win_over_ranges_and_or_drops_them() {
    let s = one("SELECT * FROM accounts WHERE aid = 5 AND aid > 1");
    assert_eq!(keys_of(&s), acc(&[int(5)]));
    assert!(s.ranges.is_empty());
    for sql in [
        "SELECT * FROM accounts WHERE aid > 10 OR aid < 0",
        "SELECT * FROM accounts WHERE aid > 10 OR aid = 0",
        "SELECT * FROM accounts WHERE aid > 10 OR abalance > 0",
        "SELECT * FROM accounts WHERE NOT (aid > 10)",
        "SELECT * FROM accounts WHERE aid NOT BETWEEN 1 AND 5",
        "SELECT * FROM accounts WHERE aid > 1.5",
        "SELECT * FROM accounts WHERE aid > abalance",
        "SELECT * FROM accounts WHERE aid::text > '5'",
        "SELECT * FROM accounts",
    ] {
        let s = one(sql);
        assert_eq!(keys_of(&s), None, "{sql}");
        assert!(s.ranges.is_empty(), "{sql}");
    }
}

#[test]
fn ranges_follow_units_and_blocks() {
    // Co-located tables joined on the key share the range.
    assert_eq!(
        ranges(
            "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid WHERE a.aid BETWEEN 1 AND 3"
        ),
        acc_range(vec![b(int(1), true)], vec![b(int(3), true)])
    );
    // A range inside a correlated subquery limits only the subquery's rows.
    assert!(ranges(
        "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM history h WHERE h.aid = a.aid AND h.aid > 5)"
    )
    .is_empty());
    // Two units not joined on the key: refused as cross-shard whatever their ranges.
    let s = one("SELECT * FROM accounts a, history h WHERE a.aid > 1 AND h.aid > 1");
    assert!(s.cross_shard.is_some());
    // Every statement of a string needs a range for the string to have them.
    let s = match analyze_sql(
        "SELECT * FROM accounts WHERE aid > 5; SELECT * FROM accounts WHERE aid < 2",
        &schema(),
    ) {
        ShardAnalysis::Analyzed { combined, .. } => combined,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.ranges.len(), 2);
    let s = match analyze_sql(
        "SELECT * FROM accounts WHERE aid > 5; SELECT * FROM accounts",
        &schema(),
    ) {
        ShardAnalysis::Analyzed { combined, .. } => combined,
        other => panic!("{other:?}"),
    };
    assert!(s.ranges.is_empty());
}

#[test]
fn range_bounds_bind_like_keys() {
    let s = one("SELECT * FROM accounts WHERE aid >= $1 AND aid < $2");
    let r = &s.ranges[0];
    let two = 2i64.to_be_bytes();
    assert_eq!(
        bind_range(&r.range, KeyType::Int, &[Some(b"-7"), Some(&two)], &[0, 1]),
        Ok((
            vec![(KeyValue::Int(-7), true)],
            vec![(KeyValue::Int(2), false)]
        ))
    );
    assert!(matches!(
        bind_range(&r.range, KeyType::Int, &[Some(b"x"), None], &[]),
        Err(BindError::Key(_))
    ));
    assert!(matches!(
        bind_range(&r.range, KeyType::Int, &[], &[]),
        Err(BindError::MissingParam { .. })
    ));
}
