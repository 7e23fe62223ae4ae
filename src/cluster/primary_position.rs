//! The primary's current WAL position on demand, for `read_all_writes` reads: before such a read runs, shardpool asks
//! the primary where its WAL is, and only a replica that has replayed that far may serve the read. The question is
//! asked on a connection of its own (like the monitor's, so it never waits behind client traffic in the pools), and
//! it is *shared*: every read that asks while a question is in flight is answered by the next one, so any number of
//! concurrent reads cost one round trip to the primary per batch, not one each.
//!
//! Correctness rests on one rule: a read is answered only by a question sent *after* it asked (its ticket is at most
//! the ticket count the question was sent with). The answer then covers every transaction that had committed when
//! the read started, whoever made it: another shardpool instance, or a client connected straight to the primary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::monitor::LoginFor;
use super::{lsn, Cluster};
use crate::backend::connect::connect;
use crate::backend::ServerConn;

/// The flush position: with synchronous commit (the default) a commit returns only once its WAL is flushed, and
/// flushed WAL is all a replica can ever have, so this is the least position that covers every returned commit.
const POSITION_SQL: &str = "SELECT pg_current_wal_flush_lsn()";

/// The last answer: which tickets it covers and the position (`None`: the primary could not be asked).
#[derive(Clone, Copy, Debug, Default)]
struct Answer {
    covers: u64,
    lsn: Option<u64>,
}

/// One cluster's shared question to its primary.
#[derive(Debug)]
pub struct PrimaryPosition {
    /// Tickets handed out so far; a reader's ticket is this count after its increment.
    tickets: AtomicU64,
    wake: Notify,
    answers: watch::Sender<Answer>,
    /// Questions sent to the primary (SHOW REPLICAS `position_queries`): reads per question is the batching.
    pub queries: AtomicU64,
    /// Questions that failed (SHOW REPLICAS `position_errors`); their readers used the primary.
    pub errors: AtomicU64,
    /// Whether a task answers questions (none without monitor credentials): if not, nobody waits for one.
    serving: AtomicBool,
}

impl Default for PrimaryPosition {
    fn default() -> Self {
        PrimaryPosition {
            tickets: AtomicU64::new(0),
            wake: Notify::new(),
            answers: watch::channel(Answer::default()).0,
            queries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            serving: AtomicBool::new(false),
        }
    }
}

impl PrimaryPosition {
    /// The primary's WAL position as of some moment after this call began, or `None` if it could not be had
    /// within `wait` (the caller then reads from the primary itself).
    pub async fn current(&self, wait: Duration) -> Option<u64> {
        if !self.serving.load(Ordering::Relaxed) {
            return None;
        }
        let mut answers = self.answers.subscribe();
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let answered = tokio::time::timeout(wait, answers.wait_for(|a| a.covers >= ticket)).await;
        match answered {
            Ok(Ok(a)) => a.lsn,
            _ => None,
        }
    }
}

/// Answers the cluster's position questions until the cluster is retired. Failures are logged, counted, answered
/// with `None` (those reads use the primary) and retried with back-off; the task itself never ends early.
pub async fn serve(cluster: Arc<Cluster>, login: LoginFor) {
    let asked = &cluster.primary_position;
    asked.serving.store(true, Ordering::Relaxed);
    let mut conn: Option<(usize, Box<ServerConn>)> = None;
    let mut covered = 0u64;
    let mut backoff = Duration::ZERO;
    let timeout = login.connect_timeout.max(Duration::from_secs(1));
    while !cluster.is_retired() {
        let wanted = asked.tickets.load(Ordering::SeqCst);
        if wanted <= covered {
            // Nobody is waiting: sleep until someone asks (or, now and then, to notice retirement).
            let _ = tokio::time::timeout(Duration::from_secs(1), asked.wake.notified()).await;
            continue;
        }
        // Every ticket up to `wanted` was taken before the question below is sent.
        let lsn = match ask(&cluster, &login, &mut conn, timeout).await {
            Ok(p) => {
                backoff = Duration::ZERO;
                Some(p)
            }
            Err(e) => {
                conn = None;
                asked.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(database = %cluster.database, error = %e, "could not read the primary's WAL position; those reads use the primary");
                None
            }
        };
        covered = wanted;
        asked.answers.send_replace(Answer {
            covers: wanted,
            lsn,
        });
        if lsn.is_none() {
            // Not hammered while down: readers asking meanwhile wait at most their own bound, then use the primary.
            backoff = (backoff * 2).max(cluster.settings.poll_interval).min(
                cluster
                    .settings
                    .ban_time
                    .max(cluster.settings.poll_interval),
            );
            tokio::time::sleep(backoff).await;
        }
    }
}

async fn ask(
    cluster: &Cluster,
    login: &LoginFor,
    conn: &mut Option<(usize, Box<ServerConn>)>,
    timeout: Duration,
) -> Result<u64, String> {
    let writer = cluster
        .writer()
        .ok_or("no server accepts writes (all are in recovery)")?;
    if conn.as_ref().is_some_and(|(m, _)| *m != writer) {
        *conn = None; // the writer changed (failover): ask the new one
    }
    if conn.is_none() {
        let target = login.target(&cluster.members[writer]);
        let c = connect(&target, timeout, 1)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        *conn = Some((writer, c));
    }
    let Some((_, c)) = conn.as_mut() else {
        return Err("no connection".into());
    };
    cluster
        .primary_position
        .queries
        .fetch_add(1, Ordering::Relaxed);
    let rows = tokio::time::timeout(timeout, c.query_rows(POSITION_SQL))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    rows.first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
        .and_then(lsn::parse)
        .ok_or_else(|| "unexpected answer to pg_current_wal_flush_lsn()".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tickets taken while a question is in flight are answered by the next question, not by that one.
    #[tokio::test]
    async fn a_reader_is_answered_only_by_a_question_sent_after_it_asked() {
        let p = Arc::new(PrimaryPosition::default());
        p.serving.store(true, Ordering::Relaxed);
        // A question went out covering ticket 1 only...
        p.tickets.fetch_add(1, Ordering::SeqCst);
        let reader = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.current(Duration::from_secs(5)).await })
        };
        while p.tickets.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        // ...its answer does not satisfy the reader, who asked later (ticket 2).
        p.answers.send_replace(Answer {
            covers: 1,
            lsn: Some(10),
        });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        p.answers.send_replace(Answer {
            covers: 2,
            lsn: Some(20),
        });
        assert_eq!(reader.await.unwrap(), Some(20));
        // Nobody answers: the reader gives up within its bound; with no task to answer, it does not wait at all.
        assert_eq!(p.current(Duration::from_millis(10)).await, None);
        p.serving.store(false, Ordering::Relaxed);
        assert_eq!(p.current(Duration::from_secs(3600)).await, None);
    }
}
