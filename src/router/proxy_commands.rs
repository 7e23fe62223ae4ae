//! Session commands shardpool answers itself instead of forwarding: `SET/RESET/SHOW shardpool.*` (consistency,
//! causal token, shard key, shard) and `SHOW shardpool.route <sql>`. They look like GUCs on purpose, so drivers and
//! ORMs that can only send SQL can still set them. A `shardpool.` name that is not known here is an error rather than
//! a pass-through: Postgres would silently accept it as a placeholder variable and the client would believe it took
//! effect. Checked on every simple query, so text that is not ours is rejected on its first word.

use super::consistency::Consistency;
use super::scan::{statements, Words};

/// A `shardpool.*` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyParam {
    Consistency,
    CausalToken,
    ShardKey,
    Shard,
}

impl ProxyParam {
    /// The full name as clients write it (and as SHOW's column is named).
    pub fn name(self) -> &'static str {
        match self {
            ProxyParam::Consistency => "shardpool.consistency",
            ProxyParam::CausalToken => "shardpool.causal_token",
            ProxyParam::ShardKey => "shardpool.shard_key",
            ProxyParam::Shard => "shardpool.shard",
        }
    }

    fn from_suffix(suffix: &str) -> Option<ProxyParam> {
        [
            ProxyParam::Consistency,
            ProxyParam::CausalToken,
            ProxyParam::ShardKey,
            ProxyParam::Shard,
        ]
        .into_iter()
        .find(|p| p.name()[PREFIX.len()..].eq_ignore_ascii_case(suffix))
    }
}

/// A value given to `SET shardpool.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyValue {
    Consistency(Consistency),
    /// Opaque to this module; the session decodes it.
    CausalToken(String),
    /// Text form, typed later against the sharded table's key type.
    ShardKey(String),
    Shard(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyCommand {
    Set(ProxyValue),
    /// `RESET shardpool.x` or `SET shardpool.x TO DEFAULT`: back to the user's/database's default.
    Reset(ProxyParam),
    Show(ProxyParam),
    /// `SHOW shardpool.route <sql>`: where `sql` (verbatim, may be several statements) would run, and why.
    ShowRoute(String),
}

/// Errors the session turns into an ErrorResponse with `sqlstate()`; the messages follow Postgres' wording for GUCs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyCommandError {
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownParameter(String),
    #[error("invalid value for parameter \"{name}\": \"{value}\"{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    InvalidValue {
        name: &'static str,
        value: String,
        detail: Option<String>,
    },
    #[error("{0}")]
    NotSupported(&'static str),
}

impl ProxyCommandError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProxyCommandError::UnknownParameter(_) => "42704", // undefined_object
            ProxyCommandError::InvalidValue { .. } => "22023", // invalid_parameter_value
            ProxyCommandError::NotSupported(_) => "0A000",     // feature_not_supported
        }
    }
}

/// `Ok(None)`: not a shardpool command, forward it.
pub fn parse(sql: &str) -> Result<Option<ProxyCommand>, ProxyCommandError> {
    let mut words = Words::new(sql);
    let Some(verb) = words.next() else {
        return Ok(None);
    };
    let verb = if verb.eq_ignore_ascii_case("SET") {
        Verb::Set
    } else if verb.eq_ignore_ascii_case("SHOW") {
        Verb::Show
    } else if verb.eq_ignore_ascii_case("RESET") {
        Verb::Reset
    } else {
        return Ok(None);
    };
    let mut name = words.next();
    let mut scope = None;
    if verb == Verb::Set
        && name.is_some_and(|n| {
            ["SESSION", "LOCAL"]
                .iter()
                .any(|k| n.eq_ignore_ascii_case(k))
        })
    {
        scope = name;
        name = words.next();
    }
    if !name.is_some_and(|n| n.eq_ignore_ascii_case("shardpool")) {
        return Ok(None);
    }
    let Some(after_dot) = words.rest().strip_prefix('.') else {
        return Ok(None); // `SET shardpool = ...` is not a dotted name: Postgres' business
    };
    let mut words = Words::new(after_dot);
    let suffix = words.next().unwrap_or("");
    let rest = words.rest();
    if verb == Verb::Show && suffix.eq_ignore_ascii_case("route") {
        // The statement keeps its leading comments (hints): take the raw text after the word, not `rest`.
        let end = suffix.as_ptr() as usize - after_dot.as_ptr() as usize + suffix.len();
        return show_route(&after_dot[end..]).map(Some);
    }
    let param = ProxyParam::from_suffix(suffix)
        .ok_or_else(|| ProxyCommandError::UnknownParameter(format!("shardpool.{suffix}")))?;
    if scope.is_some_and(|s| s.eq_ignore_ascii_case("LOCAL")) {
        return Err(ProxyCommandError::NotSupported(
            "SET LOCAL is not supported for shardpool parameters; use SET",
        ));
    }
    let rest = single_statement(rest)?;
    match verb {
        Verb::Show | Verb::Reset if !rest.is_empty() => Err(ProxyCommandError::NotSupported(
            "unexpected text after a shardpool parameter name",
        )),
        Verb::Show => Ok(Some(ProxyCommand::Show(param))),
        Verb::Reset => Ok(Some(ProxyCommand::Reset(param))),
        Verb::Set => set(param, rest).map(Some),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Set,
    Show,
    Reset,
}

fn show_route(rest: &str) -> Result<ProxyCommand, ProxyCommandError> {
    let sql = rest.trim();
    if sql.is_empty() {
        return Err(ProxyCommandError::InvalidValue {
            name: "shardpool.route",
            value: String::new(),
            detail: Some("SHOW shardpool.route needs a statement after it".into()),
        });
    }
    Ok(ProxyCommand::ShowRoute(sql.to_owned()))
}

/// What follows the name, without a trailing `;`; a second statement in the same string is refused, because the
/// session answers our command itself and could not forward the rest in the same round trip.
fn single_statement(rest: &str) -> Result<&str, ProxyCommandError> {
    let mut parts = statements(rest);
    let first = parts.next().unwrap_or("");
    if parts.next().is_some() {
        return Err(ProxyCommandError::NotSupported(
            "shardpool commands must be sent alone, not with other statements",
        ));
    }
    // `statements` drops empty pieces, so a leading `;` (`SHOW shardpool.shard;`) leaves an empty first part.
    Ok(first.trim())
}

fn set(param: ProxyParam, rest: &str) -> Result<ProxyCommand, ProxyCommandError> {
    let value = rest
        .strip_prefix('=')
        .or_else(|| strip_to(rest))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(param, rest, Some("expected = or TO and a value")))?;
    if value.eq_ignore_ascii_case("DEFAULT") {
        return Ok(ProxyCommand::Reset(param));
    }
    let text = unquote(value).ok_or_else(|| invalid(param, value, Some("one value expected")))?;
    typed_value(param, text).map(ProxyCommand::Set)
}

/// A `shardpool.*` setting given at connection start (`options=-c shardpool.consistency=strong`, so from a URL or
/// `PGOPTIONS`, or as a startup parameter of its own): `Ok(None)` if `name` is not ours. The value is taken verbatim,
/// as Postgres takes `-c name=value`, and checked as `SET` would check it.
pub fn startup_value(name: &str, value: &str) -> Result<Option<ProxyValue>, ProxyCommandError> {
    let Some(suffix) = name
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .map(|_| &name[PREFIX.len()..])
    else {
        return Ok(None);
    };
    let param = ProxyParam::from_suffix(suffix)
        .ok_or_else(|| ProxyCommandError::UnknownParameter(name.to_ascii_lowercase()))?;
    let text = value.trim().to_owned();
    typed_value(param, text).map(Some)
}

/// A parameter's value as its type wants it; the same checks for SET and for startup options.
fn typed_value(param: ProxyParam, text: String) -> Result<ProxyValue, ProxyCommandError> {
    Ok(match param {
        ProxyParam::Consistency => text.parse().map(ProxyValue::Consistency).map_err(
            |e: super::consistency::ConsistencyError| invalid(param, &text, Some(&e.to_string())),
        )?,
        ProxyParam::CausalToken => ProxyValue::CausalToken(text),
        ProxyParam::ShardKey => ProxyValue::ShardKey(text),
        ProxyParam::Shard => text
            .parse()
            .map(ProxyValue::Shard)
            .map_err(|_| invalid(param, &text, Some("a shard number is expected")))?,
    })
}

/// How every shardpool parameter's name begins.
pub const PREFIX: &str = "shardpool.";

fn strip_to(s: &str) -> Option<&str> {
    let head = s.get(..2)?;
    let tail = &s[2..];
    (head.eq_ignore_ascii_case("TO") && tail.starts_with(|c: char| c.is_whitespace() || c == '\''))
        .then_some(tail)
}

/// A single value: `'quoted'` (with `''` escapes) or one bare token, which may hold parentheses
/// (`bounded_staleness(500ms)`); `None` when more than comments follows it.
fn unquote(v: &str) -> Option<String> {
    let (value, after) = match v.strip_prefix('\'') {
        Some(body) => quoted(body)?,
        None => {
            let len = bare_len(v);
            (v[..len].to_owned(), &v[len..])
        }
    };
    Words::new(after).rest().is_empty().then_some(value)
}

/// The body of a quoted literal (after the opening quote) and the text after its closing quote.
fn quoted(body: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if body[i + 1..].starts_with('\'') {
                out.push('\'');
                chars.next();
                continue;
            }
            return Some((out, &body[i + 1..]));
        }
        out.push(c);
    }
    None // unterminated
}

/// Up to whitespace outside parentheses and quotes.
fn bare_len(v: &str) -> usize {
    let (mut depth, mut in_quotes) = (0usize, false);
    for (i, c) in v.char_indices() {
        match c {
            '\'' => in_quotes = !in_quotes,
            '(' if !in_quotes => depth += 1,
            ')' if !in_quotes => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 && !in_quotes => return i,
            _ => {}
        }
    }
    v.len()
}

fn invalid(param: ProxyParam, value: &str, detail: Option<&str>) -> ProxyCommandError {
    ProxyCommandError::InvalidValue {
        name: param.name(),
        value: value.to_owned(),
        detail: detail.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ok(sql: &str) -> Option<ProxyCommand> {
        parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn err(sql: &str) -> ProxyCommandError {
        match parse(sql) {
            Err(e) => e,
            Ok(c) => panic!("{sql}: expected an error, got {c:?}"),
        }
    }

    #[test]
    fn not_ours() {
        for sql in [
            "",
            "SELECT 1",
            "SET search_path = a",
            "SET SESSION statement_timeout = 0",
            "SHOW server_version",
            "RESET ALL",
            "SET shardpool_x = 1",
            "SHOW shardpool",
            "SET myapp.consistency = strong",
            "SELECT 'SET shardpool.consistency = strong'",
            "/* SET shardpool.consistency = strong */ SELECT 1",
        ] {
            assert_eq!(parse(sql), Ok(None), "{sql}");
        }
    }

    #[test]
    fn consistency_commands() {
        let set = |c| Some(ProxyCommand::Set(ProxyValue::Consistency(c)));
        assert_eq!(
            ok("SET shardpool.consistency = strong"),
            set(Consistency::Strong)
        );
        assert_eq!(
            ok("set shardpool.consistency to 'eventual';"),
            set(Consistency::Eventual)
        );
        assert_eq!(
            ok("SET SESSION shardpool.Consistency TO read_your_writes"),
            set(Consistency::ReadYourWrites)
        );
        assert_eq!(
            ok("SET shardpool.consistency = bounded_staleness(500ms)"),
            set(Consistency::BoundedStaleness(Duration::from_millis(500)))
        );
        assert_eq!(
            ok("SET shardpool.consistency = 'bounded_staleness(''2s'')'"),
            set(Consistency::BoundedStaleness(Duration::from_secs(2)))
        );
        assert_eq!(
            ok("SET shardpool.consistency = bounded_staleness('2s')"),
            set(Consistency::BoundedStaleness(Duration::from_secs(2)))
        );
        assert_eq!(
            ok("/* app */ SET shardpool.consistency='strong'"),
            set(Consistency::Strong)
        );
        assert_eq!(
            ok("SET shardpool.consistency = strong /* app='x' */ -- why\n"),
            set(Consistency::Strong)
        );
        assert_eq!(
            ok("SET shardpool.consistency = 'strong'/*x*/;"),
            set(Consistency::Strong)
        );
        assert_eq!(
            ok("SET shardpool.consistency TO DEFAULT"),
            Some(ProxyCommand::Reset(ProxyParam::Consistency))
        );
        assert_eq!(
            ok("RESET shardpool.consistency"),
            Some(ProxyCommand::Reset(ProxyParam::Consistency))
        );
        assert_eq!(
            ok("SHOW shardpool.consistency;"),
            Some(ProxyCommand::Show(ProxyParam::Consistency))
        );
    }

    #[test]
    fn token_and_shard_commands() {
        assert_eq!(
            ok("SET shardpool.causal_token = 'v1:0/16B3748:12'"),
            Some(ProxyCommand::Set(ProxyValue::CausalToken(
                "v1:0/16B3748:12".into()
            )))
        );
        assert_eq!(
            ok("SHOW shardpool.causal_token"),
            Some(ProxyCommand::Show(ProxyParam::CausalToken))
        );
        assert_eq!(
            ok("RESET shardpool.causal_token"),
            Some(ProxyCommand::Reset(ProxyParam::CausalToken))
        );
        assert_eq!(
            ok("SET shardpool.shard_key = 42"),
            Some(ProxyCommand::Set(ProxyValue::ShardKey("42".into())))
        );
        assert_eq!(
            ok("SET shardpool.shard_key TO 'o''brien'"),
            Some(ProxyCommand::Set(ProxyValue::ShardKey("o'brien".into())))
        );
        assert_eq!(
            ok("SET shardpool.shard = 2"),
            Some(ProxyCommand::Set(ProxyValue::Shard(2)))
        );
        assert_eq!(
            ok("SET shardpool.shard TO '3'"),
            Some(ProxyCommand::Set(ProxyValue::Shard(3)))
        );
        assert_eq!(
            ok("RESET shardpool.shard_key"),
            Some(ProxyCommand::Reset(ProxyParam::ShardKey))
        );
        assert_eq!(
            ok("RESET shardpool.shard"),
            Some(ProxyCommand::Reset(ProxyParam::Shard))
        );
        assert_eq!(
            ok("SHOW shardpool.shard_key"),
            Some(ProxyCommand::Show(ProxyParam::ShardKey))
        );
        assert_eq!(
            ok("SHOW shardpool.shard"),
            Some(ProxyCommand::Show(ProxyParam::Shard))
        );
    }

    #[test]
    fn show_route_keeps_the_statement_verbatim() {
        assert_eq!(
            ok("SHOW shardpool.route SELECT * FROM t WHERE a = 'x;y'; UPDATE t SET a = 1"),
            Some(ProxyCommand::ShowRoute(
                "SELECT * FROM t WHERE a = 'x;y'; UPDATE t SET a = 1".into()
            ))
        );
        assert_eq!(
            ok("show SHARDPOOL.ROUTE\n  /* shardpool.route=replica */ SELECT 1"),
            Some(ProxyCommand::ShowRoute(
                "/* shardpool.route=replica */ SELECT 1".into()
            ))
        );
        assert_eq!(err("SHOW shardpool.route").sqlstate(), "22023");
        assert_eq!(err("SHOW shardpool.route   ").sqlstate(), "22023");
    }

    #[test]
    fn errors_carry_their_sqlstate() {
        let e = err("SET shardpool.colour = 'blue'");
        assert_eq!(
            e,
            ProxyCommandError::UnknownParameter("shardpool.colour".into())
        );
        assert_eq!(e.sqlstate(), "42704");
        assert_eq!(
            e.to_string(),
            "unrecognized configuration parameter \"shardpool.colour\""
        );
        assert_eq!(err("SHOW shardpool.nothing").sqlstate(), "42704");
        assert_eq!(err("RESET shardpool.nothing").sqlstate(), "42704");
        assert_eq!(err("SHOW shardpool.").sqlstate(), "42704");

        let e = err("SET shardpool.consistency = sometimes");
        assert_eq!(e.sqlstate(), "22023");
        assert!(e
            .to_string()
            .starts_with("invalid value for parameter \"shardpool.consistency\": \"sometimes\""));
        for sql in [
            "SET shardpool.consistency = bounded_staleness(5 hours)",
            "SET shardpool.consistency",
            "SET shardpool.consistency =",
            "SET shardpool.consistency = strong eventual",
            "SET shardpool.consistency = 'strong",
            "SET shardpool.consistency = 'strong' x",
            "SET shardpool.consistency = strong x /* c */",
            "SET shardpool.shard = -1",
            "SET shardpool.shard = two",
            "SET shardpool.shard = 99999999999",
            "SET shardpool.shard_key",
        ] {
            assert_eq!(err(sql).sqlstate(), "22023", "{sql}");
        }
        for sql in [
            "SET LOCAL shardpool.consistency = strong",
            "SET shardpool.shard = 1; SELECT 1",
            "SHOW shardpool.shard extra",
        ] {
            assert_eq!(err(sql).sqlstate(), "0A000", "{sql}");
        }
    }
}
