//! The COPY statement, read with sqlparser's tokenizer and a small grammar of our own. sqlparser's own COPY parser
//! cannot serve: it knows neither `HEADER MATCH` nor `WHERE`, takes option values only in one spelling, mixes in
//! Redshift's options, and insists on parsing inline data after `FROM STDIN;`. Its tokenizer is reliable, though
//! (E'' strings, dollar quotes, nested comments, quoted identifiers), and gives positions, so the WHERE condition and
//! a COPY TO's query are passed on exactly as the client wrote them.
//!
//! The grammar is `CopyStmt` in `src/backend/parser/gram.y`:
//! ```text
//! COPY [BINARY] table [(col, ...)] FROM|TO [PROGRAM] 'file'|STDIN|STDOUT [[USING] DELIMITERS 'c']
//!      [WITH] { (option [value], ...) | legacy-option ... } [WHERE condition]
//! COPY (query) TO [PROGRAM] 'file'|STDOUT [WITH] { (option [value], ...) | legacy-option ... }
//! ```

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

use super::options::{ident, ident_list, CopyOptions, OptArg, RawOption};
use super::{CopyError, HeaderLine};

/// Postgres truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// A table name as Postgres resolves it: unquoted parts lowercased, quoted parts kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// The name quoted for SQL sent to a shard.
    pub fn to_sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", ident(s), ident(&self.name)),
            None => ident(&self.name),
        }
    }
}

/// What a COPY statement asks of the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyStatement {
    /// `COPY table FROM STDIN`: split the client's rows by key, one `COPY` per shard.
    Split(CopyFrom),
    /// `COPY ... TO STDOUT`: run the statement unchanged on every shard and concatenate the outputs.
    Concatenate(CopyTo),
}

/// `COPY table [(columns)] FROM STDIN ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyFrom {
    pub table: TableName,
    /// The columns the data's fields fill, in order; `None` means all of the table's columns in table order
    /// (excluding dropped and generated ones, as `CopyGetAttnums` does).
    pub columns: Option<Vec<String>>,
    pub options: CopyOptions,
    /// The `WHERE` condition as written. The shards apply it, so rows the condition rejects are still counted in
    /// the splitter's row counts but not in the shards' `COPY n` replies: the total reported to the client must be
    /// the sum of the shards' counts.
    pub where_clause: Option<String>,
}

/// `COPY ... TO STDOUT ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyTo {
    pub source: CopySource,
    pub options: CopyOptions,
    /// The statement as the client sent it, to run on every shard. With `options.header == Present` every shard
    /// sends the header as its own first CopyData message (`copyto.c` sends one message per row); the client must
    /// get it once.
    pub sql: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopySource {
    Table {
        table: TableName,
        columns: Option<Vec<String>>,
    },
    /// The text between the parentheses of `COPY (query) TO`. Whether concatenating the shards' results is a
    /// correct answer (no ORDER BY, LIMIT or aggregates across shards) is for the caller to decide.
    Query(String),
}

impl CopyFrom {
    /// The statement each shard runs: same table, columns and WHERE, every option spelled out, no HEADER.
    pub fn shard_sql(&self) -> String {
        let mut sql = format!("COPY {}", self.table.to_sql());
        if let Some(cols) = &self.columns {
            sql.push_str(&format!(" ({})", ident_list(cols)));
        }
        sql.push_str(&format!(
            " FROM STDIN WITH ({})",
            self.options.render_for_shards()
        ));
        if let Some(w) = &self.where_clause {
            sql.push_str(" WHERE ");
            sql.push_str(w);
        }
        sql
    }
}

impl CopyStatement {
    /// Reads a COPY statement. `Ok(None)`: not a COPY, or a COPY reading or writing a file or program on the server,
    /// which the proxy leaves alone. `standard_conforming_strings` is assumed on (the default since 9.1).
    pub fn parse(sql: &str) -> Result<Option<CopyStatement>, CopyError> {
        let mut p = Cursor::new(sql)?;
        if !p.eat_keyword("COPY") {
            return Ok(None);
        }
        let binary = p.eat_keyword("BINARY");
        let source = if p.eat(&Token::LParen) {
            if binary {
                return Err(p.unexpected());
            }
            Source::Query(p.parenthesized_text()?)
        } else {
            let table = p.table_name()?;
            let columns = if p.eat(&Token::LParen) {
                Some(p.ident_list_until_rparen()?)
            } else {
                None
            };
            Source::Table(table, columns)
        };
        let is_from = if p.eat_keyword("FROM") {
            true
        } else if p.eat_keyword("TO") {
            false
        } else {
            return Err(p.unexpected());
        };
        if is_from && matches!(source, Source::Query(_)) {
            return Err(CopyError::Syntax(
                "COPY (query) FROM is not allowed: a query is only a source for COPY TO"
                    .to_string(),
            ));
        }
        let program = p.eat_keyword("PROGRAM");
        if p.eat_keyword("STDIN") || p.eat_keyword("STDOUT") {
            // gram.y maps both to "the client", in either direction.
            if program {
                return Err(CopyError::Syntax(
                    "STDIN/STDOUT not allowed with PROGRAM".to_string(),
                ));
            }
        } else if p.string().is_ok() {
            return Ok(None);
        } else {
            return Err(p.unexpected());
        }
        let mut options = Vec::new();
        if binary {
            options.push(RawOption::new("format", OptArg::Text("binary".into())));
        }
        if matches!(source, Source::Table(..)) {
            // `[USING] DELIMITERS 'c'`, the pre-7.3 spelling, precedes the option list.
            let save = p.pos;
            let using = p.eat_keyword("USING");
            if p.eat_keyword("DELIMITERS") {
                options.push(RawOption::new("delimiter", OptArg::Text(p.string()?)));
            } else if using {
                p.pos = save;
            }
        }
        p.eat_keyword("WITH");
        if p.eat(&Token::LParen) {
            options.extend(p.generic_options()?);
        } else {
            options.extend(p.legacy_options()?);
        }
        let where_clause = if p.eat_keyword("WHERE") {
            if !is_from {
                return Err(CopyError::Unsupported(
                    "WHERE clause not allowed with COPY TO".to_string(),
                ));
            }
            Some(p.rest_of_statement()?)
        } else {
            None
        };
        p.end_of_statement()?;
        let options = CopyOptions::from_list(&options, is_from)?;
        Ok(Some(match source {
            Source::Table(table, columns) if is_from => CopyStatement::Split(CopyFrom {
                table,
                columns,
                options,
                where_clause,
            }),
            Source::Table(table, columns) => CopyStatement::Concatenate(CopyTo {
                source: CopySource::Table { table, columns },
                options,
                sql: sql.to_string(),
            }),
            Source::Query(q) => CopyStatement::Concatenate(CopyTo {
                source: CopySource::Query(q),
                options,
                sql: sql.to_string(),
            }),
        }))
    }

    /// Whether the data starts with a header line the proxy consumes (COPY FROM) or must de-duplicate (COPY TO).
    pub fn header(&self) -> HeaderLine {
        match self {
            CopyStatement::Split(f) => f.options.header,
            CopyStatement::Concatenate(t) => t.options.header,
        }
    }
}

enum Source {
    Table(TableName, Option<Vec<String>>),
    Query(String),
}

/// Tokens without whitespace and comments, with the byte offsets of their spans.
struct Cursor<'a> {
    sql: &'a str,
    tokens: Vec<TokenWithSpan>,
    pos: usize,
    line_starts: Vec<usize>,
}

static EOF: Token = Token::EOF;

impl<'a> Cursor<'a> {
    fn new(sql: &'a str) -> Result<Cursor<'a>, CopyError> {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize_with_location()
            .map_err(|e| CopyError::Syntax(e.message))?
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .collect();
        let line_starts = std::iter::once(0)
            .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ok(Cursor {
            sql,
            tokens,
            pos: 0,
            line_starts,
        })
    }

    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).map_or(&EOF, |t| &t.token)
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == token {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let hit = self.is_keyword(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), CopyError> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn unexpected(&self) -> CopyError {
        match self.peek() {
            Token::EOF => CopyError::Syntax("syntax error at end of input".to_string()),
            t => CopyError::Syntax(format!("syntax error at or near \"{t}\"")),
        }
    }

    /// A byte offset from a tokenizer location (1-based line, 1-based column counted in characters).
    fn offset(&self, loc: Location) -> usize {
        let Some(&start) = usize::try_from(loc.line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.line_starts.get(l))
        else {
            return self.sql.len();
        };
        let col = usize::try_from(loc.column)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        self.sql[start..]
            .char_indices()
            .nth(col)
            .map_or(self.sql.len(), |(i, _)| start + i)
    }

    fn end_of(&self, index: usize) -> usize {
        self.tokens
            .get(index)
            .map_or(self.sql.len(), |t| self.offset(t.span.end))
    }

    fn ident(&mut self) -> Result<String, CopyError> {
        match self.peek() {
            Token::Word(w) => {
                let name = normalize(w);
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.unexpected()),
        }
    }

    /// A string constant in any of its spellings ('..', E'..', U&'..', $$..$$).
    fn string(&mut self) -> Result<String, CopyError> {
        let s = match self.peek() {
            Token::SingleQuotedString(s)
            | Token::EscapedStringLiteral(s)
            | Token::UnicodeStringLiteral(s) => s.clone(),
            Token::DollarQuotedString(d) => d.value.clone(),
            _ => return Err(self.unexpected()),
        };
        self.pos += 1;
        Ok(s)
    }

    fn table_name(&mut self) -> Result<TableName, CopyError> {
        let mut parts = vec![self.ident()?];
        while self.eat(&Token::Period) {
            parts.push(self.ident()?);
        }
        let name = parts.pop().unwrap_or_default();
        match parts.len() {
            0 => Ok(TableName { schema: None, name }),
            1 => Ok(TableName {
                schema: parts.pop(),
                name,
            }),
            _ => Err(CopyError::Unsupported(
                "COPY into a table named with its database is not supported on sharded databases: each shard's \
                 database may be named differently"
                    .to_string(),
            )),
        }
    }

    /// `a, b, c)` after an opening parenthesis.
    fn ident_list_until_rparen(&mut self) -> Result<Vec<String>, CopyError> {
        let mut names = vec![self.ident()?];
        while self.eat(&Token::Comma) {
            names.push(self.ident()?);
        }
        if !self.eat(&Token::RParen) {
            return Err(self.unexpected());
        }
        Ok(names)
    }

    /// The source text up to the parenthesis closing the one just consumed.
    fn parenthesized_text(&mut self) -> Result<String, CopyError> {
        let open = self.pos - 1;
        let mut depth = 1usize;
        while depth > 0 {
            match self.bump() {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::EOF => return Err(self.unexpected()),
                _ => {}
            }
        }
        // Up to the end of the last token inside, so a trailing comment cannot swallow what the caller appends.
        let text = self.sql[self.end_of(open)..self.end_of(self.pos - 2)].trim();
        if text.is_empty() {
            return Err(CopyError::Syntax(
                "syntax error at or near \")\"".to_string(),
            ));
        }
        Ok(text.to_string())
    }

    /// `name [arg], ...)` after the opening parenthesis (`copy_generic_opt_list`).
    fn generic_options(&mut self) -> Result<Vec<RawOption>, CopyError> {
        let mut list = Vec::new();
        loop {
            let name = self.ident()?;
            let arg = match self.peek() {
                Token::Comma | Token::RParen => OptArg::Missing,
                Token::Mul => {
                    self.pos += 1;
                    OptArg::Star
                }
                Token::LParen => {
                    self.pos += 1;
                    OptArg::List(self.ident_or_string_list()?)
                }
                Token::Number(n, _) => {
                    let n = n.clone();
                    self.pos += 1;
                    OptArg::Number(n)
                }
                Token::Plus | Token::Minus => {
                    let sign = if self.bump() == Token::Minus { "-" } else { "" };
                    match self.bump() {
                        Token::Number(n, _) => OptArg::Number(format!("{sign}{n}")),
                        _ => return Err(self.unexpected()),
                    }
                }
                Token::Word(_) => OptArg::Text(self.ident()?),
                _ => OptArg::Text(self.string()?),
            };
            list.push(RawOption { name, arg });
            if self.eat(&Token::RParen) {
                return Ok(list);
            }
            if !self.eat(&Token::Comma) {
                return Err(self.unexpected());
            }
        }
    }

    /// `copy_generic_opt_arg_list`: identifiers or strings, then the closing parenthesis.
    fn ident_or_string_list(&mut self) -> Result<Vec<String>, CopyError> {
        let mut items = Vec::new();
        loop {
            items.push(match self.peek() {
                Token::Word(_) => self.ident()?,
                _ => self.string()?,
            });
            if self.eat(&Token::RParen) {
                return Ok(items);
            }
            if !self.eat(&Token::Comma) {
                return Err(self.unexpected());
            }
        }
    }

    /// The pre-9.0 option keywords (`copy_opt_item`), in any order, until something else comes.
    fn legacy_options(&mut self) -> Result<Vec<RawOption>, CopyError> {
        let mut list = Vec::new();
        loop {
            let text = |s: &str| OptArg::Text(s.to_string());
            let opt = if self.eat_keyword("BINARY") {
                RawOption::new("format", text("binary"))
            } else if self.eat_keyword("CSV") {
                RawOption::new("format", text("csv"))
            } else if self.eat_keyword("FREEZE") {
                RawOption::new("freeze", OptArg::Missing)
            } else if self.eat_keyword("HEADER") {
                RawOption::new("header", OptArg::Missing)
            } else if let Some(name) = ["DELIMITER", "NULL", "QUOTE", "ESCAPE"]
                .into_iter()
                .find(|kw| self.eat_keyword(kw))
            {
                self.eat_keyword("AS");
                RawOption::new(&name.to_ascii_lowercase(), OptArg::Text(self.string()?))
            } else if self.eat_keyword("ENCODING") {
                RawOption::new("encoding", OptArg::Text(self.string()?))
            } else if self.eat_keyword("FORCE") {
                let name = if self.eat_keyword("QUOTE") {
                    "force_quote"
                } else if self.eat_keyword("NOT") {
                    self.expect_keyword("NULL")?;
                    "force_not_null"
                } else {
                    self.expect_keyword("NULL")?;
                    "force_null"
                };
                let arg = if self.eat(&Token::Mul) {
                    OptArg::Star
                } else {
                    let mut names = vec![self.ident()?];
                    while self.eat(&Token::Comma) {
                        names.push(self.ident()?);
                    }
                    OptArg::List(names)
                };
                RawOption::new(name, arg)
            } else {
                return Ok(list);
            };
            list.push(opt);
        }
    }

    /// The WHERE condition: everything up to a semicolon or the end, as written.
    fn rest_of_statement(&mut self) -> Result<String, CopyError> {
        let keyword = self.pos - 1;
        while !matches!(self.peek(), Token::SemiColon | Token::EOF) {
            self.pos += 1;
        }
        if self.pos == keyword + 1 {
            return Err(self.unexpected());
        }
        Ok(self.sql[self.end_of(keyword)..self.end_of(self.pos - 1)]
            .trim()
            .to_string())
    }

    fn end_of_statement(&mut self) -> Result<(), CopyError> {
        if !matches!(self.peek(), Token::SemiColon | Token::EOF) {
            return Err(self.unexpected());
        }
        while self.eat(&Token::SemiColon) {}
        if self.peek() != &Token::EOF {
            return Err(CopyError::Unsupported(
                "COPY on a sharded table must be the only statement in its query".to_string(),
            ));
        }
        Ok(())
    }
}

/// Postgres' `downcase_truncate_identifier`: unquoted names fold ASCII letters only (in UTF-8 databases), and every
/// name is cut to 63 bytes on a character boundary.
fn normalize(w: &Word) -> String {
    let mut name = if w.quote_style.is_some() {
        w.value.clone()
    } else {
        w.value.to_ascii_lowercase()
    };
    if name.len() > MAX_IDENT_BYTES {
        let mut cut = MAX_IDENT_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::super::options::Columns;
    use super::super::CopyFormat;
    use super::*;

    fn split(sql: &str) -> CopyFrom {
        match CopyStatement::parse(sql) {
            Ok(Some(CopyStatement::Split(f))) => f,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn concat(sql: &str) -> CopyTo {
        match CopyStatement::parse(sql) {
            Ok(Some(CopyStatement::Concatenate(t))) => t,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn code(sql: &str) -> &'static str {
        match CopyStatement::parse(sql) {
            Err(e) => e.sqlstate(),
            other => panic!("{sql} parsed: {other:?}"),
        }
    }

    #[test]
    fn reads_the_option_list_syntax() {
        let f = split(
            "copy Public.\"Acc\"\"ts\" (Aid, \"Name\") from stdin with (format csv, header match, \
             delimiter E'\\t', null 'NULL', quote '''', escape '\\', force_null (aid), force_not_null *)",
        );
        assert_eq!(
            f.table,
            TableName {
                schema: Some("public".into()),
                name: "Acc\"ts".into()
            }
        );
        assert_eq!(f.columns, Some(vec!["aid".to_string(), "Name".to_string()]));
        let o = &f.options;
        assert_eq!(o.format, CopyFormat::Csv);
        assert_eq!(o.header, HeaderLine::Match);
        assert_eq!(
            (o.delimiter, o.null.as_str(), o.quote, o.escape),
            (b'\t', "NULL", b'\'', b'\\')
        );
        assert_eq!(o.force_null, Some(Columns::Named(vec!["aid".into()])));
        assert_eq!(o.force_not_null, Some(Columns::All));
        assert_eq!(f.where_clause, None);
    }

    #[test]
    fn reads_the_old_syntax() {
        let f = split("COPY t FROM STDIN WITH CSV HEADER DELIMITER AS ';' NULL AS 'nil' QUOTE '|' FORCE NOT NULL a, b");
        let o = &f.options;
        assert_eq!((o.format, o.header), (CopyFormat::Csv, HeaderLine::Present));
        assert_eq!(
            (o.delimiter, o.null.as_str(), o.quote, o.escape),
            (b';', "nil", b'|', b'|')
        );
        assert_eq!(
            o.force_not_null,
            Some(Columns::Named(vec!["a".into(), "b".into()]))
        );
        // Items in any order, WITH optional, HEADER before CSV, USING DELIMITERS.
        let g = split("COPY t FROM STDIN HEADER CSV ESCAPE '\\'");
        assert_eq!(
            (g.options.format, g.options.escape),
            (CopyFormat::Csv, b'\\')
        );
        let h = split("COPY t FROM STDIN USING DELIMITERS '|' WITH NULL AS ''");
        assert_eq!((h.options.delimiter, h.options.null.as_str()), (b'|', ""));
        assert_eq!(
            code("COPY t FROM STDIN USING DELIMITERS '|' DELIMITER ','"),
            "42601"
        );
        let plain = split("COPY t FROM STDIN;");
        assert_eq!(
            (plain.options.format, plain.options.delimiter),
            (CopyFormat::Text, b'\t')
        );
        assert_eq!(
            split("COPY t FROM STDOUT").table.name,
            "t",
            "gram.y treats STDOUT as STDIN here"
        );
    }

    #[test]
    fn binary_is_refused_in_every_spelling() {
        for sql in [
            "COPY t FROM STDIN (FORMAT binary)",
            "COPY t FROM STDIN WITH BINARY",
            "COPY BINARY t FROM STDIN",
            "COPY t TO STDOUT (FORMAT 'binary')",
        ] {
            assert_eq!(code(sql), "0A000", "{sql}");
        }
    }

    #[test]
    fn server_side_files_and_other_statements_are_not_ours() {
        for sql in [
            "COPY t FROM '/tmp/x.csv' CSV",
            "COPY t FROM PROGRAM 'gunzip -c x.gz' (FORMAT csv)",
            "COPY t TO '/tmp/out'",
            "COPY (SELECT 1) TO PROGRAM 'cat'",
            "SELECT * FROM copy",
            "  /* copy */ INSERT INTO t VALUES (1)",
        ] {
            assert_eq!(CopyStatement::parse(sql), Ok(None), "{sql}");
        }
        assert_eq!(code("COPY t FROM PROGRAM STDIN"), "42601");
    }

    #[test]
    fn where_and_query_text_are_kept_as_written() {
        let f =
            split("COPY t (a) FROM STDIN (FORMAT csv) WHERE a > 'x;y' AND b <> $$)$$ -- tail\n;");
        assert_eq!(f.where_clause.as_deref(), Some("a > 'x;y' AND b <> $$)$$"));
        assert_eq!(
            f.shard_sql(),
            "COPY \"t\" (\"a\") FROM STDIN WITH (FORMAT csv, DELIMITER E',', NULL E'', QUOTE E'\"', \
             ESCAPE E'\"') WHERE a > 'x;y' AND b <> $$)$$"
        );
        let t = concat(
            "COPY (SELECT ü, f(x) FROM \"t(\" WHERE y = ')' -- c\n) TO STDOUT WITH CSV HEADER",
        );
        assert_eq!(
            t.source,
            CopySource::Query("SELECT ü, f(x) FROM \"t(\" WHERE y = ')'".into())
        );
        assert_eq!(t.options.header, HeaderLine::Present);
        let tt = concat("copy s.t (b) to stdout");
        assert_eq!(
            tt.source,
            CopySource::Table {
                table: TableName {
                    schema: Some("s".into()),
                    name: "t".into()
                },
                columns: Some(vec!["b".into()])
            }
        );
        assert_eq!(code("COPY t TO STDOUT WHERE a = 1"), "0A000");
        assert_eq!(code("COPY (SELECT 1) FROM STDIN"), "42601");
    }

    #[test]
    fn malformed_statements_are_syntax_errors() {
        for sql in [
            "COPY",
            "COPY t",
            "COPY t FROM",
            "COPY t INTO STDIN",
            "COPY t (a, FROM STDIN",
            "COPY t FROM STDIN (FORMAT csv",
            "COPY t FROM STDIN (FORMAT csv,)",
            "COPY t FROM STDIN CSV garbage",
            "COPY t FROM STDIN WHERE",
            "COPY t FROM STDIN (FORMAT 'csv",
            "COPY t FROM STDIN (nonsense true)",
            "COPY t FROM STDIN WITH DELIMITER",
        ] {
            assert_eq!(code(sql), "42601", "{sql}");
        }
        assert_eq!(code("COPY t FROM STDIN; SELECT 1"), "0A000");
        assert_eq!(code("COPY db.s.t FROM STDIN"), "0A000");
    }

    #[test]
    fn long_identifiers_are_truncated_like_postgres() {
        let long = "é".repeat(40); // 80 bytes: cut at 62, the last whole character before byte 63
        let f = split(&format!("COPY \"{long}\" FROM STDIN"));
        assert_eq!(f.table.name, "é".repeat(31));
    }
}
