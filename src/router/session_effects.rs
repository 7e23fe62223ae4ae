//! Statements whose effect outlives the transaction they run in. In transaction pooling the next transaction may run
//! on another server, so the session must either carry the effect over (SET/RESET: re-applied on whichever server the
//! client gets), emulate it (DEALLOCATE of statements shardpool renamed), or keep the server (LISTEN, session
//! advisory locks, WITH HOLD cursors, temporary tables, SQL-level PREPARE).

use super::scan::{contains_word_ci, find_ci, statements, Words};

/// A session setting to carry to other servers: the statement that applies it and the one that undoes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Lower-case GUC name (or a pseudo-name such as `role`), the key settings are tracked by.
    pub name: String,
    pub apply: String,
}

impl Setting {
    /// SQL that returns this setting to the server's default.
    pub fn reset_sql(name: &str) -> String {
        match name {
            "role" => "RESET ROLE".into(),
            "session_authorization" => "RESET SESSION AUTHORIZATION".into(),
            "session_characteristics" => {
                "RESET default_transaction_isolation; RESET default_transaction_read_only; \
                                          RESET default_transaction_deferrable"
                    .into()
            }
            other => format!("RESET {}", quote_name(other)),
        }
    }

    /// A setting given at login (startup packet or `options -c`), applied as a quoted literal.
    pub fn from_startup(name: &str, value: &str) -> Setting {
        let name = name.to_ascii_lowercase();
        Setting {
            apply: format!("SET {} TO {}", quote_name(&name), quote_literal(value)),
            name,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEffect {
    Set(Setting),
    Reset(String),
    ResetAll,
    /// DISCARD ALL: settings, prepared statements, temp tables, listeners and locks are all gone.
    DiscardAll,
    DeallocateAll,
    Deallocate(String),
    /// Keeps server-side state beyond the transaction; the name is for messages and SHOW CLIENTS.
    NeedsSession(&'static str),
    /// Changes settings through a function (`set_config(name, value, false)`), with arguments that may be
    /// expressions: not carried to other servers, but the server it ran on is reset (RESET ALL) before its next use.
    SettingsUnknown,
}

/// Session effects of every statement in a query string, in order.
pub fn effects(sql: &str) -> Vec<SessionEffect> {
    // Fast exit for the common case: one statement that starts with a keyword nothing here cares about.
    let mut out = Vec::new();
    // One statement, with or without the trailing `;` most clients and pgbench scripts add (the common case): no
    // splitting pass needed. Without the trim, every `SELECT ...;` paid the literal-aware scan.
    let body = sql.trim_end().trim_end_matches(';');
    // Branch-free, like the prefilters below: `contains(';')` searched byte by byte.
    if !body
        .as_bytes()
        .iter()
        .fold(false, |seen, &b| seen | (b == b';'))
    {
        out.extend(statement_effect(body));
        return out;
    }
    for stmt in statements(sql) {
        if let Some(e) = statement_effect(stmt) {
            out.push(e);
        }
    }
    out
}

pub fn statement_effect(stmt: &str) -> Option<SessionEffect> {
    let mut words = Words::new(stmt);
    let first = words.next()?;
    let kw = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
    // Every keyword below starts with one of these letters; UPDATE, INSERT, DELETE, BEGIN, END, COMMIT... go
    // straight to the advisory-lock check.
    let lead = first.as_bytes().first().map_or(0, |b| b | 0x20);
    if !matches!(lead, b'c' | b'd' | b'l' | b'p' | b'r' | b's' | b'w') {
        return advisory_lock_effect(stmt);
    }
    if kw(first, "SET") {
        return set_effect(words);
    }
    if kw(first, "RESET") {
        let name = words.next()?;
        if kw(name, "ALL") {
            return Some(SessionEffect::ResetAll);
        }
        if kw(name, "SESSION") {
            return Some(SessionEffect::Reset("session_authorization".into()));
        }
        if kw(name, "TIME") {
            // RESET TIME ZONE, the SQL-standard spelling of RESET timezone.
            return match words.next() {
                Some(w) if kw(w, "ZONE") => Some(SessionEffect::Reset("timezone".into())),
                _ => None,
            };
        }
        let rest = words.rest();
        return Some(SessionEffect::Reset(dotted_name(name, rest).0));
    }
    if kw(first, "DISCARD") {
        return match words.next() {
            Some(w) if kw(w, "ALL") => Some(SessionEffect::DiscardAll),
            _ => None,
        };
    }
    if kw(first, "DEALLOCATE") {
        let mut name = words.next()?;
        if kw(name, "PREPARE") {
            name = words.next()?;
        }
        if kw(name, "ALL") {
            return Some(SessionEffect::DeallocateAll);
        }
        return Some(SessionEffect::Deallocate(name.to_owned()));
    }
    if kw(first, "LISTEN") {
        return Some(SessionEffect::NeedsSession("LISTEN"));
    }
    if kw(first, "PREPARE") {
        return Some(SessionEffect::NeedsSession("PREPARE"));
    }
    if kw(first, "DECLARE") && contains_word_ci(stmt, "WITH HOLD") {
        return Some(SessionEffect::NeedsSession("WITH HOLD cursors"));
    }
    if kw(first, "DO") {
        // The body is a string to the scanner: look inside it, conservatively (an UPDATE ... SET pins too).
        let b = stmt.as_bytes();
        let touches_session = [
            &b"advisory_lock"[..],
            b"temp",
            b"set_config",
            b"listen",
            b"prepare",
            b"set ",
            b"with hold",
        ]
        .iter()
        .any(|n| raw_contains_ci(b, n));
        return touches_session
            .then_some(SessionEffect::NeedsSession("DO blocks with session state"));
    }
    if (kw(first, "SELECT") || kw(first, "WITH")) && has_mp(stmt) {
        // SELECT ... INTO TEMP[ORARY] creates a temporary table, as CREATE TEMP TABLE ... AS does.
        let mut from = 0;
        while let Some(at) = find_ci(stmt, "INTO", from) {
            let mut after = Words::new(stmt.get(at + 4..).unwrap_or(""));
            if after
                .next()
                .is_some_and(|w| kw(w, "TEMP") || kw(w, "TEMPORARY"))
            {
                return Some(SessionEffect::NeedsSession("temporary tables"));
            }
            from = at + 4;
        }
    }
    if kw(first, "CREATE") {
        let mut w = words.next()?;
        if kw(w, "GLOBAL") || kw(w, "LOCAL") {
            w = words.next()?;
        }
        if kw(w, "TEMP") || kw(w, "TEMPORARY") {
            return Some(SessionEffect::NeedsSession("temporary tables"));
        }
        return None;
    }
    advisory_lock_effect(stmt)
}

/// Whether `stmt` takes a session-level advisory lock, which any statement may do.
fn advisory_lock_effect(stmt: &str) -> Option<SessionEffect> {
    // Cheap raw prefilters before the literal-aware scan: most statements never mention advisory locks, and most
    // do not even contain a `v` (a branch-free pass the compiler vectorises, where the search below is a loop with
    // a compare per byte that cost a select-only transaction about 5 % of shardpool's instructions). Every
    // INSERT ... VALUES has a `v`, and then paid that loop (a sixth of TPC-B's `effects` cost): almost no
    // statement has `dv`, and that is the second filter.
    let has_v = stmt
        .as_bytes()
        .iter()
        .fold(false, |seen, &b| seen | (b | 0x20 == b'v'));
    if has_v
        && has_pair(stmt, b'd', b'v')
        && raw_contains_ci(stmt.as_bytes(), b"advisory")
        && (contains_word_ci(stmt, "pg_advisory_lock")
            || contains_word_ci(stmt, "pg_try_advisory_lock"))
    {
        return Some(SessionEffect::NeedsSession("session advisory locks"));
    }
    // `nf` (of `config`) first: a branch-free pass that few statements pass, before the search for the name.
    if has_pair(stmt, b'n', b'f') && raw_contains_ci(stmt.as_bytes(), b"set_config") {
        return Some(SessionEffect::SettingsUnknown);
    }
    None
}

/// Whether `stmt` holds the letters `mp` in a row (as `TEMP` does), so that the literal-aware search for `INTO TEMP`
/// runs for almost no SELECT (every SELECT comes through here).
fn has_mp(stmt: &str) -> bool {
    has_pair(stmt, b'm', b'p')
}

/// Whether `stmt` holds the letters `a` then `b` (given in lower case) in a row, in any case: a branch-free pass
/// (about 2.6 instructions per byte; memchr's vectorised search was slower on statements this short).
fn has_pair(stmt: &str, a: u8, b: u8) -> bool {
    let s = stmt.as_bytes();
    s.iter()
        .zip(s.iter().skip(1))
        .fold(false, |seen, (&x, &y)| {
            seen | ((x | 0x20 == a) & (y | 0x20 == b))
        })
}

fn raw_contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let first = first.to_ascii_lowercase();
    hay.len() >= needle.len()
        && (0..=hay.len() - needle.len()).any(|i| {
            hay[i] | 0x20 == first && hay[i..i + needle.len()].eq_ignore_ascii_case(needle)
        })
}

fn set_effect(mut words: Words<'_>) -> Option<SessionEffect> {
    let kw = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
    let mut name = words.next()?;
    if kw(name, "LOCAL") || kw(name, "TRANSACTION") {
        return None; // transaction-scoped: Postgres undoes it at commit/rollback
    }
    let mut prefix = "SET ";
    if kw(name, "SESSION") {
        let rest_before = words.rest();
        name = words.next()?;
        if kw(name, "AUTHORIZATION") {
            return Some(SessionEffect::Set(Setting {
                name: "session_authorization".into(),
                apply: format!("SET SESSION AUTHORIZATION {}", words.rest()),
            }));
        }
        if kw(name, "CHARACTERISTICS") {
            return Some(SessionEffect::Set(Setting {
                name: "session_characteristics".into(),
                apply: format!("SET SESSION CHARACTERISTICS {}", words.rest()),
            }));
        }
        let _ = rest_before;
        prefix = "SET ";
    }
    let special = |n: &str, apply_kw: &str, words: &mut Words<'_>| {
        Some(SessionEffect::Set(Setting {
            name: n.into(),
            apply: format!("SET {apply_kw} {}", words.rest()),
        }))
    };
    if kw(name, "TIME") {
        if !kw(words.next()?, "ZONE") {
            return None;
        }
        return special("timezone", "TIME ZONE", &mut words);
    }
    if kw(name, "ROLE") {
        return special("role", "ROLE", &mut words);
    }
    if kw(name, "SCHEMA") {
        return special("search_path", "SCHEMA", &mut words);
    }
    if kw(name, "NAMES") {
        return special("client_encoding", "NAMES", &mut words);
    }
    let (full, after) = dotted_name(name, words.rest());
    let value = after
        .strip_prefix('=')
        .or_else(|| strip_keyword(&after, "TO"))?
        .trim();
    if value.is_empty() {
        return None;
    }
    if value.eq_ignore_ascii_case("DEFAULT") {
        return Some(SessionEffect::Reset(full));
    }
    Some(SessionEffect::Set(Setting {
        apply: format!("{prefix}{} TO {value}", quote_name(&full)),
        name: full,
    }))
}

/// Joins `a.b.c` names (custom GUCs); returns the lower-cased name and the text after it.
fn dotted_name(first: &str, rest: &str) -> (String, String) {
    let mut name = first.to_ascii_lowercase();
    let mut rest = rest;
    while let Some(r) = rest.strip_prefix('.') {
        let mut w = Words::new(r);
        match w.next() {
            Some(part) => {
                name.push('.');
                name.push_str(&part.to_ascii_lowercase());
                rest = w.rest();
            }
            None => break,
        }
    }
    (name, rest.trim_start().to_owned())
}

fn strip_keyword<'a>(s: &'a str, k: &str) -> Option<&'a str> {
    let head = s.get(..k.len())?;
    let tail = &s[k.len()..];
    (head.eq_ignore_ascii_case(k) && tail.starts_with(|c: char| c.is_whitespace() || c == '\''))
        .then_some(tail)
}

fn quote_name(name: &str) -> String {
    // GUC names are identifiers, possibly dotted; they contain only [a-z0-9_.] once lower-cased.
    if name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Parses the startup `options` parameter (`-c name=value`, `--name=value`), as Postgres' backend does.
pub fn startup_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut args = split_options(options).into_iter();
    while let Some(arg) = args.next() {
        let kv = if arg == "-c" {
            args.next()
        } else if let Some(rest) = arg.strip_prefix("-c") {
            Some(rest.to_owned())
        } else {
            arg.strip_prefix("--").map(str::to_owned)
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

/// Splits on whitespace, honouring backslash escapes as `pg_split_opts` does.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_prefilter_finds_letters_in_any_case() {
        assert!(has_pair("select * into TEMP t", b'm', b'p'));
        assert!(has_pair("SELECT PG_ADVISORY_LOCK(1)", b'd', b'v'));
        assert!(has_pair("xdV", b'd', b'v'));
        assert!(!has_pair("insert into t (delta) values (1)", b'd', b'v'));
        assert!(!has_pair("d", b'd', b'v'));
        assert!(!has_pair("", b'd', b'v'));
        assert!(!has_pair("héllo dé v", b'd', b'v'));
    }

    fn set(name: &str, apply: &str) -> SessionEffect {
        SessionEffect::Set(Setting {
            name: name.into(),
            apply: apply.into(),
        })
    }

    #[test]
    fn recognises_set_forms() {
        assert_eq!(
            statement_effect("SET search_path = a, b"),
            Some(set("search_path", "SET search_path TO a, b"))
        );
        assert_eq!(
            statement_effect("set SESSION DateStyle to 'ISO'"),
            Some(set("datestyle", "SET datestyle TO 'ISO'"))
        );
        assert_eq!(
            statement_effect("SET TIME ZONE 'UTC'"),
            Some(set("timezone", "SET TIME ZONE 'UTC'"))
        );
        assert_eq!(
            statement_effect("SET myapp.user_id = '42'"),
            Some(set("myapp.user_id", "SET myapp.user_id TO '42'"))
        );
        assert_eq!(
            statement_effect("SET ROLE reader"),
            Some(set("role", "SET ROLE reader"))
        );
        assert_eq!(statement_effect("SET LOCAL statement_timeout = 5"), None);
        assert_eq!(
            statement_effect("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            None
        );
        assert_eq!(
            statement_effect("SET work_mem TO DEFAULT"),
            Some(SessionEffect::Reset("work_mem".into()))
        );
    }

    #[test]
    fn recognises_resets_and_session_features() {
        assert_eq!(statement_effect("RESET ALL"), Some(SessionEffect::ResetAll));
        assert_eq!(
            statement_effect("reset TimeZone"),
            Some(SessionEffect::Reset("timezone".into()))
        );
        assert_eq!(
            statement_effect("RESET TIME ZONE"),
            Some(SessionEffect::Reset("timezone".into()))
        );
        assert_eq!(
            statement_effect("DISCARD ALL"),
            Some(SessionEffect::DiscardAll)
        );
        assert_eq!(
            statement_effect("DEALLOCATE PREPARE s1"),
            Some(SessionEffect::Deallocate("s1".into()))
        );
        assert_eq!(
            statement_effect("deallocate all"),
            Some(SessionEffect::DeallocateAll)
        );
        assert_eq!(
            statement_effect("LISTEN chan"),
            Some(SessionEffect::NeedsSession("LISTEN"))
        );
        assert!(matches!(
            statement_effect("CREATE TEMP TABLE t (a int)"),
            Some(SessionEffect::NeedsSession(_))
        ));
        assert!(matches!(
            statement_effect("select pg_advisory_lock(1)"),
            Some(SessionEffect::NeedsSession(_))
        ));
        assert_eq!(statement_effect("select pg_advisory_xact_lock(1)"), None);
        // Statements whose first word is no keyword here still take session locks.
        for sql in [
            "UPDATE t SET a = pg_advisory_lock(1)",
            "insert into t select pg_try_advisory_lock(2)",
            "VALUES (pg_advisory_lock(3))",
        ] {
            assert!(
                matches!(statement_effect(sql), Some(SessionEffect::NeedsSession(_))),
                "{sql}"
            );
        }
        assert_eq!(
            effects("UPDATE t SET a = 1; SELECT pg_advisory_lock(4);"),
            [SessionEffect::NeedsSession("session advisory locks")]
        );
        assert_eq!(
            statement_effect("UPDATE t SET a = a + 1 WHERE id = 5"),
            None
        );
        // State created through functions, SELECT INTO and DO blocks.
        for sql in [
            "SELECT 1 AS x INTO TEMP leak_t",
            "SELECT * INTO TEMPORARY TABLE t2 FROM t",
            "WITH q AS (SELECT 1) SELECT * INTO temp t3 FROM q",
            "DO $$ BEGIN PERFORM pg_advisory_lock(42); END $$",
            "DO $$BEGIN CREATE TEMP TABLE x (a int); END$$",
            "DO 'BEGIN PERFORM set_config(''work_mem'', ''8MB'', false); END'",
            "DO $$BEGIN SET work_mem = '9MB'; END$$",
        ] {
            assert!(
                matches!(statement_effect(sql), Some(SessionEffect::NeedsSession(_))),
                "{sql}"
            );
        }
        // Not pinned: drivers call it on every connection (asyncpg turns jit off and back on around each type
        // introspection), so pinning for it would pin nearly every client; the server is reset instead.
        assert_eq!(
            statement_effect("SELECT set_config('work_mem', '7MB', false)"),
            Some(SessionEffect::SettingsUnknown)
        );
        for sql in [
            "SELECT a INTO b FROM t",
            "SELECT a FROM into_temp",
            "DO $$BEGIN PERFORM 1; END$$",
        ] {
            assert_eq!(statement_effect(sql), None, "{sql}");
        }
        assert_eq!(statement_effect("CREATE TABLE t (a int)"), None);
        assert_eq!(statement_effect("SELECT 'SET x = 1'"), None);
    }

    #[test]
    fn multi_statement_strings() {
        let e = effects("BEGIN; SET a = 1; SELECT 1; RESET b; COMMIT");
        assert_eq!(
            e,
            vec![set("a", "SET a TO 1"), SessionEffect::Reset("b".into())]
        );
    }

    #[test]
    fn startup_options_are_split_like_postgres() {
        assert_eq!(
            startup_options("-c geqo=off --search-path=a\\ b -csearch_path=x"),
            vec![
                ("geqo".into(), "off".into()),
                ("search_path".into(), "a b".into()),
                ("search_path".into(), "x".into())
            ]
        );
        assert_eq!(
            Setting::from_startup("TimeZone", "it's").apply,
            "SET timezone TO 'it''s'"
        );
    }
}
