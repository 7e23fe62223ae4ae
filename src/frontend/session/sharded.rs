//! Sharding in the session: before a transaction takes a server, its first statement's shard key decides the shard
//! (the session then uses that shard's pools, with read/write splitting inside the shard); later statements of the
//! transaction must stay on it. Statements for every shard (DDL, reference-table writes) and keyless reads
//! (scatter/gather) run here on one connection per shard, outside the attached pump: over the simple query protocol
//! here, over the extended protocol in `sharded_extended` (the client's batch collected first, `sharded_batch`).

use std::sync::Arc;

use super::sharded_batch::{batch_end_buffered, collect, BatchUse, Collected, ExtendedBatch};
use super::{Session, SessionError};
use crate::backend::{Pool, ServerConn};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{command_complete, ready_for_query};
use crate::protocol::frontend::{
    parse_bind, parse_bind_params, parse_parse, parse_target, peek_bind, query_text,
};
use crate::protocol::{tag, Frame, TxStatus};
use crate::sharding::router::{list, Placement, ShardRouter};
use crate::sharding::scatter::{MergeSink, ScatterError};

/// A statement that runs on several shards at once.
pub(super) struct Fanout {
    pub sql: String,
    pub shards: Vec<u16>,
    pub kind: FanoutKind,
    /// Sent over the extended protocol: the client's batch (None: a simple Query).
    pub batch: Option<Box<ExtendedBatch>>,
    /// The statement changes only reference tables: every shard holds the same rows, so counts are not summed.
    pub reference_only: bool,
}

impl Fanout {
    fn new(sql: &str, shards: Vec<u16>, kind: FanoutKind) -> Fanout {
        Fanout {
            sql: sql.to_owned(),
            shards,
            kind,
            batch: None,
            reference_only: false,
        }
    }
}

pub(super) enum FanoutKind {
    /// A read whose rows are merged.
    Scatter,
    /// DDL, reference-table and allowed keyless writes: the statement everywhere, one answer.
    Everywhere,
    /// `COPY sharded_table FROM STDIN`: the client's rows split by key.
    CopyIn(
        Box<crate::sharding::copy::CopyFrom>,
        Arc<crate::sharding::schema::ShardedTable>,
    ),
    /// `COPY sharded_table TO STDOUT`: the shards' outputs one after the other (`header`: send it once).
    CopyOut { header: bool },
    /// An extended-protocol batch whose end has not arrived yet: read more input, then route this first message
    /// again.
    AwaitBatch(Frame, BatchUse),
    /// A write held while a remap moves its vshard: wait (`held`), then route this first message again.
    AwaitUnfreeze(Frame, crate::sharding::router::Held),
}

/// What a statement of a sharded database needs, as [`Session::decide`] finds it.
pub(super) enum Decision {
    /// One shard.
    Shard(u16),
    /// A COPY of a sharded table: rows split by key, or the shards' outputs concatenated.
    Copy { fanout: Fanout, types: Box<[u8]> },
    /// A write to a vshard that a remap has frozen: wait, then route it again.
    Hold(crate::sharding::router::Held),
    /// Several shards (a merged read, or the statement everywhere), outside a transaction.
    Spread {
        placement: Placement,
        sql: String,
        types: Box<[u8]>,
        reference_only: bool,
    },
}

/// Why a statement is being placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placing {
    /// A transaction's first statement, routed for real.
    Start,
    /// A statement of the transaction in progress, checked against the shard it is bound to.
    InTransaction,
    /// A batch pipelined behind a Sync: where it would start if routed now (nothing counted or held).
    Peek,
}

impl Session {
    pub(super) fn shard_router(&self) -> Option<Arc<ShardRouter>> {
        self.routing.as_ref().and_then(|r| r.shard_router.clone())
    }

    /// Where the statement in `frame` must run, from its shard keys (and Bind parameters). `Ok(None)`: it runs on
    /// several shards and has been queued as a fan-out.
    pub(super) fn place_frame(
        &mut self,
        router: &ShardRouter,
        frame: &Frame,
        in_transaction: bool,
    ) -> Result<Option<u16>, ClientError> {
        let placing = if in_transaction {
            Placing::InTransaction
        } else {
            Placing::Start
        };
        match self.decide(router, frame.tag, frame.body(), placing)? {
            Decision::Shard(shard) => Ok(Some(shard)),
            Decision::Hold(held) => Ok(self.hold(frame, held)),
            Decision::Copy { mut fanout, types } => {
                if frame.tag != tag::QUERY {
                    match collect(frame, &self.cin, &fanout.sql, &types, BatchUse::Copy)? {
                        Collected::Incomplete => return Ok(self.await_batch(frame, BatchUse::Copy)),
                        // Prepared only (its Describe says NoData on any shard).
                        Collected::PrepareOnly => return Ok(Some(router.config.default_shard)),
                        Collected::Batch(b) => fanout.batch = Some(Box::new(b)),
                    }
                }
                self.routing_state().fanout = Some(fanout);
                Ok(None)
            }
            Decision::Spread {
                placement,
                sql,
                types,
                reference_only,
            } => {
                if frame.tag != tag::QUERY {
                    return self.place_extended(
                        frame,
                        &sql,
                        &types,
                        placement,
                        reference_only,
                        router,
                    );
                }
                let f = match placement {
                    Placement::Scatter(shards) => Fanout::new(&sql, shards, FanoutKind::Scatter),
                    _ => {
                        let mut f = Fanout::new(
                            &sql,
                            (0..router.shards()).collect(),
                            FanoutKind::Everywhere,
                        );
                        f.reference_only = reference_only;
                        f
                    }
                };
                self.routing_state().fanout = Some(f);
                Ok(None)
            }
        }
    }

    /// Where the statement a client message (tag `t`, `body`) runs, decided without changing anything: the caller
    /// queues what must be queued. The Bind that goes with a Parse or Describe is looked for in the client's
    /// unread input.
    pub(super) fn decide(
        &self,
        router: &ShardRouter,
        t: u8,
        body: &[u8],
        placing: Placing,
    ) -> Result<Decision, ClientError> {
        let default = router.config.default_shard;
        let in_transaction = placing == Placing::InTransaction;
        let def;
        #[allow(clippy::type_complexity)]
        let (sql, params, types): (Option<&[u8]>, Option<&[u8]>, &[u8]) = match t {
            tag::QUERY => (query_text(body), None, &[]),
            tag::PARSE => {
                let parse = parse_parse(body);
                // Parse, Bind, Execute, Sync usually arrive together: the Bind's parameters decide.
                let bind = peek_bind(&self.cin)
                    .filter(|(name, _)| Some(*name) == parse.as_ref().map(|p| p.name));
                let types = parse.as_ref().map_or(&[][..], |p| p.param_types);
                (parse.map(|p| p.query), bind.map(|(_, rest)| rest), types)
            }
            tag::BIND => {
                let view = parse_bind(body);
                def = view
                    .as_ref()
                    .and_then(|b| self.statements.get(b.statement).cloned());
                let types = def.as_ref().map_or(&[][..], |d| &d.param_types[..]);
                (
                    def.as_ref().map(|d| &d.query[..]),
                    view.map(|b| b.rest),
                    types,
                )
            }
            // Describe of a named statement first (its Parse answered locally): routed like its Bind would be.
            tag::DESCRIBE => {
                let target = parse_target(body).filter(|t| t.kind == b'S' && !t.name.is_empty());
                def = target
                    .as_ref()
                    .and_then(|t| self.statements.get(t.name).cloned());
                let bind = peek_bind(&self.cin)
                    .filter(|(name, _)| Some(*name) == target.as_ref().map(|t| t.name));
                let types = def.as_ref().map_or(&[][..], |d| &d.param_types[..]);
                (
                    def.as_ref().map(|d| &d.query[..]),
                    bind.map(|(_, rest)| rest),
                    types,
                )
            }
            _ => (None, None, &[]),
        };
        let Some(sql) = sql.and_then(|s| std::str::from_utf8(s).ok()) else {
            return Ok(Decision::Shard(self.current_shard().unwrap_or(default)));
        };
        if starts_with_copy(sql) {
            if let Some(fanout) = copy_fanout(router, sql)? {
                if matches!(fanout.kind, FanoutKind::CopyIn(..)) && !in_transaction {
                    // Its rows' vshards are known only as they stream: held whole while any vshard is frozen.
                    if let Some(held) = router.copy_hold(placing == Placing::Peek) {
                        return Ok(Decision::Hold(held));
                    }
                }
                if in_transaction {
                    return Err(ClientError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY of a sharded table cannot run inside a transaction (transactions are bound to one shard)",
                    ));
                }
                return Ok(Decision::Copy {
                    fanout,
                    types: types.into(),
                });
            }
        }
        // What SQL cannot say: a leading `/* shardpool.shard=N */` or `SET shardpool.shard` runs the statement on
        // that shard whatever its keys (COPY above is split by its rows' keys regardless).
        let hints = crate::router::classify::leading_hints(sql);
        let forced = match hints.shard {
            Some(n) => Some(self.check_shard_number(n)?),
            None => self.routing.as_ref().and_then(|r| r.forced_shard),
        };
        if let Some(shard) = forced {
            return Ok(Decision::Shard(shard));
        }
        let analysis = router.analysis(sql);
        if matches!(*analysis, crate::sharding::keys::ShardAnalysis::TooDeep) {
            // Its keys, and whether it writes, are unknown: no shard can be chosen safely.
            let e = crate::sqlparse::SqlParseError::TooDeep;
            return Err(ClientError::error(e.sqlstate(), e.to_string()));
        }
        let key_text = hints
            .shard_key
            .or_else(|| self.routing.as_ref().and_then(|r| r.shard_key.clone()));
        if let (Some(text), Some(stmt)) = (key_text, analysis.combined()) {
            // `shardpool.shard_key` stands in for a key the statement does not name; keys it names win.
            let mut held = None;
            let hold = (placing == Placing::Start).then_some(&mut held);
            if let Some(placed) = router.place_by_key_text_or_hold(stmt, &text, hold) {
                let placed = placed?;
                if let Some(h) = held {
                    return Ok(Decision::Hold(h));
                }
                if let Placement::One { shard, .. } = placed {
                    return Ok(Decision::Shard(shard));
                }
            }
        }
        let Some(stmt) = analysis.combined() else {
            // Unparseable here: the default shard's Postgres will say what is wrong with it.
            return Ok(Decision::Shard(default));
        };
        let decoded = match params {
            Some(rest) => Some(parse_bind_params(rest).ok_or_else(|| {
                ClientError::error(sqlstate::PROTOCOL_VIOLATION, "malformed Bind message")
            })?),
            None => None,
        };
        let params = decoded.as_ref().map(|(f, v)| (v.as_slice(), f.as_slice()));
        let placement = match placing {
            Placing::InTransaction => router.place(stmt, params)?,
            Placing::Start => match router.place_or_hold(stmt, params)? {
                Ok(p) => p,
                Err(held) => return Ok(Decision::Hold(held)),
            },
            Placing::Peek => match router.peek(stmt, params)? {
                Ok(p) => p,
                Err(held) => return Ok(Decision::Hold(held)),
            },
        };
        match placement {
            // Keyless statements (SET, BEGIN, unsharded tables...) stay where the transaction is.
            Placement::One { shard, keyed } if !keyed && in_transaction => {
                Ok(Decision::Shard(self.current_shard().unwrap_or(shard)))
            }
            Placement::One { shard, .. } => Ok(Decision::Shard(shard)),
            Placement::Every | Placement::Scatter(_) if in_transaction => {
                Err(in_transaction_error())
            }
            placement => Ok(Decision::Spread {
                placement,
                sql: sql.to_owned(),
                types: types.into(),
                reference_only: stmt.sharded.is_empty(),
            }),
        }
    }

    /// A Parse or Bind, outside an explicit transaction, of a statement for several shards: once the client's batch
    /// is complete, a fan-out of it; a prepare without execution goes to one shard (any shard can describe it).
    fn place_extended(
        &mut self,
        frame: &Frame,
        sql: &str,
        types: &[u8],
        placement: Placement,
        reference_only: bool,
        router: &ShardRouter,
    ) -> Result<Option<u16>, ClientError> {
        let default = router.config.default_shard;
        // After a BEGIN held back: a prepare runs where the transaction is; an execution cannot run there.
        let deferred = self
            .routing
            .as_ref()
            .is_some_and(|r| r.deferred_begin.is_some());
        let here = self.current_shard().unwrap_or(default);
        let usage = match placement {
            Placement::Scatter(_) => BatchUse::Scatter,
            _ => BatchUse::Everywhere,
        };
        match collect(frame, &self.cin, sql, types, usage)? {
            Collected::PrepareOnly => Ok(Some(if deferred { here } else { default })),
            Collected::Incomplete if deferred && frame.tag == tag::PARSE => Ok(Some(here)),
            Collected::Incomplete | Collected::Batch(_) if deferred => Err(in_transaction_error()),
            Collected::Incomplete => Ok(self.await_batch(frame, usage)),
            Collected::Batch(b) => {
                // A named statement parsed in the batch stays the client's, for later Binds.
                if let Some(p) = b.frames.first().filter(|f| f.tag == tag::PARSE) {
                    if let Some(v) = parse_parse(p.body()).filter(|v| !v.name.is_empty()) {
                        let limit = self.ctx.config().general.max_prepared_statements_per_client;
                        if !self.statements.admits(v.name, limit) {
                            return Err(crate::frontend::prepared::ClientStatements::limit_error(
                                limit,
                            ));
                        }
                        self.statements.define(v.name, v.query, v.param_types);
                    }
                }
                let (shards, kind) = match placement {
                    Placement::Scatter(shards) => (shards, FanoutKind::Scatter),
                    _ => ((0..router.shards()).collect(), FanoutKind::Everywhere),
                };
                let mut f = Fanout::new(sql, shards, kind);
                f.reference_only = reference_only;
                f.batch = Some(Box::new(b));
                self.routing_state().fanout = Some(f);
                Ok(None)
            }
        }
    }

    /// Queues a wait for the rest of the batch `first` begins; `first` is then routed again.
    fn await_batch(&mut self, first: &Frame, usage: BatchUse) -> Option<u16> {
        let kind = FanoutKind::AwaitBatch(first.clone(), usage);
        self.routing_state().fanout = Some(Fanout::new("", Vec::new(), kind));
        None
    }

    /// Reads client input until the batch `first` begins is complete (a Sync, Flush or, for COPY, Execute has
    /// arrived), then puts `first` back in front of it, to be routed again with the whole batch in view.
    async fn await_batch_input(
        &mut self,
        first: &Frame,
        usage: BatchUse,
    ) -> Result<(), SessionError> {
        // Read until the batch's end is buffered (where `collect` stops: Sync or Flush, or Execute for COPY), so the
        // retry finds it whole; bounded like a single message, since the whole batch is held.
        let limit = self.ctx.config().general.max_message_size;
        let mut scanned = 0;
        while !batch_end_buffered(&self.cin, &mut scanned, usage) {
            if self.cin.len() > limit {
                return Err(SessionError::Terminated(ClientError::fatal(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "a batch for several shards grew past max_message_size ({limit} bytes) without its Sync"
                    ),
                )));
            }
            let (client, cin) = (&mut self.client, &mut self.cin);
            let n = std::future::poll_fn(|cx| client.poll_read_idle(cx, cin))
                .await
                .map_err(SessionError::ClientIo)?;
            if n == 0 {
                return Err(SessionError::ClientGone);
            }
            self.tally.bytes_in += n as u64;
        }
        self.put_back(first);
        Ok(())
    }

    /// Puts `first` back in front of the client's unread input, to be routed again.
    pub(super) fn put_back(&mut self, first: &Frame) {
        let mut input = bytes::BytesMut::with_capacity(first.raw.len() + self.cin.len());
        input.extend_from_slice(&first.raw);
        input.extend_from_slice(&self.cin);
        self.cin = input;
    }

    /// `shardpool.shard`'s value as a shard of this database.
    pub(super) fn check_shard_number(&self, n: u32) -> Result<u16, ClientError> {
        let shards = self.shard_router().map_or(0, |r| r.shards());
        u16::try_from(n)
            .ok()
            .filter(|s| *s < shards)
            .ok_or_else(|| {
                ClientError::error(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "invalid value for parameter \"shardpool.shard\": {n} (database \"{}\" has shards 0 to {})",
                        self.pools.database,
                        shards.saturating_sub(1)
                    ),
                )
            })
    }

    pub(super) fn current_shard(&self) -> Option<u16> {
        self.routing.as_ref().map(|r| r.shard)
    }

    /// Makes `shard`'s pools the session's current ones.
    pub(super) fn use_shard(&mut self, shard: u16) {
        if self.current_shard() == Some(shard) && !self.pools.is_retired() {
            return;
        }
        let config = self.ctx.config();
        let Some(user) = config.resolve_user(&self.pools.user) else {
            return;
        };
        if let Some(set) = self.ctx.shard_pool_set(&self.pools.database, &user, shard) {
            self.pools = set;
            self.routing_state().shard = shard;
        }
    }

    /// Inside a transaction bound to a shard: the error for a statement that needs another shard.
    /// Statements are judged at their Query or Bind; an unnamed Parse at the Parse, when its Bind is already in (an
    /// unnamed statement's text is not kept for its Bind), so a statement pipelined behind a Flush is checked too.
    pub(super) fn check_transaction_shard(&mut self, frame: &Frame) -> Option<ClientError> {
        let router = self.shard_router()?;
        let judged = match frame.tag {
            tag::QUERY | tag::BIND => true,
            tag::PARSE => parse_parse(frame.body()).is_some_and(|p| {
                p.name.is_empty() && peek_bind(&self.cin).is_some_and(|(name, _)| name.is_empty())
            }),
            _ => false,
        };
        if !judged {
            return None;
        }
        let bound = self.current_shard()?;
        match self.decide(&router, frame.tag, frame.body(), Placing::InTransaction) {
            Ok(Decision::Shard(s)) if s == bound => None,
            Ok(Decision::Shard(s)) => Some(ClientError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "this transaction is bound to shard {bound} of database \"{}\" and this statement needs shard {s}; \
                     cross-shard transactions are not supported",
                    router.database
                ),
            )),
            // In a transaction only one shard or an error is decided.
            Ok(_) => None,
            Err(e) => Some(e),
        }
    }

    /// Runs a queued fan-out: one connection per shard (taken in shard order, so two fan-outs cannot deadlock on each
    /// other's pools), the client's session settings applied on each, then a merged read or the statement
    /// everywhere; the client gets one answer and ReadyForQuery.
    pub(super) async fn run_fanout(&mut self, f: Fanout) -> Result<(), SessionError> {
        if let FanoutKind::AwaitBatch(first, usage) = &f.kind {
            return self.await_batch_input(first, *usage).await;
        }
        if let FanoutKind::AwaitUnfreeze(first, held) = &f.kind {
            return self.await_unfreeze(first, *held).await;
        }
        if let Some(b) = &f.batch {
            bytes::Buf::advance(&mut self.cin, b.consumed);
        }
        self.flush_client().await?;
        let user = self.ctx.user(&self.pools.user);
        let mut lent: Vec<(Arc<Pool>, Box<ServerConn>)> = Vec::with_capacity(f.shards.len());
        let mut failure = None;
        for &s in &f.shards {
            let set = user
                .as_ref()
                .and_then(|u| self.ctx.shard_pool_set(&self.pools.database, u, s));
            let Some(set) = set else {
                failure = Some(ClientError::error(
                    sqlstate::INTERNAL_ERROR,
                    format!("no pools for shard {s}"),
                ));
                break;
            };
            let Some(w) = set.cluster.writer() else {
                failure = Some(ClientError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!("shard {s} has no server accepting writes"),
                ));
                break;
            };
            let pool = Arc::clone(&set.pools[w]);
            match pool.checkout().await {
                Ok(mut server) => {
                    if let Some(sql) = self.settings_delta(&server) {
                        match server.simple_query(&sql).await {
                            Ok(None) => {
                                server.applied = self.settings.clone();
                                server.settings_unknown = false;
                            }
                            _ => server.broken = true,
                        }
                    }
                    lent.push((pool, server));
                }
                Err(e) => {
                    use crate::error::ReportableError;
                    failure = Some(e.client_error().unwrap_or_else(|| {
                        ClientError::error(sqlstate::CONNECTION_FAILURE, format!("shard {s}: {e}"))
                    }));
                    break;
                }
            }
        }
        // A CancelRequest from this client now reaches every shard of the statement (`listener::forward_cancel`).
        self.registration.info.set_fanout(
            lent.iter()
                .map(|(_, s)| (s.addr.clone(), s.cancel_key, s.id))
                .collect(),
        );
        let copy = matches!(f.kind, FanoutKind::CopyIn(..) | FanoutKind::CopyOut { .. });
        let mut copied = false;
        let mut ended = Ok(());
        if let Some(e) = failure {
            self.answer_fanout_error(&e);
        } else {
            if copy {
                if let Some(b) = &f.batch {
                    self.acknowledge_copy(b);
                }
            }
            match (&f.kind, &f.batch) {
                (FanoutKind::Scatter, None) => ended = self.scatter(&f, &mut lent).await,
                (FanoutKind::Scatter, Some(b)) => {
                    ended = Box::pin(self.scatter_extended(b, &mut lent)).await
                }
                (FanoutKind::Everywhere, None) => self.everywhere(&f, &mut lent).await,
                (FanoutKind::Everywhere, Some(b)) => {
                    Box::pin(self.everywhere_extended(&f.shards, b, f.reference_only, &mut lent))
                        .await?
                }
                (FanoutKind::CopyIn(from, table), _) => {
                    let (from, table) = (from.clone(), Arc::clone(table));
                    copied = Box::pin(self.copy_in(&from, &table, &mut lent)).await?
                }
                (FanoutKind::CopyOut { header }, _) => {
                    copied = Box::pin(self.copy_out(&f.sql, *header, &mut lent)).await?
                }
                (FanoutKind::AwaitBatch(..) | FanoutKind::AwaitUnfreeze(..), _) => {}
            }
        }
        self.registration.info.set_fanout(Vec::new());
        for (pool, server) in lent {
            if server.status == TxStatus::Idle && !server.broken {
                super::checkin_after_cancels(&self.ctx, &pool, server);
            }
        }
        // The client could not take a streamed result: its servers are closed (above), the session ends.
        ended?;
        if copy && f.batch.is_some() {
            // COPY over the extended protocol ends at the client's Sync, which is still to come (Syncs sent during
            // COPY IN are ignored, as Postgres does); after an error, messages up to that Sync are discarded.
            if !copied {
                self.relay.skip_until_sync = true;
            }
        } else {
            ready_for_query(&mut self.cout, TxStatus::Idle);
        }
        self.flush_client().await
    }

    /// The replies owed for the Parse, Bind and Describe before a COPY's Execute (a COPY has no result columns).
    fn acknowledge_copy(&mut self, b: &ExtendedBatch) {
        use crate::protocol::backend::{parse_complete, put_message};
        for f in &b.frames {
            match f.tag {
                tag::PARSE => parse_complete(&mut self.cout),
                tag::BIND => put_message(&mut self.cout, tag::BIND_COMPLETE, |_| {}),
                tag::DESCRIBE => {
                    if f.body().first() == Some(&b'S') {
                        put_message(&mut self.cout, tag::PARAMETER_DESCRIPTION, |m| {
                            m.extend_from_slice(&[0, 0])
                        });
                    }
                    put_message(&mut self.cout, tag::NO_DATA, |_| {});
                }
                _ => {}
            }
        }
    }

    /// A merged read over the simple query protocol, streamed to the client as it is merged. `Err`: the client
    /// could not take it (the session must end; the shards were cancelled and marked broken).
    async fn scatter(
        &mut self,
        f: &Fanout,
        lent: &mut [(Arc<Pool>, Box<ServerConn>)],
    ) -> Result<(), SessionError> {
        if let Some(r) = self.shard_router() {
            r.scatters
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let plan = match crate::sharding::scatter::Plan::from_sql(&f.sql) {
            Ok(p) => p,
            Err(e) => {
                self.answer_fanout_error(&e);
                return Ok(());
            }
        };
        let limits = crate::sharding::scatter::Limits::from_config(&self.ctx.config().general);
        let mut servers: Vec<&mut ServerConn> = lent.iter_mut().map(|(_, s)| &mut **s).collect();
        let mut sink = ClientSink::new(self);
        let result = crate::sharding::scatter::scatter_query_into(
            &f.sql,
            &plan,
            &mut servers,
            &mut sink,
            limits,
        )
        .await;
        if let Some(e) = sink.failure.take() {
            return Err(e);
        }
        if let Err(e) = result {
            self.answer_fanout_error(&e);
        }
        Ok(())
    }

    /// DDL, reference-table and allowed keyless writes: the statement on every shard. Without two-phase commit a
    /// failure on one shard cannot undo the others, so the error says exactly which shards applied it.
    async fn everywhere(&mut self, f: &Fanout, lent: &mut [(Arc<Pool>, Box<ServerConn>)]) {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut tags: Vec<Vec<String>> = Vec::new();
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            let shard = f.shards[i];
            match server.run_for_tags(&f.sql).await {
                Ok((t, None)) => {
                    ok.push(shard);
                    tags.push(t);
                }
                Ok((_, Some(e))) => failed.push((shard, e.code, e.message)),
                Err(e) => {
                    server.broken = true;
                    failed.push((
                        shard,
                        sqlstate::CONNECTION_FAILURE.to_owned(),
                        e.to_string(),
                    ));
                }
            }
        }
        match failed.first() {
            None => {
                // Each statement's count summed over the shards; a reference table's copies count once.
                let first = tags.first().cloned().unwrap_or_default();
                for (k, t) in first.iter().enumerate() {
                    if f.reference_only {
                        command_complete(&mut self.cout, t);
                        continue;
                    }
                    let all: Vec<&str> = tags
                        .iter()
                        .filter_map(|s| s.get(k).map(String::as_str))
                        .collect();
                    command_complete(&mut self.cout, &super::sharded_extended::sum_tags(&all));
                }
            }
            Some(_) => self.answer_fanout_error(&FanoutFailure {
                failed: &failed,
                ok: &ok,
            }),
        }
    }

    /// Answers the client's multi-shard statement with `e`, counted under its SQLSTATE. Every error a fan-out
    /// answers with goes through here, once per statement: the shards' failures are already folded into `e`, so a
    /// statement that failed on every shard counts once, as the one ErrorResponse the client sees.
    pub(super) fn answer_fanout_error(&mut self, e: &dyn FanoutError) {
        self.home.stats.errors.count(e.sqlstate());
        e.write(&mut self.cout);
    }
}

/// An error that ends a multi-shard statement for its client (see [`Session::answer_fanout_error`]).
pub(super) trait FanoutError {
    fn sqlstate(&self) -> &str;
    fn write(&self, out: &mut bytes::BytesMut);
}

impl FanoutError for ClientError {
    fn sqlstate(&self) -> &str {
        self.code
    }

    fn write(&self, out: &mut bytes::BytesMut) {
        ClientError::write(self, out)
    }
}

impl FanoutError for ScatterError {
    fn sqlstate(&self) -> &str {
        ScatterError::sqlstate(self)
    }

    fn write(&self, out: &mut bytes::BytesMut) {
        self.write_error_response(out)
    }
}

/// Streams merged messages to the client as the merge produces them: the flush waits while the client does not
/// read (so the shards are read no faster), bounded by `client_stall_timeout`.
pub(super) struct ClientSink<'s> {
    session: &'s mut Session,
    /// Why the client could not take the result; the session ends with it.
    pub failure: Option<SessionError>,
}

impl<'s> ClientSink<'s> {
    pub fn new(session: &'s mut Session) -> ClientSink<'s> {
        ClientSink {
            session,
            failure: None,
        }
    }

    /// Queues `bytes` for the client and writes out what is queued. Taken by value: with nothing else queued the
    /// buffer itself becomes the client's, so a large message is not copied once more.
    pub async fn send(&mut self, bytes: bytes::BytesMut) -> Result<(), ScatterError> {
        if self.session.cout.is_empty() {
            self.session.cout = bytes;
        } else {
            self.session.cout.extend_from_slice(&bytes);
        }
        match self.session.flush_client().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let reason = e.to_string();
                self.failure = Some(e);
                Err(ScatterError::Client(reason))
            }
        }
    }
}

impl MergeSink for ClientSink<'_> {
    fn take<'a>(
        &'a mut self,
        out: &'a mut bytes::BytesMut,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ScatterError>> + Send + 'a>>
    {
        Box::pin(async move {
            let chunk = out.split();
            self.send(chunk).await
        })
    }
}

/// A statement that failed on some shards (`failed`: shard, SQLSTATE, message, in shard order; `ok`: the shards
/// that applied it). The client sees the first failure's SQLSTATE and message, and in the detail which shards
/// failed and which applied the statement.
pub(super) struct FanoutFailure<'a> {
    pub failed: &'a [(u16, String, String)],
    pub ok: &'a [u16],
}

impl FanoutError for FanoutFailure<'_> {
    fn sqlstate(&self) -> &str {
        self.failed.first().map_or("", |f| f.1.as_str())
    }

    fn write(&self, out: &mut bytes::BytesMut) {
        let Some((shard, code, message)) = self.failed.first() else {
            return;
        };
        let failed_shards: Vec<u16> = self.failed.iter().map(|f| f.0).collect();
        let detail = format!(
            "failed on shards {}; ran on shards {}",
            list(&failed_shards),
            if self.ok.is_empty() {
                "none".to_owned()
            } else {
                list(self.ok)
            }
        );
        crate::protocol::backend::error_response(
            out,
            crate::protocol::backend::Severity::Error,
            code,
            &format!("on shard {shard}: {message}"),
            Some(&detail),
        );
    }
}

fn in_transaction_error() -> ClientError {
    ClientError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "a statement for every shard cannot run inside a transaction (transactions are bound to one shard)",
    )
}

/// Whether a query starts with the COPY keyword (after blanks and comments are not skipped: a hint comment before
/// COPY makes it go the ordinary way, which refuses a keyless write).
fn starts_with_copy(sql: &str) -> bool {
    // Bytes, not a `str` slice: the fifth byte may fall inside a character (`/* ñ */`).
    sql.trim_start()
        .as_bytes()
        .get(..4)
        .is_some_and(|head| head.eq_ignore_ascii_case(b"copy"))
}

/// The fan-out a COPY of a sharded table needs; `None` when the COPY is not about a sharded table.
fn copy_fanout(router: &ShardRouter, sql: &str) -> Result<Option<Fanout>, ClientError> {
    use crate::sharding::copy::{CopySource, CopyStatement};
    use crate::sharding::schema::TableKind;
    let parsed =
        CopyStatement::parse(sql).map_err(|e| ClientError::error(e.sqlstate(), e.to_string()))?;
    let sharded = |name: &crate::sharding::copy::TableName| {
        let full = match &name.schema {
            Some(s) => format!("{s}.{}", name.name),
            None => name.name.clone(),
        };
        match router.schema.lookup_str(&full) {
            Some(TableKind::Sharded(t)) => Some(Arc::clone(t)),
            _ => None,
        }
    };
    let all: Vec<u16> = (0..router.shards()).collect();
    Ok(match parsed {
        Some(CopyStatement::Split(from)) => sharded(&from.table)
            .map(|t| Fanout::new(sql, all, FanoutKind::CopyIn(Box::new(from), t))),
        Some(CopyStatement::Concatenate(to)) => match &to.source {
            CopySource::Table { table, .. } => sharded(table).map(|_| {
                let header = to.options.header == crate::sharding::copy::HeaderLine::Present;
                Fanout::new(sql, all, FanoutKind::CopyOut { header })
            }),
            CopySource::Query(_) => {
                return Err(ClientError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "COPY (query) TO STDOUT is not supported on a sharded database: concatenating shards is only \
                     correct for a table; use COPY table TO STDOUT, or a SELECT (which is merged)",
                ))
            }
        },
        None => None,
    })
}
