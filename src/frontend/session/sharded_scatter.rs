//! Scatter reads over the extended protocol: the merge plans of `sharding::scatter` (built with the Bind's values
//! for LIMIT/OFFSET parameters) run as one Parse/Bind/Describe/Execute/Sync per shard with the client's parameters,
//! and the merged result is answered in the order the client's batch asks for it. The merge reads text: a sorted or
//! aggregated merge asks the shards for text and converts to binary what the client wants in binary
//! (`sharding::scatter::binary`); a concatenation passes binary columns through.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::sharded::ClientSink;
use super::sharded_batch::{bind_parts, write_shard_bind, ExtendedBatch};
use super::sharded_extended::{forget_unnamed, read_forgotten, read_replies, Lent};
use super::{Session, SessionError};
use crate::backend::server::ServerIoError;
use crate::backend::ServerConn;
use crate::error::sqlstate;
use crate::protocol::backend::{close_complete, parse_complete, put_message};
use crate::protocol::framing::split_frame;
use crate::protocol::frontend::{
    parse_bind, parse_bind_params, write_parse, write_sync, write_target,
};
use crate::protocol::{tag, Frame};
use crate::sharding::scatter::wire::{
    data_row_values, parse_row_description, write_data_row, write_row_description, Field,
};
use crate::sharding::scatter::{binary, Limits, MergeSink, Plan, PlanKind, ScatterError};

impl Session {
    /// A merged read over the extended protocol, streamed to the client as it is merged. `Err`: the client could
    /// not take it (the session must end; the shards were cancelled and marked broken).
    pub(super) async fn scatter_extended(
        &mut self,
        b: &ExtendedBatch,
        lent: &mut Lent,
    ) -> Result<(), SessionError> {
        if let Some(r) = self.shard_router() {
            r.scatters
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let limits = Limits::from_config(&self.ctx.config().general);
        let mut sink = ClientSink::new(self);
        let result = scatter_answer(b, lent, &mut sink, limits).await;
        if let Some(e) = sink.failure.take() {
            return Err(e);
        }
        match result {
            Ok(()) => self.forget_closed_statements(b),
            Err(e) => self.answer_fanout_error(&e),
        }
        Ok(())
    }
}

/// Streams the client's answer to the batch: the merged result goes out as it is merged, framed by the replies to
/// the batch's other messages. On error the ErrorResponse follows whatever was sent.
async fn scatter_answer(
    b: &ExtendedBatch,
    lent: &mut Lent,
    sink: &mut ClientSink<'_>,
    limits: Limits,
) -> Result<(), ScatterError> {
    let bad = |m: &str| ScatterError::Data {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: m.to_owned(),
    };
    let Some(bind) = b.frames.iter().find(|f| f.tag == tag::BIND) else {
        return Err(bad("no Bind in the batch"));
    };
    let Some(view) = parse_bind(bind.body()) else {
        return Err(bad("malformed Bind message"));
    };
    let (Some(parts), Some((formats, values))) =
        (bind_parts(view.rest), parse_bind_params(view.rest))
    else {
        return Err(bad("malformed Bind message"));
    };
    let param_int =
        |n: usize| -> Result<Option<i64>, ScatterError> { param_integer(&formats, &values, n) };
    let plan = Plan::from_sql_with_params(&b.sql, &param_int)?;
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
        let Some((_, first)) = lent.first_mut() else {
            return Err(ScatterError::unsupported(
                "a scatter/gather query over no shards",
            ));
        };
        let (params, row) = describe(first, &b.sql, &b.param_types).await?;
        // ParameterDescription's body is laid out as Parse's parameter types.
        param_types = Bytes::copy_from_slice(params.body());
        described = Some((params, row));
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
    forget_unnamed(&mut request);
    let mut answer = Answer {
        batch: &b.frames,
        described: described.as_ref(),
        binary: (wants_binary && !concat).then_some(&parts.result_formats[..]),
        fields: None,
        description: None,
        sink,
    };
    let mut servers: Vec<&mut ServerConn> = lent.iter_mut().map(|(_, s)| &mut **s).collect();
    let result = crate::sharding::scatter::scatter_request(
        &plan,
        &request,
        &mut servers,
        &mut answer,
        true,
        limits,
    )
    .await;
    // Every shard was sent the request and read to its first ReadyForQuery unless I/O failed (or the client did).
    if result
        .as_ref()
        .map_or_else(|e| e.servers_reusable(), |_| true)
    {
        for server in servers {
            read_forgotten(server).await;
        }
    } else {
        for server in servers {
            server.broken = true;
        }
    }
    result?;
    answer.finish().await
}

/// The client's answer to a scatter batch, written as the merged result arrives: the replies owed for the batch's
/// messages before its Execute go out with the merged RowDescription, the rows as the Execute's, the rest at the
/// end. Values are converted to binary where the client asked (a merge that reads values gets text from shards).
struct Answer<'b, 's, 'c> {
    batch: &'b [Frame],
    described: Option<&'b (Frame, Frame)>,
    /// The client's result formats, when rows must be converted.
    binary: Option<&'b [i16]>,
    /// The converted columns (with the client's formats), once the RowDescription is in.
    fields: Option<Vec<Field>>,
    description: Option<Frame>,
    sink: &'s mut ClientSink<'c>,
}

impl Answer<'_, '_, '_> {
    /// The replies to the batch's messages before its (single) Execute, or, with `after_execute`, after it.
    fn replies(&self, out: &mut BytesMut, after_execute: bool) {
        let mut seen_execute = false;
        for f in self.batch {
            if f.tag == tag::EXECUTE {
                seen_execute = true;
                continue;
            }
            if seen_execute != after_execute {
                continue;
            }
            match f.tag {
                tag::PARSE => parse_complete(out),
                tag::BIND => put_message(out, tag::BIND_COMPLETE, |_| {}),
                tag::DESCRIBE if f.body().first() == Some(&b'S') => {
                    if let Some((p, r)) = self.described {
                        out.extend_from_slice(&p.raw);
                        out.extend_from_slice(&r.raw);
                    }
                }
                tag::DESCRIBE => {
                    if let Some(d) = &self.description {
                        out.extend_from_slice(&d.raw);
                    }
                }
                tag::CLOSE => close_complete(out),
                _ => {}
            }
        }
    }

    /// Converts merged messages to what the client gets.
    fn convert(&mut self, merged: &mut BytesMut) -> Result<BytesMut, ScatterError> {
        if self.description.is_some() && self.fields.is_none() {
            // Rows as they are: handed on without a copy.
            return Ok(merged.split());
        }
        let mut out = BytesMut::with_capacity(merged.len() + 64);
        loop {
            let frame = match split_frame(merged) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(ScatterError::protocol(0, e.to_string())),
            };
            if self.description.is_none() {
                if frame.tag != tag::ROW_DESCRIPTION {
                    return Err(ScatterError::protocol(
                        0,
                        "merged result without RowDescription",
                    ));
                }
                let description = match self.binary {
                    Some(formats) => {
                        let (d, fields) = binary_description(&frame, formats)?;
                        self.fields = Some(fields);
                        d
                    }
                    None => frame,
                };
                self.description = Some(description);
                self.replies(&mut out, false);
                continue;
            }
            match &self.fields {
                Some(fields) if frame.tag == tag::DATA_ROW => {
                    out.extend_from_slice(&binary_row(&frame, fields)?)
                }
                _ => out.extend_from_slice(&frame.raw),
            }
        }
        Ok(out)
    }

    /// The replies owed after the Execute's.
    async fn finish(&mut self) -> Result<(), ScatterError> {
        let mut out = BytesMut::new();
        self.replies(&mut out, true);
        if out.is_empty() {
            return Ok(());
        }
        self.sink.send(out).await
    }
}

impl MergeSink for Answer<'_, '_, '_> {
    fn take<'a>(
        &'a mut self,
        out: &'a mut BytesMut,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ScatterError>> + Send + 'a>>
    {
        Box::pin(async move {
            let converted = self.convert(out);
            out.clear();
            let converted = converted?;
            self.sink.send(converted).await
        })
    }
}

/// Parse and Describe of the client's own statement on one shard: its ParameterDescription and its RowDescription
/// (or NoData), as Postgres would describe it to the client.
async fn describe(
    server: &mut ServerConn,
    sql: &str,
    param_types: &[u8],
) -> Result<(Frame, Frame), ScatterError> {
    let mut out = BytesMut::new();
    write_parse(&mut out, b"", sql.as_bytes(), param_types);
    write_target(&mut out, tag::DESCRIBE, b'S', b"");
    write_sync(&mut out);
    let io = |server: &mut ServerConn, e: String| {
        server.broken = true;
        ScatterError::Io {
            shard: 0,
            source: ServerIoError::Protocol(e),
        }
    };
    if let Err(e) = server.stream.write_all(&out).await {
        return Err(io(server, e.to_string()));
    }
    let replies = match read_replies(server).await {
        Ok(r) => r,
        Err(e) => return Err(io(server, e.to_string())),
    };
    if let Some(k) = replies.error {
        return Err(ScatterError::Shard {
            shard: 0,
            addr: server.addr.clone(),
            fields: crate::sharding::scatter::ShardErrorFields::parse(replies.frames[k].body()),
        });
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
        (Some(p), Some(r)) => Ok((p.clone(), r.clone())),
        _ => Err(ScatterError::protocol(
            0,
            "Describe without its descriptions",
        )),
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

/// The merged RowDescription with the client's result formats; a column the client wants binary whose type has no
/// exact conversion is refused. Returns it and its fields, for [`binary_row`].
fn binary_description(
    description: &Frame,
    formats: &[i16],
) -> Result<(Frame, Vec<Field>), ScatterError> {
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
    Ok((desc, fields))
}

/// A merged text DataRow with the columns `fields` marks binary converted.
fn binary_row(row: &Frame, fields: &[Field]) -> Result<BytesMut, ScatterError> {
    let mut values = data_row_values(row).map_err(|e| ScatterError::protocol(0, e.to_string()))?;
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
    let mut buf = BytesMut::new();
    write_data_row(&mut buf, &values);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

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
