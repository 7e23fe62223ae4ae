//! The extended-protocol batch of a statement that runs on several shards. A fan-out cannot be relayed message by
//! message the way one server is: every shard must see the whole statement (Parse, Bind, Execute) before the client
//! can be given one answer, so the batch is collected from the client's input first (up to Sync; for COPY, up to
//! Execute, since COPY data follows it) and checked to be one statement's messages (protocol section 55.2.3).

use bytes::{Bytes, BytesMut};

use crate::error::{sqlstate, ClientError};
use crate::protocol::frontend::{parse_bind, parse_parse, parse_target};
use crate::protocol::{tag, Frame};

/// The client's messages for one statement on several shards.
#[derive(Debug)]
pub(super) struct ExtendedBatch {
    /// From the first message (a Parse, or a Bind or Describe of a statement prepared earlier) to Sync, or for COPY
    /// to Execute.
    pub frames: Vec<Frame>,
    /// Bytes of `frames` after the first still in the client's input buffer (the first was taken already).
    pub consumed: usize,
    pub sql: String,
    /// Parameter types as the client's Parse gave them (count and OIDs, the Parse layout).
    pub param_types: Bytes,
}

/// What the client's input holds after a Parse or Bind of a statement for several shards.
#[derive(Debug)]
pub(super) enum Collected {
    /// No Sync (or Execute, for COPY) yet: wait for more input before deciding.
    Incomplete,
    /// The batch ends (Sync or Flush) without executing the statement: a prepare, served by one shard.
    PrepareOnly,
    Batch(ExtendedBatch),
}

/// How the fan-out will run the batch: what shapes it can answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BatchUse {
    /// The statement on every shard: any number of Bind/Execute pairs of the one statement.
    Everywhere,
    /// A merged read: exactly one Bind and one Execute.
    Scatter,
    /// COPY: Bind and Execute, and nothing after Execute is collected.
    Copy,
}

/// Collects and checks the batch that `first` (already taken from the input) starts, from the complete messages at
/// the start of `input`. Nothing is consumed here.
pub(super) fn collect(
    first: &Frame,
    input: &[u8],
    sql: &str,
    param_types: &[u8],
    usage: BatchUse,
) -> Result<Collected, ClientError> {
    let mut frames = vec![first.clone()];
    let mut executes = usize::from(first.tag == tag::EXECUTE);
    let mut pos = 0;
    loop {
        let Some(header) = input.get(pos..pos + 5) else {
            return Ok(Collected::Incomplete);
        };
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            // Malformed: let the ordinary path report it.
            return Ok(Collected::PrepareOnly);
        }
        let end = pos + 1 + len as usize;
        let Some(raw) = input.get(pos..end) else {
            return Ok(Collected::Incomplete);
        };
        let frame = Frame {
            tag: header[0],
            raw: Bytes::copy_from_slice(raw),
        };
        pos = end;
        let t = frame.tag;
        frames.push(frame);
        match t {
            tag::EXECUTE => {
                executes += 1;
                if usage == BatchUse::Copy {
                    break;
                }
            }
            // A Bind whose Execute would come after a Flush could no longer be sent to every shard.
            tag::FLUSH if executes == 0 && first.tag == tag::BIND => {
                return Err(refuse("Flush between Bind and Execute"))
            }
            tag::SYNC | tag::FLUSH if executes == 0 => return Ok(Collected::PrepareOnly),
            tag::SYNC | tag::FLUSH => break,
            _ => {}
        }
    }
    check_shape(&frames, usage)?;
    Ok(Collected::Batch(ExtendedBatch {
        frames,
        consumed: pos,
        sql: sql.to_owned(),
        param_types: Bytes::copy_from_slice(param_types),
    }))
}

/// Whether `input` already holds the message that ends a batch for [`collect`] (a Sync or Flush, an Execute for
/// COPY, or a malformed length), i.e. whether `collect` would return anything but `Incomplete`. Scans from `*from`
/// and leaves there the offset of the first message not yet whole, so waiting for a long batch reads each header
/// once instead of re-collecting (and copying) the whole batch after every read.
pub(super) fn batch_end_buffered(input: &[u8], from: &mut usize, usage: BatchUse) -> bool {
    loop {
        let pos = *from;
        let Some(header) = input.get(pos..pos + 5) else {
            return false;
        };
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Ok(len) = usize::try_from(len) else {
            return true;
        };
        if len < 4 {
            return true;
        }
        match header[0] {
            tag::SYNC | tag::FLUSH => return true,
            tag::EXECUTE if usage == BatchUse::Copy => return true,
            _ => {}
        }
        if input.len() < pos + 1 + len {
            return false;
        }
        *from = pos + 1 + len;
    }
}

fn refuse(why: &str) -> ClientError {
    ClientError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "a statement for every shard over the extended protocol must be alone in its batch \
             (Parse, Bind, Describe, Execute, Sync of that one statement): {why}"
        ),
    )
}

/// One statement's messages: a Parse first (or none), Binds of that statement, Describes of it or its portals,
/// Executes of bound portals, Closes, and Sync last.
fn check_shape(frames: &[Frame], usage: BatchUse) -> Result<(), ClientError> {
    let malformed = || ClientError::error(sqlstate::PROTOCOL_VIOLATION, "malformed message");
    let statement: Vec<u8> = match frames.first().map(|f| f.tag) {
        Some(tag::PARSE) => parse_parse(frames[0].body())
            .ok_or_else(malformed)?
            .name
            .to_vec(),
        Some(tag::BIND) => parse_bind(frames[0].body())
            .ok_or_else(malformed)?
            .statement
            .to_vec(),
        Some(tag::DESCRIBE) => parse_target(frames[0].body())
            .ok_or_else(malformed)?
            .name
            .to_vec(),
        _ => return Err(refuse("it does not start with Parse, Bind or Describe")),
    };
    let mut portals: Vec<Vec<u8>> = Vec::new();
    let (mut binds, mut executes) = (0, 0);
    for (i, f) in frames.iter().enumerate() {
        match f.tag {
            tag::PARSE if i == 0 => {}
            tag::PARSE => return Err(refuse("a second Parse")),
            tag::BIND => {
                let b = parse_bind(f.body()).ok_or_else(malformed)?;
                if b.statement != statement.as_slice() {
                    return Err(refuse("a Bind of another statement"));
                }
                portals.push(b.portal.to_vec());
                binds += 1;
            }
            tag::DESCRIBE => {
                let d = parse_target(f.body()).ok_or_else(malformed)?;
                let known = match d.kind {
                    b'S' => d.name == statement.as_slice(),
                    _ => portals.iter().any(|p| p.as_slice() == d.name),
                };
                if !known {
                    return Err(refuse("a Describe of another statement or portal"));
                }
            }
            tag::EXECUTE => {
                let (portal, max_rows) = parse_execute(f.body()).ok_or_else(malformed)?;
                if !portals.iter().any(|p| p.as_slice() == portal) {
                    return Err(refuse("an Execute of another portal"));
                }
                if max_rows != 0 && usage == BatchUse::Scatter {
                    return Err(ClientError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "scatter/gather does not support a row limit on Execute (portal suspension); \
                         fetch all rows, or use LIMIT",
                    ));
                }
                executes += 1;
            }
            tag::CLOSE if usage != BatchUse::Copy => {
                parse_target(f.body()).ok_or_else(malformed)?;
            }
            tag::SYNC if i + 1 == frames.len() && usage != BatchUse::Copy => {}
            tag::FLUSH => return Err(refuse("Flush before Sync")),
            other => {
                return Err(refuse(&format!(
                    "message type {:?} in the batch",
                    other as char
                )))
            }
        }
    }
    if usage != BatchUse::Everywhere && (binds != 1 || executes != 1) {
        return Err(refuse("one Bind and one Execute are needed"));
    }
    Ok(())
}

/// Execute: portal name and row limit (0: all rows).
pub(super) fn parse_execute(body: &[u8]) -> Option<(&[u8], i32)> {
    let (portal, pos) = crate::protocol::read_cstr(body, 0)?;
    let max = body.get(pos..pos + 4)?;
    Some((portal, i32::from_be_bytes([max[0], max[1], max[2], max[3]])))
}

/// A Bind's parameter part split where the result formats begin: the parameter formats and values as sent, and
/// the result format codes.
pub(super) struct BindParts<'a> {
    pub params: &'a [u8],
    pub result_formats: Vec<i16>,
}

pub(super) fn bind_parts(rest: &[u8]) -> Option<BindParts<'_>> {
    let i16_at = |at: usize| {
        rest.get(at..at + 2)
            .map(|x| i16::from_be_bytes([x[0], x[1]]))
    };
    let nformats = usize::try_from(i16_at(0)?).ok()?;
    let mut pos = 2 + 2 * nformats;
    let nparams = usize::try_from(i16_at(pos)?).ok()?;
    pos += 2;
    for _ in 0..nparams {
        let len = i32::from_be_bytes(rest.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len > 0 {
            pos += len as usize;
        }
    }
    let params = rest.get(..pos)?;
    let nresults = usize::try_from(i16_at(pos)?).ok()?;
    let result_formats = (0..nresults)
        .map(|k| i16_at(pos + 2 + 2 * k))
        .collect::<Option<Vec<_>>>()?;
    Some(BindParts {
        params,
        result_formats,
    })
}

/// Writes a Bind of the unnamed statement to the unnamed portal with `params` (formats and values as the client
/// sent them) and `result_formats`.
pub(super) fn write_shard_bind(buf: &mut BytesMut, params: &[u8], result_formats: &[i16]) {
    crate::protocol::backend::put_message(buf, tag::BIND, |b| {
        b.extend_from_slice(&[0, 0]); // unnamed portal, unnamed statement
        b.extend_from_slice(params);
        b.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
        for f in result_formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend::{write_bind, write_parse, write_sync, write_target};

    fn frames(buf: &[u8]) -> Vec<Frame> {
        let mut b = BytesMut::from(buf);
        let mut out = Vec::new();
        while let Some(f) = crate::protocol::framing::split_frame(&mut b).unwrap() {
            out.push(f);
        }
        out
    }

    fn execute(buf: &mut BytesMut, portal: &[u8], max: i32) {
        crate::protocol::backend::put_message(buf, tag::EXECUTE, |b| {
            crate::protocol::backend::put_cstr(b, portal);
            b.extend_from_slice(&max.to_be_bytes());
        });
    }

    fn bind_rest() -> Vec<u8> {
        // No parameter format codes (text), one parameter '5', one result format code: binary.
        vec![0, 0, 0, 1, 0, 0, 0, 1, b'5', 0, 1, 0, 1]
    }

    #[test]
    fn batches_are_collected_to_sync_or_reported_incomplete() {
        let mut first = BytesMut::new();
        write_parse(&mut first, b"", b"SELECT 1", &[0, 0]);
        let first = frames(&first).remove(0);
        let mut rest = BytesMut::new();
        write_bind(&mut rest, b"", b"", &bind_rest());
        write_target(&mut rest, tag::DESCRIBE, b'P', b"");
        execute(&mut rest, b"", 0);
        let partial = rest.len();
        write_sync(&mut rest);
        let r = collect(
            &first,
            &rest[..partial],
            "SELECT 1",
            &[0, 0],
            BatchUse::Scatter,
        )
        .unwrap();
        assert!(matches!(r, Collected::Incomplete));
        let Collected::Batch(b) =
            collect(&first, &rest, "SELECT 1", &[0, 0], BatchUse::Scatter).unwrap()
        else {
            panic!("expected a batch")
        };
        assert_eq!(b.frames.len(), 5);
        assert_eq!(b.consumed, rest.len());

        let mut prepare = BytesMut::new();
        write_target(&mut prepare, tag::DESCRIBE, b'S', b"");
        write_sync(&mut prepare);
        let r = collect(&first, &prepare, "SELECT 1", &[0, 0], BatchUse::Scatter).unwrap();
        assert!(matches!(r, Collected::PrepareOnly));
    }

    #[test]
    fn a_bind_flushed_before_its_execute_is_refused() {
        let mut first = BytesMut::new();
        write_bind(&mut first, b"", b"a", &bind_rest());
        let first = frames(&first).remove(0);
        let mut rest = BytesMut::new();
        crate::protocol::backend::put_message(&mut rest, tag::FLUSH, |_| {});
        let e = collect(&first, &rest, "SELECT 1", &[0, 0], BatchUse::Copy).unwrap_err();
        assert!(e.message.contains("Flush"), "{}", e.message);
    }

    #[test]
    fn other_statements_in_the_batch_are_refused() {
        let mut first = BytesMut::new();
        write_parse(&mut first, b"a", b"SELECT 1", &[0, 0]);
        let first = frames(&first).remove(0);
        let mut rest = BytesMut::new();
        write_bind(&mut rest, b"", b"b", &bind_rest());
        execute(&mut rest, b"", 0);
        write_sync(&mut rest);
        let e = collect(&first, &rest, "SELECT 1", &[0, 0], BatchUse::Everywhere).unwrap_err();
        assert!(e.message.contains("another statement"), "{}", e.message);

        let mut rest = BytesMut::new();
        write_bind(&mut rest, b"", b"a", &bind_rest());
        execute(&mut rest, b"", 10);
        write_sync(&mut rest);
        let e = collect(&first, &rest, "SELECT 1", &[0, 0], BatchUse::Scatter).unwrap_err();
        assert!(e.message.contains("row limit"), "{}", e.message);
    }

    #[test]
    fn bind_parts_split_parameters_from_result_formats() {
        let rest = bind_rest();
        let p = bind_parts(&rest).unwrap();
        assert_eq!(p.params, &rest[..rest.len() - 4]);
        assert_eq!(p.result_formats, vec![1]);
        assert!(bind_parts(&rest[..5]).is_none());
    }

    #[test]
    fn the_end_of_a_batch_is_found_by_one_pass_over_its_headers() {
        let mut input = BytesMut::new();
        crate::protocol::backend::put_message(&mut input, tag::BIND, |b| {
            b.extend_from_slice(&[0; 8])
        });
        crate::protocol::backend::put_message(&mut input, tag::EXECUTE, |b| {
            b.extend_from_slice(&[0; 5])
        });
        let whole = input.len();
        let mut from = 0;
        assert!(!batch_end_buffered(&input, &mut from, BatchUse::Scatter));
        assert_eq!(from, whole, "resumes after the whole messages");
        // Half a Sync header: still waiting, nothing skipped.
        input.extend_from_slice(&[tag::SYNC, 0, 0]);
        assert!(!batch_end_buffered(&input, &mut from, BatchUse::Scatter));
        assert_eq!(from, whole);
        input.extend_from_slice(&[0, 4]);
        assert!(batch_end_buffered(&input, &mut from, BatchUse::Scatter));
        // For COPY, the Execute ends it; a malformed length ends it too (collect reports it).
        let mut from = 0;
        assert!(batch_end_buffered(&input, &mut from, BatchUse::Copy));
        let mut from = 0;
        assert!(batch_end_buffered(
            &[tag::BIND, 0xff, 0xff, 0xff, 0xff],
            &mut from,
            BatchUse::Scatter
        ));
    }
}
