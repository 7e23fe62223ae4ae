//! Keeps a shardpool instance's [`Catalog`] snapshot current, so all instances sharing a catalog route alike.
//!
//! One dedicated connection LISTENs on `shardpool_catalog`; a notification carrying a newer epoch triggers a full
//! reload. Notifications are lost while the connection is down, so every `check_interval` the follower also reads
//! the epoch (one-row query) and reloads when it differs, and after a reconnect (with exponential backoff) it
//! compares epochs right away. A reload builds a complete new snapshot and swaps it in one atomic store: a router
//! holding the previous `Arc<Catalog>` keeps a consistent, if stale, view until its next `current()`.
//!
//! After every load and every periodic check the follower also writes the epoch it routes by into
//! `shardpool.instances` under its own id, with a lease of three check intervals: a remap's cutover waits for every
//! instance whose lease is alive to acknowledge the epoch that froze or moved vshards, and ignores dead ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::catalog::{self, Catalog, CatalogError, CHANNEL};
use super::remap::state;
use crate::config::sharding::ShardingConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowOptions {
    /// How often the epoch is compared even without notifications.
    pub check_interval: Duration,
    /// First wait before reconnecting; doubles per failed attempt.
    pub min_backoff: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            check_interval: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl FollowOptions {
    /// Defaults, with the check interval a sharded database's config asks for.
    pub fn for_config(cfg: &ShardingConfig) -> FollowOptions {
        FollowOptions {
            check_interval: cfg.check_interval(),
            ..FollowOptions::default()
        }
    }
}

/// What made the follower reload, counted for SHOW commands and for tests that must tell the paths apart.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Reloads triggered by a notification.
    pub notified: AtomicU64,
    /// Reloads triggered by the periodic epoch check or the check after a reconnect.
    pub checked: AtomicU64,
    /// Successful reconnects after the LISTEN connection was lost.
    pub reconnects: AtomicU64,
    /// Acknowledgements (epoch heartbeats) that could not be written.
    pub heartbeat_failures: AtomicU64,
    /// Reloads that failed with the server answering (a corrupt or unreadable catalog): routing went on with the
    /// last good snapshot.
    pub failed: AtomicU64,
    /// Why the last reload failed; cleared by the next good one.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl FollowStats {
    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A running follower. Dropping it stops the task too; `shutdown` also waits for it.
pub struct CatalogFollower {
    instance: String,
    current: Arc<ArcSwap<Catalog>>,
    epochs: watch::Receiver<i64>,
    stats: Arc<FollowStats>,
    stop: watch::Sender<bool>,
    /// `None` once a supervisor took it to learn how the task ends.
    task: Option<JoinHandle<()>>,
}

impl CatalogFollower {
    /// Connects, LISTENs and loads the catalog; fails if any of that fails, so an instance never starts routing
    /// without a catalog.
    pub async fn start(
        mut pg: tokio_postgres::Config,
        opts: FollowOptions,
    ) -> Result<CatalogFollower, CatalogError> {
        if pg.get_application_name().is_none() {
            pg.application_name("shardpool catalog follower");
        }
        let mut listener = Listener::connect(&pg).await?;
        let first = catalog::load(&mut listener.client).await?;
        let instance = instance_id();
        let stats = Arc::new(FollowStats::default());
        let lease = lease_ms(&opts);
        if let Err(e) = state::heartbeat(&listener.client, &instance, first.epoch, lease).await {
            stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot acknowledge the catalog epoch (remaps will wait for this instance's lease)");
        }
        let (epoch_tx, epochs) = watch::channel(first.epoch);
        let current = Arc::new(ArcSwap::from_pointee(first));
        let (stop, stopped) = watch::channel(false);
        let task = Follow {
            instance: instance.clone(),
            pg,
            opts,
            current: current.clone(),
            epochs: epoch_tx,
            stats: stats.clone(),
            stopped,
        };
        let task = tokio::spawn(task.run(listener));
        Ok(CatalogFollower {
            instance,
            current,
            epochs,
            stats,
            stop,
            task: Some(task),
        })
    }

    /// The latest snapshot. Cheap (an atomic load and a reference count); call it once per routing decision.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// The swap cell itself, for a shared context that hands snapshots to routers without the follower.
    pub fn shared(&self) -> Arc<ArcSwap<Catalog>> {
        self.current.clone()
    }

    /// Changes to the epoch of the current snapshot: lets a caller wait for a change instead of polling.
    pub fn epochs(&self) -> watch::Receiver<i64> {
        self.epochs.clone()
    }

    pub fn stats(&self) -> &FollowStats {
        &self.stats
    }

    /// The id this instance acknowledges catalog epochs under (`shardpool.instances.id`).
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The counters, shared, for the admin console.
    pub fn shared_stats(&self) -> Arc<FollowStats> {
        Arc::clone(&self.stats)
    }

    /// The task itself, for a supervisor that must know whether it ended by a panic. After this, `shutdown`
    /// still stops the task but cannot wait for it.
    pub fn take_task(&mut self) -> Option<JoinHandle<()>> {
        self.task.take()
    }

    /// Stops following and waits for the task (and its connection) to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// The LISTEN connection: a client for queries, and the notifications its connection task forwards.
struct Listener {
    client: Client,
    /// Epochs from notification payloads; `None` for a payload that is not a number (still worth a check).
    notes: mpsc::UnboundedReceiver<Option<i64>>,
    driver: JoinHandle<()>,
}

impl Listener {
    async fn connect(pg: &tokio_postgres::Config) -> Result<Listener, CatalogError> {
        let (client, mut conn) = pg.connect(NoTls).await?;
        let (tx, notes) = mpsc::unbounded_channel();
        // `poll_message`, not awaiting the connection: that is the only way tokio-postgres hands out notifications.
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                        if tx.send(n.payload().parse::<i64>().ok()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "catalog LISTEN connection failed");
                        break;
                    }
                }
            }
        });
        let listener = Listener {
            client,
            notes,
            driver,
        };
        listener
            .client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await?;
        Ok(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Follow {
    instance: String,
    pg: tokio_postgres::Config,
    opts: FollowOptions,
    current: Arc<ArcSwap<Catalog>>,
    epochs: watch::Sender<i64>,
    stats: Arc<FollowStats>,
    stopped: watch::Receiver<bool>,
}

/// Why a listening session ended.
enum End {
    Stop,
    Lost,
}

impl Follow {
    async fn run(mut self, first: Listener) {
        let mut listener = first;
        loop {
            if let End::Stop = self.listen(&mut listener).await {
                return;
            }
            drop(listener);
            listener = match self.reconnect().await {
                Some(l) => l,
                None => return,
            };
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            // Whatever was notified while we were away is lost: compare epochs now.
            if let Err(e) = self.check(&mut listener.client).await {
                tracing::warn!(error = %e, "catalog check after reconnect failed");
            }
        }
    }

    /// Serves one connection until it is lost or the follower stops.
    async fn listen(&mut self, listener: &mut Listener) -> End {
        let period = self.opts.check_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                _ = self.stopped.changed() => return End::Stop,
                note = listener.notes.recv() => match note {
                    None => return End::Lost,
                    Some(mut newest) => {
                        // A burst of changes needs one reload, of the newest state.
                        while let Ok(more) = listener.notes.try_recv() {
                            newest = match (newest, more) {
                                (Some(a), Some(b)) => Some(a.max(b)),
                                _ => None,
                            };
                        }
                        self.notified(&mut listener.client, newest).await
                    }
                },
                _ = tick.tick() => self.check(&mut listener.client).await,
            };
            if let Err(e) = result {
                if listener.client.is_closed() {
                    tracing::warn!(error = %e, "catalog connection lost; reconnecting");
                    return End::Lost;
                }
                // The server answered but the catalog is unusable: keep routing with the last good snapshot.
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.set_error(Some(e.to_string()));
                tracing::error!(error = %e, "catalog reload failed; keeping epoch {}", self.current.load().epoch);
            }
        }
    }

    async fn notified(&self, client: &mut Client, epoch: Option<i64>) -> Result<(), CatalogError> {
        let current = self.current.load().epoch;
        match epoch {
            Some(e) if e <= current => Ok(()),
            Some(_) => self.reload(client, &self.stats.notified).await,
            None => self.check(client).await,
        }
    }

    /// Reloads when the catalog's epoch differs from ours. "Differs", not "is newer": a catalog dropped and
    /// re-initialised starts again at a low epoch and is still the truth.
    async fn check(&self, client: &mut Client) -> Result<(), CatalogError> {
        if catalog::epoch(client).await? != self.current.load().epoch {
            self.reload(client, &self.stats.checked).await?;
        } else {
            self.acknowledge(client).await;
        }
        Ok(())
    }

    /// Tells remaps which epoch this instance routes by; a failure only delays them (they wait for the lease).
    async fn acknowledge(&self, client: &Client) {
        let epoch = self.current.load().epoch;
        if let Err(e) = state::heartbeat(client, &self.instance, epoch, lease_ms(&self.opts)).await
        {
            self.stats
                .heartbeat_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, epoch, "cannot acknowledge the catalog epoch");
        }
    }

    /// Loads and swaps in a new snapshot, counting it under `cause` first so that whoever wakes on the epoch
    /// change sees the count too.
    async fn reload(&self, client: &mut Client, cause: &AtomicU64) -> Result<(), CatalogError> {
        let fresh = catalog::load(client).await?;
        let epoch = fresh.epoch;
        cause.fetch_add(1, Ordering::Relaxed);
        self.stats.set_error(None);
        self.current.store(Arc::new(fresh));
        self.epochs.send_replace(epoch);
        tracing::info!(epoch, "catalog reloaded");
        self.acknowledge(client).await;
        Ok(())
    }

    /// Reconnects with exponential backoff; `None` when asked to stop meanwhile.
    async fn reconnect(&mut self) -> Option<Listener> {
        let mut delay = self.opts.min_backoff;
        loop {
            tokio::select! {
                _ = self.stopped.changed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            match Listener::connect(&self.pg).await {
                Ok(l) => return Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "catalog reconnect failed");
                    delay = (delay * 2).min(self.opts.max_backoff);
                }
            }
        }
    }
}

/// An instance's acknowledgement lasts three check intervals: long enough that a live instance always renews it,
/// short enough that a remap does not wait long for a dead one.
fn lease_ms(opts: &FollowOptions) -> u32 {
    u32::try_from(opts.check_interval.as_millis().saturating_mul(3)).unwrap_or(u32::MAX)
}

/// A name unique to this follower: host process, start time and a counter (several routers share a process).
fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "pid{}-{started}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
