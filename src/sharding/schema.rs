//! Which tables of a sharded database are sharded (and by which key and map) and which are reference tables copied
//! to every shard. Statement analysis (`sharding::keys`) looks every table name of a statement up here; anything not
//! found is an unsharded table living on the default shard.
//!
//! Names follow Postgres' identifier rules (scan.l, `downcase_identifier`): an unquoted identifier folds to lower case,
//! a double-quoted one keeps its case. Configured names are written the same way (`accounts`, `sales.accounts`,
//! `"Accounts"`), so a table created as `"Accounts"` is configured as `"\"Accounts\""`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use sqlparser::ast::Ident;

use super::key::KeyType;

/// A sharded table as the configuration names it. After [`ShardSchema::new`], `name` and `key` hold the names as
/// Postgres resolves them (unquoted parts lower-cased, quotes removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedTable {
    pub name: String,
    pub key: String,
    pub key_type: KeyType,
    /// "hash" (built in) or a map named in the database's sharding configuration.
    pub map: String,
}

impl ShardedTable {
    /// Two tables are co-located (rows with equal keys sit on the same shard) when they use the same map with the
    /// same key type: the hash of `42` as int8 and of `'42'` as text differ.
    pub fn colocated_with(&self, other: &ShardedTable) -> bool {
        self.map == other.map && self.key_type == other.key_type
    }
}

/// How a table name resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableKind {
    Sharded(Arc<ShardedTable>),
    /// Present on every shard with the same rows: read anywhere, written everywhere.
    Reference,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The schema the configuration named, if any. An unqualified entry matches the name in any schema.
    schema: Option<String>,
    kind: TableKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("invalid table or column name {0:?}")]
    BadName(String),
    #[error("table {0:?} is configured twice")]
    Duplicate(String),
}

/// The sharded and reference tables of one database, looked up by the names statements use.
#[derive(Clone, Debug, Default)]
pub struct ShardSchema {
    /// Keyed by the bare (unqualified, normalized) table name; a few entries at most per name.
    by_name: HashMap<String, Vec<Entry>>,
}

impl ShardSchema {
    pub fn new(
        tables: Vec<ShardedTable>,
        reference_tables: &[String],
    ) -> Result<Self, SchemaError> {
        let mut schema = ShardSchema::default();
        for mut table in tables {
            let (ns, name) = split_name(&table.name)?;
            let key = split_name(&table.key)?;
            if key.0.is_some() {
                return Err(SchemaError::BadName(table.key));
            }
            table.name = match &ns {
                Some(ns) => format!("{ns}.{name}"),
                None => name.clone(),
            };
            table.key = key.1;
            let shown = table.name.clone();
            schema.insert(ns, name, TableKind::Sharded(Arc::new(table)), shown)?;
        }
        for raw in reference_tables {
            let (ns, name) = split_name(raw)?;
            schema.insert(ns, name, TableKind::Reference, raw.clone())?;
        }
        Ok(schema)
    }

    fn insert(
        &mut self,
        ns: Option<String>,
        name: String,
        kind: TableKind,
        shown: String,
    ) -> Result<(), SchemaError> {
        let entries = self.by_name.entry(name).or_default();
        if entries.iter().any(|e| e.schema == ns) {
            return Err(SchemaError::Duplicate(shown));
        }
        entries.push(Entry { schema: ns, kind });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Resolves a table name as written in SQL: `t`, or `s.t` (of `db.s.t`, pass the last two parts).
    /// `None`: an unsharded table.
    pub fn lookup(&self, schema: Option<&Ident>, name: &Ident) -> Option<&TableKind> {
        let entries = self.by_name.get(normalize(name).as_ref())?;
        match schema {
            // `s.t`: the entry configured for schema s, else one configured without a schema.
            Some(ns) => entries
                .iter()
                .find(|e| e.schema.as_deref().is_some_and(|s| ident_is(ns, s)))
                .or_else(|| entries.iter().find(|e| e.schema.is_none())),
            // `t` follows search_path, which we cannot see: prefer the unqualified entry, else any.
            None => entries
                .iter()
                .find(|e| e.schema.is_none())
                .or_else(|| entries.first()),
        }
        .map(|e| &e.kind)
    }

    /// Resolves a name given as text the way a configuration writes it (used by tools and tests).
    pub fn lookup_str(&self, name: &str) -> Option<&TableKind> {
        let (ns, bare) = split_name(name).ok()?;
        let ns = ns.map(|ns| Ident::with_quote('"', ns));
        self.lookup(ns.as_ref(), &Ident::with_quote('"', bare))
    }

    /// Every sharded table, for tools that list them.
    pub fn sharded_tables(&self) -> impl Iterator<Item = &Arc<ShardedTable>> {
        self.by_name
            .values()
            .flatten()
            .filter_map(|e| match &e.kind {
                TableKind::Sharded(t) => Some(t),
                TableKind::Reference => None,
            })
    }
}

/// The column order of sharded tables (attnum order, dropped columns left out), read from the default shard: where
/// an `INSERT` without a column list finds its shard key. A table missing here has an unknown order, and such an
/// INSERT into it is refused rather than guessed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableColumns {
    /// Keyed by [`ShardedTable::name`]; column names as Postgres stores them (`attname`).
    by_table: HashMap<String, Vec<String>>,
}

impl TableColumns {
    pub fn new(by_table: HashMap<String, Vec<String>>) -> TableColumns {
        TableColumns { by_table }
    }

    /// The 0-based position of `table`'s shard key among its columns; `None` while the order is unknown (or the
    /// key column is missing, which the loader reports).
    pub fn key_position(&self, table: &ShardedTable) -> Option<usize> {
        self.by_table
            .get(&table.name)?
            .iter()
            .position(|c| *c == table.key)
    }

    pub fn columns(&self, table: &str) -> Option<&[String]> {
        self.by_table.get(table).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.by_table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_table.is_empty()
    }
}

/// The name Postgres gives an identifier: unquoted ones fold to lower case (ASCII only, as Postgres does for
/// single-byte encodings and UTF-8 alike in `downcase_identifier`).
pub fn normalize(ident: &Ident) -> Cow<'_, str> {
    if ident.quote_style.is_some() || !ident.value.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Borrowed(&ident.value)
    } else {
        Cow::Owned(ident.value.to_ascii_lowercase())
    }
}

/// Whether an SQL identifier names `normalized` (a name already in Postgres' resolved form), without allocating.
pub fn ident_is(ident: &Ident, normalized: &str) -> bool {
    if ident.quote_style.is_some() {
        return ident.value == normalized;
    }
    ident.value.len() == normalized.len()
        && ident
            .value
            .bytes()
            .zip(normalized.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b)
}

/// Whether two SQL identifiers name the same thing.
pub fn same_ident(a: &Ident, b: &Ident) -> bool {
    match (a.quote_style.is_some(), b.quote_style.is_some()) {
        (true, _) => ident_is(b, &a.value),
        (false, true) => ident_is(a, &b.value),
        (false, false) => a.value.eq_ignore_ascii_case(&b.value),
    }
}

/// Splits a configured name (`t`, `s.t`, `"S"."T"`) into its normalized schema and table parts.
fn split_name(raw: &str) -> Result<(Option<String>, String), SchemaError> {
    let bad = || SchemaError::BadName(raw.to_string());
    let mut parts: Vec<String> = Vec::with_capacity(2);
    let mut chars = raw.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next().ok_or_else(bad)? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return Err(bad());
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(bad());
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(_) => return Err(bad()),
        }
    }
    match parts.len() {
        1 => Ok((None, parts.remove(0))),
        2 => {
            let name = parts.remove(1);
            Ok((Some(parts.remove(0)), name))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, key: &str) -> ShardedTable {
        ShardedTable {
            name: name.into(),
            key: key.into(),
            key_type: KeyType::Int,
            map: "hash".into(),
        }
    }

    fn lookup<'s>(schema: &'s ShardSchema, parts: &[(&str, bool)]) -> Option<&'s TableKind> {
        let parts = idents(parts);
        let (name, rest) = parts.split_last()?;
        schema.lookup(rest.last(), name)
    }

    fn idents(sql: &[(&str, bool)]) -> Vec<Ident> {
        sql.iter()
            .map(|(v, quoted)| {
                if *quoted {
                    Ident::with_quote('"', *v)
                } else {
                    Ident::new(*v)
                }
            })
            .collect()
    }

    fn is_sharded(schema: &ShardSchema, parts: &[(&str, bool)]) -> Option<String> {
        match lookup(schema, parts) {
            Some(TableKind::Sharded(t)) => Some(t.name.clone()),
            _ => None,
        }
    }

    #[test]
    fn unqualified_config_matches_any_schema_and_folds_case() {
        let s = ShardSchema::new(vec![table("Accounts", "AID")], &[]).unwrap();
        let t = s.sharded_tables().next().unwrap();
        assert_eq!((t.name.as_str(), t.key.as_str()), ("accounts", "aid"));
        assert!(is_sharded(&s, &[("accounts", false)]).is_some());
        assert!(is_sharded(&s, &[("ACCOUNTS", false)]).is_some());
        assert!(is_sharded(&s, &[("public", false), ("accounts", false)]).is_some());
        assert!(is_sharded(&s, &[("db", false), ("public", false), ("accounts", false)]).is_some());
        // A quoted identifier keeps its case: "Accounts" is another table.
        assert!(is_sharded(&s, &[("Accounts", true)]).is_none());
        assert!(is_sharded(&s, &[("accounts", true)]).is_some());
    }

    #[test]
    fn qualified_and_quoted_config_names() {
        let s = ShardSchema::new(
            vec![
                table("sales.orders", "oid"),
                table("\"Tenants\"", "\"TenantId\""),
            ],
            &["countries".into(), "geo.\"Cities\"".into()],
        )
        .unwrap();
        assert_eq!(
            is_sharded(&s, &[("sales", false), ("orders", false)]).as_deref(),
            Some("sales.orders")
        );
        assert!(is_sharded(&s, &[("orders", false)]).is_some());
        assert!(is_sharded(&s, &[("other", false), ("orders", false)]).is_none());
        assert!(is_sharded(&s, &[("Tenants", true)]).is_some());
        assert!(is_sharded(&s, &[("tenants", false)]).is_none());
        assert_eq!(
            s.sharded_tables()
                .find(|t| t.name == "Tenants")
                .unwrap()
                .key,
            "TenantId"
        );
        assert_eq!(
            lookup(&s, &[("Countries", false)]),
            Some(&TableKind::Reference)
        );
        assert_eq!(
            lookup(&s, &[("geo", false), ("Cities", true)]),
            Some(&TableKind::Reference)
        );
        assert_eq!(lookup(&s, &[("cities", false)]), None);
        assert_eq!(s.lookup_str("geo.\"Cities\""), Some(&TableKind::Reference));
    }

    #[test]
    fn rejects_bad_and_duplicate_names() {
        assert!(matches!(
            ShardSchema::new(vec![table("a..b", "k")], &[]),
            Err(SchemaError::BadName(_))
        ));
        assert!(matches!(
            ShardSchema::new(vec![table("\"open", "k")], &[]),
            Err(SchemaError::BadName(_))
        ));
        assert!(matches!(
            ShardSchema::new(vec![table("t", "s.k")], &[]),
            Err(SchemaError::BadName(_))
        ));
        assert!(matches!(
            ShardSchema::new(vec![table("t", "k"), table("T", "k")], &[]),
            Err(SchemaError::Duplicate(_))
        ));
        assert!(matches!(
            ShardSchema::new(vec![table("t", "k")], &["t".into()]),
            Err(SchemaError::Duplicate(_))
        ));
        // The same bare name in two schemas is fine.
        assert!(ShardSchema::new(vec![table("a.t", "k"), table("b.t", "k")], &[]).is_ok());
    }

    #[test]
    fn identifier_comparisons_follow_postgres_folding() {
        assert!(same_ident(&Ident::new("Aid"), &Ident::new("aID")));
        assert!(same_ident(
            &Ident::new("Aid"),
            &Ident::with_quote('"', "aid")
        ));
        assert!(!same_ident(
            &Ident::new("aid"),
            &Ident::with_quote('"', "Aid")
        ));
        assert!(ident_is(&Ident::new("AID"), "aid"));
        assert!(!ident_is(&Ident::with_quote('"', "AID"), "aid"));
    }
}
