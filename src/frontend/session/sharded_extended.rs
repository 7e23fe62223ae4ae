//! Statements for several shards over the extended protocol (protocol section 55.2.3). The client's batch (see
//! `sharded_batch`) runs on every shard as the unnamed statement and portal, so the shards' own prepared-statement
//! caches are untouched and nothing of one client's batch can be seen by another's; the client gets one answer in
//! the order its messages ask for it.
//!
//! - Statements for every shard (DDL, reference-table and allowed keyless writes): the batch as sent, each shard's
//!   replies read to ReadyForQuery; row counts summed (a reference table's copies count once), or the failures
//!   listed per shard as the simple-protocol path does.
//! - Scatter reads: the merge plan of `sharding::scatter`, with the Bind's parameters passed to every shard as
//!   parameters. A rewritten shard statement (LIMIT+OFFSET, hidden sort columns, partial aggregates) may no longer
//!   mention every parameter, so its parameter types are taken from a Describe of the client's statement first.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::sharded_batch::{bind_parts, write_shard_bind, ExtendedBatch};
use super::{Session, SessionError};
use crate::backend::{Pool, ServerConn};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{
    close_complete, command_complete, parse_command_complete, parse_complete, put_message,
};
use crate::protocol::framing::split_frame;
use crate::protocol::frontend::{
    parse_bind, parse_bind_params, parse_target, write_parse, write_sync, write_target,
};
use crate::protocol::{tag, Frame};
use crate::sharding::scatter::wire::{
    data_row_values, parse_row_description, write_data_row, write_row_description,
};
use crate::sharding::scatter::{binary, Plan, PlanKind, ScatterError};

type Lent = [(Arc<Pool>, Box<ServerConn>)];

/// A shard's replies to a batch, up to (not including) ReadyForQuery.
struct Replies {
    frames: Vec<Frame>,
    /// Index in `frames` of the first ErrorResponse.
    error: Option<usize>,
}

/// Reads one shard's replies up to ReadyForQuery (ParameterStatus is recorded, not kept).
async fn read_replies(server: &mut ServerConn) -> Result<Replies, SessionError> {
    let mut frames = Vec::new();
    let mut error = None;
    loop {
        let Some(f) = split_frame(&mut server.rbuf)
            .map_err(|e| SessionError::ServerProtocol(e.to_string()))?
        else {
            server
                .read_more()
                .await
                .map_err(|e| SessionError::ServerIo(std::io::Error::other(e.to_string())))?;
            continue;
        };
        match f.tag {
            tag::READY_FOR_QUERY => {
                if let Some(s) = crate::protocol::backend::parse_ready_for_query(f.body()) {
                    server.status = s;
                }
                return Ok(Replies { frames, error });
            }
            tag::PARAMETER_STATUS => {
                if let Some((k, v)) = crate::protocol::backend::parse_parameter_status(f.body()) {
                    server.reported.insert(k, v);
                }
            }
            t => {
                if t == tag::ERROR_RESPONSE && error.is_none() {
                    error = Some(frames.len());
                }
                frames.push(f);
            }
        }
    }
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
    Ok(out)
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
                e.write(&mut self.cout);
                return Ok(());
            }
        };
        let mut sent = vec![false; lent.len()];
        let mut failed: Vec<(u16, String, String)> = Vec::new();
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            match server.stream.write_all(&request).await {
                Ok(()) => sent[i] = true,
                Err(e) => {
                    server.broken = true;
                    failed.push((
                        shards[i],
                        sqlstate::CONNECTION_FAILURE.to_owned(),
                        e.to_string(),
                    ));
                }
            }
        }
        let mut replies: Vec<Option<Replies>> = Vec::with_capacity(lent.len());
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            if !sent[i] {
                replies.push(None);
                continue;
            }
            match read_replies(server).await {
                Ok(r) => {
                    if let Some(k) = r.error {
                        let e = crate::protocol::backend::ErrorFields::parse(r.frames[k].body());
                        failed.push((shards[i], e.code, e.message));
                    }
                    replies.push(Some(r));
                }
                Err(e) => {
                    server.broken = true;
                    failed.push((
                        shards[i],
                        sqlstate::CONNECTION_FAILURE.to_owned(),
                        e.to_string(),
                    ));
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
            super::sharded::write_fanout_failure(&mut self.cout, &failed, &ok);
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
                    tag::DATA_ROW => segs.last_mut().map(|s| s.0.push(f.clone())).unwrap_or(()),
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
    fn forget_closed_statements(&mut self, b: &ExtendedBatch) {
        for f in &b.frames {
            if f.tag == tag::CLOSE {
                if let Some(v) = parse_target(f.body()).filter(|v| v.kind == b'S') {
                    self.statements.close(v.name);
                }
            }
        }
    }

    /// A merged read over the extended protocol.
    pub(super) async fn scatter_extended(
        &mut self,
        b: &ExtendedBatch,
        lent: &mut Lent,
    ) -> Result<(), SessionError> {
        if let Some(r) = self.shard_router() {
            r.scatters
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match self.scatter_extended_answer(b, lent).await? {
            Ok(answer) => {
                self.cout.extend_from_slice(&answer);
                self.forget_closed_statements(b);
            }
            Err(e) => e.write_error_response(&mut self.cout),
        }
        Ok(())
    }

    async fn scatter_extended_answer(
        &mut self,
        b: &ExtendedBatch,
        lent: &mut Lent,
    ) -> Result<Result<BytesMut, ScatterError>, SessionError> {
        let bad = |m: &str| ScatterError::Data {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: m.to_owned(),
        };
        let Some(bind) = b.frames.iter().find(|f| f.tag == tag::BIND) else {
            return Ok(Err(bad("no Bind in the batch")));
        };
        let Some(view) = parse_bind(bind.body()) else {
            return Ok(Err(bad("malformed Bind message")));
        };
        let (Some(parts), Some((formats, values))) =
            (bind_parts(view.rest), parse_bind_params(view.rest))
        else {
            return Ok(Err(bad("malformed Bind message")));
        };
        let param_int =
            |n: usize| -> Result<Option<i64>, ScatterError> { param_integer(&formats, &values, n) };
        let plan = match Plan::from_sql_with_params(&b.sql, &param_int) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let concat = matches!(plan.kind, PlanKind::Concat { .. });
        let wants_binary = parts.result_formats.contains(&1);
        let shard_formats: Vec<i16> = if concat {
            let mut f = parts.result_formats.clone();
            if f.len() > 1 {
                f.extend(std::iter::repeat_n(0, plan.hidden));
            }
            f
        } else {
            Vec::new()
        };
        let describe_statement = b
            .frames
            .iter()
            .any(|f| f.tag == tag::DESCRIBE && f.body().first() == Some(&b'S'));
        let mut described: Option<(Frame, Frame)> = None;
        let mut param_types = b.param_types.clone();
        if describe_statement || (plan.is_rewritten() && !values.is_empty()) {
            match describe(&mut lent[0].1, &b.sql, &b.param_types).await? {
                Ok((params, row)) => {
                    // ParameterDescription's body is laid out as Parse's parameter types.
                    param_types = Bytes::copy_from_slice(params.body());
                    described = Some((params, row));
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        let shard_sql = plan.shard_sql(&b.sql);
        let mut request = BytesMut::new();
        write_parse(&mut request, b"", shard_sql.as_bytes(), &param_types);
        write_shard_bind(&mut request, parts.params, &shard_formats);
        write_target(&mut request, tag::DESCRIBE, b'P', b"");
        put_message(&mut request, tag::EXECUTE, |m| {
            m.extend_from_slice(&[0, 0, 0, 0, 0])
        });
        write_sync(&mut request);
        let mut merged = BytesMut::new();
        let mut servers: Vec<&mut ServerConn> = lent.iter_mut().map(|(_, s)| &mut **s).collect();
        if let Err(e) = crate::sharding::scatter::scatter_request(
            &plan,
            &request,
            &mut servers,
            &mut merged,
            true,
        )
        .await
        {
            return Ok(Err(e));
        }
        let mut frames = Vec::new();
        while let Ok(Some(f)) = split_frame(&mut merged) {
            frames.push(f);
        }
        let (description, rest) = match frames.split_first() {
            Some((d, rest)) if d.tag == tag::ROW_DESCRIPTION => (d.clone(), rest.to_vec()),
            _ => {
                return Ok(Err(ScatterError::protocol(
                    0,
                    "merged result without RowDescription",
                )))
            }
        };
        let (description, rest) = if wants_binary && !concat {
            match to_binary(&description, &rest, &parts.result_formats) {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            }
        } else {
            (description, rest)
        };
        let mut answer = BytesMut::new();
        for f in &b.frames {
            match f.tag {
                tag::PARSE => parse_complete(&mut answer),
                tag::BIND => put_message(&mut answer, tag::BIND_COMPLETE, |_| {}),
                tag::DESCRIBE if f.body().first() == Some(&b'S') => {
                    if let Some((p, r)) = &described {
                        answer.extend_from_slice(&p.raw);
                        answer.extend_from_slice(&r.raw);
                    }
                }
                tag::DESCRIBE => answer.extend_from_slice(&description.raw),
                tag::EXECUTE => {
                    for r in &rest {
                        answer.extend_from_slice(&r.raw);
                    }
                }
                tag::CLOSE => close_complete(&mut answer),
                _ => {}
            }
        }
        Ok(Ok(answer))
    }
}

/// Parse and Describe of the client's own statement on one shard: its ParameterDescription and its RowDescription
/// (or NoData), as Postgres would describe it to the client.
async fn describe(
    server: &mut ServerConn,
    sql: &str,
    param_types: &[u8],
) -> Result<Result<(Frame, Frame), ScatterError>, SessionError> {
    let mut out = BytesMut::new();
    write_parse(&mut out, b"", sql.as_bytes(), param_types);
    write_target(&mut out, tag::DESCRIBE, b'S', b"");
    write_sync(&mut out);
    if let Err(e) = server.stream.write_all(&out).await {
        server.broken = true;
        return Err(SessionError::ServerIo(e));
    }
    let replies = read_replies(server).await?;
    if let Some(k) = replies.error {
        return Ok(Err(ScatterError::Shard {
            shard: 0,
            addr: server.addr,
            fields: crate::sharding::scatter::ShardErrorFields::parse(replies.frames[k].body()),
        }));
    }
    let params = replies
        .frames
        .iter()
        .find(|f| f.tag == tag::PARAMETER_DESCRIPTION);
    let row = replies
        .frames
        .iter()
        .find(|f| f.tag == tag::ROW_DESCRIPTION || f.tag == tag::NO_DATA);
    match (params, row) {
        (Some(p), Some(r)) => Ok(Ok((p.clone(), r.clone()))),
        _ => Ok(Err(ScatterError::protocol(
            0,
            "Describe without its descriptions",
        ))),
    }
}

/// Parameter `n` (1-based) of a Bind as an integer, for LIMIT/OFFSET: text, or binary int2/int4/int8.
fn param_integer(
    formats: &[i16],
    values: &[Option<&[u8]>],
    n: usize,
) -> Result<Option<i64>, ScatterError> {
    let invalid = |m: String| ScatterError::Data {
        code: "22P02",
        message: m,
    };
    let value = values
        .get(n - 1)
        .ok_or_else(|| invalid(format!("there is no parameter ${n}")))?;
    let Some(v) = value else {
        return Ok(None);
    };
    let format = match formats {
        [] => 0,
        [f] => *f,
        fs => fs.get(n - 1).copied().unwrap_or(0),
    };
    if format == 0 {
        let s =
            std::str::from_utf8(v).map_err(|_| invalid(format!("parameter ${n} is not text")))?;
        return s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid(format!("invalid input syntax for type bigint: \"{s}\"")));
    }
    match v.len() {
        8 => Ok(Some(i64::from_be_bytes(
            v[..8].try_into().map_err(|_| invalid(String::new()))?,
        ))),
        4 => Ok(Some(i64::from(i32::from_be_bytes(
            v[..4].try_into().map_err(|_| invalid(String::new()))?,
        )))),
        2 => Ok(Some(i64::from(i16::from_be_bytes([v[0], v[1]])))),
        _ => Err(invalid(format!("parameter ${n} is not a binary integer"))),
    }
}

/// Converts a merged text result to the client's result formats: the RowDescription's format codes and every
/// binary column of every row. A column the client wants binary whose type has no exact conversion is refused.
fn to_binary(
    description: &Frame,
    rest: &[Frame],
    formats: &[i16],
) -> Result<(Frame, Vec<Frame>), ScatterError> {
    let mut fields =
        parse_row_description(description).map_err(|e| ScatterError::protocol(0, e.to_string()))?;
    let format_of = |i: usize| match formats {
        [] => 0,
        [f] => *f,
        fs => fs.get(i).copied().unwrap_or(0),
    };
    if formats.len() > 1 && formats.len() != fields.len() {
        return Err(ScatterError::Data {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: format!(
                "bind message has {} result formats but query has {} columns",
                formats.len(),
                fields.len()
            ),
        });
    }
    for (i, f) in fields.iter_mut().enumerate() {
        if format_of(i) == 1 {
            if !binary::convertible(f.type_oid) {
                return Err(ScatterError::unsupported(format!(
                    "binary-format results for column \"{}\" of type {} when the merge reads values (ORDER BY, \
                     aggregates); ask for text results, or cast the column to text",
                    String::from_utf8_lossy(&f.name),
                    crate::sharding::scatter::value::type_name(f.type_oid)
                )));
            }
            f.format = 1;
        }
    }
    let mut buf = BytesMut::new();
    write_row_description(&mut buf, &fields);
    let desc = Frame {
        tag: tag::ROW_DESCRIPTION,
        raw: buf.split().freeze(),
    };
    let mut rows = Vec::with_capacity(rest.len());
    for r in rest {
        if r.tag != tag::DATA_ROW {
            rows.push(r.clone());
            continue;
        }
        let mut values =
            data_row_values(r).map_err(|e| ScatterError::protocol(0, e.to_string()))?;
        for (i, v) in values.iter_mut().enumerate() {
            let (Some(text), Some(f)) = (v.as_ref(), fields.get(i)) else {
                continue;
            };
            if f.format == 1 {
                let bin =
                    binary::text_to_binary(f.type_oid, text).ok_or_else(|| ScatterError::Data {
                        code: "22P03",
                        message: format!(
                            "could not convert a value of column \"{}\" to binary format",
                            String::from_utf8_lossy(&f.name)
                        ),
                    })?;
                *v = Some(Bytes::from(bin));
            }
        }
        write_data_row(&mut buf, &values);
        rows.push(Frame {
            tag: tag::DATA_ROW,
            raw: buf.split().freeze(),
        });
    }
    Ok((desc, rows))
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

    #[test]
    fn limit_parameters_read_text_and_binary_integers() {
        let eight = 7i64.to_be_bytes();
        let values: Vec<Option<&[u8]>> = vec![Some(b" 12"), Some(&eight), None];
        assert_eq!(param_integer(&[0, 1, 0], &values, 1).unwrap(), Some(12));
        assert_eq!(param_integer(&[0, 1, 0], &values, 2).unwrap(), Some(7));
        assert_eq!(param_integer(&[0, 1, 0], &values, 3).unwrap(), None);
        assert!(param_integer(&[1], &values, 1).is_err());
    }
}
