//! A shard key as routing sees it: typed, because the hash of `42` as int8 and of `'42'` as text differ, exactly as
//! they do inside Postgres.

/// The Postgres types a shard key may have. int2, int4 and int8 share one variant: Postgres hashes them alike
/// (`hashint8extended` folds an int8 so that values fitting in 32 bits hash as `hashint4extended` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    #[serde(
        alias = "int2",
        alias = "int4",
        alias = "int8",
        alias = "integer",
        alias = "bigint"
    )]
    Int,
    #[serde(alias = "varchar")]
    Text,
    Uuid,
}

/// A key value found in SQL, in Bind parameters, in a COPY row or given by a hint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
    /// SQL NULL: `key = NULL` matches nothing, and an inserted NULL key has no shard (refused).
    Null,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("invalid input syntax for type {ty}: \"{value}\"")]
    InvalidSyntax { ty: &'static str, value: String },
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Int => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }

    /// Reads a key from its Postgres text representation (a SQL literal's content, a text-format Bind parameter,
    /// a COPY field).
    pub fn parse_text(self, text: &str) -> Result<KeyValue, KeyError> {
        let bad = || KeyError::InvalidSyntax {
            ty: self.name(),
            value: text.to_string(),
        };
        match self {
            KeyType::Int => text
                .trim()
                .parse::<i64>()
                .map(KeyValue::Int)
                .map_err(|_| bad()),
            KeyType::Text => Ok(KeyValue::Text(text.to_string())),
            KeyType::Uuid => parse_uuid(text).map(KeyValue::Uuid).ok_or_else(bad),
        }
    }
}

/// Postgres accepts a uuid as 32 hex digits, optionally hyphenated in groups of 4 and optionally in braces.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(t);
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for c in t.chars() {
        if c == '-' {
            // Postgres allows a hyphen after any group of four hex digits.
            if nibbles == 0 || nibbles % 4 != 0 {
                return None;
            }
            continue;
        }
        let v = c.to_digit(16)? as u8;
        if nibbles >= 32 {
            return None;
        }
        out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
        nibbles += 1;
    }
    (nibbles == 32).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_uuid_spellings_postgres_accepts() {
        let want = KeyType::Uuid
            .parse_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            .unwrap();
        for s in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(KeyType::Uuid.parse_text(s).unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "a0eebc99",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert!(KeyType::Uuid.parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn int_keys_reject_garbage_and_overflow() {
        assert_eq!(
            KeyType::Int.parse_text(" -42 ").unwrap(),
            KeyValue::Int(-42)
        );
        assert!(KeyType::Int.parse_text("9223372036854775808").is_err());
        assert!(KeyType::Int.parse_text("1.5").is_err());
    }
}
