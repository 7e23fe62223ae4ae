//! Statements for several shards over the extended protocol (protocol section 55.2.3). The client's batch (see
//! `sharded_batch`) runs on every shard as the unnamed statement and portal, so the shards' own prepared-statement
//! caches are untouched and nothing of one client's batch can be seen by another's; the client gets one answer in
//! the order its messages ask for it.
//!
//! - Statements for every shard (DDL, reference-table and allowed keyless writes): the batch as sent, each shard's
//!   replies read to ReadyForQuery; row counts summed (a reference table's copies count once), or the failures
//!   listed per shard as the simple-protocol path does.
//! - Scatter reads: `sharded_scatter`. A rewritten shard statement (LIMIT+OFFSET, hidden sort columns, partial
//!   aggregates) may no longer mention every parameter, so its parameter types are taken from a Describe of the
//!   client's statement first.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::sharded_batch::ExtendedBatch;
use super::{Session, SessionError};
use crate::backend::{Pool, ServerConn};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{command_complete, parse_command_complete};
use crate::protocol::frontend::{parse_bind, parse_target, write_parse, write_sync, write_target};
use crate::protocol::{tag, Frame};

pub(super) type Lent = [(Arc<Pool>, Box<ServerConn>)];

/// A shard's replies to a batch, up to (not including) ReadyForQuery.
pub(super) struct Replies {
    pub frames: Vec<Frame>,
    /// Index in `frames` of the first ErrorResponse.
    pub error: Option<usize>,
}

/// Reads one shard's replies up to ReadyForQuery (ParameterStatus is recorded, not kept).
pub(super) async fn read_replies(server: &mut ServerConn) -> Result<Replies, SessionError> {
    let mut frames = Vec::new();
    let mut error = None;
    server
        .read_to_ready(|f| {
            if f.tag == tag::ERROR_RESPONSE && error.is_none() {
                error = Some(frames.len());
            }
            frames.push(f);
            Ok(())
        })
        .await?;
    Ok(Replies { frames, error })
}

/// A shard whose connection failed mid fan-out: the connection is not reused, and the failure is reported as
/// the shard's error.
fn connection_lost(
    server: &mut ServerConn,
    shard: u16,
    e: impl std::fmt::Display,
) -> (u16, String, String) {
    server.broken = true;
    (
        shard,
        sqlstate::CONNECTION_FAILURE.to_owned(),
        e.to_string(),
    )
}

/// The request every shard gets for a batch: the statement parsed unnamed, the client's later messages with the
/// statement name replaced by the unnamed one (a Close of the statement becomes a Close of a name no one uses, which
/// Postgres answers with CloseComplete, so replies stay aligned with the client's messages).
fn every_request(b: &ExtendedBatch) -> Result<BytesMut, ClientError> {
    let malformed = || ClientError::error(sqlstate::PROTOCOL_VIOLATION, "malformed message");
    let mut out = BytesMut::new();
    write_parse(&mut out, b"", b.sql.as_bytes(), &b.param_types);
    for f in &b.frames {
        match f.tag {
            tag::PARSE => {}
            tag::BIND => {
                let v = parse_bind(f.body()).ok_or_else(malformed)?;
                crate::protocol::frontend::write_bind(&mut out, v.portal, b"", v.rest);
            }
            tag::DESCRIBE | tag::CLOSE => {
                let v = parse_target(f.body()).ok_or_else(malformed)?;
                let name: &[u8] = match (f.tag, v.kind) {
                    (_, b'P') => v.name,
                    (tag::DESCRIBE, _) => b"",
                    _ => b"shardpool_unused",
                };
                write_target(&mut out, f.tag, v.kind, name);
            }
            _ => out.extend_from_slice(&f.raw),
        }
    }
    forget_unnamed(&mut out);
    Ok(out)
}

/// After the batch's Sync: Close of the unnamed statement and a Sync of its own, so that the statement (which
/// survives the batch, even a failed one) is not left on a pooled connection for the next client to bind. Its
/// replies are read by [`read_forgotten`].
pub(super) fn forget_unnamed(out: &mut BytesMut) {
    write_target(out, tag::CLOSE, b'S', b"");
    write_sync(out);
}

/// Reads the replies to [`forget_unnamed`]; a failure there marks the connection broken rather than failing the
/// client's statement, which is already answered.
pub(super) async fn read_forgotten(server: &mut ServerConn) {
    match read_replies(server).await {
        Ok(r) if r.error.is_none() => {}
        _ => server.broken = true,
    }
}

/// `INSERT 0 3` + `INSERT 0 4` = `INSERT 0 7`; tags without a count are taken from the first.
pub(super) fn sum_tags(tags: &[&str]) -> String {
    let first = tags.first().copied().unwrap_or("");
    let Some((head, n)) = first.rsplit_once(' ') else {
        return first.to_owned();
    };
    if n.parse::<u64>().is_err() {
        return first.to_owned();
    }
    let total: u64 = tags
        .iter()
        .filter_map(|t| t.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok()))
        .sum();
    format!("{head} {total}")
}

fn command_tag(f: &Frame) -> String {
    String::from_utf8_lossy(parse_command_complete(f.body())).into_owned()
}

impl Session {
    /// The batch on every shard; one answer. `reference_only`: the statement changes only reference tables, whose
    /// copies count once (shard 0's count and rows); otherwise counts are summed and returned rows concatenated.
    pub(super) async fn everywhere_extended(
        &mut self,
        shards: &[u16],
        b: &ExtendedBatch,
        reference_only: bool,
        lent: &mut Lent,
    ) -> Result<(), SessionError> {
        let request = match every_request(b) {
            Ok(r) => r,
            Err(e) => {
                self.answer_fanout_error(&e);
                return Ok(());
            }
        };
        let mut sent = vec![false; lent.len()];
        let mut failed: Vec<(u16, String, String)> = Vec::new();
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            match server.stream.write_all(&request).await {
                Ok(()) => sent[i] = true,
                Err(e) => failed.push(connection_lost(server, shards[i], e)),
            }
        }
        let mut replies: Vec<Option<Replies>> = Vec::with_capacity(lent.len());
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            if !sent[i] {
                replies.push(None);
                continue;
            }
            let read = read_replies(server).await;
            if read.is_ok() {
                read_forgotten(server).await;
            }
            match read {
                Ok(r) => {
                    if let Some(k) = r.error {
                        let e = crate::protocol::backend::ErrorFields::parse(r.frames[k].body());
                        failed.push((shards[i], e.code, e.message));
                    }
                    replies.push(Some(r));
                }
                Err(e) => {
                    failed.push(connection_lost(server, shards[i], e));
                    replies.push(None);
                }
            }
        }
        let client_parsed = b.frames.first().is_some_and(|f| f.tag == tag::PARSE);
        if !failed.is_empty() {
            failed.sort_by_key(|f| f.0);
            // Acknowledgements the failing shard gave before its error, then the error.
            let first_failed = shards.iter().position(|s| *s == failed[0].0);
            if let Some(r) = first_failed
                .and_then(|i| replies.get(i))
                .and_then(|r| r.as_ref())
            {
                let upto = r.error.unwrap_or(0);
                for (k, f) in r.frames[..upto].iter().enumerate() {
                    let ack = matches!(
                        f.tag,
                        tag::PARSE_COMPLETE
                            | tag::BIND_COMPLETE
                            | tag::PARAMETER_DESCRIPTION
                            | tag::ROW_DESCRIPTION
                            | tag::NO_DATA
                            | tag::CLOSE_COMPLETE
                    );
                    if ack && (k > 0 || client_parsed) {
                        self.cout.extend_from_slice(&f.raw);
                    }
                }
            }
            let ok: Vec<u16> = shards
                .iter()
                .copied()
                .filter(|s| failed.iter().all(|f| f.0 != *s))
                .collect();
            self.answer_fanout_error(&super::sharded::FanoutFailure {
                failed: &failed,
                ok: &ok,
            });
            return Ok(());
        }
        let all: Vec<Replies> = replies.into_iter().flatten().collect();
        let Some(first) = all.first() else {
            return Ok(());
        };
        // Rows and command tags of each Execute, per shard.
        let segments = |r: &Replies| {
            let mut segs: Vec<(Vec<Frame>, Option<String>)> = vec![(Vec::new(), None)];
            for f in &r.frames {
                match f.tag {
                    tag::DATA_ROW => {
                        if let Some(s) = segs.last_mut() {
                            s.0.push(f.clone());
                        }
                    }
                    tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED => {
                        if let Some(s) = segs.last_mut() {
                            s.1 = (f.tag == tag::COMMAND_COMPLETE).then(|| command_tag(f));
                        }
                        segs.push((Vec::new(), None));
                    }
                    _ => {}
                }
            }
            segs
        };
        let per_shard: Vec<_> = all.iter().map(segments).collect();
        let mut seg = 0;
        for (k, f) in first.frames.iter().enumerate() {
            match f.tag {
                tag::PARSE_COMPLETE if k == 0 && !client_parsed => {}
                tag::DATA_ROW => self.cout.extend_from_slice(&f.raw),
                tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED => {
                    if !reference_only {
                        for s in per_shard.iter().skip(1) {
                            for row in s.get(seg).map(|x| x.0.as_slice()).unwrap_or(&[]) {
                                self.cout.extend_from_slice(&row.raw);
                            }
                        }
                    }
                    if f.tag == tag::COMMAND_COMPLETE && !reference_only {
                        let tags: Vec<String> = per_shard
                            .iter()
                            .filter_map(|s| s.get(seg).and_then(|x| x.1.clone()))
                            .collect();
                        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
                        command_complete(&mut self.cout, &sum_tags(&refs));
                    } else {
                        self.cout.extend_from_slice(&f.raw);
                    }
                    seg += 1;
                }
                _ => self.cout.extend_from_slice(&f.raw),
            }
        }
        self.forget_closed_statements(b);
        Ok(())
    }

    /// A Close of a named statement in the batch closes the client's name (the shards never had it).
    pub(super) fn forget_closed_statements(&mut self, b: &ExtendedBatch) {
        for f in &b.frames {
            if f.tag == tag::CLOSE {
                if let Some(v) = parse_target(f.body()).filter(|v| v.kind == b'S') {
                    self.statements.close(v.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_summed_where_the_tag_has_one() {
        assert_eq!(sum_tags(&["INSERT 0 3", "INSERT 0 4"]), "INSERT 0 7");
        assert_eq!(sum_tags(&["UPDATE 1", "UPDATE 0", "UPDATE 2"]), "UPDATE 3");
        assert_eq!(sum_tags(&["CREATE TABLE", "CREATE TABLE"]), "CREATE TABLE");
    }
}
