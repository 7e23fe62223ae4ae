//! The pool of server connections for one (database, user): an idle stack, a first-come-first-served queue of
//! waiting clients, and a count of live connections that stays right however a connection dies (each carries a
//! `Slot` whose drop gives its place back). In thread-per-core mode the queue bends a little: a returned server
//! prefers a waiter on its own core, and no waiter is overtaken more than twice (`Inner::next_waiter`).
//!
//! Why not bb8 for this: bb8 0.9 lets a newcomer take a connection that was just returned while earlier waiters
//! are still queued, and returns connections in a synchronous `Drop`, where no async reset can run. Here a returned
//! connection is handed straight to the oldest waiter, and the session performs any async cleanup before `checkin`.
//! See docs/decisions/pool.md.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use super::connect::{connect, ServerTarget};
use super::server::ServerConn;
use crate::config::PoolSettings;
use crate::error::{sqlstate, ClientError, ErrorKind, ReportableError};

/// Settings a reload may change without replacing the pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub settings: PoolSettings,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub lifetime: Option<Duration>,
    pub check_delay: Duration,
    pub check_query: String,
    pub reset_query: String,
    pub statement_capacity: usize,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum PoolError {
    #[error("no server connection available within {0:?} (pool_size reached)")]
    Timeout(Duration),
    #[error("server login failed: {0}")]
    Connect(String),
    #[error("server refused login: {code}: {message}")]
    ServerRefused { code: String, message: String },
    /// The login was stopped for security (TLS failure, refused password method, broken SCRAM exchange): the
    /// client gets the cause, which only configuration can fix.
    #[error("server login refused: {message}")]
    Insecure { code: &'static str, message: String },
    #[error("pool is closed")]
    Closed,
}

impl ReportableError for PoolError {
    fn kind(&self) -> ErrorKind {
        match self {
            PoolError::Timeout(_) | PoolError::Closed => ErrorKind::Service,
            PoolError::Connect(_)
            | PoolError::ServerRefused { .. }
            | PoolError::Insecure { .. } => ErrorKind::Server,
        }
    }

    fn client_error(&self) -> Option<ClientError> {
        Some(match self {
            PoolError::Timeout(d) => ClientError::error(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "shardpool: no server connection available within {}ms",
                    d.as_millis()
                ),
            ),
            PoolError::Connect(_) => ClientError::error(
                sqlstate::CONNECTION_FAILURE,
                "shardpool: could not connect to the server".to_string(),
            ),
            PoolError::ServerRefused { message, .. } => ClientError::error(
                sqlstate::CONNECTION_FAILURE,
                format!("shardpool: server login failed: {message}"),
            ),
            PoolError::Insecure { code, message } => {
                ClientError::error(code, format!("shardpool: server login refused: {message}"))
            }
            PoolError::Closed => {
                ClientError::error(sqlstate::ADMIN_SHUTDOWN, "shardpool: pool is shutting down")
            }
        })
    }
}

/// Counters for SHOW STATS / SHOW POOLS. Plain atomics: the hot path only ever adds.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Server connections handed to a client (successful checkouts).
    pub server_assignment_count: AtomicU64,
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub query_time_us: AtomicU64,
    pub wait_time_us: AtomicU64,
    /// Clients logged in to this pool.
    pub clients: AtomicUsize,
    /// Clients waiting for a server (including while paused).
    pub waiting: AtomicUsize,
    /// Servers a client is done with that stay out of the pool until a cancel request on its way to them has
    /// arrived, so that it cannot interrupt the next client's query (SHOW POOLS `sv_being_canceled`).
    pub being_canceled: AtomicUsize,
    /// Checkout waits (`/metrics`); their sum is `wait_time_us`.
    pub wait_histogram: crate::metrics::histogram::WaitHistogram,
    /// Errors sent to this pool's clients, by SQLSTATE class (`/metrics`); counted on the home pool.
    pub errors: crate::metrics::errors::ErrorCounts,
}

/// A pool-wide PAUSE: checkouts wait until RESUME.
#[derive(Debug)]
pub struct PauseGate {
    tx: watch::Sender<bool>,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            tx: watch::channel(false).0,
        }
    }
}

impl PauseGate {
    pub fn set(&self, paused: bool) {
        self.tx.send_replace(paused);
    }

    pub fn is_paused(&self) -> bool {
        *self.tx.borrow()
    }

    async fn wait_resumed(&self) {
        let mut rx = self.tx.subscribe();
        while *rx.borrow_and_update() {
            // An error means the sender is gone, which cannot happen while `self` lives.
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Connections travel boxed: moving them between pool and sessions copies a pointer, and an idle session's
/// `Option<Box<ServerConn>>` costs 8 bytes instead of the whole connection's size.
pub type Lent = Box<ServerConn>;

type WaiterTx = oneshot::Sender<Result<Lent, PoolError>>;

struct Waiter {
    tx: WaiterTx,
    since: Instant,
    /// The waiting session's core in thread-per-core mode (see `Inner::next_waiter`).
    core: Option<u16>,
    /// How many younger waiters were served before this one.
    overtaken: u8,
}

/// How far down the queue a returned server looks for a waiter on its own core (thread-per-core mode).
const SAME_CORE_WINDOW: usize = 8;
/// How often a waiter may be overtaken by younger ones on the returned server's core: bounds the unfairness.
const MAX_OVERTAKEN: u8 = 2;

impl Inner {
    /// The waiter a server at home on `home` goes to. In thread-per-core mode, the oldest waiter on the same core
    /// if one is near the front: handing it to another core costs a cross-thread wake-up and moving the socket to
    /// that core's runtime (two `epoll_ctl` calls), about half of all hand-overs at 100 clients on 2 cores. Never
    /// past a waiter already overtaken `MAX_OVERTAKEN` times, so nobody waits behind more than that many younger
    /// clients; the ones passed over are counted. Otherwise (and always in the work-stealing runtime) the oldest.
    fn next_waiter(&mut self, home: Option<u16>) -> Option<Waiter> {
        let at = match home {
            Some(home) => self
                .waiters
                .iter()
                .take(SAME_CORE_WINDOW)
                .position(|w| w.core == Some(home) || w.overtaken >= MAX_OVERTAKEN)
                .unwrap_or(0),
            None => 0,
        };
        for w in self.waiters.iter_mut().take(at) {
            w.overtaken += 1;
        }
        self.waiters.remove(at)
    }
}

#[derive(Default)]
struct Inner {
    idle: VecDeque<Lent>,
    waiters: VecDeque<Waiter>,
    /// Live connections: idle + lent + being opened.
    total: usize,
    connecting: usize,
}

pub struct Pool {
    pub database: String,
    pub user: String,
    pub target: ServerTarget,
    config: ArcSwap<PoolConfig>,
    inner: Mutex<Inner>,
    pub stats: PoolStats,
    params: Mutex<Option<Arc<BTreeMap<String, String>>>>,
    gate: Arc<PauseGate>,
    closed: AtomicBool,
    /// Statement texts some server of this pool accepted: a client's Parse of one is answered without a server.
    pub known_statements: super::statements::KnownStatements,
}

/// Gives a connection's place in the pool back when the connection is dropped, wherever that happens.
pub(crate) struct Slot {
    pool: Weak<Pool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.slot_closed();
        }
    }
}

/// A snapshot for SHOW POOLS.
#[derive(Clone, Debug)]
pub struct PoolSnapshot {
    pub total: usize,
    pub idle: usize,
    pub connecting: usize,
    pub waiting: usize,
    pub oldest_wait: Option<Duration>,
    pub idle_needing_check: usize,
}

impl Pool {
    pub fn new(
        database: String,
        user: String,
        target: ServerTarget,
        config: PoolConfig,
        gate: Arc<PauseGate>,
        tasks: &Arc<crate::supervisor::Tasks>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            database,
            user,
            target,
            config: ArcSwap::from_pointee(config),
            inner: Mutex::new(Inner::default()),
            stats: PoolStats::default(),
            params: Mutex::new(None),
            gate,
            closed: AtomicBool::new(false),
            known_statements: Default::default(),
        });
        Pool::spawn_janitor(&pool, tasks);
        pool
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.config.load_full()
    }

    pub fn set_config(&self, config: PoolConfig) {
        self.config.store(Arc::new(config));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this file; keep serving rather than poison everyone.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops lending connections and closes the idle ones; lent ones close when returned.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let (idle, waiters) = {
            let mut inner = self.lock();
            (
                std::mem::take(&mut inner.idle),
                std::mem::take(&mut inner.waiters),
            )
        };
        for w in waiters {
            let _ = w.tx.send(Err(PoolError::Closed));
        }
        drop(idle);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        let check_delay = self.config.load().check_delay;
        let inner = self.lock();
        PoolSnapshot {
            total: inner.total,
            idle: inner.idle.len(),
            connecting: inner.connecting,
            waiting: inner.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
            oldest_wait: inner
                .waiters
                .iter()
                .find(|w| !w.tx.is_closed())
                .map(|w| w.since.elapsed()),
            idle_needing_check: inner
                .idle
                .iter()
                .filter(|c| c.last_used.elapsed() >= check_delay)
                .count(),
        }
    }

    /// (id, address, backend pid) of idle connections, for SHOW SERVERS.
    pub fn idle_servers(&self) -> Vec<(u64, super::ServerAddr, i32)> {
        self.lock()
            .idle
            .iter()
            .map(|c| (c.id, c.addr.clone(), c.cancel_key.pid))
            .collect()
    }

    /// Borrows a server connection, waiting in line (FIFO) up to the checkout timeout.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lent, PoolError> {
        let started = Instant::now();
        // The common case, an idle connection that needs no health check, takes one lock and one clock read: no
        // config snapshot, no waiting counter, no wait time to add (it would be zero).
        if let Some(conn) = self.take_idle_fresh(started) {
            self.stats
                .server_assignment_count
                .fetch_add(1, Ordering::Relaxed);
            self.stats.wait_histogram.observe_immediate();
            return adopt(conn);
        }
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.checkout_inner().await.and_then(adopt);
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        if result.is_ok() {
            self.stats
                .server_assignment_count
                .fetch_add(1, Ordering::Relaxed);
        }
        let waited = started.elapsed();
        self.stats
            .wait_time_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.stats.wait_histogram.observe(waited);
        result
    }

    /// The most recently returned idle connection, if there is one that may be lent as it is (not paused or closed,
    /// within its lifetime, used recently enough to need no health check). Anything else goes the slow way. In
    /// thread-per-core mode, the most recent one at home on the calling core if there is one (no re-registration).
    fn take_idle_fresh(&self, now: Instant) -> Option<Lent> {
        if self.gate.is_paused() || self.is_closed() {
            return None;
        }
        let config = self.config.load();
        let mut inner = self.lock();
        let last = inner.idle.len().checked_sub(1)?;
        let at = match crate::cores::current() {
            Some(core) => inner
                .idle
                .iter()
                .rposition(|c| c.home == Some(core))
                .unwrap_or(last),
            None => last,
        };
        let conn = inner.idle.get(at)?;
        let expired = config
            .lifetime
            .is_some_and(|l| now.saturating_duration_since(conn.created) >= l);
        let needs_check = now.saturating_duration_since(conn.last_used) >= config.check_delay;
        if expired || needs_check {
            return None;
        }
        inner.idle.remove(at)
    }

    async fn checkout_inner(self: &Arc<Self>) -> Result<Lent, PoolError> {
        if self.gate.is_paused() {
            self.gate.wait_resumed().await;
        }
        let config = self.config.load_full();
        loop {
            if self.is_closed() {
                return Err(PoolError::Closed);
            }
            let idle = self.lock().idle.pop_back();
            if let Some(conn) = idle {
                match self.validate(conn, &config).await {
                    Some(conn) => return Ok(conn),
                    None => continue,
                }
            }
            let (rx, connect) = {
                let mut inner = self.lock();
                if let Some(conn) = inner.idle.pop_back() {
                    // Returned while we were validating: it was just in use, so it needs no check.
                    return Ok(conn);
                }
                let (tx, rx) = oneshot::channel();
                inner.waiters.push_back(Waiter {
                    tx,
                    since: Instant::now(),
                    core: crate::cores::current(),
                    overtaken: 0,
                });
                let connect = inner.total < config.settings.size;
                if connect {
                    inner.total += 1;
                    inner.connecting += 1;
                }
                (rx, connect)
            };
            if connect {
                self.spawn_connect();
            }
            return wait_for_handoff(rx, config.checkout_timeout).await;
        }
    }

    /// Decides whether an idle connection may be lent: not too old, and alive if it sat idle for a while.
    async fn validate(&self, mut conn: Lent, config: &PoolConfig) -> Option<Lent> {
        let now = Instant::now();
        if config
            .lifetime
            .is_some_and(|l| now.saturating_duration_since(conn.created) >= l)
        {
            return None;
        }
        if now.saturating_duration_since(conn.last_used) >= config.check_delay {
            let check = tokio::time::timeout(
                config.connect_timeout,
                conn.simple_query(&config.check_query),
            )
            .await;
            match check {
                Ok(Ok(None)) => conn.last_used = Instant::now(),
                _ => {
                    tracing::info!(
                        server = conn.id,
                        "health check failed; closing server connection"
                    );
                    return None;
                }
            }
        }
        Some(conn)
    }

    /// Returns a clean connection (transaction status idle, no replies pending): to the oldest waiter, else idle.
    pub fn checkin(&self, mut conn: Lent) {
        let config = self.config.load();
        let now = Instant::now();
        if conn.broken
            || self.is_closed()
            || config
                .lifetime
                .is_some_and(|l| now.saturating_duration_since(conn.created) >= l)
        {
            return; // dropping `conn` frees its slot
        }
        conn.last_used = now;
        let mut inner = self.lock();
        while let Some(w) = inner.next_waiter(conn.home) {
            match w.tx.send(Ok(conn)) {
                Ok(()) => return,
                Err(back) => match back {
                    Ok(c) => conn = c,
                    Err(_) => return,
                },
            }
        }
        if inner.total > config.settings.size {
            drop(inner); // shrunk by a reload: close the surplus
            return;
        }
        inner.idle.push_back(conn);
    }

    fn slot_closed(self: &Arc<Self>) {
        let mut inner = self.lock();
        inner.total = inner.total.saturating_sub(1);
        let size = self.config.load().settings.size;
        let wanted = inner.waiters.iter().any(|w| !w.tx.is_closed());
        if wanted && inner.total < size && !self.is_closed() {
            inner.total += 1;
            inner.connecting += 1;
            drop(inner);
            self.spawn_connect();
        }
    }

    fn spawn_connect(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let mut inner = self.lock();
            inner.total -= 1;
            inner.connecting -= 1;
            return;
        };
        rt.spawn(async move {
            let config = pool.config.load_full();
            let result = connect(&pool.target, config.connect_timeout, config.statement_capacity).await;
            match result {
                Ok(mut conn) => {
                    conn.slot = Some(Slot {
                        pool: Arc::downgrade(&pool),
                    });
                    pool.remember_params(&conn);
                    pool.lock().connecting -= 1;
                    pool.checkin(conn);
                }
                Err(e) => {
                    tracing::warn!(database = %pool.database, user = %pool.user, error = %e, "server connection failed");
                    let err = match (e.postgres_error(), e.client_error()) {
                        (Some(pg), _) => PoolError::ServerRefused {
                            code: pg.code.clone(),
                            message: pg.message.clone(),
                        },
                        (None, Some((code, message))) => PoolError::Insecure { code, message },
                        (None, None) => PoolError::Connect(e.to_string()),
                    };
                    let waiters = {
                        let mut inner = pool.lock();
                        inner.connecting -= 1;
                        inner.total -= 1;
                        // With no other connection alive nobody will come back to serve the queue: fail it now
                        // rather than let every client sit out the checkout timeout.
                        if inner.total == 0 {
                            std::mem::take(&mut inner.waiters)
                        } else {
                            VecDeque::new()
                        }
                    };
                    for w in waiters {
                        let _ = w.tx.send(Err(err.clone()));
                    }
                }
            }
        });
    }

    fn remember_params(&self, conn: &ServerConn) {
        let mut params = self.params.lock().unwrap_or_else(|p| p.into_inner());
        if params.is_none() {
            *params = Some(Arc::new(conn.reported.clone()));
        }
    }

    /// The ParameterStatus set a fresh server connection reports; clients get it at login. Connects once if needed.
    pub async fn server_params(
        self: &Arc<Self>,
    ) -> Result<Arc<BTreeMap<String, String>>, PoolError> {
        if let Some(p) = self
            .params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(p);
        }
        let conn = self.checkout().await?;
        let params = Arc::new(conn.reported.clone());
        self.checkin(conn);
        let mut slot = self.params.lock().unwrap_or_else(|p| p.into_inner());
        Ok(slot.get_or_insert(params).clone())
    }

    /// Closes idle connections past their idle timeout or lifetime and opens connections up to `min_pool_size`.
    fn maintain(self: &Arc<Self>) {
        let config = self.config.load_full();
        let mut expired = Vec::new();
        let mut to_open = 0;
        {
            let mut inner = self.lock();
            let min = config.settings.min_size;
            let mut keep = VecDeque::with_capacity(inner.idle.len());
            let mut live = inner.total;
            while let Some(conn) = inner.idle.pop_front() {
                let too_old = config.lifetime.is_some_and(|l| conn.created.elapsed() >= l);
                let too_idle = config
                    .idle_timeout
                    .is_some_and(|t| conn.last_used.elapsed() >= t)
                    && live > min;
                if too_old || too_idle {
                    live -= 1;
                    expired.push(conn);
                } else {
                    keep.push_back(conn);
                }
            }
            inner.idle = keep;
            if !self.is_closed() && live < min {
                to_open = min - live;
                inner.total += to_open;
                inner.connecting += to_open;
            }
        }
        drop(expired); // outside the lock: each slot re-locks
        for _ in 0..to_open {
            self.spawn_connect();
        }
    }

    /// Supervised: a janitor that died would leave expired servers open and the pool below its minimum for good.
    fn spawn_janitor(pool: &Arc<Pool>, tasks: &Arc<crate::supervisor::Tasks>) {
        let weak = Arc::downgrade(pool);
        let name = format!(
            "{}/{} {}:{}",
            pool.database, pool.user, pool.target.host, pool.target.port
        );
        tasks.spawn("pool janitor", name, move || {
            let weak = weak.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else {
                        return Ok(());
                    };
                    if pool.is_closed() {
                        return Ok(());
                    }
                    pool.maintain();
                }
            }
        });
    }
}

/// Moves a lent connection to the borrowing core (thread-per-core mode; a no-op otherwise), see `ServerConn::adopt`.
fn adopt(conn: Lent) -> Result<Lent, PoolError> {
    conn.adopt().map_err(|e| {
        tracing::warn!(error = %e, "could not move a server connection to this core; closed it");
        PoolError::Connect(format!("moving the connection to this core: {e}"))
    })
}

async fn wait_for_handoff(
    mut rx: oneshot::Receiver<Result<Lent, PoolError>>,
    timeout: Duration,
) -> Result<Lent, PoolError> {
    tokio::select! {
        r = &mut rx => r.unwrap_or(Err(PoolError::Closed)),
        _ = tokio::time::sleep(timeout) => {
            // A connection may have been handed over just as the timer fired: take it rather than drop it.
            rx.close();
            match rx.try_recv() {
                Ok(r) => r,
                Err(_) => Err(PoolError::Timeout(timeout)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(core: Option<u16>) -> (Waiter, oneshot::Receiver<Result<Lent, PoolError>>) {
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            tx,
            since: Instant::now(),
            core,
            overtaken: 0,
        };
        (w, rx)
    }

    fn queue(cores: &[Option<u16>]) -> (Inner, Vec<oneshot::Receiver<Result<Lent, PoolError>>>) {
        let mut inner = Inner::default();
        let mut rxs = Vec::new();
        for &c in cores {
            let (w, rx) = waiter(c);
            inner.waiters.push_back(w);
            rxs.push(rx);
        }
        (inner, rxs)
    }

    fn served(inner: &mut Inner, home: Option<u16>) -> Option<u16> {
        inner.next_waiter(home).and_then(|w| w.core)
    }

    #[test]
    fn work_stealing_serves_strictly_in_order() {
        let (mut inner, _rx) = queue(&[None, None]);
        assert!(inner.next_waiter(None).is_some());
        assert_eq!(inner.waiters.len(), 1);
    }

    #[test]
    fn a_server_prefers_a_waiter_on_its_core_but_overtakes_nobody_more_than_twice() {
        // Oldest first: core 1, then core 0 three times.
        let (mut inner, _rx) = queue(&[Some(1), Some(0), Some(0), Some(0)]);
        assert_eq!(served(&mut inner, Some(0)), Some(0));
        assert_eq!(served(&mut inner, Some(0)), Some(0));
        // The core-1 waiter has been overtaken twice: it is served next, whatever core the server is on.
        assert_eq!(served(&mut inner, Some(0)), Some(1));
        assert_eq!(served(&mut inner, Some(0)), Some(0));
        assert!(inner.next_waiter(Some(0)).is_none());
    }

    #[test]
    fn with_no_waiter_on_its_core_near_the_front_a_server_goes_to_the_oldest() {
        let mut cores = vec![Some(1); SAME_CORE_WINDOW];
        cores.push(Some(0));
        let (mut inner, _rx) = queue(&cores);
        assert_eq!(served(&mut inner, Some(0)), Some(1));
        assert_eq!(inner.waiters.iter().map(|w| w.overtaken).max(), Some(0));
    }
}
