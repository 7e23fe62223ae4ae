//! The attached state: a full-duplex pump between client and server that forwards bytes as they come, in batches
//! (one write per burst, not per message), and decodes only message headers plus the few bodies pooling must read.
//! Reading stops on a side whose outbound buffer is full, so memory stays bounded however large a result or COPY
//! is, and the pump can never deadlock on two full socket buffers because writes and reads are polled together.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::{client_stalled, protocol_violation, Flow, Session, SessionError};
use crate::error::{sqlstate, ClientError};
use crate::frontend::relay::Expect;
use crate::frontend::spin::{Attempt, Awaiting, Spin};
use crate::protocol::backend::{parse_command_complete, parse_parameter_status, ErrorFields};
use crate::protocol::framing::{peek_header, split_frame_within, HEADER_LEN};
use crate::protocol::{tag, TxStatus};

/// Stop reading from one side while more than this is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;

#[derive(Debug, Default)]
struct PumpEvent {
    client_data: bool,
    server_data: bool,
    client_eof: bool,
    /// A spin on the server found nothing yet: yield, then pump again.
    spin_again: bool,
    /// Bytes went to the client, or to the server (reported only when asked, while the client is being timed).
    client_took: bool,
    server_took: bool,
}

/// Which of `run_attached`'s timeouts a wait ends at.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    IdleInTransaction,
    Stall(std::time::Duration),
    Query(std::time::Duration),
}

/// Where the spin for the server's reply stands in the current wait.
#[derive(Debug)]
enum ServerSpin {
    /// Not tried since the client last sent something.
    Ready,
    Spinning(Spin),
    /// Tried (or not allowed): wait the usual way until the client sends again.
    Spent,
}

impl Session {
    /// Runs until the server can be released (or the client leaves, or something breaks).
    pub(super) async fn run_attached(&mut self) -> Result<(), SessionError> {
        let (idle_tx_timeout, stall_timeout, query_timeout, max_message) = {
            let config = self.ctx.config();
            let g = &config.general;
            (
                g.idle_transaction_timeout.enabled(),
                g.client_stall_timeout.enabled(),
                g.query_timeout.enabled(),
                g.max_message_size,
            )
        };
        let mut query_since: Option<tokio::time::Instant> = None;
        let mut queries_seen = self.tally.queries;
        let mut spin = ServerSpin::Ready;
        // Since when the server has been waiting on a client that makes no progress (the clock is read only while
        // that is the case).
        let mut stalled_since: Option<tokio::time::Instant> = None;
        loop {
            // Messages that arrived in the same read as the one that started this transaction, up to a batch that
            // must be routed on its own.
            loop {
                self.holding_batch = self.holds_next_batch();
                if self.holding_batch {
                    break;
                }
                let Some(frame) = split_frame_within(&mut self.cin, max_message)
                    .map_err(|e| protocol_violation(e.to_string()))?
                else {
                    break;
                };
                if self.on_client_frame(frame)? == Flow::ClientGone {
                    return Err(SessionError::ClientGone);
                }
            }
            self.relay.emit_fabricated(&mut self.cout);
            if self.can_release() {
                if self.wants_capture() {
                    // Before the client hears of the commit: a read that it, or anyone it tells, starts next must
                    // find the write's position recorded (read_proxy_writes).
                    self.capture_position().await;
                }
                self.release();
                return self.flush_client().await;
            }
            if self.kept_server_between_transactions() && self.wants_capture() {
                // A server kept by its client (session pooling, a pinning feature) is never released, but its
                // committed writes must be recorded all the same, before the client hears of them.
                self.capture_position().await;
                if let Some(r) = self.routing.as_mut() {
                    r.executed = false;
                }
            }
            if !self.cout.is_empty() && !self.holding_acks() && self.write_client_now()? {
                // The client took bytes: whatever it was waiting on, it is not stalled.
                stalled_since = None;
            }
            // Every reply is in, and the server is inside a transaction: an explicit one, or the implicit one of
            // a batch the client flushed without a Sync (which may hold locks and written rows just the same).
            let idle_in_transaction = self.relay.is_empty()
                && self.sout.is_empty()
                && (!self.relay.server_at_rest()
                    || self
                        .server
                        .as_ref()
                        .is_some_and(|s| s.status != TxStatus::Idle));
            if idle_in_transaction && idle_tx_timeout.is_some() && !self.cout.is_empty() {
                // Every reply is in: deliver it now, so the timeout below times the client's silence.
                self.flush_client().await?;
            }
            let waiting_on_client = idle_in_transaction && self.cout.is_empty();
            let stalls = stall_timeout.filter(|_| self.server_waits_on_client());
            if stalls.is_none() || (!self.sout.is_empty() && self.cout.is_empty()) {
                // Nobody waits on the client, or the server has its input still to take: not the client's wait.
                stalled_since = None;
            }
            // query_timeout counts from the request the server has not finished answering (reset at each
            // ReadyForQuery, so a long pipeline that keeps completing is not cut off).
            if query_timeout.is_none()
                || self.relay.is_empty()
                || self.tally.queries != queries_seen
            {
                query_since = None;
                queries_seen = self.tally.queries;
            }
            let idle_limit = idle_tx_timeout.filter(|_| waiting_on_client);
            let stall_limit = stalls.filter(|_| idle_limit.is_none());
            let query_limit = query_timeout.filter(|_| !self.relay.is_empty());
            let event = if idle_limit.is_none() && stall_limit.is_none() && query_limit.is_none() {
                self.pump(&mut spin, false).await?
            } else {
                // Usually the round completes at once (the reply is written whole, every statement of a
                // transaction): only a round that has to wait is timed, so the common case reads no clock and
                // creates no timer.
                let outcome = {
                    let mut round = std::pin::pin!(self.pump(&mut spin, stall_limit.is_some()));
                    match poll_fn(|cx| Poll::Ready(round.as_mut().poll(cx))).await {
                        Poll::Ready(r) => Ok(r),
                        Poll::Pending => {
                            let now = tokio::time::Instant::now();
                            let mut deadline: Option<(tokio::time::Instant, Expiry)> = None;
                            let mut sooner = |at: tokio::time::Instant, why: Expiry| {
                                if deadline.is_none_or(|(d, _)| at < d) {
                                    deadline = Some((at, why));
                                }
                            };
                            if let Some(t) = idle_limit {
                                sooner(now + t, Expiry::IdleInTransaction);
                            }
                            if let Some(limit) = stall_limit {
                                sooner(
                                    *stalled_since.get_or_insert(now) + limit,
                                    Expiry::Stall(limit),
                                );
                            }
                            if let Some(t) = query_limit {
                                sooner(*query_since.get_or_insert(now) + t, Expiry::Query(t));
                            }
                            match deadline {
                                Some((at, why)) => {
                                    tokio::time::timeout_at(at, round).await.map_err(|_| why)
                                }
                                None => Ok(round.await),
                            }
                        }
                    }
                };
                match outcome {
                    Ok(r) => r?,
                    Err(why) => return Err(self.expired(why)),
                }
            };
            if event.client_data || event.client_took || event.server_took {
                stalled_since = None;
            }
            if event.spin_again {
                tokio::task::yield_now().await;
                continue;
            }
            if event.client_data || event.server_data {
                // A new request, or part of a reply: the next wait may spin again.
                spin = ServerSpin::Ready;
            }
            if event.server_data {
                self.on_server_data()?;
            }
            if event.client_eof {
                return Err(SessionError::ClientGone);
            }
        }
    }

    /// The error a timeout in `run_attached` ends the session with.
    fn expired(&mut self, why: Expiry) -> SessionError {
        match why {
            Expiry::IdleInTransaction => SessionError::Terminated(ClientError::fatal(
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout",
            )),
            Expiry::Stall(limit) => client_stalled(&self.ctx, limit),
            Expiry::Query(limit) => {
                // The server did not finish in time: whatever state it is in (frozen, partitioned, or merely slow),
                // it is not reused. The session's ending cancels and closes it.
                if let Some(s) = self.server.as_mut() {
                    s.broken = true;
                }
                self.ctx
                    .query_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    ?limit,
                    "query_timeout: the server did not answer in time; disconnecting the client"
                );
                SessionError::Terminated(ClientError::fatal(
                    sqlstate::QUERY_CANCELED,
                    format!(
                        "terminating connection: the server did not finish answering within {} (query_timeout)",
                        crate::config::ConfigDuration(limit)
                    ),
                ))
            }
        }
    }

    /// Writes what the client socket takes right now, without waiting (no waker is kept: the pump registers its
    /// own whenever output is left). A reply mid-transaction nearly always goes out whole here, so the loop then
    /// sees nothing queued for the client and waits in one plain round, rather than a timed round for the write
    /// and another for the reads. Returns whether any bytes were taken.
    fn write_client_now(&mut self) -> Result<bool, SessionError> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let before = self.cout.len();
        let tls = self.client.is_tls();
        write_some(&mut cx, Pin::new(&mut self.client), &mut self.cout, tls)
            .map_err(SessionError::ClientIo)?;
        let taken = before - self.cout.len();
        self.bytes_to_client += taken as u64;
        Ok(taken > 0)
    }

    /// Whether the server attached now waits on the client rather than the other way round: output is queued for
    /// the client, the client stopped in the middle of a message, COPY FROM STDIN waits for its data, or its batch
    /// has no Sync or Flush yet. While the server has input still to take, `run_attached` does not count it; an
    /// answered batch or transaction waiting for the client's next statement is idle_transaction_timeout's.
    fn server_waits_on_client(&self) -> bool {
        (!self.cout.is_empty() && !self.holding_acks())
            || (!self.cin.is_empty() && !self.holding_batch)
            || self.relay.in_copy_in
            || self.batch_open
    }

    /// One round of I/O: writes what is pending on both sides, reads whatever has arrived. With `report_writes`,
    /// bytes taken by the client end the round too (the client's progress is being timed).
    async fn pump(
        &mut self,
        spin: &mut ServerSpin,
        report_writes: bool,
    ) -> Result<PumpEvent, SessionError> {
        let hold = self.holding_acks();
        // Input held for its own routing is read only up to a bound; the rest waits in the socket.
        let holding_batch = self.holding_batch;
        let budget = match spin {
            // Worth spinning only while the server owes replies; in COPY FROM STDIN it is the client that talks
            // next. The spin itself begins once everything has been sent.
            ServerSpin::Ready if self.relay.is_empty() || self.relay.in_copy_in => {
                *spin = ServerSpin::Spent;
                None
            }
            ServerSpin::Ready => self.spin_budget(Awaiting::Server),
            _ => None,
        };
        let (gate, id) = (&self.ctx.spin, self.registration.info.id);
        let Some(server) = self.server.as_mut() else {
            return Err(SessionError::ServerProtocol("pump without a server".into()));
        };
        let client = &mut self.client;
        let (cin, cout, sout) = (&mut self.cin, &mut self.cout, &mut self.sout);
        let to_client = &mut self.bytes_to_client;
        let from_client = &mut self.tally.bytes_in;
        let (stream, sin) = (&mut server.stream, &mut server.rbuf);
        let (server_tls, client_tls) = (stream.is_tls(), client.is_tls());
        poll_fn(|cx| {
            let mut ev = PumpEvent::default();
            let pending_in = sout.len();
            write_some(cx, Pin::new(&mut *stream), sout, server_tls)
                .map_err(SessionError::ServerIo)?;
            ev.server_took = report_writes && sout.len() < pending_in;
            let before = cout.len();
            if !hold {
                write_some(cx, Pin::new(&mut *client), cout, client_tls)
                    .map_err(SessionError::ClientIo)?;
            }
            *to_client += (before - cout.len()) as u64;
            ev.client_took = report_writes && cout.len() < before;
            if sout.len() < HIGH_WATER && !(holding_batch && cin.len() >= HIGH_WATER) {
                reserve(cin);
                match poll_read_buf(Pin::new(&mut *client), cx, cin) {
                    Poll::Ready(Ok(0)) => ev.client_eof = true,
                    Poll::Ready(Ok(n)) => {
                        *from_client += n as u64;
                        ev.client_data = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ClientIo(e))),
                    Poll::Pending => {}
                }
            }
            if cout.len() < HIGH_WATER {
                reserve(sin);
                // Everything is sent and only the server's answer is awaited: if this is the proxy's only
                // transaction, poll for it rather than sleep.
                let quiet = sout.is_empty()
                    && (hold || cout.is_empty())
                    && !ev.client_data
                    && !ev.client_eof;
                if quiet && matches!(spin, ServerSpin::Ready) {
                    // A TLS stream cannot be read around its decryption: no spin for it.
                    let budget = budget.filter(|_| stream.raw_socket().is_some());
                    *spin = match budget.and_then(|b| gate.begin(id, Awaiting::Server, b)) {
                        Some(s) => ServerSpin::Spinning(s),
                        None => ServerSpin::Spent,
                    };
                }
                if let (true, ServerSpin::Spinning(s), Some(fd)) =
                    (quiet, &*spin, stream.raw_socket())
                {
                    match s.attempt(gate, &fd, sin).map_err(SessionError::ServerIo)? {
                        Attempt::Read(0) => {
                            return Poll::Ready(Err(SessionError::ServerIo(
                                io::ErrorKind::UnexpectedEof.into(),
                            )))
                        }
                        Attempt::Read(_) => {
                            ev.server_data = true;
                            return Poll::Ready(Ok(ev));
                        }
                        Attempt::Again => {
                            ev.spin_again = true;
                            return Poll::Ready(Ok(ev));
                        }
                        Attempt::GaveUp => *spin = ServerSpin::Spent,
                    }
                }
                match poll_read_buf(Pin::new(&mut *stream), cx, sin) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(SessionError::ServerIo(
                            io::ErrorKind::UnexpectedEof.into(),
                        )))
                    }
                    Poll::Ready(Ok(_)) => ev.server_data = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ServerIo(e))),
                    Poll::Pending => {}
                }
            }
            if ev.client_data || ev.server_data || ev.client_eof || ev.client_took || ev.server_took
            {
                Poll::Ready(Ok(ev))
            } else {
                Poll::Pending
            }
        })
        .await
        .inspect_err(|e| {
            // A client that vanished says nothing about the server: the relay still knows its state, so it can be
            // rolled back and reused. Only an error on the server side makes it unfit.
            if matches!(e, SessionError::ClientIo(_)) {
                return;
            }
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
        })
    }

    /// Accounts for and forwards every whole server message in the server's read buffer.
    fn on_server_data(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(mut server) = self.server.take() else {
                return Ok(());
            };
            let result = self.process_server_messages(&mut server);
            if result.is_err() {
                server.broken = true;
            }
            self.server = Some(server);
            result?;
            let Some(frames) = self.replay.take() else {
                return Ok(());
            };
            tracing::debug!(
                client = self.registration.info.id,
                "statement went stale under DDL; re-preparing and retrying"
            );
            self.replayed = true;
            for f in frames {
                self.on_client_frame(f)?;
            }
        }
    }

    /// Decides whether the batch whose Bind or Describe just failed with a stale plan can be re-sent without the
    /// client noticing, and if so arranges the replay. Safe means: it ran in an implicit transaction, no Execute of it
    /// completed (nothing it did is visible or lost), the client sent nothing after its Sync, this is not already a
    /// retry, and the client will learn the new result shape from the replay (the failed message is a Describe, or a
    /// Describe comes before the next Execute) — rows in a shape the client never saw described would break it, which
    /// is why Postgres raises this error in the first place.
    fn plan_retry(&mut self, failed_tag: u8) -> bool {
        let safe = !self.replayed
            && self.relay.status() == TxStatus::Idle
            && self.relay.executes_done == 0
            && self.relay.len() == 1
            && self.batch.is_empty()
            && self.last_batch_whole
            && self.last_batch.last().is_some_and(|f| f.tag == tag::SYNC);
        if !safe {
            return false;
        }
        // The failed message is the (n + 1)-th of its kind in the batch, n being how many of that kind completed.
        let done = if failed_tag == tag::BIND {
            self.relay.binds_done
        } else {
            self.relay.describes_done
        };
        let Some(start) = self
            .last_batch
            .iter()
            .enumerate()
            .filter(|(_, f)| f.tag == failed_tag)
            .nth(done)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let redescribed = failed_tag == tag::DESCRIBE
            || self.last_batch[start..]
                .iter()
                .take_while(|f| f.tag != tag::EXECUTE)
                .any(|f| f.tag == tag::DESCRIBE);
        if !redescribed {
            return false;
        }
        self.relay.swallow_next_ready();
        self.replay = Some(self.last_batch.split_off(start));
        true
    }

    /// Judges every whole server message where it lies in the server's read buffer, and forwards runs of them with
    /// one copy each, instead of splitting each message off into a frame of its own (a reference-counted `Bytes`
    /// per message, and a copy per message). Invariant: what the client gets is `cout` followed by
    /// `rbuf[run..at]`; anything else written to `cout` (a fabricated reply, a held description) first flushes the
    /// run.
    fn process_server_messages(
        &mut self,
        server: &mut crate::backend::ServerConn,
    ) -> Result<(), SessionError> {
        let mut rbuf = std::mem::take(&mut server.rbuf);
        let (mut at, mut run) = (0, 0);
        let result = self.judge_server_messages(server, &rbuf, &mut at, &mut run);
        self.cout.extend_from_slice(&rbuf[run..at]);
        rbuf.advance(at);
        server.rbuf = rbuf;
        if result.is_ok() {
            self.relay.emit_fabricated(&mut self.cout);
        }
        result
    }

    fn judge_server_messages(
        &mut self,
        server: &mut crate::backend::ServerConn,
        rbuf: &[u8],
        at: &mut usize,
        run: &mut usize,
    ) -> Result<(), SessionError> {
        while let Some((msg_tag, total)) =
            peek_header(&rbuf[*at..]).map_err(|e| SessionError::ServerProtocol(e.to_string()))?
        {
            if rbuf.len() - *at < total {
                break;
            }
            let raw = &rbuf[*at..*at + total];
            let body = &raw[HEADER_LEN..];
            if self.relay.fabricated_next() {
                self.cout.extend_from_slice(&rbuf[*run..*at]);
                *run = *at;
                self.relay.emit_fabricated(&mut self.cout);
            }
            let outcome = self
                .relay
                .on_server_message(msg_tag, body)
                .map_err(|e| SessionError::ServerProtocol(e.to_string()))?;
            for h in &outcome.failed_statements {
                server.statements.remove(*h);
            }
            if let Some(def) = outcome.prepared.and_then(|h| server.statements.confirm(h)) {
                self.home.known_statements.remember(def);
            }
            let mut forward = outcome.forward;
            match msg_tag {
                tag::PARAMETER_DESCRIPTION if forward => {
                    self.held_parameter_description = Some(bytes::Bytes::copy_from_slice(raw));
                    forward = false;
                }
                tag::ROW_DESCRIPTION | tag::NO_DATA if forward => {
                    if let Some(held) = self.held_parameter_description.take() {
                        self.cout.extend_from_slice(&rbuf[*run..*at]);
                        *run = *at;
                        self.cout.extend_from_slice(&held);
                    }
                }
                tag::PARAMETER_STATUS => {
                    if let Some((k, v)) = parse_parameter_status(body) {
                        // The client hears of a value only when it differs from what it was told before.
                        forward = self.told.get(&k) != Some(v.as_str());
                        if forward {
                            self.told.set(&k, &v);
                        }
                        server.reported.insert(k, v);
                    }
                }
                tag::ERROR_RESPONSE if outcome.forward => {
                    self.held_parameter_description = None;
                    let fields = ErrorFields::parse(body);
                    if self.replica_failed_unseen(&fields) {
                        // The replica is going away (shutdown, crash, recovery conflict on a fresh session):
                        // re-run the read elsewhere instead of passing its death on.
                        return Err(SessionError::ServerIo(io::Error::other(format!(
                            "server terminated the session: {} {}",
                            fields.code, fields.message
                        ))));
                    }
                    if self.fence_refused_unseen(&fields) {
                        return Err(SessionError::FenceRefused);
                    }
                    let stale = match outcome.failed {
                        Some(Expect::Bind { statement: Some(h) }) => Some((h, tag::BIND)),
                        Some(Expect::Describe { statement: Some(h) }) => Some((h, tag::DESCRIBE)),
                        _ => None,
                    };
                    if let Some((h, failed_tag)) = stale.filter(|_| is_stale_plan_error(&fields)) {
                        server.statements.remove(h);
                        server.stale.insert(h);
                        forward = !self.plan_retry(failed_tag);
                    }
                    self.batch_failed |= forward;
                    if forward {
                        self.home.stats.errors.count(&fields.code);
                    }
                }
                tag::COMMAND_COMPLETE if outcome.forward => {
                    let done = parse_command_complete(body);
                    self.last_was_rollback = done == b"ROLLBACK";
                    if let Some(r) = self.routing.as_mut() {
                        r.committed_part |= super::fence_retry::commits(done);
                    }
                }
                _ => {}
            }
            if let Some(status) = outcome.ready {
                server.status = status;
                if !outcome.forward && self.replay.is_some() {
                    // The failed batch's ReadyForQuery: the server is clean again, re-send the batch.
                    self.cout.extend_from_slice(&rbuf[*run..*at]);
                    *at += total;
                    *run = *at;
                    break;
                }
                if outcome.forward {
                    self.replayed = false;
                    if let Some(r) = self.routing.as_mut() {
                        r.fence_retries = 0;
                    }
                    self.tally.queries += 1;
                    if status == TxStatus::Idle {
                        if self.mode == crate::config::PoolMode::Session || self.pinned.is_some() {
                            // No release ends this transaction: settle the counters here instead.
                            self.settle_stats();
                        }
                        if !self.batch_failed && !self.last_was_rollback {
                            self.commit_effects(server);
                        } else {
                            self.pending_effects.clear();
                        }
                        self.batch_failed = false;
                        self.last_was_rollback = false;
                    }
                }
            }
            if forward {
                self.note_forwarded(msg_tag);
            } else {
                // Not for the client: copy what came before it, and start the next run after it.
                self.cout.extend_from_slice(&rbuf[*run..*at]);
                *run = *at + total;
            }
            *at += total;
        }
        Ok(())
    }
}

/// "cached plan must not change result type": Postgres' plancache refusing a statement whose result columns changed.
fn is_stale_plan_error(e: &ErrorFields) -> bool {
    e.code == sqlstate::FEATURE_NOT_SUPPORTED
        && e.message
            .contains("cached plan must not change result type")
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// Writes as much of `buf` as the socket takes now; registers for wakeup if it is full. Only a `buffered` stream
/// (TLS, which may hold encrypted bytes back) is flushed: a plain socket's flush does nothing, and the pump calls
/// this twice per round, several rounds per statement.
fn write_some<W: AsyncWrite + ?Sized>(
    cx: &mut Context<'_>,
    mut w: Pin<&mut W>,
    buf: &mut BytesMut,
    buffered: bool,
) -> io::Result<()> {
    while !buf.is_empty() {
        match w.as_mut().poll_write(cx, buf) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => buf.advance(n),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(()),
        }
    }
    if !buffered {
        return Ok(());
    }
    match w.poll_flush(cx) {
        Poll::Ready(Err(e)) => Err(e),
        _ => Ok(()),
    }
}
