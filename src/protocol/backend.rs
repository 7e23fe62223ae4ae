//! Backend (server -> client) messages: builders for the ones shardpool synthesizes (login replies, errors, the admin
//! console's result sets, replies it fabricates for statements it prepared itself) and typed views of the few it must
//! read from servers (ReadyForQuery, ErrorResponse, ParameterStatus, BackendKeyData, Authentication).
//!
//! Reference: PostgreSQL docs 55.7 "Message Formats" and 55.8 "Error and Notice Message Fields".

use bytes::{BufMut, BytesMut};

use super::{read_cstr, tag, TxStatus};

/// Writes one message: tag, length placeholder, body written by `body`, then patches the length.
#[inline]
pub fn put_message(buf: &mut BytesMut, msg_tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(msg_tag);
    let len_at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - len_at) as i32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

pub fn authentication_ok(buf: &mut BytesMut) {
    put_message(buf, tag::AUTHENTICATION, |b| b.put_i32(0));
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put_message(buf, tag::AUTHENTICATION, |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_cleartext(buf: &mut BytesMut) {
    put_message(buf, tag::AUTHENTICATION, |b| b.put_i32(3));
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    put_message(buf, tag::AUTHENTICATION, |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, tag::AUTHENTICATION, |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, tag::AUTHENTICATION, |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put_message(buf, tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put_message(buf, tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    put_message(buf, tag::READY_FOR_QUERY, |b| b.put_u8(status.byte()));
}

pub fn parse_complete(buf: &mut BytesMut) {
    put_message(buf, tag::PARSE_COMPLETE, |_| {});
}

pub fn close_complete(buf: &mut BytesMut) {
    put_message(buf, tag::CLOSE_COMPLETE, |_| {});
}

pub fn empty_query_response(buf: &mut BytesMut) {
    put_message(buf, tag::EMPTY_QUERY_RESPONSE, |_| {});
}

pub fn command_complete(buf: &mut BytesMut, command_tag: &str) {
    put_message(buf, tag::COMMAND_COMPLETE, |b| {
        put_cstr(b, command_tag.as_bytes())
    });
}

/// NegotiateProtocolVersion: we speak 3.0 and no `_pq_` options.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported: &[&str]) {
    put_message(buf, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(super::startup::PROTOCOL_3_0 as i32);
        b.put_i32(unsupported.len() as i32);
        for o in unsupported {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// Severity of an ErrorResponse/NoticeResponse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// Writes an ErrorResponse ('E') or, for notice severities, a NoticeResponse ('N').
pub fn error_response(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
    let msg_tag = match severity {
        Severity::Error | Severity::Fatal => tag::ERROR_RESPONSE,
        Severity::Notice | Severity::Warning => tag::NOTICE_RESPONSE,
    };
    put_message(buf, msg_tag, |b| {
        for field in [b'S', b'V'] {
            b.put_u8(field);
            put_cstr(b, severity.as_str().as_bytes());
        }
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, message.as_bytes());
        if let Some(d) = detail {
            b.put_u8(b'D');
            put_cstr(b, d.as_bytes());
        }
        b.put_u8(0);
    });
}

/// RowDescription for an all-text result set (the admin console's only kind).
pub fn row_description_text(buf: &mut BytesMut, columns: &[&str]) {
    const TEXT_OID: i32 = 25;
    put_message(buf, tag::ROW_DESCRIPTION, |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(TEXT_OID);
            b.put_i16(-1); // type size
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values; `None` is SQL NULL.
/// Splits a DataRow body into its column values (`None` for NULL); `None` if the body is malformed.
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    // A negative count is malformed, not "no columns"; so is a negative length other than -1 (NULL).
    let count = usize::try_from(i16::from_be_bytes(body.get(..2)?.try_into().ok()?)).ok()?;
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len == -1 {
            out.push(None);
        } else {
            let len = usize::try_from(len).ok()?;
            out.push(Some(rest.get(..len)?));
            rest = &rest[len..];
        }
    }
    rest.is_empty().then_some(out)
}

pub fn data_row<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    put_message(buf, tag::DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.as_ref().len() as i32);
                    b.put_slice(s.as_ref().as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

// ---- Views of messages read from servers ----

/// The fields of an ErrorResponse/NoticeResponse that pooling and logging use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    /// Parses the body of an 'E' or 'N' message; unknown fields are skipped, missing ones stay empty.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut out = ErrorFields::default();
        let mut pos = 0;
        while let Some(&field) = body.get(pos) {
            if field == 0 {
                break;
            }
            let Some((value, next)) = read_cstr(body, pos + 1) else {
                break;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match field {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                _ => {}
            }
            pos = next;
        }
        out
    }
}

/// ReadyForQuery body -> status.
pub fn parse_ready_for_query(body: &[u8]) -> Option<TxStatus> {
    match body {
        [b] => TxStatus::from_byte(*b),
        _ => None,
    }
}

/// ParameterStatus body -> (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, next) = read_cstr(body, 0)?;
    let (value, _) = read_cstr(body, next)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// CommandComplete body -> tag text (e.g. "SELECT 1", "COMMIT").
pub fn parse_command_complete(body: &[u8]) -> &[u8] {
    read_cstr(body, 0).map(|(t, _)| t).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::split_frame;

    #[test]
    fn error_response_round_trips_through_the_parser() {
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
            None,
        );
        let f = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let e = ErrorFields::parse(f.body());
        assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "28P01"));
        assert_eq!(e.message, "password authentication failed");
    }

    #[test]
    fn lengths_are_patched() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxStatus::InTransaction);
        assert_eq!(&buf[..], b"Z\x00\x00\x00\x05T");
        let mut buf = BytesMut::new();
        data_row(&mut buf, &[Some("ab"), None]);
        assert_eq!(
            &buf[..],
            b"D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff"
        );
    }

    #[test]
    fn truncated_bodies_do_not_panic() {
        assert_eq!(ErrorFields::parse(b"Cxx").code, "");
        assert_eq!(parse_parameter_status(b"name"), None);
        assert_eq!(parse_ready_for_query(b""), None);
    }
}
