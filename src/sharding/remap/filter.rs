//! The SQL predicate that selects a table's rows of a set of vshards, evaluated by Postgres itself: the
//! publication's row filter, the fence trigger, verification and the final delete all use it, so they agree with
//! each other and with the router (the hash is Postgres' own, see `sharding::hash`).
//!
//! - hash map: the vshard expression `IN (...)`;
//! - range map: the key ranges whose vshard moves, compared in the map's order (`COLLATE "C"` for text: the catalog
//!   orders text by bytes);
//! - directory map: the keys whose entry points at a moving vshard, plus, with `unknown_keys = "hash"`, keys without
//!   an entry whose hash vshard moves.

use crate::config::sharding::{MapConfig, ShardingConfig, TableConfig, UnknownKeys};
use crate::sharding::catalog::{key_text, Catalog};
use crate::sharding::hash::{quote_ident, vshard_expr};
use crate::sharding::key::{KeyType, KeyValue};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("table {table} uses map {map:?}, which is not in the catalog or the config")]
    UnknownMap { table: String, map: String },
}

/// A table name from the config (`orders` or `sales.orders`) as SQL, each part quoted when needed.
pub fn table_sql(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// A SQL literal of the key's type.
fn literal(key: &KeyValue) -> String {
    match key {
        KeyValue::Int(i) => i.to_string(),
        KeyValue::Null => "NULL".into(),
        other => {
            let text = key_text(other).unwrap_or_default().replace('\'', "''");
            match other {
                KeyValue::Uuid(_) => format!("'{text}'::uuid"),
                _ => format!("'{text}'"),
            }
        }
    }
}

fn list(vshards: &[u32]) -> String {
    vshards
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The predicate selecting `table`'s rows of `vshards` (sorted), with the key column written as `column` (its
/// quoted name, or `NEW."key"` in a trigger). `false` when no row of the table can be in those vshards.
pub fn rows_of(
    table: &TableConfig,
    column: &str,
    vshards: &[u32],
    catalog: &Catalog,
    cfg: &ShardingConfig,
) -> Result<String, FilterError> {
    if vshards.is_empty() {
        return Ok("false".into());
    }
    let unknown = || FilterError::UnknownMap {
        table: table.name.clone(),
        map: table.map.clone(),
    };
    let by_hash = || {
        format!(
            "{} IN ({})",
            vshard_expr(column, table.key_type, catalog.vshards),
            list(vshards)
        )
    };
    if table.map == "hash" {
        return Ok(by_hash());
    }
    match cfg.maps.get(&table.map).ok_or_else(unknown)? {
        MapConfig::Range { .. } => {
            let ranges = catalog.ranges.get(&table.map).ok_or_else(unknown)?;
            // Range i runs from lowers[i] (None: -inf) to lowers[i + 1] (None: +inf).
            let lowers: Vec<Option<&KeyValue>> = std::iter::once(None)
                .chain(ranges.bounds.iter().map(|(k, _)| Some(k)))
                .collect();
            let owners: Vec<u32> = std::iter::once(ranges.first)
                .chain(ranges.bounds.iter().map(|(_, v)| *v))
                .collect();
            let col = match table.key_type {
                KeyType::Text => format!("({column} COLLATE \"C\")"),
                _ => column.to_string(),
            };
            let mut parts = Vec::new();
            for (i, owner) in owners.iter().enumerate() {
                if vshards.binary_search(owner).is_err() {
                    continue;
                }
                let mut conds = vec![format!("{column} IS NOT NULL")];
                if let Some(Some(lo)) = lowers.get(i) {
                    conds.push(format!("{col} >= {}", literal(lo)));
                }
                if let Some(Some(hi)) = lowers.get(i + 1) {
                    conds.push(format!("{col} < {}", literal(hi)));
                }
                parts.push(format!("({})", conds.join(" AND ")));
            }
            Ok(if parts.is_empty() {
                "false".into()
            } else {
                format!("({})", parts.join(" OR "))
            })
        }
        MapConfig::Directory { unknown_keys, .. } => {
            let dir = catalog.directories.get(&table.map).ok_or_else(unknown)?;
            let mut mine: Vec<String> = Vec::new();
            let mut all: Vec<String> = Vec::new();
            let mut entries: Vec<(&String, &u32)> = dir.entries.iter().collect();
            entries.sort();
            for (key, vshard) in entries {
                let Ok(value) = table.key_type.parse_text(key) else {
                    continue;
                };
                let lit = literal(&value);
                if vshards.binary_search(vshard).is_ok() {
                    mine.push(lit.clone());
                }
                all.push(lit);
            }
            let mut parts = Vec::new();
            if !mine.is_empty() {
                parts.push(format!("{column} IN ({})", mine.join(", ")));
            }
            if *unknown_keys == UnknownKeys::Hash {
                if all.is_empty() {
                    parts.push(by_hash());
                } else {
                    parts.push(format!(
                        "({column} NOT IN ({}) AND {})",
                        all.join(", "),
                        by_hash()
                    ));
                }
            }
            Ok(if parts.is_empty() {
                "false".into()
            } else {
                format!("({})", parts.join(" OR "))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::catalog::{Directory, RangeMap};
    use std::collections::HashMap;

    fn setup() -> (ShardingConfig, Catalog) {
        let cfg: ShardingConfig = toml::from_str(
            r#"
            vshards = 8
            [[shards]]
            host = "h"
            port = 1
            [[tables]]
            name = "accounts"
            key = "aid"
            type = "int8"
            [[tables]]
            name = "events"
            key = "ts"
            type = "int8"
            map = "days"
            [[tables]]
            name = "Sales.orders"
            key = "tenant"
            type = "text"
            map = "tenants"
            [maps.days]
            kind = "range"
            key_type = "int8"
            split_points = [10, 20]
            [maps.tenants]
            kind = "directory"
            key_type = "text"
            "#,
        )
        .unwrap();
        let catalog = Catalog {
            epoch: 1,
            vshards: 8,
            placement: vec![0; 8],
            directories: HashMap::from([(
                "tenants".into(),
                Directory {
                    key_type: KeyType::Text,
                    entries: HashMap::from([("acme".into(), 3), ("o'neil".into(), 5)]),
                },
            )]),
            ranges: HashMap::from([(
                "days".into(),
                RangeMap {
                    key_type: KeyType::Int,
                    first: 0,
                    bounds: vec![(KeyValue::Int(10), 2), (KeyValue::Int(20), 5)],
                },
            )]),
            freeze: Default::default(),
            remaps: Vec::new(),
        };
        (cfg, catalog)
    }

    #[test]
    fn each_map_kind_selects_its_rows() {
        let (cfg, c) = setup();
        let f = |i: usize, v: &[u32]| rows_of(&cfg.tables[i], "k", v, &c, &cfg).unwrap();
        assert_eq!(
            f(0, &[1, 3]),
            "((hashint8extended(k, 0) & 9223372036854775807) % 8) IN (1, 3)"
        );
        assert_eq!(f(1, &[2]), "((k IS NOT NULL AND k >= 10 AND k < 20))");
        assert_eq!(
            f(1, &[0, 5]),
            "((k IS NOT NULL AND k < 10) OR (k IS NOT NULL AND k >= 20))"
        );
        assert_eq!(f(1, &[1]), "false");
        assert_eq!(f(2, &[5]), "(k IN ('o''neil') OR (k NOT IN ('acme', 'o''neil') AND ((hashtextextended(k, 0) & 9223372036854775807) % 8) IN (5)))");
        assert_eq!(f(0, &[]), "false");
        assert_eq!(table_sql("Sales.orders"), "\"Sales\".orders");
    }
}
