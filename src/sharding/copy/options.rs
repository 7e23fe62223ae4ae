//! COPY options: the generic `WITH (name value, ...)` list and the pre-9.0 keywords both become one list of named
//! options, checked as the server checks them (`src/backend/commands/copy.c`: `ProcessCopyOptions`,
//! `defGetCopyHeaderChoice`; `src/backend/commands/define.c`: `defGetBoolean`, `defGetString`), because the splitter
//! must read the data with exactly the delimiter, quote, escape and NULL marker the shards will use.
//!
//! Options that only the server acts on (FREEZE, ENCODING 'UTF8', ON_ERROR stop, LOG_VERBOSITY) are kept and passed
//! on to the shards; HEADER is never passed on because the splitter consumes the header line itself.

use super::CopyError;

/// The data formats the proxy can split. Binary is refused at parse time: its rows carry no delimiters to find
/// them by without decoding every column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
}

/// What the first line of the data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderLine {
    /// No header: the first line is a row.
    Absent,
    /// A header line to skip (`HEADER`, `HEADER true`).
    Present,
    /// A header line whose fields must equal the column names (`HEADER MATCH`, COPY FROM only).
    Match,
}

/// A column list option (FORCE_NULL, FORCE_NOT_NULL); `All` is the `*` form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Columns {
    All,
    Named(Vec<String>),
}

impl Columns {
    pub fn contains(&self, column: &str) -> bool {
        match self {
            Columns::All => true,
            Columns::Named(names) => names.iter().any(|n| n == column),
        }
    }
}

/// The options of one COPY statement, defaults filled in as the server fills them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    /// One ASCII byte: Postgres accepts only single-byte delimiters, and in UTF-8 those are ASCII.
    pub delimiter: u8,
    /// The NULL marker, compared with a field's raw (not de-escaped) bytes.
    pub null: String,
    /// The DEFAULT marker (PostgreSQL 16+): a field equal to it takes the column default.
    pub default: Option<String>,
    /// CSV quote and escape bytes (both `"` unless given); unused in text format.
    pub quote: u8,
    pub escape: u8,
    pub header: HeaderLine,
    /// CSV only: columns whose NULL marker is read as a value / whose quoted NULL marker is read as NULL.
    pub force_not_null: Option<Columns>,
    pub force_null: Option<Columns>,
    /// COPY TO only: quoting of output columns. Kept so the statement can be re-rendered; it never affects input.
    pub force_quote: Option<Columns>,
    /// Options the splitter does not act on, already rendered (`FREEZE true`), passed on to the shards.
    pub(super) passthrough: Vec<String>,
}

/// An option's argument as the grammar delivers it (`copy_generic_opt_arg` in gram.y).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OptArg {
    Missing,
    /// An identifier or keyword (already lowercased unless it was quoted) or a string constant.
    Text(String),
    /// A numeric constant, as written.
    Number(String),
    Star,
    List(Vec<String>),
}

/// One option, named as the generic syntax names it (`force_not_null`, never `FORCE NOT NULL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RawOption {
    pub name: String,
    pub arg: OptArg,
}

impl RawOption {
    pub fn new(name: &str, arg: OptArg) -> RawOption {
        RawOption {
            name: name.to_string(),
            arg,
        }
    }

    /// `defGetString`: the argument as text; a missing argument is an error.
    fn string(&self) -> Result<String, CopyError> {
        match &self.arg {
            OptArg::Text(s) | OptArg::Number(s) => Ok(s.clone()),
            OptArg::Star => Ok("*".to_string()),
            OptArg::Missing | OptArg::List(_) => Err(CopyError::Syntax(format!(
                "{} requires a parameter",
                self.name
            ))),
        }
    }

    /// `defGetBoolean`: no argument means true; 0/1 and true/false/on/off (any case) are accepted.
    fn boolean(&self) -> Result<bool, CopyError> {
        match self.word().as_deref() {
            None => Ok(true),
            Some("0") | Some("false") | Some("off") => Ok(false),
            Some("1") | Some("true") | Some("on") => Ok(true),
            _ => Err(CopyError::Syntax(format!(
                "{} requires a Boolean value",
                self.name
            ))),
        }
    }

    /// `defGetCopyHeaderChoice`: a Boolean or `match`.
    fn header(&self, is_from: bool) -> Result<HeaderLine, CopyError> {
        if self.word().as_deref() == Some("match") {
            if !is_from {
                return Err(CopyError::Unsupported(
                    "cannot use \"match\" with HEADER in COPY TO".to_string(),
                ));
            }
            return Ok(HeaderLine::Match);
        }
        match self.boolean() {
            Ok(true) => Ok(HeaderLine::Present),
            Ok(false) => Ok(HeaderLine::Absent),
            Err(_) => Err(CopyError::Syntax(format!(
                "{} requires a Boolean value or \"match\"",
                self.name
            ))),
        }
    }

    /// The argument lowercased for keyword-like comparisons; `None` when absent. Numbers keep their spelling, so
    /// `HEADER 2` or `HEADER 1.0` match nothing, as in Postgres (only the integers 0 and 1 are Booleans).
    fn word(&self) -> Option<String> {
        match &self.arg {
            OptArg::Missing => None,
            OptArg::Text(s) => Some(s.to_ascii_lowercase()),
            OptArg::Number(n) => Some(n.clone()),
            OptArg::Star => Some("*".to_string()),
            OptArg::List(_) => Some(String::new()),
        }
    }

    fn columns(&self, allow_star: bool) -> Result<Columns, CopyError> {
        match &self.arg {
            OptArg::List(names) => Ok(Columns::Named(names.clone())),
            OptArg::Star if allow_star => Ok(Columns::All),
            _ => Err(CopyError::InvalidOption(format!(
                "argument to option \"{}\" must be a list of column names",
                self.name
            ))),
        }
    }
}

/// Fields of [`CopyOptions`] while the list is read: `None` means "not given" (duplicates are errors).
#[derive(Default)]
struct Given {
    format: Option<String>,
    delimiter: Option<String>,
    null: Option<String>,
    default: Option<String>,
    quote: Option<String>,
    escape: Option<String>,
    header: Option<HeaderLine>,
    force_not_null: Option<Columns>,
    force_null: Option<Columns>,
    force_quote: Option<Columns>,
    freeze: Option<bool>,
    encoding: Option<String>,
    on_error: Option<String>,
    log_verbosity: Option<String>,
}

fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), CopyError> {
    if slot.is_some() {
        return Err(CopyError::Syntax(
            "conflicting or redundant options".to_string(),
        ));
    }
    *slot = Some(value);
    Ok(())
}

impl CopyOptions {
    /// Checks an option list the way `ProcessCopyOptions` does and fills in the defaults. Refuses what the proxy
    /// cannot split (binary format, encodings other than UTF-8, ON_ERROR ignore) with [`CopyError::Unsupported`].
    pub(super) fn from_list(list: &[RawOption], is_from: bool) -> Result<CopyOptions, CopyError> {
        let mut g = Given::default();
        for opt in list {
            match opt.name.as_str() {
                "format" => set(&mut g.format, opt.string()?)?,
                "freeze" => set(&mut g.freeze, opt.boolean()?)?,
                "delimiter" => set(&mut g.delimiter, opt.string()?)?,
                "null" => set(&mut g.null, opt.string()?)?,
                "default" => set(&mut g.default, opt.string()?)?,
                "header" => set(&mut g.header, opt.header(is_from)?)?,
                "quote" => set(&mut g.quote, opt.string()?)?,
                "escape" => set(&mut g.escape, opt.string()?)?,
                "force_quote" => set(&mut g.force_quote, opt.columns(true)?)?,
                "force_not_null" => set(&mut g.force_not_null, opt.columns(true)?)?,
                "force_null" => set(&mut g.force_null, opt.columns(true)?)?,
                "encoding" => set(&mut g.encoding, opt.string()?)?,
                "on_error" => set(&mut g.on_error, opt.string()?)?,
                "log_verbosity" => set(&mut g.log_verbosity, opt.string()?)?,
                "reject_limit" => {
                    return Err(CopyError::Unsupported(
                        "REJECT_LIMIT is not supported on sharded tables: rows the shards skip cannot be \
                         counted against one limit"
                            .to_string(),
                    ))
                }
                other => {
                    return Err(CopyError::Syntax(format!(
                        "option \"{other}\" not recognized"
                    )))
                }
            }
        }
        let format = match g.format.as_deref() {
            None | Some("text") => CopyFormat::Text,
            Some("csv") => CopyFormat::Csv,
            Some("binary") => {
                return Err(CopyError::Unsupported(
                    "COPY in binary format is not supported on sharded tables".to_string(),
                ))
            }
            Some(other) => {
                return Err(CopyError::InvalidOption(format!(
                    "COPY format \"{other}\" not recognized"
                )))
            }
        };
        let passthrough = passthrough(&g)?;
        validate(&g, format, is_from)?;
        let csv = format == CopyFormat::Csv;
        let delimiter = g
            .delimiter
            .as_deref()
            .map_or(if csv { b',' } else { b'\t' }, |d| d.as_bytes()[0]);
        let quote = g.quote.as_deref().map_or(b'"', |q| q.as_bytes()[0]);
        Ok(CopyOptions {
            format,
            delimiter,
            null: g.null.unwrap_or_else(|| {
                if csv {
                    String::new()
                } else {
                    "\\N".to_string()
                }
            }),
            default: g.default,
            quote,
            escape: g.escape.as_deref().map_or(quote, |e| e.as_bytes()[0]),
            header: g.header.unwrap_or(HeaderLine::Absent),
            force_not_null: g.force_not_null,
            force_null: g.force_null,
            force_quote: g.force_quote,
            passthrough,
        })
    }

    /// The option list for the shards' `COPY ... FROM STDIN`, every value spelled out (so a shard never falls back
    /// to a default that could differ) and without HEADER: the proxy has already consumed the header line.
    pub(super) fn render_for_shards(&self) -> String {
        let mut out = vec![
            format!(
                "FORMAT {}",
                match self.format {
                    CopyFormat::Text => "text",
                    CopyFormat::Csv => "csv",
                }
            ),
            format!(
                "DELIMITER {}",
                literal(&char::from(self.delimiter).to_string())
            ),
            format!("NULL {}", literal(&self.null)),
        ];
        if let Some(d) = &self.default {
            out.push(format!("DEFAULT {}", literal(d)));
        }
        if self.format == CopyFormat::Csv {
            out.push(format!(
                "QUOTE {}",
                literal(&char::from(self.quote).to_string())
            ));
            out.push(format!(
                "ESCAPE {}",
                literal(&char::from(self.escape).to_string())
            ));
        }
        for (name, cols) in [
            ("FORCE_NOT_NULL", &self.force_not_null),
            ("FORCE_NULL", &self.force_null),
        ] {
            match cols {
                None => {}
                Some(Columns::All) => out.push(format!("{name} *")),
                Some(Columns::Named(names)) => out.push(format!("{name} ({})", ident_list(names))),
            }
        }
        out.extend(self.passthrough.iter().cloned());
        out.join(", ")
    }
}

/// The options the splitter ignores but the shards must apply, rendered; refuses values that would make shards
/// treat rows differently from the way the splitter counted and routed them.
fn passthrough(g: &Given) -> Result<Vec<String>, CopyError> {
    let mut out = Vec::new();
    if let Some(freeze) = g.freeze {
        out.push(format!("FREEZE {freeze}"));
    }
    if let Some(enc) = &g.encoding {
        // Postgres compares encoding names ignoring case and punctuation (`clean_encoding_name`); UNICODE is an
        // alias of UTF8. Text keys hash as UTF-8 bytes, so any other file encoding would route them wrongly.
        let clean: String = enc
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if clean != "utf8" && clean != "unicode" {
            return Err(CopyError::Unsupported(format!(
                "COPY with ENCODING \"{enc}\" is not supported on sharded tables (only UTF8)"
            )));
        }
        out.push(format!("ENCODING {}", literal(enc)));
    }
    if let Some(on_error) = &g.on_error {
        match on_error.to_ascii_lowercase().as_str() {
            "stop" => out.push("ON_ERROR stop".to_string()),
            "ignore" => {
                return Err(CopyError::Unsupported(
                    "ON_ERROR ignore is not supported on sharded tables: a row whose key cannot be read has no \
                     shard to be skipped on"
                        .to_string(),
                ))
            }
            other => {
                return Err(CopyError::InvalidOption(format!(
                    "COPY ON_ERROR \"{other}\" not recognized"
                )))
            }
        }
    }
    if let Some(v) = &g.log_verbosity {
        out.push(format!("LOG_VERBOSITY {}", literal(v)));
    }
    Ok(out)
}

fn single_byte(value: &Option<String>, what: &str) -> Result<(), CopyError> {
    match value {
        Some(v) if v.len() != 1 => Err(CopyError::Unsupported(format!(
            "COPY {what} must be a single one-byte character"
        ))),
        _ => Ok(()),
    }
}

/// The consistency checks of `ProcessCopyOptions`, in its order, with its SQLSTATEs.
fn validate(g: &Given, format: CopyFormat, is_from: bool) -> Result<(), CopyError> {
    let csv = format == CopyFormat::Csv;
    let delimiter = g
        .delimiter
        .clone()
        .unwrap_or_else(|| if csv { ",".into() } else { "\t".into() });
    let null = g
        .null
        .clone()
        .unwrap_or_else(|| if csv { String::new() } else { "\\N".into() });
    single_byte(&Some(delimiter.clone()), "delimiter")?;
    let delim = delimiter.as_bytes()[0];
    if delim == b'\r' || delim == b'\n' {
        return Err(CopyError::InvalidOption(
            "COPY delimiter cannot be newline or carriage return".to_string(),
        ));
    }
    if null.contains(['\r', '\n']) {
        return Err(CopyError::InvalidOption(
            "COPY null representation cannot use newline or carriage return".to_string(),
        ));
    }
    if let Some(d) = &g.default {
        if d.contains(['\r', '\n']) {
            return Err(CopyError::InvalidOption(
                "COPY default representation cannot use newline or carriage return".to_string(),
            ));
        }
    }
    // Backslash is text format's escape; letters and digits start escape sequences (`\n`, `\012`, `\x0a`).
    if !csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delim) {
        return Err(CopyError::InvalidOption(format!(
            "COPY delimiter cannot be \"{delimiter}\""
        )));
    }
    for (given, name) in [(&g.quote, "quote"), (&g.escape, "escape")] {
        if !csv && given.is_some() {
            return Err(CopyError::Unsupported(format!(
                "COPY {name} available only in CSV mode"
            )));
        }
        single_byte(given, name)?;
    }
    let quote = g.quote.as_deref().map_or(b'"', |q| q.as_bytes()[0]);
    if csv && delim == quote {
        return Err(CopyError::InvalidOption(
            "COPY delimiter and quote must be different".to_string(),
        ));
    }
    for (given, name, from_only) in [
        (&g.force_quote, "force quote", false),
        (&g.force_not_null, "force not null", true),
        (&g.force_null, "force null", true),
    ] {
        if given.is_none() {
            continue;
        }
        if !csv {
            return Err(CopyError::Unsupported(format!(
                "COPY {name} available only in CSV mode"
            )));
        }
        if from_only != is_from {
            let direction = if from_only { "COPY FROM" } else { "COPY TO" };
            return Err(CopyError::Unsupported(format!(
                "COPY {name} only available using {direction}"
            )));
        }
    }
    if null.as_bytes().contains(&delim) {
        return Err(CopyError::InvalidOption(
            "COPY delimiter must not appear in the NULL specification".to_string(),
        ));
    }
    if csv && null.as_bytes().contains(&quote) {
        return Err(CopyError::InvalidOption(
            "CSV quote character must not appear in the NULL specification".to_string(),
        ));
    }
    if let Some(d) = &g.default {
        if !is_from {
            return Err(CopyError::Unsupported(
                "COPY DEFAULT only available using COPY FROM".to_string(),
            ));
        }
        if d.as_bytes().contains(&delim) {
            return Err(CopyError::InvalidOption(
                "COPY delimiter must not appear in the DEFAULT specification".to_string(),
            ));
        }
        if csv && d.as_bytes().contains(&quote) {
            return Err(CopyError::InvalidOption(
                "CSV quote character must not appear in the DEFAULT specification".to_string(),
            ));
        }
        if *d == null {
            return Err(CopyError::InvalidOption(
                "NULL specification and DEFAULT specification cannot be the same".to_string(),
            ));
        }
    }
    Ok(())
}

/// A string constant that means the same whatever `standard_conforming_strings` is: the `E'...'` form, where only
/// backslash and quote need escaping.
pub(super) fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A quoted identifier: always quoted, so case and keywords survive the round trip.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn ident_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(name: &str, arg: OptArg) -> RawOption {
        RawOption::new(name, arg)
    }

    fn text(s: &str) -> OptArg {
        OptArg::Text(s.to_string())
    }

    #[test]
    fn defaults_follow_the_format() {
        let t = CopyOptions::from_list(&[], true).unwrap();
        assert_eq!(
            (t.format, t.delimiter, t.null.as_str()),
            (CopyFormat::Text, b'\t', "\\N")
        );
        let c = CopyOptions::from_list(&[opt("format", text("csv"))], true).unwrap();
        assert_eq!(
            (c.delimiter, c.null.as_str(), c.quote, c.escape),
            (b',', "", b'"', b'"')
        );
        let e =
            CopyOptions::from_list(&[opt("format", text("csv")), opt("quote", text("'"))], true)
                .unwrap();
        assert_eq!(e.escape, b'\'', "ESCAPE defaults to QUOTE");
    }

    #[test]
    fn booleans_and_header_choices_read_like_postgres() {
        for (arg, want) in [
            (OptArg::Missing, HeaderLine::Present),
            (OptArg::Number("0".into()), HeaderLine::Absent),
            (OptArg::Number("1".into()), HeaderLine::Present),
            (text("ON"), HeaderLine::Present),
            (text("off"), HeaderLine::Absent),
            (text("MATCH"), HeaderLine::Match),
        ] {
            let o = CopyOptions::from_list(&[opt("header", arg.clone())], true).unwrap();
            assert_eq!(o.header, want, "{arg:?}");
        }
        for bad in [
            OptArg::Number("2".into()),
            text("yes"),
            OptArg::Number("1.0".into()),
        ] {
            let e = CopyOptions::from_list(&[opt("header", bad.clone())], true).unwrap_err();
            assert_eq!(e.sqlstate(), "42601", "{bad:?}");
        }
        let e = CopyOptions::from_list(&[opt("header", text("match"))], false).unwrap_err();
        assert_eq!(e.sqlstate(), "0A000");
    }

    #[test]
    fn refuses_what_postgres_refuses_with_its_sqlstate() {
        let cases: &[(&[RawOption], &str)] = &[
            (&[opt("format", text("CSV"))], "22023"),
            (&[opt("delimiter", text("ab"))], "0A000"),
            (&[opt("delimiter", text("\n"))], "22023"),
            (&[opt("delimiter", text("x"))], "22023"),
            (&[opt("delimiter", text("\\"))], "22023"),
            (&[opt("quote", text("'"))], "0A000"),
            (
                &[opt("format", text("csv")), opt("delimiter", text("\""))],
                "22023",
            ),
            (&[opt("null", text("a\tb"))], "22023"),
            (
                &[opt("format", text("csv")), opt("null", text("\"\""))],
                "22023",
            ),
            (&[opt("null", text("x")), opt("null", text("y"))], "42601"),
            (&[opt("frobnicate", OptArg::Missing)], "42601"),
            (&[opt("delimiter", OptArg::Missing)], "42601"),
            (
                &[opt("force_null", OptArg::List(vec!["a".into()]))],
                "0A000",
            ),
            (
                &[opt("format", text("csv")), opt("force_quote", OptArg::Star)],
                "0A000",
            ),
            (&[opt("format", text("binary"))], "0A000"),
            (&[opt("encoding", text("LATIN1"))], "0A000"),
            (&[opt("on_error", text("ignore"))], "0A000"),
            (&[opt("default", text("\\N"))], "22023"),
        ];
        for (list, code) in cases {
            let e = CopyOptions::from_list(list, true).unwrap_err();
            assert_eq!(e.sqlstate(), *code, "{list:?}: {e}");
        }
    }

    #[test]
    fn shard_options_spell_everything_out_without_header() {
        let o = CopyOptions::from_list(
            &[
                opt("format", text("csv")),
                opt("header", text("match")),
                opt("delimiter", text(";")),
                opt("null", text("it's \\N")),
                opt("force_null", OptArg::List(vec!["Key".into()])),
                opt("freeze", OptArg::Missing),
                opt("encoding", text("utf-8")),
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            o.render_for_shards(),
            "FORMAT csv, DELIMITER E';', NULL E'it\\'s \\\\N', QUOTE E'\"', ESCAPE E'\"', \
             FORCE_NULL (\"Key\"), FREEZE true, ENCODING E'utf-8'"
        );
    }
}
