//! The sharding catalog: placement (vshard -> physical shard), directory entries and range boundaries, stored in a
//! `shardpool` schema of one Postgres database so that every shardpool instance routes alike. Routing reads an
//! immutable [`Catalog`] snapshot (kept current by `sharding::follow`); changes go through the functions here, each
//! one transaction that bumps the epoch and sends `NOTIFY shardpool_catalog, '<epoch>'` (delivered at commit).
//!
//! Every change first takes the row lock on the single epoch row, so concurrent changes serialize and epochs are
//! handed out in commit order: an instance holding epoch E has seen exactly the changes up to E.
//!
//! Initial placement is contiguous blocks: vshard v goes to shard `v * shards / vshards`. Each shard then owns one
//! run of vshards, which keeps `shardctl map` readable and makes a remap "move the edge of a block"; the hash already
//! spreads keys uniformly over vshards, so blocks balance as well as `v % shards` would.

use std::cmp::Ordering;
use std::collections::HashMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Transaction};

use crate::config::sharding::{CatalogTarget, MapConfig, ShardingConfig, MAX_VSHARDS};
use crate::config::Problem;
use crate::sharding::key::{KeyType, KeyValue};
use crate::sharding::remap::state::{self as remap_state, Freeze, RemapRow};

/// LISTEN/NOTIFY channel; the payload is the new epoch in decimal.
pub const CHANNEL: &str = "shardpool_catalog";

/// Advisory-lock key serializing `init` runs (two operators initialising at once must not both create the schema).
const INIT_LOCK: i64 = 0x7368_6172_6470_6f6f; // "shardpoo"

const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS shardpool;
CREATE TABLE shardpool.epoch (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch bigint NOT NULL,
    vshards integer NOT NULL CHECK (vshards BETWEEN 1 AND 65536)
);
CREATE TABLE shardpool.placement (
    vshard integer PRIMARY KEY CHECK (vshard >= 0),
    shard integer NOT NULL CHECK (shard BETWEEN 0 AND 65535)
);
CREATE TABLE shardpool.maps (
    name text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('directory', 'range')),
    key_type text NOT NULL CHECK (key_type IN ('bigint', 'text', 'uuid'))
);
CREATE TABLE shardpool.directory (
    map text NOT NULL REFERENCES shardpool.maps (name),
    key text NOT NULL,
    vshard integer NOT NULL REFERENCES shardpool.placement (vshard),
    PRIMARY KEY (map, key)
);
CREATE TABLE shardpool.ranges (
    map text NOT NULL REFERENCES shardpool.maps (name),
    lower text,
    vshard integer NOT NULL REFERENCES shardpool.placement (vshard),
    PRIMARY KEY (map, vshard),
    UNIQUE (map, lower)
);
CREATE UNIQUE INDEX ranges_one_unbounded ON shardpool.ranges (map) WHERE lower IS NULL;
COMMENT ON COLUMN shardpool.ranges.lower IS 'inclusive lower bound in the key type''s text form; NULL = unbounded';
"#;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog query failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the catalog is not initialised (run `shardctl init`)")]
    NotInitialised,
    #[error("invalid sharding config: {}", .0.iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>().join("; "))]
    InvalidConfig(Vec<Problem>),
    #[error("the catalog was initialised with {catalog} vshards but the config says {config}; the vshard count never changes")]
    VshardsMismatch { catalog: u32, config: u32 },
    #[error("map {map:?} is a {catalog} map in the catalog but a {config} map in the config")]
    MapMismatch {
        map: String,
        catalog: String,
        config: String,
    },
    #[error("no map {0:?} in the catalog")]
    UnknownMap(String),
    #[error("map {map:?} is a {actual} map, not a {expected} map")]
    WrongMapKind {
        map: String,
        expected: &'static str,
        actual: String,
    },
    #[error("map {map:?} has {expected} keys, got a {got} key")]
    KeyTypeMismatch {
        map: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("a NULL key has no vshard")]
    NullKey,
    #[error("vshard {vshard} does not exist (the catalog has {vshards})")]
    VshardOutOfRange { vshard: u32, vshards: u32 },
    #[error("the catalog is inconsistent: {0}")]
    Corrupt(String),
}

/// Why a lookup in a snapshot found no vshard: each is a caller's bug or a config/catalog disagreement, never
/// "key not present" (that is `Ok(None)` for directories).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("no {kind} map {map:?} in the catalog")]
    UnknownMap { map: String, kind: &'static str },
    #[error("map {map:?} has {expected} keys, got a {got} key")]
    KeyTypeMismatch {
        map: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("a NULL key has no vshard")]
    NullKey,
}

/// One consistent view of the catalog (all read in one snapshot). Immutable: changes produce a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    pub epoch: i64,
    pub vshards: u32,
    /// Physical shard of each vshard, indexed by vshard.
    pub placement: Vec<u16>,
    pub directories: HashMap<String, Directory>,
    pub ranges: HashMap<String, RangeMap>,
    /// Vshards whose writes instances hold while a remap cuts over.
    pub freeze: Freeze,
    /// The active remap and the latest finished ones (for `SHOW REMAPS`).
    pub remaps: Vec<RemapRow>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    pub key_type: KeyType,
    /// Key in canonical text form (see [`key_text`]) -> vshard.
    pub entries: HashMap<String, u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMap {
    pub key_type: KeyType,
    /// Vshard of the range unbounded below.
    pub first: u32,
    /// Inclusive lower bounds, strictly increasing in the key type's order, each with its range's vshard.
    pub bounds: Vec<(KeyValue, u32)>,
}

impl RangeMap {
    /// The index of the range holding `key`: 0 is the one unbounded below, i > 0 the one starting at
    /// `bounds[i - 1]` (bounds are inclusive lower bounds: the last one <= key).
    fn index(&self, key: &KeyValue) -> usize {
        self.bounds
            .partition_point(|(bound, _)| compare_keys(bound, key) != Some(Ordering::Greater))
    }

    fn vshard_at(&self, index: usize) -> u32 {
        match index.checked_sub(1) {
            None => self.first,
            Some(i) => self.bounds.get(i).map_or(self.first, |b| b.1),
        }
    }
}

/// Orders two keys of the same type the way the catalog does: ints numerically, text by bytes (the C collation,
/// which is what a range boundary means regardless of the database's collation), uuids by bytes (as Postgres'
/// `uuid_cmp`). `None` for NULL or mixed types.
pub fn compare_keys(a: &KeyValue, b: &KeyValue) -> Option<Ordering> {
    match (a, b) {
        (KeyValue::Int(x), KeyValue::Int(y)) => Some(x.cmp(y)),
        (KeyValue::Text(x), KeyValue::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (KeyValue::Uuid(x), KeyValue::Uuid(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// The canonical text of a key as the catalog stores it (Postgres' output form: `42`, lowercase hyphenated uuids).
/// Directory lookups compare this text, so `'{A0EE...}'` and `'a0ee...'` find the same entry.
pub fn key_text(key: &KeyValue) -> Option<String> {
    match key {
        KeyValue::Int(v) => Some(v.to_string()),
        KeyValue::Text(s) => Some(s.clone()),
        KeyValue::Uuid(b) => {
            let mut s = String::with_capacity(36);
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                s.push_str(&format!("{byte:02x}"));
            }
            Some(s)
        }
        KeyValue::Null => None,
    }
}

fn key_type_of(key: &KeyValue) -> &'static str {
    match key {
        KeyValue::Int(_) => KeyType::Int.name(),
        KeyValue::Text(_) => KeyType::Text.name(),
        KeyValue::Uuid(_) => KeyType::Uuid.name(),
        KeyValue::Null => "null",
    }
}

fn key_type_from_name(name: &str) -> Option<KeyType> {
    [KeyType::Int, KeyType::Text, KeyType::Uuid]
        .into_iter()
        .find(|t| t.name() == name)
}

/// A key of `ty` in canonical text, or why it does not fit.
fn typed_key(map: &str, ty: KeyType, key: &KeyValue) -> Result<String, LookupError> {
    if matches!(key, KeyValue::Null) {
        return Err(LookupError::NullKey);
    }
    if key_type_of(key) != ty.name() {
        return Err(LookupError::KeyTypeMismatch {
            map: map.into(),
            expected: ty.name(),
            got: key_type_of(key),
        });
    }
    key_text(key).ok_or(LookupError::NullKey)
}

impl Catalog {
    /// Physical shard of `vshard`; `None` when the vshard is outside the space (a caller's bug, not a panic).
    pub fn shard_of(&self, vshard: u32) -> Option<u16> {
        self.placement.get(vshard as usize).copied()
    }

    /// The vshard of the range containing `key` in range map `map`.
    pub fn range_vshard(&self, map: &str, key: &KeyValue) -> Result<u32, LookupError> {
        let ranges = self.range_map(map)?;
        typed_key(map, ranges.key_type, key)?;
        Ok(ranges.vshard_at(ranges.index(key)))
    }

    fn range_map(&self, map: &str) -> Result<&RangeMap, LookupError> {
        self.ranges.get(map).ok_or_else(|| LookupError::UnknownMap {
            map: map.into(),
            kind: "range",
        })
    }

    /// The vshards of range map `map` whose ranges overlap the keys between `lower` and `upper` (each a bound and
    /// whether it is included; `None` = unbounded), in key order. Errs towards more vshards, never fewer: an
    /// exclusive text or uuid lower bound keeps the range it falls in.
    pub fn range_vshards(
        &self,
        map: &str,
        lower: Option<(&KeyValue, bool)>,
        upper: Option<(&KeyValue, bool)>,
    ) -> Result<Vec<u32>, LookupError> {
        let ranges = self.range_map(map)?;
        for (k, _) in lower.iter().chain(upper.iter()) {
            typed_key(map, ranges.key_type, k)?;
        }
        // Integers: exclusive bounds become inclusive ones, so a bound next to a boundary is exact.
        let lower = match lower {
            Some((KeyValue::Int(i), false)) => match i.checked_add(1) {
                Some(n) => Some((KeyValue::Int(n), true)),
                None => return Ok(Vec::new()),
            },
            other => other.map(|(k, inc)| (k.clone(), inc)),
        };
        let upper = match upper {
            Some((KeyValue::Int(i), false)) => match i.checked_sub(1) {
                Some(n) => Some((KeyValue::Int(n), true)),
                None => return Ok(Vec::new()),
            },
            other => other.map(|(k, inc)| (k.clone(), inc)),
        };
        if let (Some((l, li)), Some((u, ui))) = (&lower, &upper) {
            match compare_keys(l, u) {
                Some(Ordering::Greater) => return Ok(Vec::new()),
                Some(Ordering::Equal) if !(*li && *ui) => return Ok(Vec::new()),
                _ => {}
            }
        }
        let first = lower.as_ref().map_or(0, |(k, _)| ranges.index(k));
        let last = match &upper {
            None => ranges.bounds.len(),
            Some((k, inclusive)) => {
                let i = ranges.index(k);
                // `key < b` where a range starts exactly at b: that range holds no such key.
                if !inclusive
                    && i > 0
                    && compare_keys(&ranges.bounds[i - 1].0, k) == Some(Ordering::Equal)
                {
                    i - 1
                } else {
                    i
                }
            }
        };
        Ok((first..=last)
            .filter(|_| first <= last)
            .map(|i| ranges.vshard_at(i))
            .collect())
    }

    /// The vshard recorded for `key` in directory `map`, `None` when it has no entry (the map's `unknown_keys`
    /// policy decides what happens then).
    pub fn directory_vshard(&self, map: &str, key: &KeyValue) -> Result<Option<u32>, LookupError> {
        let dir = self
            .directories
            .get(map)
            .ok_or_else(|| LookupError::UnknownMap {
                map: map.into(),
                kind: "directory",
            })?;
        let text = typed_key(map, dir.key_type, key)?;
        Ok(dir.entries.get(&text).copied())
    }

    /// Placement compressed into runs of consecutive vshards on one shard: `(first, last, shard)`.
    pub fn placement_runs(&self) -> Vec<(u32, u32, u16)> {
        let mut runs: Vec<(u32, u32, u16)> = Vec::new();
        for (v, &shard) in (0u32..).zip(&self.placement) {
            match runs.last_mut() {
                Some((_, last, s)) if *s == shard => *last = v,
                _ => runs.push((v, v, shard)),
            }
        }
        runs
    }

    /// Vshards per shard, for every shard that owns at least one, in shard order.
    pub fn shard_counts(&self) -> Vec<(u16, u32)> {
        let mut counts = std::collections::BTreeMap::new();
        for &shard in &self.placement {
            *counts.entry(shard).or_insert(0u32) += 1;
        }
        counts.into_iter().collect()
    }

    /// Where the catalog and a config disagree in ways routing cannot work around: a different vshard count,
    /// vshards placed on shards the config does not have, config maps missing or of another kind or key type.
    pub fn check_against(&self, cfg: &ShardingConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.vshards != cfg.vshards {
            out.push(format!(
                "the catalog has {} vshards, the config {}",
                self.vshards, cfg.vshards
            ));
        }
        let missing: Vec<u16> = self
            .shard_counts()
            .into_iter()
            .map(|(s, _)| s)
            .filter(|&s| usize::from(s) >= cfg.shards.len())
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "vshards are placed on shards {missing:?}, which the config does not list"
            ));
        }
        for (name, map) in &cfg.maps {
            let actual = match map {
                MapConfig::Directory { .. } => self.directories.get(name).map(|d| d.key_type),
                MapConfig::Range { .. } => self.ranges.get(name).map(|r| r.key_type),
            };
            match actual {
                None => out.push(format!(
                    "the config's {} map {name:?} is not in the catalog (run `shardctl init`)",
                    map.kind()
                )),
                Some(t) if t != map.key_type() => out.push(format!(
                    "map {name:?} has {} keys in the catalog, {} in the config",
                    t.name(),
                    map.key_type().name()
                )),
                Some(_) => {}
            }
        }
        out
    }
}

/// Connection settings for the catalog, as `role` (a user's server role and password).
pub fn connect_config(
    target: &CatalogTarget,
    role: &str,
    password: Option<&str>,
    application_name: &str,
) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&target.host)
        .port(target.port)
        .dbname(&target.database)
        .user(role)
        .application_name(application_name)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(pw) = password {
        pg.password(pw);
    }
    pg
}

/// How long a background task's query may run (catalog reload, column read, directory write), and wait for a
/// lock: a catalog table locked by a long DDL, or a hung server, must fail the query (the task retries and keeps
/// its last good state) rather than leave the task waiting for ever.
pub const BACKGROUND_STATEMENT_TIMEOUT: &str = "-c statement_timeout=10s -c lock_timeout=5s";

/// [`connect_config`] for shardpool's own background tasks: their queries are short, so they run under
/// [`BACKGROUND_STATEMENT_TIMEOUT`]. (shardctl's connections are not limited: a remap's copy may run for hours.)
pub fn background_config(
    target: &CatalogTarget,
    role: &str,
    password: Option<&str>,
    application_name: &str,
) -> tokio_postgres::Config {
    let mut pg = connect_config(target, role, password, application_name);
    pg.options(BACKGROUND_STATEMENT_TIMEOUT);
    pg
}

/// Initial placement: contiguous blocks (see the module doc).
pub fn initial_shard(vshard: u32, vshards: u32, shards: usize) -> u16 {
    let shard = u64::from(vshard) * shards as u64 / u64::from(vshards.max(1));
    u16::try_from(shard).unwrap_or(u16::MAX)
}

/// Vshard of the i-th of `ranges` initial ranges: spread evenly over the space, so with block placement the ranges
/// of a map start out on different shards.
pub fn initial_range_vshard(i: usize, ranges: usize, vshards: u32) -> u32 {
    (i as u64 * u64::from(vshards) / ranges.max(1) as u64) as u32
}

/// What `init` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitOutcome {
    /// False when the catalog already existed (with the same vshard count).
    pub created: bool,
    /// Maps of the config that were not in the catalog yet and were added.
    pub added_maps: Vec<String>,
    pub epoch: i64,
}

/// Creates the catalog for `cfg`, or, when it exists with the same vshard count, adds the config's maps it lacks and
/// leaves everything else alone: placement, directory entries and range boundaries may have changed since, and the
/// catalog, not the config, is their truth. A different vshard count or a map of another kind or key type is refused.
pub async fn init(client: &mut Client, cfg: &ShardingConfig) -> Result<InitOutcome, CatalogError> {
    let problems = cfg.validate();
    if !problems.is_empty() {
        return Err(CatalogError::InvalidConfig(problems));
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INIT_LOCK])
        .await?;
    let exists: bool = column(
        &tx.query_one("SELECT to_regclass('shardpool.epoch') IS NOT NULL", &[])
            .await?,
        0,
        "to_regclass",
    )?;
    let created = !exists;
    if created {
        tx.batch_execute(SCHEMA).await?;
        tx.batch_execute(remap_state::SCHEMA).await?;
        tx.execute(
            "INSERT INTO shardpool.epoch (epoch, vshards) VALUES (0, $1)",
            &[&(cfg.vshards as i32)],
        )
        .await?;
        let vshards: Vec<i32> = (0..cfg.vshards as i32).collect();
        let shards: Vec<i32> = (0..cfg.vshards)
            .map(|v| i32::from(initial_shard(v, cfg.vshards, cfg.shards.len())))
            .collect();
        tx.execute(
            "INSERT INTO shardpool.placement (vshard, shard) SELECT * FROM unnest($1::int[], $2::int[])",
            &[&vshards, &shards],
        )
        .await?;
    } else {
        let row = tx
            .query_opt("SELECT vshards FROM shardpool.epoch", &[])
            .await?
            .ok_or_else(|| CatalogError::Corrupt("shardpool.epoch has no row".into()))?;
        let catalog = vshard_count(column(&row, 0, "shardpool.epoch")?)?;
        if catalog != cfg.vshards {
            return Err(CatalogError::VshardsMismatch {
                catalog,
                config: cfg.vshards,
            });
        }
    }
    if !created {
        // Catalogs made before remaps existed get their tables now.
        tx.batch_execute(remap_state::SCHEMA).await?;
    }
    let mut added_maps = Vec::new();
    for (name, map) in &cfg.maps {
        if add_map(&tx, cfg, name, map).await? {
            added_maps.push(name.clone());
        }
    }
    let epoch = if created || !added_maps.is_empty() {
        let (epoch, _) = begin_change(&tx).await?;
        notify(&tx, epoch).await?;
        epoch
    } else {
        let row = tx
            .query_one("SELECT epoch FROM shardpool.epoch", &[])
            .await?;
        column(&row, 0, "shardpool.epoch")?
    };
    tx.commit().await?;
    Ok(InitOutcome {
        created,
        added_maps,
        epoch,
    })
}

/// Adds `map` unless present; a present map must agree on kind and key type. True when added.
async fn add_map(
    tx: &Transaction<'_>,
    cfg: &ShardingConfig,
    name: &str,
    map: &MapConfig,
) -> Result<bool, CatalogError> {
    let key_type = map.key_type().name();
    if let Some(row) = tx
        .query_opt(
            "SELECT kind, key_type FROM shardpool.maps WHERE name = $1",
            &[&name],
        )
        .await?
    {
        let kind: String = column(&row, 0, "shardpool.maps")?;
        let ty: String = column(&row, 1, "shardpool.maps")?;
        if kind != map.kind() || ty != key_type {
            return Err(CatalogError::MapMismatch {
                map: name.into(),
                catalog: format!("{kind} ({ty} keys)"),
                config: format!("{} ({key_type} keys)", map.kind()),
            });
        }
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO shardpool.maps (name, kind, key_type) VALUES ($1, $2, $3)",
        &[&name, &map.kind(), &key_type],
    )
    .await?;
    if let MapConfig::Range { .. } = map {
        let points = cfg.split_points(name).map_err(CatalogError::Corrupt)?;
        let n = points.len() + 1;
        let lowers: Vec<Option<String>> = std::iter::once(None)
            .chain(points.iter().map(key_text))
            .collect();
        let vshards: Vec<i32> = (0..n)
            .map(|i| initial_range_vshard(i, n, cfg.vshards) as i32)
            .collect();
        tx.execute(
            "INSERT INTO shardpool.ranges (map, lower, vshard) SELECT $1, * FROM unnest($2::text[], $3::int[])",
            &[&name, &lowers, &vshards],
        )
        .await?;
    }
    Ok(true)
}

/// Starts a change: bumps the epoch, which also takes the epoch row's lock until commit (see the module doc).
/// Returns the new epoch and the vshard count.
pub(crate) async fn begin_change(tx: &Transaction<'_>) -> Result<(i64, u32), CatalogError> {
    let row = tx
        .query_opt(
            "UPDATE shardpool.epoch SET epoch = epoch + 1 RETURNING epoch, vshards",
            &[],
        )
        .await
        .map_err(not_initialised)?
        .ok_or_else(|| CatalogError::Corrupt("shardpool.epoch has no row".into()))?;
    Ok((
        column(&row, 0, "shardpool.epoch")?,
        vshard_count(column(&row, 1, "shardpool.epoch")?)?,
    ))
}

/// Queues the notification; Postgres delivers it only if and when the transaction commits.
pub(crate) async fn notify(tx: &Transaction<'_>, epoch: i64) -> Result<(), CatalogError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &epoch.to_string()])
        .await?;
    Ok(())
}

fn not_initialised(e: tokio_postgres::Error) -> CatalogError {
    if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
        CatalogError::NotInitialised
    } else {
        CatalogError::Postgres(e)
    }
}

fn check_vshard(vshard: u32, vshards: u32) -> Result<i32, CatalogError> {
    if vshard < vshards {
        Ok(vshard as i32)
    } else {
        Err(CatalogError::VshardOutOfRange { vshard, vshards })
    }
}

/// Kind and key type of `map`, checked against what the caller expects.
async fn checked_key(
    tx: &Transaction<'_>,
    map: &str,
    kind: &'static str,
    key: &KeyValue,
) -> Result<String, CatalogError> {
    let row = tx
        .query_opt(
            "SELECT kind, key_type FROM shardpool.maps WHERE name = $1",
            &[&map],
        )
        .await?
        .ok_or_else(|| CatalogError::UnknownMap(map.into()))?;
    let actual: String = column(&row, 0, "shardpool.maps")?;
    let ty: String = column(&row, 1, "shardpool.maps")?;
    if actual != kind {
        return Err(CatalogError::WrongMapKind {
            map: map.into(),
            expected: kind,
            actual,
        });
    }
    let key_type = key_type_from_name(&ty)
        .ok_or_else(|| CatalogError::Corrupt(format!("map {map:?} has key type {ty:?}")))?;
    typed_key(map, key_type, key).map_err(|e| match e {
        LookupError::KeyTypeMismatch { map, expected, got } => {
            CatalogError::KeyTypeMismatch { map, expected, got }
        }
        _ => CatalogError::NullKey,
    })
}

/// Points `key` of directory `map` at `vshard` (adding or replacing the entry). Returns the new epoch.
pub async fn set_directory(
    client: &mut Client,
    map: &str,
    key: &KeyValue,
    vshard: u32,
) -> Result<i64, CatalogError> {
    let tx = client.transaction().await?;
    let (epoch, vshards) = begin_change(&tx).await?;
    let text = checked_key(&tx, map, "directory", key).await?;
    let v = check_vshard(vshard, vshards)?;
    tx.execute(
        "INSERT INTO shardpool.directory (map, key, vshard) VALUES ($1, $2, $3)
         ON CONFLICT (map, key) DO UPDATE SET vshard = excluded.vshard",
        &[&map, &text, &v],
    )
    .await?;
    notify(&tx, epoch).await?;
    tx.commit().await?;
    Ok(epoch)
}

/// Records `key` at `vshard` unless it already has an entry, for the `unknown_keys = "hash"` policy: when two
/// instances see a new key at once, the first to commit wins and both route where it put the key. Returns the
/// key's vshard and the new epoch if this call added it.
pub async fn record_directory(
    client: &mut Client,
    map: &str,
    key: &KeyValue,
    vshard: u32,
) -> Result<(u32, Option<i64>), CatalogError> {
    let tx = client.transaction().await?;
    let (epoch, vshards) = begin_change(&tx).await?;
    let text = checked_key(&tx, map, "directory", key).await?;
    let v = check_vshard(vshard, vshards)?;
    let inserted = tx
        .execute(
            "INSERT INTO shardpool.directory (map, key, vshard) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&map, &text, &v],
        )
        .await?;
    if inserted == 0 {
        let row = tx
            .query_one(
                "SELECT vshard FROM shardpool.directory WHERE map = $1 AND key = $2",
                &[&map, &text],
            )
            .await?;
        let existing = stored_vshard(
            column(&row, 0, "shardpool.directory")?,
            vshards,
            "shardpool.directory",
        )?;
        // Dropping the transaction rolls the epoch bump back: nothing changed.
        return Ok((existing, None));
    }
    notify(&tx, epoch).await?;
    tx.commit().await?;
    Ok((vshard, Some(epoch)))
}

/// Places `vshard` on `shard`. Only the routing changes: moving the rows is the remap's job, which calls this at
/// its switch-over step. Returns the new epoch.
pub async fn move_vshard(
    client: &mut Client,
    vshard: u32,
    shard: u16,
) -> Result<i64, CatalogError> {
    let tx = client.transaction().await?;
    let (epoch, vshards) = begin_change(&tx).await?;
    let v = check_vshard(vshard, vshards)?;
    tx.execute(
        "UPDATE shardpool.placement SET shard = $2 WHERE vshard = $1",
        &[&v, &i32::from(shard)],
    )
    .await?;
    notify(&tx, epoch).await?;
    tx.commit().await?;
    Ok(epoch)
}

/// The current epoch alone: the follower's cheap periodic check.
pub async fn epoch(client: &impl GenericClient) -> Result<i64, CatalogError> {
    let row = client
        .query_opt("SELECT epoch FROM shardpool.epoch", &[])
        .await
        .map_err(not_initialised)?
        .ok_or_else(|| CatalogError::Corrupt("shardpool.epoch has no row".into()))?;
    column(&row, 0, "shardpool.epoch")
}

/// Column `i` of a catalog row. Rows may have been written by hand or by another version, and the follower must
/// keep routing with its last good snapshot rather than panic on a type it did not expect.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
    table: &str,
) -> Result<T, CatalogError> {
    row.try_get(i).map_err(|e| {
        CatalogError::Corrupt(format!(
            "{table}: column {} is not what shardpool reads: {e}",
            row.columns().get(i).map_or("?", |c| c.name())
        ))
    })
}

/// The vshard count as stored: within what the catalog's own CHECK allows, or the catalog is refused (a negative
/// count cast to u32 once asked for a 16 GiB allocation).
fn vshard_count(stored: i32) -> Result<u32, CatalogError> {
    match u32::try_from(stored) {
        Ok(n @ 1..=MAX_VSHARDS) => Ok(n),
        _ => Err(CatalogError::Corrupt(format!(
            "shardpool.epoch says {stored} vshards (must be 1 to {MAX_VSHARDS})"
        ))),
    }
}

/// A vshard number read from a catalog table: below the vshard count.
fn stored_vshard(stored: i32, vshards: u32, table: &str) -> Result<u32, CatalogError> {
    u32::try_from(stored)
        .ok()
        .filter(|v| *v < vshards)
        .ok_or_else(|| {
            CatalogError::Corrupt(format!(
                "{table} names vshard {stored}, outside 0..{vshards}"
            ))
        })
}

/// Reads the whole catalog in one repeatable-read snapshot, so the epoch matches the rows read with it.
pub async fn load(client: &mut Client) -> Result<Catalog, CatalogError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let row = tx
        .query_opt("SELECT epoch, vshards FROM shardpool.epoch", &[])
        .await
        .map_err(not_initialised)?
        .ok_or_else(|| CatalogError::Corrupt("shardpool.epoch has no row".into()))?;
    let epoch: i64 = column(&row, 0, "shardpool.epoch")?;
    let vshards = vshard_count(column(&row, 1, "shardpool.epoch")?)?;

    let mut placement = Vec::with_capacity(vshards as usize);
    for row in tx
        .query(
            "SELECT vshard, shard FROM shardpool.placement ORDER BY vshard",
            &[],
        )
        .await?
    {
        let v: i32 = column(&row, 0, "shardpool.placement")?;
        let shard: i32 = column(&row, 1, "shardpool.placement")?;
        if usize::try_from(v).ok() != Some(placement.len()) {
            return Err(CatalogError::Corrupt(format!(
                "placement has no row for vshard {}",
                placement.len()
            )));
        }
        let shard = u16::try_from(shard).map_err(|_| {
            CatalogError::Corrupt(format!("placement puts vshard {v} on shard {shard}"))
        })?;
        placement.push(shard);
    }
    if placement.len() != vshards as usize {
        return Err(CatalogError::Corrupt(format!(
            "placement has {} rows for {vshards} vshards",
            placement.len()
        )));
    }

    let mut directories = HashMap::new();
    let mut ranges = HashMap::new();
    for row in tx
        .query("SELECT name, kind, key_type FROM shardpool.maps", &[])
        .await?
    {
        let name: String = column(&row, 0, "shardpool.maps")?;
        let kind: String = column(&row, 1, "shardpool.maps")?;
        let ty: String = column(&row, 2, "shardpool.maps")?;
        let key_type = key_type_from_name(&ty)
            .ok_or_else(|| CatalogError::Corrupt(format!("map {name:?} has key type {ty:?}")))?;
        match kind.as_str() {
            "directory" => {
                let entries = load_directory(&tx, &name, key_type, vshards).await?;
                directories.insert(name, Directory { key_type, entries });
            }
            "range" => {
                let map = load_ranges(&tx, &name, key_type, vshards).await?;
                ranges.insert(name, map);
            }
            other => {
                return Err(CatalogError::Corrupt(format!(
                    "map {name:?} is of kind {other:?} (directory or range)"
                )))
            }
        }
    }
    let (freeze, remaps) = remap_state::load(&tx).await?;
    tx.commit().await?;
    Ok(Catalog {
        epoch,
        vshards,
        placement,
        directories,
        ranges,
        freeze,
        remaps,
    })
}

/// Entries keyed by canonical text; keys are re-canonicalised so rows written by hand still match.
async fn load_directory(
    tx: &Transaction<'_>,
    map: &str,
    key_type: KeyType,
    vshards: u32,
) -> Result<HashMap<String, u32>, CatalogError> {
    let mut entries = HashMap::new();
    for row in tx
        .query(
            "SELECT key, vshard FROM shardpool.directory WHERE map = $1",
            &[&map],
        )
        .await?
    {
        let key: String = column(&row, 0, "shardpool.directory")?;
        let vshard = stored_vshard(
            column(&row, 1, "shardpool.directory")?,
            vshards,
            "shardpool.directory",
        )?;
        let canonical = key_type
            .parse_text(&key)
            .ok()
            .and_then(|k| key_text(&k))
            .ok_or_else(|| {
                CatalogError::Corrupt(format!(
                    "directory {map:?} has key {key:?}, not a {}",
                    key_type.name()
                ))
            })?;
        entries.insert(canonical, vshard);
    }
    Ok(entries)
}

async fn load_ranges(
    tx: &Transaction<'_>,
    map: &str,
    key_type: KeyType,
    vshards: u32,
) -> Result<RangeMap, CatalogError> {
    let corrupt = |what: String| CatalogError::Corrupt(format!("range map {map:?}: {what}"));
    let mut first = None;
    let mut bounds = Vec::new();
    for row in tx
        .query(
            "SELECT lower, vshard FROM shardpool.ranges WHERE map = $1",
            &[&map],
        )
        .await?
    {
        let lower: Option<String> = column(&row, 0, "shardpool.ranges")?;
        let vshard = stored_vshard(
            column(&row, 1, "shardpool.ranges")?,
            vshards,
            "shardpool.ranges",
        )?;
        match lower {
            None => first = Some(vshard),
            Some(text) => {
                let key = key_type
                    .parse_text(&text)
                    .map_err(|e| corrupt(e.to_string()))?;
                bounds.push((key, vshard));
            }
        }
    }
    let first = first.ok_or_else(|| corrupt("no range is unbounded below".into()))?;
    bounds.sort_by(|a, b| compare_keys(&a.0, &b.0).unwrap_or(Ordering::Equal));
    if bounds
        .windows(2)
        .any(|w| compare_keys(&w[0].0, &w[1].0) != Some(Ordering::Less))
    {
        return Err(corrupt("two lower bounds are equal".into()));
    }
    Ok(RangeMap {
        key_type,
        first,
        bounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let text = |s: &str| KeyValue::Text(s.into());
        Catalog {
            epoch: 7,
            vshards: 8,
            placement: vec![0, 0, 0, 1, 1, 2, 2, 0],
            directories: HashMap::from([
                (
                    "tenants".into(),
                    Directory {
                        key_type: KeyType::Text,
                        entries: HashMap::from([("acme".into(), 5)]),
                    },
                ),
                (
                    "devices".into(),
                    Directory {
                        key_type: KeyType::Uuid,
                        entries: HashMap::from([(
                            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                            2,
                        )]),
                    },
                ),
            ]),
            ranges: HashMap::from([
                (
                    "days".into(),
                    RangeMap {
                        key_type: KeyType::Int,
                        first: 0,
                        bounds: vec![
                            (KeyValue::Int(-10), 2),
                            (KeyValue::Int(9), 4),
                            (KeyValue::Int(100), 6),
                        ],
                    },
                ),
                (
                    "names".into(),
                    RangeMap {
                        key_type: KeyType::Text,
                        first: 1,
                        bounds: vec![(text("M"), 3), (text("a"), 5), (text("é"), 7)],
                    },
                ),
            ]),
            freeze: Freeze::default(),
            remaps: Vec::new(),
        }
    }

    #[test]
    fn shard_of_is_the_placement_and_never_panics() {
        let c = catalog();
        assert_eq!(c.shard_of(0), Some(0));
        assert_eq!(c.shard_of(5), Some(2));
        assert_eq!(c.shard_of(8), None);
        assert_eq!(c.shard_of(u32::MAX), None);
    }

    #[test]
    fn int_ranges_use_numeric_order_with_inclusive_lower_bounds() {
        let c = catalog();
        for (key, want) in [
            (i64::MIN, 0),
            (-11, 0),
            (-10, 2),
            (8, 2),
            (9, 4),
            (10, 4),
            (99, 4),
            (100, 6),
            (i64::MAX, 6),
        ] {
            assert_eq!(
                c.range_vshard("days", &KeyValue::Int(key)),
                Ok(want),
                "{key}"
            );
        }
    }

    #[test]
    fn key_ranges_overlap_exactly_the_ranges_they_touch() {
        // days: (-inf,-10) -> 0, [-10,9) -> 2, [9,100) -> 4, [100,+inf) -> 6.
        let c = catalog();
        let i = KeyValue::Int;
        let over = |l: Option<(i64, bool)>, u: Option<(i64, bool)>| {
            let (l, u) = (l.map(|(k, inc)| (i(k), inc)), u.map(|(k, inc)| (i(k), inc)));
            c.range_vshards(
                "days",
                l.as_ref().map(|(k, b)| (k, *b)),
                u.as_ref().map(|(k, b)| (k, *b)),
            )
            .unwrap()
        };
        assert_eq!(over(None, None), vec![0, 2, 4, 6]);
        assert_eq!(over(Some((9, true)), None), vec![4, 6]);
        // key > 8 is key >= 9: the range holding 8 has nothing above it.
        assert_eq!(over(Some((8, false)), None), vec![4, 6]);
        assert_eq!(over(Some((7, false)), None), vec![2, 4, 6]);
        assert_eq!(over(None, Some((9, false))), vec![0, 2]);
        assert_eq!(over(None, Some((9, true))), vec![0, 2, 4]);
        assert_eq!(over(Some((10, true)), Some((99, true))), vec![4]);
        assert_eq!(over(Some((-10, true)), Some((100, false))), vec![2, 4]);
        assert_eq!(over(Some((i64::MIN, true)), Some((-11, true))), vec![0]);
        // Empty ranges overlap nothing.
        assert_eq!(over(Some((50, true)), Some((40, true))), Vec::<u32>::new());
        assert_eq!(over(Some((50, false)), Some((50, true))), Vec::<u32>::new());
        assert_eq!(over(Some((i64::MAX, false)), None), Vec::<u32>::new());
        assert_eq!(over(None, Some((i64::MIN, false))), Vec::<u32>::new());
        assert_eq!(over(Some((50, true)), Some((50, true))), vec![4]);
        // Text: an exclusive lower bound keeps its range (no successor to step to); `< M` stops before "M".
        let t = KeyValue::Text("M".into());
        assert_eq!(
            c.range_vshards("names", Some((&t, false)), None).unwrap(),
            vec![3, 5, 7]
        );
        assert_eq!(
            c.range_vshards("names", None, Some((&t, false))).unwrap(),
            vec![1]
        );
        assert!(c.range_vshards("days", Some((&t, true)), None).is_err());
    }

    #[test]
    fn text_ranges_use_byte_order() {
        let c = catalog();
        let at = |s: &str| c.range_vshard("names", &KeyValue::Text(s.into()));
        assert_eq!(at(""), Ok(1));
        assert_eq!(at("Lz"), Ok(1));
        assert_eq!(at("M"), Ok(3));
        assert_eq!(at("Zebra"), Ok(3));
        // Lowercase sorts after uppercase in C collation, and multi-byte UTF-8 after ASCII.
        assert_eq!(at("a"), Ok(5));
        assert_eq!(at("zzz"), Ok(5));
        assert_eq!(at("é"), Ok(7));
        assert_eq!(at("ü"), Ok(7));
    }

    #[test]
    fn uuid_ranges_use_byte_order() {
        let mut c = catalog();
        let u = |s: &str| KeyType::Uuid.parse_text(s).unwrap();
        c.ranges.insert(
            "ids".into(),
            RangeMap {
                key_type: KeyType::Uuid,
                first: 0,
                bounds: vec![(u("80000000-0000-0000-0000-000000000000"), 4)],
            },
        );
        assert_eq!(
            c.range_vshard("ids", &u("7fffffff-ffff-ffff-ffff-ffffffffffff")),
            Ok(0)
        );
        assert_eq!(
            c.range_vshard("ids", &u("80000000-0000-0000-0000-000000000000")),
            Ok(4)
        );
        assert_eq!(
            c.range_vshard("ids", &u("ffffffff-0000-0000-0000-000000000000")),
            Ok(4)
        );
    }

    #[test]
    fn lookups_refuse_wrong_types_nulls_and_unknown_maps() {
        let c = catalog();
        assert_eq!(
            c.range_vshard("days", &KeyValue::Text("5".into())),
            Err(LookupError::KeyTypeMismatch {
                map: "days".into(),
                expected: "bigint",
                got: "text"
            })
        );
        assert_eq!(
            c.range_vshard("days", &KeyValue::Null),
            Err(LookupError::NullKey)
        );
        assert!(matches!(
            c.range_vshard("tenants", &KeyValue::Int(1)),
            Err(LookupError::UnknownMap { .. })
        ));
        assert!(matches!(
            c.directory_vshard("days", &KeyValue::Int(1)),
            Err(LookupError::UnknownMap { .. })
        ));
        assert_eq!(
            c.directory_vshard("tenants", &KeyValue::Null),
            Err(LookupError::NullKey)
        );
    }

    #[test]
    fn directory_lookups_use_canonical_text() {
        let c = catalog();
        assert_eq!(
            c.directory_vshard("tenants", &KeyValue::Text("acme".into())),
            Ok(Some(5))
        );
        assert_eq!(
            c.directory_vshard("tenants", &KeyValue::Text("ACME".into())),
            Ok(None)
        );
        let spelled = KeyType::Uuid
            .parse_text("{A0EEBC999C0B4EF8BB6D6BB9BD380A11}")
            .unwrap();
        assert_eq!(c.directory_vshard("devices", &spelled), Ok(Some(2)));
    }

    #[test]
    fn key_text_matches_postgres_output() {
        assert_eq!(key_text(&KeyValue::Int(-42)).as_deref(), Some("-42"));
        let u = KeyType::Uuid
            .parse_text("A0EEBC999C0B4EF8BB6D6BB9BD380A11")
            .unwrap();
        assert_eq!(
            key_text(&u).as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(key_text(&KeyValue::Null), None);
    }

    #[test]
    fn runs_and_counts() {
        let c = catalog();
        assert_eq!(
            c.placement_runs(),
            vec![(0, 2, 0), (3, 4, 1), (5, 6, 2), (7, 7, 0)]
        );
        assert_eq!(c.shard_counts(), vec![(0, 4), (1, 2), (2, 2)]);
    }

    #[test]
    fn initial_placement_is_even_contiguous_blocks() {
        let shards: Vec<u16> = (0..4096).map(|v| initial_shard(v, 4096, 3)).collect();
        let count = |s| shards.iter().filter(|&&x| x == s).count();
        assert_eq!((count(0), count(1), count(2)), (1366, 1365, 1365));
        assert!(shards.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(initial_shard(65_535, 65_536, 65_536), 65_535);
        let ranges: Vec<u32> = (0..3).map(|i| initial_range_vshard(i, 3, 4096)).collect();
        assert_eq!(ranges, vec![0, 1365, 2730]);
        let all: Vec<u32> = (0..4).map(|i| initial_range_vshard(i, 4, 4)).collect();
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn check_against_reports_disagreements() {
        let cfg: ShardingConfig = toml::from_str(
            r#"
            vshards = 16
            [[shards]]
            host = "h"
            port = 1
            [[shards]]
            host = "h"
            port = 2
            [maps.tenants]
            kind = "directory"
            key_type = "int"
            [maps.missing]
            kind = "range"
            key_type = "int"
            "#,
        )
        .unwrap();
        let problems = catalog().check_against(&cfg);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("8 vshards"));
        assert!(problems[1].contains("[2]"));
        assert!(problems
            .iter()
            .any(|p| p.contains("\"missing\" is not in the catalog")));
        assert!(problems
            .iter()
            .any(|p| p.contains("text keys in the catalog")));
    }
}
