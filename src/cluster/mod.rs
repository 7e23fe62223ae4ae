//! A database's servers as routing sees them: the primary and its streaming replicas, each with what the
//! replication monitor last learned (role, replayed WAL position, how stale it is) and whether it is banned. Routing
//! reads this without locks; the monitor (`monitor.rs`) writes it. Per user, a `PoolSet` holds one pool per member.

pub mod balance;
pub mod lsn;
pub mod monitor;
pub mod primary_position;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::backend::Pool;
use crate::config::{ConfigDuration, DatabaseConfig, LoadBalance};
use crate::router::consistency::Consistency;

/// What a server said about itself in its last answer to `pg_is_in_recovery()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    Unknown = 0,
    InRecovery = 1,
    NotInRecovery = 2,
}

/// One server of a database and its live state. Shared across reloads while its address stays in the config, so
/// its counters and ban survive a RELOAD.
#[derive(Debug)]
pub struct Member {
    pub host: String,
    pub port: u16,
    pub configured_primary: bool,
    pub weight: AtomicU64,
    recovery: AtomicU8,
    /// Replayed WAL position (replica) or current insert position (primary), as last polled.
    pub lsn: AtomicU64,
    /// Polls begun, and the number of the latest poll whose answer `lsn` includes: once a poll begun after a read
    /// ended has answered, `lsn` is at least what that read saw (monotonic reads).
    pub polls_started: AtomicU64,
    pub lsn_poll: AtomicU64,
    /// Bytes of WAL the primary has that this replica has not replayed, as of the last poll.
    pub lag_bytes: AtomicU64,
    /// Milliseconds since the cluster clock's origin up to which this server is known to hold everything the primary
    /// held; 0 = unknown. Staleness at any moment is `now - fresh_as_of`, so it grows by itself if polls stop.
    pub fresh_as_of_ms: AtomicU64,
    pub banned_until_ms: AtomicU64,
    pub reads_served: AtomicU64,
    pub writes_served: AtomicU64,
    /// Transactions running on this server now (for least-outstanding balancing).
    pub outstanding: AtomicUsize,
    pub polls_failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Member {
    fn new(host: &str, port: u16, configured_primary: bool, weight: u32) -> Member {
        Member {
            host: host.to_owned(),
            port,
            configured_primary,
            weight: AtomicU64::new(weight as u64),
            recovery: AtomicU8::new(Recovery::Unknown as u8),
            lsn: AtomicU64::new(0),
            polls_started: AtomicU64::new(0),
            lsn_poll: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            fresh_as_of_ms: AtomicU64::new(0),
            banned_until_ms: AtomicU64::new(0),
            reads_served: AtomicU64::new(0),
            writes_served: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            polls_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn recovery(&self) -> Recovery {
        match self.recovery.load(Ordering::Relaxed) {
            1 => Recovery::InRecovery,
            2 => Recovery::NotInRecovery,
            _ => Recovery::Unknown,
        }
    }

    pub fn set_recovery(&self, r: Recovery) {
        self.recovery.store(r as u8, Ordering::Relaxed);
    }

    /// Whether this server takes writes: it says it is not in recovery, or (before the monitor has heard from it)
    /// it is the configured primary.
    pub fn writable(&self) -> bool {
        match self.recovery() {
            Recovery::NotInRecovery => true,
            Recovery::InRecovery => false,
            Recovery::Unknown => self.configured_primary,
        }
    }

    /// Whether this server is a replica now (a promoted replica is not; a demoted primary is).
    pub fn is_replica(&self) -> bool {
        match self.recovery() {
            Recovery::InRecovery => true,
            Recovery::NotInRecovery => false,
            Recovery::Unknown => !self.configured_primary,
        }
    }

    pub fn role(&self) -> &'static str {
        match (self.configured_primary, self.recovery()) {
            (_, Recovery::Unknown) if self.configured_primary => "primary",
            (_, Recovery::Unknown) => "replica",
            (true, Recovery::NotInRecovery) => "primary",
            (true, Recovery::InRecovery) => "demoted",
            (false, Recovery::InRecovery) => "replica",
            (false, Recovery::NotInRecovery) => "promoted",
        }
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn addr_text(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The settings routing needs, copied out of the config so a reload swaps them whole.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub load_balance: LoadBalance,
    pub read_from_primary: bool,
    pub primary_weight: u32,
    pub consistency: Consistency,
    pub ryw_wait: Duration,
    pub poll_interval: Duration,
    pub ban_time: Duration,
}

/// A database's primary and replicas.
pub struct Cluster {
    pub database: String,
    /// Which shard of a sharded database this is.
    pub shard: Option<u16>,
    /// `[0]` is the configured primary, then the replicas in config order.
    pub members: Vec<Arc<Member>>,
    pub settings: ClusterSettings,
    pub clock: Arc<Clock>,
    /// The primary's WAL positions over time: what turns a replica's replay position into a staleness in time.
    pub history: Arc<lsn::History>,
    /// Bumped after every monitor round; waiters for a replica to catch up watch it.
    pub(crate) round: watch::Sender<u64>,
    /// Asks the monitor for a round now rather than at the next tick (a reader is waiting for a replica).
    pub(crate) kick: Notify,
    pub(crate) kicks: AtomicU64,
    pub(crate) rr: AtomicU64,
    retired: AtomicBool,
    /// The highest position any write through this shardpool instance reached (`read_proxy_writes`); kept across
    /// reloads.
    pub proxy_writes: Arc<ProxyWrites>,
    /// The primary's current position, asked on demand and shared by concurrent reads (`read_all_writes`).
    pub primary_position: primary_position::PrimaryPosition,
    /// Functions whose calls make a statement a write, loaded from the primary by the monitor.
    pub functions: arc_swap::ArcSwap<crate::router::classify::FunctionVolatility>,
    pub function_overrides: (Vec<String>, Vec<String>),
}

/// What `read_proxy_writes` reads must see: every write transaction that committed through this instance.
#[derive(Debug, Default)]
pub struct ProxyWrites {
    /// The highest WAL position captured after a write transaction (see the session's `capture_position`); only
    /// moves forward.
    pub lsn: AtomicU64,
    /// Until then (cluster clock ms) these reads use the primary: a write's position could not be read, so no
    /// replica can be shown to hold it.
    pub unknown_until_ms: AtomicU64,
}

/// Milliseconds since a fixed origin, cheap to read and to store in atomics.
#[derive(Debug)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            // Start at 1 s so that 0 can mean "never".
            origin: Instant::now() - Duration::from_secs(1),
        }
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

impl Cluster {
    /// Builds the cluster for `db`, keeping the live state of members that `previous` already had.
    pub fn new(
        database: &str,
        shard: Option<u16>,
        db: &DatabaseConfig,
        general: &crate::config::General,
        previous: Option<&Cluster>,
    ) -> Arc<Cluster> {
        let reuse = |host: &str, port: u16, primary: bool, weight: u32| {
            let found = previous.and_then(|p| {
                p.members
                    .iter()
                    .find(|m| m.host == host && m.port == port && m.configured_primary == primary)
            });
            match found {
                Some(m) => {
                    m.weight.store(weight as u64, Ordering::Relaxed);
                    Arc::clone(m)
                }
                None => Arc::new(Member::new(host, port, primary, weight)),
            }
        };
        let mut members = vec![reuse(&db.host, db.port, true, db.primary_weight)];
        for r in &db.replicas {
            members.push(reuse(&r.host, r.port, false, r.weight));
        }
        let default_consistency = if db.replicas.is_empty() {
            Consistency::Strong
        } else {
            Consistency::ReadProxyWrites
        };
        let settings = ClusterSettings {
            load_balance: db.load_balance,
            read_from_primary: db.read_from_primary,
            primary_weight: db.primary_weight,
            consistency: db.consistency.unwrap_or(default_consistency),
            ryw_wait: db.read_your_writes_wait.0,
            poll_interval: nonzero(general.replica_poll_interval),
            ban_time: general.replica_ban_time.0,
        };
        let overrides = (
            db.volatile_functions.clone(),
            db.read_only_functions.clone(),
        );
        // Until the monitor has read pg_proc (again, after a reload), unknown functions count as writes.
        let functions = crate::router::classify::FunctionVolatility::unknown()
            .with_overrides(&overrides.0, &overrides.1);
        let (clock, history, proxy_writes) = match previous {
            Some(p) => (
                Arc::clone(&p.clock),
                Arc::clone(&p.history),
                Arc::clone(&p.proxy_writes),
            ),
            None => Default::default(),
        };
        Arc::new(Cluster {
            database: database.to_owned(),
            shard,
            members,
            settings,
            clock,
            history,
            proxy_writes,
            primary_position: Default::default(),
            round: watch::channel(0).0,
            kick: Notify::new(),
            kicks: AtomicU64::new(0),
            rr: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            functions: arc_swap::ArcSwap::from_pointee(functions),
            function_overrides: overrides,
        })
    }

    pub fn has_replicas(&self) -> bool {
        self.members.len() > 1
    }

    /// Stops the monitor; sessions still holding this cluster move to the new one at their next transaction.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.kick.notify_waiters();
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub fn ban(&self, member: &Member, why: &str) {
        let until = self.clock.now_ms() + self.settings.ban_time.as_millis() as u64;
        member.banned_until_ms.store(until, Ordering::Relaxed);
        member.set_error(Some(why.to_owned()));
        tracing::warn!(
            database = %self.database,
            server = %member.addr_text(),
            reason = why,
            ban_ms = self.settings.ban_time.as_millis() as u64,
            "server banned from reads"
        );
    }

    pub fn is_banned(&self, member: &Member) -> bool {
        member.banned_until_ms.load(Ordering::Relaxed) > self.clock.now_ms()
    }

    /// Milliseconds this member may be behind the primary right now; `None` if unknown.
    pub fn staleness_ms(&self, member: &Member) -> Option<u64> {
        let fresh = member.fresh_as_of_ms.load(Ordering::Relaxed);
        (fresh != 0).then(|| self.clock.now_ms().saturating_sub(fresh))
    }

    /// Asks the monitor for a round now, and returns a receiver that sees it complete.
    pub fn request_round(&self) -> watch::Receiver<u64> {
        let rx = self.round.subscribe();
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.kick.notify_waiters();
        rx
    }
}

fn nonzero(d: ConfigDuration) -> Duration {
    d.enabled().unwrap_or(Duration::from_millis(100))
}

/// One user's pools over a cluster's members (same order as `cluster.members`).
pub struct PoolSet {
    pub database: String,
    pub user: String,
    pub cluster: Arc<Cluster>,
    pub pools: Vec<Arc<Pool>>,
    retired: AtomicBool,
}

impl PoolSet {
    pub fn new(
        database: &str,
        user: &str,
        cluster: Arc<Cluster>,
        pools: Vec<Arc<Pool>>,
    ) -> PoolSet {
        PoolSet {
            database: database.to_owned(),
            user: user.to_owned(),
            cluster,
            pools,
            retired: AtomicBool::new(false),
        }
    }

    /// The pool of the configured primary: where client counts are kept.
    pub fn home(&self) -> &Arc<Pool> {
        &self.pools[0]
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}
