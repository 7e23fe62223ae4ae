//! Resolving `$n` keys from Bind parameters in text and binary formats.

use super::*;

// --- binding ------------------------------------------------------------------------------------------------

fn bound(sql: &str, params: &[Option<&[u8]>], formats: &[i16]) -> Result<Vec<KeyValue>, BindError> {
    Ok(bind_keys(&one(sql), params, formats)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

#[test]
fn binds_text_parameters() {
    let q = "SELECT * FROM accounts WHERE aid IN ($1, $2, 7)";
    assert_eq!(
        bound(q, &[Some(b"42"), Some(b"-3")], &[]),
        Ok(vec![KeyValue::Int(42), KeyValue::Int(-3), KeyValue::Int(7)])
    );
    assert_eq!(
        bound(q, &[None, Some(b"1")], &[0]),
        Ok(vec![KeyValue::Null, KeyValue::Int(1), KeyValue::Int(7)])
    );
    assert!(matches!(
        bound(q, &[Some(b"x"), Some(b"1")], &[]),
        Err(BindError::Key(_))
    ));
    assert_eq!(
        bound(q, &[Some(b"1")], &[]),
        Err(BindError::MissingParam {
            wanted: 2,
            given: 1
        })
    );
    assert_eq!(
        bound(
            "SELECT * FROM orders WHERE tenant = $1",
            &[Some("zoë".as_bytes())],
            &[]
        ),
        Ok(vec![KeyValue::Text("zoë".into())])
    );
    assert_eq!(
        bound(
            "SELECT * FROM orders WHERE tenant = $1",
            &[Some(&[0xff])],
            &[]
        ),
        Err(BindError::BadUtf8 { param: 1 })
    );
    let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(
        bound(
            "SELECT * FROM sessions WHERE id = $1",
            &[Some(u.as_bytes())],
            &[]
        ),
        Ok(vec![KeyType::Uuid.parse_text(u).unwrap()])
    );
    assert_eq!(
        bound("SELECT * FROM accounts", &[Some(b"1")], &[]),
        Ok(vec![])
    );
}

#[test]
fn binds_binary_parameters_by_length() {
    let q = "SELECT * FROM accounts WHERE aid = $1";
    for (bytes, want) in [
        (&(-2i16).to_be_bytes()[..], -2i64),
        (&70000i32.to_be_bytes()[..], 70000),
        (&(-5_000_000_000i64).to_be_bytes()[..], -5_000_000_000),
    ] {
        assert_eq!(
            bound(q, &[Some(bytes)], &[1]),
            Ok(vec![KeyValue::Int(want)])
        );
    }
    assert_eq!(
        bound(q, &[Some(&[1, 2, 3])], &[1]),
        Err(BindError::BadBinary { param: 1 })
    );
    assert_eq!(bound(q, &[Some(b"1")], &[2]), Err(BindError::BadFormat(2)));
    let uuid = [7u8; 16];
    assert_eq!(
        bound("SELECT * FROM sessions WHERE id = $1", &[Some(&uuid)], &[1]),
        Ok(vec![KeyValue::Uuid(uuid)])
    );
    assert_eq!(
        bound(
            "SELECT * FROM sessions WHERE id = $1",
            &[Some(&uuid[..15])],
            &[1]
        ),
        Err(BindError::BadBinary { param: 1 })
    );
    assert_eq!(
        bound(
            "SELECT * FROM orders WHERE tenant = $1",
            &[Some(b"acme")],
            &[1]
        ),
        Ok(vec![KeyValue::Text("acme".into())])
    );
}

#[test]
fn format_codes_follow_postgres_rules() {
    let q = "SELECT * FROM accounts WHERE aid IN ($1, $2)";
    let bin = 9i64.to_be_bytes();
    // One code per parameter.
    assert_eq!(
        bound(q, &[Some(b"8"), Some(&bin)], &[0, 1]),
        Ok(vec![KeyValue::Int(8), KeyValue::Int(9)])
    );
    // One code for all.
    assert_eq!(
        bound(q, &[Some(&bin), Some(&bin)], &[1]),
        Ok(vec![KeyValue::Int(9), KeyValue::Int(9)])
    );
    assert_eq!(
        bound(q, &[Some(b"8"), Some(b"9"), Some(b"0")], &[0, 0]),
        Err(BindError::FormatCount {
            formats: 2,
            params: 3
        })
    );
}

#[test]
fn binds_insert_rows() {
    let s = one("INSERT INTO accounts (aid, abalance) VALUES ($1, 0), (5, 0), ($2, 0)");
    assert_eq!(
        bind_insert_rows(&s, &[Some(b"1"), None], &[]),
        Ok(vec![KeyValue::Int(1), KeyValue::Int(5), KeyValue::Null])
    );
}
