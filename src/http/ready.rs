//! `/readyz`: whether a load balancer should send this instance clients. Ready means: not shutting down, every
//! sharded database's catalog loaded, and for every database (every shard of a sharded one) a server that takes
//! writes answers now. "Answers" is checked, not assumed: the pools only learn that a server died when a client
//! hits it, and only databases with replicas have a monitor. So each check asks the server the replication monitor
//! (or the config) names as the writer `SELECT pg_is_in_recovery()`, over a connection of its own logged in with
//! the monitor's credentials and kept between checks (a probe every few seconds costs a query, not a login and a
//! backend start). Probes from several load balancers must not multiply that: one check runs at a time and its
//! answer is reused for `CACHE_FOR`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::backend::connect::connect;
use crate::backend::{ServerConn, ServerTarget};
use crate::cluster::Cluster;
use crate::context::Context;

/// How long one check's answer is served to later probes.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Upper bound on the question to an already connected server (a login is bounded by `server_connect_timeout`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe connections by "host:port/database".
type Connections = HashMap<String, Box<ServerConn>>;

#[derive(Default)]
struct State {
    last: Option<(Instant, Result<(), String>)>,
    connections: Connections,
}

/// The last answer and the probe connections, behind an async lock that also makes concurrent probes wait for the
/// check in flight.
#[derive(Default)]
pub struct Readiness {
    state: tokio::sync::Mutex<State>,
}

impl Readiness {
    /// `Ok` when ready, else the reason (one line, for the 503 body).
    pub async fn check(&self, ctx: &Arc<Context>) -> Result<(), String> {
        // Shutdown is answered at once, not from the cache: load balancers should stop sending clients now.
        if ctx.is_shutting_down() {
            return Err("shutting down".into());
        }
        let mut state = self.state.lock().await;
        if let Some((at, answer)) = state.last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return answer.clone();
            }
        }
        let connections = std::mem::take(&mut state.connections);
        let (answer, kept) = evaluate(ctx, connections).await;
        state.connections = kept;
        state.last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// The answer, and the probe connections still usable.
async fn evaluate(
    ctx: &Arc<Context>,
    mut connections: Connections,
) -> (Result<(), String>, Connections) {
    let config = ctx.config();
    for (name, db) in &config.databases {
        if db.sharding.is_none() {
            continue;
        }
        let problem = match ctx.shard_router(name) {
            None => Some("sharding configuration not in use"),
            Some(r) if r.catalog().is_none() => Some("shard catalog not loaded yet"),
            Some(_) => None,
        };
        if let Some(p) = problem {
            return (Err(format!("database {name}: {p}")), connections);
        }
    }
    let login = crate::context::monitor_login(&config).map(|u| {
        (
            u.server_user().to_owned(),
            u.server_password().map(str::to_owned),
        )
    });
    let connect_timeout = config.general.server_connect_timeout.0;
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
        let mine: Connections = cluster
            .members
            .iter()
            .filter_map(|m| {
                let key = format!("{}/{server_database}", m.addr_text());
                connections.remove_entry(&key)
            })
            .collect();
        let login = login.clone();
        let security = config.server_security(&shard_db);
        checks.spawn(async move {
            writer_answers(
                &cluster,
                server_database,
                login,
                security,
                connect_timeout,
                mine,
            )
            .await
        });
    }
    let mut first_error: Option<String> = None;
    let mut kept = Connections::new();
    while let Some(done) = checks.join_next().await {
        let outcome = match done {
            Ok((outcome, still_good)) => {
                kept.extend(still_good);
                outcome
            }
            Err(e) => Err(format!("readiness check failed: {e}")),
        };
        if let Err(e) = outcome {
            // The first in name order, so the reason does not flip between probes when several are down.
            if first_error.as_ref().is_none_or(|f| e < *f) {
                first_error = Some(e);
            }
        }
    }
    (first_error.map_or(Ok(()), Err), kept)
}

/// Whether one of the servers the cluster believes writable takes writes now; with the connections still usable.
async fn writer_answers(
    cluster: &Cluster,
    database: String,
    login: Option<(String, Option<String>)>,
    security: (
        crate::backend::tls::ServerTls,
        crate::backend::auth_exchange::ServerAuthPolicy,
    ),
    connect_timeout: Duration,
    mut connections: Connections,
) -> (Result<(), String>, Connections) {
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
        return (Err(format!("{what}: no server takes writes")), connections);
    }
    let mut last_error = String::new();
    for m in candidates {
        let addr = m.addr_text();
        let result = match &login {
            Some((user, password)) => {
                let key = format!("{addr}/{database}");
                let target = ServerTarget {
                    host: m.host.clone(),
                    port: m.port,
                    database: database.clone(),
                    user: user.clone(),
                    password: password.clone(),
                    credential: None,
                    tls: security.0.clone(),
                    auth: security.1,
                };
                let (result, conn) =
                    probe(&target, connections.remove(&key), connect_timeout).await;
                if let Some(c) = conn {
                    connections.insert(key, c);
                }
                result
            }
            // No credentials to log in with: that the server accepts connections is all that can be known. The
            // connection is opened as the pools open theirs (a socket directory as host, TLS as configured).
            None => tokio::time::timeout(
                connect_timeout,
                crate::backend::transport::open(&m.host, m.port, &security.0),
            )
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map(drop).map_err(|e| e.to_string())),
        };
        match result {
            Ok(()) => return (Ok(()), connections),
            Err(e) => last_error = format!("{what}: writer {addr} not reachable: {e}"),
        }
    }
    (Err(last_error), connections)
}

/// Asks `pg_is_in_recovery()` on `existing`, or (if there is none or it failed) on a new connection. Returns the
/// verdict and the connection if it is still usable.
async fn probe(
    target: &ServerTarget,
    existing: Option<Box<ServerConn>>,
    connect_timeout: Duration,
) -> (Result<(), String>, Option<Box<ServerConn>>) {
    if let Some(mut conn) = existing {
        if let Ok(answer) = ask(&mut conn).await {
            return (judge(answer), Some(conn));
        }
        // Dead (server restarted, connection killed): log in again below.
    }
    let mut conn = match connect(target, connect_timeout, 1).await {
        Ok(c) => c,
        Err(e) => return (Err(e.to_string()), None),
    };
    match ask(&mut conn).await {
        Ok(answer) => (judge(answer), Some(conn)),
        Err(e) => (Err(e), None),
    }
}

async fn ask(conn: &mut ServerConn) -> Result<Option<String>, String> {
    let rows = tokio::time::timeout(QUERY_TIMEOUT, conn.query_rows("SELECT pg_is_in_recovery()"))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(rows.first().and_then(|r| r.first()).cloned().flatten())
}

fn judge(answer: Option<String>) -> Result<(), String> {
    match answer.as_deref() {
        Some("f") => Ok(()),
        Some("t") => Err("in recovery (read-only)".into()),
        other => Err(format!("unexpected pg_is_in_recovery() answer {other:?}")),
    }
}
