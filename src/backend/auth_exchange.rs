//! The authentication half of a server login, with the proxy in the client's seat: answer whichever request the
//! server makes, but only in ways that cannot hand the password to whoever is on the other end.
//!
//! The exchange is a strict sequence: one authentication request, the proxy's answer, then AuthenticationOk and
//! nothing else. In particular a server that started SCRAM must finish it with AuthenticationSASLFinal carrying a
//! ServerSignature that proves it knows the password's verifier; AuthenticationOk in its place is refused, as is any
//! second request after an answer (a server cannot follow SCRAM with a request for the cleartext password).
//!
//! What is refused by default, and why:
//! - a cleartext password (`AuthenticationCleartextPassword`) unless the channel proves who the server is (TLS with
//!   a CA-verified certificate) or stays on the machine (a Unix socket): over plain TCP anyone on the path reads it,
//!   and over unverified TLS a man in the middle can simply ask for it. `server_allow_cleartext = true` allows it.
//! - nothing else by default; md5 can be refused with `server_allow_md5 = false` (it is still common, and a sniffed
//!   md5 answer is only good for an offline guess at a weak password).
//!
//! SCRAM runs without channel binding (GS2 header `n`): postgres-protocol's client computes and checks the proofs,
//! and the proxy does not offer SCRAM-SHA-256-PLUS. Postgres accepts `n` whether or not it would have bound.
//!
//! Reference: PostgreSQL docs 55.2.1 "Start-up" and 55.3 "SASL Authentication".

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use tokio::io::AsyncWriteExt;

use super::server::{ServerConn, ServerIoError};
use crate::auth::passthrough::{
    md5_answer, plain_password, scram_client, ScramClient, ServerCredential,
};
use crate::protocol::backend::ErrorFields;
use crate::protocol::frontend::{write_password, write_sasl_initial, write_sasl_response};
use crate::protocol::{read_cstr, tag};

/// Authentication request codes (the Int32 after 'R').
mod code {
    pub const OK: i32 = 0;
    pub const CLEARTEXT: i32 = 3;
    pub const MD5: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// SCRAM iteration counts above this are refused: the proxy computes PBKDF2 with whatever count the server names,
/// so a hostile server could otherwise have it hash for hours. Postgres' default is 4096.
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

/// Which password answers the proxy may give a server (`server_allow_cleartext`, `server_allow_md5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAuthPolicy {
    /// Send a cleartext password even where the channel does not protect it.
    pub allow_cleartext: bool,
    pub allow_md5: bool,
}

impl Default for ServerAuthPolicy {
    fn default() -> Self {
        ServerAuthPolicy {
            allow_cleartext: false,
            allow_md5: true,
        }
    }
}

/// What the connection under the exchange proves, which decides whether a cleartext password may cross it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    PlainTcp,
    /// Encrypted, but the certificate was not checked: whoever answered may be a man in the middle.
    UnverifiedTls,
    /// Encrypted to a server whose certificate chains to the configured CA.
    VerifiedTls,
    UnixSocket,
}

impl Channel {
    fn protects_cleartext(self) -> bool {
        matches!(self, Channel::VerifiedTls | Channel::UnixSocket)
    }

    fn describe(self) -> &'static str {
        match self {
            Channel::PlainTcp => "an unencrypted TCP connection",
            Channel::UnverifiedTls => {
                "a TLS connection whose certificate was not verified (server_tls_mode without server_tls_ca_file)"
            }
            Channel::VerifiedTls => "a verified TLS connection",
            Channel::UnixSocket => "a Unix socket",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthExchangeError {
    #[error(transparent)]
    Io(#[from] ServerIoError),
    #[error("server asked for a password but none is configured for user {0:?}")]
    NoPassword(String),
    #[error("server requested unsupported authentication (code {0})")]
    Unsupported(i32),
    #[error(
        "server asked for a cleartext password over {0}; refused (set server_allow_cleartext = true to allow it)"
    )]
    CleartextRefused(&'static str),
    #[error(
        "server asked for md5 password authentication; refused because server_allow_md5 = false"
    )]
    Md5Refused,
    #[error("server offered SASL mechanisms [{0}] but not SCRAM-SHA-256")]
    NoScramMechanism(String),
    #[error("server asked for {0} SCRAM iterations, more than the {MAX_SCRAM_ITERATIONS} shardpool computes")]
    TooManyIterations(u64),
    #[error("SCRAM exchange with the server failed: {0}")]
    Scram(String),
    /// The server skipped or reordered a step; for SCRAM this is what a server that does not know the password
    /// (an impostor) would have to do.
    #[error("server broke the authentication exchange: {0}")]
    OutOfOrder(String),
}

impl AuthExchangeError {
    /// Refusals by shardpool's own policy (as opposed to the server refusing shardpool or breaking the protocol),
    /// which the client is told about with SQLSTATE 28000 and the setting to change.
    pub fn is_policy_refusal(&self) -> bool {
        matches!(
            self,
            AuthExchangeError::CleartextRefused(_) | AuthExchangeError::Md5Refused
        )
    }
}

/// Reads the next message, turning an ErrorResponse into `ServerIoError::Postgres`.
async fn next_message(conn: &mut ServerConn) -> Result<crate::protocol::Frame, ServerIoError> {
    let frame = conn.next_frame().await?;
    if frame.tag == tag::ERROR_RESPONSE {
        return Err(ServerIoError::Postgres(ErrorFields::parse(frame.body())));
    }
    Ok(frame)
}

/// The next Authentication message as (code, payload after the code).
async fn next_request(
    conn: &mut ServerConn,
) -> Result<(i32, crate::protocol::Frame), AuthExchangeError> {
    let frame = next_message(conn).await?;
    if frame.tag != tag::AUTHENTICATION {
        return Err(AuthExchangeError::OutOfOrder(format!(
            "expected an Authentication message, got {:?}",
            frame.tag as char
        )));
    }
    let code = frame
        .body()
        .get(..4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| ServerIoError::Protocol("short Authentication message".into()))?;
    Ok((code, frame))
}

async fn send(conn: &mut ServerConn, buf: &[u8]) -> Result<(), ServerIoError> {
    conn.stream.write_all(buf).await.map_err(ServerIoError::Io)
}

/// Runs the exchange up to and including AuthenticationOk.
pub async fn authenticate(
    conn: &mut ServerConn,
    user: &str,
    password: Option<&str>,
    credential: Option<&ServerCredential>,
    policy: ServerAuthPolicy,
    channel: Channel,
) -> Result<(), AuthExchangeError> {
    let no_password = || AuthExchangeError::NoPassword(user.to_owned());
    let (code, frame) = next_request(conn).await?;
    let after = match code {
        code::OK => return Ok(()),
        code::CLEARTEXT => {
            if !(policy.allow_cleartext || channel.protects_cleartext()) {
                let e = AuthExchangeError::CleartextRefused(channel.describe());
                tracing::warn!(server = %conn.addr, user, "{e}");
                return Err(e);
            }
            let mut out = BytesMut::new();
            let password = plain_password(password, credential).ok_or_else(no_password)?;
            write_password(&mut out, password.as_bytes());
            send(conn, &out).await?;
            "the cleartext password"
        }
        code::MD5 => {
            if !policy.allow_md5 {
                let e = AuthExchangeError::Md5Refused;
                tracing::warn!(server = %conn.addr, user, "{e}");
                return Err(e);
            }
            let salt: [u8; 4] = frame
                .body()
                .get(4..8)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| ServerIoError::Protocol("short md5 salt".into()))?;
            let hash = md5_answer(user, password, credential, salt).ok_or_else(no_password)?;
            let mut out = BytesMut::new();
            write_password(&mut out, hash.as_bytes());
            send(conn, &out).await?;
            "the md5 answer"
        }
        code::SASL => {
            let mechanisms = frame.body().get(4..).unwrap_or_default();
            let client = scram_client(password, credential).ok_or_else(no_password)?;
            scram(conn, mechanisms, client).await?;
            "AuthenticationSASLFinal"
        }
        other => return Err(AuthExchangeError::Unsupported(other)),
    };
    match next_request(conn).await? {
        (code::OK, _) => Ok(()),
        (other, _) => Err(AuthExchangeError::OutOfOrder(format!(
            "expected AuthenticationOk after {after}, got authentication request code {other}"
        ))),
    }
}

/// The SASL mechanism names in an AuthenticationSASL payload.
fn mechanism_names(payload: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut pos = 0;
    while let Some((m, next)) = read_cstr(payload, pos) {
        if m.is_empty() {
            break;
        }
        names.push(String::from_utf8_lossy(m).into_owned());
        pos = next;
    }
    names
}

/// The iteration count (`i=`) of a server-first-message; `None` if it has none (postgres-protocol then refuses it).
fn iterations(server_first: &[u8]) -> Option<u64> {
    std::str::from_utf8(server_first)
        .ok()?
        .split(',')
        .find_map(|attr| attr.strip_prefix("i="))
        .and_then(|n| n.parse().ok())
}

/// SCRAM-SHA-256 up to a verified AuthenticationSASLFinal.
async fn scram(
    conn: &mut ServerConn,
    mechanisms: &[u8],
    mut client: ScramClient,
) -> Result<(), AuthExchangeError> {
    let names = mechanism_names(mechanisms);
    if !names.iter().any(|m| m == SCRAM_SHA_256) {
        return Err(AuthExchangeError::NoScramMechanism(names.join(", ")));
    }
    let mut out = BytesMut::new();
    write_sasl_initial(&mut out, SCRAM_SHA_256, client.message());
    send(conn, &out).await?;

    let (code, cont) = next_request(conn).await?;
    match code {
        code::SASL_CONTINUE => {}
        code::OK => {
            return Err(AuthExchangeError::OutOfOrder(
                "AuthenticationOk before the SCRAM exchange was finished".into(),
            ))
        }
        other => {
            return Err(AuthExchangeError::OutOfOrder(format!(
                "expected AuthenticationSASLContinue, got authentication request code {other}"
            )))
        }
    }
    let server_first = cont.body().get(4..).unwrap_or_default().to_vec();
    if let Some(n) = iterations(&server_first) {
        if n > u64::from(MAX_SCRAM_ITERATIONS) {
            return Err(AuthExchangeError::TooManyIterations(n));
        }
    }
    // PBKDF2 with thousands of rounds takes milliseconds: off the runtime's threads, so other sessions do not wait.
    let client = tokio::task::spawn_blocking(move || {
        let r = client.update(&server_first);
        (client, r)
    })
    .await
    .map_err(|e| AuthExchangeError::Scram(e.to_string()));
    let mut client = match client? {
        (c, Ok(())) => c,
        (_, Err(e)) => return Err(AuthExchangeError::Scram(e.to_string())),
    };
    out.clear();
    write_sasl_response(&mut out, client.message());
    send(conn, &out).await?;

    let (code, fin) = next_request(conn).await?;
    match code {
        code::SASL_FINAL => {}
        code::OK => {
            return Err(AuthExchangeError::OutOfOrder(
                "AuthenticationOk without AuthenticationSASLFinal: the server never proved it knows the password"
                    .into(),
            ))
        }
        other => {
            return Err(AuthExchangeError::OutOfOrder(format!(
                "expected AuthenticationSASLFinal, got authentication request code {other}"
            )))
        }
    }
    client
        .finish(fin.body().get(4..).unwrap_or_default())
        .map_err(|e| {
            AuthExchangeError::Scram(format!(
                "the server's signature does not verify ({e}): it does not know the password's verifier"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mechanisms_and_iterations() {
        assert_eq!(
            mechanism_names(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        assert_eq!(iterations(b"r=abc,s=c2FsdA==,i=4096"), Some(4096));
        assert_eq!(
            iterations(b"r=abc,s=c2FsdA==,i=99999999999"),
            Some(99_999_999_999)
        );
        assert_eq!(iterations(b"r=abc,s=c2FsdA=="), None);
    }

    #[test]
    fn cleartext_needs_a_protecting_channel_or_the_setting() {
        assert!(!Channel::PlainTcp.protects_cleartext());
        assert!(!Channel::UnverifiedTls.protects_cleartext());
        assert!(Channel::VerifiedTls.protects_cleartext());
        assert!(Channel::UnixSocket.protects_cleartext());
        let d = ServerAuthPolicy::default();
        assert!(!d.allow_cleartext && d.allow_md5);
    }
}
