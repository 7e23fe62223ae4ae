//! The one shared value every task gets (as an `Arc`): the current config and pools behind atomic swaps so a reload is
//! a pointer swap, the registry of connected clients (SHOW CLIENTS, cancel routing), and the pause and shutdown
//! switches. No global statics, so tests can run many proxies in one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::pool::{PauseGate, PoolConfig};
use crate::backend::{Pool, ServerAddr, ServerTarget};
use crate::cluster::{Cluster, PoolSet};
use crate::config::{Config, DatabaseConfig, UserConfig};
use crate::protocol::startup::CancelKey;

/// What SHOW CLIENTS shows and what a CancelRequest needs to find the right server.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub cancel_key: CancelKey,
    pub user: String,
    pub database: String,
    pub addr: crate::frontend::stream::ClientAddr,
    pub application_name: String,
    pub connected_at: SystemTime,
    pub tls: bool,
    state: AtomicU8,
    /// The server running this client's current transaction: its address and cancel key.
    server: Mutex<Option<(ServerAddr, CancelKey, u64)>>,
    /// The servers running this client's current multi-shard statement (one per shard; empty otherwise): a cancel
    /// goes to each of them.
    fanout: Mutex<Vec<(ServerAddr, CancelKey, u64)>>,
    /// The task of this client's session while it waits idle, woken at shutdown. One slot per client instead of
    /// every idle session subscribing to a process-wide notifier: that notifier's lock was taken twice per
    /// transaction by both runtime threads, and its wait future made every idle session 120 bytes larger.
    idle_waker: Mutex<Option<Waker>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    Idle = 0,
    Active = 1,
    Waiting = 2,
}

impl ClientInfo {
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    pub fn set_server(&self, server: Option<(ServerAddr, CancelKey, u64)>) {
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = server;
    }

    pub fn server(&self) -> Option<(ServerAddr, CancelKey, u64)> {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_fanout(&self, servers: Vec<(ServerAddr, CancelKey, u64)>) {
        *self.fanout.lock().unwrap_or_else(|p| p.into_inner()) = servers;
    }

    pub fn fanout(&self) -> Vec<(ServerAddr, CancelKey, u64)> {
        self.fanout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether server connection `server_id` still runs this client's statement (alone or as one of its shards).
    pub fn holds_server(&self, server_id: u64) -> bool {
        self.server().is_some_and(|s| s.2 == server_id)
            || self
                .fanout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|s| s.2 == server_id)
    }

    /// Registers the idle session's task to be woken by `Context::begin_shutdown`. Call before checking
    /// `Context::is_shutting_down`: shutdown sets its flag before waking, so one of the two always sees the other.
    pub fn wake_on_shutdown(&self, waker: &Waker) {
        let mut slot = self.idle_waker.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake_for_shutdown(&self) {
        if let Some(w) = self
            .idle_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.wake();
        }
    }
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<u64, Arc<ClientInfo>>,
    by_key: HashMap<CancelKey, Arc<ClientInfo>>,
}

/// Removes a client from the registry when its session ends, however it ends.
pub struct ClientRegistration {
    ctx: Arc<Context>,
    pub info: Arc<ClientInfo>,
    /// Dropped after the registry entry is gone.
    _slot: ClientSlot,
}

/// One logged-in connection counted in `Context::connections` (max_client_conn) for as long as it lives.
pub struct ClientSlot(Arc<Context>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ClientRegistration {
    fn drop(&mut self) {
        let mut reg = self.ctx.registry();
        reg.by_id.remove(&self.info.id);
        reg.by_key.remove(&self.info.cancel_key);
    }
}

pub struct Context {
    config: ArcSwap<Config>,
    /// Pool sets by (database, user, shard); shard 0 for an unsharded database.
    pools: Mutex<HashMap<(String, String, u16), Arc<PoolSet>>>,
    /// Server sets by (database, shard).
    clusters: Mutex<HashMap<(String, u16), Arc<Cluster>>>,
    /// Shard routers of sharded databases (with their catalog followers).
    routers: Mutex<HashMap<String, Arc<crate::sharding::router::ShardRouter>>>,
    /// Read/write analyses by statement text, shared by all sessions.
    analyses: crate::router::analysis_cache::AnalysisCache,
    registry: Mutex<Registry>,
    next_client_id: AtomicU64,
    /// Logged-in connections not yet closed (clients and admin sessions), for max_client_conn.
    pub connections: AtomicUsize,
    /// Connections accepted and still in the handshake or authentication, for max_pending_logins.
    pub pending_logins: AtomicUsize,
    /// Connections that did not log in, by reason (since start): accept-time cap, timeout, wrong password...
    pub login_failures: crate::metrics::events::LoginFailures,
    /// CancelRequests received, by source and outcome (since start).
    pub cancel_requests: crate::metrics::events::CancelCounts,
    /// Clients disconnected at client_stall_timeout (since start).
    pub client_stalls: AtomicU64,
    /// Clients disconnected at query_timeout (since start).
    pub query_timeouts: AtomicU64,
    pub pause: Arc<PauseGate>,
    /// Which sessions have a transaction in flight, for the lone-client spin.
    pub spin: crate::frontend::spin::SpinGate,
    shutdown: watch::Sender<bool>,
    /// The same as the `shutdown` watch's value, read by every idle session on every wake-up: an atomic load
    /// instead of the watch's read lock, whose counter all sessions on both threads would write.
    shutting_down: AtomicBool,
    /// The startup settings of the last client that logged in: the next one asking for the same shares the map.
    last_startup_settings: Mutex<Arc<BTreeMap<String, String>>>,
    /// Likewise the parameter values the last client was told where it differs from its pool's baseline.
    last_told: Mutex<Arc<BTreeMap<String, String>>>,
    pub started_at: SystemTime,
    verifiers: Mutex<HashMap<String, (String, crate::auth::scram::ScramVerifier)>>,
    /// What clients' logins taught the proxy for logging in to servers as them, by (database, user); see
    /// `crate::auth::passthrough`.
    server_credentials:
        Mutex<HashMap<(String, String), Arc<crate::auth::passthrough::ServerCredential>>>,
    /// `auth_query` answers and idle `auth_user` connections.
    pub auth_cache: crate::auth::auth_query::AuthQueryCache,
    config_path: Mutex<Option<std::path::PathBuf>>,
    /// TLS acceptor for clients, swapped on reload.
    pub tls: Arc<arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    /// Background tasks (monitors, catalog followers, recorders, pool janitors), restarted when they fail.
    pub tasks: Arc<crate::supervisor::Tasks>,
    /// Cancel requests on their way to a server, by server connection id (see [`Context::begin_cancel`]).
    cancels: Mutex<HashMap<u64, usize>>,
    /// How many there are in all: every transaction's release asks, and nearly always the answer is none, which
    /// this tells without taking the lock both worker threads would share.
    cancels_pending: std::sync::atomic::AtomicUsize,
    cancels_done: tokio::sync::Notify,
    /// `general.peer_id` as at start: written into every cancel key, so it must not change while clients hold keys.
    pub peer_id: u16,
}

/// A cancel request on its way to one server connection: while it lives, that server is not handed to another
/// client, so the cancel can only ever reach the query of the client that asked for it.
pub struct CancelInFlight {
    ctx: Arc<Context>,
    server_id: u64,
}

impl Drop for CancelInFlight {
    fn drop(&mut self) {
        let mut cancels = self.ctx.cancels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = cancels.get_mut(&self.server_id) {
            *n -= 1;
            if *n == 0 {
                cancels.remove(&self.server_id);
            }
        }
        drop(cancels);
        self.ctx.cancels_pending.fetch_sub(1, Ordering::SeqCst);
        self.ctx.cancels_done.notify_waiters();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (started without one)")]
    NoFile,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::frontend::tls::TlsError),
}

impl Context {
    pub fn new(config: Config) -> Arc<Context> {
        Arc::new(Context {
            peer_id: config.general.peer_id,
            config: ArcSwap::from_pointee(config),
            pools: Mutex::new(HashMap::new()),
            clusters: Mutex::new(HashMap::new()),
            analyses: Default::default(),
            routers: Mutex::new(HashMap::new()),
            registry: Mutex::new(Registry::default()),
            next_client_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            pending_logins: AtomicUsize::new(0),
            login_failures: Default::default(),
            cancel_requests: Default::default(),
            client_stalls: AtomicU64::new(0),
            query_timeouts: AtomicU64::new(0),
            pause: Arc::new(PauseGate::default()),
            spin: Default::default(),
            shutdown: watch::channel(false).0,
            shutting_down: AtomicBool::new(false),
            last_startup_settings: Mutex::new(Arc::default()),
            last_told: Mutex::new(Arc::default()),
            started_at: SystemTime::now(),
            verifiers: Mutex::new(HashMap::new()),
            server_credentials: Mutex::new(HashMap::new()),
            auth_cache: Default::default(),
            config_path: Mutex::new(None),
            tls: Arc::new(arc_swap::ArcSwapOption::empty()),
            tasks: Arc::default(),
            cancels: Mutex::new(HashMap::new()),
            cancels_pending: std::sync::atomic::AtomicUsize::new(0),
            cancels_done: tokio::sync::Notify::new(),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pools_lock(&self) -> MutexGuard<'_, HashMap<(String, String, u16), Arc<PoolSet>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn clusters_lock(&self) -> MutexGuard<'_, HashMap<(String, u16), Arc<Cluster>>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster (primary and replicas) of one shard of a database (shard 0 when unsharded), created with its
    /// replication monitor on first use.
    pub fn cluster(&self, database: &str, shard: u16) -> Option<Arc<Cluster>> {
        let config = self.config();
        let db = config.databases.get(database)?;
        let shard_db = db.shard_configs(database).into_iter().nth(shard as usize)?;
        let mut clusters = self.clusters_lock();
        let key = (database.to_owned(), shard);
        if let Some(c) = clusters.get(&key) {
            return Some(Arc::clone(c));
        }
        let cluster = Cluster::new(
            database,
            shard_label(db, shard),
            &shard_db,
            &config.general,
            None,
        );
        start_monitor(&config, database, &shard_db, &cluster, &self.tasks);
        clusters.insert(key, Arc::clone(&cluster));
        Some(cluster)
    }

    /// The pools of (database, user) on the database's home shard (its only one unless sharded; else the default
    /// shard), where client counts are kept and login parameters come from.
    pub fn pool_set(&self, database: &str, user: &UserConfig) -> Option<Arc<PoolSet>> {
        let config = self.config();
        let db = config.databases.get(database)?;
        let home = db.sharding.as_ref().map_or(0, |s| s.default_shard);
        self.shard_pool_set(database, user, home)
    }

    /// The pools of (database, user) on one shard, one pool per server of that shard, created on first use.
    pub fn shard_pool_set(
        &self,
        database: &str,
        user: &UserConfig,
        shard: u16,
    ) -> Option<Arc<PoolSet>> {
        let cluster = self.cluster(database, shard)?;
        let config = self.config();
        let db = config.databases.get(database)?;
        let shard_db = db.shard_configs(database).into_iter().nth(shard as usize)?;
        let key = (database.to_owned(), user.name.clone(), shard);
        let mut pools = self.pools_lock();
        if let Some(p) = pools.get(&key) {
            if !p.is_retired() {
                return Some(Arc::clone(p));
            }
        }
        let set = self.build_pool_set(&config, database, &shard_db, user, &cluster, None);
        pools.insert(key, Arc::clone(&set));
        Some(set)
    }

    /// The primary's pool for (database, user) on its home shard.
    pub fn pool(&self, database: &str, user: &UserConfig) -> Option<Arc<Pool>> {
        self.pool_set(database, user).map(|s| Arc::clone(s.home()))
    }

    fn build_pool_set(
        &self,
        config: &Config,
        database: &str,
        db: &DatabaseConfig,
        user: &UserConfig,
        cluster: &Arc<Cluster>,
        previous: Option<&PoolSet>,
    ) -> Arc<PoolSet> {
        let pools = cluster
            .members
            .iter()
            .map(|m| {
                let mut target = server_target(config, database, &m.host, m.port, db, user);
                if user.logs_in_by_passthrough() {
                    target.credential = Some(self.server_credential(database, &user.name));
                }
                let reused = previous.and_then(|p| p.pools.iter().find(|p| p.target == target));
                match reused {
                    Some(p) if !p.is_closed() => {
                        p.set_config(pool_config(config, db, user));
                        Arc::clone(p)
                    }
                    _ => Pool::new(
                        database.to_owned(),
                        user.name.clone(),
                        target,
                        pool_config(config, db, user),
                        Arc::clone(&self.pause),
                        &self.tasks,
                    ),
                }
            })
            .collect();
        Arc::new(PoolSet::new(
            database,
            &user.name,
            Arc::clone(cluster),
            pools,
        ))
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self
            .pools_lock()
            .values()
            .flat_map(|s| s.pools.iter().cloned())
            .collect();
        // The server database last: shards of one database may live on one server under different names.
        v.sort_by(|a, b| {
            (
                &a.database,
                &a.user,
                &a.target.host,
                a.target.port,
                &a.target.database,
            )
                .cmp(&(
                    &b.database,
                    &b.user,
                    &b.target.host,
                    b.target.port,
                    &b.target.database,
                ))
        });
        v
    }

    /// The pool sets in use, one per (database, user, shard): each pool's place (shard, server role) is there.
    /// Every pool set (database, user, shard): the pools with the cluster whose members they serve, for `/metrics`.
    pub fn pool_sets(&self) -> Vec<Arc<PoolSet>> {
        self.pools_lock().values().cloned().collect()
    }

    /// The shard router of a sharded database.
    pub fn shard_router(
        &self,
        database: &str,
    ) -> Option<Arc<crate::sharding::router::ShardRouter>> {
        self.routers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(database)
            .cloned()
    }

    /// Creates the shard routers (and starts their catalog followers) of the sharded databases in `config`, keeping
    /// the ones whose sharding configuration did not change.
    pub fn start_shard_routers(&self, config: &Config) {
        let mut routers = self.routers.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for (name, db) in &config.databases {
            let Some(sh) = &db.sharding else { continue };
            if let Some(r) = routers.get(name).filter(|r| r.config == *sh) {
                next.insert(name.clone(), Arc::clone(r));
                continue;
            }
            match crate::sharding::router::ShardRouter::new(name, sh) {
                Ok(r) => {
                    match monitor_login(config) {
                        Some(u) => r.start_following(
                            u.server_user().to_owned(),
                            u.server_password().map(str::to_owned),
                            &self.tasks,
                        ),
                        None => tracing::warn!(
                            database = %name,
                            "no user with a server password to read the shard catalog with"
                        ),
                    }
                    next.insert(name.clone(), r);
                }
                Err(e) => {
                    tracing::error!(database = %name, error = %e, "sharding configuration rejected")
                }
            }
        }
        *routers = next;
    }

    /// The read/write analysis of a statement text, judged with `cluster`'s function volatility; cached by text, so
    /// a statement is parsed once however often it runs (a prepared statement's Binds hit the cache).
    pub fn analysis(&self, sql: &str, cluster: &Cluster) -> Arc<crate::router::classify::Analysis> {
        let functions = cluster.functions.load();
        self.analyses.analyse(sql, &functions)
    }

    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut v: Vec<_> = self.clusters_lock().values().cloned().collect();
        v.sort_by(|a, b| (&a.database, a.shard).cmp(&(&b.database, b.shard)));
        v
    }

    /// Swaps in a new config. Clusters are rebuilt (servers that stay keep their live state and counters) and pool
    /// sets too: a pool whose server and credentials are unchanged is kept and takes the new sizes in place, any
    /// other is closed. Sessions notice their retired pool set at their next transaction and move to the new one;
    /// clients stay connected throughout.
    pub fn reload(&self, config: Config) {
        let mut clusters = self.clusters_lock();
        let old_clusters: HashMap<_, _> = clusters.drain().collect();
        for c in old_clusters.values() {
            c.retire();
        }
        for (name, db) in &config.databases {
            for (i, shard_db) in db.shard_configs(name).iter().enumerate() {
                let key = (name.clone(), i as u16);
                let previous = old_clusters.get(&key).map(|c| &**c);
                let c = Cluster::new(
                    name,
                    shard_label(db, i as u16),
                    shard_db,
                    &config.general,
                    previous,
                );
                start_monitor(&config, name, shard_db, &c, &self.tasks);
                clusters.insert(key, c);
            }
        }
        let mut pools = self.pools_lock();
        let old_sets: Vec<_> = pools.drain().collect();
        for ((database, user, shard), set) in old_sets {
            set.retire();
            let shard_db = config
                .databases
                .get(&database)
                .and_then(|db| db.shard_configs(&database).into_iter().nth(shard as usize));
            let rebuilt = match (
                shard_db,
                config.resolve_user(&user),
                clusters.get(&(database.clone(), shard)),
            ) {
                (Some(db), Some(u), Some(c)) => {
                    Some(self.build_pool_set(&config, &database, &db, &u, c, Some(&set)))
                }
                _ => None,
            };
            for p in &set.pools {
                if !rebuilt
                    .as_ref()
                    .is_some_and(|r| r.pools.iter().any(|n| Arc::ptr_eq(n, p)))
                {
                    p.close();
                }
            }
            if let Some(r) = rebuilt {
                pools.insert((database, user, shard), r);
            }
        }
        drop(pools);
        drop(clusters);
        self.start_shard_routers(&config);
        // The lookup settings or the servers may have changed: look secrets up afresh.
        self.auth_cache.clear();
        self.config.store(Arc::new(config));
    }

    /// The settings of a logged-in session's user: from `[[users]]` or `auth_file`, else (with `auth_query`) an
    /// `auth_query` user's defaults.
    pub fn user(&self, name: &str) -> Option<UserConfig> {
        self.config().resolve_user(name).map(|u| u.into_owned())
    }

    /// The credential slot of (database, user), created empty on first use and shared by all its pools.
    pub fn server_credential(
        &self,
        database: &str,
        user: &str,
    ) -> Arc<crate::auth::passthrough::ServerCredential> {
        let mut map = self
            .server_credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry((database.to_owned(), user.to_owned()))
                .or_default(),
        )
    }

    /// Counts one more logged-in connection, unless `max` are already counted.
    pub fn admit_client(self: &Arc<Self>, max: usize) -> Option<ClientSlot> {
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        let slot = ClientSlot(Arc::clone(self));
        (before < max).then_some(slot)
    }

    pub fn register_client(
        self: &Arc<Self>,
        slot: ClientSlot,
        user: &str,
        database: &str,
        addr: crate::frontend::stream::ClientAddr,
        application_name: &str,
        tls: bool,
    ) -> ClientRegistration {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let mut reg = self.registry();
        let cancel_key = loop {
            let key = crate::frontend::peers::new_key(self.peer_id);
            if !reg.by_key.contains_key(&key) {
                break key;
            }
        };
        let info = Arc::new(ClientInfo {
            id,
            cancel_key,
            user: user.to_owned(),
            database: database.to_owned(),
            addr,
            application_name: application_name.to_owned(),
            connected_at: SystemTime::now(),
            tls,
            state: AtomicU8::new(ClientState::Idle as u8),
            server: Mutex::new(None),
            fanout: Mutex::new(Vec::new()),
            idle_waker: Mutex::new(None),
        });
        reg.by_id.insert(id, Arc::clone(&info));
        reg.by_key.insert(cancel_key, Arc::clone(&info));
        ClientRegistration {
            ctx: Arc::clone(self),
            info,
            _slot: slot,
        }
    }

    pub fn client_by_cancel_key(&self, key: &CancelKey) -> Option<Arc<ClientInfo>> {
        self.registry().by_key.get(key).cloned()
    }

    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.registry().by_id.values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Registers a cancel request for server connection `server_id`. Register first, then check that the client
    /// still holds that server: a session releasing it clears the client's server before asking
    /// [`Context::cancel_in_flight`], so one of the two always sees the other.
    pub fn begin_cancel(self: &Arc<Self>, server_id: u64) -> CancelInFlight {
        // Counted before the client's server is checked again (SeqCst, like the release's read of the count).
        self.cancels_pending.fetch_add(1, Ordering::SeqCst);
        *self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(server_id)
            .or_default() += 1;
        CancelInFlight {
            ctx: Arc::clone(self),
            server_id,
        }
    }

    pub fn cancel_in_flight(&self, server_id: u64) -> bool {
        if self.cancels_pending.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&server_id)
    }

    /// Waits until no cancel request is on its way to `server_id` (bounded: a cancel attempt gives up by then).
    pub async fn cancels_delivered(&self, server_id: u64, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.cancels_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.cancel_in_flight(server_id) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    pub fn set_config_path(&self, path: Option<std::path::PathBuf>) {
        *self.config_path.lock().unwrap_or_else(|p| p.into_inner()) = path;
    }

    /// Builds the TLS acceptor for `config` and swaps it in.
    pub fn apply_tls(&self, config: &Config) -> Result<(), crate::frontend::tls::TlsError> {
        let acceptor = match &config.tls {
            Some(t) => Some(Arc::new(crate::frontend::tls::acceptor(t)?)),
            None => None,
        };
        self.tls.store(acceptor);
        Ok(())
    }

    /// RELOAD / SIGHUP: re-read the file; a broken file changes nothing and the error says why.
    pub fn reload_from_disk(&self) -> Result<(), ReloadError> {
        let path = self
            .config_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ReloadError::NoFile)?;
        let config = Config::load(&path)?;
        self.apply_tls(&config)?;
        self.reload(config);
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(())
    }

    /// A verifier for a plain-text password, generated once and reused until the password changes.
    pub fn cached_verifier(&self, user: &str, password: &str) -> crate::auth::scram::ScramVerifier {
        let mut cache = self.verifiers.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(user) {
            Some((p, v)) if p == password => v.clone(),
            _ => {
                let v = crate::auth::scram::ScramVerifier::generate(password);
                cache.insert(user.to_owned(), (password.to_owned(), v.clone()));
                v
            }
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
        let idle: Vec<Arc<ClientInfo>> = self.registry().by_id.values().cloned().collect();
        for c in idle {
            c.wake_for_shutdown();
        }
        for c in self.clusters_lock().values() {
            c.retire();
        }
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// `settings` as a shared map: the same one as the previous login's when equal (clients of one application
    /// all send the same startup parameters), so idle clients do not each hold a copy.
    pub fn share_startup_settings(
        &self,
        settings: Arc<BTreeMap<String, String>>,
    ) -> Arc<BTreeMap<String, String>> {
        share_alike(&self.last_startup_settings, settings)
    }

    /// Likewise the parameter values a client was told where it differs from its pool's baseline.
    pub fn share_told(&self, own: Arc<BTreeMap<String, String>>) -> Arc<BTreeMap<String, String>> {
        share_alike(&self.last_told, own)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The user whose server credentials shardpool's own connections (replication monitor, catalog follower) use.
pub fn monitor_login(config: &Config) -> Option<&UserConfig> {
    match &config.general.monitor_user {
        Some(name) => config.user(name),
        None => config.users.iter().find(|u| u.server_password().is_some()),
    }
}

/// Which shard a cluster is, for display: `None` for an unsharded database.
fn shard_label(db: &DatabaseConfig, shard: u16) -> Option<u16> {
    db.sharding.as_ref().map(|_| shard)
}

/// Starts the replication monitor of a database that has replicas (one without needs none: every transaction goes
/// to its primary).
fn start_monitor(
    config: &Config,
    database: &str,
    db: &DatabaseConfig,
    cluster: &Arc<Cluster>,
    tasks: &Arc<crate::supervisor::Tasks>,
) {
    if !cluster.has_replicas() {
        return;
    }
    let Some(user) = monitor_login(config) else {
        tracing::warn!(
            database,
            "no user with a server password for the replication monitor: replicas get reads only in eventual mode"
        );
        return;
    };
    crate::cluster::monitor::spawn(
        cluster,
        crate::cluster::monitor::LoginFor {
            database: db
                .server_database
                .clone()
                .unwrap_or_else(|| database.to_owned()),
            user: user.server_user().to_owned(),
            password: user.server_password().map(str::to_owned),
            connect_timeout: config.general.server_connect_timeout.0,
            security: config.server_security(db),
        },
        tasks,
    );
}

fn server_target(
    config: &Config,
    database: &str,
    host: &str,
    port: u16,
    db: &DatabaseConfig,
    user: &UserConfig,
) -> ServerTarget {
    let (tls, auth) = config.server_security(db);
    ServerTarget {
        host: host.to_owned(),
        port,
        database: db
            .server_database
            .clone()
            .unwrap_or_else(|| database.to_owned()),
        user: user.server_user().to_owned(),
        password: user.server_password().map(str::to_owned),
        credential: None,
        tls,
        auth,
    }
}

fn pool_config(config: &Config, db: &DatabaseConfig, user: &UserConfig) -> PoolConfig {
    let g = &config.general;
    PoolConfig {
        settings: config.pool_settings(db, user),
        checkout_timeout: g.checkout_timeout.0,
        connect_timeout: g.server_connect_timeout.0,
        idle_timeout: g.server_idle_timeout.enabled(),
        lifetime: g.server_lifetime.enabled(),
        check_delay: g.server_check_delay.0,
        check_query: g.server_check_query.clone(),
        reset_query: g.server_reset_query.clone(),
        statement_capacity: g.prepared_statements_cache_size,
    }
}

/// `value`, or the equal map in `last` (which then stays), so consecutive equal logins share one allocation.
fn share_alike<T: PartialEq>(last: &Mutex<Arc<T>>, value: Arc<T>) -> Arc<T> {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if *last != value {
        *last = value;
    }
    Arc::clone(&last)
}
