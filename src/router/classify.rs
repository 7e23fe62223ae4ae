//! Read or write: the question read/write splitting asks of every statement before a transaction picks a server.
//! Most statements are decided by their first keyword (BEGIN, SET, INSERT, CREATE ...) without a parse; only
//! SELECT, WITH, VALUES, TABLE, EXPLAIN ANALYZE, COPY and DECLARE go to sqlparser (Postgres dialect), because only
//! they can hide a write: a row lock, a data-modifying CTE, SELECT INTO, or a volatile function call anywhere in the
//! tree. Whatever cannot be analysed is a write: the primary is always a correct answer.
//!
//! Input is a simple-query string (possibly several statements) or one extended-protocol Parse text (`$1` params).
//! Statement syntax: PostgreSQL docs "SQL Commands"; transaction modes as in src/backend/parser/gram.y
//! (`transaction_mode_item`).

mod hints;
mod volatility;
mod walk;

#[cfg(test)]
mod tests;

use sqlparser::tokenizer::Token;

use super::scan::{contains_word_ci, statements, Words};

pub use hints::{leading as leading_hints, Hints, RouteHint};
pub use volatility::{
    FunctionVolatility, VolatilityError, KNOWN_NOT_VOLATILE, PRIMARY_ONLY, SYNTAX_FUNCTIONS,
};

/// Statements with more tokens than this are not parsed (they count as writes). sqlparser builds an operator chain
/// (`1+1+...`) in a loop, so its tree is as deep as the chain, not bounded by the parser's recursion limit, and
/// dropping the tree recurses once per level: 20,000 levels overflow a 2 MiB stack in a debug build. This bound keeps
/// the depth under 8,000 while leaving room for long generated queries.
pub const MAX_PARSED_TOKENS: usize = 16_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// May run on a replica.
    Read,
    /// Must run on the primary.
    Write,
}

/// What the first statement does to the transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxControl {
    None,
    /// BEGIN / START TRANSACTION; `read_only` from READ ONLY / READ WRITE when given.
    Begin {
        read_only: Option<bool>,
    },
    /// SET TRANSACTION ...; sets the current transaction's mode (must come first in it).
    SetTransaction {
        read_only: Option<bool>,
    },
    /// COMMIT / END (including AND CHAIN).
    Commit,
    /// ROLLBACK / ABORT (including AND CHAIN); not ROLLBACK TO SAVEPOINT.
    Rollback,
}

/// The classification of one query text. Computed once per text (see `analysis_cache`); routing never looks at the
/// SQL again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// Write if any statement writes.
    pub access: Access,
    /// Why, for debug logs and `SHOW shardpool.route`: the first write's reason, else the first statement's.
    pub reason: &'static str,
    pub tx: TxControl,
    /// Every statement is BEGIN/START/COMMIT/END/ROLLBACK/ABORT/SET TRANSACTION: the session may defer a bare
    /// BEGIN until the transaction's first real statement shows where it should run.
    pub only_tx_control: bool,
    /// Non-empty statements in the text.
    pub statements: usize,
    /// sqlparser rejected a statement it was given (so the access is Write). Statements after the first write are
    /// not parsed, since they cannot change the answer.
    pub parse_failed: bool,
    pub hints: Hints,
}

/// Classifies a query text; never fails.
pub fn classify(sql: &str, functions: &FunctionVolatility) -> Analysis {
    let mut analysis = Analysis {
        access: Access::Read,
        reason: "empty query",
        tx: TxControl::None,
        only_tx_control: true,
        statements: 0,
        parse_failed: false,
        hints: hints::leading(sql),
    };
    if sql.contains(';') {
        for stmt in statements(sql) {
            analysis.add(stmt, functions);
        }
    } else {
        analysis.add(sql, functions);
    }
    analysis.only_tx_control &= analysis.statements > 0;
    analysis
}

impl Analysis {
    fn add(&mut self, stmt: &str, functions: &FunctionVolatility) {
        let may_skip_parse = self.access == Access::Write;
        let Some(v) = statement(stmt, functions, may_skip_parse) else {
            return;
        };
        if self.statements == 0 {
            self.tx = v.tx;
            self.reason = v.reason;
        }
        self.statements += 1;
        self.only_tx_control &= v.tx_control;
        self.parse_failed |= v.parse_failed;
        if v.access == Access::Write && self.access == Access::Read {
            self.access = Access::Write;
            self.reason = v.reason;
        }
    }
}

/// The verdict on one statement.
struct Verdict {
    access: Access,
    reason: &'static str,
    tx: TxControl,
    tx_control: bool,
    parse_failed: bool,
}

impl Verdict {
    fn read(reason: &'static str) -> Verdict {
        Verdict {
            access: Access::Read,
            reason,
            tx: TxControl::None,
            tx_control: false,
            parse_failed: false,
        }
    }

    fn write(reason: &'static str) -> Verdict {
        Verdict {
            access: Access::Write,
            ..Verdict::read(reason)
        }
    }

    fn tx(tx: TxControl) -> Verdict {
        Verdict {
            tx,
            tx_control: true,
            ..Verdict::read("transaction control")
        }
    }
}

/// Upper-cases a leading word into `buf` for matching; words longer than any keyword give an empty slice.
fn upper<'b>(word: &str, buf: &'b mut [u8; 12]) -> &'b [u8] {
    let Some(dst) = buf.get_mut(..word.len()) else {
        return &[];
    };
    dst.copy_from_slice(word.as_bytes());
    dst.make_ascii_uppercase();
    dst
}

/// `None` for a statement that is only comments.
fn statement(stmt: &str, f: &FunctionVolatility, may_skip_parse: bool) -> Option<Verdict> {
    let mut words = Words::new(stmt);
    let Some(first) = words.next() else {
        let rest = words.rest();
        return if rest.is_empty() {
            None
        } else if rest.starts_with('(') {
            Some(parse(stmt, f, may_skip_parse))
        } else {
            Some(Verdict::write("unrecognised statement"))
        };
    };
    let is = |w: Option<&str>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k));
    let mut buf = [0u8; 12];
    Some(match upper(first, &mut buf) {
        b"BEGIN" => Verdict::tx(TxControl::Begin {
            read_only: tx_modes(words),
        }),
        b"START" if is(words.next(), "TRANSACTION") => Verdict::tx(TxControl::Begin {
            read_only: tx_modes(words),
        }),
        b"COMMIT" | b"END" => match words.next() {
            Some(w) if w.eq_ignore_ascii_case("PREPARED") => Verdict::write("two-phase commit"),
            _ => Verdict::tx(TxControl::Commit),
        },
        b"ROLLBACK" => match words.next() {
            Some(w) if w.eq_ignore_ascii_case("PREPARED") => Verdict::write("two-phase commit"),
            Some(w) if w.eq_ignore_ascii_case("TO") => Verdict::read("savepoint"),
            // ROLLBACK WORK/TRANSACTION TO SAVEPOINT x
            Some(_) if is(words.next(), "TO") => Verdict::read("savepoint"),
            _ => Verdict::tx(TxControl::Rollback),
        },
        b"ABORT" => Verdict::tx(TxControl::Rollback),
        b"SAVEPOINT" | b"RELEASE" => Verdict::read("savepoint"),
        b"SET" => match words.next() {
            Some(w) if w.eq_ignore_ascii_case("TRANSACTION") => {
                Verdict::tx(TxControl::SetTransaction {
                    read_only: tx_modes(words),
                })
            }
            _ => Verdict::read("session command"),
        },
        b"RESET" | b"SHOW" | b"DISCARD" | b"DEALLOCATE" => Verdict::read("session command"),
        b"FETCH" | b"MOVE" | b"CLOSE" => Verdict::read("cursor command"),
        b"TABLE" if is_bare_table(words.rest()) => Verdict::read("read-only query"),
        b"SELECT" | b"WITH" | b"VALUES" | b"TABLE" | b"COPY" => parse(stmt, f, may_skip_parse),
        b"EXPLAIN" => {
            if contains_word_ci(stmt, "ANALYZE") || contains_word_ci(stmt, "ANALYSE") {
                parse(stmt, f, may_skip_parse)
            } else {
                Verdict::read("EXPLAIN without ANALYZE")
            }
        }
        b"DECLARE" => declare(words, f, may_skip_parse),
        b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"TRUNCATE" => {
            Verdict::write("data-modifying statement")
        }
        b"CREATE" | b"ALTER" | b"DROP" | b"COMMENT" | b"GRANT" | b"REVOKE" | b"SECURITY"
        | b"REASSIGN" | b"IMPORT" => Verdict::write("DDL"),
        b"VACUUM" | b"ANALYZE" | b"ANALYSE" | b"CLUSTER" | b"REINDEX" | b"REFRESH"
        | b"CHECKPOINT" => Verdict::write("maintenance command"),
        b"LISTEN" | b"NOTIFY" | b"UNLISTEN" => Verdict::write("LISTEN/NOTIFY"),
        b"LOCK" => Verdict::write("LOCK"),
        b"CALL" | b"DO" => Verdict::write("procedure call or DO block"),
        b"PREPARE" if is(words.next(), "TRANSACTION") => Verdict::write("two-phase commit"),
        b"PREPARE" | b"EXECUTE" => Verdict::write("SQL-level prepared statement"),
        _ => Verdict::write("not a read-only statement"),
    })
}

/// `TABLE [ONLY] name [*]` with nothing after it: sqlparser 0.63 does not parse the TABLE command, and it has no
/// expressions to hide a write in. With clauses after it (`TABLE t FOR UPDATE`) it goes to the parser, which fails:
/// a write.
fn is_bare_table(rest: &str) -> bool {
    let name_chars = |w: &str| {
        w.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'"' | b'$' | b'*') || b >= 0x80
        })
    };
    let words: Vec<&str> = rest.split_ascii_whitespace().collect();
    match words.as_slice() {
        [name] => name_chars(name),
        [only, name] => only.eq_ignore_ascii_case("ONLY") && name_chars(name),
        _ => false,
    }
}

/// `READ ONLY` / `READ WRITE` among transaction modes (the last one wins); `READ COMMITTED` is an isolation level.
fn tx_modes(mut words: Words<'_>) -> Option<bool> {
    let mut read_only = None;
    loop {
        let Some(w) = words.next() else {
            // Modes may be separated by commas.
            match words.rest().strip_prefix(',') {
                Some(after) => {
                    words = Words::new(after);
                    continue;
                }
                None => return read_only,
            }
        };
        if w.eq_ignore_ascii_case("READ") {
            match words.next() {
                Some(m) if m.eq_ignore_ascii_case("ONLY") => read_only = Some(true),
                Some(m) if m.eq_ignore_ascii_case("WRITE") => read_only = Some(false),
                _ => {}
            }
        }
    }
}

/// `DECLARE name [options] CURSOR [WITH[OUT] HOLD] FOR query`: as read or write as its query.
fn declare(mut words: Words<'_>, f: &FunctionVolatility, may_skip_parse: bool) -> Verdict {
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("FOR") {
            let query = words.rest();
            let mut first = Words::new(query);
            let is_query = match first.next() {
                Some(w) => ["SELECT", "WITH", "VALUES", "TABLE"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)),
                None => first.rest().starts_with('('),
            };
            return if is_query {
                parse(query, f, may_skip_parse)
            } else {
                Verdict::write("unrecognised cursor query")
            };
        }
    }
    // A quoted cursor name stops the word scan: be conservative.
    Verdict::write("unrecognised DECLARE")
}

fn parse(stmt: &str, f: &FunctionVolatility, may_skip_parse: bool) -> Verdict {
    if may_skip_parse {
        return Verdict::write("not analysed (already a write)");
    }
    let parsed = match crate::sqlparse::tokenize(stmt) {
        Ok(tokens) => {
            let significant = tokens
                .iter()
                .filter(|t| !matches!(t.token, Token::Whitespace(_)))
                .count();
            if significant > MAX_PARSED_TOKENS {
                return Verdict::write("statement too long to analyse");
            }
            match crate::sqlparse::parse_tokens(tokens) {
                Err(crate::sqlparse::SqlParseError::TooDeep) => {
                    return Verdict::write("statement too deeply nested to analyse");
                }
                parsed => parsed,
            }
        }
        Err(e) => Err(e),
    };
    match parsed.as_deref() {
        Ok([one]) => match walk::statement(one, f) {
            Ok(reason) => Verdict::read(reason),
            Err(reason) => Verdict::write(reason),
        },
        Ok(_) | Err(_) => {
            // sqlparser 0.63 knows only FOR UPDATE and FOR SHARE; name the other row locks when we see them.
            let reason =
                if contains_word_ci(stmt, "KEY UPDATE") || contains_word_ci(stmt, "KEY SHARE") {
                    "row lock (FOR NO KEY UPDATE/KEY SHARE)"
                } else {
                    "parse failed"
                };
            tracing::debug!(
                statement = stmt,
                reason,
                "sqlparser could not parse; routing as a write"
            );
            Verdict {
                parse_failed: true,
                ..Verdict::write(reason)
            }
        }
    }
}
