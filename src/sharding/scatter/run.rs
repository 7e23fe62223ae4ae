//! Running a planned scatter/gather query over logged-in shard connections: one simple-protocol Query to every
//! shard, then the replies read and merged into a [`MergeSink`] as RowDescription, DataRows and `SELECT n` (the
//! caller adds ReadyForQuery, as for any statement of a batch).
//!
//! Rows stream: concatenation forwards each shard's DataRow frames as they are read, the k-way merge holds one row
//! per shard, and only aggregation holds state (one row per group, bounded by [`Limits`]). Merged messages go to
//! the sink every [`SINK_CHUNK`] bytes, and the sink (the client's socket) takes them only as fast as the client
//! reads: shards are read no faster than that, so they wait on their socket buffers and memory stays at a chunk
//! plus one message per shard, however large the result.
//!
//! Failure handling: the first ErrorResponse (in shard order of reading) or merge error becomes the result; what
//! the sink has not taken yet is dropped (what it took stays sent, as rows before an error do from Postgres).
//! Every shard that was sent the query is then read up to its ReadyForQuery, so each connection is left idle (or
//! in its transaction) and reusable; a shard still producing rows after a limit was exceeded is cancelled first,
//! so the drain is short. Only an I/O or framing failure leaves a connection marked broken, and so does a sink
//! failure (the client is gone or stalled): those shards are cancelled and not reused. A merge that ends early
//! (LIMIT reached) also drains the rest.

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::combine::Aggregator;
use super::merge::{bind_keys, compare_rows, sort_values, Admit, BoundKey, Emitter, KWayMerge};
use super::plan::{Plan, PlanKind, SortKey, Window};
use super::value::type_name;
use super::wire::{
    parse_row_description, write_data_row, write_data_row_prefix, write_row_description, Field,
};
use super::{Limits, ScatterError, ShardErrorFields};
use crate::backend::server::{ServerConn, ServerIoError};
use crate::protocol::backend::{command_complete, parse_parameter_status, parse_ready_for_query};
use crate::protocol::framing::split_frame;
use crate::protocol::frontend::write_query;
use crate::protocol::{tag, Frame};

/// Merged bytes collected before they are handed to the sink: large enough that a result goes out in few writes,
/// small enough to be the proxy's whole per-statement buffer.
pub const SINK_CHUNK: usize = 64 * 1024;

/// What a successful scatter/gather query produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScatterOutcome {
    /// Rows written to the client (the n of `SELECT n`).
    pub rows: u64,
}

/// Where merged messages go as they are produced.
pub trait MergeSink: Send {
    /// Takes every (whole) message in `out`, leaving it empty; may wait while the client is not reading. An error
    /// means the client cannot take the result: the merge stops and its shards are closed.
    fn take<'a>(
        &'a mut self,
        out: &'a mut BytesMut,
    ) -> Pin<Box<dyn Future<Output = Result<(), ScatterError>> + Send + 'a>>;
}

/// Collects the whole merged result (tests, and callers that must see all of it before answering).
impl MergeSink for BytesMut {
    fn take<'a>(
        &'a mut self,
        out: &'a mut BytesMut,
    ) -> Pin<Box<dyn Future<Output = Result<(), ScatterError>> + Send + 'a>> {
        self.extend_from_slice(out);
        out.clear();
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The merge's output: a chunk of merged messages, handed to the sink whenever it fills.
struct Output<'s> {
    buf: BytesMut,
    sink: &'s mut dyn MergeSink,
}

impl Output<'_> {
    async fn maybe_flush(&mut self) -> Result<(), ScatterError> {
        if self.buf.len() >= SINK_CHUNK {
            self.sink.take(&mut self.buf).await?;
        }
        Ok(())
    }
}

/// Runs `plan` (made from the client's `sql`) on every server of `servers` (shard i is `servers[i]`) and writes the
/// merged result into `out`, with no limit on aggregate state. On error nothing is left in `out` and, unless the
/// error is I/O, every server is at ReadyForQuery.
pub async fn scatter_query(
    sql: &str,
    plan: &Plan,
    servers: &mut [&mut ServerConn],
    out: &mut BytesMut,
) -> Result<ScatterOutcome, ScatterError> {
    let mut collected = BytesMut::new();
    let result = scatter_query_into(sql, plan, servers, &mut collected, Limits::UNLIMITED).await;
    if result.is_ok() {
        out.extend_from_slice(&collected);
    }
    result
}

/// [`scatter_query`] into a sink, with aggregate state bounded by `limits`.
pub async fn scatter_query_into(
    sql: &str,
    plan: &Plan,
    servers: &mut [&mut ServerConn],
    sink: &mut dyn MergeSink,
    limits: Limits,
) -> Result<ScatterOutcome, ScatterError> {
    let shard_sql = plan.shard_sql(sql);
    tracing::debug!(
        shards = servers.len(),
        rewritten = plan.is_rewritten(),
        shard_sql,
        "scatter/gather"
    );
    let mut msg = BytesMut::with_capacity(shard_sql.len() + 6);
    write_query(&mut msg, shard_sql);
    scatter_request(plan, &msg, servers, sink, false, limits).await
}

/// Like [`scatter_query_into`], with `request` (the same bytes for every shard) already written: a simple Query, or
/// an extended-protocol Parse, Bind, Describe portal, Execute, Sync (whose ParseComplete and BindComplete are
/// skipped; the portal's RowDescription plays the Query's). `binary_concat`: a concatenation may pass binary-format
/// columns through, since it never reads a value. On error, what the sink took stays taken; the rest is dropped.
pub async fn scatter_request(
    plan: &Plan,
    request: &[u8],
    servers: &mut [&mut ServerConn],
    sink: &mut dyn MergeSink,
    binary_concat: bool,
    limits: Limits,
) -> Result<ScatterOutcome, ScatterError> {
    let allow_binary = binary_concat && matches!(plan.kind, PlanKind::Concat { .. });
    let mut shards: Vec<Shard> = servers
        .iter_mut()
        .enumerate()
        .map(|(index, conn)| Shard {
            index,
            conn,
            state: State::Idle,
            notices: Vec::new(),
        })
        .collect();
    let mut out = Output {
        buf: BytesMut::new(),
        sink,
    };
    let mut result = match send(&mut shards, request).await {
        Ok(()) => merge(plan, &mut shards, &mut out, allow_binary, limits).await,
        Err(e) => Err(e),
    };
    match &result {
        Err(ScatterError::Client(_)) => {
            // Nobody will read the rest: stop the shards and close them.
            for shard in &mut shards {
                if shard.state != State::Idle && shard.state != State::Broken {
                    shard.cancel().await;
                    shard.conn.broken = true;
                    shard.state = State::Broken;
                }
            }
        }
        Err(ScatterError::LimitExceeded { .. }) => {
            for shard in &mut shards {
                if matches!(shard.state, State::Description | State::Rows) {
                    shard.cancel().await;
                }
            }
        }
        _ => {}
    }
    for shard in &mut shards {
        if let Err(e) = shard.drain().await {
            tracing::debug!(shard = shard.index, error = %e, "scatter/gather: shard failed while draining");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    match result {
        Ok(rows) => {
            for shard in &mut shards {
                for notice in shard.notices.drain(..) {
                    out.buf.extend_from_slice(&notice.raw);
                }
            }
            if !out.buf.is_empty() {
                out.sink.take(&mut out.buf).await?;
            }
            Ok(ScatterOutcome { rows })
        }
        Err(e) => Err(e),
    }
}

/// Writes the Query to every shard before reading any reply, so all shards execute at once.
async fn send(shards: &mut [Shard<'_, '_>], msg: &[u8]) -> Result<(), ScatterError> {
    for shard in shards.iter_mut() {
        if let Err(e) = shard.conn.stream.write_all(msg).await {
            shard.conn.broken = true;
            shard.state = State::Broken;
            return Err(ScatterError::Io {
                shard: shard.index,
                source: ServerIoError::Io(e),
            });
        }
        shard.state = State::Description;
    }
    Ok(())
}

async fn merge(
    plan: &Plan,
    shards: &mut [Shard<'_, '_>],
    out: &mut Output<'_>,
    allow_binary: bool,
    limits: Limits,
) -> Result<u64, ScatterError> {
    let fields = describe(shards, allow_binary).await?;
    let visible = fields.len().checked_sub(plan.hidden).ok_or_else(|| {
        ScatterError::protocol(0, "result has fewer columns than the plan's hidden ones")
    })?;
    let rows = match &plan.kind {
        PlanKind::Concat { window } => {
            write_row_description(&mut out.buf, &fields[..visible]);
            concat(shards, *window, visible, plan.hidden > 0, out).await?
        }
        PlanKind::Sorted { keys, window } => {
            let oids: Vec<u32> = fields.iter().map(|f| f.type_oid).collect();
            let keys = bind_keys(keys, visible, &oids)?;
            write_row_description(&mut out.buf, &fields[..visible]);
            sorted(shards, keys, *window, visible, plan.hidden > 0, out).await?
        }
        PlanKind::Aggregate {
            columns,
            visible,
            order,
            window,
        } => {
            let agg = Aggregator::new(columns, *visible, &fields, limits)?;
            aggregate(shards, agg, order, *visible, *window, out).await?
        }
    };
    command_complete(&mut out.buf, &format!("SELECT {rows}"));
    Ok(rows)
}

/// Reads every shard's RowDescription; they must agree on column count and types. Returns shard 0's.
async fn describe(
    shards: &mut [Shard<'_, '_>],
    allow_binary: bool,
) -> Result<Vec<Field>, ScatterError> {
    let mut first: Option<Vec<Field>> = None;
    for shard in shards.iter_mut() {
        let fields = shard.description().await?;
        if let Some(f) = fields.iter().find(|f| f.format != 0 && !allow_binary) {
            return Err(ScatterError::unsupported(format!(
                "binary-format results (column {})",
                String::from_utf8_lossy(&f.name)
            )));
        }
        match &first {
            None => first = Some(fields),
            Some(expected) => check_same_shape(expected, &fields, shard.index)?,
        }
    }
    first.ok_or_else(|| ScatterError::unsupported("a scatter/gather query over no shards"))
}

fn check_same_shape(expected: &[Field], got: &[Field], shard: usize) -> Result<(), ScatterError> {
    let mismatch = |message: String| ScatterError::Data {
        code: "42804",
        message,
    };
    if expected.len() != got.len() {
        return Err(mismatch(format!(
            "shard {shard} returned {} columns where shard 0 returned {}",
            got.len(),
            expected.len()
        )));
    }
    for (i, (a, b)) in expected.iter().zip(got).enumerate() {
        if a.type_oid != b.type_oid {
            return Err(mismatch(format!(
                "column {} is {} on shard 0 but {} on shard {shard}",
                i + 1,
                type_name(a.type_oid),
                type_name(b.type_oid)
            )));
        }
    }
    Ok(())
}

fn write_row(
    out: &mut BytesMut,
    row: &Frame,
    visible: usize,
    strip: bool,
) -> Result<(), ScatterError> {
    if strip {
        write_data_row_prefix(out, row, visible)
            .map_err(|e| ScatterError::protocol(0, e.to_string()))
    } else {
        out.extend_from_slice(&row.raw);
        Ok(())
    }
}

/// Writes a row to the output. A row of a chunk or more (a multi-megabyte value) goes to the sink as its own
/// buffer: the bytes read from the shard become the client's without a copy, so such a message costs the proxy
/// its size once, not twice.
async fn emit_row(
    out: &mut Output<'_>,
    row: Frame,
    visible: usize,
    strip: bool,
) -> Result<(), ScatterError> {
    if !strip && row.raw.len() >= SINK_CHUNK {
        if !out.buf.is_empty() {
            out.sink.take(&mut out.buf).await?;
        }
        let mut whole = row
            .raw
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        return out.sink.take(&mut whole).await;
    }
    write_row(&mut out.buf, &row, visible, strip)?;
    out.maybe_flush().await
}

async fn concat(
    shards: &mut [Shard<'_, '_>],
    window: Window,
    visible: usize,
    strip: bool,
    out: &mut Output<'_>,
) -> Result<u64, ScatterError> {
    let mut emit = Emitter::new(window);
    for shard in shards.iter_mut() {
        while !emit.is_done() {
            let Some(row) = shard.next_row().await? else {
                break;
            };
            match emit.admit() {
                Admit::Take => emit_row(out, row, visible, strip).await?,
                Admit::Skip => {}
                Admit::Done => break,
            }
        }
        if emit.is_done() {
            break;
        }
    }
    Ok(emit.taken)
}

async fn sorted(
    shards: &mut [Shard<'_, '_>],
    keys: Vec<BoundKey>,
    window: Window,
    visible: usize,
    strip: bool,
    out: &mut Output<'_>,
) -> Result<u64, ScatterError> {
    let mut emit = Emitter::new(window);
    let mut merge = KWayMerge::new(keys, shards.len());
    while !emit.is_done() {
        for (i, shard) in shards.iter_mut().enumerate() {
            if merge.wants(i) {
                let row = shard.next_row().await?;
                merge.offer(i, row)?;
            }
        }
        let Some((_, row)) = merge.pop() else { break };
        match emit.admit() {
            Admit::Take => emit_row(out, row, visible, strip).await?,
            Admit::Skip => {}
            Admit::Done => break,
        }
    }
    Ok(emit.taken)
}

async fn aggregate(
    shards: &mut [Shard<'_, '_>],
    mut agg: Aggregator,
    order: &[SortKey],
    visible: usize,
    window: Window,
    out: &mut Output<'_>,
) -> Result<u64, ScatterError> {
    for shard in shards.iter_mut() {
        while let Some(row) = shard.next_row().await? {
            agg.add(shard.index, &row)?;
        }
    }
    let fields = agg.fields.clone();
    let keys = bind_keys(order, visible, &agg.type_oids)?;
    let rows = agg.finish();
    let rows = if keys.is_empty() {
        rows.into_iter()
            .map(|r| (Vec::new(), r))
            .collect::<Vec<_>>()
    } else {
        let mut keyed = rows
            .into_iter()
            .map(|r| Ok((sort_values(&keys, &r)?, r)))
            .collect::<Result<Vec<_>, ScatterError>>()?;
        keyed.sort_by(|a, b| compare_rows(&keys, &a.0, &b.0));
        keyed
    };
    write_row_description(&mut out.buf, &fields);
    let mut emit = Emitter::new(window);
    for (_, row) in &rows {
        match emit.admit() {
            Admit::Take => {
                write_data_row(&mut out.buf, &row[..visible]);
                out.maybe_flush().await?;
            }
            Admit::Skip => {}
            Admit::Done => break,
        }
    }
    Ok(emit.taken)
}

/// Where a shard's reply stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing outstanding (not sent, or ReadyForQuery read).
    Idle,
    Description,
    Rows,
    /// Only ReadyForQuery (and anything before it) is still to come.
    Finishing,
    Broken,
}

struct Shard<'a, 'c> {
    index: usize,
    conn: &'a mut &'c mut ServerConn,
    state: State,
    notices: Vec<Frame>,
}

impl Shard<'_, '_> {
    /// The next message that concerns the result; ParameterStatus is recorded and notices kept for the client.
    async fn next_frame(&mut self) -> Result<Frame, ScatterError> {
        loop {
            match split_frame(&mut self.conn.rbuf) {
                Ok(Some(frame)) => {
                    if frame.raw.len() >= SINK_CHUNK {
                        // The frame becomes the only owner of its allocation once the read buffer lets go of it
                        // (what follows it, if anything, is copied: it is less than one read), so it can be handed
                        // on without a copy.
                        self.conn.rbuf = BytesMut::from(&self.conn.rbuf[..]);
                    }
                    match frame.tag {
                        tag::PARAMETER_STATUS => {
                            if let Some((k, v)) = parse_parameter_status(frame.body()) {
                                self.conn.reported.insert(k, v);
                            }
                        }
                        tag::NOTICE_RESPONSE => self.notices.push(frame),
                        // Acknowledgements of an extended-protocol request: the caller answers the client's own.
                        tag::NOTIFICATION_RESPONSE | tag::PARSE_COMPLETE | tag::BIND_COMPLETE => {}
                        _ => return Ok(frame),
                    }
                }
                Ok(None) => {
                    if let Err(source) = self.conn.read_more().await {
                        return Err(self.broken(source));
                    }
                }
                Err(e) => return Err(self.broken(ServerIoError::Protocol(e.to_string()))),
            }
        }
    }

    /// Asks the shard's postmaster to cancel what this connection runs; returns once the signal is sent, so a
    /// drain after it cannot end before the cancel has landed (it reaches this statement or an idle backend, which
    /// ignores it, never a later client's).
    async fn cancel(&self) {
        crate::frontend::session::cancel_on_server(
            self.conn.addr.clone(),
            self.conn.cancel_key,
            || true,
        )
        .await;
    }

    fn broken(&mut self, source: ServerIoError) -> ScatterError {
        self.conn.broken = true;
        self.state = State::Broken;
        ScatterError::Io {
            shard: self.index,
            source,
        }
    }

    fn shard_error(&mut self, frame: &Frame) -> ScatterError {
        self.state = State::Finishing;
        ScatterError::Shard {
            shard: self.index,
            addr: self.conn.addr.clone(),
            fields: ShardErrorFields::parse(frame.body()),
        }
    }

    /// A message the simple query protocol does not allow here: wait for ReadyForQuery, then report it.
    fn unexpected(&mut self, frame: &Frame, expected: &str) -> ScatterError {
        if frame.tag == tag::READY_FOR_QUERY {
            self.ready(frame);
        } else {
            self.state = State::Finishing;
        }
        ScatterError::protocol(
            self.index,
            format!("expected {expected}, got message {:?}", frame.tag as char),
        )
    }

    fn ready(&mut self, frame: &Frame) {
        if let Some(status) = parse_ready_for_query(frame.body()) {
            self.conn.status = status;
        }
        self.state = State::Idle;
    }

    async fn description(&mut self) -> Result<Vec<Field>, ScatterError> {
        let frame = self.next_frame().await?;
        match frame.tag {
            tag::ROW_DESCRIPTION => {
                self.state = State::Rows;
                parse_row_description(&frame).map_err(|e| {
                    self.state = State::Finishing;
                    ScatterError::protocol(self.index, e.to_string())
                })
            }
            tag::ERROR_RESPONSE => Err(self.shard_error(&frame)),
            _ => Err(self.unexpected(&frame, "RowDescription")),
        }
    }

    /// The next DataRow, or None at CommandComplete.
    async fn next_row(&mut self) -> Result<Option<Frame>, ScatterError> {
        if self.state != State::Rows {
            return Ok(None);
        }
        let frame = self.next_frame().await?;
        match frame.tag {
            tag::DATA_ROW => Ok(Some(frame)),
            tag::COMMAND_COMPLETE => {
                self.state = State::Finishing;
                Ok(None)
            }
            tag::ERROR_RESPONSE => Err(self.shard_error(&frame)),
            _ => Err(self.unexpected(&frame, "DataRow or CommandComplete")),
        }
    }

    /// Reads up to ReadyForQuery, discarding rows; reports an ErrorResponse found on the way.
    async fn drain(&mut self) -> Result<(), ScatterError> {
        let mut error = None;
        while matches!(
            self.state,
            State::Description | State::Rows | State::Finishing
        ) {
            let frame = self.next_frame().await?;
            match frame.tag {
                tag::READY_FOR_QUERY => self.ready(&frame),
                tag::ERROR_RESPONSE if error.is_none() => error = Some(self.shard_error(&frame)),
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
