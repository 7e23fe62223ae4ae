//! SHOW commands. Column names follow PgBouncer's console (docs: "usage.html#admin-console") where the concept
//! matches; values that shardpool does not have (most cancel-request counters, reserve pools) are reported as 0.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{AdminError, Output};
use crate::context::{ClientState, Context};

type Row = Vec<Option<String>>;

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // ISO-8601 UTC without pulling in a date crate.
    let days = secs / 86_400;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{sec:02} UTC")
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn show(ctx: &Arc<Context>, what: &str) -> Result<Output, AdminError> {
    match what {
        "POOLS" => Ok(pools(ctx)),
        "CLIENTS" => Ok(clients(ctx)),
        "SERVERS" => Ok(servers(ctx)),
        "STATS" => Ok(stats(ctx)),
        "CONFIG" => Ok(config(ctx)),
        "DATABASES" => Ok(databases(ctx)),
        "USERS" => Ok(users(ctx)),
        "REPLICAS" => Ok(replicas(ctx)),
        "SHARDS" => Ok(shards(ctx)),
        "VSHARDS" => Ok(vshards(ctx)),
        "REMAPS" => Ok(remaps(ctx)),
        "SPIN" => Ok(spin(ctx)),
        "TASKS" => Ok(tasks(ctx)),
        "LISTS" => Ok(lists(ctx)),
        "VERSION" => Ok(Output::table(
            vec!["version"],
            vec![vec![s(format!("shardpool {}", env!("CARGO_PKG_VERSION")))]],
        )),
        other => Err(AdminError::Syntax(format!("unknown SHOW item {other:?}"))),
    }
}

/// Supervised background tasks: how many times each has run, failed, and why it last failed.
/// Each sharded database's catalog reloads follow, as a task of their own: a catalog the follower cannot read
/// fails reloads (routing goes on with the last good snapshot) without the follower's task failing.
fn tasks(ctx: &Arc<Context>) -> Output {
    let mut rows: Vec<Row> = ctx
        .tasks
        .snapshot()
        .iter()
        .map(|t| {
            vec![
                s(t.kind),
                s(&t.name),
                s(t.state().as_str()),
                s(t.runs()),
                s(t.failures()),
                t.last_error(),
            ]
        })
        .collect();
    let config = ctx.config();
    for name in config.databases.keys() {
        let Some(stats) = ctx.shard_router(name).and_then(|r| r.follow_stats()) else {
            continue;
        };
        let error = stats.last_error();
        let reloads =
            stats.notified.load(Ordering::Relaxed) + stats.checked.load(Ordering::Relaxed);
        rows.push(vec![
            s("catalog reload"),
            s(name),
            s(if error.is_some() { "failing" } else { "ok" }),
            s(reloads),
            s(stats.failed.load(Ordering::Relaxed)),
            error,
        ]);
    }
    Output::table(
        vec!["task", "name", "state", "runs", "failures", "last_error"],
        rows,
    )
}

/// Counts of what the proxy holds, as PgBouncer's SHOW LISTS: `used_clients` are logged-in connections (what
/// max_client_conn bounds), `login_clients` are connections still in the handshake or authentication (what
/// max_pending_logins bounds). Counters since start follow: connections closed at accept because
/// max_pending_logins were pending, connections closed at client_login_timeout, failed logins of any reason,
/// clients disconnected at client_stall_timeout or query_timeout, and cancel requests by what became of them
/// (`/metrics` has the same counters with their labels).
fn lists(ctx: &Arc<Context>) -> Output {
    use crate::metrics::events::{CancelOutcome, LoginFailure};
    let config = ctx.config();
    let pools = ctx.pools();
    let servers: (usize, usize) = pools.iter().fold((0, 0), |(free, used), p| {
        let snap = p.snapshot();
        (
            free + snap.idle,
            used + snap.total.saturating_sub(snap.idle),
        )
    });
    let rows = [
        ("databases", config.databases.len() as u64),
        ("users", config.users.len() as u64),
        ("pools", pools.len() as u64),
        (
            "used_clients",
            ctx.connections.load(Ordering::Relaxed) as u64,
        ),
        (
            "login_clients",
            ctx.pending_logins.load(Ordering::Relaxed) as u64,
        ),
        ("free_servers", servers.0 as u64),
        ("used_servers", servers.1 as u64),
        (
            "login_over_cap_total",
            ctx.login_failures.get(LoginFailure::TooManyPending),
        ),
        (
            "login_timeouts_total",
            ctx.login_failures.get(LoginFailure::Timeout),
        ),
        ("login_failures_total", ctx.login_failures.total()),
        (
            "client_stall_timeouts_total",
            ctx.client_stalls.load(Ordering::Relaxed),
        ),
        (
            "query_timeouts_total",
            ctx.query_timeouts.load(Ordering::Relaxed),
        ),
        (
            "cancel_local_total",
            ctx.cancel_requests.outcome(CancelOutcome::Local),
        ),
        (
            "cancel_unknown_total",
            ctx.cancel_requests.outcome(CancelOutcome::Unknown),
        ),
        (
            "cancel_forwarded_total",
            ctx.cancel_requests.outcome(CancelOutcome::Forwarded),
        ),
        (
            "cancel_forward_failed_total",
            ctx.cancel_requests.outcome(CancelOutcome::ForwardFailed),
        ),
        (
            "cancel_dropped_total",
            ctx.cancel_requests.outcome(CancelOutcome::Dropped),
        ),
        ("cancel_from_peers_total", ctx.cancel_requests.from_peers()),
    ]
    .into_iter()
    .map(|(list, items)| vec![s(list), s(items)])
    .collect();
    Output::table(vec!["list", "items"], rows)
}

/// The lone-client spin, per thing awaited: how often it ran and how often it found data in time.
fn spin(ctx: &Arc<Context>) -> Output {
    use crate::frontend::spin::Awaiting;
    let rows = [Awaiting::Server, Awaiting::Client]
        .into_iter()
        .map(|what| {
            let (spins, found, skipping) = ctx.spin.counters(what);
            vec![s(what.as_str()), s(spins), s(found), s(skipping)]
        })
        .collect();
    Output::table(vec!["awaiting", "spins", "found", "skipping"], rows)
}

/// Every shard of every sharded database: where it is, how many vshards it holds, what was routed to it.
fn shards(ctx: &Arc<Context>) -> Output {
    let config = ctx.config();
    let mut rows: Vec<Row> = Vec::new();
    for (name, db) in &config.databases {
        let (Some(sh), Some(router)) = (&db.sharding, ctx.shard_router(name)) else {
            continue;
        };
        let catalog = router.catalog();
        for (i, shard) in sh.shards.iter().enumerate() {
            let held = catalog
                .as_ref()
                .map(|c| c.placement.iter().filter(|s| **s as usize == i).count());
            rows.push(vec![
                s(name),
                s(i),
                s(&shard.host),
                s(shard.port),
                s(shard.database(name)),
                s(shard.replicas.len()),
                held.map(|h| h.to_string()),
                s(router.shard_queries[i].load(Ordering::Relaxed)),
                s(if i as u16 == sh.default_shard {
                    "t"
                } else {
                    "f"
                }),
                catalog.as_ref().map(|c| c.epoch.to_string()),
            ]);
        }
    }
    Output::table(
        vec![
            "database",
            "shard",
            "host",
            "port",
            "server_database",
            "replicas",
            "vshards",
            "statements",
            "default",
            "catalog_epoch",
        ],
        rows,
    )
}

/// Per-vshard counters of every sharded database: the hot vshards are the ones a remap wants to move.
fn vshards(ctx: &Arc<Context>) -> Output {
    let config = ctx.config();
    let mut rows: Vec<Row> = Vec::new();
    for name in config.databases.keys() {
        let Some(router) = ctx.shard_router(name) else {
            continue;
        };
        let catalog = router.catalog();
        for (v, queries) in router.vshard_queries.iter().enumerate() {
            rows.push(vec![
                s(name),
                s(v),
                catalog
                    .as_ref()
                    .and_then(|c| c.shard_of(v as u32))
                    .map(|x| x.to_string()),
                s(queries.load(Ordering::Relaxed)),
                s(router.vshard_writes[v].load(Ordering::Relaxed)),
            ]);
        }
    }
    Output::table(
        vec!["database", "vshard", "shard", "queries", "writes"],
        rows,
    )
}

/// The active remap and recent ones of every sharded database, as of this instance's catalog snapshot, with the
/// writes this instance held for cutovers (`held`, `held_max_ms`).
fn remaps(ctx: &Arc<Context>) -> Output {
    let config = ctx.config();
    let mut rows: Vec<Row> = Vec::new();
    for name in config.databases.keys() {
        let Some(router) = ctx.shard_router(name) else {
            continue;
        };
        let Some(catalog) = router.catalog() else {
            continue;
        };
        let held = router.holds.held.load(Ordering::Relaxed);
        let held_max_ms = router.holds.max_us.load(Ordering::Relaxed) as f64 / 1000.0;
        let fence_retried = router.holds.fence_retried.load(Ordering::Relaxed);
        for r in &catalog.remaps {
            rows.push(vec![
                s(name),
                s(r.id),
                s(r.phase.as_str()),
                s(crate::sharding::remap::plan::format_vshards(&r.vshards)),
                s(r.source),
                s(r.target),
                s(if r.frozen { "t" } else { "f" }),
                s(r.rows_copied),
                s(r.lag_bytes),
                s(r.pause_ms),
                s(held),
                s(format!("{held_max_ms:.1}")),
                s(fence_retried),
                r.error.clone(),
            ]);
        }
    }
    Output::table(
        vec![
            "database",
            "remap",
            "phase",
            "vshards",
            "source",
            "target",
            "frozen",
            "rows_copied",
            "lag_bytes",
            "pause_ms",
            "held",
            "held_max_ms",
            "fence_retried",
            "error",
        ],
        rows,
    )
}

/// Every server of every database in use, with its role and replication state as the monitor last saw it.
fn replicas(ctx: &Arc<Context>) -> Output {
    let mut rows: Vec<Row> = Vec::new();
    for c in ctx.clusters() {
        let writer = c.writer();
        for (i, m) in c.members.iter().enumerate() {
            let banned_ms = m
                .banned_until_ms
                .load(Ordering::Relaxed)
                .saturating_sub(c.clock.now_ms());
            let in_recovery = match m.recovery() {
                crate::cluster::Recovery::Unknown => None,
                crate::cluster::Recovery::InRecovery => s("t"),
                crate::cluster::Recovery::NotInRecovery => s("f"),
            };
            let lsn = m.lsn.load(Ordering::Relaxed);
            rows.push(vec![
                s(&c.database),
                c.shard.map(|x| x.to_string()),
                s(&m.host),
                s(m.port),
                s(m.role()),
                s(if writer == Some(i) { "t" } else { "f" }),
                in_recovery,
                (lsn != 0).then(|| crate::cluster::lsn::format(lsn)),
                (writer != Some(i)).then(|| m.lag_bytes.load(Ordering::Relaxed).to_string()),
                c.staleness_ms(m).map(|v| v.to_string()),
                s(if banned_ms > 0 { "t" } else { "f" }),
                s(banned_ms),
                s(m.weight.load(Ordering::Relaxed)),
                s(m.reads_served.load(Ordering::Relaxed)),
                s(m.writes_served.load(Ordering::Relaxed)),
                s(m.outstanding.load(Ordering::Relaxed)),
                s(m.polls_failed.load(Ordering::Relaxed)),
                m.last_error(),
                (writer == Some(i)).then(|| {
                    c.primary_position
                        .queries
                        .load(Ordering::Relaxed)
                        .to_string()
                }),
                (writer == Some(i)).then(|| {
                    c.primary_position
                        .errors
                        .load(Ordering::Relaxed)
                        .to_string()
                }),
            ]);
        }
    }
    Output::table(
        vec![
            "database",
            "shard",
            "host",
            "port",
            "role",
            "writer",
            "in_recovery",
            "lsn",
            "lag_bytes",
            "lag_ms",
            "banned",
            "ban_remaining_ms",
            "weight",
            "reads_served",
            "writes_served",
            "outstanding",
            "polls_failed",
            "last_error",
            "position_queries",
            "position_errors",
        ],
        rows,
    )
}

/// `host:port` of a server as SHOW POOLS names it; a Unix socket directory as the socket file's path.
fn server_name(host: &str, port: u16) -> String {
    if host.starts_with('/') {
        crate::config::instances::socket_path(std::path::Path::new(host), port)
            .display()
            .to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// PgBouncer's columns in its order, then shardpool's own: which server the pool is for (`server`), that server's
/// role as the replication monitor last saw it, and the shard of a sharded database. A database with replicas has
/// one row per server, which only these tell apart.
fn pools(ctx: &Arc<Context>) -> Output {
    let mut placement = std::collections::HashMap::new();
    for set in ctx.pool_sets() {
        for (p, m) in set.pools.iter().zip(&set.cluster.members) {
            placement.insert(Arc::as_ptr(p), (m.role(), set.cluster.shard));
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for p in ctx.pools() {
        let (role, shard) = placement
            .get(&Arc::as_ptr(&p))
            .copied()
            .unwrap_or(("", None));
        let snap = p.snapshot();
        let clients = p.stats.clients.load(Ordering::Relaxed);
        let waiting = p.stats.waiting.load(Ordering::Relaxed);
        let being_canceled = p.stats.being_canceled.load(Ordering::Relaxed);
        let wait = snap.oldest_wait.unwrap_or_default();
        let mode = p.config().settings.mode.as_str();
        rows.push(vec![
            s(&p.database),
            s(&p.user),
            s(clients.saturating_sub(waiting)),
            s(waiting),
            s(0),
            s(0),
            s((snap.total - snap.idle - snap.connecting).saturating_sub(being_canceled)),
            s(0),
            s(being_canceled),
            s(snap.idle - snap.idle_needing_check.min(snap.idle)),
            s(snap.idle_needing_check.min(snap.idle)),
            s(0),
            s(snap.connecting),
            s(wait.as_secs()),
            s(wait.subsec_micros()),
            s(mode),
            s(0),
            s(server_name(&p.target.host, p.target.port)),
            (!role.is_empty()).then(|| role.to_owned()),
            shard.map(|x| x.to_string()),
        ]);
    }
    Output::table(
        vec![
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
            "server",
            "role",
            "shard",
        ],
        rows,
    )
}

const CONN_COLUMNS: [&str; 21] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

fn clients(ctx: &Arc<Context>) -> Output {
    let rows = ctx
        .clients()
        .iter()
        .map(|c| {
            let state = match c.state() {
                ClientState::Active => "active",
                ClientState::Waiting => "waiting",
                ClientState::Idle => "idle",
            };
            let link = c
                .server()
                .map(|(_, _, id)| id.to_string())
                .unwrap_or_default();
            vec![
                s("C"),
                s(&c.user),
                s(&c.database),
                s("none"),
                s(state),
                s(c.addr.host()),
                s(c.addr.port()),
                None,
                None,
                s(timestamp(c.connected_at)),
                s(timestamp(c.connected_at)),
                s(0),
                s(0),
                s(0),
                s(c.id),
                s(link),
                s(c.cancel_key.pid),
                s(if c.tls { "TLS" } else { "" }),
                s(&c.application_name),
                s(0),
                s(c.id),
            ]
        })
        .collect();
    Output::table(CONN_COLUMNS.to_vec(), rows)
}

fn servers(ctx: &Arc<Context>) -> Output {
    let mut rows: Vec<Row> = Vec::new();
    for c in ctx.clients() {
        if let Some((addr, key, id)) = c.server() {
            rows.push(server_row(
                &c.user,
                &c.database,
                "active",
                addr,
                key.pid,
                id,
                &c.id.to_string(),
            ));
        }
    }
    for p in ctx.pools() {
        for (id, addr, pid) in p.idle_servers() {
            rows.push(server_row(&p.user, &p.database, "idle", addr, pid, id, ""));
        }
    }
    Output::table(CONN_COLUMNS.to_vec(), rows)
}

fn server_row(
    user: &str,
    db: &str,
    state: &str,
    addr: crate::backend::ServerAddr,
    pid: i32,
    id: u64,
    link: &str,
) -> Row {
    vec![
        s("S"),
        s(user),
        s(db),
        s("none"),
        s(state),
        s(addr.host()),
        s(addr.port()),
        None,
        None,
        None,
        None,
        s(0),
        s(0),
        s(0),
        s(id),
        s(link),
        s(pid),
        s(""),
        s(""),
        s(0),
        s(id),
    ]
}

fn stats(ctx: &Arc<Context>) -> Output {
    let uptime = ctx
        .started_at
        .elapsed()
        .map(|d| d.as_secs_f64())
        .unwrap_or(1.0)
        .max(1.0);
    let mut per_db: std::collections::BTreeMap<String, [u64; 8]> = Default::default();
    for p in ctx.pools() {
        let st = &p.stats;
        let e = per_db.entry(p.database.clone()).or_default();
        for (i, v) in [
            &st.server_assignment_count,
            &st.xact_count,
            &st.query_count,
            &st.bytes_received,
            &st.bytes_sent,
            &st.xact_time_us,
            &st.query_time_us,
            &st.wait_time_us,
        ]
        .iter()
        .enumerate()
        {
            e[i] += v.load(Ordering::Relaxed);
        }
    }
    let rows = per_db
        .into_iter()
        .map(|(db, t)| {
            let [assignments, xacts, queries, received, sent, xact_us, query_us, wait_us] = t;
            let avg = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
            let per_sec = |v: u64| s((v as f64 / uptime) as u64);
            // Prepared-statement counters are not tracked: reported as 0, like the cancel-request columns.
            vec![
                s(db),
                s(assignments),
                s(xacts),
                s(queries),
                s(received),
                s(sent),
                s(xact_us),
                s(query_us),
                s(wait_us),
                s(0),
                s(0),
                s(0),
                per_sec(assignments),
                per_sec(xacts),
                per_sec(queries),
                per_sec(received),
                per_sec(sent),
                s(avg(xact_us, xacts)),
                s(avg(query_us, queries)),
                s(avg(wait_us, assignments)),
                s(0),
                s(0),
                s(0),
            ]
        })
        .collect();
    // PgBouncer's columns and order (src/stats.c, admin_database_stats).
    Output::table(
        vec![
            "database",
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "total_client_parse_count",
            "total_server_parse_count",
            "total_bind_count",
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
        rows,
    )
}

fn config(ctx: &Arc<Context>) -> Output {
    let c = ctx.config();
    let g = &c.general;
    let d = crate::config::General::default();
    let entries: Vec<(&str, String, String)> = vec![
        ("listen", g.listen.clone(), d.listen.clone()),
        ("workers", g.workers.to_string(), d.workers.to_string()),
        (
            "runtime",
            g.runtime.as_str().to_string(),
            d.runtime.as_str().to_string(),
        ),
        (
            "spin_wait",
            g.spin_wait.to_string(),
            d.spin_wait.to_string(),
        ),
        (
            "max_client_conn",
            g.max_client_conn.to_string(),
            d.max_client_conn.to_string(),
        ),
        (
            "max_message_size",
            g.max_message_size.to_string(),
            d.max_message_size.to_string(),
        ),
        (
            "max_pending_logins",
            g.max_pending_logins.to_string(),
            d.max_pending_logins.to_string(),
        ),
        (
            "pool_mode",
            g.pool_mode.as_str().into(),
            d.pool_mode.as_str().into(),
        ),
        (
            "pool_size",
            g.pool_size.to_string(),
            d.pool_size.to_string(),
        ),
        (
            "min_pool_size",
            g.min_pool_size.to_string(),
            d.min_pool_size.to_string(),
        ),
        (
            "checkout_timeout",
            g.checkout_timeout.to_string(),
            d.checkout_timeout.to_string(),
        ),
        (
            "server_connect_timeout",
            g.server_connect_timeout.to_string(),
            d.server_connect_timeout.to_string(),
        ),
        (
            "server_idle_timeout",
            g.server_idle_timeout.to_string(),
            d.server_idle_timeout.to_string(),
        ),
        (
            "server_lifetime",
            g.server_lifetime.to_string(),
            d.server_lifetime.to_string(),
        ),
        (
            "server_check_delay",
            g.server_check_delay.to_string(),
            d.server_check_delay.to_string(),
        ),
        (
            "server_check_query",
            g.server_check_query.clone(),
            d.server_check_query.clone(),
        ),
        (
            "server_reset_query",
            g.server_reset_query.clone(),
            d.server_reset_query.clone(),
        ),
        (
            "client_idle_timeout",
            g.client_idle_timeout.to_string(),
            d.client_idle_timeout.to_string(),
        ),
        (
            "idle_transaction_timeout",
            g.idle_transaction_timeout.to_string(),
            d.idle_transaction_timeout.to_string(),
        ),
        (
            "client_stall_timeout",
            g.client_stall_timeout.to_string(),
            d.client_stall_timeout.to_string(),
        ),
        (
            "query_timeout",
            g.query_timeout.to_string(),
            d.query_timeout.to_string(),
        ),
        (
            "client_login_timeout",
            g.client_login_timeout.to_string(),
            d.client_login_timeout.to_string(),
        ),
        (
            "shutdown_timeout",
            g.shutdown_timeout.to_string(),
            d.shutdown_timeout.to_string(),
        ),
        (
            "ignore_startup_parameters",
            g.ignore_startup_parameters.join(","),
            String::new(),
        ),
        (
            "prepared_statements_cache_size",
            g.prepared_statements_cache_size.to_string(),
            d.prepared_statements_cache_size.to_string(),
        ),
        (
            "session_features",
            format!("{:?}", g.session_features).to_lowercase(),
            "pin".into(),
        ),
        ("admin_users", g.admin_users.join(","), String::new()),
        (
            "unix_socket_dir",
            g.unix_socket_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            String::new(),
        ),
        (
            "unix_socket_mode",
            g.unix_socket_mode.to_string(),
            d.unix_socket_mode.to_string(),
        ),
        ("peer_id", g.peer_id.to_string(), d.peer_id.to_string()),
        (
            "auth_file",
            g.auth_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            String::new(),
        ),
        (
            "auth_user",
            g.auth_user.clone().unwrap_or_default(),
            String::new(),
        ),
        ("auth_query", g.auth_query.clone(), d.auth_query.clone()),
        (
            "auth_dbname",
            g.auth_dbname.clone().unwrap_or_default(),
            String::new(),
        ),
        (
            "auth_cache_ttl",
            g.auth_cache_ttl.to_string(),
            d.auth_cache_ttl.to_string(),
        ),
        (
            "auth_cache_negative_ttl",
            g.auth_cache_negative_ttl.to_string(),
            d.auth_cache_negative_ttl.to_string(),
        ),
        (
            "auth_cache_size",
            g.auth_cache_size.to_string(),
            d.auth_cache_size.to_string(),
        ),
        (
            "http_listen",
            g.http_listen.clone().unwrap_or_default(),
            String::new(),
        ),
        (
            "http_request_timeout",
            g.http_request_timeout.to_string(),
            d.http_request_timeout.to_string(),
        ),
        (
            "scatter_max_groups",
            g.scatter_max_groups.to_string(),
            d.scatter_max_groups.to_string(),
        ),
        (
            "scatter_max_buffer_bytes",
            g.scatter_max_buffer_bytes.to_string(),
            d.scatter_max_buffer_bytes.to_string(),
        ),
        (
            "max_prepared_statements_per_client",
            g.max_prepared_statements_per_client.to_string(),
            d.max_prepared_statements_per_client.to_string(),
        ),
    ];
    let restart_only = [
        "listen",
        "workers",
        "runtime",
        "unix_socket_dir",
        "unix_socket_mode",
        "peer_id",
        "http_listen",
    ];
    let rows = entries
        .into_iter()
        .map(|(k, v, def)| {
            vec![
                s(k),
                s(v),
                s(def),
                s(if restart_only.contains(&k) {
                    "no"
                } else {
                    "yes"
                }),
            ]
        })
        .collect();
    Output::table(vec!["key", "value", "default", "changeable"], rows)
}

fn databases(ctx: &Arc<Context>) -> Output {
    let c = ctx.config();
    let pools = ctx.pools();
    let rows = c
        .databases
        .iter()
        .map(|(name, db)| {
            let current: usize = pools
                .iter()
                .filter(|p| &p.database == name)
                .map(|p| p.snapshot().total)
                .sum();
            vec![
                s(name),
                s(&db.host),
                s(db.port),
                s(db.server_database.as_deref().unwrap_or(name)),
                None,
                s(db.pool_size.unwrap_or(c.general.pool_size)),
                s(db.min_pool_size.unwrap_or(c.general.min_pool_size)),
                s(0),
                s(db.pool_mode.unwrap_or(c.general.pool_mode).as_str()),
                s(0),
                s(current),
                s(i32::from(ctx.pause.is_paused())),
                s(0),
            ]
        })
        .collect();
    Output::table(
        vec![
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool",
            "pool_mode",
            "max_connections",
            "current_connections",
            "paused",
            "disabled",
        ],
        rows,
    )
}

fn users(ctx: &Arc<Context>) -> Output {
    let c = ctx.config();
    // auth_file's users too, unless a [[users]] entry of the same name shadows them.
    let from_file = c
        .auth_file_users
        .values()
        .filter(|u| !c.users.iter().any(|cu| cu.name == u.name));
    let rows = c
        .users
        .iter()
        .chain(from_file)
        .map(|u| vec![s(&u.name), u.pool_mode.map(|m| m.as_str().to_owned())])
        .collect();
    Output::table(vec!["name", "pool_mode"], rows)
}
