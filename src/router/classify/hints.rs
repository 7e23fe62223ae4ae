//! Per-query routing hints, written by applications (or ORMs' comment hooks) in a comment before the statement:
//! `/* shardpool.consistency=bounded_staleness(500ms), shardpool.route=replica */ SELECT ...`. Only comments that
//! lead the text count, so a hint inside a literal or later in the statement is never obeyed. Other tools' tags in
//! the same comment (sqlcommenter's `key='value'`) are skipped silently; unknown `shardpool.*` names and malformed
//! values are skipped with a debug log, because a hint must never make a query fail.

use super::super::consistency::Consistency;

/// Where a hint asks a statement to run, whatever the classification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteHint {
    Primary,
    Replica,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub consistency: Option<Consistency>,
    pub route: Option<RouteHint>,
    /// The shard key's text form (quotes removed); typed later against the sharded table's key type.
    pub shard_key: Option<String>,
    pub shard: Option<u32>,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        *self == Hints::default()
    }
}

/// Hints in the comments before the first token of `sql`.
pub fn leading(sql: &str) -> Hints {
    let mut hints = Hints::default();
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(body) = rest.strip_prefix("/*") {
            let (comment, after) = split_block_comment(body);
            read_items(comment, &mut hints);
            rest = after;
        } else if let Some(body) = rest.strip_prefix("--") {
            let (comment, after) = body.split_once('\n').unwrap_or((body, ""));
            read_items(comment, &mut hints);
            rest = after;
        } else {
            return hints;
        }
    }
}

/// Splits a block comment's body (after `/*`) into its text and what follows `*/`; comments nest in Postgres.
fn split_block_comment(body: &str) -> (&str, &str) {
    let b = body.as_bytes();
    let (mut depth, mut i) = (1, 0);
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return (&body[..i - 2], &body[i..]);
                }
            }
            _ => i += 1,
        }
    }
    (body, "")
}

/// Reads `name=value` items separated by whitespace or commas.
fn read_items(comment: &str, hints: &mut Hints) {
    let mut rest = comment;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after_name = rest[name_len..].trim_start();
        let Some(value_start) = after_name.strip_prefix('=') else {
            // Not an item; skip one word (or one stray character) and go on.
            rest = &rest[name_len.max(rest.chars().next().map_or(1, char::len_utf8))..];
            continue;
        };
        let value_start = value_start.trim_start();
        let value_len = value_len(value_start);
        apply(name, &value_start[..value_len], hints);
        rest = &value_start[value_len..];
    }
}

/// Length of a value: up to whitespace or a comma outside parentheses and single quotes.
fn value_len(s: &str) -> usize {
    let (mut depth, mut quoted) = (0usize, false);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            c if !quoted && depth == 0 && (c.is_whitespace() || c == ',') => return i,
            _ => {}
        }
    }
    s.len()
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => v.to_owned(),
    }
}

fn apply(name: &str, value: &str, hints: &mut Hints) {
    let Some(key) = name
        .get(..10)
        .filter(|p| p.eq_ignore_ascii_case("shardpool."))
        .map(|_| &name[10..])
    else {
        return; // another tool's tag
    };
    let value = unquote(value);
    let ok = match key.to_ascii_lowercase().as_str() {
        "consistency" => value.parse().map(|c| hints.consistency = Some(c)).is_ok(),
        "route" => match value.to_ascii_lowercase().as_str() {
            "primary" => Some(RouteHint::Primary),
            "replica" => Some(RouteHint::Replica),
            _ => None,
        }
        .map(|r| hints.route = Some(r))
        .is_some(),
        "shard_key" => {
            let ok = !value.is_empty();
            if ok {
                hints.shard_key = Some(value.clone());
            }
            ok
        }
        "shard" => value.parse().map(|n| hints.shard = Some(n)).is_ok(),
        _ => {
            tracing::debug!(hint = name, "unknown shardpool hint ignored");
            return;
        }
    };
    if !ok {
        tracing::debug!(hint = name, value, "malformed shardpool hint ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_each_hint() {
        let h = leading("/* shardpool.consistency=strong */ SELECT 1");
        assert_eq!(h.consistency, Some(Consistency::Strong));
        let h = leading("/*shardpool.consistency=bounded_staleness(500ms)*/SELECT 1");
        assert_eq!(
            h.consistency,
            Some(Consistency::BoundedStaleness(Duration::from_millis(500)))
        );
        let h = leading("/* shardpool.consistency = 'bounded_staleness(''2s'')' */ SELECT 1");
        assert_eq!(
            h.consistency,
            Some(Consistency::BoundedStaleness(Duration::from_secs(2)))
        );
        let h = leading("/* shardpool.consistency=bounded_staleness('2s') */ SELECT 1");
        assert_eq!(
            h.consistency,
            Some(Consistency::BoundedStaleness(Duration::from_secs(2)))
        );
        assert_eq!(
            leading("/* shardpool.consistency=read_your_writes */ x").consistency,
            Some(Consistency::ReadYourWrites)
        );
        assert_eq!(
            leading("/* shardpool.consistency=EVENTUAL */ x").consistency,
            Some(Consistency::Eventual)
        );
        assert_eq!(
            leading("/* shardpool.route=primary */ x").route,
            Some(RouteHint::Primary)
        );
        assert_eq!(
            leading("/* Shardpool.Route=Replica */ x").route,
            Some(RouteHint::Replica)
        );
        assert_eq!(
            leading("/* shardpool.shard_key=42 */ x")
                .shard_key
                .as_deref(),
            Some("42")
        );
        assert_eq!(
            leading("/* shardpool.shard_key='o''brien' */ x")
                .shard_key
                .as_deref(),
            Some("o'brien")
        );
        assert_eq!(leading("/* shardpool.shard=2 */ x").shard, Some(2));
    }

    #[test]
    fn several_hints_and_foreign_tags() {
        let h = leading(
            "/* controller='users', shardpool.route=replica,shardpool.shard=3 shardpool.consistency=eventual */ \
             -- shardpool.shard_key=7\n SELECT 1",
        );
        assert_eq!(
            h,
            Hints {
                consistency: Some(Consistency::Eventual),
                route: Some(RouteHint::Replica),
                shard_key: Some("7".into()),
                shard: Some(3),
            }
        );
    }

    #[test]
    fn ignores_unknown_malformed_and_non_leading() {
        assert!(leading("/* shardpool.colour=blue */ SELECT 1").is_empty());
        assert!(leading("/* shardpool.consistency=sometimes */ SELECT 1").is_empty());
        assert!(leading("/* shardpool.shard=-1 */ SELECT 1").is_empty());
        assert!(leading("/* shardpool.route=anywhere */ SELECT 1").is_empty());
        assert!(leading("/* shardpool.shard_key= */ SELECT 1").is_empty());
        assert!(leading("SELECT 1 /* shardpool.route=primary */").is_empty());
        assert!(leading("SELECT '/* shardpool.route=primary */'").is_empty());
        assert!(leading("/* just a comment */ SELECT 1").is_empty());
        assert!(leading("/* shardpool.route */ SELECT 1").is_empty());
        // Malformed and unterminated input must not panic.
        for s in [
            "/*",
            "/* shardpool.route=",
            "/* = , ( ' */",
            "--",
            "/* é=é */",
        ] {
            let _ = leading(s);
        }
        // A nested comment is part of the leading comment.
        assert_eq!(
            leading("/* a /* b */ shardpool.shard=1 */ SELECT").shard,
            Some(1)
        );
    }
}
