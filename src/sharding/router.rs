//! Where a statement of a sharded database runs: its shard key values (from the SQL, from Bind parameters) go
//! through the table's map (hash, range or directory) to virtual shards, and the catalog's placement turns those into
//! physical shards. Statements without a key are scattered (reads) or refused (writes) unless the configuration allows
//! fan-out; DDL and reference-table writes run on every shard. The catalog snapshot comes from a follower that keeps
//! it current; routing reads it with one atomic load.

use std::cmp::Ordering as KeyOrder;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::catalog::{self, Catalog};
use super::follow::{CatalogFollower, FollowOptions};
use super::key::KeyValue;
use super::keys::{
    analyze_sql_with, bind_keys, bind_range, BindError, ShardAnalysis, StatementKind,
    StatementShards, Target,
};
use super::recorder::DirectoryRecorder;
use super::schema::{ShardSchema, ShardedTable, TableColumns};
use crate::config::sharding::{MapConfig, ShardingConfig, UnknownKeys};
use crate::error::{sqlstate, ClientError};
use crate::router::analysis_cache::{StripedCache, DEFAULT_MAX_BYTES};
use crate::supervisor::Tasks;

/// Where a statement runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One shard. `keyed`: it was chosen by a shard key (not a default), so a transaction is bound to it.
    One { shard: u16, keyed: bool },
    /// Every shard, the statement as is: DDL on sharded or reference tables, reference-table writes, allowed
    /// keyless writes.
    Every,
    /// A read on these shards, merged (scatter/gather).
    Scatter(Vec<u16>),
}

/// Parameter values and their format codes from a Bind.
pub type Params<'a> = (&'a [Option<&'a [u8]>], &'a [i16]);

/// Cached analyses beyond this many are evicted (CLOCK): a workload with more distinct texts is not using prepared
/// statements, and re-parsing is then the cost it already pays elsewhere.
const MAX_CACHED: usize = 10_000;

/// The column order of sharded tables as last read, with a generation that changes with it: analyses of
/// column-less INSERTs depend on it, so the analysis cache drops entries made under an older generation.
#[derive(Default)]
struct ColumnState {
    generation: u64,
    columns: TableColumns,
}

pub struct ShardRouter {
    pub database: String,
    pub config: ShardingConfig,
    pub schema: ShardSchema,
    /// The follower's snapshot cell, once the catalog could be loaded.
    catalog: ArcSwapOption<ArcSwap<Catalog>>,
    follower: Mutex<Option<CatalogFollower>>,
    /// Lock-striped (see `router::analysis_cache`): sessions on different threads rarely wait on each other.
    analyses: StripedCache<ShardAnalysis>,
    columns: ArcSwap<ColumnState>,
    /// Writes directory entries for keys placed by the `unknown_keys = "hash"` policy; set once the catalog is
    /// followed (an instance routing by a fixed catalog records nothing).
    recorder: OnceLock<DirectoryRecorder>,
    /// Statements routed by key to each vshard, and rows written to it (INSERT rows; one per keyed UPDATE/DELETE):
    /// what a remap wants to know to pick hot vshards.
    pub vshard_queries: Box<[AtomicU64]>,
    pub vshard_writes: Box<[AtomicU64]>,
    pub shard_queries: Box<[AtomicU64]>,
    pub scatters: AtomicU64,
    /// Writes held while a remap froze their vshards (see [`ShardRouter::place_or_hold`]).
    pub holds: HoldStats,
    /// The freeze being honoured (remap id, and the epoch that set it: each cutover attempt freezes anew) and when
    /// this instance first saw it: holding ends a little after that plus the remap's `max_pause`, whatever the
    /// catalog says, so a remap that died cannot hold writes forever.
    freeze_seen: Mutex<(i64, i64, Instant)>,
}

/// How long writes waited for a remap's cutover on this instance.
#[derive(Debug, Default)]
pub struct HoldStats {
    pub held: AtomicU64,
    pub total_us: AtomicU64,
    pub max_us: AtomicU64,
    /// Holds that ended because their time ran out rather than because the freeze was lifted.
    pub expired: AtomicU64,
    /// Writes a fence refused before their client saw anything, routed again instead of failed.
    pub fence_retried: AtomicU64,
}

impl HoldStats {
    /// Records one hold that lasted `waited`.
    pub fn record(&self, waited: Duration, expired: bool) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        if expired {
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a placement is for: what it counts, and whether a remap's freeze holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A statement about to run on its transaction's server: counted per vshard, never held.
    Run,
    /// A transaction's first statement being routed: a write to a frozen vshard is held; counted later, as it runs.
    Route,
    /// A look ahead: nothing counted, recorded or started; a write meeting a freeze reported as held.
    Peek,
}

/// A write whose vshard a remap has frozen: wait for a catalog change (or `until`), then route it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The catalog epoch it was held under.
    pub epoch: i64,
    pub until: Instant,
}

/// Slack beyond the remap's `max_pause` before an instance stops holding on its own (the remap gives up first).
const HOLD_SLACK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("sharding schema: {0}")]
    Schema(#[from] super::schema::SchemaError),
}

impl ShardRouter {
    pub fn new(database: &str, config: &ShardingConfig) -> Result<Arc<ShardRouter>, RouterError> {
        let tables = config
            .tables
            .iter()
            .map(|t| ShardedTable {
                name: t.name.clone(),
                key: t.key.clone(),
                key_type: t.key_type,
                map: t.map.clone(),
            })
            .collect();
        let schema = ShardSchema::new(tables, &config.reference_tables)?;
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Ok(Arc::new(ShardRouter {
            database: database.to_owned(),
            schema,
            catalog: ArcSwapOption::empty(),
            follower: Mutex::new(None),
            analyses: StripedCache::new(MAX_CACHED, DEFAULT_MAX_BYTES),
            columns: ArcSwap::from_pointee(ColumnState::default()),
            recorder: OnceLock::new(),
            vshard_queries: counters(config.vshards as usize),
            vshard_writes: counters(config.vshards as usize),
            shard_queries: counters(config.shards.len()),
            scatters: AtomicU64::new(0),
            holds: HoldStats::default(),
            freeze_seen: Mutex::new((0, 0, Instant::now())),
            config: config.clone(),
        }))
    }

    /// Starts following the catalog in the background; until it has loaded once, keyed statements get an error
    /// saying so (an instance must never guess a placement).
    pub fn start_following(
        self: &Arc<Self>,
        role: String,
        password: Option<String>,
        tasks: &Arc<Tasks>,
    ) {
        let Some(target) = self.config.catalog_target(&self.database) else {
            return;
        };
        let me = Arc::downgrade(self);
        let opts = FollowOptions::for_config(&self.config);
        let tasks_for_runs = Arc::clone(tasks);
        // Supervised: a run ends when the router is gone (Ok), and fails when its follower's task dies (a panic
        // while reloading); the next run then starts a new follower, while routing goes on with the last snapshot.
        tasks.spawn("catalog follower", self.database.clone(), move || {
            let (target, role, password, me, tasks) = (
                target.clone(),
                role.clone(),
                password.clone(),
                me.clone(),
                Arc::clone(&tasks_for_runs),
            );
            async move {
                let Some(mut ended) =
                    Self::follow_once(&me, &target, &role, password.as_deref(), opts, &tasks).await
                else {
                    return Ok(());
                };
                match (&mut ended).await {
                    Err(e) if e.is_panic() => Err("the follower's task panicked".to_owned()),
                    _ => Ok(()),
                }
            }
        });
    }

    /// Starts a follower (retrying until the catalog loads) and installs it; returns its task, or `None` once the
    /// router is gone. Holds no strong reference to the router while waiting, so dropping the router stops it.
    async fn follow_once(
        me: &std::sync::Weak<Self>,
        target: &crate::config::sharding::CatalogTarget,
        role: &str,
        password: Option<&str>,
        opts: FollowOptions,
        tasks: &Arc<Tasks>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut pause = Duration::from_millis(200);
        loop {
            let pg =
                catalog::background_config(target, role, password, "shardpool catalog follower");
            let router = me.upgrade()?;
            match CatalogFollower::start(pg, opts).await {
                Ok(mut f) => {
                    let problems = f.current().check_against(&router.config);
                    for p in problems {
                        tracing::warn!(database = %router.database, problem = %p, "catalog and config disagree");
                    }
                    router.catalog.store(Some(f.shared()));
                    if router.recorder.get().is_none() {
                        let _ = router.recorder.set(DirectoryRecorder::start(
                            pg_recorder(target, role, password),
                            tasks,
                            &router.database,
                        ));
                    }
                    router.follow_columns(
                        role.to_owned(),
                        password.map(str::to_owned),
                        f.epochs(),
                        tasks,
                    );
                    let task = f.take_task();
                    *router.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                    tracing::info!(database = %router.database, "shard catalog loaded");
                    return task;
                }
                Err(e) => {
                    tracing::warn!(database = %router.database, error = %e, "cannot load the shard catalog yet (run `shardctl init`?)");
                }
            }
            drop(router);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Keeps the column order of sharded tables current: read from the default shard now, after every catalog
    /// reload and every `catalog_check_interval` (a DDL that reorders columns changes no epoch). Ends with the
    /// follower.
    fn follow_columns(
        self: &Arc<Self>,
        role: String,
        password: Option<String>,
        epochs: tokio::sync::watch::Receiver<i64>,
        tasks: &Arc<Tasks>,
    ) {
        let shard = &self.config.shards[usize::from(self.config.default_shard)];
        let target = crate::config::sharding::CatalogTarget {
            host: shard.host.clone(),
            port: shard.port,
            database: shard.database(&self.database).to_owned(),
        };
        let pg = catalog::background_config(
            &target,
            &role,
            password.as_deref(),
            "shardpool column reader",
        );
        let tables: Vec<ShardedTable> = self
            .schema
            .sharded_tables()
            .map(|t| (**t).clone())
            .collect();
        let me = Arc::downgrade(self);
        super::columns::follow(
            pg,
            tables,
            self.config.check_interval(),
            epochs,
            move |columns| match me.upgrade() {
                Some(router) => {
                    router.set_columns(columns);
                    true
                }
                None => false,
            },
            tasks,
            &self.database,
        );
    }

    /// Installs a column order (when it differs from the current one, cached analyses made under the old one are
    /// dropped).
    pub fn set_columns(&self, columns: TableColumns) {
        let current = self.columns.load();
        if current.columns == columns {
            return;
        }
        self.columns.store(Arc::new(ColumnState {
            generation: current.generation + 1,
            columns,
        }));
    }

    /// The key position of `table` for a column-less INSERT, when known.
    pub fn key_position(&self, table: &str) -> Option<usize> {
        let state = self.columns.load();
        match self.schema.lookup_str(table)? {
            super::schema::TableKind::Sharded(t) => state.columns.key_position(t),
            super::schema::TableKind::Reference => None,
        }
    }

    /// Epoch changes of the followed catalog: lets a caller wait for a reload instead of polling.
    pub fn catalog_epochs(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        let f = self.follower.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref().map(CatalogFollower::epochs)
    }

    /// Routes by a fixed catalog instead of following one (benchmarks, and tools that route offline).
    pub fn install_catalog(&self, catalog: Catalog) {
        self.catalog
            .store(Some(Arc::new(ArcSwap::from_pointee(catalog))));
    }

    /// The catalog follower's counters, once it has started.
    pub fn follow_stats(&self) -> Option<Arc<super::follow::FollowStats>> {
        self.follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(CatalogFollower::shared_stats)
    }

    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog.load().as_ref().map(|c| c.load_full())
    }

    pub fn shards(&self) -> u16 {
        self.config.shards.len() as u16
    }

    /// The shard analysis of a statement text, cached by text (compared on every hit: a hash collision is a miss).
    pub fn analysis(&self, sql: &str) -> Arc<ShardAnalysis> {
        let cols = self.columns.load();
        self.analyses.get_or_insert_with(sql, cols.generation, || {
            analyze_sql_with(sql, &self.schema, &cols.columns)
        })
    }

    /// The vshard of a key of `table`.
    pub fn vshard(
        &self,
        catalog: &Catalog,
        table: &ShardedTable,
        key: &KeyValue,
    ) -> Result<u32, ClientError> {
        self.placed_vshard(catalog, table, key).map(|(v, _)| v)
    }

    /// The vshard of a key of `table`, and whether it is a directory key without an entry placed by hash (an
    /// INSERT of it gets recorded).
    fn placed_vshard(
        &self,
        catalog: &Catalog,
        table: &ShardedTable,
        key: &KeyValue,
    ) -> Result<(u32, bool), ClientError> {
        let vshards = catalog.vshards.max(1);
        if table.map == "hash" {
            return key.vshard(vshards).ok_or_else(null_key).map(|v| (v, false));
        }
        match self.config.maps.get(&table.map) {
            Some(MapConfig::Range { .. }) => catalog
                .range_vshard(&table.map, key)
                .map(|v| (v, false))
                .map_err(|e| ClientError::error(sqlstate::INVALID_PARAMETER_VALUE, e.to_string())),
            Some(MapConfig::Directory { unknown_keys, .. }) => {
                match catalog.directory_vshard(&table.map, key) {
                    Ok(Some(v)) => Ok((v, false)),
                    Ok(None) => match unknown_keys {
                        UnknownKeys::Hash => {
                            key.vshard(vshards).ok_or_else(null_key).map(|v| (v, true))
                        }
                        UnknownKeys::Error => Err(ClientError::error(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!(
                                "key {} of table {} has no entry in directory map \"{}\"",
                                describe(key),
                                table.name,
                                table.map
                            ),
                        )),
                    },
                    Err(e) => Err(ClientError::error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        e.to_string(),
                    )),
                }
            }
            None => Err(ClientError::error(
                sqlstate::INTERNAL_ERROR,
                format!("table {} names unknown map \"{}\"", table.name, table.map),
            )),
        }
    }

    /// Decides where `stmt` runs. `params`: the Bind parameters and their format codes, when the statement is
    /// executed with them; `None` when only prepared (any shard can prepare it).
    pub fn place(
        &self,
        stmt: &StatementShards,
        params: Option<Params<'_>>,
    ) -> Result<Placement, ClientError> {
        // A statement placed to run is never held: it cannot come out frozen.
        Ok(self
            .place_body(stmt, params, Purpose::Run)?
            .unwrap_or(Placement::One {
                shard: self.config.default_shard,
                keyed: false,
            }))
    }

    /// [`ShardRouter::place`], except that a write (anything but a read) routed by key to a vshard that a remap has
    /// frozen is not placed but held: the caller waits for the catalog to change and routes it again. Not counted in
    /// the per-vshard counters: the session places the statement again with `place` once attached (checking its
    /// transaction's shard), and that is where each statement is counted, once.
    pub fn place_or_hold(
        &self,
        stmt: &StatementShards,
        params: Option<Params<'_>>,
    ) -> Result<Result<Placement, Held>, ClientError> {
        self.place_body(stmt, params, Purpose::Route)
    }

    /// Where `stmt` would go if it were routed now, for a look ahead at a pipelined batch: nothing is counted,
    /// recorded or held (`Err`: it would be held, as [`ShardRouter::place_or_hold`] holds it, or might be).
    pub fn peek(
        &self,
        stmt: &StatementShards,
        params: Option<Params<'_>>,
    ) -> Result<Result<Placement, Held>, ClientError> {
        self.place_body(stmt, params, Purpose::Peek)
    }

    /// Until when writes to `freeze`'s vshards are held here.
    fn hold_until(&self, freeze: &super::remap::state::Freeze) -> Instant {
        let mut seen = self.freeze_seen.lock().unwrap_or_else(|p| p.into_inner());
        if (seen.0, seen.1) != (freeze.remap, freeze.since) {
            *seen = (freeze.remap, freeze.since, Instant::now());
        }
        seen.2 + Duration::from_millis(u64::from(freeze.max_pause_ms)) + HOLD_SLACK
    }

    /// A hold for a `COPY ... FROM STDIN` into a sharded table while a remap freezes any vshard of this database:
    /// its rows' vshards are known only as they stream, so it waits for the cutover to end before it starts.
    /// `peek`: for a look ahead (nothing counted).
    pub fn copy_hold(&self, peek: bool) -> Option<Held> {
        let catalog = self.catalog()?;
        let purpose = if peek { Purpose::Peek } else { Purpose::Route };
        self.hold_if(purpose, &catalog, !catalog.freeze.vshards.is_empty())
    }

    /// The hold `purpose` gives a statement touching `vshards` (see `hold_if`).
    fn hold_for(
        &self,
        purpose: Purpose,
        catalog: &Catalog,
        stmt: &StatementShards,
        vshards: &[u32],
    ) -> Option<Held> {
        self.hold_if(purpose, catalog, Self::meets_freeze(catalog, stmt, vshards))
    }

    /// The hold for a statement that `meets` a remap's freeze: none for one running inside its transaction; a real,
    /// counted one when routing a transaction's first statement, unless this instance has held that freeze's writes
    /// long enough already (then the write goes where the catalog says, and the source's fence answers it); a
    /// reported one for a look ahead.
    fn hold_if(&self, purpose: Purpose, catalog: &Catalog, meets: bool) -> Option<Held> {
        if !meets {
            return None;
        }
        match purpose {
            Purpose::Run => None,
            Purpose::Peek => Some(Held {
                epoch: catalog.epoch,
                until: Instant::now(),
            }),
            Purpose::Route => {
                let until = self.hold_until(&catalog.freeze);
                if Instant::now() >= until {
                    return None;
                }
                self.holds.held.fetch_add(1, Ordering::Relaxed);
                Some(Held {
                    epoch: catalog.epoch,
                    until,
                })
            }
        }
    }

    /// Whether a write to any of `vshards` meets a remap's freeze (whether or not this instance still holds it).
    fn meets_freeze(catalog: &Catalog, stmt: &StatementShards, vshards: &[u32]) -> bool {
        let freeze = &catalog.freeze;
        !freeze.vshards.is_empty()
            && stmt.kind != StatementKind::Read
            && vshards.iter().any(|v| freeze.contains(*v))
    }

    fn place_body(
        &self,
        stmt: &StatementShards,
        params: Option<Params<'_>>,
        purpose: Purpose,
    ) -> Result<Result<Placement, Held>, ClientError> {
        let mut held = None;
        let placement = self.place_inner(stmt, params, purpose, &mut held)?;
        Ok(match held {
            Some(h) => Err(h),
            None => Ok(placement),
        })
    }

    fn place_inner(
        &self,
        stmt: &StatementShards,
        params: Option<Params<'_>>,
        purpose: Purpose,
        held: &mut Option<Held>,
    ) -> Result<Placement, ClientError> {
        let default = Placement::One {
            shard: self.config.default_shard,
            keyed: false,
        };
        if stmt.insert_null_key {
            return Err(null_key());
        }
        if let Some(table) = &stmt.insert_columns_unknown {
            return Err(ClientError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "INSERT into sharded table {table} without a column list: the table's column order has not been \
                     read from the default shard (yet), so the position of its shard key is unknown; name the \
                     columns, e.g. INSERT INTO {table} (key, ...) VALUES (...)"
                ),
            ));
        }
        if stmt.changes_key {
            return Err(ClientError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "an UPDATE may not change a row's shard key (the row would have to move to another shard)",
            ));
        }
        let target = stmt.target();
        let keys = match target {
            Target::AnyShard | Target::DefaultShard => return Ok(default),
            Target::AllShards => return Ok(Placement::Every),
            Target::Scatter => {
                if let Some(p) = self.place_by_range(stmt, params, &default, purpose, held)? {
                    return Ok(p);
                }
                return match stmt.kind {
                    StatementKind::Ddl => Ok(Placement::Every),
                    StatementKind::Read | StatementKind::Other => {
                        if let Some(cs) = &stmt.cross_shard {
                            return Err(cross_shard(cs.to_string()));
                        }
                        Ok(Placement::Scatter((0..self.shards()).collect()))
                    }
                    StatementKind::Write if self.config.allow_fanout_writes => Ok(Placement::Every),
                    StatementKind::Write => Err(ClientError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "this write names no shard key of {}, so it would have to run on every shard; \
                             add the key to the WHERE clause, or set allow_fanout_writes",
                            table_names(stmt)
                        ),
                    )),
                };
            }
            Target::Keys(k) => k,
        };
        let bound = match params {
            Some((values, formats)) => bind_keys(stmt, values, formats).map_err(|e| {
                ClientError::error(sqlstate::INVALID_PARAMETER_VALUE, e.to_string())
            })?,
            None => {
                let literal: Option<Vec<_>> = keys
                    .iter()
                    .map(|k| match &k.key {
                        super::keys::KeyRef::Literal(v) => Some((Arc::clone(&k.table), v.clone())),
                        super::keys::KeyRef::Param(_) => None,
                    })
                    .collect();
                match literal {
                    Some(l) => l,
                    // Parameters not known yet (a Parse or Describe): preparing works on any shard.
                    None => return Ok(default),
                }
            }
        };
        // Guards, not `load_full`: every session routing at once would otherwise bump (and bounce between cores)
        // the one reference count of the current catalog on every statement.
        let cell = self.catalog.load();
        let catalog = cell
            .as_ref()
            .map(|c| c.load())
            .ok_or_else(|| self.not_loaded())?;
        let mut shards: Vec<u16> = Vec::new();
        let mut vshards = Vec::new();
        // Directory keys placed by hash that this INSERT writes: recorded once the INSERT is routed.
        let mut unrecorded: Vec<(&ShardedTable, &KeyValue, u32)> = Vec::new();
        for (table, key) in &bound {
            if *key == KeyValue::Null {
                continue; // matches nothing
            }
            let (v, by_hash) = self.placed_vshard(&catalog, table, key)?;
            if by_hash
                && stmt.kind == StatementKind::Write
                && stmt
                    .insert_table
                    .as_ref()
                    .is_some_and(|t| t.name == table.name)
            {
                unrecorded.push((table, key, v));
            }
            let s = catalog.shard_of(v).ok_or_else(|| {
                ClientError::error(
                    sqlstate::INTERNAL_ERROR,
                    format!("vshard {v} has no shard in the catalog"),
                )
            })?;
            vshards.push(v);
            if !shards.contains(&s) {
                shards.push(s);
            }
        }
        shards.sort_unstable();
        let hold = self.hold_for(purpose, &catalog, stmt, &vshards);
        if hold.is_some() {
            *held = hold;
            return Ok(default);
        }
        for v in vshards.iter().filter(|_| purpose == Purpose::Run) {
            if let Some(c) = self.vshard_queries.get(*v as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            if stmt.kind == StatementKind::Write {
                if let Some(c) = self.vshard_writes.get(*v as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        match shards.as_slice() {
            [] => Ok(default),
            [one] => {
                if let Some(r) = self.recorder.get().filter(|_| purpose != Purpose::Peek) {
                    for (table, key, v) in unrecorded {
                        r.record(&table.map, key, v);
                    }
                }
                Ok(Placement::One {
                    shard: *one,
                    keyed: true,
                })
            }
            several => {
                if let Some(cs) = &stmt.cross_shard {
                    return Err(cross_shard(cs.to_string()));
                }
                if stmt.kind == StatementKind::Read || stmt.kind == StatementKind::Other {
                    return Ok(Placement::Scatter(several.to_vec()));
                }
                Err(ClientError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "this {} touches keys on shards {} of database \"{}\"; a write must stay on one shard \
                         (split a multi-row INSERT by shard, or send one statement per key)",
                        if stmt.insert_table.is_some() { "INSERT" } else { "write" },
                        list(several),
                        self.database
                    ),
                ))
            }
        }
    }

    /// A keyless statement whose sharded rows lie in key ranges of a range map: runs on the shards whose ranges
    /// overlap. `None` when that does not apply (no ranges, another map, cross-shard shapes, no catalog yet) or
    /// several shards remain for a write: the caller then treats it as keyless.
    /// A write whose ranges touch a frozen vshard is held like a keyed one (`held`, and the default placement).
    fn place_by_range(
        &self,
        stmt: &StatementShards,
        params: Option<Params<'_>>,
        default: &Placement,
        purpose: Purpose,
        held: &mut Option<Held>,
    ) -> Result<Option<Placement>, ClientError> {
        if stmt.ranges.is_empty() || stmt.cross_shard.is_some() || stmt.kind == StatementKind::Ddl {
            return Ok(None);
        }
        let range_maps = stmt.ranges.iter().all(|r| {
            matches!(
                self.config.maps.get(&r.table.map),
                Some(MapConfig::Range { .. })
            )
        });
        let Some(catalog) = self.catalog().filter(|_| range_maps) else {
            return Ok(None);
        };
        let mut shards: Vec<u16> = Vec::new();
        let mut touched: Vec<u32> = Vec::new();
        for r in &stmt.ranges {
            let bound = match params {
                Some((values, formats)) => bind_range(&r.range, r.table.key_type, values, formats),
                None => bind_range(&r.range, r.table.key_type, &[], &[]),
            }
            .map_err(|e| match (params, e) {
                // Parameters not known yet (a Parse or Describe): preparing works on any shard.
                (None, BindError::MissingParam { .. }) => None,
                (_, e) => Some(ClientError::error(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    e.to_string(),
                )),
            });
            let (lower, upper) = match bound {
                Ok(b) => b,
                Err(None) => return Ok(Some(default.clone())),
                Err(Some(e)) => return Err(e),
            };
            if lower
                .iter()
                .chain(&upper)
                .any(|(k, _)| *k == KeyValue::Null)
            {
                continue; // a comparison with NULL matches no row
            }
            let (lower, upper) = (
                tightest(lower, KeyOrder::Greater),
                tightest(upper, KeyOrder::Less),
            );
            let vshards = catalog
                .range_vshards(
                    &r.table.map,
                    lower.as_ref().map(|(k, i)| (k, *i)),
                    upper.as_ref().map(|(k, i)| (k, *i)),
                )
                .map_err(|e| {
                    ClientError::error(sqlstate::INVALID_PARAMETER_VALUE, e.to_string())
                })?;
            for v in vshards {
                touched.push(v);
                let s = catalog.shard_of(v).ok_or_else(|| {
                    ClientError::error(
                        sqlstate::INTERNAL_ERROR,
                        format!("vshard {v} has no shard in the catalog"),
                    )
                })?;
                if !shards.contains(&s) {
                    shards.push(s);
                }
            }
        }
        shards.sort_unstable();
        if let Some(h) = self.hold_for(purpose, &catalog, stmt, &touched) {
            *held = Some(h);
            return Ok(Some(default.clone()));
        }
        Ok(match shards.as_slice() {
            // No row can match: any shard answers that (with the right columns) as well as all of them.
            [] => Some(default.clone()),
            [one] => Some(Placement::One {
                shard: *one,
                keyed: true,
            }),
            several if stmt.kind != StatementKind::Write => {
                Some(Placement::Scatter(several.to_vec()))
            }
            _ => None,
        })
    }

    /// Where a statement whose SQL names no shard key runs, given a key from a `shardpool.shard_key` hint or
    /// session setting (text form, typed against each table's key type). The key goes through the map of every
    /// sharded table the statement uses, which must agree on one shard; a statement without sharded tables (a
    /// function call, say) uses the first sharded table of the configuration, the table whose key everything
    /// else is usually co-located by. `None`: the statement names keys itself, or must run everywhere (DDL,
    /// reference-table writes), and is placed as usual.
    pub fn place_by_key_text(
        &self,
        stmt: &StatementShards,
        text: &str,
    ) -> Option<Result<Placement, ClientError>> {
        self.place_by_key_text_or_hold(stmt, text, None)
    }

    /// [`ShardRouter::place_by_key_text`], except that a write whose key's vshard a remap has frozen is held (in
    /// `hold`), as [`ShardRouter::place_or_hold`] holds a write that names its key.
    pub fn place_by_key_text_or_hold(
        &self,
        stmt: &StatementShards,
        text: &str,
        hold: Option<&mut Option<Held>>,
    ) -> Option<Result<Placement, ClientError>> {
        if stmt.kind == StatementKind::Ddl
            || matches!(stmt.target(), Target::Keys(_) | Target::AllShards)
        {
            return None;
        }
        let tables: Vec<&Arc<ShardedTable>> = if stmt.sharded.is_empty() {
            let first = self.config.tables.first();
            match first.and_then(|t| self.schema.lookup_str(&t.name)) {
                Some(super::schema::TableKind::Sharded(t)) => vec![t],
                _ => Vec::new(),
            }
        } else {
            stmt.sharded.iter().collect()
        };
        Some(
            self.shard_of_key_text(stmt, &tables, text, hold)
                .map(|shard| Placement::One { shard, keyed: true }),
        )
    }

    fn shard_of_key_text(
        &self,
        stmt: &StatementShards,
        tables: &[&Arc<ShardedTable>],
        text: &str,
        hold: Option<&mut Option<Held>>,
    ) -> Result<u16, ClientError> {
        let cell = self.catalog.load();
        let catalog = cell
            .as_ref()
            .map(|c| c.load())
            .ok_or_else(|| self.not_loaded())?;
        let mut found: Option<(u16, &str)> = None;
        let mut vshards = Vec::with_capacity(tables.len());
        for table in tables {
            let key = table.key_type.parse_text(text).map_err(|e| {
                ClientError::error(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("shardpool.shard_key for table {}: {e}", table.name),
                )
            })?;
            let v = self.vshard(&catalog, table, &key)?;
            let s = catalog.shard_of(v).ok_or_else(|| {
                ClientError::error(
                    sqlstate::INTERNAL_ERROR,
                    format!("vshard {v} has no shard in the catalog"),
                )
            })?;
            vshards.push(v);
            match found {
                Some((other, name)) if other != s => {
                    return Err(ClientError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "shardpool.shard_key {text} puts table {name} on shard {other} and table {} on shard {s}; \
                             the statement would need two shards",
                            table.name
                        ),
                    ))
                }
                _ => found = Some((s, &table.name)),
            }
        }
        if let Some(out) = hold {
            if let Some(h) = self.hold_for(Purpose::Route, &catalog, stmt, &vshards) {
                // Not counted: it is placed again once the hold ends.
                *out = Some(h);
                return Ok(found.map_or(self.config.default_shard, |f| f.0));
            }
        }
        for v in &vshards {
            if let Some(c) = self.vshard_queries.get(*v as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        found.map(|(s, _)| s).ok_or_else(|| {
            ClientError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "database \"{}\" has no sharded table to route shardpool.shard_key by",
                    self.database
                ),
            )
        })
    }

    /// Keyed statements wait for the catalog: an instance must never guess a placement.
    fn not_loaded(&self) -> ClientError {
        ClientError::error(
            sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "the shard catalog of database \"{}\" is not loaded yet (has `shardctl init` been run?)",
                self.database
            ),
        )
    }

    /// Counts a statement run on `shard`.
    pub fn count_shard(&self, shard: u16) {
        if let Some(c) = self.shard_queries.get(shard as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The tightest of several bounds on one side: the greatest lower bound (`towards = Greater`) or the least upper
/// bound (`Less`); on a tie an exclusive bound is the tighter.
fn tightest(bounds: Vec<(KeyValue, bool)>, towards: KeyOrder) -> Option<(KeyValue, bool)> {
    bounds
        .into_iter()
        .reduce(|best, b| match catalog::compare_keys(&b.0, &best.0) {
            Some(o) if o == towards => b,
            Some(KeyOrder::Equal) if !b.1 => b,
            _ => best,
        })
}

fn null_key() -> ClientError {
    ClientError::error(
        "23502",
        "null value in shard key column: a row without a shard key has no shard",
    )
}

fn cross_shard(message: String) -> ClientError {
    ClientError::error(sqlstate::FEATURE_NOT_SUPPORTED, message)
}

fn describe(key: &KeyValue) -> String {
    catalog::key_text(key).map_or_else(|| "NULL".into(), |t| format!("'{t}'"))
}

fn table_names(stmt: &StatementShards) -> String {
    let names: Vec<&str> = stmt.sharded.iter().map(|t| t.name.as_str()).collect();
    names.join(", ")
}

/// Connection settings of the directory recorder (its own connection: it writes, the follower only reads).
fn pg_recorder(
    target: &crate::config::sharding::CatalogTarget,
    role: &str,
    password: Option<&str>,
) -> tokio_postgres::Config {
    catalog::background_config(target, role, password, "shardpool directory recorder")
}

pub fn list(shards: &[u16]) -> String {
    let v: Vec<String> = shards.iter().map(u16::to_string).collect();
    v.join(", ")
}
