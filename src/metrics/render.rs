//! Reads the proxy's counters into one exposition page. Every family is written whole before the next begins (the
//! format requires it), so each section first takes one snapshot of what it reports (one lock per pool, as SHOW POOLS
//! takes), then writes its families from the snapshot. Series that would share a label set (two pools for the same
//! server after a reload, say) are merged, since a scrape with a duplicate series is rejected whole.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::Ordering;

use super::exposition::{Exposition, Kind};
use super::histogram::BOUNDS_US;
use crate::context::Context;

/// How many vshards `shardpool_vshard_*` report per database: the hottest by statements routed.
pub const TOP_VSHARDS: usize = 10;

const BUCKETS: usize = BOUNDS_US.len() + 1;

pub fn render(ctx: &Context) -> String {
    let mut e = Exposition::with_capacity(32 * 1024);
    proxy(&mut e, ctx);
    pools(&mut e, ctx);
    servers(&mut e, ctx);
    sharding(&mut e, ctx);
    tasks(&mut e, ctx);
    process(&mut e, ctx);
    e.finish()
}

fn proxy(e: &mut Exposition, ctx: &Context) {
    e.family(
        "shardpool_build_info",
        Kind::Gauge,
        "Always 1; the version of this shardpool in a label.",
    );
    e.sample(
        "shardpool_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    let uptime = ctx
        .started_at
        .elapsed()
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge(
        e,
        "shardpool_uptime_seconds",
        "Seconds since this proxy started.",
        uptime,
    );
    gauge(
        e,
        "shardpool_client_connections",
        "Logged-in client connections (admin console sessions included), what max_client_conn bounds.",
        ctx.connections.load(Ordering::Relaxed),
    );
    gauge(
        e,
        "shardpool_client_logins_pending",
        "Connections still in the handshake or authentication, what max_pending_logins bounds.",
        ctx.pending_logins.load(Ordering::Relaxed),
    );
    logins_and_cancels(e, ctx);
    counter(
        e,
        "shardpool_client_stall_timeouts_total",
        "Clients disconnected at client_stall_timeout.",
        ctx.client_stalls.load(Ordering::Relaxed),
    );
    gauge(
        e,
        "shardpool_paused",
        "1 while the console's PAUSE holds new transactions.",
        ctx.pause.is_paused(),
    );
    gauge(
        e,
        "shardpool_shutting_down",
        "1 once a graceful shutdown has begun.",
        ctx.is_shutting_down(),
    );
}

/// What belongs to no pool: logins that failed before there was one, and cancel requests (which name a client by
/// its key only, and may be for another instance).
fn logins_and_cancels(e: &mut Exposition, ctx: &Context) {
    use super::events::{CancelOutcome, CancelSource, LoginFailure};
    e.family(
        "shardpool_client_login_failures_total",
        Kind::Counter,
        "Connections that did not become logged-in clients, by reason (password: wrong password or unknown user).",
    );
    for why in LoginFailure::ALL {
        e.sample(
            "shardpool_client_login_failures_total",
            &[("reason", why.as_str())],
            ctx.login_failures.get(why),
        );
    }
    e.family(
        "shardpool_cancel_requests_total",
        Kind::Counter,
        "CancelRequests received, by source (client, or a peer passing one on) and outcome.",
    );
    for source in CancelSource::ALL {
        for outcome in CancelOutcome::ALL {
            e.sample(
                "shardpool_cancel_requests_total",
                &[("source", source.as_str()), ("outcome", outcome.as_str())],
                ctx.cancel_requests.get(source, outcome),
            );
        }
    }
}

/// What one pool (database, user, shard, server) shows, or several merged.
#[derive(Default)]
struct PoolRow {
    clients_active: u64,
    clients_waiting: u64,
    servers_active: u64,
    servers_idle: u64,
    servers_used: u64,
    servers_login: u64,
    max_servers: u64,
    oldest_wait_seconds: f64,
    assignments: u64,
    xacts: u64,
    queries: u64,
    received: u64,
    sent: u64,
    xact_us: u64,
    wait_us: u64,
    wait_buckets: [u64; BUCKETS],
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PoolKey {
    database: String,
    user: String,
    shard: Option<String>,
    server: String,
}

impl PoolKey {
    fn labels(&self) -> Vec<(&str, &str)> {
        let mut l = vec![
            ("database", self.database.as_str()),
            ("user", self.user.as_str()),
        ];
        if let Some(s) = &self.shard {
            l.push(("shard", s.as_str()));
        }
        l.push(("server", self.server.as_str()));
        l
    }
}

fn pools(e: &mut Exposition, ctx: &Context) {
    let mut rows: BTreeMap<PoolKey, PoolRow> = BTreeMap::new();
    let mut errors: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
    for set in ctx.pool_sets() {
        for pool in &set.pools {
            let key = PoolKey {
                database: pool.database.clone(),
                user: pool.user.clone(),
                shard: set.cluster.shard.map(|s| s.to_string()),
                server: format!("{}:{}", pool.target.host, pool.target.port),
            };
            let snap = pool.snapshot();
            let st = &pool.stats;
            let r = rows.entry(key).or_default();
            // The same arithmetic as SHOW POOLS.
            let clients = st.clients.load(Ordering::Relaxed) as u64;
            let waiting = st.waiting.load(Ordering::Relaxed) as u64;
            let needing_check = snap.idle_needing_check.min(snap.idle);
            r.clients_active += clients.saturating_sub(waiting);
            r.clients_waiting += waiting;
            r.servers_active += snap.total.saturating_sub(snap.idle + snap.connecting) as u64;
            r.servers_idle += (snap.idle - needing_check) as u64;
            r.servers_used += needing_check as u64;
            r.servers_login += snap.connecting as u64;
            r.max_servers += pool.config().settings.size as u64;
            let oldest = snap.oldest_wait.unwrap_or_default().as_secs_f64();
            r.oldest_wait_seconds = r.oldest_wait_seconds.max(oldest);
            r.assignments += st.server_assignment_count.load(Ordering::Relaxed);
            r.xacts += st.xact_count.load(Ordering::Relaxed);
            r.queries += st.query_count.load(Ordering::Relaxed);
            r.received += st.bytes_received.load(Ordering::Relaxed);
            r.sent += st.bytes_sent.load(Ordering::Relaxed);
            r.xact_us += st.xact_time_us.load(Ordering::Relaxed);
            r.wait_us += st.wait_time_us.load(Ordering::Relaxed);
            for (acc, c) in r
                .wait_buckets
                .iter_mut()
                .zip(st.wait_histogram.cumulative())
            {
                *acc += c;
            }
            for (class, n) in st.errors.nonzero() {
                *errors
                    .entry((pool.database.clone(), pool.user.clone(), class))
                    .or_default() += n;
            }
        }
    }

    type Count = fn(&PoolRow) -> u64;
    let states: [(&str, Count); 2] = [
        ("active", |r| r.clients_active),
        ("waiting", |r| r.clients_waiting),
    ];
    e.family(
        "shardpool_pool_clients",
        Kind::Gauge,
        "Clients of the pool: active (linked to a server or idle between transactions) or waiting for a server.",
    );
    for (k, r) in &rows {
        for (state, f) in states {
            let mut l = k.labels();
            l.push(("state", state));
            e.sample("shardpool_pool_clients", &l, f(r));
        }
    }
    let states: [(&str, Count); 4] = [
        ("active", |r| r.servers_active),
        ("idle", |r| r.servers_idle),
        ("used", |r| r.servers_used),
        ("login", |r| r.servers_login),
    ];
    e.family(
        "shardpool_pool_servers",
        Kind::Gauge,
        "Server connections of the pool by state, as SHOW POOLS: active (lent), idle, used (idle, due a health check), login (being opened).",
    );
    for (k, r) in &rows {
        for (state, f) in states {
            let mut l = k.labels();
            l.push(("state", state));
            e.sample("shardpool_pool_servers", &l, f(r));
        }
    }
    type Field = fn(&PoolRow) -> f64;
    let per_pool: [(&str, Kind, &str, Field); 8] = [
        (
            "shardpool_pool_max_servers",
            Kind::Gauge,
            "Configured pool size.",
            |r| r.max_servers as f64,
        ),
        (
            "shardpool_pool_max_wait_seconds",
            Kind::Gauge,
            "How long the oldest client waiting for a server has waited.",
            |r| r.oldest_wait_seconds,
        ),
        (
            "shardpool_pool_server_assignments_total",
            Kind::Counter,
            "Server connections lent to clients.",
            |r| r.assignments as f64,
        ),
        (
            "shardpool_pool_transactions_total",
            Kind::Counter,
            "Transactions run through the pool (an implicit one per statement outside BEGIN).",
            |r| r.xacts as f64,
        ),
        (
            "shardpool_pool_queries_total",
            Kind::Counter,
            "Queries run through the pool (one per ReadyForQuery the client got).",
            |r| r.queries as f64,
        ),
        (
            "shardpool_pool_received_bytes_total",
            Kind::Counter,
            "Bytes received from clients.",
            |r| r.received as f64,
        ),
        (
            "shardpool_pool_sent_bytes_total",
            Kind::Counter,
            "Bytes sent to clients.",
            |r| r.sent as f64,
        ),
        (
            "shardpool_pool_transaction_seconds_total",
            Kind::Counter,
            "Time spent in transactions.",
            |r| r.xact_us as f64 / 1e6,
        ),
    ];
    for (name, kind, help, f) in per_pool {
        e.family(name, kind, help);
        for (k, r) in &rows {
            e.sample(name, &k.labels(), f(r));
        }
    }
    let bounds: Vec<f64> = BOUNDS_US.iter().map(|us| *us as f64 / 1e6).collect();
    e.family(
        "shardpool_pool_wait_seconds",
        Kind::Histogram,
        "How long clients waited for a server connection, per checkout (0 when an idle server was at hand).",
    );
    for (k, r) in &rows {
        e.histogram(
            "shardpool_pool_wait_seconds",
            &k.labels(),
            &bounds,
            &r.wait_buckets,
            r.wait_us as f64 / 1e6,
        );
    }
    e.family(
        "shardpool_errors_total",
        Kind::Counter,
        "Errors sent to clients, by SQLSTATE class (first two characters of the code; other = unknown class).",
    );
    for ((database, user, class), n) in &errors {
        e.sample(
            "shardpool_errors_total",
            &[("database", database), ("user", user), ("class", class)],
            *n,
        );
    }
}

#[derive(Default)]
struct ServerRow {
    writer: bool,
    in_recovery: Option<bool>,
    lag_bytes: Option<u64>,
    lag_seconds: Option<f64>,
    banned: bool,
    reads: u64,
    writes: u64,
    outstanding: u64,
    polls_failed: u64,
    weight: u64,
}

fn servers(e: &mut Exposition, ctx: &Context) {
    let mut rows: BTreeMap<(String, Option<String>, String), ServerRow> = BTreeMap::new();
    for c in ctx.clusters() {
        let writer = c.writer();
        for (i, m) in c.members.iter().enumerate() {
            let key = (
                c.database.clone(),
                c.shard.map(|s| s.to_string()),
                m.addr_text(),
            );
            rows.entry(key).or_insert_with(|| ServerRow {
                writer: writer == Some(i),
                in_recovery: match m.recovery() {
                    crate::cluster::Recovery::Unknown => None,
                    crate::cluster::Recovery::InRecovery => Some(true),
                    crate::cluster::Recovery::NotInRecovery => Some(false),
                },
                lag_bytes: (writer != Some(i) && c.has_replicas())
                    .then(|| m.lag_bytes.load(Ordering::Relaxed)),
                lag_seconds: c
                    .staleness_ms(m)
                    .filter(|_| writer != Some(i))
                    .map(|ms| ms as f64 / 1000.0),
                banned: c.is_banned(m),
                reads: m.reads_served.load(Ordering::Relaxed),
                writes: m.writes_served.load(Ordering::Relaxed),
                outstanding: m.outstanding.load(Ordering::Relaxed) as u64,
                polls_failed: m.polls_failed.load(Ordering::Relaxed),
                weight: m.weight.load(Ordering::Relaxed),
            });
        }
    }
    type Field = fn(&ServerRow) -> Option<f64>;
    let families: [(&str, Kind, &str, Field); 10] = [
        (
            "shardpool_server_writer",
            Kind::Gauge,
            "1 for the server that takes this database's (shard's) writes now.",
            |r| Some(f64::from(u8::from(r.writer))),
        ),
        (
            "shardpool_server_in_recovery",
            Kind::Gauge,
            "pg_is_in_recovery() as the replication monitor last saw it (absent until it has).",
            |r| r.in_recovery.map(|b| f64::from(u8::from(b))),
        ),
        (
            "shardpool_server_lag_bytes",
            Kind::Gauge,
            "WAL bytes the replica has not replayed yet, as of the monitor's last poll.",
            |r| r.lag_bytes.map(|b| b as f64),
        ),
        (
            "shardpool_server_lag_seconds",
            Kind::Gauge,
            "How far behind the primary the replica may be now (absent while unknown).",
            |r| r.lag_seconds,
        ),
        (
            "shardpool_server_banned",
            Kind::Gauge,
            "1 while the server gets no reads after a failure (replica_ban_time).",
            |r| Some(f64::from(u8::from(r.banned))),
        ),
        (
            "shardpool_server_weight",
            Kind::Gauge,
            "Load-balancing weight.",
            |r| Some(r.weight as f64),
        ),
        (
            "shardpool_server_reads_total",
            Kind::Counter,
            "Read transactions routed to the server.",
            |r| Some(r.reads as f64),
        ),
        (
            "shardpool_server_writes_total",
            Kind::Counter,
            "Write transactions routed to the server.",
            |r| Some(r.writes as f64),
        ),
        (
            "shardpool_server_transactions_running",
            Kind::Gauge,
            "Transactions running on the server now.",
            |r| Some(r.outstanding as f64),
        ),
        (
            "shardpool_server_monitor_failures_total",
            Kind::Counter,
            "Replication monitor polls of the server that failed.",
            |r| Some(r.polls_failed as f64),
        ),
    ];
    for (name, kind, help, f) in families {
        e.family(name, kind, help);
        for ((database, shard, server), r) in &rows {
            let Some(v) = f(r) else { continue };
            let mut l = vec![("database", database.as_str())];
            if let Some(s) = shard {
                l.push(("shard", s.as_str()));
            }
            l.push(("server", server.as_str()));
            e.sample(name, &l, v);
        }
    }
}

/// One sharded database's routing state.
struct Sharded {
    database: String,
    epoch: Option<i64>,
    shards: Vec<(u64, Option<u64>)>,
    scatters: u64,
    hot: Vec<(u32, u64, u64, Option<u16>)>,
    remaps: Vec<crate::sharding::remap::state::RemapRow>,
    held: u64,
    held_seconds: f64,
    held_max_seconds: f64,
    held_expired: u64,
    fence_retried: u64,
    reloads: Option<(u64, u64)>,
}

fn sharding(e: &mut Exposition, ctx: &Context) {
    let config = ctx.config();
    let mut dbs = Vec::new();
    for (name, db) in &config.databases {
        if db.sharding.is_none() {
            continue;
        }
        let Some(router) = ctx.shard_router(name) else {
            dbs.push(Sharded {
                database: name.clone(),
                epoch: None,
                shards: Vec::new(),
                scatters: 0,
                hot: Vec::new(),
                remaps: Vec::new(),
                held: 0,
                held_seconds: 0.0,
                held_max_seconds: 0.0,
                held_expired: 0,
                fence_retried: 0,
                reloads: None,
            });
            continue;
        };
        let catalog = router.catalog();
        let shards = router
            .shard_queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let held = catalog
                    .as_ref()
                    .map(|c| c.placement.iter().filter(|s| **s as usize == i).count() as u64);
                (q.load(Ordering::Relaxed), held)
            })
            .collect();
        // The hottest vshards: a bounded min-heap, so a scrape allocates TOP_VSHARDS entries, not one per vshard.
        let mut heap: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::with_capacity(TOP_VSHARDS + 1);
        for (v, q) in router.vshard_queries.iter().enumerate() {
            let q = q.load(Ordering::Relaxed);
            if q == 0 {
                continue;
            }
            heap.push(Reverse((q, v as u32)));
            if heap.len() > TOP_VSHARDS {
                heap.pop();
            }
        }
        let mut hot: Vec<_> = heap
            .into_iter()
            .map(|Reverse((q, v))| {
                let writes = router
                    .vshard_writes
                    .get(v as usize)
                    .map_or(0, |w| w.load(Ordering::Relaxed));
                (v, q, writes, catalog.as_ref().and_then(|c| c.shard_of(v)))
            })
            .collect();
        hot.sort_by_key(|h| (Reverse(h.1), h.0));
        let reloads = router.follow_stats().map(|s| {
            (
                s.notified.load(Ordering::Relaxed) + s.checked.load(Ordering::Relaxed),
                s.failed.load(Ordering::Relaxed),
            )
        });
        dbs.push(Sharded {
            database: name.clone(),
            epoch: catalog.as_ref().map(|c| c.epoch),
            shards,
            scatters: router.scatters.load(Ordering::Relaxed),
            hot,
            remaps: catalog
                .as_ref()
                .map(|c| c.remaps.clone())
                .unwrap_or_default(),
            held: router.holds.held.load(Ordering::Relaxed),
            held_seconds: router.holds.total_us.load(Ordering::Relaxed) as f64 / 1e6,
            held_max_seconds: router.holds.max_us.load(Ordering::Relaxed) as f64 / 1e6,
            held_expired: router.holds.expired.load(Ordering::Relaxed),
            fence_retried: router.holds.fence_retried.load(Ordering::Relaxed),
            reloads,
        });
    }

    e.family(
        "shardpool_catalog_loaded",
        Kind::Gauge,
        "1 once the sharded database's catalog has been read; routing waits for it.",
    );
    for d in &dbs {
        e.sample(
            "shardpool_catalog_loaded",
            &[("database", &d.database)],
            d.epoch.is_some(),
        );
    }
    per_database(
        e,
        &dbs,
        ("shardpool_catalog_epoch", Kind::Gauge),
        "Epoch of the catalog snapshot routing uses (bumped by every placement change).",
        |d| d.epoch,
    );
    per_database(
        e,
        &dbs,
        ("shardpool_catalog_reloads_total", Kind::Counter),
        "Catalog reloads (on notification or periodic check).",
        |d| d.reloads.map(|(n, _)| n),
    );
    per_database(
        e,
        &dbs,
        ("shardpool_catalog_reload_failures_total", Kind::Counter),
        "Catalog reloads that failed (routing went on with the last good snapshot).",
        |d| d.reloads.map(|(_, n)| n),
    );
    e.family(
        "shardpool_shard_statements_total",
        Kind::Counter,
        "Statements routed to the shard.",
    );
    for d in &dbs {
        for (i, (q, _)) in d.shards.iter().enumerate() {
            let shard = i.to_string();
            e.sample(
                "shardpool_shard_statements_total",
                &[("database", &d.database), ("shard", &shard)],
                *q,
            );
        }
    }
    e.family(
        "shardpool_shard_vshards",
        Kind::Gauge,
        "Vshards the catalog places on the shard.",
    );
    for d in &dbs {
        for (i, (_, held)) in d.shards.iter().enumerate() {
            if let Some(h) = held {
                let shard = i.to_string();
                e.sample(
                    "shardpool_shard_vshards",
                    &[("database", &d.database), ("shard", &shard)],
                    *h,
                );
            }
        }
    }
    e.family(
        "shardpool_scatter_statements_total",
        Kind::Counter,
        "Statements sent to every shard (no sharding key to route by).",
    );
    for d in &dbs {
        e.sample(
            "shardpool_scatter_statements_total",
            &[("database", &d.database)],
            d.scatters,
        );
    }
    for (name, help, writes) in [
        (
            "shardpool_vshard_statements_total",
            "Statements routed by key to the vshard; only the hottest 10 vshards of each database are listed.",
            false,
        ),
        (
            "shardpool_vshard_writes_total",
            "Rows written to the vshard (INSERT rows, keyed UPDATE/DELETE); for the vshards of shardpool_vshard_statements_total.",
            true,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for d in &dbs {
            for (v, q, w, shard) in &d.hot {
                let vshard = v.to_string();
                let shard = shard.map(|s| s.to_string()).unwrap_or_default();
                e.sample(
                    name,
                    &[("database", &d.database), ("vshard", &vshard), ("shard", &shard)],
                    if writes { *w } else { *q },
                );
            }
        }
    }
    remaps(e, &dbs);
}

fn remaps(e: &mut Exposition, dbs: &[Sharded]) {
    e.family(
        "shardpool_remap_phase",
        Kind::Gauge,
        "1 for the phase each remap (the active one and the latest finished ones) is in.",
    );
    for d in dbs {
        for r in &d.remaps {
            let (id, source, target) =
                (r.id.to_string(), r.source.to_string(), r.target.to_string());
            e.sample(
                "shardpool_remap_phase",
                &[
                    ("database", &d.database),
                    ("remap", &id),
                    ("source", &source),
                    ("target", &target),
                    ("phase", r.phase.as_str()),
                ],
                1u64,
            );
        }
    }
    type Field = fn(&crate::sharding::remap::state::RemapRow) -> f64;
    let families: [(&str, &str, Field); 5] = [
        ("shardpool_remap_vshards", "Vshards the remap moves.", |r| {
            r.vshards.len() as f64
        }),
        (
            "shardpool_remap_copied_rows",
            "Rows the remap's initial copy has copied so far.",
            |r| r.rows_copied as f64,
        ),
        (
            "shardpool_remap_lag_bytes",
            "WAL bytes the target has yet to apply from the source.",
            |r| r.lag_bytes as f64,
        ),
        (
            "shardpool_remap_frozen",
            "1 while writes to the moving vshards are held for the cutover.",
            |r| f64::from(u8::from(r.frozen)),
        ),
        (
            "shardpool_remap_pause_seconds",
            "How long the cutover held writes.",
            |r| r.pause_ms as f64 / 1000.0,
        ),
    ];
    for (name, help, f) in families {
        e.family(name, Kind::Gauge, help);
        for d in dbs {
            for r in &d.remaps {
                let id = r.id.to_string();
                e.sample(name, &[("database", &d.database), ("remap", &id)], f(r));
            }
        }
    }
    type HoldField = fn(&Sharded) -> f64;
    let holds: [(&str, Kind, &str, HoldField); 5] = [
        (
            "shardpool_remap_held_writes_total",
            Kind::Counter,
            "Writes this instance held while a remap froze their vshards.",
            |d| d.held as f64,
        ),
        (
            "shardpool_remap_held_seconds_total",
            Kind::Counter,
            "Time those writes spent held.",
            |d| d.held_seconds,
        ),
        (
            "shardpool_remap_held_max_seconds",
            Kind::Gauge,
            "Longest a write was held.",
            |d| d.held_max_seconds,
        ),
        (
            "shardpool_remap_hold_expired_total",
            Kind::Counter,
            "Held writes released because the freeze outlived its max_pause.",
            |d| d.held_expired as f64,
        ),
        (
            "shardpool_remap_fence_retried_total",
            Kind::Counter,
            "Writes a remap's fence refused before their client saw anything, routed again instead of failed.",
            |d| d.fence_retried as f64,
        ),
    ];
    for (name, kind, help, f) in holds {
        e.family(name, kind, help);
        for d in dbs {
            e.sample(name, &[("database", &d.database)], f(d));
        }
    }
}

fn tasks(e: &mut Exposition, ctx: &Context) {
    let mut rows: BTreeMap<(&'static str, String), (u64, u64, bool)> = BTreeMap::new();
    for t in ctx.tasks.snapshot() {
        let r = rows.entry((t.kind, t.name.clone())).or_default();
        r.0 += t.runs();
        r.1 += t.failures();
        r.2 |= t.state() == crate::supervisor::TaskState::Restarting;
    }
    type Field = fn(&(u64, u64, bool)) -> u64;
    let families: [(&str, Kind, &str, Field); 3] = [
        (
            "shardpool_task_runs_total",
            Kind::Counter,
            "Runs of the supervised background task (1 + restarts), as SHOW TASKS.",
            |r| r.0,
        ),
        (
            "shardpool_task_failures_total",
            Kind::Counter,
            "Runs of the task that failed (error or panic) and were restarted.",
            |r| r.1,
        ),
        (
            "shardpool_task_restarting",
            Kind::Gauge,
            "1 while the task waits out its backoff before the next run.",
            |r| u64::from(r.2),
        ),
    ];
    for (name, kind, help, f) in families {
        e.family(name, kind, help);
        for ((task, label), r) in &rows {
            e.sample(name, &[("task", task), ("name", label)], f(r));
        }
    }
}

fn process(e: &mut Exposition, ctx: &Context) {
    let p = super::process::read(ctx.started_at);
    let families: [(&str, Kind, &str, Option<f64>); 6] = [
        (
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            p.virtual_bytes.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            Kind::Gauge,
            "Limit on open file descriptors (soft RLIMIT_NOFILE).",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time spent, in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since the Unix epoch, in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, v) in families {
        if let Some(v) = v {
            e.family(name, kind, help);
            e.sample(name, &[], v);
        }
    }
}

/// One family with a sample per sharded database that has a value for it.
fn per_database<V: super::exposition::Value>(
    e: &mut Exposition,
    dbs: &[Sharded],
    (name, kind): (&str, Kind),
    help: &str,
    value: impl Fn(&Sharded) -> Option<V>,
) {
    e.family(name, kind, help);
    for d in dbs {
        if let Some(v) = value(d) {
            e.sample(name, &[("database", &d.database)], v);
        }
    }
}

fn gauge(e: &mut Exposition, name: &str, help: &str, v: impl super::exposition::Value) {
    e.family(name, Kind::Gauge, help);
    e.sample(name, &[], v);
}

fn counter(e: &mut Exposition, name: &str, help: &str, v: u64) {
    e.family(name, Kind::Counter, help);
    e.sample(name, &[], v);
}
