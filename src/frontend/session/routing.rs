//! Read/write splitting in the session: which server a transaction goes to, the client's causal position (the WAL
//! position its last write reached, or a token handed over from another connection), and the retry of a read whose
//! replica failed before the client saw anything. The decision is made once per transaction, from its first message.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Session, SessionError};
use crate::cluster::balance::{Floor, Freshness, ReadNeed};
use crate::cluster::{lsn, Cluster, Member};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{command_complete, ready_for_query};
use crate::protocol::frontend::{parse_bind, parse_parse, query_text};
use crate::protocol::{tag, Frame, TxStatus};
use crate::router::classify::{Access, Analysis, RouteHint, TxControl};
use crate::router::consistency::Consistency;
use crate::router::Route;

/// The position that covers a commit that just returned. With synchronous commit the commit record is flushed
/// before the commit returns, so the flush position covers it and is WAL the replicas can already have; with
/// `synchronous_commit = off` only the insert position is sure to be past it (it is flushed within
/// `wal_writer_delay`). The insert position is not used always because it can include other sessions' records that
/// are not yet flushed, which no replica can have, and reads would wait for them in vain.
const CAPTURE_SQL: &str = "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' \
    THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END";

/// How long a `read_all_writes` read waits for the primary's position before it reads from the primary itself.
const POSITION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Client frames of a replica transaction kept for a re-send elsewhere; a longer one is not retried.
const MAX_RETAINED: usize = 64;

#[derive(Default)]
pub(super) struct RoutingState {
    /// `SET shardpool.consistency`: beats the user's and the database's default.
    pub consistency: Option<Consistency>,
    /// `-c shardpool.consistency=...` at startup: beats the defaults, and is what RESET returns to.
    pub startup_consistency: Option<Consistency>,
    /// WAL position the client's reads must see: its last write's, or a causal token it was given.
    pub causal_lsn: u64,
    /// Reads go to the primary until then (cluster clock ms): a write's position could not be read.
    pub primary_until_ms: u64,
    /// Monotonic reads: a position every later read must see (what an earlier read or write is known to have seen).
    pub floor_lsn: u64,
    /// The member the last transaction ran on and how many polls it had begun when it ended: once a later poll
    /// answers, that member's position bounds what the transaction saw and moves `floor_lsn`.
    pub read_mark: Option<(Arc<Member>, u64)>,
    /// The position of the transaction that just ended was captured (it is in `floor_lsn`): no mark needed.
    pub captured: bool,
    /// A bare BEGIN answered locally; sent ahead of the transaction's first real statement, once that statement
    /// has shown where the transaction should run.
    pub deferred_begin: Option<Frame>,
    /// The transaction in progress: its route, member and that member's cluster.
    pub route: Option<Route>,
    pub member: Option<usize>,
    pub cluster: Option<Arc<Cluster>>,
    /// Client frames sent to a replica in this transaction, for a re-send if it fails before the client saw a byte.
    pub retained: Vec<Frame>,
    pub retained_overflow: bool,
    /// `bytes_to_client` when the transaction began: anything more means the client has seen output.
    pub client_mark: u64,
    /// `cout.len()` when the transaction began: what a retry truncates back to.
    pub cout_mark: usize,
    /// Only acknowledgements (ParseComplete, BindComplete, descriptions...) came back so far. They are held, not
    /// sent, while more replies are owed: if the replica then fails, the read is re-run elsewhere and the new
    /// server's identical acknowledgements replace them, so the client never sees a duplicate.
    pub only_acks: bool,
    /// Members that failed this transaction's read.
    pub excluded: Vec<usize>,
    /// The replica refused the read as a write (25006: a volatile function hidden in a view or cast): re-run it on
    /// the primary rather than on another replica.
    pub retry_on_primary: bool,
    /// The sharded database's router (None when unsharded), the shard whose pools `Session::pools` holds, and a
    /// statement queued to run on several shards.
    pub shard_router: Option<Arc<crate::sharding::router::ShardRouter>>,
    pub shard: u16,
    pub fanout: Option<super::sharded::Fanout>,
    /// `SET shardpool.shard_key`: the key of statements whose SQL names none (text, typed per table).
    pub shard_key: Option<String>,
    /// `SET shardpool.shard`: every statement runs on this shard, whatever its keys.
    pub forced_shard: Option<u16>,
    /// The transaction ran something (Query, Execute, FunctionCall), not only Parse/Describe: only then can it
    /// have written.
    pub executed: bool,
    /// The BEGIN answered here and sent ahead of this transaction's first statement: a fence retry defers it again.
    pub begun: Option<Frame>,
    /// A CommandComplete of this transaction may have committed part of it (COMMIT, CALL, DO...): not replayable.
    pub committed_part: bool,
    /// Fence refusals routed again for the transaction being retried.
    pub fence_retries: u8,
    /// The catalog epoch the transaction about to start was placed by, and whether it must be placed again because
    /// that catalog changed while it waited for a server (`Session::placement_moved_while_waiting`).
    pub routed_epoch: Option<i64>,
    pub reroute: bool,
}

impl Session {
    pub(super) fn routing_state(&mut self) -> &mut RoutingState {
        self.routing.get_or_insert_with(Default::default)
    }

    /// The consistency in force: session setting, else the user's, else the database's.
    fn consistency(&self) -> Consistency {
        if let Some(c) = self
            .routing
            .as_ref()
            .and_then(|r| r.consistency.or(r.startup_consistency))
        {
            return c;
        }
        let config = self.ctx.config();
        config
            .user(&self.pools.user)
            .and_then(|u| u.consistency)
            .unwrap_or(self.pools.cluster.settings.consistency)
    }

    /// Decides where the transaction that `frame` starts runs. `None`: answered here, no server needed.
    pub(super) fn route_for(&mut self, frame: &Frame) -> Option<Route> {
        if let Some(r) = self.routing.as_mut() {
            r.excluded.clear();
        }
        if frame.tag == tag::QUERY {
            let sql = query_text(frame.body()).and_then(|t| std::str::from_utf8(t).ok());
            if sql.is_some_and(|sql| self.answer_proxy_command(sql)) {
                return None;
            }
        }
        let deferred = self
            .routing
            .as_ref()
            .is_some_and(|r| r.deferred_begin.is_some());
        if let Some(router) = self.shard_router() {
            // Read before placing: a change during the placement is then seen as one after it (see `attach`).
            let epoch = router.catalog().map(|c| c.epoch);
            match self.place_frame(&router, frame, false) {
                Ok(Some(shard)) => {
                    router.count_shard(shard);
                    self.use_shard(shard);
                    self.routing_state().routed_epoch = epoch;
                }
                Ok(None) => {
                    if deferred && !self.is_held() {
                        self.routing_state().fanout = None;
                        let e = ClientError::error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "a statement for every shard cannot run inside a transaction (transactions are bound to one shard)",
                        );
                        self.reject(frame.tag, &e);
                    }
                    return None;
                }
                Err(e) => {
                    self.reject(frame.tag, &e);
                    return None;
                }
            }
        }
        let cluster = Arc::clone(&self.pools.cluster);
        let sharded = self.shard_router().is_some();
        if !cluster.has_replicas() && !deferred && !sharded {
            return Some(Route::Primary { capture: false });
        }
        if self.mode == crate::config::PoolMode::Session {
            return Some(Route::Primary { capture: false });
        }
        // Only now, past the fast paths, is the statement text looked up (a Bind's means a map lookup).
        // A Bind runs a statement prepared earlier: its text is the client's definition of that statement.
        let def = match frame.tag {
            tag::BIND => {
                parse_bind(frame.body()).and_then(|b| self.statements.get(b.statement).cloned())
            }
            _ => None,
        };
        let text = match frame.tag {
            tag::QUERY => query_text(frame.body()),
            tag::PARSE => parse_parse(frame.body()).map(|p| p.query),
            tag::BIND => def.as_ref().map(|d| &d.query[..]),
            _ => None,
        };
        let text = text.and_then(|t| std::str::from_utf8(t).ok());
        let Some(sql) = text else {
            return Some(self.write_route(deferred, "no statement text"));
        };
        let analysis = self.ctx.analysis(sql, &cluster);
        if deferred {
            return self.route_after_deferred_begin(frame, &analysis);
        }
        if frame.tag == tag::QUERY
            && matches!(
                analysis.tx,
                TxControl::Begin {
                    read_only: None | Some(false)
                }
            )
            && analysis.statements == 1
            && is_bare_begin(sql)
        {
            // Where this transaction runs depends on what comes next (SET TRANSACTION READ ONLY, or nothing).
            self.routing_state().deferred_begin = Some(frame.clone());
            command_complete(&mut self.cout, "BEGIN");
            ready_for_query(&mut self.cout, TxStatus::InTransaction);
            return None;
        }
        let route = self.route_analysis(&analysis, false);
        Some(self.route_with_what_follows(frame, route))
    }

    pub(super) fn write_route(&self, _deferred: bool, reason: &'static str) -> Route {
        // Every write is captured, whatever this session's mode: read_proxy_writes sessions must see it too.
        let capture = self.pools.cluster.has_replicas();
        tracing::debug!(client = self.registration.info.id, reason, "route: primary");
        Route::Primary { capture }
    }

    pub(super) fn route_analysis(&self, a: &Analysis, in_read_only_tx: bool) -> Route {
        match a.hints.route {
            Some(RouteHint::Primary) => return self.write_route(false, "hint route=primary"),
            Some(RouteHint::Replica) => {
                return Route::Replica(ReadNeed {
                    freshness: Freshness::Any,
                    monotonic: false,
                })
            }
            None => {}
        }
        let read_only_tx = in_read_only_tx
            || matches!(
                a.tx,
                TxControl::Begin {
                    read_only: Some(true)
                }
            );
        let is_read = match a.tx {
            TxControl::Begin { .. } => read_only_tx,
            _ => a.access == Access::Read,
        };
        if !is_read {
            return self.write_route(false, a.reason);
        }
        let consistency = a.hints.consistency.unwrap_or_else(|| self.consistency());
        match self.freshness(consistency) {
            Some(freshness) => {
                let need = ReadNeed {
                    freshness,
                    monotonic: consistency != Consistency::Eventual,
                };
                tracing::debug!(
                    client = self.registration.info.id,
                    reason = a.reason,
                    %consistency,
                    ?need,
                    "route: read"
                );
                Route::Replica(need)
            }
            None => {
                tracing::debug!(client = self.registration.info.id, reason = a.reason, %consistency, "route: read on primary");
                Route::Primary { capture: false }
            }
        }
    }

    /// What a replica must satisfy to serve this client's read; `None` means only the primary will do.
    fn freshness(&self, consistency: Consistency) -> Option<Freshness> {
        let cluster = &self.pools.cluster;
        let now = cluster.clock.now_ms();
        let r = self.routing.as_ref();
        let causal = r.map_or(0, |r| r.causal_lsn);
        let at_least = |lsn: u64| match lsn {
            0 => Freshness::Any,
            lsn => Freshness::AtLeast(lsn),
        };
        match consistency {
            Consistency::Strong => None,
            Consistency::Eventual => Some(Freshness::Any),
            Consistency::BoundedStaleness(d) => Some(Freshness::WithinMs(d.as_millis() as u64)),
            _ if r.map_or(0, |r| r.primary_until_ms) > now => None,
            Consistency::ReadYourWrites => Some(at_least(causal)),
            Consistency::ReadProxyWrites => {
                let writes = &cluster.proxy_writes;
                if writes.unknown_until_ms.load(Ordering::Relaxed) > now {
                    return None;
                }
                Some(at_least(causal.max(writes.lsn.load(Ordering::SeqCst))))
            }
            // The primary's position then covers this session's own writes too.
            Consistency::ReadAllWrites => Some(Freshness::CaughtUpWithPrimary),
        }
    }

    /// The position a replica of this shard must have replayed because a remap moved vshards onto it: their rows,
    /// however long ago they were written, are there only from that point (0 when unsharded or nothing moved in).
    fn remap_floor(&self, cluster: &Cluster) -> u64 {
        let (Some(shard), Some(router)) = (cluster.shard, self.shard_router()) else {
            return 0;
        };
        router.catalog().map_or(0, |c| {
            crate::sharding::remap::state::read_floor(
                &c.remaps,
                shard,
                crate::sharding::remap::state::unix_ms(),
            )
        })
    }

    /// Monotonic reads: the floor a replica must meet for this session's next read. While the position the last
    /// transaction saw is not known yet (no poll of its server has answered since it ended), only that server (or
    /// the primary) will do.
    fn monotonic_floor(&mut self, cluster: &Cluster) -> Floor {
        let Some(r) = self.routing.as_mut() else {
            return Floor::default();
        };
        if let Some((m, polls)) = &r.read_mark {
            if m.lsn_poll.load(Ordering::SeqCst) > *polls {
                r.floor_lsn = r.floor_lsn.max(m.lsn.load(Ordering::SeqCst));
                r.read_mark = None;
            }
        }
        match &r.read_mark {
            None => Floor {
                lsn: r.floor_lsn,
                except: None,
                moved_in: 0,
            },
            Some((m, _)) => Floor {
                lsn: u64::MAX,
                except: cluster.members.iter().position(|x| Arc::ptr_eq(x, m)),
                moved_in: 0,
            },
        }
    }

    /// The first statement after a deferred BEGIN decides: COMMIT/ROLLBACK of an empty transaction are answered
    /// here; SET TRANSACTION READ ONLY makes it a read-only transaction (a replica may run it); anything else runs on
    /// the primary, like every explicit read-write transaction.
    fn route_after_deferred_begin(&mut self, frame: &Frame, a: &Analysis) -> Option<Route> {
        if frame.tag == tag::QUERY && a.only_tx_control && a.statements == 1 {
            let done = match a.tx {
                TxControl::Commit => Some("COMMIT"),
                TxControl::Rollback => Some("ROLLBACK"),
                _ => None,
            };
            if let Some(tag_text) = done {
                self.routing_state().deferred_begin = None;
                command_complete(&mut self.cout, tag_text);
                ready_for_query(&mut self.cout, TxStatus::Idle);
                return None;
            }
        }
        if matches!(
            a.tx,
            TxControl::SetTransaction {
                read_only: Some(true)
            }
        ) {
            return Some(self.route_analysis(a, true));
        }
        Some(self.write_route(true, "explicit transaction"))
    }

    /// Sends the deferred BEGIN ahead of the transaction's first statement; its reply is not forwarded (the client
    /// had its answer when it asked).
    pub(super) fn send_deferred_begin(&mut self) {
        let Some(r) = self.routing.as_mut() else {
            return;
        };
        let Some(begin) = r.deferred_begin.take() else {
            return;
        };
        self.sout.extend_from_slice(&begin.raw);
        if r.shard_router.is_some() {
            r.begun = Some(begin);
        }
        self.relay
            .push(crate::frontend::relay::Expect::Query { forward: false });
    }

    /// The transaction status a client is told while no server is attached.
    pub(super) fn idle_status(&self) -> TxStatus {
        if self
            .routing
            .as_ref()
            .is_some_and(|r| r.deferred_begin.is_some())
        {
            TxStatus::InTransaction
        } else {
            TxStatus::Idle
        }
    }

    /// The member to run on. Reads that no replica can serve yet wait (up to `read_your_writes_wait`) for the
    /// monitor to see one catch up, then fall back to the primary.
    pub(super) async fn choose_member(&mut self, route: Route) -> Result<usize, ClientError> {
        let cluster = Arc::clone(&self.pools.cluster);
        let no_writer = || {
            ClientError::error(
                sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "no server of database \"{}\" accepts writes (all are in recovery)",
                    cluster.database
                ),
            )
        };
        let need = match route {
            Route::Primary { .. } => return cluster.writer().ok_or_else(no_writer),
            Route::Replica(need) => need,
        };
        let excluded = self
            .routing
            .as_ref()
            .map(|r| r.excluded.clone())
            .unwrap_or_default();
        let freshness = match need.freshness {
            Freshness::CaughtUpWithPrimary => {
                match cluster.primary_position.current(POSITION_WAIT).await {
                    Some(p) => Freshness::AtLeast(p),
                    None => return cluster.writer().ok_or_else(no_writer),
                }
            }
            f => f,
        };
        let moved_in = self.remap_floor(&cluster);
        let mut floor = if need.monotonic {
            self.monotonic_floor(&cluster)
        } else {
            Floor::default()
        };
        floor.moved_in = moved_in;
        if let Some(i) = cluster.pick_reader(freshness, floor, &excluded) {
            return Ok(i);
        }
        let wait = cluster.settings.ryw_wait;
        let unresolved = floor.lsn == u64::MAX;
        if (matches!(freshness, Freshness::AtLeast(_)) || unresolved) && !wait.is_zero() {
            // Ask for fresh positions now, and again (backing off) while none is far enough: a replica on the same
            // network replays a commit within a millisecond or two, far sooner than the next regular poll.
            let deadline = tokio::time::Instant::now() + wait;
            let mut pause = std::time::Duration::from_micros(500);
            let mut rounds = cluster.request_round();
            let mut next_kick = tokio::time::Instant::now() + pause;
            loop {
                let _ = tokio::time::timeout_at(deadline.min(next_kick), rounds.changed()).await;
                if need.monotonic {
                    floor = self.monotonic_floor(&cluster);
                    floor.moved_in = moved_in;
                }
                if let Some(i) = cluster.pick_reader(freshness, floor, &excluded) {
                    return Ok(i);
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                if now >= next_kick {
                    pause = (pause * 2).min(std::time::Duration::from_millis(10));
                    next_kick = now + pause;
                    rounds = cluster.request_round();
                }
            }
        }
        cluster.writer().ok_or_else(no_writer)
    }

    /// A replica refused a connection: ban it and read elsewhere. `None`: nothing else to try.
    pub(super) fn after_checkout_failure(
        &mut self,
        route: Route,
        member: usize,
        e: &crate::backend::pool::PoolError,
    ) -> Option<Route> {
        let cluster = Arc::clone(&self.pools.cluster);
        if !matches!(route, Route::Replica(_)) || cluster.writer() == Some(member) {
            return None;
        }
        cluster.ban(&cluster.members[member], &format!("checkout failed: {e}"));
        let state = self.routing_state();
        state.excluded.push(member);
        (state.excluded.len() < cluster.members.len()).then_some(route)
    }

    pub(super) fn on_attached(&mut self, route: Route, member: usize) {
        if !self.in_flight {
            self.in_flight = true;
            self.ctx.spin.enter(self.registration.info.id);
        }
        let cluster = Arc::clone(&self.pools.cluster);
        let m = &cluster.members[member];
        m.outstanding.fetch_add(1, Ordering::Relaxed);
        match route {
            Route::Primary { .. } if cluster.writer() == Some(member) => {
                m.writes_served.fetch_add(1, Ordering::Relaxed)
            }
            _ => m.reads_served.fetch_add(1, Ordering::Relaxed),
        };
        if !cluster.has_replicas() && self.routing.is_none() {
            return;
        }
        let mark = self.bytes_to_client;
        let cout_mark = self.cout.len();
        let state = self.routing_state();
        state.route = Some(route);
        state.member = Some(member);
        state.cluster = Some(cluster);
        state.retained.clear();
        state.retained_overflow = false;
        state.client_mark = mark;
        state.cout_mark = cout_mark;
        state.only_acks = true;
        state.executed = false;
        state.begun = None;
        state.committed_part = false;
    }

    /// Bookkeeping when the server goes back (or is dropped).
    pub(super) fn on_detached(&mut self) {
        if self.in_flight {
            self.in_flight = false;
            self.ctx.spin.leave();
        }
        let cluster = match self.routing.as_mut() {
            Some(r) => {
                let ran = r.route.take().is_some() && r.executed;
                r.retained.clear();
                let at = r.cluster.take().zip(r.member.take());
                // Monotonic reads: what this transaction saw is bounded by its server's next answer to the monitor
                // (unless its position was captured, exactly, after its commit).
                if let (Some((c, m)), true, false) = (&at, ran, std::mem::take(&mut r.captured)) {
                    if let Some(member) = c.members.get(*m) {
                        let polls = member.polls_started.load(Ordering::SeqCst);
                        r.read_mark = Some((Arc::clone(member), polls));
                    }
                }
                at
            }
            None => Some((Arc::clone(&self.pools.cluster), 0)),
        };
        if let Some((c, m)) = cluster {
            if let Some(member) = c.members.get(m) {
                member.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Notes what a transaction's client frames mean for routing: whether it executed anything (a write's position
    /// is worth capturing), and, on a replica, the frames themselves so a failed read can be re-sent elsewhere.
    pub(super) fn note_client_frame(&mut self, frame: &Frame) {
        let Some(r) = self.routing.as_mut() else {
            return;
        };
        r.executed |= matches!(frame.tag, tag::QUERY | tag::EXECUTE | tag::FUNCTION_CALL);
        // Kept on a replica for a re-send elsewhere; on a shard for a re-route after a remap fence's refusal.
        if !matches!(r.route, Some(Route::Replica(_))) && r.shard_router.is_none() {
            return;
        }
        if r.retained.len() < MAX_RETAINED {
            r.retained.push(frame.clone());
        } else {
            r.retained_overflow = true;
        }
    }

    /// Whether a replica read that just failed can be re-run elsewhere without the client noticing: nothing reached
    /// the client yet, and the whole transaction so far is retained.
    pub(super) fn read_can_be_retried(&self, e: &SessionError) -> bool {
        let Some(r) = self.routing.as_ref() else {
            return false;
        };
        matches!(
            e,
            SessionError::ServerIo(_) | SessionError::ServerProtocol(_)
        ) && self.server.is_some()
            && !r.retained.is_empty()
            && Self::replica_read_unseen(r, self.bytes_to_client)
    }

    /// A replica read of which the client has seen nothing but held acknowledgements.
    fn replica_read_unseen(r: &RoutingState, bytes_to_client: u64) -> bool {
        matches!(r.route, Some(Route::Replica(_)))
            && !r.retained_overflow
            && r.only_acks
            && bytes_to_client == r.client_mark
    }

    /// Notes a server message forwarded to the client during a replica read.
    pub(super) fn note_forwarded(&mut self, message: u8) {
        if let Some(r) = self.routing.as_mut() {
            r.only_acks &= matches!(
                message,
                tag::PARSE_COMPLETE
                    | tag::BIND_COMPLETE
                    | tag::CLOSE_COMPLETE
                    | tag::PARAMETER_DESCRIPTION
                    | tag::ROW_DESCRIPTION
                    | tag::NO_DATA
            );
        }
    }

    /// Whether output for the client is held back: a replica read that has produced only acknowledgements while the
    /// server still owes replies (once nothing more is owed, e.g. the client sent Flush and waits, it is sent).
    pub(super) fn holding_acks(&self) -> bool {
        self.routing.as_ref().is_some_and(|r| {
            Self::replica_read_unseen(r, self.bytes_to_client) && !self.relay.is_empty()
        })
    }

    /// Drops the failed replica's connection, bans the replica, and re-sends the transaction's frames on another
    /// member. Returns false when no server could be had (the client has been sent the error).
    pub(super) async fn retry_read(&mut self, e: SessionError) -> Result<bool, SessionError> {
        let Some(r) = self.routing.as_mut() else {
            return Ok(false);
        };
        let frames = std::mem::take(&mut r.retained);
        let cout_mark = r.cout_mark;
        let on_primary = std::mem::take(&mut r.retry_on_primary);
        let mut route = r.route.unwrap_or(Route::Primary { capture: false });
        let cluster = r.cluster.clone();
        let member = r.member;
        if on_primary {
            // The replica is healthy; the statement writes after all.
            route = self.write_route(false, "replica refused a hidden write (25006)");
            tracing::info!(
                client = self.registration.info.id,
                "replica refused the read as a write; re-running it on the primary"
            );
        } else {
            if let (Some(c), Some(m)) = (cluster, member) {
                c.ban(&c.members[m], &format!("read failed: {e}"));
                self.routing_state().excluded.push(m);
            }
            tracing::info!(client = self.registration.info.id, error = %e, "replica failed before the client saw a reply; retrying the read elsewhere");
        }
        self.abandon_unseen(cout_mark);
        let Some(first) = frames.first().cloned() else {
            return Ok(false);
        };
        Box::pin(self.attach(route, &first)).await?;
        if self.server.is_none() {
            return Ok(false);
        }
        for f in frames {
            if self.on_client_frame(f)? == super::Flow::ClientGone {
                return Err(SessionError::ClientGone);
            }
        }
        Ok(true)
    }

    /// Drops the attached server mid-reply (it is not reusable) and everything of the transaction the client has not
    /// seen: what was queued for the server, the replies owed, and the output held since `cout_mark` (a re-run
    /// produces the same acknowledgements again). For a transaction that is about to be run again elsewhere.
    pub(super) fn abandon_unseen(&mut self, cout_mark: usize) {
        if let Some(mut server) = self.server.take() {
            server.broken = true;
            self.on_detached();
            self.registration.info.set_server(None);
            drop(server);
        }
        self.relay = Default::default();
        self.sout.clear();
        self.cout.truncate(cout_mark);
        self.pending_effects.clear();
        self.batch.clear();
        self.held_parameter_description = None;
    }

    /// A FATAL error from a replica before the client has seen anything of this transaction: the server is ending
    /// the session (shutdown, crash restart), so the read is better re-run elsewhere.
    /// Also a read the replica refused as a write (SQLSTATE 25006, read_only_sql_transaction: a volatile function
    /// the classification could not see, inside a view, operator or cast): that one is re-run on the primary.
    pub(super) fn replica_failed_unseen(
        &mut self,
        e: &crate::protocol::backend::ErrorFields,
    ) -> bool {
        let fatal = e.severity == "FATAL" || e.severity == "PANIC";
        let refused_write = e.code == "25006";
        if !(fatal || refused_write) {
            return false;
        }
        let flushed = self.bytes_to_client;
        let Some(r) = self.routing.as_mut() else {
            return false;
        };
        let retry = Self::replica_read_unseen(r, flushed);
        if retry {
            r.retry_on_primary = refused_write && !fatal;
        }
        retry
    }

    /// Whether the transaction that just ended wrote on the primary under read-your-writes: its WAL position must
    /// be recorded before the server goes back.
    pub(super) fn wants_capture(&self) -> bool {
        self.routing.as_ref().is_some_and(|r| {
            r.executed && matches!(r.route, Some(Route::Primary { capture: true }))
        })
    }

    /// Reads the primary's WAL position (see `CAPTURE_SQL`) on the connection that just committed: it covers the commit, so any
    /// replica that has replayed up to it holds the client's writes. The client already has its reply.
    pub(super) async fn capture_position(&mut self) {
        let timeout = self.pool.config().connect_timeout;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let result = tokio::time::timeout(timeout, server.query_rows(CAPTURE_SQL)).await;
        let position = match result {
            Ok(Ok(rows)) => rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.as_deref())
                .and_then(lsn::parse),
            _ => {
                server.broken = true;
                None
            }
        };
        let cluster = Arc::clone(&self.pools.cluster);
        let state = self.routing_state();
        match position {
            Some(p) => {
                state.causal_lsn = state.causal_lsn.max(p);
                state.floor_lsn = state.floor_lsn.max(p);
                state.captured = true;
                cluster.proxy_writes.lsn.fetch_max(p, Ordering::SeqCst);
            }
            None => {
                tracing::warn!("could not read the write position; reads that must see it use the primary for a while");
                let until =
                    cluster.clock.now_ms() + cluster.settings.ban_time.as_millis().max(1000) as u64;
                state.primary_until_ms = until;
                cluster
                    .proxy_writes
                    .unknown_until_ms
                    .fetch_max(until, Ordering::Relaxed);
            }
        }
    }

    /// Answers `SET/SHOW/RESET shardpool.*` commands. Returns true if `sql` was one.
    fn answer_proxy_command(&mut self, sql: &str) -> bool {
        use crate::router::proxy_commands::{parse, ProxyCommand, ProxyParam};
        let cmd = match parse(sql) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return false,
            Err(e) => {
                self.proxy_error(e.sqlstate(), e.to_string());
                return true;
            }
        };
        let status = self.idle_status();
        match cmd {
            ProxyCommand::Set(value) => {
                if let Err(e) = self.set_proxy_value(value) {
                    self.proxy_error(e.code, e.message);
                    return true;
                }
                command_complete(&mut self.cout, "SET");
            }
            ProxyCommand::Reset(ProxyParam::Consistency) => {
                self.routing_state().consistency = None;
                command_complete(&mut self.cout, "RESET");
            }
            ProxyCommand::Reset(ProxyParam::CausalToken) => {
                let state = self.routing_state();
                state.causal_lsn = 0;
                command_complete(&mut self.cout, "RESET");
            }
            ProxyCommand::Show(ProxyParam::Consistency) => {
                let c = self.consistency().to_string();
                self.show_value("shardpool.consistency", &c);
            }
            ProxyCommand::Show(ProxyParam::CausalToken) => {
                let p = self.routing.as_ref().map_or(0, |r| r.causal_lsn);
                self.show_value("shardpool.causal_token", &lsn::format(p));
            }
            ProxyCommand::ShowRoute(sql) => self.show_route(&sql),
            ProxyCommand::Reset(ProxyParam::ShardKey) if self.shard_router().is_some() => {
                self.routing_state().shard_key = None;
                command_complete(&mut self.cout, "RESET");
            }
            ProxyCommand::Reset(ProxyParam::Shard) if self.shard_router().is_some() => {
                self.routing_state().forced_shard = None;
                command_complete(&mut self.cout, "RESET");
            }
            ProxyCommand::Show(ProxyParam::ShardKey) if self.shard_router().is_some() => {
                let k = self
                    .routing
                    .as_ref()
                    .and_then(|r| r.shard_key.clone())
                    .unwrap_or_default();
                self.show_value("shardpool.shard_key", &k);
            }
            ProxyCommand::Show(ProxyParam::Shard) if self.shard_router().is_some() => {
                let n = self
                    .routing
                    .as_ref()
                    .and_then(|r| r.forced_shard)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                self.show_value("shardpool.shard", &n);
            }
            ProxyCommand::Reset(ProxyParam::ShardKey | ProxyParam::Shard)
            | ProxyCommand::Show(ProxyParam::ShardKey | ProxyParam::Shard) => {
                self.proxy_error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("database \"{}\" is not sharded", self.pools.database),
                );
                return true;
            }
        }
        ready_for_query(&mut self.cout, status);
        true
    }

    /// Takes a `shardpool.*` value given with SET or at startup.
    fn set_proxy_value(
        &mut self,
        value: crate::router::proxy_commands::ProxyValue,
    ) -> Result<(), ClientError> {
        use crate::router::proxy_commands::ProxyValue;
        let sharded = self.shard_router().is_some();
        match value {
            ProxyValue::Consistency(c) => self.routing_state().consistency = Some(c),
            ProxyValue::CausalToken(token) => {
                let p = parse_token(&token).ok_or_else(|| {
                    ClientError::error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!(
                            "invalid value for parameter \"shardpool.causal_token\": \"{token}\" \
                             (expected a WAL position such as 0/3000148)"
                        ),
                    )
                })?;
                // A token only ever moves the session's position forward.
                let state = self.routing_state();
                state.causal_lsn = state.causal_lsn.max(p);
            }
            ProxyValue::ShardKey(k) if sharded => self.routing_state().shard_key = Some(k),
            ProxyValue::Shard(n) if sharded => {
                let shard = self.check_shard_number(n)?;
                self.routing_state().forced_shard = Some(shard);
            }
            ProxyValue::ShardKey(_) | ProxyValue::Shard(_) => {
                return Err(ClientError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("database \"{}\" is not sharded", self.pools.database),
                ))
            }
        }
        Ok(())
    }

    /// Applies the `shardpool.*` settings the client gave at startup; they are what RESET returns to for the
    /// consistency. An error refuses the login (FATAL), as Postgres refuses a bad `-c` option.
    pub fn apply_startup_settings(
        &mut self,
        values: Vec<crate::router::proxy_commands::ProxyValue>,
    ) -> Result<(), ClientError> {
        for v in values {
            self.set_proxy_value(v).map_err(|mut e| {
                e.severity = crate::protocol::backend::Severity::Fatal;
                e
            })?;
        }
        if let Some(r) = self.routing.as_mut() {
            r.startup_consistency = r.consistency.take();
        }
        Ok(())
    }

    fn proxy_error(&mut self, code: &'static str, message: String) {
        self.home.stats.errors.count(code);
        ClientError::error(code, message).write(&mut self.cout);
        let status = self.idle_status();
        ready_for_query(&mut self.cout, status);
    }

    fn show_value(&mut self, name: &str, value: &str) {
        use crate::protocol::backend::{data_row, row_description_text as row_description};
        row_description(&mut self.cout, &[name]);
        data_row(&mut self.cout, &[Some(value)]);
        command_complete(&mut self.cout, "SHOW");
    }

    /// `SHOW shardpool.route <sql>`: where the statement would go now, and why, without running it.
    fn show_route(&mut self, sql: &str) {
        use crate::protocol::backend::{data_row, row_description_text as row_description};
        let cluster = Arc::clone(&self.pools.cluster);
        let analysis = self.ctx.analysis(sql, &cluster);
        let route = if cluster.has_replicas() {
            self.route_analysis(&analysis, false)
        } else {
            Route::Primary { capture: false }
        };
        let (kind, server) = match route {
            Route::Primary { .. } => (
                "primary",
                cluster.writer().map(|i| cluster.members[i].addr_text()),
            ),
            Route::Replica(ReadNeed {
                freshness: Freshness::CaughtUpWithPrimary,
                ..
            }) => (
                "replica that has the primary's position when the read runs, else primary",
                None,
            ),
            Route::Replica(need) => {
                let mut floor = if need.monotonic {
                    self.monotonic_floor(&cluster)
                } else {
                    Floor::default()
                };
                floor.moved_in = self.remap_floor(&cluster);
                let server = cluster
                    .pick_reader(need.freshness, floor, &[])
                    .map(|i| cluster.members[i].addr_text());
                match server {
                    Some(s) => ("replica", Some(s)),
                    None => (
                        "primary (no replica eligible now)",
                        cluster.writer().map(|i| cluster.members[i].addr_text()),
                    ),
                }
            }
        };
        let consistency = analysis
            .hints
            .consistency
            .unwrap_or_else(|| self.consistency())
            .to_string();
        let access = match analysis.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        row_description(
            &mut self.cout,
            &["route", "server", "access", "reason", "consistency"],
        );
        data_row(
            &mut self.cout,
            &[
                Some(kind),
                server.as_deref(),
                Some(access),
                Some(analysis.reason),
                Some(consistency.as_str()),
            ],
        );
        command_complete(&mut self.cout, "SHOW");
    }
}

/// A causal token is a WAL position in Postgres' own text form (`16/B374D848`), so it can be compared with
/// `pg_last_wal_replay_lsn()` by hand too.
fn parse_token(token: &str) -> Option<u64> {
    lsn::parse(token.trim().trim_matches('\''))
}

/// BEGIN forms whose deferral cannot change their meaning: no options that could fail when finally sent.
fn is_bare_begin(sql: &str) -> bool {
    let mut words = sql.trim().trim_end_matches(';').split_ascii_whitespace();
    let is = |w: Option<&str>, want: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(want));
    let (first, second, third) = (words.next(), words.next(), words.next());
    third.is_none()
        && ((is(first, "begin")
            && (second.is_none() || is(second, "transaction") || is(second, "work")))
            || (is(first, "start") && is(second, "transaction")))
}
