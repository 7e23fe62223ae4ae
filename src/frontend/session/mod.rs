//! A logged-in client's session: two states, *idle* (no server; reads the client's next message) and *attached*
//! (a server is lent for the current transaction; bytes flow both ways through `attached::pump`). A server is taken
//! at a transaction's first message and given back at ReadyForQuery 'I' once every reply owed is in, so the router
//! can choose a different server for every transaction. Everything a client set up (settings, prepared statements)
//! lives here, not on the server, and is re-created on whichever server the client gets.

mod attached;
mod client_messages;
mod fence_retry;
mod held;
mod pipeline;
mod routing;
mod sharded;
mod sharded_batch;
mod sharded_copy;
mod sharded_extended;
mod sharded_scatter;

use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::prepared::ClientStatements;
use super::relay::Relay;
use super::spin::{Awaiting, Spin};
use super::stream::ClientStream;
use crate::backend::{Pool, ServerConn};
use crate::cluster::PoolSet;
use crate::config::{PoolMode, SessionFeatures};
use crate::context::{ClientRegistration, ClientState, Context};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::ready_for_query;
use crate::protocol::framing::split_frame_within;
use crate::protocol::{tag, Frame, TxStatus};
use crate::router::session_effects::{SessionEffect, Setting};
use crate::router::Route;

/// How long a terminated session tries to deliver its last ErrorResponse.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// The session's end when its client made no progress for `client_stall_timeout` while a server waited on it;
/// counted for SHOW LISTS.
pub(super) fn client_stalled(ctx: &Context, limit: std::time::Duration) -> SessionError {
    ctx.client_stalls.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        ?limit,
        "client stalled while holding a server; disconnecting it"
    );
    SessionError::Terminated(ClientError::fatal(
        sqlstate::CONNECTION_FAILURE,
        format!(
            "terminating connection: the client neither read nor sent anything for {} while a server waited on it (client_stall_timeout)",
            crate::config::ConfigDuration(limit)
        ),
    ))
}

/// A shard connection used outside the attached pump (fan-outs) failing.
impl From<crate::backend::server::ServerIoError> for SessionError {
    fn from(e: crate::backend::server::ServerIoError) -> Self {
        SessionError::ServerIo(std::io::Error::other(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("client closed the connection")]
    ClientGone,
    #[error("client protocol violation: {0}")]
    ClientProtocol(String),
    #[error("server I/O: {0}")]
    ServerIo(std::io::Error),
    #[error("server protocol error: {0}")]
    ServerProtocol(String),
    #[error("session ended: {}", .0.message)]
    Terminated(ClientError),
    /// A remap fence refused a transaction the client has seen nothing of: it is routed again (`fence_retry`).
    #[error("a remap fence refused the transaction; routing it again")]
    FenceRefused,
}

/// What a session does with a client message that arrived while idle.
enum Step<'a> {
    Answered,
    Run(Pin<Box<dyn Future<Output = Result<(), SessionError>> + Send + 'a>>),
}

/// Why an idle session's wait ended.
enum IdleWake {
    Read(std::io::Result<usize>),
    Shutdown,
    Timeout,
}

/// What the session decided after a client message.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    ClientGone,
}

pub struct Session {
    ctx: Arc<Context>,
    /// Counted in the context's spin gate as having a transaction in flight.
    in_flight: bool,
    client: ClientStream,
    registration: ClientRegistration,
    /// This client's pools, one per server of its database; replaced by a fresh set after a RELOAD.
    pools: Arc<PoolSet>,
    /// The pool of the server attached now (or last): the one it goes back to and whose counters it bumps.
    pool: Arc<Pool>,
    /// Where this client is counted (SHOW POOLS cl_*): its home pool, whichever shard or replica it uses.
    home: Arc<Pool>,
    mode: PoolMode,
    session_features: SessionFeatures,
    cin: BytesMut,
    cout: BytesMut,
    server: Option<Box<ServerConn>>,
    sout: BytesMut,
    relay: Relay,
    statements: ClientStatements,
    /// Session effects (SET/RESET) of named statements, replayed each time one is executed.
    statement_effects: crate::backend::statements::HashKeyed<Vec<SessionEffect>>,
    /// Settings from the startup packet: what RESET returns to.
    startup_settings: Arc<BTreeMap<String, String>>,
    /// The client's current session settings, re-applied on every server it gets. Shared (copy on write) with
    /// `startup_settings`, with the servers that have them applied, and at login with every client that asked for
    /// the same settings, so 10,000 clients of one application hold one map, not 20,000.
    settings: Arc<BTreeMap<String, String>>,
    /// Effects seen in the transaction in progress; they take hold only if it commits.
    pending_effects: Vec<SessionEffect>,
    /// ParameterStatus values the client has been told: the pool's shared baseline, plus this client's own values
    /// where they differ (sharing the baseline keeps an idle client small).
    told: super::startup_params::Told,
    /// Why this client keeps its server (LISTEN, temp tables...), if it does.
    pinned: Option<&'static str>,
    batch_failed: bool,
    last_was_rollback: bool,
    /// Client messages of the batch being sent (since the last Sync) and of the previous one, kept so a batch that
    /// failed only because a statement went stale under DDL can be re-sent once, transparently.
    batch: Vec<Frame>,
    last_batch: Vec<Frame>,
    replay: Option<Vec<Frame>>,
    replayed: bool,
    batch_truncated: bool,
    last_batch_whole: bool,
    /// The client has sent extended-protocol messages since its last Sync or Flush: the server waits for the rest.
    batch_open: bool,
    /// The last message sent to the server ended a batch (Sync, Query, FunctionCall): whatever the client sends next
    /// starts a new transaction unless the server's ReadyForQuery says one is open.
    sent_batch_end: bool,
    /// Client input is held back from a replica until it is at rest, because it starts a batch that must be routed
    /// on its own (see `pipeline::holds_next_batch`).
    holding_batch: bool,
    /// A Describe's ParameterDescription, held until its RowDescription/NoData arrives: if the Describe fails and is
    /// re-sent, the client must not receive the first half twice.
    held_parameter_description: Option<bytes::Bytes>,
    xact_started: Option<Instant>,
    /// The client_idle_timeout timer, created at the first idle wait when the timeout is on and reset at each.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Read/write routing state: consistency, causal position, the transaction's route. Boxed and created on first
    /// use, so sessions on databases without replicas (and idle sessions) do not carry it.
    routing: Option<Box<routing::RoutingState>>,
    /// Bytes written to the client so far: tells whether a failed read already showed the client something.
    bytes_to_client: u64,
    tally: Tally,
}

/// Pool counters this session has not added to its pool yet. Adding them once per transaction instead of on every
/// read and write keeps the pool's shared counters (one cache line for all its clients) from bouncing between the
/// runtime's threads several times per transaction.
#[derive(Debug, Default)]
struct Tally {
    bytes_in: u64,
    queries: u64,
    /// `bytes_to_client` as of the last settlement.
    settled_out: u64,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: Arc<Context>,
        client: ClientStream,
        registration: ClientRegistration,
        pools: Arc<PoolSet>,
        mode: PoolMode,
        startup_settings: Arc<BTreeMap<String, String>>,
        told: super::startup_params::Told,
    ) -> Session {
        let session_features = ctx.config().general.session_features;
        let pool = Arc::clone(pools.home());
        pool.stats.clients.fetch_add(1, Ordering::Relaxed);
        let home = Arc::clone(&pool);
        let routing = ctx.shard_router(&pools.database).map(|router| {
            Box::new(routing::RoutingState {
                shard: router.config.default_shard,
                shard_router: Some(router),
                ..Default::default()
            })
        });
        Session {
            idle_timer: None,
            ctx,
            client,
            registration,
            pools,
            pool,
            home,
            mode,
            session_features,
            cin: BytesMut::new(),
            cout: BytesMut::new(),
            server: None,
            sout: BytesMut::new(),
            relay: Relay::default(),
            statements: ClientStatements::default(),
            statement_effects: Default::default(),
            settings: Arc::clone(&startup_settings),
            startup_settings,
            pending_effects: Vec::new(),
            told,
            pinned: None,
            batch_failed: false,
            last_was_rollback: false,
            batch: Vec::new(),
            last_batch: Vec::new(),
            replay: None,
            replayed: false,
            batch_truncated: false,
            last_batch_whole: false,
            batch_open: false,
            sent_batch_end: false,
            holding_batch: false,
            held_parameter_description: None,
            xact_started: None,
            routing,
            bytes_to_client: 0,
            tally: Tally::default(),
            in_flight: false,
        }
    }

    /// The client's stream, for the login reply (sent once the session has accepted the client's startup settings).
    pub fn client_mut(&mut self) -> &mut ClientStream {
        &mut self.client
    }

    /// The session's whole run as one heap future. The block owns the session and `run` borrows it, so the
    /// future holds it once.
    pub fn into_run(mut self) -> Pin<Box<impl Future<Output = Result<(), SessionError>> + Send>> {
        Box::pin(async move { self.run().await })
    }

    /// Runs the session to its end; any server still attached is cleaned up (or closed) before returning. Takes
    /// `&mut self` rather than `self`: an `async fn` that takes its receiver by value keeps two copies of it in its
    /// future (the argument and the moved local), 712 bytes more for every connected client.
    pub async fn run(&mut self) -> Result<(), SessionError> {
        let result = self.serve().await;
        // The ending is boxed: its locals (the result, a flush) would otherwise be laid out next to `serve`'s
        // state and make every session's future larger for a step each session takes once.
        Box::pin(self.finish(result)).await
    }

    async fn finish(&mut self, result: Result<(), SessionError>) -> Result<(), SessionError> {
        if let Some(server) = self.server.take() {
            Box::pin(self.give_back_after_disconnect(server)).await;
        }
        match result {
            Err(SessionError::ClientGone) => Ok(()),
            Err(SessionError::Terminated(e)) => {
                // After whatever is still queued (the rest of forwarded messages), so the framing holds. Bounded:
                // a client that stopped reading gets no more time than the error is worth.
                self.home.stats.errors.count(e.code);
                e.write(&mut self.cout);
                let _ = tokio::time::timeout(FINAL_FLUSH, self.flush_client()).await;
                Ok(())
            }
            other => other,
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(frame) = self.next_idle_frame().await? else {
                return Ok(());
            };
            // Decided without awaiting, so no frame is held across an await in this loop: it goes into the boxed
            // transaction or is dropped (one held across the flush below kept 40 bytes in every idle session).
            match self.next_step(frame)? {
                Step::Answered => {}
                // The attached state's future (or a fan-out's) is boxed, once per transaction: an idle
                // session's task then holds only what idleness needs.
                Step::Run(work) => {
                    work.await?;
                    continue;
                }
            }
            if self.cin.is_empty() {
                self.flush_client().await?;
            }
        }
    }

    /// What the client's message `frame` needs: nothing more (answered here), a fan-out over shards, or a
    /// transaction on a server.
    fn next_step(&mut self, frame: Frame) -> Result<Step<'_>, SessionError> {
        if self.answer_locally(&frame)? {
            return Ok(Step::Answered);
        }
        let Some(route) = self.route_for(&frame) else {
            // Answered here (a deferred BEGIN, a shardpool.* command), or a fan-out was queued.
            return Ok(match self.routing.as_mut().and_then(|r| r.fanout.take()) {
                Some(f) => Step::Run(Box::pin(async move {
                    self.run_fanout(f).await?;
                    if self.cin.is_empty() {
                        self.flush_client().await?;
                    }
                    Ok(())
                })),
                None => Step::Answered,
            });
        };
        Ok(Step::Run(Box::pin(self.transaction(route, frame))))
    }

    /// One transaction (or, in session mode, the rest of the session) on a server: attach, pump until the server
    /// can go back, and re-run a replica read that failed unseen.
    async fn transaction(&mut self, route: Route, frame: Frame) -> Result<(), SessionError> {
        self.attach(route, &frame).await?;
        if self.take_reroute() {
            self.put_back(&frame);
            return Ok(());
        }
        if self.server.is_none() {
            // Attach failed and the error is queued for the client: send it before waiting for more input.
            if self.cin.is_empty() {
                self.flush_client().await?;
            }
            return Ok(());
        }
        if self.on_client_frame(frame)? == Flow::ClientGone {
            return Err(SessionError::ClientGone);
        }
        loop {
            match self.run_attached().await {
                Err(SessionError::FenceRefused) => {
                    return Box::pin(self.reroute_after_fence()).await
                }
                Err(e) if self.read_can_be_retried(&e) => {
                    if !Box::pin(self.retry_read(e)).await? {
                        // No server for the retry; the client has the error.
                        return Ok(());
                    }
                }
                other => return other,
            }
        }
    }

    /// Waits for the client's next whole message while no server is attached. `None` means the client left.
    async fn next_idle_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        let (idle_timeout, max_message) = {
            let config = self.ctx.config();
            let g = &config.general;
            (g.client_idle_timeout.enabled(), g.max_message_size)
        };
        loop {
            match split_frame_within(&mut self.cin, max_message) {
                Ok(Some(f)) => {
                    if self.wants_lookahead(&f) {
                        self.read_rest_of_batch().await?;
                    }
                    return Ok(Some(f));
                }
                Ok(None) => {}
                Err(e) => return Err(protocol_violation(e.to_string())),
            }
            if self.cin.is_empty() {
                // Idle clients hold no buffers: this is what keeps thousands of idle clients cheap. The next
                // transaction on this thread reuses them.
                crate::frontend::buffers::give(&mut self.cin);
                if self.cout.is_empty() {
                    crate::frontend::buffers::give(&mut self.cout);
                }
                crate::frontend::buffers::give(&mut self.sout);
            }
            if self.ctx.is_shutting_down() {
                return Err(SessionError::Terminated(ClientError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                )));
            }
            self.registration.info.set_state(ClientState::Idle);
            if let Some(d) = idle_timeout {
                let deadline = tokio::time::Instant::now() + d;
                match self.idle_timer.as_mut() {
                    Some(t) => t.as_mut().reset(deadline),
                    None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
            if let Some(spin) = self.client_spin() {
                // Boxed: the spin's state is then on the heap only while it runs, not in every idle session.
                let Some(n) = Box::pin(self.spin_for_client(spin)).await? else {
                    // Gave up: wait the usual way (this spin's failure makes the next ones skip).
                    continue;
                };
                if n == 0 {
                    return Ok(None);
                }
                self.tally.bytes_in += n as u64;
                continue;
            }
            // One poll function over the client socket, the idle timer and the shutdown flag, instead of a select
            // of three futures: what an idle session holds while it waits is a few pointers.
            let (client, cin, timer) = (&mut self.client, &mut self.cin, &mut self.idle_timer);
            let (info, ctx) = (&self.registration.info, &self.ctx);
            let woke = poll_fn(|cx| {
                info.wake_on_shutdown(cx.waker());
                if ctx.is_shutting_down() {
                    return Poll::Ready(IdleWake::Shutdown);
                }
                if let Some(t) = timer.as_mut().filter(|_| idle_timeout.is_some()) {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(IdleWake::Timeout);
                    }
                }
                client.poll_read_idle(cx, cin).map(IdleWake::Read)
            })
            .await;
            let n = match woke {
                IdleWake::Read(r) => r.map_err(SessionError::ClientIo)?,
                IdleWake::Shutdown => continue,
                IdleWake::Timeout => {
                    return Err(SessionError::Terminated(ClientError::fatal(
                        sqlstate::IDLE_SESSION_TIMEOUT,
                        "terminating connection due to idle-session timeout",
                    )));
                }
            };
            if n == 0 {
                return Ok(None);
            }
            self.tally.bytes_in += n as u64;
        }
    }

    /// The client's next message while servers wait for it (a sharded COPY's rows): a client silent for
    /// `client_stall_timeout` is disconnected.
    async fn next_frame_while_owed(&mut self) -> Result<Option<Frame>, SessionError> {
        match self.ctx.config().general.client_stall_timeout.enabled() {
            None => self.next_idle_frame().await,
            Some(limit) => tokio::time::timeout(limit, self.next_idle_frame())
                .await
                .map_err(|_| client_stalled(&self.ctx, limit))?,
        }
    }

    /// The spin budget if this session may busy-poll now for `what`: no other session has work and spinning is
    /// configured. Aloneness is checked first, on every wait: two atomic loads are cheaper than reading the
    /// configuration, and under load the answer is almost always no.
    pub(super) fn spin_budget(&self, what: Awaiting) -> Option<std::time::Duration> {
        if !self.ctx.spin.alone(self.registration.info.id, what) {
            return None;
        }
        self.ctx.config().general.spin_wait.enabled()
    }

    /// A spin on the client before sleeping on it, if this is the proxy's only client with work: one that just got
    /// its reply is likely to send its next message within microseconds.
    fn client_spin(&self) -> Option<Spin> {
        if !matches!(self.client, ClientStream::Plain(_)) {
            return None;
        }
        let budget = self.spin_budget(Awaiting::Client)?;
        self.ctx
            .spin
            .begin(self.registration.info.id, Awaiting::Client, budget)
    }

    /// Runs a spin on the client. `Some(n)`: it read `n` bytes (0 at EOF); `None`: it gave up.
    async fn spin_for_client(&mut self, spin: Spin) -> Result<Option<usize>, SessionError> {
        let ClientStream::Plain(stream) = &self.client else {
            return Ok(None);
        };
        crate::frontend::stream::prepare_read_buffer(&mut self.cin);
        let got = spin
            .run(&self.ctx.spin, stream, &mut self.cin)
            .await
            .map_err(SessionError::ClientIo)?;
        if got.is_none() && self.cin.is_empty() {
            crate::frontend::buffers::give(&mut self.cin);
        }
        Ok(got)
    }

    /// Messages that need no server: returns true if answered here.
    fn answer_locally(&mut self, frame: &Frame) -> Result<bool, SessionError> {
        if let Some(why) = crate::protocol::frontend::malformed(frame.tag, frame.body()) {
            return Err(protocol_violation(why));
        }
        if self.relay.skip_until_sync {
            if frame.tag == tag::SYNC {
                self.relay.skip_until_sync = false;
                ready_for_query(&mut self.cout, TxStatus::Idle);
            }
            return Ok(true);
        }
        match frame.tag {
            tag::TERMINATE => Err(SessionError::ClientGone),
            tag::SYNC => {
                let status = self.idle_status();
                ready_for_query(&mut self.cout, status);
                Ok(true)
            }
            tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => Ok(true),
            tag::CLOSE => Ok(self.close_statement_locally(frame)),
            tag::PARSE => self.parse_locally(frame),
            tag::QUERY => self.deallocate_locally(frame),
            _ => Ok(false),
        }
    }

    /// Borrows a server for the transaction that `first` starts, on the member `route` picks, and brings it up to
    /// the client's session state.
    async fn attach(&mut self, route: Route, first: &Frame) -> Result<(), SessionError> {
        let info = Arc::clone(&self.registration.info);
        info.set_state(ClientState::Waiting);
        self.flush_client().await?;
        if self.pools.is_retired() {
            self.refresh_pools();
        }
        let member = match self.choose_member(route).await {
            Ok(m) => m,
            Err(ce) => {
                self.reject(first.tag, &ce);
                return Ok(());
            }
        };
        let pool = Arc::clone(&self.pools.pools[member]);
        let server = match pool.checkout().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = info.id, error = %e, "checkout failed");
                if let Some(retry) = self.after_checkout_failure(route, member, &e) {
                    return Box::pin(self.attach(retry, first)).await;
                }
                use crate::error::ReportableError;
                let ce = e.client_error().unwrap_or_else(|| {
                    ClientError::error(sqlstate::INTERNAL_ERROR, "shardpool: checkout failed")
                });
                self.reject(first.tag, &ce);
                return Ok(());
            }
        };
        if self.placement_moved_while_waiting(first) {
            // Nothing was sent on it: the server goes back as it came, and `first` is routed again.
            pool.checkin(server);
            return Ok(());
        }
        let mut server = server;
        self.pool = pool;
        self.on_attached(route, member);
        info.set_state(ClientState::Active);
        info.set_server(Some((server.addr.clone(), server.cancel_key, server.id)));
        self.sync_settings(&mut server);
        // Room for the transaction's traffic up front instead of a chain of regrowths, from the thread's spares.
        for buf in [&mut self.sout, &mut self.cout] {
            if buf.capacity() == 0 {
                *buf = crate::frontend::buffers::take(4096);
            }
        }
        self.xact_started = Some(Instant::now());
        self.batch_open = false;
        self.sent_batch_end = false;
        self.holding_batch = false;
        self.batch_failed = false;
        self.last_was_rollback = false;
        self.server = Some(server);
        self.send_deferred_begin();
        Ok(())
    }

    /// After a RELOAD: move to the new pool set (the client count moves with it).
    fn refresh_pools(&mut self) {
        let Some(user) = self.ctx.user(&self.pools.user) else {
            return;
        };
        let shard = self.current_shard().unwrap_or(0);
        if let Some(fresh) = self.ctx.shard_pool_set(&self.pools.database, &user, shard) {
            if let Some(home) = self.ctx.pool(&self.pools.database, &user) {
                self.home.stats.clients.fetch_sub(1, Ordering::Relaxed);
                home.stats.clients.fetch_add(1, Ordering::Relaxed);
                self.home = home;
            }
            self.pools = fresh;
        }
    }

    /// Answers a message with an error without a server, in the shape the protocol expects (then ReadyForQuery for a
    /// simple query; for extended-protocol messages, discard until Sync as Postgres does).
    fn reject(&mut self, first_tag: u8, e: &ClientError) {
        self.home.stats.errors.count(e.code);
        e.write(&mut self.cout);
        if let Some(r) = self.routing.as_mut() {
            // The deferred BEGIN never ran: the failed statement ends that transaction, as an error in it would.
            r.deferred_begin = None;
        }
        if first_tag == tag::QUERY || first_tag == tag::FUNCTION_CALL {
            ready_for_query(&mut self.cout, TxStatus::Idle);
        } else if first_tag != tag::SYNC {
            self.relay.skip_until_sync = true;
        } else {
            ready_for_query(&mut self.cout, TxStatus::Idle);
        }
    }

    /// Queues the SET/RESET statements that make `server` match this client's settings; replies are swallowed.
    fn sync_settings(&mut self, server: &mut ServerConn) {
        let Some(sql) = self.settings_delta(server) else {
            return;
        };
        server.applied = self.settings.clone();
        server.settings_unknown = false;
        crate::protocol::frontend::write_query(&mut self.sout, &sql);
        self.relay
            .push(super::relay::Expect::Query { forward: false });
    }

    /// The SET/RESET statements that make `server` match this client's settings, if any are needed.
    fn settings_delta(&self, server: &ServerConn) -> Option<String> {
        if server.settings_unknown {
            let mut sql = String::from("RESET ALL; ");
            for apply in self.settings.values() {
                sql.push_str(apply);
                sql.push_str("; ");
            }
            return Some(sql);
        }
        if server.applied == self.settings {
            return None;
        }
        let mut sql = String::new();
        for (name, apply) in self.settings.iter() {
            if server.applied.get(name) != Some(apply) {
                sql.push_str(apply);
                sql.push_str("; ");
            }
        }
        for name in server.applied.keys() {
            if !self.settings.contains_key(name) {
                sql.push_str(&Setting::reset_sql(name));
                sql.push_str("; ");
            }
        }
        Some(sql)
    }

    /// The attached server is between two transactions: back at an idle ReadyForQuery with nothing sent since and
    /// nothing owed either way.
    fn between_transactions(&self) -> bool {
        self.relay.server_at_rest()
            && !self.relay.in_copy_in
            && self.sout.is_empty()
            && self
                .server
                .as_ref()
                .is_some_and(|s| s.status == TxStatus::Idle)
    }

    /// Whether the attached server can go back to the pool now.
    fn can_release(&self) -> bool {
        self.mode == PoolMode::Transaction && self.pinned.is_none() && self.between_transactions()
    }

    /// Between two transactions of a client that keeps its server (session pooling or pinned).
    fn kept_server_between_transactions(&self) -> bool {
        (self.mode == PoolMode::Session || self.pinned.is_some()) && self.between_transactions()
    }

    fn release(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.on_detached();
        // Idle from now on, before the client hears the transaction's end: SHOW CLIENTS must not lag behind it.
        self.registration.info.set_state(ClientState::Idle);
        self.registration.info.set_server(None);
        if let Some(t) = self.xact_started.take() {
            let stats = &self.pool.stats;
            stats.xact_count.fetch_add(1, Ordering::Relaxed);
            stats
                .xact_time_us
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.settle_stats();
        checkin_after_cancels(&self.ctx, &self.pool, server);
        // The batch log exists to re-send a batch whose reply is still to come; after the transaction it only
        // pins the client's read buffer (its frames are slices of it) while the client sits idle.
        self.batch.clear();
        self.last_batch.clear();
        self.last_batch_whole = false;
    }

    /// Adds what the session counted since the last time to its pool's counters (SHOW STATS lags by at most the
    /// transaction in progress, and the bytes of its last reply).
    fn settle_stats(&mut self) {
        let stats = &self.pool.stats;
        let t = &mut self.tally;
        let out = self.bytes_to_client - t.settled_out;
        if out > 0 {
            stats.bytes_sent.fetch_add(out, Ordering::Relaxed);
            t.settled_out = self.bytes_to_client;
        }
        if t.bytes_in > 0 {
            stats
                .bytes_received
                .fetch_add(std::mem::take(&mut t.bytes_in), Ordering::Relaxed);
        }
        if t.queries > 0 {
            stats
                .query_count
                .fetch_add(std::mem::take(&mut t.queries), Ordering::Relaxed);
        }
    }

    /// The client left (or was thrown out) while holding a server. An idle-in-transaction server is rolled back and
    /// reused; one still busy with a query is cancelled and closed, so nobody can inherit its unfinished work.
    async fn give_back_after_disconnect(&mut self, mut server: Box<ServerConn>) {
        self.on_detached();
        self.registration.info.set_server(None);
        let config = self.pool.config();
        // Not at rest includes a batch answered after a Flush: its implicit transaction must not be committed by
        // whatever the next client sends, nor by a Sync of ours, so the connection is closed (Postgres then aborts
        // it, as it does when a client hangs up mid-batch).
        let busy = !self.relay.server_at_rest() || self.relay.in_copy_in || !self.sout.is_empty();
        let timeout = config.connect_timeout;
        if busy || server.broken {
            cancel_on_server(server.addr.clone(), server.cancel_key, || true).await;
            // Hang up and wait (bounded) for the server to close its end: a backend has rolled back and released
            // its locks by then, so whoever gets the freed pool slot cannot find them still held. Whatever the
            // server still sends is read and discarded, so a backend blocked writing a result can get there.
            let hang_up = async {
                server.stream.shutdown().await?;
                let mut sink = vec![0u8; 16 * 1024];
                while server.stream.read(&mut sink).await? > 0 {}
                Ok::<(), std::io::Error>(())
            };
            let _ = tokio::time::timeout(timeout, hang_up).await;
            return; // dropping closes it and frees its pool slot
        }
        if server.status != TxStatus::Idle {
            match tokio::time::timeout(timeout, server.simple_query("ROLLBACK")).await {
                Ok(Ok(None)) => {}
                _ => return,
            }
        }
        if self.pinned.is_some() || self.mode == PoolMode::Session {
            match tokio::time::timeout(timeout, server.simple_query(&config.reset_query)).await {
                Ok(Ok(None)) => server.forget_session_state(),
                _ => return,
            }
        }
        if server.status == TxStatus::Idle {
            checkin_after_cancels(&self.ctx, &self.pool, server);
        }
    }

    /// Writes everything queued for the client. A client that takes none of it for `client_stall_timeout` is
    /// disconnected: whatever servers this session holds are waiting on it. The setting is read only once the
    /// socket makes the session wait (the usual reply fits in the socket buffer at once).
    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if self.cout.is_empty() {
            return Ok(());
        }
        let mut stall = None;
        let mut written = 0;
        while written < self.cout.len() {
            let (client, rest) = (&mut self.client, &self.cout[written..]);
            let now = poll_fn(|cx| {
                Poll::Ready(tokio::io::AsyncWrite::poll_write(
                    Pin::new(&mut *client),
                    cx,
                    rest,
                ))
            })
            .await;
            let n = match now {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let limit = *stall.get_or_insert_with(|| {
                        self.ctx.config().general.client_stall_timeout.enabled()
                    });
                    let write = self.client.write(&self.cout[written..]);
                    match limit {
                        None => write.await,
                        Some(limit) => tokio::time::timeout(limit, write)
                            .await
                            .map_err(|_| client_stalled(&self.ctx, limit))?,
                    }
                }
            }
            .map_err(SessionError::ClientIo)?;
            if n == 0 {
                return Err(SessionError::ClientIo(std::io::ErrorKind::WriteZero.into()));
            }
            written += n;
        }
        self.client.flush().await.map_err(SessionError::ClientIo)?;
        self.bytes_to_client += self.cout.len() as u64;
        self.cout.clear();
        Ok(())
    }

    /// Applies a committed transaction's session effects to the client's settings, and records them as the state of
    /// `server`, where they just ran: the next client to get it must have them undone.
    fn commit_effects(&mut self, server: &mut ServerConn) {
        for effect in std::mem::take(&mut self.pending_effects) {
            match effect {
                SessionEffect::Set(s) => {
                    Arc::make_mut(&mut server.applied).insert(s.name.clone(), s.apply.clone());
                    Arc::make_mut(&mut self.settings).insert(s.name, s.apply);
                }
                SessionEffect::Reset(name) => {
                    // The server is back at its own default, which is not the client's startup value (if any):
                    // that one is re-applied at the next attach.
                    if server.applied.contains_key(&name) {
                        Arc::make_mut(&mut server.applied).remove(&name);
                    }
                    match self.startup_settings.get(&name) {
                        Some(v) => {
                            if self.settings.get(&name) != Some(v) {
                                Arc::make_mut(&mut self.settings).insert(name, v.clone());
                            }
                        }
                        None => {
                            if self.settings.contains_key(&name) {
                                Arc::make_mut(&mut self.settings).remove(&name);
                            }
                        }
                    }
                }
                SessionEffect::ResetAll => {
                    server.applied = Default::default();
                    self.settings = Arc::clone(&self.startup_settings);
                }
                SessionEffect::DiscardAll => {
                    server.applied = Default::default();
                    self.settings = Arc::clone(&self.startup_settings);
                    self.pinned = None;
                }
                _ => {}
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.settle_stats();
        self.home.stats.clients.fetch_sub(1, Ordering::Relaxed);
        if self.in_flight {
            self.ctx.spin.leave();
        }
    }
}

/// Returns a server to its pool, after any cancel request still on its way to it has arrived (the caller has
/// already cleared the client's server, so no new one can start): a cancel meant for the query that just ended
/// must not reach the next client's.
fn checkin_after_cancels(ctx: &Arc<Context>, pool: &Arc<Pool>, server: Box<ServerConn>) {
    if !ctx.cancel_in_flight(server.id) {
        pool.checkin(server);
        return;
    }
    let (ctx, pool) = (Arc::clone(ctx), Arc::clone(pool));
    pool.stats.being_canceled.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        ctx.cancels_delivered(server.id, CANCEL_WAIT).await;
        pool.stats.being_canceled.fetch_sub(1, Ordering::Relaxed);
        pool.checkin(server);
    });
}

/// Longest a released server waits for a cancel on its way to it: the cancel's own connect timeout, and a margin.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

fn protocol_violation(msg: String) -> SessionError {
    SessionError::Terminated(ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, msg))
}

/// Sends a CancelRequest for whatever `key`'s backend is running, if `still_wanted()` once connected (the connect
/// may take a while, and the query may be over by then). Returns once the postmaster has closed the connection,
/// i.e. has signalled the backend. Best effort: failures are only logged.
pub async fn cancel_on_server(
    addr: crate::backend::ServerAddr,
    key: crate::protocol::startup::CancelKey,
    still_wanted: impl Fn() -> bool,
) {
    let packet = crate::protocol::startup::encode_cancel(key);
    let attempt = async {
        let mut s = addr.connect_plain().await?;
        if !still_wanted() {
            return Ok(());
        }
        s.write_all(&packet).await?;
        s.shutdown().await?;
        let mut sink = [0u8; 64];
        while s.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%addr, error = %e, "cancel request failed"),
        Err(_) => tracing::warn!(%addr, "cancel request timed out"),
    }
}
