//! Configuration of a sharded database (`[databases.NAME.sharding]`): its physical shards, the size of the
//! virtual-shard space, which tables are sharded by which key and map, and where the shared catalog lives.
//!
//! The config describes the starting point only. After `shardctl init` the catalog database is the truth for
//! placement (vshard -> shard), directory entries and range boundaries, because those change online and must be
//! the same for every shardpool instance; the config keeps what does not change at run time (key columns, map
//! kinds, server addresses).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, Problem};
use crate::sharding::catalog::compare_keys;
use crate::sharding::key::{KeyType, KeyValue};

/// Name of the built-in hash map; a table with `map = "hash"` needs no `[maps]` entry.
pub const HASH_MAP: &str = "hash";

/// Largest virtual-shard space: placement and counters are arrays indexed by vshard, and 65,536 is already far
/// more than any realistic number of physical shards needs for fine-grained moves.
pub const MAX_VSHARDS: u32 = 65_536;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// Size of the virtual-shard space. Written into the catalog by `shardctl init` and fixed afterwards: every
    /// hash-placed row's vshard depends on it.
    #[serde(default = "default_vshards")]
    pub vshards: u32,
    /// Index into `shards` of the shard holding unsharded tables.
    #[serde(default)]
    pub default_shard: u16,
    /// Let a write without a shard key run on every shard; refused by default because it is rarely intended.
    #[serde(default)]
    pub allow_fanout_writes: bool,
    /// Where the catalog database is; each missing part defaults to shard 0's primary and database.
    #[serde(default)]
    pub catalog: Option<CatalogLocation>,
    /// How often a running instance compares its catalog epoch with the catalog's, in case a NOTIFY was lost.
    #[serde(default = "default_catalog_check_interval")]
    pub catalog_check_interval: ConfigDuration,
    /// Physical shards, numbered by their position (shard 0 first).
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Sharded tables.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Range and directory maps by name; `hash` is built in.
    #[serde(default)]
    pub maps: BTreeMap<String, MapConfig>,
    /// Tables present with identical contents on every shard (small lookup tables joined with sharded ones).
    #[serde(default)]
    pub reference_tables: Vec<String>,
}

fn default_vshards() -> u32 {
    4096
}

fn default_catalog_check_interval() -> ConfigDuration {
    ConfigDuration::secs(5)
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogLocation {
    /// Catalog server host; defaults to shard 0's host.
    #[serde(default)]
    pub host: Option<String>,
    /// Catalog server port; defaults to shard 0's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Catalog database; defaults to shard 0's database.
    #[serde(default)]
    pub database: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Host of the shard's primary.
    pub host: String,
    /// Port of the shard's primary.
    pub port: u16,
    /// Database name on the shard; defaults to the name clients use.
    #[serde(default)]
    pub server_database: Option<String>,
    /// Read replicas of this shard.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
}

impl ShardConfig {
    /// The database on this shard's servers for the client-facing database `database`.
    pub fn database<'a>(&'a self, database: &'a str) -> &'a str {
        self.server_database.as_deref().unwrap_or(database)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub host: String,
    pub port: u16,
    /// Share of the shard's reads relative to its other replicas.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Table name as written in SQL, optionally schema-qualified.
    pub name: String,
    /// The shard-key column.
    pub key: String,
    /// The key column's type: int2, int4, int8, text or uuid (int2 and int4 hash as int8 does, like Postgres).
    #[serde(rename = "type")]
    pub key_type: KeyType,
    /// `hash` or the name of a map under `maps`. Tables with the same map are co-located.
    #[serde(default = "default_map")]
    pub map: String,
}

fn default_map() -> String {
    HASH_MAP.into()
}

/// A named map from key to vshard, other than the built-in hash.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum MapConfig {
    /// An explicit key -> vshard table kept in the catalog (e.g. tenant -> vshard).
    Directory {
        /// Type of the keys: int, text or uuid (same spellings as a table's `type`).
        key_type: KeyType,
        /// What routing does with a key that has no entry yet.
        #[serde(default)]
        unknown_keys: UnknownKeys,
    },
    /// Ordered key ranges, each its own vshard: N split points give N+1 ranges, (-inf, p0), [p0, p1) ... [pN-1, +inf).
    Range {
        key_type: KeyType,
        /// The initial range boundaries, strictly increasing (int: numeric order; text and uuid: byte order, i.e.
        /// the C collation). Later splits happen in the catalog, not here.
        #[serde(default)]
        split_points: Vec<SplitPoint>,
    },
}

impl MapConfig {
    pub fn key_type(&self) -> KeyType {
        match self {
            MapConfig::Directory { key_type, .. } | MapConfig::Range { key_type, .. } => *key_type,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            MapConfig::Directory { .. } => "directory",
            MapConfig::Range { .. } => "range",
        }
    }
}

/// The directory policy for keys not in the directory.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownKeys {
    /// Place the key where the hash map would, and record that in the directory so it stays there when the hash
    /// placement of other keys changes.
    #[default]
    Hash,
    /// Refuse statements for keys without an entry.
    Error,
}

/// A range boundary as written in TOML: a number for int maps, a string for any map.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SplitPoint {
    Int(i64),
    Text(String),
}

impl SplitPoint {
    /// The boundary as a key of `ty`; text spellings go through the same parser as keys found in SQL.
    pub fn to_key(&self, ty: KeyType) -> Result<KeyValue, String> {
        match (self, ty) {
            (SplitPoint::Int(v), KeyType::Int) => Ok(KeyValue::Int(*v)),
            (SplitPoint::Int(v), _) => Err(format!(
                "{v} is a number but the map's keys are {}; write it as a string",
                ty.name()
            )),
            (SplitPoint::Text(s), _) => ty.parse_text(s).map_err(|e| e.to_string()),
        }
    }
}

/// Where the catalog is, with defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl ShardingConfig {
    pub fn check_interval(&self) -> Duration {
        self.catalog_check_interval.0
    }

    /// The catalog's server and database for client-facing database `database`; `None` without shards.
    pub fn catalog_target(&self, database: &str) -> Option<CatalogTarget> {
        let first = self.shards.first()?;
        let loc = self.catalog.clone().unwrap_or_default();
        Some(CatalogTarget {
            host: loc.host.unwrap_or_else(|| first.host.clone()),
            port: loc.port.unwrap_or(first.port),
            database: loc
                .database
                .unwrap_or_else(|| first.database(database).to_owned()),
        })
    }

    /// Range maps' split points as typed keys; only meaningful once `validate()` found nothing wrong.
    pub fn split_points(&self, map: &str) -> Result<Vec<KeyValue>, String> {
        match self.maps.get(map) {
            Some(MapConfig::Range {
                key_type,
                split_points,
            }) => split_points.iter().map(|p| p.to_key(*key_type)).collect(),
            _ => Err(format!("{map:?} is not a range map")),
        }
    }

    /// Every problem, with keys under `sharding.`; `validate_at` lets the caller put the database name in front.
    pub fn validate(&self) -> Vec<Problem> {
        self.validate_at("sharding")
    }

    pub fn validate_at(&self, prefix: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| {
            out.push(Problem {
                key: format!("{prefix}.{key}"),
                message,
            })
        };

        if !(1..=MAX_VSHARDS).contains(&self.vshards) {
            problem(
                "vshards".into(),
                format!("must be between 1 and {MAX_VSHARDS}"),
            );
        }
        if self.shards.is_empty() {
            problem("shards".into(), "at least one shard is required".into());
        } else if self.shards.len() > self.vshards as usize {
            problem(
                "shards".into(),
                format!(
                    "{} shards but only {} vshards: some shards could never hold data",
                    self.shards.len(),
                    self.vshards
                ),
            );
        }
        if !self.shards.is_empty() && usize::from(self.default_shard) >= self.shards.len() {
            problem(
                "default_shard".into(),
                format!(
                    "shard {} does not exist (shards are numbered 0..{})",
                    self.default_shard,
                    self.shards.len() - 1
                ),
            );
        }
        if self.catalog_check_interval.0.is_zero() {
            problem(
                "catalog_check_interval".into(),
                "must be greater than 0".into(),
            );
        }
        if let Some(loc) = &self.catalog {
            if loc.host.as_deref() == Some("") {
                problem("catalog.host".into(), "must not be empty".into());
            }
            if loc.port == Some(0) {
                problem("catalog.port".into(), "must not be 0".into());
            }
            if loc.database.as_deref() == Some("") {
                problem("catalog.database".into(), "must not be empty".into());
            }
        }

        for (i, s) in self.shards.iter().enumerate() {
            check_address(&mut problem, &format!("shards[{i}]"), &s.host, s.port);
            for (j, r) in s.replicas.iter().enumerate() {
                let key = format!("shards[{i}].replicas[{j}]");
                check_address(&mut problem, &key, &r.host, r.port);
                if r.weight == 0 {
                    problem(format!("{key}.weight"), "must be at least 1".into());
                }
            }
        }

        for (name, map) in &self.maps {
            if name == HASH_MAP {
                problem(
                    format!("maps.{name}"),
                    "\"hash\" is the built-in map and cannot be redefined".into(),
                );
            }
            if let MapConfig::Range {
                key_type,
                split_points,
            } = map
            {
                let key = format!("maps.{name}.split_points");
                if split_points.len() >= self.vshards as usize {
                    problem(
                        key.clone(),
                        format!(
                            "{} split points make {} ranges, more than the {} vshards",
                            split_points.len(),
                            split_points.len() + 1,
                            self.vshards
                        ),
                    );
                }
                let mut previous: Option<KeyValue> = None;
                for (i, p) in split_points.iter().enumerate() {
                    match p.to_key(*key_type) {
                        Err(e) => problem(format!("{key}[{i}]"), e),
                        Ok(v) => {
                            if let Some(prev) = &previous {
                                if compare_keys(prev, &v) != Some(std::cmp::Ordering::Less) {
                                    problem(
                                        format!("{key}[{i}]"),
                                        "split points must be strictly increasing".into(),
                                    );
                                }
                            }
                            previous = Some(v);
                        }
                    }
                }
            }
        }

        let mut seen = HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let key = |field: &str| format!("tables[{i}].{field}");
            if t.name.is_empty() {
                problem(key("name"), "must not be empty".into());
            } else if !seen.insert(t.name.to_lowercase()) {
                problem(key("name"), format!("table {:?} is listed twice", t.name));
            }
            if t.key.is_empty() {
                problem(key("key"), "must not be empty".into());
            }
            if t.map != HASH_MAP {
                match self.maps.get(&t.map) {
                    None => problem(
                        key("map"),
                        format!("no map {:?} under maps (and it is not \"hash\")", t.map),
                    ),
                    Some(m) if m.key_type() != t.key_type => problem(
                        key("type"),
                        format!(
                            "the table's key is {} but map {:?} has {} keys",
                            t.key_type.name(),
                            t.map,
                            m.key_type().name()
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        let mut seen_reference = HashSet::new();
        for (i, name) in self.reference_tables.iter().enumerate() {
            let key = format!("reference_tables[{i}]");
            if name.is_empty() {
                problem(key, "must not be empty".into());
            } else if seen.contains(&name.to_lowercase()) {
                problem(
                    key,
                    format!("{name:?} is also a sharded table; it cannot be both"),
                );
            } else if !seen_reference.insert(name.to_lowercase()) {
                problem(key, format!("{name:?} is listed twice"));
            }
        }
        out
    }
}

fn check_address(problem: &mut impl FnMut(String, String), key: &str, host: &str, port: u16) {
    if host.is_empty() {
        problem(format!("{key}.host"), "must not be empty".into());
    }
    if port == 0 {
        problem(format!("{key}.port"), "must not be 0".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ShardingConfig {
        toml::from_str(text).unwrap()
    }

    fn problem_keys(cfg: &ShardingConfig) -> Vec<String> {
        cfg.validate().into_iter().map(|p| p.key).collect()
    }

    const SHOP: &str = r#"
        vshards = 1024
        default_shard = 1
        allow_fanout_writes = true
        catalog = { database = "shop_catalog" }
        catalog_check_interval = "250ms"
        reference_tables = ["countries"]

        [[shards]]
        host = "10.0.0.1"
        port = 5433
        server_database = "shop0"
        replicas = [{ host = "10.0.0.11", port = 5433, weight = 3 }, { host = "10.0.0.12", port = 5433 }]

        [[shards]]
        host = "10.0.0.2"
        port = 5434

        [[tables]]
        name = "accounts"
        key = "aid"
        type = "int8"

        [[tables]]
        name = "public.orders"
        key = "tenant"
        type = "text"
        map = "tenants"

        [[tables]]
        name = "events"
        key = "day"
        type = "int4"
        map = "days"

        [maps.tenants]
        kind = "directory"
        key_type = "text"
        unknown_keys = "error"

        [maps.days]
        kind = "range"
        key_type = "int"
        split_points = [20240101, "20250101"]
    "#;

    #[test]
    fn parses_a_full_sharded_database() {
        let c = parse(SHOP);
        assert_eq!(c.validate(), vec![]);
        assert_eq!((c.vshards, c.default_shard), (1024, 1));
        assert!(c.allow_fanout_writes);
        assert_eq!(c.check_interval(), Duration::from_millis(250));
        assert_eq!(c.shards.len(), 2);
        assert_eq!(c.shards[0].replicas[0].weight, 3);
        assert_eq!(c.shards[0].replicas[1].weight, 1);
        assert_eq!(c.shards[1].database("shop"), "shop");
        assert_eq!(c.tables[0].map, HASH_MAP);
        assert_eq!(c.tables[2].key_type, KeyType::Int);
        assert_eq!(
            c.maps["tenants"],
            MapConfig::Directory {
                key_type: KeyType::Text,
                unknown_keys: UnknownKeys::Error
            }
        );
        assert_eq!(
            c.split_points("days").unwrap(),
            vec![KeyValue::Int(20240101), KeyValue::Int(20250101)]
        );
        assert_eq!(
            c.catalog_target("shop"),
            Some(CatalogTarget {
                host: "10.0.0.1".into(),
                port: 5433,
                database: "shop_catalog".into()
            })
        );
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = parse("[[shards]]\nhost = \"h\"\nport = 1\n");
        assert_eq!(c.vshards, 4096);
        assert_eq!(c.default_shard, 0);
        assert!(!c.allow_fanout_writes);
        assert_eq!(c.check_interval(), Duration::from_secs(5));
        assert_eq!(c.validate(), vec![]);
        let target = c.catalog_target("shop").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("h", 1));
        assert_eq!(target.database, "shop");
        let dir: MapConfig = toml::from_str("kind = \"directory\"\nkey_type = \"uuid\"").unwrap();
        assert_eq!(
            dir,
            MapConfig::Directory {
                key_type: KeyType::Uuid,
                unknown_keys: UnknownKeys::Hash
            }
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        for bad in [
            "vshard = 10",
            "[[shards]]\nhost = \"h\"\nport = 1\ndatabase = \"x\"",
            "[maps.m]\nkind = \"directory\"\nkey_type = \"text\"\nsplit_points = []",
            "[maps.m]\nkind = \"list\"\nkey_type = \"text\"",
            "[maps.m]\nkind = \"directory\"\nkey_type = \"float\"",
            "[[tables]]\nname = \"t\"\nkey = \"k\"\ntype = \"int8\"\nkind = \"hash\"",
        ] {
            assert!(toml::from_str::<ShardingConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let c = parse(
            r#"
            vshards = 0
            default_shard = 3
            catalog_check_interval = "0"
            catalog = { host = "", port = 0 }
            reference_tables = ["Accounts", "c", "c"]
            [[shards]]
            host = ""
            port = 0
            replicas = [{ host = "r", port = 1, weight = 0 }]
            [[tables]]
            name = "accounts"
            key = ""
            type = "int8"
            [[tables]]
            name = "ACCOUNTS"
            key = "k"
            type = "int8"
            map = "nowhere"
            [[tables]]
            name = "t"
            key = "k"
            type = "uuid"
            map = "tenants"
            [maps.tenants]
            kind = "directory"
            key_type = "text"
            [maps.hash]
            kind = "directory"
            key_type = "int"
            "#,
        );
        let keys = problem_keys(&c);
        for expected in [
            "sharding.vshards",
            "sharding.shards",
            "sharding.default_shard",
            "sharding.catalog_check_interval",
            "sharding.catalog.host",
            "sharding.catalog.port",
            "sharding.shards[0].host",
            "sharding.shards[0].port",
            "sharding.shards[0].replicas[0].weight",
            "sharding.maps.hash",
            "sharding.tables[0].key",
            "sharding.tables[1].name",
            "sharding.tables[1].map",
            "sharding.tables[2].type",
            "sharding.reference_tables[0]",
            "sharding.reference_tables[2]",
        ] {
            assert!(
                keys.contains(&expected.to_string()),
                "missing {expected} in {keys:?}"
            );
        }
        assert_eq!(keys.len(), 16, "{keys:?}");
    }

    #[test]
    fn vshards_range_and_shard_count() {
        let mut c = parse("vshards = 65536\n[[shards]]\nhost = \"h\"\nport = 1\n");
        assert_eq!(c.validate(), vec![]);
        c.vshards = 65_537;
        assert_eq!(problem_keys(&c), vec!["sharding.vshards"]);
        let c = parse("vshards = 1\n");
        assert_eq!(problem_keys(&c), vec!["sharding.shards"]);
        let c = parse(
            "vshards = 1\n[[shards]]\nhost = \"h\"\nport = 1\n[[shards]]\nhost = \"h\"\nport = 2\n",
        );
        assert_eq!(problem_keys(&c), vec!["sharding.shards"]);
    }

    fn range_problems(key_type: &str, points: &str) -> Vec<String> {
        let c = parse(&format!(
            "[[shards]]\nhost = \"h\"\nport = 1\n[maps.r]\nkind = \"range\"\nkey_type = \"{key_type}\"\nsplit_points = {points}\n"
        ));
        problem_keys(&c)
    }

    #[test]
    fn split_points_must_increase_in_the_key_types_order() {
        assert_eq!(range_problems("int", "[-5, 2, 10]"), Vec::<String>::new());
        // 10 < 9 as text but not as numbers: the order is the type's.
        assert_eq!(range_problems("int", "[9, \"10\"]"), Vec::<String>::new());
        assert_eq!(
            range_problems("text", "[\"9\", \"10\"]"),
            vec!["sharding.maps.r.split_points[1]"]
        );
        // C collation: uppercase sorts before lowercase.
        assert_eq!(
            range_problems("text", "[\"Z\", \"a\"]"),
            Vec::<String>::new()
        );
        assert_eq!(
            range_problems("int", "[1, 1]"),
            vec!["sharding.maps.r.split_points[1]"]
        );
        assert_eq!(
            range_problems("text", "[1]"),
            vec!["sharding.maps.r.split_points[0]"]
        );
        assert_eq!(
            range_problems("int", "[\"x\"]"),
            vec!["sharding.maps.r.split_points[0]"]
        );
        assert_eq!(
            range_problems(
                "uuid",
                "[\"00000000-0000-0000-0000-000000000010\", \"00000000-0000-0000-0000-00000000000f\"]"
            ),
            vec!["sharding.maps.r.split_points[1]"]
        );
        let too_many = format!(
            "[{}]",
            (0..4096)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            range_problems("int", &too_many),
            vec!["sharding.maps.r.split_points"]
        );
    }
}
