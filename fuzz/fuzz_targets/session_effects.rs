//! The session-effects scanner (src/router/session_effects.rs) and the lexer under it (src/router/scan.rs) over
//! arbitrary query text: which statements' effects outlive a transaction (SET, RESET, DISCARD, DEALLOCATE, LISTEN,
//! advisory locks, temp tables...).
//! Invariants: no panic; statement splitting yields pieces of the input, in order, without overlap; the effects of
//! a text are the effects of its statements one by one; settings carried to other servers come with SQL that
//! reads back as the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::router::scan::{contains_word_ci, statements, Words};
use shardpool::router::session_effects::{
    effects, quote_literal, startup_options, statement_effect, SessionEffect, Setting,
};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let sql = sql.as_ref();

    let base = sql.as_ptr() as usize;
    let mut end = 0;
    let mut pieces = Vec::new();
    for s in statements(sql) {
        let start = s.as_ptr() as usize - base;
        assert!(
            start >= end && start + s.len() <= sql.len(),
            "{s:?} is not a later piece of the input"
        );
        end = start + s.len();
        pieces.push(s);
    }
    let all = effects(sql);
    if !sql.trim_end().trim_end_matches(';').contains(';') {
        // One statement: effects takes its fast path.
        assert!(all.len() <= 1);
    } else {
        let one_by_one: Vec<SessionEffect> =
            pieces.iter().filter_map(|s| statement_effect(s)).collect();
        assert_eq!(all, one_by_one);
    }
    for e in &all {
        match e {
            SessionEffect::Set(s) => {
                assert!(!s.name.is_empty());
                let _ = Setting::reset_sql(&s.name);
            }
            SessionEffect::Reset(name) => {
                let _ = Setting::reset_sql(name);
            }
            _ => {}
        }
    }
    let mut words = Words::new(sql);
    while let Some(w) = words.next() {
        assert!(!w.is_empty());
    }
    let _ = words.rest();
    for needle in ["with", "hold", "temp", "pg_advisory_lock", "listen"] {
        let _ = contains_word_ci(sql, needle);
    }
    for (name, value) in startup_options(sql) {
        let s = Setting::from_startup(&name, &value);
        assert_eq!(s.name, name.to_ascii_lowercase());
    }
    // A literal shardpool writes is one string token holding exactly the value.
    let quoted = quote_literal(sql);
    if !sql.contains('\0') {
        let tokens = shardpool::sqlparse::tokenize(&quoted).expect("a quoted literal tokenizes");
        match tokens
            .iter()
            .map(|t| &t.token)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [sqlparser::tokenizer::Token::SingleQuotedString(s)] => assert_eq!(s, sql),
            other => panic!("{quoted:?} tokenizes as {other:?}"),
        }
    }
});
