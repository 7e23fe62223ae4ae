//! COPY with a sharded table. `COPY t FROM STDIN`: one COPY per shard is started, each inside a transaction, the
//! client's rows are split by their key (`sharding::copy`) and streamed to their shards in batches; only when every
//! shard has accepted its rows are the transactions committed (one after the other: there is no two-phase commit, so
//! only a failure of the COMMIT itself can leave some shards with their rows), and the client is told the total. `COPY t TO
//! STDOUT`: the shards' outputs are sent one after the other, with a header (if asked for) once.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::sharded::FanoutError;
use super::{Session, SessionError};
use crate::backend::{Pool, ServerConn};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{command_complete, parse_command_complete, ErrorFields};
use crate::protocol::frontend::{write_copy_done, write_copy_fail, write_query};
use crate::protocol::{tag, Frame};
use crate::sharding::copy::{CopyFrom, RowSplitter, ShardBatches, DEFAULT_FLUSH_THRESHOLD};
use crate::sharding::schema::ShardedTable;

type Lent = [(Arc<Pool>, Box<ServerConn>)];

/// Stop buffering output for the client beyond this; flush first.
const CLIENT_FLUSH: usize = 256 * 1024;

async fn next_frame(server: &mut ServerConn) -> Result<Frame, SessionError> {
    Ok(server.next_frame().await?)
}

/// Reads a shard's replies up to ReadyForQuery: the rows of its `COPY n` and its first error.
async fn finish_shard(server: &mut ServerConn) -> Result<(u64, Option<ErrorFields>), SessionError> {
    let mut rows = 0;
    let error = server
        .read_to_ready(|f| {
            if f.tag == tag::COMMAND_COMPLETE {
                rows += copy_count(f.body());
            }
            Ok(())
        })
        .await?;
    Ok((rows, error))
}

fn copy_count(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(parse_command_complete(body));
    text.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A shard's error as the client sees it: the shard's own SQLSTATE, the message prefixed with the shard.
struct ShardFailure {
    code: String,
    message: String,
}

impl FanoutError for ShardFailure {
    fn sqlstate(&self) -> &str {
        &self.code
    }

    fn write(&self, out: &mut BytesMut) {
        crate::protocol::backend::error_response(
            out,
            crate::protocol::backend::Severity::Error,
            &self.code,
            &self.message,
            None,
        );
    }
}

/// A shard's ErrorResponse passed to the client as it is.
struct ShardErrorFrame {
    code: String,
    raw: Vec<u8>,
}

impl FanoutError for ShardErrorFrame {
    fn sqlstate(&self) -> &str {
        &self.code
    }

    fn write(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.raw);
    }
}

fn shard_error(shard: usize, e: &ErrorFields) -> ShardFailure {
    ShardFailure {
        code: e.code.clone(),
        message: format!("on shard {shard}: {}", e.message),
    }
}

impl Session {
    pub(super) async fn copy_in(
        &mut self,
        from: &CopyFrom,
        table: &Arc<ShardedTable>,
        lent: &mut Lent,
    ) -> Result<bool, SessionError> {
        let Some(router) = self.shard_router() else {
            return Ok(false);
        };
        let Some(catalog) = router.catalog() else {
            self.answer_fanout_error(&ClientError::error(
                sqlstate::CANNOT_CONNECT_NOW,
                "the shard catalog is not loaded yet",
            ));
            return Ok(false);
        };
        // Which field holds the key: from the column list, else from the table's columns (asked of shard 0).
        let splitter = match &from.columns {
            Some(_) => {
                let cols = from.columns.clone().unwrap_or_default();
                match cols.iter().position(|c| c.eq_ignore_ascii_case(&table.key)) {
                    Some(i) => RowSplitter::new(from, i, table.key_type),
                    None => {
                        self.answer_fanout_error(&ClientError::error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!(
                                "COPY into sharded table {} must include its shard key column {}",
                                table.name, table.key
                            ),
                        ));
                        return Ok(false);
                    }
                }
            }
            None => {
                let sql = format!(
                    "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = '{}'::regclass \
                     AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                    from.table.to_sql().replace('\'', "''")
                );
                match lent[0].1.query_rows(&sql).await {
                    Ok(rows) => {
                        let cols: Vec<String> = rows
                            .into_iter()
                            .filter_map(|r| r.into_iter().next().flatten())
                            .collect();
                        RowSplitter::for_table(from, &cols, &table.key, table.key_type)
                    }
                    Err(e) => {
                        self.answer_fanout_error(&ClientError::error(
                            sqlstate::INTERNAL_ERROR,
                            format!("reading the columns of {}: {e}", table.name),
                        ));
                        return Ok(false);
                    }
                }
            }
        };
        let mut splitter = match splitter {
            Ok(s) => s,
            Err(e) => {
                self.answer_fanout_error(&ClientError::error(e.sqlstate(), e.to_string()));
                return Ok(false);
            }
        };
        // Start a COPY on every shard; each must answer CopyInResponse.
        let shard_sql = from.shard_sql();
        let mut out = BytesMut::new();
        // In a transaction, so that a shard failing later (at its COPY start, on its data, at CopyDone) leaves no
        // rows on the shards that had accepted theirs.
        write_query(&mut out, "BEGIN");
        write_query(&mut out, &shard_sql);
        let mut copy_in_response = None;
        let mut failed: Option<ShardFailure> = None;
        let mut in_copy = vec![false; lent.len()];
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            server
                .stream
                .write_all(&out)
                .await
                .map_err(SessionError::ServerIo)?;
            loop {
                let f = next_frame(server).await?;
                match f.tag {
                    tag::COPY_IN_RESPONSE => {
                        in_copy[i] = true;
                        copy_in_response.get_or_insert(f.raw.clone());
                        break;
                    }
                    tag::ERROR_RESPONSE => {
                        failed.get_or_insert(shard_error(i, &ErrorFields::parse(f.body())));
                        let _ = finish_shard(server).await?;
                        break;
                    }
                    _ => {}
                }
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some(e) = failed {
            abort_copies(
                lent,
                &in_copy,
                "shardpool: COPY could not start on every shard",
            )
            .await?;
            end_transactions(lent, false).await?;
            self.answer_fanout_error(&e);
            return Ok(false);
        }
        let Some(response) = copy_in_response else {
            return Ok(false);
        };
        self.cout.extend_from_slice(&response);
        self.flush_client().await?;

        // Stream the client's rows to their shards.
        let vshard_writes = &router.vshard_writes;
        let route = |key: &crate::sharding::key::KeyValue| -> Result<u16, ClientError> {
            let v = router.vshard(&catalog, table, key)?;
            if let Some(c) = vshard_writes.get(v as usize) {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            catalog.shard_of(v).ok_or_else(|| {
                ClientError::error(sqlstate::INTERNAL_ERROR, format!("vshard {v} has no shard"))
            })
        };
        let mut batches = ShardBatches::new(lent.len(), DEFAULT_FLUSH_THRESHOLD, route);
        let mut client_failed = None;
        let outcome: Result<(), ClientError> = loop {
            let next = match self.next_frame_while_owed().await {
                Err(e @ SessionError::Terminated(_)) => {
                    abort_copies(lent, &in_copy, "client stalled").await?;
                    return Err(e);
                }
                other => other?,
            };
            let Some(frame) = next else {
                abort_copies(lent, &in_copy, "client disconnected").await?;
                return Err(SessionError::ClientGone);
            };
            let done = match frame.tag {
                tag::COPY_DATA => {
                    splitter.push(frame.body());
                    false
                }
                tag::COPY_DONE => {
                    splitter.finish();
                    true
                }
                tag::COPY_FAIL => {
                    client_failed = Some(
                        String::from_utf8_lossy(frame.body())
                            .trim_end_matches('\0')
                            .to_owned(),
                    );
                    break Ok(());
                }
                tag::FLUSH | tag::SYNC => false,
                other => {
                    break Err(ClientError::error(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "unexpected message type {:?} during COPY data transfer",
                            other as char
                        ),
                    ))
                }
            };
            let step: Result<(), ClientError> = async {
                while let Some(row) = splitter
                    .next_row()
                    .map_err(|e| ClientError::error(e.sqlstate(), e.to_string()))?
                {
                    let pushed = batches.push(&row).map_err(|e| match e {
                        crate::sharding::copy::BatchError::Route(ce) => ce,
                        crate::sharding::copy::BatchError::NoSuchShard { shard, .. } => {
                            ClientError::error(
                                sqlstate::INTERNAL_ERROR,
                                format!("vshard placed on unknown shard {shard}"),
                            )
                        }
                    })?;
                    if let Some(sf) = pushed {
                        let server = &mut lent[sf.shard as usize].1;
                        server.stream.write_all(&sf.frame).await.map_err(|e| {
                            ClientError::error(
                                sqlstate::CONNECTION_FAILURE,
                                format!("shard {}: {e}", sf.shard),
                            )
                        })?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = step {
                break Err(e);
            }
            if done {
                break Ok(());
            }
        };
        if let Some(reason) = client_failed {
            abort_copies(lent, &in_copy, &reason).await?;
            end_transactions(lent, false).await?;
            self.answer_fanout_error(&ClientError::error(
                "57014",
                format!("COPY from stdin failed: {reason}"),
            ));
            return Ok(false);
        }
        if let Err(e) = outcome {
            abort_copies(lent, &in_copy, "shardpool: rejected COPY data").await?;
            end_transactions(lent, false).await?;
            self.answer_fanout_error(&e);
            return Ok(false);
        }
        for sf in batches.flush_all() {
            lent[sf.shard as usize]
                .1
                .stream
                .write_all(&sf.frame)
                .await
                .map_err(SessionError::ServerIo)?;
        }
        let mut done = BytesMut::new();
        write_copy_done(&mut done);
        let mut total = 0;
        let mut first_error = None;
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            server
                .stream
                .write_all(&done)
                .await
                .map_err(SessionError::ServerIo)?;
            let (rows, error) = finish_shard(server).await?;
            total += rows;
            if let (None, Some(e)) = (&first_error, error) {
                first_error = Some(shard_error(i, &e));
            }
        }
        if let Some(e) = first_error {
            end_transactions(lent, false).await?;
            self.answer_fanout_error(&e);
            return Ok(false);
        }
        let failed = end_transactions(lent, true).await?;
        match failed.first() {
            // A COMMIT failed: the shards before it have committed their rows, and nothing can undo that.
            Some((i, e)) => {
                let committed: Vec<String> = (0..*i).map(|s| s.to_string()).collect();
                let mut ce = shard_error(*i, e);
                ce.message = format!(
                    "{} (at COMMIT; shards [{}] had already committed their rows)",
                    ce.message,
                    committed.join(", ")
                );
                self.answer_fanout_error(&ce);
            }
            None => {
                command_complete(&mut self.cout, &format!("COPY {total}"));
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) async fn copy_out(
        &mut self,
        sql: &str,
        header: bool,
        lent: &mut Lent,
    ) -> Result<bool, SessionError> {
        let mut out = BytesMut::new();
        write_query(&mut out, sql);
        let mut total = 0u64;
        let mut started = false;
        let mut error: Option<ShardErrorFrame> = None;
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            server
                .stream
                .write_all(&out)
                .await
                .map_err(SessionError::ServerIo)?;
            let mut first_data = true;
            loop {
                let f = next_frame(server).await?;
                match f.tag {
                    tag::COPY_OUT_RESPONSE if !started && error.is_none() => {
                        self.cout.extend_from_slice(&f.raw);
                        started = true;
                    }
                    tag::COPY_DATA if error.is_none() => {
                        let skip = header && first_data && i > 0;
                        first_data = false;
                        if !skip {
                            self.cout.extend_from_slice(&f.raw);
                        }
                    }
                    tag::COMMAND_COMPLETE => total += copy_count(f.body()),
                    tag::ERROR_RESPONSE if error.is_none() => {
                        error = Some(ShardErrorFrame {
                            code: ErrorFields::parse(f.body()).code,
                            raw: f.raw.to_vec(),
                        })
                    }
                    tag::READY_FOR_QUERY => {
                        if let Some(status) =
                            crate::protocol::backend::parse_ready_for_query(f.body())
                        {
                            server.status = status;
                        }
                        break;
                    }
                    _ => {}
                }
                if self.cout.len() > CLIENT_FLUSH {
                    self.flush_client().await?;
                }
            }
        }
        match error {
            // An ErrorResponse ends a copy-out for the client too.
            Some(e) => {
                self.answer_fanout_error(&e);
                Ok(false)
            }
            None => {
                if started {
                    let mut done = BytesMut::new();
                    // CopyDone looks the same in both directions.
                    write_copy_done(&mut done);
                    self.cout.extend_from_slice(&done);
                }
                command_complete(&mut self.cout, &format!("COPY {total}"));
                Ok(true)
            }
        }
    }
}

/// Ends the shards' transactions (COMMIT or ROLLBACK) where one is open, in shard order. With `commit`, stops at
/// the first failure, whose shard is returned (later shards are rolled back).
async fn end_transactions(
    lent: &mut Lent,
    commit: bool,
) -> Result<Vec<(usize, ErrorFields)>, SessionError> {
    let mut failed = Vec::new();
    for (i, (_, server)) in lent.iter_mut().enumerate() {
        if server.status == crate::protocol::TxStatus::Idle {
            continue;
        }
        let commit_here = commit && failed.is_empty();
        // COMMIT of a failed transaction rolls back and says ROLLBACK without an error: that is a failure too.
        let aborted = server.status == crate::protocol::TxStatus::Failed;
        let sql = if commit_here { "COMMIT" } else { "ROLLBACK" };
        let error = server.simple_query(sql).await?;
        match error {
            Some(e) if commit_here => failed.push((i, e)),
            None if commit_here && aborted => failed.push((
                i,
                ErrorFields {
                    severity: "ERROR".into(),
                    code: "25P02".into(),
                    message: "the shard's transaction was aborted".into(),
                },
            )),
            _ => {}
        }
    }
    Ok(failed)
}

/// Ends the COPYs in progress on the shards with CopyFail (nothing is committed) and reads them back to idle.
async fn abort_copies(lent: &mut Lent, in_copy: &[bool], reason: &str) -> Result<(), SessionError> {
    let mut fail = BytesMut::new();
    write_copy_fail(&mut fail, reason);
    for (i, (_, server)) in lent.iter_mut().enumerate() {
        if in_copy.get(i) == Some(&true) {
            server
                .stream
                .write_all(&fail)
                .await
                .map_err(SessionError::ServerIo)?;
            let _ = finish_shard(server).await?;
        }
    }
    Ok(())
}
