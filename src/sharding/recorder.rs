//! Records directory entries for keys placed by the `unknown_keys = "hash"` policy, so a placement made by hash
//! becomes explicit in the catalog (other instances see it, and it no longer depends on the policy).
//!
//! Off the client's path: routing hands the key and the vshard it routed the row to over a bounded queue and goes
//! on; a background task writes it with `catalog::record_directory` (insert-if-absent, then read back). Keys already
//! queued are not queued again; when the queue is full the key is skipped (its next INSERT offers it again).
//! Two instances meeting the same new key compute the same hash vshard, so insert-if-absent makes them agree. An
//! entry set by hand between routing and recording wins: the recorder logs that the row went elsewhere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::catalog::{self, key_text};
use super::key::KeyValue;

/// Unrecorded keys waiting at most: a burst of new keys beyond this is recorded by their later INSERTs.
const QUEUE: usize = 1024;
/// Attempts per key while the catalog is unreachable (with doubling pauses from 100 ms).
const ATTEMPTS: u32 = 5;

struct Entry {
    map: String,
    key: KeyValue,
    vshard: u32,
}

/// What the recorder did, for logs and tests.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Entries this instance added.
    pub recorded: AtomicU64,
    /// Keys that already had an entry (another instance recorded them first, or the catalog reload was pending).
    pub present: AtomicU64,
    /// Keys whose entry names another vshard than the one their row went to.
    pub conflicts: AtomicU64,
    /// Keys not recorded: queue full, or the catalog kept failing.
    pub dropped: AtomicU64,
}

pub struct DirectoryRecorder {
    queue: mpsc::Sender<Entry>,
    /// (map, canonical key) queued or being written.
    pending: Arc<Mutex<HashSet<(String, String)>>>,
    pub stats: Arc<RecorderStats>,
}

impl DirectoryRecorder {
    /// Starts the background task (supervised: the queue outlives a failed run, which is restarted); it connects
    /// to the catalog with `pg` when it first has work.
    pub fn start(
        pg: tokio_postgres::Config,
        tasks: &Arc<crate::supervisor::Tasks>,
        database: &str,
    ) -> DirectoryRecorder {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let stats = Arc::new(RecorderStats::default());
        let (p, st) = (Arc::clone(&pending), Arc::clone(&stats));
        tasks.spawn("directory recorder", database, move || {
            run(pg.clone(), Arc::clone(&rx), Arc::clone(&p), Arc::clone(&st))
        });
        DirectoryRecorder {
            queue,
            pending,
            stats,
        }
    }

    /// Asks for `key` of directory `map` to be recorded at `vshard`, the vshard its row was routed to. Never waits.
    pub fn record(&self, map: &str, key: &KeyValue, vshard: u32) {
        let Some(text) = key_text(key) else { return };
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if !pending.insert((map.to_owned(), text.clone())) {
                return;
            }
        }
        let entry = Entry {
            map: map.to_owned(),
            key: key.clone(),
            vshard,
        };
        if self.queue.try_send(entry).is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(map.to_owned(), text));
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One run: records queued keys until every sender is gone (the router was dropped).
async fn run(
    pg: tokio_postgres::Config,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Entry>>>,
    pending: Arc<Mutex<HashSet<(String, String)>>>,
    stats: Arc<RecorderStats>,
) -> crate::supervisor::RunResult {
    let mut rx = rx.lock().await;
    let mut client: Option<Client> = None;
    while let Some(entry) = rx.recv().await {
        write(&pg, &mut client, &entry, &stats).await;
        if let Some(text) = key_text(&entry.key) {
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(entry.map, text));
        }
    }
    Ok(())
}

async fn write(
    pg: &tokio_postgres::Config,
    client: &mut Option<Client>,
    e: &Entry,
    stats: &RecorderStats,
) {
    let mut pause = Duration::from_millis(100);
    for _ in 0..ATTEMPTS {
        if client.as_ref().is_none_or(Client::is_closed) {
            *client = connect(pg).await;
        }
        if let Some(c) = client.as_mut() {
            match catalog::record_directory(c, &e.map, &e.key, e.vshard).await {
                Ok((v, Some(epoch))) => {
                    stats.recorded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(map = %e.map, vshard = v, epoch, "recorded a directory key placed by hash");
                    return;
                }
                Ok((v, None)) if v == e.vshard => {
                    stats.present.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok((v, None)) => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        map = %e.map,
                        routed_to = e.vshard,
                        directory = v,
                        "a key placed by hash got a directory entry for another vshard meanwhile; the entry wins \
                         for later statements, the rows already written stay on the hashed vshard's shard"
                    );
                    return;
                }
                Err(err) if !c.is_closed() => {
                    // The catalog answered but refused (not initialised, map missing...): retrying will not help.
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(map = %e.map, error = %err, "cannot record a directory key");
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "catalog connection lost while recording a key")
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    stats.dropped.fetch_add(1, Ordering::Relaxed);
}

async fn connect(pg: &tokio_postgres::Config) -> Option<Client> {
    match pg.connect(NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "directory recorder connection ended");
                }
            });
            Some(client)
        }
        Err(e) => {
            tracing::warn!(error = %e, "directory recorder cannot reach the catalog");
            None
        }
    }
}
