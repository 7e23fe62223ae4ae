//! INSERT without a column list: the key's position comes from the table's column order, when known.

use std::collections::HashMap;

use super::*;
use crate::sharding::schema::TableColumns;

fn columns() -> TableColumns {
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    TableColumns::new(HashMap::from([
        ("accounts".to_string(), cols(&["aid", "abalance"])),
        ("history".to_string(), cols(&["hid", "aid", "delta"])),
        ("orders".to_string(), cols(&["id", "tenant", "amount"])),
    ]))
}

fn with_columns(sql: &str) -> StatementShards {
    match analyze_sql_with(sql, &schema(), &columns()) {
        ShardAnalysis::Analyzed { combined, .. } => combined,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn values_rows_take_the_key_at_its_column_position() {
    let s = with_columns("INSERT INTO accounts VALUES (1, 10), (-2, 20)");
    assert_eq!(s.insert_rows, vec![int(1), int(-2)]);
    assert_eq!(keys_of(&s), acc(&[int(1), int(-2)]));
    assert_eq!(s.insert_columns_unknown, None);

    // The key is the second column of orders.
    let s = with_columns("INSERT INTO orders VALUES (7, 'acme', 5)");
    assert_eq!(s.insert_rows, vec![text("acme")]);
    assert_eq!(keys_of(&s), on("orders", &[text("acme")]));

    let s = with_columns("INSERT INTO orders VALUES ($1, $2, $3), (8, $4, 1)");
    assert_eq!(s.insert_rows, vec![KeyRef::Param(2), KeyRef::Param(4)]);

    let s = with_columns("INSERT INTO accounts VALUES (NULL, 0)");
    assert!(s.insert_null_key);
}

#[test]
fn rows_without_a_value_at_the_key_position_have_no_key() {
    for sql in [
        "INSERT INTO orders VALUES (1)",
        "INSERT INTO orders VALUES (1, DEFAULT, 2)",
        "INSERT INTO orders VALUES (1, 'a', 2), (2)",
    ] {
        let s = with_columns(sql);
        assert_eq!(keys_of(&s), None, "{sql}");
        assert!(s.insert_rows.is_empty(), "{sql}");
        assert_eq!(s.insert_columns_unknown, None, "{sql}");
    }
}

#[test]
fn insert_select_reads_the_key_at_its_column_position() {
    let s = with_columns("INSERT INTO history SELECT 1, aid, 0 FROM accounts WHERE aid = 5");
    assert_eq!(keys_of(&s), on("history", &[int(5)]));
    assert_eq!(s.cross_shard, None);
    let s = with_columns("INSERT INTO history SELECT 1, 42, 0");
    assert_eq!(keys_of(&s), on("history", &[int(42)]));
    // Position 1 is what goes into history.aid, whatever column the SELECT reads there.
    let s = with_columns("INSERT INTO history SELECT aid, 1, 0 FROM accounts WHERE aid = 5");
    assert_eq!(
        keys_of(&s),
        Some(vec![
            ("history".into(), int(1)),
            ("accounts".into(), int(5))
        ])
    );
}

#[test]
fn an_unknown_column_order_is_flagged_not_guessed() {
    // notes has no known order; accounts has none without `columns()`.
    let s = with_columns("INSERT INTO notes VALUES ('a', 1)");
    assert_eq!(s.insert_columns_unknown.as_deref(), Some("notes"));
    assert_eq!(keys_of(&s), None);
    let s = one("INSERT INTO accounts SELECT * FROM accounts WHERE aid = 1");
    assert_eq!(s.insert_columns_unknown.as_deref(), Some("accounts"));
    // A column list, DEFAULT VALUES, or an unsharded target need no column order.
    for sql in [
        "INSERT INTO notes (tenant) VALUES ('a')",
        "INSERT INTO notes DEFAULT VALUES",
        "INSERT INTO plain VALUES (1)",
    ] {
        assert_eq!(one(sql).insert_columns_unknown, None, "{sql}");
    }
}
