//! The one way shardpool parses client SQL: sqlparser behind a depth bound.
//!
//! sqlparser's own recursion limit guards its recursive descent (parentheses, subqueries, prefix operators), but
//! an infix chain such as `1+1+…+1` is parsed by a loop that builds a left-deep tree: 100,000 terms make a tree
//! 100,000 levels deep from a parser that never recursed. Everything that then walks that tree recursively — our
//! key walker, the classifier, the scatter planner, and even the tree's own `Drop` — overflows the worker's stack
//! and aborts the whole process. So the bound is enforced on the *tokens*, before a tree exists.
//!
//! How: each infix or postfix step of sqlparser's expression loop consumes at least one token that is neither a
//! plain operand (identifier, literal, parameter) nor punctuation, and nests the tree one level deeper; a comma
//! ends one expression (select item, argument, list element) and starts a sibling at the same depth; a bracket
//! starts a deeper expression. So "operator tokens since the last comma at each open bracket level, summed over
//! the open levels, plus a few nodes per bracket level" bounds the tree's depth from above. It over-counts (every
//! keyword counts, and clause keywords do not reset), which only means a statement near the bound may be refused
//! although its tree would have been shallower.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// The deepest expression tree shardpool lets sqlparser build. Sized so that the deepest recursive walk we run
/// over a tree, in an unoptimised (test) build, fits well inside a 2 MiB tokio worker stack; an ordinary
/// statement is a few dozen levels deep, an ORM's `a = 1 OR a = 2 OR …` of 200 terms is about 400.
pub const MAX_EXPRESSION_DEPTH: usize = 1_000;

/// Tree levels a bracket level may add besides its operators (`Nested`, a subquery's `Query`/`SetExpr`/`Select`,
/// a function's argument list...).
const NODES_PER_BRACKET: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlParseError {
    /// Too deeply nested to analyse without risking the stack: Postgres' own answer to such a statement is
    /// `54001 statement_too_complex` ("stack depth limit exceeded"), and so is ours.
    #[error("statement is too deeply nested for shardpool to analyse (expression depth above {MAX_EXPRESSION_DEPTH}); simplify it, e.g. use IN (...) or ANY($1) instead of long chains of operators")]
    TooDeep,
    #[error("{0}")]
    Syntax(String),
}

impl SqlParseError {
    /// Postgres' SQLSTATE for this failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlParseError::TooDeep => crate::error::sqlstate::STATEMENT_TOO_COMPLEX,
            SqlParseError::Syntax(_) => crate::error::sqlstate::SYNTAX_ERROR,
        }
    }
}

impl From<ParserError> for SqlParseError {
    fn from(e: ParserError) -> Self {
        SqlParseError::Syntax(e.to_string())
    }
}

/// Tokenizes `sql` with the Postgres dialect.
pub fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, SqlParseError> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SqlParseError::Syntax(e.to_string()))
}

/// Parses every statement of `sql`, refusing trees deeper than [`MAX_EXPRESSION_DEPTH`].
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, SqlParseError> {
    parse_tokens(tokenize(sql)?)
}

/// [`parse_statements`] over tokens the caller already has (the classifier counts them first).
pub fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Result<Vec<Statement>, SqlParseError> {
    check_depth(&tokens)?;
    Ok(Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()?)
}

/// Parses one expression (text shardpool built itself, or a client's), under the same bound.
pub fn parse_expr(sql: &str) -> Result<sqlparser::ast::Expr, SqlParseError> {
    let tokens = tokenize(sql)?;
    check_depth(&tokens)?;
    Ok(Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_expr()?)
}

/// The token-level depth bound described in the module doc.
pub fn check_depth(tokens: &[TokenWithSpan]) -> Result<(), SqlParseError> {
    // Per open bracket level (`levels[0]` is the statement itself): operator tokens since the last comma, and set
    // operations (`UNION`, `INTERSECT`, `EXCEPT`), whose left-deep chain spans the commas of their select lists.
    let mut levels: Vec<Level> = vec![Level::default()];
    // Sum over `levels`, kept alongside so each token costs O(1).
    let mut depth = 0usize;
    for t in tokens {
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(Level::default());
                depth += NODES_PER_BRACKET;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                // An unbalanced closer is a syntax error sqlparser reports; keep the statement level.
                if levels.len() > 1 {
                    let closed = levels.pop().unwrap_or_default();
                    depth -= closed.since_comma + closed.set_operations + NODES_PER_BRACKET;
                }
            }
            Token::Comma => {
                if let Some(top) = levels.last_mut() {
                    depth -= top.since_comma;
                    top.since_comma = 0;
                }
            }
            Token::SemiColon => {
                levels.clear();
                levels.push(Level::default());
                depth = 0;
            }
            token if is_operand(token) => {}
            token => {
                if let Some(top) = levels.last_mut() {
                    if is_set_operation(token) {
                        top.set_operations += 1;
                    } else {
                        top.since_comma += 1;
                    }
                    depth += 1;
                }
            }
        }
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(SqlParseError::TooDeep);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Level {
    since_comma: usize,
    set_operations: usize,
}

fn is_set_operation(token: &Token) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none()
        && matches!(w.keyword, Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT))
}

/// Tokens that never make sqlparser's expression loop take a step: identifiers, literals, parameters, blanks.
fn is_operand(token: &Token) -> bool {
    match token {
        Token::Word(w) => w.keyword == Keyword::NoKeyword || w.quote_style.is_some(),
        Token::Whitespace(_)
        | Token::EOF
        | Token::Number(..)
        | Token::Placeholder(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::SingleQuotedByteStringLiteral(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(op: &str, terms: usize) -> String {
        let mut s = String::from("SELECT 1");
        for _ in 1..terms {
            s.push_str(op);
            s.push('1');
        }
        s
    }

    #[test]
    fn long_infix_chains_are_refused_before_a_tree_exists() {
        for op in [
            "+",
            " OR ",
            "::int",
            " AND 1 = ",
            "||",
            ", 1 UNION SELECT 1",
        ] {
            let sql = chain(op, 100_000);
            assert_eq!(
                parse_statements(&sql).unwrap_err(),
                SqlParseError::TooDeep,
                "{op}"
            );
        }
    }

    #[test]
    fn ordinary_and_wide_statements_parse() {
        // Wide, not deep: a 5,000-row VALUES list and a 5,000-element IN list reset at every comma.
        let values: Vec<String> = (0..5_000).map(|i| format!("({i}, 'x', -{i})")).collect();
        let sql = format!("INSERT INTO t VALUES {}", values.join(", "));
        assert_eq!(parse_statements(&sql).unwrap().len(), 1);
        let list: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
        let sql = format!("SELECT * FROM t WHERE id IN ({})", list.join(","));
        assert_eq!(parse_statements(&sql).unwrap().len(), 1);
        // A 200-term OR chain of equalities, as ORMs write them.
        let ors: Vec<String> = (0..200).map(|i| format!("id = {i}")).collect();
        let sql = format!("SELECT * FROM t WHERE {}", ors.join(" OR "));
        assert_eq!(parse_statements(&sql).unwrap().len(), 1);
    }

    #[test]
    fn a_refusal_carries_postgres_sqlstate() {
        assert_eq!(SqlParseError::TooDeep.sqlstate(), "54001");
        assert_eq!(parse_statements("SELEC 1").unwrap_err().sqlstate(), "42601");
    }

    #[test]
    fn unbalanced_brackets_do_not_underflow() {
        assert!(parse_statements(")))))) SELECT 1 ((((").is_err());
        assert!(check_depth(&tokenize("SELECT ((1)));; (").unwrap()).is_ok());
    }
}
