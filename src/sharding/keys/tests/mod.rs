//! Tests of the shard-key analysis, one file per kind of statement shape.

mod bind;
mod joins;
mod positional;
mod ranges;
mod single;
mod statements;
mod subqueries;
mod writes;

use super::*;
use crate::sharding::key::{KeyType, KeyValue};
use crate::sharding::schema::{ShardSchema, ShardedTable};

fn schema() -> ShardSchema {
    let t = |name: &str, key: &str, key_type, map: &str| ShardedTable {
        name: name.into(),
        key: key.into(),
        key_type,
        map: map.into(),
    };
    ShardSchema::new(
        vec![
            t("accounts", "aid", KeyType::Int, "hash"),
            t("history", "aid", KeyType::Int, "hash"),
            t("branches", "bid", KeyType::Int, "hash"),
            t("sessions", "id", KeyType::Uuid, "hash"),
            t("orders", "tenant", KeyType::Text, "tenants"),
            t("invoices", "tenant", KeyType::Text, "tenants"),
            t("notes", "tenant", KeyType::Text, "hash"),
            t("\"Users\"", "\"UserId\"", KeyType::Text, "hash"),
        ],
        &["countries".into()],
    )
    .unwrap()
}

fn one(sql: &str) -> StatementShards {
    match analyze_sql(sql, &schema()) {
        ShardAnalysis::Analyzed {
            mut statements,
            combined,
        } => {
            assert_eq!(statements.len(), 1, "{sql}");
            let s = statements.remove(0);
            assert_eq!(s, combined);
            s
        }
        other => panic!("{sql}: {other:?}"),
    }
}

/// The keys as (table, key), `None` for `Keys::None`.
fn keys_of(s: &StatementShards) -> Option<Vec<(String, KeyRef)>> {
    match &s.keys {
        Keys::None => None,
        Keys::Values(v) => Some(
            v.iter()
                .map(|k| (k.table.name.clone(), k.key.clone()))
                .collect(),
        ),
    }
}

fn keys(sql: &str) -> Option<Vec<(String, KeyRef)>> {
    keys_of(&one(sql))
}

fn int(n: i64) -> KeyRef {
    KeyRef::Literal(KeyValue::Int(n))
}
fn text(s: &str) -> KeyRef {
    KeyRef::Literal(KeyValue::Text(s.into()))
}
fn null() -> KeyRef {
    KeyRef::Literal(KeyValue::Null)
}
fn on(table: &str, keys: &[KeyRef]) -> Option<Vec<(String, KeyRef)>> {
    Some(
        keys.iter()
            .map(|k| (table.to_string(), k.clone()))
            .collect(),
    )
}
fn acc(keys: &[KeyRef]) -> Option<Vec<(String, KeyRef)>> {
    on("accounts", keys)
}
