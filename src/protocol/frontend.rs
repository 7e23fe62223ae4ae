//! Frontend (client -> server) messages: views of the ones pooling must read (Query, Parse, Bind, Describe, Close, the
//! password messages) and writers for the ones shardpool sends to servers itself (its own queries, Parse of a
//! statement a client prepared on another server, renamed Bind/Describe/Close, Sync).
//!
//! Reference: PostgreSQL docs 55.7 "Message Formats".

use bytes::{BufMut, BytesMut};

use super::backend::{put_cstr, put_message};
use super::{read_cstr, tag};

/// The SQL text of a Query message (without the terminating NUL): up to the first NUL, as Postgres reads it.
/// The usual message has exactly one NUL, its last byte; a branch-free pass (which the compiler vectorises)
/// confirms that at a fraction of a byte-by-byte search's cost, which every statement used to pay.
pub fn query_text(body: &[u8]) -> Option<&[u8]> {
    if let Some((&0, text)) = body.split_last() {
        if !text.iter().fold(false, |seen, &b| seen | (b == 0)) {
            return Some(text);
        }
    }
    read_cstr(body, 0).map(|(q, _)| q)
}

/// A Parse message: statement name, query text, and the parameter-type tail kept as bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    pub param_types: &'a [u8],
}

pub fn parse_parse(body: &[u8]) -> Option<ParseView<'_>> {
    let (name, pos) = read_cstr(body, 0)?;
    let (query, pos) = read_cstr(body, pos)?;
    let param_types = &body[pos..];
    // int16 count followed by that many int32 oids.
    let count = i16::from_be_bytes([*param_types.first()?, *param_types.get(1)?]);
    if count < 0 || param_types.len() != 2 + 4 * count as usize {
        return None;
    }
    Some(ParseView {
        name,
        query,
        param_types,
    })
}

/// Writes a Parse for `view`'s statement under another name.
pub fn write_parse(buf: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    put_message(buf, tag::PARSE, |b| {
        put_cstr(b, name);
        put_cstr(b, query);
        b.put_slice(param_types);
    });
}

/// A Bind message: portal name, statement name, and the rest (formats, parameters, result formats) as bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

pub fn parse_bind(body: &[u8]) -> Option<BindView<'_>> {
    let (portal, pos) = read_cstr(body, 0)?;
    let (statement, pos) = read_cstr(body, pos)?;
    Some(BindView {
        portal,
        statement,
        rest: &body[pos..],
    })
}

/// A Bind's parameter format codes and values (`None` for SQL NULL).
pub type BindParams<'a> = (Vec<i16>, Vec<Option<&'a [u8]>>);

/// The parameter format codes and values of a Bind (the part after the statement name); `None` if malformed.
/// As in Postgres' `exec_bind_message`, a negative count is malformed (not "none"), and so is a negative value
/// length other than -1 (NULL).
pub fn parse_bind_params(rest: &[u8]) -> Option<BindParams<'_>> {
    let read_i16 =
        |b: &[u8], at: usize| b.get(at..at + 2).map(|x| i16::from_be_bytes([x[0], x[1]]));
    let nformats = usize::try_from(read_i16(rest, 0)?).ok()?;
    let mut pos = 2;
    let mut formats = Vec::with_capacity(nformats);
    for _ in 0..nformats {
        formats.push(read_i16(rest, pos)?);
        pos += 2;
    }
    let nparams = usize::try_from(read_i16(rest, pos)?).ok()?;
    pos += 2;
    let mut values = Vec::with_capacity(nparams);
    for _ in 0..nparams {
        let len = i32::from_be_bytes(rest.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len == -1 {
            values.push(None);
        } else {
            let len = usize::try_from(len).ok()?;
            values.push(Some(rest.get(pos..pos + len)?));
            pos += len;
        }
    }
    Some((formats, values))
}

/// The first Bind among the complete messages at the start of `buf` (a client's pipelined Parse, Bind, Execute,
/// Sync arrive together), without consuming anything: its statement name and parameter part.
pub fn peek_bind(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut pos = 0;
    while let Some(header) = buf.get(pos..pos + 5) {
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            return None;
        }
        let end = pos + 1 + len as usize;
        let body = buf.get(pos + 5..end)?;
        if header[0] == super::tag::BIND {
            let view = parse_bind(body)?;
            return Some((view.statement, view.rest));
        }
        if header[0] == super::tag::SYNC {
            return None;
        }
        pos = end;
    }
    None
}

pub fn write_bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    put_message(buf, tag::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_slice(rest);
    });
}

/// Describe and Close share a layout: a kind byte ('S' statement, 'P' portal) and a name.
#[derive(Debug, PartialEq, Eq)]
pub struct TargetView<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

pub fn parse_target(body: &[u8]) -> Option<TargetView<'_>> {
    let kind = *body.first()?;
    if kind != b'S' && kind != b'P' {
        return None;
    }
    let (name, end) = read_cstr(body, 1)?;
    (end == body.len()).then_some(TargetView { kind, name })
}

pub fn write_target(buf: &mut BytesMut, msg_tag: u8, kind: u8, name: &[u8]) {
    put_message(buf, msg_tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

pub fn write_query(buf: &mut BytesMut, sql: &str) {
    put_message(buf, tag::QUERY, |b| put_cstr(b, sql.as_bytes()));
}

pub fn write_copy_done(buf: &mut BytesMut) {
    put_message(buf, tag::COPY_DONE, |_| {});
}

pub fn write_copy_fail(buf: &mut BytesMut, reason: &str) {
    put_message(buf, tag::COPY_FAIL, |b| put_cstr(b, reason.as_bytes()));
}

pub fn write_sync(buf: &mut BytesMut) {
    put_message(buf, tag::SYNC, |_| {});
}

pub fn write_terminate(buf: &mut BytesMut) {
    put_message(buf, tag::TERMINATE, |_| {});
}

pub fn write_password(buf: &mut BytesMut, password: &[u8]) {
    put_message(buf, tag::PASSWORD, |b| put_cstr(b, password));
}

pub fn write_sasl_initial(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_message(buf, tag::PASSWORD, |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn write_sasl_response(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, tag::PASSWORD, |b| b.put_slice(data));
}

/// A PasswordMessage carrying a cleartext or md5 password: the bytes before the NUL.
pub fn parse_password(body: &[u8]) -> Option<&[u8]> {
    let (pw, end) = read_cstr(body, 0)?;
    (end == body.len()).then_some(pw)
}

/// SASLInitialResponse: mechanism name and the client-first-message.
pub fn parse_sasl_initial(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mechanism, pos) = read_cstr(body, 0)?;
    let len_bytes: [u8; 4] = body.get(pos..pos + 4)?.try_into().ok()?;
    let len = i32::from_be_bytes(len_bytes);
    let data = &body[pos + 4..];
    (len >= 0 && len as usize == data.len()).then_some((mechanism, data))
}

/// Why a client message can never be valid, judged from its type and body alone; `None` if it may be. The session
/// checks this before borrowing a server, so a broken client is refused at once instead of first waiting in the
/// pool's queue (and, if that times out, having its garbage answered as "no server available").
pub fn malformed(msg_tag: u8, body: &[u8]) -> Option<String> {
    let what = match msg_tag {
        tag::QUERY if query_text(body).is_none() => "Query",
        tag::PARSE if parse_parse(body).is_none() => "Parse",
        tag::BIND if parse_bind(body).is_none() => "Bind",
        tag::DESCRIBE if parse_target(body).is_none() => "Describe",
        tag::QUERY
        | tag::PARSE
        | tag::BIND
        | tag::DESCRIBE
        | tag::CLOSE
        | tag::EXECUTE
        | tag::SYNC
        | tag::FLUSH
        | tag::FUNCTION_CALL
        | tag::COPY_DATA
        | tag::COPY_DONE
        | tag::COPY_FAIL
        | tag::TERMINATE => return None,
        other => return Some(format!("invalid frontend message type {:?}", other as char)),
    };
    Some(format!("malformed {what} message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::split_frame;

    #[test]
    fn query_text_ends_at_the_first_nul() {
        assert_eq!(query_text(b"SELECT 1;\x00"), Some(&b"SELECT 1;"[..]));
        assert_eq!(query_text(b"\x00"), Some(&b""[..]));
        // Postgres reads up to the first NUL (and refuses the message for what follows): so does the scan.
        assert_eq!(
            query_text(b"SELECT 1\x00SET a = 1\x00"),
            Some(&b"SELECT 1"[..])
        );
        assert_eq!(query_text(b"SELECT 1\x00x"), Some(&b"SELECT 1"[..]));
        assert_eq!(query_text(b"SELECT 1"), None);
        assert_eq!(query_text(b""), None);
    }

    #[test]
    fn parse_rename_keeps_query_and_types() {
        let mut buf = BytesMut::new();
        write_parse(&mut buf, b"s1", b"SELECT $1", b"\x00\x01\x00\x00\x00\x17");
        let f = split_frame(&mut buf).unwrap().unwrap();
        let v = parse_parse(f.body()).unwrap();
        assert_eq!((v.name, v.query), (&b"s1"[..], &b"SELECT $1"[..]));
        let mut out = BytesMut::new();
        write_parse(&mut out, b"sp_abc", v.query, v.param_types);
        let g = split_frame(&mut out).unwrap().unwrap();
        let w = parse_parse(g.body()).unwrap();
        assert_eq!(
            (w.name, w.query, w.param_types),
            (&b"sp_abc"[..], v.query, v.param_types)
        );
    }

    #[test]
    fn malformed_bodies_are_rejected_not_panicked_on() {
        assert_eq!(parse_parse(b"s1\x00SELECT"), None);
        assert_eq!(
            parse_parse(b"s1\x00SELECT\x00\x00\x02\x00\x00\x00\x17"),
            None
        );
        assert_eq!(parse_parse(b"s1\x00SELECT\x00\xff\xff"), None);
        assert_eq!(parse_bind(b"portal"), None);
        assert_eq!(parse_target(b"Xname\x00"), None);
        assert_eq!(parse_target(b"S"), None);
        assert_eq!(
            parse_sasl_initial(b"SCRAM-SHA-256\x00\x00\x00\x00\x09abc"),
            None
        );
        assert_eq!(
            parse_sasl_initial(b"SCRAM-SHA-256\x00\x00\x00\x00\x03abc"),
            Some((&b"SCRAM-SHA-256"[..], &b"abc"[..]))
        );
    }

    #[test]
    fn bind_params_with_negative_counts_or_lengths_are_malformed() {
        // Found by fuzz/fuzz_targets/frontend_messages.rs: -1 parameters read as none, -2 as a NULL value, so the
        // key of a Bind the server refuses was looked up as if the Bind were valid.
        assert_eq!(parse_bind_params(b"\xff\xff\x00\x00"), None);
        assert_eq!(parse_bind_params(b"\x00\x00\xff\xff"), None);
        assert_eq!(parse_bind_params(b"\x00\x00\x00\x01\xff\xff\xff\xfe"), None);
        assert_eq!(
            parse_bind_params(
                b"\x00\x01\x00\x01\x00\x02\xff\xff\xff\xff\x00\x00\x00\x01\x07\x00\x00"
            ),
            Some((vec![1], vec![None, Some(&b"\x07"[..])]))
        );
    }

    #[test]
    fn malformed_names_what_can_never_be_valid() {
        assert_eq!(malformed(tag::QUERY, b"SELECT 1\x00"), None);
        assert_eq!(malformed(tag::SYNC, b""), None);
        assert_eq!(malformed(tag::BIND, b"\x00\x00\xff\xff"), None); // the server judges the rest
        assert_eq!(
            malformed(tag::QUERY, b"SELECT 1").as_deref(),
            Some("malformed Query message")
        );
        assert_eq!(
            malformed(tag::BIND, b"portal").as_deref(),
            Some("malformed Bind message")
        );
        assert_eq!(
            malformed(tag::DESCRIBE, b"Xs\x00").as_deref(),
            Some("malformed Describe message")
        );
        assert_eq!(
            malformed(b'z', b"").as_deref(),
            Some("invalid frontend message type 'z'")
        );
        assert!(malformed(tag::PASSWORD, b"pw\x00").is_some());
    }
}
