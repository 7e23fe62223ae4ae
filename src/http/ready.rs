//! `/readyz`: whether a load balancer should send this instance clients. Ready means: not shutting down, every
//! sharded database's catalog loaded, and for every database (every shard of a sharded one) a server that takes
//! writes answers now. "Answers" is checked, not assumed: the pools only learn that a server died when a client
//! hits it, and only databases with replicas have a monitor. So each check logs in to the server the replication
//! monitor (or the config) says is the writer, with the monitor's credentials, and asks `pg_is_in_recovery()`.
//! Probes every few seconds from several load balancers must not turn into logins storms: one check runs at a time
//! and its answer is reused for `CACHE_FOR`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::backend::connect::connect;
use crate::backend::ServerTarget;
use crate::cluster::Cluster;
use crate::context::Context;

/// How long one check's answer is served to later probes.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Upper bound on a check of one server (a probe's own timeout is typically 1 to 5 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The last answer, behind an async lock that also makes concurrent probes wait for the check in flight.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// `Ok` when ready, else the reason (one line, for the 503 body).
    pub async fn check(&self, ctx: &Arc<Context>) -> Result<(), String> {
        // Shutdown is answered at once, not from the cache: load balancers should stop sending clients now.
        if ctx.is_shutting_down() {
            return Err("shutting down".into());
        }
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return answer.clone();
            }
        }
        let answer = evaluate(ctx).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

async fn evaluate(ctx: &Arc<Context>) -> Result<(), String> {
    let config = ctx.config();
    for (name, db) in &config.databases {
        if db.sharding.is_none() {
            continue;
        }
        match ctx.shard_router(name) {
            None => {
                return Err(format!(
                    "database {name}: sharding configuration not in use"
                ))
            }
            Some(r) if r.catalog().is_none() => {
                return Err(format!("database {name}: shard catalog not loaded yet"))
            }
            Some(_) => {}
        }
    }
    let login = crate::context::monitor_login(&config).map(|u| {
        (
            u.server_user().to_owned(),
            u.server_password().map(str::to_owned),
        )
    });
    let timeout = config.general.server_connect_timeout.0.min(PROBE_TIMEOUT);
    let mut checks = JoinSet::new();
    for cluster in ctx.clusters() {
        let Some(db) = config.databases.get(&cluster.database) else {
            continue;
        };
        let Some(shard_db) = db
            .shard_configs(&cluster.database)
            .into_iter()
            .nth(cluster.shard.unwrap_or(0) as usize)
        else {
            continue;
        };
        let server_database = shard_db
            .server_database
            .clone()
            .unwrap_or_else(|| cluster.database.clone());
        let login = login.clone();
        checks
            .spawn(async move { writer_answers(&cluster, server_database, login, timeout).await });
    }
    let mut first_error: Option<String> = None;
    while let Some(done) = checks.join_next().await {
        let outcome = done.unwrap_or_else(|e| Err(format!("readiness check failed: {e}")));
        if let Err(e) = outcome {
            // The first in name order, so the reason does not flip between probes when several are down.
            if first_error.as_ref().is_none_or(|f| e < *f) {
                first_error = Some(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether one of the servers the cluster believes writable takes writes now.
async fn writer_answers(
    cluster: &Cluster,
    database: String,
    login: Option<(String, Option<String>)>,
    timeout: Duration,
) -> Result<(), String> {
    let what = match cluster.shard {
        Some(s) => format!("database {} shard {s}", cluster.database),
        None => format!("database {}", cluster.database),
    };
    let candidates: Vec<_> = match cluster.writer() {
        Some(w) => vec![Arc::clone(&cluster.members[w])],
        None => cluster
            .members
            .iter()
            .filter(|m| m.writable())
            .cloned()
            .collect(),
    };
    if candidates.is_empty() {
        return Err(format!("{what}: no server takes writes"));
    }
    let mut last_error = String::new();
    for m in candidates {
        let addr = m.addr_text();
        let result = match &login {
            Some((user, password)) => {
                let target = ServerTarget {
                    host: m.host.clone(),
                    port: m.port,
                    database: database.clone(),
                    user: user.clone(),
                    password: password.clone(),
                };
                probe_login(&target, timeout).await
            }
            // No credentials to log in with: that the server accepts connections is all that can be known.
            None => tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map(drop).map_err(|e| e.to_string())),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) => last_error = format!("{what}: writer {addr} not reachable: {e}"),
        }
    }
    Err(last_error)
}

async fn probe_login(target: &ServerTarget, timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conn = connect(target, timeout, 1)
        .await
        .map_err(|e| e.to_string())?;
    let rows = tokio::time::timeout_at(deadline, conn.query_rows("SELECT pg_is_in_recovery()"))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let answer = rows.first().and_then(|r| r.first()).cloned().flatten();
    // A polite goodbye, so the server does not log an unexpected EOF for every probe.
    let mut bye = bytes::BytesMut::new();
    crate::protocol::frontend::write_terminate(&mut bye);
    let _ = tokio::time::timeout_at(deadline, conn.stream.write_all(&bye)).await;
    match answer.as_deref() {
        Some("f") => Ok(()),
        Some("t") => Err("in recovery (read-only)".into()),
        other => Err(format!("unexpected pg_is_in_recovery() answer {other:?}")),
    }
}
