//! The startup phase, which has its own framing (no tag byte): a length, a 32-bit code, a body. The first packet is an
//! SSLRequest, GSSENCRequest, CancelRequest or StartupMessage; the code tells which. Decoding returns a typed packet
//! so the handshake can `match` on it and never holds a half-parsed stream.
//!
//! Reference: PostgreSQL docs 55.2.1 ("Start-up"), 55.2.10 ("SSL Session Encryption"), 55.7 (CancelRequest,
//! StartupMessage); limit from `src/backend/tcop/backend_startup.c` (`MAX_STARTUP_PACKET_LENGTH`).

use std::collections::BTreeMap;

use super::read_cstr;

/// Postgres rejects startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
pub const PROTOCOL_3_0: u32 = 3 << 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    /// Well-formed but without a user name; Postgres answers this one with 28000, not 08P01.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

/// A cancel key as handed to clients in BackendKeyData. Protocol 3.0 keys are a pid and a 32-bit secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

/// A decoded first (or post-SSL second) packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupParams),
}

/// The StartupMessage: protocol version and the parameter pairs. `user` is mandatory on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub minor_version: u16,
    /// All parameters in arrival order-independent form; `user` and `database` are included.
    pub params: BTreeMap<String, String>,
}

impl StartupParams {
    pub fn user(&self) -> &str {
        self.params.get("user").map(String::as_str).unwrap_or("")
    }

    /// `database` defaults to the user name, as in Postgres.
    pub fn database(&self) -> &str {
        match self.params.get("database") {
            Some(d) if !d.is_empty() => d,
            _ => self.user(),
        }
    }

    /// Protocol options (`_pq_.*`) the client asked for; we support none, so they are reported back as unrecognised.
    pub fn protocol_options(&self) -> Vec<&str> {
        self.params
            .keys()
            .filter(|k| k.starts_with("_pq_."))
            .map(String::as_str)
            .collect()
    }
}

/// Checks the 4-byte length prefix of a startup packet; returns the total length (including the prefix).
pub fn check_length(prefix: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(prefix);
    if len < 8 || len as usize > MAX_STARTUP_PACKET_LEN {
        return Err(StartupError::BadLength(i64::from(len)));
    }
    Ok(len as usize)
}

/// Decodes a whole startup packet body (everything after the length prefix).
pub fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let code_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(StartupError::Malformed("missing protocol code"))?;
    let code = u32::from_be_bytes(code_bytes);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => decode_cancel(rest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(StartupError::Malformed("request with a body"))
        }
        _ => decode_startup(code, rest),
    }
}

fn decode_cancel(rest: &[u8]) -> Result<StartupPacket, StartupError> {
    if rest.len() != 8 {
        return Err(StartupError::Malformed("cancel request of the wrong size"));
    }
    let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    Ok(StartupPacket::Cancel(CancelKey { pid, secret }))
}

fn decode_startup(code: u32, rest: &[u8]) -> Result<StartupPacket, StartupError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    let mut params = BTreeMap::new();
    let mut pos = 0;
    loop {
        let (name, next) =
            read_cstr(rest, pos).ok_or(StartupError::Malformed("unterminated parameter name"))?;
        if name.is_empty() {
            if next != rest.len() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            break;
        }
        let (value, next) =
            read_cstr(rest, next).ok_or(StartupError::Malformed("unterminated parameter value"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.insert(name.to_owned(), value.to_owned());
        pos = next;
    }
    if params.get("user").is_none_or(|u| u.is_empty()) {
        return Err(StartupError::NoUser);
    }
    Ok(StartupPacket::Startup(StartupParams {
        minor_version: minor,
        params,
    }))
}

/// Encodes a StartupMessage (used when shardpool logs in to a server).
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes a CancelRequest (sent to the server that runs the query being cancelled).
pub fn encode_cancel(key: CancelKey) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16i32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out[8..12].copy_from_slice(&key.pid.to_be_bytes());
    out[12..].copy_from_slice(&key.secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(packet: &[u8]) -> &[u8] {
        &packet[4..]
    }

    #[test]
    fn round_trips_a_startup_message() {
        let raw = encode_startup(&[
            ("user", "app"),
            ("database", "db"),
            ("application_name", "x"),
        ]);
        assert_eq!(
            check_length(raw[..4].try_into().unwrap()).unwrap(),
            raw.len()
        );
        match decode(body_of(&raw)).unwrap() {
            StartupPacket::Startup(p) => {
                assert_eq!(p.user(), "app");
                assert_eq!(p.database(), "db");
                assert_eq!(p.params["application_name"], "x");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn database_defaults_to_user() {
        let raw = encode_startup(&[("user", "app")]);
        let StartupPacket::Startup(p) = decode(body_of(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(p.database(), "app");
    }

    #[test]
    fn decodes_the_special_requests() {
        assert_eq!(
            decode(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            decode(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::GssEncRequest
        );
        let c = encode_cancel(CancelKey { pid: 7, secret: -3 });
        assert_eq!(
            decode(body_of(&c)).unwrap(),
            StartupPacket::Cancel(CancelKey { pid: 7, secret: -3 })
        );
    }

    #[test]
    fn rejects_garbage() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x00\x01",
            b"\x00\x02\x00\x00user\x00x\x00\x00", // protocol 2
            b"\x00\x03\x00\x00user\x00x\x00",     // no terminator
            b"\x00\x03\x00\x00user\x00",          // value missing
            b"\x00\x03\x00\x00database\x00d\x00\x00", // no user
            b"\x00\x03\x00\x00user\x00x\x00\x00trailing", // bytes after terminator
            b"\x00\x03\x00\x00user\x00\xff\x00\x00", // not UTF-8
            b"\x04\xd2\x16\x2e\x00\x00\x00\x01",  // cancel too short
        ];
        for c in cases {
            assert!(decode(c).is_err(), "{c:?}");
        }
        assert_eq!(
            decode(b"\x00\x03\x00\x00user\x00\x00\x00"),
            Err(StartupError::NoUser)
        );
        assert!(check_length(9_999_999i32.to_be_bytes()).is_err());
        assert!(check_length(4i32.to_be_bytes()).is_err());
        assert!(check_length((-5i32).to_be_bytes()).is_err());
    }
}
