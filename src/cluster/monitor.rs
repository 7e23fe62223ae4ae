//! The replication monitor: one task per server of a database with replicas, each on its own dedicated connection,
//! asking every `replica_poll_interval` (or at once when a reader is waiting for a replica to catch up) whether the
//! server is in recovery and where its WAL is. Dedicated connections, because the answer must not wait behind client
//! traffic in the pools, and a pool's health says nothing about replication.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{lsn, Cluster, Member, Recovery};
use crate::backend::connect::connect;
use crate::backend::{ServerConn, ServerTarget};
use crate::supervisor::Tasks;

/// One round's question. On a primary, the flush position: WAL that replicas can have (what staleness is measured
/// against).
const POLL_SQL: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
    THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END";

/// Every function name with whether any of its overloads is volatile, for statement classification.
const VOLATILITY_SQL: &str = "SELECT n.nspname::text, p.proname::text, bool_or(p.provolatile = 'v') \
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace GROUP BY 1, 2";

/// Starts one supervised monitor task per member (a panicking poll restarts the task instead of leaving the
/// replica's lag unmeasured for ever). They stop when the cluster is retired (reload) or the runtime ends.
pub fn spawn(cluster: &Arc<Cluster>, login: LoginFor, tasks: &Arc<Tasks>) {
    for (i, member) in cluster.members.iter().enumerate() {
        let target = login.target(member);
        let name = format!("{} {}", cluster.database, member.addr_text());
        let (cluster, member) = (Arc::clone(cluster), Arc::clone(member));
        tasks.spawn("replica monitor", name, move || {
            let (cluster, member, target) =
                (Arc::clone(&cluster), Arc::clone(&member), target.clone());
            async move {
                watch_member(cluster, i, member, target).await;
                Ok(())
            }
        });
    }
    // The question read_all_writes reads ask the primary: supervised like the monitors (a panic restarts it).
    let name = format!("{} primary position", cluster.database);
    let cluster = Arc::clone(cluster);
    tasks.spawn("primary position", name, move || {
        let (cluster, login) = (Arc::clone(&cluster), login.clone());
        async move {
            super::primary_position::serve(cluster, login).await;
            Ok(())
        }
    });
}

/// The credentials and database the monitor logs in with.
#[derive(Clone, Debug)]
pub struct LoginFor {
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    /// TLS and password policy, as for the pools of the same database.
    pub security: (
        crate::backend::tls::ServerTls,
        crate::backend::auth_exchange::ServerAuthPolicy,
    ),
}

impl LoginFor {
    pub(super) fn target(&self, m: &Member) -> ServerTarget {
        ServerTarget {
            host: m.host.clone(),
            port: m.port,
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            credential: None,
            tls: self.security.0.clone(),
            auth: self.security.1,
        }
    }
}

async fn watch_member(
    cluster: Arc<Cluster>,
    index: usize,
    member: Arc<Member>,
    target: ServerTarget,
) {
    let interval = cluster.settings.poll_interval;
    let poll_timeout = (interval * 5).max(Duration::from_secs(1));
    let mut conn: Option<Box<ServerConn>> = None;
    let mut backoff = interval;
    while !cluster.is_retired() {
        let seen_kicks = cluster.kicks.load(Ordering::Relaxed);
        let ok = match poll_once(&cluster, index, &member, &target, &mut conn, poll_timeout).await {
            Ok(()) => true,
            Err(e) => {
                conn = None;
                member.polls_failed.fetch_add(1, Ordering::Relaxed);
                if index != 0 || !member.configured_primary {
                    cluster.ban(&member, &e);
                } else {
                    member.set_error(Some(e.clone()));
                    tracing::warn!(database = %cluster.database, server = %member.addr_text(), error = %e, "primary poll failed");
                }
                false
            }
        };
        cluster.round.send_modify(|r| *r += 1);
        // Wait for the next tick or a kick; a kick that came during the poll means someone is waiting: go again.
        let notified = cluster.kick.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ok && cluster.kicks.load(Ordering::Relaxed) != seen_kicks {
            tokio::task::yield_now().await;
            continue;
        }
        let wait = if ok {
            backoff = interval;
            interval
        } else {
            // A down server is retried at a slower pace, up to the ban time, so it is not hammered.
            backoff = (backoff * 2).min(cluster.settings.ban_time.max(interval));
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut notified, if ok => {}
        }
    }
}

async fn poll_once(
    cluster: &Cluster,
    index: usize,
    member: &Member,
    target: &ServerTarget,
    conn: &mut Option<Box<ServerConn>>,
    timeout: Duration,
) -> Result<(), String> {
    if conn.is_none() {
        let c = connect(target, timeout, 1)
            .await
            .map_err(|e| format!("monitor connect: {e}"))?;
        *conn = Some(c);
        if index == 0 {
            if let Some(c) = conn.as_mut() {
                load_functions(cluster, c, timeout).await;
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return Err("no monitor connection".into());
    };
    let poll = member.polls_started.fetch_add(1, Ordering::SeqCst) + 1;
    let rows = tokio::time::timeout(timeout, c.query_rows(POLL_SQL))
        .await
        .map_err(|_| "monitor poll timed out".to_string())?
        .map_err(|e| format!("monitor poll: {e}"))?;
    let row = rows.first().ok_or("monitor poll returned no row")?;
    let in_recovery = match row.first().and_then(|v| v.as_deref()) {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("unexpected pg_is_in_recovery() value {other:?}")),
    };
    let position = row.get(1).and_then(|v| v.as_deref()).and_then(lsn::parse);
    let now = cluster.clock.now_ms();
    let before = member.recovery();
    member.set_recovery(if in_recovery {
        Recovery::InRecovery
    } else {
        Recovery::NotInRecovery
    });
    if before != Recovery::Unknown && before != member.recovery() {
        tracing::warn!(
            database = %cluster.database,
            server = %member.addr_text(),
            role = member.role(),
            "server changed role"
        );
    }
    if let Some(p) = position {
        member.lsn.fetch_max(p, Ordering::SeqCst);
        member.lsn_poll.fetch_max(poll, Ordering::SeqCst);
    }
    if in_recovery {
        let replayed = member.lsn.load(Ordering::Relaxed);
        if let Some(latest) = cluster.history.latest() {
            member
                .lag_bytes
                .store(latest.saturating_sub(replayed), Ordering::Relaxed);
        }
        if let Some(t) = cluster.history.fresh_as_of(replayed) {
            member.fresh_as_of_ms.fetch_max(t, Ordering::Relaxed);
        }
    } else if cluster.writer() == Some(index) {
        if let Some(p) = position {
            cluster.history.record(p, now);
        }
        member.lag_bytes.store(0, Ordering::Relaxed);
        member.fresh_as_of_ms.store(now, Ordering::Relaxed);
    }
    member.set_error(None);
    Ok(())
}

/// Loads the volatile function names from the primary, for statement classification. Failure keeps the
/// conservative default (every unknown function is a write) and is only logged.
async fn load_functions(cluster: &Cluster, conn: &mut ServerConn, timeout: Duration) {
    let rows = match tokio::time::timeout(timeout, conn.query_rows(VOLATILITY_SQL)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::warn!(database = %cluster.database, error = %e, "could not load function volatility");
            return;
        }
        Err(_) => return,
    };
    let names = rows.iter().filter_map(|r| match r.as_slice() {
        [Some(schema), Some(name), Some(volatile)] => {
            Some((schema.as_str(), name.as_str(), volatile == "t"))
        }
        _ => None,
    });
    let (volatile, read_only) = &cluster.function_overrides;
    let loaded = crate::router::classify::FunctionVolatility::from_catalog(names)
        .with_overrides(volatile, read_only);
    tracing::debug!(database = %cluster.database, "loaded function volatility from pg_proc");
    cluster.functions.store(Arc::new(loaded));
}
