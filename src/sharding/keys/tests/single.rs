//! Statements on one sharded table: equalities, IN lists, AND/OR, casts, NULL, names and aliases, key types.

use super::*;

// --- single table -------------------------------------------------------------------------------------------

#[test]
fn equality_either_side() {
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = 1"), acc(&[int(1)]));
    assert_eq!(keys("SELECT * FROM accounts WHERE 1 = aid"), acc(&[int(1)]));
    assert_eq!(
        keys("SELECT * FROM accounts WHERE ((aid) = (5))"),
        acc(&[int(5)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = -7"),
        acc(&[int(-7)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = -9223372036854775808"),
        acc(&[int(i64::MIN)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = 1 IS NOT DISTINCT FROM true"),
        None
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid IS NOT DISTINCT FROM 3"),
        acc(&[int(3)])
    );
}

#[test]
fn in_lists_and_any_arrays() {
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid IN (1, 2, $3)"),
        acc(&[int(1), int(2), KeyRef::Param(3)])
    );
    assert_eq!(keys("SELECT * FROM accounts WHERE aid NOT IN (1, 2)"), None);
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid IN (1, abalance)"),
        None
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = ANY(ARRAY[4, 5])"),
        acc(&[int(4), int(5)])
    );
    // An array parameter is one value holding many keys: not resolvable here.
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = ANY($1)"), None);
}

#[test]
fn and_pins_with_any_key_conjunct_and_intersects_literals() {
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = 1 AND abalance > 0"),
        acc(&[int(1)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE abalance > 0 AND aid = $1"),
        acc(&[KeyRef::Param(1)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid IN (1, 2) AND aid IN (2, 3)"),
        acc(&[int(2)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = 1 AND aid = 2"),
        acc(&[null()])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid IN (1, 2) AND aid = $1"),
        acc(&[KeyRef::Param(1)])
    );
}

#[test]
fn or_unions_key_equalities_only() {
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = 1 OR aid = 2"),
        acc(&[int(1), int(2)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = $1 OR aid IN ($2, 1) OR aid = 1"),
        acc(&[KeyRef::Param(1), KeyRef::Param(2), int(1)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = 1 OR abalance = 2"),
        None
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE (aid = 1 OR aid = 2) AND abalance = 0"),
        acc(&[int(1), int(2)])
    );
    assert_eq!(
        keys(
            "SELECT * FROM accounts WHERE (aid = 1 AND abalance = 0) OR (aid = 2 AND abalance = 1)"
        ),
        acc(&[int(1), int(2)])
    );
}

#[test]
fn casts_to_the_key_type_are_transparent() {
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = '42'::bigint"),
        acc(&[int(42)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = $1::int8"),
        acc(&[KeyRef::Param(1)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = CAST($2 AS integer)"),
        acc(&[KeyRef::Param(2)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = '7'"),
        acc(&[int(7)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = '5'::int4::int8"),
        acc(&[int(5)])
    );
    // Casts to other types compare differently (or fail in Postgres): no key.
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = '42'::text"), None);
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = 42::numeric"), None);
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = $1::text"), None);
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = 1.5"), None);
    assert_eq!(keys("SELECT * FROM accounts WHERE aid = 'x'"), None);
    // The key itself cast is no longer the key column.
    assert_eq!(keys("SELECT * FROM accounts WHERE aid::text = '42'"), None);
}

#[test]
fn adversarial_shapes_have_no_key() {
    for sql in [
        "SELECT * FROM accounts WHERE abs(aid) = 1",
        "SELECT * FROM accounts WHERE aid = abalance",
        "SELECT * FROM accounts WHERE aid > 5",
        "SELECT * FROM accounts WHERE aid <> 1",
        "SELECT * FROM accounts WHERE aid BETWEEN 1 AND 1",
        "SELECT * FROM accounts WHERE NOT (aid = 1)",
        "SELECT * FROM accounts WHERE aid IS NULL",
        "SELECT * FROM accounts WHERE aid + 0 = 1",
        "SELECT * FROM accounts WHERE aid = 1 OR true",
        "SELECT * FROM accounts WHERE CASE WHEN aid = 1 THEN true END",
        "SELECT * FROM accounts",
        "SELECT * FROM accounts WHERE aid = $0",
        "SELECT * FROM accounts WHERE aid = $99999999999999999999999",
    ] {
        let s = one(sql);
        assert_eq!(keys_of(&s), None, "{sql}");
        assert_eq!(s.cross_shard, None, "{sql}");
        assert_eq!(s.target(), Target::Scatter, "{sql}");
    }
}

#[test]
fn null_matches_nothing() {
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid = NULL"),
        acc(&[null()])
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE aid IN (1, NULL)"),
        acc(&[int(1), null()])
    );
}

#[test]
fn comments_case_and_quoting() {
    assert_eq!(
        keys("/* shardpool */ SELECT * -- why\n FROM accounts WHERE aid = 3 /* end */"),
        acc(&[int(3)])
    );
    assert_eq!(keys("SELECT * FROM ACCOUNTS WHERE AID = 4"), acc(&[int(4)]));
    assert_eq!(
        keys("select * from Public.Accounts a where A.Aid = 4"),
        acc(&[int(4)])
    );
    assert_eq!(
        keys("SELECT * FROM \"accounts\" WHERE \"aid\" = 4"),
        acc(&[int(4)])
    );
    // "AID" quoted is another column; "Accounts" quoted another table.
    assert_eq!(keys("SELECT * FROM accounts WHERE \"AID\" = 4"), None);
    assert!(one("SELECT * FROM \"Accounts\" WHERE aid = 4")
        .sharded
        .is_empty());
    assert_eq!(
        keys("SELECT * FROM \"Users\" u WHERE u.\"UserId\" = 'Ann'"),
        on("Users", &[text("Ann")])
    );
    assert_eq!(
        one("SELECT * FROM users WHERE userid = 'Ann'")
            .unsharded
            .as_deref(),
        Some("users")
    );
}

#[test]
fn aliases_resolve_and_hide_the_table_name() {
    assert_eq!(
        keys("SELECT * FROM accounts a WHERE a.aid = 1"),
        acc(&[int(1)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts AS a WHERE a.aid = 1"),
        acc(&[int(1)])
    );
    assert_eq!(
        keys("SELECT * FROM public.accounts WHERE public.accounts.aid = 1"),
        acc(&[int(1)])
    );
    assert_eq!(
        keys("SELECT * FROM accounts \"A\" WHERE \"A\".aid = 1"),
        acc(&[int(1)])
    );
    assert_eq!(keys("SELECT * FROM accounts \"A\" WHERE a.aid = 1"), None);
    assert_eq!(keys("SELECT * FROM accounts a WHERE b.aid = 1"), None);
}

#[test]
fn text_and_uuid_keys() {
    let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    let want = KeyType::Uuid.parse_text(u).unwrap();
    for sql in [
        format!("SELECT * FROM sessions WHERE id = '{u}'"),
        format!("SELECT * FROM sessions WHERE id = uuid '{u}'"),
        format!("SELECT * FROM sessions WHERE id = '{u}'::uuid"),
    ] {
        assert_eq!(
            keys(&sql),
            on("sessions", &[KeyRef::Literal(want.clone())]),
            "{sql}"
        );
    }
    assert_eq!(keys("SELECT * FROM sessions WHERE id = 'nope'"), None);
    assert_eq!(
        keys("SELECT * FROM sessions WHERE id = $1::uuid"),
        on("sessions", &[KeyRef::Param(1)])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = 'acme'"),
        on("orders", &[text("acme")])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = E'a\\nb'"),
        on("orders", &[text("a\nb")])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = 'it''s'"),
        on("orders", &[text("it's")])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = $$q$$"),
        on("orders", &[text("q")])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = 'x'::varchar"),
        on("orders", &[text("x")])
    );
    assert_eq!(keys("SELECT * FROM orders WHERE tenant = 42"), None);
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = 'abcd'::varchar(3)"),
        None
    );
    assert_eq!(keys("SELECT * FROM orders WHERE tenant = N'x'"), None);
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = U&'\\0041'"),
        on("orders", &[text("A")])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = E'\\x41\\101'"),
        on("orders", &[text("AA")])
    );
    assert_eq!(
        keys("SELECT * FROM orders WHERE tenant = 'x'::char(3)"),
        None
    );
    let s = one("SELECT * FROM orders WHERE tenant = 'acme'");
    let Keys::Values(v) = &s.keys else { panic!() };
    assert_eq!((v[0].map(), v[0].key_type()), ("tenants", KeyType::Text));
}
